//! The SQL around [`crate::merge::senders`] for PostgreSQL, where several
//! instances apply batches at once: each sender's row (one per agent
//! incarnation) is locked first — created if missing — in (agent,
//! incarnation) order and held to commit, so the reading of its mark, the
//! claims of its keys and the moving of its mark are atomic per sender
//! (see the design note there). Every step is one statement over arrays.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use deadpool_postgres::Transaction;
use tributary_core::batch::Batch;
use tributary_core::Incarnation;

use crate::merge::senders::{self, Key, Marks, Sender};
use crate::store::codec::corrupt;
use crate::store::{Applied, NewIncarnation, Refusal, Refusals, StoreError};

/// Two parallel arrays of senders (agent, incarnation text), for `unnest`.
fn columns<'a>(senders: impl Iterator<Item = Sender<'a>>) -> (Vec<&'a str>, Vec<String>) {
    senders.map(|(a, i)| (a, i.to_string())).unzip()
}

/// The incarnation of a stored row's text.
fn incarnation(text: &str) -> Result<Incarnation, StoreError> {
    Incarnation::parse(text).map_err(|e| corrupt("incarnation", e))
}

/// The transaction as the server knows it, for [`super::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Xact {
    /// Its id (`pg_current_xact_id()`, 64-bit: never reused).
    pub(super) xid: i64,
    /// The process id of the server's backend running it
    /// (`pg_backend_pid()`).
    pub(super) pid: i32,
}

/// Locks (creating at `now_ms`) the rows of the group's senders in lock
/// order; returns their marks, the senders seen for the first time and
/// the transaction's id and backend ([`Xact`], taken in the same
/// statement, for [`super::resolve`]: this first write assigns the id
/// anyway, so neither costs a round trip).
pub(super) async fn lock<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
    now_ms: i64,
) -> Result<(Marks<'a>, Vec<NewIncarnation>, Xact), StoreError> {
    let group = senders::senders(batches);
    let (agents, incs) = columns(group.iter().copied());
    // `DO UPDATE` (of nothing) takes the row lock of an existing row;
    // `xmax = 0` holds for a row this statement inserted.
    let upsert = tx
        .prepare_cached(
            "INSERT INTO incarnations
               (agent, incarnation, applied_below, batches, dropped_readings, first_seen_ms, last_seen_ms)
             SELECT a, i, 0, 0, 0, $3, $3 FROM unnest($1::text[], $2::text[]) AS k(a, i) ORDER BY a, i
             ON CONFLICT (agent, incarnation) DO UPDATE SET agent = excluded.agent
             RETURNING agent, incarnation, applied_below, (xmax = 0),
               pg_current_xact_id()::text::bigint, pg_backend_pid()",
        )
        .await?;
    let by_text: BTreeMap<(&str, String), Sender<'a>> = group
        .iter()
        .map(|&(a, i)| ((a, i.to_string()), (a, i)))
        .collect();
    let mut marks = Marks::new();
    let mut first: Vec<Sender<'a>> = Vec::new();
    let mut xact = None;
    for row in tx.query(&upsert, &[&agents, &incs, &now_ms]).await? {
        xact = Some(Xact {
            xid: row.get(4),
            pid: row.get(5),
        });
        let (agent, text): (String, String) = (row.get(0), row.get(1));
        let Some(&s) = by_text.get(&(agent.as_str(), text)) else {
            return Err(StoreError::Backend(format!(
                "an incarnation row of agent {agent} came back that was not asked for"
            )));
        };
        if row.get::<_, bool>(3) {
            first.push(s);
        } else {
            marks.insert(s, row.get(2));
        }
    }
    let news = if first.is_empty() {
        Vec::new()
    } else {
        known_agents(tx, &first).await?
    };
    let xact = xact.ok_or_else(|| StoreError::Backend("no incarnation row came back".into()))?;
    Ok((marks, news, xact))
}

/// The new incarnations `first`, each with whether its agent has others.
async fn known_agents(
    tx: &Transaction<'_>,
    first: &[Sender<'_>],
) -> Result<Vec<NewIncarnation>, StoreError> {
    let (agents, incs) = columns(first.iter().copied());
    let known = tx
        .prepare_cached(
            "SELECT DISTINCT r.agent FROM incarnations r
             WHERE r.agent = ANY($1::text[])
               AND (r.agent, r.incarnation) NOT IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .await?;
    let known: HashSet<String> = tx
        .query(&known, &[&agents, &incs])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(first
        .iter()
        .map(|&(agent, incarnation)| NewIncarnation {
            agent: agent.to_string(),
            incarnation,
            known_agent: known.contains(agent),
        })
        .collect())
}

/// Claims the group's keys at or above their marks (sorted, so concurrent
/// claims cannot deadlock); returns the new ones.
pub(super) async fn claim<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
    marks: &Marks<'a>,
) -> Result<HashSet<Key<'a>>, StoreError> {
    let keys = senders::claim_keys(batches, marks)?;
    let mut new = HashSet::new();
    if keys.is_empty() {
        return Ok(new);
    }
    let agents: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let incs: Vec<String> = keys.iter().map(|k| k.1.to_string()).collect();
    let seqs: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO applied (agent, incarnation, seq)
             SELECT a, i, s FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(a, i, s)
             ORDER BY a, i, s
             ON CONFLICT DO NOTHING RETURNING agent, incarnation, seq",
        )
        .await?;
    let ours: BTreeMap<(&str, Incarnation, i64), Key<'a>> = keys.iter().map(|&k| (k, k)).collect();
    for row in tx.query(&insert, &[&agents, &incs, &seqs]).await? {
        let (agent, text, seq): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        if let Some(&k) = ours.get(&(agent.as_str(), incarnation(&text)?, seq)) {
            new.insert(k);
        }
    }
    Ok(new)
}

