//! `iapt tokenize`, `iapt score`, `iapt generate`: the model used directly on text.

use super::ModelArgs;
use crate::with_backend;
use anyhow::{anyhow, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use iapt_experiment::model_source::{resolve_model, LoadedModel};
use iapt_experiment::runs::adapter_dir;
use iapt_model::{generate, ChatMessage, GenerationConfig, ModelHook, NoHook, SamplingConfig, Tokenizer};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: String,
}

/// Token ids of `--text`, special tokens parsed.
pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = iapt_model::load_tokenizer(&resolve_model(&args.model.model)?)?;
    let ids = tokenizer.encode(&args.text).map_err(|e| anyhow!("tokenizing: {e}"))?;
    if args.model.json {
        println!("{}", json!({ "ids": ids }));
    } else {
        println!("{} tokens: {ids:?}", ids.len());
    }
    Ok(())
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: String,
}

/// Mean next-token NLL of `--text`.
pub fn score(args: ScoreArgs) -> Result<()> {
    let path = resolve_model(&args.model.model)?;
    with_backend!(args.model.backend, |B, device| {
        let loaded = LoadedModel::<B>::load(&path, &device, args.model.dtype)?;
        let ids = loaded.tokenizer.encode(&args.text).map_err(|e| anyhow!("tokenizing: {e}"))?;
        if ids.len() < 2 {
            anyhow::bail!("--text must be at least two tokens long to score (got {})", ids.len());
        }
        let context = loaded.model.config().max_position_embeddings;
        if ids.len() > context {
            anyhow::bail!("--text is {} tokens, more than the model's context of {context} tokens (max_position_embeddings)", ids.len());
        }
        let (mean_nll, n_tokens) = iapt_model::score::mean_nll(&loaded.model, &ids, &NoHook);
        if args.model.json {
            println!("{}", json!({ "mean_nll": mean_nll, "n_tokens": n_tokens }));
        } else {
            println!("mean next-token NLL {mean_nll:.4} nats over {n_tokens} tokens (perplexity {:.2})", mean_nll.exp());
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text; repeat the flag to generate for several prompts in one batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Render the prompt as a user turn with the checkpoint's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for `--chat` (default: the template's own).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Pick the most likely token every step (the default unless --temperature > 0).
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An adapter directory (`adapter_config.json` + `adapter_model.safetensors`) or a run directory.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

/// Generate for one or more prompts in one batch, with or without an adapter.
pub fn generate_text(args: GenerateArgs) -> Result<()> {
    check_sampling(&args)?;
    let path = resolve_model(&args.model.model)?;
    with_backend!(args.model.backend, |B, device| {
        let loaded = LoadedModel::<B>::load(&path, &device, args.model.dtype)?;
        match &args.adapter {
            Some(dir) => run_generate(&loaded, &args, &loaded.load_adapter(&adapter_dir(dir)?)?),
            None => run_generate(&loaded, &args, &NoHook),
        }
    })
}

/// Prompt ids: raw text, or rendered through the checkpoint's chat template.
fn prompt_ids(tokenizer: &Tokenizer, prompt: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
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

/// Refuse sampling settings that mean nothing (they would otherwise be clamped silently).
fn check_sampling(args: &GenerateArgs) -> Result<()> {
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        anyhow::bail!("--temperature {}: must be a finite number >= 0 (0 = greedy)", args.temperature);
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        anyhow::bail!("--top-p {}: must be in (0, 1]", args.top_p);
    }
    Ok(())
}

fn run_generate<B: Backend>(loaded: &LoadedModel<B>, args: &GenerateArgs, hook: &dyn ModelHook<B>) -> Result<()> {
    let tok = &loaded.tokenizer;
    let prompts = args.prompt.iter().map(|p| prompt_ids(tok, p, args.chat, args.system.as_deref())).collect::<Result<Vec<_>>>()?;
    let context = loaded.model.config().max_position_embeddings;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + args.max_new_tokens > context {
        anyhow::bail!(
            "a prompt of {longest} token(s) plus --max-new-tokens {} = {} exceeds the model's context of {context} tokens (max_position_embeddings)",
            args.max_new_tokens,
            longest + args.max_new_tokens
        );
    }
    let temperature = if args.greedy { 0.0 } else { args.temperature };
    let sampling = SamplingConfig { temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    let config = GenerationConfig { max_new_tokens: args.max_new_tokens, sampling, stop_tokens: vec![tok.eos_id()] };
    let out = generate(&loaded.model, &prompts, tok.pad_id(), &config, hook);
    let texts = out.tokens.iter().map(|ids| tok.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"))).collect::<Result<Vec<_>>>()?;
    if args.model.json {
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
