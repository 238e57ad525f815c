//! One module per `iapt` command: its arguments and one call into the libraries.

pub mod bench;
pub mod compare;
pub mod config;
pub mod data;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod serve;
pub mod text;
pub mod train;

use crate::backend::BackendKind;
use clap::Args;
use iapt_experiment::run_config::WeightDtype;

/// Options every model-running command shares.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A known model name (`smollm2`, fetched on first use) or a `.gguf` file / HF directory.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "ndarray")]
    pub backend: BackendKind,
    /// The type of the frozen backbone's matrices (half precision on the GPU backends).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
