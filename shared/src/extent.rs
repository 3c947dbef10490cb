//! The order statistics every summary keeps exactly: min, max, first, last.
//!
//! `first` and `last` are the readings with the smallest and largest
//! (event time, value) pair. Ordering by the value as a tie-breaker makes the
//! choice independent of arrival and merge order, so merges commute.

use serde::{Deserialize, Serialize};

/// A reading: an event time and a value in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Point<T, V> {
    /// Event time (ms since the epoch in the full form, ms since the window
    /// start in the fixed form).
    pub time: T,
    /// The value in ticks of the series' quantum.
    pub value: V,
}

/// Min, max, first and last of a non-empty set of readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extent<T, V> {
    /// The smallest value.
    pub min: V,
    /// The largest value.
    pub max: V,
    /// The reading with the smallest (time, value).
    pub first: Point<T, V>,
    /// The reading with the largest (time, value).
    pub last: Point<T, V>,
}

impl<T: Ord + Copy, V: Ord + Copy> Extent<T, V> {
    /// Adds one reading in place: the same result as
    /// `*self = self.merge(&Extent::of(time, value))`. min ≤ max and first ≤
    /// last hold for every extent (built by `of` and `merge`, or validated on
    /// decode), so a value below min cannot be above max, nor a point before
    /// first after last.
    #[inline(always)]
    pub fn add(&mut self, time: T, value: V) {
        if value < self.min {
            self.min = value;
        } else if value > self.max {
            self.max = value;
        }
        // Readings usually arrive in time order: test `last` first.
        let p = Point { time, value };
        if p > self.last {
            self.last = p;
        } else if p < self.first {
            self.first = p;
        }
    }

    /// The extent of one reading.
    pub fn of(time: T, value: V) -> Self {
        let p = Point { time, value };
        Extent {
            min: value,
            max: value,
            first: p,
            last: p,
        }
    }

    /// The extent of the union of two sets.
    pub fn merge(&self, other: &Self) -> Self {
        Extent {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            first: self.first.min(other.first),
            last: self.last.max(other.last),
        }
    }

    /// Merges two optional extents (`None` is the empty set).
    pub fn merge_opt(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.merge(&b)),
            (x, None) | (None, x) => x,
        }
    }

    /// Checks min ≤ first, last ≤ max and first ≤ last.
    pub fn validate(&self) -> Result<(), &'static str> {
        let in_range = |v: V| self.min <= v && v <= self.max;
        if !(in_range(self.first.value) && in_range(self.last.value)) {
            return Err("extent: first/last value outside [min, max]");
        }
        if self.first > self.last {
            return Err("extent: first reading after last");
        }
        Ok(())
    }
}
