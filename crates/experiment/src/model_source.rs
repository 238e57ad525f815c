//! Where models come from: `--model NAME|PATH` (a known model name, fetched on first use, or a
//! GGUF file / HF directory) resolved to a checkpoint, and a checkpoint loaded with its
//! tokenizer, optionally with an adapter.

use crate::run_config::WeightDtype;
use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use iapt_model::{Llama, LlamaConfig, Tokenizer};
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

/// `--model random:<preset>` (`random:llama2-7b`, `random:smollm2`, ...): a model of a preset's
/// shape with random weights and no tokenizer. The benchmarks take it, to measure speed and
/// memory for shapes no checkpoint is at hand for.
pub const RANDOM_MODEL_PREFIX: &str = "random:";

/// The backbone a benchmark runs: a checkpoint (`spec` as `--model` takes it) or a random model
/// of a preset's shape (`random:<preset>`), its matrices stored as `dtype`.
pub fn load_bench_backbone<B: Backend>(spec: &str, device: &B::Device, dtype: WeightDtype) -> Result<Llama<B>> {
    let Some(preset) = spec.strip_prefix(RANDOM_MODEL_PREFIX) else {
        let path = resolve_model(spec)?;
        return Ok(iapt_model::load_llama_as::<B>(&path, device, dtype.float())?);
    };
    let config =
        LlamaConfig::preset(preset).ok_or_else(|| anyhow::anyhow!("--model {spec}: unknown shape `{preset}` (known: {})", LlamaConfig::PRESETS.join(", ")))?;
    iapt_model::check_weight_dtype::<B>(device, dtype.float())?;
    Ok(Llama::random(&config, device).with_matrix_dtype(dtype.float()))
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
