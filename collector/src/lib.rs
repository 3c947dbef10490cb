//! # tributary-collector
//!
//! The central service: it de-duplicates the partial aggregates of many
//! agents, merges them into exact global results per series and window, and
//! keeps coarser roll-ups exact by merging (DESIGN §3–§6).
//!
//! # Layout
//! The folders follow the data: batches come in through `ingest/`, are
//! merged by `merge/` into `store/`, and go out through `query/` (HTTP) and
//! `sinks/` (push).
//! - [`ingest`] — batches from MQTT into the store: `transport` (MQTT 3.1.1
//!   and 5 behind one interface), `check` (payload checks), `group` (the
//!   ack group, a sync struct: what to acknowledge and confirm after a
//!   commit), `commit` (a group applied to the store, a batch that fails
//!   alone refused whole), `config` (`[mqtt]`, `[limits]`), `metrics`;
//!   `mod.rs` is the thin async loop.
//! - [`merge`] — de-duplication (`senders`: per agent incarnation a mark
//!   and the few keys above it), merging a group's partials per row,
//!   roll-ups, folding a delta into a stored row: written once, used by both
//!   backends.
//! - [`store`] — the role traits ([`store::Ingest`], [`store::Query`],
//!   [`store::Feed`], [`store::Leases`]; [`store::Store`] is all of them),
//!   `config` (`[store]`), `refused` (what ingest refused of
//!   batches with a trusted identity, stored with them), and the backends [`store::sqlite`] (the embedded
//!   default: one writer, a pool of readers) and [`store::postgres`] (shared
//!   by many instances), which hold only their SQL.
//! - [`query`] — the HTTP JSON API (`api`; its agents listing `agents`),
//!   the statistics a summary is rendered as (`stats`), the dashboard page (`dashboard`, assets in
//!   `collector/assets/`), `config` (`[http]`).
//! - [`sinks`] — push final windows and their revisions to InfluxDB, a
//!   JSON webhook, Prometheus remote write or OTLP/HTTP, following the
//!   store's change feed from a durable cursor (one shared runner; a kind is
//!   one encoding module).
//! - [`retention`] — how long each stored width is kept (`config`:
//!   `[retention]`), the task deleting expired rows in bounded batches
//!   (`task`), and the policy the query API falls back to a coarser width
//!   by.
//! - `lease` — this instance's hold on a named lease in the store, so a
//!   job runs on one of the instances sharing a database at a time (each
//!   sink's pushes, the retention runs).
//! - [`finality`] — when a window is final (`[finality]`), decided from the
//!   store's progress.
//! - [`metrics`] — the one `prometheus-client` registry of `/metrics`.
//! - [`health`] — `/health/live` and `/health/ready` (store writable,
//!   subscription granted, ingest lag bounded), and `/health`.
//! - [`config`] — the whole file: loading, environment overrides and
//!   validation; each section lives beside its component.
//! - [`service`] — starts and stops ingest, sinks and the HTTP server as one
//!   unit over one store handle.

pub mod config;
pub mod finality;
pub mod health;
pub mod ingest;
mod lease;
pub mod merge;
pub mod metrics;
pub mod query;
pub mod retention;
pub mod service;
pub mod sinks;
pub mod store;
