//! OPC UA against an `asyncua` server: monitored items the server refuses
//! (the agent asks for a served variable and for a node the server does not
//! have: the refused item is counted as `item` in
//! `opcua_errors{device,reason}` and the other still reports), and a
//! session secured with Basic256Sha256 and SignAndEncrypt — the server's
//! only endpoint — that takes in every value the server writes.
#![cfg(feature = "opcua")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tributary_agent::config::Config;
use tributary_agent::{Agent, Metrics};
use tributary_testkit::{free_port, OpcuaSim};

/// Waits (up to 60 s) until `done` holds of the agent's metrics.
async fn wait(m: &Metrics, what: &str, done: impl Fn(&Metrics) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(m) {
        assert!(Instant::now() < deadline, "{what}: {}", m.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_monitored_item_is_counted_and_the_others_report() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, log) = (dir.path().join("spec.json"), dir.path().join("written.log"));
    std::fs::write(
        &spec,
        r#"{"seed":1,"interval_ms":100,"rounds":1,"items":[{"node":"ns=2;s=Temp","metric":"temp","type":"Int32","scale":1.0,"offset":0.0,"quantum":0,"bad_every":0}]}"#,
    )
    .unwrap();
    let port = free_port();
    let _sim = OpcuaSim::start(&spec, port, &log, None).unwrap();
    let toml = format!(
        "agent_id = \"gw-opcua-items\"\ndata_dir = {data:?}\n\
         [uplink]\nenabled = false\n[http]\nlisten = \"\"\n\
         [[opcua]]\nname = \"ua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/\"\n\
         publishing_interval_ms = 100\ntimeout_ms = 5000\n\
         [[opcua.items]]\nnode_id = \"ns=2;s=Temp\"\nmetric = \"temp\"\n\
         [[opcua.items]]\nnode_id = \"ns=2;s=Missing\"\nmetric = \"missing\"\n",
        data = dir.path().join("agent").display().to_string(),
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let (spec, log) = (dir.path().join("spec.json"), dir.path().join("written.log"));
    std::fs::write(
        &spec,
        r#"{"seed":3,"interval_ms":100,"rounds":5,"items":[{"node":"ns=2;s=Temp","metric":"temp","type":"Int32","scale":1.0,"offset":0.0,"quantum":0,"bad_every":0}]}"#,
    )
    .unwrap();
    let port = free_port();
    let pki = dir.path().join("agent-pki");
    let mut sim = OpcuaSim::start_with(
        &spec,
        port,
        &log,
        None,
        Some(&dir.path().join("server-pki")),
    )
    .unwrap();
    let toml = format!(
        "agent_id = \"gw-opcua-secure\"\ndata_dir = {data:?}\n\
         [uplink]\nenabled = false\n[http]\nlisten = \"\"\n\
         [[opcua]]\nname = \"ua\"\nendpoint = \"opc.tcp://127.0.0.1:{port}/\"\n\
         security_policy = \"Basic256Sha256\"\nsecurity_mode = \"sign_and_encrypt\"\n\
         pki_dir = {pki:?}\ntrust_server_certs = true\n\
         publishing_interval_ms = 100\ntimeout_ms = 20000\n\
         [[opcua.items]]\nnode_id = \"ns=2;s=Temp\"\nmetric = \"temp\"\nsampling_interval_ms = 50\n",
        data = dir.path().join("agent").display().to_string(),
        pki = pki.display().to_string(),
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    let m = agent.metrics();
    // The server offers no other endpoint: a value means a secured session.
    wait(m, "the first value", |m| m.opcua_values("ua").get() == 1).await;
    sim.run().unwrap();
    let written = sim.served().unwrap().len() as u64;
    assert_eq!(written, 6, "the first value and a run of five");
    wait(m, "every value", |m| m.opcua_values("ua").get() >= written).await;
    assert_eq!(m.opcua_values("ua").get(), written, "none twice");
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
