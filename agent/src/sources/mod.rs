//! Device inputs, each a thin async shell that sends [`crate::engine::Input`]s:
//!
//! - [`simulated`] — N virtual devices in-process (demo, tests, benchmarks);
//!   their config section, `[simulated]`, is [`tributary_sim::config`];
//! - [`mqtt`] — devices on the local broker (JSON readings and binary
//!   frames), `[local_mqtt]`;
//! - [`serial`] — devices on serial ports (the firmware link protocol),
//!   `[[serial]]`;
//! - [`modbus`] — Modbus TCP and RTU devices, polled, `[[modbus]]`.
pub mod modbus;
pub mod mqtt;
pub mod serial;
pub mod simulated;
