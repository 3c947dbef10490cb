//! Event-time tumbling windows per series, watermarks per source, allowed
//! lateness and revision partials (DESIGN §3). A plain synchronous state
//! machine: no I/O, no clock of its own (the caller passes wall-clock time).
//!
//! # Design
//! - Every series belongs to one *source* (its device). A source's watermark
//!   is the largest event time it has delivered. A window of a series closes
//!   when its source's watermark passes `end + allowed_lateness`, or when the
//!   source has been idle (no input, wall clock) for `idle_close_ms`.
//! - Per series, every window starting before `closed_before` is closed.
//!   Data for a closed window is never dropped: it accumulates into a *late*
//!   summary holding only the late readings, emitted at the next flush as a
//!   revision partial for the same window (the collector merges it).
//! - [`Windower::flush`] hands out, in one value, everything the store must
//!   commit atomically: closed partials, checkpoints of changed open windows,
//!   deleted checkpoints and new `closed_before` marks. After a crash the
//!   state is rebuilt from the last commit with the `restore_*` methods.
//!
//! - Every event time is checked against the [`TimeBounds`] first (see
//!   [`bounds`]): a refused reading or summary touches no window, no
//!   watermark and no source activity, so a device clock years ahead cannot
//!   close every later window at once. Window arithmetic is checked.
//!
//! The hot path ([`Windower::insert_many`]) folds a run of readings of one
//! series with one lookup, usually hitting the newest open window.

pub mod bounds;
pub mod config;
mod series;

use tributary_core::{Quantum, SeriesKey, Summary, SummaryError, Width, Window};

pub use bounds::{TimeBounds, TimeRefused};
pub use config::WindowConfig;
use series::Open;
pub use series::SeriesState;

/// Why the windower refused a reading or a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Its event time is outside the [`TimeBounds`].
    #[error(transparent)]
    Time(#[from] TimeRefused),
    /// It cannot be folded in (a value out of range, an overflow, no window
    /// holding its time).
    #[error(transparent)]
    Summary(#[from] SummaryError),
}

/// What [`Windower::insert_many`] did with a run of readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Readings folded in.
    pub accepted: usize,
    /// Refused: later than the clock plus `max_future_ms`.
    pub future: usize,
    /// Refused: older than the clock minus `max_age_ms`.
    pub past: usize,
    /// Refused: could not be folded in.
    pub invalid: usize,
    /// The first of the `invalid` readings' errors.
    pub first_invalid: Option<SummaryError>,
}

/// Index of a series in the windower.
pub type SeriesId = u32;
/// Index of a source (device) in the windower.
pub type SourceId = u32;

#[derive(Debug, Clone)]
struct SourceState {
    max_event: Option<i64>,
    last_active_ms: i64,
}

/// A closed window (or a revision of one) ready for the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// The series.
    pub series: SeriesId,
    /// The window.
    pub window: Window,
    /// Its summary (only the late readings, for a revision).
    pub summary: Summary,
    /// Whether this is a revision of an already emitted window.
    pub revision: bool,
}

/// Everything a flush changed, to be committed in one transaction.
#[derive(Debug, Default)]
pub struct Flush {
    /// Closed partials and revisions.
    pub emitted: Vec<Emitted>,
    /// Open windows whose summary changed: (series, start, summary).
    pub checkpoints: Vec<(SeriesId, i64, Summary)>,
    /// Checkpoints to delete (their window closed): (series, start).
    pub deleted: Vec<(SeriesId, i64)>,
    /// New `closed_before` marks: (series, time).
    pub closed_before: Vec<(SeriesId, i64)>,
}

/// The windowing state of all series.
#[derive(Debug)]
pub struct Windower {
    width: Width,
    lateness_ms: i64,
    idle_close_ms: i64,
    series: Vec<SeriesState>,
    sources: Vec<SourceState>,
    dirty: Vec<SeriesId>,
    /// An input since the last flush made a window of its series due.
    due: bool,
    /// The accepted event times.
    bounds: TimeBounds,
}

impl Windower {
    /// An empty windower accepting every event time a window can hold
    /// (see [`Windower::with_bounds`]).
    pub fn new(width: Width, lateness_ms: i64, idle_close_ms: i64) -> Self {
        Windower {
            width,
            lateness_ms,
            idle_close_ms,
            series: Vec::new(),
            due: false,
            sources: Vec::new(),
            dirty: Vec::new(),
            bounds: TimeBounds::NONE,
        }
    }

