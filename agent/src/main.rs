//! `tributary-agent`: the command line around [`tributary_agent::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tributary_agent::config::Config;
use tributary_runtime::shutdown_signal;

/// The Tributary edge agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The config file (TOML; `TRIBUTARY_*` variables override keys).
    #[arg(long, short, default_value = "/etc/tributary/agent.toml")]
    config: PathBuf,
    /// Validate the config and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure readings/s through windowing with durable group commits.
    Bench(tributary_agent::bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    tributary_runtime::logging::init("info");
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    if let Some(Command::Bench(args)) = cli.command {
        return rt.block_on(tributary_agent::bench::run(args));
    }
    let config = Config::load(&cli.config)
        .with_context(|| format!("loading config {}", cli.config.display()))?;
    if cli.check_config {
        for w in config.warnings() {
            eprintln!("warning: {w}");
        }
        println!("config {} is valid", cli.config.display());
        return Ok(());
    }
    rt.block_on(tributary_agent::run(config, shutdown_signal()))
        .context("agent stopped with an error")?;
    Ok(())
}
