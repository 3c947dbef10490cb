//! The PostgreSQL store: many collector instances merging into one database
//! (DESIGN §6).
//!
//! # Design
//! - **Driver.** `tokio-postgres` with a `deadpool-postgres` pool, natively
//!   async on the caller's runtime: each call takes a connection from the
//!   pool for its statements and gives it back. Clones share the pool:
//!   `pool_size` connections serve every role of one instance. TLS (rustls)
//!   verifies the server against [`tributary_runtime::tls`] roots.
//! - **Migrations** ([`schema`]) are versioned in `schema_version` and run at
//!   [`PostgresStore::open`]; a newer schema is refused.
//! - **apply** ([`apply`](self::apply)) runs one transaction around
//!   [`crate::merge`]: keys first, merges only of new batches, new rows
//!   inserted once with their final state (the rows expected new by an
//!   optimistic direct `COPY`, `direct`), existing ones locked in a global
//!   order; change positions come from the transaction's id, and the feed
//!   shows only those every older transaction has ended below (`feed`), so
//!   no counter row serialises the instances' commits.
//! - **Lanes** (opt-in, [`PostgresStore::with_lanes`]): one apply may run
//!   a group's agents as several such transactions at once (`lanes`).
//! - **A lost `COMMIT` reply** (the connection fails during `COMMIT`) is
//!   resolved, not guessed: the server is asked on another connection
//!   whether the transaction (each lane's) committed, and a backend still
//!   waiting for a `COMMIT` that never arrived is ended (`resolve`).
//! - **Keepalives.** TCP keepalives on every connection
//!   ([`PostgresOptions::keepalive`]), so a server that vanished is noticed
//!   by this side too, not only when a statement's bytes go unacknowledged.
//!   The other way round, each session sets the server's
//!   `idle_in_transaction_session_timeout` to the time this side takes to
//!   give a silent server up ([`orphan_timeout`]): an instance whose host
//!   vanished mid-transaction (power lost, network cut: no FIN, no RST)
//!   leaves its backend waiting for the next statement, holding the row
//!   locks of its senders and result rows, and the server, on its default
//!   TCP keepalive (2 hours idle), would keep them that long — every other
//!   instance applying a batch of those agents would wait on them. The
//!   store's transactions never wait on this side between statements for
//!   more than the work of one group (milliseconds to a second), so the
//!   timeout ends only orphans. Set per session after connecting (not as a
//!   startup `options` parameter, which connection poolers such as
//!   PgBouncer refuse).
//!
//! Files: [`schema`], [`apply`](self::apply) (with `rows`: the result
//! rows, `direct`: their optimistic `COPY`, and `senders`: the agent incarnations' de-duplication marks),
//! `lanes`, `resolve` (a commit whose reply was lost), `query`, `feed`
//! (change feed, parked rows, cursors), `leases`,
//! `retention` (partitions of `results` by width and window start, dropped
//! when expired; bounded deletes at the edge).

mod apply;
mod direct;
mod feed;
mod lanes;
mod leases;
mod query;
mod resolve;
mod retention;
mod rows;
pub mod schema;
mod senders;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};
use tributary_runtime::metrics::prometheus_client::registry::Registry;

use super::{
    rollup_widths, AgentProgress, AgentState, Answer, Applied, Changed, Committed, Expire, Feed,
    Ingest, Lease, Leases, Query, Refusals, Report, StoreError, StoredWindow,
};

pub use resolve::{CommitOutcome, IdleEnd};
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

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => StoreError::Backend(format!("connection pool: {e}")),
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
    /// TCP keepalives on every connection ([`keepalives`]): a connection
    /// silent this long (whole seconds, at least 3) is probed every third
    /// of it, and given up after three unanswered probes — or when data
    /// it sent stays unacknowledged as long (`tcp_user_timeout`) — so a
    /// vanished server is noticed in about twice this. `None`: the URL's
    /// `keepalives*` and `tcp_user_timeout` parameters, or the driver's
    /// defaults (probes after 2 hours idle, no user timeout). Also sets
    /// the server's `idle_in_transaction_session_timeout` for each session
    /// to the same total ([`orphan_timeout`]; `None`: the server's).
    pub keepalive: Option<Duration>,
}

/// The default [`PostgresOptions::keepalive`]: 30 s.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

impl PostgresOptions {
    /// Options for `url` with 4 connections, no TLS and keepalives after
    /// [`KEEPALIVE`].
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            pool_size: 4,
            tls: Tls::Disable,
            keepalive: Some(KEEPALIVE),
        }
    }
}

