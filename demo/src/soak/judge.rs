//! The soak's verdict: the collector's stored results, at every width they
//! were stored at, against the oracle's exact statistics of the devices'
//! raw readings.
//!
//! # Design
//! An agent that coarsens sends some of a series' readings in wider
//! windows than its own, so one window of the roll-up width `rollup` (a
//! multiple of every width) may hold rows of several widths. The judge
//! therefore checks:
//! - per (series, roll-up window), the collector's roll-up — every stored
//!   row of the window merged — against the oracle's statistics of the
//!   readings of that window: all of count, sums, min, max, first, last,
//!   mean, variance exactly, quantiles in the true bucket. Its count against
//!   the oracle's gives `lost` (fewer) and `doubled` (more) readings;
//! - every finer stored row that no row of another width overlaps, at its
//!   own width, against the oracle's window of that width: a coarsened
//!   window is exact at the width it was stored at.
//!
//! Readings an agent dropped (its outbox full at its coarsest level) are
//! counted durably and reported upstream per agent: that agent's `lost`
//! excludes them, and its windows short of readings are not counted as
//! mismatches while its drops explain the shortfall. The series of an agent
//! that dropped nothing are judged strictly.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::{all_windows, Query};
use tributary_core::{SeriesKey, Summary, Width};
use tributary_oracle::Readings;
use tributary_sim::judge::{judge, series};

/// Stored results: (width, series, window start) → summary.
pub type Stored = BTreeMap<(i64, SeriesKey, i64), Summary>;

/// Readings each agent reported dropped, by agent id.
pub type Dropped = BTreeMap<String, u64>;

/// The tag naming the agent that forwarded a series (every soak agent
/// sets it among its global tags).
pub const AGENT_TAG: &str = "gateway";

/// Reads every stored row at `widths` (ms) and the readings each agent
/// reported dropped.
pub fn stored(db: &Path, widths: &[i64]) -> anyhow::Result<(Stored, Dropped)> {
    let store = SqliteStore::open(db, &[]).context("opening the collector's database")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("a runtime for reading the store")?;
    rt.block_on(async {
        let mut out = Stored::new();
        for &w in widths {
            let width = Width::new(w).context("a soak width")?;
            for ((key, start), row) in all_windows(&store, width).await? {
                out.insert((w, key, start), row.summary);
            }
        }
        let dropped = store
            .agents()
            .await?
            .into_iter()
            .map(|a| (a.agent, a.dropped_readings))
            .collect();
        Ok((out, dropped))
    })
}

/// Readings in the stored rows of width `w`.
pub fn count_at(stored: &Stored, w: i64) -> u64 {
    stored
        .iter()
        .filter(|((width, _, _), _)| *width == w)
        .map(|(_, s)| s.count())
        .sum()
}

/// The soak's figures of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Readings the devices produced (the oracle's count).
    pub readings_in: u64,
    /// Readings in the merged results (the roll-up's count).
    pub merged: u64,
    /// Of those, readings that arrived in windows wider than the agents'.
    pub coarsened: u64,
    /// Readings the agents dropped and counted (reported upstream).
    pub dropped_counted: u64,
    /// The same, by agent (agents that dropped nothing left out).
    pub dropped_by_agent: Dropped,
    /// Readings produced that are in no result and not counted dropped.
    pub lost: u64,
    /// Readings counted more than once.
    pub doubled: u64,
    /// Roll-up windows judged against the oracle.
    pub rollup_windows_checked: usize,
    /// Finer stored rows judged at their own width.
    pub rows_checked: usize,
    /// Windows or rows that disagree with the oracle.
    pub mismatched: usize,
    /// The first few disagreements.
    pub problems: Vec<String>,
}

impl Figures {
    /// Whether the run passed: nothing lost, nothing doubled, every window
    /// exact.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.mismatched == 0 && self.merged > 0
    }
}

fn note(f: &mut Figures, what: String) {
    f.mismatched += 1;
    if f.problems.len() < 30 {
        f.problems.push(what);
    }
}

