//! Serial devices speaking the firmware link protocol.
//!
//! One task per configured port. The port is opened non-blocking, put in raw
//! mode at the configured baud rate (a pty ignores the rate), and read through
//! tokio's `AsyncFd`. Bytes go through a [`FrameDecoder`], so a corrupt or
//! truncated frame costs only itself (counted as `corrupt_frame`); decoded
//! frames go to the engine, which answers Hello with TimeSync and acks each
//! data frame only after its effect is committed. Replies are encoded and
//! written back to the port; a TimeSync naming no Hello also goes out every
//! `TIME_SYNC_EVERY` (firmware devices adopt only the answers to their
//! Hello, whose round trip they can time; see `firmware::session`). A port that cannot be
//! opened, or that fails, is reopened after a growing pause (a device
//! unplugged and plugged back in).

pub mod config;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::sys::termios::{self, BaudRate, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tributary_core::frame::{self, FrameDecoder, Message, TimeSync, MAX_FRAME};

use tributary_runtime::now_ms;

use crate::engine::Input;
use crate::metrics::{Metrics, Reject};
pub use config::SerialConfig;

/// How often a TimeSync is sent besides the one answering each Hello.
const TIME_SYNC_EVERY: Duration = Duration::from_secs(60);

/// Runs one serial port until shutdown, reopening it after failures.
pub(crate) async fn run(
    cfg: SerialConfig,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let link = cfg.path.display().to_string();
    let mut pause = Duration::from_millis(100);
    loop {
        match open_port(&cfg) {
            Ok(fd) => {
                tracing::info!(port = link, baud = cfg.baud, "serial port open");
                pause = Duration::from_millis(100);
                match serve(&link, fd, &engine, &metrics, &mut shutdown).await {
                    Ok(Stop::Shutdown) => return,
                    Ok(Stop::Closed) => tracing::warn!(port = link, "serial port closed"),
                    Err(e) => tracing::warn!(port = link, error = %e, "serial port failed"),
                }
            }
            Err(e) => tracing::warn!(port = link, error = %e, "cannot open serial port"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

enum Stop {
    Shutdown,
    Closed,
}

fn baud(rate: u32) -> BaudRate {
    match rate {
        9600 => BaudRate::B9600,
        19_200 => BaudRate::B19200,
        38_400 => BaudRate::B38400,
        57_600 => BaudRate::B57600,
        230_400 => BaudRate::B230400,
        460_800 => BaudRate::B460800,
        921_600 => BaudRate::B921600,
        _ => BaudRate::B115200,
    }
}

/// Opens the port non-blocking in raw mode.
fn open_port(cfg: &SerialConfig) -> nix::Result<OwnedFd> {
    let fd = open(
        &cfg.path,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut t = termios::tcgetattr(&fd)?;
    termios::cfmakeraw(&mut t);
    termios::cfsetspeed(&mut t, baud(cfg.baud))?;
    termios::tcsetattr(&fd, SetArg::TCSANOW, &t)?;
    Ok(fd)
}

/// Writes all of `bytes`, waiting for the port to accept them.
async fn write_all(port: &AsyncFd<OwnedFd>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = port.writable().await?;
        match guard.try_io(|fd| {
            nix::unistd::write(fd.get_ref().as_fd(), bytes).map_err(std::io::Error::from)
        }) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

async fn send(port: &AsyncFd<OwnedFd>, msg: &Message) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_FRAME];
    match frame::encode(msg, &mut buf) {
        Ok(n) => write_all(port, &buf[..n]).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a reply frame");
            Ok(())
        }
    }
}

async fn serve(
    link: &str,
    fd: OwnedFd,
    engine: &mpsc::Sender<Input>,
    metrics: &Metrics,
    shutdown: &mut watch::Receiver<bool>,
) -> std::io::Result<Stop> {
    // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may be closed
    // behind its back; here it takes sole ownership of an `OwnedFd`, which is
    // exactly the I/O-safe case (and this crate forbids the `unsafe` that
    // `AsyncFd::register` requires).
    #[allow(deprecated)]
    let port = AsyncFd::new(fd)?;
    let (reply_tx, mut replies) = mpsc::unbounded_channel::<Message>();
    let mut decoder = FrameDecoder::<MAX_FRAME>::new();
    let mut buf = [0u8; 4096];
    let mut sync = tokio::time::interval(TIME_SYNC_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(Stop::Shutdown),
            _ = sync.tick() => send(&port, &Message::TimeSync(TimeSync { unix_ms: now_ms(), hello_tick: None })).await?,
            Some(msg) = replies.recv() => send(&port, &msg).await?,
            guard = port.readable() => {
                let mut guard = guard?;
                let n = match guard.try_io(|fd| {
                    nix::unistd::read(fd.get_ref().as_fd(), &mut buf).map_err(std::io::Error::from)
                }) {
                    Ok(Ok(0)) => return Ok(Stop::Closed),
                    Ok(Ok(n)) => n,
                    // A pty whose other side is closed reads EIO: the device is gone.
                    Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(Stop::Closed),
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => continue,
                };
                let arrival = now_ms();
                let mut frames = Vec::new();
                for &b in &buf[..n] {
                    match decoder.push(b) {
                        Some(Ok(m)) => frames.push((m, arrival)),
                        Some(Err(e)) => {
                            tracing::warn!(port = link, error = %e, "corrupt frame dropped");
                            metrics.reject(Reject::CorruptFrame);
                        }
                        None => {}
                    }
                }
                if !frames.is_empty() {
                    let input = Input::Link {
                        link: link.to_string(),
                        frames,
                        reply: Some(reply_tx.clone()),
                        fixed_offset: None,
                        done: None,
                    };
                    if engine.send(input).await.is_err() {
                        return Ok(Stop::Shutdown);
                    }
                }
            }
        }
    }
}
