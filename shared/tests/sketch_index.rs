//! Bucket indices against exact references (issue #13): the real reading
//! v·10^e must land where the OpenTelemetry data model puts it — bucket i at
//! scale s holds (2^(i·2^−s), 2^((i+1)·2^−s)], a reading on a boundary in the
//! lower bucket.
//!
//! - `exact_index.py` computes, with exact integer arithmetic only, the floors
//!   F_i = ⌊B_i/q⌋ of every scale-8 boundary B_i = 2^(i/256) around the tick
//!   range 1..=2⁵³ of every quantum, and both boundary tables. A tick v lies
//!   above B_i exactly when F_i < v (whether or not B_i/q is an integer), so
//!   its bucket at scale s is the largest j with F_{j·2^(8−s)} < v: a binary
//!   search, independent of the code under test. Every tick F_i and F_i + 1
//!   — the two ticks on either side of every boundary of every scale from 8
//!   to −4 — is checked at every scale, plus random ticks.
//! - `otel_index.py` maps ordinary values with the OpenTelemetry SDK's own
//!   `LogarithmMapping` / `ExponentMapping` (not exact right at irrational
//!   boundaries, so values within float reach of one are left to the exact
//!   reference and counted).
//!
//! Both need `python3`; the second the `opentelemetry-sdk` package, which
//! `scripts/test.sh` installs when missing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::num::{NonZeroU32, NonZeroU64};
use std::process::{Command, Stdio};

use tributary_core::index::{DeviceIndex, QuantumIndex, MAX_SCALE, MIN_SCALE};
use tributary_core::quantum::MAX_TICKS;
use tributary_core::Quantum;

/// Runs `tests/reference/<script>` with `input` on stdin; its stdout.
fn python(script: &str, input: &str) -> String {
    let path = format!("{}/tests/reference/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs the reference (scripts/test.sh installs what it needs)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed: {:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
}

/// SplitMix64.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A tick count log-uniform over 1..=2⁵³.
    fn ticks(&mut self) -> u64 {
        let bits = 1 + self.next() % 53;
        (self.next() >> (64 - bits)).max(1)
    }
}

/// One quantum's reference: the floors of its scale-8 boundaries.
struct Reference {
    first: i64,
    floors: Vec<u64>,
}

