//! `tributary-collector`: the command line. `run --config FILE` opens the
//! SQLite store, ingests batches from MQTT and serves the query API,
//! `/metrics` and `/health` until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::sqlite::SqliteStore;

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
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(cfg: Config) -> anyhow::Result<()> {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = Config::load(&config)
                .with_context(|| format!("loading config {}", config.display()))?;
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(run(cfg))
        }
    }
}
