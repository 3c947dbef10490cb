//! The ground truth of agents running simulated devices: each agent's
//! devices replayed offline, with the series keys that agent forwards, and
//! folded into the collector's windows ([`tributary_sim::truth`]).

use std::collections::BTreeMap;

use tributary_agent::config::Config as AgentConfig;
use tributary_agent::sources::simulated::agent_truth;
use tributary_core::{SeriesKey, Summary};

pub use tributary_sim::truth::{grouped, TruthError};

/// Every (series, window start) at `width_ms` with the summary of all the
/// readings the simulated devices of `agents` produce in it.
pub fn windows(
    agents: &[AgentConfig],
    width_ms: i64,
) -> Result<BTreeMap<(SeriesKey, i64), Summary>, TruthError> {
    let mut all = Vec::new();
    for agent in agents {
        let truth = agent_truth(&agent.simulated, &agent.global_tags(), &agent.limits);
        all.extend(truth.map_err(TruthError::Devices)?);
    }
    tributary_sim::truth::windows(all, width_ms)
}
