//! Driver transaction tests against embedded-hal-mock: the SHT3x and TMP102
//! command sequences, conversions, CRC mismatch and NACK, and that a failed
//! read is counted by the aggregator and never folded into a summary.

use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
use embedded_hal_mock::eh1::delay::{CheckedDelay, NoopDelay, Transaction as D};
use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
use tributary_core::frame::Message;
use tributary_firmware::drivers::{sht3x, tmp102};
use tributary_firmware::{Aggregator, Mode, Sensor};

#[test]
fn sht3x_crc_matches_the_datasheet_example() {
    assert_eq!(sht3x::crc8(&[0xBE, 0xEF]), 0x92);
}

#[test]
fn sht3x_conversions() {
    assert_eq!(sht3x::millicelsius(0), -45_000);
    assert_eq!(sht3x::millicelsius(0xFFFF), 130_000);
    assert_eq!(sht3x::millicelsius(0x6666), 25_000);
    assert_eq!(sht3x::millipercent(0xFFFF), 100_000);
    assert_eq!(sht3x::millipercent(0x8000), 50_000);
}

/// Every raw word converts as the datasheet's formula does in exact
/// 64-bit arithmetic, rounded toward −∞ (the driver uses 32-bit steps).
#[test]
fn sht3x_conversions_match_the_formula_for_every_raw_word() {
    for raw in 0..=u16::MAX {
        let r = i64::from(raw);
        let t = (175_000 * r).div_euclid(65_535) - 45_000;
        let h = (100_000 * r).div_euclid(65_535);
        assert_eq!(i64::from(sht3x::millicelsius(raw)), t, "raw {raw}");
        assert_eq!(i64::from(sht3x::millipercent(raw)), h, "raw {raw}");
    }
}

fn frame(t: u16, h: u16) -> Vec<u8> {
    let [t0, t1] = t.to_be_bytes();
    let [h0, h1] = h.to_be_bytes();
    vec![
        t0,
        t1,
        sht3x::crc8(&[t0, t1]),
        h0,
        h1,
        sht3x::crc8(&[h0, h1]),
    ]
}

#[test]
fn sht3x_single_shot_reads_both_channels() {
    let i2c = Mock::new(&[
        T::write(0x44, vec![0x24, 0x00]),
        T::read(0x44, frame(0x6666, 0x8000)),
    ]);
    let delay = CheckedDelay::new(&[D::blocking_delay_ms(16)]);
    let mut s = sht3x::Sht3x::new(i2c, delay, sht3x::DEFAULT_ADDRESS);
    let mut out = [0; 2];
    s.measure(&mut out).unwrap();
    assert_eq!(out, [25_000, 50_000]);
    let (mut i2c, mut delay) = s.destroy();
    i2c.done();
    delay.done();
}

#[test]
fn sht3x_crc_mismatch_and_nack_are_errors() {
    let mut bad = frame(0x6666, 0x8000);
    bad[5] ^= 1;
    let i2c = Mock::new(&[
        T::write(0x44, vec![0x24, 0x00]),
        T::read(0x44, bad),
        T::write(0x44, vec![0x24, 0x00])
            .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)),
        T::write(0x44, vec![0x24, 0x00]),
        T::read(0x44, frame(0x6666, 0x8000)),
    ]);
    let mut s = sht3x::Sht3x::new(i2c, NoopDelay::new(), 0x44);
    assert_eq!(s.read(), Err(sht3x::Error::Crc));
    assert_eq!(
        s.read(),
        Err(sht3x::Error::I2c(ErrorKind::NoAcknowledge(
            NoAcknowledgeSource::Address
        )))
    );
    assert_eq!(s.read(), Ok((25_000, 50_000)));
    assert_eq!(s.measure(&mut [0; 1]), Err(sht3x::Error::Buffer));
    s.destroy().0.done();
}

#[test]
fn failed_reads_are_counted_not_aggregated() {
    let mut bad = frame(0x6666, 0x8000);
    bad[2] ^= 0xFF;
    let i2c = Mock::new(&[
        T::write(0x44, vec![0x24, 0x00]),
        T::read(0x44, frame(0x6666, 0x8000)),
        T::write(0x44, vec![0x24, 0x00]),
        T::read(0x44, bad),
        T::write(0x44, vec![0x24, 0x00]).with_error(ErrorKind::Bus),
    ]);
    let mut s = sht3x::Sht3x::new(i2c, NoopDelay::new(), 0x44);
    let mut agg = Aggregator::<2>::new(s.channels(), 1, 10_000, Mode::Aggregate).unwrap();
    let mut frames = Vec::new();
    for t in 0..3 {
        agg.poll(t * 1_000, &mut s, &mut |m| frames.push(m));
    }
    agg.flush(&mut |m| frames.push(m));
    assert_eq!(agg.stats().sensor_errors, 2);
    assert_eq!(frames.len(), 2);
    for m in frames {
        let Message::Summary(f) = m else { panic!() };
        assert_eq!(f.summary.count(), 1);
    }
    s.destroy().0.done();
}

#[test]
fn tmp102_reads_signed_12_bit_temperature() {
    let i2c = Mock::new(&[
        T::write_read(0x48, vec![0x00], vec![0x19, 0x00]), // 25 °C
        T::write_read(0x48, vec![0x00], vec![0xE7, 0x00]), // −25 °C
        T::write_read(0x48, vec![0x00], vec![0x00, 0x10]), // 0.0625 °C
        T::write_read(0x48, vec![0x00], vec![0, 0])
            .with_error(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data)),
    ]);
    let mut s = tmp102::Tmp102::new(i2c, tmp102::DEFAULT_ADDRESS);
    assert_eq!(s.read(), Ok(250_000));
    assert_eq!(s.read(), Ok(-250_000));
    let mut out = [0];
    s.measure(&mut out).unwrap();
    assert_eq!(out, [625]);
    assert!(matches!(s.read(), Err(tmp102::Error::I2c(_))));
    assert_eq!(s.measure(&mut []), Err(tmp102::Error::Buffer));
    s.destroy().done();
}
