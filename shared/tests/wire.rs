//! The wire formats (DESIGN §5): round trips of every device-link message and
//! of batches and confirmations, golden bytes that pin the formats, rejection
//! of every corruption class, and the worst-case frame sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use tributary_core::batch::{Batch, BatchError, Confirm, Encoding, Partial, BINARY_MAGIC};
use tributary_core::frame::{
    self, Ack, ChannelInfo, DeviceStats, FrameDecoder, FrameError, Hello, Message, ReadingFrame,
    SummaryFrame, TimeSync, FRAME_VERSION, MAX_CHANNELS, MAX_FRAME, MAX_PAYLOAD,
};
use tributary_core::incarnation::Incarnation;
use tributary_core::index::DeviceIndex;
use tributary_core::{FixedSummary, Quantum, SeriesKey, Summary, Width, Window};

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

fn hs<const N: usize>(s: &str) -> heapless::String<N> {
    heapless::String::try_from(s).unwrap()
}

fn small_fixed() -> FixedSummary {
    let q = Quantum::new(-2).unwrap();
    let ix = DeviceIndex::new(q);
    let mut f = FixedSummary::new(q, 2000);
    f.insert(0, 2150, &ix).unwrap();
    f.insert(1000, 1990, &ix).unwrap();
    f.insert(2000, 0, &ix).unwrap();
    f.insert(3000, -15, &ix).unwrap();
    f
}

fn hello(n_channels: usize, name_len: usize) -> Hello {
    let mut channels = heapless::Vec::new();
    for c in 0..n_channels {
        let metric: String = std::iter::once('m')
            .chain(std::iter::repeat_n('x', name_len - 1))
            .collect();
        channels
            .push(ChannelInfo {
                channel: c as u8,
                metric: hs(&metric),
                unit: hs("degC_abc"),
                quantum: Quantum::new(-18).unwrap(),
                reference: i32::MIN,
            })
            .unwrap();
    }
    Hello {
        device: hs(&"d".repeat(32)),
        boot: u32::MAX,
        first_unacked: u32::MAX,
        firmware: hs(&"f".repeat(16)),
        window_ms: u32::MAX,
        tick: u64::MAX,
        channels,
        stats: DeviceStats {
            dropped_readings: u32::MAX,
            coarsened: u32::MAX,
            sensor_errors: u32::MAX,
            resent: u32::MAX,
            corrupt_frames: u32::MAX,
        },
    }
}

fn every_message() -> Vec<Message> {
    vec![
        Message::Hello(hello(2, 11)),
        Message::Summary(SummaryFrame {
            boot: 7,
            seq: 42,
            channel: 1,
            start_tick: 120_000,
            width_ms: 60_000,
            summary: small_fixed(),
        }),
        Message::Summary(SummaryFrame {
            boot: 7,
            seq: 43,
            channel: 0,
            start_tick: 0,
            width_ms: 1,
            summary: FixedSummary::new(Quantum::DEFAULT, 0),
        }),
        Message::Reading(ReadingFrame {
            boot: 1,
            seq: 2,
            channel: 3,
            tick: 4,
            value: -5,
        }),
        Message::Ack(Ack { boot: 9, seq: 10 }),
        Message::TimeSync(TimeSync {
            unix_ms: 1_764_000_000_000,
            hello_tick: None,
        }),
        Message::TimeSync(TimeSync {
            unix_ms: 1_764_000_000_000,
            hello_tick: Some(u64::MAX),
        }),
    ]
}

fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(msg, &mut buf).unwrap();
    assert_eq!(buf[n - 1], 0, "frames end with the delimiter");
    assert!(!buf[..n - 1].contains(&0), "COBS leaves no zero inside");
    buf[..n].to_vec()
}

/// A delimited frame of arbitrary raw contents (version ‖ payload ‖ crc).
fn raw_frame(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; raw.len() + raw.len() / 254 + 2];
    let n = cobs::encode(raw, &mut out);
    out.truncate(n);
    out.push(0);
    out
}

