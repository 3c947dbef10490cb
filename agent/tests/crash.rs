//! Crash test: under load, `kill -9` the real agent binary at random moments
//! (20 times), restart it each time; afterwards the partials received
//! upstream, merged per series and window, agree with the oracle's exact
//! statistics of the devices' raw readings (count, sums, min, max, first,
//! last, mean, variance, stddev exactly; quantiles in the true bucket).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tributary_testkit::{Mosquitto, MosquittoOptions};

#[test]
fn kill_9_twenty_times_loses_and_duplicates_nothing() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let collector = TestCollector::start(broker.port());
    let dir = tempfile::tempdir().unwrap();
    let sim = sim_config(4, 240, start_ms(5000), 40);
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        agent_toml(&dir.path().join("data"), broker.port(), &sim, ""),
    )
    .unwrap();
    let truth = truth(&sim, 5000);
    let expected: u64 = truth.values().map(|v| v.0).sum();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_tributary-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = fastrand::Rng::with_seed(0x7b1b);
    for _ in 0..20 {
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(rng.u64(150..900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let before_final = collector.readings();
    assert!(before_final < expected, "the kills must interrupt the run");
    let mut child = spawn();
    let got = collector.wait_for(expected, Duration::from_secs(90));
    // Give a duplicate (resend) a moment to show up if there were one.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(got, expected);
    assert_eq!(collector.readings(), expected, "nothing counted twice");
    assert_eq!(collector.totals(), truth);
    let verdict = collector.verdict(&sim, 5000);
    assert_eq!(verdict.checked, truth.len());
    assert!(verdict.ok(), "{:#?}", verdict.problems);
}
