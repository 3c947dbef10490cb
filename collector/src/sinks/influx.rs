//! InfluxDB line protocol for the v2 write API
//! (`POST {url}/api/v2/write?org=…&bucket=…&precision=ms`).
//!
//! One line per (series, window):
//!
//! ```text
//! temperature,device=d1,site=north count=3i,sum=6,min=1,max=3,mean=2,stddev=1,first=1,last=3,p50=2,revision=0i,final=true 1700000000000
//! ```
//!
//! - measurement = the metric name; tags = `device` and the series' tags,
//!   sorted by key; timestamp = the window's start in ms.
//! - fields = the statistics (`count` an integer, the others floats), then
//!   `revision` (integer) and `final`. A statistic the window cannot give
//!   (the stddev of one reading) is left out, never written as NaN.
//! - A later revision of a window is the same point (same measurement, tags
//!   and timestamp), so InfluxDB overwrites it.
//!
//! Escaping follows the line-protocol rules: in the measurement `,` and
//! space; in tag keys, tag values and field keys `,`, `=` and space.
//! Line protocol cannot carry control characters (newlines) in names at all,
//! and InfluxDB versions disagree on a backslash before a special character
//! or at the end of a name; series keys hold neither (they are validated).
//! A control character that reached here anyway is replaced by `_` rather
//! than break the body; a backslash is written as it is.

use std::fmt::Write as _;

use crate::query::stats::{Stat, StatValue};
use crate::store::Changed;

/// The line-protocol body of `rows`, one line each (newline-terminated).
pub(crate) fn encode(rows: &[Changed], stats: &[Stat]) -> String {
    let mut out = String::with_capacity(rows.len() * 256);
    for row in rows {
        line(&mut out, row, stats);
    }
    out
}

/// Appends the line of one row.
fn line(out: &mut String, row: &Changed, stats: &[Stat]) {
    let key = &row.series;
    escape(out, key.metric(), &[',', ' ']);
    let mut tags: Vec<(&str, &str)> = key
        .tags()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([("device", key.device())])
        .collect();
    tags.sort_unstable();
    for (k, v) in tags {
        if v.is_empty() {
            continue; // line protocol has no empty tag values
        }
        out.push(',');
        escape(out, k, TAG);
        out.push('=');
        escape(out, v, TAG);
    }
    let summary = &row.stored.summary;
    let mut sep = ' ';
    for stat in stats {
        let Some(v) = stat.value(summary) else {
            continue;
        };
        out.push(sep);
        sep = ',';
        escape(out, stat.name(), TAG);
        // Writing to a String cannot fail.
        let _ = match v {
            StatValue::Int(n) => write!(out, "={n}i"),
            StatValue::Float(x) => write!(out, "={x}"),
        };
    }
    out.push(sep);
    let _ = writeln!(
        out,
        "revision={}i,final=true {}",
        row.stored.revision,
        row.stored.window.start()
    );
}

/// The characters escaped in tag keys, tag values and field keys.
const TAG: &[char] = &[',', '=', ' '];

/// Appends `s` with each of `special` preceded by a backslash.
fn escape(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        if c.is_control() {
            out.push('_');
            continue;
        }
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::StoredWindow;
    use std::collections::BTreeMap;
    use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

    fn esc(s: &str, special: &[char]) -> String {
        let mut out = String::new();
        escape(&mut out, s, special);
        out
    }

    #[test]
    fn measurement_escapes_commas_and_spaces_only() {
        assert_eq!(esc("a,b c=d", &[',', ' ']), "a\\,b\\ c=d");
    }

    #[test]
    fn tags_and_field_keys_escape_commas_equals_and_spaces() {
        assert_eq!(esc("a,b c=d", TAG), "a\\,b\\ c\\=d");
        assert_eq!(esc("plain_ascii.é", TAG), "plain_ascii.é");
        assert_eq!(esc("new\nline", TAG), "new_line");
    }

    #[test]
    fn escaped_names_parse_back_with_influxdatas_parser() {
        // A backslash only before an ordinary character: parsers disagree on
        // the rest, and series keys never hold one (see the module doc).
        let nasty = ["a,b", "c d", "e=f", "g\\h", "plain", "ünï cödé", " , = "];
        for m in nasty {
            for t in nasty {
                let mut line = String::new();
                escape(&mut line, m, &[',', ' ']);
                line.push(',');
                escape(&mut line, t, TAG);
                line.push('=');
                escape(&mut line, t, TAG);
                line.push(' ');
                escape(&mut line, t, TAG);
                line.push_str("=1i 5\n");
                let parsed: Vec<_> = influxdb_line_protocol::parse_lines(&line)
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("{line:?}: {e}"));
                let p = &parsed[0];
                assert_eq!(p.series.measurement.as_str(), m, "{line:?}");
                let tags = p.series.tag_set.as_ref().unwrap();
                assert_eq!((tags[0].0.as_str(), tags[0].1.as_str()), (t, t), "{line:?}");
                assert_eq!(p.field_set[0].0.as_str(), t, "{line:?}");
                assert_eq!(p.timestamp, Some(5));
            }
        }
    }

    fn row(tags: &[(&str, &str)], values: &[i64], revision: u32) -> Changed {
        let tags: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        for (i, v) in values.iter().enumerate() {
            s.insert(60_000 + i as i64, *v).unwrap();
        }
        Changed {
            change: 1,
            series: SeriesKey::new("temp", "d1", tags).unwrap(),
            stored: StoredWindow {
                window: Window::new(60_000, Width::new(60_000).unwrap()).unwrap(),
                summary: s,
                revision,
            },
        }
    }

    #[test]
    fn a_line_has_sorted_escaped_tags_typed_fields_and_the_window_start() {
        let stats = vec![Stat::Count, Stat::Sum, Stat::Mean, Stat::Stddev];
        let body = encode(
            &[row(&[("site", "north pole"), ("b", "é")], &[1000, 3000], 2)],
            &stats,
        );
        assert_eq!(
            body,
            "temp,b=é,device=d1,site=north\\ pole count=2i,sum=4,mean=2,stddev=1.4142135623730951,revision=2i,final=true 60000\n"
        );
    }

    #[test]
    fn absent_statistics_are_left_out() {
        let body = encode(&[row(&[], &[1500], 0)], &[Stat::Count, Stat::Stddev]);
        assert_eq!(
            body,
            "temp,device=d1 count=1i,revision=0i,final=true 60000\n"
        );
        assert!(!body.contains("NaN"));
    }
}
