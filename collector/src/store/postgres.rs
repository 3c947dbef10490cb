//! The PostgreSQL store: many collector instances merging into one database
//! (DESIGN §6).
//!
//! # Design
//! - **Driver.** `tokio-postgres` with a `deadpool-postgres` pool, driven by
//!   a small private tokio runtime owned by the store. The [`Store`] trait is
//!   synchronous; each call hands its future to that runtime and waits on a
//!   plain channel, so it works from any thread — a blocking thread, a plain
//!   thread or (like the SQLite store) inside an async handler — without the
//!   "runtime inside a runtime" panic the sync `postgres` crate would give.
//!   Clones share the pool and the runtime: `pool_size` connections serve
//!   all clones of one store.
//! - **Migrations** ([`schema`]) are versioned in `schema_version` and run at
//!   [`PostgresStore::open`]; a newer schema is refused.
//! - **apply** ([`apply`](self::apply)) runs one transaction: keys first,
//!   merges only of new batches, row locks in a global order, change numbers
//!   taken last under the counter's row lock so they commit in order.

mod apply;
pub mod schema;

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};

use super::{
    corrupt, feed_bounds, key_text, stored, AgentProgress, Applied, Changed, Lease, Store,
    StoreError, StoredWindow,
};

pub use schema::SCHEMA_VERSION;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `Display` of a server error is only its severity; keep the detail.
        match e.as_db_error() {
            Some(db) => StoreError::Backend(format!(
                "{}: {} ({})",
                db.severity(),
                db.message(),
                db.code().code()
            )),
            None => StoreError::Backend(e.to_string()),
        }
    }
}

/// TLS to the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tls {
    /// Plain TCP (`sslmode=disable`): for a database on the same host or a
    /// private network.
    #[default]
    Disable,
    /// TLS required and the server certificate verified against `ca_file`
    /// (PEM) or, when `None`, the system's root certificates.
    Require {
        /// PEM file of the CA(s) to trust.
        ca_file: Option<PathBuf>,
    },
}

/// How to reach the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// A libpq-style URL or key=value string,
    /// e.g. `postgres://tributary@db:5432/tributary`.
    pub url: String,
    /// Connections in the pool (at least 1).
    pub pool_size: usize,
    /// TLS.
    pub tls: Tls,
}

impl PostgresOptions {
    /// Options for `url` with 4 connections and no TLS.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            pool_size: 4,
            tls: Tls::Disable,
        }
    }
}

/// Owns the private runtime; shut down without blocking when the last clone
/// of the store goes (which may happen inside another runtime).
#[derive(Debug)]
struct Engine(Option<tokio::runtime::Runtime>);

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The PostgreSQL store (cheap to clone: clones share pool and runtime).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    handle: tokio::runtime::Handle,
    rollups: Arc<[Width]>,
    _engine: Arc<Engine>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool.status())
            .field("rollups", &self.rollups)
            .finish_non_exhaustive()
    }
}

