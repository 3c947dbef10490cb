//! The checks every payload passes before it may join a group: topic,
//! size, decoding (JSON or binary, version), the batch's identity against
//! the topic's agent, the number of partials. A refused payload is named by
//! its reason (the label of `tributary_collector_refused_total`).
//!
//! # Identity
//! A batch's identity is (agent, incarnation, seq). It cannot be the
//! topic's agent's — refused, acknowledged and counted — when:
//! - its agent is not the topic's (`agent_mismatch`);
//! - its incarnation is not 16 lowercase hex digits, its
//!   `first_unconfirmed` is above its own sequence (no agent forms such a
//!   batch), or its sequence is beyond what the store keeps (2⁶³ − 1)
//!   (`bad_identity`).
//!
//! A new incarnation of a known agent *is* accepted — a re-provisioned
//! gateway, or its database replaced — and logged and counted by ingest
//! (`tributary_collector_incarnations_total{kind="another"}`). MQTT does not
//! tell a subscriber who published a message: only the broker's per-agent
//! credentials and ACLs (the production default, see
//! `config/multi-instance/`) make the topic's agent the publisher's.

use tributary_core::batch::{Batch, BatchError};
use tributary_core::topic;

/// Why a payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Larger than `max_payload_bytes`.
    Oversized,
    /// Not a batch: malformed, unknown version, invalid summary.
    Malformed,
    /// The batch's agent differs from its topic's.
    AgentMismatch,
    /// More partials than `max_partials`.
    TooManyPartials,
    /// A topic outside the agents' partials tree.
    BadTopic,
    /// A partial cannot merge into its stored window (quantum mismatch, overflow).
    Unmergeable,
    /// The batch's identity cannot be an agent's (see the module
    /// documentation).
    BadIdentity,
}

/// Every reason with its metric label.
pub(crate) const REFUSED: [(Refused, &str); 7] = [
    (Refused::Oversized, "oversized"),
    (Refused::Malformed, "malformed"),
    (Refused::AgentMismatch, "agent_mismatch"),
    (Refused::TooManyPartials, "too_many_partials"),
    (Refused::BadTopic, "bad_topic"),
    (Refused::Unmergeable, "unmergeable"),
    (Refused::BadIdentity, "bad_identity"),
];

impl Refused {
    /// The reason's metric label.
    pub fn name(self) -> &'static str {
        REFUSED[self as usize].1
    }
}

/// The limits a payload is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted payload (bytes).
    pub max_payload_bytes: usize,
    /// Most partials in one batch.
    pub max_partials: usize,
}

/// Checks one payload; returns the batch or why it was refused.
pub fn check(limits: Limits, topic_name: &str, payload: &[u8]) -> Result<Batch, (Refused, String)> {
    let Some(agent) = topic::agent_of_partials(topic_name) else {
        return Err((
            Refused::BadTopic,
            format!("topic {topic_name:?} is not tributary/v1/agents/{{agent}}/partials"),
        ));
    };
    if payload.len() > limits.max_payload_bytes {
        return Err((
            Refused::Oversized,
            format!(
                "{} bytes; the limit is {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    let batch = Batch::decode(payload).map_err(|e| match e {
        BatchError::Identity(_) => (Refused::BadIdentity, e.to_string()),
        e => (Refused::Malformed, e.to_string()),
    })?;
    if batch.agent != agent {
        return Err((
            Refused::AgentMismatch,
            format!(
                "batch of agent {:?} on the topic of agent {agent:?}",
                batch.agent
            ),
        ));
    }
    if i64::try_from(batch.seq).is_err() {
        return Err((
            Refused::BadIdentity,
            format!("sequence {} is beyond 2^63 - 1", batch.seq),
        ));
    }
    if batch.partials.len() > limits.max_partials {
        return Err((
            Refused::TooManyPartials,
            format!(
                "{} partials; the limit is {}",
                batch.partials.len(),
                limits.max_partials
            ),
        ));
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::batch::Encoding;

    const LIMITS: Limits = Limits {
        max_payload_bytes: 1000,
        max_partials: 0,
    };

    #[test]
    fn each_reason_is_found_and_named() {
        let ok = Batch::new("gw", 1, 0, vec![]).encode(Encoding::Json);
        let t = topic::partials("gw");
        let other = topic::partials("other");
        assert_eq!(check(LIMITS, &t, &ok).unwrap().agent, "gw");
        let cases = [
            ("x/y", ok.clone(), Refused::BadTopic),
            (t.as_str(), vec![b' '; 1001], Refused::Oversized),
            (t.as_str(), b"{".to_vec(), Refused::Malformed),
            (other.as_str(), ok.clone(), Refused::AgentMismatch),
        ];
        for (topic_name, payload, want) in cases {
            assert_eq!(check(LIMITS, topic_name, &payload).unwrap_err().0, want);
        }
        assert_eq!(Refused::AgentMismatch.name(), "agent_mismatch");
        assert_eq!(Refused::Unmergeable.name(), "unmergeable");
        assert_eq!(Refused::BadIdentity.name(), "bad_identity");
    }

    #[test]
    fn an_identity_that_cannot_be_an_agents_is_refused() {
        let t = topic::partials("gw");
        let refused = |b: &Batch| check(LIMITS, &t, &b.encode(Encoding::Json)).unwrap_err();
        let inc = tributary_core::Incarnation::new(7);
        // Unconfirmed batches beginning above this one.
        let (r, why) = refused(&Batch::new("gw", 5, 0, vec![]).with_identity(inc, 6));
        assert_eq!(r, Refused::BadIdentity, "{why}");
        // A sequence beyond the store's integers.
        let (r, why) = refused(&Batch::new("gw", 1 << 63, 0, vec![]).with_identity(inc, 1));
        assert_eq!(r, Refused::BadIdentity, "{why}");
        // A malformed incarnation.
        let mut v: serde_json::Value =
            serde_json::from_slice(&Batch::new("gw", 5, 0, vec![]).encode(Encoding::Json)).unwrap();
        v["incarnation"] = "GW".into();
        let (r, why) = check(LIMITS, &t, &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(r, Refused::BadIdentity, "{why}");
        assert!(why.contains("\"GW\""), "{why}");
        // The largest sequence the store keeps is fine.
        let ok = Batch::new("gw", i64::MAX as u64, 0, vec![]).with_identity(inc, 1);
        assert!(check(LIMITS, &t, &ok.encode(Encoding::Binary)).is_ok());
    }
}
