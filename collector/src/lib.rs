//! # tributary-collector
//!
//! The central service: it de-duplicates the partial aggregates of many
//! agents, merges them into exact global results per series and window, and
//! keeps coarser roll-ups exact by merging (DESIGN §3–§6).
//!
//! ## Layout
//! - [`api`] — the HTTP JSON query API.
//! - [`dashboard`] — the dashboard page (embedded HTML/JS/CSS) and
//!   `/api/v1/meta`.
//! - [`config`] — the TOML configuration (`config/collector.toml`).
//! - [`store`] — the `Store` trait (what every backend guarantees: batches
//!   applied once, merges commutative, de-duplication keys in the store) and
//!   [`store::sqlite`], the embedded default.
//! - [`finality`] — when a window is final (watermarks, lateness, idle
//!   timeout), decided from the store.
//! - [`ingest`] — batches from MQTT into the store, acknowledged and
//!   confirmed to their agents only after the commit.
//! - [`service`] — starts and stops ingest and the HTTP server as one unit.
//! - [`sinks`] — push final windows and their revisions to InfluxDB or a
//!   JSON webhook, following the store's change feed from a durable cursor.
//! - [`stats`] — the statistics a summary is rendered as (API and sinks).
//!
//! The query API, the dashboard, sinks and the demo are
//! built on this store (see the Collector issue).

pub mod api;
pub mod config;
pub mod dashboard;
pub mod finality;
pub mod ingest;
pub mod service;
pub mod sinks;
pub mod stats;
pub mod store;
