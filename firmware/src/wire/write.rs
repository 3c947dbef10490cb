//! Writing the frames a device sends — Hello, Summary and Reading — as postcard
//! bytes by hand (unsigned varints, zigzag signed integers, raw `u8`/`i8`,
//! option tags 0/1, length-prefixed sequences, the variant index of
//! `Message` first), framed by `tributary_core::frame::encode_payload`. The
//! frames are byte for byte `frame::encode`'s (checked by the tests).

use tributary_core::fixed::FixedSummary;
use tributary_core::frame::{
    encode_payload, FrameError, Hello, ReadingFrame, SummaryFrame, MAX_PAYLOAD,
};
use tributary_core::sketch::{Buckets, SharedCounts};

use super::{HELLO, READING, SUMMARY};

/// The largest postcard payload of a frame (version and CRC take 5 bytes).
const PAYLOAD: usize = MAX_PAYLOAD - 5;

/// Appends postcard bytes to a buffer; every write is `None` once it is full.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn byte(&mut self, b: u8) -> Option<()> {
        *self.buf.get_mut(self.len)? = b;
        self.len += 1;
        Some(())
    }

    /// An unsigned varint: 7 bits a byte, least significant first.
    #[inline(never)]
    fn varint(&mut self, mut v: u64) -> Option<()> {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }

    /// A zigzag signed integer (the same value for `i32` and `i64`).
    fn zigzag(&mut self, v: i64) -> Option<()> {
        self.varint(((v << 1) ^ (v >> 63)) as u64)
    }

    /// A string: its length in bytes, then its UTF-8 bytes.
    fn str(&mut self, s: &str) -> Option<()> {
        self.varint(s.len() as u64)?;
        for &b in s.as_bytes() {
            self.byte(b)?;
        }
        Some(())
    }

    /// One sign's offset and counts; a `u8` count is one raw byte.
    fn buckets(&mut self, b: Buckets<'_, SharedCounts>) -> Option<()> {
        self.zigzag(i64::from(b.offset()))?;
        self.varint(b.len() as u64)?;
        for c in b.counts() {
            self.byte(c as u8)?;
        }
        Some(())
    }

    fn summary(&mut self, s: &FixedSummary) -> Option<()> {
        self.byte(s.quantum().exponent() as u8)?;
        self.zigzag(i64::from(s.reference()))?;
        self.varint(u64::from(s.count()))?;
        self.zigzag(s.offset_sum())?;
        self.varint(s.offset_sum_sq())?;
        match s.extent() {
            None => self.byte(0)?,
            Some(e) => {
                self.byte(1)?;
                self.zigzag(i64::from(e.min))?;
                self.zigzag(i64::from(e.max))?;
                for p in [e.first, e.last] {
                    self.varint(u64::from(p.time))?;
                    self.zigzag(i64::from(p.value))?;
                }
            }
        }
        let k = s.sketch();
        self.byte(k.scale() as u8)?;
        self.varint(k.zero_count())?;
        self.buckets(k.positive())?;
        self.buckets(k.negative())
    }
}

