//! Data-pipeline throughput (`iapt bench data`): loading, encoding and batching rates.

use crate::batch::{padding_fraction, BatchPlan, EncodedDataset, TrainBatcher};
use crate::encode::{EncodeConfig, Encoder};
use crate::error::DataError;
use crate::split::Split;
use crate::task::{load_task, Example, TaskData, TaskSpec};
use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use iapt_model::Tokenizer;
use serde_json::json;
use std::time::Instant;

/// Time loading `spec` (through the cache, so a first run includes the download), encoding `n`
/// examples (the task's examples repeated as needed; 10,000 for `iapt bench data`), planning
/// length-bucketed batches of 16 and building them as tensors on `device`. Returns a JSON report.
pub fn bench_encode<B: Backend>(spec: &TaskSpec, tokenizer: &Tokenizer, n: usize, device: &B::Device) -> Result<serde_json::Value, DataError> {
    let start = Instant::now();
    let data = load_task(spec)?;
    let load_s = start.elapsed().as_secs_f64();
    let mut report = bench_prepared::<B>(&data, tokenizer, n, device)?;
    report["load_task_s"] = json!(load_s);
    Ok(report)
}

/// [`bench_encode`] on an already loaded task (no loading time reported).
pub fn bench_prepared<B: Backend>(data: &TaskData, tokenizer: &Tokenizer, n: usize, device: &B::Device) -> Result<serde_json::Value, DataError> {
    let spec = &data.spec;

    let pool: Vec<&Example> = Split::ALL.iter().flat_map(|&s| data.split(s)).collect();
    if pool.is_empty() {
        return Err(DataError::spec(&spec.name, "no examples to benchmark"));
    }
    let examples: Vec<Example> = pool.iter().cycle().take(n).map(|&e| e.clone()).collect();

    let encoder = Encoder::new(tokenizer, spec, EncodeConfig { max_len: 4096, ..EncodeConfig::default() });
    // Warm-up (template compilation, tokenizer caches), then the timed run.
    encoder.encode_all(&examples[..examples.len().min(32)])?;
    // Rendering alone (chat template or plain), to separate it from tokenization.
    let start = Instant::now();
    for ex in &examples {
        encoder.prompt_text(ex)?;
    }
    let render_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (encoded, stats) = encoder.encode_all(&examples)?;
    let encode_s = start.elapsed().as_secs_f64();
    let tokens = stats.prompt_tokens + stats.response_tokens;

    let dataset = EncodedDataset::new(encoded);
    let lengths = dataset.lengths();
    let plan = BatchPlan::new(16, spec.split.seed);
    let start = Instant::now();
    let batches = plan.epoch(&lengths, 0);
    let plan_s = start.elapsed().as_secs_f64();
    let unbucketed = BatchPlan { bucket_batches: 1, ..plan.clone() }.epoch(&lengths, 0);

    let batcher = TrainBatcher::new(tokenizer.pad_id());
    let start = Instant::now();
    let mut rows = 0;
    for idx in &batches {
        let batch: crate::batch::TrainBatch<B> = batcher.batch(dataset.gather(idx), device);
        rows += batch.prompt_lens.len();
    }
    let _ = B::sync(device);
    let batch_s = start.elapsed().as_secs_f64();

    let rate = |count: usize, secs: f64| if secs > 0.0 { count as f64 / secs } else { f64::INFINITY };
    Ok(json!({
        "task": spec.name,
        "examples": n,
        "encode": {
            "seconds": encode_s,
            "render_prompts_s": render_s,
            "examples_per_s": rate(n, encode_s),
            "tokens_per_s": rate(tokens, encode_s),
            "mean_tokens": tokens as f64 / stats.kept.max(1) as f64,
            "longest": stats.longest,
            "chat_template": spec.use_chat_template,
        },
        "batch": {
            "batch_size": plan.batch_size,
            "batches": batches.len(),
            "rows": rows,
            "plan_s": plan_s,
            "build_s": batch_s,
            "batches_per_s": rate(batches.len(), batch_s),
            "padding_fraction_bucketed": padding_fraction(&lengths, &batches),
            "padding_fraction_unbucketed": padding_fraction(&lengths, &unbucketed),
        },
    }))
}
