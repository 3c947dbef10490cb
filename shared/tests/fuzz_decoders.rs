//! Fuzzes every decoder with proptest: arbitrary bytes and mutated valid
//! encodings (bit flips, truncation, insertion, deletion, overwrite) go into
//! `FrameDecoder::push`, `frame::decode_in_place`, `Batch::decode`,
//! `Confirm::decode`, JSON `Summary` and postcard `FixedSummary`. None may
//! panic, and whatever they accept must satisfy its invariants.
//!
//! The number of cases follows `PROPTEST_CASES` (default 256).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use tributary_core::batch::{Batch, Confirm, Encoding, Partial, BATCH_VERSION};
use tributary_core::frame::{
    self, Ack, ChannelInfo, DeviceStats, FrameDecoder, Hello, Message, ReadingFrame, SummaryFrame,
    TimeSync, MAX_FRAME,
};
use tributary_core::series::validate_id;
use tributary_core::{FixedSummary, Incarnation, Quantum, SeriesKey, Summary, Width, Window};

fn fixed() -> FixedSummary {
    let q = Quantum::new(-2).unwrap();
    let ix = tributary_core::index::DeviceIndex::new(q);
    let mut f = FixedSummary::new(q, 100);
    for (i, v) in [150, -7, 0, 0, 1 << 20, -(1 << 25), 99]
        .into_iter()
        .enumerate()
    {
        f.insert(i as u32 * 10, v, &ix).unwrap();
    }
    f
}

fn full() -> Summary {
    let mut s = Summary::new(Quantum::DEFAULT);
    for (i, v) in [5i64, -3, 0, 1 << 40, -(1 << 52), 17, 17]
        .into_iter()
        .enumerate()
    {
        s.insert(i as i64, v).unwrap();
    }
    s
}

