//! Lanes: one instance applies a group's batches in several transactions
//! at once, on several connections of its pool, when the group holds
//! several agents.
//!
//! # Design
//! - **What may run side by side.** Two transactions whose batches come
//!   from different agents share no sender row (`incarnations`), no
//!   de-duplication key (`applied`) and no watermark; at fan-in 1 they
//!   share no result row either (an agent's series are its own), so they
//!   do not wait for each other. Where they do share result rows (fan-in
//!   above 1, roll-ups of a series several agents report), each takes its
//!   row locks in key order as separate instances do, and the one that
//!   comes second waits — correctness never depended on there being one
//!   writer.
//! - **What stays together.** Every batch of one agent (all its
//!   incarnations) goes to one lane, in the group's order: the marks of an
//!   incarnation move in one transaction as before, and whether a new
//!   incarnation's agent is known is decided with the agent's other
//!   incarnations in view.
//! - **Balance.** Agents are placed heaviest first (by partials) on the
//!   lightest lane, so the slowest lane — the group's latency — is short.
//! - **Revisions.** A row that several lanes of a group merge into (a
//!   series several of its agents report) is written once per lane, so its
//!   revision counts those transactions: windows as without lanes,
//!   revisions higher. Lanes are therefore opt-in
//!   ([`super::PostgresStore::with_lanes`]).
//! - **Failure.** Every lane runs to its end; if one fails, the group's
//!   answer is that error, while the lanes that committed stay committed:
//!   the error then also carries what they applied (which batches were
//!   new, which incarnations first seen: [`crate::store::StoreError::Partly`]).
//!   The caller retries the group (as after any store error) or its
//!   batches one by one (after a batch fault), and those batches then
//!   answer [`crate::store::Applied::Duplicate`]: nothing is merged twice,
//!   and the caller counts them from the error, once (ingest's
//!   `commit::Progress`). A lane whose `COMMIT` reply is lost is resolved
//!   on its own ([`super::resolve`]): committed, it counts as a lane that
//!   committed (the group a whole success if every lane did).

use std::collections::BTreeMap;

use tributary_core::batch::Batch;

/// The batches (indices into `batches`, ascending) of each of at most
/// `lanes` lanes, no lane empty, every agent's batches in one lane.
pub(super) fn split(batches: &[Batch], lanes: usize) -> Vec<Vec<usize>> {
    let mut weight: BTreeMap<&str, usize> = BTreeMap::new();
    for b in batches {
        let w = weight.entry(b.agent.as_str()).or_default();
        *w = w.saturating_add(b.partials.len().max(1));
    }
    let lanes = lanes.clamp(1, weight.len().max(1));
    let mut agents: Vec<(&str, usize)> = weight.into_iter().collect();
    // Heaviest first; ties by name, so the split is deterministic.
    agents.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut load = vec![0usize; lanes];
    let mut lane_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (agent, w) in agents {
        let (lightest, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(i, l)| (**l, *i))
            .unwrap_or((0, &0));
        load[lightest] = load[lightest].saturating_add(w);
        lane_of.insert(agent, lightest);
    }
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); lanes];
    for (i, b) in batches.iter().enumerate() {
        let lane = lane_of.get(b.agent.as_str()).copied().unwrap_or(0);
        out[lane].push(i);
    }
    out.retain(|l| !l.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tributary_core::batch::Partial;
    use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

    fn batch(agent: &str, seq: u64, partials: usize) -> Batch {
        let key = SeriesKey::new("temperature", format!("{agent}-dev"), BTreeMap::new()).unwrap();
        let minute = Width::new(60_000).unwrap();
        let partials = (0..partials)
            .map(|i| Partial {
                series: key.clone(),
                window: Window::new(i as i64 * 60_000, minute).unwrap(),
                summary: Summary::new(Quantum::new(0).unwrap()),
            })
            .collect();
        Batch::new(agent, seq, 0, partials)
    }

    /// Each lane's agents; every index once, ascending within a lane.
    fn check(batches: &[Batch], split: &[Vec<usize>]) -> Vec<BTreeSet<String>> {
        let mut all: Vec<usize> = split.iter().flatten().copied().collect();
        for lane in split {
            assert!(!lane.is_empty());
            assert!(lane.windows(2).all(|w| w[0] < w[1]), "group order kept");
        }
        all.sort_unstable();
        assert_eq!(all, (0..batches.len()).collect::<Vec<_>>());
        split
            .iter()
            .map(|l| l.iter().map(|&i| batches[i].agent.clone()).collect())
            .collect()
    }

    #[test]
    fn an_agent_stays_in_one_lane_and_lanes_balance() {
        // a: 3 batches of 10, b: 2 of 10, c: 1 of 10, d: 1 of 5.
        let batches = vec![
            batch("a", 1, 10),
            batch("b", 1, 10),
            batch("a", 2, 10),
            batch("c", 1, 10),
            batch("d", 1, 5),
            batch("b", 2, 10),
            batch("a", 3, 10),
        ];
        let split = split(&batches, 2);
        let agents = check(&batches, &split);
        assert_eq!(agents.len(), 2);
        for a in ["a", "b", "c", "d"] {
            let holding = agents.iter().filter(|l| l.contains(a)).count();
            assert_eq!(holding, 1, "agent {a} in one lane");
        }
        // a (30) alone; b, c, d (20 + 10 + 5) together.
        let loads: Vec<usize> = split
            .iter()
            .map(|l| l.iter().map(|&i| batches[i].partials.len()).sum())
            .collect();
        let mut loads_sorted = loads.clone();
        loads_sorted.sort_unstable();
        assert_eq!(loads_sorted, [30, 35]);
    }

    #[test]
    fn lanes_never_outnumber_agents_and_one_lane_keeps_everything() {
        let batches = vec![batch("a", 1, 3), batch("a", 2, 3), batch("b", 1, 1)];
        assert_eq!(check(&batches, &split(&batches, 8)).len(), 2);
        assert_eq!(split(&batches, 1), vec![vec![0, 1, 2]]);
        assert_eq!(split(&batches, 0), vec![vec![0, 1, 2]]);
        assert!(split(&[], 4).is_empty());
    }
}
