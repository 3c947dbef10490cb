//! A store that cannot be opened (issue #12): a corrupt database file does
//! not stop the agent. It starts, serves `/health/live`, says why it is not
//! ready on `/health/ready` and `/metrics`, acknowledges nothing, and once
//! the file is moved aside it opens a fresh store by itself and commits
//! what was held.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{http_get, metric};
use tokio::sync::oneshot;
use tributary_agent::config::Config;
use tributary_agent::engine::Input;
use tributary_agent::Agent;
use tributary_core::{Quantum, SeriesKey};
use tributary_testkit::free_port;

/// `GET path` off the runtime.
async fn get(port: u16, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || http_get(port, path).unwrap())
        .await
        .unwrap()
}

/// Waits (up to 30 s, off the runtime) until `f` holds.
async fn wait_until(what: &'static str, f: impl Fn() -> bool + Send + 'static) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_is_reported_and_the_agent_resumes_when_it_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("agent.db");
    std::fs::write(&db, vec![0x42u8; 64 * 1024]).unwrap();
    let http = free_port();
    let cfg = Config::from_toml(&format!(
        "agent_id = \"gw-faults\"\ndata_dir = {:?}\n[uplink]\nenabled = false\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n",
        dir.path().display().to_string()
    ))
    .unwrap();
    let agent = Agent::start(cfg).await.unwrap();

    let (code, body) = get(http, "/health/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not a database"), "{body}");
    assert!(body.contains("engine: not running yet"), "{body}");
    assert_eq!(get(http, "/health/live").await.0, 200);
    let (_, text) = get(http, "/metrics").await;
    assert!(
        text.contains("tributary_agent_store_failing{reason=\"corrupt\"} 1\n"),
        "{text}"
    );
    // Input waits: it is not acknowledged while there is no store.
    let (done, mut acked) = oneshot::channel();
    let key = SeriesKey::new("t", "dev-1", BTreeMap::new()).unwrap();
    agent
        .engine()
        .send(Input::Readings {
            key,
            quantum: Quantum::default(),
            points: vec![(tributary_runtime::now_ms(), 5)],
            done: Some(done),
        })
        .await
        .unwrap();
    wait_until("a second try to open failed", move || {
        metric(
            http,
            "tributary_agent_store_errors_total{reason=\"corrupt\"}",
        )
        .is_some_and(|n| n >= 2.0)
    })
    .await;
    assert!(acked.try_recv().is_err(), "not acknowledged");

    // The operator moves the file aside: the agent opens a new store.
    std::fs::rename(&db, dir.path().join("agent.db.corrupt")).unwrap();
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .unwrap()
        .unwrap();
    let (code, body) = get(http, "/health/ready").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(agent.counters().readings_accepted, 1);
    assert_eq!(agent.metrics().store_ok.get(), 1);
    agent.shutdown().await.unwrap();
}
