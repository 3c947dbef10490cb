//! Sensor drivers written against `embedded-hal` 1.0 `I2c` and `DelayNs`.

pub mod sht3x;
pub mod tmp102;
