//! How both backends write values into SQL columns and read them back:
//! series keys as canonical JSON text, summaries as postcard bytes, result
//! rows as (start, revision, summary), agent incarnations as their 16 hex
//! digits, and the order of a one-query `…_of` read.

use std::collections::HashMap;

use tributary_core::{Incarnation, SeriesKey, Summary, Width, Window};

use super::{IncarnationState, StoreError, StoredWindow};

/// The error for a stored value that does not read back.
pub(crate) fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

/// A series key as both backends store it: canonical JSON text.
pub(crate) fn key_text(key: &SeriesKey) -> Result<String, StoreError> {
    serde_json::to_string(key).map_err(|e| corrupt("series key", e))
}

/// The key texts of `keys`, in order.
pub(crate) fn key_texts(keys: &[SeriesKey]) -> Result<Vec<String>, StoreError> {
    keys.iter().map(key_text).collect()
}

/// A stored series key read back.
pub(crate) fn parse_key(text: &str) -> Result<SeriesKey, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("series key", e))
}

/// A summary as both backends store it: postcard bytes.
pub(crate) fn encode_summary(summary: &Summary) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(summary).map_err(|e| corrupt("summary", e))
}

/// Summaries encoded back to back in one buffer (as [`encode_summary`]
/// encodes each): a thread encoding thousands for another to write makes
/// two allocations, not one per summary freed by the other thread.
#[derive(Debug, Default)]
pub(crate) struct EncodedSummaries {
    bytes: Vec<u8>,
    /// Where each summary's bytes end.
    ends: Vec<usize>,
}

impl EncodedSummaries {
    /// Room for `n` summaries of a few dozen bytes.
    pub(crate) fn with_capacity(n: usize) -> Self {
        EncodedSummaries {
            bytes: Vec::with_capacity(n * 64),
            ends: Vec::with_capacity(n),
        }
    }

    /// Encodes `summary` after the others.
    pub(crate) fn push(&mut self, summary: &Summary) -> Result<(), StoreError> {
        let bytes = std::mem::take(&mut self.bytes);
        self.bytes = postcard::to_extend(summary, bytes).map_err(|e| corrupt("summary", e))?;
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// How many summaries it holds.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of the `i`th summary.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)?,
        };
        self.bytes.get(start..*self.ends.get(i)?)
    }
}

/// A stored summary (postcard bytes) read back.
pub(crate) fn decode_summary(bytes: &[u8]) -> Result<Summary, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| corrupt("summary", e))
}

/// A change number or cursor read back from a SQL integer.
pub(crate) fn change_number(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|e| corrupt("change number", e))
}

/// A change-feed read's `after` and `limit` as SQL integers (beyond
/// `i64::MAX` means "no bound").
pub(crate) fn feed_bounds(after: u64, limit: usize) -> (i64, i64) {
    (
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// A result row read back: its window start, revision and summary bytes
/// (postcard), at `width`. Both backends store rows this way.
pub(crate) fn stored(
    start: i64,
    width: Width,
    revision: i64,
    bytes: &[u8],
) -> Result<StoredWindow, StoreError> {
    Ok(StoredWindow {
        window: Window::new(start, width).map_err(|e| corrupt("window", e))?,
        summary: decode_summary(bytes)?,
        revision: u32::try_from(revision).map_err(|e| corrupt("revision", e))?,
    })
}

/// Lays out rows found by series-key text (`by_key`) in the order of
/// `keys`, the answer of a one-query `…_of` read; a key given more than
/// once gets its rows each time, one absent gets none.
pub(crate) fn in_order<T: Clone, H: std::hash::BuildHasher>(
    keys: &[String],
    mut by_key: HashMap<String, Vec<T>, H>,
) -> Vec<Vec<T>> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for k in keys {
        *left.entry(k.as_str()).or_default() += 1;
    }
    keys.iter()
        .map(|k| {
            let n = left.entry(k.as_str()).or_default();
            *n = n.saturating_sub(1);
            let rows = if *n == 0 {
                by_key.remove(k)
            } else {
                by_key.get(k).cloned()
            };
            rows.unwrap_or_default()
        })
        .collect()
}

/// The milliseconds of a lease's time to live as a SQL integer.
pub(crate) fn ttl_ms(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// An incarnation row read back: its text, its mark, remembered keys,
/// batches and dropped readings (SQL integers, never negative), and when it
/// was first and last seen.
pub(crate) fn incarnation_state(
    text: &str,
    counts: [i64; 4],
    first_seen_ms: i64,
    last_seen_ms: i64,
) -> Result<IncarnationState, StoreError> {
    let n = |v: i64| u64::try_from(v).map_err(|e| corrupt("incarnation counts", e));
    let [applied_below, remembered, batches, dropped_readings] = counts;
    Ok(IncarnationState {
        incarnation: Incarnation::parse(text).map_err(|e| corrupt("incarnation", e))?,
        applied_below: n(applied_below)?,
        remembered: n(remembered)?,
        batches: n(batches)?,
        dropped_readings: n(dropped_readings)?,
        refused: std::collections::BTreeMap::new(),
        first_seen_ms,
        last_seen_ms,
    })
}

/// The `refused` rows read back, by (agent, incarnation text): reason →
/// partials and readings (SQL integers, never negative).
pub(crate) type RefusedRows = std::collections::BTreeMap<
    (String, String),
    std::collections::BTreeMap<String, crate::store::Refusal>,
>;

/// Adds one `refused` row to `rows`.
pub(crate) fn refused_row(
    rows: &mut RefusedRows,
    key: (String, String),
    reason: String,
    partials: i64,
    readings: i64,
) -> Result<(), StoreError> {
    let n = |v: i64| u64::try_from(v).map_err(|e| corrupt("refused counts", e));
    let r = crate::store::Refusal {
        partials: n(partials)?,
        readings: n(readings)?,
    };
    rows.entry(key).or_default().insert(reason, r);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tributary_core::Quantum;

    use super::*;

    /// Back to back, each summary reads back as encoded on its own — from
    /// an empty summary to one of 300 readings.
    #[test]
    fn summaries_encoded_back_to_back_read_back_one_by_one() {
        let summaries: Vec<Summary> = [0_i64, 1, 7, 300]
            .iter()
            .map(|&n| {
                let mut s = Summary::new(Quantum::new(-2).unwrap());
                for i in 0..n {
                    s.insert(1_000 + i, 1.5_f64.powi(i as i32 % 40) as i64 - i)
                        .unwrap();
                }
                s
            })
            .collect();
        let mut all = EncodedSummaries::with_capacity(1);
        for s in &summaries {
            all.push(s).unwrap();
        }
        assert_eq!(all.len(), summaries.len());
        for (i, s) in summaries.iter().enumerate() {
            let bytes = all.get(i).unwrap();
            assert_eq!(bytes, encode_summary(s).unwrap().as_slice());
            assert_eq!(&decode_summary(bytes).unwrap(), s);
        }
        assert_eq!(all.get(summaries.len()), None);
    }
}
