//! Reading the postcard bytes of the kinds a device accepts: a checked
//! gateway payload (`frame::payload_in_place`) as an Ack or a TimeSync, and
//! its own stored Summary frames when coarsening.
//!
//! The reader takes exactly postcard's encoding of those (varints as
//! postcard bounds them, zigzag signed integers, raw `u8`/`i8`, option tags
//! 0/1, length-prefixed sequences, the variant index of [`Message`] first)
//! and builds the values through the validating constructors serde's path
//! uses, so it accepts and rejects exactly what
//! `postcard::take_from_bytes::<Message>` does for these kinds (the tests
//! check this on valid and on mutated payloads). Every other kind is refused
//! without being read: postcard payloads cannot be skipped, and a device has
//! no use for them.

use tributary_core::extent::{Extent, Point};
use tributary_core::fixed::FixedSummary;
use tributary_core::frame::{Ack, Message, SummaryFrame, TimeSync};
use tributary_core::quantum::Quantum;
use tributary_core::sketch::{FixedSketch, SharedCounts};

use super::{ACK, SUMMARY, TIME_SYNC};

/// A cursor over postcard bytes; every read is `None` past the end or on
/// an encoding postcard rejects.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// One raw byte (`u8`, `i8`, option tags).
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// An unsigned varint of a `bits`-wide integer: at most ⌈bits/7⌉ bytes,
    /// and a last byte of that length may carry only the remaining bits.
    #[inline(never)]
    fn varint(&mut self, bits: u32) -> Option<u64> {
        let max = bits.div_ceil(7);
        let mut out = 0u64;
        for i in 0..max {
            let b = self.byte()?;
            out |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                let last_bits = bits - 7 * (max - 1);
                return (i + 1 < max || u32::from(b) < 1 << last_bits).then_some(out);
            }
        }
        None
    }

    fn u32(&mut self) -> Option<u32> {
        self.varint(32).map(|v| v as u32)
    }

    fn u64(&mut self) -> Option<u64> {
        self.varint(64)
    }

    /// A zigzag `i32`.
    fn i32(&mut self) -> Option<i32> {
        let n = self.u32()?;
        Some((n >> 1) as i32 ^ -((n & 1) as i32))
    }

    /// A zigzag `i64`.
    fn i64(&mut self) -> Option<i64> {
        let n = self.u64()?;
        Some((n >> 1) as i64 ^ -((n & 1) as i64))
    }

    /// A sequence length (`usize`, as wide as the target's).
    fn len(&mut self) -> Option<u64> {
        self.varint(usize::BITS)
    }

    /// An option tag: `Some(true)` for a value, `Some(false)` for none.
    fn option(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// The remaining bytes must be none.
    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }

    fn point(&mut self) -> Option<Point<u32, i32>> {
        Some(Point {
            time: self.u32()?,
            value: self.i32()?,
        })
    }

    fn extent(&mut self) -> Option<Extent<u32, i32>> {
        Some(Extent {
            min: self.i32()?,
            max: self.i32()?,
            first: self.point()?,
            last: self.point()?,
        })
    }

    /// `n` raw bytes.
    fn bytes(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        if n > self.rest.len() {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    /// One sign's offset and `u8` counts (raw bytes in postcard).
    fn buckets(&mut self) -> Option<(i32, &'a [u8])> {
        let offset = self.i32()?;
        let n = self.len()?;
        // More than one sign's share of the store fails here, as heapless's
        // visitor does (its capacity is the whole store).
        if n > SharedCounts::LIMIT as u64 {
            return None;
        }
        Some((offset, self.bytes(n)?))
    }

    fn sketch(&mut self) -> Option<FixedSketch> {
        let scale = self.byte()? as i8;
        let zero = self.u64()?;
        let positive = self.buckets()?;
        let negative = self.buckets()?;
        FixedSketch::from_parts(scale, zero, positive, negative).ok()
    }

    fn summary(&mut self) -> Option<FixedSummary> {
        let quantum = Quantum::new(self.byte()? as i8).ok()?;
        let reference = self.i32()?;
        let count = self.u32()?;
        let sum = self.i64()?;
        let sum_sq = self.u64()?;
        let extent = if self.option()? {
            Some(self.extent()?)
        } else {
            None
        };
        let sketch = self.sketch()?;
        FixedSummary::from_parts(quantum, reference, count, sum, sum_sq, extent, sketch).ok()
    }
}

/// The gateway → device message in `payload` (which it must fill exactly),
/// or `None` for anything else.
pub(crate) fn downlink(payload: &[u8]) -> Option<Message> {
    let mut r = Reader::new(payload);
    let msg = match r.u32()? as u64 {
        ACK => Message::Ack(Ack {
            boot: r.u32()?,
            seq: r.u32()?,
        }),
        TIME_SYNC => Message::TimeSync(TimeSync {
            unix_ms: r.i64()?,
            hello_tick: if r.option()? { Some(r.u64()?) } else { None },
        }),
        _ => return None,
    };
    r.end()?;
    Some(msg)
}

/// The Summary frame in `payload` (which it must fill exactly), or `None`.
pub(crate) fn stored_summary(payload: &[u8]) -> Option<SummaryFrame> {
    let mut r = Reader::new(payload);
    if r.u32()? as u64 != SUMMARY {
        return None;
    }
    let frame = SummaryFrame {
        boot: r.u32()?,
        seq: r.u32()?,
        channel: r.byte()?,
        start_tick: r.u64()?,
        width_ms: r.u32()?,
        summary: r.summary()?,
    };
    r.end()?;
    Some(frame)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;
    use tributary_core::frame::{encode, payload_in_place, ReadingFrame, MAX_FRAME};

    /// The checked postcard payload of `msg`'s frame.
    fn payload(msg: &Message) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME];
        let n = encode(msg, &mut buf).unwrap();
        payload_in_place(&mut buf[..n - 1]).unwrap().to_vec()
    }

    /// What serde's full decoder makes of `payload`.
    fn serde_message(payload: &[u8]) -> Option<Message> {
        match postcard::take_from_bytes::<Message>(payload) {
            Ok((m, [])) => Some(m),
            _ => None,
        }
    }

    fn serde_summary(payload: &[u8]) -> Option<SummaryFrame> {
        match serde_message(payload) {
            Some(Message::Summary(f)) => Some(f),
            _ => None,
        }
    }

    fn serde_downlink(payload: &[u8]) -> Option<Message> {
        serde_message(payload).filter(|m| matches!(m, Message::Ack(_) | Message::TimeSync(_)))
    }

    fn summary_frame(values: &[(u32, i32)], reference: i32, seq: u32) -> SummaryFrame {
        let q = Quantum::new(-3).unwrap();
        let ix = tributary_core::index::DeviceIndex::new(q);
        let mut s = FixedSummary::new(q, reference);
        for &(t, v) in values {
            // Overflowing readings are skipped, as the aggregator would.
            let _ = s.insert(t, v, &ix);
        }
        SummaryFrame {
            boot: 0xDEAD_BEEF,
            seq,
            channel: 3,
            start_tick: u64::MAX - 5,
            width_ms: 10_000,
            summary: s,
        }
    }

    #[test]
    fn parses_every_accepted_kind_and_refuses_the_rest() {
        let f = summary_frame(&[(0, 5), (10, -70_000), (20, 0), (30, i32::MAX)], -7, 9);
        let summary = Message::Summary(f.clone());
        assert_eq!(stored_summary(&payload(&summary)), Some(f));
        assert_eq!(downlink(&payload(&summary)), None);
        for m in [
            Message::Ack(Ack {
                boot: u32::MAX,
                seq: 0,
            }),
            Message::TimeSync(TimeSync {
                unix_ms: i64::MIN,
                hello_tick: None,
            }),
            Message::TimeSync(TimeSync {
                unix_ms: 1_700_000_000_000,
                hello_tick: Some(u64::MAX),
            }),
        ] {
            assert_eq!(downlink(&payload(&m)), Some(m.clone()));
            assert_eq!(stored_summary(&payload(&m)), None);
        }
        let reading = Message::Reading(ReadingFrame {
            boot: 1,
            seq: 2,
            channel: 0,
            tick: 3,
            value: 4,
        });
        assert_eq!(downlink(&payload(&reading)), None);
        assert_eq!(stored_summary(&payload(&reading)), None);
    }

    #[test]
    fn varints_are_bounded_as_postcard_bounds_them() {
        // Ack{boot, seq}: u32 varints of at most 5 bytes, the last ≤ 0x0F.
        let ack = |boot: &[u8]| [&[3u8][..], boot, &[0]].concat();
        assert!(downlink(&ack(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F])).is_some());
        assert!(downlink(&ack(&[0xFF, 0xFF, 0xFF, 0xFF, 0x10])).is_none());
        assert!(downlink(&ack(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00])).is_none());
        // Non-canonical but in range: postcard accepts it, and so do we.
        assert_eq!(
            downlink(&ack(&[0x81, 0x00])),
            serde_downlink(&ack(&[0x81, 0x00]))
        );
        assert!(downlink(&ack(&[0x81, 0x00])).is_some());
        // Trailing bytes and truncation.
        assert!(downlink(&[3, 1, 2, 0]).is_none());
        assert!(downlink(&[3, 1]).is_none());
        assert!(downlink(&[]).is_none());
    }

    fn readings() -> impl Strategy<Value = Vec<(u32, i32)>> {
        prop::collection::vec(
            (
                0u32..20_000,
                prop_oneof![
                    -100i32..100,
                    -2_000_000i32..2_000_000,
                    any::<i32>(),
                    Just(0)
                ],
            ),
            0..60,
        )
    }

    proptest! {
        #[test]
        fn summary_parse_equals_serde(values in readings(), reference in -1000i32..1000, seq: u32) {
            let f = summary_frame(&values, reference, seq);
            let p = payload(&Message::Summary(f.clone()));
            prop_assert_eq!(stored_summary(&p), Some(f));
        }

        /// On corrupted payloads (bytes changed, cut or added) the hand
        /// parser agrees with serde's: the same frame, or both refuse.
        #[test]
        fn mutated_summary_parse_equals_serde(
            values in readings(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
            extra in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut p = payload(&Message::Summary(summary_frame(&values, 0, 1)));
            for (i, b) in edits {
                let k = i.index(p.len());
                p[k] = b;
            }
            if let Some(c) = cut {
                p.truncate(c.index(p.len() + 1));
            }
            p.extend(extra);
            prop_assert_eq!(stored_summary(&p), serde_summary(&p));
            prop_assert_eq!(downlink(&p), serde_downlink(&p));
        }

        #[test]
        fn random_bytes_parse_equals_serde(p in prop::collection::vec(any::<u8>(), 0..24)) {
            prop_assert_eq!(downlink(&p), serde_downlink(&p));
            prop_assert_eq!(stored_summary(&p), serde_summary(&p));
        }

        #[test]
        fn downlink_parse_equals_serde(boot: u32, seq: u32, unix_ms: i64, hello_tick: Option<u64>, tweak: u8, at in any::<prop::sample::Index>()) {
            for m in [Message::Ack(Ack { boot, seq }), Message::TimeSync(TimeSync { unix_ms, hello_tick })] {
                let mut p = payload(&m);
                prop_assert_eq!(downlink(&p), Some(m));
                let k = at.index(p.len());
                p[k] = tweak;
                prop_assert_eq!(downlink(&p), serde_downlink(&p));
            }
        }
    }
}
