//! The sensor abstraction: a sensor yields integer readings on one or more
//! channels, each described by a [`ChannelSpec`].

/// What one sensor channel measures and how its integer ticks scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSpec {
    /// The metric name, e.g. `temperature`.
    pub metric: &'static str,
    /// The unit, e.g. `degC`.
    pub unit: &'static str,
    /// A reading of `v` ticks means `v · 10^quantum_exp` units.
    pub quantum_exp: i8,
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
