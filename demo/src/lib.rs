//! # tributary-demo
//!
//! The whole system in one process, for a first look and for the system
//! tests and benches: an embedded MQTT broker, agents with simulated
//! devices, and the collector on SQLite. Production runs the two daemons
//! (`tributary-agent`, `tributary-collector`) and a real broker instead;
//! neither daemon links anything of this crate.
//!
//! # Layout
//! - [`broker`] — the embedded MQTT broker (`rumqttd`).
//! - [`demo`] — the main job: run, judge every window by the oracle, print
//!   a summary, serve the dashboard.
//! - [`soak`] — the fault campaign (`tributary-soak`): real agent,
//!   collector and mosquitto processes killed, restarted, starved of disk
//!   and fed hostile input, judged by the oracle.
//! - [`sites`] — the API's site groups judged by the oracle.
//! - [`truth`] — the oracle's view of agents' simulated devices, and the
//!   API's points judged by it.
//! - [`wire`] — the uplink's bytes on the wire against the devices' raw
//!   readings as JSON messages, both measured as MQTT packets.
//!
//! The `latency_bench` example measures window close → queryable on this
//! same set-up; `tests/` run agent and collector together (in-process and
//! as real processes).

pub mod broker;
pub mod demo;
pub mod sites;
pub mod soak;
pub mod truth;
pub mod wire;
