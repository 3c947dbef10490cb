//! The error of summary operations, shared by the full and the fixed form.

use crate::quantum::{Quantum, ValueError};
use crate::sketch::SketchOverflow;

/// Why a reading or a merge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SummaryError {
    /// The reading could not be quantized.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// The two summaries have different quanta.
    #[error("quantum mismatch: {left} vs {right}")]
    QuantumMismatch {
        /// The receiving summary's quantum.
        left: Quantum,
        /// The other summary's quantum.
        right: Quantum,
    },
    /// Two fixed summaries have different reference offsets.
    #[error("reference offset mismatch: {left} vs {right}")]
    ReferenceMismatch {
        /// The receiving summary's reference.
        left: i32,
        /// The other summary's reference.
        right: i32,
    },
    /// A tick value exceeds the form's range.
    #[error("value {0} ticks is out of range for this summary form")]
    OutOfRange(i64),
    /// A count, sum or sum of squares would overflow.
    #[error("summary overflow in {0}")]
    Overflow(&'static str),
}

impl From<SketchOverflow> for SummaryError {
    fn from(_: SketchOverflow) -> Self {
        SummaryError::Overflow("sketch bucket")
    }
}