/// version ‖ payload ‖ a correct CRC.
fn with_crc(version: u8, payload: &[u8]) -> Vec<u8> {
    let mut raw = vec![version];
    raw.extend_from_slice(payload);
    let crc = CRC.checksum(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    raw
}

fn feed<const N: usize>(
    dec: &mut FrameDecoder<N>,
    bytes: &[u8],
) -> Vec<Result<Message, FrameError>> {
    bytes.iter().filter_map(|&b| dec.push(b)).collect()
}

#[test]
fn every_message_round_trips_byte_by_byte_back_to_back() {
    let msgs = every_message();
    let mut stream = vec![0u8, 0]; // idle delimiters are ignored
    for m in &msgs {
        stream.extend(encode(m));
    }
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let out: Vec<Message> = feed(&mut dec, &stream)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, msgs);
    assert_eq!(dec.pending(), 0);
    // decode_in_place on each frame without its delimiter gives the same.
    for m in &msgs {
        let mut f = encode(m);
        f.pop();
        assert_eq!(&frame::decode_in_place(&mut f).unwrap(), m);
    }
}

#[test]
fn golden_summary_frame() {
    let m = Message::Summary(SummaryFrame {
        boot: 7,
        seq: 42,
        channel: 1,
        start_tick: 120_000,
        width_ms: 60_000,
        summary: small_fixed(),
    });
    let bytes = encode(&m);
    assert_eq!(bytes, GOLDEN_SUMMARY);
}

#[test]
fn golden_time_sync_frame() {
    let bytes = encode(&Message::TimeSync(TimeSync {
        unix_ms: 1_764_000_000_000,
        hello_tick: Some(5),
    }));
    assert_eq!(bytes, GOLDEN_TIME_SYNC);
}

fn key(metric: &str, device: &str) -> SeriesKey {
    let mut tags = BTreeMap::new();
    tags.insert("room".to_string(), "lab 1".to_string());
    SeriesKey::new(metric, device, tags).unwrap()
}

fn small_batch() -> Batch {
    let mut s = Summary::new(Quantum::new(-1).unwrap());
    s.insert(60_500, 215).unwrap();
    s.insert(61_000, -3).unwrap();
    Batch::new(
        "agent-1",
        5,
        120_000,
        vec![Partial {
            series: key("temp", "dev1"),
            window: Window::new(60_000, Width::new(60_000).unwrap()).unwrap(),
            summary: s,
        }],
    )
    .with_identity(INCARNATION, 3)
}

/// The incarnation of the golden batch.
const INCARNATION: Incarnation = Incarnation::new(0x9f3a_0c1d_2e4b_5a67);

fn big_batch() -> Batch {
    let mut partials = Vec::new();
    for i in 0..20 {
        let mut s = Summary::new(Quantum::DEFAULT);
        for k in 0..50i64 {
            s.insert(i * 1000 + k, (k - 25) * 1_000_003 * (i + 1))
                .unwrap();
        }
        partials.push(Partial {
            series: key("power.w", &format!("dev-{i}")),
            window: Window::containing(i * 1000, Width::new(10_000).unwrap()),
            summary: s,
        });
    }
    let mut b = Batch::new("agent_7", u64::MAX, -5, partials)
        .with_identity(Incarnation::new(u64::MAX), u64::MAX);
    b.dropped_readings = 3;
    b
}

#[test]
fn golden_binary_batch() {
    let bytes = small_batch().encode(Encoding::Binary);
    assert_eq!(bytes, GOLDEN_BATCH);
}

#[test]
fn batches_round_trip_in_both_encodings() {
    for b in [small_batch(), big_batch(), Batch::new("a", 0, 0, vec![])] {
        for enc in [Encoding::Json, Encoding::Binary] {
            let bytes = b.encode(enc);
            assert_eq!(Batch::decode(&bytes).unwrap(), b, "{enc}");
        }
        // JSON is an object whose `v` is the version; binary starts with the magic.
        let json: serde_json::Value = serde_json::from_slice(&b.encode(Encoding::Json)).unwrap();
        assert_eq!(json["v"], 2);
        assert_eq!(b.encode(Encoding::Binary)[0], BINARY_MAGIC);
        assert!(b.encode(Encoding::Binary).len() < b.encode(Encoding::Json).len());
    }
    // Leading whitespace before JSON is accepted.
    let mut spaced = b" \n".to_vec();
    spaced.extend(small_batch().encode(Encoding::Json));
    assert_eq!(Batch::decode(&spaced).unwrap(), small_batch());
    // `dropped_readings` defaults to 0 when absent.
    let mut v: serde_json::Value =
        serde_json::from_slice(&small_batch().encode(Encoding::Json)).unwrap();
    v.as_object_mut().unwrap().remove("dropped_readings");
    assert_eq!(
        Batch::decode(&serde_json::to_vec(&v).unwrap()).unwrap(),
        small_batch()
    );
}

