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
/// With a `tuned` hook (a named adapter: `iapt`, `lora`, ...), each batch size is also run with
/// it, interleaved with the bare runs so machine noise hits both alike, and the decode-speed and
/// prefill-time ratios to the bare model are reported.
///
/// It first measures this machine's memory read bandwidth: one decode step reads every weight,
/// so `bandwidth / bytes of weights` bounds decode steps/s, and each row reports the bound and
/// the fraction of it reached. With `profile`, each row also splits prefill and a decode step
/// into kinds of work ([`iapt_model::profile::Part`]).
#[allow(clippy::too_many_arguments)]
pub fn bench_generate<B: Backend>(
    loaded: &LoadedModel<B>,
    prompt_len: usize,
    new_tokens: usize,
    batches: &[usize],
    repeats: usize,
    tuned: Option<(&str, &dyn ModelHook<B>)>,
    profile: bool,
) -> Result<Value> {
    let vocab = loaded.model.config().vocab_size;
    let bandwidth = iapt_kernels::bandwidth::read_bandwidth(1 << 30, 5);
    let weight_bytes = 4 * loaded.model.config().weights_read_per_step();
    let steps_bound = bandwidth / weight_bytes as f64;
    iapt_model::profile::enable(profile);
    // No stop tokens: every run decodes exactly `new_tokens` steps.
    let config = GenerationConfig { max_new_tokens: new_tokens, sampling: SamplingConfig::default(), stop_tokens: vec![] };
    let mut results = Vec::new();
    for &batch in batches {
        let mut hooks: Vec<(&str, &dyn ModelHook<B>)> = vec![("bare", &NoHook)];
        hooks.extend(tuned);
        let mut row = serde_json::Map::new();
        row.insert("batch".into(), json!(batch));
        row.insert("prompt_tokens".into(), json!(prompt_len));
        row.insert("new_tokens".into(), json!(new_tokens));
        row.insert("repeats".into(), json!(repeats));
        let mut totals = vec![(0.0f64, 0.0f64, 0usize); hooks.len()];
        let mut parts = vec![(PartTotals::default(), PartTotals::default()); hooks.len()];
        for (_, hook) in &hooks {
            let _warmup = generate(&loaded.model, &prompts(vocab, batch, prompt_len, 0), 0, &config, *hook);
        }
        for rep in 0..repeats {
            for (i, (_, hook)) in hooks.iter().enumerate() {
                let out = generate(&loaded.model, &prompts(vocab, batch, prompt_len, rep + 1), 0, &config, *hook);
                totals[i].0 += out.prefill_seconds;
                totals[i].1 += out.decode_seconds;
                totals[i].2 += out.decode_steps;
                if let Some((prefill, decode)) = out.parts {
                    parts[i].0.add(&prefill, out.prefill_seconds);
                    parts[i].1.add(&decode, out.decode_seconds);
                }
            }
        }
        for (((name, _), (prefill_s, decode_s, steps)), (prefill_parts, decode_parts)) in hooks.iter().zip(&totals).zip(&parts) {
            let decode_steps_per_s = *steps as f64 / decode_s;
            let mut report = json!({
                "prefill_tokens_per_s": (batch * prompt_len * repeats) as f64 / prefill_s,
                "decode_tokens_per_s": (batch * steps) as f64 / decode_s,
                "prefill_ms": 1000.0 * prefill_s / repeats as f64,
                "decode_ms_per_step": 1000.0 * decode_s / (*steps).max(1) as f64,
                "decode_fraction_of_bandwidth_bound": decode_steps_per_s / steps_bound,
            });
            if profile {
                report["profile"] = json!({
                    "prefill_ms": prefill_parts.report(repeats as f64),
                    "decode_ms_per_step": decode_parts.report((*steps).max(1) as f64),
                });
            }
            row.insert(name.to_string(), report);
        }
        row.insert("decode_bandwidth_bound_tokens_per_s".into(), json!(batch as f64 * steps_bound));
        if totals.len() == 2 {
            let rate = |t: &(f64, f64, usize)| t.2 as f64 / t.1;
            row.insert("tuned_decode_speed_vs_bare".into(), json!(rate(&totals[1]) / rate(&totals[0])));
            row.insert("tuned_prefill_time_vs_bare".into(), json!(totals[1].0 / totals[0].0));
        }
        results.push(Value::Object(row));
    }
    iapt_model::profile::enable(false);
    Ok(json!({
        "bench": "generate",
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernels": iapt_kernels::accelerated::<B>(),
        "read_bandwidth_gb_per_s": bandwidth / 1e9,
        "weight_bytes_per_decode_step": weight_bytes,
        "results": results,
    }))
}

/// Seconds per kind of work summed over runs, and the runs' whole time.
#[derive(Default, Clone)]
struct PartTotals {
    seconds: [f64; iapt_model::profile::PARTS],
    total: f64,
}

