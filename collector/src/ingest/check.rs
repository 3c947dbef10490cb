//! The checks every payload passes before it may join a group: topic,
//! size, decoding (JSON or binary, version), the batch's identity against
//! the topic's agent, the number of partials. A refused payload is named by
//! its reason (the label of `tributary_collector_refused_total`).
//!
//! # Identity
//! A batch's identity is (agent, incarnation, seq). It cannot be the
//! topic's agent's — refused, acknowledged and counted — when:
//! - its agent is not the topic's (`agent_mismatch`);
//! - its incarnation is not 16 lowercase hex digits, its
//!   `first_unconfirmed` is above its own sequence (no agent forms such a
//!   batch), or its sequence is beyond what the store keeps (2⁶³ − 1)
//!   (`bad_identity`).
//!
//! A new incarnation of a known agent *is* accepted — a re-provisioned
//! gateway, or its database replaced — and logged and counted by ingest
//! (`tributary_collector_incarnations_total{kind="another"}`). MQTT does not
//! tell a subscriber who published a message: only the broker's per-agent
//! credentials and ACLs (the production default, see
//! `config/multi-instance/`) make the topic's agent the publisher's.
//!
//! # Time bounds
//! Then the event times of an accepted batch, against the collector's clock
//! (issue #12): a partial whose window starts later than `max_future_ms`
//! ahead, or earlier than `max_age_ms` ago (when set), is taken out of the
//! batch and counted by reason (`time_future`, `time_past`); the rest of the
//! batch applies and the batch is confirmed, so the agent does not resend
//! it for ever. Whatever the bounds, a window within [`Width::MAX_MS`] of
//! either end of `i64` is refused, so every roll-up of an accepted window
//! fits. A watermark ahead of the bound is clamped to it (counted), so one
//! agent's bad clock cannot make every window final at once.
//!
//! # Retention
//! Last, a partial whose window has expired under `[retention]` at the
//! collector's clock ([`crate::retention::Policy::expired`], at the
//! partial's own width) is taken out and counted (`expired`): late data is
//! never merged into a window retention is deleting or has deleted.

use tributary_core::batch::{Batch, BatchError, Partial};
use tributary_core::{topic, Width};

use crate::retention::Policy;
use crate::store::{Refusal, Refusals};

/// Why a payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Larger than `max_payload_bytes`.
    Oversized,
    /// Not a batch: malformed, unknown version, invalid summary.
    Malformed,
    /// The batch's agent differs from its topic's.
    AgentMismatch,
    /// More partials than `max_partials`.
    TooManyPartials,
    /// A topic outside the agents' partials tree.
    BadTopic,
    /// A partial cannot merge into its stored window (quantum mismatch, overflow).
    Unmergeable,
    /// The batch's identity cannot be an agent's (see the module
    /// documentation).
    BadIdentity,
    /// The store failed on this batch alone while others applied (its code
    /// panicked on it): refused so it does not hold up ingest for good.
    StoreFailed,
}

/// Every reason with its metric label.
pub(crate) const REFUSED: [(Refused, &str); 8] = [
    (Refused::Oversized, "oversized"),
    (Refused::Malformed, "malformed"),
    (Refused::AgentMismatch, "agent_mismatch"),
    (Refused::TooManyPartials, "too_many_partials"),
    (Refused::BadTopic, "bad_topic"),
    (Refused::Unmergeable, "unmergeable"),
    (Refused::BadIdentity, "bad_identity"),
    (Refused::StoreFailed, "store_failed"),
];

impl Refused {
    /// The reason's metric label.
    pub fn name(self) -> &'static str {
        REFUSED[self as usize].1
    }
}

/// The limits a payload is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted payload (bytes).
    pub max_payload_bytes: usize,
    /// Most partials in one batch.
    pub max_partials: usize,
    /// How far ahead of the clock a partial's window may start and a
    /// watermark may be (ms).
    pub max_future_ms: i64,
    /// How long ago a partial's window may start (ms); `None`: no bound.
    pub max_age_ms: Option<i64>,
}

