//! Reading the results over HTTP: the JSON query API ([`api`]; the agents
//! it lists in [`agents`]), the
//! statistics a summary is rendered as ([`stats`], shared with the sinks)
//! and the dashboard page ([`dashboard`]); [`resolution`]: a query past
//! its width's retention served from a coarser roll-up. Both read the store through its
//! [`Query`](crate::store::Query) role only.

pub mod agents;
pub mod api;
pub mod config;
pub mod dashboard;
pub mod resolution;
pub mod stats;

pub use api::{router, ApiState};
pub use config::{HttpConfig, DEFAULT_MAX_POINTS};
