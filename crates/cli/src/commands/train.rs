//! `iapt train`: train a tuner on a task, with burn-train's dashboard; everything lands in the
//! run directory, and the results are printed as JSON.

use crate::backend::{BackendKind, DeviceList};
use crate::with_backend;
use anyhow::Result;
use clap::Args;
use iapt_experiment::model_source::resolve_model;
use iapt_experiment::run_config::RunConfig;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// A run config (`configs/*.toml`); without one, every default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.epochs=2` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Run directory (overrides `run.dir`).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Compute backend (overrides `model.backend`).
    #[arg(long, value_enum)]
    backend: Option<BackendKind>,
    /// Devices to train on in parallel (overrides `model.devices`).
    #[arg(long)]
    devices: Option<usize>,
    /// The type of the frozen backbone's matrices (overrides `model.dtype`).
    #[arg(long, value_enum)]
    dtype: Option<iapt_experiment::run_config::WeightDtype>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut config = RunConfig::load(args.config.as_deref(), &args.sets)?;
    if let Some(dir) = args.run_dir {
        config.run.dir = dir;
    }
    if let Some(backend) = args.backend {
        config.model.backend = backend;
    }
    if let Some(devices) = args.devices {
        config.model.devices = devices;
    }
    if let Some(dtype) = args.dtype {
        config.model.dtype = dtype;
    }
    config.validate()?;
    let path = resolve_model(&config.model.name)?;
    let n = config.model.devices;
    let results = with_backend!(config.model.backend, |B, device| {
        let devices = if n > 1 { <B as DeviceList>::device_list(n) } else { Vec::new() };
        iapt_experiment::runs::train::<B>(&config, &path, device, devices)
    })?;
    println!("{}", results.to_json());
    Ok(())
}
