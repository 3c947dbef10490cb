//! Property tests of the summary algebra (DESIGN §2): associativity,
//! commutativity, identity, and "the merge of any split along any merge tree
//! equals the summary of the whole" — compared with `==` on every field — for
//! the full and the fixed form and for the bare sketches; plus statistics that
//! are bit-identical after merging, `None` where undefined, refusal of bad
//! readings and reported (not wrapped) overflow.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use proptest::prelude::*;
use tributary_core::index::{DeviceIndex, QuantumIndex};
use tributary_core::quantum::MAX_TICKS;
use tributary_core::sketch::{FixedSketch, Sketch};
use tributary_core::{FixedSummary, Quantum, Summary, SummaryError, ValueError};

/// SplitMix64, driven by a proptest seed, to pick splits and merge trees.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Splits `items` into 1..=8 arbitrary (not contiguous) subsets, folds each
/// with `build`, then merges the parts pairwise in a random tree with `merge`.
fn split_and_merge<T: Clone, S>(
    items: &[T],
    seed: u64,
    build: impl Fn(&[T]) -> S,
    merge: impl Fn(&S, &S) -> S,
) -> S {
    let mut mix = Mix(seed);
    let k = 1 + mix.below(8);
    let mut parts: Vec<Vec<T>> = vec![Vec::new(); k];
    for it in items {
        parts[mix.below(k)].push(it.clone());
    }
    // Shuffle within parts too: insertion order must not matter.
    for p in &mut parts {
        for i in (1..p.len()).rev() {
            p.swap(i, mix.below(i + 1));
        }
    }
    let mut built: Vec<S> = parts.iter().map(|p| build(p)).collect();
    while built.len() > 1 {
        let i = mix.below(built.len());
        let a = built.swap_remove(i);
        let j = mix.below(built.len());
        let b = built.swap_remove(j);
        built.push(merge(&a, &b));
    }
    built.pop().unwrap()
}

/// Values in ticks for the full form: narrow, zero, and log-uniform magnitudes
/// up to 2⁵³ of both signs (which force the sketch below scale 6).
fn full_value() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => -40i64..40,
        1 => Just(0i64),
        3 => (1u32..=53, any::<bool>(), any::<u64>()).prop_map(|(bits, neg, r)| {
            let m = (r >> (64 - bits)) as i64;
            if neg { -m } else { m }
        }),
        1 => prop_oneof![Just(MAX_TICKS), Just(-MAX_TICKS), Just(1), Just(-1)],
    ]
}

/// A time that often ties (exercising the first/last tie-break) or is arbitrary.
fn full_time() -> impl Strategy<Value = i64> {
    prop_oneof![0i64..8, any::<i64>()]
}

/// Readings for the full form: some cases stay narrow (scale 6 kept), others
/// mix in very wide values.
fn full_readings() -> impl Strategy<Value = Vec<(i64, i64)>> {
    prop_oneof![
        prop::collection::vec((full_time(), -1000i64..1000), 0..120),
        prop::collection::vec((full_time(), full_value()), 0..120),
    ]
}

/// Values for the fixed form: i32, magnitudes up to 2²⁸ so that 150 readings'
/// Σ(v−r)² stays within u64 for |r| ≤ 2²⁰ (overflow is tested separately).
fn fixed_value() -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => -40i32..40,
        1 => Just(0i32),
        3 => (1u32..=28, any::<bool>(), any::<u32>()).prop_map(|(bits, neg, r)| {
            let m = (r >> (32 - bits)) as i32;
            if neg { -m } else { m }
        }),
    ]
}

fn fixed_readings() -> impl Strategy<Value = Vec<(u32, i32)>> {
    prop_oneof![
        prop::collection::vec((prop_oneof![0u32..8, any::<u32>()], -1000i32..1000), 0..150),
        prop::collection::vec((prop_oneof![0u32..8, any::<u32>()], fixed_value()), 0..150),
    ]
}

fn reference() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0i32), -(1i32 << 20)..(1i32 << 20)]
}

/// Any quantum: the bucket layout (the real value's) differs with each.
fn quantum() -> impl Strategy<Value = Quantum> {
    (Quantum::MIN_EXPONENT..=Quantum::MAX_EXPONENT).prop_map(|e| Quantum::new(e).unwrap())
}

fn full(readings: &[(i64, i64)]) -> Summary {
    full_q(Quantum::DEFAULT, readings)
}

