//! The identity part of the store contract, for both backends: batches are
//! (agent, incarnation, seq); a re-provisioned agent numbering from 1 again
//! under a new incarnation is applied, not taken for a replay; the
//! de-duplication memory stays bounded over a long run while every replay —
//! also of keys pruned long ago — is still recognised; each new batch's
//! dropped readings count once, per incarnation.
//!
//! The judge is a model of the agents in the test: every batch they formed,
//! which keys were applied before, and the readings and drops they hold —
//! never the store's own answers. The memory is measured by counting the
//! `applied` table's rows in SQL.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;

use tributary_collector::store::prelude::*;
use tributary_collector::store::{Applied, NewIncarnation};
use tributary_core::batch::{Batch, Partial};
use tributary_core::{Incarnation, Quantum, Summary, Width, Window};

use super::{key, MIN, T0};

/// Batches an agent keeps formed and unconfirmed at most.
const IN_FLIGHT: usize = 16;
/// Batches an agent forms at most per round.
const FORM: u64 = 4;
/// Rounds after which an agent publishes an unconfirmed batch again (its
/// confirmation timeout).
const TIMEOUT: u64 = 3;

/// A simulated agent incarnation: it forms batches (their identity and
/// bytes fixed from then on), publishes them, resends unconfirmed ones, and
/// deletes a batch when its confirmation arrives.
struct Agent {
    agent: String,
    incarnation: Incarnation,
    /// Whether its batches say where its unconfirmed ones begin (an agent
    /// does; a tool building batches by hand does not).
    claims: bool,
    device: String,
    next: u64,
    formed: BTreeMap<u64, Batch>,
    /// Unconfirmed batches and the round each was last published in (or
    /// formed in, when held back).
    unconfirmed: BTreeMap<u64, u64>,
    /// Batches published at least once (so applied once).
    sent: BTreeSet<u64>,
    /// Still running (a re-provisioned agent's old database is gone).
    live: bool,
}

impl Agent {
    fn new(agent: &str, incarnation: u64, claims: bool, first: u64, device: &str) -> Agent {
        Agent {
            agent: agent.to_string(),
            incarnation: Incarnation::new(incarnation),
            claims,
            device: device.to_string(),
            next: first,
            formed: BTreeMap::new(),
            unconfirmed: BTreeMap::new(),
            sent: BTreeSet::new(),
            live: true,
        }
    }

    /// Forms up to `n` batches in `round` (within the in-flight limit);
    /// returns them.
    fn form(&mut self, n: u64, round: u64) -> Vec<Batch> {
        let mut out = Vec::new();
        for _ in 0..n {
            if self.unconfirmed.len() >= IN_FLIGHT {
                break;
            }
            let seq = self.next;
            self.next += 1;
            self.unconfirmed.insert(seq, round);
            let first = if self.claims {
                self.unconfirmed.keys().next().copied().unwrap_or(seq)
            } else {
                0
            };
            let mut s = Summary::new(Quantum::new(-3).unwrap());
            let start = T0 + (seq % 60) as i64 * MIN;
            s.insert(start + 1, seq as i64).unwrap();
            let mut b = Batch::new(
                self.agent.clone(),
                seq,
                start,
                vec![Partial {
                    series: key(&self.device),
                    window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
                    summary: s,
                }],
            )
            .with_identity(self.incarnation, first);
            b.dropped_readings = seq % 3;
            self.formed.insert(seq, b.clone());
            out.push(b);
        }
        out
    }
}

/// A xorshift generator.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The keys the model has applied; checks each outcome of a group.
#[derive(Default)]
struct Model {
    applied: HashSet<(String, Incarnation, u64)>,
    /// Batches the model expected to be duplicates.
    duplicates: u64,
    new_incarnations: Vec<NewIncarnation>,
}

impl Model {
    /// Applies `group` and checks every batch's outcome against the model.
    async fn apply<S: Store>(&mut self, store: &S, group: &[Batch]) -> Vec<Applied> {
        let mut r = store.apply_report(group).await.unwrap();
        assert_eq!(r.applied.len(), group.len());
        for (b, got) in group.iter().zip(&r.applied) {
            let new = self.applied.insert((b.agent.clone(), b.incarnation, b.seq));
            let want = if new {
                Applied::New
            } else {
                self.duplicates += 1;
                Applied::Duplicate
            };
            assert_eq!(*got, want, "{} {} seq {}", b.agent, b.incarnation, b.seq);
        }
        self.new_incarnations.append(&mut r.incarnations);
        r.applied
    }
}