impl Reference {
    /// The bucket of `v` ticks at `scale`: the largest j with
    /// F_{j·2^(8−scale)} < v.
    fn index(&self, v: u64, scale: i8) -> i64 {
        let step = 1i64 << (MAX_SCALE - scale);
        let last = self.first + self.floors.len() as i64 - 1;
        let (lo_j, hi_j) = (self.first.div_euclid(step) + 1, last.div_euclid(step));
        let f = |j: i64| self.floors[(j * step - self.first) as usize];
        // Binary search over j in lo_j..=hi_j for the last F < v.
        let (mut lo, mut hi) = (lo_j, hi_j + 1);
        assert!(f(lo_j) < v && f(hi_j) >= v, "reference range too small");
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if f(mid) < v {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

fn numbers<T: std::str::FromStr>(it: std::str::SplitWhitespace<'_>) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    it.map(|x| x.parse().unwrap()).collect()
}

#[test]
fn every_boundary_at_every_scale_matches_the_exact_reference() {
    let out = python("exact_index.py", "");
    let mut mix = Mix(13);
    let (mut values, mut checks, mut mismatches, mut tables) = (0u64, 0u64, 0u64, 0);
    let mut reference: Option<Reference> = None;
    for line in out.lines() {
        let mut it = line.split_whitespace();
        let kind = it.next().unwrap();
        let e: i8 = it.next().unwrap().parse().unwrap();
        let q = Quantum::new(e).unwrap();
        match kind {
            "q" => {
                let first: i64 = it.next().unwrap().parse().unwrap();
                reference = Some(Reference {
                    first,
                    floors: numbers(it),
                });
                let r = reference.as_ref().unwrap();
                let host = QuantumIndex::of(q);
                let device = DeviceIndex::new(q);
                // The ticks on either side of every boundary, and random ones.
                let mut ticks: Vec<u64> = r.floors.iter().flat_map(|&f| [f, f + 1]).collect();
                ticks.extend((0..20_000).map(|_| mix.ticks()));
                ticks.retain(|&v| (1..=MAX_TICKS as u64).contains(&v));
                ticks.sort_unstable();
                ticks.dedup();
                for &v in &ticks {
                    values += 1;
                    for scale in MIN_SCALE..=MAX_SCALE {
                        let want = r.index(v, scale);
                        let got = host.index(NonZeroU64::new(v).unwrap(), scale);
                        checks += 1;
                        if i64::from(got) != want {
                            mismatches += 1;
                            if mismatches < 10 {
                                eprintln!("e={e} v={v} scale={scale}: {got} vs exact {want}");
                            }
                        }
                    }
                    if let Some(m) = u32::try_from(v).ok().and_then(NonZeroU32::new) {
                        checks += 1;
                        if i64::from(device.index(m)) != r.index(v, 6) {
                            mismatches += 1;
                            eprintln!("device e={e} v={v}: {}", device.index(m));
                        }
                    }
                }
            }
            "t" => {
                let offset: i32 = it.next().unwrap().parse().unwrap();
                let bounds: Vec<u64> = numbers(it);
                assert_eq!(QuantumIndex::of(q).offset(), offset, "e={e}");
                assert_eq!(&QuantumIndex::of(q).bounds()[..], &bounds[..], "e={e}");
                tables += 1;
            }
            "d" => {
                let offset: i32 = it.next().unwrap().parse().unwrap();
                let bounds: Vec<u32> = numbers(it);
                assert_eq!(DeviceIndex::new(q).offset(), offset, "e={e}");
                assert_eq!(&DeviceIndex::new(q).bounds()[..], &bounds[..], "e={e}");
                tables += 1;
            }
            other => panic!("unexpected line kind {other}"),
        }
    }
    assert!(reference.is_some());
    assert_eq!(tables, 2 * 37, "every quantum's two tables were compared");
    eprintln!(
        "bucket indices: {mismatches} mismatches against the exact reference over {values} \
         tick values of 37 quanta ({checks} index computations at scales 8..-4 and the device's)"
    );
    assert!(values >= 1_000_000, "{values} values");
    assert_eq!(mismatches, 0);
}

#[test]
fn ordinary_values_match_the_opentelemetry_sdk() {
    let mut mix = Mix(29);
    let values: Vec<(i8, u64)> = (0..40_000)
        .map(|_| {
            let e = (mix.next() % 37) as i8 + Quantum::MIN_EXPONENT;
            (e, mix.ticks())
        })
        .chain([(-3, 1500), (-2, 150), (0, 3), (1, 7), (-6, 21_500_000)])
        .collect();
    let input: String = values.iter().map(|(e, v)| format!("{e} {v}\n")).collect();
    let out = python("otel_index.py", &input);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), values.len());
    let (mut compared, mut near) = (0, 0);
    for (&(e, v), line) in values.iter().zip(&lines) {
        if *line == "near" {
            near += 1;
            continue;
        }
        let sdk: Vec<i32> = line
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let ix = QuantumIndex::of(Quantum::new(e).unwrap());
        let ours: Vec<i32> = (MIN_SCALE..=MAX_SCALE)
            .rev()
            .map(|s| ix.index(NonZeroU64::new(v).unwrap(), s))
            .collect();
        assert_eq!(ours, sdk, "e={e} v={v}");
        compared += 1;
    }
    eprintln!("OpenTelemetry SDK: {compared} values equal at scales 8..-4, {near} near a boundary");
    // 1.5 at 10⁻³ (the example) is OpenTelemetry's bucket 37 at 6.
    assert_eq!(
        lines[values.len() - 5].split_whitespace().nth(2),
        Some("37")
    );
    assert!(
        compared >= 39_900,
        "{compared} compared, {near} near a boundary"
    );
}
