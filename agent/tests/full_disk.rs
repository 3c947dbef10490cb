//! A full disk (issue #12), with real parts: the agent binary keeps its
//! database on a small tmpfs, devices publish JSON readings to a local
//! mosquitto, batches go to another. The disk fills up: the agent must stay
//! up (also when killed and restarted on the full disk — no crash loop),
//! stop acknowledging input (the local broker holds it), say why on
//! `/health`, `/health/ready` and `/metrics`, and once space returns resume
//! by itself, every reading arriving exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod json_fleet;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http_get as get, metric, TestCollector};
use json_fleet::{assert_exact_where_they_landed, Fleet, Publisher};
use tributary_testkit::{free_port, Mosquitto, MosquittoOptions};

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs (the test runs as root)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem of `dir` with `filler` until it is full.
fn fill(filler: &Path) {
    let mut f = std::fs::File::create(filler).unwrap();
    let block = vec![0x5au8; 4096];
    loop {
        match f.write_all(&block).and_then(|()| f.flush()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
}

/// Waits (up to 60 s) until `f` holds, failing with `what` if it never does.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn agent_toml(data: &Path, uplink: u16, local: u16, http: u16) -> String {
    format!(
        "agent_id = \"gw-disk\"\ndata_dir = {:?}\n\
[window]\nwidth_ms = 10000\nidle_close_ms = 1500\n\
[uplink]\nport = {uplink}\nconfirm_timeout_ms = 2000\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n\
[local_mqtt]\nenabled = true\nport = {local}\n\
[http]\nlisten = \"127.0.0.1:{http}\"\n",
        data.display().to_string()
    )
}

struct Agent {
    config: PathBuf,
    child: Child,
}

impl Agent {
    fn spawn(config: &Path) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_tributary-agent"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent {
            config: config.to_owned(),
            child,
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `kill -9`, then start it again.
    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        *self = Agent::spawn(&self.config.clone());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_full_disk_holds_input_unacknowledged_and_the_agent_resumes_by_itself() {
    let tmpfs = Tmpfs::mount("6m");
    let mut uplink = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let local = Mosquitto::start(MosquittoOptions {
        max_inflight_messages: Some(20),
        max_queued_messages: Some(100_000),
        port: None,
    })
    .unwrap();
    let collector = TestCollector::start(uplink.port());
    let conf_dir = tempfile::tempdir().unwrap();
    let config = conf_dir.path().join("agent.toml");
    let http = free_port();
    let data = tmpfs.path().join("data");
    std::fs::write(
        &config,
        agent_toml(&data, uplink.port(), local.port(), http),
    )
    .unwrap();
    let mut agent = Agent::spawn(&config);
    wait_until("the agent subscribed to the local broker", || {
        metric(http, "tributary_agent_local_mqtt_subscribed") == Some(1.0)
    });

    // Devices publish ten seconds of input a second, 300 s in all.
    let fleet = Arc::new(Mutex::new(Fleet::new(
        4,
        common::start_ms(3_600_000),
        100,
        7,
    )));
    let publishing = {
        let fleet = fleet.clone();
        let port = local.port();
        std::thread::spawn(move || {
            let publisher = Publisher::start(port);
            for s in 0..300i64 {
                let messages = fleet.lock().unwrap().chunk(s * 1000, (s + 1) * 1000);
                for (topic, payload) in messages {
                    publisher.publish(&topic, payload);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Let the client hand over what it queued before it disconnects.
            std::thread::sleep(Duration::from_secs(1));
        })
    };
    wait_until("readings reached the collector", || {
        collector.readings() > 0
    });

    // The uplink goes down, so the outbox must grow; then the disk fills.
    uplink.stop();
    fill(&tmpfs.path().join("filler"));
    wait_until("/health/ready says the disk is full", || {
        get(http, "/health/ready")
            .is_some_and(|(code, body)| code == 503 && body.contains("database or disk is full"))
    });
    let (code, body) = get(http, "/health").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"status\":\"failing\""), "{body}");
    assert_eq!(
        metric(http, "tributary_agent_store_failing{reason=\"disk_full\"}"),
        Some(1.0)
    );
    assert_eq!(metric(http, "tributary_agent_store_ok"), Some(0.0));
    // Input is no longer acknowledged: what the local broker delivered
    // waits, and keeps waiting through further failed tries.
    wait_until("messages wait unacknowledged", || {
        metric(http, "tributary_agent_local_mqtt_unacked").is_some_and(|n| n > 0.0)
    });
    let held = metric(http, "tributary_agent_local_mqtt_unacked").unwrap();
    let errors = |port| {
        metric(
            port,
            "tributary_agent_store_errors_total{reason=\"disk_full\"}",
        )
    };
    let tried = errors(http).unwrap();
    wait_until("three more tries failed", || {
        errors(http).is_some_and(|n| n >= tried + 3.0)
    });
    let still = metric(http, "tributary_agent_local_mqtt_unacked").unwrap();
    assert!(still >= held, "nothing acknowledged: {held} then {still}");
    assert!(metric(http, "tributary_agent_inputs_unacknowledged").unwrap() > 0.0);
    assert!(agent.alive(), "the agent stays up");
    assert_eq!(get(http, "/health/live").map(|r| r.0), Some(200));

    // Killed and restarted on the full disk, it stays up too: no crash loop.
    agent.kill_and_restart();
    wait_until("the restarted agent fails to write and says so", || {
        errors(http).is_some_and(|n| n >= 2.0)
    });
    assert!(agent.alive(), "the restarted agent stays up");
    let (code, body) = get(http, "/health/ready").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("disk is full"), "{body}");

    // Space returns: it resumes by itself, and nothing is lost or doubled.
    std::fs::remove_file(tmpfs.path().join("filler")).unwrap();
    uplink.restart().unwrap();
    wait_until("/health/ready is ready again", || {
        get(http, "/health/ready").is_some_and(|(code, _)| code == 200)
    });
    assert!(agent.alive());
    publishing.join().unwrap();
    let readings = fleet.lock().unwrap().readings.clone();
    let expected = readings.len() as u64;
    wait_until("every reading arrived", || collector.readings() >= expected);
    // Once everything is confirmed nothing is published again.
    wait_until("the outbox is empty", || {
        metric(http, "tributary_agent_outbox_bytes") == Some(0.0)
    });
    assert_eq!(collector.readings(), expected, "nothing counted twice");
    assert_eq!(
        metric(http, "tributary_agent_readings_dropped_total"),
        Some(0.0)
    );
    assert_exact_where_they_landed(&collector.totals(), &readings);
}
