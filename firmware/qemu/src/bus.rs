//! A scripted I²C bus that answers like an SHT3x: every single-shot
//! measurement returns the next pair of raw words of a seeded xorshift
//! sequence, with the sensor's CRC-8 — so the real driver (command, CRC
//! check, conversion) runs on it. The image logs what the driver returns
//! (`log`), so the test never has to replay this sequence.

use core::convert::Infallible;

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorType, I2c, Operation};
use tributary_firmware::drivers::sht3x;

/// The scripted SHT3x.
pub struct ScriptedSht3x {
    state: u32,
}

impl ScriptedSht3x {
    /// A sequence from `seed` (any value; 0 is replaced).
    pub fn new(seed: u32) -> Self {
        ScriptedSht3x { state: seed.max(1) }
    }

    fn next(&mut self) -> u32 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        x
    }
}

impl ErrorType for ScriptedSht3x {
    type Error = Infallible;
}

impl I2c for ScriptedSht3x {
    fn transaction(&mut self, _addr: u8, ops: &mut [Operation<'_>]) -> Result<(), Infallible> {
        for op in ops {
            if let Operation::Read(buf) = op {
                let x = self.next();
                // About 18…30 °C and 40…60 %RH, changing every reading.
                let t = (0x6000 + (x & 0x0FFF) as u16).to_be_bytes();
                let h = (0x6600 + ((x >> 16) & 0x1FFF) as u16).to_be_bytes();
                let words = [t[0], t[1], sht3x::crc8(&t), h[0], h[1], sht3x::crc8(&h)];
                for (b, w) in buf.iter_mut().zip(words) {
                    *b = w;
                }
            }
        }
        Ok(())
    }
}

/// The measurement wait: the scripted sensor answers at once.
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}
