//! Shows the summary algebra at work: readings from simulated sensors are
//! split over many "agents" and windows, merged back along random merge trees,
//! and the result is compared — field by field — with a single pass over all
//! readings. Prints the statistics, quantile accuracy and wire sizes.
//!
//! `cargo run --release -p tributary-core --example exact_merge [-- READINGS]`

use std::time::Instant;

use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, SeriesKey, Summary, Width, Window};

/// A small deterministic generator (SplitMix64), so the example needs no crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let quantum = Quantum::new(-3)?;
    let width = Width::new(60_000)?;
    let agents = 8;
    let mut rng = Rng(42);

    let readings = simulated_readings(n, &mut rng);

    let started = Instant::now();
    let mut whole = Summary::new(quantum);
    for &(t, x) in &readings {
        whole.insert_value(t, x)?;
    }
    let single_pass = started.elapsed();

    // Each reading goes to a random agent; each agent keeps one partial per window.
    let mut partials: Vec<Summary> = Vec::new();
    let mut windows = std::collections::BTreeMap::<(usize, i64), Summary>::new();
    for &(t, x) in &readings {
        let agent = (rng.next() % agents as u64) as usize;
        let w = Window::containing(t, width).start();
        windows
            .entry((agent, w))
            .or_insert_with(|| Summary::new(quantum))
            .insert_value(t, x)?;
    }
    partials.extend(windows.into_values());
    let parts = partials.len();

    // The collector's pattern: fold every partial into one stored result.
    let started = Instant::now();
    let mut folded = Summary::new(quantum);
    for p in &partials {
        folded.merge(p)?;
    }
    let fold_time = started.elapsed();

    // Merge along a random tree: repeatedly merge two random entries.
    let started = Instant::now();
    while partials.len() > 1 {
        let i = (rng.next() % partials.len() as u64) as usize;
        let a = partials.swap_remove(i);
        let j = (rng.next() % partials.len() as u64) as usize;
        partials[j].merge(&a)?;
    }
    let merge_time = started.elapsed();
    let merged = partials.pop().unwrap_or_else(|| Summary::new(quantum));

    println!("readings             {n}");
    println!(
        "partials merged      {parts} (from {agents} agents, 60 s windows), random merge tree"
    );
    println!(
        "equal to single pass {}  (every field, compared with ==)",
        merged == whole
    );
    println!(
        "single pass          {:.1} ns/reading",
        single_pass.as_nanos() as f64 / n as f64
    );
    println!(
        "merge into a result  {:.0} ns/partial",
        fold_time.as_nanos() as f64 / parts.max(1) as f64
    );
    println!(
        "merge, random tree   {:.0} ns/merge",
        merge_time.as_nanos() as f64 / parts.max(1) as f64
    );
    let fmt = |o: Option<f64>| o.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!(
        "mean {}  stddev {}  min {}  max {}",
        fmt(merged.mean()),
        fmt(merged.stddev()),
        fmt(merged.min()),
        fmt(merged.max())
    );

    print_quantiles(&readings, quantum, &merged);
    print_wire_sizes(&readings, quantum, width)?;
    if merged != whole || folded != whole {
        anyhow::bail!("merged result differs from the single pass");
    }
    Ok(())
}

/// Prints the merged result's quantiles beside the exact ones (from the
/// sorted readings, at the quantum).
fn print_quantiles(readings: &[(i64, f64)], quantum: Quantum, merged: &Summary) {
    let n = readings.len();
    let mut sorted: Vec<f64> = readings
        .iter()
        .map(|r| quantum.value(quantum.ticks(r.1).unwrap_or(0)))
        .collect();
    sorted.sort_by(f64::total_cmp);
    for q in [0.5, 0.9, 0.99, 0.999] {
        let exact = sorted[((q * (n - 1) as f64).floor() as usize).min(n - 1)];
        if let Some(est) = merged.quantile(q) {
            let err = ((est.value - exact) / exact).abs();
            println!(
                "p{:<5} estimate {:.4}  exact {:.4}  error {:.3}%  (bound {:.3}%)",
                q * 100.0,
                est.value,
                exact,
                err * 100.0,
                est.relative_error * 100.0
            );
        }
    }
}

/// Prints one window's partial against forwarding its raw readings as JSON.
fn print_wire_sizes(readings: &[(i64, f64)], quantum: Quantum, width: Width) -> anyhow::Result<()> {
    let key = SeriesKey::new("temperature", "dev-1", Default::default())?;
    let first = readings.first().map_or(0, |r| r.0);
    let win = Window::containing(first, width);
    let mut one = Summary::new(quantum);
    let in_window: Vec<_> = readings.iter().filter(|r| win.contains(r.0)).collect();
    for r in &in_window {
        one.insert_value(r.0, r.1)?;
    }
    let batch = Batch::new(
        "agent-1",
        1,
        win.end(),
        vec![Partial {
            series: key,
            window: win,
            summary: one,
        }],
    );
    let raw_json: usize = in_window
        .iter()
        .map(|r| {
            format!(
                r#"{{"metric":"temperature","device":"dev-1","time":{},"value":{}}}"#,
                r.0, r.1
            )
            .len()
        })
        .sum();
    println!(
        "one 60 s window of {} readings: raw JSON {} B, batch JSON {} B, batch binary {} B",
        in_window.len(),
        raw_json,
        batch.encode(Encoding::Json).len(),
        batch.encode(Encoding::Binary).len()
    );
    Ok(())
}

/// `n` readings, one every 100 ms: a daily temperature cycle with noise and
/// spikes.
fn simulated_readings(n: usize, rng: &mut Rng) -> Vec<(i64, f64)> {
    let mut readings = Vec::with_capacity(n);
    for i in 0..n {
        let t = 1_700_000_000_000 + i as i64 * 100;
        let base = 21.0 + 4.0 * ((i as f64) / 50_000.0).sin();
        let noise = (rng.unit() - 0.5) * 0.8;
        let spike = if rng.unit() < 0.001 { 15.0 } else { 0.0 };
        readings.push((t, base + noise + spike));
    }

    readings
}
