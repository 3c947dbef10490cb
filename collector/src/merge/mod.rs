//! What a group of batches does to the stored results, written once for
//! both backends as plain synchronous code; the backends only sequence their
//! SQL around it.
//!
//! # Design
//! A backend's `apply` runs, in one transaction:
//! 1. **lock the senders** — the agent incarnations of the group, each
//!    once, sorted (`senders::senders`) — and read their marks;
//! 2. **claim** the group's (agent, incarnation, seq) keys at or above their
//!    sender's mark (`senders::claim_keys`: each once, sorted — the order
//!    PostgreSQL locks them in) and learn which were new;
//! 3. **dedupe** (`senders::dedupe`): per batch in order, new or
//!    duplicate; a second copy of a key in the same group is a duplicate;
//!    then **advance** each sender's mark and forget the keys below it
//!    (`senders::advance`; the memory stays small, see `senders.rs`);
//! 4. **plan** ([`plan_in`], or its halves [`gather`] and
//!    [`Gathered::into_rows`]): the new batches' partials merged per result row
//!    (series id, width, start), plus every row's roll-ups — one merge per
//!    row and coarser width, not per partial — and the agents' highest
//!    watermarks and the (series, agent) pairs to record as reporters;
//! 5. read (SQLite: from its cache or the row; PostgreSQL: locked `FOR
//!    UPDATE`) each touched row's stored state and **fold** the delta into
//!    it ([`fold`]: a new row is revision 0, each later merge bumps it);
//! 6. write the rows with their change numbers, then progress; commit.
//!
//! Merging is commutative and associative with exact integer moments, so
//! the result of a row does not depend on how batches were grouped or in
//! which order groups commit; any merge error (a quantum that differs from
//! the stored row's, an overflow) fails the whole group and nothing of it
//! is applied.

pub(crate) mod senders;

use std::borrow::Cow;
use std::collections::hash_map::Entry;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Summary, Width, Window};

use crate::store::StoreError;

/// The revision of a row's first write.
pub(crate) const FIRST_REVISION: u32 = 0;

/// A result row's key: (series id, width ms, window start ms). Each backend
/// writes (and PostgreSQL locks) rows in an order of its own over it
/// ([`plan_in`]).
pub(crate) type RowKey = (i64, i64, i64);

/// The merged delta of one result row.
#[derive(Debug)]
pub(crate) struct Delta<'a> {
    /// The row.
    pub(crate) key: RowKey,
    /// Its window.
    pub(crate) window: Window,
    /// Its series (for error messages).
    pub(crate) series: &'a SeriesKey,
    /// The partials (and roll-ups) merged into it by this group: borrowed
    /// from its batch while one partial alone makes it (at fan-in 1, most
    /// rows), so a row written once is never copied.
    pub(crate) summary: Cow<'a, Summary>,
}

/// What a group's new batches write.
#[derive(Debug, Default)]
pub(crate) struct Plan<'a> {
    /// Every touched row with its delta, in key order.
    pub(crate) rows: Vec<Delta<'a>>,
    /// Each agent's highest watermark in the group, by agent.
    pub(crate) watermarks: Vec<(&'a str, i64)>,
    /// (series id, agent) pairs that reported, sorted, each once.
    pub(crate) reporters: Vec<(i64, &'a str)>,
}

/// The error of a partial that cannot merge into `window` of `series`.
pub(crate) fn merge_error(
    series: &SeriesKey,
    window: Window,
) -> impl FnOnce(tributary_core::SummaryError) -> StoreError + '_ {
    move |source| StoreError::Merge {
        series: series.to_string(),
        window,
        source,
    }
}

/// Rows being merged: by key, the delta with its window and series.
type Pending<'a> = HashMap<RowKey, (Merged<'a>, Window, &'a SeriesKey)>;

/// A row's delta while a group is gathered: the one partial that makes it,
/// borrowed from its batch, or the merge of several, boxed. Boxed so that
/// the map's entries stay small (a 16-byte delta instead of a whole `Summary`): at fan-in
/// 1 nearly every row is one partial, and filling the map of large entries
/// — a fresh allocation each group, page-faulted in as it is written — was
/// an eighth of the SQLite writer's time in `store_bench`.
#[derive(Debug)]
enum Merged<'a> {
    One(&'a Summary),
    Many(Box<Summary>),
}

