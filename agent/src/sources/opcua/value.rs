//! From one data change (an OPC UA `DataValue`) to an event time and ticks
//! of the item's quantum, or the reason it is refused.
//!
//! # Design
//! Only a Good status is aggregated: Bad and Uncertain values are refused
//! (counted as `bad` and `uncertain`); a missing status means Good (the
//! encoding leaves it out then). The event time is the SourceTimestamp,
//! else the ServerTimestamp, else the time the agent received the change
//! (Unix ms, 100 ns ticks floored). Boolean (0/1) and integer variants are
//! scaled exactly, Float and Double rounded once
//! ([`crate::sources::scaling`]); any other variant, an array or no value
//! is refused as `type`.

use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use super::config::ItemScaling;

/// 100 ns ticks from 1601-01-01 to 1970-01-01.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;
/// 100 ns ticks per ms.
const TICKS_PER_MS: i64 = 10_000;

/// Why a data change is not aggregated (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A Bad status.
    Bad(StatusCode),
    /// An Uncertain status.
    Uncertain(StatusCode),
    /// Not a number (or no value).
    Type,
    /// Scaled, not representable in ticks (overflow, NaN, infinity).
    Value,
}

impl Refused {
    /// The metric's reason label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Bad(_) => "bad",
            Refused::Uncertain(_) => "uncertain",
            Refused::Type => "type",
            Refused::Value => "value",
        }
    }
}

/// Unix ms of an OPC UA time; `None` for the null time (0).
pub fn unix_ms(t: &DateTime) -> Option<i64> {
    if t.is_null() {
        return None;
    }
    t.ticks()
        .checked_sub(UNIX_EPOCH_TICKS)
        .map(|d| d.div_euclid(TICKS_PER_MS))
}

/// The change's event time: source, else server timestamp, else `received_ms`.
pub fn event_time(v: &DataValue, received_ms: i64) -> i64 {
    v.source_timestamp
        .as_ref()
        .and_then(unix_ms)
        .or_else(|| v.server_timestamp.as_ref().and_then(unix_ms))
        .unwrap_or(received_ms)
}

/// The change's ticks under `scaling`, or why it is refused.
pub fn ticks(v: &DataValue, scaling: &ItemScaling) -> Result<i64, Refused> {
    if let Some(s) = v.status {
        if s.is_bad() {
            return Err(Refused::Bad(s));
        }
        if s.is_uncertain() {
            return Err(Refused::Uncertain(s));
        }
    }
    let int = |i: i128| scaling.int.int(i).map_err(|_| Refused::Value);
    match v.value.as_ref().ok_or(Refused::Type)? {
        Variant::Boolean(b) => int(i128::from(*b)),
        Variant::SByte(i) => int(i128::from(*i)),
        Variant::Byte(i) => int(i128::from(*i)),
        Variant::Int16(i) => int(i128::from(*i)),
        Variant::UInt16(i) => int(i128::from(*i)),
        Variant::Int32(i) => int(i128::from(*i)),
        Variant::UInt32(i) => int(i128::from(*i)),
        Variant::Int64(i) => int(i128::from(*i)),
        Variant::UInt64(i) => int(i128::from(*i)),
        Variant::Float(f) => scaling
            .float
            .float(f64::from(*f))
            .map_err(|_| Refused::Value),
        Variant::Double(f) => scaling.float.float(*f).map_err(|_| Refused::Value),
        _ => Err(Refused::Type),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sources::scaling::Scaling;
    use tributary_core::Quantum;

    fn scaling(scale: f64, offset: f64, q: i8) -> ItemScaling {
        let q = Quantum::new(q).unwrap();
        ItemScaling {
            int: Scaling::new(scale, offset, q, false).unwrap(),
            float: Scaling::new(scale, offset, q, true).unwrap(),
        }
    }

    fn dv(v: Variant) -> DataValue {
        DataValue {
            value: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn numbers_are_scaled_exactly_or_rounded_once() {
        let s = scaling(0.1, -40.0, -2);
        // 0.1 × 1234 − 40 = 83.4 → 8340 hundredths, in integers.
        assert_eq!(ticks(&dv(Variant::Int32(1234)), &s), Ok(8340));
        assert_eq!(ticks(&dv(Variant::UInt16(0)), &s), Ok(-4000));
        assert_eq!(ticks(&dv(Variant::Boolean(true)), &s), Ok(-3990));
        assert_eq!(ticks(&dv(Variant::SByte(-3)), &s), Ok(-4030));
        // 21.255 × 0.1 − 40 = −37.8745 → −3787 (half away from zero).
        assert_eq!(ticks(&dv(Variant::Double(21.255)), &s), Ok(-3787));
        assert_eq!(ticks(&dv(Variant::Float(0.5)), &s), Ok(-3995));
        let s = scaling(1000.0, 0.0, 0);
        assert_eq!(
            ticks(&dv(Variant::UInt64(u64::MAX)), &s),
            Err(Refused::Value)
        );
        assert_eq!(
            ticks(&dv(Variant::Double(f64::NAN)), &s),
            Err(Refused::Value)
        );
    }

    #[test]
    fn statuses_and_other_types_are_refused_by_reason() {
        let s = scaling(1.0, 0.0, 0);
        let mut v = dv(Variant::Int32(5));
        v.status = Some(StatusCode::BadSensorFailure);
        assert_eq!(ticks(&v, &s).unwrap_err().label(), "bad");
        v.status = Some(StatusCode::UncertainLastUsableValue);
        assert_eq!(ticks(&v, &s).unwrap_err().label(), "uncertain");
        v.status = Some(StatusCode::Good);
        assert_eq!(ticks(&v, &s), Ok(5));
        assert_eq!(
            ticks(&dv(Variant::String("5".into())), &s),
            Err(Refused::Type)
        );
        assert_eq!(ticks(&DataValue::default(), &s), Err(Refused::Type));
    }

    #[test]
    fn the_event_time_is_the_source_then_server_then_receive_time() {
        // 2026-12-01T12:00:00.123Z
        let ms = 1_796_126_400_123i64;
        let at = |ms: i64| DateTime::from(UNIX_EPOCH_TICKS + ms * TICKS_PER_MS + 9_999);
        let mut v = dv(Variant::Int32(1));
        assert_eq!(event_time(&v, 7), 7);
        v.server_timestamp = Some(at(ms + 5));
        assert_eq!(event_time(&v, 7), ms + 5);
        v.source_timestamp = Some(at(ms));
        assert_eq!(event_time(&v, 7), ms, "sub-ms ticks are floored");
        v.source_timestamp = Some(DateTime::null());
        assert_eq!(event_time(&v, 7), ms + 5);
    }
}