fn full_q(q: Quantum, readings: &[(i64, i64)]) -> Summary {
    let mut s = Summary::new(q);
    for &(t, v) in readings {
        s.insert(t, v).unwrap();
    }
    s.validate().unwrap();
    s
}

fn fixed(reference: i32, readings: &[(u32, i32)]) -> FixedSummary {
    fixed_q(Quantum::DEFAULT, reference, readings)
}

fn fixed_q(q: Quantum, reference: i32, readings: &[(u32, i32)]) -> FixedSummary {
    let index = DeviceIndex::new(q);
    let mut s = FixedSummary::new(q, reference);
    for &(t, v) in readings {
        s.insert(t, v, &index).unwrap();
    }
    s.validate().unwrap();
    s
}

fn sketch_q(q: Quantum, values: &[i64]) -> Sketch {
    let mut s = Sketch::new();
    for &v in values {
        s.insert(QuantumIndex::of(q).bucket(v)).unwrap();
    }
    s.validate().unwrap();
    s
}

fn fixed_sketch_q(q: Quantum, values: &[i64]) -> FixedSketch {
    let index = DeviceIndex::new(q);
    let mut s = FixedSketch::new();
    for &v in values {
        s.insert(index.bucket(i32::try_from(v).unwrap())).unwrap();
    }
    s.validate().unwrap();
    s
}

fn m_full(a: &Summary, b: &Summary) -> Summary {
    a.merged_with(b).unwrap()
}

