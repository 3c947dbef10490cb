//! Starting and stopping an agent: the engine thread, the uplink, the HTTP
//! server and the sources, each built from its own config section, with an
//! orderly shutdown (stop the sources and the uplink, then let the engine
//! commit what is pending and exit).
//!
//! The start waits for the engine's first try to open the store. A store
//! that cannot be opened (a full disk, a corrupt file) does not stop the
//! start: the engine thread retries opening it, backing off to
//! [`OPEN_RETRY_MAX`], while `/health` and `/metrics` say why and the
//! sources wait (nothing is acknowledged before the engine runs). An agent
//! that exited at once instead would be restarted into the same failure by
//! its supervisor, again and again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tributary_runtime::tls::TlsError;

use crate::config::Config;
use crate::engine::{Engine, Input, Opened, Outbound, Parts};
use crate::metrics::{Counters, Metrics};
use crate::sources::mqtt::LocalMqtt;
use crate::sources::simulated;
use crate::store::StoreError;
use crate::uplink::{self, Uplink, UplinkError};
use tributary_sim::SimDevice;

/// The longest wait between two tries to open a store that cannot be opened.
pub const OPEN_RETRY_MAX: Duration = Duration::from_secs(5);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store still failed when the agent stopped.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The uplink could not be configured.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The local broker source could not be configured.
    #[error("local_mqtt: {0}")]
    LocalMqtt(TlsError),
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
    engine: mpsc::Sender<Input>,
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
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let metrics = Arc::new(Metrics::new());
        let confirm_timeout = Duration::from_millis(config.uplink.confirm_timeout_ms);
        metrics.health.configure(
            config.uplink.enabled,
            (confirm_timeout * 3).max(Duration::from_secs(30)),
        );
        let (tx, rx) = mpsc::channel::<Input>(1024);
        let (batches_tx, batches) = mpsc::unbounded_channel();
        let (connected, connected_rx) = watch::channel(false);
        // Set up before anything starts, so a bad CA file stops the start.
        let uplink = if config.uplink.enabled {
            let ch = uplink::Channels {
                batches,
                engine: tx.clone(),
                connected,
            };
            Some(Uplink::new(
                &config.agent_id,
                &config.uplink,
                ch,
                metrics.clone(),
            )?)
        } else {
            None // the engine then sees no connection and forms no batches
        };
        let local = if config.local_mqtt.enabled {
            let l = LocalMqtt::new(
                &config.agent_id,
                &config.local_mqtt,
                config.limits.max_payload_bytes,
                tx.clone(),
                metrics.clone(),
            );
            Some(l.map_err(AgentError::LocalMqtt)?)
        } else {
            None
        };
        let outbound = Outbound::new(
            &config.agent_id,
            config.uplink.encoding,
            config.uplink.max_in_flight,
            batches_tx,
            connected_rx,
        );
        let (engine_done, first_try) = start_engine(config.clone(), outbound, metrics.clone(), rx)?;
        // Opened (state restored) or failed once, and retrying.
        let _ = first_try.await;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        if !config.http.listen.is_empty() {
            tasks
                .push(serve_http(&config.http.listen, metrics.clone(), shutdown_rx.clone()).await?);
        }
        if let Some(up) = uplink {
            tasks.push(tokio::spawn(up.run(shutdown_rx.clone())));
        }
        if let Some(local) = local {
            tasks.push(tokio::spawn(local.run(shutdown_rx.clone())));
        }
        let (serial, sims) = spawn_devices(&config, &tx, &metrics, &shutdown_rx);
        tasks.extend(serial);
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

