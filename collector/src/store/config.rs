//! The `[store]` section: SQLite (the default) or a PostgreSQL database
//! shared by any number of instances. `TRIBUTARY_STORE_URL` overrides
//! `store.url` (keeps passwords out of files), like every
//! `TRIBUTARY_STORE_<KEY>`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_runtime::config::Problems;

use super::postgres::{PostgresOptions, Tls, KEEPALIVE};

/// Which store backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded SQLite database `data_dir/collector.db` (one instance).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by any number of instances.
    Postgres,
}

/// TLS to PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreTls {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS required, the server certificate verified.
    Require,
}

/// The `[store]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `"sqlite"` (default) or `"postgres"`.
    pub kind: StoreKind,
    /// PostgreSQL connection URL (required for `postgres`), e.g.
    /// `postgres://tributary@db:5432/tributary`. The environment variable
    /// `TRIBUTARY_STORE_URL` overrides it (keeps passwords out of files).
    pub url: Option<String>,
    /// PostgreSQL connections per instance (default 4).
    pub pool_size: usize,
    /// PostgreSQL transactions one instance runs at once for a group of
    /// batches, split by agent (default 1; at most `pool_size`). More lanes
    /// let an instance's merging overlap its server's writing; a window
    /// several lanes of one group merge into then has its revision bumped
    /// once per lane (the same values, revisions that count transactions).
    pub lanes: usize,
    /// `"disable"` (default) or `"require"`.
    pub tls: StoreTls,
    /// PEM file of the CA to trust with `tls = "require"` (default: the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL TCP keepalives, in ms (whole seconds, 3000..=7200000;
    /// default 30000): a connection silent this long is probed every third
    /// of it and given up after three unanswered probes, or when data it
    /// sent stays unacknowledged as long — a vanished server or a dead
    /// network path is noticed in about twice this. 0: not set here (the
    /// URL's `keepalives*` / `tcp_user_timeout` parameters, or the driver's
    /// defaults: probes after 2 hours idle).
    pub keepalive_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            url: None,
            pool_size: 4,
            lanes: 1,
            tls: StoreTls::Disable,
            ca_file: None,
            keepalive_ms: KEEPALIVE.as_secs() * 1000,
        }
    }
}

impl StoreConfig {
    /// The PostgreSQL options (`None` for SQLite).
    pub fn postgres(&self) -> Option<PostgresOptions> {
        (self.kind == StoreKind::Postgres).then(|| PostgresOptions {
            url: self.url.clone().unwrap_or_default(),
            pool_size: self.pool_size,
            tls: match self.tls {
                StoreTls::Disable => Tls::Disable,
                StoreTls::Require => Tls::Require {
                    ca_file: self.ca_file.clone(),
                },
            },
            keepalive: (self.keepalive_ms > 0).then(|| Duration::from_millis(self.keepalive_ms)),
        })
    }

    /// Checks every value of the section.
    pub fn check(&self, p: &mut Problems) {
        let url = self.url.as_deref().unwrap_or("");
        match self.kind {
            StoreKind::Postgres if url.is_empty() => p.bad(
                "store.url",
                "required with kind = \"postgres\" (or set TRIBUTARY_STORE_URL)",
            ),
            StoreKind::Postgres => {
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    p.bad("store.url", format!("not a PostgreSQL URL: {e}"));
                }
            }
            StoreKind::Sqlite if !url.is_empty() => {
                p.bad("store.url", "only used with kind = \"postgres\"");
            }
            StoreKind::Sqlite => {}
        }
        if self.pool_size == 0 || self.pool_size > 1000 {
            p.bad("store.pool_size", "must be 1..=1000");
        }
        if self.lanes == 0 || self.lanes > self.pool_size.max(1) {
            p.bad("store.lanes", "must be 1..=pool_size");
        } else if self.lanes > 1 && self.kind != StoreKind::Postgres {
            p.bad("store.lanes", "only used with kind = \"postgres\"");
        }
        if self.keepalive_ms != 0
            && (self.keepalive_ms % 1000 != 0 || !(3000..=7_200_000).contains(&self.keepalive_ms))
        {
            p.bad(
                "store.keepalive_ms",
                "must be 0 (not set) or whole seconds from 3000 to 7200000",
            );
        }
        if self.ca_file.is_some() && self.tls != StoreTls::Require {
            p.bad("store.ca_file", "only used with tls = \"require\"");
        }
    }
}
