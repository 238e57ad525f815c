//! `iapt compare`: several tuners trained and evaluated on one task with the same data, seeds
//! and budget; one comparison table (markdown + JSON).

use anyhow::{Context, Result};
use clap::Args;
use iapt_experiment::compare;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareArgs {
    /// A comparison file (`configs/compare-*.toml`).
    #[arg(long)]
    config: PathBuf,
    /// Override a key of every method's run config, e.g. `--set train.epochs=1` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output directory (overrides `compare.out_dir`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Seeds (overrides `compare.seeds`), e.g. `--seeds 0,1,2`.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Only print the planned runs' resolved tuners and parameter counts.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: CompareArgs) -> Result<()> {
    let (section, runs) = compare::plan(&args.config, &args.sets, args.out_dir.as_deref(), args.seeds.as_deref())?;
    if args.dry_run {
        for run in &runs {
            println!("{} seed {}: {} -> {}", run.method, run.seed, toml::to_string(&run.config.tuner)?.replace('\n', " "), run.config.run.dir.display());
        }
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the iapt executable")?;
    println!("{}", compare::run(&section, &runs, &exe)?);
    Ok(())
}
