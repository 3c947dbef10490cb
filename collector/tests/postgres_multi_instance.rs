//! The documented multi-instance example (`config/multi-instance/`) works:
//! the three collector configs load and differ only where they must, and a
//! real mosquitto run with the example's broker config and ACLs (addresses
//! moved to 127.0.0.1, TLS left out) lets an agent publish only its own
//! batches and read only its own confirmations, while the collectors' shared
//! subscription receives every legitimate batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tributary_collector::config::{Config, StoreKind};
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

#[test]
fn the_example_broker_enforces_per_agent_acls_and_shares_batches() {
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
    let passwd = d.join("agents.passwd");
    for (i, (user, pw)) in [("gw-1", "pw-1"), ("gw-2", "pw-2")].iter().enumerate() {
        let mut c = Command::new("mosquitto_passwd");
        c.arg("-b");
        if i == 0 {
            c.arg("-c");
        }
        assert!(c.arg(&passwd).args([user, pw]).status().unwrap().success());
    }
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
    let (collector, from_agents) = connect("collector-1", collectors_port, None).unwrap();
    collector
        .subscribe(
            "$share/collectors/tributary/v1/agents/+/partials",
            QoS::AtLeastOnce,
        )
        .unwrap();
    let (gw1, gw1_rx) = connect("gw-1", agents_port, Some(("gw-1", "pw-1"))).unwrap();
    let (gw2, gw2_rx) = connect("gw-2", agents_port, Some(("gw-2", "pw-2"))).unwrap();
    gw1.subscribe("tributary/v1/agents/gw-2/acks", QoS::AtLeastOnce)
        .unwrap();
    gw2.subscribe("tributary/v1/agents/gw-2/acks", QoS::AtLeastOnce)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    gw1.publish(
        "tributary/v1/agents/gw-1/partials",
        QoS::AtLeastOnce,
        false,
        "own",
    )
    .unwrap();
    gw1.publish(
        "tributary/v1/agents/gw-2/partials",
        QoS::AtLeastOnce,
        false,
        "forged",
    )
    .unwrap();
    gw1.publish(
        "tributary/v1/agents/gw-2/acks",
        QoS::AtLeastOnce,
        false,
        "fake ack",
    )
    .unwrap();
    collector
        .publish(
            "tributary/v1/agents/gw-2/acks",
            QoS::AtLeastOnce,
            false,
            "ack",
        )
        .unwrap();

    let got = drain(&from_agents, Duration::from_secs(2));
    assert_eq!(
        got,
        [(
            "tributary/v1/agents/gw-1/partials".to_string(),
            b"own".to_vec()
        )],
        "the collectors get gw-1's own batch and not the forged one"
    );
    let acks: Vec<Vec<u8>> = drain(&gw2_rx, Duration::from_millis(500))
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(
        acks,
        [b"ack".to_vec()],
        "only the collector confirms to gw-2"
    );
    assert!(
        drain(&gw1_rx, Duration::from_millis(200)).is_empty(),
        "gw-1 cannot read gw-2's confirmations"
    );
}