fn frames() -> Vec<Vec<u8>> {
    let mut channels = heapless::Vec::new();
    channels
        .push(ChannelInfo {
            channel: 0,
            metric: heapless::String::try_from("temp").unwrap(),
            unit: heapless::String::try_from("degC").unwrap(),
            quantum: Quantum::new(-2).unwrap(),
            reference: 2000,
        })
        .unwrap();
    let msgs = [
        Message::Hello(Hello {
            device: heapless::String::try_from("dev-1").unwrap(),
            boot: 3,
            first_unacked: 9,
            firmware: heapless::String::try_from("0.1.0").unwrap(),
            window_ms: 10_000,
            tick: 123_456,
            channels,
            stats: DeviceStats::default(),
        }),
        Message::Summary(SummaryFrame {
            boot: 3,
            seq: 9,
            channel: 0,
            start_tick: 10_000,
            width_ms: 10_000,
            summary: fixed(),
        }),
        Message::Reading(ReadingFrame {
            boot: 3,
            seq: 10,
            channel: 0,
            tick: 5,
            value: -42,
        }),
        Message::Ack(Ack { boot: 3, seq: 9 }),
        Message::TimeSync(TimeSync {
            unix_ms: 1 << 40,
            hello_tick: Some(7),
        }),
    ];
    msgs.iter()
        .map(|m| {
            let mut buf = [0u8; MAX_FRAME];
            let n = frame::encode(m, &mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

fn batch() -> Batch {
    let mut tags = BTreeMap::new();
    tags.insert("site".to_string(), "north".to_string());
    Batch::new(
        "agent-1",
        77,
        1_000_000,
        vec![Partial {
            series: SeriesKey::new("temp", "dev-1", tags).unwrap(),
            window: Window::new(60_000, Width::new(60_000).unwrap()).unwrap(),
            summary: full(),
        }],
    )
    .with_identity(Incarnation::new(0x0123_4567_89ab_cdef), 70)
}

/// Valid encodings of every decoder's input, to mutate.
fn corpus() -> Vec<Vec<u8>> {
    let mut c = frames();
    c.push(batch().encode(Encoding::Json));
    c.push(batch().encode(Encoding::Binary));
    c.push(
        Confirm::new(
            "agent-1",
            Incarnation::new(0x0123_4567_89ab_cdef),
            vec![1, 2, 3],
        )
        .encode(),
    );
    c.push(serde_json::to_vec(&full()).unwrap());
    c.push(postcard::to_allocvec(&fixed()).unwrap());
    c
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
    Set(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0xFF), Just(b'"'), Just(b'-'), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = bytes.len();
        match *m {
            Mutation::Flip(i, b) if len > 0 => bytes[i % len] ^= 1 << b,
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            _ => {}
        }
    }
    bytes
}

/// Inputs: arbitrary bytes, or a corpus entry with a few mutations.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let corpus = corpus();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..800),
        3 => (0..corpus.len(), prop::collection::vec(mutation(), 1..4))
            .prop_map(move |(k, muts)| apply(corpus[k].clone(), &muts)),
    ]
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Mutated postcard payloads of every message, re-wrapped with the version
/// byte, a correct CRC and COBS, so they reach the message decoder and the
/// summary validation instead of stopping at the CRC.
fn rewrapped() -> impl Strategy<Value = Vec<u8>> {
    let payloads: Vec<Vec<u8>> = frames()
        .into_iter()
        .map(|mut f| {
            f.pop();
            let n = cobs::decode_in_place(&mut f).unwrap();
            f[1..n - 4].to_vec()
        })
        .collect();
    (0..payloads.len(), prop::collection::vec(mutation(), 1..4)).prop_map(move |(k, muts)| {
        let mut raw = vec![frame::FRAME_VERSION];
        raw.extend(apply(payloads[k].clone(), &muts));
        let crc = CRC.checksum(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        let mut out = vec![0u8; raw.len() + raw.len() / 254 + 2];
        let n = cobs::encode(&raw, &mut out);
        out.truncate(n);
        out
    })
}

/// An accepted message must be valid and survive a re-encode.
fn check_message(m: &Message) {
    if let Message::Summary(s) = m {
        s.summary.validate().unwrap();
    }
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(m, &mut buf).unwrap();
    assert_eq!(&frame::decode_in_place(&mut buf[..n - 1]).unwrap(), m);
}

fn check_batch(b: &Batch) {
    assert_eq!(b.v, BATCH_VERSION);
    validate_id("agent id", &b.agent).unwrap();
    for p in &b.partials {
        p.summary.validate().unwrap();
        let k = &p.series;
        SeriesKey::new(k.metric(), k.device(), k.tags().clone()).unwrap();
        Window::new(p.window.start(), p.window.width()).unwrap();
    }
    // Accepted batches re-encode to something that decodes to the same.
    for enc in [Encoding::Json, Encoding::Binary] {
        assert_eq!(&Batch::decode(&b.encode(enc)).unwrap(), b);
    }
}

proptest! {
    #[test]
    fn frame_decoders_never_panic_and_accept_only_valid(bytes in input()) {
        // Streamed, with a big and a small buffer, then a good frame that
        // must still decode (resynchronisation).
        let good = frames().pop().unwrap();
        let mut stream = bytes.clone();
        stream.push(0);
        stream.extend_from_slice(&good);
        let mut big = FrameDecoder::<MAX_FRAME>::new();
        let mut small = FrameDecoder::<24>::new();
        let mut last_big = None;
        for &b in &stream {
            if let Some(r) = big.push(b) {
                if let Ok(m) = &r {
                    check_message(m);
                }
                last_big = Some(r);
            }
            if let Some(Ok(m)) = small.push(b) {
                check_message(&m);
            }
        }
        prop_assert_eq!(last_big, Some(Ok(Message::TimeSync(TimeSync { unix_ms: 1 << 40, hello_tick: Some(7) }))));
        // In place, with and without the delimiter.
        let mut copy = bytes.clone();
        if let Ok(m) = frame::decode_in_place(&mut copy) {
            check_message(&m);
        }
        if let Some(cut) = bytes.iter().position(|&b| b == 0) {
            let mut copy = bytes[..cut].to_vec();
            if let Ok(m) = frame::decode_in_place(&mut copy) {
                check_message(&m);
            }
        }
    }

    #[test]
    fn rewrapped_payloads_decode_only_to_valid_messages(bytes in rewrapped()) {
        let mut copy = bytes.clone();
        match frame::decode_in_place(&mut copy) {
            Ok(m) => check_message(&m),
            Err(e) => prop_assert!(
                matches!(e, frame::FrameError::Malformed | frame::FrameError::Oversized),
                "{:?}", e
            ),
        }
    }

    #[test]
    fn batch_and_confirm_decoders_never_panic_and_accept_only_valid(bytes in input()) {
        if let Ok(b) = Batch::decode(&bytes) {
            check_batch(&b);
        }
        if let Ok(c) = Confirm::decode(&bytes) {
            prop_assert_eq!(c.v, BATCH_VERSION);
            validate_id("agent id", &c.agent).unwrap();
        }
        // Errors render to text without panicking.
        if let Err(e) = Batch::decode(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn summary_decoders_never_panic_and_accept_only_valid(bytes in input()) {
        if let Ok(s) = serde_json::from_slice::<Summary>(&bytes) {
            s.validate().unwrap();
            // Statistics of any accepted summary are never NaN.
            for x in [s.mean(), s.variance(), s.stddev(), s.quantile(0.5).map(|q| q.value)]
                .into_iter()
                .flatten()
            {
                prop_assert!(!x.is_nan());
            }
        }
        if let Ok(f) = postcard::from_bytes::<FixedSummary>(&bytes) {
            f.validate().unwrap();
            Summary::from_fixed(&f, 0).validate().unwrap();
        }
    }
}
