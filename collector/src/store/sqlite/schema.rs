//! The SQLite schema and its migrations.
//!
//! # Schema (version 8, in `PRAGMA user_version`; migrations run at open)
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
//! - `results(series, width, start, revision, summary, changed)` — one row
//!   per (series, width, window) with the merged summary as postcard bytes
//!   and the change number of its last write (indexed for the change feed);
//! - `watermarks(agent, watermark, seen_ms)` — the highest watermark each
//!   agent sent and when it was last seen;
//! - `series_agents(series, agent)` — which agents reported each series;
//! - `cursors(name, value)` — durable cursors (sinks); `meta` — the change
//!   counter. SQLite serialises writers, so change numbers commit in order;
//! - `leases(name, holder, expires_ms)` — who runs each sink, until when
//!   (several processes may open one database file);
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

use rusqlite::Connection;

use crate::store::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 8;

/// The first version whose sketches index the real reading.
const REAL_VALUE_SKETCHES: i64 = 4;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 8] = [V1, V2, V3, V4, V5, V6, V7, V8];

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
        conn.execute_batch(&format!(
            "BEGIN; {sql} PRAGMA user_version = {}; COMMIT;",
            from + 1
        ))?;
    }
    if found < 7 {
        incremental_vacuum(conn)?;
    }
    Ok(())
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
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    Ok(())
}
