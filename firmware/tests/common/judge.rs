//! The integration tests' judge: a summary the device path produced, checked
//! against the oracle's statistics and sketch buckets of the raw readings
//! (`tributary-oracle` through `tributary_sim::judge`), never against a
//! `Summary` built by the code under test.

use tributary_core::Summary;
use tributary_oracle::{Reading, Stats};
use tributary_sim::judge::{judge, judge_buckets};

/// Everything in which `got` differs from the summary of exactly
/// `readings` (ticks of 10^`exponent`): count, moments, extent, the
/// statistics' floats, quantiles and the sketch scale's floor
/// ([`judge`]), and every sketch bucket at its scale ([`judge_buckets`]).
pub(crate) fn problems(got: &Summary, exponent: i8, readings: &[Reading]) -> Vec<String> {
    let Some(want) = Stats::of(exponent, readings) else {
        return vec!["no readings to judge by".into()];
    };
    let ticks: Vec<i64> = readings.iter().map(|r| r.ticks).collect();
    let mut out = judge(got, &want);
    out.extend(judge_buckets(got, exponent, &ticks));
    out
}

/// Panics, naming the caller's line and every problem, unless `got` holds
/// exactly `readings` ([`problems`]).
#[track_caller]
pub(crate) fn assert_holds(got: &Summary, exponent: i8, readings: &[Reading], what: &str) {
    let p = problems(got, exponent, readings);
    assert!(p.is_empty(), "{what}: {p:#?}");
}
