//! `iapt export`: an adapter rewritten in another project's layout (Hugging Face PEFT's).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use iapt_experiment::runs::adapter_dir;
use iapt_tuners::AdapterConfig;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Hugging Face PEFT (`peft_type`, PEFT's tensor names): LoRA, prompt tuning and prefix tuning.
    Peft,
}

#[derive(Args)]
pub struct ExportArgs {
    /// An adapter directory or a run directory (iapt's layout).
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long, value_enum, default_value = "peft")]
    format: Format,
    /// Directory to write `adapter_config.json` and `adapter_model.safetensors` into.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let dir = adapter_dir(&args.adapter)?;
    if args.out.canonicalize().ok() == dir.canonicalize().ok() {
        bail!("--out {}: the adapter itself; choose another directory", args.out.display());
    }
    let config = AdapterConfig::read(&dir)?;
    let tuner = iapt_tuners::load_tuner::<crate::backend::NdArray>(&dir, &config.base_model.config, &Default::default())?;
    match args.format {
        Format::Peft => iapt_tuners::peft::save_peft(&args.out, &tuner, &config.base_model.name)?,
    }
    eprintln!("wrote the {} adapter in PEFT's layout to {}", tuner.name(), args.out.display());
    Ok(())
}
