//! The SQLite schema and its migrations.
//!
//! # Schema (version 10, in `PRAGMA user_version`; migrations run at open)
//! - `incarnations(agent, incarnation, applied_below, batches,
//!   dropped_readings, first_seen_ms, last_seen_ms)` — one row per agent
//!   incarnation (16 hex digits): its de-duplication mark (every batch
//!   sequence below it applied), its batches and the readings it reported
//!   dropped (`merge/senders.rs`);
//! - `refused(agent, incarnation, reason, partials, readings)` — the
//!   partials of applied batches the collector refused (`time_future`,
//!   `time_past`, `expired`) and their readings, per incarnation and reason,
//!   written in the applying transaction (version 8);
//! - `applied(agent, incarnation, seq)` — the de-duplication keys at or
//!   above their incarnation's mark, primary key;
//! - `series(id, key)` — series keys as canonical JSON, unique;
//! - `results(width, span, series, start, revision, summary, changed)` —
//!   one row per (series, width, window) with the merged summary as
//!   postcard bytes and the change number of its last write. Clustered by
//!   time first (version 9, see [`span`]). `series` is declared a foreign
//!   key of `series(id)`, which the writer does not have checked (its ids
//!   come from `series` itself: `super::apply`);
//! - `feed(width, first, last, keys, live)`, `feed_keys(width, first,
//!   list)` — the change feed's log: the rows each transaction wrote at
//!   each width (version 10, [`super::feed_log`]);
//! - `watermarks(agent, watermark, seen_ms)` — the highest watermark each
//!   agent sent and when it was last seen;
//! - `series_agents(series, agent)` — which agents reported each series;
//! - `cursors(name, value)` — durable cursors (sinks); `meta` — the change
//!   counter. SQLite serialises writers, so change numbers commit in order;
//! - `leases(name, holder, expires_ms)` — who runs each job that must run
//!   on one instance at a time (a sink, `sink:<name>`; retention,
//!   `retention`: `crate::lease`), until when (several processes may open
//!   one database file);
//! - `parked(name, series, width, start)` — rows each sink passed over
//!   because they were not final yet.
//!
//! Version 4 changes no table: from it on, summaries' sketches index the
//! real reading (issue #13). Those of versions 1–3 indexed tick counts and
//! cannot be converted exactly, so a database of an older version is
//! migrated only if `results` is empty, and refused
//! ([`StoreError::TickIndexed`]) otherwise.
//!
//! Version 5 (issue #12): batches are identified by (agent, incarnation,
//! seq). The (agent, seq) keys of version 4 can never match a batch again
//! (a batch without an incarnation is refused), so `applied` is recreated
//! empty, and `incarnations` is added.
//!
//! Version 6 is an empty step: it was reserved for the write path's
//! migration of issue #16, which in the end needed none on SQLite.
//!
//! Version 7 (issue #16, retention): `results_expiry (width, start)`, the
//! index the retention task finds expired rows by. A new database is
//! created with `auto_vacuum = INCREMENTAL` (set before its first table), so
//! expired rows' pages can be given back in bounded steps; an existing one
//! is switched over by a `VACUUM` at this migration when it holds at most
//! [`CHEAP_VACUUM_PAGES`] pages, and otherwise left to the operator (the
//! task still deletes; the file keeps its size and reuses the pages).
//!
//! Version 9 (issue #16, write rate): `results` is clustered by
//! `(width, span, series, start)` instead of `(series, width, start)`, and
//! `results_expiry` is gone (expiry is a range of the primary key). Every
//! row is copied in the migration's transaction: the log says how large
//! the file is before and how long it took after.
//!
//! Version 10 (issue #16, write rate): the change feed reads a log of the
//! rows each transaction wrote (`feed`, `feed_keys`: [`super::feed_log`])
//! instead of the index `results_changed (width, changed)`, which cost a
//! second B-tree write per row. The migration builds the log from the
//! rows stored, in change order, then drops the index.
//!
//! # Design: the time-first layout
//! A result row's place in the table's B-tree is its width, then its
//! *span* ([`SPAN_WINDOWS`] consecutive windows of its width, [`span`]),
//! then its series and start. Fresh windows all fall in the newest span, so
//! a transaction's new rows fill a few adjacent pages at the end of the
//! tree and the pages of older spans are never written again. Clustered by
//! series first, every new window lands on its own series' last page in
//! the middle of the tree: a commit of one minute of 1,000 series rewrote
//! about 1,000 pages (4 MB of WAL for 75 kB of rows), and the cost of a
//! small transaction grew with the number of series. A series' windows stay
//! together within a span, so a range query is one seek per span that holds
//! rows (skipping empty spans, see `query.rs`).

use std::time::Instant;

use rusqlite::Connection;

use crate::store::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 10;

/// The first version whose sketches index the real reading.
const REAL_VALUE_SKETCHES: i64 = 4;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 10] = [V1, V2, V3, V4, V5, V6, V7, V8, V9, V10];

