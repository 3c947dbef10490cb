//! The `batches` table: batches formed from the outbox, each with its
//! sequence (`meta.next_seq`) and exact bytes fixed in the transaction that
//! forms it, kept until the collector confirms it.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tributary_core::batch::{Batch, Encoding};

use super::{outbox, Store, StoreError};

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

impl Store {
    /// Forms up to `max_batches` batches of at most `outbox.batch_max_partials`
    /// partials each from the unbatched outbox, oldest first, committing
    /// them before returning.
    pub fn form_batches(
        &mut self,
        agent: &str,
        watermark: i64,
        max_batches: usize,
        encoding: Encoding,
    ) -> Result<Vec<FormedBatch>, StoreError> {
        let tx = self.conn.transaction()?;
        let mut out = Vec::new();
        let (mut freed, mut added) = (0u64, 0u64);
        for _ in 0..max_batches {
            let rows = outbox::oldest(&tx, self.batch_max_partials)?;
            if rows.is_empty() {
                break;
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            freed += rows.iter().map(|r| r.1).sum::<u64>();
            let seq = meta(&tx, "next_seq")?;
            let mut batch = Batch::new(
                agent,
                u64::try_from(seq).unwrap_or(0),
                watermark,
                rows.into_iter().map(|r| r.2).collect(),
            );
            batch.dropped_readings = u64::try_from(meta(&tx, "dropped")?).unwrap_or(0);
            let payload = batch.encode(encoding);
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
            outbox::remove(&tx, &ids)?;
            added += payload.len() as u64;
            out.push(FormedBatch {
                seq: batch.seq,
                payload,
                readings,
            });
        }
        tx.commit()?;
        self.partial_bytes = self.partial_bytes.saturating_sub(freed);
        self.batch_bytes += added;
        Ok(out)
    }

    /// Every formed, unconfirmed batch (oldest first).
    pub fn unconfirmed(&self) -> Result<Vec<FormedBatch>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, readings, payload FROM batches ORDER BY seq")?;
        let rows = st.query_map([], |r| {
            Ok(FormedBatch {
                seq: r.get::<_, i64>(0)? as u64,
                readings: r.get::<_, i64>(1)? as u64,
                payload: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes confirmed batches; returns (batches, readings) removed. A
    /// sequence not (or no longer) stored is skipped.
    pub fn confirm(&mut self, seqs: &[u64]) -> Result<(u64, u64), StoreError> {
        let tx = self.conn.transaction()?;
        let (mut n, mut readings, mut bytes) = (0u64, 0u64, 0u64);
        {
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
                    n += 1;
                    readings += r as u64;
                    bytes += b as u64;
                }
            }
        }
        tx.commit()?;
        self.batch_bytes = self.batch_bytes.saturating_sub(bytes);
        Ok((n, readings))
    }
}