/// The PostgreSQL store (cheap to clone: clones share the pool).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Transactions one apply may run at once ([`lanes`]; 1 unless
    /// [`PostgresStore::with_lanes`]).
    lanes: usize,
    rollups: Arc<[Width]>,
    /// Bytes of partitions dropped since the last [`Expire::reclaim`].
    freed: Arc<AtomicU64>,
    /// When to try the direct `COPY` of rows expected new ([`direct`]).
    direct: Arc<direct::Direct>,
    /// Commits whose reply was lost, by outcome ([`resolve`]).
    unknown: resolve::CommitsUnknown,
    /// Backends found waiting for a lost `COMMIT`, by result ([`resolve`]).
    idle: resolve::IdleEnded,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool.status())
            .field("rollups", &self.rollups)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, runs the migrations and keeps roll-ups at `rollups` (ms).
    pub async fn open(options: &PostgresOptions, rollups: &[i64]) -> Result<Self, StoreError> {
        let rollups: Arc<[Width]> = rollup_widths(rollups)?.into();
        let mut pg = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| StoreError::Backend(format!("store.url: {e}")))?;
        pg.connect_timeout(Duration::from_secs(10));
        pg.application_name("tributary-collector");
        if let Some(idle) = options.keepalive {
            keepalives(&mut pg, idle);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &options.tls {
            Tls::Disable => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
            }
            Tls::Require { ca_file } => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls =
                    tributary_runtime::tls::client_config(ca_file.as_deref(), "store.ca_file")
                        .map_err(|e| StoreError::Backend(e.to_string()))?;
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                Manager::from_config(pg, connector, manager_config)
            }
        };
        let mut pool = Pool::builder(manager);
        if let Some(idle) = options.keepalive {
            let set = format!(
                "SET idle_in_transaction_session_timeout = {}",
                orphan_timeout(idle).as_millis()
            );
            pool = pool.post_create(Hook::async_fn(move |client, _| {
                let set = set.clone();
                Box::pin(
                    async move { client.batch_execute(&set).await.map_err(HookError::Backend) },
                )
            }));
        }
        let pool = pool
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(60)))
            .build()
            .map_err(|e| StoreError::Backend(format!("connection pool: {e}")))?;
        let store = PostgresStore {
            pool,
            lanes: 1,
            rollups,
            freed: Arc::default(),
            direct: Arc::default(),
            unknown: resolve::CommitsUnknown::default(),
            idle: resolve::IdleEnded::default(),
        };
        let found = schema::migrate(&mut store.client().await?).await?;
        tracing::info!(found, version = SCHEMA_VERSION, "PostgreSQL store open");
        Ok(store)
    }

    /// The store applying each group in up to `lanes` transactions at once,
    /// split by agent ([`lanes`]; at most the pool's size, at least 1).
    ///
    /// Off (1) by default: a row that several lanes of one group merge
    /// into is written once per lane, so its revision counts those
    /// transactions rather than the group's — the same windows, but
    /// revisions that differ from SQLite's for the same groups.
    #[must_use]
    pub fn with_lanes(mut self, lanes: usize) -> Self {
        self.lanes = lanes.clamp(1, self.pool.status().max_size.max(1));
        self
    }

    /// How many times an optimistic direct `COPY` of rows expected new ran
    /// into an existing row and fell back to the general path, since this
    /// store (and its clones) opened.
    pub fn direct_conflicts(&self) -> u64 {
        self.direct.conflicts()
    }

    /// How many transactions whose `COMMIT` reply was lost ended with
    /// `outcome` ([`resolve`]), since this store (and its clones) opened.
    pub fn commits_unknown(&self, outcome: CommitOutcome) -> u64 {
        self.unknown.get(outcome)
    }

    /// How many backends found waiting for a `COMMIT` that never arrived
    /// ended with `end` ([`resolve`]), since this store (and its clones)
    /// opened.
    pub fn commits_idle(&self, end: IdleEnd) -> u64 {
        self.idle.get(end)
    }

    /// The schema version in the database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        schema::version(&self.client().await?).await
    }

    /// Applies each lane's batches (indices into `batches`) in its own
    /// transaction, the lanes at once; answers the group's report in its
    /// order, or the first error once every lane has ended ([`lanes`]),
    /// with what the lanes that committed applied
    /// ([`StoreError::Partly`]) if any did.
    async fn apply_lanes(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
        lanes: Vec<Vec<usize>>,
    ) -> Answer<Report> {
        let mut running = tokio::task::JoinSet::new();
        for lane in lanes {
            let mine: Vec<Batch> = lane.iter().map(|&i| batches[i].clone()).collect();
            let theirs: Vec<Refusals> = lane
                .iter()
                .map(|&i| refused.get(i).copied().unwrap_or_default())
                .collect();
            let store = self.clone();
            running.spawn(async move {
                let report = store.applied(&mine, &theirs).await?;
                Ok::<_, StoreError>((lane, report))
            });
        }
        let mut applied: Vec<Option<Applied>> = vec![None; batches.len()];
        let mut incarnations = Vec::new();
        let mut failed = None;
        while let Some(done) = running.join_next().await {
            // A lane that panicked is a batch fault like a panic on one
            // connection ([`StoreError::Panicked`]).
            let outcome = done.map_err(StoreError::from);
            match outcome.and_then(|r| r) {
                Ok((lane, report)) => {
                    for (i, a) in lane.into_iter().zip(report.applied) {
                        applied[i] = Some(a);
                    }
                    incarnations.extend(report.incarnations);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(error) = failed {
            // What the other lanes committed stays committed; the caller
            // learns which batches were new there (a retry answers them
            // as duplicates).
            if applied.iter().all(Option::is_none) {
                return Err(error);
            }
            return Err(StoreError::Partly {
                error: Box::new(error),
                committed: Box::new(Committed {
                    applied,
                    incarnations,
                }),
            });
        }
        let applied = applied
            .into_iter()
            .map(|a| a.ok_or_else(|| StoreError::Backend("a lane left a batch unanswered".into())))
            .collect::<Result<_, _>>()?;
        Ok(Report {
            applied,
            incarnations,
        })
    }

    /// `batches` applied in one transaction on a connection of the pool,
    /// a lost `COMMIT` reply resolved ([`resolve`]).
    async fn applied(&self, batches: &[Batch], refused: &[Refusals]) -> Answer<Report> {
        let result = {
            // Let go before resolving: the pool may have no other.
            let mut client = self.client().await?;
            apply::apply(&mut client, batches, refused, &self.rollups, &self.direct).await
        };
        resolve::settle(&self.pool, &self.unknown, &self.idle, result).await
    }

    /// A connection of the pool.
    async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Sets TCP keepalives on `pg`: probes after `idle` of silence (whole
/// seconds, at least 3), every third of it, three of them; data unacknowledged
/// as long as that takes closes the connection too (on Linux
/// `TCP_USER_TIMEOUT`, which keepalives alone do not cover: they probe
/// only a connection with nothing in flight — not one whose `COMMIT`
/// the vanished server never acknowledged).
fn keepalives(pg: &mut tokio_postgres::Config, idle: Duration) {
    let (idle, interval, retries) = probes(idle);
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(idle))
        .keepalives_interval(Duration::from_secs(interval))
        .keepalives_retries(retries)
        .tcp_user_timeout(orphan_timeout(Duration::from_secs(idle)));
}

/// The keepalive probes for `idle`: after how many seconds of silence,
/// every how many seconds, how many.
fn probes(idle: Duration) -> (u64, u64, u32) {
    let idle = idle.as_secs().max(3);
    (idle, idle / 3, 3)
}

/// How long a connection kept alive after `idle` takes to be given up
/// when the other side is silent: the wait before the first probe and
/// every probe's interval (twice `idle`; 60 s by default). Also the
/// server's `idle_in_transaction_session_timeout` for the store's sessions
/// (see the module's notes).
fn orphan_timeout(idle: Duration) -> Duration {
    let (idle, interval, retries) = probes(idle);
    Duration::from_secs(idle + interval * u64::from(retries))
}

impl Ingest for PostgresStore {
    async fn apply_refused(&self, batches: &[Batch], refused: &[Refusals]) -> Answer<Report> {
        if batches.is_empty() {
            return Ok(Report::default());
        }
        // With one lane (the default) there is nothing to split.
        let lanes = if self.lanes > 1 {
            lanes::split(batches, self.lanes)
        } else {
            Vec::new()
        };
        if lanes.len() <= 1 {
            return self.applied(batches, refused).await;
        }
        self.apply_lanes(batches, refused, lanes).await
    }

    async fn record_refused(&self, batches: &[Batch], refused: &[Refusals]) -> Answer<Report> {
        if batches.is_empty() {
            return Ok(Report::default());
        }
        let result = {
            let mut client = self.client().await?;
            apply::record(&mut client, batches, refused).await
        };
        resolve::settle(&self.pool, &self.unknown, &self.idle, result).await
    }

    fn register_metrics(&self, r: &mut Registry) {
        self.unknown.register(r);
        self.idle.register(r);
    }

    async fn probe(&self) -> Answer<()> {
        self.client()
            .await?
            .execute(
                "INSERT INTO meta (key, value) VALUES ('health_probe', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&tributary_runtime::now_ms()],
            )
            .await?;
        Ok(())
    }
}

impl Query for PostgresStore {
    async fn series(&self) -> Answer<Vec<SeriesKey>> {
        query::series(&self.client().await?).await
    }

    async fn windows(
        &self,
        series: &SeriesKey,
        width: Width,
        from: i64,
        to: i64,
    ) -> Answer<Vec<StoredWindow>> {
        query::windows(&self.client().await?, series, width, from, to).await
    }

    async fn windows_of(
        &self,
        series: &[SeriesKey],
        width: Width,
        from: i64,
        to: i64,
    ) -> Answer<Vec<Vec<StoredWindow>>> {
        query::windows_of(&self.client().await?, series, width, from, to).await
    }

    async fn watermarks(&self) -> Answer<Vec<(String, i64)>> {
        query::watermarks(&self.client().await?).await
    }

    async fn agents(&self) -> Answer<Vec<AgentState>> {
        query::agents(&self.client().await?).await
    }

    async fn progress(&self, series: &SeriesKey) -> Answer<Vec<AgentProgress>> {
        query::progress(&self.client().await?, series).await
    }

    async fn progress_of(&self, series: &[SeriesKey]) -> Answer<Vec<Vec<AgentProgress>>> {
        query::progress_of(&self.client().await?, series).await
    }

    async fn stored_widths(&self, widths: &[Width]) -> Answer<Vec<Width>> {
        query::stored_widths(&self.client().await?, widths).await
    }
}

impl Feed for PostgresStore {
    async fn changed_since(&self, width: Width, after: u64, limit: usize) -> Answer<Vec<Changed>> {
        feed::changed_since(&self.client().await?, width, after, limit).await
    }

    async fn park(&self, name: &str, width: Width, keys: &[(SeriesKey, i64)]) -> Answer<()> {
        feed::park(&self.client().await?, true, name, width, keys).await
    }

    async fn parked(
        &self,
        name: &str,
        width: Width,
        after: u64,
        limit: usize,
    ) -> Answer<Vec<Changed>> {
        feed::parked(&self.client().await?, name, width, after, limit).await
    }

    async fn unpark(&self, name: &str, width: Width, keys: &[(SeriesKey, i64)]) -> Answer<()> {
        feed::park(&self.client().await?, false, name, width, keys).await
    }

    async fn cursor(&self, name: &str) -> Answer<u64> {
        feed::cursor(&self.client().await?, name).await
    }

    async fn set_cursor(&self, name: &str, value: u64) -> Answer<()> {
        feed::set_cursor(&self.client().await?, name, value).await
    }
}

impl Leases for PostgresStore {
    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Answer<Lease> {
        leases::lease(&self.client().await?, name, holder, ttl).await
    }

    async fn release(&self, name: &str, holder: &str) -> Answer<()> {
        leases::release(&self.client().await?, name, holder).await
    }
}

impl Expire for PostgresStore {
    async fn widths(&self) -> Answer<Vec<Width>> {
        retention::widths(&self.client().await?).await
    }

    async fn prepare(&self, width: Width, now: i64) -> Answer<()> {
        retention::prepare(&mut self.client().await?, width, now).await
    }

    async fn expire(&self, width: Width, before: i64, limit: usize) -> Answer<usize> {
        let mut client = self.client().await?;
        let (dropped, bytes) = retention::drop_expired(&mut client, width, before).await?;
        self.freed.fetch_add(bytes, Ordering::Relaxed);
        let deleted = retention::delete_expired(&client, width, before, limit).await?;
        Ok(usize::try_from(dropped)
            .unwrap_or(usize::MAX)
            .saturating_add(deleted))
    }

    async fn reclaim(&self, _pages: u32) -> Answer<u64> {
        // Dropped partitions gave their files back; deleted rows' space is
        // reused by later inserts after autovacuum.
        Ok(self.freed.swap(0, Ordering::Relaxed))
    }

    async fn oldest(&self, width: Width) -> Answer<Option<i64>> {
        retention::oldest(&self.client().await?, width).await
    }
}
