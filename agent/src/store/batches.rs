//! The `batches` table: batches formed from the outbox, each with its
//! sequence (`meta.next_seq`) and exact bytes fixed in the transaction that
//! forms it, kept until the collector confirms it.
//!
//! A batch names the database's incarnation and where the unconfirmed
//! batches begin when it is formed (`first_unconfirmed`: the lowest
//! sequence in the table, or its own): a confirmed batch is deleted and
//! never sent again, so the claim stays true however often the bytes are
//! resent, and it lets the collector forget the keys below it.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tributary_core::batch::{Batch, Encoding};
use tributary_core::Incarnation;

use super::error::StoreError;
use super::outbox;

/// A formed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormedBatch {
    /// Its sequence.
    pub seq: u64,
    /// Its encoded payload.
    pub payload: Vec<u8>,
    /// Readings it holds.
    pub readings: u64,
}

/// What forming batches did to the bytes held.
#[derive(Debug, Default)]
pub(crate) struct Formed {
    /// The batches, oldest first.
    pub(crate) batches: Vec<FormedBatch>,
    /// Bytes of the partials they took from the outbox.
    pub(crate) freed: u64,
    /// Bytes of their payloads.
    pub(crate) added: u64,
}

/// What a batch is made of: whose it is, in which encoding, how many
/// partials at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape<'a> {
    pub(crate) agent: &'a str,
    pub(crate) incarnation: Incarnation,
    pub(crate) encoding: Encoding,
    pub(crate) max_partials: usize,
}

/// Bytes of the formed batches.
pub(crate) fn bytes(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(payload)), 0) FROM batches",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn meta(tx: &Transaction<'_>, key: &str) -> Result<i64, StoreError> {
    Ok(tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?)
}

/// Forms up to `max_batches` batches from the oldest unbatched partials,
/// in `tx`; `watermark` is the agent's.
pub(crate) fn form(
    tx: &Transaction<'_>,
    shape: Shape<'_>,
    watermark: i64,
    max_batches: usize,
) -> Result<Formed, StoreError> {
    let mut out = Formed::default();
    // The lowest unconfirmed sequence: the oldest stored batch, or the
    // first one formed now.
    let oldest: Option<i64> = tx.query_row("SELECT MIN(seq) FROM batches", [], |r| r.get(0))?;
    let first_unconfirmed = oldest.unwrap_or(meta(tx, "next_seq")?);
    for _ in 0..max_batches {
        let rows = outbox::oldest(tx, shape.max_partials)?;
        if rows.is_empty() {
            break;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        out.freed += rows.iter().map(|r| r.1).sum::<u64>();
        let seq = meta(tx, "next_seq")?;
        let partials = rows.into_iter().map(|r| r.2).collect();
        let mut batch = Batch::new(
            shape.agent,
            u64::try_from(seq).unwrap_or(0),
            watermark,
            partials,
        )
        .with_identity(
            shape.incarnation,
            u64::try_from(first_unconfirmed).unwrap_or(0),
        );
        batch.dropped_readings = u64::try_from(meta(tx, "dropped")?).unwrap_or(0);
        let payload = batch.encode(shape.encoding);
        let readings = batch.readings();
        tx.execute(
            "INSERT INTO batches(seq, readings, payload) VALUES (?1, ?2, ?3)",
            params![seq, readings as i64, payload],
        )?;
        // The dropped readings are reported in this batch: reset.
        tx.execute(
            "UPDATE meta SET value = CASE key WHEN 'next_seq' THEN value + 1 ELSE 0 END
             WHERE key IN ('next_seq', 'dropped')",
            [],
        )?;
        outbox::remove(tx, &ids)?;
        out.added += payload.len() as u64;
        out.batches.push(FormedBatch {
            seq: batch.seq,
            payload,
            readings,
        });
    }
    Ok(out)
}

/// Every formed, unconfirmed batch (oldest first).
pub(crate) fn unconfirmed(conn: &Connection) -> Result<Vec<FormedBatch>, StoreError> {
    let mut st = conn.prepare("SELECT seq, readings, payload FROM batches ORDER BY seq")?;
    let rows = st.query_map([], |r| {
        Ok(FormedBatch {
            seq: r.get::<_, i64>(0)? as u64,
            readings: r.get::<_, i64>(1)? as u64,
            payload: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What confirming deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Confirmed {
    /// Batches deleted.
    pub(crate) batches: u64,
    /// Readings they held.
    pub(crate) readings: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// Deletes the batches `seqs` in `tx`; a sequence not (or no longer)
/// stored is skipped.
pub(crate) fn confirm(tx: &Transaction<'_>, seqs: &[u64]) -> Result<Confirmed, StoreError> {
    let mut out = Confirmed::default();
    let mut get =
        tx.prepare_cached("SELECT readings, length(payload) FROM batches WHERE seq = ?1")?;
    let mut del = tx.prepare_cached("DELETE FROM batches WHERE seq = ?1")?;
    for &s in seqs {
        let Ok(s) = i64::try_from(s) else { continue };
        let row: Option<(i64, i64)> = get
            .query_row(params![s], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((r, b)) = row {
            del.execute(params![s])?;
            out.batches += 1;
            out.readings += r as u64;
            out.bytes += b as u64;
        }
    }
    Ok(out)
}
