//! The readings log on UART1: one ASCII line per event, a tag letter and
//! decimal integers, so a test can judge the pipeline by the readings the
//! image really took (no `core::fmt`: it would cost kilobytes of flash).
//!
//! - `S boot offset_ms rtt_ms` — the TimeSync adopted: Unix ms minus device
//!   ms, and the Hello → TimeSync round trip
//! - `X boot rtt_ms` — a TimeSync refused for its round trip
//! - `R boot tick v0 v1` — one measurement (ticks of channels 0 and 1)
//! - `F boot seq channel start_tick count` — a Summary frame queued
//! - `U boot first_unacked` — every frame of the boot below it was acked
//!
//! Only with the feature `readings-log` (the tests' build); without it
//! [`Log::line`] writes nothing and costs no flash, so the complete
//! protocol image's size budget is measured without test instrumentation.

use crate::board::Uart;

/// A line writer on a UART.
pub struct Log {
    uart: Uart,
}

impl Log {
    /// A log on `uart`.
    pub fn new(uart: Uart) -> Self {
        Log { uart }
    }

    /// Writes `tag`, then each number after a space, then a newline (with
    /// the feature `readings-log`; nothing without).
    pub fn line(&mut self, tag: u8, nums: &[i64]) {
        if cfg!(feature = "readings-log") {
            write_line(&mut self.uart, tag, nums);
        }
    }
}

/// Writes `tag`, then each number after a space, then a newline.
pub fn write_line(uart: &mut Uart, tag: u8, nums: &[i64]) {
    uart.write(&[tag]);
    for &n in nums {
        let mut buf = [0u8; 21];
        let mut i = buf.len();
        let mut m = n.unsigned_abs();
        loop {
            i -= 1;
            buf[i] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
        if n < 0 {
            i -= 1;
            buf[i] = b'-';
        }
        uart.write(b" ");
        uart.write(&buf[i..]);
    }
    uart.write(b"\n");
}
