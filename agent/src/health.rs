//! What the agent's health endpoints report, kept up to date by the parts
//! that know it: the store's current failure (the engine), the engine
//! loop's last turn, whether batches wait for a confirmation (the engine's
//! end of the uplink). [`Health::readiness`] turns it into the reasons the
//! agent is not ready; [`crate::http`] serves them.
//!
//! # Design
//! - *Live* means the process serves HTTP: nothing else is checked, so a
//!   supervisor restarts only a process that stopped answering.
//! - *Ready* means input is being made durable and delivered: the store is
//!   writable (no failed commit waiting for a retry), the engine loop turned
//!   within [`ENGINE_STALE`], the uplink (if enabled) is connected, and
//!   batches do not wait for a confirmation longer than the stall time (by
//!   default three confirmation timeouts, at least 30 s). Each failed check
//!   is a reason, in words; none means ready.
//!
//! Times are milliseconds since the `Health` was made (a monotonic clock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// An engine loop that has not turned for this long is wedged.
pub const ENGINE_STALE: Duration = Duration::from_secs(10);

/// The state behind `/health`, `/health/live` and `/health/ready`.
#[derive(Debug)]
pub struct Health {
    origin: Instant,
    /// Why the store fails, if it does.
    store_error: Mutex<Option<String>>,
    /// The engine loop's last turn (ms; 0 = not yet running).
    engine_beat: AtomicU64,
    /// Since when batches wait for a confirmation (ms + 1; 0 = none waits).
    waiting_since: AtomicU64,
    /// Batches waiting longer than this (ms) are stalled.
    stall_after: AtomicU64,
    /// Whether an uplink is configured.
    uplink_enabled: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            origin: Instant::now(),
            store_error: Mutex::new(None),
            engine_beat: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            stall_after: AtomicU64::new(30_000),
            uplink_enabled: AtomicBool::new(false),
        }
    }
}

/// What readiness is judged on, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// Whether the uplink is connected.
    pub uplink_up: bool,
    /// Now (ms since the `Health` was made).
    pub now_ms: u64,
}

impl Health {
    /// Now, in this health's milliseconds.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Sets whether an uplink is configured and after how long
    /// unconfirmed batches count as stalled.
    pub fn configure(&self, uplink_enabled: bool, stall_after: Duration) {
        self.uplink_enabled.store(uplink_enabled, Relaxed);
        let ms = u64::try_from(stall_after.as_millis()).unwrap_or(u64::MAX);
        self.stall_after.store(ms, Relaxed);
    }

    /// The store fails for `why` (input is held unacknowledged).
    pub fn store_failed(&self, why: String) {
        *self
            .store_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    }

    /// The store works (again).
    pub fn store_ok(&self) {
        *self
            .store_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Why the store fails, if it does.
    pub fn store_error(&self) -> Option<String> {
        self.store_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The engine loop turned.
    pub fn beat(&self) {
        self.engine_beat.store(self.now_ms().max(1), Relaxed);
    }

    /// Whether batches wait for a confirmation (a change restarts the clock
    /// of how long they have waited; a confirmation is such a change).
    pub fn batches_waiting(&self, waiting: bool) {
        let v = if waiting { self.now_ms() + 1 } else { 0 };
        self.waiting_since.store(v, Relaxed);
    }

    /// The reasons the agent is not ready (none: ready), as of `o`.
    pub fn readiness(&self, o: Observed) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(e) = self.store_error() {
            reasons.push(format!(
                "store: {e} (input is held unacknowledged until a commit succeeds)"
            ));
        }
        let beat = self.engine_beat.load(Relaxed);
        let stale = u64::try_from(ENGINE_STALE.as_millis()).unwrap_or(u64::MAX);
        if beat == 0 {
            reasons.push("engine: not running yet (the store is being opened)".into());
        } else if o.now_ms.saturating_sub(beat) > stale {
            reasons.push(format!(
                "engine: no progress for {} ms (a commit or the disk is stuck)",
                o.now_ms.saturating_sub(beat)
            ));
        }
        if self.uplink_enabled.load(Relaxed) {
            let since = self.waiting_since.load(Relaxed);
            let waited = o.now_ms.saturating_sub(since.saturating_sub(1));
            if !o.uplink_up {
                reasons.push("uplink: not connected (the outbox buffers)".into());
            } else if since > 0 && waited > self.stall_after.load(Relaxed) {
                reasons.push(format!(
                    "uplink: no batch confirmed for {waited} ms (the collector does not confirm)"
                ));
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: &Health, now_ms: u64, uplink_up: bool) -> Vec<String> {
        h.readiness(Observed { uplink_up, now_ms })
    }

    #[test]
    fn each_check_gives_its_reason() {
        let h = Health::default();
        h.configure(true, Duration::from_secs(30));
        let r = at(&h, 5, true);
        assert_eq!(r.len(), 1);
        assert!(r[0].starts_with("engine: not running"), "{r:?}");
        h.beat();
        let beat = h.engine_beat.load(Relaxed);
        assert!(at(&h, beat, true).is_empty(), "ready");
        // A wedged engine: no turn for longer than ENGINE_STALE.
        let r = at(&h, beat + 10_001, true);
        assert!(
            r[0].starts_with("engine: no progress for 10001 ms"),
            "{r:?}"
        );
        // The store fails, and recovers.
        h.store_failed("sqlite: database or disk is full".into());
        let r = at(&h, beat, true);
        assert!(r[0].contains("database or disk is full"), "{r:?}");
        h.store_ok();
        assert!(at(&h, beat, true).is_empty());
        // The uplink: down, then up with batches unconfirmed too long.
        assert_eq!(
            at(&h, beat, false),
            ["uplink: not connected (the outbox buffers)"]
        );
        h.batches_waiting(true);
        let since = h.waiting_since.load(Relaxed) - 1;
        h.engine_beat.store(since + 30_000, Relaxed);
        assert!(at(&h, since + 30_000, true).is_empty());
        let r = at(&h, since + 30_001, true);
        assert!(
            r[0].starts_with("uplink: no batch confirmed for 30001 ms"),
            "{r:?}"
        );
        h.batches_waiting(false);
        assert!(at(&h, since + 30_001, true).is_empty());
        // Without an uplink, its state does not matter.
        h.configure(false, Duration::from_secs(30));
        assert!(at(&h, beat, false).is_empty());
    }
}
