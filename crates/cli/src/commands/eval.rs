//! `iapt eval`: accuracy on a task split, of the backbone alone or with an adapter.

use crate::backend::BackendKind;
use crate::with_backend;
use anyhow::Result;
use clap::Args;
use iapt_experiment::model_source::resolve_model;
use iapt_experiment::run_config::{EvalMethod, RunConfig};
use iapt_experiment::runs::{run_config_of, EvalArgs as EvalRequest};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// A run directory from `iapt train` (its config is reused) or an adapter directory.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Task (default: the run's, else `rotten_tomatoes`).
    #[arg(long)]
    task: Option<String>,
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, value_enum)]
    method: Option<EvalMethod>,
    /// A run config to take model/data/eval settings from (default: the run's own).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Model (overrides `model.name`).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// The type of the frozen backbone's matrices (overrides `model.dtype`).
    #[arg(long, value_enum)]
    dtype: Option<iapt_experiment::run_config::WeightDtype>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let config_path = args.config.or_else(|| args.adapter.as_deref().and_then(run_config_of));
    let mut config = RunConfig::load(config_path.as_deref(), &args.sets)?;
    if let Some(model) = args.model {
        config.model.name = model;
    }
    if let Some(backend) = args.backend {
        config.model.backend = backend;
    }
    if let Some(dtype) = args.dtype {
        config.model.dtype = dtype;
    }
    let split = args.split.parse().map_err(|e| anyhow::anyhow!("--split {}: {e}", args.split))?;
    let path = resolve_model(&config.model.name)?;
    let request = EvalRequest { adapter: args.adapter, task: args.task, split, method: args.method };
    let report = with_backend!(config.model.backend, |B, device| iapt_experiment::runs::eval::<B>(&config, &path, &request, device))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}
