//! [`super::PostgresStore::apply`]: one transaction per group of batches,
//! safe against any number of collector instances writing at once.
//!
//! Steps, each a single statement over arrays (`unnest`), each taking its
//! row locks in one global order (sorted keys) so concurrent instances
//! cannot deadlock:
//! 1. insert every batch's (agent, seq) key, `ON CONFLICT DO NOTHING
//!    RETURNING` — the keys returned are the new batches (a key another
//!    instance is inserting right now waits for that instance's commit);
//! 2. merge the new batches' partials and their roll-ups in memory;
//! 3. series ids (inserted when missing);
//! 4. result rows: insert placeholders for missing rows (`ON CONFLICT DO
//!    NOTHING RETURNING`), then lock the existing ones with `SELECT … ORDER
//!    BY … FOR UPDATE` and merge into them — no other instance can change a
//!    locked row until this one commits, so no update is lost;
//! 5. `series_agents` and `watermarks` (`GREATEST`, so order does not matter);
//! 6. last, `UPDATE meta SET value = value + n RETURNING value` locks the
//!    change counter until commit: change numbers are handed out in commit
//!    order, so a feed reader that has seen change `n` never later finds a
//!    smaller one it missed. Only this step and the commit are serialised
//!    between instances;
//! 7. write every touched row (summary, revision, change number); commit.
//!
//! A deadlock or serialisation failure (which the lock order should rule
//! out) is retried with the whole transaction.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::Client;
use tokio_postgres::error::SqlState;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Summary, Width, Window};

use crate::store::{
    add_rollups, corrupt, decode_summary, encode_summary, key_text, merge_into, Pending,
};
use crate::store::{Applied, StoreError};

/// How often a transaction that deadlocked is retried.
const RETRIES: u32 = 8;

