//! Hand-built binary batches for the decoder's tests: the layout's varints
//! and a batch cut at its partial count, so a test can write what no
//! encoder would (a hostile count, a run of junk).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

/// A series key of `metric`, `device` and `tags`.
pub(crate) fn key(metric: &str, device: &str, tags: &[(&str, &str)]) -> SeriesKey {
    let tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
    SeriesKey::new(metric, device, tags).unwrap()
}

/// A partial of readings `(time offset in the window, ticks)`.
pub(crate) fn partial(
    series: SeriesKey,
    q: i8,
    start: i64,
    width: i64,
    readings: &[(i64, i64)],
) -> Partial {
    let mut s = Summary::new(Quantum::new(q).unwrap());
    for &(t, v) in readings {
        s.insert(start + t, v).unwrap();
    }
    Partial {
        series,
        window: Window::new(start, Width::new(width).unwrap()).unwrap(),
        summary: s,
    }
}

/// LEB128 of `n` (as the layout codes every count).
pub(crate) fn varint(n: u64) -> Vec<u8> {
    leb128(n.into())
}

/// LEB128 of a zigzag-coded `i128` (as the layout codes signed deltas).
pub(crate) fn signed_varint(v: i128) -> Vec<u8> {
    leb128(((v << 1) ^ (v >> 127)) as u128)
}

/// LEB128 of `n`.
pub(crate) fn leb128(mut n: u128) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// The bytes of `b` (one partial, in the watermark's window) before its
/// partial count, and those of the partial: the batch with the partial
/// twice is longer by exactly one partial (series 0, width 0, Δk 0).
pub(crate) fn split_one_partial(p: Partial) -> (Vec<u8>, Vec<u8>) {
    let one = Batch::new("a", 1, 0, vec![p.clone()]).encode(Encoding::Binary);
    let two = Batch::new("a", 1, 0, vec![p.clone(), p]).encode(Encoding::Binary);
    let len = two.len() - one.len();
    assert_eq!(one[one.len() - len - 1], 1, "partial count");
    (
        one[..one.len() - len - 1].to_vec(),
        one[one.len() - len..].to_vec(),
    )
}

/// `prefix`, then `n` copies of `partial`.
pub(crate) fn repeated(prefix: &[u8], partial: &[u8], n: u64) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.extend(varint(n));
    for _ in 0..n {
        bytes.extend_from_slice(partial);
    }
    bytes
}
