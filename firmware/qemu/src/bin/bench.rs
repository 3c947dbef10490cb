//! Instructions per reading on the Cortex-M itself: the aggregator's hot
//! path (the loop of `firmware/examples/figures.rs`: one channel, one long
//! window, LCG readings around 20 °C) timed by SysTick under QEMU's
//! `-icount shift=0`, where every instruction advances the emulated clock by
//! 1 ns, so a SysTick count at 25 MHz is 40 instructions. A loop of known
//! length (two instructions an iteration) calibrates the method. Prints on
//! UART0, one line each:
//!
//! - `C iterations ticks` — the calibration loop
//! - `W readings ticks` — the whole loop: reading generation + `record`
//! - `B readings ticks` — the same loop without `record` (the baseline)
//! - `M summary aggregator8 link` — RAM on this target: `size_of` one
//!   channel's `FixedSummary`, `Aggregator<8>` and `Link<16, 128>`
//!
//! Run: see firmware/README.md ("Instructions per reading on Cortex-M").
#![no_std]
#![no_main]

use core::hint::black_box;
use core::mem::size_of;

use cortex_m_rt::entry;
use tributary_core::fixed::FixedSummary;
use tributary_firmware::{Aggregator, ChannelSpec, Link, Mode, index};
use tributary_firmware_qemu::board::{UART0, Uart, cycles_between, systick_start, systick_value};
use tributary_firmware_qemu::halt;
use tributary_firmware_qemu::log::write_line;

const SPEC: ChannelSpec = ChannelSpec {
    metric: "temperature",
    unit: "degC",
    index: &index(-3),
    reference: 20_000,
};
/// Readings a run; 2¹⁴ × ~150 instructions stays well inside SysTick's
/// 2²⁴ counts × 40.
const READINGS: u32 = 16_384;
const CALIBRATION: u32 = 100_000;

/// SysTick counts taken by `f`.
fn timed(f: impl FnOnce()) -> i64 {
    let start = systick_value();
    f();
    i64::from(cycles_between(start, systick_value()))
}

/// `n` iterations of `subs; bne`: 2n instructions.
fn spin(n: u32) {
    // SAFETY: only r0 (declared) and the flags change.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {0}, #1",
            "bne 2b",
            inout(reg) n => _,
            options(nomem, nostack),
        );
    }
}

/// The figures example's loop; with `record = false` the readings are
/// generated and discarded.
fn run(agg: &mut Aggregator<1>, record: bool) -> u32 {
    let mut frames = 0u32;
    let mut x = 1u32;
    for t in 0..READINGS {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let v = 20_000 + (x >> 20) as i32;
        if record {
            agg.record(black_box(u64::from(t)), &[v], &mut |_| frames += 1);
        } else {
            black_box((u64::from(t), v));
        }
    }
    frames
}

#[entry]
fn main() -> ! {
    let mut uart = Uart::new(UART0);
    systick_start();
    let c = timed(|| spin(CALIBRATION));
    write_line(&mut uart, b'C', &[i64::from(CALIBRATION), c]);
    let Ok(mut agg) = Aggregator::<1>::new(&[SPEC], 1, u32::MAX, Mode::Aggregate) else {
        halt(1)
    };
    // Warm-up: the first reading opens the window.
    agg.record(0, &[20_000], &mut |_| {});
    let w = timed(|| {
        black_box(run(&mut agg, true));
    });
    write_line(&mut uart, b'W', &[i64::from(READINGS), w]);
    let b = timed(|| {
        black_box(run(&mut agg, false));
    });
    write_line(&mut uart, b'B', &[i64::from(READINGS), b]);
    black_box(&agg);
    let sizes = [
        size_of::<FixedSummary>(),
        size_of::<Aggregator<8>>(),
        size_of::<Link<16, 128>>(),
    ];
    write_line(&mut uart, b'M', &sizes.map(|n| n as i64));
    halt(0)
}
