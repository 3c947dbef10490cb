//! The pipeline's results judged by the oracle (`tributary-oracle`): the
//! simulated devices' raw readings handed to it ([`oracle`]), and each
//! [`Summary`] the pipeline produced compared with the oracle's exact
//! statistics of the same readings ([`judge`], [`judge_windows`]).
//!
//! The oracle shares no code with the pipeline; this module is only the
//! adapter between the two (series keys to plain strings, the summary's
//! accessors to the oracle's checks). What must agree, per window:
//! - exactly: the quantum, count, Σv, Σv², min, max, first and last (time and
//!   value), and the `f64`s of sum, mean, variance, standard deviation, min,
//!   max, first and last — each the nearest `f64` to the exact value;
//! - quantiles `pNN` for NN in [`QUANTILES`]: p0 and p100 exactly; the others
//!   inside the bucket, at the sketch's scale, of the reading of rank
//!   ⌊NN/100 · (n − 1)⌋; and the sketch's scale at least [`FLOOR_SCALE`], the
//!   devices' floor, whose relative-error bound is 2.17 % (1.08 % at scale 5,
//!   0.54 % at 6).

use std::collections::BTreeMap;

use num_bigint::BigInt;
use tributary_core::{SeriesKey, Summary};
use tributary_oracle::{OracleError, Reading, Readings, Series, Stats};

use crate::fleet::SeriesReadings;

/// The coarsest sketch scale a window may have: the firmware aggregator's
/// floor (its summaries are sent early rather than coarsen below it).
pub const FLOOR_SCALE: i8 = tributary_firmware::aggregator::DEFAULT_FLOOR;

/// The quantiles judged, as the `NN` of `pNN`.
pub const QUANTILES: [&str; 7] = ["0", "1", "10", "50", "90", "99", "100"];

/// The oracle's name of a series.
pub fn series(key: &SeriesKey) -> Series {
    Series {
        metric: key.metric().to_string(),
        device: key.device().to_string(),
        tags: key.tags().clone(),
    }
}

/// The raw readings handed to the oracle.
pub fn oracle(readings: &[SeriesReadings]) -> Result<Readings, OracleError> {
    let mut out = Readings::new();
    for s in readings {
        let name = series(&s.series);
        for &(t, v) in &s.readings {
            out.add(&name, s.exponent, t, v)?;
        }
    }
    Ok(out)
}

/// The fraction `NN/100` of `pNN`, parsed as the query API parses it.
pub fn fraction(pct: &str) -> Option<f64> {
    pct.parse::<f64>().ok().map(|p| p / 100.0)
}

/// Everything in which the summary `got` differs from the oracle's `want`
/// (empty when it agrees; see the module docs). Long, as one comparison
/// per statistic in the order of the module docs' table reads best.
pub fn judge(got: &Summary, want: &Stats) -> Vec<String> {
    let mut out = Vec::new();
    let mut eq = |what: &str, g: String, w: String| {
        if g != w {
            out.push(format!("{what}: got {g}, want {w}"));
        }
    };
    eq(
        "quantum exponent",
        got.quantum().exponent().to_string(),
        want.exponent().to_string(),
    );
    eq("count", got.count().to_string(), want.count().to_string());
    eq(
        "Σv",
        BigInt::from(got.sum_ticks()).to_string(),
        want.sum_ticks().to_string(),
    );
    eq(
        "Σv²",
        BigInt::from(got.sum_sq_ticks()).to_string(),
        want.sum_sq_ticks().to_string(),
    );
    let Some(e) = got.extent() else {
        out.push("no min/max/first/last".into());
        return out;
    };
    let (first, last) = (want.first(), want.last());
    let ticks = [
        ("min", e.min, want.min_ticks()),
        ("max", e.max, want.max_ticks()),
        ("first value", e.first.value, first.ticks),
        ("last value", e.last.value, last.ticks),
        ("first time", e.first.time, first.time_ms),
        ("last time", e.last.time, last.time_ms),
    ];
    for (what, g, w) in ticks {
        eq(what, g.to_string(), w.to_string());
    }
    let floats = [
        ("sum", got.sum(), Some(want.sum())),
        ("mean", got.mean(), Some(want.mean())),
        ("variance", got.variance(), want.variance()),
        ("stddev", got.stddev(), want.stddev()),
        ("min", got.min(), Some(want.value(want.min_ticks()))),
        ("max", got.max(), Some(want.value(want.max_ticks()))),
        (
            "first",
            got.first().map(|f| f.1),
            Some(want.value(first.ticks)),
        ),
        (
            "last",
            got.last().map(|l| l.1),
            Some(want.value(last.ticks)),
        ),
    ];
    for (what, g, w) in floats {
        // Debug of an f64 prints its shortest round-trip text: equal text,
        // equal bits.
        eq(what, format!("{g:?}"), format!("{w:?}"));
    }
    let scale = got.sketch().scale();
    if scale < FLOOR_SCALE {
        out.push(format!(
            "sketch scale {scale} is below the floor {FLOOR_SCALE}"
        ));
    }
    for pct in QUANTILES {
        let estimate = fraction(pct).and_then(|q| got.quantile(q));
        match estimate {
            Some(x) => {
                if let Err(e) = want.check_quantile(pct, x.value, scale) {
                    out.push(e);
                }
            }
            None => out.push(format!("p{pct}: no estimate")),
        }
    }
    out
}

