//! Where models come from: `--model NAME|PATH` (a known model name, fetched on first use, or a
//! GGUF file / HF directory) resolved to a checkpoint, and a checkpoint loaded with its
//! tokenizer, optionally with an adapter.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use iapt_model::{Llama, Tokenizer};
use std::path::{Path, PathBuf};

/// Resolve `--model` to a checkpoint path, fetching a known model into the cache if needed.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    if iapt_assets::asset(spec).is_some_and(is_model) {
        return iapt_assets::fetch_asset(spec).with_context(|| format!("fetching model `{spec}`"));
    }
    anyhow::bail!("--model {spec}: no such file or directory, and not a known model name (known: {})", known_models().join(", "))
}

fn is_model(asset: iapt_assets::Asset) -> bool {
    asset.cache_path.starts_with("models/")
}

/// Names `--model` accepts without a path.
pub fn known_models() -> Vec<&'static str> {
    iapt_assets::ASSETS.iter().copied().filter(|a| is_model(*a)).map(|a| a.name).collect()
}

/// A loaded checkpoint: model plus tokenizer.
pub struct LoadedModel<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: Tokenizer,
}

impl<B: Backend> LoadedModel<B> {
    /// Load model and tokenizer from a resolved checkpoint path, the backbone's matrices stored
    /// as `dtype`.
    pub fn load(path: &Path, device: &B::Device, dtype: crate::run_config::WeightDtype) -> Result<Self> {
        let tokenizer = iapt_model::load_tokenizer(path)?;
        let model = iapt_model::load_llama_as::<B>(path, device, dtype.float())?;
        Ok(Self { model, tokenizer })
    }

    /// The adapter (any tuner) in `dir`, for this model; prints its parameter count to stderr.
    pub fn load_adapter(&self, dir: &Path) -> Result<iapt_tuners::Tuner<B>> {
        let tuner = iapt_tuners::load_tuner::<B>(dir, self.model.config(), &self.model.device())?;
        let count = iapt_tuners::ParamCount::new(burn::module::Module::num_params(&tuner), self.model.config().num_params());
        eprintln!("adapter {} ({}): {count}", dir.display(), tuner.name());
        Ok(tuner)
    }
}
