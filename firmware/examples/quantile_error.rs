//! Prints the device sketch's quantile error per distribution (issue #15):
//! the worst relative error at the 0.01, 0.5 and 0.99 quantiles, the scale
//! reached and the Summary frames sent per 100,000 readings, for several
//! floor scales. `cargo run -p tributary-firmware --release --example quantile_error`
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/resolution.rs"]
mod resolution;

use tributary_core::index::{relative_error, MIN_SCALE};

fn main() {
    println!(
        "{:<52} {:>6} {:>9} {:>6} {:>7}",
        "distribution (100,000 readings)", "floor", "worst", "scale", "frames"
    );
    for case in resolution::cases() {
        for floor in [5, 4, MIN_SCALE] {
            let o = resolution::run(&case, floor);
            println!(
                "{:<52} {:>6} {:>8.3}% {:>6} {:>7}   (bound {:.2} %)",
                case.name,
                floor,
                100.0 * o.worst,
                o.scale,
                o.frames,
                100.0 * relative_error(o.scale)
            );
        }
    }
}
