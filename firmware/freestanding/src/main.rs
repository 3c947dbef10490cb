//! A freestanding firmware image for the host: `#![no_std]`, `#![no_main]`,
//! its own `_start`, no libc. A scripted in-memory I²C bus answers like an
//! SHT3x; the real aggregator and link run on it; frames go to a counting
//! sink and an Ack comes back through the link's receive path. On a board, `_start` becomes the HAL's entry (e.g. `cortex-m-rt`'s
//! `#[entry]`), the bus comes from the board-support crate and the sink is a
//! UART. The only `unsafe` is the entry/exit glue and the memory routines a
//! libc would otherwise provide; the library itself forbids unsafe code.
#![no_std]
#![no_main]

use core::convert::Infallible;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorType, I2c, Operation};
use tributary_core::frame::payload_in_place;
use tributary_firmware::drivers::sht3x::{self, Sht3x};
use tributary_firmware::{Aggregator, Link, Mode, Sensor};

/// Answers every read with a fixed SHT3x measurement (25 °C, 50 %RH).
struct MockBus;

impl ErrorType for MockBus {
    type Error = Infallible;
}

impl I2c for MockBus {
    fn transaction(&mut self, _addr: u8, ops: &mut [Operation<'_>]) -> Result<(), Infallible> {
        for op in ops {
            if let Operation::Read(buf) = op {
                let t = [0x66, 0x66];
                let h = [0x80, 0x00];
                let frame = [t[0], t[1], sht3x::crc8(&t), h[0], h[1], sht3x::crc8(&h)];
                for (b, f) in buf.iter_mut().zip(frame) {
                    *b = f;
                }
            }
        }
        Ok(())
    }
}

struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}

/// The gateway's `Ack { boot: 1, seq: 5 }` as a std build (table CRC)
/// encodes it: COBS(version 3, postcard [3, 1, 5], CRC-32 0x58C60B65
/// little-endian; no zero byte, so one COBS code 9), delimiter. The
/// link accepts it only if the table-free CRC of this build (`small-crc`)
/// computes the same CRC-32.
const ACK_1_5: [u8; 10] = [0x09, 0x03, 0x03, 0x01, 0x05, 0x65, 0x0B, 0xC6, 0x58, 0x00];

fn run() -> u32 {
    let mut sensor = Sht3x::new(MockBus, NoDelay, sht3x::DEFAULT_ADDRESS);
    let Ok(mut agg) = Aggregator::<2>::new(sensor.channels(), 1, 10_000, Mode::Aggregate) else {
        return 1;
    };
    let mut link = Link::<16, 128>::new(2_000);
    let mut bytes = 0usize;
    // The first frame sent, to check as the gateway would.
    let mut first = [0u8; 128];
    let mut first_len = 0;
    for t in 0..100u64 {
        agg.poll(t * 1_000, &mut sensor, &mut |m| link.enqueue(m));
        link.poll(t * 1_000, &mut |b: &[u8]| {
            if bytes == 0 {
                if let Some(dest) = first.get_mut(..b.len()) {
                    dest.copy_from_slice(b);
                    first_len = b.len();
                }
            }
            bytes += b.len();
        });
    }
    // 9 closed windows × 2 channels were sent and never acked: the 16-slot
    // ring dropped the two oldest (10 readings each), and counted them.
    let ok = agg.next_seq() == 18
        && link.pending() == 16
        && link.stats().dropped_readings == 20
        && bytes > 0;
    // The first frame is a valid Summary frame (postcard variant 1): COBS,
    // version and CRC check out.
    let body = first
        .get_mut(..first_len.saturating_sub(1))
        .unwrap_or(&mut []);
    let sent_ok = matches!(payload_in_place(body), Ok([1, ..]));
    // The gateway acks frame 5: the link decodes it and releases the frame.
    let mut other = 0u32;
    link.receive(&ACK_1_5, |_| other += 1);
    let ok = ok && sent_ok && link.pending() == 15 && other == 0;
    if ok { 0 } else { 2 }
}

#[cfg(target_arch = "x86_64")]
fn exit(code: u32) -> ! {
    // SAFETY: the Linux exit_group syscall takes one integer and never returns.
    unsafe {
        core::arch::asm!("syscall", in("rax") 231u64, in("rdi") u64::from(code), options(noreturn));
    }
}

// The process entry point (no C runtime): align the stack as the C ABI
// expects at a call, then enter Rust.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor rbp, rbp",
    "and rsp, -16",
    "call {entry}",
    entry = sym rust_start,
);

#[cfg(target_arch = "x86_64")]
extern "C" fn rust_start() -> ! {
    exit(run())
}

// On a Cortex-M (`--target thumbv6m-none-eabi`, see the README) the entry
// comes from `cortex-m-rt`'s reset handler; with no OS to exit to, the
// result stays in a register for a debugger.
#[cfg(target_arch = "arm")]
#[cortex_m_rt::entry]
fn main() -> ! {
    exit(run())
}

#[cfg(target_arch = "arm")]
fn exit(code: u32) -> ! {
    loop {
        core::hint::black_box(code);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit(101)
}

// The memory routines libc would provide (shared with the QEMU image).
mod mem;
