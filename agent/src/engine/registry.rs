//! The registry: which sources (devices) and series the agent knows, with
//! the dense ids the windower and the store share, the global tags added to
//! every key, and the limits on series and tags.
//!
//! # Design
//! A series is found by its key *with the global tags applied*
//! ([`GlobalTags::apply`], the one place they are added), so every key the
//! windower, the store and the uplink see carries them. New sources and
//! series are registered in the windower at once and recorded here until
//! the next group commit stores them ([`Registry::drain_into`]), together
//! with the source watermarks that changed since the last commit.

use std::collections::HashMap;

use tributary_core::series::KeyError;
use tributary_core::{Quantum, SeriesKey, Window};
use tributary_runtime::now_ms;

use super::config::LimitsConfig;
use super::tags::GlobalTags;
use crate::metrics::{Reject, UGauge};
use crate::store::{Commit, SeriesRow};
use crate::window::{SeriesId, SourceId, Windower};

/// Sources and series by name and key.
#[derive(Debug)]
pub(crate) struct Registry {
    tags: GlobalTags,
    max_series: usize,
    max_tags: usize,
    json_quantum: Quantum,
    /// By the key with the global tags applied.
    series_ids: HashMap<SeriesKey, SeriesId>,
    source_ids: HashMap<String, SourceId>,
    /// Each source's watermark as last stored, by id.
    stored_wm: Vec<Option<i64>>,
    new_sources: Vec<(SourceId, String)>,
    new_series: Vec<SeriesRow>,
    /// `tributary_agent_series`, kept current.
    gauge: UGauge,
}

impl Registry {
    /// The registry of stored `sources` (in id order, with their stored
    /// watermarks) and `series`, registering them in `win` in the same order
    /// so the ids agree; `gauge` shows how many series there are.
    pub(crate) fn restore(
        limits: &LimitsConfig,
        tags: GlobalTags,
        sources: Vec<(String, Option<i64>)>,
        series: Vec<SeriesRow>,
        win: &mut Windower,
        gauge: UGauge,
    ) -> Self {
        let now = now_ms();
        // A store written before event times were bounded may hold a
        // watermark (and closed windows) stamped far ahead by one bad
        // reading, which would close every later window at once. A mark
        // beyond what the bounds accept now cannot be genuine: it is brought
        // back to the clock (the current window reopens; what it held was
        // sent, and new readings form a further partial of it, merged by the
        // collector like a revision).
        let latest = win.bounds().range(now).1;
        let closed_limit =
            Window::checked_containing(latest, win.width()).map_or(latest, |w| w.end());
        let reopen_from = Window::checked_containing(now, win.width()).map_or(now, |w| w.start());
        let mut source_ids = HashMap::new();
        let mut stored_wm = Vec::new();
        for (name, wm) in sources {
            let id = win.add_source(now);
            if let Some(wm) = wm {
                let wm =
                    if wm > latest {
                        tracing::warn!(source = name, watermark = wm, latest,
                        "stored watermark beyond limits.max_future_ms brought back to the clock");
                        now
                    } else {
                        wm
                    };
                win.restore_watermark(id, wm);
            }
            source_ids.insert(name, id);
            stored_wm.push(wm);
        }
        let mut series_ids = HashMap::new();
        for s in series {
            let closed_before = if s.closed_before > closed_limit {
                tracing::warn!(series = %s.key, closed_before = s.closed_before, closed_limit,
                    "stored closed windows beyond limits.max_future_ms reopened");
                reopen_from
            } else {
                s.closed_before
            };
            let id = win.add_series(s.key.clone(), s.quantum, s.source, closed_before);
            series_ids.insert(s.key, id);
        }
        Registry {
            tags,
            max_series: limits.max_series,
            max_tags: limits.max_tags,
            json_quantum: limits.json_quantum(),
            series_ids,
            source_ids,
            stored_wm,
            new_sources: Vec::new(),
            new_series: Vec::new(),
            gauge,
        }
        .counted()
    }

    fn counted(self) -> Self {
        self.gauge.set(self.series_ids.len() as u64);
        self
    }

    /// Series tracked.
    pub(crate) fn len(&self) -> usize {
        self.series_ids.len()
    }

    /// The quantum of new series of JSON readings (`limits.default_quantum`).
    pub(crate) fn json_quantum(&self) -> Quantum {
        self.json_quantum
    }

    /// The id of a known series, by the key its source gives (without the
    /// global tags).
    pub(crate) fn find(&self, key: &SeriesKey) -> Option<SeriesId> {
        let key = self.tags.apply(key).ok()?;
        self.series_ids.get(key.as_ref()).copied()
    }

    /// Finds or registers the series of a source's `key`, with the global
    /// tags added, enforcing the limits.
    pub(crate) fn series(
        &mut self,
        win: &mut Windower,
        key: &SeriesKey,
        quantum: Quantum,
    ) -> Result<SeriesId, Reject> {
        let key = self.tags.apply(key).map_err(|e| match e {
            KeyError::TooManyTags(_) => Reject::TooManyTags,
            _ => Reject::BadKey,
        })?;
        let key = key.as_ref();
        if let Some(&id) = self.series_ids.get(key) {
            return Ok(id);
        }
        if key.tags().len() > self.max_tags {
            return Err(Reject::TooManyTags);
        }
        if self.series_ids.len() >= self.max_series {
            return Err(Reject::SeriesLimit);
        }
        let source = self.source(win, key.device());
        let id = win.add_series(key.clone(), quantum, source, i64::MIN);
        self.series_ids.insert(key.clone(), id);
        self.gauge.set(self.series_ids.len() as u64);
        self.new_series.push(SeriesRow {
            id,
            key: key.clone(),
            quantum,
            source,
            closed_before: i64::MIN,
        });
        Ok(id)
    }

    fn source(&mut self, win: &mut Windower, name: &str) -> SourceId {
        if let Some(&id) = self.source_ids.get(name) {
            return id;
        }
        let id = win.add_source(now_ms());
        self.source_ids.insert(name.to_string(), id);
        self.stored_wm.push(None);
        self.new_sources.push((id, name.to_string()));
        id
    }

    /// Moves what the next commit must store into `c`: new sources and
    /// series, and the source watermarks `win` moved since the last commit.
    pub(crate) fn drain_into(&mut self, win: &Windower, c: &mut Commit) {
        c.new_sources.append(&mut self.new_sources);
        c.new_series.append(&mut self.new_series);
        for (id, stored) in (0..).zip(self.stored_wm.iter_mut()) {
            let wm = win.source_watermark(id);
            if wm != *stored {
                if let Some(w) = wm {
                    c.watermarks.push((id, w));
                }
                *stored = wm;
            }
        }
    }

    /// Every series key (with the global tags), for tests.
    #[cfg(test)]
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&SeriesKey, SeriesId)> {
        self.series_ids.iter().map(|(k, &id)| (k, id))
    }
}
