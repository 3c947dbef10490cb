//! One series' windowing state: its open windows (newest last), the mark
//! below which every window is closed, and the late readings waiting to be
//! sent as revisions.

use tributary_core::{Quantum, SeriesKey, Summary};

use super::SourceId;

/// An open window of a series.
#[derive(Debug, Clone)]
pub(super) struct Open {
    pub(super) start: i64,
    pub(super) summary: Summary,
    pub(super) dirty: bool,
}

/// One series' windowing state.
#[derive(Debug, Clone)]
pub struct SeriesState {
    pub(super) key: SeriesKey,
    pub(super) quantum: Quantum,
    pub(super) source: SourceId,
    pub(super) open: Vec<Open>,
    pub(super) closed_before: i64,
    pub(super) closed_before_dirty: bool,
    pub(super) late: Vec<(i64, Summary)>,
    pub(super) deleted: Vec<i64>,
    pub(super) dirty: bool,
}

impl SeriesState {
    /// The series key.
    pub fn key(&self) -> &SeriesKey {
        &self.key
    }
    /// The series' quantum.
    pub fn quantum(&self) -> Quantum {
        self.quantum
    }

    /// The open window starting at `start`, opened (empty) if need be. The
    /// newest is the usual one (the hot path: one reading after another),
    /// so it is tried first, inline.
    #[inline]
    pub(super) fn open_at(&mut self, start: i64) -> &mut Open {
        match self.open.len().checked_sub(1) {
            Some(last) if self.open[last].start == start => &mut self.open[last],
            _ => self.open_older(start),
        }
    }

    /// [`SeriesState::open_at`] for a window other than the newest.
    #[inline(never)]
    fn open_older(&mut self, start: i64) -> &mut Open {
        let pos = self.open.partition_point(|o| o.start < start);
        if self.open.get(pos).is_none_or(|o| o.start != start) {
            self.open.insert(
                pos,
                Open {
                    start,
                    summary: Summary::new(self.quantum),
                    dirty: false,
                },
            );
        }
        &mut self.open[pos]
    }
}
