//! The documented multi-instance example (`config/multi-instance/`) works:
//! the three collector configs load and differ only where they must, and a
//! real mosquitto run with the example's broker config, passwords and ACLs
//! (addresses moved to 127.0.0.1, TLS left out) refuses anonymous and wrong
//! logins on both listeners and lets an agent publish only its own batches
//! and read only its own confirmations, while two real collector ingest
//! instances, configured by `collector-1.toml` and `collector-2.toml` (MQTT
//! 5, login, shared group), apply every legitimate batch exactly once and
//! confirm it to its agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tributary_collector::config::{Config, StoreKind};
use tributary_collector::ingest::{self, IngestCounters, Protocol, Refused};
use tributary_collector::store::sqlite::SqliteStore;
use tributary_core::batch::{Batch, Confirm, Encoding, Partial};
use tributary_core::{topic, Quantum, SeriesKey, Summary, Width, Window};
use tributary_testkit::free_port;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/multi-instance");

#[test]
fn the_three_collector_configs_share_store_and_group() {
    let configs: Vec<Config> = (1..=3)
        .map(|i| Config::load(&Path::new(DIR).join(format!("collector-{i}.toml"))).unwrap())
        .collect();
    for c in &configs {
        assert_eq!(c.store.kind, StoreKind::Postgres);
        assert_eq!(c.mqtt.share_group.as_deref(), Some("collectors"));
        assert_eq!(c.mqtt.protocol, Protocol::V5);
        assert_eq!(c.mqtt.username.as_deref(), Some("tributary-collector"));
        assert!(c.mqtt.password_file.is_some());
        assert_eq!(c.store.url, configs[0].store.url);
    }
    let ids: std::collections::BTreeSet<&str> =
        configs.iter().map(|c| c.mqtt.client_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "client ids must differ");
    let listens: std::collections::BTreeSet<&str> =
        configs.iter().map(|c| c.http.listen.as_str()).collect();
    assert_eq!(listens.len(), 3);
}

/// Messages a client received: (topic, payload).
type Inbox = mpsc::Receiver<(String, Vec<u8>)>;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects; returns the client and a channel of (topic, payload) received,
/// or `None` when the broker refuses the connection.
fn connect(id: &str, port: u16, login: Option<(&str, &str)>) -> Option<(Client, Inbox)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    if let Some((u, p)) = login {
        o.set_credentials(u, p);
    }
    let (client, mut conn) = Client::new(o, 64);
    let (tx, rx) = mpsc::channel();
    let (ok_tx, ok_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = ok_tx.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = ok_tx.send(false);
                    return;
                }
            }
        }
    });
    match ok_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(true) => Some((client, rx)),
        _ => None,
    }
}

fn drain(rx: &Inbox, wait: Duration) -> Vec<(String, Vec<u8>)> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
    }
    out
}

/// One collector ingest instance built from an example config, pointed at
/// the test broker, on its own SQLite store.
struct Instance {
    counters: Arc<IngestCounters>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn instance(n: u32, port: u16, password_file: &Path) -> Instance {
    let mut cfg = Config::load(&Path::new(DIR).join(format!("collector-{n}.toml"))).unwrap();
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = port;
    cfg.mqtt.password_file = Some(password_file.to_owned());
    let ingest = cfg.mqtt.ingest(&cfg.limits);
    assert_eq!(ingest.protocol, Protocol::V5);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &cfg.rollups_ms).unwrap();
    let counters = Arc::new(IngestCounters::default());
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(ingest::run(ingest, store, counters.clone(), rx));
    Instance {
        counters,
        stop,
        task,
        _dir: dir,
    }
}

fn batch(agent: &str, seq: u64) -> Vec<u8> {
    let mut s = Summary::new(Quantum::new(-2).unwrap());
    s.insert(1_700_000_000_000, 2150).unwrap();
    let partial = Partial {
        series: SeriesKey::new("temperature", "dev-1", Default::default()).unwrap(),
        window: Window::containing(1_700_000_000_000, Width::new(60_000).unwrap()),
        summary: s,
    };
    Batch::new(agent, seq, 1_700_000_000_000, vec![partial]).encode(Encoding::Json)
}

