//! `tributary-demo`: the self-contained main job (see [`tributary_demo::demo`]).

use anyhow::Context;
use clap::Parser;
use tributary_demo::demo::{self, DemoArgs};
use tributary_runtime::shutdown_signal;

fn main() -> anyhow::Result<()> {
    tributary_demo::broker::init_logging("info");
    let args = DemoArgs::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(demo::run(args, shutdown_signal()))
}
