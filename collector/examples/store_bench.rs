//! Store throughput: partials merged per second by SQLite (one writer) and
//! by PostgreSQL with 1, 2 and 3 concurrent writers — each writer a separate
//! `PostgresStore` (own connection pool), as separate collector
//! instances would be. Both databases run durably (SQLite `synchronous =
//! FULL`; PostgreSQL with `fsync` and `synchronous_commit` on), started
//! fresh in temp dirs; the PostgreSQL server is a real one on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p tributary-collector --example store_bench -- \
//!     [--series 1000] [--agents 5] [--fan-in 1] [--minutes 1000] [--group 256] \
//!     [--rollups 3600000,86400000|none] [--writers 1,2,3|0] [--runs 1] \
//!     [--deal agent|group] [--lanes 1] [--partitions none|prepared]
//! ```
//!
//! Every run applies the same seeded workload — agents closing one-minute
//! windows of the series they own, each close one batch, each partial also
//! merged into its 1 h and 1 d roll-ups — and checks at the end that every
//! backend holds every reading. The figures exclude building the workload
//! and starting the databases; they include de-duplication, roll-ups,
//! progress and the change feed's numbering.
//!
//! Beside each store it measures the database's own rate in the same run
//! (the machines are shared and vary by 2–3× from day to day): a bare
//! upsert loop writing as many rows, one per partial, into a (series,
//! window) table, 10,000 rows per transaction, with the same durability,
//! the same summary bytes (and for SQLite the same page cache) — rusqlite
//! for SQLite, `INSERT … SELECT unnest … ON CONFLICT DO UPDATE` for
//! PostgreSQL, where a chunk goes as several statements at fan-in > 1 (one
//! statement cannot upsert a row twice) — and prints the store's ratio to
//! it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_testkit::{Postgres, PostgresOptions as Server};

#[path = "load/mod.rs"]
mod load;
mod measure;
use load::{minute_partial, Rng, MIN};

const DAY: i64 = 24 * 3_600_000;
const T0: i64 = 1_700_000_000_000 / DAY * DAY;

#[derive(Debug, Parser)]
struct Args {
    /// Series (devices), shared out over the agents.
    #[arg(long, default_value_t = 1000)]
    series: u64,
    /// Agents.
    #[arg(long, default_value_t = 5)]
    agents: u64,
    /// Agents reporting each series (1 = every series has one agent; up to
    /// `--agents`: partials of several agents merge into the same windows,
    /// as when a series' devices are spread over gateways).
    #[arg(long, default_value_t = 1)]
    fan_in: u64,
    /// One-minute windows each agent closes; each close is one batch with
    /// a partial for every series the agent owns.
    #[arg(long, default_value_t = 1000)]
    minutes: u64,
    /// Batches per store transaction (the collector's `mqtt.max_group`).
    #[arg(long, default_value_t = 256)]
    group: usize,
    /// Roll-up widths (ms) kept exact by merging; `--rollups none` for none
    /// (then concurrent writers rarely touch the same rows).
    #[arg(long, default_value = "3600000,86400000")]
    rollups: String,
    /// PostgreSQL writer counts to measure (`0` alone: SQLite only).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    writers: Vec<usize>,
    /// Runs of SQLite and of each PostgreSQL writer count (each on a fresh
    /// database, beside its own bare loop); the medians are printed.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// How batches are dealt to PostgreSQL writers: `agent` (each writer
    /// its own agents' batches) or `group` (groups round robin).
    #[arg(long, value_enum, default_value_t = Deal::Agent)]
    deal: Deal,
    /// Lanes of each PostgreSQL writer: transactions one instance runs at
    /// once on disjoint agents of a group (`PostgresStore::with_lanes`; its
    /// pool holds twice as many connections).
    #[arg(long, default_value_t = 1)]
    lanes: usize,
    /// PostgreSQL `results` partitions: `none` (every row in the default
    /// partition, as a store the retention task has not yet visited; the
    /// figures before this option were measured so) or `prepared` — each
    /// width's partition of the workload's span made before the run, as
    /// the retention task (which prepares every stored width) leaves a
    /// running store.
    #[arg(long, value_enum, default_value_t = Partitions::None)]
    partitions: Partitions,
}

/// Whether `results` has its partitions before the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Partitions {
    /// Made for every width before the run.
    Prepared,
    /// None: the default partition takes every row.
    None,
}

/// How batches are dealt to concurrent writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Deal {
    /// Writer `i` of `n` takes the batches of every agent `a` with
    /// `a mod n = i`, in groups of `--group`.
    Agent,
    /// Writer `i` of `n` takes every `n`-th group of `--group` batches.
    Group,
}

