//! The sensor abstraction: a sensor yields integer readings on one or more
//! channels, each described by a [`ChannelSpec`].

use tributary_core::index::DeviceIndex;
use tributary_core::quantum::Quantum;

/// What one sensor channel measures and how its integer ticks scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The metric name, e.g. `temperature`.
    pub metric: &'static str,
    /// The unit, e.g. `degC`.
    pub unit: &'static str,
    /// The channel's quantum — a reading of `v` ticks means `v · q` units —
    /// with the table that buckets its real values ([`index`]; in flash).
    pub index: &'static DeviceIndex,
    /// The reference offset of the channel's fixed summaries (a typical value
    /// in ticks, keeping Σ(v − reference)² small).
    pub reference: i32,
}

/// A sensor that measures all of its channels at once, in integer ticks.
pub trait Sensor {
    /// Why a measurement failed (bus error, NACK, CRC mismatch, ...).
    type Error;
    /// The channels, in the order [`Sensor::measure`] fills them.
    fn channels(&self) -> &'static [ChannelSpec];
    /// Takes one reading per channel into `out[..channels().len()]`.
    /// On error `out` must not be used.
    fn measure(&mut self, out: &mut [i32]) -> Result<(), Self::Error>;
}

/// The bucket table of the quantum 10^`exponent`, for a channel's constant:
/// `index: &index(-3)`. Evaluated at compile time; an exponent outside
/// −18..=18 does not compile.
pub const fn index(exponent: i8) -> DeviceIndex {
    match Quantum::new(exponent) {
        Ok(q) => DeviceIndex::new(q),
        Err(_) => panic!("quantum exponent outside -18..=18"),
    }
}

impl ChannelSpec {
    /// The channel's quantum.
    pub fn quantum(&self) -> Quantum {
        self.index.quantum()
    }
}
