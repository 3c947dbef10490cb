//! Retention (issue #16): how long each stored width is kept, the task that
//! deletes what has expired, and the query path's fallback to a coarser
//! width.
//!
//! # Design
//! - **What expires.** A window of width *w* kept for *k* ms (0: forever)
//!   has expired once its end is *k* or more before the collector's clock:
//!   `start + w + k ≤ now`. The agents' windows (every stored width that is
//!   not a roll-up) share one length, each roll-up width has its own.
//! - **Coarser is kept at least as long.** A roll-up must never be dropped
//!   before the finer windows it is made of, or a query would find fine
//!   data with no coarse data to fall back to; and a fine window must not
//!   expire before the roll-up window holding it has ended, or a late
//!   partial for the fine window would be refused while its roll-up still
//!   takes data. [`Policy::check`] refuses a configuration breaking either
//!   (every roll-up is written in the very transaction that writes its
//!   inputs, so a roll-up window that has ended holds all its inputs).
//! - **Late data for an expired window** is refused at ingest
//!   (`tributary_collector_refused_partials_total{reason="expired"}`),
//!   never merged into a window half deleted. The task deletes a window
//!   only [`GRACE_MS`] after ingest starts refusing it, so a partial
//!   checked just before its window expired has committed before the
//!   window is deleted (a group commits within seconds).
//! - **Bounded batches.** The task deletes at most `batch_rows` rows per
//!   transaction and releases the store between transactions, so an ingest
//!   commit waits for at most one batch. An expired row leaves the change
//!   feed with it: a sink's cursor is a change number, which a delete never
//!   reuses or lowers, so a reader neither skips a live change nor sees one
//!   again; the expired row's parked entries are deleted with it.
//! - **Queries** past a width's retention are answered from the finest
//!   coarser roll-up still holding the whole range ([`Policy::serve`]), and
//!   the response says so.
//!
//! - **One instance at a time.** Instances sharing a database run the task
//!   one at a time, the one holding the store's `retention` lease
//!   ([`task`] says how it is kept through a run).
//!
//! Files: [`config`] (`[retention]`), [`task`] (the background loop, its
//! lease and its metrics).

pub mod config;
pub mod task;

use tributary_core::{Width, Window};
use tributary_runtime::config::Problems;

pub use crate::lease::LeaseClock;
pub use config::RetentionConfig;
pub use task::{RetentionMetrics, RetentionTask, Run, Step, LEASE};

/// How long after ingest starts refusing an expired window the task
/// deletes it (ms): longer than any group takes from its check to its
/// commit.
pub const GRACE_MS: i64 = 600_000;

/// How long each width is kept: a plain value, shared by ingest, the
/// task and the query API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Agent windows' length (0: forever).
    windows_ms: i64,
    /// (roll-up width, length) by width; length 0: forever.
    rollups: Vec<(i64, i64)>,
}

impl Policy {
    /// A policy keeping agent windows `windows_ms` and each roll-up
    /// (width, length) of `rollups`; 0 keeps forever.
    pub fn new(windows_ms: i64, mut rollups: Vec<(i64, i64)>) -> Self {
        rollups.sort_unstable();
        rollups.dedup();
        Policy {
            windows_ms,
            rollups,
        }
    }

    /// Whether anything ever expires.
    pub fn deletes(&self) -> bool {
        self.windows_ms > 0 || self.rollups.iter().any(|&(_, k)| k > 0)
    }

    /// How long windows of `width` are kept (ms), `None`: forever.
    pub fn keep_ms(&self, width: Width) -> Option<i64> {
        let k = match self.rollups.iter().find(|&&(w, _)| w == width.ms()) {
            Some(&(_, k)) => k,
            None => self.windows_ms,
        };
        (k > 0).then_some(k)
    }

    /// Windows of `width` starting before this have expired at `now`
    /// (`start + width + keep ≤ now`); `None` when none can.
    pub fn expired_before(&self, width: Width, now: i64) -> Option<i64> {
        let keep = self.keep_ms(width)?;
        now.checked_sub(keep)?
            .checked_sub(width.ms())?
            .checked_add(1)
    }

    /// What the task deletes at `now`: windows of `width` starting before
    /// this ([`Policy::expired_before`] [`GRACE_MS`] earlier).
    pub fn delete_before(&self, width: Width, now: i64) -> Option<i64> {
        self.expired_before(width, now.checked_sub(GRACE_MS)?)
    }

    /// Whether the window of `width` starting at `start` has expired at
    /// `now`.
    pub fn expired(&self, width: Width, start: i64, now: i64) -> bool {
        self.expired_before(width, now)
            .is_some_and(|before| start < before)
    }

