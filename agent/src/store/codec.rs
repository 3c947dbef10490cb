//! How values are held in their columns: summaries, Hellos and de-dup sets
//! as postcard blobs, series keys as JSON text.

use tributary_core::frame::Hello;
use tributary_core::{SeriesKey, Summary};

use super::error::{corrupt, StoreError};

/// A summary's blob.
pub(crate) fn summary(s: &Summary) -> Vec<u8> {
    postcard::to_allocvec(s).unwrap_or_default()
}

/// The summary of a blob.
pub(crate) fn to_summary(b: &[u8]) -> Result<Summary, StoreError> {
    postcard::from_bytes(b).map_err(|e| corrupt("summary", e))
}

/// A series key's text.
pub(crate) fn key(k: &SeriesKey) -> Result<String, StoreError> {
    serde_json::to_string(k).map_err(|e| corrupt("series key", e))
}

/// The series key of a text.
pub(crate) fn to_key(s: &str) -> Result<SeriesKey, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt("series key", e))
}

/// A Hello's blob.
pub(crate) fn hello(h: &Hello) -> Vec<u8> {
    postcard::to_allocvec(h).unwrap_or_default()
}

/// The Hello of a blob.
pub(crate) fn to_hello(b: &[u8]) -> Result<Hello, StoreError> {
    postcard::from_bytes(b).map_err(|e| corrupt("device hello", e))
}

/// The blob of the sequences applied above a de-dup mark.
pub(crate) fn above(a: &[u32]) -> Vec<u8> {
    postcard::to_allocvec(a).unwrap_or_default()
}

/// The sequences above a de-dup mark of a blob.
pub(crate) fn to_above(b: &[u8]) -> Result<Vec<u32>, StoreError> {
    postcard::from_bytes(b).map_err(|e| corrupt("device dedupe", e))
}
