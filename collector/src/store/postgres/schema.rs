//! The PostgreSQL schema and its versioned migrations.
//!
//! `schema_version(version, applied_at)` records every migration applied;
//! the schema's version is the highest row. Migrations run at start-up in
//! one transaction holding an advisory lock, so instances starting together
//! migrate once; an instance that finds a version newer than it knows refuses
//! to run ([`StoreError::SchemaTooNew`]).
//!
//! # Schema (version 8)
//! - `incarnations(agent, incarnation, applied_below, batches,
//!   dropped_readings, first_seen_ms, last_seen_ms)` — one row per agent
//!   incarnation (16 hex digits): its de-duplication mark, its batches and
//!   the readings it reported dropped; its row lock orders the work on the
//!   agent's keys (version 4, `merge/senders.rs`);
//! - `applied(agent, incarnation, seq)` — the de-duplication keys at or
//!   above their incarnation's mark, primary key (version 4);
//! - `refused(agent, incarnation, reason, partials, readings)` — the
//!   partials of applied batches the collector refused (`time_future`,
//!   `time_past`, `expired`) and their readings, per incarnation and reason,
//!   written in the applying transaction (version 7);
//! - `series(id, key)` — series keys as canonical JSON (`COLLATE "C"`, so
//!   they sort bytewise as in SQLite), unique;
//! - `results(series, width, start, revision, summary, changed)` — one row
//!   per (series, width, window): the merged summary as postcard bytes and
//!   the change number of its last write (indexed per width for the feed);
//! - `watermarks(agent, watermark, seen_ms)`, `series_agents(series, agent)`
//!   — progress for finality;
//! - `cursors(name, value)` — durable cursors; `meta('position_base')` —
//!   the base of change positions (version 5; `meta('change')`, the counter
//!   of versions 1–4, is no longer written);
//! - `leases(name, holder, expires)` — which instance runs each job that
//!   must run on one instance at a time (a sink, `sink:<name>`; retention,
//!   `retention`: `crate::lease`), until when by the database's clock
//!   (version 2);
//! - `parked(name, series, width, start)` — rows each sink passed over
//!   because they were not final yet (version 2).
//!
//! Version 3 changes no table: from it on, summaries' sketches index the
//! real reading (issue #13). Those of versions 1–2 indexed tick counts and
//! cannot be converted exactly, so an older database is migrated only if
//! `results` is empty, and refused ([`StoreError::TickIndexed`]) otherwise.
//!
//! Version 4 (issue #12): batches are identified by (agent, incarnation,
//! seq). The (agent, seq) keys of version 3 can never match a batch again
//! (a batch without an incarnation is refused), so `applied` is recreated
//! empty, and `incarnations` is added.
//!
//! Version 5 (issue #16): change numbers are positions from the writing
//! transaction's id instead of a counter row every commit took in turn
//! (see `feed.rs`); `meta('position_base')` is the counter's last value, so
//! every new position is above every number written before and sinks'
//! cursors carry over. No table is distributed by anything but the series
//! (the Citus-style layout in `config/multi-instance/OPERATIONS.md`).
//!
//! Version 6 (issue #16, retention): `results` becomes a table partitioned
//! by RANGE on (width, start), so that expiry drops whole partitions
//! (`store/postgres/retention.rs`); every existing row is carried over into
//! its default partition `results_default` (one copy, in the migration's
//! transaction: on a large database plan for the time it takes). The
//! primary key (series, width, start) holds the partition key, so upserts
//! work as before; `results_expiry (width, start)` finds the rows to delete
//! outside whole partitions.

use std::time::Instant;

use deadpool_postgres::Client;

use crate::store::StoreError;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 8;

/// The first version whose sketches index the real reading.
const REAL_VALUE_SKETCHES: i64 = 3;

/// Migrations: entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 8] = [V1, V2, V3, V4, V5, V6, V7, V8];

