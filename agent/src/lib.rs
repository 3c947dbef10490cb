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
//! The folders follow the flow of data:
//! - [`sources`] — device inputs: [`sources::simulated`] virtual devices and
//!   the [`sources::json`] readings format.
//! - [`link`] — the device link: per-boot channels, clock mapping and
//!   frame de-duplication ([`link::dedupe`]).
//! - [`engine`] — the single owner of state: applies input, group-commits,
//!   acknowledges after commit.
//! - [`window`] — event-time windows, watermarks, lateness and revisions; a
//!   plain synchronous state machine.
//! - [`store`] — SQLite (WAL): checkpoints, outbox, batches, de-dup marks;
//!   [`store::outbox`] coarsens and drops at the byte limit.
//! - [`uplink`] — batches to the upstream broker, deleted on the collector's
//!   confirmation, resent after a timeout.
//! - [`config`] — TOML + `TRIBUTARY_*` overrides, validated; [`tags`] — the
//!   global tags added to every series key.
//! - [`metrics`] and [`http`] — Prometheus `/metrics` and `/health`.
//! - [`agent`] — start, run and stop it all ([`Agent::start`], [`run`]).
//! - [`bench`](mod@bench) — the `bench` subcommand.

pub mod agent;
pub mod bench;
pub mod config;
pub mod engine;
pub mod http;
pub mod link;
pub mod metrics;
pub mod sources;
pub mod store;
pub mod tags;
pub mod uplink;
pub mod window;

pub use agent::{run, Agent, AgentError, AgentHandle};
pub use metrics::{Counters, Metrics};
