//! `tributary-soak`: the fault campaign with real processes (see
//! `tributary_demo::soak`). Exits 1 when anything was lost, doubled or
//! disagrees with the oracle.

use clap::Parser;
use tributary_demo::soak::{self, SoakArgs};

fn main() -> anyhow::Result<()> {
    let args = SoakArgs::parse();
    soak::check(&args)?;
    let report = soak::run(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        soak::print(&report);
    }
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
