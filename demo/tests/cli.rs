//! The README's main job, `tributary-demo`, as a first-time user runs it:
//! it ends exact (every window equal to the ground truth, nothing lost)
//! and logs no error or warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tributary_testkit::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_tributary-demo");

#[test]
fn the_demo_is_exact_and_logs_no_error() {
    let http = free_port();
    let out = Command::new(BIN)
        .args(["--agents", "2", "--devices", "4", "--windows", "12"])
        .args(["--duration", "1", "--json", "--listen"])
        .arg(format!("127.0.0.1:{http}"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(n("readings_produced") > 0, "{v}");
    assert_eq!(n("readings_merged"), n("readings_produced"), "{v}");
    assert_eq!(n("readings_lost"), 0, "{v}");
    assert!(n("windows_checked") > 0, "{v}");
    assert_eq!(n("windows_mismatched"), 0, "{v}");
    assert!(n("site_points_checked") > 0, "{v}");
    assert_eq!(n("site_points_mismatched"), 0, "{v}");
    // What a first-time user sees: progress, but no ERROR or WARN line
    // (the embedded broker logs ordinary disconnects as errors unless its
    // noisy modules are filtered out).
    for level in ["ERROR", "WARN"] {
        assert!(
            !stderr.lines().any(|l| l.contains(level)),
            "{level} logged by the demo:\n{stderr}"
        );
    }
}
