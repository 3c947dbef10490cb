//! # tributary-runtime
//!
//! The `std` glue both daemons (`tributary-agent`, `tributary-collector`)
//! stand on; nothing here knows about summaries, windows or batches.
//!
//! # Layout
//! - [`config`] — TOML config files: `TRIBUTARY_*` environment overrides,
//!   [`config::ConfigError`] naming every bad key at once, secrets and
//!   password files.
//! - [`tls`] — rustls client settings from a CA file or the system roots.
//! - [`checkpoint`] — the SQLite WAL checkpointer thread both stores use.
//! - [`metrics`] — the `prometheus-client` registry rendered on `/metrics`.
//! - [`shutdown`] — Ctrl-C / SIGTERM.
//! - [`clock`] — wall-clock milliseconds since the epoch.
//! - [`logging`] — `tracing` to stderr, filtered by `RUST_LOG`.

pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod tls;

pub use clock::now_ms;
pub use config::ConfigError;
pub use shutdown::shutdown_signal;
