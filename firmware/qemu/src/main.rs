//! The complete protocol image: an SHT3x (driver on a scripted bus) sampled
//! every 20 ms, summaries per 1 s window, the resend ring, Hello until the
//! gateway's TimeSync aligns the windows (the firmware's `Session`), Acks
//! releasing frames — all over UART0 at 115 200 baud; the readings log
//! (`log`) on UART1.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use tributary_core::frame::Message;
use tributary_firmware::drivers::sht3x::{self, Sht3x};
use tributary_firmware::{Aggregator, Link, Mode, Sensor, Session, SessionConfig, SyncEvent};
use tributary_firmware_qemu::board::{self, UART0, UART1, Uart};
use tributary_firmware_qemu::bus::{NoDelay, ScriptedSht3x};
use tributary_firmware_qemu::halt;
use tributary_firmware_qemu::log::Log;

/// 1 s windows (they must divide the agent's), a reading every 20 ms. A
/// 40-byte Hello and a 20-byte TimeSync take ~5 ms at 115 200 baud and the
/// agent answers within a few ms: round trips ≤ 100 ms (the default) keep
/// the clock within 50 ms, far inside half a window.
const SESSION: SessionConfig =
    SessionConfig::new("qemu-mps2", env!("CARGO_PKG_VERSION"), 1_000, 20).hello_every(500);
/// A frame not acked this long after it was sent is sent again.
const RESEND_MS: u64 = 1_000;

/// The device's super-loop: reads the UART, syncs, samples, frames and
/// sends in that order; it owns every peripheral for the device's life.
#[entry]
fn main() -> ! {
    let boot = board::next_boot_id();
    let mut millis = board::Millis::start();
    let mut uart = Uart::new(UART0);
    let mut log = Log::new(Uart::new(UART1));
    let b = i64::from(boot);
    // A line of its own, even if the reset cut the last boot's line short.
    log.line(b'\n', &[]);
    log.line(b'B', &[b]);
    let mut sensor = Sht3x::new(
        ScriptedSht3x::new(0x5EED_0000 ^ boot),
        NoDelay,
        sht3x::DEFAULT_ADDRESS,
    );
    let Ok(mut agg) =
        Aggregator::<2>::new(sensor.channels(), boot, SESSION.window_ms, Mode::Aggregate)
    else {
        halt(1)
    };
    let mut link = Link::<16, 128>::new(RESEND_MS);
    let mut session = Session::new(SESSION, boot);
    let mut reported = 0u32;
    loop {
        let now = session.now(millis.now());
        while let Some(byte) = uart.read() {
            match session.receive(now, &[byte], &mut link, &mut agg) {
                Some(SyncEvent::Adopted { offset_ms, rtt_ms }) => {
                    log.line(b'S', &[b, offset_ms, rtt_ms as i64]);
                }
                Some(SyncEvent::Refused { rtt_ms }) => {
                    log.line(b'X', &[b, rtt_ms.min(i64::MAX as u64) as i64]);
                }
                None => {}
            }
        }
        if !session.synced() {
            let mut tx = |bytes: &[u8]| uart.write(bytes);
            session.hello(now, sensor.channels(), &agg, &mut link, &mut tx);
            continue;
        }
        let mut taken = None;
        if session.sample_due(now) {
            let mut v = [0i32; 2];
            if sensor.measure(&mut v).is_ok() {
                log.line(b'R', &[b, now as i64, i64::from(v[0]), i64::from(v[1])]);
                taken = Some(v);
            }
        }
        let mut emit = |m: Message| {
            if let Message::Summary(f) = &m {
                let (seq, ch) = (i64::from(f.seq), i64::from(f.channel));
                let n = i64::from(f.summary.count());
                log.line(b'F', &[b, seq, ch, f.start_tick as i64, n]);
            }
            link.enqueue(m);
        };
        if let Some(v) = taken {
            agg.record(now, &v, &mut emit);
        }
        agg.close_due(now, &mut emit);
        link.poll(now, &mut |bytes: &[u8]| uart.write(bytes));
        let first = link.first_unacked(agg.next_seq());
        if first != reported {
            log.line(b'U', &[b, i64::from(first)]);
            reported = first;
        }
    }
}
