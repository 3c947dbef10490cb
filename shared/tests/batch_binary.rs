//! The binary batch encoding (format 2, `batch/binary.rs`): round trips of
//! varied batches, the extremes its delta coding must survive, its size on
//! a workload like the demo's, and the bound on what a hostile batch can
//! make the decoder hold.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod layout;

use layout::{key, partial, repeated, signed_varint, split_one_partial, varint};
use proptest::prelude::*;
use tributary_core::batch::{Batch, BatchError, Encoding, Partial, MAX_EXPANDED};
use tributary_core::quantum::MAX_TICKS;
use tributary_core::Incarnation;

fn round_trip(b: &Batch) -> Vec<u8> {
    let bytes = b.encode(Encoding::Binary);
    assert_eq!(&Batch::decode(&bytes).unwrap(), b);
    bytes
}

fn readings() -> impl Strategy<Value = Vec<(i64, i64)>> {
    let value = prop_oneof![
        -3i64..3,
        -1_000i64..100_000,
        Just(MAX_TICKS),
        Just(-MAX_TICKS),
        -MAX_TICKS..=MAX_TICKS,
    ];
    prop::collection::vec((0i64..60_000, value), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn varied_batches_round_trip(
        parts in prop::collection::vec(
            (0usize..4, 0usize..3, -18i8..=6, -5i64..5, prop::bool::ANY, readings()),
            0..12,
        ),
        seq in any::<u64>(),
        watermark in any::<i64>(),
        dropped in any::<u64>(),
    ) {
        let metrics = ["temp", "humidity", "power.w", "t"];
        let sites = [&[][..], &[("site", "berlin")][..], &[("site", "oslo"), ("gw", "g-1")][..]];
        let mut ps = Vec::new();
        for (m, d, q, k, wide, rs) in parts {
            let width = if wide { 3_600_000 } else { 60_000 };
            // Windows near now and near the ends of time.
            let start = 29_400_000 * 60_000 + k * width;
            let rs: Vec<_> = rs.into_iter().map(|(t, v)| (t % width, v)).collect();
            ps.push(partial(key(metrics[m], &format!("dev-{d}"), sites[d]), q, start, width, &rs));
        }
        let mut b = Batch::new("gw-7", seq, watermark, ps)
            .with_identity(Incarnation::new(seq.rotate_left(7)), seq / 2);
        b.dropped_readings = dropped;
        let bin = round_trip(&b);
        prop_assert!(bin.len() <= b.encode(Encoding::Json).len());
    }
}

#[test]
fn extremes_of_time_value_and_count_round_trip() {
    let k = key("m", "d", &[]);
    // Readings at the ends of the tick range, windows at the ends of time.
    let width = 86_400_000;
    let last = (i64::MAX / width - 1) * width;
    let first = (i64::MIN / width + 1) * width;
    let mut ps = vec![
        partial(
            k.clone(),
            -18,
            last,
            width,
            &[(0, MAX_TICKS), (width - 1, -MAX_TICKS)],
        ),
        partial(
            k.clone(),
            18,
            first,
            width,
            &[(5, -MAX_TICKS), (6, -MAX_TICKS)],
        ),
        partial(k.clone(), 0, 0, width, &[]),
        partial(k.clone(), 0, 0, width, &[(0, 0), (1, 0)]),
    ];
    // Moments from the minimum overflow an i128 here (2²¹ readings of
    // −2⁵³): the raw sums are sent instead.
    let mut big = partial(k, -6, 0, width, &[(0, -MAX_TICKS), (1, -MAX_TICKS)]);
    for _ in 0..20 {
        big.summary = big.summary.merged_with(&big.summary).unwrap();
    }
    ps.push(big);
    round_trip(&Batch::new("a", u64::MAX, i64::MIN, ps.clone()));
    round_trip(&Batch::new("a", 0, i64::MAX, ps));
}

/// 60 series (20 devices × 3 metrics, two tags) of one minute of 1 Hz
/// readings each, as one agent of the demo sends them.
fn demo_like() -> Batch {
    let start = 29_400_000 * 60_000;
    let mut ps = Vec::new();
    for d in 0..20 {
        for (m, (q, base, spread)) in [
            ("temperature", (-2, 2_137, 40)),
            ("humidity", (-1, 455, 30)),
            ("pressure", (0, 101_325, 25)),
        ] {
            let device = format!("gw0-dev{d}");
            let tags = [("gateway", "gw-0"), ("site", "berlin")];
            let rs: Vec<_> = (0..60i64)
                .map(|i| (i * 1000 + 137, base + (i * 7919 + d) % spread))
                .collect();
            ps.push(partial(key(m, &device, &tags), q, start, 60_000, &rs));
        }
    }
    Batch::new("gw-0", 42, start + 60_000, ps)
}

#[test]
fn a_demo_like_batch_takes_under_a_byte_a_reading() {
    let b = demo_like();
    let bin = round_trip(&b);
    let json = b.encode(Encoding::Json);
    let per_reading = |n: usize| n as f64 / b.readings() as f64;
    assert!(
        per_reading(bin.len()) < 0.75,
        "binary: {} B/reading",
        per_reading(bin.len())
    );
    assert!(
        per_reading(json.len()) > 5.0,
        "json: {} B/reading",
        per_reading(json.len())
    );
}

#[test]
fn a_dictionary_cannot_make_the_decoder_hold_more_than_its_limit() {
    // One long key named by 400 000 partials of 6 bytes each: 2.4 MB of
    // input that would expand to ~800 MB of keys.
    let long = "v".repeat(128);
    let tags: Vec<(String, String)> = (0..16)
        .map(|i| (format!("k{i:02}"), long.clone()))
        .collect();
    let tag_refs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let one = Batch::new(
        "a",
        1,
        0,
        vec![partial(key("m", "d", &tag_refs), 0, 0, 60_000, &[])],
    );
    let mut bytes = round_trip(&one);
    // The partials are the last 7 bytes: 1 partial of series 0, width 0,
    // window 0 (the watermark's), count 0, sketch head 48 (scale 6, no zero
    // count, no negative buckets), no positive buckets. Repeat it.
    let tail = bytes.split_off(bytes.len() - 7);
    assert_eq!(tail, [1, 0, 0, 0, 0, 48, 0][..]);
    let n: u64 = 400_000;
    let mut count = Vec::new();
    let mut m = n;
    while m >= 0x80 {
        count.push((m as u8) | 0x80);
        m >>= 7;
    }
    count.push(m as u8);
    bytes.extend(count);
    for _ in 0..n {
        bytes.extend([0, 0, 0, 0, 48, 0]);
    }
    let size = 16 * (3 + 128) + 2;
    assert!(n as usize * size > MAX_EXPANDED);
    let err = Batch::decode(&bytes).unwrap_err();
    assert!(matches!(err, BatchError::Binary(_)), "{err}");
    assert!(err.to_string().contains("exceed their limit"), "{err}");
}

#[test]
fn keys_share_their_strings_and_prefixes() {
    // 100 devices of one metric and tag set: each further device costs its
    // differing suffix, not its whole name.
    let mk = |n: usize| {
        let ps = (0..n)
            .map(|d| {
                partial(
                    key(
                        "temperature",
                        &format!("site-a-gateway-3-dev{d:03}"),
                        &[("site", "a")],
                    ),
                    -2,
                    0,
                    60_000,
                    &[],
                )
            })
            .collect();
        Batch::new("a", 1, 0, ps)
    };
    let (one, hundred) = (round_trip(&mk(1)).len(), round_trip(&mk(100)).len());
    let per_partial = (hundred - one) as f64 / 99.0;
    assert!(
        per_partial < 16.0,
        "{per_partial} bytes per further partial"
    );
}

/// Found by the `batches` fuzz target: a summary whose last-reading offset
/// is near the bottom of i128 made the decoder's time arithmetic overflow
/// (a panic in debug builds). It is refused as out of range.
#[test]
fn a_time_offset_past_i128_is_refused_not_a_panic() {
    let input: &[u8] = &[
        183, 2, 4, 103, 119, 45, 49, 159, 58, 103, 75, 46, 17, 90, 29, 12, 15, 192, 186, 183, 254,
        249, 98, 0, 4, 0, 6, 98, 101, 114, 108, 105, 110, 0, 5, 100, 101, 118, 45, 49, 0, 4, 115,
        105, 116, 101, 0, 11, 46, 101, 109, 112, 101, 114, 97, 116, 117, 82, 101, 1, 1, 2, 0, 1, 0,
        0, 0, 5, 1, 224, 212, 3, 1, 0, 0, 255, 52, 255, 255, 255, 255, 255, 10, 10, 10, 61, 160,
        150, 188, 164, 255, 255, 255, 9, 1, 193, 134, 255, 255, 255, 255, 255, 255, 255, 255, 255,
        255, 255, 255, 255, 255, 255, 255, 3, 0, 0, 0, 255, 255, 255, 4, 0, 0, 0, 0, 0, 0, 64, 168,
        4, 183,
    ];
    assert!(Batch::decode(input).is_err());
}

/// A partial of window [0, 60 s) whose sketch fills 2048 positive buckets
/// (scale 6, 64 buckets an octave: one reading in the middle of each of
/// the buckets 0..2048 of readings from 1 to 2³², in ticks of 10⁻³).
fn full_partial() -> Partial {
    let readings: Vec<(i64, i64)> = (0..2048)
        .map(|i| {
            let v = 1000.0 * 2f64.powf((f64::from(i) + 0.5) / 64.0);
            (i64::from(i), v.round() as i64)
        })
        .collect();
    partial(key("m", "d", &[]), -3, 0, 60_000, &readings)
}

#[test]
fn a_batch_of_full_sketches_within_the_limit_decodes() {
    let p = full_partial();
    assert_eq!(p.summary.sketch().scale(), 6);
    assert_eq!(p.summary.sketch().positive().len(), 2048);
    let (prefix, one) = split_one_partial(p.clone());
    // 200 partials × 2048 buckets × 8 bytes: 3.3 MB.
    let b = Batch::decode(&repeated(&prefix, &one, 200)).unwrap();
    assert_eq!(b.partials.len(), 200);
    assert!(b.partials.iter().all(|q| *q == p));
    // 1000 × 2048 × 8 = 16 384 000 bytes of buckets and 1000 × 2 of keys
    // ("m", "d"), plus the dictionary: still under 16 MiB.
    const { assert!(1000 * (2048 * 8 + 2) + 2 < MAX_EXPANDED) };
    assert_eq!(
        Batch::decode(&repeated(&prefix, &one, 1000))
            .unwrap()
            .partials
            .len(),
        1000
    );
}

#[test]
fn buckets_past_the_limit_are_refused() {
    let (prefix, one) = split_one_partial(full_partial());
    // 1025 × 2048 × 8 = 16 793 600 bytes of buckets > 16 MiB, from about
    // 1025 × 270 bytes of input.
    const { assert!(1025 * 2048 * 8 > MAX_EXPANDED) };
    let bytes = repeated(&prefix, &one, 1025);
    assert!(bytes.len() < 1 << 20);
    let err = Batch::decode(&bytes).unwrap_err();
    assert!(matches!(err, BatchError::Binary(_)), "{err}");
    assert!(err.to_string().contains("buckets"), "{err}");
    assert!(err.to_string().contains("exceed their limit"), "{err}");
}

/// `bytes` with the one occurrence of `from` replaced by `to` (same length).
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at: Vec<usize> = bytes
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "{from:?} in {bytes:?}");
    let mut out = bytes.to_vec();
    out[at[0]..at[0] + to.len()].copy_from_slice(to);
    out
}

