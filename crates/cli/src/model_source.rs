//! `--model NAME|PATH`: a known model name (fetched on first use) or a GGUF file / HF directory.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Resolve `--model` to a checkpoint path, fetching a known model into the cache if needed.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    if iapt_assets::asset(spec).is_some_and(is_model) {
        return iapt_assets::fetch_asset(spec).with_context(|| format!("fetching model `{spec}`"));
    }
    anyhow::bail!(
        "--model {spec}: no such file or directory, and not a known model name (known: {})",
        known_models().join(", ")
    )
}

fn is_model(asset: iapt_assets::Asset) -> bool {
    asset.cache_path.starts_with("models/")
}

/// Names `--model` accepts without a path.
pub fn known_models() -> Vec<&'static str> {
    iapt_assets::ASSETS.iter().copied().filter(|a| is_model(*a)).map(|a| a.name).collect()
}
