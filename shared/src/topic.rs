//! The MQTT topic tree (DESIGN §5). Every topic starts with `tributary/v1/`.
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `tributary/v1/devices/{device}/readings` | device → agent | JSON readings (one or a batch) |
//! | `tributary/v1/devices/{device}/summaries` | device → agent | a binary link frame (Summary) |
//! | `tributary/v1/agents/{agent}/partials` | agent → collector | a [`crate::batch::Batch`] (JSON or binary) |
//! | `tributary/v1/agents/{agent}/acks` | collector → agent | a [`crate::batch::Confirm`] (JSON) |

use alloc::format;
use alloc::string::String;

/// The common prefix of every topic.
pub const PREFIX: &str = "tributary/v1";

/// Where agent `agent` publishes its batches.
pub fn partials(agent: &str) -> String {
    format!("{PREFIX}/agents/{agent}/partials")
}

/// Where the collector confirms agent `agent`'s batches.
pub fn acks(agent: &str) -> String {
    format!("{PREFIX}/agents/{agent}/acks")
}

/// The subscription filter for every agent's batches.
pub const ALL_PARTIALS: &str = "tributary/v1/agents/+/partials";

/// The subscription filter for every device's readings and summaries.
pub const ALL_DEVICES: &str = "tributary/v1/devices/+/+";

/// Where device `device` publishes JSON readings.
pub fn readings(device: &str) -> String {
    format!("{PREFIX}/devices/{device}/readings")
}

/// Where device `device` publishes binary summary frames.
pub fn summaries(device: &str) -> String {
    format!("{PREFIX}/devices/{device}/summaries")
}

/// The agent id in a `…/agents/{agent}/partials` topic.
pub fn agent_of_partials(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("tributary/v1/agents/")?
        .strip_suffix("/partials")
        .filter(|a| !a.contains('/'))
}

/// `(device, leaf)` of a `…/devices/{device}/{leaf}` topic.
pub fn device_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("tributary/v1/devices/")?;
    let (device, leaf) = rest.split_once('/')?;
    (!leaf.contains('/')).then_some((device, leaf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_topic_parts() {
        assert_eq!(agent_of_partials(&partials("gw-1")), Some("gw-1"));
        assert_eq!(agent_of_partials("tributary/v1/agents/a/b/partials"), None);
        assert_eq!(agent_of_partials("other/agents/a/partials"), None);
        assert_eq!(device_topic(&readings("d1")), Some(("d1", "readings")));
        assert_eq!(device_topic(&summaries("d1")), Some(("d1", "summaries")));
        assert_eq!(device_topic("tributary/v1/devices/d1/x/y"), None);
    }
}
