//! The writer's SQL around [`crate::merge::senders`]: reading the marks of
//! a group's agent incarnations, claiming their keys, and moving the marks
//! (pruning the keys below them) with the incarnations' counts. SQLite
//! serialises writers, so the rows need no lock of their own: the whole
//! transaction is `IMMEDIATE`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rusqlite::{params, OptionalExtension, Transaction};
use tributary_core::batch::Batch;

use crate::merge::senders::{self, Key, Marks, Sender};
use crate::store::{Applied, NewIncarnation, Refusals, StoreError};

/// The marks of the group's senders, and those seen for the first time
/// (with whether their agent had other incarnations).
pub(super) fn marks<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
) -> Result<(Marks<'a>, Vec<NewIncarnation>), StoreError> {
    let mut get = tx.prepare_cached(
        "SELECT applied_below FROM incarnations WHERE agent = ?1 AND incarnation = ?2",
    )?;
    let mut other = tx.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM incarnations WHERE agent = ?1 AND incarnation <> ?2)",
    )?;
    let mut marks = Marks::new();
    let mut first = Vec::new();
    for (agent, inc) in senders::senders(batches) {
        let text = inc.to_string();
        match get
            .query_row(params![agent, text], |r| r.get::<_, i64>(0))
            .optional()?
        {
            Some(m) => {
                marks.insert((agent, inc), m);
            }
            None => first.push(NewIncarnation {
                agent: agent.to_string(),
                incarnation: inc,
                known_agent: other.query_row(params![agent, text], |r| r.get(0))?,
            }),
        }
    }
    Ok((marks, first))
}

/// Claims the group's keys at or above their marks; returns the new ones.
pub(super) fn claim<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
    marks: &Marks<'a>,
) -> Result<HashSet<Key<'a>>, StoreError> {
    let mut claim = tx.prepare_cached(
        "INSERT OR IGNORE INTO applied (agent, incarnation, seq) VALUES (?1, ?2, ?3)",
    )?;
    let mut new = HashSet::new();
    for key in senders::claim_keys(batches, marks)? {
        if claim.execute(params![key.0, key.1.to_string(), key.2])? == 1 {
            new.insert(key);
        }
    }
    Ok(new)
}

/// Moves the marks of the senders of the new batches `fresh`, prunes the
/// keys below them and adds the batches' counts, at `now_ms`.
pub(super) fn update<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
    fresh: &[&'a Batch],
    marks: &Marks<'a>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut stored: BTreeMap<Sender<'a>, BTreeSet<i64>> = BTreeMap::new();
    {
        let mut keys =
            tx.prepare_cached("SELECT seq FROM applied WHERE agent = ?1 AND incarnation = ?2")?;
        for b in fresh {
            let s = senders::sender(b);
            if stored.contains_key(&s) {
                continue;
            }
            let seqs = keys
                .query_map(params![s.0, s.1.to_string()], |r| r.get::<_, i64>(0))?
                .collect::<Result<BTreeSet<i64>, _>>()?;
            stored.insert(s, seqs);
        }
    }
    let mut prune = tx
        .prepare_cached("DELETE FROM applied WHERE agent = ?1 AND incarnation = ?2 AND seq < ?3")?;
    // Sums saturate at i64::MAX rather than turn into a float (SQLite's
    // overflow) or an error.
    let mut upsert = tx.prepare_cached(
        "INSERT INTO incarnations
           (agent, incarnation, applied_below, batches, dropped_readings, first_seen_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (agent, incarnation) DO UPDATE SET
           applied_below = max(applied_below, excluded.applied_below),
           batches = CASE WHEN batches > 9223372036854775807 - excluded.batches
             THEN 9223372036854775807 ELSE batches + excluded.batches END,
           dropped_readings = CASE WHEN dropped_readings > 9223372036854775807 - excluded.dropped_readings
             THEN 9223372036854775807 ELSE dropped_readings + excluded.dropped_readings END,
           last_seen_ms = max(last_seen_ms, excluded.last_seen_ms)",
    )?;
    for u in senders::advance(batches, fresh, marks, &stored)? {
        let (agent, inc) = (u.sender.0, u.sender.1.to_string());
        if u.prune {
            prune.execute(params![agent, inc, u.applied_below])?;
        }
        upsert.execute(params![
            agent,
            inc,
            u.applied_below,
            u.batches,
            u.dropped_readings,
            now_ms
        ])?;
    }
    Ok(())
}

/// Adds what the checks took out of each new batch to its incarnation's
/// `refused` rows (see [`crate::store::Refusals`]; a duplicate adds
/// nothing). Sums saturate at `i64::MAX`.
pub(super) fn add_refused(
    tx: &Transaction<'_>,
    batches: &[Batch],
    applied: &[Applied],
    refused: &[Refusals],
) -> Result<(), StoreError> {
    let mut upsert = tx.prepare_cached(
        "INSERT INTO refused (agent, incarnation, reason, partials, readings)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (agent, incarnation, reason) DO UPDATE SET
           partials = CASE WHEN partials > 9223372036854775807 - excluded.partials
             THEN 9223372036854775807 ELSE partials + excluded.partials END,
           readings = CASE WHEN readings > 9223372036854775807 - excluded.readings
             THEN 9223372036854775807 ELSE readings + excluded.readings END",
    )?;
    let sql = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for ((b, a), r) in batches.iter().zip(applied).zip(refused) {
        if *a != Applied::New {
            continue;
        }
        for (reason, n) in r.by_reason() {
            upsert.execute(params![
                b.agent,
                b.incarnation.to_string(),
                reason,
                sql(n.partials),
                sql(n.readings)
            ])?;
        }
    }
    Ok(())
}