impl PartTotals {
    fn add(&mut self, parts: &iapt_model::generate::PartSeconds, total: f64) {
        for (sum, (_, s)) in self.seconds.iter_mut().zip(parts) {
            *sum += s;
        }
        self.total += total;
    }

    /// Milliseconds per `per` (runs or steps) of each part, and of everything else.
    fn report(&self, per: f64) -> Value {
        let mut out = serde_json::Map::new();
        for (part, s) in iapt_model::profile::Part::ALL.iter().zip(self.seconds) {
            out.insert(part.name().into(), json!(1000.0 * s / per));
        }
        out.insert("other".into(), json!(1000.0 * (self.total - self.seconds.iter().sum::<f64>()) / per));
        Value::Object(out)
    }
}

/// `iapt bench train`: a tuner's training throughput on the real backbone, split into forward,
/// backward and optimiser time, next to an inference-only forward of the same batch.
///
/// Every step is one batch of `batch` sequences of `prompt_len` instruction tokens and
/// `response_len` response tokens (a classification-style example); one warm-up step first.
#[allow(clippy::too_many_arguments)]
pub fn bench_train<B: Backend>(
    model_path: &std::path::Path,
    device: &B::Device,
    config: &iapt_tuners::TunerConfig,
    batch: usize,
    prompt_len: usize,
    response_len: usize,
    steps: usize,
    profile: bool,
) -> Result<Value> {
    use burn::backend::Autodiff;
    use burn::module::{AutodiffModule, Module};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::tensor::ElementConversion;
    use iapt_train::{monitor::StepMonitor, optim::GroupedAdamWConfig, LmBatch, LmExample, TunedLm};
    use std::time::Instant;

    let backbone = iapt_model::load_llama::<Autodiff<B>>(model_path, device)?;
    let base = backbone.config().clone();
    let tuner = config.init_from_backbone(&backbone);
    let trainable = tuner.num_params();
    let mut model = TunedLm::new(backbone, tuner);
    let mut optimizer = GroupedAdamWConfig { max_grad_norm: Some(1.0), small_lr_ratio: 1.0 / 30.0, ..Default::default() }
        .init::<Autodiff<B>, TunedLm<Autodiff<B>, iapt_tuners::Tuner<Autodiff<B>>>>(StepMonitor::default());
    let len = prompt_len + response_len;
    let examples = |salt: usize| -> Vec<LmExample> {
        prompts(base.vocab_size, batch, len, salt)
            .into_iter()
            .map(|ids| LmExample::new(ids, prompt_len).expect("prompt and response are non-empty"))
            .collect()
    };

    let (mut forward, mut backward, mut step, mut inference) = (0.0, 0.0, 0.0, 0.0);
    let mut forward_parts = PartTotals::default();
    iapt_model::profile::enable(profile);
    for i in 0..=steps {
        let _ = iapt_model::profile::take();
        let start = Instant::now();
        let output = model.forward_loss(LmBatch::<Autodiff<B>>::from_examples(&examples(i), 0, device));
        let _loss: f64 = output.loss.clone().into_scalar().elem(); // waits for the forward pass
        let t_forward = start.elapsed().as_secs_f64();
        if i > 0 {
            forward_parts.add(&iapt_model::profile::take(), t_forward);
        }
        let start = Instant::now();
        let grads = GradientsParams::from_grads(output.loss.backward(), &model);
        let t_backward = start.elapsed().as_secs_f64();
        let start = Instant::now();
        model = optimizer.step(1e-4, model, grads);
        B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?; // GPU backends queue work
        let t_step = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let valid = model.valid();
        let eval_batch = LmBatch::<B>::from_examples(&examples(i + 10_000), 0, device);
        let _eval: f64 = valid.forward_loss(eval_batch).loss.into_scalar().elem();
        let t_inference = start.elapsed().as_secs_f64();
        if i > 0 {
            forward += t_forward;
            backward += t_backward;
            step += t_step;
            inference += t_inference;
        }
    }
    iapt_model::profile::enable(false);
    let n = steps.max(1) as f64;
    let total = forward + backward + step;
    let tokens = (batch * len * steps) as f64;
    let mut report = json!({
        "bench": "train",
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "tuner": config.name(),
        "tuner_config": config.to_json(),
        "trainable_params": trainable,
        "batch": batch,
        "prompt_tokens": prompt_len,
        "response_tokens": response_len,
        "steps": steps,
        "train_tokens_per_s": tokens / total,
        "ms_per_step": 1000.0 * total / n,
        "forward_ms": 1000.0 * forward / n,
        "backward_ms": 1000.0 * backward / n,
        "optimizer_ms": 1000.0 * step / n,
        "inference_forward_ms": 1000.0 * inference / n,
        "inference_tokens_per_s": tokens / inference,
        "kernels": iapt_kernels::accelerated::<Autodiff<B>>(),
    });
    if profile {
        // The backward pass runs inside burn's autodiff graph and is reported whole.
        report["profile"] = json!({ "forward_ms_per_step": forward_parts.report(n) });
    }
    Ok(report)
}
