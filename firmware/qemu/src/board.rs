//! The MPS2 board as QEMU models it: the CMSDK APB UARTs, SysTick as a
//! millisecond clock, and a boot cell in RAM that survives a reset.
//!
//! # Design
//! The boot id must change at every reset, or the gateway would take the new
//! boot's sequence numbers (restarting at 0) for resends of the old boot's.
//! A real board keeps a counter in flash/EEPROM or a battery-backed register
//! (an STM32's RTC backup registers, an RP2040's watchdog scratch registers);
//! here it is a word pair past the end of the linker's RAM (memory.x), which
//! neither the reset handler nor QEMU's loader writes: a magic word, then
//! the counter. QEMU's RAM starts zeroed, so the first boot is 1; a
//! `system_reset` keeps RAM, so the next is 2.

use core::ptr::{read_volatile, write_volatile};

/// The core clock of QEMU's MPS2 models (SysTick's processor clock).
pub const CORE_HZ: u32 = 25_000_000;

/// A CMSDK APB UART (the MPS2's UART0…UART2).
pub struct Uart {
    base: usize,
}

/// UART0: the link to the gateway.
pub const UART0: usize = 0x4000_4000;
/// UART1: the readings log for tests.
pub const UART1: usize = 0x4000_5000;

const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const TX_FULL: u32 = 1;
const RX_FULL: u32 = 2;

impl Uart {
    /// Enables transmit and receive at 115 200 baud (QEMU only requires a
    /// divider of at least 16; a real CMSDK UART needs the right one).
    pub fn new(base: usize) -> Self {
        let u = Uart { base };
        u.write_reg(BAUDDIV, CORE_HZ / 115_200);
        u.write_reg(CTRL, 0b11);
        u
    }

    fn read_reg(&self, off: usize) -> u32 {
        // SAFETY: `base` is a CMSDK UART's register block (UART0/UART1 of
        // the MPS2 memory map); these are aligned 32-bit device registers.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    fn write_reg(&self, off: usize, v: u32) {
        // SAFETY: as for `read_reg`.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    /// Writes all of `bytes`, waiting while the transmit buffer is full.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            while self.read_reg(STATE) & TX_FULL != 0 {}
            self.write_reg(DATA, u32::from(b));
        }
    }

    /// A received byte, if one waits.
    pub fn read(&mut self) -> Option<u8> {
        (self.read_reg(STATE) & RX_FULL != 0).then(|| self.read_reg(DATA) as u8)
    }
}

const SYST_CSR: usize = 0xE000_E010;
const SYST_RVR: usize = 0xE000_E014;
const SYST_CVR: usize = 0xE000_E018;
/// SysTick's full period: a 24-bit down counter.
const SYST_PERIOD: u32 = 1 << 24;

/// Starts SysTick as a free-running 24-bit down counter on the core clock
/// (no exception).
pub fn systick_start() {
    // SAFETY: the SysTick registers of the Armv6-M/Armv7-M system control
    // space; nothing else in the image uses SysTick.
    unsafe {
        write_volatile(SYST_RVR as *mut u32, SYST_PERIOD - 1);
        write_volatile(SYST_CVR as *mut u32, 0);
        write_volatile(SYST_CSR as *mut u32, 0b101);
    }
}

/// SysTick's current value (counts down).
pub fn systick_value() -> u32 {
    // SAFETY: as for `systick_start`; a read has no side effect.
    unsafe { read_volatile(SYST_CVR as *const u32) }
}

/// Core cycles elapsed from SysTick value `earlier` to `later` (less than
/// one period apart).
pub fn cycles_between(earlier: u32, later: u32) -> u32 {
    earlier.wrapping_sub(later) & (SYST_PERIOD - 1)
}

/// Milliseconds since boot from SysTick read as a counter. (QEMU runs
/// timer callbacks late while the core busy-polls, so a count of 1 kHz
/// SysTick exceptions falls behind real time; the counter's value is
/// computed from the emulator's clock and does not. A real board would use
/// a 1 kHz hardware timer or its RTC.) Must be polled at least once per
/// SysTick period, 0.67 s at 25 MHz.
pub struct Millis {
    last: u32,
    /// Core cycles past `ms`, fewer than a millisecond's.
    cycles: u32,
    ms: u32,
}

/// Core cycles a millisecond.
const CYCLES_PER_MS: u32 = CORE_HZ / 1000;

impl Millis {
    /// Starts SysTick and counts from now.
    pub fn start() -> Self {
        systick_start();
        Millis {
            last: systick_value(),
            cycles: 0,
            ms: 0,
        }
    }

    /// Milliseconds since [`Millis::start`] (wraps after 49.7 days; the
    /// firmware's `Clock` extends it).
    pub fn now(&mut self) -> u32 {
        let v = systick_value();
        // < 2^24 + CYCLES_PER_MS: no overflow.
        let c = self.cycles + cycles_between(self.last, v);
        self.last = v;
        self.ms = self.ms.wrapping_add(c / CYCLES_PER_MS);
        self.cycles = c % CYCLES_PER_MS;
        self.ms
    }
}

/// The boot cell: past the end of memory.x's RAM.
const BOOT_CELL: usize = 0x2000_FFF0;
const BOOT_MAGIC: u32 = 0x7B0B_7E1D;

/// This boot's id: one more than the last boot's, 1 on a cold start.
pub fn next_boot_id() -> u32 {
    let magic = BOOT_CELL as *mut u32;
    let counter = (BOOT_CELL + 4) as *mut u32;
    // SAFETY: the two words at BOOT_CELL are RAM of the MPS2 map that the
    // link script leaves out (memory.x), so nothing else aliases them.
    unsafe {
        let last = if read_volatile(magic) == BOOT_MAGIC {
            read_volatile(counter)
        } else {
            0
        };
        let boot = last.wrapping_add(1).max(1);
        write_volatile(counter, boot);
        write_volatile(magic, BOOT_MAGIC);
        boot
    }
}