const V1: &str = r#"
CREATE TABLE applied (agent TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (agent, seq));
CREATE TABLE series (id BIGSERIAL PRIMARY KEY, key TEXT COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE results (
    series BIGINT NOT NULL REFERENCES series(id),
    width BIGINT NOT NULL,
    start BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    summary BYTEA NOT NULL,
    changed BIGINT NOT NULL,
    PRIMARY KEY (series, width, start)
);
CREATE INDEX results_changed ON results (width, changed);
CREATE TABLE watermarks (agent TEXT COLLATE "C" PRIMARY KEY, watermark BIGINT NOT NULL, seen_ms BIGINT NOT NULL);
CREATE TABLE series_agents (series BIGINT NOT NULL REFERENCES series(id), agent TEXT COLLATE "C" NOT NULL, PRIMARY KEY (series, agent));
CREATE TABLE cursors (name TEXT COLLATE "C" PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('change', 0);
"#;

const V2: &str = r#"
CREATE TABLE leases (name TEXT COLLATE "C" PRIMARY KEY, holder TEXT NOT NULL, expires TIMESTAMPTZ NOT NULL);
CREATE TABLE parked (name TEXT COLLATE "C" NOT NULL, series BIGINT NOT NULL REFERENCES series(id), width BIGINT NOT NULL, start BIGINT NOT NULL, PRIMARY KEY (name, series, width, start));
"#;

/// Sketches index the real reading from here on; no table changes.
const V3: &str = "SELECT 1";

/// Batch keys with the agent's incarnation; a row per incarnation.
const V4: &str = r#"
DROP TABLE IF EXISTS applied;
CREATE TABLE applied (agent TEXT COLLATE "C" NOT NULL, incarnation TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL, PRIMARY KEY (agent, incarnation, seq));
CREATE TABLE IF NOT EXISTS incarnations (agent TEXT COLLATE "C" NOT NULL, incarnation TEXT COLLATE "C" NOT NULL,
    applied_below BIGINT NOT NULL, batches BIGINT NOT NULL, dropped_readings BIGINT NOT NULL,
    first_seen_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (agent, incarnation));
"#;

/// Change positions from transaction ids; the old counter is their base.
const V5: &str = "
INSERT INTO meta (key, value) SELECT 'position_base', value FROM meta WHERE key = 'change'
ON CONFLICT (key) DO NOTHING;
";

/// `results` partitioned by (width, start); the rows carried over. Made
/// as version 8 leaves it — no foreign key, a BRIN `results_expiry` — so
/// the copy of every row pays neither a foreign-key check per row nor a
/// B-tree that version 8 would drop (databases that ran an earlier text of
/// this step are brought to the same end by version 8).
const V6: &str = r#"
ALTER TABLE results RENAME TO results_unpartitioned;
ALTER TABLE results_unpartitioned RENAME CONSTRAINT results_pkey TO results_unpartitioned_pkey;
ALTER INDEX results_changed RENAME TO results_unpartitioned_changed;
ALTER TABLE IF EXISTS results_default RENAME TO results_unpartitioned_default;
ALTER INDEX IF EXISTS results_expiry RENAME TO results_unpartitioned_expiry;
CREATE TABLE results (
    series BIGINT NOT NULL,
    width BIGINT NOT NULL,
    start BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    summary BYTEA NOT NULL,
    changed BIGINT NOT NULL,
    PRIMARY KEY (series, width, start)
) PARTITION BY RANGE (width, start);
CREATE INDEX results_changed ON results (width, changed);
CREATE INDEX results_expiry ON results USING brin (width, start);
CREATE TABLE results_default PARTITION OF results DEFAULT;
INSERT INTO results (series, width, start, revision, summary, changed)
    SELECT series, width, start, revision, summary, changed FROM results_unpartitioned;
DROP TABLE results_unpartitioned;
"#;

/// Partials refused inside applied batches, per incarnation and reason.
const V7: &str = r#"
CREATE TABLE IF NOT EXISTS refused (agent TEXT COLLATE "C" NOT NULL, incarnation TEXT COLLATE "C" NOT NULL,
    reason TEXT COLLATE "C" NOT NULL, partials BIGINT NOT NULL, readings BIGINT NOT NULL,
    PRIMARY KEY (agent, incarnation, reason));
"#;

/// No foreign key from `results` to `series`; `results_expiry` a BRIN
/// index. Only a database whose version 6 ran an earlier text of that step
/// (a B-tree `results_expiry`) has the index rebuilt, in the migration's
/// transaction (on a large database: plan for the time it takes); version
/// 6 as it is now makes it BRIN already, and it is not built twice.
const V8: &str = r#"
DO $$
DECLARE c name;
BEGIN
    -- Version 6 made the key beside the old table's, so its name is
    -- `results_series_fkey1` there (and `results_series_fkey` in a database
    -- created otherwise): drop every foreign key of `results` by catalogue.
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'results'::regclass AND contype = 'f' AND conparentid = 0 LOOP
        EXECUTE format('ALTER TABLE results DROP CONSTRAINT %I', c);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_class i JOIN pg_am am ON am.oid = i.relam
                   WHERE i.oid = to_regclass('results_expiry') AND am.amname = 'brin') THEN
        -- (the same test as the store's `EXPIRY_IS_BRIN`, for the log)
        DROP INDEX IF EXISTS results_expiry;
        CREATE INDEX results_expiry ON results USING brin (width, start);
    END IF;
END $$;
"#;

/// The index `results_expiry` exists and is a BRIN index.
const EXPIRY_IS_BRIN: &str = "
SELECT EXISTS (SELECT 1 FROM pg_class i JOIN pg_am am ON am.oid = i.relam
               WHERE i.oid = to_regclass('results_expiry') AND am.amname = 'brin')";

/// The rows (the planner's estimate) and bytes of `results` and its
/// partitions.
const RESULTS_SIZE: &str = "
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint,
       coalesce(sum(pg_relation_size(c.oid)), 0)::bigint
FROM pg_class c
WHERE c.oid = 'results'::regclass
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'results'::regclass)";

/// Any fixed number: the advisory lock key that serialises migrations.
const MIGRATION_LOCK: i64 = 0x7472_6962_7574_6172; // "tributar"

/// The schema version found in the database (0 for an empty database).
pub(super) async fn version(client: &Client) -> Result<i64, StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await?
        .get(0);
    Ok(v.unwrap_or(0))
}