impl<'a> Merged<'a> {
    fn get(&self) -> &Summary {
        match self {
            Merged::One(s) => s,
            Merged::Many(s) => s,
        }
    }

    /// Merges `other` in, copying a borrowed delta first.
    fn merge(&mut self, other: &Summary) -> Result<(), tributary_core::SummaryError> {
        match self {
            Merged::Many(s) => s.merge(other),
            Merged::One(s) => {
                let mut owned = Box::new((*s).clone());
                owned.merge(other)?;
                *self = Merged::Many(owned);
                Ok(())
            }
        }
    }

    fn into_cow(self) -> Cow<'a, Summary> {
        match self {
            Merged::One(s) => Cow::Borrowed(s),
            Merged::Many(s) => Cow::Owned(*s),
        }
    }
}

/// Roll-up rows being merged: by key, the delta with its window and series.
pub(crate) type Level<'a> = HashMap<RowKey, (Summary, Window, &'a SeriesKey)>;

/// Merges `summary` (of `series` in `window`) into row `key` of `rows`; a
/// row's first summary is kept as it comes (borrowed or owned), copied
/// only when a second merges into it.
fn merge_into<'a>(
    rows: &mut Pending<'a>,
    key: RowKey,
    summary: Merged<'a>,
    window: Window,
    series: &'a SeriesKey,
) -> Result<(), StoreError> {
    match rows.entry(key) {
        Entry::Occupied(mut e) => e
            .get_mut()
            .0
            .merge(summary.get())
            .map_err(merge_error(series, window)),
        Entry::Vacant(e) => {
            e.insert((summary, window, series));
            Ok(())
        }
    }
}

/// The plan of the new batches `fresh`: their partials merged per row, with
/// the roll-ups at each of `rollups` coarser than a row's width; `id_of`
/// gives (or creates) a series' id. Rows come in key order.
#[cfg(test)]
pub(crate) fn plan<'a>(
    fresh: &[&'a Batch],
    rollups: &[Width],
    id_of: impl FnMut(&'a SeriesKey) -> Result<i64, StoreError>,
) -> Result<Plan<'a>, StoreError> {
    plan_in(fresh, rollups, id_of, |&key| key)
}

/// [`plan`] with rows in the order of `order` of their keys (a backend's
/// table order, so it sorts them once).
pub(crate) fn plan_in<'a, K: Ord>(
    fresh: &[&'a Batch],
    rollups: &[Width],
    id_of: impl FnMut(&'a SeriesKey) -> Result<i64, StoreError>,
    order: impl Fn(&RowKey) -> K,
) -> Result<Plan<'a>, StoreError> {
    let mut g = gather(fresh, id_of)?;
    let levels = g.roll_ups(rollups)?;
    let watermarks = std::mem::take(&mut g.watermarks);
    let reporters = std::mem::take(&mut g.reporters);
    Ok(Plan {
        rows: g.into_rows(i64::MIN, levels, order)?,
        watermarks,
        reporters,
    })
}

/// A group's partials merged per row, before their roll-ups: the first
/// half of [`plan_in`], for a backend that writes the rows no roll-up
/// lands on ([`Gathered::finer_than`]) while the roll-ups are computed.
#[derive(Debug)]
pub(crate) struct Gathered<'a> {
    rows: Pending<'a>,
    /// Each agent's highest watermark in the group, by agent.
    pub(crate) watermarks: Vec<(&'a str, i64)>,
    /// (series id, agent) pairs that reported, sorted, each once.
    pub(crate) reporters: Vec<(i64, &'a str)>,
}

/// A row of [`Gathered::finer_than`]: its delta, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef<'r, 'a> {
    pub(crate) key: RowKey,
    pub(crate) window: Window,
    pub(crate) series: &'a SeriesKey,
    pub(crate) summary: &'r Summary,
}

