//! The RTU transport: a serial port (an RS-485 adapter, or a pty in tests)
//! opened non-blocking in raw mode with the device's baud rate, parity and
//! stop bits, read and written through tokio's `AsyncFd`.
//!
//! tokio-modbus checks each response's CRC and, on a mismatch, drops bytes
//! until a frame checks, so a corrupt response surfaces as a timeout. The
//! port counts the bytes received since the last request was written: a
//! timeout with bytes on the line was a corrupt (bad CRC) response, one
//! without a silent device.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::sys::termios::{self, BaudRate, ControlFlags, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::config::{ModbusConfig, Parity};

/// An open RTU port.
pub(crate) struct Port {
    fd: AsyncFd<OwnedFd>,
    /// Bytes received since the last write.
    received: Arc<AtomicUsize>,
}

impl Port {
    /// Opens `cfg.serial` with the device's line settings.
    pub(crate) fn open(cfg: &ModbusConfig) -> io::Result<Port> {
        let path = cfg
            .serial
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no serial port"))?;
        let fd = open(
            path,
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut t = termios::tcgetattr(&fd)?;
        termios::cfmakeraw(&mut t);
        termios::cfsetspeed(&mut t, baud(cfg.baud))?;
        let c = &mut t.control_flags;
        c.insert(ControlFlags::CLOCAL | ControlFlags::CREAD);
        c.set(ControlFlags::PARENB, cfg.parity != Parity::None);
        c.set(ControlFlags::PARODD, cfg.parity == Parity::Odd);
        c.set(ControlFlags::CSTOPB, cfg.stop_bits == 2);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &t)?;
        // See the serial source: `AsyncFd::new` takes sole ownership of an
        // `OwnedFd` here, the I/O-safe case.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Port {
            fd,
            received: Arc::default(),
        })
    }

    /// The count of bytes received since the last write (shared).
    pub(crate) fn received(&self) -> Arc<AtomicUsize> {
        self.received.clone()
    }
}

fn baud(rate: u32) -> BaudRate {
    match rate {
        1200 => BaudRate::B1200,
        2400 => BaudRate::B2400,
        4800 => BaudRate::B4800,
        9600 => BaudRate::B9600,
        19_200 => BaudRate::B19200,
        38_400 => BaudRate::B38400,
        57_600 => BaudRate::B57600,
        230_400 => BaudRate::B230400,
        _ => BaudRate::B115200,
    }
}

impl AsyncRead for Port {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    self.received.fetch_add(n, Ordering::Relaxed);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), bytes).map_err(io::Error::from)
            }) {
                Ok(r) => {
                    self.received.store(0, Ordering::Relaxed);
                    return Poll::Ready(r);
                }
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
