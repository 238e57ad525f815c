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

/// Read a JSON file this tool wrote earlier; `what` names the writer for the error message.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) -> anyhow::Result<T> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not the JSON {what} writes", path.display()))
}

/// Print `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
