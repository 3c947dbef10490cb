//! Scale-out end to end, with real programs: three `tributary-collector run`
//! processes on one PostgreSQL behind a mosquitto shared subscription (MQTT
//! 5, `$share/collectors/…`), and one SQLite collector (MQTT 3.1.1) on a
//! second mosquitto, receive the same seeded
//! workload (6 agents, 1,200 series) published as the agents publish it —
//! each batch on its agent's topic, resent until that side confirms it.
//! One PostgreSQL instance is killed with SIGKILL mid-run and restarted.
//! Both sides must end with identical results, statistic by statistic, from
//! the store and from every instance's query API, equal to the readings'
//! ground truth.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod store_common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use store_common::*;
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::postgres::{PostgresOptions, PostgresStore};
use tributary_collector::store::prelude::*;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Confirm, Encoding};
use tributary_core::topic;
use tributary_testkit::{
    free_port, Mosquitto, MosquittoOptions, Postgres, PostgresOptions as Server,
};

const BIN: &str = env!("CARGO_BIN_EXE_tributary-collector");

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The JSON body of a query, with the per-point `revision` removed (it
/// counts transactions, which differ between one and three instances).
fn query(port: u16, path: &str) -> Value {
    let resp = http_get(port, path).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    let mut v: Value = serde_json::from_str(body).unwrap();
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("revision");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// One PostgreSQL collector process.
struct Instance {
    config: PathBuf,
    log: PathBuf,
    http: u16,
    child: Option<Child>,
}

impl Instance {
    fn new(dir: &Path, i: usize, broker: u16, url: &str) -> Instance {
        let http = free_port();
        let config = dir.join(format!("collector-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[mqtt]\nprotocol = \"5\"\nport = {broker}\nclient_id = \"collector-{i}\"\nshare_group = \"collectors\"\nmax_group = 64\n[http]\nlisten = \"127.0.0.1:{http}\"\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\npool_size = 2\n",
                dir.join(format!("data-{i}"))
            ),
        )
        .unwrap();
        Instance {
            config,
            log: dir.join(format!("collector-{i}.log")),
            http,
            child: None,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(BIN)
                .args(["run", "--config"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        // Up, and in the shared subscription (else the broker would hand
        // its share to the others, or drop what nobody subscribed to yet).
        let start = Instant::now();
        while !http_get(self.http, "/metrics")
            .is_some_and(|m| m.contains("\ntributary_collector_mqtt_subscribed 1\n"))
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{} exited: {status}\n{}",
                    self.config.display(),
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "never came up and subscribed\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no shutdown, no final commit, no acks.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A publisher playing every agent on one broker: publishes batches on
/// their agents' topics and records the collector's confirmations.
struct Agents {
    client: AsyncClient,
    confirmed: Arc<Mutex<HashSet<(String, u64)>>>,
}

impl Agents {
    async fn connect(name: &str, port: u16) -> Agents {
        let mut o = MqttOptions::new(name, "127.0.0.1", port);
        o.set_max_packet_size(8 << 20, 8 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(o, 4096);
        client
            .subscribe("tributary/v1/agents/+/acks", QoS::AtLeastOnce)
            .await
            .unwrap();
        let confirmed = Arc::new(Mutex::new(HashSet::new()));
        let got = confirmed.clone();
        let (suback, subscribed) = tokio::sync::oneshot::channel();
        let mut suback = Some(suback);
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = suback.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let c = Confirm::decode(&p.payload).unwrap();
                        let mut g = got.lock().unwrap();
                        for s in c.seqs {
                            g.insert((c.agent.clone(), s));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("the test agents subscribe to their confirmations")
            .unwrap();
        Agents { client, confirmed }
    }

    async fn publish(&self, b: &Batch) {
        self.client
            .publish(
                topic::partials(&b.agent),
                QoS::AtLeastOnce,
                false,
                b.encode(Encoding::Json),
            )
            .await
            .unwrap();
    }

    fn confirmed(&self) -> usize {
        self.confirmed.lock().unwrap().len()
    }

    /// Resends what stays unconfirmed (as an agent's outbox does) until
    /// every batch is confirmed; bounded.
    async fn settle(&self, batches: &[Batch], side: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let wait = Instant::now() + Duration::from_secs(4);
            while self.confirmed() < batches.len() && Instant::now() < wait {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if self.confirmed() >= batches.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{side}: only {} of {} batches confirmed",
                self.confirmed(),
                batches.len()
            );
            let missing: Vec<&Batch> = {
                let c = self.confirmed.lock().unwrap();
                batches
                    .iter()
                    .filter(|b| !c.contains(&(b.agent.clone(), b.seq)))
                    .collect()
            };
            for b in missing {
                self.publish(b).await;
            }
        }
    }
}

async fn snapshot<S: Store>(store: &S) -> Vec<BTreeMap<(String, i64), tributary_core::Summary>> {
    let mut out = Vec::new();
    for w in [MIN, HOUR, DAY] {
        out.push(all_windows(store, w).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_postgres_instances_equal_one_sqlite_collector_through_a_kill() {
    // 6 agents × 30 batches × 60 partials over 1,200 devices and 20 minutes.
    let (batches, truth) = workload(4242, 6, 30, 60, 1200, 20);
    let series: BTreeSet<&String> = truth.keys().map(|(d, _)| d).collect();
    assert!(series.len() >= 1000, "{} series", series.len());
    let big_queues = MosquittoOptions {
        max_queued_messages: Some(100_000),
        ..MosquittoOptions::default()
    };
    let broker_pg = Mosquitto::start(big_queues.clone()).unwrap();
    let broker_lite = Mosquitto::start(big_queues).unwrap();
    let pg = Postgres::start(Server::default()).unwrap();
    let url = pg.create_database("scaleout").unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The SQLite collector, in process.
    let lite_cfg = Config::from_toml(&format!(
        "data_dir = {:?}\n[mqtt]\nport = {}\nclient_id = \"collector-lite\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("lite"),
        broker_lite.port()
    ))
    .unwrap();
    std::fs::create_dir_all(&lite_cfg.data_dir).unwrap();
    let lite = service::start(
        &lite_cfg,
        SqliteStore::open(&lite_cfg.db_path(), &lite_cfg.rollups_ms).unwrap(),
    )
    .await
    .unwrap();
    let lite_http = lite.http_addr().port();

    // Three PostgreSQL collectors, as processes.
    let mut instances: Vec<Instance> = (1..=3)
        .map(|i| Instance::new(dir.path(), i, broker_pg.port(), &url))
        .collect();
    for inst in &mut instances {
        inst.start();
    }
    let to_pg = Agents::connect("agents-pg", broker_pg.port()).await;
    let to_lite = Agents::connect("agents-lite", broker_lite.port()).await;
    let start = Instant::now();
    while lite.counters().subscribed.get() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lite never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Publish round-robin over agents; kill instance 2 after a third,
    // restart it after two thirds.
    let n = batches.len();
    let t_pub = Instant::now();
    let mut order: Vec<&Batch> = batches.iter().collect();
    order.sort_by_key(|b| (b.seq, b.agent.clone()));
    for (i, b) in order.iter().enumerate() {
        to_pg.publish(b).await;
        to_lite.publish(b).await;
        if i % 12 == 11 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        if i == n / 3 {
            instances[1].kill();
        }
        if i == 2 * n / 3 {
            instances[1].start();
        }
    }
    eprintln!("published in {:?}", t_pub.elapsed());
    let t = Instant::now();
    to_pg.settle(&batches, "postgres").await;
    eprintln!(
        "postgres side confirmed {n} batches {:?} after publishing",
        t.elapsed()
    );
    to_lite.settle(&batches, "sqlite").await;

    // Every instance took a share of the work.
    for inst in &instances {
        let m = http_get(inst.http, "/metrics").unwrap();
        let new: u64 = m
            .lines()
            .find(|l| l.starts_with("tributary_collector_batches_total{result=\"new\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(
            new > 0,
            "{} applied nothing\n{}",
            inst.config.display(),
            inst.logs()
        );
    }

    // The query API of every instance answers like the SQLite collector's.
    let paths = [
        format!(
            "/api/v1/query?metric=temperature&from={T0}&to={}&width={MIN}&stats=count,sum,min,max,mean,stddev,first,last,p50,p99",
            T0 + DAY
        ),
        format!(
            "/api/v1/query?metric=temperature&from={T0}&to={}&width={HOUR}&stats=count,sum,min,max,mean,stddev,p90&group_by=site",
            T0 + DAY
        ),
        format!(
            "/api/v1/query?metric=temperature&device=dev-0007&from={T0}&to={}&width={MIN}&step={}&stats=count,mean,p50",
            T0 + DAY,
            5 * MIN
        ),
    ];
    for path in &paths {
        let expected = query(lite_http, path);
        assert!(
            expected["results"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            "{path}"
        );
        for inst in &instances {
            assert!(
                query(inst.http, path) == expected,
                "{} differs from SQLite on {path}",
                inst.config.display()
            );
        }
    }
    for inst in &mut instances {
        inst.kill();
    }
    lite.stop().await.unwrap();

    // The stores hold the same results, and they are the ground truth.
    let lite = SqliteStore::open(&lite_cfg.db_path(), &lite_cfg.rollups_ms).unwrap();
    let shared = PostgresStore::open(&PostgresOptions::new(&url), &[HOUR, DAY])
        .await
        .unwrap();
    for width in [MIN, HOUR, DAY] {
        assert_judged(&lite, &truth, width).await;
    }
    let (lite_windows, pg_windows) = (snapshot(&lite).await, snapshot(&shared).await);
    assert!(
        lite_windows == pg_windows,
        "PostgreSQL results differ from SQLite's"
    );
    assert_eq!(lite.series().await.unwrap(), shared.series().await.unwrap());
    assert_eq!(
        lite.watermarks().await.unwrap(),
        shared.watermarks().await.unwrap()
    );
    // Every batch applied once, and nothing left to remember: each agent's
    // batches arrived without a gap, so its mark is past them all.
    let applied = pg
        .psql("scaleout", "SELECT sum(batches) FROM incarnations")
        .unwrap();
    assert_eq!(applied, n.to_string());
    let kept = pg.psql("scaleout", "SELECT count(*) FROM applied").unwrap();
    assert_eq!(kept, "0");
}
