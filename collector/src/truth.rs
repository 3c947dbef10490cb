//! The ground truth of simulated devices, for the demo's and the system
//! tests' exactness checks: the firmware virtual devices' own record of what
//! they measured, folded into the collector's windows by merging (exact, so
//! the result must equal — every field — what the pipeline stored).

use std::collections::BTreeMap;

use tributary_agent::config::SimulatedConfig;
use tributary_agent::sources::simulated;
use tributary_core::{SeriesKey, Summary, SummaryError};

/// Why the ground truth could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// The virtual devices could not be replayed.
    #[error("replaying the simulated devices: {0}")]
    Devices(String),
    /// Device windows did not merge.
    #[error("merging device windows: {0}")]
    Merge(#[from] SummaryError),
    /// The width is not positive.
    #[error("window width {0} ms is not positive")]
    Width(i64),
}

/// Every (series, window start) at `width_ms` with the summary of all the
/// readings the simulated devices of `sims` produce in it.
pub fn windows(
    sims: &[SimulatedConfig],
    width_ms: i64,
) -> Result<BTreeMap<(SeriesKey, i64), Summary>, TruthError> {
    if width_ms <= 0 {
        return Err(TruthError::Width(width_ms));
    }
    let mut out: BTreeMap<(SeriesKey, i64), Summary> = BTreeMap::new();
    for sim in sims {
        for w in simulated::truth(sim).map_err(|e| TruthError::Devices(format!("{e:?}")))? {
            let start = w.start_ms.div_euclid(width_ms) * width_ms;
            match out.get_mut(&(w.series.clone(), start)) {
                Some(s) => s.merge(&w.summary)?,
                None => {
                    out.insert((w.series, start), w.summary);
                }
            }
        }
    }
    Ok(out)
}