/// A long run of four agent incarnations — resends, lost confirmations,
/// replays of anything ever sent, an agent re-provisioned under the same id
/// a third of the way in (its new database numbers from 1 again), a tool
/// that claims nothing — keeps `applied` (counted by `rows`) bounded
/// whatever the run's length, and recognises every replay. `rounds` sets
/// the length (about 2.4 batches per agent and round).
pub(crate) async fn check_bounded_dedupe<S, F, Fut>(store: &S, rows: F, rounds: u64)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let mut agents = vec![
        Agent::new("gw-a", 0xa1, true, 1, "dev-a1"),
        Agent::new("gw-b", 0xb1, true, 1, "dev-b1"),
        Agent::new("tool", 0, false, 0, "dev-t"),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut model = Model::default();
    // A key stays remembered while a gap below it is open: a batch not
    // applied yet (published at the latest after the timeout) or given up
    // (the agent's next batch says so). Each sender forms at most FORM
    // batches a round meanwhile.
    let per_sender = FORM * (TIMEOUT + 2);
    let mut most = 0;
    for round in 0..rounds {
        if round == rounds / 3 {
            // gw-a's data directory is lost: its unconfirmed batches with
            // it. A new database, a new incarnation, numbering from 1.
            agents[0].live = false;
            agents.push(Agent::new("gw-a", 0xa2, true, 1, "dev-a2"));
        }
        let mut group = Vec::new();
        for a in agents.iter_mut().filter(|a| a.live) {
            // Resends of what is unconfirmed, then new batches: most
            // published at once, some held back (published later), and
            // — an agent's — some refused for good and confirmed without
            // ever being applied (as a batch that cannot merge is): a gap
            // only the agent's word closes.
            let due: Vec<u64> = a
                .unconfirmed
                .iter()
                .filter(|(_, &at)| round >= at + TIMEOUT)
                .map(|(&s, _)| s)
                .collect();
            let n = 1 + rng.below(FORM);
            let mut publish = due;
            for b in a.form(n, round) {
                match rng.below(10) {
                    0 if a.claims => {
                        a.unconfirmed.remove(&b.seq);
                    }
                    1..=3 => {}
                    _ => publish.push(b.seq),
                }
            }
            for seq in publish {
                a.unconfirmed.insert(seq, round);
                a.sent.insert(seq);
                group.push(a.formed[&seq].clone());
            }
        }
        // Replays: anything ever sent, by any incarnation, long pruned or
        // not; and now and then a second copy in the same group.
        for _ in 0..rng.below(4) {
            let a = &agents[rng.below(agents.len() as u64) as usize];
            if let Some(seq) = a.sent.iter().nth(rng.below(a.sent.len() as u64) as usize) {
                group.push(a.formed[seq].clone());
            }
        }
        if !group.is_empty() && rng.below(4) == 0 {
            group.push(group[rng.below(group.len() as u64) as usize].clone());
        }
        // Shuffled.
        for i in (1..group.len()).rev() {
            group.swap(i, rng.below(i as u64 + 1) as usize);
        }
        model.apply(store, &group).await;
        // Confirmations, one in five lost.
        for b in &group {
            if rng.below(5) > 0 {
                for a in agents.iter_mut() {
                    if a.agent == b.agent && a.incarnation == b.incarnation {
                        a.unconfirmed.remove(&b.seq);
                    }
                }
            }
        }
        let n = rows().await;
        most = most.max(n);
        let bound = per_sender * agents.len() as u64;
        assert!(
            n <= bound,
            "round {round}: {n} keys remembered, more than {bound}"
        );
    }
    // Drain: the live agents resend until everything is confirmed.
    while agents.iter().any(|a| a.live && !a.unconfirmed.is_empty()) {
        let mut group = Vec::new();
        for a in agents.iter_mut().filter(|a| a.live) {
            group.extend(a.unconfirmed.keys().map(|s| a.formed[s].clone()));
            a.sent.extend(a.unconfirmed.keys());
            a.unconfirmed.clear();
        }
        model.apply(store, &group).await;
    }
    let sent: u64 = agents.iter().map(|a| a.sent.len() as u64).sum();
    let formed: u64 = agents.iter().map(|a| a.formed.len() as u64).sum();
    assert!(sent >= 2 * rounds, "{sent} batches sent");
    println!(
        "{rounds} rounds: {formed} batches formed, {sent} applied, {} replays and resends; \
         at most {most} keys remembered",
        model.duplicates
    );
    let before = super::all_windows(store, MIN).await;

    // Every batch ever sent, replayed: all duplicates, nothing changes.
    let every: Vec<Batch> = agents
        .iter()
        .flat_map(|a| a.sent.iter().map(|s| a.formed[s].clone()))
        .collect();
    for chunk in every.chunks(97) {
        let got = model.apply(store, chunk).await;
        assert!(got.iter().all(|a| *a == Applied::Duplicate));
    }
    assert_eq!(super::all_windows(store, MIN).await, before);
    let left = rows().await;
    assert!(left <= most, "{left} after the replays");

    // Each incarnation's batches once: the results are the sum of the
    // readings the agents sent (one each, its value the seq).
    let mut want: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for a in &agents {
        let e = want.entry(key(&a.device).to_string()).or_default();
        e.0 += a.sent.len() as u64;
        e.1 += a.sent.iter().map(|&s| i128::from(s)).sum::<i128>();
    }
    let mut got: BTreeMap<String, (u64, i128)> = BTreeMap::new();
    for ((series, _), s) in &before {
        let e = got.entry(series.clone()).or_default();
        e.0 += s.count();
        e.1 += s.sum_ticks();
    }
    assert_eq!(got, want);

    // The agents as the store shows them.
    let shown = store.agents().await.unwrap();
    let names: Vec<&str> = shown.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(names, ["gw-a", "gw-b", "tool"]);
    let mut remembered = 0;
    for a in &agents {
        let s = shown.iter().find(|s| s.agent == a.agent).unwrap();
        let i = s
            .incarnations
            .iter()
            .find(|i| i.incarnation == a.incarnation)
            .unwrap();
        assert_eq!(i.batches, a.sent.len() as u64, "{}", a.incarnation);
        let dropped: u64 = a.sent.iter().map(|s| a.formed[s].dropped_readings).sum();
        assert_eq!(i.dropped_readings, dropped, "{}", a.incarnation);
        assert!(i.applied_below <= a.next, "{}", a.incarnation);
        if !a.claims {
            // Everything applied without a gap: nothing left to remember.
            assert_eq!(
                (i.applied_below, i.remembered),
                (a.next, 0),
                "{}",
                a.incarnation
            );
        }
        remembered += i.remembered;
    }
    assert_eq!(remembered, left, "the API counts the rows SQL counts");
    let gw_a = &shown[0];
    let incs: Vec<u64> = gw_a
        .incarnations
        .iter()
        .map(|i| i.incarnation.id())
        .collect();
    assert_eq!(incs, [0xa1, 0xa2], "oldest first");
    assert_eq!(
        gw_a.dropped_readings,
        gw_a.incarnations
            .iter()
            .map(|i| i.dropped_readings)
            .sum::<u64>()
    );
    // Each incarnation reported new once: gw-a's second as a known agent's.
    let firsts: Vec<(String, u64, bool)> = model
        .new_incarnations
        .iter()
        .map(|n| (n.agent.clone(), n.incarnation.id(), n.known_agent))
        .collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("gw-a".to_string(), 0xa1, false),
            ("gw-a".to_string(), 0xa2, true),
            ("gw-b".to_string(), 0xb1, false),
            ("tool".to_string(), 0, false),
        ]
    );
}