/// Agents' batches in the order they close them: minute by minute, each
/// agent's batch holding one partial (1–10 readings) per series it
/// reports. Series `s` is reported by agents `s, s + 1, …, s + fan_in − 1`
/// (mod agents).
fn workload(a: &Args) -> Vec<Batch> {
    let mut rng = Rng::new(0);
    let fan_in = a.fan_in.clamp(1, a.agents);
    let keys = load::keys(a.series);
    let mut out = Vec::new();
    for minute in 0..a.minutes {
        let start = T0 + minute as i64 * MIN;
        for agent in 0..a.agents {
            let partials = keys
                .iter()
                .enumerate()
                .filter(|(s, _)| (agent + a.agents - *s as u64 % a.agents) % a.agents < fan_in)
                .map(|(_, key)| minute_partial(key, start, &mut rng))
                .collect();
            out.push(Batch::new(
                format!("gw-{agent}"),
                minute,
                start + MIN,
                partials,
            ));
        }
    }
    out
}

async fn readings<S: Store>(store: &S) -> u64 {
    let minute = Width::new(MIN).unwrap();
    let series = store.series().await.unwrap();
    let rows = store
        .windows_of(&series, minute, i64::MIN, i64::MAX)
        .await
        .unwrap();
    rows.iter().flatten().map(|w| w.summary.count()).sum()
}