/// Everything in which `got` differs from the summary of exactly
/// `readings` — (event time in ms, ticks of the quantum 10^`exponent`) —
/// by [`judge`] against the oracle's statistics of them (one line saying
/// so when there are none): the check of a test that sent those readings.
pub fn judge_readings(got: &Summary, exponent: i8, readings: &[(i64, i64)]) -> Vec<String> {
    let rs: Vec<Reading> = readings
        .iter()
        .map(|&(time_ms, ticks)| Reading { time_ms, ticks })
        .collect();
    match Stats::of(exponent, &rs) {
        Some(want) => judge(got, &want),
        None => vec!["no readings to judge by".into()],
    }
}

/// Everything in which the sketch of `got` differs, bucket by bucket at
/// its own scale, from the buckets of the readings `ticks` (of the quantum
/// 10^`exponent`) by the oracle's definition: each real reading's index
/// ([`tributary_oracle::bucket::index`]), its sign, and zero apart. The
/// exact layout, stricter than [`judge`]'s quantiles; one big-integer
/// comparison per reading, so for tests with thousands of readings, not
/// millions.
pub fn judge_buckets(got: &Summary, exponent: i8, ticks: &[i64]) -> Vec<String> {
    let sketch = got.sketch();
    let scale = sketch.scale();
    let (mut positive, mut negative, mut zero) = (BTreeMap::new(), BTreeMap::new(), 0u64);
    for &v in ticks {
        let x = tributary_oracle::Ratio::decimal(v, i32::from(exponent));
        match tributary_oracle::bucket::index(&x, scale) {
            None => zero += 1,
            Some(i) if v > 0 => *positive.entry(i).or_insert(0u64) += 1,
            Some(i) => *negative.entry(i).or_insert(0u64) += 1,
        }
    }
    let held = |b: tributary_core::sketch::Buckets<'_, _>| -> BTreeMap<i64, u64> {
        b.iter().map(|(i, c)| (i64::from(i), c)).collect()
    };
    let mut out = Vec::new();
    if sketch.zero_count() != zero {
        out.push(format!(
            "zero bucket: got {}, want {zero}",
            sketch.zero_count()
        ));
    }
    for (sign, got, want) in [
        ("positive", held(sketch.positive()), positive),
        ("negative", held(sketch.negative()), negative),
    ] {
        if got != want {
            out.push(format!(
                "{sign} buckets at scale {scale}: got {got:?}, want {want:?}"
            ));
        }
    }
    out
}

/// The verdict on a set of results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Results the oracle expects, checked.
    pub checked: usize,
    /// Results that differ from the oracle, are missing or are not expected.
    pub mismatched: usize,
    /// What differs, a line per problem (the first few results' only).
    pub problems: Vec<String>,
}

impl Verdict {
    /// Records the problems of one result.
    pub fn record(&mut self, what: impl std::fmt::Display, problems: Vec<String>) {
        if problems.is_empty() {
            return;
        }
        self.mismatched += 1;
        if self.problems.len() < 40 {
            self.problems
                .extend(problems.into_iter().map(|p| format!("{what}: {p}")));
        }
    }

    /// Whether everything agreed.
    pub fn ok(&self) -> bool {
        self.mismatched == 0
    }
}

