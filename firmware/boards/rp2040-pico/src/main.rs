//! Tributary on a Raspberry Pi Pico (RP2040, Cortex-M0+): an SHT3x on I²C0
//! (GP4 SDA, GP5 SCL, 100 kHz), the aggregator and link, Hello until the
//! gateway's TimeSync (the firmware's `Session`), over UART0 (GP0 TX, GP1 RX, 115 200 8N1) to the
//! gateway's `[[serial]]` port (e.g. a USB-serial adapter). The same loop as
//! the QEMU image (`firmware/qemu/src/main.rs`, which the end-to-end test
//! runs), on the board's peripherals:
//!
//! - the clock: the RP2040's 1 MHz 64-bit timer, in ms;
//! - the boot id: 32 bits of the ring oscillator's random bit, so a reset
//!   or power cycle gives the gateway a new boot (a repeat is a 2⁻³² chance);
//! - the measurement wait (16 ms) on the same timer.
#![no_std]
#![no_main]

use embedded_hal_nb::serial::Read as _;
use rp2040_hal::clocks::init_clocks_and_plls;
use rp2040_hal::fugit::RateExtU32;
use rp2040_hal::gpio::{FunctionI2C, FunctionUart, Pin, PullUp};
use rp2040_hal::uart::{DataBits, StopBits, UartConfig, UartPeripheral};
use rp2040_hal::{Clock as _, I2C, Sio, Timer, Watchdog, entry, pac};
use tributary_firmware::drivers::sht3x::{self, Sht3x};
use tributary_firmware::{Aggregator, Link, Mode, Sensor, Session, SessionConfig};

/// The second-stage bootloader for the Pico's W25Q080 flash.
#[unsafe(link_section = ".boot2")]
#[used]
static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

/// The Pico's crystal.
const XTAL_HZ: u32 = 12_000_000;
/// 60 s windows (they must divide the agent's), a reading a second; a
/// USB-serial adapter adds a few ms each way: round trips up to 200 ms.
const SESSION: SessionConfig =
    SessionConfig::new("pico-sht3x", env!("CARGO_PKG_VERSION"), 60_000, 1_000).max_rtt(200);
/// A frame not acked this long after it was sent is sent again.
const RESEND_MS: u64 = 5_000;

fn halt() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    halt()
}

/// A boot id from the ring oscillator's random bit (never 0).
fn random_boot(rosc: &pac::ROSC) -> u32 {
    let mut id = 0u32;
    for _ in 0..32 {
        id = (id << 1) | u32::from(rosc.randombit().read().randombit().bit());
    }
    id.max(1)
}

/// The device's super-loop: the board's peripherals set up, then each turn
/// reads the UART, syncs (the firmware's `Session`), samples, frames and
/// sends in that order. Long only for the HAL's setup.
#[entry]
fn main() -> ! {
    let Some(mut p) = pac::Peripherals::take() else {
        halt()
    };
    let boot = random_boot(&p.ROSC);
    let mut watchdog = Watchdog::new(p.WATCHDOG);
    let Ok(clocks) = init_clocks_and_plls(
        XTAL_HZ,
        p.XOSC,
        p.CLOCKS,
        p.PLL_SYS,
        p.PLL_USB,
        &mut p.RESETS,
        &mut watchdog,
    ) else {
        halt()
    };
    let sio = Sio::new(p.SIO);
    let pins = rp2040_hal::gpio::Pins::new(p.IO_BANK0, p.PADS_BANK0, sio.gpio_bank0, &mut p.RESETS);
    let timer = Timer::new(p.TIMER, &mut p.RESETS, &clocks);
    let uart_pins = (
        pins.gpio0.into_function::<FunctionUart>(),
        pins.gpio1.into_function::<FunctionUart>(),
    );
    let config = UartConfig::new(115_200.Hz(), DataBits::Eight, None, StopBits::One);
    let Ok(mut uart) = UartPeripheral::new(p.UART0, uart_pins, &mut p.RESETS)
        .enable(config, clocks.peripheral_clock.freq())
    else {
        halt()
    };
    let sda: Pin<_, FunctionI2C, PullUp> = pins.gpio4.reconfigure();
    let scl: Pin<_, FunctionI2C, PullUp> = pins.gpio5.reconfigure();
    let i2c = I2C::i2c0(
        p.I2C0,
        sda,
        scl,
        100.kHz(),
        &mut p.RESETS,
        &clocks.system_clock,
    );
    let mut sensor = Sht3x::new(i2c, timer, sht3x::DEFAULT_ADDRESS);
    let Ok(mut agg) =
        Aggregator::<2>::new(sensor.channels(), boot, SESSION.window_ms, Mode::Aggregate)
    else {
        halt()
    };
    let mut link = Link::<16, 128>::new(RESEND_MS);
    let mut session = Session::new(SESSION, boot);
    loop {
        let now = session.now((timer.get_counter().ticks() / 1_000) as u32);
        while let Ok(byte) = uart.read() {
            session.receive(now, &[byte], &mut link, &mut agg);
        }
        if !session.synced() {
            let mut tx = |bytes: &[u8]| uart.write_full_blocking(bytes);
            session.hello(now, sensor.channels(), &agg, &mut link, &mut tx);
            continue;
        }
        if session.sample_due(now) {
            agg.poll(now, &mut sensor, &mut |m| link.enqueue(m));
        }
        agg.close_due(now, &mut |m| link.enqueue(m));
        link.poll(now, &mut |bytes: &[u8]| uart.write_full_blocking(bytes));
    }
}