/// The CPU seconds each server backend of database `db` (the writers'
/// connections) has used, by pid.
fn backends_cpu(pg: &Postgres, db: &str) -> BTreeMap<u32, f64> {
    let pids = pg
        .psql(
            db,
            "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(|p: u32| (p, measure::process(&p.to_string())))
        .collect()
}

struct Figure {
    label: String,
    secs: f64,
    partials: usize,
    batches: usize,
    cpu: f64,
}

impl Figure {
    fn print(&self) {
        println!(
            "{:<22} {:>9.0} partials/s {:>8.0} batches/s  ({} partials in {:.2} s, machine CPU busy {:.0} %)",
            self.label,
            self.partials as f64 / self.secs,
            self.batches as f64 / self.secs,
            self.partials,
            self.secs,
            self.cpu
        );
    }
}

/// Percent of all cores busy since `(c0, t0)`.
fn busy(c0: u64, t0: u64) -> f64 {
    100.0 * measure::busy_between((c0, t0), measure::machine())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rollups: Vec<i64> = args
        .rollups
        .split(',')
        .filter(|r| !r.is_empty() && *r != "none")
        .map(|r| r.parse().context("--rollups: a comma list of ms"))
        .collect::<Result<_, _>>()?;
    let batches = workload(&args);
    let mut pg: Option<Postgres> = None;
    let partials: usize = batches.iter().map(|b| b.partials.len()).sum();
    let total: u64 = batches
        .iter()
        .flat_map(|b| &b.partials)
        .map(|p| p.summary.count())
        .sum();
    println!(
        "workload: {} batches ({} agents × {} one-minute windows) of {} partials: {} series, each reported by {} agent(s); {} batches per transaction, roll-ups {:?} ms",
        batches.len(),
        args.agents,
        args.minutes,
        partials / batches.len().max(1),
        args.series,
        args.fan_in.clamp(1, args.agents),
        args.group,
        rollups
    );
    println!(
        "shape: every batch is one message of {} partials (1–10 readings each, one per series the agent owns); {} batches per store transaction; fan-in {}; excluded: building the workload, starting the databases, MQTT and decoding",
        partials / batches.len().max(1),
        args.group,
        args.fan_in.clamp(1, args.agents),
    );
    let mut runs: Vec<[f64; 4]> = Vec::new();
    for _ in 0..args.runs.max(1) {
        let bare = bare_sqlite(&batches)?;
        let store = bench_sqlite(&batches, &rollups, args.group, total).await?;
        let ratio = [store.0 / bare.0.max(1.0), store.1 / bare.1.max(1.0)];
        println!(
            "{:<22} store / bare = {:.2} by the clock, {:.2} per CPU-second",
            "sqlite ratio", ratio[0], ratio[1]
        );
        runs.push([store.0, bare.0, ratio[0], ratio[1]]);
    }
    if runs.len() > 1 {
        let median = |i: usize| measure::median(runs.iter().map(|r| r[i]));
        println!(
            "{:<22} {:>9.0} partials/s median of {} (bare loop median {:.0} rows/s; ratio median {:.2} by the clock, {:.2} per CPU-second)",
            "sqlite, 1 writer",
            median(0),
            runs.len(),
            median(1),
            median(2),
            median(3)
        );
    }
    for &n in args.writers.iter().filter(|&&n| n > 0) {
        let pg = match &pg {
            Some(pg) => pg,
            None => {
                pg.insert(Postgres::start(Server { durable: true }).context("starting PostgreSQL")?)
            }
        };
        let work = deal(&batches, n, args.group, args.deal);
        let (mut rates, mut bares, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs.max(1) {
            let bare = bare_postgres(pg, &format!("bare_{n}_{run}"), &batches).await?;
            let db = format!("bench_{n}_{run}");
            let store = bench_postgres(pg, &db, &work, &rollups, &args, total).await?;
            println!(
                "{:<22} store / bare = {:.2}",
                format!("postgres ratio, {n}"),
                store / bare.max(1.0)
            );
            rates.push(store);
            bares.push(bare);
            ratios.push(store / bare.max(1.0));
        }
        println!(
            "{:<22} {:>9.0} partials/s median of {} (bare loop median {:.0} rows/s; ratio median {:.2}; deal by {:?}, {} lane(s) each, partitions {:?})",
            format!("postgres, {n} writer{}", if n > 1 { "s" } else { "" }),
            measure::median(rates.iter().copied()),
            rates.len(),
            measure::median(bares.iter().copied()),
            measure::median(ratios.iter().copied()),
            args.deal,
            args.lanes.max(1),
            args.partitions
        );
    }
    Ok(())
}

/// Applies `batches` in groups of `group` to SQLite with one writer; prints
/// the figure and checks that no reading was lost.
async fn bench_sqlite(
    batches: &[Batch],
    rollups: &[i64],
    group: usize,
    total: u64,
) -> anyhow::Result<(f64, f64)> {
    let partials: usize = batches.iter().map(|b| b.partials.len()).sum();
    let dir = tempfile::tempdir()?;
    let lite = SqliteStore::open(&dir.path().join("bench.db"), rollups)?;
    let (c0, t0) = measure::machine();
    let own0 = measure::process("self");
    let t = Instant::now();
    for g in batches.chunks(group) {
        lite.apply(g).await?;
    }
    let own = measure::process("self") - own0;
    let secs = t.elapsed().as_secs_f64();
    Figure {
        label: "sqlite, 1 writer".into(),
        secs,
        partials,
        batches: batches.len(),
        cpu: busy(c0, t0),
    }
    .print();
    println!(
        "{:<22} {:>9.0} partials per CPU-second of the writer ({:.2} CPU-s; the figure that holds on a busy machine)",
        "",
        partials as f64 / own.max(0.01),
        own
    );
    anyhow::ensure!(readings(&lite).await == total, "sqlite lost readings");
    let (rows, payload): (i64, i64) = lite
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*), coalesce(sum(length(summary)), 0) FROM results",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await?;
    let file = std::fs::metadata(dir.path().join("bench.db"))?.len()
        + std::fs::metadata(dir.path().join("bench.db-wal")).map_or(0, |m| m.len());
    println!(
        "{:<22} {:.0} bytes per stored window ({} windows of every width: {:.0} bytes of summary each; file and WAL {} bytes)",
        "sqlite size",
        file as f64 / rows.max(1) as f64,
        rows,
        payload as f64 / rows.max(1) as f64,
        file
    );
    Ok((partials as f64 / secs, partials as f64 / own.max(0.01)))
}

/// Rows per bare-loop transaction.
const BARE_CHUNK: usize = 10_000;

/// The bare rows of `batches`: (series number, window start, summary
/// bytes), one per partial, built before any clock starts.
fn bare_rows(batches: &[Batch]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut ids: BTreeMap<&SeriesKey, i64> = BTreeMap::new();
    batches
        .iter()
        .flat_map(|b| &b.partials)
        .map(|p| {
            let n = ids.len() as i64;
            let id = *ids.entry(&p.series).or_insert(n);
            (
                id,
                p.window.start(),
                postcard::to_allocvec(&p.summary).unwrap(),
            )
        })
        .collect()
}

/// The database's own rate: a plain rusqlite loop upserting one row per
/// partial into a (series, window) table, [`BARE_CHUNK`] per transaction,
/// WAL with `synchronous = FULL`, the store's 8 KiB pages and its 64 MiB
/// page cache (with SQLite's default 2 MiB the loop spent a third of its
/// time spilling and re-reading pages, a handicap the store does not
/// have).
fn bare_sqlite(batches: &[Batch]) -> anyhow::Result<(f64, f64)> {
    let rows = bare_rows(batches);
    let dir = tempfile::tempdir()?;
    let mut conn = rusqlite::Connection::open(dir.path().join("bare.db"))?;
    conn.pragma_update(None, "page_size", 8_192)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.execute_batch(
        "CREATE TABLE w (series INTEGER NOT NULL, start INTEGER NOT NULL, summary BLOB NOT NULL,
         PRIMARY KEY (series, start)) WITHOUT ROWID",
    )?;
    let own0 = measure::process("self");
    let t = Instant::now();
    for chunk in rows.chunks(BARE_CHUNK) {
        let tx = conn.transaction()?;
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO w (series, start, summary) VALUES (?1, ?2, ?3)
                 ON CONFLICT (series, start) DO UPDATE SET summary = excluded.summary",
            )?;
            for (s, w, b) in chunk {
                up.execute(rusqlite::params![s, w, b])?;
            }
        }
        tx.commit()?;
    }
    let secs = t.elapsed().as_secs_f64();
    let own = measure::process("self") - own0;
    println!(
        "{:<22} {:>9.0} rows/s  (bare rusqlite upsert loop: {} rows, {} per transaction, in {:.2} s; {:.0} rows per CPU-second)",
        "sqlite bare",
        rows.len() as f64 / secs,
        rows.len(),
        BARE_CHUNK,
        secs,
        rows.len() as f64 / own.max(0.01)
    );
    Ok((rows.len() as f64 / secs, rows.len() as f64 / own.max(0.01)))
}

