//! TI TMP102 temperature sensor: reads the 12-bit temperature register
//! (pointer 0x00, two bytes, MSB first, 0.0625 °C per LSB, two's complement)
//! in the default continuous-conversion mode.
//!
//! Readings are in 10⁻⁴ °C (quantum exponent −4), so 0.0625 °C = 625 ticks
//! and the conversion is exact.

use embedded_hal::i2c::I2c;

use crate::sensor::{index, ChannelSpec, Sensor};

/// The address with ADD0 tied to GND.
pub const DEFAULT_ADDRESS: u8 = 0x48;
const TEMPERATURE_REGISTER: u8 = 0x00;

/// The single channel: temperature in 10⁻⁴ °C.
pub const CHANNELS: [ChannelSpec; 1] = [ChannelSpec {
    metric: "temperature",
    unit: "degC",
    index: &index(-4),
    reference: 200_000,
}];

/// Why a measurement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus reported an error (including NACK).
    I2c(E),
    /// The output slice is empty.
    Buffer,
}

/// Temperature in 10⁻⁴ °C from the two register bytes (12-bit mode).
pub fn ticks(bytes: [u8; 2]) -> i32 {
    let raw = i16::from_be_bytes(bytes) >> 4; // arithmetic shift keeps the sign
    i32::from(raw) * 625
}

/// A TMP102 on an I²C bus; owns the bus.
#[derive(Debug)]
pub struct Tmp102<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Tmp102<I> {
    /// A driver for the sensor at `address` (usually [`DEFAULT_ADDRESS`]).
    pub fn new(i2c: I, address: u8) -> Self {
        Tmp102 { i2c, address }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I {
        self.i2c
    }

    /// Reads the temperature in 10⁻⁴ °C.
    pub fn read(&mut self) -> Result<i32, Error<I::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[TEMPERATURE_REGISTER], &mut buf)
            .map_err(Error::I2c)?;
        Ok(ticks(buf))
    }
}

impl<I: I2c> Sensor for Tmp102<I> {
    type Error = Error<I::Error>;

    fn channels(&self) -> &'static [ChannelSpec] {
        &CHANNELS
    }

    fn measure(&mut self, out: &mut [i32]) -> Result<(), Self::Error> {
        let [t, ..] = out else {
            return Err(Error::Buffer);
        };
        *t = self.read()?;
        Ok(())
    }
}
