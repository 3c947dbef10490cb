//! [`super::PostgresStore`]'s apply: one transaction per group of batches,
//! safe against any number of collector instances writing at once, with
//! the SQL sequenced around [`crate::merge`].
//!
//! Steps, each a single statement over arrays (`unnest`) or a staging
//! table, each taking its row locks in one global order (sorted keys) so
//! concurrent instances cannot deadlock:
//! 1. lock (creating) the group's agent incarnations' rows and read their
//!    marks ([`super::senders`]); insert every batch's (agent, incarnation,
//!    seq) key at or above its mark, `ON CONFLICT DO NOTHING RETURNING` —
//!    the keys returned are the new batches (a key another instance is
//!    inserting right now waits for that instance's commit); move the
//!    marks, pruning the keys below them;
//! 2. series ids of the new batches' series (inserted when missing);
//! 3. the merge plan (in memory): rows, roll-ups, watermarks, reporters;
//! 4. the rows' change positions from this transaction's id ([`positions`];
//!    no counter row: nothing here is serialised between instances but the
//!    row locks they really share, see [`super::feed`]);
//! 5. result rows ([`super::rows`]), in one global order (width, series,
//!    start): the rows finer than every roll-up (at fan-in 1 all new)
//!    first by an optimistic binary `COPY` straight into `results`
//!    ([`super::direct`], falling back below on a conflict); the rest
//!    inserted with its delta as its final state (binary `COPY` into a
//!    staging table, then `INSERT … SELECT … ON CONFLICT DO NOTHING
//!    RETURNING`, so a new row is written once); the rows
//!    that existed (or that another instance inserted meanwhile, which the
//!    insert waited for) are then locked with `SELECT … ORDER BY … FOR
//!    UPDATE`, the deltas folded into them, and written with one
//!    `UPDATE … FROM unnest` — no other instance can change a locked row
//!    until this one commits, so no update is lost;
//! 6. `series_agents` and `watermarks` (`GREATEST`, so order does not
//!    matter); commit.
//!
//! A deadlock or serialisation failure (which the lock order should rule
//! out) is retried with the whole transaction. A `COMMIT` whose reply is
//! lost (the connection fails during it) is answered with the
//! transaction's id and backend process, taken in step 1, for
//! [`super::resolve`] to learn whether it committed.

use std::time::Duration;

use deadpool_postgres::{Client, Transaction};
use foldhash::{HashMap, HashMapExt};
use tokio_postgres::error::SqlState;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};

use super::direct::Direct;
use super::resolve::Unknown;
use super::rows;
use super::senders::{self, Xact};
use crate::merge;
use crate::store::codec::key_text;
use crate::store::{Refusals, Report, StoreError};

/// How often a transaction that deadlocked is retried.
const RETRIES: u32 = 8;

/// What a transaction does with the new batches.
#[derive(Clone, Copy)]
enum Job<'a> {
    /// Merges them into the results, with their roll-ups.
    Apply {
        rollups: &'a [Width],
        direct: &'a Direct,
    },
    /// Records them as seen only (see
    /// [`crate::store::Ingest::record_refused`]).
    Record,
}

/// Applies `batches` in one transaction, retrying on deadlock.
/// A `COMMIT` whose reply was lost is [`Failed::Unknown`], for
/// [`super::resolve::settle`].
pub(super) async fn apply(
    client: &mut Client,
    batches: &[Batch],
    refused: &[Refusals],
    rollups: &[Width],
    direct: &Direct,
) -> Result<Report, Failed> {
    retried(client, batches, refused, Job::Apply { rollups, direct }).await
}

/// Records `batches` as seen without merging them (step 1 only),
/// retrying on deadlock (a lost `COMMIT` reply as in [`apply`]).
pub(super) async fn record(
    client: &mut Client,
    batches: &[Batch],
    refused: &[Refusals],
) -> Result<Report, Failed> {
    retried(client, batches, refused, Job::Record).await
}

