//! A Modbus device simulated by `pymodbus` (PyPI), as a TCP server on a
//! free port or an RTU server on a serial port, and a `socat` pty pair to
//! be the RS-485 line between it and the agent.
//!
//! The device (`py/modbus_sim.py`) serves a fresh value of each point on
//! every read and logs it with the exact ticks it stands for, computed in
//! Python with exact fractions: [`ModbusSim::served`] is the judge's input,
//! independent of the agent's arithmetic.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One value the simulator served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// When (Unix ms, the simulator's clock: the same wall clock).
    pub at_ms: i64,
    /// The point's metric.
    pub metric: String,
    /// The exact ticks of its scaled value.
    pub ticks: i128,
}

/// A running pymodbus device, killed on drop.
pub struct ModbusSim {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/modbus_sim.py")
}

impl ModbusSim {
    /// A Modbus TCP device on 127.0.0.1:`port` with the JSON `spec` (see
    /// `py/modbus_sim.py`).
    pub fn tcp(spec: &str, port: u16) -> io::Result<ModbusSim> {
        ModbusSim::start(spec, &["--tcp".into(), port.to_string()])
    }

    /// A Modbus RTU device on the serial port `path`.
    pub fn rtu(spec: &str, path: &Path) -> io::Result<ModbusSim> {
        ModbusSim::start(spec, &["--rtu".into(), path.display().to_string()])
    }

    fn start(spec: &str, args: &[String]) -> io::Result<ModbusSim> {
        let dir = tempfile::tempdir()?;
        let spec_path = dir.path().join("spec.json");
        std::fs::write(&spec_path, spec)?;
        let log = dir.path().join("served.log");
        let mut child = Command::new("python3")
            .arg(script())
            .args(args)
            .arg("--spec")
            .arg(&spec_path)
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(
                "the pymodbus simulator did not start (are pymodbus and pyserial installed? scripts/test.sh installs them)",
            ));
        }
        Ok(ModbusSim {
            child,
            log,
            _dir: dir,
        })
    }

    /// Every value served so far, in order.
    pub fn served(&self) -> io::Result<Vec<Served>> {
        crate::simlog::read(
            &self.log,
            |l| l.ends_with(|c: char| c.is_ascii_digit()),
            |l| Served {
                at_ms: l.at_ms,
                metric: l.metric.to_string(),
                ticks: l.ticks,
            },
        )
    }
}

impl Drop for ModbusSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two connected ptys made by `socat`: a serial line. Killed on drop.
pub struct PtyPair {
    child: Child,
    /// One end.
    pub a: PathBuf,
    /// The other end.
    pub b: PathBuf,
    _dir: tempfile::TempDir,
}

impl PtyPair {
    /// Starts `socat` and waits for both ends to exist.
    pub fn start() -> io::Result<PtyPair> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let mut child = Command::new("socat")
            .arg(end(&a))
            .arg(end(&b))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.exists() && b.exists()) {
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other("socat made no pty pair"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(PtyPair {
            child,
            a,
            b,
            _dir: dir,
        })
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
