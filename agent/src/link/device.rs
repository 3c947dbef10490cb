//! One device boot as the agent knows it: its channels, its clock offset and
//! its de-duplication state, and how its data frames fold into windows.
//!
//! # Clock mapping
//! A device counts ms since boot. The agent maps a tick to event time with
//! the boot's [`ClockEstimator`]: offset and drift fitted to the minimum
//! lags of Hello and data-frame arrivals (see [`super::clock`]), with a
//! stated error exposed per device in `/metrics`. A Reading is observed at
//! its tick, a Summary at its window's end (when the device emits it). A
//! summary's window start is then snapped to the nearest multiple of the
//! device window: the device aligns its windows to wall-clock multiples after
//! a TimeSync, so snapping removes the remaining error for summaries.
//! Simulated devices run on a virtual clock whose offset the agent is told
//! exactly. Only the offset is stored: after an agent restart the drift is
//! learnt again from new arrivals.

use tributary_core::frame::{Hello, Message, SummaryFrame};
use tributary_core::{SeriesKey, Summary, Width, Window};

use super::clock::{ClockEstimator, ClockFit};
use super::dedupe::Dedupe;
use crate::metrics::Reject;
use crate::store::DeviceRow;
use crate::window::{Refused, SeriesId, Windower};

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
    clock: ClockEstimator,
    /// A clock offset known exactly (simulated devices).
    exact: Option<i64>,
    /// Frames applied.
    pub dedupe: Dedupe,
    channels: Vec<(u8, SeriesId)>,
}

impl DeviceState {
    /// A boot first seen with `hello`: its frames from the Hello's
    /// `first_unacked` on are still to come.
    pub fn new(hello: Hello) -> Self {
        DeviceState {
            clock: ClockEstimator::default(),
            exact: None,
            dedupe: Dedupe::starting_at(hello.first_unacked),
            hello,
            channels: Vec::new(),
        }
    }

    /// A boot of a JSON device (no channels, only de-dup state) whose first
    /// message seen is `first_seq` (see [`super::dedupe`]).
    pub fn for_json(device: &str, boot: u32, first_seq: u32) -> Self {
        let hello = Hello {
            device: heapless::String::try_from(device).unwrap_or_default(),
            boot,
            first_unacked: 0,
            firmware: heapless::String::new(),
            window_ms: 0,
            tick: 0,
            channels: heapless::Vec::new(),
            stats: Default::default(),
        };
        let mut st = DeviceState::new(hello);
        st.exact = Some(0);
        st.dedupe = Dedupe::starting_at(first_seq);
        st
    }

    /// Restores a stored boot, resolving its channels' series with
    /// `series` (given the source's key, without the global tags).
    pub fn restore(row: &DeviceRow, series: impl Fn(&SeriesKey) -> Option<SeriesId>) -> Self {
        let channels = row
            .hello
            .channels
            .iter()
            .filter_map(|c| {
                let key =
                    SeriesKey::new(c.metric.as_str(), row.device.as_str(), Default::default())
                        .ok()?;
                series(&key).map(|id| (c.channel, id))
            })
            .collect();
        DeviceState {
            hello: row.hello.clone(),
            clock: ClockEstimator::with_offset(row.boot, row.offset_ms),
            exact: None,
            dedupe: Dedupe::from_parts(row.hwm, row.above.iter().copied()),
            channels,
        }
    }

    /// Applies a (repeated) Hello that arrived at `arrival_ms`; `exact` is
    /// a clock offset known exactly (simulated devices). The Hello's
    /// `first_unacked` moves the de-dup mark up: the device will never send
    /// a frame below it again.
    pub fn hello(
        &mut self,
        h: Hello,
        arrival_ms: i64,
        exact: Option<i64>,
        channels: Vec<(u8, SeriesId)>,
    ) {
        self.exact = exact;
        if exact.is_none() {
            self.clock.observe(h.boot, h.tick, arrival_ms);
        }
        self.dedupe.advance(h.first_unacked);
        self.hello = h;
        self.channels = channels;
    }

