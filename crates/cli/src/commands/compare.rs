//! `iapt compare`: several tuners trained and evaluated on one task with the same data, seeds
//! and budget; one comparison table (markdown + JSON).

use anyhow::{Context, Result};
use clap::Args;
use iapt_experiment::compare;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareArgs {
    /// A comparison file (`configs/compare-*.toml`).
    #[arg(long, required_unless_present = "from")]
    config: Option<PathBuf>,
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
    /// Train nothing: draw test accuracy against trainable parameters from the tables of
    /// earlier comparisons (repeatable, e.g. one per parameter budget) into `--plot`.
    #[arg(long, value_name = "COMPARISON.json", requires = "plot", conflicts_with_all = ["config", "sets", "out_dir", "seeds", "dry_run"])]
    from: Vec<PathBuf>,
    /// Where `--from` draws its chart (PNG).
    #[arg(long, value_name = "FILE.png", requires = "from")]
    plot: Option<PathBuf>,
}

pub fn run(args: CompareArgs) -> Result<()> {
    if let Some(plot) = &args.plot {
        let tables = args.from.iter().map(|path| super::read_json(path, "`iapt compare`")).collect::<Result<Vec<compare::Comparison>>>()?;
        compare::accuracy_chart(&tables).write_png(plot)?;
        eprintln!("plot written to {}", plot.display());
        return Ok(());
    }
    let config = args.config.as_deref().context("--config is required")?;
    let (section, runs) = compare::plan(config, &args.sets, args.out_dir.as_deref(), args.seeds.as_deref())?;
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
