//! The embedded SQLite store (WAL), the collector's default backend.
//!
//! # Design
//! One writer connection, with the cache of committed state that spares a
//! merge from reading back what it wrote ([`cache`]), sits behind a mutex
//! that is only ever taken on the blocking pool (or, for ingest's groups on
//! a multi-threaded runtime, in `block_in_place`): ingest's groups, parking,
//! cursors and leases queue there, one transaction at a time, as SQLite
//! serialises writers anyway. Queries never touch it: they run on a small
//! pool of `query_only` reader connections ([`readers`]), which WAL lets
//! read the last committed state while the writer commits — so no query
//! waits for, or holds up, an ingest commit. WAL checkpoints run on a thread
//! of their own ([`tributary_runtime::checkpoint`]), so no commit stalls on
//! one.
//!
//! Several handles (processes) may open one file: each keeps its own cache,
//! cleared whenever another connection has written (`PRAGMA data_version`).
//!
//! Files: [`schema`] (tables, migrations), [`apply`] (the writer and its
//! transaction), `senders` (its de-duplication marks), [`query`],
//! [`feed`] (change feed, parked rows, cursors) over [`feed_log`] (which
//! rows each transaction wrote), [`leases`], [`retention`]
//! (expiry in bounded batches, incremental vacuum).

mod apply;
mod cache;
mod feed;
mod feed_log;
mod leases;
mod query;
mod readers;
mod retention;
mod rows;
mod schema;
mod senders;

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;
use tributary_core::batch::Batch;
use tributary_core::{SeriesKey, Width};

pub use readers::READERS;
pub use schema::SCHEMA_VERSION;

use super::{
    rollup_widths, AgentProgress, AgentState, Answer, Changed, Expire, Feed, Ingest, Lease, Leases,
    Query, Refusals, Report, StoreError, StoredWindow,
};
use apply::Writer;
use readers::Readers;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// The SQLite store: a cheap-to-clone handle (clones share the writer and
/// the readers).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Writer>>,
    readers: Arc<Readers>,
}

impl SqliteStore {
    /// Opens (or creates and migrates) the database at `path`, keeping
    /// roll-ups at `rollups` (ms, e.g. 1 h and 1 d). Blocks briefly (file
    /// I/O); call it before serving, or from the blocking pool.
    pub fn open(path: &Path, rollups: &[i64]) -> Result<Self, StoreError> {
        let writer = Writer::open(path, rollup_widths(rollups)?)?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(Readers::new(path.to_owned())),
        })
    }

    /// Runs `f` on a reader connection of the pool (read-only, the last
    /// committed state), on the blocking pool: for reads the roles do not
    /// offer, such as exports and checks.
    pub fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Answer<T>> + Send + 'static {
        let readers = self.readers.clone();
        async move { readers.run(f).await }
    }

    /// Runs `f` with the writer, on the blocking pool.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<T, StoreError> + Send + 'static,
    ) -> impl Future<Output = Answer<T>> + Send + 'static {
        let writer = self.writer.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                // A panic mid-transaction rolled it back and left the cache
                // a copy of committed rows (it is updated after commits), so
                // the writer is still sound.
                let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
                f(&mut w)
            })
            .await?
        }
    }
}

impl Ingest for SqliteStore {
    fn apply_refused(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> impl Future<Output = Answer<Report>> + Send {
        let writer = self.writer.clone();
        async move {
            // On a multi-threaded runtime the group is applied in place
            // (`block_in_place` hands this worker's other tasks to the
            // others): copying a group of ~50,000 partials to own it for
            // the blocking pool cost a tenth of the apply at fan-in 1.
            // Elsewhere (a current-thread runtime, as in tests) it is
            // copied and applied on the blocking pool.
            let multi = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
            if multi {
                return tokio::task::block_in_place(|| {
                    // As in `write`: a panic left the writer sound.
                    let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
                    w.apply(batches, refused)
                });
            }
            let (batches, refused) = (batches.to_vec(), refused.to_vec());
            self.write(move |w| w.apply(&batches, &refused)).await
        }
    }

    fn record_refused(
        &self,
        batches: &[Batch],
        refused: &[Refusals],
    ) -> impl Future<Output = Answer<Report>> + Send {
        let (batches, refused) = (batches.to_vec(), refused.to_vec());
        self.write(move |w| w.record(&batches, &refused))
    }

    fn probe(&self) -> impl Future<Output = Answer<()>> + Send {
        self.write(|w| w.probe())
    }
}

impl Query for SqliteStore {
    fn series(&self) -> impl Future<Output = Answer<Vec<SeriesKey>>> + Send {
        self.read(query::series)
    }

