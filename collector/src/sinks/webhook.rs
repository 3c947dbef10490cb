//! The generic JSON webhook body:
//!
//! ```json
//! {"sink": "hook", "points": [
//!   {"series": {"metric": "temperature", "device": "d1", "tags": {"site": "north"}},
//!    "start": 1700000000000, "width": 60000, "revision": 0, "final": true,
//!    "count": 3, "sum": 6.0, "min": 1.0, "max": 3.0, "mean": 2.0, "stddev": 1.0,
//!    "first": 1.0, "last": 3.0, "p50": 2.0, "p90": 3.0, "p99": 3.0}
//! ]}
//! ```
//!
//! A point is identified by (`series`, `start`, `width`); a later revision of
//! the same window comes with a higher `revision`, so a receiver upserts.
//! A statistic the window cannot give (the stddev of one reading) is left
//! out.

use serde_json::{json, Map, Value};

use crate::query::stats::Stat;
use crate::store::Changed;

/// The JSON body of `rows` pushed by sink `sink`.
pub(crate) fn encode(sink: &str, rows: &[Changed], stats: &[Stat]) -> String {
    let points: Vec<Value> = rows.iter().map(|row| point(row, stats)).collect();
    json!({ "sink": sink, "points": points }).to_string()
}

fn point(row: &Changed, stats: &[Stat]) -> Value {
    let w = &row.stored;
    let mut m = Map::new();
    m.insert("series".into(), json!(row.series));
    m.insert("start".into(), json!(w.window.start()));
    m.insert("width".into(), json!(w.window.width().ms()));
    m.insert("revision".into(), json!(w.revision));
    m.insert("final".into(), json!(true));
    for stat in stats {
        if let Some(v) = stat.value(&w.summary) {
            m.insert(stat.name().to_string(), v.to_json());
        }
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::StoredWindow;
    use std::collections::BTreeMap;
    use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

    #[test]
    fn a_point_carries_its_identity_revision_and_present_statistics() {
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        s.insert(120_001, 2500).unwrap();
        let tags = BTreeMap::from([("site".to_string(), "north".to_string())]);
        let row = Changed {
            change: 7,
            series: SeriesKey::new("temp", "d1", tags).unwrap(),
            stored: StoredWindow {
                window: Window::new(120_000, Width::new(60_000).unwrap()).unwrap(),
                summary: s,
                revision: 3,
            },
        };
        let stats = vec![
            Stat::Count,
            Stat::Mean,
            Stat::Stddev,
            Stat::quantile(0.5).unwrap(),
        ];
        let v: Value = serde_json::from_str(&encode("hook", &[row], &stats)).unwrap();
        assert_eq!(
            v,
            json!({"sink": "hook", "points": [{
                "series": {"metric": "temp", "device": "d1", "tags": {"site": "north"}},
                "start": 120_000, "width": 60_000, "revision": 3, "final": true,
                "count": 1, "mean": 2.5, "p50": 2.5
            }]})
        );
    }
}
