//! The agent as a process — the host build, or a cross-built ARM binary
//! under qemu-user (`scripts/cross.sh` sets `TRIBUTARY_AGENT_BIN` and
//! `TRIBUTARY_AGENT_RUNNER`, e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`)
//! — starts from a config file, polls a `pymodbus` TCP device and forwards
//! exact partials to the collector on the host: every stored window holds
//! exactly the consecutive values the simulator served (see `modbus_e2e`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod modbus;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modbus::{judge_device, registers, spec, Collector, TIMEOUT_MS, WIDTH};
use tributary_testkit::{free_port, workspace_bin, ModbusSim};

/// Kills the agent process on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_forwards_a_modbus_device_exactly() {
    let bin = match std::env::var_os("TRIBUTARY_AGENT_BIN") {
        Some(p) => p.into(),
        None => workspace_bin("tributary-agent").unwrap(),
    };
    let runner: Vec<String> = std::env::var("TRIBUTARY_AGENT_RUNNER")
        .map(|r| r.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let collector = Collector::start();
    let port = free_port();
    let sim = ModbusSim::tcp(&spec(3), port).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agent_id = \"gw-process\"\ndata_dir = {data:?}\n\
             [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 0\n\
             [uplink]\nport = {mqtt}\n[http]\nlisten = \"\"\n\
             [[modbus]]\nname = \"plc\"\ntcp = \"127.0.0.1:{port}\"\ninterval_ms = 100\n\
             timeout_ms = {TIMEOUT_MS}\n{regs}",
            data = dir.path().join("data").display().to_string(),
            mqtt = collector.broker.port(),
            regs = registers(),
        ),
    )
    .unwrap();
    let mut cmd = match runner.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    // Its log, shown if the test fails.
    let log = dir.path().join("agent.log");
    let _agent = Process(
        cmd.arg("--config")
            .arg(&config)
            // The agent would read these as config overrides.
            .env_remove("TRIBUTARY_AGENT_BIN")
            .env_remove("TRIBUTARY_AGENT_RUNNER")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Under qemu-user the agent starts and runs slower: a longer wait.
    let want = 20;
    let got = collector
        .wait_for(&["plc"], want, Duration::from_secs(120))
        .await;
    if !got.contains_key(&(modbus::POINTS[0].0.to_string(), "plc".to_string())) {
        panic!(
            "nothing stored; the agent's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    judge_device(&got, "plc", &sim.served().unwrap(), want);
    collector.stop().await;
}
