//! `iapt bench generate`: prefill and decode throughput, warmed up, at batch 1 and 8.

use crate::text::LoadedModel;
use anyhow::Result;
use burn::tensor::backend::Backend;
use iapt_model::{generate, GenerationConfig, ModelHook, NoHook, SamplingConfig};
use serde_json::{json, Value};

/// Fresh prompts of `len` tokens per row (ids drawn from the ordinary-token range, different
/// per row and per call so no cache of any kind can flatter the numbers).
fn prompts(vocab: usize, rows: usize, len: usize, salt: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|r| (0..len).map(|i| (1000 + (r * 7919 + i * 104_729 + salt * 15_485_863) % (vocab - 2000)) as u32).collect())
        .collect()
}

/// Measure prefill tokens/s and decode tokens/s; one warm-up run per batch size first.
/// With `iapt`, each batch size is also run with the generator active, interleaved with the bare
/// runs so machine noise hits both alike, and the decode ratio is reported.
pub fn bench_generate<B: Backend>(
    loaded: &LoadedModel<B>,
    prompt_len: usize,
    new_tokens: usize,
    batches: &[usize],
    repeats: usize,
    iapt: Option<&iapt_tuners::Iapt<B>>,
) -> Result<Value> {
    let vocab = loaded.model.config().vocab_size;
    // No stop tokens: every run decodes exactly `new_tokens` steps.
    let config = GenerationConfig { max_new_tokens: new_tokens, sampling: SamplingConfig::default(), stop_tokens: vec![] };
    let mut results = Vec::new();
    for &batch in batches {
        let mut hooks: Vec<(&str, &dyn ModelHook<B>)> = vec![("bare", &NoHook)];
        if let Some(iapt) = iapt {
            hooks.push(("iapt", iapt));
        }
        let mut row = serde_json::Map::new();
        row.insert("batch".into(), json!(batch));
        row.insert("prompt_tokens".into(), json!(prompt_len));
        row.insert("new_tokens".into(), json!(new_tokens));
        row.insert("repeats".into(), json!(repeats));
        let mut totals = vec![(0.0f64, 0.0f64, 0usize); hooks.len()];
        for (_, hook) in &hooks {
            let _warmup = generate(&loaded.model, &prompts(vocab, batch, prompt_len, 0), 0, &config, *hook);
        }
        for rep in 0..repeats {
            for (i, (_, hook)) in hooks.iter().enumerate() {
                let out = generate(&loaded.model, &prompts(vocab, batch, prompt_len, rep + 1), 0, &config, *hook);
                totals[i].0 += out.prefill_seconds;
                totals[i].1 += out.decode_seconds;
                totals[i].2 += out.decode_steps;
            }
        }
        for ((name, _), (prefill_s, decode_s, steps)) in hooks.iter().zip(&totals) {
            row.insert(
                name.to_string(),
                json!({
                    "prefill_tokens_per_s": (batch * prompt_len * repeats) as f64 / prefill_s,
                    "decode_tokens_per_s": (batch * steps) as f64 / decode_s,
                    "prefill_ms": 1000.0 * prefill_s / repeats as f64,
                    "decode_ms_per_step": 1000.0 * decode_s / (*steps).max(1) as f64,
                }),
            );
        }
        if totals.len() == 2 {
            let rate = |t: &(f64, f64, usize)| t.2 as f64 / t.1;
            row.insert("iapt_decode_speed_vs_bare".into(), json!(rate(&totals[1]) / rate(&totals[0])));
            row.insert("iapt_prefill_time_vs_bare".into(), json!(totals[1].0 / totals[0].0));
        }
        results.push(Value::Object(row));
    }
    Ok(json!({ "bench": "generate", "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), "results": results }))
}
