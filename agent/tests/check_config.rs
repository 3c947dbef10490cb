//! `tributary-agent --check-config` on outbox limits (issue #12): a limit
//! too small to hold one floor window of the configured (simulated) series
//! is refused with the figure and the key; one too small for what
//! `limits.max_series` allows is valid, with a warning giving the figures.

#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Runs `--check-config` on `toml`: (success, stdout, stderr).
fn check(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tributary-agent"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_or_warns_about_a_small_outbox() {
    let (ok, _, err) = check(
        "agent_id = \"gw\"\n[window]\nwidth_ms = 10000\n[outbox]\nmax_bytes = 8000\n\
         [simulated]\ndevices = 14\ndevice_window_ms = 5000\n",
    );
    assert!(!ok, "refused: {err}");
    assert!(err.contains("outbox.max_bytes"), "{err}");
    assert!(
        err.contains("42 simulated series needs about 32256 bytes"),
        "{err}"
    );
    assert!(err.contains("at least 43008"), "{err}");

    let (ok, out, err) = check(
        "agent_id = \"gw\"\n[window]\nwidth_ms = 10000\n[outbox]\nmax_bytes = 100000\n\
         [local_mqtt]\nenabled = true\n",
    );
    assert!(ok, "valid: {err}");
    assert!(out.contains("is valid"), "{out}");
    assert!(
        err.contains("warning: outbox.max_bytes = 100000 leaves 75000 bytes"),
        "{err}"
    );
    assert!(err.contains("limits.max_series"), "{err}");
}
