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
/// encodes it: COBS(version 2, postcard [3, 1, 5], CRC-32 0xE07A6C00
/// little-endian — its zero low byte becomes a COBS code), delimiter. The
/// link accepts it only if the table-free CRC of this build (`small-crc`)
/// computes the same CRC-32.
const ACK_1_5: [u8; 10] = [0x05, 0x02, 0x03, 0x01, 0x05, 0x04, 0x6C, 0x7A, 0xE0, 0x00];

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

// The memory routines libc would provide; simple byte loops (the compiler
// leaves such a loop alone only in a function of that very name, so they are
// never inlined into another).
#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        unsafe { *d.add(i) = *s.add(i) };
        i += 1;
    }
    d
}

#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) {
        let mut i = 0;
        while i < n {
            // SAFETY: as for memcpy; forward copy is safe when d < s.
            unsafe { *d.add(i) = *s.add(i) };
            i += 1;
        }
    } else {
        let mut i = n;
        while i > 0 {
            i -= 1;
            // SAFETY: as for memcpy; backward copy is safe when d ≥ s.
            unsafe { *d.add(i) = *s.add(i) };
        }
    }
    d
}

#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees the range is valid for n bytes.
        unsafe { *d.add(i) = c as u8 };
        i += 1;
    }
    d
}

#[unsafe(no_mangle)]
#[inline(never)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

// The ARM EABI names the compiler calls on a Cortex-M; compiler-builtins
// would otherwise supply word-at-a-time versions, ~2.5 KiB of them. Volatile
// accesses keep the compiler from turning the loops back into calls to
// these very routines (a call to `memcpy` is lowered to `__aeabi_memcpy`).
#[cfg(target_arch = "arm")]
mod aeabi {
    use core::ptr::{read_volatile, write_volatile};

    /// Copies `n` bytes from `s` to `d`, first to last or last to first.
    ///
    /// # Safety
    /// Both ranges are valid for `n` bytes.
    unsafe fn copy(d: *mut u8, s: *const u8, n: usize, forward: bool) {
        for k in 0..n {
            let i = if forward { k } else { n - 1 - k };
            // SAFETY: i < n, within both ranges.
            unsafe { write_volatile(d.add(i), read_volatile(s.add(i))) };
        }
    }

    /// Sets `n` bytes at `d` to `c`.
    ///
    /// # Safety
    /// The range is valid for `n` bytes.
    unsafe fn set(d: *mut u8, n: usize, c: u8) {
        for i in 0..n {
            // SAFETY: i < n, within the range.
            unsafe { write_volatile(d.add(i), c) };
        }
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memcpy(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { copy(d, s, n, true) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memcpy4(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { copy(d, s, n, true) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memcpy8(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memcpy's.
        unsafe { copy(d, s, n, true) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memmove(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: the caller's contract is memmove's; copying away from the
        // overlap is safe.
        unsafe { copy(d, s, n, (d as usize) < (s as usize)) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memmove4(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: as for __aeabi_memmove.
        unsafe { copy(d, s, n, (d as usize) < (s as usize)) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memmove8(d: *mut u8, s: *const u8, n: usize) {
        // SAFETY: as for __aeabi_memmove.
        unsafe { copy(d, s, n, (d as usize) < (s as usize)) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memset(d: *mut u8, n: usize, c: i32) {
        // SAFETY: the caller's contract is memset's (arguments reordered).
        unsafe { set(d, n, c as u8) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memclr(d: *mut u8, n: usize) {
        // SAFETY: the caller's contract is memset's.
        unsafe { set(d, n, 0) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memclr4(d: *mut u8, n: usize) {
        // SAFETY: the caller's contract is memset's.
        unsafe { set(d, n, 0) };
    }

    #[unsafe(no_mangle)]
    unsafe extern "C" fn __aeabi_memclr8(d: *mut u8, n: usize) {
        // SAFETY: the caller's contract is memset's.
        unsafe { set(d, n, 0) };
    }
}
