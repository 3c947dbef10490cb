//! # tributary-testkit
//!
//! Helpers shared by the agent's and the collector's integration tests.
//! Tests run the real programs, never mocks: [`Mosquitto`] starts a real
//! `mosquitto` broker on `127.0.0.1` with a free port and kills it on drop.
//!
//! ```no_run
//! use tributary_testkit::{Mosquitto, MosquittoOptions};
//! let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
//! println!("broker on 127.0.0.1:{}", broker.port());
//! ```
//!
//! ## API
//! - [`free_port`] — an unused TCP port on 127.0.0.1 (outside the ephemeral
//!   range, never the same twice in a process).
//! - [`MosquittoOptions`] — per-client queue limits (to make a lossy broker).
//! - [`Mosquitto`] — `start`, `port`, `stop`, `restart` (same port), killed on `Drop`.
//! - [`postgres::Postgres`] — a real PostgreSQL cluster in a temp dir on a
//!   free port (`start`, `url`, `create_database`, `psql`), stopped on `Drop`.
//! - [`modbus::ModbusSim`] — a Modbus device simulated by `pymodbus` (TCP
//!   or RTU) that logs every value it serves with its exact ticks; and
//!   [`modbus::PtyPair`], a `socat` pty pair as the serial line.
//! - [`opcua::OpcuaSim`] — an OPC UA server simulated by `asyncua` that
//!   writes on request and logs every value with its SourceTimestamp and
//!   exact ticks; [`opcua::windows`] groups the log into the totals each
//!   window must hold.
//! - [`Prometheus`], [`VictoriaMetrics`], [`InfluxDb`] — real metrics
//!   databases from the distribution in a temp dir on a free port, killed on
//!   `Drop` (`start`, `url`).
//! - [`workspace_bin`] — another workspace package's binary, built next to
//!   the running test (e.g. the collector's tests run real agent processes).

pub mod metricsdb;
pub mod modbus;
pub mod opcua;
pub mod postgres;
mod simlog;

pub use metricsdb::{InfluxDb, Prometheus, VictoriaMetrics};
pub use modbus::{ModbusSim, PtyPair, Served};
pub use opcua::{OpcuaSim, Written};
pub use postgres::{Postgres, PostgresOptions};

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// An unused TCP port on 127.0.0.1 for a server a test starts (bound, then
/// released, so the server can bind it).
///
/// Two things keep a port from being taken between this call and the
/// server's `bind`, which would leave the test talking to another test's
/// server (seen once in CI: two brokers on one port, and a second client
/// with the same client id took over the first one's session):
/// - the port comes from below the kernel's ephemeral range, which is where
///   `bind(0)` and every outgoing connection take their local ports;
/// - this process never hands out the same port twice (tests of one binary
///   run in parallel threads).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let (low, high) = (PORTS_FROM, ephemeral_start().max(PORTS_FROM + 1));
    let span = u64::from(high - low);
    let start = RandomState::new().build_hasher().finish() % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The lowest port [`free_port`] hands out.
const PORTS_FROM: u16 = 20_000;

/// The first port of the kernel's ephemeral range (Linux's default when
/// `/proc` does not tell), read once per process.
fn ephemeral_start() -> u16 {
    static START: OnceLock<u16> = OnceLock::new();
    *START.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768)
    })
}

/// The path of workspace binary `name` in the target directory the running
/// test was built into (`cargo test --workspace` builds every binary). An
/// error names the missing file and how to build it.
pub fn workspace_bin(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| io::Error::other("the test executable has no target directory"))?;
    let bin = profile_dir.join(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(io::Error::other(format!(
            "{} is missing: build it first (`cargo build -p {name}`, or run the whole workspace's tests)",
            bin.display()
        )))
    }
}

/// How to configure the test broker.
#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// `max_queued_messages`: QoS 1/2 messages queued per client beyond the
    /// in-flight ones; when full, mosquitto drops further messages for that
    /// client (after having PUBACKed them to the publisher). `None` keeps
    /// mosquitto's default (1000).
    pub max_queued_messages: Option<u32>,
    /// `max_inflight_messages` per client; `None` keeps the default (20).
    pub max_inflight_messages: Option<u32>,
    /// A fixed port instead of a free one.
    pub port: Option<u16>,
}

/// A running mosquitto broker, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    port: u16,
    config: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// The mosquitto binary: `/usr/sbin/mosquitto`, else `mosquitto` on `PATH`.
fn binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

impl Mosquitto {
    /// Writes a config to a temp dir, starts mosquitto on 127.0.0.1 and waits
    /// until the port accepts connections (up to 10 s).
    pub fn start(options: MosquittoOptions) -> io::Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        let port = options.port.unwrap_or_else(free_port);
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nmax_keepalive 120\n"
        );
        if let Some(n) = options.max_queued_messages {
            conf.push_str(&format!("max_queued_messages {n}\n"));
        }
        if let Some(n) = options.max_inflight_messages {
            conf.push_str(&format!("max_inflight_messages {n}\n"));
        }
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(&config, conf)?;
        let mut m = Mosquitto {
            port,
            config,
            child: None,
            _dir: dir,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let accepting = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if let Some(child) = self.child.as_mut() {
                // Checked even when the port accepts: a broker that could not
                // bind exits, and whatever accepted is not ours.
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "mosquitto exited early with {status} (port {} taken?)",
                        self.port
                    )));
                }
            }
            if accepting {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "mosquitto did not accept connections in 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's process id while it runs (benches read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker (like a crash: queued messages are lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (stops it first if running).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        // The port may linger briefly after the kill; retry for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_and_restarts_on_the_same_port() {
        let mut m = Mosquitto::start(MosquittoOptions::default()).unwrap();
        let port = m.port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        m.stop();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        m.restart().unwrap();
        assert_eq!(m.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..500).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for &port in &ports {
            assert!(
                (PORTS_FROM..ephemeral_start()).contains(&port),
                "{port} is outside {PORTS_FROM}..{}",
                ephemeral_start()
            );
        }
        // Free means a server can bind it now.
        assert!(TcpListener::bind(("127.0.0.1", ports[0])).is_ok());
    }
}
