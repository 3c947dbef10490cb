//! The PostgreSQL store's queries: series, their windows, their agents'
//! progress, and the agents with their incarnations.

use deadpool_postgres::Client;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tributary_core::{SeriesKey, Width};

use crate::store::codec::{
    in_order, incarnation_state, key_text, key_texts, parse_key, refused_row, stored, RefusedRows,
};
use crate::store::{agents_of, AgentProgress, AgentState, StoreError, StoredWindow};

/// Every series, ordered by key text.
pub(super) async fn series(client: &Client) -> Result<Vec<SeriesKey>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT key FROM series ORDER BY key")
        .await?;
    client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|row| parse_key(row.get(0)))
        .collect()
}

/// The windows of one series at `width` starting in `[from, to)`.
pub(super) async fn windows(
    client: &Client,
    series: &SeriesKey,
    width: Width,
    from: i64,
    to: i64,
) -> Result<Vec<StoredWindow>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT r.start, r.revision, r.summary FROM results r JOIN series s ON s.id = r.series
             WHERE s.key = $1 AND r.width = $2 AND r.start >= $3 AND r.start < $4 ORDER BY r.start",
        )
        .await?;
    client
        .query(&stmt, &[&key_text(series)?, &width.ms(), &from, &to])
        .await?
        .iter()
        .map(|row| stored(row.get(0), width, row.get(1), row.get(2)))
        .collect()
}

/// A one-query `…_of` read: the rows of `sql`, whose `$1` is the list of
/// `series`' key texts (`params` are `$2…`) and whose first column is a key
/// text, converted by `row` and laid out in the order of `series`.
async fn by_series<T: Clone>(
    client: &Client,
    series: &[SeriesKey],
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    row: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<Vec<T>>, StoreError> {
    let texts = key_texts(series)?;
    let stmt = client.prepare_cached(sql).await?;
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&texts];
    args.extend_from_slice(params);
    let mut by_key: std::collections::HashMap<String, Vec<T>> = Default::default();
    for r in client.query(&stmt, &args).await? {
        by_key.entry(r.get(0)).or_default().push(row(&r)?);
    }
    Ok(in_order(&texts, by_key))
}

/// [`windows`] of each of `series`, in one query.
pub(super) async fn windows_of(
    client: &Client,
    series: &[SeriesKey],
    width: Width,
    from: i64,
    to: i64,
) -> Result<Vec<Vec<StoredWindow>>, StoreError> {
    by_series(
        client,
        series,
        "SELECT s.key, r.start, r.revision, r.summary FROM series s
         JOIN results r ON r.series = s.id
         WHERE s.key = ANY($1) AND r.width = $2 AND r.start >= $3 AND r.start < $4
         ORDER BY s.key, r.start",
        &[&width.ms(), &from, &to],
        |r| stored(r.get(1), width, r.get(2), r.get(3)),
    )
    .await
}

/// The latest watermark of each agent.
pub(super) async fn watermarks(client: &Client) -> Result<Vec<(String, i64)>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT agent, watermark FROM watermarks ORDER BY agent")
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Every agent with its incarnations.
pub(super) async fn agents(client: &Client) -> Result<Vec<AgentState>, StoreError> {
    let watermarks = watermarks(client).await?.into_iter().collect();
    let stmt = client
        .prepare_cached(
            "SELECT i.agent, i.incarnation, i.applied_below,
               (SELECT count(*) FROM applied a WHERE a.agent = i.agent AND a.incarnation = i.incarnation),
               i.batches, i.dropped_readings, i.first_seen_ms, i.last_seen_ms
             FROM incarnations i ORDER BY i.agent, i.first_seen_ms, i.incarnation",
        )
        .await?;
    let refused_stmt = client
        .prepare_cached("SELECT agent, incarnation, reason, partials, readings FROM refused")
        .await?;
    let mut refused = RefusedRows::new();
    for r in client.query(&refused_stmt, &[]).await? {
        let key = (r.get(0), r.get(1));
        refused_row(&mut refused, key, r.get(2), r.get(3), r.get(4))?;
    }
    let mut out = Vec::new();
    for r in client.query(&stmt, &[]).await? {
        let (agent, text): (String, String) = (r.get(0), r.get(1));
        let mut inc = incarnation_state(
            &text,
            [r.get(2), r.get(3), r.get(4), r.get(5)],
            r.get(6),
            r.get(7),
        )?;
        inc.refused = refused.remove(&(agent.clone(), text)).unwrap_or_default();
        out.push((agent, inc));
    }
    Ok(agents_of(out, &watermarks))
}

fn agent_progress(r: &Row, first: usize) -> AgentProgress {
    AgentProgress {
        agent: r.get(first),
        watermark: r.get(first + 1),
        seen_ms: r.get(first + 2),
    }
}

/// The progress of the agents of one series.
pub(super) async fn progress(
    client: &Client,
    series: &SeriesKey,
) -> Result<Vec<AgentProgress>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT w.agent, w.watermark, w.seen_ms FROM series s
             JOIN series_agents a ON a.series = s.id
             JOIN watermarks w ON w.agent = a.agent
             WHERE s.key = $1 ORDER BY w.agent",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&key_text(series)?])
        .await?
        .iter()
        .map(|r| agent_progress(r, 0))
        .collect())
}

/// [`progress`] of each of `series`, in one query.
pub(super) async fn progress_of(
    client: &Client,
    series: &[SeriesKey],
) -> Result<Vec<Vec<AgentProgress>>, StoreError> {
    by_series(
        client,
        series,
        "SELECT s.key, w.agent, w.watermark, w.seen_ms FROM series s
         JOIN series_agents a ON a.series = s.id
         JOIN watermarks w ON w.agent = a.agent
         WHERE s.key = ANY($1) ORDER BY s.key, w.agent",
        &[],
        |r| Ok(agent_progress(r, 1)),
    )
    .await
}

/// Those of `widths` with at least one stored result.
pub(super) async fn stored_widths(
    client: &Client,
    widths: &[Width],
) -> Result<Vec<Width>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT 1 FROM results WHERE width = $1 LIMIT 1")
        .await?;
    let mut out = Vec::new();
    for &w in widths {
        if client.query_opt(&stmt, &[&w.ms()]).await?.is_some() {
            out.push(w);
        }
    }
    Ok(out)
}
