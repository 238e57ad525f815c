//! `iapt config`: the resolved run config (defaults filled in, overrides applied) as TOML.

use anyhow::Result;
use clap::Args;
use iapt_experiment::run_config::RunConfig;
use std::path::PathBuf;

#[derive(Args)]
pub struct ConfigArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

pub fn run(args: ConfigArgs) -> Result<()> {
    print!("{}", RunConfig::load(args.config.as_deref(), &args.sets)?.to_toml());
    Ok(())
}
