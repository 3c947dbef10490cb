//! Answering a query past its width's retention from a coarser roll-up
//! ([`crate::retention::Policy::serve`]): the asked range re-read at the
//! served width, and what the response says about it.
//!
//! The whole range is served at one width, so every point of an answer has
//! the same resolution: the served windows overlapping the asked range
//! (the first may start before `from`), `step` rounded up to a multiple of
//! the served width. The answer carries
//! `"resolution": {"requested": W, "served": C, "reason": "retention"}` and
//! the header [`HEADER`] (`requested=W; served=C; reason=retention`).

use serde_json::{json, Value};
use tributary_core::{Width, Window};

use super::api::Ask;

/// The response header naming a fallback's widths.
pub const HEADER: &str = "tributary-resolution";

/// A query served at another width than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// The width asked for.
    pub requested: Width,
    /// The width answered from.
    pub served: Width,
}

impl Fallback {
    /// The response's `resolution` field.
    pub fn to_json(self) -> Value {
        json!({
            "requested": self.requested.ms(),
            "served": self.served.ms(),
            "reason": "retention",
        })
    }

    /// The value of [`HEADER`].
    pub fn header(self) -> String {
        format!(
            "requested={}; served={}; reason=retention",
            self.requested.ms(),
            self.served.ms()
        )
    }
}

/// `ask` re-read at the coarser width `served`: the served windows
/// overlapping `[first, to)`, each step a whole number of them.
pub fn coarsen(mut ask: Ask, served: Width) -> Ask {
    let w = served.ms();
    ask.first = Window::containing(ask.first, served).start();
    ask.width = served;
    // A multiple of `width`, which divides `w`: at least one `w`.
    let k = ask.step / w + i64::from(ask.step % w != 0);
    ask.step = k.max(1).saturating_mul(w);
    let span = u64::try_from(i128::from(ask.to) - i128::from(ask.first)).unwrap_or(u64::MAX);
    ask.steps = span.div_ceil(ask.step.unsigned_abs());
    ask
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::query::api::parse_query;
    use std::collections::HashMap;

    #[test]
    fn a_coarsened_query_covers_the_asked_range_in_whole_served_windows() {
        let q: HashMap<String, String> = [
            ("metric", "t"),
            ("from", "5400000"),
            ("to", "9000000"),
            ("width", "60000"),
            ("step", "120000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ask = coarsen(parse_query(&q).unwrap(), Width::new(3_600_000).unwrap());
        // 1.5 h .. 2.5 h: the hours starting at 1 h and 2 h.
        assert_eq!(ask.first, 3_600_000);
        assert_eq!(ask.step, 3_600_000);
        assert_eq!(ask.steps, 2);
        assert_eq!(ask.step_of(7_200_000), 7_200_000);
    }
}