fn m_fixed(a: &FixedSummary, b: &FixedSummary) -> FixedSummary {
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

fn m_sketch(a: &Sketch, b: &Sketch) -> Sketch {
    a.merged_with(b).unwrap()
}

fn m_fixed_sketch(a: &FixedSketch, b: &FixedSketch) -> FixedSketch {
    // Exercise the in-place path (including its no-allocation fast path).
    let mut out = a.clone();
    out.merge(b).unwrap();
    out
}

const QS: [f64; 9] = [0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999, 1.0];

/// Every statistic, as bits, so `==` means bit-identical.
fn stats_bits(s: &Summary) -> Vec<Option<u64>> {
    let mut out = vec![
        s.sum().map(f64::to_bits),
        s.mean().map(f64::to_bits),
        s.variance().map(f64::to_bits),
        s.stddev().map(f64::to_bits),
        s.min().map(f64::to_bits),
        s.max().map(f64::to_bits),
        s.first().map(|(_, v)| v.to_bits()),
        s.last().map(|(_, v)| v.to_bits()),
    ];
    for q in QS {
        let r = s.quantile(q);
        out.push(r.map(|r| r.value.to_bits()));
        out.push(r.map(|r| r.relative_error.to_bits()));
    }
    out
}

/// No statistic is ever NaN.
fn assert_no_nan(s: &Summary) {
    for (i, b) in stats_bits(s).into_iter().enumerate() {
        if let Some(b) = b {
            assert!(!f64::from_bits(b).is_nan(), "statistic #{i} is NaN");
        }
    }
}

fn values<T: Copy, V: Copy + Into<i64>>(r: &[(T, V)]) -> Vec<i64> {
    r.iter().map(|&(_, v)| v.into()).collect()
}

proptest! {
    #[test]
    fn full_merge_of_any_split_equals_whole(
        r in full_readings(), seed in any::<u64>(), q in quantum()
    ) {
        let whole = full_q(q, &r);
        let merged = split_and_merge(&r, seed, |p| full_q(q, p), m_full);
        prop_assert_eq!(&merged, &whole);
        prop_assert_eq!(stats_bits(&merged), stats_bits(&whole));
        assert_no_nan(&whole);
    }

    #[test]
    fn full_merge_laws(a in full_readings(), b in full_readings(), c in full_readings()) {
        let (a, b, c) = (full(&a), full(&b), full(&c));
        let empty = Summary::new(Quantum::DEFAULT);
        prop_assert_eq!(m_full(&a, &b), m_full(&b, &a));
        prop_assert_eq!(m_full(&m_full(&a, &b), &c), m_full(&a, &m_full(&b, &c)));
        prop_assert_eq!(&m_full(&a, &empty), &a);
        prop_assert_eq!(&m_full(&empty, &a), &a);
        prop_assert_eq!(stats_bits(&m_full(&a, &b)), stats_bits(&m_full(&b, &a)));
    }

    #[test]
    fn fixed_merge_of_any_split_equals_whole(
        r in fixed_readings(), reference in reference(), seed in any::<u64>(), q in quantum()
    ) {
        let whole = fixed_q(q, reference, &r);
        let merged = split_and_merge(&r, seed, |p| fixed_q(q, reference, p), m_fixed);
        prop_assert_eq!(&merged, &whole);
        // Widened, the statistics are bit-identical too.
        prop_assert_eq!(
            stats_bits(&Summary::from_fixed(&merged, 1_000)),
            stats_bits(&Summary::from_fixed(&whole, 1_000))
        );
    }

    #[test]
    fn fixed_merge_laws(
        a in fixed_readings(), b in fixed_readings(), c in fixed_readings(),
        reference in reference()
    ) {
        let (a, b, c) = (fixed(reference, &a), fixed(reference, &b), fixed(reference, &c));
        let empty = FixedSummary::new(Quantum::DEFAULT, reference);
        prop_assert_eq!(m_fixed(&a, &b), m_fixed(&b, &a));
        prop_assert_eq!(m_fixed(&m_fixed(&a, &b), &c), m_fixed(&a, &m_fixed(&b, &c)));
        prop_assert_eq!(&m_fixed(&a, &empty), &a);
        prop_assert_eq!(&m_fixed(&empty, &a), &a);
    }

    #[test]
    fn sketch_merge_laws(
        a in full_readings(), b in full_readings(), c in full_readings(), seed in any::<u64>(),
        q in quantum()
    ) {
        let (va, vb, vc) = (values(&a), values(&b), values(&c));
        let sketch = |v: &[i64]| sketch_q(q, v);
        let (a, b, c) = (sketch(&va), sketch(&vb), sketch(&vc));
        prop_assert_eq!(m_sketch(&a, &b), m_sketch(&b, &a));
        prop_assert_eq!(m_sketch(&m_sketch(&a, &b), &c), m_sketch(&a, &m_sketch(&b, &c)));
        prop_assert_eq!(&m_sketch(&a, &Sketch::new()), &a);
        prop_assert_eq!(&m_sketch(&Sketch::new(), &a), &a);
        let whole = sketch(&va);
        prop_assert_eq!(split_and_merge(&va, seed, sketch, m_sketch), whole);
    }

    #[test]
    fn fixed_sketch_merge_laws(
        a in fixed_readings(), b in fixed_readings(), c in fixed_readings(), seed in any::<u64>(),
        q in quantum()
    ) {
        let (va, vb, vc) = (values(&a), values(&b), values(&c));
        let fixed_sketch = |v: &[i64]| fixed_sketch_q(q, v);
        let (a, b, c) = (fixed_sketch(&va), fixed_sketch(&vb), fixed_sketch(&vc));
        prop_assert_eq!(m_fixed_sketch(&a, &b), m_fixed_sketch(&b, &a));
        prop_assert_eq!(
            m_fixed_sketch(&m_fixed_sketch(&a, &b), &c),
            m_fixed_sketch(&a, &m_fixed_sketch(&b, &c))
        );
        prop_assert_eq!(&m_fixed_sketch(&a, &FixedSketch::new()), &a);
        prop_assert_eq!(&m_fixed_sketch(&FixedSketch::new(), &a), &a);
        let whole = fixed_sketch(&va);
        prop_assert_eq!(split_and_merge(&va, seed, fixed_sketch, m_fixed_sketch), whole);
    }

    #[test]
    fn from_fixed_equals_full_summary_of_same_readings(
        r in fixed_readings(), reference in reference(), base in -(1i64 << 40)..(1i64 << 40),
        q in quantum()
    ) {
        let f = fixed_q(q, reference, &r);
        let wide: Vec<(i64, i64)> =
            r.iter().map(|&(t, v)| (base + i64::from(t), i64::from(v))).collect();
        let expected = full_q(q, &wide).with_sketch_scale(f.sketch().scale());
        let widened = Summary::from_fixed(&f, base);
        widened.validate().unwrap();
        prop_assert_eq!(widened, expected);
    }

    #[test]
    fn refused_values_leave_summary_unchanged(
        r in full_readings(),
        bad in prop_oneof![
            Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY),
            Just(1e10), Just(-1e10), Just(f64::MAX), 9.1e9f64..1e300
        ]
    ) {
        let mut s = full(&r);
        let before = s.clone();
        let err = s.insert_value(1, bad).unwrap_err();
        let expected = if bad.is_nan() {
            ValueError::NaN
        } else if bad.is_infinite() {
            ValueError::Infinite
        } else {
            ValueError::OutOfRange
        };
        prop_assert_eq!(err, SummaryError::Value(expected));
        prop_assert_eq!(&s, &before);
        // Ticks beyond 2⁵³ are refused by `insert` as well.
        prop_assert_eq!(s.insert(1, MAX_TICKS + 1), Err(SummaryError::OutOfRange(MAX_TICKS + 1)));
        prop_assert_eq!(s, before);
    }
}

