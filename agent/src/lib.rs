//! # tributary-agent
//!
//! The edge daemon next to the devices (DESIGN §3–§7). Its promise: whatever
//! a device handed over and the agent acknowledged reaches the collector
//! exactly once, through restarts, `kill -9`, broker outages and full disks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tributary_agent::AgentError> {
//! let config = tributary_agent::config::Config::from_toml("agent_id = \"gw-1\"\n[simulated]\ndevices = 4\n")
//!     .expect("valid config");
//! let agent = tributary_agent::Agent::start(config).await?;
//! println!("{:?}", agent.counters());
//! agent.shutdown().await
//! # }
//! ```
//!
//! # Layout
//! The folders follow the flow of data, and each component's config section
//! lives beside it:
//! - [`sources`] — device inputs: [`sources::serial`] ports,
//!   [`sources::mqtt`] (the local broker), [`sources::modbus`] (polled),
//!   [`sources::opcua`] (subscriptions; cargo feature `opcua`),
//!   [`sources::simulated`] virtual devices, and the exact
//!   [`sources::scaling`] the industrial inputs share.
//! - [`link`] — what devices send and the per-device state to apply it once:
//!   the [`link::json`] readings format, clock mapping ([`link::clock`]),
//!   frame de-duplication from where each boot's Hello says its
//!   unacknowledged frames begin ([`link::dedupe`]), device boots
//!   ([`link::device`]).
//! - [`engine`] — the single owner of state: the loop that group-commits,
//!   the registry of series with the global tags ([`engine::tags`]) and
//!   `[limits]`, device and readings input, the commit, and forming batches
//!   for the uplink; acknowledges only after the commit.
//! - [`window`] — event-time windows, watermarks, lateness and revisions; a
//!   plain synchronous state machine (`[window]`).
//! - [`store`] — SQLite (WAL): schema, load, commit, batches (named by the
//!   database's [`store::incarnation`]), and the [`store::outbox`] that
//!   coarsens and drops at its byte limit (`[store]`, `[outbox]`).
//! - [`uplink`] — batches to the upstream broker, deleted on the collector's
//!   confirmation: [`uplink::state`] is the protocol state, a sync struct,
//!   the rest its async shell (`[uplink]`).
//! - `mqtt_client` — the MQTT options the uplink and the local broker
//!   source share (TLS from `tributary_runtime::tls`).
//! - [`metrics`] and [`http`] — Prometheus `/metrics`, and `/health`,
//!   `/health/live`, `/health/ready` (`[http]`) from the [`health`] state.
//! - [`config`] — the root config: load, `TRIBUTARY_*` overrides, validation
//!   delegated to each section.
//! - [`agent`] — start, run and stop it all ([`Agent::start`], [`run`]).
//! - [`bench`](mod@bench) — the `bench` subcommand.

pub mod agent;
pub mod bench;
pub mod config;
pub mod engine;
pub mod health;
pub mod http;
pub mod link;
pub mod metrics;
pub(crate) mod mqtt_client;
pub mod sources;
pub mod store;
pub mod uplink;
pub mod window;

pub use agent::{run, Agent, AgentError, AgentHandle};
pub use metrics::{Counters, Metrics};