/// Starts a task per serial port, Modbus device, OPC UA server and simulated
/// device; returns the ports', Modbus devices' and OPC UA servers' tasks,
/// and the simulated devices'.
fn spawn_devices(
    config: &Config,
    tx: &mpsc::Sender<Input>,
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
    let serial = config
        .serial
        .iter()
        .map(|port| {
            tokio::spawn(crate::sources::serial::run(
                port.clone(),
                tx.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))
        })
        .chain(config.modbus.iter().map(|dev| {
            tokio::spawn(crate::sources::modbus::run(
                dev.clone(),
                tx.clone(),
                metrics.clone(),
                shutdown.clone(),
            ))
        }))
        .chain(opcua(config, tx, metrics, shutdown))
        .collect();
    let sim = &config.simulated;
    let sims = SimDevice::all(sim)
        .into_iter()
        .map(|dev| {
            tokio::spawn(simulated::run_device(
                dev,
                sim.frame_rate,
                sim.max_unacked,
                tx.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    (serial, sims)
}

/// A task per `[[opcua]]` server (none without the `opcua` feature, whose
/// config check refuses the section).
fn opcua(
    config: &Config,
    tx: &mpsc::Sender<Input>,
    metrics: &Arc<Metrics>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    #[cfg(feature = "opcua")]
    {
        config
            .opcua
            .iter()
            .map(|server| {
                let (server, dir) = (server.clone(), config.data_dir.clone());
                let (tx, metrics, shutdown) = (tx.clone(), metrics.clone(), shutdown.clone());
                tokio::spawn(async move {
                    crate::sources::opcua::run(server, &dir, tx, metrics, shutdown).await;
                })
            })
            .collect()
    }
    #[cfg(not(feature = "opcua"))]
    {
        let _ = (config, tx, metrics, shutdown);
        Vec::new()
    }
}

/// What the engine thread reports: when it stopped (and why), and when its
/// first try to open the store is over.
type EngineEnds = (
    oneshot::Receiver<Result<(), StoreError>>,
    oneshot::Receiver<()>,
);

/// Runs the engine on a thread of its own: opens the store (retrying until
/// it opens, or every input sender is gone), then runs it.
fn start_engine(
    config: Config,
    outbound: Outbound,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Input>,
) -> Result<EngineEnds, AgentError> {
    let (done_tx, done) = oneshot::channel();
    let (first_tx, first_try) = oneshot::channel();
    std::thread::Builder::new()
        .name("tributary-engine".into())
        .spawn(move || {
            let mut first = Some(first_tx);
            let r = open_store(&config, &metrics, &rx, &mut first).and_then(|opened| {
                let engine = Engine::open(Parts {
                    opened,
                    window: &config.window,
                    commit: &config.store,
                    limits: &config.limits,
                    tags: config.global_tags(),
                    outbound,
                    metrics,
                });
                if let Some(t) = first.take() {
                    let _ = t.send(());
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .map_err(StoreError::Dir)?;
                rt.block_on(engine.run(rx))
            });
            if let Err(e) = &r {
                tracing::error!(error = %e, "engine stopped");
            }
            let _ = done_tx.send(r);
        })
        .map_err(|e| AgentError::Engine(e.to_string()))?;
    Ok((done, first_try))
}

/// Opens the store and reads it back, trying again (backing off to
/// [`OPEN_RETRY_MAX`]) while it fails, saying why on `/health` and
/// `/metrics`; gives up only when every input sender is gone (shutdown).
/// `first` fires after a first try that failed.
fn open_store(
    config: &Config,
    metrics: &Metrics,
    rx: &mpsc::Receiver<Input>,
    first: &mut Option<oneshot::Sender<()>>,
) -> Result<Opened, StoreError> {
    let path = config.db_path();
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        let e = match Opened::open(&path, &config.store, &config.outbox) {
            Ok(opened) => {
                if failures > 0 {
                    tracing::info!(failures, path = %path.display(), "the store opened");
                }
                tracing::info!(incarnation = %opened.incarnation(), "store open");
                return Ok(opened);
            }
            Err(e) => e,
        };
        metrics.store_failed(e.fault(), format!("cannot open {}: {e}", path.display()));
        if failures == 0 {
            tracing::error!(error = %e, path = %path.display(),
                "cannot open the store; retrying until it opens (nothing is acknowledged meanwhile)");
            if let Some(t) = first.take() {
                let _ = t.send(());
            }
        }
        failures += 1;
        let until = std::time::Instant::now() + backoff;
        while std::time::Instant::now() < until {
            if rx.is_closed() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        backoff = (backoff * 2).min(OPEN_RETRY_MAX);
    }
}

/// Binds `/metrics` and `/health` on `listen` and serves them until shutdown.
async fn serve_http(
    listen: &str,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, AgentError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::Http {
            addr: listen.to_string(),
            source,
        })?;
    let app = crate::http::router(metrics);
    Ok(tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.changed().await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "http server stopped");
        }
    }))
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

    /// A sender for in-process input (benchmarks, embedding): usually
    /// [`Input::Readings`].
    pub fn engine(&self) -> mpsc::Sender<Input> {
        self.engine.clone()
    }

    /// Whether every simulated device has finished its planned run.
    pub fn simulations_finished(&self) -> bool {
        self.sims.iter().all(|t| t.is_finished())
    }

    /// Commits everything pending now.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.engine.send(Input::Sync(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves if the engine stops by itself (its thread ended abnormally;
    /// a failing store does not stop it).
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
