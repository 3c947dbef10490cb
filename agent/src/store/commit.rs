//! One group commit: everything a group of input changed, written in one
//! transaction — new sources and series, watermarks, window checkpoints and
//! `closed_before` marks, emitted partials (into the outbox, which the
//! store then holds under its byte limit), device boots and links.

use rusqlite::{params, Transaction};

use super::codec;
use super::error::StoreError;
use super::load::{DeviceRow, SeriesRow};
use super::outbox::{self, WidthBytes};
use crate::window::{Flush, SourceId};

/// One group commit.
#[derive(Debug, Default)]
pub struct Commit {
    /// Newly registered sources: (id, name).
    pub new_sources: Vec<(SourceId, String)>,
    /// Newly registered series.
    pub new_series: Vec<SeriesRow>,
    /// The windower's changes.
    pub flush: Flush,
    /// Source watermarks to store: (id, watermark).
    pub watermarks: Vec<(SourceId, i64)>,
    /// Device rows changed.
    pub devices: Vec<DeviceRow>,
    /// Link → device boot changes.
    pub links: Vec<(String, String, u32)>,
}

/// What a commit did to the outbox.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Partials added.
    pub partials: u64,
    /// Partials merged away by coarsening.
    pub coarsened: u64,
    /// Readings dropped at the floor.
    pub dropped_readings: u64,
}

/// Writes `c` in `tx`; returns the bytes of the partials it added to the
/// outbox, per width.
pub(crate) fn write(tx: &Transaction<'_>, c: &Commit) -> Result<WidthBytes, StoreError> {
    registry(tx, c)?;
    windows(tx, c)?;
    devices(tx, c)?;
    outbox::insert(tx, &c.flush.emitted)
}

/// New sources and series, and changed watermarks.
fn registry(tx: &Transaction<'_>, c: &Commit) -> Result<(), StoreError> {
    let mut st = tx.prepare_cached("INSERT INTO sources(id, name) VALUES (?1, ?2)")?;
    for (id, name) in &c.new_sources {
        st.execute(params![i64::from(*id), name])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO series(id, key, quantum, source, closed_before) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for s in &c.new_series {
        st.execute(params![
            i64::from(s.id),
            codec::key(&s.key)?,
            i64::from(s.quantum.exponent()),
            i64::from(s.source),
            s.closed_before
        ])?;
    }
    let mut st = tx.prepare_cached("UPDATE sources SET watermark = ?2 WHERE id = ?1")?;
    for (id, wm) in &c.watermarks {
        st.execute(params![i64::from(*id), wm])?;
    }
    Ok(())
}

/// Open-window checkpoints (deleted, replaced) and `closed_before` marks.
fn windows(tx: &Transaction<'_>, c: &Commit) -> Result<(), StoreError> {
    let mut st = tx.prepare_cached("DELETE FROM open_windows WHERE series = ?1 AND start = ?2")?;
    for (s, start) in &c.flush.deleted {
        st.execute(params![i64::from(*s), start])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT OR REPLACE INTO open_windows(series, start, summary) VALUES (?1, ?2, ?3)",
    )?;
    for (s, start, sum) in &c.flush.checkpoints {
        st.execute(params![i64::from(*s), start, codec::summary(sum)])?;
    }
    let mut st = tx.prepare_cached("UPDATE series SET closed_before = ?2 WHERE id = ?1")?;
    for (s, cb) in &c.flush.closed_before {
        st.execute(params![i64::from(*s), cb])?;
    }
    Ok(())
}

/// Device boots (channels, clock offset, de-dup state) and links.
fn devices(tx: &Transaction<'_>, c: &Commit) -> Result<(), StoreError> {
    let mut st = tx.prepare_cached(
        "INSERT OR REPLACE INTO devices(device, boot, hello, offset_ms, hwm, above) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for d in &c.devices {
        st.execute(params![
            d.device,
            i64::from(d.boot),
            codec::hello(&d.hello),
            d.offset_ms,
            d.hwm.map(i64::from),
            codec::above(&d.above)
        ])?;
    }
    let mut st =
        tx.prepare_cached("INSERT OR REPLACE INTO links(link, device, boot) VALUES (?1, ?2, ?3)")?;
    for (l, d, b) in &c.links {
        st.execute(params![l, d, i64::from(*b)])?;
    }
    Ok(())
}