/// The partials of the new batches `fresh` merged per row; `id_of` gives
/// (or creates) a series' id.
pub(crate) fn gather<'a>(
    fresh: &[&'a Batch],
    mut id_of: impl FnMut(&'a SeriesKey) -> Result<i64, StoreError>,
) -> Result<Gathered<'a>, StoreError> {
    // Sized for every partial a row of its own (fan-in 1) and an eighth
    // more for roll-ups, so the map of large entries is not rehashed while
    // it fills.
    let partials: usize = fresh.iter().map(|b| b.partials.len()).sum();
    let mut rows: Pending<'a> = Pending::with_capacity(partials + partials / 8);
    let mut watermarks: std::collections::BTreeMap<&'a str, i64> = Default::default();
    let mut reporters: HashSet<(i64, &'a str)> = HashSet::new();
    // An agent's batches usually list the same series in the same order:
    // the series at the same place in the agent's previous batch is tried
    // first (one comparison of keys, where `id_of` hashes the key and
    // probes), and a pair it matched is already among the reporters. In
    // `store_bench --fan-in 1` the lookups were a tenth of the SQLite
    // writer's time.
    let mut previous: HashMap<&'a str, Vec<(&'a SeriesKey, i64)>> = HashMap::new();
    for b in fresh {
        let agent = b.agent.as_str();
        let w = watermarks.entry(agent).or_insert(i64::MIN);
        *w = (*w).max(b.watermark);
        let known = previous.entry(agent).or_default();
        for (i, p) in b.partials.iter().enumerate() {
            let id = match known.get(i) {
                Some(&(k, id)) if *k == p.series => id,
                _ => {
                    let id = id_of(&p.series)?;
                    reporters.insert((id, agent));
                    match known.get_mut(i) {
                        Some(slot) => *slot = (&p.series, id),
                        None => known.push((&p.series, id)),
                    }
                    id
                }
            };
            let key = (id, p.window.width().ms(), p.window.start());
            merge_into(&mut rows, key, Merged::One(&p.summary), p.window, &p.series)?;
        }
        known.truncate(b.partials.len());
    }
    let mut reporters: Vec<(i64, &'a str)> = reporters.into_iter().collect();
    reporters.sort_unstable();
    Ok(Gathered {
        rows,
        watermarks: watermarks.into_iter().collect(),
        reporters,
    })
}

impl<'a> Gathered<'a> {
    /// The rows narrower than `width_ms` (the finest roll-up width: no
    /// roll-up lands on them, so their deltas are final), in `order`.
    pub(crate) fn finer_than<K: Ord>(
        &self,
        width_ms: i64,
        order: impl Fn(&RowKey) -> K,
    ) -> Vec<RowRef<'_, 'a>> {
        let mut rows: Vec<RowRef<'_, 'a>> = self
            .rows
            .iter()
            .filter(|(key, _)| key.1 < width_ms)
            .map(|(&key, (summary, window, series))| RowRef {
                key,
                window: *window,
                series,
                summary: summary.get(),
            })
            .collect();
        // Keys are unique and cheap to compute: sorting them in place beat
        // caching them (a tenth of this call's time).
        rows.sort_unstable_by_key(|r| order(&r.key));
        rows
    }

    /// The roll-ups of every row at each of `rollups` coarser than it.
    pub(crate) fn roll_ups(&self, rollups: &[Width]) -> Result<Vec<Level<'a>>, StoreError> {
        roll_up(&self.rows, rollups)
    }

    /// The rows `width_ms` wide and wider, with the roll-ups `levels`
    /// merged in, in `order`.
    pub(crate) fn into_rows<K: Ord>(
        self,
        width_ms: i64,
        levels: Vec<Level<'a>>,
        order: impl Fn(&RowKey) -> K,
    ) -> Result<Vec<Delta<'a>>, StoreError> {
        let mut rows = self.rows;
        rows.retain(|key, _| key.1 >= width_ms);
        for level in levels {
            for (key, (summary, window, series)) in level {
                merge_into(
                    &mut rows,
                    key,
                    Merged::Many(Box::new(summary)),
                    window,
                    series,
                )?;
            }
        }
        let mut rows: Vec<Delta<'a>> = rows
            .into_iter()
            .map(|(key, (summary, window, series))| Delta {
                key,
                window,
                series,
                summary: summary.into_cow(),
            })
            .collect();
        rows.sort_unstable_by_key(|d| order(&d.key));
        Ok(rows)
    }
}

