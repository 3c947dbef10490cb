//! Agent → collector batches of partial aggregates, and the collector's
//! confirmations (DESIGN §4, §5).
//!
//! A [`Batch`] is identified by (agent, incarnation, seq): the
//! [`Incarnation`] names the agent database that numbered it, so an agent
//! whose database is lost or replaced — and that starts again at seq 1 — is
//! a new sender, not a replay of the old one. The collector applies each
//! identity once and then publishes a [`Confirm`] naming the incarnation and
//! listing the sequences it has durably applied, after which the agent may
//! delete them from its outbox (a Confirm of another incarnation releases
//! nothing).
//!
//! A batch also says where its agent's unconfirmed batches begin
//! ([`Batch::first_unconfirmed`]): every sequence of the incarnation below
//! it was confirmed to the agent and will never be sent again. That lets the
//! collector keep, per incarnation, a high-water mark and the few sequences
//! applied above it instead of every key it ever applied (DESIGN §4).
//!
//! Two encodings carry the same structure:
//! - JSON (`serde_json`), the default, readable with any MQTT tool; it is an
//!   object whose `v` field is the format version;
//! - compact binary (issue #16, for metered uplinks): the byte
//!   [`BINARY_MAGIC`], then the version as a varint, then a layout with a
//!   per-batch dictionary of series keys and delta-coded summaries and
//!   sketch buckets, documented in `binary.rs` — about 0.6 bytes a reading
//!   on the demo's workload, a tenth of JSON.
//!
//! [`Batch::decode`] tells them apart by the first byte, reads the version
//! before anything else and rejects versions it does not know.
//!
//! A field a version does not define is refused, not ignored: serde_json
//! skips an ignored value without its recursion limit, so a batch carrying
//! an unknown field nested 10,000 deep used to decode as the batch around
//! it (and was counted as a duplicate of that batch's sequence) instead of
//! being refused as malformed (issue #12).
//!
//! Version 2 (issue #13): summaries' sketches index the real reading v·q
//! (OpenTelemetry's buckets), where version 1 indexed the tick count v. The
//! two layouts are offset by a fraction of a bucket, so no conversion is
//! exact: a version-1 batch is refused with [`BatchError::TickIndexed`],
//! never merged into version-2 results. Version 2 also carries the identity
//! fields `incarnation` and `first_unconfirmed` (issue #12; version 2 had not
//! shipped without them), and a [`Confirm`] its `incarnation`.

mod binary;
mod unpack;
mod varint;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

pub use self::binary::MAX_EXPANDED;
pub use crate::incarnation::{Incarnation, IncarnationError};
use crate::series::{validate_id, KeyError, SeriesKey};
use crate::summary::Summary;
use crate::window::Window;

/// The batch format version this crate speaks (see the module documentation).
pub const BATCH_VERSION: u16 = 2;
/// The first byte of the binary encoding (never the start of JSON text).
pub const BINARY_MAGIC: u8 = 0xB7;

/// One closed (or revised) window of one series, as merged at an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// The series.
    pub series: SeriesKey,
    /// The window (start aligned to width).
    pub window: Window,
    /// The summary of the readings this agent saw in the window (for a
    /// revision, only the late readings).
    pub summary: Summary,
}

/// A batch of partials from one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Format version; always [`BATCH_VERSION`] when built by this crate.
    pub v: u16,
    /// The agent id (a valid id, matching the publishing topic).
    pub agent: String,
    /// The agent database that numbered the batch (see the module
    /// documentation).
    pub incarnation: Incarnation,
    /// The agent's batch sequence number in its incarnation, persisted
    /// across restarts; an agent numbers from 1.
    pub seq: u64,
    /// The lowest sequence of the incarnation that was not confirmed to the
    /// agent when the batch was formed (at most `seq`): every sequence below
    /// it was confirmed and is never sent again. 0 claims nothing.
    pub first_unconfirmed: u64,
    /// The agent's watermark (ms): it believes it has seen every reading
    /// before this event time.
    pub watermark: i64,
    /// Readings the agent had to drop (outbox full at its floor) since the
    /// previous batch.
    #[serde(default)]
    pub dropped_readings: u64,
    /// The partial aggregates.
    pub partials: Vec<Partial>,
}

/// The collector's confirmation of durably applied batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// Format version.
    pub v: u16,
    /// The agent whose batches are confirmed.
    pub agent: String,
    /// The incarnation of the agent whose batches are confirmed.
    pub incarnation: Incarnation,
    /// The batch sequences applied (including ones that were duplicates).
    pub seqs: Vec<u64>,
}

