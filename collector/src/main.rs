//! `tributary-collector`: the command line. `run --config FILE` opens the
//! SQLite store, ingests batches from MQTT and serves the query API,
//! `/metrics` and `/health` until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::http::header;
use axum::routing::get;
use clap::{Parser, Subcommand};
use tributary_collector::api::{self, ApiState};
use tributary_collector::config::Config;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
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
    let store = Arc::new(Mutex::new(store));
    let counters = Arc::new(IngestCounters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest_cfg = IngestConfig {
        host: cfg.mqtt.host.clone(),
        port: cfg.mqtt.port,
        client_id: cfg.mqtt.client_id.clone(),
        max_payload_bytes: cfg.limits.max_payload_bytes,
        max_partials: cfg.limits.max_partials,
        group_batches: cfg.mqtt.max_group,
        group_wait: Duration::from_millis(5),
    };
    let ingest = tokio::spawn(ingest::run(
        ingest_cfg,
        store.clone(),
        counters.clone(),
        stop_rx.clone(),
    ));
    let metrics = counters.clone();
    let app = api::router(ApiState {
        store,
        token: cfg.http.token.clone(),
    })
    .route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .with_context(|| format!("binding http.listen {}", cfg.http.listen))?;
    tracing::info!(listen = %cfg.http.listen, db = %db.display(), "collector running");
    let mut http_stop = stop_rx;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = http_stop.changed() => {}
            }
        })
        .await
        .context("serving HTTP")?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    ingest.await.context("joining ingest")?;
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
