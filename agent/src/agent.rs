//! Starting and stopping an agent: the engine thread, the uplink, the HTTP
//! server and the sources, with an orderly shutdown (stop the sources and
//! the uplink, then let the engine commit what is pending and exit).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::engine::{Cmd, Engine};
use crate::metrics::{Counters, Metrics};
use crate::sources::simulated;
use crate::store::StoreError;
use crate::uplink::{Uplink, UplinkError};
use tributary_sim::SimDevice;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store failed (at start or during a commit).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The uplink could not be configured.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The HTTP listener could not bind.
    #[error("http.listen {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The engine thread could not be started or ended abnormally.
    #[error("engine thread: {0}")]
    Engine(String),
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    metrics: Arc<Metrics>,
    engine: mpsc::Sender<Cmd>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    engine_done: oneshot::Receiver<Result<(), StoreError>>,
    sims: Vec<JoinHandle<()>>,
}

/// The agent.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// Opens the store, restores state and starts every configured part.
    pub async fn start(config: Config) -> Result<AgentHandle, AgentError> {
        let metrics = Arc::new(Metrics::default());
        let wake = Arc::new(Notify::new());
        let engine = Engine::open(config.clone(), metrics.clone(), wake.clone())?;
        let (tx, rx) = mpsc::channel::<Cmd>(1024);
        let (done_tx, engine_done) = oneshot::channel();
        std::thread::Builder::new()
            .name("tributary-engine".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                let r = match rt {
                    Ok(rt) => rt.block_on(engine.run(rx)),
                    Err(e) => Err(StoreError::Dir(e)),
                };
                if let Err(e) = &r {
                    tracing::error!(error = %e, "engine stopped");
                }
                let _ = done_tx.send(r);
            })
            .map_err(|e| AgentError::Engine(e.to_string()))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if !config.http.listen.is_empty() {
            let listener = tokio::net::TcpListener::bind(&config.http.listen)
                .await
                .map_err(|source| AgentError::Http {
                    addr: config.http.listen.clone(),
                    source,
                })?;
            let app = crate::http::router(metrics.clone());
            let mut stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                });
                if let Err(e) = serve.await {
                    tracing::warn!(error = %e, "http server stopped");
                }
            }));
        }
        if config.uplink.enabled {
            let up = Uplink::new(config.clone(), tx.clone(), wake.clone(), metrics.clone());
            crate::uplink::options(&config)?; // report TLS/CA errors at start
            let stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = up.run(stop).await {
                    tracing::error!(error = %e, "uplink stopped");
                }
            }));
        }
        if config.local_mqtt.enabled {
            tasks.push(tokio::spawn(crate::sources::mqtt::run(
                config.clone(),
                tx.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            )));
        }
        for port in &config.serial {
            tasks.push(tokio::spawn(crate::sources::serial::run(
                port.clone(),
                tx.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut sims = Vec::new();
        for dev in SimDevice::all(&config.simulated) {
            sims.push(tokio::spawn(simulated::run_device(
                dev,
                config.simulated.frame_rate,
                config.simulated.max_unacked,
                tx.clone(),
                shutdown_rx.clone(),
            )));
        }
        tracing::info!(agent = config.agent_id, "agent started");
        Ok(AgentHandle {
            metrics,
            engine: tx,
            shutdown,
            tasks,
            engine_done,
            sims,
        })
    }
}

impl AgentHandle {
    /// The live metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A snapshot of the main counters.
    pub fn counters(&self) -> Counters {
        self.metrics.counters()
    }

    /// A sender for in-process input (benchmarks, embedding).
    pub fn engine(&self) -> mpsc::Sender<Cmd> {
        self.engine.clone()
    }

    /// Whether every simulated device has finished its planned run.
    pub fn simulations_finished(&self) -> bool {
        self.sims.iter().all(|t| t.is_finished())
    }

    /// Commits everything pending now.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.engine.send(Cmd::Sync(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves if the engine stops by itself (a store failure).
    pub async fn failed(&mut self) -> Result<(), AgentError> {
        match (&mut self.engine_done).await {
            Ok(r) => r.map_err(AgentError::Store),
            Err(_) => Err(AgentError::Engine("engine thread vanished".into())),
        }
    }

    /// Stops the sources and uplink, commits what is pending and waits.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        let _ = self.shutdown.send(true);
        for t in self.sims.into_iter().chain(self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        drop(self.engine);
        match tokio::time::timeout(Duration::from_secs(30), self.engine_done).await {
            Ok(Ok(r)) => r.map_err(AgentError::Store),
            Ok(Err(_)) => Err(AgentError::Engine("engine thread vanished".into())),
            Err(_) => Err(AgentError::Engine("engine did not stop in 30 s".into())),
        }
    }
}

/// Runs an agent until `shutdown` resolves (or the store fails), then stops cleanly.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let mut handle = Agent::start(config).await?;
    tokio::select! {
        _ = shutdown => {}
        r = handle.failed() => return r,
    }
    tracing::info!("shutting down: committing pending state");
    handle.shutdown().await
}
