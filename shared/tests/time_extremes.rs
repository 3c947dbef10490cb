//! Untrusted event times at the ends of `i64` (issue #12): window
//! arithmetic never overflows, never panics and never yields a window that
//! is not aligned or does not hold its time. The judge is `i128` arithmetic
//! on the raw numbers, not the code under test.
//!
//! Also: a batch whose JSON nests an unknown field 10,000 deep is refused
//! as malformed, not taken for a batch.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use proptest::prelude::*;
use tributary_core::batch::{Batch, BatchError, Confirm, Encoding};
use tributary_core::{Width, Window};

/// The aligned window of width `w` holding `t` by `i128` arithmetic, if
/// its start and end both fit an `i64`.
fn reference(t: i64, w: i64) -> Option<(i64, i64)> {
    let (t, w) = (i128::from(t), i128::from(w));
    let start = t.div_euclid(w) * w;
    let end = start + w;
    Some((i64::try_from(start).ok()?, i64::try_from(end).ok()?))
}

/// Times near both ends of `i64` and anywhere in between.
fn any_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        (0i64..=1_000_000).prop_map(|d| i64::MIN + d),
        (0i64..=1_000_000).prop_map(|d| i64::MAX - d),
        any::<i64>(),
    ]
}

fn any_width() -> impl Strategy<Value = i64> {
    prop_oneof![
        1i64..=1000,
        Just(60_000i64),
        Just(3_600_000),
        Just(86_400_000),
        1i64..=Width::MAX_MS,
    ]
}

proptest! {
    #[test]
    fn the_window_holding_a_time_is_exact_or_refused(t in any_time(), w in any_width()) {
        let width = Width::new(w).unwrap();
        match (Window::checked_containing(t, width), reference(t, w)) {
            (Ok(win), Some((start, end))) => {
                prop_assert_eq!(win.start(), start);
                prop_assert_eq!(win.end(), end);
                prop_assert!(win.contains(t));
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "t={} w={}: {:?} vs {:?}", t, w, got, want),
        }
        // The unchecked form never panics, and is right whenever a window exists.
        let win = Window::containing(t, width);
        if let Some((start, _)) = reference(t, w) {
            prop_assert_eq!(win.start(), start);
        }
    }

    #[test]
    fn a_window_is_accepted_only_when_aligned_and_its_end_fits(
        t in any_time(),
        w in any_width(),
        d in 0i64..3,
        aligned in any::<bool>(),
    ) {
        let width = Width::new(w).unwrap();
        // Aligned starts near the ends (and elsewhere), or any start.
        let start = if aligned {
            (t / w).saturating_sub(d).saturating_mul(w)
        } else {
            t
        };
        let fits = i128::from(start).rem_euclid(i128::from(w)) == 0
            && i64::try_from(i128::from(start) + i128::from(w)).is_ok();
        match Window::new(start, width) {
            Ok(win) => {
                prop_assert!(fits, "start={} w={}", start, w);
                prop_assert_eq!(i128::from(win.end()), i128::from(start) + i128::from(w));
            }
            Err(_) => prop_assert!(!fits, "start={} w={}", start, w),
        }
    }

    #[test]
    fn coarsening_at_the_extremes_is_exact_or_refused(t in any_time(), k in 1i64..=1000) {
        let fine = Width::new(1000).unwrap();
        let coarse = Width::new(1000 * k).unwrap();
        let Ok(win) = Window::checked_containing(t, fine) else {
            return Ok(());
        };
        match (win.coarsen(coarse), reference(win.start(), coarse.ms())) {
            (Ok(c), Some((start, end))) => {
                prop_assert_eq!((c.start(), c.end()), (start, end));
                prop_assert!(c.start() <= win.start() && win.end() <= c.end());
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "t={} k={}: {:?} vs {:?}", t, k, got, want),
        }
    }
}

#[test]
fn the_extremes_themselves() {
    let minute = Width::new(60_000).unwrap();
    // No aligned minute holds i64::MIN: its start would be below it.
    assert!(Window::checked_containing(i64::MIN, minute).is_err());
    // The last minute whose end fits holds i64::MAX - 60_000 ...
    let last = Window::checked_containing(i64::MAX - 60_000, minute).unwrap();
    assert!(last.contains(i64::MAX - 60_000));
    assert_eq!(
        i128::from(last.end()),
        i128::from(last.start()) + 60_000,
        "the end is exact"
    );
    // ... and none holds i64::MAX (its end would pass i64::MAX).
    assert!(Window::checked_containing(i64::MAX, minute).is_err());
    // A window decoded with an end past i64::MAX is refused.
    let start = i64::MAX / 60_000 * 60_000;
    assert!(Window::new(start, minute).is_err());
    let json = format!(r#"{{"start":{start},"width":60000}}"#);
    assert!(serde_json::from_str::<Window>(&json).is_err());
}

/// `{"a":{"a":…}}` nested `depth` deep.
fn nested(depth: usize) -> String {
    let mut s = String::with_capacity(depth * 6 + 2);
    for _ in 0..depth {
        s.push_str("{\"a\":");
    }
    s.push('1');
    for _ in 0..depth {
        s.push('}');
    }
    s
}

#[test]
fn a_batch_nesting_an_unknown_field_10000_deep_is_malformed() {
    let ok = String::from_utf8(Batch::new("gw", 7, 0, vec![]).encode(Encoding::Json)).unwrap();
    assert!(Batch::decode(ok.as_bytes()).is_ok());
    let deep = format!("{},\"x\":{}}}", ok.trim_end_matches('}'), nested(10_000));
    let err = Batch::decode(deep.as_bytes()).unwrap_err();
    assert!(matches!(err, BatchError::Json(_)), "{err}");
    // A shallow unknown field is refused too: version 2 has no such field.
    let extra = format!("{},\"x\":1}}", ok.trim_end_matches('}'));
    assert!(Batch::decode(extra.as_bytes()).is_err());
    // Deep nesting where a known field is expected: refused as well.
    let deep_partials = ok.replace(
        "\"partials\":[]",
        &format!("\"partials\":[{}]", nested(10_000)),
    );
    assert!(Batch::decode(deep_partials.as_bytes()).is_err());
    // Same for confirmations.
    let c = String::from_utf8(
        Confirm::new("gw", tributary_core::Incarnation::new(1), vec![1]).encode(),
    )
    .unwrap();
    let deep = format!("{},\"x\":{}}}", c.trim_end_matches('}'), nested(10_000));
    assert!(Confirm::decode(deep.as_bytes()).is_err());
}
