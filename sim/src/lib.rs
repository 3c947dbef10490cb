//! # tributary-sim
//!
//! Simulated devices for trials, the demo and tests: the firmware's own
//! aggregator and link code driven by seeded simulated sensors, and the
//! raw readings they took, from which the oracle (`tributary-oracle`)
//! computes what the results must be. Nothing here runs on a device or in
//! the collector; the agent runs a fleet of these as its `[simulated]`
//! input.
//!
//! # Layout
//! - [`device`] — one [`VirtualDevice`]: the firmware's aggregator and
//!   link over simulated sensors, in memory.
//! - [`config`] — [`SimulatedConfig`], the agent's `[simulated]` section.
//! - [`fleet`] — the devices a section describes, stepping them through
//!   time, and each one's raw readings.
//! - [`judge`] — the pipeline's results judged by the oracle: raw readings
//!   handed to it, and a [`tributary_core::Summary`] compared with its
//!   exact statistics.

pub mod config;
pub mod device;
pub mod fleet;
pub mod judge;

pub use config::{SimMode, SimulatedConfig};
pub use device::{RawReading, SimConfig, VirtualDevice, SIM_CHANNELS};
pub use fleet::{SeriesReadings, SimDevice};
pub use tributary_firmware::AggregatorError;