#[test]
fn an_invalid_series_key_is_refused_as_one() {
    let b = Batch::new(
        "agent-1",
        1,
        0,
        vec![partial(key("temperature", "d", &[]), 0, 0, 60_000, &[])],
    );
    let bytes = round_trip(&b);
    // A metric name may not contain a space.
    let bad = patched(&bytes, b"temperature", b"temp rature");
    let err = Batch::decode(&bad).unwrap_err();
    assert!(matches!(err, BatchError::Series(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("series key"), "{msg}");
    assert!(msg.contains("metric name"), "{msg}");
    assert!(!msg.contains("agent"), "{msg}");
}

#[test]
fn a_duplicate_tag_key_is_refused() {
    let b = Batch::new(
        "a",
        1,
        0,
        vec![partial(
            key("m", "d", &[("kx", "v1"), ("ky", "v2")]),
            0,
            0,
            60_000,
            &[],
        )],
    );
    let bytes = round_trip(&b);
    // Sorted strings: d #0, kx #1, ky #2, m #3, v1 #4, v2 #5; the tag set is
    // 1 set of 2 tags: kx=v1, ky=v2. Name kx twice.
    let bad = patched(&bytes, &[1, 2, 1, 4, 2, 5], &[1, 2, 1, 4, 1, 5]);
    let err = Batch::decode(&bad).unwrap_err();
    assert!(matches!(err, BatchError::Binary(_)), "{err}");
    assert!(err.to_string().contains("duplicate tag key"), "{err}");
}

#[test]
fn shifted_moments_without_readings_are_refused() {
    let (prefix, one) = split_one_partial(partial(key("m", "d", &[]), 0, 0, 60_000, &[]));
    // series 0, width 0, Δk 0, head 0 (count 0, not shifted), sketch head
    // 48 (scale 6), no positive buckets.
    assert_eq!(one, [0, 0, 0, 0, 48, 0]);
    assert_eq!(
        Batch::decode(&repeated(&prefix, &one, 1))
            .unwrap()
            .partials
            .len(),
        1
    );
    let err = Batch::decode(&repeated(&prefix, &[0, 0, 0, 1, 48, 0], 1)).unwrap_err();
    assert!(matches!(err, BatchError::Binary(_)), "{err}");
    assert!(err.to_string().contains("shifted"), "{err}");
}

#[test]
fn a_sketch_scale_past_i8_is_refused() {
    let (prefix, _) = split_one_partial(partial(key("m", "d", &[]), 0, 0, 60_000, &[]));
    // Sketch head 256·4 (zigzag 256 = scale 128, past i8), as LEB128.
    assert_eq!(varint(256 * 4), [0x80, 0x08]);
    let err = Batch::decode(&repeated(&prefix, &[0, 0, 0, 0, 0x80, 0x08, 0], 1)).unwrap_err();
    assert!(
        err.to_string().contains("sketch scale out of range"),
        "{err}"
    );
}

/// A sketch side's first-bucket offset is its reference bucket plus a
/// delta the input names: a delta near the top of i128 overflowed that sum
/// (a panic in debug builds) until it was checked. It is refused as out of
/// range, and so is one near the bottom.
#[test]
fn a_bucket_offset_past_i128_is_refused_not_a_panic() {
    // One reading of 1000.0: its bucket is the reference (delta 0), well
    // above 0, so reference + i128::MAX overflows.
    let p = partial(key("m", "d", &[]), -3, 0, 60_000, &[(0, 1_000_000)]);
    let (prefix, one) = split_one_partial(p);
    // The partial ends with the positive side: 1 bucket of 1 bit (64),
    // delta 0, the packed count 1.
    assert_eq!(one[one.len() - 3..], [64, 0, 1]);
    assert_eq!(
        Batch::decode(&repeated(&prefix, &one, 1))
            .unwrap()
            .partials
            .len(),
        1
    );
    for delta in [i128::MAX, i128::MIN] {
        let mut bad = one[..one.len() - 2].to_vec();
        bad.extend(signed_varint(delta));
        bad.push(1);
        let err = Batch::decode(&repeated(&prefix, &bad, 1)).unwrap_err();
        assert!(matches!(err, BatchError::Binary(_)), "{err}");
        assert!(
            err.to_string().contains("bucket offset out of range"),
            "{err}"
        );
    }
}