/// An agent whose database is replaced numbers from 1 again: its new
/// incarnation's batches are applied, not discarded as the old one's
/// replays; the old one's replays still are duplicates; confirmations stay
/// apart.
pub(crate) async fn check_new_incarnation<S: Store>(store: &S) {
    let mk = |inc: u64, seq: u64| {
        let mut s = Summary::new(Quantum::new(-3).unwrap());
        s.insert(T0 + seq as i64, 1).unwrap();
        Batch::new(
            "gw",
            seq,
            T0,
            vec![Partial {
                series: key("dev-new"),
                window: Window::new(T0, Width::new(MIN).unwrap()).unwrap(),
                summary: s,
            }],
        )
        .with_identity(Incarnation::new(inc), seq)
    };
    let old: Vec<Batch> = (1..=20).map(|s| mk(1, s)).collect();
    let new: Vec<Batch> = (1..=20).map(|s| mk(2, s)).collect();
    let r = store.apply_report(&old).await.unwrap();
    assert!(r.applied.iter().all(|a| *a == Applied::New));
    assert_eq!(r.incarnations.len(), 1);
    assert!(!r.incarnations[0].known_agent);
    let r = store.apply_report(&new).await.unwrap();
    assert!(
        r.applied.iter().all(|a| *a == Applied::New),
        "the new database's batches 1–20 are new: {:?}",
        r.applied
    );
    assert_eq!(
        (r.incarnations.len(), r.incarnations[0].known_agent),
        (1, true)
    );
    let again = store
        .apply(&[old[3].clone(), new[7].clone()])
        .await
        .unwrap();
    assert_eq!(again, [Applied::Duplicate, Applied::Duplicate]);
    let w = store
        .windows(&key("dev-new"), Width::new(MIN).unwrap(), T0, T0 + MIN)
        .await
        .unwrap();
    assert_eq!(w[0].summary.count(), 40, "both databases' readings, once");
}
