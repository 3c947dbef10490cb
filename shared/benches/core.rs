//! Criterion benchmarks of tributary-core: readings folded into a summary
//! (full and fixed form), merges, quantile queries, and device-frame and
//! batch encode/decode throughput.
//!
//! `cargo bench -p tributary-core -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::frame::{self, FrameDecoder, Message, SummaryFrame, MAX_FRAME};
use tributary_core::index::{DeviceIndex, QuantumIndex};
use tributary_core::sketch::Sketch;
use tributary_core::{FixedSummary, Quantum, SeriesKey, Summary, Width, Window};

const MILLI: DeviceIndex = DeviceIndex::new(match Quantum::new(-3) {
    Ok(q) => q,
    Err(_) => Quantum::DEFAULT,
});

/// SplitMix64: deterministic data without extra crates.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A sensor-like value in ticks of 1e-3: ~21.5 ± 3 with occasional
    /// negatives and zeros.
    fn reading(&mut self) -> i64 {
        let r = self.next();
        match r % 50 {
            0 => 0,
            1 => -(((r >> 20) % 5_000) as i64),
            _ => 18_500 + ((r >> 16) % 6_000) as i64,
        }
    }
}

fn readings(seed: u64, n: usize) -> Vec<(i64, i64)> {
    let mut mix = Mix(seed);
    (0..n)
        .map(|i| (1_700_000_000_000 + i as i64 * 100, mix.reading()))
        .collect()
}

fn summary_of(r: &[(i64, i64)]) -> Summary {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    for &(t, v) in r {
        s.insert(t, v).unwrap();
    }
    s
}

fn fixed_of(r: &[(i64, i64)]) -> FixedSummary {
    let mut f = FixedSummary::new(Quantum::new(-3).unwrap(), 21_500);
    for (i, &(_, v)) in r.iter().enumerate() {
        f.insert(i as u32 * 100, v as i32, &MILLI).unwrap();
    }
    f
}

fn batch(partials: usize, per: usize) -> Batch {
    let width = Width::new(60_000).unwrap();
    let ps = (0..partials)
        .map(|i| {
            let mut tags = BTreeMap::new();
            tags.insert("site".to_string(), "north".to_string());
            Partial {
                series: SeriesKey::new("temperature", format!("dev-{i:04}"), tags).unwrap(),
                window: Window::containing(1_700_000_000_000, width),
                summary: summary_of(&readings(i as u64, per)),
            }
        })
        .collect();
    Batch::new("agent-1", 42, 1_700_000_060_000, ps)
}

fn insert(c: &mut Criterion) {
    const N: usize = 10_000;
    let r = readings(1, N);
    let mut g = c.benchmark_group("insert");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("summary", |b| {
        b.iter(|| {
            let mut s = Summary::new(Quantum::new(-3).unwrap());
            for &(t, v) in black_box(&r) {
                s.insert(t, v).unwrap();
            }
            s
        })
    });
    g.bench_function("fixed_summary", |b| {
        b.iter(|| {
            // As a device: a full summary (a bucket past 255) is sent and
            // replaced by a fresh one.
            let mut f = FixedSummary::new(Quantum::new(-3).unwrap(), 21_500);
            let mut sent = 0;
            for (i, &(_, v)) in black_box(&r).iter().enumerate() {
                if f.insert(i as u32, v as i32, &MILLI).is_err() {
                    f = FixedSummary::new(Quantum::new(-3).unwrap(), 21_500);
                    sent += 1;
                    f.insert(i as u32, v as i32, &MILLI).unwrap();
                }
            }
            (f, sent)
        })
    });
    g.bench_function("sketch", |b| {
        let ix = QuantumIndex::of(Quantum::new(-3).unwrap());
        b.iter(|| {
            let mut s = Sketch::new();
            for &(_, v) in black_box(&r) {
                s.insert(ix.bucket(v)).unwrap();
            }
            s
        })
    });
    g.finish();
}

fn merge_and_query(c: &mut Criterion) {
    let a = summary_of(&readings(2, 1_000));
    let b2 = summary_of(&readings(3, 1_000));
    let mut g = c.benchmark_group("summary");
    g.throughput(Throughput::Elements(1));
    g.bench_function("merge_1000_readings", |b| {
        b.iter(|| black_box(&a).merged_with(black_box(&b2)).unwrap())
    });
    let (fa, fb) = (fixed_of(&readings(2, 1_000)), fixed_of(&readings(3, 1_000)));
    g.bench_function("fixed_merge_1000_readings", |b| {
        b.iter(|| {
            let mut m = black_box(&fa).clone();
            m.merge(black_box(&fb)).unwrap();
            m
        })
    });
    let big = summary_of(&readings(4, 100_000));
    g.bench_function("quantile_p99", |b| {
        b.iter(|| black_box(&big).quantile(black_box(0.99)).unwrap())
    });
    g.bench_function("mean_variance", |b| {
        b.iter(|| (black_box(&big).mean(), black_box(&big).variance()))
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let msg = Message::Summary(SummaryFrame {
        boot: 1,
        seq: 77,
        channel: 0,
        start_tick: 600_000,
        width_ms: 10_000,
        summary: fixed_of(&readings(5, 100)),
    });
    let mut buf = [0u8; MAX_FRAME];
    let n = frame::encode(&msg, &mut buf).unwrap();
    let encoded = buf[..n].to_vec();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(n as u64));
    g.bench_function("encode_summary", |b| {
        let mut out = [0u8; MAX_FRAME];
        b.iter(|| frame::encode(black_box(&msg), &mut out).unwrap())
    });
    g.bench_function("decode_summary", |b| {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        b.iter(|| {
            let mut last = None;
            for &byte in black_box(&encoded) {
                if let Some(r) = dec.push(byte) {
                    last = Some(r);
                }
            }
            last.unwrap().unwrap()
        })
    });
    g.finish();
}

fn batches(c: &mut Criterion) {
    let b = batch(100, 100);
    for enc in [Encoding::Json, Encoding::Binary] {
        let bytes = b.encode(enc);
        let mut g = c.benchmark_group(format!("batch_{enc}"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("encode_100_partials", |bn| {
            bn.iter(|| black_box(&b).encode(enc))
        });
        g.bench_function("decode_100_partials", |bn| {
            bn.iter(|| Batch::decode(black_box(&bytes)).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, insert, merge_and_query, frames, batches);
criterion_main!(benches);