const V1: &str = "
CREATE TABLE IF NOT EXISTS applied (agent TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (agent, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS results (
    series INTEGER NOT NULL REFERENCES series(id),
    width INTEGER NOT NULL,
    start INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    summary BLOB NOT NULL,
    PRIMARY KEY (series, width, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (agent TEXT PRIMARY KEY, watermark INTEGER NOT NULL);
";

const V2: &str = "
ALTER TABLE watermarks ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX results_changed ON results (width, changed);
CREATE TABLE series_agents (series INTEGER NOT NULL, agent TEXT NOT NULL, PRIMARY KEY (series, agent)) WITHOUT ROWID;
CREATE TABLE cursors (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('change', 0);
";

const V3: &str = "
CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE parked (name TEXT NOT NULL, series INTEGER NOT NULL, width INTEGER NOT NULL, start INTEGER NOT NULL, PRIMARY KEY (name, series, width, start)) WITHOUT ROWID;
";

/// Sketches index the real reading from here on; no table changes.
const V4: &str = "";

/// Batch keys with the agent's incarnation; a row per incarnation.
const V5: &str = "
DROP TABLE IF EXISTS applied;
CREATE TABLE applied (agent TEXT NOT NULL, incarnation TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (agent, incarnation, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS incarnations (agent TEXT NOT NULL, incarnation TEXT NOT NULL,
    applied_below INTEGER NOT NULL, batches INTEGER NOT NULL, dropped_readings INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (agent, incarnation)) WITHOUT ROWID;
";

/// Reserved for the write path (issue #16); it needed no change here.
const V6: &str = "";

/// The retention task's index.
const V7: &str = "CREATE INDEX IF NOT EXISTS results_expiry ON results (width, start);";

/// Partials refused inside applied batches, per incarnation and reason.
const V8: &str = "
CREATE TABLE IF NOT EXISTS refused (agent TEXT NOT NULL, incarnation TEXT NOT NULL, reason TEXT NOT NULL,
    partials INTEGER NOT NULL, readings INTEGER NOT NULL,
    PRIMARY KEY (agent, incarnation, reason)) WITHOUT ROWID;
";

/// `results` clustered time first; every row carried over (one copy, in
/// the migration's transaction); the expiry index dropped with the old
/// table. The span expression is [`span_sql`]'s, spelled out (a `const`
/// cannot call it; a test holds the two equal).
const V9: &str = "
CREATE TABLE results_by_span (
    width INTEGER NOT NULL,
    span INTEGER NOT NULL,
    series INTEGER NOT NULL REFERENCES series(id),
    start INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    summary BLOB NOT NULL,
    changed INTEGER NOT NULL,
    PRIMARY KEY (width, span, series, start)
) WITHOUT ROWID;
INSERT INTO results_by_span (width, span, series, start, revision, summary, changed)
    SELECT width,
        (CASE WHEN start >= 0 THEN start / (width * 16) ELSE -(-(start + 1) / (width * 16)) - 1 END),
        series, start, revision, summary, changed
    FROM results ORDER BY 1, 2, 3, 4;
DROP TABLE results;
ALTER TABLE results_by_span RENAME TO results;
CREATE INDEX results_changed ON results (width, changed);
";

/// The change feed's log (see [`super::feed_log`]); filled from the rows
/// stored by [`super::feed_log::rebuild`] before the `(width, changed)`
/// index it replaces is dropped ([`REBUILDS_FEED`]).
const V10: &str = "
DROP TABLE IF EXISTS feed;
DROP TABLE IF EXISTS feed_keys;
CREATE TABLE feed (width INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
    keys INTEGER NOT NULL, live INTEGER NOT NULL, PRIMARY KEY (width, first)) WITHOUT ROWID;
CREATE TABLE feed_keys (width INTEGER NOT NULL, first INTEGER NOT NULL, list BLOB NOT NULL,
    PRIMARY KEY (width, first)) WITHOUT ROWID;
";

/// The version whose migration fills the feed's log from `results` and
/// drops the index it replaces.
const REBUILDS_FEED: usize = 10;

/// The versions whose migration passes over every row of `results` (the
/// file's size before, the time after, in the log).
const COPIES_RESULTS: [usize; 2] = [9, REBUILDS_FEED];

/// Windows per span: the unit of the time-first layout.
pub(super) const SPAN_WINDOWS: i64 = 16;

/// The span of the window of `width` (ms) starting at `start`:
/// `floor(start / (width · SPAN_WINDOWS))`. Widths are at most 366 days,
/// so the product cannot overflow; it saturates rather than panic anyway.
pub(super) fn span(width: i64, start: i64) -> i64 {
    let length = width.checked_mul(SPAN_WINDOWS).unwrap_or(i64::MAX).max(1);
    start.div_euclid(length)
}

/// [`span`] in SQL, of the columns (or parameters) `width` and `start`:
/// floor division without overflow for any `start`.
pub(super) fn span_sql(width: &str, start: &str) -> String {
    format!(
        "(CASE WHEN {start} >= 0 THEN {start} / ({width} * {SPAN_WINDOWS}) \
         ELSE -(-({start} + 1) / ({width} * {SPAN_WINDOWS})) - 1 END)"
    )
}

/// The largest database (pages) switched to incremental auto-vacuum by a
/// `VACUUM` at migration: 25,600 pages (100 MiB at 4 KiB) copy in seconds.
const CHEAP_VACUUM_PAGES: i64 = 25_600;

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a newer one.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if (1..REAL_VALUE_SKETCHES).contains(&found) {
        let held: bool =
            conn.query_row("SELECT EXISTS (SELECT 1 FROM results)", [], |r| r.get(0))?;
        if held {
            return Err(StoreError::TickIndexed {
                found,
                known: SCHEMA_VERSION,
            });
        }
    }
    if found == 0 {
        // Before the first table, so no VACUUM is needed.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let to = from + 1;
        // A step that copies every result row says so before and after: on
        // a big database it takes minutes. A new database has none to copy.
        let copy = if found > 0 && COPIES_RESULTS.contains(&to) {
            // The file's size, read at once (a count of the rows would be
            // one more pass over the large database this line warns of).
            let bytes = file_bytes(conn)?;
            tracing::info!(
                from,
                to,
                bytes,
                "SQLite schema migration: passing over every result row in one transaction (minutes on a large database)"
            );
            Some((bytes, Instant::now()))
        } else {
            None
        };
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        if to == REBUILDS_FEED {
            super::feed_log::rebuild(&tx)?;
            tx.execute_batch("DROP INDEX results_changed;")?;
        }
        tx.pragma_update(None, "user_version", to as i64)?;
        tx.commit()?;
        if let Some((bytes, started)) = copy {
            tracing::info!(
                from,
                to,
                bytes,
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "SQLite schema migrated: every result row passed over"
            );
        }
    }
    if found < 7 {
        incremental_vacuum(conn)?;
    }
    Ok(())
}

/// The database file's size (pages × page size), read at once.
fn file_bytes(conn: &Connection) -> Result<i64, StoreError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(pages.saturating_mul(page))
}

/// Switches an existing database to `auto_vacuum = INCREMENTAL` when that
/// is cheap (a `VACUUM` rewrites the file); says what to do otherwise.
fn incremental_vacuum(conn: &Connection) -> Result<(), StoreError> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    if mode == 2 {
        return Ok(());
    }
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    if pages > CHEAP_VACUUM_PAGES {
        tracing::warn!(
            pages,
            "the database is not in auto_vacuum = INCREMENTAL mode and too large to switch at start-up; retention deletes but the file keeps its size until `PRAGMA auto_vacuum = INCREMENTAL; VACUUM;` is run with the collector stopped"
        );
        return Ok(());
    }
    tracing::info!(
        pages,
        bytes = file_bytes(conn)?,
        "switching the database to auto_vacuum = INCREMENTAL: one VACUUM copies the whole file"
    );
    let started = Instant::now();
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    tracing::info!(
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "database switched to auto_vacuum = INCREMENTAL"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `floor(start / (width · 16))` by i128 arithmetic, the reference.
    fn floor_div(width: i64, start: i64) -> i64 {
        let (a, b) = (i128::from(start), i128::from(width) * 16);
        let q = if a >= 0 { a / b } else { -((-a + b - 1) / b) };
        i64::try_from(q).unwrap()
    }

    /// The version-9 migration computes each row's span with [`span_sql`].
    #[test]
    fn the_migration_spells_out_span_sql() {
        assert!(V9.contains(&span_sql("width", "start")), "{V9}");
    }

    /// [`span`] and [`span_sql`] (as SQLite evaluates it) agree with floor
    /// division on both sides of zero, at window edges and at the ends of
    /// `i64`: a row's span computed in Rust is the one SQL computes.
    #[test]
    fn span_is_floor_division_in_rust_and_in_sql() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = format!("SELECT {}", span_sql("?1", "?2"));
        let mut stmt = conn.prepare(&sql).unwrap();
        let widths = [
            1,
            1_000,
            60_000,
            3_600_000,
            86_400_000,
            tributary_core::Width::MAX_MS,
        ];
        for width in widths {
            let length = width * SPAN_WINDOWS;
            let starts = [
                0,
                1,
                -1,
                width,
                -width,
                length - 1,
                length,
                length + 1,
                -length + 1,
                -length,
                -length - 1,
                1_700_000_000_000,
                -1_700_000_000_000,
                i64::MAX,
                i64::MIN,
                i64::MIN + 1,
            ];
            for start in starts {
                let want = floor_div(width, start);
                assert_eq!(span(width, start), want, "rust: {width} {start}");
                let got: i64 = stmt.query_row([width, start], |r| r.get(0)).unwrap();
                assert_eq!(got, want, "sql: {width} {start}");
            }
        }
    }
}
