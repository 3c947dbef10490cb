//! Sensirion SHT3x (SHT30/31/35) temperature and humidity sensor: single-shot
//! measurement, high repeatability, no clock stretching (command 0x2400),
//! every word CRC-8 checked (datasheet §4.12: polynomial 0x31, init 0xFF).
//!
//! Readings are integers: temperature in m°C (`T = −45 + 175·raw/65535 °C`)
//! and relative humidity in m% (`RH = 100·raw/65535 %`), computed in integer
//! arithmetic and rounded toward negative infinity.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use tributary_core::index::DeviceIndex;

use crate::sensor::{index, ChannelSpec, Sensor};

/// The default I²C address (ADDR pin low); 0x45 with ADDR high.
pub const DEFAULT_ADDRESS: u8 = 0x44;
/// Single shot, high repeatability, clock stretching disabled.
const MEASURE_HIGH: [u8; 2] = [0x24, 0x00];
/// Maximum measurement duration at high repeatability is 15.5 ms.
const MEASURE_MS: u32 = 16;

/// The bucket table of both channels' quantum, 10⁻³ (one copy in flash).
static MILLI: DeviceIndex = index(-3);

/// The channels: temperature (m°C) and relative humidity (m%).
pub const CHANNELS: [ChannelSpec; 2] = [
    ChannelSpec {
        metric: "temperature",
        unit: "degC",
        index: &MILLI,
        reference: 20_000,
    },
    ChannelSpec {
        metric: "humidity",
        unit: "pct",
        index: &MILLI,
        reference: 50_000,
    },
];

/// Why a measurement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The bus reported an error (including NACK).
    I2c(E),
    /// A data word did not match its CRC.
    Crc,
    /// The output slice is shorter than the two channels.
    Buffer,
}

/// CRC-8 of the SHT3x: polynomial 0x31, init 0xFF, no reflection, no xor-out.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Temperature in m°C from a raw word: ⌊175 000·raw / 65 535⌋ − 45 000.
/// In 32-bit arithmetic (a 64-bit division is a library routine on a
/// Cortex-M): 175 000 = 2·65 535 + 43 930, and 43 930·65 535 < 2³².
pub fn millicelsius(raw: u16) -> i32 {
    let r = u32::from(raw);
    // ≤ 175 000: fits an i32.
    (2 * r + 43_930 * r / 65_535) as i32 - 45_000
}

/// Relative humidity in m% from a raw word: ⌊100 000·raw / 65 535⌋, in
/// 32-bit arithmetic (100 000 = 65 535 + 34 465, 34 465·65 535 < 2³²).
pub fn millipercent(raw: u16) -> i32 {
    let r = u32::from(raw);
    // ≤ 100 000: fits an i32.
    (r + 34_465 * r / 65_535) as i32
}

/// An SHT3x on an I²C bus; owns the bus and a delay.
#[derive(Debug)]
pub struct Sht3x<I, D> {
    i2c: I,
    delay: D,
    address: u8,
}

impl<I: I2c, D: DelayNs> Sht3x<I, D> {
    /// A driver for the sensor at `address` (usually [`DEFAULT_ADDRESS`]).
    pub fn new(i2c: I, delay: D, address: u8) -> Self {
        Sht3x {
            i2c,
            delay,
            address,
        }
    }

    /// Gives the bus and delay back.
    pub fn destroy(self) -> (I, D) {
        (self.i2c, self.delay)
    }

    /// Takes one single-shot measurement: (m°C, m%).
    pub fn read(&mut self) -> Result<(i32, i32), Error<I::Error>> {
        self.i2c
            .write(self.address, &MEASURE_HIGH)
            .map_err(Error::I2c)?;
        self.delay.delay_ms(MEASURE_MS);
        let mut buf = [0u8; 6];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;
        let [t0, t1, tc, h0, h1, hc] = buf;
        if crc8(&[t0, t1]) != tc || crc8(&[h0, h1]) != hc {
            return Err(Error::Crc);
        }
        Ok((
            millicelsius(u16::from_be_bytes([t0, t1])),
            millipercent(u16::from_be_bytes([h0, h1])),
        ))
    }
}

impl<I: I2c, D: DelayNs> Sensor for Sht3x<I, D> {
    type Error = Error<I::Error>;

    fn channels(&self) -> &'static [ChannelSpec] {
        &CHANNELS
    }

    fn measure(&mut self, out: &mut [i32]) -> Result<(), Self::Error> {
        let [t, h, ..] = out else {
            return Err(Error::Buffer);
        };
        let (tv, hv) = self.read()?;
        *t = tv;
        *h = hv;
        Ok(())
    }
}
