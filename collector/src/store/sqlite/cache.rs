//! What the SQLite store keeps in memory between transactions so that a
//! merge does not have to read back what it wrote: series ids, the
//! (series, agent) pairs already recorded, and the latest state of recently
//! written result rows (the roll-ups and open windows that the next batches
//! merge into again).
//!
//! The cache is only ever a copy of committed rows. The writer
//! ([`super::apply`]) takes rows out of it while a transaction runs and
//! puts the new states back only after the commit, so a rolled-back
//! transaction leaves nothing stale behind; and it is cleared whenever
//! another connection has written the database (`PRAGMA data_version`).
//! Anything not in the cache is read from the database, so eviction only
//! costs speed.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use tributary_core::{SeriesKey, Summary};

/// A result row's key: (series id, width ms, window start ms).
pub(super) type RowKey = crate::merge::RowKey;

/// A cached row: its revision, merged summary and change number as
/// committed.
#[derive(Debug, Clone)]
pub(super) struct CachedRow {
    pub(super) revision: u32,
    pub(super) summary: Summary,
    pub(super) changed: i64,
    /// The transaction that last used it (for eviction).
    used: u64,
}

/// The store's memory of committed state.
#[derive(Debug)]
pub(super) struct Cache {
    ids: HashMap<SeriesKey, i64>,
    /// Agent names, numbered for `reporters`.
    agents: HashMap<String, u32>,
    reporters: HashSet<(i64, u32)>,
    rows: HashMap<RowKey, CachedRow>,
    /// Most rows kept; past it the least recently used half goes.
    capacity: usize,
    /// Transactions committed so far (the clock of `used`).
    clock: u64,
    /// `PRAGMA data_version` after our last commit.
    data_version: Option<i64>,
}

impl Cache {
    /// An empty cache keeping at most `capacity` rows.
    pub(super) fn new(capacity: usize) -> Self {
        Cache {
            ids: HashMap::new(),
            agents: HashMap::new(),
            reporters: HashSet::new(),
            rows: HashMap::new(),
            capacity,
            clock: 0,
            data_version: None,
        }
    }

    /// Forgets everything unless the database's `data_version` is the one
    /// seen after our last commit (another connection wrote in between).
    pub(super) fn check_version(&mut self, data_version: i64) {
        if self.data_version != Some(data_version) {
            self.ids.clear();
            self.agents.clear();
            self.reporters.clear();
            self.rows.clear();
            self.data_version = Some(data_version);
        }
    }

    /// The id of `key`, if known.
    pub(super) fn id(&self, key: &SeriesKey) -> Option<i64> {
        self.ids.get(key).copied()
    }

    /// Whether `agent` is known to have reported series `id`.
    pub(super) fn reported(&self, id: i64, agent: &str) -> bool {
        self.agents
            .get(agent)
            .is_some_and(|&n| self.reporters.contains(&(id, n)))
    }

    /// Whether the committed state of `key` is cached.
    pub(super) fn holds(&self, key: &RowKey) -> bool {
        self.rows.contains_key(key)
    }

    /// Takes the committed state of `key` out of the cache (the caller puts
    /// the new state back after its commit with [`Cache::committed`]).
    pub(super) fn take(&mut self, key: &RowKey) -> Option<CachedRow> {
        self.rows.remove(key)
    }

    /// Forgets the rows at width `width` (ms) starting before `before`:
    /// retention deleted them.
    pub(super) fn forget_before(&mut self, width: i64, before: i64) {
        self.rows
            .retain(|&(_, w, start), _| w != width || start >= before);
    }

    /// Records what a transaction committed.
    pub(super) fn committed(&mut self, done: Committed) {
        self.clock += 1;
        let used = self.clock;
        self.ids.extend(done.ids);
        for (id, agent) in done.reporters {
            let next = u32::try_from(self.agents.len()).unwrap_or(u32::MAX);
            let n = *self.agents.entry(agent).or_insert(next);
            self.reporters.insert((id, n));
        }
        for (key, (revision, summary, changed)) in done.rows {
            self.rows.insert(
                key,
                CachedRow {
                    revision,
                    summary,
                    changed,
                    used,
                },
            );
        }
        if self.rows.len() > self.capacity {
            self.evict();
        }
    }

    /// Keeps the more recently used half of the rows.
    fn evict(&mut self) {
        let mut ages: Vec<u64> = self.rows.values().map(|r| r.used).collect();
        let mid = ages.len() / 2;
        let (_, &mut cut, _) = ages.select_nth_unstable(mid);
        self.rows.retain(|_, r| r.used > cut);
        // Every row used in one and the same transaction: keep none rather
        // than grow past the bound.
        if self.rows.len() > self.capacity {
            self.rows.clear();
        }
    }

    /// How many rows are cached.
    #[cfg(test)]
    pub(super) fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// What one transaction wrote, for [`Cache::committed`].
#[derive(Debug, Default)]
pub(super) struct Committed {
    pub(super) ids: Vec<(SeriesKey, i64)>,
    pub(super) reporters: std::collections::HashSet<(i64, String)>,
    pub(super) rows: Vec<(RowKey, (u32, Summary, i64))>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tributary_core::Quantum;

    fn row(n: i64) -> (RowKey, (u32, Summary, i64)) {
        (
            (n, 60_000, 0),
            (0, Summary::new(Quantum::new(0).unwrap()), n),
        )
    }

    #[test]
    fn eviction_keeps_the_recent_rows_within_the_bound() {
        let mut c = Cache::new(4);
        for n in 0..6 {
            c.committed(Committed {
                rows: vec![row(n)],
                ..Default::default()
            });
            assert!(c.rows() <= 4);
        }
        // The newest rows survive, the oldest went.
        assert!(c.take(&(5, 60_000, 0)).is_some());
        assert!(c.take(&(0, 60_000, 0)).is_none());
    }

    #[test]
    fn another_writer_clears_everything() {
        let mut c = Cache::new(10);
        c.check_version(1);
        c.committed(Committed {
            ids: vec![(SeriesKey::new("m", "d", Default::default()).unwrap(), 7)],
            reporters: [(7, "gw".to_string())].into(),
            rows: vec![row(7)],
        });
        c.check_version(1);
        assert!(c.reported(7, "gw"));
        c.check_version(2);
        assert!(!c.reported(7, "gw"));
        assert_eq!(c.rows(), 0);
        assert!(c
            .id(&SeriesKey::new("m", "d", Default::default()).unwrap())
            .is_none());
    }
}
