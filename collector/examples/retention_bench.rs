//! Retention (issue #16): stored bytes per window and per series-day on
//! SQLite and PostgreSQL, and the cost of expiry while ingest runs.
//!
//! ```text
//! cargo run --release -p tributary-collector --example retention_bench -- \
//!     [--series 500] [--hours 48] [--runs 3] [--pg true]
//! ```
//!
//! Bytes: `--runs` times, a fresh database is loaded with `--series` series
//! × `--hours` of one-minute windows (1–10 readings each, one batch per
//! minute holding every series) plus their 1 h and 1 d roll-ups; then
//! SQLite's file is checkpointed (`wal_checkpoint(TRUNCATE)`) and measured
//! as page count × page size (and per table/index from `dbstat`),
//! PostgreSQL's `results` by `pg_total_relation_size` over its partition
//! tree after `VACUUM` (day partitions of the minutes made before the load,
//! as the retention task makes them). The
//! median run is printed with its shape (rows per width, bytes per row of
//! each width's tuples).
//!
//! Expiry: on a database holding the load, ingest goes on (the next
//! minutes, one group of 16 batches per transaction) for as long as the
//! retention task takes to delete the first half of the minutes, and the
//! same ingest is timed alone: ingest's rate with and without expiry
//! running, and expiry's rows per second.
//!
//! Fixed costs: on the same loaded database, before expiry, the task's
//! per-run calls that do not scale with what expires — `oldest` of the
//! minutes (PostgreSQL: one statement, a server-side binary search over the
//! BRIN index) and a `reclaim` with nothing to give back — medians of 7;
//! on PostgreSQL as loaded and after the task's `prepare` (which analyses
//! the ended partitions and summarises their BRIN block ranges: the
//! probes' plan depends on both).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use tributary_collector::retention::{Policy, RetentionConfig, RetentionTask, GRACE_MS};
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Batch;
use tributary_core::Width;
use tributary_testkit::{Postgres, PostgresOptions as Server};

#[path = "load/mod.rs"]
mod load;
// Only its median here.
#[allow(dead_code)]
mod measure;
use load::{minute_partial, Rng, MIN};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const T0: i64 = 1_700_000_000_000 / DAY * DAY;
const ROLLUPS: [i64; 2] = [HOUR, DAY];
const GROUP: usize = 16;

#[derive(Debug, Parser)]
struct Args {
    /// Series.
    #[arg(long, default_value_t = 500)]
    series: u64,
    /// Hours of one-minute windows loaded.
    #[arg(long, default_value_t = 48)]
    hours: u64,
    /// Loads measured (the median is printed).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measure PostgreSQL too.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pg: bool,
}

/// One batch per minute from `T0 + first` minutes, `n` minutes, each with
/// a partial of 1–10 readings for every one of `series` series.
fn minutes(series: u64, first: u64, n: u64) -> Vec<Batch> {
    let mut rng = Rng::new(first);
    let keys = load::keys(series);
    (first..first + n)
        .map(|m| {
            let start = T0 + m as i64 * MIN;
            let partials = keys
                .iter()
                .map(|key| minute_partial(key, start, &mut rng))
                .collect();
            Batch::new("gw", m, start + MIN, partials)
        })
        .collect()
}

/// Applies `batches` in groups, the store prepared (PostgreSQL: the time
/// partitions) for every day they cover, as the retention task keeps it.
async fn load<S: Store>(store: &S, batches: &[Batch]) -> anyhow::Result<()> {
    let minute = Width::new(MIN).unwrap();
    let last = batches.last().map_or(T0, |b| b.watermark);
    for day in (T0..=last).step_by(DAY as usize) {
        store.prepare(minute, day).await?;
    }
    for g in batches.chunks(GROUP) {
        store.apply(g).await?;
    }
    Ok(())
}

/// One measured database: total bytes, its parts, rows and tuple bytes by
/// width.
#[derive(Debug, Clone)]
struct Bytes {
    total: u64,
    /// `results` with its indexes.
    results: u64,
    /// What a row's bytes are, per width.
    row: &'static str,
    parts: Vec<(String, u64)>,
    widths: Vec<(i64, u64, f64)>,
}