    fn windows(
        &self,
        series: &SeriesKey,
        width: Width,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Answer<Vec<StoredWindow>>> + Send {
        let series = series.clone();
        self.read(move |c| query::windows(c, &series, width, from, to))
    }

    fn windows_of(
        &self,
        series: &[SeriesKey],
        width: Width,
        from: i64,
        to: i64,
    ) -> impl Future<Output = Answer<Vec<Vec<StoredWindow>>>> + Send {
        let series = series.to_vec();
        self.read(move |c| query::windows_of(c, &series, width, from, to))
    }

    fn watermarks(&self) -> impl Future<Output = Answer<Vec<(String, i64)>>> + Send {
        self.read(query::watermarks)
    }

    fn agents(&self) -> impl Future<Output = Answer<Vec<AgentState>>> + Send {
        self.read(query::agents)
    }

    fn progress(
        &self,
        series: &SeriesKey,
    ) -> impl Future<Output = Answer<Vec<AgentProgress>>> + Send {
        let series = series.clone();
        self.read(move |c| query::progress(c, &series))
    }

    fn progress_of(
        &self,
        series: &[SeriesKey],
    ) -> impl Future<Output = Answer<Vec<Vec<AgentProgress>>>> + Send {
        let series = series.to_vec();
        self.read(move |c| query::progress_of(c, &series))
    }

    fn stored_widths(&self, widths: &[Width]) -> impl Future<Output = Answer<Vec<Width>>> + Send {
        let widths = widths.to_vec();
        self.read(move |c| query::stored_widths(c, &widths))
    }
}

impl Feed for SqliteStore {
    fn changed_since(
        &self,
        width: Width,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Answer<Vec<Changed>>> + Send {
        self.read(move |c| feed::changed_since(c, width, after, limit))
    }

    fn park(
        &self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> impl Future<Output = Answer<()>> + Send {
        let (name, keys) = (name.to_string(), keys.to_vec());
        self.write(move |w| feed::park(&mut w.conn, true, &name, width, &keys))
    }

    fn parked(
        &self,
        name: &str,
        width: Width,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Answer<Vec<Changed>>> + Send {
        let name = name.to_string();
        self.read(move |c| feed::parked(c, &name, width, after, limit))
    }

    fn unpark(
        &self,
        name: &str,
        width: Width,
        keys: &[(SeriesKey, i64)],
    ) -> impl Future<Output = Answer<()>> + Send {
        let (name, keys) = (name.to_string(), keys.to_vec());
        self.write(move |w| feed::park(&mut w.conn, false, &name, width, &keys))
    }

    fn cursor(&self, name: &str) -> impl Future<Output = Answer<u64>> + Send {
        let name = name.to_string();
        self.read(move |c| feed::cursor(c, &name))
    }

    fn set_cursor(&self, name: &str, value: u64) -> impl Future<Output = Answer<()>> + Send {
        let name = name.to_string();
        self.write(move |w| feed::set_cursor(&w.conn, &name, value))
    }
}

impl Leases for SqliteStore {
    fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Answer<Lease>> + Send {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |w| leases::lease(&mut w.conn, &name, &holder, ttl))
    }

    fn release(&self, name: &str, holder: &str) -> impl Future<Output = Answer<()>> + Send {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(move |w| leases::release(&w.conn, &name, &holder))
    }
}

impl Expire for SqliteStore {
    fn widths(&self) -> impl Future<Output = Answer<Vec<Width>>> + Send {
        self.read(retention::widths)
    }

    fn prepare(&self, _width: Width, _now: i64) -> impl Future<Output = Answer<()>> + Send {
        // One table; expired rows are a range of its primary key.
        std::future::ready(Ok(()))
    }

    fn expire(
        &self,
        width: Width,
        before: i64,
        limit: usize,
    ) -> impl Future<Output = Answer<usize>> + Send {
        self.write(move |w| retention::expire(w, width, before, limit))
    }

    fn reclaim(&self, pages: u32) -> impl Future<Output = Answer<u64>> + Send {
        self.write(move |w| retention::reclaim(w, pages))
    }

    fn oldest(&self, width: Width) -> impl Future<Output = Answer<Option<i64>>> + Send {
        self.read(move |c| retention::oldest(c, width))
    }
}
