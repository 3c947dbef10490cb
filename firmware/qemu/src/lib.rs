//! # tributary-firmware-qemu
//!
//! The firmware on an emulated Cortex-M board (QEMU's MPS2 AN386, a
//! Cortex-M4, or AN385, a Cortex-M3): `src/main.rs` is the complete protocol
//! image (Hello, TimeSync, Summary frames, Acks over UART0), `src/bin/bench.rs`
//! counts instructions per reading.
//!
//! # Layout
//! - `board` — the CMSDK UARTs, the SysTick ms tick, the boot cell
//! - `bus` — a scripted I²C bus answering like an SHT3x
//! - `log` — the readings log on UART1 that tests judge by
//! - `mem` — `memcpy` and friends as byte loops (`../freestanding/src/mem.rs`)
#![no_std]

pub mod board;
pub mod bus;
pub mod log;
// Byte-loop memory routines instead of compiler-builtins' larger ones
// (the freestanding image's, shared).
#[path = "../../freestanding/src/mem.rs"]
mod mem;

/// Stops here for good (a debugger finds `code` in a register).
pub fn halt(code: u32) -> ! {
    loop {
        core::hint::black_box(code);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    halt(101)
}
