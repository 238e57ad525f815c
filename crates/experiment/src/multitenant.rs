//! `iapt bench multitenant`: decode speed of one batch whose rows belong to different tenants,
//! each with its own adapter, against the number of distinct adapters in the batch — IAPT,
//! whose work happens once at each row's prefill, beside unmerged LoRA, which pays at every
//! step, and the bare model.
//!
//! Each measurement queues all rows before the engine starts, so they are prefilled (each alone,
//! with its adapter) and then decoded together for every step: decode tokens/s is rows × steps ÷
//! the decode steps' time, and prefill cost per row is the prefill time ÷ rows.

use crate::bench::{prompts, threads};
use crate::compare::size_to_budget;
use crate::model_source::LoadedModel;
use crate::plot::{Chart, Level, Panel, Series};
use anyhow::{anyhow, Result};
use burn::tensor::backend::Backend;
use iapt_engine::{Engine, EngineOptions, Request};
use iapt_model::{Llama, Projection, SamplingConfig};
use iapt_tuners::{IaptConfig, LoraConfig, TunerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to measure.
#[derive(Debug, Clone)]
pub struct MultitenantShape {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Rows per batch.
    pub batches: Vec<usize>,
    /// Distinct adapters per batch (values above a batch size are skipped for it).
    pub distinct: Vec<usize>,
    pub repeats: usize,
}

/// The output of `iapt bench multitenant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultitenantBench {
    /// `"multitenant"`.
    pub bench: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    pub methods: Vec<MethodSize>,
    pub rows: Vec<MultitenantRow>,
}

/// A method measured, and what one adapter of it costs in parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodSize {
    pub method: String,
    /// The tuner's config (`None` for the bare model).
    pub tuner: Option<serde_json::Value>,
    pub trainable_params: usize,
}

/// One method at one batch size and number of distinct adapters (medians over repeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultitenantRow {
    pub method: String,
    pub batch: usize,
    /// 0 for the bare model.
    pub distinct_adapters: usize,
    pub decode_tokens_per_s: f64,
    /// Decode tokens/s ÷ the bare model's at the same batch size.
    pub decode_vs_bare: f64,
    pub prefill_ms_per_row: f64,
}