#[test]
fn confirm_round_trips_and_rejects_unknown_version() {
    for c in [
        Confirm::new("agent-1", INCARNATION, vec![1, 2, u64::MAX]),
        Confirm::new("a", Incarnation::default(), vec![]),
    ] {
        assert_eq!(Confirm::decode(&c.encode()).unwrap(), c);
    }
    assert!(matches!(
        Confirm::decode(br#"{"v":1,"agent":"a","seqs":[1]}"#),
        Err(BatchError::UnknownVersion(1))
    ));
    assert!(matches!(
        Confirm::decode(br#"{"v":9,"future":true}"#),
        Err(BatchError::UnknownVersion(9))
    ));
    assert!(matches!(
        Confirm::decode(
            br#"{"v":2,"agent":"bad agent","incarnation":"0000000000000001","seqs":[1]}"#
        ),
        Err(BatchError::Agent(_))
    ));
    assert!(matches!(
        Confirm::decode(b"{\"v\":2,"),
        Err(BatchError::Json(_))
    ));
}

#[test]
fn identity_fields_in_json_and_confirmations() {
    // JSON names the incarnation in 16 lowercase hex digits, and where the
    // unconfirmed batches begin.
    let v = json_of(&small_batch());
    assert_eq!(v["incarnation"], "9f3a0c1d2e4b5a67");
    assert_eq!(v["seq"], 5);
    assert_eq!(v["first_unconfirmed"], 3);
    // A confirmation names the incarnation too.
    let c = Confirm::new("agent-1", INCARNATION, vec![5]);
    let text = String::from_utf8(c.encode()).unwrap();
    assert_eq!(
        text,
        r#"{"v":2,"agent":"agent-1","incarnation":"9f3a0c1d2e4b5a67","seqs":[5]}"#
    );
    // One without is refused.
    assert!(matches!(
        Confirm::decode(br#"{"v":2,"agent":"agent-1","seqs":[5]}"#),
        Err(BatchError::Json(_))
    ));
}

#[test]
fn a_batch_whose_identity_cannot_be_an_agents_is_refused() {
    // A malformed incarnation: its own reason, naming the value.
    for bad in [
        serde_json::json!("9F3A0C1D2E4B5A67"),
        serde_json::json!("9f3a0c1d2e4b5a6"),
        serde_json::json!("9f3a0c1d2e4b5a6700"),
        serde_json::json!(""),
        serde_json::json!(12345),
        serde_json::json!(null),
        serde_json::json!(["9f3a0c1d2e4b5a67"]),
    ] {
        let mut v = json_of(&small_batch());
        v["incarnation"] = bad.clone();
        let err = decode_json(&v).unwrap_err();
        assert!(matches!(err, BatchError::Identity(_)), "{bad}: {err}");
    }
    // A missing one is a malformed batch (an agent older than the field).
    let mut v = json_of(&small_batch());
    v.as_object_mut().unwrap().remove("incarnation");
    let err = decode_json(&v).unwrap_err();
    assert!(matches!(err, BatchError::Json(_)), "{err}");
    assert!(err.to_string().contains("incarnation"), "{err}");
    // Unconfirmed batches cannot begin above the batch itself, in either
    // encoding; at the batch itself they can.
    for (first, ok) in [(5, true), (6, false), (u64::MAX, false)] {
        let mut b = small_batch();
        b.first_unconfirmed = first;
        for enc in [Encoding::Json, Encoding::Binary] {
            let got = Batch::decode(&b.encode(enc));
            match got {
                Ok(d) => assert!(ok && d == b, "{first} {enc}"),
                Err(BatchError::Identity(why)) => {
                    assert!(
                        !ok && why.contains("first_unconfirmed"),
                        "{first} {enc}: {why}"
                    )
                }
                Err(e) => panic!("{first} {enc}: {e}"),
            }
        }
    }
}

#[test]
fn golden_hello_frame() {
    let mut channels = heapless::Vec::new();
    channels
        .push(ChannelInfo {
            channel: 0,
            metric: hs("temp"),
            unit: hs("degC"),
            quantum: Quantum::new(-2).unwrap(),
            reference: 2000,
        })
        .unwrap();
    let m = Message::Hello(Hello {
        device: hs("d1"),
        boot: 7,
        first_unacked: 300,
        firmware: hs("1.0"),
        window_ms: 10_000,
        tick: 5,
        channels,
        stats: DeviceStats::default(),
    });
    assert_eq!(encode(&m), GOLDEN_HELLO);
}

// ---- frame corruption classes ----

#[test]
fn truncated_frames_are_rejected() {
    // Fewer than version + CRC bytes.
    for raw in [&[1u8][..], &[1, 2], &[1, 2, 3, 4]] {
        let mut f = raw_frame(raw);
        f.pop();
        assert_eq!(frame::decode_in_place(&mut f), Err(FrameError::Truncated));
    }
    // A real frame cut anywhere: an error, never a message or a panic.
    let full = encode(&every_message()[1]);
    let body = &full[..full.len() - 1];
    for cut in 1..body.len() {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut stream = body[..cut].to_vec();
        stream.push(0);
        let out = feed(&mut dec, &stream);
        assert_eq!(out.len(), 1);
        assert!(
            matches!(
                out[0],
                Err(FrameError::Truncated | FrameError::Cobs | FrameError::Crc { .. })
            ),
            "cut {cut}: {:?}",
            out[0]
        );
    }
}

#[test]
fn bad_cobs_is_rejected() {
    // The code byte promises 9 bytes; only 3 follow.
    let mut f = vec![0x0A, 1, 2, 3];
    assert_eq!(frame::decode_in_place(&mut f), Err(FrameError::Cobs));
}

#[test]
fn flipped_bits_fail_the_crc() {
    let raw = with_crc(FRAME_VERSION, &[3, 9, 10]); // an Ack in postcard
    let mut good = raw_frame(&raw);
    good.pop();
    assert_eq!(
        frame::decode_in_place(&mut good.clone()).unwrap(),
        Message::Ack(Ack { boot: 9, seq: 10 })
    );
    for byte in 0..raw.len() {
        for bit in 0..8 {
            let mut bad = raw.clone();
            bad[byte] ^= 1 << bit;
            let mut f = raw_frame(&bad);
            f.pop();
            assert!(
                matches!(frame::decode_in_place(&mut f), Err(FrameError::Crc { .. })),
                "byte {byte} bit {bit}"
            );
        }
    }
}

#[test]
fn oversized_frame_is_rejected_and_the_next_one_decodes() {
    let mut dec = FrameDecoder::<64>::new();
    let mut stream = vec![0x55u8; 200];
    stream.push(0);
    let ts = Message::TimeSync(TimeSync {
        unix_ms: 1,
        hello_tick: None,
    });
    stream.extend(encode(&ts));
    let out = feed(&mut dec, &stream);
    assert_eq!(out, vec![Err(FrameError::Oversized), Ok(ts.clone())]);
    // A real frame longer than a small buffer: same.
    let big = encode(&Message::Hello(hello(8, 32)));
    assert!(big.len() > 64);
    let mut stream = big.clone();
    stream.extend(encode(&ts));
    assert_eq!(
        feed(&mut dec, &stream),
        vec![Err(FrameError::Oversized), Ok(ts.clone())]
    );
    // decode_in_place refuses anything past MAX_FRAME outright.
    let mut huge = vec![1u8; MAX_FRAME + 1];
    assert_eq!(
        frame::decode_in_place(&mut huge),
        Err(FrameError::Oversized)
    );
    // And the encoder refuses an output buffer that is too small.
    let mut small = [0u8; 8];
    assert_eq!(
        frame::encode(&Message::Hello(hello(1, 4)), &mut small),
        Err(FrameError::BufferTooSmall)
    );
}

#[test]
fn unknown_version_with_valid_crc_is_rejected() {
    // Version 1 (tick-indexed sketches), version 2 (a TimeSync without the
    // Hello it answers) and a future version 4.
    for v in [1u8, 2, 4] {
        let mut f = raw_frame(&with_crc(v, &[3, 9, 10]));
        f.pop();
        assert_eq!(
            frame::decode_in_place(&mut f),
            Err(FrameError::UnknownVersion(v))
        );
    }
}

#[test]
fn malformed_postcard_with_valid_crc_is_rejected() {
    for payload in [
        &[9u8][..],                               // no such variant
        &[3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], // u32 varint too long
        &[3, 9],                                  // Ack missing its seq
        &[3, 9, 10, 11],                          // trailing byte
        &[2],                                     // Reading with nothing
        &[0, 3, b'a', 0xFF, 0xFE],                // Hello device not UTF-8
    ] {
        let mut f = raw_frame(&with_crc(FRAME_VERSION, payload));
        f.pop();
        assert_eq!(
            frame::decode_in_place(&mut f),
            Err(FrameError::Malformed),
            "{payload:?}"
        );
    }
    // A Summary frame whose FixedSummary breaks an invariant (count ≠ sketch
    // count) is malformed too.
    let m = Message::Summary(SummaryFrame {
        boot: 0,
        seq: 0,
        channel: 0,
        start_tick: 0,
        width_ms: 1,
        summary: small_fixed(),
    });
    let mut payload = postcard::to_allocvec(&m).unwrap();
    // Layout: variant 1, boot 0, seq 0, channel 0, start_tick 0, width 1,
    // quantum (i8 −2 as the byte 0xFE), reference (zigzag 2000 = 4000: 2 bytes), count.
    assert_eq!(&payload[..9], &[1, 0, 0, 0, 0, 1, 0xFE, 0xA0, 0x1F]);
    assert_eq!(payload[9], 4);
    payload[9] = 5;
    let mut f = raw_frame(&with_crc(FRAME_VERSION, &payload));
    f.pop();
    assert_eq!(frame::decode_in_place(&mut f), Err(FrameError::Malformed));
}

// ---- batch rejections ----

fn json_of(b: &Batch) -> serde_json::Value {
    serde_json::from_slice(&b.encode(Encoding::Json)).unwrap()
}

fn decode_json(v: &serde_json::Value) -> Result<Batch, BatchError> {
    Batch::decode(&serde_json::to_vec(v).unwrap())
}

#[test]
fn batch_rejections() {
    assert!(matches!(Batch::decode(b""), Err(BatchError::Empty)));
    assert!(matches!(
        Batch::decode(b"hello"),
        Err(BatchError::UnknownFormat(b'h'))
    ));
    assert!(matches!(
        Batch::decode(&[0x00, 1, 2]),
        Err(BatchError::UnknownFormat(0))
    ));

    // Unknown version, JSON: whether or not the rest parses. Version 1 —
    // tick-indexed sketches — is refused with its own reason.
    let mut v = json_of(&small_batch());
    v["v"] = 3.into();
    assert!(matches!(
        decode_json(&v),
        Err(BatchError::UnknownVersion(3))
    ));
    v["v"] = 1.into();
    let err = decode_json(&v).unwrap_err();
    assert!(matches!(err, BatchError::TickIndexed), "{err}");
    assert!(err.to_string().contains("tick counts"), "{err}");
    assert!(matches!(
        Batch::decode(br#"{"v":3,"everything":"different"}"#),
        Err(BatchError::UnknownVersion(3))
    ));
    assert!(matches!(
        Batch::decode(br#"{"v":1,"everything":"different"}"#),
        Err(BatchError::TickIndexed)
    ));
    // Unknown version, binary.
    let mut bin = small_batch().encode(Encoding::Binary);
    assert_eq!(bin[1], 2, "the version is the first postcard field");
    bin[1] = 3;
    assert!(matches!(
        Batch::decode(&bin),
        Err(BatchError::UnknownVersion(3))
    ));
    bin[1] = 1;
    assert!(matches!(Batch::decode(&bin), Err(BatchError::TickIndexed)));
    assert!(matches!(
        Batch::decode(&[BINARY_MAGIC, 0x80, 0x02, 0xFF]),
        Err(BatchError::UnknownVersion(256))
    ));
    // Truncated / trailing binary.
    let bin = small_batch().encode(Encoding::Binary);
    for cut in 1..bin.len() {
        assert!(Batch::decode(&bin[..cut]).is_err(), "cut {cut}");
    }
    let mut trailing = bin.clone();
    trailing.push(0);
    assert!(matches!(
        Batch::decode(&trailing),
        Err(BatchError::Binary(_))
    ));

    // Malformed JSON says where.
    let err = Batch::decode(b"{\"v\":2,\n\"agent\": }").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BatchError::Json(_)));
    assert!(
        msg.contains("line 2") && msg.contains("column"),
        "message lacks a position: {msg}"
    );

    // Invalid agent id.
    let mut v = json_of(&small_batch());
    v["agent"] = "no spaces".into();
    assert!(matches!(decode_json(&v), Err(BatchError::Agent(_))));
}

#[test]
fn batch_with_invalid_summary_is_rejected() {
    let base = json_of(&small_batch());
    assert!(decode_json(&base).is_ok());

    // The sketch count differs from the count.
    let mut v = base.clone();
    v["partials"][0]["summary"]["count"] = 3.into();
    let err = decode_json(&v).unwrap_err();
    assert!(err.to_string().contains("sketch count"), "{err}");

    // A non-canonical bucket array (zero count at an end).
    let mut v = base.clone();
    let pos = &mut v["partials"][0]["summary"]["sketch"]["positive"];
    let offset = pos["offset"].as_i64().unwrap();
    pos["offset"] = (offset - 1).into();
    let mut counts = vec![serde_json::Value::from(0)];
    counts.extend(pos["counts"].as_array().unwrap().iter().cloned());
    pos["counts"] = counts.into();
    let err = decode_json(&v).unwrap_err();
    assert!(err.to_string().contains("not trimmed"), "{err}");

    // Sums that no readings could produce.
    let mut v = base.clone();
    v["partials"][0]["summary"]["sum"] = 100_000.into();
    let err = decode_json(&v).unwrap_err();
    assert!(err.to_string().contains("sum outside"), "{err}");

    // The same corruption in the binary form is refused too: a count of 3
    // beside a sketch of 2.
    let bin = small_batch().encode(Encoding::Binary);
    assert_eq!(bin[GOLDEN_HEAD_AT], 5, "count 2, moments from the minimum");
    let mut tampered = bin.clone();
    tampered[GOLDEN_HEAD_AT] = 7;
    let err = Batch::decode(&tampered).unwrap_err();
    assert!(matches!(err, BatchError::Binary(_)), "{err}");
    assert!(err.to_string().contains("sketch count"), "{err}");
}

#[test]
fn batch_with_unaligned_window_or_invalid_key_is_rejected() {
    let base = json_of(&small_batch());
    let mut v = base.clone();
    v["partials"][0]["window"]["start"] = 60_001.into();
    let err = decode_json(&v).unwrap_err();
    assert!(err.to_string().contains("not aligned"), "{err}");

    let mut v = base.clone();
    v["partials"][0]["window"]["width"] = 0.into();
    assert!(decode_json(&v).is_err());

    for (field, value) in [
        ("metric", "9starts_with_digit"),
        ("metric", ""),
        ("device", "has space"),
        ("device", &"d".repeat(65)),
    ] {
        let mut v = base.clone();
        v["partials"][0]["series"][field] = value.into();
        assert!(decode_json(&v).is_err(), "{field} = {value:?}");
    }
    let mut v = base.clone();
    v["partials"][0]["series"]["tags"]["metric"] = "x".into();
    let err = decode_json(&v).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    let mut v = base.clone();
    v["partials"][0]["series"]["extra"] = "x".into();
    assert!(decode_json(&v).is_err(), "unknown key fields are refused");
}

// ---- sizes ----

#[test]
fn worst_case_summary_frame_fits_max_payload() {
    // All 304 shared u8 buckets full, every field at its widest varint.
    let full = vec![u8::MAX; 152];
    let n = 304 * u64::from(u8::MAX) + u64::from(u32::MAX >> 8);
    let json = serde_json::json!({
        "quantum": -18,
        "reference": i32::MIN,
        "count": n,
        // The widest Σd consistent with Σd² ≤ u64::MAX (Σd² ≥ (Σd)²/n).
        "sum": 1i64 << 43,
        "sum_sq": u64::MAX,
        "extent": {
            "min": i32::MIN, "max": i32::MAX,
            "first": {"time": u32::MAX - 1, "value": i32::MAX},
            "last": {"time": u32::MAX, "value": i32::MIN},
        },
        "sketch": {
            "scale": 6,
            "zero": u32::MAX >> 8,
            "positive": {"offset": -3827, "counts": full},
            "negative": {"offset": -3827, "counts": full},
        },
    });
    let summary: FixedSummary = serde_json::from_value(json).unwrap();
    let m = Message::Summary(SummaryFrame {
        boot: u32::MAX,
        seq: u32::MAX,
        channel: u8::MAX,
        start_tick: u64::MAX,
        width_ms: u32::MAX,
        summary,
    });
    let raw_len = 1 + postcard::to_allocvec(&m).unwrap().len() + 4;
    println!("worst-case Summary frame: {raw_len} of {MAX_PAYLOAD} bytes");
    assert!(raw_len <= MAX_PAYLOAD);
    let bytes = encode(&m);
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    assert_eq!(feed(&mut dec, &bytes), vec![Ok(m)]);
}

#[test]
fn worst_case_hello_fits_max_payload() {
    let m = Message::Hello(hello(MAX_CHANNELS, 32));
    let raw_len = 1 + postcard::to_allocvec(&m).unwrap().len() + 4;
    println!("worst-case Hello frame: {raw_len} of {MAX_PAYLOAD} bytes");
    assert!(raw_len <= MAX_PAYLOAD);
    let bytes = encode(&m);
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    assert_eq!(feed(&mut dec, &bytes), vec![Ok(m)]);
}

/// COBS(version 3 ‖ postcard(Summary frame) ‖ CRC-32 LE) 0x00, as of format v3.
/// Reviewed: v3 changed only the TimeSync; here the version byte (3) and
/// the CRC differ from v2. Beside the version byte, only the sketch differs
/// from v1 — at
/// quantum 10⁻² the readings 21.50, 19.90 and −0.15 are the real values'
/// buckets 283, 276 (positive offset zigzag `168, 4` = 276, eight counts
/// `1 0 0 0 0 0 0 1`, COBS turns the zeros into code bytes) and −176
/// (negative offset `223, 2`), where v1 had the tick counts' 701 and 250.
const GOLDEN_SUMMARY: &[u8] = &[
    26, 3, 1, 7, 42, 1, 192, 169, 7, 224, 212, 3, 254, 160, 31, 4, 197, 60, 137, 171, 237, 3, 1,
    29, 204, 33, 12, 204, 33, 184, 23, 29, 6, 1, 168, 4, 8, 1, 1, 1, 1, 1, 1, 10, 1, 223, 2, 1, 1,
    195, 220, 134, 22, 0,
];
/// A Hello as of format v3 (as v2 but for the version byte and CRC).
/// Reviewed: COBS code 2 and the version 3, then
/// variant 0 (a zero); code 15 and device `2, "d1"`, boot 7,
/// first_unacked 300 (`172, 2`), firmware `3, "1.0"`, window 10 000
/// (`144, 78`), tick 5, one channel, then channel 0 (a zero); code 14 and
/// `4, "temp"`, `4, "degC"`, quantum −2 (`254`), reference zigzag 4000
/// (`160, 31`), then the five zero counters (codes 1); code 5 and the
/// CRC-32 little-endian; the delimiter.
const GOLDEN_HELLO: &[u8] = &[
    2, 3, 15, 2, 100, 49, 7, 172, 2, 3, 49, 46, 48, 144, 78, 5, 1, 14, 4, 116, 101, 109, 112, 4,
    100, 101, 103, 67, 254, 160, 31, 1, 1, 1, 1, 5, 54, 119, 63, 236, 0,
];
/// TimeSync { unix_ms: 1 764 000 000 000, hello_tick: Some(5) } as of
/// format v3. Reviewed: COBS code 15 (no zero in the 14 bytes), version 3,
/// variant 4, zigzag varint `128, 160, 191, 233, 214, 102`, then the
/// option tag 1 and tick 5 (new in v3), the CRC-32 LE, the delimiter.
const GOLDEN_TIME_SYNC: &[u8] = &[
    15, 3, 4, 128, 160, 191, 233, 214, 102, 1, 5, 218, 68, 141, 169, 0,
];
/// The binary layout of format 2 (`shared/src/batch/binary.rs`). Reviewed:
/// magic 183, version 2, the agent id, the incarnation's 8 bytes most
/// significant first (`159, 58, 12, 29, 46, 75, 90, 103` = 9f3a0c1d2e4b5a67),
/// seq 5, first_unconfirmed 3, the watermark (zigzag `128, 211, 14`), 0
/// dropped; 4 sorted strings "dev1", "lab 1", "room", "temp" (no shared
/// prefix); 1 tag set {room ("room" #2): "lab 1" #1}; 1 series (metric #3,
/// device #0, tag set #0, quantum 10⁻¹ zigzag 1); 1 width, 60 000 ms; 1
/// partial: series 0, width 0, window index 1, one below the watermark's
/// (zigzag 1); head 5 (count 2, moments from the minimum); min −3 (zigzag
/// 5), max−min 218, first−min 218, last−min 0, first 500 ms into the window
/// (zigzag 1000), last 58 999 ms before its last millisecond (zigzag
/// 117 998); Σ(v−min) = 218 (zigzag 436), Σ(v−min)² = 218² = 47 524; sketch
/// head 49 (scale 6 zigzag 12 ·4, no zero count, negative buckets); one
/// positive bucket (head 64: 1 bucket of
/// counts 1 bit wide) at 283 (21.5 at 10⁻¹, OpenTelemetry's index at scale
/// 6), coded +496 from the bucket of one tick (−213), its count 1 in one
/// packed byte; one negative bucket at −112 (0.3), +101 from it, count 1.
const GOLDEN_BATCH: &[u8] = &[
    183, 2, 7, 97, 103, 101, 110, 116, 45, 49, 159, 58, 12, 29, 46, 75, 90, 103, 5, 3, 128, 211,
    14, 0, // header
    4, 0, 4, 100, 101, 118, 49, 0, 5, 108, 97, 98, 32, 49, 0, 4, 114, 111, 111, 109, 0, 4, 116,
    101, 109, 112, // strings
    1, 1, 2, 1, // tag sets
    1, 3, 0, 0, 1, // series
    1, 224, 212, 3, // widths
    1, 0, 0, 1, // partial: series, width, window
    5, 5, 218, 1, 218, 1, 0, 232, 7, 238, 153, 7, 180, 3, 164, 243, 2, // count, extent, sums
    49, 64, 224, 7, 1, 64, 202, 1, 1, // sketch
];

/// Where the summary's head (count·2 + 1) is in [`GOLDEN_BATCH`].
const GOLDEN_HEAD_AT: usize = 67;

#[test]
fn fixed_summary_with_inconsistent_moments_is_rejected() {
    // Two readings 10 and 20 (reference 0): Σd = 30, Σd² = 500.
    let make = |sum_sq: u64| {
        serde_json::json!({
            "quantum": -3, "reference": 0, "count": 2, "sum": 30, "sum_sq": sum_sq,
            "extent": {"min": 10, "max": 20,
                       "first": {"time": 0, "value": 10}, "last": {"time": 1, "value": 20}},
            "sketch": serde_json::to_value({
                let q = Quantum::new(-3).unwrap();
                let mut f = FixedSummary::new(q, 0);
                f.insert(0, 10, &DeviceIndex::new(q)).unwrap();
                f.insert(1, 20, &DeviceIndex::new(q)).unwrap();
                f
            }).unwrap()["sketch"],
        })
    };
    let ok: FixedSummary = serde_json::from_value(make(500)).unwrap();
    assert_eq!(Summary::from_fixed(&ok, 0).sum_sq_ticks(), 500);
    // Below (Σd)²/n = 450 or above (a+b)·Σd − n·a·b = 500: no data gives that.
    for bad in [0, 449, 501, u64::MAX] {
        let err = serde_json::from_value::<FixedSummary>(make(bad)).unwrap_err();
        assert!(err.to_string().contains("sum of squares"), "{bad}: {err}");
    }
}

#[test]
fn encode_payload_frames_any_payload_like_a_one_shot_cobs_encoding() {
    // Runs of 254 non-zero bytes make COBS emit an extra code byte; the
    // framing pushes version, payload and CRC separately, so runs ending at
    // and crossing those part boundaries must encode as one buffer would.
    for len in [0, 1, 252, 253, 254, 255, 256, 300, 507, 508, 509, 595] {
        for fill in [0x55u8, 0x00] {
            let mut payload = vec![fill; len];
            if let Some(last) = payload.last_mut() {
                *last = 0x01;
            }
            let mut out = [0u8; MAX_FRAME];
            let n = frame::encode_payload(&payload, &mut out).unwrap();
            let mut raw = vec![FRAME_VERSION];
            raw.extend_from_slice(&payload);
            raw.extend_from_slice(&CRC.checksum(&raw).to_le_bytes());
            let mut one_shot = vec![0u8; cobs::max_encoding_length(raw.len())];
            let m = cobs::encode(&raw, &mut one_shot);
            assert_eq!(&out[..n - 1], &one_shot[..m], "len {len} fill {fill:#x}");
            assert_eq!(out[n - 1], 0);
            let checked = frame::payload_in_place(&mut out[..n - 1]).unwrap();
            assert_eq!(checked, &payload[..]);
        }
    }
    let mut out = [0u8; MAX_FRAME];
    assert_eq!(
        frame::encode_payload(&[1; MAX_PAYLOAD - 4], &mut out),
        Err(FrameError::Oversized)
    );
}