    /// The width to answer a query for `width` over windows starting at
    /// `first` and later: `width` itself when none of them has expired,
    /// else the finest coarser roll-up (a multiple of `width`) whose window
    /// holding `first` has not expired, else the coarsest such roll-up
    /// (what is left); `None` when there is no coarser roll-up.
    pub fn serve(&self, width: Width, first: i64, now: i64) -> Option<Width> {
        if !self.expired(width, first, now) {
            return Some(width);
        }
        let coarser: Vec<Width> = self
            .rollups
            .iter()
            .filter_map(|&(w, _)| Width::new(w).ok())
            .filter(|c| c.ms() > width.ms() && width.divides(*c))
            .collect();
        coarser
            .iter()
            .find(|c| !self.expired(**c, Window::containing(first, **c).start(), now))
            .or(coarser.last())
            .copied()
    }

    /// Checks that each width is kept at least as long as every finer one
    /// rolled into it, and until the coarser roll-up window holding it has
    /// ended.
    pub fn check(&self, p: &mut Problems) {
        let forever = |k: i64| if k == 0 { i64::MAX } else { k };
        let mut finer = ("retention.windows_ms".to_string(), self.windows_ms);
        for &(w, k) in &self.rollups {
            let key = format!("retention.rollups.{w}");
            if forever(k) < forever(finer.1) {
                p.bad(
                    &key,
                    format!(
                        "{w} ms roll-ups would be kept {k} ms, shorter than the finer windows rolled into them ({} = {}): a query past the roll-up's retention would find nothing coarser to answer from; keep the roll-up at least as long",
                        finer.0, finer.1
                    ),
                );
            }
            if finer.1 > 0 && finer.1 < w {
                p.bad(
                    &finer.0,
                    format!(
                        "{} ms is shorter than the {w} ms roll-up: its windows would expire (and late data for them be refused) while the roll-up window holding them is still open; keep them at least {w} ms",
                        finer.1
                    ),
                );
            }
            finer = (key, k);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;

    fn w(ms: i64) -> Width {
        Width::new(ms).unwrap()
    }

    fn policy() -> Policy {
        Policy::new(30 * DAY, vec![(HOUR, 365 * DAY), (DAY, 0)])
    }

    #[test]
    fn a_window_expires_when_its_end_is_its_length_before_now() {
        let p = policy();
        let now = 1_000 * DAY;
        // The minute ending exactly 30 days ago has expired; the next not.
        let start = now - 30 * DAY - MIN;
        assert!(p.expired(w(MIN), start, now));
        assert!(!p.expired(w(MIN), start + MIN, now));
        assert!(!p.expired(w(DAY), 0, now), "days are kept forever");
        assert!(p.expired(w(HOUR), now - 365 * DAY - HOUR, now));
        assert!(!p.expired(w(HOUR), now - 365 * DAY - HOUR + 1, now));
        // Deletion waits GRACE_MS more: minutes starting before
        // now − grace − 30 days − 1 minute + 1 ms.
        assert_eq!(
            p.delete_before(w(MIN), now),
            Some(now - GRACE_MS - 30 * DAY - MIN + 1)
        );
        assert_eq!(Policy::default().expired_before(w(MIN), now), None);
        assert_eq!(p.expired_before(w(MIN), i64::MIN + 5), None);
    }

    #[test]
    fn a_query_past_retention_is_served_by_the_finest_coarser_width_that_holds_it() {
        let p = policy();
        let now = 1_000 * DAY;
        assert_eq!(p.serve(w(MIN), now - DAY, now), Some(w(MIN)));
        assert_eq!(p.serve(w(MIN), now - 40 * DAY, now), Some(w(HOUR)));
        assert_eq!(p.serve(w(MIN), now - 400 * DAY, now), Some(w(DAY)));
        assert_eq!(p.serve(w(HOUR), now - 400 * DAY, now), Some(w(DAY)));
        assert_eq!(p.serve(w(DAY), 0, now), Some(w(DAY)));
        // Nothing coarser: the width itself is gone and nothing serves.
        let only = Policy::new(DAY, vec![]);
        assert_eq!(only.serve(w(MIN), now - 2 * DAY, now), None);
    }

    #[test]
    fn a_coarser_width_kept_shorter_or_a_finer_one_shorter_than_its_rollup_is_refused() {
        let mut p = Problems::default();
        Policy::new(30 * DAY, vec![(HOUR, 7 * DAY), (DAY, 0)]).check(&mut p);
        let e = p.finish().unwrap_err().to_string();
        assert!(
            e.contains("retention.rollups.3600000") && e.contains("shorter"),
            "{e}"
        );

        let mut p = Problems::default();
        Policy::new(0, vec![(HOUR, 30 * DAY)]).check(&mut p);
        assert!(p.finish().unwrap_err().to_string().contains("shorter"));

        let mut p = Problems::default();
        Policy::new(30 * MIN, vec![(HOUR, 0)]).check(&mut p);
        let e = p.finish().unwrap_err().to_string();
        assert!(
            e.contains("retention.windows_ms") && e.contains("open"),
            "{e}"
        );

        let mut p = Problems::default();
        policy().check(&mut p);
        assert!(p.finish().is_ok());
    }
}
