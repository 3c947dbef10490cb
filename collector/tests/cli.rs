//! The `tributary-collector run` binary against a real mosquitto: it comes
//! up serving `/health`, `/metrics` and the API, and exits cleanly (status 0)
//! on SIGINT; and a config with an unknown key is refused naming the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tributary_testkit::{free_port, Mosquitto, MosquittoOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tributary-collector");

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn runs_serves_and_stops_cleanly_on_sigint() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[mqtt]\nport = {}\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
            dir.path().join("data"),
            broker.port()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let health = loop {
        if let Some(r) = http_get(http, "/health") {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"ok\""), "{health}");
    let metrics = http_get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("tributary_collector_batches_total"),
        "{metrics}"
    );
    let bad = http_get(http, "/api/v1/query?metric=t").unwrap();
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(dir.path().join("data/collector.db").exists());

    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[mqtt]\nprot = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("prot"), "{err}");
}