#[test]
fn empty_and_single_reading_statistics_are_none_not_nan() {
    let empty = Summary::new(Quantum::DEFAULT);
    assert_eq!(empty.count(), 0);
    assert!(empty.sum().is_none());
    assert!(empty.mean().is_none());
    assert!(empty.variance().is_none());
    assert!(empty.stddev().is_none());
    assert!(empty.min().is_none() && empty.max().is_none());
    assert!(empty.first().is_none() && empty.last().is_none());
    for q in QS {
        assert!(empty.quantile(q).is_none());
    }

    let mut one = Summary::new(Quantum::new(-3).unwrap());
    one.insert_value(42, -2.5).unwrap();
    assert_eq!(one.mean(), Some(-2.5));
    assert_eq!(one.sum(), Some(-2.5));
    assert!(
        one.variance().is_none(),
        "variance of one reading is undefined"
    );
    assert!(one.stddev().is_none());
    assert_eq!(one.first(), Some((42, -2.5)));
    assert_eq!(one.last(), Some((42, -2.5)));
    for q in QS {
        // Clamped to [min, max], so a single reading is reported exactly.
        assert_eq!(one.quantile(q).unwrap().value, -2.5);
    }
    assert_no_nan(&one);

    // Two equal readings: variance is exactly zero, not NaN or negative.
    one.insert_value(43, -2.5).unwrap();
    assert_eq!(one.variance(), Some(0.0));
    assert_eq!(one.stddev(), Some(0.0));
    // Out-of-range quantile requests are refused, not NaN.
    assert!(one.quantile(1.5).is_none());
    assert!(one.quantile(-0.1).is_none());
    assert!(one.quantile(f64::NAN).is_none());
}

#[test]
fn variance_is_exact_for_known_data() {
    let mut s = Summary::new(Quantum::new(0).unwrap());
    for v in [2, 4, 4, 4, 5, 5, 7, 9] {
        s.insert(0, v).unwrap();
    }
    assert_eq!(s.mean(), Some(5.0));
    assert_eq!(s.variance(), Some(32.0 / 7.0));
}

/// Summaries of 2^k readings of `v`, built by doubling merges.
fn powers(v: i64, k: usize) -> Vec<Summary> {
    let mut one = Summary::new(Quantum::DEFAULT);
    one.insert(0, v).unwrap();
    let mut out = vec![one];
    for _ in 1..k {
        let last = out.last().unwrap();
        out.push(last.merged_with(last).unwrap());
    }
    out
}

#[test]
fn sum_of_squares_overflow_is_reported_not_wrapped() {
    for v in [MAX_TICKS, -MAX_TICKS] {
        // 2^22 − 1 readings of ±2^53: Σv² = 2^128 − 2^106, one below the edge.
        let p = powers(v, 22);
        let mut s = Summary::new(Quantum::DEFAULT);
        for part in &p {
            s.merge(part).unwrap();
        }
        assert_eq!(s.count(), (1 << 22) - 1);
        assert_eq!(s.sum_sq_ticks(), u128::MAX - (1u128 << 106) + 1);
        let before = s.clone();
        assert_eq!(
            s.insert(5, v),
            Err(SummaryError::Overflow("sum of squares"))
        );
        assert_eq!(s, before);
        assert_eq!(
            s.merge(&p[0]),
            Err(SummaryError::Overflow("sum of squares"))
        );
        assert_eq!(s, before);
        // A doubling merge past the edge is refused too.
        let big = &p[21];
        assert_eq!(
            big.merged_with(big),
            Err(SummaryError::Overflow("sum of squares"))
        );
        // The statistics of the summary at the edge are still finite.
        assert_no_nan(&s);
        // Every reading is equal: the variance is exactly zero (it used to
        // come out `None` here because a·(Σv + b) overflowed an i128).
        assert_eq!(s.variance(), Some(0.0));
    }
}

