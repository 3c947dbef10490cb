//! The body of `/api/v1/agents`: every agent that has had a batch applied,
//! with its watermark, when it was last seen, the readings it reported
//! dropped (its outbox full at its floor), the partials of its applied
//! batches the collector refused (by reason, with their readings), and its
//! incarnations — the agent databases that numbered its batches — with
//! their de-duplication marks.
//!
//! ```json
//! {"agents": [{"agent": "gw-1", "watermark": 1700000100000,
//!   "last_seen_ms": 1700000101234, "dropped_readings": 7,
//!   "refused": {"time_future": {"partials": 2, "readings": 40}},
//!   "incarnations": [{"incarnation": "9f3a0c1d2e4b5a67", "applied_below": 18,
//!     "remembered": 1, "batches": 17, "dropped_readings": 7,
//!     "refused": {"time_future": {"partials": 2, "readings": 40}},
//!     "first_seen_ms": 1700000000123, "last_seen_ms": 1700000101234}]}]}
//! ```
//! - `watermark`: the highest event time (ms) the agent says it has seen
//!   everything before (`null` before its first batch with partials);
//! - `applied_below`: every batch sequence of the incarnation below it is
//!   applied (or was confirmed to the agent and is never sent again);
//!   `remembered`: batch keys kept above it for de-duplication;
//! - `refused`: partials the collector took out of applied batches, by
//!   reason (`time_future`, `time_past`, `expired`), and those of batches
//!   it refused whole after they failed to apply (`unmergeable`: they
//!   cannot merge into a stored window; `store_failed`: the store failed on
//!   that batch alone while others applied — a bug, logged at error level);
//!   a reason never met is absent; with the sum of their readings; the
//!   agent's is the sum over its incarnations. Whole payloads refused
//!   (malformed, oversized, …) are counted in metrics only: they name no
//!   trustworthy agent;
//! - times are the collector's clock, ms since the Unix epoch;
//! - incarnations are listed oldest first.

use serde_json::{json, Value};

use std::collections::BTreeMap;

use crate::store::{AgentState, Refusal};

/// `{reason: {"partials": n, "readings": n}}`.
fn refused_json(refused: &BTreeMap<String, Refusal>) -> Value {
    let by_reason: serde_json::Map<String, Value> = refused
        .iter()
        .map(|(reason, r)| {
            let counts = json!({"partials": r.partials, "readings": r.readings});
            (reason.clone(), counts)
        })
        .collect();
    Value::Object(by_reason)
}

/// The JSON body for `agents`.
pub fn to_json(agents: &[AgentState]) -> Value {
    let list: Vec<Value> = agents
        .iter()
        .map(|a| {
            let incarnations: Vec<Value> = a
                .incarnations
                .iter()
                .map(|i| {
                    json!({
                        "incarnation": i.incarnation.to_string(),
                        "applied_below": i.applied_below,
                        "remembered": i.remembered,
                        "batches": i.batches,
                        "dropped_readings": i.dropped_readings,
                        "refused": refused_json(&i.refused),
                        "first_seen_ms": i.first_seen_ms,
                        "last_seen_ms": i.last_seen_ms,
                    })
                })
                .collect();
            json!({
                "agent": a.agent,
                "watermark": a.watermark,
                "last_seen_ms": a.incarnations.iter().map(|i| i.last_seen_ms).max(),
                "dropped_readings": a.dropped_readings,
                "refused": refused_json(&a.refused),
                "incarnations": incarnations,
            })
        })
        .collect();
    json!({ "agents": list })
}
