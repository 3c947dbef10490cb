//! The real processes a soak drives, and the disk it fills: a mosquitto
//! broker restarted in a chosen [`BrokerMode`], the agent and collector
//! daemons killed with `SIGKILL` and started again ([`Daemon`]), and a
//! small tmpfs mounted for one agent's data ([`Tmpfs`], unmounted on drop,
//! so also when the soak panics).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How the broker runs after a (re)start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMode {
    /// Mosquitto's defaults, no persistence: a restart loses every queued
    /// message and session.
    Plain,
    /// Persistence on (saved every second): sessions and queued messages
    /// survive a restart as of the last save.
    Persistent,
    /// Per-client queues of 5 messages: the broker PUBACKs QoS 1 messages
    /// and then drops them for a busy subscriber.
    TinyQueues,
}

/// The program `name` of this workspace: beside the running executable
/// (`target/<profile>/`), or one level up from a test's `deps/`.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} is not built beside {} (cargo build -p {name})",
        exe.display()
    )
}

/// Waits until `port` on 127.0.0.1 accepts connections.
fn wait_accepting(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A mosquitto on a fixed port of 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct Broker {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Restarts so far.
    pub restarts: u32,
}

impl Broker {
    /// Starts mosquitto in `mode` with its files under `dir`.
    pub fn start(dir: &Path, port: u16, mode: BrokerMode) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(dir).context("creating the broker's directory")?;
        let mut b = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
            restarts: 0,
        };
        b.spawn(mode)?;
        Ok(b)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self, mode: BrokerMode) -> anyhow::Result<()> {
        let mut conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\nmax_keepalive 120\n",
            self.port
        );
        match mode {
            BrokerMode::Plain => conf.push_str("persistence false\n"),
            BrokerMode::Persistent => conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                self.dir.display()
            )),
            BrokerMode::TinyQueues => {
                conf.push_str("persistence false\nmax_queued_messages 5\nmax_inflight_messages 5\n")
            }
        }
        let path = self.dir.join("mosquitto.conf");
        std::fs::write(&path, conf).context("writing mosquitto.conf")?;
        let program = if Path::new("/usr/sbin/mosquitto").exists() {
            PathBuf::from("/usr/sbin/mosquitto")
        } else {
            PathBuf::from("mosquitto")
        };
        // The port may linger briefly after a kill: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut child = Command::new(&program)
                .arg("-c")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting mosquitto (apt-get install mosquitto)")?;
            if wait_accepting(self.port, Duration::from_secs(5))
                && child.try_wait().ok().flatten().is_none()
            {
                self.child = Some(child);
                return Ok(());
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() > deadline {
                bail!("mosquitto did not start on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills it (`SIGKILL`: what was not saved is lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts it again in `mode`.
    pub fn restart(&mut self, mode: BrokerMode) -> anyhow::Result<()> {
        self.kill();
        self.restarts += 1;
        self.spawn(mode)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A daemon (`tributary-agent`, `tributary-collector`) run as a child
/// process with its stderr appended to a log file; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// `kill -9`s so far.
    pub kills: u32,
}

impl Daemon {
    /// A daemon not started yet.
    pub fn new(program: PathBuf, args: &[&str], log: PathBuf) -> Daemon {
        Daemon {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            log,
            child: None,
            kills: 0,
        }
    }

    /// Starts it if it is not running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`, if running.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.kills += 1;
        }
    }

    /// If it exited by itself (a crash the soak did not cause), how.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status.to_string())
    }

    /// Stops it at the end of a run (not counted as a kill).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tmpfs of a few MiB mounted at a directory (root only), filled and
/// emptied on demand; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `path` (created).
    pub fn mount(path: &Path, mib: u32) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path).context("creating the mount point")?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mount -t tmpfs failed ({status}): the soak's disk filling needs root");
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes a filler file until the disk is full; returns its bytes.
    pub fn fill(&self) -> u64 {
        let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
        else {
            return 0;
        };
        let block = vec![0xA5u8; 64 << 10];
        let mut written = 0u64;
        // Bounded by the tmpfs's size: a write fails once it is full.
        while f.write_all(&block).is_ok() {
            written += block.len() as u64;
        }
        // Fill the last partial block too.
        for _ in 0..64 {
            if f.write_all(&block[..1024]).is_err() {
                break;
            }
            written += 1024;
        }
        let _ = f.flush();
        written
    }

    /// Deletes the filler file.
    pub fn empty(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}
