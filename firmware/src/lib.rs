//! # tributary-firmware
//!
//! The code that runs on microcontrollers: sensor drivers written against
//! `embedded-hal` 1.0, fixed-size windowed pre-aggregation and a reliable
//! framed link to the gateway. `#![no_std]` and allocation-free.
#![no_std]
#![forbid(unsafe_code)]

pub mod aggregator;
pub mod clock;
pub mod drivers;
pub mod hello;
pub mod link;
pub mod sensor;
pub mod session;
mod wire;

pub use aggregator::{Aggregator, AggregatorError, Mode};
pub use clock::Clock;
pub use hello::HelloParts;
pub use link::{ByteSink, Link, LinkStats, DEFAULT_POOL};
pub use sensor::{index, ChannelSpec, Sensor};
pub use session::{Session, SessionConfig, SyncEvent};
