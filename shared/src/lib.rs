//! # tributary-core
//!
//! The data model every Tributary program shares (DESIGN §2, §3, §5).
//!
//! ## Layout
//! - [`quantum`] — readings become exact integer ticks of a series' quantum.
//! - [`index`] — exponential-histogram bucket indices of the real reading
//!   v·q, exact and without `log`: per-quantum boundary tables built by
//!   `const fn` (`index/bounds.rs`), [`index::QuantumIndex`] for every
//!   scale 8..−4 and [`index::DeviceIndex`] for a device channel.
//! - [`sketch`] — the mergeable quantile sketch, one algorithm over a count
//!   store (`sketch/store.rs`) with its wire form (`sketch/wire.rs`):
//!   [`sketch::Sketch`] (full) and [`sketch::FixedSketch`] (device, 304
//!   `u8` buckets shared by both signs).
//! - [`error`] — why a reading or merge was refused.
//! - `exact` — exact integer statistics to `f64` with one rounding (`std`).
//! - [`extent`] — min, max, first and last.
//! - [`summary`] — the full summary with exact integer moments (`alloc`).
//! - [`fixed`] — the ≤ 512-byte, allocation-free device summary.
//! - [`window`] — aligned tumbling windows.
//! - [`series`] — validated series keys (`alloc`).
//! - [`frame`] — device link frames: postcard + CRC + COBS, no allocation.
//! - [`batch`] — agent → collector batches and confirmations (`alloc`).
//! - [`incarnation`] — which life of a sender's numbering a batch belongs to.
//! - [`topic`] — the MQTT topic tree (`alloc`).
//!
//! ## Features
//! - no default features: `no_std`, no allocator — what the firmware uses;
//! - `alloc`: the full summary, series keys and batches;
//! - `std` (default): statistics and quantile queries (which need `f64`
//!   math from `std`).
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(feature = "alloc")]
pub mod batch;
pub mod error;
#[cfg(feature = "std")]
mod exact;
pub mod extent;
pub mod fixed;
pub mod frame;
pub mod incarnation;
pub mod index;
pub mod quantum;
#[cfg(feature = "alloc")]
pub mod series;
pub mod sketch;
#[cfg(feature = "alloc")]
pub mod summary;
#[cfg(feature = "alloc")]
pub mod topic;
pub mod window;

pub use error::SummaryError;
pub use fixed::FixedSummary;
pub use incarnation::Incarnation;
pub use quantum::{Quantum, ValueError};
#[cfg(feature = "alloc")]
pub use series::SeriesKey;
#[cfg(feature = "alloc")]
pub use summary::Summary;
pub use window::{Width, Window};