fn sqlite_bytes(path: &Path) -> anyhow::Result<Bytes> {
    let c = rusqlite::Connection::open(path)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: u64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let mut parts = Vec::new();
    let mut stmt = c.prepare(
        "SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC LIMIT 6",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
        parts.push(row?);
    }
    let mut widths = Vec::new();
    let mut stmt = c.prepare(
        "SELECT width, count(*), avg(length(summary)) FROM results GROUP BY width ORDER BY width",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
        widths.push(row?);
    }
    let results = parts
        .iter()
        .filter(|(n, _): &&(String, u64)| n.starts_with("results"))
        .map(|p| p.1)
        .sum();
    Ok(Bytes {
        total: pages * size,
        results,
        row: "summary blob bytes",
        parts,
        widths,
    })
}

fn pg_bytes(pg: &Postgres, db: &str) -> anyhow::Result<Bytes> {
    let q = |sql: &str| pg.psql(db, sql).map(|s| s.trim().to_string());
    q("VACUUM")?;
    let total: u64 = q("SELECT pg_database_size(current_database())")?.parse()?;
    let mut parts = Vec::new();
    // The first: the table with its indexes; then each index.
    for rel in [
        "results",
        "results_pkey",
        "results_changed",
        "results_expiry",
    ] {
        // Summed over the partition tree (a partitioned relation has no
        // storage of its own).
        let n: u64 = q(&format!(
            "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree('{rel}')"
        ))?
        .parse()?;
        parts.push((rel.to_string(), n));
    }
    let mut widths = Vec::new();
    let rows = q("SELECT width || ' ' || count(*) || ' ' || avg(pg_column_size(r.*)) FROM results r GROUP BY width ORDER BY width")?;
    for line in rows.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        widths.push((f[0].parse()?, f[1].parse()?, f[2].parse()?));
    }
    Ok(Bytes {
        total,
        results: parts[0].1,
        row: "tuple bytes (pg_column_size)",
        parts,
        widths,
    })
}

fn print_bytes(label: &str, all: &mut [Bytes], args: &Args) {
    all.sort_by_key(|b| b.total);
    let b = &all[all.len() / 2];
    let results = b.results;
    let rows: u64 = b.widths.iter().map(|w| w.1).sum();
    let series_days = args.series as f64 * args.hours as f64 / 24.0;
    println!(
        "{label}: median of {} loads: {} bytes in all ({:.1} MiB); results and its indexes {} bytes: {:.1} bytes per stored window ({} windows), {:.0} bytes per series-day (whole database / {} series × {:.2} days)",
        all.len(),
        b.total,
        b.total as f64 / 1048576.0,
        results,
        results as f64 / rows.max(1) as f64,
        rows,
        b.total as f64 / series_days,
        args.series,
        args.hours as f64 / 24.0
    );
    for (name, n) in &b.parts {
        println!("    {name:<24} {n:>12} bytes");
    }
    for (w, n, avg) in &b.widths {
        println!(
            "    width {w:>9} ms: {n:>9} rows, {avg:.1} {} per row",
            b.row
        );
    }
}

/// Applies `batches` in groups, adding each group's partials to `applied`
/// once it is committed.
async fn apply_all<S: Store>(store: &S, batches: &[Batch], applied: &AtomicUsize) {
    for g in batches.chunks(GROUP) {
        store.apply(g).await.unwrap();
        let n: usize = g.iter().map(|b| b.partials.len()).sum();
        applied.fetch_add(n, Ordering::Relaxed);
    }
}

/// The medians of 7 calls of `oldest` (the minutes) and of `reclaim` with
/// nothing left to give back, on a loaded `store`.
async fn fixed_costs<S: Store>(label: &str, store: &S) -> anyhow::Result<()> {
    let minute = Width::new(MIN)?;
    let pages = RetentionConfig::default().vacuum_pages;
    // What the load itself freed goes first.
    while store.reclaim(pages).await? > 0 {}
    let (mut oldest, mut reclaim) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let t = Instant::now();
        let o = store.oldest(minute).await?;
        oldest.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(o == Some(T0), "oldest {o:?}, loaded from {T0}");
        let t = Instant::now();
        let freed = store.reclaim(pages).await?;
        reclaim.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(freed == 0, "reclaim freed {freed} bytes");
    }
    println!(
        "{label}: oldest (minutes) {:.2} ms, reclaim with nothing to give back {:.3} ms (medians of 7)",
        measure::median(oldest),
        measure::median(reclaim)
    );
    Ok(())
}

