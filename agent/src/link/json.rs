//! The JSON readings devices publish on `tributary/v1/devices/{device}/readings`.
//!
//! # Shape (version 1)
//! One reading:
//! ```json
//! {"v":1,"metric":"temperature","time":1700000000000,"value":21.5,"tags":{"room":"lab"}}
//! ```
//! A batch:
//! ```json
//! {"v":1,"boot":7,"seq":42,"readings":[{"metric":"temperature","time":1700000000000,"value":21.5}]}
//! ```
//! - `time` is event time in ms since the Unix epoch; `value` a finite number
//!   in the series' unit (converted to ticks of its quantum); `tags` optional.
//! - Optional `boot` and `seq` (both or neither) identify the message: a
//!   message whose (device, boot, seq) was already applied is acknowledged
//!   and not applied again, which makes redelivery after an agent crash
//!   exactly-once. Without them delivery is at-least-once.
//! - Unknown fields and unknown versions are rejected.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::metrics::Reject;

/// The JSON format version this build speaks.
pub const JSON_VERSION: u16 = 1;

/// One reading.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonReading {
    /// Metric name.
    pub metric: String,
    /// Event time (ms since the epoch).
    pub time: i64,
    /// The value in the series' unit.
    pub value: f64,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonMessage {
    /// (boot, seq) identity, when given.
    pub id: Option<(u32, u32)>,
    /// The readings.
    pub readings: Vec<JsonReading>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Single {
    #[allow(dead_code)]
    v: u16,
    boot: Option<u32>,
    seq: Option<u32>,
    metric: String,
    time: i64,
    value: f64,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Many {
    #[allow(dead_code)]
    v: u16,
    boot: Option<u32>,
    seq: Option<u32>,
    readings: Vec<JsonReading>,
}

#[derive(Deserialize)]
struct Probe {
    v: Option<u16>,
    readings: Option<serde::de::IgnoredAny>,
}

/// Parses a payload; the error says what is wrong.
pub fn parse(payload: &[u8]) -> Result<JsonMessage, (Reject, String)> {
    let probe: Probe = serde_json::from_slice(payload)
        .map_err(|e| (Reject::MalformedJson, format!("not a JSON object: {e}")))?;
    match probe.v {
        None => return Err((Reject::MalformedJson, "missing version field `v`".into())),
        Some(JSON_VERSION) => {}
        Some(v) => {
            return Err((
                Reject::UnknownVersion,
                format!("unknown readings version {v} (this build speaks {JSON_VERSION})"),
            ))
        }
    }
    let (boot, seq, readings) = if probe.readings.is_some() {
        let m: Many = serde_json::from_slice(payload)
            .map_err(|e| (Reject::MalformedJson, format!("bad reading batch: {e}")))?;
        (m.boot, m.seq, m.readings)
    } else {
        let s: Single = serde_json::from_slice(payload)
            .map_err(|e| (Reject::MalformedJson, format!("bad reading: {e}")))?;
        (
            s.boot,
            s.seq,
            vec![JsonReading {
                metric: s.metric,
                time: s.time,
                value: s.value,
                tags: s.tags,
            }],
        )
    };
    let id = match (boot, seq) {
        (Some(b), Some(s)) => Some((b, s)),
        (None, None) => None,
        _ => {
            return Err((
                Reject::MalformedJson,
                "`boot` and `seq` must be given together".into(),
            ))
        }
    };
    Ok(JsonMessage { id, readings })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reading's value is the double nearest its decimal text, as Rust's
    /// own (correctly rounding) parser reads it — also for mantissas longer
    /// than a double holds, halfway cases and the smallest normal number.
    #[test]
    fn values_parse_to_the_nearest_double() {
        let long = format!("99999999999966{}9921.5", "6".repeat(246));
        let texts = [
            "21.5",
            "0.1",
            "9007199254740993",
            "2.2250738585072011e-308",
            "1.00000000000000011102230246251565404236316680908203125",
            "123456789012345678901234567890.123456789",
            long.as_str(),
        ];
        for text in texts {
            let payload = format!(r#"{{"v":1,"metric":"t","time":5,"value":{text}}}"#);
            let m = parse(payload.as_bytes()).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(m.readings[0].value.to_bits(), want.to_bits(), "{text}");
        }
    }

    #[test]
    fn parses_single_and_batch() {
        let m = parse(br#"{"v":1,"metric":"t","time":5,"value":21.5,"tags":{"a":"b"}}"#).unwrap();
        assert_eq!(m.readings.len(), 1);
        assert_eq!(m.readings[0].tags["a"], "b");
        assert_eq!(m.id, None);
        let m = parse(br#"{"v":1,"boot":2,"seq":9,"readings":[{"metric":"t","time":5,"value":1},{"metric":"u","time":6,"value":2}]}"#).unwrap();
        assert_eq!(m.readings.len(), 2);
        assert_eq!(m.id, Some((2, 9)));
    }

    #[test]
    fn rejects_each_bad_shape_with_a_reason() {
        let cases: [(&[u8], Reject); 6] = [
            (b"{not json", Reject::MalformedJson),
            (
                br#"{"metric":"t","time":5,"value":1}"#,
                Reject::MalformedJson,
            ),
            (
                br#"{"v":2,"metric":"t","time":5,"value":1}"#,
                Reject::UnknownVersion,
            ),
            (
                br#"{"v":1,"metric":"t","time":5,"value":"NaN"}"#,
                Reject::MalformedJson,
            ),
            (
                br#"{"v":1,"metric":"t","time":5,"value":1,"extra":1}"#,
                Reject::MalformedJson,
            ),
            (
                br#"{"v":1,"seq":1,"metric":"t","time":5,"value":1}"#,
                Reject::MalformedJson,
            ),
        ];
        for (payload, want) in cases {
            let (got, why) = parse(payload).unwrap_err();
            assert_eq!(got, want, "{}: {why}", String::from_utf8_lossy(payload));
            assert!(!why.is_empty());
        }
    }
}
