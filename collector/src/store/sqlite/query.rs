//! The SQLite store's queries (run on reader connections): series, their
//! windows, their agents' progress, and the agents with their incarnations.

use foldhash::{HashMap, HashMapExt};
use rusqlite::{params, Connection, OptionalExtension};
use tributary_core::{SeriesKey, Width};

use super::schema::span;
use crate::store::codec::{
    corrupt, in_order, incarnation_state, key_text, key_texts, parse_key, refused_row, stored,
    RefusedRows,
};
use crate::store::{agents_of, AgentProgress, AgentState, StoreError, StoredWindow};

/// Every series, ordered by key text.
pub(super) fn series(conn: &Connection) -> Result<Vec<SeriesKey>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT key FROM series ORDER BY key")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for text in rows {
        out.push(parse_key(&text?)?);
    }
    Ok(out)
}

/// The spans at width `?2` from span `?5` to span `?6` that hold rows: a
/// skip-scan of the primary key's `(width, span)` prefix, one seek per span
/// with rows, so empty stretches of time cost nothing. The results are then
/// read by primary key (span, series, start) within each.
const SPANS: &str = "spans(x) AS (
             SELECT (SELECT MIN(span) FROM results WHERE width = ?2 AND span >= ?5)
             UNION ALL
             SELECT (SELECT MIN(span) FROM results WHERE width = ?2 AND span > x)
             FROM spans WHERE x IS NOT NULL AND x < ?6)";

/// The first and last span that windows of `width` starting in
/// `[from, to)` can lie in.
fn span_range(width: Width, from: i64, to: i64) -> (i64, i64) {
    (
        span(width.ms(), from),
        span(width.ms(), to.saturating_sub(1)),
    )
}

/// The windows of one series at `width` starting in `[from, to)`.
pub(super) fn windows(
    conn: &Connection,
    series: &SeriesKey,
    width: Width,
    from: i64,
    to: i64,
) -> Result<Vec<StoredWindow>, StoreError> {
    let sql = format!(
        "WITH RECURSIVE {SPANS}
         SELECT r.start, r.revision, r.summary
         FROM spans CROSS JOIN series s CROSS JOIN results r
         WHERE s.key = ?1 AND r.width = ?2 AND r.span = spans.x AND r.series = s.id
           AND r.start >= ?3 AND r.start < ?4
         ORDER BY r.start"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let (first, last) = span_range(width, from, to);
    let mut rows = stmt.query(params![
        key_text(series)?,
        width.ms(),
        from,
        to,
        first,
        last
    ])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(stored(
            r.get(0)?,
            width,
            r.get(1)?,
            &r.get::<_, Vec<u8>>(2)?,
        )?);
    }
    Ok(out)
}

/// A one-query `…_of` read: the rows of `sql`, whose `?1` is the list of
/// `series`' key texts as JSON (for `json_each`; `params` are `?2…`) and
/// whose first column is a key text, converted by `row` and laid out in the
/// order of `series`.
fn by_series<T: Clone>(
    conn: &Connection,
    series: &[SeriesKey],
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    row: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<Vec<T>>, StoreError> {
    let texts = key_texts(series)?;
    let list = serde_json::to_string(&texts).map_err(|e| corrupt("series keys", e))?;
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&list];
    args.extend_from_slice(params);
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(args.as_slice())?;
    let mut by_key: HashMap<String, Vec<T>> = HashMap::new();
    while let Some(r) = rows.next()? {
        by_key.entry(r.get(0)?).or_default().push(row(r)?);
    }
    Ok(in_order(&texts, by_key))
}

