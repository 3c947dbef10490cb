//! The collector's `/api/v1/query` query string: any bytes, decoded as
//! axum's `Query` extractor decodes it, then parsed as the handler does.
//! What parses is a range the answer can walk: the first step starts on a
//! window boundary in `[from, to)`, the step is a positive multiple of the
//! width, the number of steps covers `[first, to)` exactly, and every window
//! start in the range falls in a step that starts at or before it.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use tributary_collector::query::api::parse_query;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(q) = serde_urlencoded::from_str::<HashMap<String, String>>(raw) else {
        return;
    };
    let Ok(ask) = parse_query(&q) else { return };
    let (w, first, to, step) = (
        i128::from(ask.width.ms()),
        i128::from(ask.first),
        i128::from(ask.to),
        i128::from(ask.step),
    );
    let from: i128 = q["from"].parse().expect("parsed");
    assert!(from <= first && first < from + w && first < to, "{ask:?}");
    assert_eq!(first.rem_euclid(w), 0, "{ask:?}");
    assert!(step > 0 && step % w == 0, "{ask:?}");
    let span = to - first;
    let steps = i128::from(ask.steps);
    assert!(
        steps >= 1 && (steps - 1) * step < span && span <= steps * step,
        "{ask:?}"
    );
    assert!(!ask.stats.is_empty());
    // The last window start in the range, and the first.
    let last = first + (to - 1 - first).div_euclid(w) * w;
    for start in [first, last] {
        let start = i64::try_from(start).expect("in range");
        let s = ask.step_of(start);
        assert!(ask.first <= s && s <= start, "{ask:?} {start} → {s}");
        assert_eq!((i128::from(s) - first) % step, 0, "{ask:?}");
    }
});
