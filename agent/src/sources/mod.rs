//! Device inputs, each a thin async shell that sends [`crate::engine::Input`]s:
//!
//! - [`simulated`] — N virtual devices in-process (demo, tests, benchmarks);
//!   their config section, `[simulated]`, is [`tributary_sim::config`];
//! - [`mqtt`] — devices on the local broker (JSON readings and binary
//!   frames), `[local_mqtt]`;
//! - [`serial`] — devices on serial ports (the firmware link protocol),
//!   `[[serial]]`;
//! - [`modbus`] — Modbus TCP and RTU devices, polled, `[[modbus]]`;
//! - [`opcua`] — OPC UA servers, monitored items of a subscription,
//!   `[[opcua]]` (cargo feature `opcua`, on by default).
//!
//! [`scaling`] is the exact scale/offset into a quantum that the industrial
//! inputs share, and [`backoff`] their reconnection pauses.
pub(crate) mod backoff;
pub mod modbus;
pub mod mqtt;
pub mod opcua;
pub mod scaling;
pub mod serial;
pub mod simulated;
