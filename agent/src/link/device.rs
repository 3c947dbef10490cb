//! One device boot as the agent knows it: its channels, its clock offset and
//! its de-duplication state, and how its data frames fold into windows.
//!
//! # Clock mapping
//! A device counts ms since boot. The agent maps a tick to event time with
//! `offset_ms` = arrival time − tick of the device's Hello, keeping the
//! smallest value seen (the one with the least transmission delay), so the
//! stated clock error is the link latency of the best Hello. A summary's
//! window start is snapped to the nearest multiple of the device window: the
//! device aligns its windows to wall-clock multiples after a TimeSync, so
//! snapping removes the latency error entirely for summaries. Simulated
//! devices run on a virtual clock whose offset the agent is told exactly.
//! Drift is not estimated: periodic Hellos re-learn the offset.

use std::collections::HashMap;

use tributary_core::frame::{Hello, Message};
use tributary_core::{SeriesKey, Summary, Width, Window};

use super::dedupe::Dedupe;
use crate::metrics::Reject;
use crate::store::DeviceRow;
use crate::window::{SeriesId, Windower};

/// What became of a data frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Applied: this many readings.
    Applied(u64),
    /// Already applied before.
    Duplicate,
    /// Refused for good (acknowledged, counted, never applied).
    Refused(Reject, String),
}

/// A device boot's state.
#[derive(Debug, Clone)]
pub struct DeviceState {
    hello: Hello,
    offset_ms: i64,
    /// Frames applied.
    pub dedupe: Dedupe,
    channels: Vec<(u8, SeriesId)>,
}

impl DeviceState {
    /// A boot first seen with `hello`.
    pub fn new(hello: Hello, offset_ms: i64) -> Self {
        DeviceState {
            hello,
            offset_ms,
            dedupe: Dedupe::default(),
            channels: Vec::new(),
        }
    }

    /// A boot of a JSON device (no channels, only de-dup state).
    pub fn for_json(device: &str, boot: u32) -> Self {
        let hello = Hello {
            device: heapless::String::try_from(device).unwrap_or_default(),
            boot,
            firmware: heapless::String::new(),
            window_ms: 0,
            tick: 0,
            channels: heapless::Vec::new(),
            stats: Default::default(),
        };
        DeviceState::new(hello, 0)
    }

    /// Restores a stored boot, resolving its channels' series.
    pub fn restore(row: &DeviceRow, series: &HashMap<SeriesKey, SeriesId>) -> Self {
        let channels = row
            .hello
            .channels
            .iter()
            .filter_map(|c| {
                let key =
                    SeriesKey::new(c.metric.as_str(), row.device.as_str(), Default::default())
                        .ok()?;
                series.get(&key).map(|&id| (c.channel, id))
            })
            .collect();
        DeviceState {
            hello: row.hello.clone(),
            offset_ms: row.offset_ms,
            dedupe: Dedupe::from_parts(row.hwm, row.above.iter().copied()),
            channels,
        }
    }

    /// Applies a (repeated) Hello.
    pub fn hello(&mut self, h: Hello, offset_ms: i64, exact: bool, channels: Vec<(u8, SeriesId)>) {
        self.offset_ms = if exact {
            offset_ms
        } else {
            self.offset_ms.min(offset_ms)
        };
        self.hello = h;
        self.channels = channels;
    }

    /// The row to store.
    pub fn row(&self, device: &str, boot: u32) -> DeviceRow {
        DeviceRow {
            device: device.to_string(),
            boot,
            hello: self.hello.clone(),
            offset_ms: self.offset_ms,
            hwm: self.dedupe.hwm(),
            above: self.dedupe.above().collect(),
        }
    }

    /// Event time of device tick `tick`.
    pub fn event_time(&self, tick: u64) -> i64 {
        (tick as i64).saturating_add(self.offset_ms)
    }

    /// Applies a Summary or Reading frame (after de-duplication).
    pub fn frame(
        &mut self,
        msg: &Message,
        agent_width: Width,
        win: &mut Windower,
        now_ms: i64,
    ) -> FrameOutcome {
        let seq = match msg {
            Message::Summary(f) => f.seq,
            Message::Reading(f) => f.seq,
            _ => return FrameOutcome::Refused(Reject::CorruptFrame, "not a data frame".into()),
        };
        if self.dedupe.seen(seq) {
            return FrameOutcome::Duplicate;
        }
        self.dedupe.record(seq);
        let channel = match msg {
            Message::Summary(f) => f.channel,
            Message::Reading(f) => f.channel,
            _ => 0,
        };
        let Some(&(_, series)) = self.channels.iter().find(|(c, _)| *c == channel) else {
            return FrameOutcome::Refused(
                Reject::BadKey,
                format!("channel {channel} not announced in Hello"),
            );
        };
        match msg {
            Message::Summary(f) => {
                let w = i64::from(f.width_ms);
                let Ok(width) = Width::new(w) else {
                    return FrameOutcome::Refused(
                        Reject::DeviceWindow,
                        format!("device window {w} ms"),
                    );
                };
                if !width.divides(agent_width) {
                    return FrameOutcome::Refused(
                        Reject::DeviceWindow,
                        format!(
                            "device window {w} ms does not divide the agent window {} ms",
                            agent_width.ms()
                        ),
                    );
                }
                let raw = self.event_time(f.start_tick);
                let start = (raw + w / 2).div_euclid(w) * w;
                let Ok(window) = Window::new(start, width) else {
                    return FrameOutcome::Refused(
                        Reject::DeviceWindow,
                        "window out of range".into(),
                    );
                };
                let summary = Summary::from_fixed(&f.summary, start);
                match win.merge(series, window, &summary, now_ms) {
                    Ok(()) => FrameOutcome::Applied(summary.count()),
                    Err(e) => FrameOutcome::Refused(Reject::Merge, e.to_string()),
                }
            }
            Message::Reading(f) => {
                let t = self.event_time(f.tick);
                match win.insert(series, t, i64::from(f.value), now_ms) {
                    Ok(()) => FrameOutcome::Applied(1),
                    Err(e) => FrameOutcome::Refused(Reject::BadValue, e.to_string()),
                }
            }
            _ => FrameOutcome::Refused(Reject::CorruptFrame, "not a data frame".into()),
        }
    }
}
