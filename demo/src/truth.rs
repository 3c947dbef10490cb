//! What the results of agents running simulated devices must be, by the
//! oracle (`tributary-oracle`): each agent's devices replayed offline, their
//! raw readings keyed by the series keys that agent forwards
//! ([`readings`]); and the query API's JSON points judged against the
//! oracle's statistics ([`judge_point`]). Stored windows are judged by
//! [`tributary_sim::judge`].

use std::collections::BTreeMap;

use serde_json::Value;
use tributary_agent::config::Config as AgentConfig;
use tributary_agent::sources::simulated::agent_readings;
use tributary_core::{SeriesKey, Summary};
use tributary_oracle::{OracleError, Readings, Stats};
use tributary_sim::SeriesReadings;

pub use tributary_sim::judge::{judge_windows, series, Verdict, FLOOR_SCALE};

/// Why the oracle's input could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// The virtual devices could not be replayed.
    #[error("replaying the simulated devices: {0:?}")]
    Devices(tributary_sim::AggregatorError),
    /// The oracle refused the readings.
    #[error("the oracle: {0}")]
    Oracle(#[from] OracleError),
}

/// The raw readings of the simulated devices of `agents`, with the series
/// keys the agents forward (their global tags applied).
pub fn readings(agents: &[AgentConfig]) -> Result<Readings, TruthError> {
    Ok(tributary_sim::judge::oracle(&device_readings(agents)?)?)
}

/// Each series' raw readings as the devices of `agents` produce them (one
/// replay, for the oracle and for the raw-JSON comparison alike).
pub fn device_readings(agents: &[AgentConfig]) -> Result<Vec<SeriesReadings>, TruthError> {
    let mut all = Vec::new();
    for agent in agents {
        let r = agent_readings(&agent.simulated, &agent.global_tags(), &agent.limits);
        all.extend(r.map_err(TruthError::Devices)?);
    }
    Ok(all)
}

/// Everything in which the API's `point` (a JSON object with the statistics
/// `stats`, e.g. `count`, `mean`, `p99`) differs from the oracle's `want`:
/// every named statistic must be the oracle's `f64` exactly (`null` where
/// it has none); a quantile `pNN` must lie in the true value's bucket at
/// `scale` (p0 and p100 exactly the min and max).
pub fn judge_point(point: &Value, want: &Stats, stats: &[&str], scale: i8) -> Vec<String> {
    let mut out = Vec::new();
    for &stat in stats {
        let got = &point[stat];
        let expect = match stat {
            "count" => {
                if got.as_u64() != Some(want.count()) {
                    out.push(format!("count: got {got}, want {}", want.count()));
                }
                continue;
            }
            "sum" => Some(want.sum()),
            "mean" => Some(want.mean()),
            "stddev" => want.stddev(),
            "min" => Some(want.value(want.min_ticks())),
            "max" => Some(want.value(want.max_ticks())),
            "first" => Some(want.value(want.first().ticks)),
            "last" => Some(want.value(want.last().ticks)),
            _ => match (stat.strip_prefix('p'), got.as_f64()) {
                (Some(pct), Some(x)) => {
                    if let Err(e) = want.check_quantile(pct, x, scale) {
                        out.push(e);
                    }
                    continue;
                }
                _ => {
                    out.push(format!("{stat}: got {got}"));
                    continue;
                }
            },
        };
        if got.as_f64() != expect {
            out.push(format!("{stat}: got {got}, want {expect:?}"));
        }
    }
    out
}

/// The coarsest sketch scale among the stored windows (at the query's
/// width) that a query of `metric` grouped by `tag` over `[from, to)` at
/// `step` merges into each point: the scale of the point's sketch, at
/// which its quantiles are judged.
pub fn group_scales(
    stored: &BTreeMap<(SeriesKey, i64), Summary>,
    metric: &str,
    tag: &str,
    (from, to, step): (i64, i64, i64),
) -> BTreeMap<(String, i64), i8> {
    let mut out: BTreeMap<(String, i64), i8> = BTreeMap::new();
    for ((key, start), s) in stored {
        if key.metric() != metric || *start < from || *start >= to || step <= 0 {
            continue;
        }
        let bucket = from + (start - from).div_euclid(step) * step;
        let group = (key.tag(tag).unwrap_or("").to_string(), bucket);
        let scale = s.sketch().scale();
        out.entry(group)
            .and_modify(|s| *s = (*s).min(scale))
            .or_insert(scale);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_oracle::Reading;

    fn stats(values: &[i64]) -> Stats {
        let r: Vec<Reading> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| Reading {
                time_ms: i as i64,
                ticks: v,
            })
            .collect();
        Stats::of(-3, &r).expect("readings")
    }

    #[test]
    fn points_are_judged_statistic_by_statistic() {
        let want = stats(&[1_000, -2_000, 4_500]);
        let good = serde_json::json!({
            "count": 3, "sum": 3.5, "mean": 3.5 / 3.0, "min": -2.0, "max": 4.5,
            "first": 1.0, "last": 4.5, "stddev": want.stddev(), "p50": 1.0, "p100": 4.5,
        });
        let all = [
            "count", "sum", "mean", "min", "max", "first", "last", "stddev", "p50", "p100",
        ];
        assert_eq!(judge_point(&good, &want, &all, 6), Vec::<String>::new());
        let mut bad = good.clone();
        bad["mean"] = serde_json::json!(1.1666666666666665);
        bad["p50"] = serde_json::json!(1.2);
        bad["count"] = serde_json::json!(4);
        let problems = judge_point(&bad, &want, &all, 6);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let one = stats(&[7]);
        let point = serde_json::json!({"stddev": null});
        assert!(judge_point(&point, &one, &["stddev"], 6).is_empty());
    }
}
