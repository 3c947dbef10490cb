//! Aligned tumbling windows over event time (ms since the Unix epoch).
//!
//! Window *k* of width *w* is `[k·w, (k+1)·w)`. Because windows are aligned,
//! a window of width k·w is exactly the union of the k windows of width w
//! inside it, so coarsening is a merge and never a re-read of data.
//!
//! # Design
//! Event times come from outside (devices, agents), so every `i64` must be
//! handled: a [`Window`] exists only when both its start and its end fit an
//! `i64` ([`Window::new`] and decoding refuse the rest), so
//! [`Window::end`] is exact. [`Window::checked_containing`] and
//! [`Window::coarsen`] use checked arithmetic and refuse a time no aligned
//! window can hold (within one width of `i64::MIN` or `i64::MAX`) instead of
//! overflowing.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A validated window width in milliseconds (1 ms ..= 366 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Width(i64);

/// A window width that is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The width is zero, negative or longer than the maximum.
    #[error("window width {0} ms is outside 1 ms ..= 366 days")]
    BadWidth(i64),
    /// The window start is not a multiple of its width.
    #[error("window start {start} is not aligned to width {width} ms")]
    Unaligned {
        /// The start given.
        start: i64,
        /// The width given.
        width: i64,
    },
    /// No aligned window of this width holding the time fits an `i64`
    /// (the time is within one width of `i64::MIN` or `i64::MAX`).
    #[error("no window of width {width} ms holding time {time} ms fits the range of event time")]
    OutOfRange {
        /// The time (or window start) given.
        time: i64,
        /// The width given.
        width: i64,
    },
    /// The coarser width is not a multiple of the finer one.
    #[error("width {coarse} ms is not a multiple of {fine} ms")]
    NotMultiple {
        /// The coarser width.
        coarse: i64,
        /// The finer width.
        fine: i64,
    },
}

impl Width {
    /// The largest width: 366 days.
    pub const MAX_MS: i64 = 366 * 86_400_000;

    /// A width of `ms` milliseconds.
    pub const fn new(ms: i64) -> Result<Self, WindowError> {
        if ms < 1 || ms > Self::MAX_MS {
            Err(WindowError::BadWidth(ms))
        } else {
            Ok(Width(ms))
        }
    }

    /// The width in milliseconds.
    pub const fn ms(self) -> i64 {
        self.0
    }

    /// Whether `coarse` is a whole multiple of `self`.
    pub fn divides(self, coarse: Width) -> bool {
        coarse.0 % self.0 == 0
    }
}

impl TryFrom<i64> for Width {
    type Error = WindowError;
    fn try_from(ms: i64) -> Result<Self, WindowError> {
        Width::new(ms)
    }
}

impl From<Width> for i64 {
    fn from(w: Width) -> i64 {
        w.0
    }
}

/// An aligned tumbling window. Decoding checks the alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawWindow")]
pub struct Window {
    start: i64,
    width: Width,
}

#[derive(Deserialize)]
struct RawWindow {
    start: i64,
    width: Width,
}

impl TryFrom<RawWindow> for Window {
    type Error = WindowError;
    fn try_from(r: RawWindow) -> Result<Self, WindowError> {
        Window::new(r.start, r.width)
    }
}

impl Window {
    /// The window of `width` containing event time `t`, for a trusted `t`:
    /// one that no window can hold (see [`Window::checked_containing`]) gets
    /// the nearest window that fits, which does not contain it. Untrusted
    /// times go through [`Window::checked_containing`].
    pub fn containing(t: i64, width: Width) -> Window {
        Window::checked_containing(t, width).unwrap_or_else(|_| {
            let w = width.0;
            // The first and the last aligned windows whose ends fit.
            let start = if t < 0 {
                i64::MIN.div_euclid(w).saturating_add(1).saturating_mul(w)
            } else {
                i64::MAX.div_euclid(w).saturating_sub(1).saturating_mul(w)
            };
            Window { start, width }
        })
    }