/// Why a batch or confirmation was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The payload is empty.
    #[error("empty payload")]
    Empty,
    /// The first byte is neither `{`/whitespace (JSON) nor the binary magic.
    #[error("unknown payload format (first byte {0:#04x}); expected JSON or binary magic {BINARY_MAGIC:#04x}")]
    UnknownFormat(u8),
    /// A version this build does not know.
    #[error("unknown batch format version {0} (this build speaks {BATCH_VERSION})")]
    UnknownVersion(u16),
    /// A version-1 batch: its sketches index tick counts, not real values.
    #[error("batch format version 1 is refused: its sketches index tick counts, which cannot be converted exactly to version {BATCH_VERSION}'s real-value buckets; update the agent")]
    TickIndexed,
    /// Invalid JSON or a JSON value that breaks an invariant.
    #[error("invalid JSON batch: {0}")]
    Json(#[from] serde_json::Error),
    /// Invalid binary encoding or a value that breaks an invariant.
    #[error("invalid binary batch: {0}")]
    Binary(#[from] BinaryError),
    /// The agent id is invalid.
    #[error("invalid agent id: {0}")]
    Agent(#[from] KeyError),
    /// A series key of a binary batch is invalid (a JSON batch's is a
    /// [`BatchError::Json`]).
    #[error("invalid series key: {0}")]
    Series(KeyError),
    /// The identity cannot be an agent's: a malformed incarnation, or a
    /// `first_unconfirmed` above the batch's own sequence.
    #[error("invalid batch identity: {0}")]
    Identity(String),
}

/// Why a binary batch is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BinaryError(pub &'static str);

/// The payload encoding of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// JSON text.
    #[default]
    Json,
    /// Compact binary (magic byte, version, dictionary-coded partials).
    Binary,
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Json => "json",
            Encoding::Binary => "binary",
        })
    }
}

/// The error for a batch or confirmation of version `v` ≠ [`BATCH_VERSION`].
fn wrong_version(v: u16) -> BatchError {
    if v == 1 {
        BatchError::TickIndexed
    } else {
        BatchError::UnknownVersion(v)
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    v: Option<u16>,
}

/// The incarnation of a JSON batch that did not decode, if it has one that
/// is not valid.
fn invalid_incarnation(bytes: &[u8]) -> Option<BatchError> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    let value = object.get("incarnation")?;
    let why = match value.as_str().map(Incarnation::parse) {
        Some(Ok(_)) => return None,
        Some(Err(e)) => e.to_string(),
        None => alloc::format!("incarnation {value} is not a string"),
    };
    Some(BatchError::Identity(why))
}

impl Batch {
    /// A batch of this crate's version, of the default incarnation and
    /// claiming nothing about earlier sequences (`first_unconfirmed` 0): for
    /// tools and tests. An agent names its own with
    /// [`Batch::with_identity`].
    pub fn new(agent: impl Into<String>, seq: u64, watermark: i64, partials: Vec<Partial>) -> Self {
        Batch {
            v: BATCH_VERSION,
            agent: agent.into(),
            incarnation: Incarnation::default(),
            seq,
            first_unconfirmed: 0,
            watermark,
            dropped_readings: 0,
            partials,
        }
    }

    /// The same batch of `incarnation`, whose sequences below
    /// `first_unconfirmed` are all confirmed.
    pub fn with_identity(mut self, incarnation: Incarnation, first_unconfirmed: u64) -> Self {
        self.incarnation = incarnation;
        self.first_unconfirmed = first_unconfirmed;
        self
    }

    /// The number of readings the partials hold.
    pub fn readings(&self) -> u64 {
        self.partials.iter().map(|p| p.summary.count()).sum()
    }

    /// Encodes the batch.
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            // Serialising these types cannot fail: all map keys are strings.
            Encoding::Json => serde_json::to_vec(self).unwrap_or_default(),
            Encoding::Binary => binary::encode(self),
        }
    }

    /// What decoding this batch's binary form holds of strings and sketch
    /// buckets, counted as the decoder counts them against
    /// [`MAX_EXPANDED`]: a binary batch over that limit is refused, so an
    /// encoder cuts its batches to stay at or under it.
    pub fn decoded_bytes(&self) -> usize {
        binary::decoded_bytes(self)
    }

    /// Decodes and validates a batch in either encoding.
    pub fn decode(bytes: &[u8]) -> Result<Batch, BatchError> {
        let first = *bytes.first().ok_or(BatchError::Empty)?;
        let batch = match first {
            BINARY_MAGIC => unpack::decode(&bytes[1..])?,
            b'{' | b' ' | b'\t' | b'\r' | b'\n' => match serde_json::from_slice::<Batch>(bytes) {
                Ok(b) => b,
                Err(e) => {
                    // A newer version may not even parse: say so rather than
                    // report a confusing field error.
                    if let Ok(VersionProbe { v: Some(v) }) = serde_json::from_slice(bytes) {
                        if v != BATCH_VERSION {
                            return Err(wrong_version(v));
                        }
                    }
                    return Err(invalid_incarnation(bytes).unwrap_or(BatchError::Json(e)));
                }
            },
            other => return Err(BatchError::UnknownFormat(other)),
        };
        if batch.v != BATCH_VERSION {
            return Err(wrong_version(batch.v));
        }
        validate_id("agent id", &batch.agent)?;
        if batch.first_unconfirmed > batch.seq {
            return Err(BatchError::Identity(alloc::format!(
                "first_unconfirmed {} is above the batch's own sequence {}",
                batch.first_unconfirmed,
                batch.seq
            )));
        }
        Ok(batch)
    }
}

