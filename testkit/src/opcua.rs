//! An OPC UA server simulated by `asyncua` (PyPI) on a free port.
//!
//! The server (`py/opcua_sim.py`) writes each variable's values with
//! SourceTimestamps it sets itself and logs every one with the exact ticks
//! it stands for, computed in Python with exact fractions:
//! [`OpcuaSim::served`] is the judge's input, independent of the agent's
//! arithmetic. It writes only when told ([`OpcuaSim::run`]), so a test can
//! first wait for the agent's subscription. [`windows`] groups the log
//! into the totals a window of the agent must hold.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// One value the server wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its SourceTimestamp (Unix ms).
    pub at_ms: i64,
    /// The variable's metric.
    pub metric: String,
    /// `"good"`, `"bad"` (a Bad status) or `"text"` (not a number).
    pub status: String,
    /// The exact ticks of its scaled value (0 unless good).
    pub ticks: i128,
}

/// A running asyncua server, killed on drop.
pub struct OpcuaSim {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/opcua_sim.py")
}

impl OpcuaSim {
    /// A server on 127.0.0.1:`port` with the JSON `spec` (see
    /// `py/opcua_sim.py`), appending to the log `log`; `user` is
    /// `"name:password"` to require that user.
    pub fn start(spec: &Path, port: u16, log: &Path, user: Option<&str>) -> io::Result<OpcuaSim> {
        Self::start_with(spec, port, log, user, None)
    }

    /// [`OpcuaSim::start`], serving only Basic256Sha256 with SignAndEncrypt
    /// under a self-signed certificate made in `secure` when given.
    pub fn start_with(
        spec: &Path,
        port: u16,
        log: &Path,
        user: Option<&str>,
        secure: Option<&Path>,
    ) -> io::Result<OpcuaSim> {
        let mut cmd = Command::new("python3");
        cmd.arg(script())
            .arg("--port")
            .arg(port.to_string())
            .arg("--spec")
            .arg(spec)
            .arg("--log")
            .arg(log);
        if let Some(u) = user {
            cmd.arg("--user").arg(u);
        }
        if let Some(dir) = secure {
            cmd.arg("--secure").arg(dir);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("no pipes to the asyncua server"));
        };
        let mut sim = OpcuaSim {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            log: log.to_path_buf(),
        };
        if sim.line()? != "ready" {
            return Err(io::Error::other(
                "the asyncua server did not start (is asyncua installed?)",
            ));
        }
        Ok(sim)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// One run of writes (the spec's `rounds`); returns when it is done.
    pub fn run(&mut self) -> io::Result<()> {
        self.stdin.write_all(b"go\n")?;
        self.stdin.flush()?;
        match self.line()?.as_str() {
            "done" => Ok(()),
            other => Err(io::Error::other(format!("asyncua server said {other:?}"))),
        }
    }

    /// Every value written so far (by every server on this log), in order.
    pub fn served(&self) -> io::Result<Vec<Written>> {
        read_log(&self.log)
    }
}

/// The values logged in `log`, in order.
pub fn read_log(log: &Path) -> io::Result<Vec<Written>> {
    crate::simlog::read(
        log,
        |_| true,
        |l| Written {
            at_ms: l.at_ms,
            metric: l.metric.to_string(),
            status: l.third.to_string(),
            ticks: l.ticks,
        },
    )
}

/// What a window of good values holds, in exact integers: how many, the
/// sum of their ticks, the least and the greatest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Values in the window.
    pub count: u64,
    /// Σ ticks.
    pub sum: i128,
    /// The least ticks.
    pub min: i128,
    /// The greatest ticks.
    pub max: i128,
}

impl Totals {
    /// The totals of one value.
    pub fn of(ticks: i128) -> Totals {
        Totals {
            count: 1,
            sum: ticks,
            min: ticks,
            max: ticks,
        }
    }

    /// Adds one value.
    pub fn add(&mut self, ticks: i128) {
        self.count += 1;
        self.sum += ticks;
        self.min = self.min.min(ticks);
        self.max = self.max.max(ticks);
    }
}

/// metric → window start → totals.
pub type Windows = BTreeMap<String, BTreeMap<i64, Totals>>;

/// The judge: the good values of `written`, grouped by metric and by the
/// aligned window of `width_ms` their SourceTimestamp falls in.
pub fn windows(written: &[Written], width_ms: i64) -> Windows {
    let mut out = Windows::new();
    for w in written.iter().filter(|w| w.status == "good") {
        let start = w.at_ms.div_euclid(width_ms) * width_ms;
        out.entry(w.metric.clone())
            .or_default()
            .entry(start)
            .and_modify(|t| t.add(w.ticks))
            .or_insert_with(|| Totals::of(w.ticks));
    }
    out
}

impl Drop for OpcuaSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
