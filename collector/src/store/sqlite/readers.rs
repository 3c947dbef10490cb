//! The SQLite store's reader connections: a small pool, so queries run on
//! connections of their own while the writer commits (WAL lets readers and
//! one writer work at once), and a long query holds up neither ingest nor
//! other queries beyond the pool's size.
//!
//! A read waits (asynchronously) for one of [`READERS`] permits, then runs
//! on the blocking pool with an idle connection, or a new one opened
//! `query_only`, which goes back to the pool afterwards.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::store::StoreError;

/// Reader connections open at most (queries beyond wait for one).
pub const READERS: usize = 4;

/// The pool.
#[derive(Debug)]
pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// A pool of readers of the database at `path` (opened on demand).
    pub(super) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(READERS)),
        }
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    pub(super) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.take()?;
            let answer = f(&conn);
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
            answer
        })
        .await?
    }

    /// An idle connection, or a new one.
    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let conn = Connection::open(&self.path)?;
        // A stray write through a reader fails instead of taking the lock.
        conn.pragma_update(None, "query_only", true)?;
        // 16 MiB of page cache each: the pool's readers together keep what
        // the one query connection used to (the writer keeps its 64 MiB).
        conn.pragma_update(None, "cache_size", -16_384)?;
        Ok(conn)
    }
}