    /// The window of `width` containing event time `t`, or
    /// [`WindowError::OutOfRange`] when its start or end would not fit an
    /// `i64`.
    pub fn checked_containing(t: i64, width: Width) -> Result<Window, WindowError> {
        let w = width.0;
        t.div_euclid(w)
            .checked_mul(w)
            .filter(|start| start.checked_add(w).is_some())
            .map(|start| Window { start, width })
            .ok_or(WindowError::OutOfRange { time: t, width: w })
    }

    /// The window starting at `start`, which must be aligned to `width` and
    /// end within the range of `i64`.
    pub fn new(start: i64, width: Width) -> Result<Window, WindowError> {
        if start.rem_euclid(width.0) != 0 {
            return Err(WindowError::Unaligned {
                start,
                width: width.0,
            });
        }
        if start.checked_add(width.0).is_none() {
            return Err(WindowError::OutOfRange {
                time: start,
                width: width.0,
            });
        }
        Ok(Window { start, width })
    }

    /// The inclusive start (ms).
    pub fn start(&self) -> i64 {
        self.start
    }
    /// The exclusive end (ms); exact, as every window's end fits an `i64`.
    pub fn end(&self) -> i64 {
        self.start.saturating_add(self.width.0)
    }
    /// The width.
    pub fn width(&self) -> Width {
        self.width
    }
    /// Whether event time `t` falls in this window.
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end()
    }

    /// The window of width `coarse` (a multiple of this width) containing
    /// this one; [`WindowError::OutOfRange`] when that window would not fit
    /// an `i64`.
    pub fn coarsen(&self, coarse: Width) -> Result<Window, WindowError> {
        if !self.width.divides(coarse) {
            return Err(WindowError::NotMultiple {
                coarse: coarse.0,
                fine: self.width.0,
            });
        }
        Window::checked_containing(self.start, coarse)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}) ms", self.start, self.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_including_negative_times() {
        let w = Width::new(60_000).unwrap();
        assert_eq!(Window::containing(119_999, w).start(), 60_000);
        assert_eq!(Window::containing(120_000, w).start(), 120_000);
        assert_eq!(Window::containing(-1, w).start(), -60_000);
        let win = Window::containing(90_000, w);
        assert!(win.contains(60_000) && win.contains(119_999));
        assert!(!win.contains(120_000) && !win.contains(59_999));
    }

    #[test]
    fn coarsening_nests() {
        let fine = Width::new(10_000).unwrap();
        let coarse = Width::new(60_000).unwrap();
        for t in [0i64, 9_999, 59_999, 60_000, 123_456_789, -5] {
            let f = Window::containing(t, fine);
            assert_eq!(f.coarsen(coarse).unwrap(), Window::containing(t, coarse));
        }
        let odd = Width::new(25_000).unwrap();
        assert_eq!(
            Window::containing(0, fine).coarsen(odd),
            Err(WindowError::NotMultiple {
                coarse: 25_000,
                fine: 10_000
            })
        );
    }

    #[test]
    fn rejects_bad_widths_and_unaligned_starts() {
        assert_eq!(Width::new(0), Err(WindowError::BadWidth(0)));
        assert_eq!(Width::new(-5), Err(WindowError::BadWidth(-5)));
        assert!(Width::new(Width::MAX_MS + 1).is_err());
        let w = Width::new(1000).unwrap();
        assert!(Window::new(1500, w).is_err());
        assert!(Window::new(2000, w).is_ok());
        assert!(serde_json::from_str::<Window>(r#"{"start":0,"width":0}"#).is_err());
        assert!(serde_json::from_str::<Window>(r#"{"start":1500,"width":1000}"#).is_err());
        assert!(serde_json::from_str::<Window>(r#"{"start":2000,"width":1000}"#).is_ok());
    }
}
