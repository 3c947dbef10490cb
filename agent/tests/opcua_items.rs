//! OPC UA monitored items the server refuses: an `asyncua` server serves
//! one variable; the agent asks for it and for a node the server does not
//! have. The refused item is counted as `item` in
//! `opcua_errors{device,reason}` and the other still reports.
#![cfg(feature = "opcua")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tributary_agent::config::Config;
use tributary_agent::Agent;
use tributary_testkit::{free_port, OpcuaSim};

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
    let deadline = Instant::now() + Duration::from_secs(30);
    while m.opcua_values("ua").get() == 0 {
        assert!(Instant::now() < deadline, "no value: {}", m.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(m.opcua_error("ua", "item").get(), 1, "{}", m.render());
    for r in ["connect", "subscribe", "overflow"] {
        assert_eq!(m.opcua_error("ua", r).get(), 0, "{r}");
    }
    agent.shutdown().await.unwrap();
}