/// Applies `batches` in one transaction, retrying on deadlock.
pub(super) async fn apply(
    client: &mut Client,
    batches: &[Batch],
    rollups: &[Width],
) -> Result<Vec<Applied>, StoreError> {
    let mut attempt = 0;
    loop {
        match try_apply(client, batches, rollups).await {
            Err(Failed::Pg(e)) if attempt < RETRIES && retryable(&e) => {
                attempt += 1;
                tracing::debug!(attempt, error = %e, "store transaction retried");
                let ms = 5u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_millis(ms + fastrand::u64(0..ms))).await;
            }
            Err(Failed::Pg(e)) => return Err(e.into()),
            Err(Failed::Store(e)) => return Err(e),
            Ok(a) => return Ok(a),
        }
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

enum Failed {
    Pg(tokio_postgres::Error),
    Store(StoreError),
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

async fn try_apply(
    client: &mut Client,
    batches: &[Batch],
    rollups: &[Width],
) -> Result<Vec<Applied>, Failed> {
    let tx = client.transaction().await?;

    // 1. De-duplication keys (first occurrence in the group is the candidate).
    let mut first: HashSet<(&str, i64)> = HashSet::new();
    let mut seqs = Vec::with_capacity(batches.len());
    for b in batches {
        let seq = i64::try_from(b.seq).map_err(|e| corrupt("batch sequence", e))?;
        seqs.push(seq);
        first.insert((b.agent.as_str(), seq));
    }
    let mut keys: Vec<(&str, i64)> = first.into_iter().collect();
    keys.sort_unstable();
    let agents: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let key_seqs: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO applied (agent, seq)
             SELECT a, s FROM unnest($1::text[], $2::bigint[]) AS k(a, s) ORDER BY a, s
             ON CONFLICT DO NOTHING RETURNING agent, seq",
        )
        .await?;
    let mut new: HashSet<(String, i64)> = HashSet::new();
    for row in tx.query(&insert, &[&agents, &key_seqs]).await? {
        new.insert((row.get(0), row.get(1)));
    }
    let mut outcome = Vec::with_capacity(batches.len());
    let mut fresh: Vec<&Batch> = Vec::new();
    for (b, &seq) in batches.iter().zip(&seqs) {
        // `remove`: a second copy in the same group is a duplicate.
        if new.remove(&(b.agent.clone(), seq)) {
            outcome.push(Applied::New);
            fresh.push(b);
        } else {
            outcome.push(Applied::Duplicate);
        }
    }
    if fresh.is_empty() {
        tx.commit().await?;
        return Ok(outcome);
    }

    // 2. Merge in memory.
    let mut merged: Pending<'_, (&SeriesKey, Window)> = Pending::default();
    let mut watermarks: HashMap<&str, i64> = HashMap::new();
    let mut reporters: HashSet<(&SeriesKey, &str)> = HashSet::new();
    for b in &fresh {
        let w = watermarks.entry(b.agent.as_str()).or_insert(i64::MIN);
        *w = (*w).max(b.watermark);
        for p in &b.partials {
            reporters.insert((&p.series, b.agent.as_str()));
            merge_into(
                &mut merged,
                (&p.series, p.window),
                &p.summary,
                &p.series,
                p.window,
            )?;
        }
    }
    add_rollups(&mut merged, rollups, |&(key, _), w| (key, w))?;

    // 3. Series ids.
    let mut texts: HashMap<&SeriesKey, String> = HashMap::new();
    for (key, _) in merged.keys() {
        if !texts.contains_key(key) {
            texts.insert(key, key_text(key)?);
        }
    }
    let ids = series_ids(&tx, texts.values().cloned().collect()).await?;
    let id_of = |key: &SeriesKey| -> Result<i64, StoreError> {
        texts
            .get(key)
            .and_then(|t| ids.get(t))
            .copied()
            .ok_or_else(|| StoreError::Backend(format!("no id stored for series {key}")))
    };

    // 4. Result rows, in (series, width, start) order.
    let mut rows: Vec<(i64, i64, i64, &SeriesKey, Window, Summary)> = Vec::new();
    for ((key, window), (summary, _, _)) in merged {
        rows.push((
            id_of(key)?,
            window.width().ms(),
            window.start(),
            key,
            window,
            summary,
        ));
    }
    rows.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    let s: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let w: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let t: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let placeholder = tx
        .prepare_cached(
            "INSERT INTO results (series, width, start, revision, summary, changed)
             SELECT s, w, t, -1, '', 0 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(s, w, t)
             ORDER BY s, w, t
             ON CONFLICT DO NOTHING RETURNING series, width, start",
        )
        .await?;
    let mut inserted: HashSet<(i64, i64, i64)> = HashSet::new();
    for row in tx.query(&placeholder, &[&s, &w, &t]).await? {
        inserted.insert((row.get(0), row.get(1), row.get(2)));
    }
    let existing: Vec<usize> = (0..rows.len())
        .filter(|&i| !inserted.contains(&(s[i], w[i], t[i])))
        .collect();
    let mut stored: HashMap<(i64, i64, i64), (i64, Vec<u8>)> = HashMap::new();
    if !existing.is_empty() {
        let es: Vec<i64> = existing.iter().map(|&i| s[i]).collect();
        let ew: Vec<i64> = existing.iter().map(|&i| w[i]).collect();
        let et: Vec<i64> = existing.iter().map(|&i| t[i]).collect();
        let lock = tx
            .prepare_cached(
                "SELECT r.series, r.width, r.start, r.revision, r.summary FROM results r
                 JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(s, w, t)
                   ON r.series = u.s AND r.width = u.w AND r.start = u.t
                 ORDER BY r.series, r.width, r.start FOR UPDATE OF r",
            )
            .await?;
        for row in tx.query(&lock, &[&es, &ew, &et]).await? {
            stored.insert(
                (row.get(0), row.get(1), row.get(2)),
                (row.get(3), row.get(4)),
            );
        }
    }
    let mut revisions: Vec<i64> = Vec::with_capacity(rows.len());
    let mut bytes: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
    for (id, width, start, key, window, summary) in rows {
        let (revision, result) = match stored.remove(&(id, width, start)) {
            Some((rev, old)) => {
                let mut old = decode_summary(&old)?;
                old.merge(&summary).map_err(|source| StoreError::Merge {
                    series: key.to_string(),
                    window,
                    source,
                })?;
                (rev.saturating_add(1).min(i64::from(u32::MAX)), old)
            }
            None if inserted.contains(&(id, width, start)) => (0, summary),
            None => {
                return Err(StoreError::Backend(format!(
                    "result row of {key} at {window} vanished during the transaction"
                ))
                .into())
            }
        };
        revisions.push(revision);
        bytes.push(encode_summary(&result)?);
    }

    // 5. Progress.
    let mut pairs: Vec<(i64, &str)> = Vec::with_capacity(reporters.len());
    for (key, agent) in reporters {
        pairs.push((id_of(key)?, agent));
    }
    pairs.sort_unstable();
    let ps: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let pa: Vec<&str> = pairs.iter().map(|p| p.1).collect();
    let reporters = tx
        .prepare_cached(
            "INSERT INTO series_agents (series, agent)
             SELECT s, a FROM unnest($1::bigint[], $2::text[]) AS u(s, a) ORDER BY s, a
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&reporters, &[&ps, &pa]).await?;
    let mut marks: Vec<(&str, i64)> = watermarks.into_iter().collect();
    marks.sort_unstable();
    let ma: Vec<&str> = marks.iter().map(|m| m.0).collect();
    let mw: Vec<i64> = marks.iter().map(|m| m.1).collect();
    let seen = crate::finality::now_ms();
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

    // 6. Change numbers, taken last: the counter row stays locked to commit.
    let n = i64::try_from(s.len()).map_err(|e| corrupt("row count", e))?;
    let counter = tx
        .prepare_cached("UPDATE meta SET value = value + $1 WHERE key = 'change' RETURNING value")
        .await?;
    let last: i64 = tx.query_one(&counter, &[&n]).await?.get(0);
    let changes: Vec<i64> = (last - n + 1..=last).collect();

    // 7. Write every touched row.
    let write = tx
        .prepare_cached(
            "UPDATE results r SET revision = u.rev, summary = u.b, changed = u.c
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bigint[])
               AS u(s, w, t, rev, b, c)
             WHERE r.series = u.s AND r.width = u.w AND r.start = u.t",
        )
        .await?;
    tx.execute(&write, &[&s, &w, &t, &revisions, &bytes, &changes])
        .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The ids of series `texts`, inserting the missing ones (sorted, so
/// concurrent inserts of the same keys cannot deadlock).
async fn series_ids(
    tx: &deadpool_postgres::Transaction<'_>,
    mut texts: Vec<String>,
) -> Result<HashMap<String, i64>, tokio_postgres::Error> {
    texts.sort_unstable();
    let select = tx
        .prepare_cached("SELECT key, id FROM series WHERE key = ANY($1::text[])")
        .await?;
    let mut ids: HashMap<String, i64> = HashMap::new();
    for row in tx.query(&select, &[&texts]).await? {
        ids.insert(row.get(0), row.get(1));
    }
    let missing: Vec<&String> = texts.iter().filter(|t| !ids.contains_key(*t)).collect();
    if !missing.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO series (key) SELECT k FROM unnest($1::text[]) AS u(k) ORDER BY k
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(&insert, &[&missing]).await?;
        for row in tx.query(&select, &[&missing]).await? {
            ids.insert(row.get(0), row.get(1));
        }
    }
    Ok(ids)
}
