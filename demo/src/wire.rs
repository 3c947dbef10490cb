//! The demo's bytes-on-the-wire figures: the MQTT PUBLISH packets of the
//! agents' batches (counted by each agent's uplink as it sends them,
//! `Counters::uplink_publish_bytes`), against the packets the devices would
//! have sent had each published every raw reading as one JSON message —
//! produced here from the devices' actual readings and measured with the
//! same encoder ([`publish_packet_len`]), not estimated.
//!
//! A raw reading is what the agent's own JSON source accepts on
//! `tributary/v1/devices/{device}/readings`:
//! `{"v":1,"metric":"temperature","time":1764052800123,"value":21.37}`, its
//! value written with the decimals of the channel's quantum, as a
//! fixed-point device prints it. The agent's global tags are added by the
//! agent, so the device does not send them.

use tributary_agent::uplink::publish_packet_len;
use tributary_core::topic;
use tributary_sim::SeriesReadings;

/// The raw JSON messages of the devices' `series` (as
/// [`crate::truth::device_readings`] replays them): (messages, packet
/// bytes).
pub fn raw_json(series: &[SeriesReadings]) -> (u64, u64) {
    let (mut messages, mut bytes) = (0u64, 0u64);
    for s in series {
        let topic = topic::readings(s.series.device());
        for &(time, ticks) in &s.readings {
            let json = reading_json(s.series.metric(), time, ticks, s.exponent);
            messages += 1;
            bytes += publish_packet_len(&topic, json.as_bytes()) as u64;
        }
    }
    (messages, bytes)
}

/// One reading as a device publishes it.
pub fn reading_json(metric: &str, time: i64, ticks: i64, exponent: i8) -> String {
    format!(
        r#"{{"v":1,"metric":{},"time":{time},"value":{}}}"#,
        serde_json::Value::from(metric),
        decimal(ticks, exponent)
    )
}

/// `ticks`·10^`exponent` written exactly, with −`exponent` decimals.
fn decimal(ticks: i64, exponent: i8) -> String {
    let digits = ticks.unsigned_abs().to_string();
    let sign = if ticks < 0 { "-" } else { "" };
    if exponent >= 0 {
        let zeros = if ticks == 0 { 0 } else { exponent as usize };
        return format!("{sign}{digits}{}", "0".repeat(zeros));
    }
    let places = usize::from(exponent.unsigned_abs());
    let padded = format!("{digits:0>width$}", width = places + 1);
    let (int, frac) = padded.split_at(padded.len() - places);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_agent::link::json;
    use tributary_core::Quantum;

    #[test]
    fn raw_readings_are_what_the_agent_accepts_with_their_exact_ticks() {
        for (ticks, e) in [
            (2_137, -2),
            (-5, -2),
            (0, -3),
            (101_325, 0),
            (7, 2),
            (-1_234_567, -6),
            (123_456_789_012, -12),
        ] {
            let text = reading_json("temperature", 1_764_052_800_123, ticks, e);
            let m = json::parse(text.as_bytes()).unwrap();
            assert_eq!(m.readings.len(), 1, "{text}");
            let r = &m.readings[0];
            assert_eq!(
                (r.metric.as_str(), r.time),
                ("temperature", 1_764_052_800_123)
            );
            let q = Quantum::new(e).unwrap();
            assert_eq!(q.ticks(r.value).unwrap(), ticks, "{text}");
        }
        assert_eq!(
            reading_json("t", 5, 2_137, -2),
            r#"{"v":1,"metric":"t","time":5,"value":21.37}"#
        );
        assert_eq!(decimal(-5, -2), "-0.05");
        assert_eq!(decimal(7, 2), "700");
    }
}