/// Ingest of `next` with and without the retention task deleting the first
/// half of the loaded minutes; prints both rates and expiry's. Both halves
/// are timed through the same plain apply loop, with `next`'s partitions
/// made beforehand; the rate "while expiry ran" counts what was committed
/// from the start of expiry to its end, not after it.
async fn expiry_cost<S: Store>(label: &str, store: S, next: &[Batch], loaded: u64) {
    let half = T0 + (loaded / 2) as i64 * MIN;
    // `now` at which every minute starting before `half` has expired.
    let keep = DAY;
    let now = half + GRACE_MS + keep + MIN - 1;
    let policy = Policy::new(keep, vec![(HOUR, 0), (DAY, 0)]);
    let cfg = RetentionConfig::default();
    let task = RetentionTask::new(store.clone(), policy, cfg);
    let minute = Width::new(MIN).unwrap();
    let (first, last) = (
        next.first().map_or(T0, |b| b.watermark),
        next.last().map_or(T0, |b| b.watermark),
    );
    for day in (first / DAY * DAY..=last).step_by(DAY as usize) {
        store.prepare(minute, day).await.unwrap();
    }
    let (alone, with) = next.split_at(next.len() / 2);
    let done = AtomicUsize::new(0);
    let t = Instant::now();
    apply_all(&store, alone, &done).await;
    let alone_rate = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    let applied = Arc::new(AtomicUsize::new(0));
    let ingest = {
        let (store, with, applied) = (store.clone(), with.to_vec(), applied.clone());
        tokio::spawn(async move { apply_all(&store, &with, &applied).await })
    };
    let t = Instant::now();
    let mut deleted = 0;
    loop {
        let run = task.run_once(now).await;
        assert!(
            run.failed.is_empty(),
            "retention steps failed: {:?}",
            run.failed
        );
        deleted += run.expired.iter().map(|e| e.1).sum::<u64>();
        if run.behind.is_empty() {
            break;
        }
    }
    let expiry_secs = t.elapsed().as_secs_f64();
    let during = applied.load(Ordering::Relaxed);
    ingest.await.unwrap();
    println!(
        "{label}: ingest {alone_rate:.0} partials/s alone, {:.0} partials/s while expiry ran ({during} partials committed in its {expiry_secs:.2} s); expiry deleted {deleted} rows = {:.0} rows/s (batches of {} rows)",
        during as f64 / expiry_secs,
        deleted as f64 / expiry_secs,
        RetentionConfig::default().batch_rows
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let loaded = args.hours * 60;
    let batches = minutes(args.series, 0, loaded);
    // Enough further minutes that ingest outlasts expiry.
    let next = minutes(args.series, loaded, loaded / 2);
    println!(
        "load: {} series × {} one-minute windows, roll-ups {ROLLUPS:?} ms, {GROUP} batches per transaction",
        args.series, loaded
    );
    let dir = tempfile::tempdir()?;
    let mut lite = Vec::new();
    for run in 0..args.runs {
        let path = dir.path().join(format!("bytes-{run}.db"));
        let store = SqliteStore::open(&path, &ROLLUPS)?;
        load(&store, &batches).await?;
        drop(store);
        lite.push(sqlite_bytes(&path)?);
    }
    print_bytes("sqlite", &mut lite, &args);
    let path = dir.path().join("expiry.db");
    let store = SqliteStore::open(&path, &ROLLUPS)?;
    load(&store, &batches).await?;
    fixed_costs("sqlite", &store).await?;
    expiry_cost("sqlite", store, &next, loaded).await;
    if args.pg {
        let pg = Postgres::start(Server { durable: true }).context("starting PostgreSQL")?;
        let mut all = Vec::new();
        for run in 0..args.runs {
            let db = format!("bytes_{run}");
            let url = pg.create_database(&db)?;
            let store = PostgresStore::open(&PostgresOptions::new(url), &ROLLUPS).await?;
            load(&store, &batches).await?;
            drop(store);
            all.push(pg_bytes(&pg, &db)?);
        }
        print_bytes("postgres", &mut all, &args);
        let url = pg.create_database("expiry")?;
        let store = PostgresStore::open(&PostgresOptions::new(url), &ROLLUPS).await?;
        load(&store, &batches).await?;
        // Just loaded, its partitions have no statistics and the BRIN
        // index no summaries of their block ranges: the retention task's
        // `prepare` makes both on the ended days (as autovacuum would, in
        // time).
        fixed_costs("postgres, as loaded", &store).await?;
        let after = T0 + (loaded as i64) * MIN + DAY;
        store.prepare(Width::new(MIN)?, after).await?;
        fixed_costs("postgres, after the task's prepare", &store).await?;
        expiry_cost("postgres", store, &next, loaded).await;
    }
    Ok(())
}
