//! `iapt bench generate`: prefill and decode throughput, warmed up, at batch 1 and 8.

use crate::text::LoadedModel;
use anyhow::Result;
use burn::tensor::backend::Backend;
use iapt_model::{generate, GenerationConfig, NoHook, SamplingConfig};
use serde_json::{json, Value};

/// Fresh prompts of `len` tokens per row (ids drawn from the ordinary-token range, different
/// per row and per call so no cache of any kind can flatter the numbers).
fn prompts(vocab: usize, rows: usize, len: usize, salt: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|r| (0..len).map(|i| (1000 + (r * 7919 + i * 104_729 + salt * 15_485_863) % (vocab - 2000)) as u32).collect())
        .collect()
}

/// Measure prefill tokens/s and decode tokens/s; one warm-up run per batch size first.
pub fn bench_generate<B: Backend>(loaded: &LoadedModel<B>, prompt_len: usize, new_tokens: usize, batches: &[usize], repeats: usize) -> Result<Value> {
    let vocab = loaded.model.config().vocab_size;
    // No stop tokens: every run decodes exactly `new_tokens` steps.
    let config = GenerationConfig { max_new_tokens: new_tokens, sampling: SamplingConfig::default(), stop_tokens: vec![] };
    let mut results = Vec::new();
    for &batch in batches {
        let _warmup = generate(&loaded.model, &prompts(vocab, batch, prompt_len, 0), 0, &config, &NoHook);
        let (mut prefill_s, mut decode_s, mut steps) = (0.0, 0.0, 0);
        for rep in 0..repeats {
            let out = generate(&loaded.model, &prompts(vocab, batch, prompt_len, rep + 1), 0, &config, &NoHook);
            prefill_s += out.prefill_seconds;
            decode_s += out.decode_seconds;
            steps += out.decode_steps;
        }
        results.push(json!({
            "batch": batch,
            "prompt_tokens": prompt_len,
            "new_tokens": new_tokens,
            "repeats": repeats,
            "prefill_tokens_per_s": (batch * prompt_len * repeats) as f64 / prefill_s,
            "decode_tokens_per_s": (batch * steps) as f64 / decode_s,
            "prefill_ms": 1000.0 * prefill_s / repeats as f64,
            "decode_ms_per_step": 1000.0 * decode_s / steps.max(1) as f64,
        }));
    }
    Ok(json!({ "bench": "generate", "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "results": results }))
}