impl MultitenantBench {
    /// The results as a chart: one panel per batch size, decode tokens/s against distinct
    /// adapters (log axis), a line per method, the bare model as a dashed level.
    pub fn chart(&self) -> Chart {
        let mut batches: Vec<usize> = self.rows.iter().map(|r| r.batch).collect();
        batches.sort_unstable();
        batches.dedup();
        let panels = batches
            .into_iter()
            .map(|batch| {
                let rows: Vec<&MultitenantRow> = self.rows.iter().filter(|r| r.batch == batch).collect();
                let mut series: Vec<Series> = Vec::new();
                let mut levels = Vec::new();
                for row in rows {
                    if row.distinct_adapters == 0 {
                        levels.push(Level { label: row.method.clone(), y: row.decode_tokens_per_s });
                        continue;
                    }
                    let point = (row.distinct_adapters as f64, row.decode_tokens_per_s);
                    match series.iter_mut().find(|s| s.label == row.method) {
                        Some(s) => s.points.push(point),
                        None => series.push(Series { label: row.method.clone(), points: vec![point], spread: Vec::new() }),
                    }
                }
                for s in &mut series {
                    s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                Panel { title: format!("batch of {batch} rows"), series, levels }
            })
            .collect();
        Chart {
            title: "Decode with a different adapter on every row".into(),
            subtitle: format!(
                "{} threads, {}-token prompts, {} new tokens, median of {} run(s)",
                self.threads,
                self.prompt_tokens,
                self.new_tokens,
                self.repeats.max(1)
            ),
            x_label: "distinct adapters in the batch".into(),
            y_label: "decode tokens/s".into(),
            x_log2: true,
            panels,
        }
    }
}

/// The methods the paper's serving claim compares: the bare model, IAPT (`iapt`), unmerged LoRA
/// on the default targets sized to IAPT's parameter count, and LoRA r8 on all 7 projections.
pub fn default_methods(base: &iapt_model::LlamaConfig, iapt: IaptConfig) -> Vec<(String, Option<TunerConfig>)> {
    let iapt = TunerConfig::Iapt(iapt);
    let same = size_to_budget(&TunerConfig::Lora(LoraConfig::new()), base, iapt.num_params(base));
    let all7 = TunerConfig::Lora(LoraConfig::new().with_rank(8).with_targets(Projection::ALL.to_vec()));
    vec![("bare".into(), None), ("iapt".into(), Some(iapt)), ("lora_same_params".into(), Some(same)), ("lora_r8_all7".into(), Some(all7))]
}

pub fn bench_multitenant<B: Backend>(loaded: &LoadedModel<B>, shape: &MultitenantShape, methods: &[(String, Option<TunerConfig>)]) -> Result<MultitenantBench> {
    let base = loaded.model.config();
    let scratch = std::env::temp_dir().join(format!("iapt-bench-multitenant-{}", std::process::id()));
    let most = shape.distinct.iter().copied().max().unwrap_or(1).max(1);
    let mut sizes = Vec::new();
    let mut rows = Vec::new();
    let mut bare_speed = std::collections::BTreeMap::new();
    for (method, tuner) in methods {
        sizes.push(MethodSize {
            method: method.clone(),
            tuner: tuner.as_ref().map(TunerConfig::to_json),
            trainable_params: tuner.as_ref().map_or(0, |t| t.num_params(base)),
        });
        let adapters = match tuner {
            Some(config) => write_adapters(&loaded.model, config, most, &scratch.join(method))?,
            None => Vec::new(),
        };
        for &batch in &shape.batches {
            let counts: Vec<usize> = if tuner.is_none() { vec![0] } else { shape.distinct.iter().copied().filter(|&d| d >= 1 && d <= batch).collect() };
            for distinct in counts {
                let mut decode = Vec::new();
                let mut prefill = Vec::new();
                for repeat in 0..shape.repeats.max(1) {
                    let (d, p) = one_batch(loaded, &adapters[..distinct], batch, shape, repeat)?;
                    decode.push(d);
                    prefill.push(p);
                }
                let speed = median(&mut decode);
                if tuner.is_none() {
                    bare_speed.insert(batch, speed);
                }
                let bare = bare_speed.get(&batch).copied().unwrap_or(f64::NAN);
                eprintln!("{method:>18} batch {batch:>2}, {distinct:>2} distinct: decode {speed:7.1} tok/s ({:.2}x bare)", speed / bare);
                rows.push(MultitenantRow {
                    method: method.clone(),
                    batch,
                    distinct_adapters: distinct,
                    decode_tokens_per_s: speed,
                    decode_vs_bare: speed / bare,
                    prefill_ms_per_row: median(&mut prefill) * 1e3,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(MultitenantBench {
        bench: "multitenant".into(),
        threads: threads(),
        prompt_tokens: shape.prompt_tokens,
        new_tokens: shape.new_tokens,
        repeats: shape.repeats,
        methods: sizes,
        rows,
    })
}

/// `n` adapters of `config` with different random weights (LoRA's `B` moved off zero, so its
/// products are real work on real numbers), saved under `dir`.
fn write_adapters<B: Backend>(model: &Llama<B>, config: &TunerConfig, n: usize, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    (0..n)
        .map(|i| {
            B::seed(&model.device(), 1000 + i as u64);
            let tuner = config.init_from_backbone::<B>(model).map_err(|e| anyhow!("{e}"))?;
            let tuner = tuner.jittered(i as u64 + 1, 0.02, |name| name.ends_with("lora_b"));
            let path = dir.join(format!("tenant-{i}"));
            iapt_tuners::save_tuner(&path, &tuner, "bench")?;
            Ok((format!("tenant-{i}"), path))
        })
        .collect()
}

/// One batch: `batch` rows over `adapters` (row r gets adapter r mod n; none when empty), all
/// queued before the engine starts. Returns decode tokens/s and prefill seconds per row.
fn one_batch<B: Backend>(loaded: &LoadedModel<B>, adapters: &[(String, PathBuf)], batch: usize, shape: &MultitenantShape, salt: usize) -> Result<(f64, f64)> {
    let options = EngineOptions { max_batch: batch, max_waiting: batch, max_resident_adapters: adapters.len().max(1) };
    let (handle, mut engine_loop) = Engine::prepare(loaded.model.clone(), Box::new(loaded.tokenizer.clone()), loaded.tokenizer.pad_id(), options);
    for (name, dir) in adapters {
        engine_loop.register_adapter(name, dir.clone()).map_err(|e| anyhow!("adapter {}: {e}", dir.display()))?;
    }
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (r, prompt) in prompts(loaded.model.config().vocab_size, batch, shape.prompt_tokens, salt).into_iter().enumerate() {
        let adapter = (!adapters.is_empty()).then(|| adapters[r % adapters.len()].0.clone());
        let request = Request { prompt, adapter, sampling: SamplingConfig::default(), max_tokens: shape.new_tokens, stop_tokens: vec![], stop_strings: vec![] };
        let done = finished.clone();
        handle
            .submit(
                request,
                Box::new(move |event| {
                    if matches!(event, iapt_engine::Event::Finished { .. }) {
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    true
                }),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    handle.shutdown();
    engine_loop.run();
    let stats = handle.stats();
    if finished.load(std::sync::atomic::Ordering::SeqCst) != batch || stats.decode_steps == 0 {
        anyhow::bail!("the benchmark batch did not finish as planned: {stats:?}");
    }
    Ok((stats.decode_steps as f64 * batch as f64 / stats.decode_seconds, stats.prefill_seconds / stats.prefills as f64))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
