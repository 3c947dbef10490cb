//! # tributary-oracle
//!
//! The judge of the demo and the system tests: what the pipeline's results
//! must be, computed from the raw readings alone — exact integer sums,
//! sorted values for quantiles, exact rationals rounded once to `f64`. It
//! shares no code and no types with what it judges (it does not depend on
//! `tributary-core`): a bug in the pipeline's summary, sketch or statistics
//! shows as a disagreement instead of being repeated on both sides.
//!
//! # Layout
//! - [`exact`] — exact rationals and the `f64` nearest one (or its root).
//! - [`bucket`] — exponential-histogram buckets from their definition, and
//!   the containment check of a quantile estimate.
//! - [`stats`] — [`Stats`]: the statistics of a set of readings.
//! - this file — [`Readings`]: raw readings per [`Series`], folded into
//!   tumbling windows ([`Readings::windows`]) and into tag groups per query
//!   step ([`Readings::grouped`]), as the collector's results must come out.

pub mod bucket;
pub mod exact;
pub mod stats;

use std::collections::BTreeMap;

pub use exact::Ratio;
pub use stats::{Reading, Stats};

/// A series: metric, device and tags, as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Series {
    /// The metric name.
    pub metric: String,
    /// The device id.
    pub device: String,
    /// Tag name → value.
    pub tags: BTreeMap<String, String>,
}

impl Series {
    /// A series without tags.
    pub fn new(metric: &str, device: &str) -> Series {
        Series {
            metric: metric.to_string(),
            device: device.to_string(),
            tags: BTreeMap::new(),
        }
    }
}

/// Why readings could not be taken or folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OracleError {
    /// A series' readings came with two different quanta.
    MixedQuanta(Series),
    /// A window width or step is not positive, or a step is not a multiple
    /// of the width.
    Width(i64),
}

impl std::fmt::Display for OracleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OracleError::MixedQuanta(s) => write!(f, "series {s:?} has readings of two quanta"),
            OracleError::Width(w) => write!(f, "width or step {w} ms is not usable"),
        }
    }
}

impl std::error::Error for OracleError {}

/// Raw readings per series.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    series: BTreeMap<Series, (i8, Vec<Reading>)>,
}

impl Readings {
    /// No readings.
    pub fn new() -> Readings {
        Readings::default()
    }

    /// Adds a reading of `series`: `ticks` of the quantum 10^`exponent` at
    /// `time_ms`.
    pub fn add(
        &mut self,
        series: &Series,
        exponent: i8,
        time_ms: i64,
        ticks: i64,
    ) -> Result<(), OracleError> {
        let r = Reading { time_ms, ticks };
        match self.series.get_mut(series) {
            Some((e, _)) if *e != exponent => Err(OracleError::MixedQuanta(series.clone())),
            Some((_, v)) => {
                v.push(r);
                Ok(())
            }
            None => {
                self.series.insert(series.clone(), (exponent, vec![r]));
                Ok(())
            }
        }
    }

    /// The number of readings.
    pub fn count(&self) -> u64 {
        self.series.values().map(|(_, v)| v.len() as u64).sum()
    }

    /// The series with readings.
    pub fn series(&self) -> impl Iterator<Item = &Series> {
        self.series.keys()
    }

    /// The statistics of every (series, window start) of tumbling windows
    /// `[k·width, (k+1)·width)` of event time that holds a reading.
    pub fn windows(&self, width_ms: i64) -> Result<BTreeMap<(Series, i64), Stats>, OracleError> {
        if width_ms <= 0 {
            return Err(OracleError::Width(width_ms));
        }
        let mut out = BTreeMap::new();
        for (series, (e, readings)) in &self.series {
            let mut per: BTreeMap<i64, Vec<Reading>> = BTreeMap::new();
            for r in readings {
                per.entry(r.time_ms.div_euclid(width_ms) * width_ms)
                    .or_default()
                    .push(*r);
            }
            for (start, rs) in per {
                if let Some(s) = Stats::of(*e, &rs) {
                    out.insert((series.clone(), start), s);
                }
            }
        }
        Ok(out)
    }

