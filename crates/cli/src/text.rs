//! `iapt tokenize`, `iapt score`, `iapt generate`: the model used directly on text.

use anyhow::{anyhow, Result};
use burn::tensor::backend::Backend;
use iapt_model::{generate, ChatMessage, GenerationConfig, Llama, ModelHook, NoHook, SamplingConfig, Tokenizer};
use serde_json::json;
use std::path::Path;

/// A loaded checkpoint: model plus tokenizer.
pub struct LoadedModel<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: Tokenizer,
}

/// An IAPT adapter for `loaded`, read from `dir`; prints the parameter count to stderr.
pub fn load_adapter<B: Backend>(loaded: &LoadedModel<B>, dir: &Path, device: &B::Device) -> Result<iapt_tuners::Tuner<B>> {
    let tuner = iapt_tuners::load_tuner::<B>(dir, loaded.model.config(), device)?;
    let count = iapt_tuners::ParamCount::new(burn::module::Module::num_params(&tuner), loaded.model.config().num_params());
    eprintln!("adapter {} ({}): {count}", dir.display(), tuner.name());
    Ok(tuner)
}

/// Load model and tokenizer from a resolved checkpoint path.
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    let tokenizer = iapt_model::tokenizer::load_tokenizer(path)?;
    let model = iapt_model::load_llama::<B>(path, device)?;
    Ok(LoadedModel { model, tokenizer })
}

/// Token ids of `text`, special tokens parsed.
pub fn tokenize(tokenizer: &Tokenizer, text: &str, as_json: bool) -> Result<()> {
    let ids = tokenizer.encode(text).map_err(|e| anyhow!("tokenizing: {e}"))?;
    if as_json {
        println!("{}", json!({ "ids": ids }));
    } else {
        println!("{} tokens: {ids:?}", ids.len());
    }
    Ok(())
}

/// Mean next-token NLL of `text`.
pub fn score<B: Backend>(loaded: &LoadedModel<B>, text: &str, as_json: bool) -> Result<()> {
    let ids = loaded.tokenizer.encode(text).map_err(|e| anyhow!("tokenizing: {e}"))?;
    if ids.len() < 2 {
        anyhow::bail!("--text must be at least two tokens long to score (got {})", ids.len());
    }
    let (mean_nll, n_tokens) = iapt_model::score::mean_nll(&loaded.model, &ids, &NoHook);
    if as_json {
        println!("{}", json!({ "mean_nll": mean_nll, "n_tokens": n_tokens }));
    } else {
        println!("mean next-token NLL {mean_nll:.4} nats over {n_tokens} tokens (perplexity {:.2})", mean_nll.exp());
    }
    Ok(())
}

/// Options of `iapt generate` that shape the prompt and the sampling.
pub struct GenerateOptions<'a> {
    pub prompts: &'a [String],
    pub chat: bool,
    pub system: Option<&'a str>,
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    pub as_json: bool,
}

/// Prompt ids: raw text, or rendered through the checkpoint's chat template.
pub fn prompt_ids(tokenizer: &Tokenizer, prompt: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
    let text = if chat {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", prompt));
        tokenizer.apply_chat_template(&messages, true).map_err(|e| anyhow!("{e}"))?
    } else {
        prompt.to_string()
    };
    let ids = tokenizer.encode(&text).map_err(|e| anyhow!("tokenizing: {e}"))?;
    if ids.is_empty() {
        anyhow::bail!("--prompt is empty after tokenization");
    }
    Ok(ids)
}

/// Generate for one or more prompts in one batch.
pub fn run_generate<B: Backend>(loaded: &LoadedModel<B>, opts: GenerateOptions<'_>, hook: &dyn ModelHook<B>) -> Result<()> {
    let tok = &loaded.tokenizer;
    let prompts = opts
        .prompts
        .iter()
        .map(|p| prompt_ids(tok, p, opts.chat, opts.system))
        .collect::<Result<Vec<_>>>()?;
    let config = GenerationConfig { max_new_tokens: opts.max_new_tokens, sampling: opts.sampling, stop_tokens: vec![tok.eos_id()] };
    let out = generate(&loaded.model, &prompts, tok.pad_id(), &config, hook);
    let texts = out
        .tokens
        .iter()
        .map(|ids| tok.decode(ids, true).map_err(|e| anyhow!("decoding: {e}")))
        .collect::<Result<Vec<_>>>()?;
    if opts.as_json {
        if out.tokens.len() == 1 {
            println!("{}", json!({ "ids": out.tokens[0], "text": texts[0] }));
        } else {
            let rows: Vec<_> = out.tokens.iter().zip(&texts).map(|(ids, text)| json!({ "ids": ids, "text": text })).collect();
            println!("{}", json!({ "outputs": rows }));
        }
    } else {
        for text in &texts {
            println!("{text}");
        }
    }
    Ok(())
}