/// Judges `stored` (rows at `widths`, the last being the roll-up width)
/// against the oracle's `want`; `agent_width` is the agents' own window.
pub fn verdict(
    want: &Readings,
    stored: &Stored,
    dropped: &Dropped,
    widths: &[i64],
    agent_width: i64,
) -> anyhow::Result<Figures> {
    let rollup = *widths.last().context("no widths")?;
    let mut f = Figures {
        readings_in: want.count(),
        merged: count_at(stored, rollup),
        dropped_counted: dropped.values().sum(),
        dropped_by_agent: dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(a, n)| (a.clone(), *n))
            .collect(),
        ..Figures::default()
    };
    // Whether the agent of a series dropped readings.
    let dropping = |tags: &BTreeMap<String, String>| {
        tags.get(AGENT_TAG)
            .and_then(|a| dropped.get(a))
            .is_some_and(|n| *n > 0)
    };
    f.coarsened = widths
        .iter()
        .filter(|w| **w > agent_width && **w < rollup)
        .map(|w| count_at(stored, *w))
        .sum();
    // Roll-up windows: counts and every statistic.
    let truth = want.windows(rollup)?;
    let mut shortfall = Dropped::new();
    let mut got_rollup = BTreeMap::new();
    for ((w, key, start), s) in stored {
        if *w == rollup {
            got_rollup.insert((series(key), *start), (key, s));
        }
    }
    for ((name, start), stats) in &truth {
        f.rollup_windows_checked += 1;
        let got = got_rollup.remove(&(name.clone(), *start));
        let n = got.map_or(0, |(_, s)| s.count());
        let agent = name.tags.get(AGENT_TAG).cloned().unwrap_or_default();
        *shortfall.entry(agent).or_default() += stats.count().saturating_sub(n);
        f.doubled += n.saturating_sub(stats.count());
        let problems = match got {
            Some((_, s)) => judge(s, stats),
            None => vec!["no result".into()],
        };
        // A shortfall its agent's counted drops explain is not a mismatch.
        let explained = dropping(&name.tags) && n < stats.count();
        if !(problems.is_empty() || explained) {
            note(
                &mut f,
                format!("{name:?} @ {start} (roll-up): {problems:?}"),
            );
        }
    }
    for ((name, start), (_, s)) in got_rollup {
        f.doubled += s.count();
        note(
            &mut f,
            format!("{name:?} @ {start}: a result no reading explains"),
        );
    }
    f.lost = shortfall
        .iter()
        .map(|(agent, n)| n.saturating_sub(dropped.get(agent).copied().unwrap_or(0)))
        .sum();
    // Finer rows that no row of another width overlaps, at their width.
    for &w in widths.iter().filter(|w| **w < rollup) {
        let oracle = want.windows(w)?;
        for ((_, key, start), s) in stored.iter().filter(|((width, _, _), _)| *width == w) {
            if overlapped(stored, widths, key, *start, w, rollup) {
                continue;
            }
            f.rows_checked += 1;
            let problems = match oracle.get(&(series(key), *start)) {
                Some(stats) => judge(s, stats),
                None => vec!["a row no reading explains".into()],
            };
            if !problems.is_empty() && !dropping(key.tags()) {
                note(&mut f, format!("{key} @ {start} (width {w}): {problems:?}"));
            }
        }
    }
    Ok(f)
}

