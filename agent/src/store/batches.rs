//! The `batches` table: batches formed from the outbox, each with its
//! sequence (`meta.next_seq`), its delta of dropped readings (`meta.dropped`,
//! reset in the same transaction) and exact bytes fixed in the transaction
//! that forms it, kept until the collector confirms it.
//!
//! A batch names the database's incarnation and where the unconfirmed
//! batches begin when it is formed (`first_unconfirmed`: the lowest
//! sequence in the table, or its own): a confirmed batch is deleted and
//! never sent again, so the claim stays true however often the bytes are
//! resent, and it lets the collector forget the keys below it.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tributary_core::batch::{Batch, Encoding, MAX_EXPANDED};
use tributary_core::Incarnation;

use super::error::StoreError;
use super::outbox::{self, WidthBytes};

/// A formed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormedBatch {
    /// Its sequence.
    pub seq: u64,
    /// Its encoded payload.
    pub payload: Vec<u8>,
    /// Readings it holds.
    pub readings: u64,
    /// The incarnation of the database that formed it (the one its
    /// confirmation must name).
    pub incarnation: Incarnation,
}

/// What forming batches did to the bytes held.
#[derive(Debug, Default)]
pub(crate) struct Formed {
    /// The batches, oldest first.
    pub(crate) batches: Vec<FormedBatch>,
    /// Bytes of the rows they took from the outbox, per width.
    pub(crate) freed: WidthBytes,
    /// Bytes of their payloads.
    pub(crate) added: u64,
}

/// What a batch is made of: whose it is, in which encoding, how many
/// partials and bytes at most (a batch of one partial may be larger).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape<'a> {
    pub(crate) agent: &'a str,
    pub(crate) incarnation: Incarnation,
    pub(crate) encoding: Encoding,
    pub(crate) max_partials: usize,
    pub(crate) max_bytes: u64,
}

/// How many batches may be formed: at most `batches`, and while the bytes
/// of formed batches (`in_flight` before these) stay within `share` — one
/// batch always when none is in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub(crate) batches: usize,
    pub(crate) in_flight: u64,
    pub(crate) share: u64,
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

/// Forms batches from the oldest rows of the outbox, in `tx`, as `room`
/// allows; `watermark` is the agent's.
pub(crate) fn form(
    tx: &Transaction<'_>,
    shape: Shape<'_>,
    watermark: i64,
    room: Room,
) -> Result<Formed, StoreError> {
    let mut out = Formed::default();
    // The lowest unconfirmed sequence: the oldest stored batch, or the
    // first one formed now.
    let oldest: Option<i64> = tx.query_row("SELECT MIN(seq) FROM batches", [], |r| r.get(0))?;
    let first_unconfirmed = oldest.unwrap_or(meta(tx, "next_seq")?);
    let mut in_flight = room.in_flight;
    for _ in 0..room.batches {
        let alone = in_flight == 0;
        let fits = room.share.saturating_sub(in_flight).min(shape.max_bytes);
        if fits == 0 && !alone {
            break;
        }
        let rows = outbox::oldest(tx, shape.max_partials, fits.max(1))?;
        let dropped = u64::try_from(meta(tx, "dropped")?).unwrap_or(0);
        if rows.is_empty() && dropped == 0 {
            break;
        }
        let seq = u64::try_from(meta(tx, "next_seq")?).unwrap_or(0);
        let mut batch = Batch::new(
            shape.agent,
            seq,
            watermark,
            rows.iter().map(|r| r.partial.clone()).collect(),
        )
        .with_identity(
            shape.incarnation,
            u64::try_from(first_unconfirmed).unwrap_or(0),
        );
        batch.dropped_readings = dropped;
        let Some(payload) = cut_to_fit(&mut batch, shape.encoding, fits, alone) else {
            break; // not even one partial fits beside the batches in flight
        };
        let taken = &rows[..batch.partials.len()];
        let readings = batch.readings();
        tx.execute(
            "INSERT INTO batches(seq, readings, payload) VALUES (?1, ?2, ?3)",
            params![
                i64::try_from(seq).unwrap_or(i64::MAX),
                readings as i64,
                payload
            ],
        )?;
        // The dropped readings are reported in this batch: reset.
        tx.execute(
            "UPDATE meta SET value = CASE key WHEN 'next_seq' THEN value + 1 ELSE 0 END
             WHERE key IN ('next_seq', 'dropped')",
            [],
        )?;
        outbox::remove(tx, &taken.iter().map(|r| r.id).collect::<Vec<_>>())?;
        for r in taken {
            out.freed.add(r.partial.window.width().ms(), r.bytes);
        }
        in_flight += payload.len() as u64;
        out.added += payload.len() as u64;
        out.batches.push(FormedBatch {
            seq,
            payload,
            readings,
            incarnation: shape.incarnation,
        });
    }
    Ok(out)
}

/// Encodes `batch`, leaving out its newest partials until it takes at most
/// `max` bytes; a batch of one partial (or none) that is larger is kept if
/// it goes `alone` (nothing else in flight), else there is none. A binary
/// batch is first cut to what the collector's decoder accepts
/// ([`MAX_EXPANDED`]; one partial always fits): a batch it refused would
/// never be confirmed, and would be sent again and again.
fn cut_to_fit(batch: &mut Batch, encoding: Encoding, max: u64, alone: bool) -> Option<Vec<u8>> {
    if encoding == Encoding::Binary {
        loop {
            let (held, n) = (batch.decoded_bytes(), batch.partials.len());
            if held <= MAX_EXPANDED || n <= 1 {
                break;
            }
            let keep = (n as u128 * MAX_EXPANDED as u128 / held as u128) as usize;
            batch.partials.truncate(keep.clamp(1, n - 1));
        }
    }
    loop {
        let payload = batch.encode(encoding);
        let len = payload.len() as u64;
        let n = batch.partials.len();
        if len <= max {
            return Some(payload);
        }
        if n <= 1 {
            return alone.then_some(payload);
        }
        // Shrink in proportion (at least by one), then check again.
        let keep = (n as u64 * max / len) as usize;
        batch.partials.truncate(keep.clamp(1, n - 1));
    }
}

/// Every formed, unconfirmed batch (oldest first).
pub(crate) fn unconfirmed(
    conn: &Connection,
    incarnation: Incarnation,
) -> Result<Vec<FormedBatch>, StoreError> {
    let mut st = conn.prepare("SELECT seq, readings, payload FROM batches ORDER BY seq")?;
    let rows = st.query_map([], |r| {
        Ok(FormedBatch {
            seq: r.get::<_, i64>(0)? as u64,
            readings: r.get::<_, i64>(1)? as u64,
            payload: r.get(2)?,
            incarnation,
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