    /// What a query of `metric` grouped by tag `tag` over the windows of
    /// `width` starting in `[from, to)` at `step` (a multiple of `width`)
    /// must return: per (tag value, step start `from + k·step`) the
    /// statistics of the readings of the matching series. Series without the
    /// tag form the group `""`, as in the API.
    pub fn grouped(
        &self,
        metric: &str,
        tag: &str,
        width_ms: i64,
        (from, to, step): (i64, i64, i64),
    ) -> Result<BTreeMap<(String, i64), Stats>, OracleError> {
        if width_ms <= 0 || step <= 0 || step % width_ms != 0 {
            return Err(OracleError::Width(step));
        }
        let mut groups: BTreeMap<(String, i64), (i8, Vec<Reading>)> = BTreeMap::new();
        for (series, (e, readings)) in self.series.iter().filter(|(s, _)| s.metric == metric) {
            let value = series.tags.get(tag).cloned().unwrap_or_default();
            for r in readings {
                let window = r.time_ms.div_euclid(width_ms) * width_ms;
                if window < from || window >= to {
                    continue;
                }
                let bucket = from + (window - from).div_euclid(step) * step;
                let g = groups
                    .entry((value.clone(), bucket))
                    .or_insert_with(|| (*e, Vec::new()));
                if g.0 != *e {
                    return Err(OracleError::MixedQuanta(series.clone()));
                }
                g.1.push(*r);
            }
        }
        Ok(groups
            .into_iter()
            .filter_map(|(k, (e, rs))| Stats::of(e, &rs).map(|s| (k, s)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(metric: &str, device: &str, site: Option<&str>) -> Series {
        let mut s = Series::new(metric, device);
        if let Some(site) = site {
            s.tags.insert("site".into(), site.into());
        }
        s
    }

    #[test]
    fn windows_split_by_event_time() {
        let mut r = Readings::new();
        let a = Series::new("t", "a");
        for (t, v) in [(0, 1), (9, 2), (10, 3), (-1, 4)] {
            r.add(&a, -3, t, v).unwrap();
        }
        assert_eq!(r.count(), 4);
        let w = r.windows(10).unwrap();
        let got: Vec<(i64, u64)> = w.iter().map(|((_, s), st)| (*s, st.count())).collect();
        assert_eq!(got, [(-10, 1), (0, 2), (10, 1)]);
        assert!(r.add(&a, -2, 0, 1).is_err(), "one quantum per series");
        assert!(r.windows(0).is_err());
    }

    #[test]
    fn groups_merge_members_per_tag_value_and_step() {
        let mut r = Readings::new();
        r.add(&tagged("t", "a", Some("x")), 0, 1, 10).unwrap();
        r.add(&tagged("t", "a", Some("x")), 0, 11, 20).unwrap();
        r.add(&tagged("t", "b", Some("x")), 0, 2, 30).unwrap();
        r.add(&tagged("t", "c", Some("y")), 0, 3, 40).unwrap();
        r.add(&tagged("t", "d", None), 0, 12, 50).unwrap();
        r.add(&tagged("t", "a", Some("x")), 0, 21, 60).unwrap(); // past `to`
        r.add(&tagged("u", "a", Some("x")), 0, 1, 70).unwrap(); // another metric
        let g = r.grouped("t", "site", 10, (0, 20, 20)).unwrap();
        let got: Vec<(&str, i64, u64, BigIntText)> = g
            .iter()
            .map(|((v, t), s)| (v.as_str(), *t, s.count(), s.sum_ticks().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("", 0, 1, "50".to_string()),
                ("x", 0, 3, "60".to_string()),
                ("y", 0, 1, "40".to_string())
            ]
        );
        assert!(r.grouped("t", "site", 10, (0, 20, 15)).is_err());
    }

    type BigIntText = String;
}
