//! Readings that arrive as values rather than link frames: JSON readings
//! from the local broker (de-duplicated by their optional (boot, seq)) and
//! in-process readings already in ticks (benchmarks, embedding).
//!
//! Each reading is checked on its own: a bad key, an event time outside
//! `[limits] max_future_ms`/`max_age_ms` (checked before the series is
//! registered or any window or watermark is touched), a refused series or a
//! value its quantum cannot hold is counted by reason and skipped, and the
//! readings after it are still applied.

use tributary_core::series::KeyError;
use tributary_core::{Quantum, SeriesKey};
use tributary_runtime::now_ms;

use super::state::State;
use crate::link::json::JsonMessage;
use crate::metrics::Reject;
use crate::window::Refused;

/// JSON readings of `device`.
pub(crate) fn json(st: &mut State, device: &str, msg: JsonMessage) {
    if let Some((boot, seq)) = msg.id {
        if st.devices.json_seen(device, boot, seq) {
            st.metrics.frames_duplicate.inc();
            return;
        }
    }
    let now = now_ms();
    let quantum = st.registry.json_quantum();
    let mut accepted = 0u64;
    for r in msg.readings {
        let key = match SeriesKey::new(r.metric.as_str(), device, r.tags) {
            Ok(k) => k,
            Err(e) => {
                let reason = match e {
                    KeyError::TooManyTags(_) => Reject::TooManyTags,
                    _ => Reject::BadKey,
                };
                tracing::warn!(device, error = %e, "JSON reading refused");
                st.metrics.reject(reason);
                continue;
            }
        };
        if let Err(e) = st.win.bounds().check(r.time, now) {
            tracing::warn!(device, series = %key, error = %e, "JSON reading refused");
            st.metrics.reject(e.into());
            continue;
        }
        let id = match st.registry.series(&mut st.win, &key, quantum) {
            Ok(id) => id,
            Err(reason) => {
                tracing::warn!(device, series = %key, ?reason, "JSON reading refused");
                st.metrics.reject(reason);
                continue;
            }
        };
        // A known series keeps the quantum it was registered with.
        let q = st.win.series(id).map_or(quantum, |s| s.quantum());
        let inserted = q
            .ticks(r.value)
            .map_err(|e| (Reject::BadValue, e.to_string()))
            .and_then(|ticks| {
                st.win.insert(id, r.time, ticks, now).map_err(|e| match e {
                    Refused::Time(t) => (t.into(), t.to_string()),
                    Refused::Summary(e) => (Reject::BadValue, e.to_string()),
                })
            });
        match inserted {
            Ok(()) => accepted += 1,
            Err((reason, e)) => {
                tracing::warn!(device, series = %key, error = %e, "JSON reading refused");
                st.metrics.reject(reason);
            }
        }
    }
    st.metrics.readings_accepted.inc_by(accepted);
    st.pending.mark(accepted);
}

/// In-process readings of one series, `points` being (event time, ticks).
pub(crate) fn in_process(st: &mut State, key: &SeriesKey, quantum: Quantum, points: &[(i64, i64)]) {
    st.pending.mark(0);
    let id = match st.registry.series(&mut st.win, key, quantum) {
        Ok(id) => id,
        Err(reason) => {
            tracing::warn!(series = %key, ?reason, "in-process readings refused");
            st.metrics.reject_n(reason, points.len() as u64);
            return;
        }
    };
    let done = st.win.insert_many(id, points, now_ms());
    for (reason, n) in [
        (Reject::TimeFuture, done.future),
        (Reject::TimePast, done.past),
        (Reject::BadValue, done.invalid),
    ] {
        if n > 0 {
            tracing::warn!(series = %key, ?reason, n, first_error = ?done.first_invalid,
                "in-process readings refused");
            st.metrics.reject_n(reason, n as u64);
        }
    }
    st.metrics.readings_accepted.inc_by(done.accepted as u64);
    st.pending.mark(done.accepted as u64);
}
