//! # tributary-sim
//!
//! Simulated devices for trials, the demo and tests: the firmware's own
//! aggregator and link code driven by seeded simulated sensors, and the
//! ground truth of what they measured. Nothing here runs on a device or in
//! the collector; the agent runs a fleet of these as its `[simulated]`
//! input.
//!
//! # Layout
//! - [`device`] — one [`VirtualDevice`]: the firmware's aggregator and
//!   link over simulated sensors, in memory.
//! - [`config`] — [`SimulatedConfig`], the agent's `[simulated]` section.
//! - [`fleet`] — the devices a section describes, stepping them through
//!   time, and each one's ground truth.
//! - [`truth`] — ground truth folded into windows and tag groups, as the
//!   collector's results must come out.

pub mod config;
pub mod device;
pub mod fleet;
pub mod truth;

pub use config::{SimMode, SimulatedConfig};
pub use device::{SimConfig, VirtualDevice, SIM_CHANNELS};
pub use fleet::{SimDevice, TruthWindow};
pub use tributary_firmware::AggregatorError;