/// [`windows`] of each of `series`, in one query.
pub(super) fn windows_of(
    conn: &Connection,
    series: &[SeriesKey],
    width: Width,
    from: i64,
    to: i64,
) -> Result<Vec<Vec<StoredWindow>>, StoreError> {
    let sql = format!(
        "WITH RECURSIVE {SPANS},
         ids(id, key) AS MATERIALIZED (
             SELECT id, key FROM series WHERE key IN (SELECT value FROM json_each(?1)))
         SELECT ids.key, r.start, r.revision, r.summary
         FROM spans CROSS JOIN ids CROSS JOIN results r
         WHERE r.width = ?2 AND r.span = spans.x AND r.series = ids.id
           AND r.start >= ?3 AND r.start < ?4
         ORDER BY ids.key, r.start"
    );
    let (first, last) = span_range(width, from, to);
    by_series(
        conn,
        series,
        &sql,
        &[&width.ms(), &from, &to, &first, &last],
        |r| stored(r.get(1)?, width, r.get(2)?, &r.get::<_, Vec<u8>>(3)?),
    )
}

/// The latest watermark of each agent.
pub(super) fn watermarks(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT agent, watermark FROM watermarks ORDER BY agent")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every agent with its incarnations.
pub(super) fn agents(conn: &Connection) -> Result<Vec<AgentState>, StoreError> {
    let watermarks = watermarks(conn)?.into_iter().collect();
    let mut stmt = conn.prepare_cached(
        "SELECT i.agent, i.incarnation, i.applied_below,
           (SELECT count(*) FROM applied a WHERE a.agent = i.agent AND a.incarnation = i.incarnation),
           i.batches, i.dropped_readings, i.first_seen_ms, i.last_seen_ms
         FROM incarnations i ORDER BY i.agent, i.first_seen_ms, i.incarnation",
    )?;
    let mut refused = RefusedRows::new();
    {
        let mut stmt = conn
            .prepare_cached("SELECT agent, incarnation, reason, partials, readings FROM refused")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = (r.get(0)?, r.get(1)?);
            refused_row(&mut refused, key, r.get(2)?, r.get(3)?, r.get(4)?)?;
        }
    }
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (agent, text): (String, String) = (r.get(0)?, r.get(1)?);
        let mut inc = incarnation_state(
            &text,
            [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
            r.get(6)?,
            r.get(7)?,
        )?;
        inc.refused = refused.remove(&(agent.clone(), text)).unwrap_or_default();
        out.push((agent, inc));
    }
    Ok(agents_of(out, &watermarks))
}

fn agent_progress(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<AgentProgress> {
    Ok(AgentProgress {
        agent: r.get(first)?,
        watermark: r.get(first + 1)?,
        seen_ms: r.get(first + 2)?,
    })
}

/// The progress of the agents of one series.
pub(super) fn progress(
    conn: &Connection,
    series: &SeriesKey,
) -> Result<Vec<AgentProgress>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT w.agent, w.watermark, w.seen_ms FROM series s
         JOIN series_agents a ON a.series = s.id
         JOIN watermarks w ON w.agent = a.agent
         WHERE s.key = ?1 ORDER BY w.agent",
    )?;
    let rows = stmt.query_map(params![key_text(series)?], |r| agent_progress(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// [`progress`] of each of `series`, in one query.
pub(super) fn progress_of(
    conn: &Connection,
    series: &[SeriesKey],
) -> Result<Vec<Vec<AgentProgress>>, StoreError> {
    by_series(
        conn,
        series,
        "SELECT s.key, w.agent, w.watermark, w.seen_ms FROM series s
         JOIN series_agents a ON a.series = s.id
         JOIN watermarks w ON w.agent = a.agent
         WHERE s.key IN (SELECT value FROM json_each(?1)) ORDER BY s.key, w.agent",
        &[],
        |r| Ok(agent_progress(r, 1)?),
    )
}

/// Those of `widths` with at least one stored result.
pub(super) fn stored_widths(conn: &Connection, widths: &[Width]) -> Result<Vec<Width>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM results WHERE width = ?1 LIMIT 1")?;
    let mut out = Vec::new();
    for &w in widths {
        if stmt
            .query_row(params![w.ms()], |_| Ok(()))
            .optional()?
            .is_some()
        {
            out.push(w);
        }
    }
    Ok(out)
}
