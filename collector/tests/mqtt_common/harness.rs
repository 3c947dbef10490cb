//! The ingest tests' parts: one ingest task on its own SQLite store, a
//! test client playing an agent (publishes batches, collects the
//! confirmations sent to it), the wall clock, and a JSON `GET` on a
//! running collector.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tributary_collector::ingest::{self, IngestConfig, IngestCounters};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::Confirm;
use tributary_core::{topic, Summary, Width};

/// One ingest task on its own SQLite store.
pub(crate) struct Collector {
    pub(crate) store: SqliteStore,
    pub(crate) counters: Arc<IngestCounters>,
    stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Collector {
    pub(crate) fn start(cfg: IngestConfig) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
        let mut c = Collector::with_store(cfg, store);
        c._dir = Some(dir);
        c
    }

    /// Ingest over `store` (with its own counters).
    pub(crate) fn with_store(cfg: IngestConfig, store: SqliteStore) -> Collector {
        let counters = Arc::new(IngestCounters::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ingest::run(cfg, store.clone(), counters.clone(), stop_rx));
        Collector {
            store,
            counters,
            stop,
            task,
            _dir: None,
        }
    }

    /// The stored 60 s windows of the one test series (empty if none).
    pub(crate) async fn windows(&self) -> Vec<Summary> {
        let series = self.store.series().await.unwrap();
        assert!(series.len() <= 1);
        let minute = Width::new(60_000).unwrap();
        let rows = self
            .store
            .windows_of(&series, minute, i64::MIN, i64::MAX)
            .await
            .unwrap();
        rows.into_iter().flatten().map(|w| w.summary).collect()
    }

    pub(crate) async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("ingest stops promptly")
            .unwrap();
    }
}

/// A test client playing agent `agent`: publishes on its partials topic and
/// collects the sequences confirmed to it.
pub(crate) struct Agent {
    pub(crate) client: Client,
    partials: String,
    confirmed: Arc<Mutex<Vec<u64>>>,
    /// PUBACKs the broker sent for this client's batches.
    pub(crate) pubacks: Arc<AtomicU64>,
}

impl Agent {
    pub(crate) fn connect(agent: &str, port: u16, login: Option<(&str, &str)>) -> Agent {
        let confirmed = Arc::new(Mutex::new(Vec::<u64>::new()));
        let mut o = MqttOptions::new(format!("{agent}-test"), "127.0.0.1", port);
        o.set_max_packet_size(128 << 20, 128 << 20);
        if let Some((u, p)) = login {
            o.set_credentials(u, p);
        }
        let (client, mut conn) = Client::new(o, 1000);
        client
            .subscribe(topic::acks(agent), QoS::AtLeastOnce)
            .unwrap();
        let got = confirmed.clone();
        let name = agent.to_string();
        let (suback, subscribed) = std::sync::mpsc::channel();
        let pubacks = Arc::new(AtomicU64::new(0));
        let acked = pubacks.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = suback.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Relaxed);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let c = Confirm::decode(&p.payload).unwrap();
                        assert_eq!(c.agent, name);
                        got.lock().unwrap().extend(c.seqs);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("test agent {name}: connection ended: {e:?}");
                        break;
                    }
                }
            }
        });
        subscribed
            .recv_timeout(Duration::from_secs(10))
            .expect("the test agent subscribes to its confirmations");
        Agent {
            client,
            partials: topic::partials(agent),
            confirmed,
            pubacks,
        }
    }

    pub(crate) fn publish(&self, payload: Vec<u8>) {
        self.client
            .publish(&self.partials, QoS::AtLeastOnce, false, payload)
            .unwrap();
    }

    /// Waits (up to 20 s) until `n` confirmations arrived; returns them.
    pub(crate) async fn confirmed(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.confirmed.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.confirmed.lock().unwrap().clone()
    }
}

/// Waits (up to 10 s) until the collector is connected and subscribed.
pub(crate) async fn subscribed(c: &IngestCounters) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.subscribed.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.connected(), 1, "{}", c.render());
    assert_eq!(c.subscribed.get(), 1, "{}", c.render());
}

/// The wall clock (ms since the Unix epoch).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `GET path` on a collector's HTTP server: the status and the JSON body.
pub(crate) async fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    // reqwest is built without a TLS provider of its own (plain HTTP here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

/// The value of one sample line of `text` (Prometheus text format).
pub(crate) fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

/// A collector's `/metrics` text.
pub(crate) async fn metrics_text(addr: std::net::SocketAddr) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
