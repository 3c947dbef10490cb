//! The running collector: one store handle shared by MQTT ingest, the HTTP
//! server (query API, dashboard, `/metrics`, the health endpoints), the
//! retention task and the sinks, each
//! through its own role, started and stopped as one unit.
//! `tributary-collector run`, the demo and the tests all start the
//! collector through [`start`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::header;
use axum::routing::get;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::health::{self, Health};
use crate::ingest::{self, IngestCounters};
use crate::query::api::{self, ApiState};
use crate::query::dashboard::{self, DashboardOptions};
use crate::retention::{RetentionMetrics, RetentionTask};
use crate::sinks::{SinkMetrics, Sinks};
use crate::store::Store;

/// Why the collector could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The HTTP listen address could not be bound.
    #[error("cannot listen on http.listen {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("serving HTTP: {0}")]
    Http(std::io::Error),
    /// A sink could not start.
    #[error("starting sinks: {0}")]
    Sinks(#[from] crate::sinks::SinkError),
    /// A task panicked.
    #[error("a collector task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A started collector.
#[derive(Debug)]
pub struct Running {
    http_addr: SocketAddr,
    counters: Arc<IngestCounters>,
    stop: watch::Sender<bool>,
    ingest: JoinHandle<()>,
    http: JoinHandle<Result<(), ServiceError>>,
    retention: (Arc<RetentionMetrics>, JoinHandle<()>),
    sinks: Sinks,
}

impl Running {
    /// The address the HTTP server listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The ingest counters.
    pub fn counters(&self) -> &Arc<IngestCounters> {
        &self.counters
    }

    /// The sinks' counters.
    pub fn sinks(&self) -> &Arc<SinkMetrics> {
        self.sinks.metrics()
    }

    /// The retention task's metrics.
    pub fn retention(&self) -> &Arc<RetentionMetrics> {
        &self.retention.0
    }

    /// Stops serving, commits what ingest holds and waits for it, the
    /// retention task, the sinks and the HTTP server.
    pub async fn stop(self) -> Result<(), ServiceError> {
        let _ = self.stop.send(true);
        self.ingest.await?;
        self.retention.1.await?;
        self.sinks.join().await?;
        self.http.await?
    }
}

/// Sets its flag to false when dropped: marks the end of the ingest task
/// for `/health/live`.
struct Ended(Arc<AtomicBool>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Starts ingest, the sinks and the HTTP server over `store`.
pub async fn start<S: Store>(cfg: &Config, store: S) -> Result<Running, ServiceError> {
    let counters = Arc::new(IngestCounters::default());
    let (stop, stop_rx) = watch::channel(false);
    let ingest_running = Arc::new(AtomicBool::new(true));
    let running = Ended(ingest_running.clone());
    let policy = cfg.retention_policy();
    let ingest = tokio::spawn({
        let mut ingest_cfg = cfg.mqtt.ingest(&cfg.limits);
        ingest_cfg.retention = policy.clone();
        let run = ingest::run(ingest_cfg, store.clone(), counters.clone(), stop_rx.clone());
        async move {
            // Dropped when ingest ends, also by a panic.
            let _running = running;
            run.await;
        }
    });
    let health = health::router(Health::new(
        store.clone(),
        counters.clone(),
        ingest_running,
        cfg.http.ready_max_lag_ms,
    ));
    let sinks = crate::sinks::start(
        &cfg.sinks,
        &cfg.mqtt.client_id,
        store.clone(),
        cfg.finality.rule(),
        stop_rx.clone(),
    )?;
    let task = RetentionTask::new(store.clone(), policy.clone(), cfg.retention.clone());
    let retention_metrics = task.metrics().clone();
    let retention = (
        retention_metrics.clone(),
        // Under the name the sinks' leases use: one per instance.
        tokio::spawn(task.run(cfg.mqtt.client_id.clone(), stop_rx.clone())),
    );
    let mut registry = crate::metrics::registry(&counters, sinks.metrics());
    retention_metrics.register(&mut registry);
    store.register_metrics(&mut registry);
    let registry = Arc::new(registry);
    let state = ApiState {
        store,
        token: cfg.http.token.clone(),
        finality: cfg.finality.rule(),
        max_points: cfg.http.max_points,
        rollups_ms: cfg.rollups_ms.clone(),
        retention: policy,
    };
    let dashboard = dashboard::router(
        state.clone(),
        DashboardOptions {
            widths_ms: cfg.rollups_ms.clone(),
        },
    );
    let app = api::router(state)
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            tributary_runtime::metrics::CONTENT_TYPE,
                        )],
                        tributary_runtime::metrics::render(&registry),
                    )
                }
            }),
        )
        .merge(dashboard)
        .merge(health);
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: cfg.http.listen.clone(),
            source,
        })?;
    let http_addr = listener.local_addr().map_err(ServiceError::Http)?;
    let mut http_stop = stop_rx;
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
            .map_err(ServiceError::Http)
    });
    tracing::info!(listen = %http_addr, "collector running");
    Ok(Running {
        http_addr,
        counters,
        stop,
        ingest,
        http,
        retention,
        sinks,
    })
}
