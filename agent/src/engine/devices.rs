//! Device input: Hello and data frames from device links, and the device
//! boots' state (channels, clocks, de-duplication) they update.
//!
//! # Design
//! A link (a serial port, a simulated device, a device's MQTT topic) carries
//! one device at a time; a Hello says which boot, and registers its channels'
//! series. A data frame is applied by the boot's [`DeviceState`] exactly once
//! (its de-dup state is stored in the same commit as its effect) and, on a
//! link that can carry replies, acknowledged only after that commit. A
//! Hello is answered with TimeSync at once.

use std::collections::{HashMap, HashSet};

use tributary_core::frame::{Ack, Hello, Message, TimeSync};
use tributary_core::SeriesKey;
use tributary_runtime::now_ms;

use super::input::Reply;
use super::registry::Registry;
use super::Engine;
use crate::link::device::{DeviceState, FrameOutcome};
use crate::metrics::Reject;
use crate::store::{Commit, DeviceRow};

/// A device boot: (device id, boot id).
type Boot = (String, u32);

/// Every device boot the agent knows and which boot last spoke on each link.
#[derive(Debug, Default)]
pub(crate) struct Devices {
    boots: HashMap<Boot, DeviceState>,
    links: HashMap<String, Boot>,
    /// Boots changed since the last commit.
    dirty: HashSet<Boot>,
    /// Link changes since the last commit: (link, device, boot).
    new_links: Vec<(String, String, u32)>,
}

impl Devices {
    /// The stored boots and links, with each boot's channels resolved to
    /// their series in `registry`.
    pub(crate) fn restore(
        rows: Vec<DeviceRow>,
        links: Vec<(String, String, u32)>,
        registry: &Registry,
    ) -> Self {
        let boots = rows
            .into_iter()
            .map(|d| {
                let st = DeviceState::restore(&d, |key| registry.find(key));
                ((d.device, d.boot), st)
            })
            .collect();
        let links = links.into_iter().map(|(l, d, b)| (l, (d, b))).collect();
        Devices {
            boots,
            links,
            ..Devices::default()
        }
    }

    /// The de-dup mark of a device boot.
    pub(crate) fn hwm(&self, device: String, boot: u32) -> Option<u32> {
        self.boots.get(&(device, boot)).and_then(|d| d.dedupe.hwm())
    }

    /// A device boot's state, for tests.
    #[cfg(test)]
    pub(crate) fn get(&self, device: &str, boot: u32) -> Option<&DeviceState> {
        self.boots.get(&(device.to_string(), boot))
    }

    /// Whether JSON message `seq` of a device boot was applied before; if
    /// not, records it as applied (stored with the next commit).
    pub(crate) fn json_seen(&mut self, device: &str, boot: u32, seq: u32) -> bool {
        let key = (device.to_string(), boot);
        let st = self
            .boots
            .entry(key.clone())
            .or_insert_with(|| DeviceState::for_json(device, boot));
        if st.dedupe.seen(seq) {
            return true;
        }
        st.dedupe.record(seq);
        self.dirty.insert(key);
        false
    }

    /// Moves the changed boots and links into `c`.
    pub(crate) fn drain_into(&mut self, c: &mut Commit) {
        for key in self.dirty.drain() {
            if let Some(st) = self.boots.get(&key) {
                c.devices.push(st.row(&key.0, key.1));
            }
        }
        c.links.append(&mut self.new_links);
    }
}

impl Engine {
    /// Applies the frames of one link input.
    pub(super) fn link(
        &mut self,
        link: &str,
        frames: Vec<(Message, i64)>,
        reply: Option<&Reply>,
        fixed_offset: Option<i64>,
    ) {
        for (msg, arrival) in frames {
            match msg {
                Message::Hello(h) => self.hello(link, h, arrival, reply, fixed_offset),
                Message::Summary(_) | Message::Reading(_) => {
                    self.data_frame(link, &msg, arrival, reply)
                }
                Message::Ack(_) | Message::TimeSync(_) => {
                    tracing::debug!(link, "ignoring gateway-bound frame type from a device");
                }
            }
        }
    }