fn tls_connector(tls: &Tls) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let ca_file = match tls {
        Tls::Disable => None,
        Tls::Require { ca_file } => ca_file.clone(),
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(&path).map_err(|e| {
                StoreError::Backend(format!("store.ca_file {}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    StoreError::Backend(format!("store.ca_file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Backend(format!("store.ca_file {}: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PostgresStore {
    /// Connects, runs the migrations and keeps roll-ups at `rollups` (ms).
    pub fn open(options: &PostgresOptions, rollups: &[i64]) -> Result<Self, StoreError> {
        let rollups: Arc<[Width]> = rollups
            .iter()
            .map(|&w| Width::new(w).map_err(|_| StoreError::BadRollup(w)))
            .collect::<Result<Vec<_>, _>>()?
            .into();
        let mut pg = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| StoreError::Backend(format!("store.url: {e}")))?;
        pg.connect_timeout(Duration::from_secs(10));
        pg.application_name("tributary-collector");
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tributary-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the store runtime: {e}")))?;
        let manager = match &options.tls {
            Tls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
            }
            Tls::Require { .. } => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Manager::from_config(pg, tls_connector(&options.tls)?, manager_config)
            }
        };
        let pool = {
            let _guard = runtime.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .create_timeout(Some(Duration::from_secs(15)))
                .wait_timeout(Some(Duration::from_secs(60)))
                .build()
                .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?
        };
        let store = PostgresStore {
            pool,
            handle: runtime.handle().clone(),
            rollups,
            _engine: Arc::new(Engine(Some(runtime))),
        };
        let found = store.run(|pool| async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            schema::migrate(&mut client).await
        })?;
        tracing::info!(found, version = SCHEMA_VERSION, "PostgreSQL store open");
        Ok(store)
    }

    /// The schema version in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            schema::version(&client).await
        })
    }

    /// A one-query `…_of` read: the rows of `sql`, whose `$1` is the list
    /// of `series`' key texts (`params` are `$2…`) and whose first column
    /// is a key text, converted by `row` and laid out in the order of
    /// `series`.
    fn by_series<T, R>(
        &self,
        series: &[SeriesKey],
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        row: R,
    ) -> Result<Vec<Vec<T>>, StoreError>
    where
        T: Clone + Send + 'static,
        R: Fn(&tokio_postgres::Row) -> Result<T, StoreError> + Send + 'static,
    {
        let texts: Vec<String> = series.iter().map(key_text).collect::<Result<_, _>>()?;
        let wanted = texts.clone();
        let by_key = self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client.prepare_cached(sql).await?;
            let mut args: Vec<&(dyn ToSql + Sync)> = vec![&wanted];
            args.extend(params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
            let mut out: std::collections::HashMap<String, Vec<T>> = Default::default();
            for r in client.query(&stmt, &args).await? {
                out.entry(r.get(0)).or_default().push(row(&r)?);
            }
            Ok(out)
        })?;
        Ok(super::in_order(&texts, by_key))
    }

    /// Runs `f(pool)` on the store's runtime and waits for its answer.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = f(self.pool.clone());
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| {
            StoreError::Backend(
                "the store task failed before answering (it panicked, or the store's runtime stopped)"
                    .into(),
            )
        })?
    }

    /// A change-feed query: `sql` with `params`, whose rows are (change,
    /// series key, start, revision, summary) of windows at `width`.
    fn changed(
        &self,
        sql: &'static str,
        width: Width,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
    ) -> Result<Vec<Changed>, StoreError> {
        self.run(move |pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client.prepare_cached(sql).await?;
            let args: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            client
                .query(&stmt, &args)
                .await?
                .iter()
                .map(|row| {
                    let change: i64 = row.get(0);
                    let key: &str = row.get(1);
                    Ok(Changed {
                        change: u64::try_from(change).map_err(|e| corrupt("change number", e))?,
                        series: serde_json::from_str(key).map_err(|e| corrupt("series key", e))?,
                        stored: stored(row.get(2), width, row.get(3), row.get(4))?,
                    })
                })
                .collect()
        })
    }

    /// Runs `sql` once with (`name`, width, series key texts, window starts)
    /// as `$1`–`$4`, the keys of `keys` as two parallel arrays (`unnest`).
    fn keyed_write(
        &self,
        sql: &'static str,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError> {
        let name = name.to_string();
        let texts: Vec<String> = keys
            .iter()
            .map(|(k, _)| key_text(k))
            .collect::<Result<_, _>>()?;
        let starts: Vec<i64> = keys.iter().map(|(_, start)| *start).collect();
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client.prepare_cached(sql).await?;
            client
                .execute(&stmt, &[&name, &width.ms(), &texts, &starts])
                .await?;
            Ok(())
        })
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => e.into(),
        e => StoreError::Backend(format!("connection pool: {e}")),
    }
}