#[test]
fn fixed_moment_overflow_by_merge_is_reported() {
    let mut a = FixedSummary::new(Quantum::DEFAULT, i32::MIN);
    a.insert(0, i32::MAX, &DeviceIndex::new(Quantum::DEFAULT))
        .unwrap(); // (2^32 − 1)² per reading
    let mut doubled = a.clone();
    let err = loop {
        let before = doubled.clone();
        if let Err(e) = doubled.merge(&before) {
            assert_eq!(doubled, before);
            break e;
        }
    };
    assert_eq!(err, SummaryError::Overflow("sum of squares"));
}

#[test]
fn merge_refuses_other_quantum_and_leaves_state() {
    let mut a = Summary::new(Quantum::DEFAULT);
    a.insert(0, 5).unwrap();
    let mut b = Summary::new(Quantum::new(-3).unwrap());
    b.insert(0, 5).unwrap();
    let before = a.clone();
    assert!(matches!(
        a.merge(&b),
        Err(SummaryError::QuantumMismatch { .. })
    ));
    assert_eq!(a, before);
}

/// The generators above only sometimes push a sketch below scale 6; this pins
/// the interesting case: parts at fine scales merging into a whole that had
/// to coarsen, along many random trees.
#[test]
fn merge_trees_that_must_coarsen_equal_the_whole() {
    let mut mix = Mix(99);
    let full_r: Vec<(i64, i64)> = (0..400)
        .map(|i| {
            let bits = 1 + mix.below(53) as u32;
            let m = (mix.next() >> (64 - bits)) as i64;
            (i % 7, if i % 3 == 0 { -m } else { m })
        })
        .chain([(0, 1), (0, MAX_TICKS), (1, -1), (1, -MAX_TICKS), (2, 0)])
        .collect();
    let whole = full(&full_r);
    assert!(whole.sketch().scale() < 6, "{}", whole.sketch().scale());
    let fixed_r: Vec<(u32, i32)> = (0..400u32)
        .map(|i| {
            let bits = 1 + mix.below(28) as u32;
            let m = (mix.next() >> (64 - bits)) as i32;
            (i % 5, if i % 4 == 0 { -m } else { m })
        })
        .chain([(0, 1), (0, 1 << 28), (1, -1), (1, -(1 << 28)), (2, 0)])
        .collect();
    let whole_fixed = fixed(-77, &fixed_r);
    assert!(
        whole_fixed.sketch().scale() <= 2,
        "{}",
        whole_fixed.sketch().scale()
    );
    for seed in 0..200 {
        let merged = split_and_merge(&full_r, seed, full, m_full);
        assert_eq!(merged, whole, "seed {seed}");
        assert_eq!(stats_bits(&merged), stats_bits(&whole));
        let merged_fixed = split_and_merge(&fixed_r, seed, |p| fixed(-77, p), m_fixed);
        assert_eq!(merged_fixed, whole_fixed, "seed {seed}");
    }
    // Small parts of the wide data do keep finer scales than the whole.
    assert!(full(&full_r[..3]).sketch().scale() > whole.sketch().scale());
}

#[test]
fn shifted_moves_only_event_times() {
    let q = tributary_core::Quantum::new(-2).unwrap();
    let mut a = tributary_core::Summary::new(q);
    let mut b = tributary_core::Summary::new(q);
    for (t, v) in [(5, 10), (9, -3), (2, 7)] {
        a.insert(t, v).unwrap();
        b.insert(t + 1_000, v).unwrap();
    }
    assert_eq!(a.shifted(1_000), b);
    assert_ne!(a, b);
    let empty = tributary_core::Summary::new(q);
    assert_eq!(empty.shifted(7), empty);
}

/// A decoded summary whose moments no set of readings could have (Σv² below
/// (Σv)²/n: a negative variance) is refused, not stored.
#[test]
fn moments_that_imply_a_negative_variance_are_refused() {
    let s = full(&[(1, 10), (2, 20)]);
    let mut json = serde_json::to_value(&s).unwrap();
    let obj = json.as_object_mut().unwrap();
    let key = obj
        .keys()
        .find(|k| k.contains("sq"))
        .cloned()
        .expect("a sum-of-squares field");
    // Σv² = 500 for {10, 20}; n·Σv² must reach (Σv)² = 900.
    assert_eq!(obj[&key], serde_json::json!(500));
    obj.insert(key.clone(), serde_json::json!(449));
    let err = serde_json::from_value::<Summary>(json.clone()).unwrap_err();
    assert!(err.to_string().contains("negative variance"), "{err}");
    json[&key] = serde_json::json!(500);
    assert_eq!(serde_json::from_value::<Summary>(json).unwrap(), s);
}