impl Confirm {
    /// A confirmation of `seqs` of `agent`'s `incarnation`.
    pub fn new(agent: impl Into<String>, incarnation: Incarnation, seqs: Vec<u64>) -> Self {
        Confirm {
            v: BATCH_VERSION,
            agent: agent.into(),
            incarnation,
            seqs,
        }
    }

    /// JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks the version.
    pub fn decode(bytes: &[u8]) -> Result<Confirm, BatchError> {
        let c: Confirm =
            serde_json::from_slice(bytes).map_err(|e| {
                match serde_json::from_slice::<VersionProbe>(bytes) {
                    Ok(VersionProbe { v: Some(v) }) if v != BATCH_VERSION => {
                        BatchError::UnknownVersion(v)
                    }
                    _ => BatchError::Json(e),
                }
            })?;
        if c.v != BATCH_VERSION {
            return Err(BatchError::UnknownVersion(c.v));
        }
        validate_id("agent id", &c.agent)?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Quantum, Width};

    #[test]
    fn untagged_series_round_trip_in_both_encodings() {
        let mut s = Summary::new(Quantum::new(-3).unwrap_or_default());
        s.insert(1_000, 42).unwrap();
        let partial = Partial {
            series: SeriesKey::new("t", "d", Default::default()).unwrap(),
            window: Window::containing(1_000, Width::new(60_000).unwrap()),
            summary: s,
        };
        let b = Batch::new("a", 1, 0, alloc::vec![partial]);
        for enc in [Encoding::Json, Encoding::Binary] {
            assert_eq!(Batch::decode(&b.encode(enc)).unwrap(), b, "{enc}");
        }
    }

    /// A partial of `series` in the minute `k` holding `values`.
    fn partial_of(series: &SeriesKey, width: i64, k: i64, values: &[i64]) -> Partial {
        let window = Window::new(k * width, Width::new(width).unwrap()).unwrap();
        let mut s = Summary::new(Quantum::new(-3).unwrap_or_default());
        for (i, &v) in values.iter().enumerate() {
            s.insert(window.start() + i as i64, v).unwrap();
        }
        Partial {
            series: series.clone(),
            window,
            summary: s,
        }
    }

    #[test]
    fn decoded_bytes_is_what_the_decoder_charges() {
        let key = |m: &str, d: &str, tags: &[(&str, &str)]| {
            let tags = tags
                .iter()
                .map(|(k, v)| (String::from(*k), String::from(*v)))
                .collect();
            SeriesKey::new(m, d, tags).unwrap()
        };
        let keys = [
            key("t", "d", &[]),
            key("temperature", "boiler-1", &[("site", "berlin")]),
            key("temperature", "boiler-2", &[("site", "berlin")]),
            key("power.w", "meter", &[("site", "oslo"), ("phase", "l1")]),
        ];
        let wide: Vec<i64> = (0..3000)
            .map(|i| (i * i * 37) % 2_000_001 - 1_000_000)
            .collect();
        let shapes: [&[i64]; 5] = [&[], &[0], &[5, -5, 0], &[1, 2, 3, 1_000_000], &wide];
        let mut batches = alloc::vec![Batch::new("a", 1, 0, Vec::new())];
        for n in [1usize, 2, 7, 40] {
            let partials = (0..n)
                .map(|i| {
                    let width = if i % 3 == 0 { 3_600_000 } else { 60_000 };
                    partial_of(
                        &keys[i % keys.len()],
                        width,
                        i as i64,
                        shapes[i % shapes.len()],
                    )
                })
                .collect();
            batches.push(Batch::new("gw-1", n as u64, 0, partials));
        }
        for b in &batches {
            let bytes = b.encode(Encoding::Binary);
            let (decoded, charged) = unpack::decode_counted(&bytes[1..]).unwrap();
            assert_eq!(&decoded, b);
            assert_eq!(b.decoded_bytes(), charged, "{} partials", b.partials.len());
        }
        assert!(
            batches[4].decoded_bytes() > 40 * 8 * 2048 / 5,
            "full sketches counted"
        );
        // By hand: one partial of series ("t", "d") holding one reading (one
        // bucket): the strings "d" and "t" (2), the series table's key (2),
        // the partial's copy of it (2) and one bucket (8).
        let one = partial_of(&keys[0], 60_000, 1, &[5]);
        assert_eq!(Batch::new("a", 1, 0, alloc::vec![one]).decoded_bytes(), 14);
    }
}
