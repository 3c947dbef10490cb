//! `/health`, `/health/live` and `/health/ready` of a running collector
//! (issue #12): `/health` answered `ok` while ingest could not work. With
//! no broker to ingest from the collector is alive but not ready, and the
//! answer names the failing check; once a broker grants the subscription
//! it is ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use std::time::{Duration, Instant};

use serde_json::Value;
use tributary_collector::config::Config;
use tributary_collector::service;
use tributary_collector::store::sqlite::SqliteStore;
use tributary_testkit::{free_port, Mosquitto, MosquittoOptions};

use mqtt_common::harness::{get_json as get, metrics_text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_when_subscribed_and_alive_throughout() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("c.db"), &[3_600_000]).unwrap();
    let cfg = Config::from_toml(&format!(
        "[mqtt]\nport = {port}\nclient_id = \"collector-health\"\n[http]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .unwrap();
    let running = service::start(&cfg, store).await.unwrap();
    let http = running.http_addr();
    // No broker yet.
    for path in ["/health", "/health/live"] {
        let (status, body) = get(http, path).await;
        assert_eq!(
            (status, &body["status"]),
            (200, &Value::from("ok")),
            "{path}"
        );
    }
    let (status, body) = get(http, "/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["subscription"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["store"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["ingest_lag"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["ingest_lag"]["max_lag_ms"], 60_000, "{body}");
    // A broker on that port: ingest connects (its backoff is at most 10 s)
    // and the collector becomes ready.
    let _broker = Mosquitto::start(MosquittoOptions {
        port: Some(port),
        ..MosquittoOptions::default()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(http, "/health/ready").await;
        if status == 200 {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = metrics_text(http).await;
    for line in [
        "tributary_collector_store_writable 1",
        "tributary_collector_mqtt_subscribed 1",
        "tributary_collector_ingest_oldest_pending_timestamp_ms 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    running.stop().await.unwrap();
}
