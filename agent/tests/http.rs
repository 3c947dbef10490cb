//! `/metrics` and the health endpoints over a real socket: the Prometheus
//! text shows what in-process input did, by the names users scrape.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use tributary_agent::config::Config;
use tributary_agent::engine::Input;
use tributary_agent::Agent;
use tributary_core::{Quantum, SeriesKey};

/// The status line, the `Content-Type` and the body of `GET path`.
fn get(port: u16, path: &str) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default();
    let status = head.lines().next().unwrap_or_default();
    (status.into(), content_type.into(), body.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_show_what_the_agent_did() {
    let dir = tempfile::tempdir().unwrap();
    let port = tributary_testkit::free_port();
    let cfg = Config::from_toml(&format!(
        "agent_id = \"gw-http\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n[http]\nlisten = \"127.0.0.1:{port}\"\n[limits]\nmax_series = 1\n",
        dir.path().display().to_string()
    ))
    .unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let key = |m: &str| SeriesKey::new(m, "dev-1", BTreeMap::new()).unwrap();
    let now = tributary_runtime::now_ms();
    for (metric, n) in [("t", 3), ("u", 2)] {
        let input = Input::Readings {
            key: key(metric),
            quantum: Quantum::default(),
            points: (0..n).map(|i| (now - 60_000 + i, i)).collect(),
            done: None,
        };
        agent.engine().send(input).await.unwrap();
    }
    agent.sync().await;

    let (status, content_type, body) = tokio::task::spawn_blocking(move || get(port, "/metrics"))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    for line in [
        "tributary_agent_readings_accepted_total 3\n",
        "tributary_agent_rejected_total{reason=\"series_limit\"} 2\n",
        "tributary_agent_rejected_total{reason=\"bad_value\"} 0\n",
        "tributary_agent_series 1\n",
        "tributary_agent_store_ok 1\n",
        "tributary_agent_uplink_up 0\n",
        "# TYPE tributary_agent_commit_duration_seconds histogram\n",
        "tributary_agent_readings_dropped_total 0\n",
        "tributary_agent_store_failing{reason=\"disk_full\"} 0\n",
        "tributary_agent_store_errors_total{reason=\"disk_full\"} 0\n",
        "tributary_agent_inputs_unacknowledged 0\n",
        "tributary_agent_outbox_batch_bytes 0\n",
    ] {
        assert!(body.contains(line), "{line:?} in\n{body}");
    }
    assert!(body.ends_with("# EOF\n"), "{body}");

    let (status, content_type, body) = tokio::task::spawn_blocking(move || get(port, "/health"))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(content_type, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["store_ok"], true);
    assert_eq!(v["uplink_up"], false);
    assert_eq!(v["reason"], serde_json::Value::Null);

    // Live and ready (no uplink configured, so its state does not count).
    let (status, _, body) = tokio::task::spawn_blocking(move || get(port, "/health/live"))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "live"
    );
    let (status, _, body) = tokio::task::spawn_blocking(move || get(port, "/health/ready"))
        .await
        .unwrap();
    assert!(status.contains(" 200 "), "{status} {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["reasons"], serde_json::json!([]));
    agent.shutdown().await.unwrap();
}
