//! The complete protocol image: an SHT3x (driver on a scripted bus) sampled
//! every 20 ms, summaries per 1 s window, the resend ring, Hello until the
//! gateway's TimeSync aligns the windows, Acks releasing frames — all over
//! UART0 at 115 200 baud; the readings log (`log`) on UART1.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use tributary_core::frame::Message;
use tributary_firmware::clock::rem_u64;
use tributary_firmware::drivers::sht3x::{self, Sht3x};
use tributary_firmware::{Aggregator, Clock, HelloParts, Link, Mode, Sensor};
use tributary_firmware_qemu::board::{self, UART0, UART1, Uart};
use tributary_firmware_qemu::bus::{NoDelay, ScriptedSht3x};
use tributary_firmware_qemu::halt;
use tributary_firmware_qemu::log::Log;

/// The device window; it must divide the agent's window.
const WIDTH_MS: u32 = 1_000;
/// Time between measurements.
const PERIOD_MS: u64 = 20;
/// Hello is repeated this often until a TimeSync arrives.
const HELLO_EVERY_MS: u64 = 500;
/// Two TimeSyncs whose offsets differ by at most this agree.
const SYNC_AGREE_MS: u64 = 20;
/// A frame not acked this long after it was sent is sent again.
const RESEND_MS: u64 = 1_000;

/// The device's super-loop. Long on purpose: it owns every peripheral,
/// the aggregator and the link for the device's whole life, and each turn
/// reads the UART, syncs, samples, frames and sends in that order; split
/// up, each step would only take the same borrowed state as arguments.
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
    let Ok(mut agg) = Aggregator::<2>::new(sensor.channels(), boot, WIDTH_MS, Mode::Aggregate)
    else {
        halt(1)
    };
    let mut link = Link::<16, 128>::new(RESEND_MS);
    let mut clock = Clock::new();
    let mut synced = false;
    let (mut next_hello, mut next_sample, mut reported) = (0u64, 0u64, 0u32);
    let mut taken = None;
    let mut candidate = None;
    loop {
        let now = clock.now(millis.now());
        while let Some(byte) = uart.read() {
            link.receive(&[byte], |m| {
                let Message::TimeSync(t) = m else { return };
                if synced {
                    return;
                }
                // A TimeSync held up on the way (the gateway's port not yet
                // read, a buffer) would shift every window: the windows are
                // aligned only by two successive TimeSyncs that agree.
                let offset = t.unix_ms.saturating_sub(now as i64);
                let agree = candidate.is_some_and(|o: i64| o.abs_diff(offset) <= SYNC_AGREE_MS);
                candidate = Some(offset);
                next_hello = now;
                if !agree {
                    return;
                }
                clock.sync(now, t.unix_ms);
                let phase = clock.phase(WIDTH_MS).unwrap_or(0);
                agg.set_phase(phase);
                log.line(b'S', &[b, offset]);
                synced = true;
                // Sampling starts at a window boundary: a window that would
                // begin before tick 0 cannot be sent (the aggregator would
                // clamp it to [0, width), across the aligned boundary).
                let late = rem_u64(now + phase, WIDTH_MS);
                next_sample = now + u64::from(rem_u64(u64::from(WIDTH_MS - late), WIDTH_MS));
            });
        }
        if !synced {
            if now >= next_hello {
                let mut stats = agg.stats();
                link.fill_stats(&mut stats);
                let h = HelloParts {
                    device: "qemu-mps2",
                    firmware: env!("CARGO_PKG_VERSION"),
                    specs: sensor.channels(),
                    boot,
                    first_unacked: link.first_unacked(agg.next_seq()),
                    window_ms: WIDTH_MS,
                    tick: now,
                    stats,
                };
                let h = Message::Hello(h.hello());
                link.send_now(&h, &mut |bytes: &[u8]| uart.write(bytes));
                next_hello = now + HELLO_EVERY_MS;
            }
            continue;
        }
        if now >= next_sample {
            let mut v = [0i32; 2];
            if sensor.measure(&mut v).is_ok() {
                log.line(b'R', &[b, now as i64, i64::from(v[0]), i64::from(v[1])]);
                taken = Some(v);
            }
            next_sample += PERIOD_MS;
        }
        let mut emit = |m: Message| {
            if let Message::Summary(f) = &m {
                let (seq, ch) = (i64::from(f.seq), i64::from(f.channel));
                let n = i64::from(f.summary.count());
                log.line(b'F', &[b, seq, ch, f.start_tick as i64, n]);
            }
            link.enqueue(m);
        };
        if let Some(v) = taken.take() {
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
