//! The device's Hello: who it is (name, boot, firmware), its window, its
//! clock and where its unacknowledged frames begin, its channels (from the
//! sensor's [`ChannelSpec`]s) and its counters. Sent with
//! [`crate::Link::send_now`] until the gateway's TimeSync arrives.

use tributary_core::frame::{ChannelInfo, DeviceStats, Hello, MAX_CHANNELS};

use crate::sensor::ChannelSpec;

/// A Hello; text longer than its field (device 32 bytes, firmware 16, metric
/// 32, unit 8) is left empty, channels past [`MAX_CHANNELS`] are left out.
pub struct HelloParts<'a> {
    /// The device id.
    pub device: &'a str,
    /// Firmware version text.
    pub firmware: &'a str,
    /// The channels, numbered in order.
    pub specs: &'a [ChannelSpec],
    /// The boot id.
    pub boot: u32,
    /// [`crate::Link::first_unacked`].
    pub first_unacked: u32,
    /// The window width in ms (0 in raw mode).
    pub window_ms: u32,
    /// Device ms now.
    pub tick: u64,
    /// Counters since boot.
    pub stats: DeviceStats,
}

impl HelloParts<'_> {
    /// The Hello frame.
    pub fn hello(&self) -> Hello {
        let mut channels = heapless::Vec::<ChannelInfo, MAX_CHANNELS>::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let _ = channels.push(ChannelInfo {
                channel: i as u8,
                metric: heapless::String::try_from(spec.metric).unwrap_or_default(),
                unit: heapless::String::try_from(spec.unit).unwrap_or_default(),
                quantum: spec.quantum(),
                reference: spec.reference,
            });
        }
        Hello {
            device: heapless::String::try_from(self.device).unwrap_or_default(),
            boot: self.boot,
            first_unacked: self.first_unacked,
            firmware: heapless::String::try_from(self.firmware).unwrap_or_default(),
            window_ms: self.window_ms,
            tick: self.tick,
            channels,
            stats: self.stats,
        }
    }
}
