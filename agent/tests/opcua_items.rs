//! OPC UA against an `asyncua` server: monitored items the server refuses
//! (the agent asks for a served variable and for a node the server does not
//! have: the refused item is counted as `item` in
//! `opcua_errors{device,reason}` and the other still reports); a session
//! secured with Basic256Sha256 and SignAndEncrypt — the server's only
//! endpoint — that takes in every value the server writes; and a session
//! that ends for good (the server restarts and refuses to recreate the
//! subscription), after which the agent's own new session takes in what
//! the new server writes.
//!
//! The judge is the servers' own log of what they wrote, with the exact
//! ticks computed in Python ([`tributary_testkit::opcua::windows`]): the
//! windows the test collector received must hold exactly its values —
//! count, Σticks, min and max per window — so a value lost, changed or
//! taken in twice fails.
#![cfg(feature = "opcua")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestCollector;
use tributary_agent::config::Config;
use tributary_agent::{Agent, Metrics};
use tributary_testkit::opcua::{windows, Totals, Windows};
use tributary_testkit::{free_port, Mosquitto, MosquittoOptions, OpcuaSim};

/// The agent's window width.
const WIDTH: i64 = 1000;

/// Waits (up to 60 s) until `done` holds of the agent's metrics.
async fn wait(m: &Metrics, what: &str, done: impl Fn(&Metrics) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(m) {
        assert!(Instant::now() < deadline, "{what}: {}", m.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes the spec `name` of a server with one Int32 variable `ns=2;s=Temp`
/// (metric `temp`): `rounds` values a run; the first `subscriptions`
/// CreateSubscription and `items` CreateMonitoredItems requests refused.
fn spec(dir: &Path, name: &str, seed: u32, rounds: u32, subscriptions: u32, items: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"{{"seed":{seed},"interval_ms":100,"rounds":{rounds},"refuse_subscriptions":{subscriptions},"refuse_items":{items},"items":[{{"node":"ns=2;s=Temp","metric":"temp","type":"Int32","scale":1.0,"offset":0.0,"quantum":0,"bad_every":0}}]}}"#
        ),
    )
    .unwrap();
    path
}

/// An agent `id` in `dir` with one `[[opcua]]` server `ua` at
/// 127.0.0.1:`port`: `server` holds the section's further keys, `items` the
/// (node id, metric) of its `[[opcua.items]]`; batches of 1 s windows go to
/// the broker on `mqtt` (`None`: the uplink is off).
fn config(
    dir: &Path,
    id: &str,
    mqtt: Option<u16>,
    port: u16,
    server: &str,
    items: &[(&str, &str)],
) -> Config {
    let uplink = match mqtt {
        Some(p) => format!(
            "[uplink]\nport = {p}\nconfirm_timeout_ms = 1500\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n"
        ),
        None => "[uplink]\nenabled = false\n".to_string(),
    };
    let items: String = items
        .iter()
        .map(|(node, metric)| {
            format!(
                "[[opcua.items]]\nnode_id = \"{node}\"\nmetric = \"{metric}\"\nsampling_interval_ms = 50\n"
            )
        })
        .collect();
    let toml = format!(
        "agent_id = \"{id}\"\ndata_dir = {data:?}\n\
         [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 0\nidle_close_ms = 1000\n\
         [store]\ncommit_interval_ms = 20\n{uplink}[http]\nlisten = \"\"\n\
         [[opcua]]\nname = \"ua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/\"\n\
         publishing_interval_ms = 100\n{server}\n{items}",
        data = dir.join("agent").display().to_string(),
    );
    Config::from_toml(&toml).unwrap()
}

/// The windows `collector` received, as metric → start → totals.
fn received(collector: &TestCollector) -> Windows {
    let mut out = Windows::new();
    for ((key, start), s) in collector.windows(WIDTH) {
        let x = s.extent().unwrap();
        out.entry(key.metric().to_string()).or_default().insert(
            start,
            Totals {
                count: s.count(),
                sum: s.sum_ticks(),
                min: i128::from(x.min),
                max: i128::from(x.max),
            },
        );
    }
    out
}

/// The windows `collector` received once they hold as many values as
/// `want` (or after a minute).
async fn wait_received(collector: &TestCollector, want: &Windows) -> Windows {
    let total = |w: &Windows| -> u64 { w.values().flat_map(|m| m.values()).map(|t| t.count).sum() };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = received(collector);
        if total(&got) >= total(want) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_monitored_item_is_counted_and_the_others_report() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("written.log");
    let port = free_port();
    let _sim =
        OpcuaSim::start(&spec(dir.path(), "spec.json", 1, 1, 0, 0), port, &log, None).unwrap();
    let cfg = config(
        dir.path(),
        "gw-opcua-items",
        None,
        port,
        "timeout_ms = 5000",
        &[("ns=2;s=Temp", "temp"), ("ns=2;s=Missing", "missing")],
    );
    let agent = Agent::start(cfg).await.unwrap();
    let m = agent.metrics();
    // The served variable's first value: the subscription (and its items'
    // results) came before it.
    wait(m, "a value", |m| m.opcua_values("ua").get() > 0).await;
    assert_eq!(m.opcua_error("ua", "item").get(), 1, "{}", m.render());
    for r in ["connect", "subscribe", "overflow"] {
        assert_eq!(m.opcua_error("ua", r).get(), 0, "{r}");
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_signed_and_encrypted_with_basic256sha256_takes_in_every_value() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("written.log");
    let port = free_port();
    let pki = dir.path().join("agent-pki");
    let mut sim = OpcuaSim::start_with(
        &spec(dir.path(), "spec.json", 3, 5, 0, 0),
        port,
        &log,
        None,
        Some(&dir.path().join("server-pki")),
    )
    .unwrap();
    let secure = format!(
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"sign_and_encrypt\"\n\
         pki_dir = {pki:?}\ntrust_server_certs = true\ntimeout_ms = 20000",
        pki = pki.display().to_string(),
    );
    let cfg = config(
        dir.path(),
        "gw-opcua-secure",
        Some(broker.port()),
        port,
        &secure,
        &[("ns=2;s=Temp", "temp")],
    );
    let agent = Agent::start(cfg).await.unwrap();
    let m = agent.metrics();
    // The server offers no other endpoint: a value means a secured session.
    wait(m, "the first value", |m| m.opcua_values("ua").get() == 1).await;
    sim.run().unwrap();
    let written = sim.served().unwrap();
    assert_eq!(written.len(), 6, "the first value and a run of five");
    let want = windows(&written, WIDTH);
    assert_eq!(
        wait_received(&collector, &want).await,
        want,
        "the windows received = the values written, window by window"
    );
    assert_eq!(m.opcua_values("ua").get(), 6, "none twice");
    for r in [
        "connect",
        "subscribe",
        "item",
        "connection_lost",
        "session_ended",
    ] {
        assert_eq!(m.opcua_error("ua", r).get(), 0, "{r}");
    }
    // The agent made its own key pair and kept the server's certificate as
    // trusted.
    let files = |sub: &str| {
        std::fs::read_dir(pki.join(sub))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        files("own") > 0 && files("private") > 0 && files("trusted") > 0,
        "{pki:?}"
    );
    agent.shutdown().await.unwrap();
}

/// What the server after the restart refuses before it serves as usual.
struct Refused {
    subscriptions: u32,
    items: u32,
}

/// A server restart that leaves the library's session of no more use: the
/// next server on the port accepts the session but refuses what
/// `refused` says. A first value and a run of five from each server must
/// arrive; returns the agent's metrics.
async fn session_ended_by_a_restart(refused: Refused) -> Arc<Metrics> {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("written.log");
    let port = free_port();
    let first = spec(dir.path(), "1.json", 5, 5, 0, 0);
    let mut sim = OpcuaSim::start(&first, port, &log, None).unwrap();
    let cfg = config(
        dir.path(),
        "gw-opcua-ended",
        Some(broker.port()),
        port,
        "timeout_ms = 5000",
        &[("ns=2;s=Temp", "temp")],
    );
    let agent = Agent::start(cfg).await.unwrap();
    let m = agent.metrics().clone();
    let values = |n: u64| move |m: &Metrics| m.opcua_values("ua").get() == n;
    wait(&m, "the first value", values(1)).await;
    sim.run().unwrap();
    wait(&m, "the first run", values(6)).await;

    // The server goes away; the library's session notices, and reconnects
    // to the next server on the port, where recreating the subscription
    // fails as `refused` says.
    drop(sim);
    wait(&m, "the loss noticed", |m| {
        m.opcua_error("ua", "connection_lost").get() >= 1
    })
    .await;
    let Refused {
        subscriptions,
        items,
    } = refused;
    let second = spec(dir.path(), "2.json", 6, 5, subscriptions, items);
    let mut sim = OpcuaSim::start(&second, port, &log, None).unwrap();
    wait(&m, "the new server's first value", values(7)).await;
    sim.run().unwrap();
    wait(&m, "the new server's run", values(12)).await;

    let written = sim.served().unwrap();
    assert_eq!(
        written.len(),
        12,
        "two servers: a first value and a run each"
    );
    let want = windows(&written, WIDTH);
    assert_eq!(
        wait_received(&collector, &want).await,
        want,
        "the windows received = the values both servers wrote"
    );
    assert_eq!(
        m.opcua_error("ua", "session_ended").get(),
        1,
        "{}",
        m.render()
    );
    for r in ["connect", "item", "repeat", "overflow"] {
        assert_eq!(m.opcua_error("ua", r).get(), 0, "{r}");
    }
    agent.shutdown().await.unwrap();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_subscription_is_lost_ends_and_a_new_one_takes_in_what_follows() {
    // The library's recreation is refused, so it drops the subscription;
    // the agent's own new session is refused once more (counted as
    // `subscribe`, then a longer pause), and the next is accepted.
    let m = session_ended_by_a_restart(Refused {
        subscriptions: 2,
        items: 0,
    })
    .await;
    assert_eq!(m.opcua_error("ua", "subscribe").get(), 1, "{}", m.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_items_are_lost_ends_and_a_new_one_takes_in_what_follows() {
    // The library recreates the subscription, but the server refuses its
    // items: a subscription that would report nothing. The agent ends the
    // session and its own new one subscribes the item afresh.
    let m = session_ended_by_a_restart(Refused {
        subscriptions: 0,
        items: 1,
    })
    .await;
    assert_eq!(m.opcua_error("ua", "subscribe").get(), 0, "{}", m.render());
    assert!(m.opcua_reconnects("ua").get() >= 1, "{}", m.render());
}