impl Store for PostgresStore {
    fn apply(&mut self, batches: &[Batch]) -> Result<Vec<Applied>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let batches = batches.to_vec();
        let rollups = self.rollups.clone();
        self.run(|pool| async move {
            let mut client = pool.get().await.map_err(pool_error)?;
            apply::apply(&mut client, &batches, &rollups).await
        })
    }

    fn series(&self) -> Result<Vec<SeriesKey>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("SELECT key FROM series ORDER BY key")
                .await?;
            let mut out = Vec::new();
            for row in client.query(&stmt, &[]).await? {
                let text: &str = row.get(0);
                out.push(serde_json::from_str(text).map_err(|e| corrupt("series key", e))?);
            }
            Ok(out)
        })
    }

    fn windows(
        &self,
        series: &SeriesKey,
        width: Width,
        from: i64,
        to: i64,
    ) -> Result<Vec<StoredWindow>, StoreError> {
        let text = key_text(series)?;
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached(
                    "SELECT r.start, r.revision, r.summary FROM results r JOIN series s ON s.id = r.series
                     WHERE s.key = $1 AND r.width = $2 AND r.start >= $3 AND r.start < $4 ORDER BY r.start",
                )
                .await?;
            client
                .query(&stmt, &[&text, &width.ms(), &from, &to])
                .await?
                .iter()
                .map(|row| stored(row.get(0), width, row.get(1), row.get(2)))
                .collect()
        })
    }

    fn watermarks(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("SELECT agent, watermark FROM watermarks ORDER BY agent")
                .await?;
            Ok(client
                .query(&stmt, &[])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn progress(&self, series: &SeriesKey) -> Result<Vec<AgentProgress>, StoreError> {
        let text = key_text(series)?;
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached(
                    "SELECT w.agent, w.watermark, w.seen_ms FROM series s
                     JOIN series_agents a ON a.series = s.id
                     JOIN watermarks w ON w.agent = a.agent
                     WHERE s.key = $1 ORDER BY w.agent",
                )
                .await?;
            Ok(client
                .query(&stmt, &[&text])
                .await?
                .iter()
                .map(|r| AgentProgress {
                    agent: r.get(0),
                    watermark: r.get(1),
                    seen_ms: r.get(2),
                })
                .collect())
        })
    }

    fn progress_of(&self, series: &[SeriesKey]) -> Result<Vec<Vec<AgentProgress>>, StoreError> {
        self.by_series(
            series,
            "SELECT s.key, w.agent, w.watermark, w.seen_ms FROM series s
             JOIN series_agents a ON a.series = s.id
             JOIN watermarks w ON w.agent = a.agent
             WHERE s.key = ANY($1) ORDER BY s.key, w.agent",
            Vec::new(),
            |r| {
                Ok(AgentProgress {
                    agent: r.get(1),
                    watermark: r.get(2),
                    seen_ms: r.get(3),
                })
            },
        )
    }

    fn windows_of(
        &self,
        series: &[SeriesKey],
        width: Width,
        from: i64,
        to: i64,
    ) -> Result<Vec<Vec<StoredWindow>>, StoreError> {
        self.by_series(
            series,
            "SELECT s.key, r.start, r.revision, r.summary FROM series s
             JOIN results r ON r.series = s.id
             WHERE s.key = ANY($1) AND r.width = $2 AND r.start >= $3 AND r.start < $4
             ORDER BY s.key, r.start",
            vec![Box::new(width.ms()), Box::new(from), Box::new(to)],
            move |r| stored(r.get(1), width, r.get(2), r.get(3)),
        )
    }

    fn changed_since(
        &self,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changed>, StoreError> {
        let (after, limit) = feed_bounds(after, limit);
        self.changed(
            "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM results r
             JOIN series s ON s.id = r.series
             WHERE r.width = $1 AND r.changed > $2 ORDER BY r.changed LIMIT $3",
            width,
            vec![Box::new(width.ms()), Box::new(after), Box::new(limit)],
        )
    }

    fn park(
        &mut self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError> {
        self.keyed_write(
            "INSERT INTO parked (name, series, width, start)
             SELECT $1, s.id, $2, u.start FROM unnest($3::text[], $4::bigint[]) AS u(k, start)
             JOIN series s ON s.key = u.k
             ON CONFLICT DO NOTHING",
            name,
            width,
            keys,
        )
    }

    fn parked(
        &self,
        name: &str,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Changed>, StoreError> {
        let (after, limit) = feed_bounds(after, limit);
        self.changed(
            "SELECT r.changed, s.key, r.start, r.revision, r.summary FROM parked p
             JOIN results r ON r.series = p.series AND r.width = p.width AND r.start = p.start
             JOIN series s ON s.id = r.series
             WHERE p.name = $4 AND p.width = $1 AND r.changed > $2 ORDER BY r.changed LIMIT $3",
            width,
            vec![
                Box::new(width.ms()),
                Box::new(after),
                Box::new(limit),
                Box::new(name.to_string()),
            ],
        )
    }

    fn unpark(
        &mut self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> Result<(), StoreError> {
        self.keyed_write(
            "DELETE FROM parked p USING unnest($3::text[], $4::bigint[]) AS u(k, start), series s
             WHERE p.name = $1 AND p.width = $2 AND s.key = u.k AND p.series = s.id AND p.start = u.start",
            name,
            width,
            keys,
        )
    }

    fn cursor(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("SELECT value FROM cursors WHERE name = $1")
                .await?;
            let v: Option<i64> = client.query_opt(&stmt, &[&name]).await?.map(|r| r.get(0));
            u64::try_from(v.unwrap_or(0)).map_err(|e| corrupt("cursor", e))
        })
    }

    fn set_cursor(&mut self, name: &str, value: u64) -> Result<(), StoreError> {
        let name = name.to_string();
        let value = i64::try_from(value).map_err(|e| corrupt("cursor", e))?;
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached(
                    "INSERT INTO cursors (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = GREATEST(cursors.value, excluded.value)",
                )
                .await?;
            client.execute(&stmt, &[&name, &value]).await?;
            Ok(())
        })
    }

    fn lease(&mut self, name: &str, holder: &str, ttl: Duration) -> Result<Lease, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let take = client
                .prepare_cached(
                    "INSERT INTO leases (name, holder, expires)
                     VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
                     WHERE leases.holder = excluded.holder OR leases.expires <= clock_timestamp()",
                )
                .await?;
            let held_by = client
                .prepare_cached("SELECT holder FROM leases WHERE name = $1")
                .await?;
            // Refused, then released before the holder is read: try again.
            for _ in 0..3 {
                if client.execute(&take, &[&name, &holder, &ttl_ms]).await? == 1 {
                    return Ok(Lease::Ours);
                }
                if let Some(row) = client.query_opt(&held_by, &[&name]).await? {
                    return Ok(Lease::Theirs(row.get(0)));
                }
            }
            Err(StoreError::Backend(format!(
                "lease {name:?} changed hands three times while being taken"
            )))
        })
    }

    fn release(&mut self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.run(|pool| async move {
            let client = pool.get().await.map_err(pool_error)?;
            let stmt = client
                .prepare_cached("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .await?;
            client.execute(&stmt, &[&name, &holder]).await?;
            Ok(())
        })
    }

    fn reader(&self) -> Result<Self, StoreError> {
        // The pool hands each query its own connection already.
        Ok(self.clone())
    }
}
