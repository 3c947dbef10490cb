//! The store benches' synthetic load (`store_bench`, `retention_bench`):
//! series keys of one metric over 7 sites, and one-minute partials of 1–10
//! readings at random times and values, from a seeded xorshift so every
//! run of a bench loads the same data.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use tributary_core::batch::Partial;
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

/// One minute in ms.
pub(crate) const MIN: i64 = 60_000;

/// A seeded xorshift64 (the load's only randomness).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(0x2545_f491_4f6c_dd1d ^ seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` series keys: `temperature` of `dev-00000`…, tagged `site-0`…`site-6`.
pub(crate) fn keys(n: u64) -> Vec<SeriesKey> {
    (0..n)
        .map(|s| {
            let tags = BTreeMap::from([("site".to_string(), format!("site-{}", s % 7))]);
            SeriesKey::new("temperature", format!("dev-{s:05}"), tags).unwrap()
        })
        .collect()
}

/// A partial of `key` for the minute at `start`: 1–10 readings at quantum
/// 10⁻³, 20.000–24.999.
pub(crate) fn minute_partial(key: &SeriesKey, start: i64, rng: &mut Rng) -> Partial {
    let mut s = Summary::new(Quantum::new(-3).unwrap());
    for _ in 0..(1 + rng.next() % 10) {
        let t = start + (rng.next() % MIN as u64) as i64;
        s.insert(t, 20_000 + (rng.next() % 5_000) as i64).unwrap();
    }
    Partial {
        series: key.clone(),
        window: Window::new(start, Width::new(MIN).unwrap()).unwrap(),
        summary: s,
    }
}
