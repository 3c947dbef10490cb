//! WAL checkpoints off the commit path: a background thread with its own
//! connection copies the write-ahead log into the database file.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past
//! 1,000 pages: that commit copies the log into the database and syncs it,
//! which took 200–300 ms on the bench machine — a stall for everything
//! waiting on the commit (device Acks, the close of the next window, the
//! collector's MQTT acknowledgements). [`Checkpointer`] runs a `PASSIVE`
//! checkpoint (one that never waits for, nor blocks, writers and readers)
//! from its own thread every interval instead, and raises the writer's
//! automatic checkpoint to a backstop of [`BACKSTOP_PAGES`], which is only
//! reached if the thread falls behind. Both the agent's and the collector's
//! SQLite stores use it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How often the stores of both daemons checkpoint: often enough that
/// each checkpoint copies little, rarely enough that idle ones cost nothing.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// The writer's automatic checkpoint threshold while a [`Checkpointer`]
/// runs (pages; 64 MiB of 4 KiB pages).
pub const BACKSTOP_PAGES: u32 = 16_384;

/// Why a [`Checkpointer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Its connection could not be opened, or the writer's backstop set.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Its thread could not be started.
    #[error("cannot start the checkpoint thread: {0}")]
    Spawn(std::io::Error),
}

/// What the checkpoint thread has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints run.
    pub runs: u64,
    /// Frames of the WAL that are in the database file, as the last
    /// successful checkpoint reported (SQLite counts them for the whole
    /// current WAL, not per checkpoint, so this is a level, not a sum).
    pub checkpointed: u64,
    /// Checkpoints that failed (each logged).
    pub failures: u64,
}

#[derive(Default)]
struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    runs: AtomicU64,
    checkpointed: AtomicU64,
    failures: AtomicU64,
}

/// A running background checkpointer; dropping it stops the thread.
pub struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Checkpointer {
    /// Starts checkpointing the WAL database at `path` every `every`, and
    /// sets `writer` (the connection that commits) to checkpoint only at
    /// the backstop.
    pub fn start(
        writer: &Connection,
        path: &Path,
        every: Duration,
    ) -> Result<Checkpointer, CheckpointError> {
        let conn = Connection::open(path)?;
        // Never wait long for a lock: the next interval tries again, and a
        // stop is not held up.
        conn.busy_timeout(Duration::from_millis(100))?;
        writer.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)?;
        let shared = Arc::new(Shared::default());
        let mine = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || run(&conn, &mine, every))
            .map_err(CheckpointError::Spawn)?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Runs a checkpoint now rather than at the next interval.
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// What the thread has done so far.
    pub fn stats(&self) -> CheckpointStats {
        CheckpointStats {
            runs: self.shared.runs.load(Relaxed),
            checkpointed: self.shared.checkpointed.load(Relaxed),
            failures: self.shared.failures.load(Relaxed),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared, every: Duration) {
    let mut stopped = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
    // Failures are logged when they start and when they end, not every
    // interval (a full disk would otherwise log four lines a second).
    let mut failing = false;
    loop {
        stopped = shared
            .wake
            .wait_timeout(stopped, every)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if *stopped {
            return;
        }
        drop(stopped);
        let started = Instant::now();
        // (busy, frames in the WAL, frames checkpointed).
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((log, copied)) => {
                shared.runs.fetch_add(1, Relaxed);
                shared
                    .checkpointed
                    .store(u64::try_from(copied).unwrap_or(0), Relaxed);
                tracing::trace!(log, copied, took = ?started.elapsed(), "WAL checkpoint");
                if std::mem::take(&mut failing) {
                    tracing::info!("WAL checkpoints succeed again");
                }
            }
            Err(e) => {
                shared.failures.fetch_add(1, Relaxed);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; retrying every interval (the writer checkpoints itself at the backstop)");
                }
            }
        }
        stopped = shared.stop.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_db(dir: &Path) -> Connection {
        let c = Connection::open(dir.join("t.db")).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        c
    }

    /// Wakes the checkpointer until `done` holds of its stats (30 s at most).
    fn wake_until(cp: &Checkpointer, done: impl Fn(CheckpointStats) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(cp.stats()) {
            assert!(Instant::now() < deadline, "not reached: {:?}", cp.stats());
            cp.wake();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn wal_pages(c: &Connection) -> i64 {
        c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn copies_the_wal_into_the_database_from_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let c = wal_db(dir.path());
        // An hour: only `wake` runs a checkpoint in this test.
        let cp =
            Checkpointer::start(&c, &dir.path().join("t.db"), Duration::from_secs(3600)).unwrap();
        assert_eq!(wal_pages(&c), i64::from(BACKSTOP_PAGES));
        for _ in 0..1_500 {
            c.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                .unwrap();
        }
        // 1,500 one-page commits and no checkpoint at 1,000: every frame is
        // still in the WAL, none in the database file yet.
        let db_bytes = || std::fs::metadata(dir.path().join("t.db")).unwrap().len();
        let page = 4096;
        assert!(db_bytes() < 100 * page, "{} bytes", db_bytes());
        assert_eq!(cp.stats().runs, 0);
        wake_until(&cp, |s| s.checkpointed >= 1_500);
        assert_eq!(cp.stats().failures, 0);
        // The thread copied them into the database file.
        assert!(db_bytes() >= 1_500 * page, "{} bytes", db_bytes());
        // The writer goes on, and what it wrote is all there.
        c.execute("INSERT INTO t VALUES (zeroblob(10))", [])
            .unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1_501);
    }

    #[test]
    fn a_failing_checkpoint_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let c = wal_db(dir.path());
        let cp =
            Checkpointer::start(&c, &dir.path().join("t.db"), Duration::from_secs(3600)).unwrap();
        // An exclusive lock on the database makes the checkpoint fail with
        // SQLITE_BUSY (PASSIVE never waits).
        c.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);",
        )
        .unwrap();
        wake_until(&cp, |s| s.failures > 0);
        // The thread goes on: once the lock is gone, checkpoints succeed.
        c.execute_batch("COMMIT; PRAGMA locking_mode = NORMAL; SELECT count(*) FROM t;")
            .unwrap();
        wake_until(&cp, |s| s.runs > 0);
    }
}
