//! The checks every payload passes before it may join a group: topic,
//! size, decoding (JSON or binary, version), the batch's agent against the
//! topic's, the number of partials. A refused payload is named by its
//! reason (the label of `tributary_collector_refused_total`).

use tributary_core::batch::Batch;
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
}

/// Every reason with its metric label.
pub(crate) const REFUSED: [(Refused, &str); 6] = [
    (Refused::Oversized, "oversized"),
    (Refused::Malformed, "malformed"),
    (Refused::AgentMismatch, "agent_mismatch"),
    (Refused::TooManyPartials, "too_many_partials"),
    (Refused::BadTopic, "bad_topic"),
    (Refused::Unmergeable, "unmergeable"),
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
    let batch = Batch::decode(payload).map_err(|e| (Refused::Malformed, e.to_string()))?;
    if batch.agent != agent {
        return Err((
            Refused::AgentMismatch,
            format!(
                "batch of agent {:?} on the topic of agent {agent:?}",
                batch.agent
            ),
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
    }
}
