//! Store throughput: partials merged per second by SQLite (one writer) and
//! by PostgreSQL with 1, 2 and 3 concurrent writers — each writer a separate
//! `PostgresStore` (own connection pool and runtime), as separate collector
//! instances would be. Both databases run durably (SQLite `synchronous =
//! FULL`; PostgreSQL with `fsync` and `synchronous_commit` on), started
//! fresh in temp dirs; the PostgreSQL server is a real one on 127.0.0.1.
//!
//! ```text
//! cargo run --release -p tributary-collector --example store_bench -- \
//!     [--batches 600] [--partials 50] [--group 16] [--devices 2000] [--agents 10] \
//!     [--rollups 3600000,86400000|none] [--writers 1,2,3]
//! ```
//!
//! Every run applies the same seeded workload (agents' batches of one-minute
//! partials, each also merged into its 1 h and 1 d roll-ups) and checks at
//! the end that every backend holds the same count of readings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::sqlite::SqliteStore;
use tributary_collector::store::Store;
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::{Postgres, PostgresOptions as Server};

const MIN: i64 = 60_000;
const DAY: i64 = 24 * 3_600_000;
const T0: i64 = 1_700_000_000_000 / DAY * DAY;

#[derive(Debug, Parser)]
struct Args {
    /// Batches in the workload.
    #[arg(long, default_value_t = 600)]
    batches: u64,
    /// Partials per batch.
    #[arg(long, default_value_t = 50)]
    partials: usize,
    /// Batches per store transaction (the collector's `mqtt.max_group`).
    #[arg(long, default_value_t = 16)]
    group: usize,
    /// Distinct devices (series).
    #[arg(long, default_value_t = 2000)]
    devices: u64,
    /// Agents.
    #[arg(long, default_value_t = 10)]
    agents: u64,
    /// Roll-up widths (ms) kept exact by merging; `--rollups none` for none
    /// (then concurrent writers rarely touch the same rows).
    #[arg(long, default_value = "3600000,86400000")]
    rollups: String,
    /// PostgreSQL writer counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    writers: Vec<usize>,
}

fn workload(a: &Args) -> Vec<Batch> {
    let q = Quantum::new(-3).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let per_agent = a.batches.div_ceil(a.agents);
    let mut out = Vec::new();
    for seq in 0..per_agent {
        for agent in 0..a.agents {
            // Agents move forward in time together: batch `seq` covers minute
            // `seq`, so consecutive batches hit the same hour roll-ups.
            let start = T0 + seq as i64 * MIN;
            let partials = (0..a.partials)
                .map(|_| {
                    let device = format!("dev-{:05}", next() % a.devices);
                    let mut s = Summary::new(q);
                    for _ in 0..(1 + next() % 10) {
                        let t = start + (next() % MIN as u64) as i64;
                        s.insert(t, 20_000 + (next() % 5_000) as i64).unwrap();
                    }
                    let mut tags = BTreeMap::new();
                    tags.insert("agent".to_string(), format!("gw-{agent}"));
                    Partial {
                        series: SeriesKey::new("temperature", &device, tags).unwrap(),
                        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                        summary: s,
                    }
                })
                .collect();
            out.push(Batch::new(format!("gw-{agent}"), seq, start, partials));
        }
    }
    out.truncate(a.batches as usize);
    out
}

fn readings<S: Store>(store: &S) -> u64 {
    let day = Width::new(MIN).unwrap();
    store
        .series()
        .unwrap()
        .iter()
        .flat_map(|s| store.windows(s, day, i64::MIN, i64::MAX).unwrap())
        .map(|w| w.summary.count())
        .sum()
}

/// (busy, total) jiffies of the whole machine from `/proc/stat`, to tell
/// how much of the cores a run used (others' processes included).
fn cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
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
    let (c1, t1) = cpu();
    100.0 * (c1 - c0) as f64 / (t1 - t0).max(1) as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rollups: Vec<i64> = args
        .rollups
        .split(',')
        .filter(|r| !r.is_empty() && *r != "none")
        .map(|r| r.parse().context("--rollups: a comma list of ms"))
        .collect::<Result<_, _>>()?;
    let batches = workload(&args);
    let partials: usize = batches.iter().map(|b| b.partials.len()).sum();
    let total: u64 = batches
        .iter()
        .flat_map(|b| &b.partials)
        .map(|p| p.summary.count())
        .sum();
    println!(
        "workload: {} batches × {} partials over {} devices, {} batches per transaction, roll-ups {:?} ms",
        batches.len(),
        args.partials,
        args.devices,
        args.group,
        rollups
    );
    let mut figures = Vec::new();

    let dir = tempfile::tempdir()?;
    let mut lite = SqliteStore::open(&dir.path().join("bench.db"), &rollups)?;
    let (c0, t0) = cpu();
    let t = Instant::now();
    for g in batches.chunks(args.group) {
        lite.apply(g)?;
    }
    figures.push(Figure {
        label: "sqlite, 1 writer".into(),
        secs: t.elapsed().as_secs_f64(),
        partials,
        batches: batches.len(),
        cpu: busy(c0, t0),
    });
    figures[0].print();
    anyhow::ensure!(readings(&lite) == total, "sqlite lost readings");

    let pg = Postgres::start(Server { durable: true }).context("starting PostgreSQL")?;
    for &n in &args.writers {
        let n = n.max(1);
        let url = pg.create_database(&format!("bench_{n}"))?;
        let options = PostgresOptions {
            pool_size: 1,
            ..PostgresOptions::new(url)
        };
        let stores: Vec<PostgresStore> = (0..n)
            .map(|_| PostgresStore::open(&options, &rollups))
            .collect::<Result<_, _>>()?;
        // Writer i takes every n-th group, as a shared subscription spreads them.
        let groups: Vec<&[Batch]> = batches.chunks(args.group).collect();
        let (c0, t0) = cpu();
        let t = Instant::now();
        std::thread::scope(|s| {
            for (i, mut store) in stores.iter().cloned().enumerate() {
                let mine: Vec<&[Batch]> = groups.iter().skip(i).step_by(n).copied().collect();
                s.spawn(move || {
                    for g in mine {
                        store.apply(g).unwrap();
                    }
                });
            }
        });
        let f = Figure {
            label: format!("postgres, {n} writer{}", if n > 1 { "s" } else { "" }),
            secs: t.elapsed().as_secs_f64(),
            partials,
            batches: batches.len(),
            cpu: busy(c0, t0),
        };
        f.print();
        let db = format!("bench_{n}");
        println!(
            "{:<22} deadlocks retried: {}",
            "",
            pg.psql(
                &db,
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            )?
        );
        anyhow::ensure!(readings(&stores[0]) == total, "postgres lost readings");
        figures.push(f);
    }
    Ok(())
}