    /// The channels announced in Hello, with their series.
    pub fn channels(&self) -> &[(u8, SeriesId)] {
        &self.channels
    }

    /// The row to store.
    pub fn row(&self, device: &str, boot: u32) -> DeviceRow {
        DeviceRow {
            device: device.to_string(),
            boot,
            hello: self.hello.clone(),
            offset_ms: self.offset_ms(),
            hwm: self.dedupe.hwm(),
            above: self.dedupe.above().collect(),
        }
    }

    /// Wall-clock ms at device tick 0 (rounded).
    pub fn offset_ms(&self) -> i64 {
        match (self.exact, self.clock.fit()) {
            (Some(o), _) => o,
            (None, Some(f)) => f.offset_ms.round() as i64,
            (None, None) => 0,
        }
    }

    /// The estimated clock, unless the offset is known exactly.
    pub fn clock_fit(&self) -> Option<ClockFit> {
        self.exact.is_none().then(|| self.clock.fit()).flatten()
    }

    /// Event time of device tick `tick` (saturating: a tick past `i64` maps
    /// to a time the time bounds refuse, never to a wrapped one).
    pub fn event_time(&self, tick: u64) -> i64 {
        match (self.exact, self.clock.wall_ms(tick)) {
            (None, Some(t)) => t,
            _ => i64::try_from(tick)
                .unwrap_or(i64::MAX)
                .saturating_add(self.offset_ms()),
        }
    }

    /// Applies a Summary or Reading frame that arrived at `arrival_ms`
    /// (after de-duplication; every arrival informs the clock estimate).
    pub fn frame(
        &mut self,
        msg: &Message,
        arrival_ms: i64,
        agent_width: Width,
        win: &mut Windower,
        now_ms: i64,
    ) -> FrameOutcome {
        if self.exact.is_none() {
            match msg {
                Message::Summary(f) => self.clock.observe(
                    f.boot,
                    f.start_tick.saturating_add(u64::from(f.width_ms)),
                    arrival_ms,
                ),
                Message::Reading(f) => self.clock.observe(f.boot, f.tick, arrival_ms),
                _ => {}
            }
        }
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
                let window = match self.summary_window(f, agent_width) {
                    Ok(w) => w,
                    Err(why) => return FrameOutcome::Refused(Reject::DeviceWindow, why),
                };
                let summary = Summary::from_fixed(&f.summary, window.start());
                match win.merge(series, window, &summary, now_ms) {
                    Ok(()) => FrameOutcome::Applied(summary.count()),
                    Err(Refused::Time(t)) => FrameOutcome::Refused(t.into(), t.to_string()),
                    Err(e) => FrameOutcome::Refused(Reject::Merge, e.to_string()),
                }
            }
            Message::Reading(f) => {
                let t = self.event_time(f.tick);
                match win.insert(series, t, i64::from(f.value), now_ms) {
                    Ok(()) => FrameOutcome::Applied(1),
                    Err(Refused::Time(t)) => FrameOutcome::Refused(t.into(), t.to_string()),
                    Err(e) => FrameOutcome::Refused(Reject::BadValue, e.to_string()),
                }
            }
            _ => FrameOutcome::Refused(Reject::CorruptFrame, "not a data frame".into()),
        }
    }

    /// The device window of a Summary frame in event time: its start mapped
    /// from ticks and snapped to the nearest multiple of its width, which
    /// must divide the agent's window; or why not.
    fn summary_window(&self, f: &SummaryFrame, agent_width: Width) -> Result<Window, String> {
        let w = i64::from(f.width_ms);
        let width = Width::new(w).map_err(|_| format!("device window {w} ms"))?;
        if !width.divides(agent_width) {
            return Err(format!(
                "device window {w} ms does not divide the agent window {} ms",
                agent_width.ms()
            ));
        }
        let raw = self.event_time(f.start_tick);
        let out_of_range = || "window out of range".to_string();
        let start = raw
            .saturating_add(w / 2)
            .div_euclid(w)
            .checked_mul(w)
            .ok_or_else(out_of_range)?;
        Window::new(start, width).map_err(|_| out_of_range())
    }
}
