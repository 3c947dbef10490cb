//! The ground truth of simulated devices, for the demo's and the system
//! tests' exactness checks: the virtual devices' own record of what they
//! measured ([`TruthWindow`]s), folded into the collector's windows by
//! merging (exact, so the result must equal — every field — what the
//! pipeline stored). The caller gives the truth the series keys the agents
//! forward (their global tags), so results grouped by a tag can be checked
//! against the truth too.

use std::collections::BTreeMap;

use tributary_core::{SeriesKey, Summary, SummaryError};

use crate::fleet::TruthWindow;

/// Why the ground truth could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// The virtual devices could not be replayed.
    #[error("replaying the simulated devices: {0:?}")]
    Devices(tributary_firmware::AggregatorError),
    /// Device windows did not merge.
    #[error("merging device windows: {0}")]
    Merge(#[from] SummaryError),
    /// The width is not positive.
    #[error("window width {0} ms is not positive")]
    Width(i64),
}

/// Every (series, window start) at `width_ms` with the summary of all the
/// readings of `truth` (device windows) in it.
pub fn windows(
    truth: impl IntoIterator<Item = TruthWindow>,
    width_ms: i64,
) -> Result<BTreeMap<(SeriesKey, i64), Summary>, TruthError> {
    if width_ms <= 0 {
        return Err(TruthError::Width(width_ms));
    }
    let mut out: BTreeMap<(SeriesKey, i64), Summary> = BTreeMap::new();
    for w in truth {
        let start = w.start_ms.div_euclid(width_ms) * width_ms;
        match out.get_mut(&(w.series.clone(), start)) {
            Some(s) => s.merge(&w.summary)?,
            None => {
                out.insert((w.series, start), w.summary);
            }
        }
    }
    Ok(out)
}

/// What a query of `metric` grouped by tag `tag` over `[from, to)` at `step`
/// (a multiple of the windows' width) must return: the windows of the
/// matching series merged per (tag value, step start), the step starting at
/// `from + k·step`. Series without the tag form the group `""`, as in the API.
pub fn grouped(
    windows: &BTreeMap<(SeriesKey, i64), Summary>,
    metric: &str,
    tag: &str,
    (from, to, step): (i64, i64, i64),
) -> Result<BTreeMap<(String, i64), Summary>, TruthError> {
    if step <= 0 {
        return Err(TruthError::Width(step));
    }
    let mut out: BTreeMap<(String, i64), Summary> = BTreeMap::new();
    for ((key, start), s) in windows {
        if key.metric() != metric || *start < from || *start >= to {
            continue;
        }
        let bucket = from + (start - from).div_euclid(step) * step;
        let group = (key.tag(tag).unwrap_or("").to_string(), bucket);
        match out.get_mut(&group) {
            Some(m) => m.merge(s)?,
            None => {
                out.insert(group, s.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device: &str, site: Option<&str>) -> SeriesKey {
        let tags = site
            .map(|s| BTreeMap::from([("site".to_string(), s.to_string())]))
            .unwrap_or_default();
        SeriesKey::new("t", device, tags).expect("valid key")
    }

    fn summary(points: &[(i64, i64)]) -> Summary {
        let mut s = Summary::new(tributary_core::Quantum::default());
        for &(t, v) in points {
            s.insert(t, v).expect("finite");
        }
        s
    }

    #[test]
    fn grouped_merges_members_per_tag_value_and_step() {
        let mut w = BTreeMap::new();
        w.insert((key("a", Some("x")), 0), summary(&[(1, 10)]));
        w.insert((key("a", Some("x")), 10), summary(&[(11, 20)]));
        w.insert((key("b", Some("x")), 0), summary(&[(2, 30)]));
        w.insert((key("c", Some("y")), 0), summary(&[(3, 40)]));
        w.insert((key("d", None), 10), summary(&[(12, 50)]));
        w.insert((key("a", Some("x")), 20), summary(&[(21, 60)])); // outside `to`
        let other = SeriesKey::new("u", "a", BTreeMap::new()).expect("valid key");
        w.insert((other, 0), summary(&[(1, 70)])); // another metric
        let g = grouped(&w, "t", "site", (0, 20, 20)).expect("merges");
        let got: Vec<(&str, i64, u64, i128)> = g
            .iter()
            .map(|((v, t), s)| (v.as_str(), *t, s.count(), s.sum_ticks()))
            .collect();
        assert_eq!(
            got,
            [("", 0, 1, 50), ("x", 0, 3, 60), ("y", 0, 1, 40)],
            "x merges a's two windows and b's"
        );
        assert!(grouped(&w, "t", "site", (0, 20, 0)).is_err());
    }
}
