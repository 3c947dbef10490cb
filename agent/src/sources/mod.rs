//! Device inputs, each a thin async shell that sends [`crate::engine::Cmd`]s:
//!
//! - [`simulated`] — N virtual devices in-process (demo, tests, benchmarks);
//! - [`json`] — the JSON readings format of the local broker;
//! - [`mqtt`] — devices on the local broker (JSON and binary frames);
//! - [`serial`] — devices on serial ports (the firmware link protocol).
pub mod json;
pub mod mqtt;
pub mod serial;
pub mod simulated;