    /// A Hello: the boot's channels become series, the link is the boot's,
    /// and the device gets the time.
    fn hello(
        &mut self,
        link: &str,
        h: Hello,
        arrival: i64,
        reply: Option<&Reply>,
        fixed_offset: Option<i64>,
    ) {
        self.metrics.frames_received.inc();
        let device = h.device.as_str().to_string();
        if let Err(e) = tributary_core::series::validate_id("device id", &device) {
            tracing::warn!(link, error = %e, "Hello with an invalid device id rejected");
            self.metrics.reject(Reject::BadKey);
            return;
        }
        let mut series = Vec::new();
        for ch in &h.channels {
            let key = SeriesKey::new(ch.metric.as_str(), device.as_str(), Default::default());
            match key
                .map_err(|_| Reject::BadKey)
                .and_then(|k| self.series(&k, ch.quantum))
            {
                Ok(id) => series.push((ch.channel, id)),
                Err(r) => {
                    tracing::warn!(link, device, channel = ch.channel, metric = %ch.metric, reason = ?r, "device channel refused");
                    self.metrics.reject(r);
                }
            }
        }
        let boot = (device, h.boot);
        let devices = &mut self.devices;
        let st = devices
            .boots
            .entry(boot.clone())
            .or_insert_with(|| DeviceState::new(h.clone()));
        st.hello(h, arrival, fixed_offset, series);
        if let Some(fit) = st.clock_fit() {
            self.metrics.set_clock(&boot.0, fit.into());
        }
        devices.dirty.insert(boot.clone());
        if devices.links.get(link) != Some(&boot) {
            devices
                .new_links
                .push((link.to_string(), boot.0.clone(), boot.1));
            devices.links.insert(link.to_string(), boot);
        }
        if let Some(r) = reply {
            let _ = r.send(Message::TimeSync(TimeSync { unix_ms: now_ms() }));
        }
        self.pending.mark(0);
    }

    /// A Summary or Reading frame of the boot last seen on `link`.
    fn data_frame(&mut self, link: &str, msg: &Message, arrival: i64, reply: Option<&Reply>) {
        let (boot, seq) = match msg {
            Message::Summary(f) => (f.boot, f.seq),
            Message::Reading(f) => (f.boot, f.seq),
            _ => return,
        };
        let Some(device) = self.devices.links.get(link).map(|k| k.0.clone()) else {
            tracing::warn!(
                link,
                "data frame before any Hello on this link; not acknowledged"
            );
            self.metrics.reject(Reject::UnknownDevice);
            return;
        };
        let key = (device, boot);
        let Some(st) = self.devices.boots.get_mut(&key) else {
            tracing::warn!(
                link,
                device = key.0,
                boot,
                "data frame of a boot whose Hello was not seen; not acknowledged"
            );
            self.metrics.reject(Reject::UnknownDevice);
            return;
        };
        self.metrics.frames_received.inc();
        let width = self.win.width();
        let out = st.frame(msg, arrival, width, &mut self.win, now_ms());
        if let Some(fit) = st.clock_fit() {
            self.metrics.set_clock(&key.0, fit.into());
        }
        match out {
            FrameOutcome::Duplicate => {
                self.metrics.frames_duplicate.inc();
            }
            FrameOutcome::Applied(n) => {
                self.metrics.readings_accepted.inc_by(n);
                self.pending.mark(n);
            }
            FrameOutcome::Refused(r, why) => {
                tracing::warn!(link, device = key.0, boot, seq, reason = ?r, "frame refused: {why}");
                self.metrics.reject(r);
            }
        }
        self.devices.dirty.insert(key);
        if let Some(r) = reply {
            self.pending.ack(r, Ack { boot, seq });
        }
        self.pending.mark(0);
    }
}