/// Whether step `to` of a migration from version `found` reads every row
/// of `results`: version 6 copies them into the partitioned table (in any
/// database that had a version before); version 8 builds the BRIN index
/// over them only where an earlier text of version 6 left a B-tree.
async fn reads_every_row(
    tx: &tokio_postgres::Transaction<'_>,
    found: i64,
    to: i64,
) -> Result<bool, StoreError> {
    Ok(match to {
        6 => found > 0,
        // Below 6, this run's own version 6 made the index BRIN.
        8 => found >= 6 && !tx.query_one(EXPIRY_IS_BRIN, &[]).await?.get::<_, bool>(0),
        _ => false,
    })
}

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a newer one.
pub(super) async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if (1..REAL_VALUE_SKETCHES).contains(&found) {
        let held: bool = tx
            .query_one("SELECT EXISTS (SELECT 1 FROM results)", &[])
            .await?
            .get(0);
        if held {
            return Err(StoreError::TickIndexed {
                found,
                known: SCHEMA_VERSION,
            });
        }
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let to = from as i64 + 1;
        // A step that copies or re-reads every result row says so before
        // and after: on a big database it takes minutes. A new database has
        // none.
        let copy = if reads_every_row(&tx, found, to).await? {
            // The planner's figures (0 rows before a first ANALYZE): a
            // count would read the table once more.
            let row = tx.query_one(RESULTS_SIZE, &[]).await?;
            let (rows, bytes): (i64, i64) = (row.get(0), row.get(1));
            tracing::info!(
                from,
                to,
                rows_estimate = rows,
                bytes,
                "PostgreSQL schema migration: reading every result row in one transaction (minutes on a large database)"
            );
            Some(Instant::now())
        } else {
            None
        };
        tx.batch_execute(sql).await?;
        if let Some(started) = copy {
            tracing::info!(
                from,
                to,
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "PostgreSQL schema migration step done"
            );
        }
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])
            .await?;
        tracing::info!(from, to, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(found)
}
