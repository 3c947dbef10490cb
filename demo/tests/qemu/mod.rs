//! The emulated board for system tests: builds the firmware image of
//! `firmware/qemu` for a Cortex-M target, boots it in `qemu-system-arm`
//! with UART0 on a pty (the agent's serial port), UART1 written to a file
//! (the image's readings log) and the monitor on a Unix socket (for
//! `system_reset`), and parses the readings log.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the image for `target` with its readings log (feature
/// `readings-log`; `scripts/test.sh` builds and measures it without, in the
/// same target dir, so the dependencies are built once) and returns its
/// path.
pub(crate) fn build_image(target: &str) -> PathBuf {
    let root = root();
    // The profile `scripts/test.sh` ships each target's image with.
    let profile = if target.starts_with("thumbv6m") {
        "release"
    } else {
        "speed"
    };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("qemu");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("firmware/qemu"))
        .args([
            "build",
            "-q",
            "--profile",
            profile,
            "--features",
            "readings-log",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the QEMU image for {target}");
    target_dir
        .join(target)
        .join(profile)
        .join("tributary-firmware-qemu")
}

/// A running emulated board.
pub(crate) struct Board {
    child: Child,
    pty: PathBuf,
    log: PathBuf,
    monitor: PathBuf,
    _dir: tempfile::TempDir,
}

impl Board {
    /// Boots `image` on QEMU's `machine` (e.g. `mps2-an386`).
    pub(crate) fn boot(machine: &str, image: &Path) -> Board {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("uart1.log");
        let monitor = dir.path().join("monitor.sock");
        let mut child = Command::new("qemu-system-arm")
            .args(["-M", machine, "-nographic", "-serial", "pty", "-serial"])
            .arg(format!("file:{}", log.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()))
            .arg("-kernel")
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-arm runs (scripts/test.sh installs it)");
        // "char device redirected to /dev/pts/N (label serial0)", on stderr
        // (stdout in some versions): read both until it appears.
        let (tx, rx) = std::sync::mpsc::channel();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let pty = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("QEMU names its pty");
            if let Some(rest) = line.split("redirected to ").nth(1) {
                break PathBuf::from(rest.split(' ').next().unwrap_or_default());
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !monitor.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Board {
            child,
            pty,
            log,
            monitor,
            _dir: dir,
        }
    }

    /// The pty of UART0.
    pub(crate) fn pty(&self) -> &Path {
        &self.pty
    }

    /// Resets the board as its reset button would (QEMU monitor
    /// `system_reset`: CPU and devices reset, RAM kept, the image reloaded).
    pub(crate) fn reset(&self) {
        let mut s = UnixStream::connect(&self.monitor).expect("QEMU monitor");
        s.write_all(b"system_reset\n").expect("monitor command");
        // The monitor answers with its prompt once the command ran.
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut seen = String::new();
        let mut r = BufReader::new(s);
        while !seen.contains("system_reset") {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
        }
    }

    /// The readings log so far.
    pub(crate) fn log(&self) -> Log {
        Log::parse(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Stops the emulator.
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Summary frame the image queued.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    pub(crate) seq: u32,
    pub(crate) channel: u8,
    pub(crate) start_tick: u64,
    pub(crate) count: u64,
}

/// What one boot logged.
#[derive(Debug, Clone, Default)]
pub(crate) struct BootLog {
    /// Unix ms minus device ms, from the TimeSync adopted.
    pub(crate) offset: Option<i64>,
    /// The adopted TimeSync's round trip (ms).
    pub(crate) sync_rtt: Option<i64>,
    /// TimeSyncs refused for their round trip.
    pub(crate) refused_syncs: u32,
    /// (tick, [channel 0, channel 1]) per measurement.
    pub(crate) readings: Vec<(u64, [i64; 2])>,
    pub(crate) frames: Vec<Frame>,
    /// Every frame below this sequence was acked.
    pub(crate) first_unacked: u32,
}

/// The readings log, per boot.
#[derive(Debug, Clone, Default)]
pub(crate) struct Log {
    pub(crate) boots: BTreeMap<u32, BootLog>,
    /// Lines that did not parse (a line cut by a reset, the last line).
    pub(crate) bad_lines: usize,
}

impl Log {
    /// Parses the log's text.
    pub(crate) fn parse(text: &str) -> Log {
        let mut log = Log::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if log.apply(line).is_none() {
                log.bad_lines += 1;
            }
        }
        log
    }

    fn apply(&mut self, line: &str) -> Option<()> {
        let mut f = line.split(' ');
        let tag = f.next()?;
        let nums: Vec<i64> = f.map(|n| n.parse().ok()).collect::<Option<_>>()?;
        let boot = u32::try_from(*nums.first()?).ok()?;
        let b = self.boots.entry(boot).or_default();
        match (tag, nums.as_slice()) {
            ("B", [_]) => {}
            ("S", [_, offset, rtt]) => (b.offset, b.sync_rtt) = (Some(*offset), Some(*rtt)),
            ("X", [_, _rtt]) => b.refused_syncs += 1,
            ("R", [_, tick, v0, v1]) => b.readings.push((u64::try_from(*tick).ok()?, [*v0, *v1])),
            ("F", [_, seq, ch, start, count]) => b.frames.push(Frame {
                seq: u32::try_from(*seq).ok()?,
                channel: u8::try_from(*ch).ok()?,
                start_tick: u64::try_from(*start).ok()?,
                count: u64::try_from(*count).ok()?,
            }),
            ("U", [_, first]) => b.first_unacked = u32::try_from(*first).ok()?,
            _ => return None,
        }
        Some(())
    }
}
