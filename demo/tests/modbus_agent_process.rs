//! The agent as a process — the host build, or cross-built ARM binaries
//! under qemu-user — starts from a config file, polls a `pymodbus` TCP
//! device and forwards exact partials to the collector on the host: every
//! stored window holds exactly the consecutive values the simulator served
//! (see `modbus_e2e`). `scripts/cross.sh` sets `TRIBUTARY_AGENT_BIN` and
//! `TRIBUTARY_AGENT_RUNNER` to `;`-separated lists paired by position (e.g.
//! the aarch64 and armv7 binaries, `qemu-aarch64 -L /usr/aarch64-linux-gnu`
//! and `qemu-arm -L /usr/arm-linux-gnueabihf`): the agents run side by
//! side, each with its own device, against one broker and collector, so
//! the targets share one test run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod modbus;

use std::path::{Path, PathBuf};
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

/// The agents to run: (binary, runner command) pairs.
fn agents() -> Vec<(PathBuf, Vec<String>)> {
    let Some(bins) = std::env::var_os("TRIBUTARY_AGENT_BIN") else {
        return vec![(workspace_bin("tributary-agent").unwrap(), Vec::new())];
    };
    let bins = bins.into_string().unwrap();
    let runners = std::env::var("TRIBUTARY_AGENT_RUNNER").unwrap_or_default();
    let mut runners = runners.split(';');
    bins.split(';')
        .map(|b| {
            let runner = runners.next().unwrap_or("");
            (
                PathBuf::from(b),
                runner.split_whitespace().map(String::from).collect(),
            )
        })
        .collect()
}

/// Starts the agent `bin` (under `runner`) for the device on `port`,
/// named `device`; its log is `dir/agent.log`.
fn start_agent(
    bin: &Path,
    runner: &[String],
    dir: &Path,
    device: &str,
    port: u16,
    mqtt: u16,
) -> Process {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "agent_id = \"gw-{device}\"\ndata_dir = {data:?}\n\
             [window]\nwidth_ms = {WIDTH}\nallowed_lateness_ms = 0\n\
             [uplink]\nport = {mqtt}\n[http]\nlisten = \"\"\n\
             [[modbus]]\nname = \"{device}\"\ntcp = \"127.0.0.1:{port}\"\ninterval_ms = 100\n\
             timeout_ms = {TIMEOUT_MS}\n{regs}",
            data = dir.join("data").display().to_string(),
            regs = registers(),
        ),
    )
    .unwrap();
    let mut cmd = match runner.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    Process(
        cmd.arg("--config")
            .arg(&config)
            // The agent would read these as config overrides.
            .env_remove("TRIBUTARY_AGENT_BIN")
            .env_remove("TRIBUTARY_AGENT_RUNNER")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_forwards_a_modbus_device_exactly() {
    let collector = Collector::start();
    let agents = agents();
    let mut running = Vec::new();
    for (i, (bin, runner)) in agents.iter().enumerate() {
        let port = free_port();
        let sim = ModbusSim::tcp(&spec(3 + i as u32), port).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let device = format!("plc-{i}");
        let agent = start_agent(
            bin,
            runner,
            dir.path(),
            &device,
            port,
            collector.broker.port(),
        );
        running.push((device, sim, dir, agent));
    }
    // Under qemu-user the agent starts and runs slower: a longer wait.
    let want = 20;
    let devices: Vec<&str> = running.iter().map(|r| r.0.as_str()).collect();
    let got = collector
        .wait_for(&devices, want, Duration::from_secs(120))
        .await;
    for ((device, sim, dir, _), (bin, _)) in running.iter().zip(&agents) {
        if !got.contains_key(&(modbus::POINTS[0].0.to_string(), device.clone())) {
            panic!(
                "nothing stored from {}; its log:\n{}",
                bin.display(),
                std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
            );
        }
        judge_device(&got, device, &sim.served().unwrap(), want);
    }
    collector.stop().await;
}
