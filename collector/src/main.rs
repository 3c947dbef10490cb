//! `tributary-collector`: the command line. `run --config FILE` opens the
//! configured store (SQLite, or PostgreSQL shared by many instances: see
//! `[store]`; `migrate` creates or upgrades its schema and exits), ingests batches from MQTT and serves the query API,
//! `/metrics` and `/health` until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::sqlite::SqliteStore;
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

/// The configured PostgreSQL options (the URL from `TRIBUTARY_STORE_URL`
/// when set), or `None` for SQLite.
fn postgres_options(cfg: &Config) -> Option<PostgresOptions> {
    let mut o = cfg.store.postgres()?;
    if let Ok(url) = std::env::var("TRIBUTARY_STORE_URL") {
        o.url = url;
    }
    Some(o)
}

/// Runs the collector on the shared PostgreSQL store.
async fn run_postgres(cfg: Config, options: PostgresOptions) -> anyhow::Result<()> {
    let rollups = cfg.rollups_ms.clone();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(&options, &rollups))
        .await
        .context("opening the PostgreSQL store")?
        .context("opening the PostgreSQL store (store.url)")?;
    let running = service::start(&cfg, store).await?;
    tracing::info!(share_group = ?cfg.mqtt.share_group, "PostgreSQL store open");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await.context("stopping the collector")?;
    Ok(())
}

/// Opens the configured store (which migrates it) and prints its version.
fn migrate(cfg: &Config) -> anyhow::Result<()> {
    match postgres_options(cfg) {
        Some(o) => {
            let store = PostgresStore::open(&o, &cfg.rollups_ms)
                .context("migrating the PostgreSQL store (store.url)")?;
            println!("PostgreSQL schema version {}", store.schema_version()?);
        }
        None => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
            SqliteStore::open(&cfg.db_path(), &cfg.rollups_ms)
                .with_context(|| format!("migrating the store {}", cfg.db_path().display()))?;
            println!(
                "SQLite schema version {} at {}",
                tributary_collector::store::sqlite::SCHEMA_VERSION,
                cfg.db_path().display()
            );
        }
    }
    Ok(())
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if let Some(options) = postgres_options(&cfg) {
        return run_postgres(cfg, options).await;
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;
    let db = cfg.db_path();
    let store = SqliteStore::open(&db, &cfg.rollups_ms)
        .with_context(|| format!("opening the store {}", db.display()))?;
    let running = service::start(&cfg, store).await?;
    tracing::info!(db = %db.display(), "store open");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await.context("stopping the collector")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tributary_runtime::logging::init("info");
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { config } => {
            let cfg = Config::load(&config)
                .with_context(|| format!("loading config {}", config.display()))?;
            migrate(&cfg)
        }
        Command::Run { config } => {
            let cfg = Config::load(&config)
                .with_context(|| format!("loading config {}", config.display()))?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(run(cfg))
        }
    }
}
