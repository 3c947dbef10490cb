//! Validated series keys: metric name, device and a bounded set of tags.
//!
//! Limits keep keys cheap to store and index and safe to embed in MQTT
//! topics, SQL and InfluxDB line protocol:
//! - metric: 1..=128 chars, `[A-Za-z_][A-Za-z0-9_.:]*`
//! - device: 1..=64 chars, `[A-Za-z0-9_.:-]+` (also used for agent ids)
//! - tags: at most [`MAX_TAGS`]; keys 1..=64 chars `[A-Za-z_][A-Za-z0-9_]*`,
//!   not `metric` or `device`; values 1..=128 printable characters without
//!   control characters, `"`, `,`, `=` or `\`.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt;

use serde::{Deserialize, Serialize};

/// The most tags a series may carry.
pub const MAX_TAGS: usize = 16;
/// The longest metric name.
pub const MAX_METRIC_LEN: usize = 128;
/// The longest device or agent id.
pub const MAX_ID_LEN: usize = 64;
/// The longest tag key.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// The longest tag value.
pub const MAX_TAG_VALUE_LEN: usize = 128;

/// What is wrong with a series key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A part is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A part is too long.
    #[error("{what} is {len} characters long; the limit is {max}")]
    TooLong {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A part has a character it may not contain.
    #[error("{what} {value:?} contains the character {ch:?}, which is not allowed there")]
    BadChar {
        /// Which part.
        what: &'static str,
        /// The offending text.
        value: String,
        /// The offending character.
        ch: char,
    },
    /// Too many tags.
    #[error("{0} tags; the limit is {MAX_TAGS}")]
    TooManyTags(usize),
    /// A reserved tag key.
    #[error("tag key {0:?} is reserved")]
    ReservedTag(String),
}

fn check(
    what: &'static str,
    s: &str,
    max: usize,
    first: impl Fn(char) -> bool,
    rest: impl Fn(char) -> bool,
) -> Result<(), KeyError> {
    let len = s.chars().count();
    if len == 0 {
        return Err(KeyError::Empty(what));
    }
    if len > max {
        return Err(KeyError::TooLong { what, len, max });
    }
    for (i, ch) in s.chars().enumerate() {
        let ok = if i == 0 { first(ch) } else { rest(ch) };
        if !ok {
            return Err(KeyError::BadChar {
                what,
                value: s.into(),
                ch,
            });
        }
    }
    Ok(())
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// Validates a metric name.
pub fn validate_metric(s: &str) -> Result<(), KeyError> {
    check("metric name", s, MAX_METRIC_LEN, ident_start, |c| {
        c.is_ascii_alphanumeric() || "_.:".contains(c)
    })
}

/// Validates a device or agent id.
pub fn validate_id(what: &'static str, s: &str) -> Result<(), KeyError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
    check(what, s, MAX_ID_LEN, ok, ok)
}

fn validate_tag(k: &str, v: &str) -> Result<(), KeyError> {
    check("tag key", k, MAX_TAG_KEY_LEN, ident_start, |c| {
        c.is_ascii_alphanumeric() || c == '_'
    })?;
    if k == "metric" || k == "device" {
        return Err(KeyError::ReservedTag(k.into()));
    }
    let ok = |c: char| !c.is_control() && !"\",=\\".contains(c);
    check("tag value", v, MAX_TAG_VALUE_LEN, ok, ok)
}

/// The identity of a series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawKey")]
pub struct SeriesKey {
    metric: String,
    device: String,
    // Always serialised, even when empty: postcard (the binary batch form)
    // is not self-describing, so a skipped field would break decoding.
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    metric: String,
    device: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

impl TryFrom<RawKey> for SeriesKey {
    type Error = KeyError;
    fn try_from(r: RawKey) -> Result<Self, KeyError> {
        SeriesKey::new(r.metric, r.device, r.tags)
    }
}

impl SeriesKey {
    /// A validated key.
    pub fn new(
        metric: impl Into<String>,
        device: impl Into<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<Self, KeyError> {
        let (metric, device) = (metric.into(), device.into());
        validate_metric(&metric)?;
        validate_id("device id", &device)?;
        if tags.len() > MAX_TAGS {
            return Err(KeyError::TooManyTags(tags.len()));
        }
        for (k, v) in &tags {
            validate_tag(k, v)?;
        }
        Ok(SeriesKey {
            metric,
            device,
            tags,
        })
    }

    /// The metric name.
    pub fn metric(&self) -> &str {
        &self.metric
    }
    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }
    /// The tags, sorted by key.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }
    /// The value of tag `k` (`metric` and `device` also answer).
    pub fn tag(&self, k: &str) -> Option<&str> {
        match k {
            "metric" => Some(&self.metric),
            "device" => Some(&self.device),
            _ => self.tags.get(k).map(String::as_str),
        }
    }
}

/// `metric{device="d",k="v"}`, a stable canonical text form.
impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{device=\"{}\"", self.metric, self.device)?;
        for (k, v) in &self.tags {
            write!(f, ",{k}=\"{v}\"")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_and_displays_canonically() {
        let k = SeriesKey::new(
            "temperature",
            "dev-1",
            tags(&[("site", "north"), ("floor", "2")]),
        )
        .unwrap();
        assert_eq!(
            k.to_string(),
            "temperature{device=\"dev-1\",floor=\"2\",site=\"north\"}"
        );
        assert_eq!(k.tag("site"), Some("north"));
        assert_eq!(k.tag("device"), Some("dev-1"));
    }

    #[test]
    fn rejects_each_kind_of_bad_key() {
        assert_eq!(
            SeriesKey::new("", "d", tags(&[])),
            Err(KeyError::Empty("metric name"))
        );
        assert!(matches!(
            SeriesKey::new("9temp", "d", tags(&[])),
            Err(KeyError::BadChar { ch: '9', .. })
        ));
        assert!(matches!(
            SeriesKey::new("t", "d/x", tags(&[])),
            Err(KeyError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            SeriesKey::new("t".repeat(129), "d", tags(&[])),
            Err(KeyError::TooLong {
                len: 129,
                max: 128,
                ..
            })
        ));
        assert_eq!(
            SeriesKey::new("t", "d", tags(&[("device", "x")])),
            Err(KeyError::ReservedTag("device".into()))
        );
        assert!(matches!(
            SeriesKey::new("t", "d", tags(&[("k", "a,b")])),
            Err(KeyError::BadChar { ch: ',', .. })
        ));
        let many: BTreeMap<String, String> = (0..17)
            .map(|i| (alloc::format!("k{i}"), "v".to_string()))
            .collect();
        assert_eq!(
            SeriesKey::new("t", "d", many),
            Err(KeyError::TooManyTags(17))
        );
    }

    #[test]
    fn decoding_validates() {
        let err =
            serde_json::from_str::<SeriesKey>(r#"{"metric":"t","device":"a b"}"#).unwrap_err();
        assert!(err.to_string().contains("device id"), "{err}");
        assert!(
            serde_json::from_str::<SeriesKey>(r#"{"metric":"t","device":"d","extra":1}"#).is_err()
        );
    }
}
