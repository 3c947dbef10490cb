//! Link frames: Hello and data frames from a device link (a serial port, a
//! simulated device, a device's MQTT topic), applied to the engine's state.
//!
//! # Design
//! A link carries one device at a time; a Hello says which boot, registers
//! its channels' series and is answered with TimeSync at once. A data frame
//! is applied by its boot's `DeviceState` exactly once (the de-dup state is
//! stored in the same commit as its effect) and, on a link that carries
//! replies, acknowledged only after that commit — also when it was a
//! duplicate or refused for good, so the device stops resending it. A data
//! frame on a link with no Hello yet, or of a boot whose Hello was not seen,
//! is counted (`unknown_device`) and not acknowledged.

use tributary_core::frame::{Ack, Hello, Message, TimeSync};
use tributary_core::SeriesKey;
use tributary_runtime::now_ms;

use super::input::Reply;
use super::state::State;
use crate::link::device::FrameOutcome;
use crate::metrics::Reject;

/// Applies the frames of one link input.
pub(crate) fn link(
    st: &mut State,
    link: &str,
    frames: Vec<(Message, i64)>,
    reply: Option<&Reply>,
    fixed_offset: Option<i64>,
) {
    for (msg, arrival) in frames {
        match msg {
            Message::Hello(h) => hello(st, link, h, arrival, reply, fixed_offset),
            Message::Summary(_) | Message::Reading(_) => data_frame(st, link, &msg, arrival, reply),
            Message::Ack(_) | Message::TimeSync(_) => {
                tracing::debug!(link, "ignoring gateway-bound frame type from a device");
            }
        }
    }
}

/// A Hello: the boot's channels become series, the link is the boot's, and
/// the device gets the time.
fn hello(
    st: &mut State,
    link: &str,
    h: Hello,
    arrival: i64,
    reply: Option<&Reply>,
    fixed_offset: Option<i64>,
) {
    st.metrics.frames_received.inc();
    let device = h.device.as_str().to_string();
    if let Err(e) = tributary_core::series::validate_id("device id", &device) {
        tracing::warn!(link, error = %e, "Hello with an invalid device id rejected");
        st.metrics.reject(Reject::BadKey);
        return;
    }
    let mut series = Vec::new();
    for ch in &h.channels {
        let key = SeriesKey::new(ch.metric.as_str(), device.as_str(), Default::default());
        match key
            .map_err(|_| Reject::BadKey)
            .and_then(|k| st.registry.series(&mut st.win, &k, ch.quantum))
        {
            Ok(id) => series.push((ch.channel, id)),
            Err(r) => {
                tracing::warn!(link, device, channel = ch.channel, metric = %ch.metric, reason = ?r, "device channel refused");
                st.metrics.reject(r);
            }
        }
    }
    let tick = h.tick;
    let boot = st.devices.hello(link, &h);
    boot.hello(h, arrival, fixed_offset, series);
    if let Some(fit) = boot.clock_fit() {
        st.metrics.set_clock(&device, fit.into());
    }
    if let Some(r) = reply {
        // Names the Hello it answers: the device times the round trip.
        let _ = r.send(Message::TimeSync(TimeSync {
            unix_ms: now_ms(),
            hello_tick: Some(tick),
        }));
    }
    st.pending.mark(0);
}

/// A Summary or Reading frame of the boot last seen on `link`.
fn data_frame(st: &mut State, link: &str, msg: &Message, arrival: i64, reply: Option<&Reply>) {
    let (boot, seq) = match msg {
        Message::Summary(f) => (f.boot, f.seq),
        Message::Reading(f) => (f.boot, f.seq),
        _ => return,
    };
    let Some(key) = st.devices.on_link(link).map(|b| (b.0.clone(), boot)) else {
        tracing::warn!(
            link,
            "data frame before any Hello on this link; not acknowledged"
        );
        st.metrics.reject(Reject::UnknownDevice);
        return;
    };
    let device = key.0.as_str();
    let Some(dev) = st.devices.boot_mut(&key) else {
        tracing::warn!(
            link,
            device,
            boot,
            "data frame of a boot whose Hello was not seen; not acknowledged"
        );
        st.metrics.reject(Reject::UnknownDevice);
        return;
    };
    st.metrics.frames_received.inc();
    let width = st.win.width();
    let out = dev.frame(msg, arrival, width, &mut st.win, now_ms());
    if let Some(fit) = dev.clock_fit() {
        st.metrics.set_clock(device, fit.into());
    }
    match out {
        FrameOutcome::Duplicate => {
            st.metrics.frames_duplicate.inc();
        }
        FrameOutcome::Applied(n) => {
            st.metrics.readings_accepted.inc_by(n);
            st.pending.mark(n);
        }
        FrameOutcome::Refused(r, why) => {
            tracing::warn!(link, device, boot, seq, reason = ?r, "frame refused: {why}");
            st.metrics.reject(r);
        }
    }
    if let Some(r) = reply {
        st.pending.ack(r, Ack { boot, seq });
    }
    st.pending.mark(0);
}