/// Judges every (series, window start) result of the pipeline against the
/// oracle's windows of the same width.
pub fn judge_windows(
    got: &BTreeMap<(SeriesKey, i64), Summary>,
    want: &BTreeMap<(Series, i64), Stats>,
) -> Verdict {
    let mut v = Verdict {
        checked: want.len(),
        ..Verdict::default()
    };
    let mut seen = 0;
    for ((key, start), summary) in got {
        let what = format!("{key} @ {start}");
        match want.get(&(series(key), *start)) {
            Some(stats) => {
                seen += 1;
                v.record(what, judge(summary, stats));
            }
            None => v.record(what, vec!["a result the readings do not explain".into()]),
        }
    }
    let missing = want.len() - seen;
    if missing > 0 {
        v.mismatched += missing;
        v.problems
            .push(format!("{missing} windows of the readings have no result"));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_core::Quantum;

    fn readings(values: &[i64]) -> Vec<Reading> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| Reading {
                time_ms: 100 + i as i64,
                ticks: v,
            })
            .collect()
    }

    fn summary(values: &[i64]) -> Summary {
        let mut s = Summary::new(Quantum::new(-3).unwrap_or_default());
        for r in readings(values) {
            assert!(s.insert(r.time_ms, r.ticks).is_ok());
        }
        s
    }

    #[test]
    fn a_summary_of_the_same_readings_agrees() {
        let values = [-250, 3, 0, 1_200, -4_700, 12_000, 17, -1];
        let want = Stats::of(-3, &readings(&values)).expect("readings");
        assert_eq!(judge(&summary(&values), &want), Vec::<String>::new());
    }

    #[test]
    fn a_summary_that_lost_or_changed_a_reading_disagrees() {
        let values = [-250, 3, 0, 1_200, -4_700];
        let want = Stats::of(-3, &readings(&values)).expect("readings");
        let lost = judge(&summary(&values[..4]), &want);
        assert!(lost.iter().any(|p| p.starts_with("count")), "{lost:?}");
        let changed = judge(&summary(&[-250, 3, 0, 1_201, -4_700]), &want);
        assert!(changed.iter().any(|p| p.starts_with("Σv:")), "{changed:?}");
        assert!(changed.iter().any(|p| p.starts_with("max")), "{changed:?}");
    }

    #[test]
    fn readings_as_pairs_are_judged_as_the_readings() {
        let values = [-250, 3, 0, 1_200];
        let pairs: Vec<(i64, i64)> = readings(&values)
            .iter()
            .map(|r| (r.time_ms, r.ticks))
            .collect();
        let none = Vec::<String>::new();
        assert_eq!(judge_readings(&summary(&values), -3, &pairs), none);
        let p = judge_readings(&summary(&values[1..]), -3, &pairs);
        assert!(p.iter().any(|p| p.starts_with("count")), "{p:?}");
        assert_eq!(judge_readings(&summary(&values), -3, &[]).len(), 1);
    }

    #[test]
    fn buckets_of_the_same_readings_agree_and_of_others_do_not() {
        let values = [-250, 3, 0, 0, 1_200, -4_700, 12_000, 17, -1];
        let none = Vec::<String>::new();
        assert_eq!(judge_buckets(&summary(&values), -3, &values), none);
        // 1.3 is eight buckets above 1.2 at scale 6.
        let mut moved = values;
        moved[4] = 1_300;
        let p = judge_buckets(&summary(&moved), -3, &values);
        assert!(p.iter().any(|p| p.starts_with("positive")), "{p:?}");
        let p = judge_buckets(&summary(&values[1..]), -3, &values);
        assert!(p.iter().any(|p| p.starts_with("negative")), "{p:?}");
        let p = judge_buckets(&summary(&values), -3, &values[..3]);
        assert!(p.iter().any(|p| p.starts_with("zero")), "{p:?}");
    }

    #[test]
    fn windows_missing_or_extra_are_mismatches() {
        let key = SeriesKey::new("t", "d", BTreeMap::new()).expect("key");
        let want: BTreeMap<_, _> = [
            (
                (series(&key), 0),
                Stats::of(-3, &readings(&[1])).expect("r"),
            ),
            (
                (series(&key), 10),
                Stats::of(-3, &readings(&[2])).expect("r"),
            ),
        ]
        .into();
        let got: BTreeMap<_, _> = [
            ((key.clone(), 0), summary(&[1])),
            ((key, 20), summary(&[3])),
        ]
        .into();
        let v = judge_windows(&got, &want);
        assert_eq!((v.checked, v.mismatched), (2, 2), "{v:?}");
    }
}
