//! The statistics a stored [`Summary`] is rendered as — `count`, `sum`,
//! `min`, `max`, `mean`, `stddev`, `first`, `last` and any quantile `pNN` —
//! shared by the query API and the sinks so both say the same thing.
//!
//! A statistic the summary cannot give (the stddev of one reading, anything
//! of an empty summary) or that is not finite has no value: the API shows it
//! as `null`, the sinks leave it out.

use tributary_core::Summary;

/// The named statistics, in the order they are rendered.
pub const NAMES: [&str; 8] = [
    "count", "sum", "min", "max", "mean", "stddev", "first", "last",
];

/// One statistic of a summary.
#[derive(Debug, Clone, PartialEq)]
pub enum Stat {
    /// Readings in the window.
    Count,
    /// Σx in the series' unit.
    Sum,
    /// The smallest reading.
    Min,
    /// The largest reading.
    Max,
    /// The exact mean.
    Mean,
    /// The sample standard deviation (two readings or more).
    Stddev,
    /// The value of the earliest reading.
    First,
    /// The value of the latest reading.
    Last,
    /// The quantile `q` ∈ [0, 1], rendered under `name` (e.g. `p99`).
    Quantile {
        /// The name it is rendered under.
        name: String,
        /// The fraction.
        q: f64,
    },
}

/// The value of a statistic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatValue {
    /// An exact integer (the count).
    Int(u64),
    /// A finite floating-point value.
    Float(f64),
}

impl StatValue {
    /// The value as JSON.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            StatValue::Int(n) => n.into(),
            StatValue::Float(x) => x.into(),
        }
    }
}

impl Stat {
    /// Every named statistic (all but the quantiles).
    pub fn named() -> Vec<Stat> {
        vec![
            Stat::Count,
            Stat::Sum,
            Stat::Min,
            Stat::Max,
            Stat::Mean,
            Stat::Stddev,
            Stat::First,
            Stat::Last,
        ]
    }

    /// Parses a name from [`NAMES`] or `pNN` with NN in 0..=100 (`p99.9`
    /// allowed); `None` when it is neither.
    pub fn parse(s: &str) -> Option<Stat> {
        let named = match s {
            "count" => Stat::Count,
            "sum" => Stat::Sum,
            "min" => Stat::Min,
            "max" => Stat::Max,
            "mean" => Stat::Mean,
            "stddev" => Stat::Stddev,
            "first" => Stat::First,
            "last" => Stat::Last,
            _ => {
                let pct = s
                    .strip_prefix('p')
                    .and_then(|d| d.parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))?;
                return Some(Stat::Quantile {
                    name: s.to_string(),
                    q: pct / 100.0,
                });
            }
        };
        Some(named)
    }

    /// The quantile `q` ∈ [0, 1] named `pNN` (0.5 → `p50`, 0.999 →
    /// `p99.9`); `None` outside [0, 1].
    pub fn quantile(q: f64) -> Option<Stat> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        // Rounded to 1e-9 percent so 0.29 names `p29`, not `p28.999999999999996`.
        let pct = (q * 100.0 * 1e9).round() / 1e9;
        Some(Stat::Quantile {
            name: format!("p{pct}"),
            q,
        })
    }

    /// The name it is rendered under.
    pub fn name(&self) -> &str {
        match self {
            Stat::Count => "count",
            Stat::Sum => "sum",
            Stat::Min => "min",
            Stat::Max => "max",
            Stat::Mean => "mean",
            Stat::Stddev => "stddev",
            Stat::First => "first",
            Stat::Last => "last",
            Stat::Quantile { name, .. } => name,
        }
    }

    /// The statistic of `s`; `None` when `s` cannot give it or it is not
    /// finite.
    pub fn value(&self, s: &Summary) -> Option<StatValue> {
        let x = match self {
            Stat::Count => return Some(StatValue::Int(s.count())),
            Stat::Sum => s.sum(),
            Stat::Min => s.min(),
            Stat::Max => s.max(),
            Stat::Mean => s.mean(),
            Stat::Stddev => s.stddev(),
            Stat::First => s.first().map(|f| f.1),
            Stat::Last => s.last().map(|l| l.1),
            Stat::Quantile { q, .. } => s.quantile(*q).map(|x| x.value),
        }?;
        x.is_finite().then_some(StatValue::Float(x))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::Quantum;

    #[test]
    fn names_parse_back_to_themselves() {
        for n in NAMES {
            assert_eq!(Stat::parse(n).unwrap().name(), n);
        }
        assert_eq!(
            Stat::parse("p50"),
            Some(Stat::Quantile {
                name: "p50".into(),
                q: 0.5
            })
        );
        assert_eq!(Stat::parse("p99.9").unwrap().name(), "p99.9");
        assert_eq!(Stat::parse("p101"), None);
        assert_eq!(Stat::parse("median"), None);
    }

    #[test]
    fn quantile_names_are_short() {
        let names: Vec<String> = [0.5, 0.9, 0.99, 0.999, 0.29, 0.0, 1.0]
            .iter()
            .map(|q| Stat::quantile(*q).unwrap().name().to_string())
            .collect();
        assert_eq!(names, ["p50", "p90", "p99", "p99.9", "p29", "p0", "p100"]);
        assert_eq!(Stat::quantile(1.5), None);
        assert_eq!(Stat::quantile(f64::NAN), None);
    }

    #[test]
    fn absent_statistics_have_no_value() {
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        assert_eq!(Stat::Count.value(&s), Some(StatValue::Int(0)));
        assert_eq!(Stat::Mean.value(&s), None);
        s.insert(10, 1500).unwrap();
        assert_eq!(Stat::Stddev.value(&s), None, "one reading has no stddev");
        assert_eq!(Stat::Mean.value(&s), Some(StatValue::Float(1.5)));
        assert_eq!(Stat::Last.value(&s), Some(StatValue::Float(1.5)));
    }
}
