//! `tributary-collector`: the command line. `run --config FILE` opens the
//! configured store (SQLite, or PostgreSQL shared by many instances: see
//! `[store]`), ingests batches from MQTT and serves the query API,
//! `/metrics` and `/health` until Ctrl-C or SIGTERM; `migrate` creates or
//! upgrades the store's schema and exits.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::postgres::PostgresStore;
use tributary_collector::store::sqlite::{self, SqliteStore};
use tributary_collector::store::Store;
use tributary_runtime::shutdown_signal;

/// The Tributary central collector.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector.
    Run {
        /// The config file (TOML, see config/collector.toml).
        #[arg(long, short, default_value = "/etc/tributary/collector.toml")]
        config: PathBuf,
    },
    /// Create or upgrade the store's schema, print its version and exit
    /// (the collector also migrates at start-up).
    Migrate {
        /// The config file (TOML, see config/collector.toml).
        #[arg(long, short, default_value = "/etc/tributary/collector.toml")]
        config: PathBuf,
    },
}

/// Opens the SQLite store of `cfg` (creating `data_dir`).
fn open_sqlite(cfg: &Config) -> anyhow::Result<SqliteStore> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    SqliteStore::open(&cfg.db_path(), &cfg.rollups_ms)
        .with_context(|| format!("opening the store {}", cfg.db_path().display()))
}

/// Serves over `store` until Ctrl-C or SIGTERM.
async fn serve<S: Store>(cfg: &Config, store: S) -> anyhow::Result<()> {
    let running = service::start(cfg, store).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await.context("stopping the collector")
}

async fn run(cfg: Config, migrate_only: bool) -> anyhow::Result<()> {
    match cfg.store.postgres() {
        Some(options) => {
            let store = PostgresStore::open(&options, &cfg.rollups_ms)
                .await
                .context("opening the PostgreSQL store (store.url)")?
                .with_lanes(cfg.store.lanes);
            if migrate_only {
                println!(
                    "PostgreSQL schema version {}",
                    store.schema_version().await?
                );
                return Ok(());
            }
            tracing::info!(share_group = ?cfg.mqtt.share_group, "PostgreSQL store open");
            serve(&cfg, store).await
        }
        None => {
            let store = open_sqlite(&cfg)?;
            if migrate_only {
                let (v, db) = (sqlite::SCHEMA_VERSION, cfg.db_path());
                println!("SQLite schema version {v} at {}", db.display());
                return Ok(());
            }
            tracing::info!(db = %cfg.db_path().display(), "store open");
            serve(&cfg, store).await
        }
    }
}

fn main() -> anyhow::Result<()> {
    tributary_runtime::logging::init("info");
    let (config, migrate_only) = match Cli::parse().command {
        Command::Run { config } => (config, false),
        Command::Migrate { config } => (config, true),
    };
    let cfg =
        Config::load(&config).with_context(|| format!("loading config {}", config.display()))?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(run(cfg, migrate_only))
}
