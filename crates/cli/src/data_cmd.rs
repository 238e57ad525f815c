//! `iapt fetch data NAME` and `iapt data show NAME`: real task data, fetched and inspected.

use anyhow::{anyhow, Result};
use iapt_data::{EncodeConfig, Source, Split};
use iapt_model::Tokenizer;

/// Fetch (and cache) a built-in task or a raw source (`bigbench:<task>[/<subtask>]`, `gsm8k`),
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
        other => anyhow::bail!("{name}: {other:?} is a local file, nothing to fetch"),
    }
    Ok(())
}

/// Print `n` encoded examples of a split with their masks, plus split sizes and label counts.
pub fn show(name: &str, tokenizer: &Tokenizer, split: &str, n: usize) -> Result<()> {
    let split: Split = split.parse().map_err(|e| anyhow!("--split {split}: {e}"))?;
    let data = crate::run_config::DataSection { task: name.to_string(), ..Default::default() };
    let spec = crate::experiment::task_spec(&data)?;
    let task = iapt_data::load_task(&spec)?;
    let encoder = iapt_data::Encoder::new(tokenizer, &spec, EncodeConfig::default());
    print!("{}", iapt_data::show(&task, &encoder, split, n)?);
    Ok(())
}