/// The database's own rate on PostgreSQL: one connection upserting one row
/// per partial into a (series, window) table with `INSERT … SELECT unnest
/// … ON CONFLICT DO UPDATE`, [`BARE_CHUNK`] rows per transaction. One
/// statement cannot upsert a row twice, so at fan-in > 1 a chunk goes as
/// several statements: the k-th partial of a window in the k-th (a row
/// written per partial at every fan-in, as the store merges each).
async fn bare_postgres(pg: &Postgres, db: &str, batches: &[Batch]) -> anyhow::Result<f64> {
    let rows = bare_rows(batches);
    let url = pg.create_database(db)?;
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE w (series BIGINT NOT NULL, start BIGINT NOT NULL, summary BYTEA NOT NULL,
             PRIMARY KEY (series, start))",
        )
        .await?;
    let t = Instant::now();
    let mut statements = 0usize;
    for chunk in rows.chunks(BARE_CHUNK) {
        // Each row goes to the statement after the last one its key is in.
        let mut seen: BTreeMap<(i64, i64), usize> = BTreeMap::new();
        let mut rounds: Vec<Vec<&(i64, i64, Vec<u8>)>> = Vec::new();
        for r in chunk {
            let k = seen.entry((r.0, r.1)).or_insert(0);
            if rounds.len() <= *k {
                rounds.push(Vec::new());
            }
            rounds[*k].push(r);
            *k += 1;
        }
        let tx = client.transaction().await?;
        for round in &rounds {
            let s: Vec<i64> = round.iter().map(|r| r.0).collect();
            let w: Vec<i64> = round.iter().map(|r| r.1).collect();
            let b: Vec<&[u8]> = round.iter().map(|r| r.2.as_slice()).collect();
            tx.execute(
                "INSERT INTO w (series, start, summary)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])
                 ON CONFLICT (series, start) DO UPDATE SET summary = excluded.summary",
                &[&s, &w, &b],
            )
            .await?;
        }
        statements += rounds.len();
        tx.commit().await?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{:<22} {:>9.0} rows/s  (bare unnest upsert loop, 1 connection: {} rows, {} per transaction in {} statements, in {:.2} s)",
        "postgres bare",
        rows.len() as f64 / secs,
        rows.len(),
        BARE_CHUNK,
        statements,
        secs
    );
    Ok(rows.len() as f64 / secs)
}