/// `job` in one transaction, attempted again (after a short random pause)
/// on a deadlock or serialisation failure, up to [`RETRIES`] times.
async fn retried(
    client: &mut Client,
    batches: &[Batch],
    refused: &[Refusals],
    job: Job<'_>,
) -> Result<Report, Failed> {
    let mut attempt = 0;
    loop {
        match try_apply(client, batches, refused, job).await {
            Err(Failed::Pg(e)) if attempt < RETRIES && retryable(&e) => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "store transaction retried");
                let ms = 5u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(ms + fastrand::u64(0..ms))).await;
            }
            done => return done,
        }
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// How a transaction failed.
pub(super) enum Failed {
    /// A statement failed (the server's error, or the connection's before
    /// `COMMIT`: nothing committed).
    Pg(tokio_postgres::Error),
    /// The store's own checks or code failed (nothing committed).
    Store(StoreError),
    /// The connection failed during `COMMIT`: committed or not, the
    /// server knows ([`super::resolve`]).
    Unknown(Box<Unknown>),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Failed::Pg(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

/// One attempt of the transaction. One function on purpose: it is the
/// numbered steps of the module note in order, each a statement on the same
/// transaction; splitting it would only pass the transaction around.
async fn try_apply(
    client: &mut Client,
    batches: &[Batch],
    refused: &[Refusals],
    job: Job<'_>,
) -> Result<Report, Failed> {
    let tx = client.transaction().await?;
    let seen = tributary_runtime::now_ms();

    // 1. The senders, their keys, their marks.
    let (marks, incarnations, xact) = senders::lock(&tx, batches, seen).await?;
    let new = senders::claim(&tx, batches, &marks).await?;
    let (applied, fresh) = merge::senders::dedupe(batches, new)?;
    if fresh.is_empty() {
        let report = Report {
            applied,
            incarnations: Vec::new(),
        };
        return commit(tx, xact, report).await;
    }
    senders::update(&tx, batches, &fresh, &marks, seen).await?;
    senders::add_refused(&tx, batches, &applied, refused).await?;
    let Job::Apply { rollups, direct } = job else {
        let report = Report {
            applied,
            incarnations,
        };
        return commit(tx, xact, report).await;
    };

    // 2–3. Series ids, then the merge plan.
    let named = Named::of(&fresh);
    let ids = series_ids(&tx, &named.keys).await?;
    let mut next = 0;
    let plan = merge::plan_in(
        &fresh,
        rollups,
        |key| {
            let slot = named.slot(next, key);
            next += 1;
            slot.and_then(|i| ids.get(i).copied().flatten())
                .ok_or_else(|| StoreError::Backend(format!("no id stored for series {key}")))
        },
        rows::order,
    )?;

    // 4. Positions in the change feed: this transaction's id, taken now
    // (its first write already assigned it), numbers its rows.
    let first = positions(&tx, plan.rows.len()).await?;

    // 5. Result rows, in the global order: new rows inserted with their
    // final state (directly when expected new); the rest (and rows another
    // instance inserted meanwhile) locked, folded and updated.
    rows::write(&tx, plan.rows, first, rollups, direct).await?;

    // 6. Progress.
    let ps: Vec<i64> = plan.reporters.iter().map(|p| p.0).collect();
    let pa: Vec<&str> = plan.reporters.iter().map(|p| p.1).collect();
    let reporters = tx
        .prepare_cached(
            "INSERT INTO series_agents (series, agent)
             SELECT s, a FROM unnest($1::bigint[], $2::text[]) AS u(s, a) ORDER BY s, a
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&reporters, &[&ps, &pa]).await?;
    let ma: Vec<&str> = plan.watermarks.iter().map(|m| m.0).collect();
    let mw: Vec<i64> = plan.watermarks.iter().map(|m| m.1).collect();
    let upsert = tx
        .prepare_cached(
            "INSERT INTO watermarks (agent, watermark, seen_ms)
             SELECT a, w, $3 FROM unnest($1::text[], $2::bigint[]) AS u(a, w) ORDER BY a
             ON CONFLICT (agent) DO UPDATE SET
               watermark = GREATEST(watermarks.watermark, excluded.watermark),
               seen_ms = GREATEST(watermarks.seen_ms, excluded.seen_ms)",
        )
        .await?;
    tx.execute(&upsert, &[&ma, &mw, &seen]).await?;

    let report = Report {
        applied,
        incarnations,
    };
    commit(tx, xact, report).await
}

/// Commits `tx` (transaction `xact`), answering `report`; a `COMMIT` that
/// the connection failed under rather than the server refused leaves the
/// outcome to be learnt ([`Failed::Unknown`]).
async fn commit(tx: Transaction<'_>, xact: Xact, report: Report) -> Result<Report, Failed> {
    match tx.commit().await {
        Ok(()) => Ok(report),
        Err(error) if error.as_db_error().is_none() => Err(Failed::Unknown(Box::new(Unknown {
            xact,
            error,
            report,
        }))),
        Err(e) => Err(e.into()),
    }
}

/// Bits of a change position below the transaction id: the rows one
/// transaction may write (2^24 − 1, more than `max_group` × `max_partials`
/// × three widths).
const ROW_BITS: u32 = 24;

/// The distance between two transactions' first positions, `2^ROW_BITS`:
/// passed to every statement that computes or bounds positions
/// ([`super::feed`]), so the writer and the readers cannot disagree.
pub(super) const POSITION_STRIDE: i64 = 1 << ROW_BITS;

/// The position of the first of `rows` rows this transaction writes:
/// `base + xid · 2^24 + 1`, where `base` is the last change number of the
/// global counter of schema 4 and `xid` this transaction's id (64-bit,
/// never reused); its rows take the next ones. See [`super::feed`] for why
/// a reader never skips one.
async fn positions(tx: &Transaction<'_>, rows: usize) -> Result<i64, Failed> {
    if rows >= 1 << ROW_BITS {
        return Err(StoreError::Backend(format!(
            "a group writes {rows} result rows, more than the {} one transaction may",
            (1u64 << ROW_BITS) - 1
        ))
        .into());
    }
    // `*` (not `<<`) so an overflow fails the statement instead of wrapping.
    let first = tx
        .prepare_cached(
            "SELECT value + pg_current_xact_id()::text::bigint * $1 + 1
             FROM meta WHERE key = 'position_base'",
        )
        .await?;
    Ok(tx.query_one(&first, &[&POSITION_STRIDE]).await?.get(0))
}

/// The series of a group's new batches: each key once, and for every
/// partial (batch by batch, in order) its key and the index of that key.
///
/// Hashed (foldhash), not ordered: a key compares field by field, and a
/// group's ~50,000 partials name only ~1,000 series. The plan asks for
/// each partial's series id in that same order, so [`Named::slot`] answers
/// it by the partial's position without hashing the key again.
struct Named<'a> {
    /// Each series once.
    keys: Vec<&'a SeriesKey>,
    /// The index in `keys` of each series.
    index: HashMap<&'a SeriesKey, usize>,
    /// Every partial's series (by reference) and its index in `keys`.
    partials: Vec<(&'a SeriesKey, usize)>,
}

impl<'a> Named<'a> {
    fn of(fresh: &[&'a Batch]) -> Self {
        let count: usize = fresh.iter().map(|b| b.partials.len()).sum();
        let mut named = Named {
            keys: Vec::new(),
            index: HashMap::with_capacity(1024),
            partials: Vec::with_capacity(count),
        };
        // An agent lists its series in the same order batch after batch:
        // a partial whose key equals the one at its place in the agent's
        // previous batch takes that one's index without hashing (a key
        // hashes field by field; this was a tenth of the writer's CPU).
        let mut previous: HashMap<&str, (&'a Batch, usize)> = HashMap::new();
        for &b in fresh {
            let base = named.partials.len();
            let before = previous.insert(b.agent.as_str(), (b, base));
            for (j, p) in b.partials.iter().enumerate() {
                let known = before.and_then(|(prev, from)| {
                    let same = prev.partials.get(j).is_some_and(|q| q.series == p.series);
                    same.then(|| named.partials.get(from + j).map(|&(_, i)| i))
                        .flatten()
                });
                let i = match known {
                    Some(i) => i,
                    None => {
                        let next = named.keys.len();
                        let i = *named.index.entry(&p.series).or_insert(next);
                        if i == next {
                            named.keys.push(&p.series);
                        }
                        i
                    }
                };
                named.partials.push((&p.series, i));
            }
        }
        named
    }

    /// The index in `keys` of `key`, asked for as the `nth` partial: by
    /// position when it is that partial's own key (the same reference),
    /// by hashing otherwise.
    fn slot(&self, nth: usize, key: &SeriesKey) -> Option<usize> {
        match self.partials.get(nth) {
            Some(&(k, i)) if std::ptr::eq(k, key) => Some(i),
            _ => self.index.get(key).copied(),
        }
    }
}

/// The ids of `series` (each once), by index, inserting the missing ones
/// (sorted by their text, so concurrent inserts of the same keys cannot
/// deadlock).
async fn series_ids(
    tx: &Transaction<'_>,
    series: &[&SeriesKey],
) -> Result<Vec<Option<i64>>, Failed> {
    let mut by_text: Vec<(String, usize)> = Vec::with_capacity(series.len());
    for (i, &k) in series.iter().enumerate() {
        by_text.push((key_text(k)?, i));
    }
    by_text.sort_unstable();
    let texts: Vec<&str> = by_text.iter().map(|(t, _)| t.as_str()).collect();
    let select = tx
        .prepare_cached("SELECT key, id FROM series WHERE key = ANY($1::text[])")
        .await?;
    let mut found: HashMap<String, i64> = HashMap::with_capacity(texts.len());
    for row in tx.query(&select, &[&texts]).await? {
        found.insert(row.get(0), row.get(1));
    }
    let missing: Vec<&str> = texts
        .iter()
        .copied()
        .filter(|t| !found.contains_key(*t))
        .collect();
    if !missing.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO series (key) SELECT k FROM unnest($1::text[]) AS u(k) ORDER BY k
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(&insert, &[&missing]).await?;
        for row in tx.query(&select, &[&missing]).await? {
            found.insert(row.get(0), row.get(1));
        }
    }
    let mut ids = vec![None; series.len()];
    for (text, i) in &by_text {
        ids[*i] = found.get(text).copied();
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tributary_core::batch::Partial;
    use tributary_core::{Quantum, Summary, Window};

    use super::*;

    /// A batch of `agent` with one partial per device of `devices`, in
    /// that order.
    fn batch(agent: &str, seq: u64, devices: &[&str]) -> Batch {
        let minute = Width::new(60_000).unwrap();
        let partials = devices
            .iter()
            .map(|d| Partial {
                series: SeriesKey::new("t", *d, BTreeMap::new()).unwrap(),
                window: Window::new(seq as i64 * 60_000, minute).unwrap(),
                summary: Summary::new(Quantum::new(0).unwrap()),
            })
            .collect();
        Batch::new(agent, seq, 0, partials)
    }

    #[test]
    fn every_partial_names_its_own_series_once_whatever_the_order() {
        // Agent a repeats its list, then reorders it, drops one and adds
        // one; b shares a series with a and interleaves.
        let batches = [
            batch("a", 1, &["x", "y", "z"]),
            batch("b", 1, &["y", "w"]),
            batch("a", 2, &["x", "y", "z"]),
            batch("a", 3, &["z", "x", "v"]),
            batch("b", 2, &["w", "y"]),
            batch("a", 4, &["z", "x", "v", "y"]),
        ];
        let fresh: Vec<&Batch> = batches.iter().collect();
        let named = Named::of(&fresh);
        let mut distinct: Vec<String> = named.keys.iter().map(|k| k.to_string()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), named.keys.len(), "each series once");
        assert_eq!(named.keys.len(), 5);
        let partials: Vec<&Partial> = batches.iter().flat_map(|b| &b.partials).collect();
        assert_eq!(named.partials.len(), partials.len());
        for (nth, p) in partials.iter().enumerate() {
            let i = named.slot(nth, &p.series).unwrap();
            assert_eq!(named.keys[i], &p.series, "partial {nth}");
            // Asked with an equal key that is not the partial's own.
            let copy = p.series.clone();
            assert_eq!(named.slot(nth, &copy), Some(i));
        }
    }
}
