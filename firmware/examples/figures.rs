//! Prints the RAM figures of the firmware state (`size_of`) and runs the
//! aggregator hot path for `valgrind --tool=callgrind` (argument: readings).

use std::hint::black_box;
use std::mem::size_of;

use tributary_core::fixed::FixedSummary;
use tributary_core::frame::Message;
use tributary_firmware::{index, Aggregator, ChannelSpec, Link, Mode, DEFAULT_POOL};

const SPEC: ChannelSpec = ChannelSpec {
    metric: "temperature",
    unit: "degC",
    index: &index(-3),
    reference: 20_000,
};

fn main() {
    let readings: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    if readings == 0 {
        println!("FixedSummary            {} B", size_of::<FixedSummary>());
        println!("Message                 {} B", size_of::<Message>());
        println!("Aggregator<8>           {} B", size_of::<Aggregator<8>>());
        println!(
            "Link<16, 128>           {} B (pool {DEFAULT_POOL} B)",
            size_of::<Link<16, 128>>()
        );
        println!(
            "Aggregator<8> + Link<16, 128>  {} B",
            size_of::<Aggregator<8>>() + size_of::<Link<16, 128>>()
        );
        return;
    }
    let specs = [SPEC; 1];
    let Ok(mut agg) = Aggregator::<1>::new(&specs, 1, u32::MAX, Mode::Aggregate) else {
        return;
    };
    let mut frames = 0u32;
    let mut x = 1u32;
    for t in 0..readings {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let v = 20_000 + (x >> 20) as i32;
        agg.record(black_box(t), &[v], &mut |_| frames += 1);
    }
    black_box(&agg);
    println!("{readings} readings, {frames} frames");
}