/// The groups each of `n` writers applies, in order (see [`Deal`]).
fn deal(batches: &[Batch], n: usize, group: usize, how: Deal) -> Vec<Vec<Vec<Batch>>> {
    let group = group.max(1);
    match how {
        Deal::Group => {
            let groups: Vec<&[Batch]> = batches.chunks(group).collect();
            (0..n)
                .map(|i| {
                    groups
                        .iter()
                        .skip(i)
                        .step_by(n)
                        .map(|g| g.to_vec())
                        .collect()
                })
                .collect()
        }
        Deal::Agent => {
            let agents: BTreeMap<&str, usize> = batches
                .iter()
                .map(|b| b.agent.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .enumerate()
                .map(|(i, a)| (a, i))
                .collect();
            let mut mine: Vec<Vec<Batch>> = vec![Vec::new(); n];
            for b in batches {
                mine[agents[b.agent.as_str()] % n].push(b.clone());
            }
            mine.into_iter()
                .map(|m| m.chunks(group).map(|g| g.to_vec()).collect())
                .collect()
        }
    }
}

/// Applies each writer's groups of `work` to the fresh database `db` of
/// `pg`, the writers concurrently, each a separate store (instance); prints
/// the figure and checks that no reading was lost.
async fn bench_postgres(
    pg: &Postgres,
    db: &str,
    work: &[Vec<Vec<Batch>>],
    rollups: &[i64],
    args: &Args,
    total: u64,
) -> anyhow::Result<f64> {
    let lanes = args.lanes;
    let n = work.len();
    let partials: usize = work
        .iter()
        .flatten()
        .flatten()
        .map(|b| b.partials.len())
        .sum();
    let batches: usize = work.iter().flatten().map(|g| g.len()).sum();
    let url = pg.create_database(db)?;
    let options = PostgresOptions {
        pool_size: 2 * lanes.max(1),
        ..PostgresOptions::new(url)
    };
    let mut stores: Vec<PostgresStore> = Vec::new();
    for _ in 0..n {
        stores.push(
            PostgresStore::open(&options, rollups)
                .await?
                .with_lanes(lanes),
        );
    }
    if args.partitions == Partitions::Prepared {
        let widths = work
            .iter()
            .flatten()
            .flatten()
            .flat_map(|b| &b.partials)
            .map(|p| p.window.width().ms())
            .chain(rollups.iter().copied())
            .collect::<std::collections::BTreeSet<i64>>();
        for w in widths {
            stores[0].prepare(Width::new(w)?, T0).await?;
        }
    }
    // Each writer's copy of its groups is made, and the groups it applied
    // are freed, outside the clock: that is the bench's work, not the
    // store's (the SQLite loop only borrows its groups).
    let copies: Vec<Vec<Vec<Batch>>> = work.to_vec();
    let (c0, t0) = measure::machine();
    let own0 = measure::process("self");
    let server0 = backends_cpu(pg, db);
    let t = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for (store, mine) in stores.iter().cloned().zip(copies) {
        writers.spawn(async move {
            for g in &mine {
                store.apply(g).await.unwrap();
            }
            mine
        });
    }
    let mut applied = Vec::with_capacity(n);
    while let Some(done) = writers.join_next().await {
        applied.push(done?);
    }
    let secs = t.elapsed().as_secs_f64();
    Figure {
        label: format!("postgres, {n} writer{}", if n > 1 { "s" } else { "" }),
        secs,
        partials,
        batches,
        cpu: busy(c0, t0),
    }
    .print();
    let own = measure::process("self") - own0;
    drop(applied);
    let server: f64 = backends_cpu(pg, db)
        .into_iter()
        .map(|(pid, c)| c - server0.get(&pid).copied().unwrap_or(0.0))
        .sum();
    println!(
        "{:<22} CPU: writers {:.2} s, their server backends {:.2} s ({:.0} partials per CPU-second of both)",
        "",
        own,
        server,
        partials as f64 / (own + server).max(0.01)
    );
    let groups: usize = work.iter().map(Vec::len).sum();
    let fell_back: u64 = stores.iter().map(PostgresStore::direct_conflicts).sum();
    println!(
        "{:<22} deadlocks retried: {}; direct COPY of rows expected new fell back in {} of {} transactions",
        "",
        pg.psql(
            db,
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        )?,
        fell_back,
        groups
    );
    anyhow::ensure!(
        readings(&stores[0]).await == total,
        "postgres lost readings"
    );
    // `results` is partitioned: its own size is 0; sum its partitions'
    // (heap, indexes, TOAST).
    println!(
        "{:<22} {} bytes per stored window (every partition of results with its indexes and TOAST / rows; {} bytes of summary each)",
        "postgres size",
        pg.psql(
            db,
            "SELECT (SELECT sum(pg_total_relation_size(relid))::bigint FROM pg_partition_tree('results'))
                    / greatest(count(*), 1) FROM results"
        )?,
        pg.psql(
            db,
            "SELECT coalesce(sum(length(summary)), 0) / greatest(count(*), 1) FROM results"
        )?
    );
    Ok(partials as f64 / secs)
}
