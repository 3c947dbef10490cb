//! The `[simulated]` section of an agent's config: how many virtual
//! devices to run, what they send and for how long.

use serde::Deserialize;
use tributary_runtime::config::Problems;

/// What simulated devices send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimMode {
    /// Summary frames of device windows (the firmware's normal mode).
    Summaries,
    /// One Reading frame per reading.
    Readings,
}

/// `[simulated]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatedConfig {
    /// Number of virtual devices (0 = none).
    pub devices: usize,
    /// Device id prefix; devices are `{prefix}{index}`.
    pub prefix: String,
    /// `summaries` or `readings`.
    pub mode: SimMode,
    /// Ignored, kept so older configs still load: the firmware's virtual
    /// device always measures its three channels (temperature, humidity,
    /// pressure).
    pub channels: u8,
    /// Device window width (ms); divides `window.width_ms`.
    pub device_window_ms: u32,
    /// Readings per channel per device window.
    pub readings_per_window: u32,
    /// Device windows each device produces, then stops (0 = forever).
    pub windows: u64,
    /// Event time of the first device window (ms, aligned); 0 = now.
    pub start_ms: i64,
    /// Frames per second per device (0 = as fast as acks allow).
    pub frame_rate: u32,
    /// Unacknowledged frames a device keeps in flight (at most 12: the
    /// firmware's ring holds 16).
    pub max_unacked: usize,
    /// Seed of the simulated sensors (device `i` uses a seed derived from it).
    pub seed: u64,
    /// Failed sensor reads per thousand (0..=1000).
    pub dropout_per_mille: u32,
    /// The firmware link's resend timeout, in device ms.
    pub resend_ms: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            devices: 0,
            prefix: "sim-".into(),
            mode: SimMode::Summaries,
            channels: 2,
            device_window_ms: 10_000,
            readings_per_window: 10,
            windows: 0,
            start_ms: 0,
            frame_rate: 10,
            max_unacked: 12,
            seed: 1,
            dropout_per_mille: 20,
            resend_ms: 2000,
        }
    }
}

impl SimulatedConfig {
    /// Checks every value; `agent_width_ms` is the agent's window width,
    /// which the device window must divide.
    pub fn check(&self, agent_width_ms: i64, p: &mut Problems) {
        if self.devices == 0 {
            return;
        }
        if self.dropout_per_mille > 1000 {
            p.bad("simulated.dropout_per_mille", "must lie in 0..=1000");
        }
        if self.resend_ms == 0 {
            p.bad("simulated.resend_ms", "must be > 0");
        }
        if self.device_window_ms == 0 || agent_width_ms % i64::from(self.device_window_ms) != 0 {
            p.bad(
                "simulated.device_window_ms",
                format!("must be > 0 and divide window.width_ms ({agent_width_ms})"),
            );
        }
        if self.readings_per_window == 0 || self.readings_per_window > self.device_window_ms {
            p.bad(
                "simulated.readings_per_window",
                "must lie in 1..=device_window_ms",
            );
        }
        if self.start_ms != 0
            && self.device_window_ms > 0
            && self.start_ms % i64::from(self.device_window_ms) != 0
        {
            p.bad(
                "simulated.start_ms",
                "must be a multiple of device_window_ms",
            );
        }
        if self.max_unacked == 0 {
            p.bad("simulated.max_unacked", "must be > 0");
        }
        p.check(
            "simulated.prefix",
            tributary_core::series::validate_id("device id", &format!("{}0", self.prefix)),
        );
    }
}
