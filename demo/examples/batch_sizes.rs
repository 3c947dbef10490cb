//! Batch sizes on the demo's workload (issue #16): one agent's partials of
//! one minute (20 simulated devices × 3 channels, 1 Hz readings, 60 s
//! windows, the demo's tags), encoded as batches of 60, 12 (the demo's
//! typical batch, whose windows close at different times in its fast
//! replay) and 1 partial, in binary and JSON. Prints the payload sizes and
//! writes each payload to `DIR/{60,12,1}.{bin,json}`, so a general-purpose
//! compressor can be measured on exactly these bytes:
//!
//! ```text
//! cargo run -p tributary-demo --example batch_sizes -- DIR
//! for f in DIR/*; do echo $f $(wc -c <$f) $(gzip -9 -c $f | wc -c) $(zstd -19 -c $f | wc -c); done
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use tributary_agent::config::Config as AgentConfig;
use tributary_agent::sources::simulated::agent_readings;
use tributary_core::batch::{Batch, Encoding, Partial};
use tributary_core::{Quantum, Summary, Width, Window};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "batch-sizes".into());
    std::fs::create_dir_all(&dir).unwrap();
    let text = "agent_id = \"gw-0\"\ndata_dir = \"unused\"\n[window]\nwidth_ms = 60000\n\
        [http]\nlisten = \"\"\n[tags]\nsite = \"berlin\"\ngateway = \"gw-0\"\n\
        [simulated]\ndevices = 20\nprefix = \"gw0-dev\"\nmode = \"summaries\"\nchannels = 3\n\
        device_window_ms = 10000\nreadings_per_window = 10\nwindows = 60\nstart_ms = 1764600000000\n";
    let cfg = AgentConfig::from_toml(text).unwrap();
    let series = agent_readings(&cfg.simulated, &cfg.global_tags(), &cfg.limits).unwrap();
    let width = Width::new(60_000).unwrap();
    let mut minutes = BTreeMap::<i64, Vec<Partial>>::new();
    for s in &series {
        let mut windows = BTreeMap::<i64, Summary>::new();
        for &(t, v) in &s.readings {
            let w = Window::containing(t, width).start();
            let q = Quantum::new(s.exponent).unwrap();
            windows
                .entry(w)
                .or_insert_with(|| Summary::new(q))
                .insert(t, v)
                .unwrap();
        }
        for (start, summary) in windows {
            minutes.entry(start).or_default().push(Partial {
                series: s.series.clone(),
                window: Window::new(start, width).unwrap(),
                summary,
            });
        }
    }
    // A minute in the middle of the run (the first and last are partial).
    let (start, partials) = minutes.iter().nth(3).unwrap();
    for n in [60usize, 12, 1] {
        let b = Batch::new("gw-0", 1, start + 60_000, partials[..n].to_vec());
        for (enc, ext) in [(Encoding::Binary, "bin"), (Encoding::Json, "json")] {
            let bytes = b.encode(enc);
            std::fs::write(format!("{dir}/{n}.{ext}"), &bytes).unwrap();
            println!(
                "{n:>2} partials, {} readings, {enc:>6}: {:>6} B, {:.3} B/reading",
                b.readings(),
                bytes.len(),
                bytes.len() as f64 / b.readings() as f64
            );
        }
    }
}