/// The roll-ups of `rows` at each of `rollups`, one level per width in
/// ascending order: each row merged once into each coarser window
/// containing it. A level whose width is a multiple of a finer level's is
/// merged from that level's windows instead of from the rows under them
/// (the same sums — merging is associative and windows nest — for a
/// fraction of the merges: a day from 24 hours, not 1,440 minutes). A
/// roll-up width that is not a multiple of a row's is skipped for that
/// row; a roll-up window that would not fit the range of event time
/// (ingest refuses such partials first) fails the group like an overflow,
/// never silently leaving the roll-up short.
fn roll_up<'a>(rows: &Pending<'a>, rollups: &[Width]) -> Result<Vec<Level<'a>>, StoreError> {
    let mut widths: Vec<i64> = rollups.iter().map(|w| w.ms()).collect();
    widths.sort_unstable();
    widths.dedup();
    let mut levels: Vec<(i64, Level<'a>)> = Vec::with_capacity(widths.len());
    for &ms in &widths {
        let width = Width::new(ms).map_err(|_| StoreError::BadRollup(ms))?;
        // The coarsest finer level this one is a multiple of, if any.
        let via = levels.iter().rev().find(|(w, _)| ms % w == 0);
        let mut level: Level<'a> = Level::new();
        let mut add = |key: RowKey, summary: &Summary, window: Window, series: &'a SeriesKey| {
            let coarse = match window.coarsen(width) {
                Ok(c) => c,
                Err(tributary_core::window::WindowError::NotMultiple { .. }) => return Ok(()),
                Err(_) => {
                    return Err(merge_error(series, window)(
                        tributary_core::SummaryError::Overflow("roll-up window"),
                    ))
                }
            };
            match level.entry((key.0, ms, coarse.start())) {
                Entry::Occupied(mut e) => e
                    .get_mut()
                    .0
                    .merge(summary)
                    .map_err(merge_error(series, coarse)),
                Entry::Vacant(e) => {
                    e.insert((summary.clone(), coarse, series));
                    Ok(())
                }
            }
        };
        for (&key, (summary, window, series)) in rows {
            let w = window.width().ms();
            // Rows that reached the finer level get here through it.
            let through = via.is_some_and(|(v, _)| w < *v && v % w == 0);
            if w < ms && !through {
                add(key, summary.get(), *window, series)?;
            }
        }
        if let Some((_, finer)) = via {
            for (&key, (summary, window, series)) in finer {
                add(key, summary, *window, series)?;
            }
        }
        levels.push((ms, level));
    }
    Ok(levels.into_iter().map(|(_, level)| level).collect())
}

/// A row's state after this group: the stored state (revision, summary),
/// if any, with the delta merged into it — revision 0 for a new row, one
/// more for each later merge.
pub(crate) fn fold(
    stored: Option<(u32, Summary)>,
    delta: Delta<'_>,
) -> Result<(u32, Summary), StoreError> {
    match stored {
        None => Ok((FIRST_REVISION, delta.summary.into_owned())),
        Some(stored) => fold_into(stored, &delta.summary, delta.series, delta.window),
    }
}