/// Moves the marks of the senders of the new batches `fresh`, prunes the
/// keys below them and adds the batches' counts, at `now_ms`.
pub(super) async fn update<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
    fresh: &[&'a Batch],
    marks: &Marks<'a>,
    now_ms: i64,
) -> Result<(), StoreError> {
    let touched: BTreeSet<Sender<'a>> = fresh.iter().map(|b| senders::sender(b)).collect();
    let (agents, incs) = columns(touched.iter().copied());
    let select = tx
        .prepare_cached(
            "SELECT agent, incarnation, seq FROM applied
             WHERE (agent, incarnation) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .await?;
    let mut stored: BTreeMap<Sender<'a>, BTreeSet<i64>> = BTreeMap::new();
    for row in tx.query(&select, &[&agents, &incs]).await? {
        let (agent, text): (String, String) = (row.get(0), row.get(1));
        let inc = incarnation(&text)?;
        if let Some(s) = touched
            .iter()
            .copied()
            .find(|s| *s == (agent.as_str(), inc))
        {
            stored.entry(s).or_default().insert(row.get(2));
        }
    }
    let updates = senders::advance(batches, fresh, marks, &stored)?;
    let (agents, incs) = columns(updates.iter().map(|u| u.sender));
    let below: Vec<i64> = updates.iter().map(|u| u.applied_below).collect();
    if updates.iter().any(|u| u.prune) {
        let prune = tx
            .prepare_cached(
                "DELETE FROM applied r USING unnest($1::text[], $2::text[], $3::bigint[]) AS u(a, i, b)
                 WHERE r.agent = u.a AND r.incarnation = u.i AND r.seq < u.b",
            )
            .await?;
        tx.execute(&prune, &[&agents, &incs, &below]).await?;
    }
    let n: Vec<i64> = updates.iter().map(|u| u.batches).collect();
    let dropped: Vec<i64> = updates.iter().map(|u| u.dropped_readings).collect();
    // Sums saturate at i64::MAX rather than fail the transaction.
    let write = tx
        .prepare_cached(
            "UPDATE incarnations r SET
               applied_below = GREATEST(r.applied_below, u.b),
               batches = CASE WHEN r.batches > 9223372036854775807 - u.n
                 THEN 9223372036854775807 ELSE r.batches + u.n END,
               dropped_readings = CASE WHEN r.dropped_readings > 9223372036854775807 - u.d
                 THEN 9223372036854775807 ELSE r.dropped_readings + u.d END,
               last_seen_ms = GREATEST(r.last_seen_ms, $6)
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
               AS u(a, i, b, n, d)
             WHERE r.agent = u.a AND r.incarnation = u.i",
        )
        .await?;
    tx.execute(&write, &[&agents, &incs, &below, &n, &dropped, &now_ms])
        .await?;
    Ok(())
}

/// Adds what the checks took out of each new batch to its incarnation's
/// `refused` rows (see [`crate::store::Refusals`]; a duplicate adds
/// nothing), summed per row first (one statement may not touch a row
/// twice) and written in key order. Sums saturate at `i64::MAX`.
pub(super) async fn add_refused(
    tx: &Transaction<'_>,
    batches: &[Batch],
    applied: &[Applied],
    refused: &[Refusals],
) -> Result<(), StoreError> {
    let mut sums: BTreeMap<(&str, String, &str), Refusal> = BTreeMap::new();
    for ((b, a), r) in batches.iter().zip(applied).zip(refused) {
        if *a != Applied::New {
            continue;
        }
        for (reason, n) in r.by_reason() {
            sums.entry((b.agent.as_str(), b.incarnation.to_string(), reason))
                .or_default()
                .add(n);
        }
    }
    if sums.is_empty() {
        return Ok(());
    }
    let sql = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let agents: Vec<&str> = sums.keys().map(|k| k.0).collect();
    let incs: Vec<&str> = sums.keys().map(|k| k.1.as_str()).collect();
    let reasons: Vec<&str> = sums.keys().map(|k| k.2).collect();
    let partials: Vec<i64> = sums.values().map(|r| sql(r.partials)).collect();
    let readings: Vec<i64> = sums.values().map(|r| sql(r.readings)).collect();
    let upsert = tx
        .prepare_cached(
            "INSERT INTO refused AS r (agent, incarnation, reason, partials, readings)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
             ON CONFLICT (agent, incarnation, reason) DO UPDATE SET
               partials = CASE WHEN r.partials > 9223372036854775807 - excluded.partials
                 THEN 9223372036854775807 ELSE r.partials + excluded.partials END,
               readings = CASE WHEN r.readings > 9223372036854775807 - excluded.readings
                 THEN 9223372036854775807 ELSE r.readings + excluded.readings END",
        )
        .await?;
    tx.execute(&upsert, &[&agents, &incs, &reasons, &partials, &readings])
        .await?;
    Ok(())
}
