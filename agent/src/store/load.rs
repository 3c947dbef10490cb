//! Reading back, at start, everything the agent needs to resume where its
//! last commit left it: sources and series with their dense ids, open
//! window checkpoints, device boots and links.

use rusqlite::Connection;
use tributary_core::frame::Hello;
use tributary_core::{Quantum, SeriesKey, Summary};

use super::codec;
use super::error::{corrupt, StoreError};
use crate::window::{SeriesId, SourceId};

/// A device boot's stored state.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot: u32,
    /// Its last Hello.
    pub hello: Hello,
    /// Event time = tick + offset_ms.
    pub offset_ms: i64,
    /// De-dup mark.
    pub hwm: Option<u32>,
    /// Applied sequences above the mark.
    pub above: Vec<u32>,
}

/// A stored series.
#[derive(Debug, Clone)]
pub struct SeriesRow {
    /// Dense id.
    pub id: SeriesId,
    /// Key.
    pub key: SeriesKey,
    /// Quantum exponent.
    pub quantum: Quantum,
    /// Source id.
    pub source: SourceId,
    /// Windows before this are closed.
    pub closed_before: i64,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Sources in id order: (name, watermark).
    pub sources: Vec<(String, Option<i64>)>,
    /// Series in id order.
    pub series: Vec<SeriesRow>,
    /// Open window checkpoints.
    pub windows: Vec<(SeriesId, i64, Summary)>,
    /// Device boots.
    pub devices: Vec<DeviceRow>,
    /// (link, device, boot).
    pub links: Vec<(String, String, u32)>,
}

/// Loads everything needed to resume.
pub(crate) fn load(conn: &Connection) -> Result<Loaded, StoreError> {
    Ok(Loaded {
        sources: sources(conn)?,
        series: series(conn)?,
        windows: windows(conn)?,
        devices: devices(conn)?,
        links: links(conn)?,
    })
}

/// Ids are dense: row `i` (in id order) must have id `i`.
fn dense(what: &'static str, id: i64, i: usize) -> Result<(), StoreError> {
    if usize::try_from(id).ok() == Some(i) {
        Ok(())
    } else {
        Err(corrupt(what, format!("id {id} at position {i}")))
    }
}

fn sources(conn: &Connection) -> Result<Vec<(String, Option<i64>)>, StoreError> {
    let mut st = conn.prepare("SELECT id, name, watermark FROM sources ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?))
    })?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let (id, name, wm) = row?;
        dense("sources", id, i)?;
        out.push((name, wm));
    }
    Ok(out)
}

fn series(conn: &Connection) -> Result<Vec<SeriesRow>, StoreError> {
    let mut st =
        conn.prepare("SELECT id, key, quantum, source, closed_before FROM series ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let (id, key, q, source, closed_before) = row?;
        dense("series", id, i)?;
        let key = codec::to_key(&key)?;
        let quantum = i8::try_from(q)
            .map_err(|e| corrupt("series quantum", e))
            .and_then(|q| Quantum::new(q).map_err(|e| corrupt("series quantum", e)))?;
        out.push(SeriesRow {
            id: u32::try_from(id).map_err(|e| corrupt("series", e))?,
            key,
            quantum,
            source: u32::try_from(source).map_err(|e| corrupt("series source", e))?,
            closed_before,
        });
    }
    Ok(out)
}

fn windows(conn: &Connection) -> Result<Vec<(SeriesId, i64, Summary)>, StoreError> {
    let mut st = conn.prepare("SELECT series, start, summary FROM open_windows")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (s, start, blob) = row?;
        let s = u32::try_from(s).map_err(|e| corrupt("open window series", e))?;
        out.push((s, start, codec::to_summary(&blob)?));
    }
    Ok(out)
}

fn devices(conn: &Connection) -> Result<Vec<DeviceRow>, StoreError> {
    let mut st = conn.prepare("SELECT device, boot, hello, offset_ms, hwm, above FROM devices")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Vec<u8>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (device, boot, hello, offset_ms, hwm, above) = row?;
        out.push(DeviceRow {
            device,
            boot: u32::try_from(boot).map_err(|e| corrupt("device boot", e))?,
            hello: codec::to_hello(&hello)?,
            offset_ms,
            hwm: hwm
                .map(u32::try_from)
                .transpose()
                .map_err(|e| corrupt("device dedupe", e))?,
            above: codec::to_above(&above)?,
        });
    }
    Ok(out)
}

fn links(conn: &Connection) -> Result<Vec<(String, String, u32)>, StoreError> {
    let mut st = conn.prepare("SELECT link, device, boot FROM links")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (link, device, boot) = row?;
        let boot = u32::try_from(boot).map_err(|e| corrupt("link boot", e))?;
        out.push((link, device, boot));
    }
    Ok(out)
}