/// Whether a stored row of another width below `rollup` overlaps
/// `[start, start + w)` of `key`.
fn overlapped(
    stored: &Stored,
    widths: &[i64],
    key: &SeriesKey,
    start: i64,
    w: i64,
    rollup: i64,
) -> bool {
    widths
        .iter()
        .filter(|o| **o != w && **o < rollup)
        .any(|&o| {
            // The rows of width `o` that can overlap: those starting in
            // (start - o, start + w).
            let lo = start.saturating_sub(o).saturating_add(1);
            let hi = start.saturating_add(w);
            stored
                .range((o, key.clone(), lo)..(o, key.clone(), hi))
                .next()
                .is_some()
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::Quantum;

    const WIDTHS: [i64; 3] = [5_000, 10_000, 60_000];

    /// 40 readings of one series over [0, 60 s): the oracle's input, and
    /// (time, ticks) to build stored rows from.
    fn readings() -> (SeriesKey, Readings, Vec<(i64, i64)>) {
        let tags = BTreeMap::from([(AGENT_TAG.to_string(), "gw-0".to_string())]);
        let key = SeriesKey::new("temperature", "dev-0", tags).unwrap();
        let raw: Vec<(i64, i64)> = (0..40).map(|i| (i * 1_499, (i * 37) % 23 - 11)).collect();
        let mut r = Readings::new();
        for &(t, v) in &raw {
            r.add(&series(&key), -3, t, v).unwrap();
        }
        (key, r, raw)
    }

    fn none() -> Dropped {
        Dropped::new()
    }

    fn summary(raw: &[(i64, i64)]) -> Summary {
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        for &(t, v) in raw {
            s.insert(t, v).unwrap();
        }
        s
    }

    /// Stored rows as an agent that coarsened [10 s, 30 s) would leave
    /// them: 5 s rows, one 10 s row, and the roll-up of all of it.
    fn stored_rows(key: &SeriesKey, raw: &[(i64, i64)]) -> Stored {
        let mut out = Stored::new();
        for start in (0..60_000).step_by(5_000) {
            if (10_000..30_000).contains(&start) {
                continue;
            }
            let part: Vec<_> = raw
                .iter()
                .copied()
                .filter(|(t, _)| (start..start + 5_000).contains(t))
                .collect();
            out.insert((5_000, key.clone(), start), summary(&part));
        }
        for start in [10_000, 20_000] {
            let part: Vec<_> = raw
                .iter()
                .copied()
                .filter(|(t, _)| (start..start + 10_000).contains(t))
                .collect();
            out.insert((10_000, key.clone(), start), summary(&part));
        }
        out.insert((60_000, key.clone(), 0), summary(raw));
        out
    }

    #[test]
    fn exact_results_pass_at_every_stored_width() {
        let (key, want, raw) = readings();
        let f = verdict(&want, &stored_rows(&key, &raw), &none(), &WIDTHS, 5_000).unwrap();
        assert!(f.ok(), "{f:#?}");
        assert_eq!((f.readings_in, f.merged), (40, 40));
        let coarsened = raw
            .iter()
            .filter(|(t, _)| (10_000..30_000).contains(t))
            .count();
        assert_eq!(f.coarsened, coarsened as u64);
        assert_eq!((f.rollup_windows_checked, f.rows_checked), (1, 10));
    }

    #[test]
    fn a_missing_reading_is_lost_and_an_extra_one_doubled() {
        let (key, want, raw) = readings();
        let mut less = stored_rows(&key, &raw[1..]);
        let f = verdict(&want, &less, &none(), &WIDTHS, 5_000).unwrap();
        assert_eq!((f.lost, f.doubled), (1, 0));
        assert!(!f.ok());
        // Counted as dropped by its agent, it is not lost; by another
        // agent, it is.
        let dropped = |agent: &str| Dropped::from([(agent.to_string(), 1)]);
        let f = verdict(&want, &less, &dropped("gw-0"), &WIDTHS, 5_000).unwrap();
        assert_eq!(
            (f.lost, f.mismatched, f.dropped_counted),
            (0, 0, 1),
            "{f:#?}"
        );
        let f = verdict(&want, &less, &dropped("gw-1"), &WIDTHS, 5_000).unwrap();
        assert_eq!(f.lost, 1);
        assert!(f.mismatched > 0);
        let mut more = raw.clone();
        more.push(raw[3]);
        less = stored_rows(&key, &more);
        let f = verdict(&want, &less, &none(), &WIDTHS, 5_000).unwrap();
        assert_eq!((f.lost, f.doubled), (0, 1));
        assert!(f.mismatched >= 2, "the roll-up and the 5 s row: {f:#?}");
    }

    #[test]
    fn a_wrong_value_in_a_finer_row_is_found_at_its_width() {
        let (key, want, raw) = readings();
        let mut rows = stored_rows(&key, &raw);
        let mut wrong = raw.clone();
        wrong[0].1 += 1;
        let part: Vec<_> = wrong.iter().copied().filter(|(t, _)| *t < 5_000).collect();
        rows.insert((5_000, key.clone(), 0), summary(&part));
        let f = verdict(&want, &rows, &none(), &WIDTHS, 5_000).unwrap();
        assert_eq!((f.lost, f.doubled, f.mismatched), (0, 0, 1), "{f:#?}");
        // A result of a series no device has (hostile input that got in).
        let mut rows = stored_rows(&key, &raw);
        let intruder = SeriesKey::new("hostile", "x", BTreeMap::new()).unwrap();
        rows.insert((60_000, intruder, 0), summary(&raw[..1]));
        let f = verdict(&want, &rows, &none(), &WIDTHS, 5_000).unwrap();
        assert_eq!(f.doubled, 1);
        assert!(!f.ok());
    }
}