    /// This windower accepting only event times within `bounds` of the
    /// wall clock passed with each input.
    pub fn with_bounds(mut self, bounds: TimeBounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The accepted event times.
    pub fn bounds(&self) -> TimeBounds {
        self.bounds
    }

    /// An empty windower as `[window]` sets it.
    pub fn from_config(cfg: &WindowConfig) -> Self {
        Windower::new(cfg.width(), cfg.allowed_lateness_ms, cfg.idle_close_ms)
    }

    /// The window width.
    pub fn width(&self) -> Width {
        self.width
    }

    /// Registers a source; `now_ms` counts as its last activity.
    pub fn add_source(&mut self, now_ms: i64) -> SourceId {
        self.sources.push(SourceState {
            max_event: None,
            last_active_ms: now_ms,
        });
        (self.sources.len() - 1) as SourceId
    }

    /// Registers a series of `source`; nothing before `closed_before` is open.
    pub fn add_series(
        &mut self,
        key: SeriesKey,
        quantum: Quantum,
        source: SourceId,
        closed_before: i64,
    ) -> SeriesId {
        self.series.push(SeriesState {
            key,
            quantum,
            source,
            open: Vec::new(),
            closed_before,
            closed_before_dirty: false,
            late: Vec::new(),
            deleted: Vec::new(),
            dirty: false,
        });
        (self.series.len() - 1) as SeriesId
    }

    /// The state of series `id`.
    pub fn series(&self, id: SeriesId) -> Option<&SeriesState> {
        self.series.get(id as usize)
    }

    /// The number of series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Restores a checkpointed open window (after a restart).
    pub fn restore_window(&mut self, id: SeriesId, start: i64, summary: Summary) {
        if let Some(s) = self.series.get_mut(id as usize) {
            let pos = s.open.partition_point(|o| o.start < start);
            s.open.insert(
                pos,
                Open {
                    start,
                    summary,
                    dirty: false,
                },
            );
        }
    }

    /// Restores a source's watermark (after a restart).
    pub fn restore_watermark(&mut self, source: SourceId, max_event: i64) {
        if let Some(s) = self.sources.get_mut(source as usize) {
            s.max_event = Some(s.max_event.map_or(max_event, |m| m.max(max_event)));
        }
    }

    /// A source's watermark (the largest event time it delivered).
    pub fn source_watermark(&self, source: SourceId) -> Option<i64> {
        self.sources.get(source as usize).and_then(|s| s.max_event)
    }

    /// The agent's watermark: the smallest source watermark minus the lateness.
    pub fn watermark(&self) -> i64 {
        self.sources
            .iter()
            .filter_map(|s| s.max_event)
            .min()
            .map_or(0, |m| m.saturating_sub(self.lateness_ms))
    }

    fn touch(&mut self, id: SeriesId) {
        let s = &mut self.series[id as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Folds in one reading (`ticks` of the series' quantum) at event time
    /// `time`; `now_ms` is the wall clock the time bounds are relative to.
    pub fn insert(
        &mut self,
        id: SeriesId,
        time: i64,
        ticks: i64,
        now_ms: i64,
    ) -> Result<(), Refused> {
        self.bounds.check(time, now_ms)?;
        let done = self.insert_many(id, &[(time, ticks)], now_ms);
        match done.first_invalid {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Folds in readings `(time, ticks)` of one series; readings refused
    /// (out of the time bounds, or invalid) are skipped and counted.
    pub fn insert_many(&mut self, id: SeriesId, points: &[(i64, i64)], now_ms: i64) -> Inserted {
        let w = self.width.ms();
        let (earliest, latest) = self.bounds.range(now_ms);
        let Some(s) = self.series.get_mut(id as usize) else {
            return Inserted::default();
        };
        let mut done = Inserted::default();
        let mut max_t = i64::MIN;
        for &(t, v) in points {
            if t > latest {
                done.future += 1;
                continue;
            }
            if t < earliest {
                done.past += 1;
                continue;
            }
            let res = match aligned(t, w) {
                Err(e) => Err(e),
                Ok(start) if start < s.closed_before => {
                    match s.late.iter_mut().find(|(st, _)| *st == start) {
                        Some((_, sum)) => sum.insert(t, v),
                        None => {
                            let mut sum = Summary::new(s.quantum);
                            let r = sum.insert(t, v);
                            if r.is_ok() {
                                s.late.push((start, sum));
                            }
                            r
                        }
                    }
                }
                Ok(start) => {
                    let open = s.open_at(start);
                    open.dirty = true;
                    open.summary.insert(t, v)
                }
            };
            match res {
                Ok(()) => {
                    done.accepted += 1;
                    max_t = max_t.max(t);
                }
                Err(e) => {
                    done.invalid += 1;
                    done.first_invalid.get_or_insert(e);
                }
            }
        }
        if done.accepted > 0 {
            let source = s.source;
            self.touch(id);
            self.note_source(source, Some(max_t), now_ms);
            self.note_due(id);
        }
        done
    }

    /// Notes whether series `id`'s oldest open window is now due (its
    /// source's watermark passed the window's end plus the lateness).
    fn note_due(&mut self, id: SeriesId) {
        let w = self.width.ms();
        let Some(s) = self.series.get(id as usize) else {
            return;
        };
        let watermark = self
            .sources
            .get(s.source as usize)
            .and_then(|src| src.max_event)
            .map_or(i64::MIN, |m| m.saturating_sub(self.lateness_ms));
        // Every open window's end fits (`aligned`), so `start + w` is exact.
        if s.open.first().is_some_and(|o| o.start + w <= watermark) {
            self.due = true;
        }
    }

    /// Whether an input since the last [`Windower::flush`] made a window
    /// due, so a flush now would close it (windows that fall due only by
    /// the clock — idle sources — are not counted).
    pub fn has_due(&self) -> bool {
        self.due
    }

    fn note_source(&mut self, source: SourceId, max_event: Option<i64>, now_ms: i64) {
        if let Some(src) = self.sources.get_mut(source as usize) {
            src.last_active_ms = src.last_active_ms.max(now_ms);
            if let Some(t) = max_event {
                src.max_event = Some(src.max_event.map_or(t, |m| m.max(t)));
            }
        }
    }

    /// Merges a summary of readings in `window` (a device window, whose width
    /// divides the agent's) into the series. The window's start and the
    /// summary's last reading (clamped to the window; its end for an empty
    /// summary) must lie within the time bounds.
    pub fn merge(
        &mut self,
        id: SeriesId,
        window: Window,
        summary: &Summary,
        now_ms: i64,
    ) -> Result<(), Refused> {
        let w = self.width.ms();
        // Every window's end fits an i64, so `end() - 1` is exact.
        let last_in_window = window.end() - 1;
        let last = summary.extent().map_or(last_in_window, |e| {
            e.last.time.clamp(window.start(), last_in_window)
        });
        self.bounds.check(window.start(), now_ms)?;
        self.bounds.check(last, now_ms)?;
        let Some(s) = self.series.get_mut(id as usize) else {
            return Ok(());
        };
        if summary.is_empty() {
            let source = s.source;
            self.note_source(source, Some(last), now_ms);
            return Ok(());
        }
        let start = aligned(window.start(), w)?;
        if start < s.closed_before {
            match s.late.iter_mut().find(|(st, _)| *st == start) {
                Some((_, sum)) => sum.merge(summary)?,
                None => {
                    let mut sum = Summary::new(s.quantum);
                    sum.merge(summary)?;
                    s.late.push((start, sum));
                }
            }
        } else {
            let open = s.open_at(start);
            open.summary.merge(summary)?;
            open.dirty = true;
        }
        let source = s.source;
        self.touch(id);
        self.note_source(source, Some(last), now_ms);
        self.note_due(id);
        Ok(())
    }

    /// Closes the windows that are due and collects every change since the
    /// last flush. `now_ms` is the wall clock (for idle sources).
    pub fn flush(&mut self, now_ms: i64) -> Flush {
        self.due = false;
        let mut out = Flush::default();
        let w = self.width.ms();
        // Due windows can appear in series that saw no input (their source
        // advanced or went idle), so every series with open windows is checked.
        for (idx, s) in self.series.iter_mut().enumerate() {
            let id = idx as SeriesId;
            if !s.open.is_empty() {
                let src = &self.sources[s.source as usize];
                let idle = now_ms.saturating_sub(src.last_active_ms) >= self.idle_close_ms;
                let threshold = src
                    .max_event
                    .map_or(i64::MIN, |m| m.saturating_sub(self.lateness_ms));
                let n_due = if idle {
                    s.open.len()
                } else {
                    s.open.partition_point(|o| o.start + w <= threshold)
                };
                for o in s.open.drain(..n_due) {
                    s.closed_before = s.closed_before.max(o.start + w);
                    s.closed_before_dirty = true;
                    s.deleted.push(o.start);
                    if let Ok(window) = Window::new(o.start, self.width) {
                        out.emitted.push(Emitted {
                            series: id,
                            window,
                            summary: o.summary,
                            revision: false,
                        });
                    }
                }
            }
            for (start, summary) in s.late.drain(..) {
                if let Ok(window) = Window::new(start, self.width) {
                    out.emitted.push(Emitted {
                        series: id,
                        window,
                        summary,
                        revision: true,
                    });
                }
            }
            for start in s.deleted.drain(..) {
                out.deleted.push((id, start));
            }
            if s.closed_before_dirty {
                s.closed_before_dirty = false;
                out.closed_before.push((id, s.closed_before));
            }
        }
        for id in self.dirty.drain(..) {
            let s = &mut self.series[id as usize];
            s.dirty = false;
            for o in s.open.iter_mut().filter(|o| o.dirty) {
                o.dirty = false;
                out.checkpoints.push((id, o.start, o.summary.clone()));
            }
        }
        out
    }

    /// Readings held in open windows (not yet emitted).
    pub fn open_readings(&self) -> u64 {
        self.series
            .iter()
            .flat_map(|s| s.open.iter())
            .map(|o| o.summary.count())
            .sum()
    }
}

/// The start of the agent window (width `w` ms) holding event time `t`;
/// refused when that window's end is past the range of event time, so every
/// window's end can be computed without overflow.
fn aligned(t: i64, w: i64) -> Result<i64, SummaryError> {
    t.div_euclid(w)
        .checked_mul(w)
        .filter(|start| start.checked_add(w).is_some())
        .ok_or(SummaryError::Overflow("event time"))
}

#[cfg(test)]
mod tests;