/// Why a partial was taken out of an accepted batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialRefused {
    /// Its window starts later than the clock plus `max_future_ms`.
    TimeFuture,
    /// Its window starts earlier than the clock minus `max_age_ms`.
    TimePast,
    /// Its window has expired under `[retention]`.
    Expired,
}

/// Every partial refusal with its metric label.
pub(crate) const PARTIAL_REFUSED: [(PartialRefused, &str); 3] = [
    (PartialRefused::TimeFuture, "time_future"),
    (PartialRefused::TimePast, "time_past"),
    (PartialRefused::Expired, "expired"),
];

impl PartialRefused {
    /// The reason's metric label.
    pub fn name(self) -> &'static str {
        PARTIAL_REFUSED[self as usize].1
    }
}

/// An accepted batch and what its time check took out of it.
#[derive(Debug)]
pub struct Checked {
    /// The batch, holding only the partials within the time bounds.
    pub batch: Batch,
    /// Partials taken out: later than the bound.
    pub future: usize,
    /// Partials taken out: earlier than the bound.
    pub past: usize,
    /// Partials taken out: their window expired ([`drop_expired`]).
    pub expired: usize,
    /// The watermark the batch carried when it was clamped.
    pub clamped_watermark: Option<i64>,
    /// The same partials by reason with their readings, as the store keeps
    /// them durably with the batch ([`crate::store::Ingest::apply_refused`]).
    pub refused: Refusals,
}

/// Counts one refused partial into `r`.
fn refuse(r: &mut Refusal, p: &Partial) {
    r.add(Refusal {
        partials: 1,
        readings: p.summary.count(),
    });
}

