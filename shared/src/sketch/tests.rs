//! Unit tests of the sketch algorithms and stores; the merge laws are
//! property-tested in `shared/tests/merge_laws.rs`.

use super::*;
use crate::index::QuantumIndex;
use crate::quantum::Quantum;

fn ticks() -> &'static QuantumIndex {
    QuantumIndex::of(Quantum::new(0).unwrap())
}

#[test]
fn insert_counts_by_sign_and_zero() {
    let mut s = Sketch::new();
    for v in [-5, 0, 0, 3, 3, 1000] {
        s.insert(ticks().bucket(v)).unwrap();
    }
    assert_eq!(s.count(), 6);
    assert_eq!(s.zero_count(), 2);
    assert_eq!(s.negative().total(), 1);
    assert_eq!(s.positive().total(), 3);
    assert_eq!(s.scale(), START_SCALE);
}

#[test]
fn wide_range_lowers_scale_instead_of_dropping() {
    let mut s = FixedSketch::new();
    for e in 0..60 {
        s.insert(ticks().bucket(1i64 << e)).unwrap();
        s.insert(ticks().bucket(-(3i64 << e))).unwrap();
    }
    assert_eq!(s.count(), 120);
    assert!(s.scale() < 3, "scale {}", s.scale());
    assert!(s.positive().len() + s.negative().len() <= SharedCounts::LIMIT);
    s.validate().unwrap();
}

#[test]
fn the_shared_store_lends_one_sign_the_whole_array() {
    // One reading in each of 300 consecutive buckets of one sign: more than
    // half the array, so only a shared array keeps the starting scale.
    let ix = ticks();
    let mid = |i: i32| 2f64.powf((f64::from(i) + 0.5) / 64.0) as i64;
    let mut s = FixedSketch::new();
    for i in 1000..1300 {
        assert_eq!(ix.bucket(mid(i)), Bucket::Positive(i));
        s.insert(ix.bucket(mid(i))).unwrap();
    }
    assert_eq!(s.scale(), START_SCALE);
    assert_eq!(s.positive().len(), 300);
    // Negative readings take the rest; past it the scale drops.
    s.insert(ix.bucket(-mid(1000))).unwrap();
    s.insert(ix.bucket(-mid(1003))).unwrap();
    assert_eq!(s.scale(), START_SCALE);
    s.insert(ix.bucket(-mid(1004))).unwrap();
    assert_eq!(s.scale(), START_SCALE - 1);
    assert_eq!(s.count(), 303);
}

#[test]
fn insert_above_refuses_to_coarsen_past_the_floor() {
    let mut s = FixedSketch::new();
    s.insert_above(ticks().bucket(1), 6).unwrap();
    let before = s.clone();
    // Ticks 1 and 32 are buckets −1 and 319 apart: 321 > 304 at scale 6.
    assert_eq!(s.insert_above(ticks().bucket(32), 6), Err(SketchOverflow));
    assert_eq!(s, before);
    s.insert_above(ticks().bucket(32), 4).unwrap();
    assert_eq!(s.scale(), 5);
}

#[test]
fn fixed_bucket_overflow_is_reported_and_leaves_state() {
    let mut s = FixedSketch::new();
    for _ in 0..u8::MAX {
        s.insert(ticks().bucket(7)).unwrap();
    }
    let before = s.clone();
    assert_eq!(s.insert(ticks().bucket(7)), Err(SketchOverflow));
    assert_eq!(s, before);
    let mut t = s.clone();
    assert_eq!(t.merge(&before), Err(SketchOverflow));
    assert_eq!(t, before);
}

#[test]
fn decode_rejects_non_canonical_and_out_of_range() {
    let bad = r#"{"scale":6,"zero":0,"positive":{"offset":3,"counts":[0,1]},"negative":{"offset":0,"counts":[]}}"#;
    assert!(serde_json::from_str::<Sketch>(bad).is_err());
    let bad_scale = r#"{"scale":7,"zero":0,"positive":{"offset":0,"counts":[]},"negative":{"offset":0,"counts":[]}}"#;
    assert!(serde_json::from_str::<Sketch>(bad_scale).is_err());
    let far = r#"{"scale":6,"zero":0,"positive":{"offset":9000,"counts":[1]},"negative":{"offset":0,"counts":[]}}"#;
    assert!(serde_json::from_str::<Sketch>(far).is_err());
    let too_many = format!(
        r#"{{"scale":6,"zero":0,"positive":{{"offset":0,"counts":[{}]}},"negative":{{"offset":0,"counts":[1]}}}}"#,
        vec!["1"; 304].join(",")
    );
    assert!(serde_json::from_str::<FixedSketch>(&too_many).is_err());
    assert!(serde_json::from_str::<Sketch>(&too_many).is_ok());
    let big_count = r#"{"scale":6,"zero":0,"positive":{"offset":0,"counts":[256]},"negative":{"offset":0,"counts":[]}}"#;
    assert!(serde_json::from_str::<FixedSketch>(big_count).is_err());
    assert!(serde_json::from_str::<Sketch>(big_count).is_ok());
}

#[test]
fn json_keeps_the_documented_shape() {
    let mut s = Sketch::new();
    for v in [-5, 0, 3, 3] {
        s.insert(ticks().bucket(v)).unwrap();
    }
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(
        j,
        serde_json::json!({
            "scale": 6, "zero": 1,
            "positive": {"offset": 101, "counts": [2]},
            "negative": {"offset": 148, "counts": [1]},
        })
    );
    assert_eq!(serde_json::from_value::<Sketch>(j).unwrap(), s);
}
