//! The device sketch's resolution on data that crosses zero (issue #15):
//! readings of each distribution go through the real [`Aggregator`] (so
//! summaries sent early — a bucket past 255, or the floor scale — count), the
//! frames' summaries are widened and merged as the agent does, and the 0.01,
//! 0.5 and 0.99 quantiles are compared with the exact ones of the readings.
//! Shared by `tests/resolution.rs` (which asserts) and
//! `examples/quantile_error.rs` (which prints the table).

use std::collections::BTreeMap;

use tributary_core::frame::Message;
use tributary_core::index::DeviceIndex;
use tributary_core::{Quantum, Summary};
use tributary_firmware::{Aggregator, ChannelSpec, Mode};

/// The quantiles compared.
pub(crate) const QS: [f64; 3] = [0.01, 0.5, 0.99];

/// SplitMix64 with Box–Muller normals: deterministic data, no extra crates.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    pub(crate) fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// As the core's accuracy tests mix data: ~25 % negated, ~5 % zero
    /// (30 % at or below zero).
    pub(crate) fn mixed(&mut self, x: f64) -> f64 {
        let u = self.unit();
        if u < 0.05 {
            0.0
        } else if u < 0.30 {
            -x
        } else {
            x
        }
    }
}

/// A distribution: its readings (in the unit), quantum and window length.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) quantum: i8,
    pub(crate) values: Vec<f64>,
    /// Readings per window; every window's quantiles are checked.
    pub(crate) window: usize,
}

/// The distributions of issue #15, 100,000 readings each.
pub(crate) fn cases() -> Vec<Case> {
    const N: usize = 100_000;
    let mut r = Rng::new(15);
    let gen = |r: &mut Rng, f: &mut dyn FnMut(&mut Rng) -> f64| -> Vec<f64> {
        (0..N).map(|_| f(r)).collect()
    };
    vec![
        Case {
            name: "normal N(20, 8), 30 % <= 0, at 1e-6",
            quantum: -6,
            values: gen(&mut r, &mut |r| {
                let x = r.normal(20.0, 8.0);
                r.mixed(x)
            }),
            window: N,
        },
        Case {
            name: "uniform U(0, 1000), 30 % <= 0, at 1e-6",
            quantum: -6,
            values: gen(&mut r, &mut |r| {
                let x = r.uniform(0.0, 1000.0);
                r.mixed(x)
            }),
            window: N,
        },
        Case {
            name: "normal N(20, 8), 30 % <= 0, at 1e-2",
            quantum: -2,
            values: gen(&mut r, &mut |r| {
                let x = r.normal(20.0, 8.0);
                r.mixed(x)
            }),
            window: N,
        },
        Case {
            // Windows of 20 readings, each of its own magnitude (10^−2 to
            // 10^2, log-uniform) spread ×/÷ 4, 30 % negative.
            name: "small windows (20 readings) of mixed scale, at 1e-3",
            quantum: -3,
            values: {
                let mut out = Vec::with_capacity(N);
                while out.len() < N {
                    let scale = 10f64.powf(r.uniform(-2.0, 2.0));
                    for _ in 0..20 {
                        let x = scale * 4f64.powf(r.uniform(-1.0, 1.0));
                        out.push(if r.unit() < 0.3 { -x } else { x });
                    }
                }
                out
            },
            window: 20,
        },
        Case {
            name: "uniform -5..+5 degC at 0.01",
            quantum: -2,
            values: gen(&mut r, &mut |r| r.uniform(-5.0, 5.0)),
            window: N,
        },
        Case {
            name: "normal N(0, 2.5) degC at 0.01",
            quantum: -2,
            values: gen(&mut r, &mut |r| r.normal(0.0, 2.5)),
            window: N,
        },
    ]
}

/// What the device made of a case.
pub(crate) struct Outcome {
    /// The largest relative error at [`QS`] over every window.
    pub(crate) worst: f64,
    /// The lowest scale of any window's merged sketch.
    pub(crate) scale: i8,
    /// Summary frames sent.
    pub(crate) frames: usize,
}

/// Runs `case` through an aggregator with floor `floor`.
pub(crate) fn run(case: &Case, floor: i8) -> Outcome {
    let q = Quantum::new(case.quantum).unwrap();
    let index: &'static DeviceIndex = Box::leak(Box::new(DeviceIndex::new(q)));
    let spec = [ChannelSpec {
        metric: "x",
        unit: "u",
        index,
        reference: 0,
    }];
    // One reading per ms; windows of `case.window` ms.
    let width = u32::try_from(case.window).unwrap();
    let mut agg = Aggregator::<1>::new(&spec, 1, width, Mode::Aggregate)
        .unwrap()
        .with_floor(floor);
    let mut windows: BTreeMap<u64, Summary> = BTreeMap::new();
    let mut frames = 0;
    let mut ticks: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    {
        let mut take = |m: Message| {
            if let Message::Summary(f) = m {
                frames += 1;
                let w = windows
                    .entry(f.start_tick)
                    .or_insert_with(|| Summary::new(q));
                w.merge(&Summary::from_fixed(&f.summary, 0)).unwrap();
            }
        };
        for (t, &x) in case.values.iter().enumerate() {
            let v = q.ticks(x).unwrap();
            let start = t as u64 - t as u64 % u64::from(width);
            ticks.entry(start).or_default().push(v);
            agg.record(t as u64, &[i32::try_from(v).unwrap()], &mut take);
        }
        agg.flush(&mut take);
    }
    let (mut worst, mut scale) = (0f64, tributary_core::sketch::START_SCALE);
    for (start, mut exact) in ticks {
        let s = &windows[&start];
        assert_eq!(s.count(), exact.len() as u64);
        scale = scale.min(s.sketch().scale());
        exact.sort_unstable();
        for p in QS {
            let rank = ((p * (exact.len() - 1) as f64).floor() as usize).min(exact.len() - 1);
            let want = q.value(exact[rank]);
            let got = s.quantile(p).unwrap().value;
            if want != 0.0 {
                worst = worst.max((got - want).abs() / want.abs());
            } else {
                assert_eq!(got, 0.0);
            }
        }
    }
    Outcome {
        worst,
        scale,
        frames,
    }
}