/// A stored row's state (revision, summary) with `delta` (of `series` in
/// `window`) merged into it: one revision more.
pub(crate) fn fold_into(
    (revision, mut summary): (u32, Summary),
    delta: &Summary,
    series: &SeriesKey,
    window: Window,
) -> Result<(u32, Summary), StoreError> {
    summary.merge(delta).map_err(merge_error(series, window))?;
    Ok((revision.saturating_add(1), summary))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::batch::Partial;
    use tributary_core::Quantum;
    use tributary_sim::judge::judge_readings;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;

    /// Panics, naming the caller's line, unless the oracle finds `got` to be
    /// the summary of exactly `readings` (event time, ticks of 10⁻³): the
    /// reference comes from the raw readings, not from `Summary`.
    #[track_caller]
    fn assert_holds(got: &Summary, readings: &[(i64, i64)]) {
        let problems = judge_readings(got, -3, readings);
        assert!(problems.is_empty(), "{problems:?}");
    }

    fn partial(device: &str, minute: i64, v: i64) -> Partial {
        let start = 10 * HOUR + minute * MIN;
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        s.insert(start, v).unwrap();
        Partial {
            series: SeriesKey::new("t", device, Default::default()).unwrap(),
            window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
            summary: s,
        }
    }

    fn ids(key: &SeriesKey) -> Result<i64, StoreError> {
        Ok(if key.device() == "a" { 1 } else { 2 })
    }

    #[test]
    fn the_plan_merges_per_row_and_rolls_up_exactly() {
        let group = [
            Batch::new("gw-1", 1, 5, vec![partial("a", 0, 1), partial("a", 1, 2)]),
            Batch::new("gw-2", 1, 9, vec![partial("a", 0, 3), partial("b", 0, 4)]),
            Batch::new("gw-1", 2, 3, vec![partial("a", 0, 5)]),
        ];
        let fresh: Vec<&Batch> = group.iter().collect();
        let hour = Width::new(HOUR).unwrap();
        let p = plan(&fresh, &[hour], ids).unwrap();
        let counts: Vec<(RowKey, u64)> =
            p.rows.iter().map(|d| (d.key, d.summary.count())).collect();
        let (m0, m1) = (10 * HOUR, 10 * HOUR + MIN);
        assert_eq!(
            counts,
            [
                ((1, MIN, m0), 3),
                ((1, MIN, m1), 1),
                ((1, HOUR, m0), 4),
                ((2, MIN, m0), 1),
                ((2, HOUR, m0), 1),
            ]
        );
        // Each row holds exactly its readings: the minutes theirs, the
        // roll-up those of the rows inside it.
        let rows: [Vec<(i64, i64)>; 5] = [
            vec![(m0, 1), (m0, 3), (m0, 5)],
            vec![(m1, 2)],
            vec![(m0, 1), (m1, 2), (m0, 3), (m0, 5)],
            vec![(m0, 4)],
            vec![(m0, 4)],
        ];
        for (row, readings) in p.rows.iter().zip(&rows) {
            assert_holds(&row.summary, readings);
        }
        assert_eq!(p.watermarks, [("gw-1", 5), ("gw-2", 9)]);
        assert_eq!(p.reporters, [(1, "gw-1"), (1, "gw-2"), (2, "gw-2")]);
    }

    /// The ids tried from an agent's previous batch never stand in for
    /// another series: batches of one agent that reorder, drop, add or
    /// replace series, and another agent listing other series at the same
    /// places, get each partial the id its own key names, and every (series,
    /// agent) pair that reported is listed once.
    #[test]
    fn each_partial_gets_its_own_series_id_whatever_the_agents_list() {
        let devices = |ds: &[&str], minute: i64| -> Vec<Partial> {
            ds.iter().map(|d| partial(d, minute, 1)).collect()
        };
        let group = [
            Batch::new("gw-1", 1, 0, devices(&["a", "b", "c"], 0)),
            Batch::new("gw-2", 1, 0, devices(&["d", "e", "f"], 0)),
            Batch::new("gw-1", 2, 0, devices(&["a", "b", "c"], 1)),
            Batch::new("gw-1", 3, 0, devices(&["c", "a", "b"], 2)),
            Batch::new("gw-1", 4, 0, devices(&["a", "c"], 3)),
            Batch::new("gw-1", 5, 0, devices(&["a", "c", "g", "b"], 4)),
            Batch::new("gw-2", 2, 0, devices(&["d", "x", "f"], 1)),
            Batch::new("gw-2", 3, 0, devices(&["d", "e", "f"], 2)),
        ];
        // The judge: ids from the device's letter, pairs from the inputs.
        let id = |key: &SeriesKey| i64::from(key.device().as_bytes()[0]);
        let fresh: Vec<&Batch> = group.iter().collect();
        let mut lookups = 0;
        let g = gather(&fresh, |key| {
            lookups += 1;
            Ok(id(key))
        })
        .unwrap();
        let mut want: Vec<(RowKey, i64)> = group
            .iter()
            .flat_map(|b| &b.partials)
            .map(|p| ((id(&p.series), MIN, p.window.start()), id(&p.series)))
            .collect();
        want.sort_unstable();
        let mut got: Vec<(RowKey, i64)> = g.rows.keys().map(|&k| (k, k.0)).collect();
        got.sort_unstable();
        assert_eq!(got, want);
        let mut pairs: Vec<(i64, &str)> = group
            .iter()
            .flat_map(|b| b.partials.iter().map(|p| (id(&p.series), b.agent.as_str())))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(g.reporters, pairs);
        // The repeated lists were not looked up again: the first batch of
        // each agent (6), then only the places whose series changed
        // (gw-1: 3 reordered, 2 swapped, 2 added; gw-2: 1, then 1 back).
        assert_eq!(lookups, 6 + 7 + 2);
    }

    /// Roll-ups merged through a finer roll-up hold the same readings as
    /// ones merged from the rows: a day (through 90-minute windows, which
    /// divide it, not through hours, which do not divide 90 minutes) and
    /// each 90-minute window equal the summary of their readings.
    #[test]
    fn roll_ups_through_finer_roll_ups_hold_every_reading_once() {
        let minutes = [0, 59, 60, 89, 90, 200, 700];
        let group: Vec<Batch> = minutes
            .iter()
            .enumerate()
            .map(|(i, &m)| Batch::new("gw", i as u64, 0, vec![partial("a", m, m + 1)]))
            .collect();
        let fresh: Vec<&Batch> = group.iter().collect();
        let widths = [HOUR, 90 * MIN, 24 * HOUR].map(|w| Width::new(w).unwrap());
        let p = plan(&fresh, &widths, ids).unwrap();
        let of = |width: i64, start: i64| {
            p.rows
                .iter()
                .find(|d| d.key == (1, width, start))
                .map(|d| d.summary.clone().into_owned())
        };
        // The readings of the minutes in `lo..hi`, as `partial` made them.
        let readings = |lo: i64, hi: i64| -> Vec<(i64, i64)> {
            minutes
                .iter()
                .filter(|&&m| lo <= m && m < hi)
                .map(|&m| (10 * HOUR + m * MIN, m + 1))
                .collect()
        };
        // 10:00 is minute 600 of the day: 90-minute windows start at
        // 9:00 (minutes -60..30 here), 10:30 (30..120), 12:00 (120..210)…
        for (width, start, (lo, hi)) in [
            (24 * HOUR, 0, (-600, 840)),
            (90 * MIN, 9 * HOUR, (-60, 30)),
            (90 * MIN, 10 * HOUR + 30 * MIN, (30, 120)),
            (90 * MIN, 12 * HOUR, (120, 210)),
            (HOUR, 10 * HOUR, (0, 60)),
            (HOUR, 11 * HOUR, (60, 120)),
        ] {
            let got = of(width, start).unwrap_or_else(|| panic!("no row {width} @ {start}"));
            assert_holds(&got, &readings(lo, hi));
        }
        let total: u64 = p
            .rows
            .iter()
            .filter(|d| d.key.1 == 24 * HOUR)
            .map(|d| d.summary.count())
            .sum();
        assert_eq!(total, minutes.len() as u64);
    }

    /// A row whose roll-up window would pass the end of event time fails
    /// the plan (as unmergeable), instead of being left out of the roll-up.
    #[test]
    fn a_roll_up_past_the_range_of_event_time_fails_the_plan() {
        let start = (i64::MIN / MIN + 1) * MIN;
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        s.insert(start, 1).unwrap();
        let p = Partial {
            series: SeriesKey::new("t", "a", Default::default()).unwrap(),
            window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
            summary: s,
        };
        let group = [Batch::new("gw", 1, 0, vec![p])];
        let fresh: Vec<&Batch> = group.iter().collect();
        let hour = Width::new(HOUR).unwrap();
        let err = plan(&fresh, &[hour], ids).unwrap_err();
        assert!(matches!(err, StoreError::Merge { .. }), "{err}");
        // Without the roll-up the row itself is fine.
        assert_eq!(plan(&fresh, &[], ids).unwrap().rows.len(), 1);
    }

    #[test]
    fn folding_bumps_the_revision_and_refuses_another_quantum() {
        let fresh = [Batch::new("gw", 1, 0, vec![partial("a", 0, 1)])];
        let refs: Vec<&Batch> = fresh.iter().collect();
        let delta = || plan(&refs, &[], ids).unwrap().rows.remove(0);
        let (rev, first) = fold(None, delta()).unwrap();
        assert_eq!((rev, first.count()), (0, 1));
        let (rev, second) = fold(Some((rev, first)), delta()).unwrap();
        assert_eq!((rev, second.count()), (1, 2));
        let other = Summary::new(Quantum::new(-1).unwrap());
        let err = fold(Some((4, other)), delta()).unwrap_err();
        assert!(matches!(err, StoreError::Merge { .. }), "{err}");
    }
}