/// Checks one payload at wall clock `now_ms`; returns the batch (with the
/// partials outside the time bounds taken out) or why it was refused.
pub fn check(
    limits: Limits,
    topic_name: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Checked, (Refused, String)> {
    let batch = check_payload(limits, topic_name, payload)?;
    Ok(check_times(limits, batch, now_ms))
}

/// The accepted window starts at `now`: `[earliest, latest]`, never within
/// the widest roll-up of either end of `i64`.
fn time_range(limits: Limits, now: i64) -> (i64, i64) {
    let floor = i64::MIN + Width::MAX_MS;
    let ceiling = i64::MAX - Width::MAX_MS;
    let earliest = limits
        .max_age_ms
        .map_or(floor, |age| now.saturating_sub(age).max(floor));
    let latest = now.saturating_add(limits.max_future_ms).min(ceiling);
    (earliest, latest)
}

/// Takes the partials outside the time bounds out of `batch` and clamps
/// its watermark.
fn check_times(limits: Limits, mut batch: Batch, now: i64) -> Checked {
    let (earliest, latest) = time_range(limits, now);
    let (mut future, mut past) = (0, 0);
    let mut refused = Refusals::default();
    batch.partials.retain(|p| {
        let start = p.window.start();
        if start > latest {
            future += 1;
            refuse(&mut refused.time_future, p);
            false
        } else if start < earliest {
            past += 1;
            refuse(&mut refused.time_past, p);
            false
        } else {
            true
        }
    });
    let clamped_watermark = (batch.watermark > latest).then(|| {
        let was = batch.watermark;
        batch.watermark = latest;
        was
    });
    Checked {
        batch,
        future,
        past,
        expired: 0,
        clamped_watermark,
        refused,
    }
}

/// Takes the partials whose window has expired under `policy` at `now`
/// out of a checked batch.
pub fn drop_expired(policy: &Policy, mut c: Checked, now: i64) -> Checked {
    if !policy.deletes() {
        return c;
    }
    let before = c.batch.partials.len();
    let expired = &mut c.refused.expired;
    c.batch.partials.retain(|p| {
        let gone = policy.expired(p.window.width(), p.window.start(), now);
        if gone {
            refuse(expired, p);
        }
        !gone
    });
    c.expired = before - c.batch.partials.len();
    c
}

/// The checks of the payload itself.
fn check_payload(
    limits: Limits,
    topic_name: &str,
    payload: &[u8],
) -> Result<Batch, (Refused, String)> {
    let Some(agent) = topic::agent_of_partials(topic_name) else {
        return Err((
            Refused::BadTopic,
            format!("topic {topic_name:?} is not tributary/v1/agents/{{agent}}/partials"),
        ));
    };
    if payload.len() > limits.max_payload_bytes {
        return Err((
            Refused::Oversized,
            format!(
                "{} bytes; the limit is {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let batch = Batch::decode(payload).map_err(|e| match e {
        BatchError::Identity(_) => (Refused::BadIdentity, e.to_string()),
        e => (Refused::Malformed, e.to_string()),
    })?;
    if batch.agent != agent {
        return Err((
            Refused::AgentMismatch,
            format!(
                "batch of agent {:?} on the topic of agent {agent:?}",
                batch.agent
            ),
        ));
    }
    if i64::try_from(batch.seq).is_err() {
        return Err((
            Refused::BadIdentity,
            format!("sequence {} is beyond 2^63 - 1", batch.seq),
        ));
    }
    if batch.partials.len() > limits.max_partials {
        return Err((
            Refused::TooManyPartials,
            format!(
                "{} partials; the limit is {}",
                batch.partials.len(),
                limits.max_partials
            ),
        ));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::batch::{Encoding, Partial};
    use tributary_core::{Quantum, SeriesKey, Summary, Window};

    const LIMITS: Limits = Limits {
        max_payload_bytes: 1000,
        max_partials: 0,
        max_future_ms: 600_000,
        max_age_ms: None,
    };

    #[test]
    fn each_reason_is_found_and_named() {
        let ok = Batch::new("gw", 1, 0, vec![]).encode(Encoding::Json);
        let t = topic::partials("gw");
        let other = topic::partials("other");
        assert_eq!(check(LIMITS, &t, &ok, 0).unwrap().batch.agent, "gw");
        let cases = [
            ("x/y", ok.clone(), Refused::BadTopic),
            (t.as_str(), vec![b' '; 1001], Refused::Oversized),
            (t.as_str(), b"{".to_vec(), Refused::Malformed),
            (other.as_str(), ok.clone(), Refused::AgentMismatch),
        ];
        for (topic_name, payload, want) in cases {
            assert_eq!(check(LIMITS, topic_name, &payload, 0).unwrap_err().0, want);
        }
        assert_eq!(Refused::AgentMismatch.name(), "agent_mismatch");
        assert_eq!(Refused::Unmergeable.name(), "unmergeable");
        assert_eq!(Refused::BadIdentity.name(), "bad_identity");
        assert_eq!(Refused::StoreFailed.name(), "store_failed");
    }

    #[test]
    fn an_identity_that_cannot_be_an_agents_is_refused() {
        let t = topic::partials("gw");
        let refused = |b: &Batch| check(LIMITS, &t, &b.encode(Encoding::Json), 0).unwrap_err();
        let inc = tributary_core::Incarnation::new(7);
        // Unconfirmed batches beginning above this one.
        let (r, why) = refused(&Batch::new("gw", 5, 0, vec![]).with_identity(inc, 6));
        assert_eq!(r, Refused::BadIdentity, "{why}");
        // A sequence beyond the store's integers.
        let (r, why) = refused(&Batch::new("gw", 1 << 63, 0, vec![]).with_identity(inc, 1));
        assert_eq!(r, Refused::BadIdentity, "{why}");
        // A malformed incarnation.
        let mut v: serde_json::Value =
            serde_json::from_slice(&Batch::new("gw", 5, 0, vec![]).encode(Encoding::Json)).unwrap();
        v["incarnation"] = "GW".into();
        let (r, why) = check(LIMITS, &t, &serde_json::to_vec(&v).unwrap(), 0).unwrap_err();
        assert_eq!(r, Refused::BadIdentity, "{why}");
        assert!(why.contains("\"GW\""), "{why}");
        // The largest sequence the store keeps is fine.
        let ok = Batch::new("gw", i64::MAX as u64, 0, vec![]).with_identity(inc, 1);
        assert!(check(LIMITS, &t, &ok.encode(Encoding::Binary), 0).is_ok());
    }

    fn partial(start: i64) -> Partial {
        let mut s = Summary::new(Quantum::new(0).unwrap());
        s.insert(start, 1).unwrap();
        Partial {
            series: SeriesKey::new("m", "d", Default::default()).unwrap(),
            window: Window::new(start, Width::new(60_000).unwrap()).unwrap(),
            summary: s,
        }
    }

    /// A partial whose minute ended 30 days (the retention) or more ago is
    /// taken out as expired; the rest stays, in order.
    #[test]
    fn partials_of_expired_windows_are_taken_out() {
        let now = 1_800_000_000_000 / 60_000 * 60_000;
        let keep = 30 * 86_400_000;
        let policy = Policy::new(keep, vec![]);
        // Ends exactly `keep` ago: expired; one minute later: kept.
        let starts = [now - keep - 60_000, now - keep, now - keep - 120_000, now];
        let c = Checked {
            batch: Batch::new("gw", 1, now, starts.map(partial).to_vec()),
            future: 0,
            past: 0,
            expired: 0,
            clamped_watermark: None,
            refused: Refusals::default(),
        };
        let c = drop_expired(&policy, c, now);
        let kept: Vec<i64> = c.batch.partials.iter().map(|p| p.window.start()).collect();
        assert_eq!(kept, [now - keep, now]);
        assert_eq!(c.expired, 2);
        let one_each = Refusal {
            partials: 2,
            readings: 2,
        };
        assert_eq!(c.refused.expired, one_each, "one reading in each partial");
        assert_eq!(PartialRefused::Expired.name(), "expired");
    }

    /// Partials outside the bounds are taken out by reason, the watermark
    /// is clamped; judged against bounds computed here from the raw numbers.
    #[test]
    fn partials_outside_the_time_bounds_are_taken_out_and_the_watermark_clamped() {
        let now = 1_800_000_000_000 / 60_000 * 60_000;
        let limits = Limits {
            max_payload_bytes: 1 << 20,
            max_partials: 100,
            max_future_ms: 600_000,
            max_age_ms: Some(86_400_000),
        };
        let starts = [
            now,                              // ok
            now + 600_000,                    // ok: at the bound
            now + 660_000,                    // future
            now - 86_400_000,                 // ok: at the bound
            now - 86_460_000,                 // past
            (i64::MIN / 60_000 + 1) * 60_000, // past
            (i64::MAX / 60_000 - 1) * 60_000, // future
        ];
        let batch = Batch::new("gw", 1, i64::MAX, starts.map(partial).to_vec());
        let c = check_times(limits, batch, now);
        let kept: Vec<i64> = c.batch.partials.iter().map(|p| p.window.start()).collect();
        assert_eq!(kept, [now, now + 600_000, now - 86_400_000]);
        assert_eq!((c.future, c.past), (2, 2));
        let two = Refusal {
            partials: 2,
            readings: 2,
        };
        assert_eq!((c.refused.time_future, c.refused.time_past), (two, two));
        assert_eq!(c.clamped_watermark, Some(i64::MAX));
        assert_eq!(c.batch.watermark, now + 600_000);
        // Without an age bound, only the ends of i64 are refused as past,
        // and every roll-up (up to 366 days) of what is kept fits.
        let open = Limits {
            max_age_ms: None,
            ..limits
        };
        let batch = Batch::new("gw", 1, now, starts.map(partial).to_vec());
        let c = check_times(open, batch, now);
        assert_eq!((c.future, c.past), (2, 1));
        assert_eq!(c.clamped_watermark, None);
        for p in &c.batch.partials {
            assert!(p
                .window
                .coarsen(Width::new(Width::MAX_MS / 60_000 * 60_000).unwrap())
                .is_ok());
        }
        // A clock at the ends of i64 makes no arithmetic overflow.
        for now in [i64::MIN, i64::MAX] {
            let batch = Batch::new("gw", 1, i64::MIN, starts.map(partial).to_vec());
            let c = check_times(limits, batch, now);
            assert_eq!(c.batch.partials.len() + c.future + c.past, starts.len());
        }
        assert_eq!(PartialRefused::TimePast.name(), "time_past");
    }
}