/// Writes the payload `body` produces and frames it into `out`.
fn frame(
    out: &mut [u8],
    body: impl FnOnce(&mut Writer<'_>) -> Option<()>,
) -> Result<usize, FrameError> {
    let mut buf = [0u8; PAYLOAD];
    let mut w = Writer {
        buf: &mut buf,
        len: 0,
    };
    body(&mut w).ok_or(FrameError::Oversized)?;
    let n = w.len;
    encode_payload(buf.get(..n).unwrap_or(&[]), out)
}

/// `Message::Summary(f)` as one delimited frame in `out`; the bytes written.
pub(crate) fn encode_summary(f: &SummaryFrame, out: &mut [u8]) -> Result<usize, FrameError> {
    frame(out, |w| {
        w.varint(SUMMARY)?;
        w.varint(u64::from(f.boot))?;
        w.varint(u64::from(f.seq))?;
        w.byte(f.channel)?;
        w.varint(f.start_tick)?;
        w.varint(u64::from(f.width_ms))?;
        w.summary(&f.summary)
    })
}

/// `Message::Hello(h)` as one delimited frame in `out`; the bytes written.
pub(crate) fn encode_hello(h: &Hello, out: &mut [u8]) -> Result<usize, FrameError> {
    frame(out, |w| {
        w.varint(HELLO)?;
        w.str(&h.device)?;
        w.varint(u64::from(h.boot))?;
        w.varint(u64::from(h.first_unacked))?;
        w.str(&h.firmware)?;
        w.varint(u64::from(h.window_ms))?;
        w.varint(h.tick)?;
        w.varint(h.channels.len() as u64)?;
        for c in &h.channels {
            w.byte(c.channel)?;
            w.str(&c.metric)?;
            w.str(&c.unit)?;
            w.byte(c.quantum.exponent() as u8)?;
            w.zigzag(i64::from(c.reference))?;
        }
        let s = &h.stats;
        for n in [
            s.dropped_readings,
            s.coarsened,
            s.sensor_errors,
            s.resent,
            s.corrupt_frames,
        ] {
            w.varint(u64::from(n))?;
        }
        Some(())
    })
}

/// `Message::Reading(r)` as one delimited frame in `out`; the bytes written.
pub(crate) fn encode_reading(r: &ReadingFrame, out: &mut [u8]) -> Result<usize, FrameError> {
    frame(out, |w| {
        w.varint(READING)?;
        w.varint(u64::from(r.boot))?;
        w.varint(u64::from(r.seq))?;
        w.byte(r.channel)?;
        w.varint(r.tick)?;
        w.zigzag(i64::from(r.value))
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;
    use tributary_core::frame::{encode, Message, MAX_FRAME};
    use tributary_core::quantum::Quantum;

    fn core_bytes(msg: &Message) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME];
        let n = encode(msg, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn ours(f: impl FnOnce(&mut [u8]) -> Result<usize, FrameError>) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME];
        let n = f(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn summary_frame(values: &[(u32, i32)], exp: i8, reference: i32, seq: u32) -> SummaryFrame {
        let q = Quantum::new(exp).unwrap();
        let ix = tributary_core::index::DeviceIndex::new(q);
        let mut s = FixedSummary::new(q, reference);
        for &(t, v) in values {
            let _ = s.insert(t, v, &ix);
        }
        SummaryFrame {
            boot: seq.rotate_left(7),
            seq,
            channel: (seq % 251) as u8,
            start_tick: u64::from(seq) << 20,
            width_ms: 60_000,
            summary: s,
        }
    }

    #[test]
    fn empty_and_extreme_summaries_match_core() {
        for values in [
            &[][..],
            &[(0, 0)],
            &[(u32::MAX, i32::MIN), (0, i32::MAX), (7, -1), (7, 1)],
        ] {
            let f = summary_frame(values, -18, i32::MIN, u32::MAX);
            let m = Message::Summary(f.clone());
            assert_eq!(ours(|o| encode_summary(&f, o)), core_bytes(&m));
        }
    }

    #[test]
    fn too_small_an_output_is_an_error() {
        let f = summary_frame(&[(0, 1)], -3, 0, 1);
        let mut out = [0u8; 8];
        assert_eq!(
            encode_summary(&f, &mut out),
            Err(FrameError::BufferTooSmall)
        );
    }

    proptest! {
        #[test]
        fn summary_frames_match_core(
            values in prop::collection::vec(
                (any::<u32>(), prop_oneof![-300i32..300, any::<i32>()]),
                0..300,
            ),
            exp in -18i8..=18,
            reference: i32,
            seq: u32,
        ) {
            let f = summary_frame(&values, exp, reference, seq);
            let m = Message::Summary(f.clone());
            prop_assert_eq!(ours(|o| encode_summary(&f, o)), core_bytes(&m));
        }

        #[test]
        fn hello_frames_match_core(
            device in "[a-z0-9-]{0,32}",
            firmware in "[a-z0-9.]{0,16}",
            boot: u32,
            first_unacked: u32,
            window_ms: u32,
            tick: u64,
            channels in prop::collection::vec(
                (any::<u8>(), "[a-z_]{1,32}", "[a-zA-Z%]{0,8}", -18i8..=18, any::<i32>()),
                0..=tributary_core::frame::MAX_CHANNELS,
            ),
            stats in any::<[u32; 5]>(),
        ) {
            use tributary_core::frame::{ChannelInfo, DeviceStats};
            let mut list = heapless::Vec::new();
            for (channel, metric, unit, exp, reference) in channels {
                let info = ChannelInfo {
                    channel,
                    metric: metric.as_str().try_into().unwrap(),
                    unit: unit.as_str().try_into().unwrap(),
                    quantum: Quantum::new(exp).unwrap(),
                    reference,
                };
                prop_assert!(list.push(info).is_ok());
            }
            let [dropped_readings, coarsened, sensor_errors, resent, corrupt_frames] = stats;
            let h = Hello {
                device: device.as_str().try_into().unwrap(),
                boot,
                first_unacked,
                firmware: firmware.as_str().try_into().unwrap(),
                window_ms,
                tick,
                channels: list,
                stats: DeviceStats { dropped_readings, coarsened, sensor_errors, resent, corrupt_frames },
            };
            prop_assert_eq!(ours(|o| encode_hello(&h, o)), core_bytes(&Message::Hello(h)));
        }

        #[test]
        fn reading_frames_match_core(boot: u32, seq: u32, channel: u8, tick: u64, value: i32) {
            let r = ReadingFrame { boot, seq, channel, tick, value };
            prop_assert_eq!(ours(|o| encode_reading(&r, o)), core_bytes(&Message::Reading(r)));
        }
    }
}
