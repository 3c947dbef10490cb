//! The value logs the Python simulators write (`py/modbus_sim.py`,
//! `py/opcua_sim.py`): one value a line, four space-separated fields
//! `at_ms metric third ticks` — the third is the value served (Modbus) or
//! its status (OPC UA). Parsed here for both.

use std::io;
use std::path::Path;

/// One line of a simulator's log.
pub(crate) struct Line<'a> {
    /// When the value was served or written (Unix ms).
    pub(crate) at_ms: i64,
    /// The point's or variable's metric.
    pub(crate) metric: &'a str,
    /// The third field, as written.
    pub(crate) third: &'a str,
    /// The exact ticks of the value.
    pub(crate) ticks: i128,
}

/// The lines of `log` that `keep` lets through, in order, each made into a
/// `T` by `to`; a kept line that is not four fields with an integer time and
/// integer ticks is an error naming it.
pub(crate) fn read<T>(
    log: &Path,
    keep: impl Fn(&str) -> bool,
    to: impl Fn(Line<'_>) -> T,
) -> io::Result<Vec<T>> {
    let text = std::fs::read_to_string(log)?;
    text.lines()
        .filter(|l| keep(l))
        .map(|l| {
            let bad = || io::Error::other(format!("bad log line {l:?}"));
            let fields: Vec<&str> = l.split(' ').collect();
            let [at_ms, metric, third, ticks] = fields[..] else {
                return Err(bad());
            };
            Ok(to(Line {
                at_ms: at_ms.parse().map_err(|_| bad())?,
                metric,
                third,
                ticks: ticks.parse().map_err(|_| bad())?,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(
        text: &str,
        keep: impl Fn(&str) -> bool,
    ) -> io::Result<Vec<(i64, String, String, i128)>> {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, text).unwrap();
        read(&log, keep, |l| {
            (l.at_ms, l.metric.to_string(), l.third.to_string(), l.ticks)
        })
    }

    #[test]
    fn kept_lines_are_read_in_order_and_a_malformed_one_is_named() {
        let text = "1700000000001 temp 21.25 2125\n1700000000002 hum bad 0\n1700000000003 temp\n";
        let got = parse(text, |l| l.ends_with(|c: char| c.is_ascii_digit())).unwrap();
        assert_eq!(
            got,
            [
                (1_700_000_000_001, "temp".into(), "21.25".into(), 2125),
                (1_700_000_000_002, "hum".into(), "bad".into(), 0),
            ]
        );
        let e = parse(text, |_| true).unwrap_err().to_string();
        assert!(e.contains("\"1700000000003 temp\""), "{e}");
        let e = parse("12 temp good 1.5\n", |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad log line"), "{e}");
        assert!(parse("", |_| true).unwrap().is_empty());
    }
}