/// The sequences confirmed in the messages `rx` received within `wait`.
fn confirmations(rx: &Inbox, wait: Duration) -> Vec<(String, Vec<u64>)> {
    drain(rx, wait)
        .into_iter()
        .map(|(t, p)| match Confirm::decode(&p) {
            Ok(c) => (c.agent, c.seqs),
            Err(_) => (t, Vec::new()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_broker_enforces_logins_and_acls_and_shares_batches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (agents_port, collectors_port) = (free_port(), free_port());
    let conf = std::fs::read_to_string(Path::new(DIR).join("mosquitto.conf")).unwrap();
    let mut out = String::new();
    for line in conf.lines() {
        let line = match line.split_whitespace().next() {
            Some("certfile" | "keyfile" | "persistence_location") => continue,
            Some("persistence") => "persistence false".to_string(),
            Some("listener") if line.contains("8883") => {
                format!("listener {agents_port} 127.0.0.1")
            }
            Some("listener") => format!("listener {collectors_port} 127.0.0.1"),
            Some("password_file" | "acl_file") => {
                let (key, path) = line.split_once(' ').unwrap();
                let name = Path::new(path).file_name().unwrap();
                format!("{key} {}", d.join(name).display())
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    // As root, mosquitto drops to its own user: let it read the files.
    out.push_str("user root\n");
    std::fs::write(d.join("mosquitto.conf"), out).unwrap();
    for acl in ["agents.acl", "collectors.acl"] {
        std::fs::copy(Path::new(DIR).join(acl), d.join(acl)).unwrap();
    }
    let passwd = |file: &str, users: &[(&str, &str)]| {
        for (i, (user, pw)) in users.iter().enumerate() {
            let mut c = Command::new("mosquitto_passwd");
            c.arg("-b");
            if i == 0 {
                c.arg("-c");
            }
            assert!(c
                .arg(d.join(file))
                .args([user, pw])
                .status()
                .unwrap()
                .success());
        }
    };
    passwd("agents.passwd", &[("gw-1", "pw-1"), ("gw-2", "pw-2")]);
    passwd(
        "collectors.passwd",
        &[("tributary-collector", "collector-pw")],
    );
    let collector_pw = d.join("mqtt-password");
    std::fs::write(&collector_pw, "collector-pw\n").unwrap();
    let mosquitto = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let _broker = Broker(
        Command::new(mosquitto)
            .arg("-c")
            .arg(d.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", agents_port)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", collectors_port)).is_err()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "broker not up");
        std::thread::sleep(Duration::from_millis(20));
    }

    assert!(
        connect("intruder", agents_port, Some(("gw-1", "wrong"))).is_none(),
        "a wrong password is refused"
    );
    assert!(
        connect("anon", agents_port, None).is_none(),
        "agents must log in"
    );
    assert!(
        connect("anon-collector", collectors_port, None).is_none(),
        "collectors must log in"
    );
    assert!(
        connect(
            "agent-as-collector",
            collectors_port,
            Some(("gw-1", "pw-1"))
        )
        .is_none(),
        "agents' passwords are not valid on the collectors' listener"
    );

    let instances = [
        instance(1, collectors_port, &collector_pw),
        instance(2, collectors_port, &collector_pw),
    ];
    let start = Instant::now();
    while instances.iter().any(|i| i.counters.connected() == 0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "instances connect: {}",
            instances[0].counters.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (gw1, gw1_rx) = connect("gw-1", agents_port, Some(("gw-1", "pw-1"))).unwrap();
    let (gw2, gw2_rx) = connect("gw-2", agents_port, Some(("gw-2", "pw-2"))).unwrap();
    for (gw, own) in [(&gw1, "gw-1"), (&gw2, "gw-2")] {
        gw.subscribe(topic::acks(own), QoS::AtLeastOnce).unwrap();
    }
    gw1.subscribe(topic::acks("gw-2"), QoS::AtLeastOnce)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    const N: u64 = 20;
    for seq in 0..N {
        gw1.publish(
            topic::partials("gw-1"),
            QoS::AtLeastOnce,
            false,
            batch("gw-1", seq),
        )
        .unwrap();
        gw2.publish(
            topic::partials("gw-2"),
            QoS::AtLeastOnce,
            false,
            batch("gw-2", seq),
        )
        .unwrap();
    }
    // Forgeries: gw-1 publishing as gw-2 and confirming for gw-2.
    gw1.publish(
        topic::partials("gw-2"),
        QoS::AtLeastOnce,
        false,
        batch("gw-2", 99),
    )
    .unwrap();
    gw1.publish(
        topic::acks("gw-2"),
        QoS::AtLeastOnce,
        false,
        Confirm::new("gw-2", Default::default(), vec![98]).encode(),
    )
    .unwrap();

    let mut got: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.values().map(BTreeSet::len).sum::<usize>() < 2 * N as usize
        && Instant::now() < deadline
    {
        for (rx, own) in [(&gw1_rx, "gw-1"), (&gw2_rx, "gw-2")] {
            for (agent, seqs) in confirmations(rx, Duration::from_millis(100)) {
                assert_eq!(agent, own, "{own} reads only its own confirmations");
                got.entry(own).or_default().extend(seqs);
            }
        }
    }
    let all: BTreeSet<u64> = (0..N).collect();
    assert_eq!(got.get("gw-1"), Some(&all));
    assert_eq!(
        got.get("gw-2"),
        Some(&all),
        "gw-2 gets the collectors' confirmations, not the forged one (98) nor one for the forged batch (99)"
    );
    let news: Vec<u64> = instances
        .iter()
        .map(|i| i.counters.batches_new.get())
        .collect();
    assert_eq!(
        news.iter().sum::<u64>(),
        2 * N,
        "each batch applied once: {news:?}"
    );
    assert!(
        news.iter().all(|&n| n > 0),
        "both instances get a share: {news:?}"
    );
    for i in &instances {
        assert_eq!(
            i.counters.refused(Refused::AgentMismatch),
            0,
            "the forgery never arrives"
        );
        assert_eq!(i.counters.batches_duplicate.get(), 0);
    }
    for i in instances {
        i.stop.send(true).unwrap();
        i.task.await.unwrap();
    }
}
