//! `iapt bench generate` (prefill and decode throughput, warmed up, at several batch sizes) and
//! `iapt bench train` (a tuner's training step, split into its parts), with typed reports.

use anyhow::Result;
use burn::tensor::backend::Backend;
use iapt_model::{generate, GenerationConfig, Llama, ModelHook, NoHook, SamplingConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The output of `iapt bench generate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateBench {
    /// `"generate"`.
    pub bench: String,
    pub threads: usize,
    /// Whether the frozen products ran on `iapt-kernels`.
    pub kernels: bool,
    /// Read once at start (best of 5 passes over 1 GiB); each row's bound uses the readings
    /// taken beside its own repeats ([`GenerateRow::read_bandwidth_gb_per_s`]).
    pub read_bandwidth_gb_per_s: f64,
    pub weight_bytes_per_decode_step: usize,
    pub results: Vec<GenerateRow>,
}

/// One batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRow {
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub repeats: usize,
    /// Each model measured, by name: `bare`, and the adapter's tuner tag when there is one.
    #[serde(flatten)]
    pub models: BTreeMap<String, GenerateSpeed>,
    /// The memory's read bandwidth before the first repeat and after each one (best of
    /// [`PROBE_PASSES`] passes each): repeat `r` ran between readings `r` and `r + 1`.
    #[serde(default)]
    pub read_bandwidth_gb_per_s: Vec<f64>,
    /// The batch-1 bound times the batch: the mean of the repeats' bounds (each from the two
    /// readings beside its repeat).
    pub decode_bandwidth_bound_tokens_per_s: f64,
    /// Beside the same readings, the speed of streaming the matrices a decode step reads where
    /// they lie (one pool job summing all of them, matrix by matrix; on the CPU backends whose
    /// tensors are read in place): the bound for these weights in their own memory, streamed as
    /// decoding streams them, which on a virtual machine can differ from a fresh buffer's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights_read_gb_per_s: Vec<f64>,
    /// With an adapter: its decode steps/s ÷ the bare model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_decode_speed_vs_bare: Option<f64>,
    /// With an adapter: its prefill time ÷ the bare model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_prefill_time_vs_bare: Option<f64>,
}

/// One model at one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSpeed {
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    pub prefill_ms: f64,
    pub decode_ms_per_step: f64,
    /// Decode steps run ÷ the steps the bound allows in the same time, each repeat's time
    /// weighed by the bound read beside it (the mean of the readings before and after).
    pub decode_fraction_of_bandwidth_bound: f64,
    /// The same against [`GenerateRow::weights_read_gb_per_s`]: decode steps ÷ the passes over
    /// the matrices that streaming them alone makes in the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_fraction_of_weights_read: Option<f64>,
    /// With `--profile`: milliseconds per kind of work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<GenerateProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateProfile {
    pub prefill_ms: BTreeMap<String, f64>,
    pub decode_ms_per_step: BTreeMap<String, f64>,
}

/// Fresh prompts of `len` tokens per row (ids drawn from the ordinary-token range, different
/// per row and per call so no cache of any kind can flatter the numbers). A real vocabulary
/// keeps special and rare tokens at its ends, so its first and last 1000 ids are avoided; a tiny
/// test vocabulary uses every id but 0.
pub(crate) fn prompts(vocab: usize, rows: usize, len: usize, salt: usize) -> Vec<Vec<u32>> {
    let (low, span) = if vocab > 4000 { (1000, vocab - 2000) } else { (1, vocab - 1) };
    (0..rows).map(|r| (0..len).map(|i| (low + (r * 7919 + i * 104_729 + salt * 15_485_863) % span) as u32).collect()).collect()
}

/// Measure prefill tokens/s and decode tokens/s; one warm-up run per batch size first.
/// With a `tuned` hook (a named adapter: `iapt`, `lora`, ...), each batch size is also run with
/// it, interleaved with the bare runs so machine noise hits both alike, and the decode-speed and
/// prefill-time ratios to the bare model are reported.
///
/// It measures this machine's memory read bandwidth, at start and between repeats: one decode
/// step reads every weight, so `bandwidth / bytes of weights` bounds decode steps/s, and each row
/// reports the bound and the fraction of it reached, against the readings beside its repeats
/// (the hosts this is measured on move their bandwidth by half within minutes). With
/// `profile`, each row also splits prefill and a decode step into kinds of work
/// ([`iapt_model::profile::Part`]).
#[allow(clippy::too_many_arguments)]
pub fn bench_generate<B: Backend>(
    model: &Llama<B>,
    prompt_len: usize,
    new_tokens: usize,
    batches: &[usize],
    repeats: usize,
    tuned: Option<(&str, &dyn ModelHook<B>)>,
    profile: bool,
) -> Result<GenerateBench> {
    anyhow::ensure!(repeats > 0, "bench generate: --repeats must be at least 1 (it was 0)");
    let vocab = model.config().vocab_size;
    let probe = iapt_kernels::bandwidth::BandwidthProbe::new(1 << 30);
    let bandwidth = probe.read(5);
    let matrices = model.decode_matrices();
    let weights_probe = iapt_kernels::bandwidth::MatrixProbe::new(&matrices);
    // Both readings beside a repeat: the weights first, so the probe's 1 GiB then leaves none of
    // them in cache for the next run.
    let read = |weights: &mut Vec<f64>, readings: &mut Vec<f64>| {
        weights.extend(weights_probe.as_ref().map(|w| w.read(PROBE_PASSES)));
        readings.push(probe.read(PROBE_PASSES));
    };
    // Bytes per weight as stored (f32, or half precision with `--dtype`).
    let weight_bytes = model.projection(0, iapt_model::Projection::Q).weight.val().dtype().size() * model.config().weights_read_per_step();
    iapt_model::profile::enable(profile);
    // No stop tokens: every run decodes exactly `new_tokens` steps.
    let config = GenerationConfig { max_new_tokens: new_tokens, sampling: SamplingConfig::default(), stop_tokens: vec![] };
    let mut results = Vec::new();
    for &batch in batches {
        let mut hooks: Vec<(&str, &dyn ModelHook<B>)> = vec![("bare", &NoHook)];
        hooks.extend(tuned);
        let mut totals = vec![(0.0f64, 0.0f64, 0usize); hooks.len()];
        let mut parts = vec![(PartTotals::default(), PartTotals::default()); hooks.len()];
        // Per model, the decode seconds of each repeat (weighed below by the bound read beside it).
        let mut decode_seconds = vec![Vec::with_capacity(repeats); hooks.len()];
        for (_, hook) in &hooks {
            let _warmup = generate(model, &prompts(vocab, batch, prompt_len, 0), 0, &config, *hook);
        }
        let (mut readings, mut weights_readings) = (Vec::new(), Vec::new());
        read(&mut weights_readings, &mut readings);
        for rep in 0..repeats {
            for (i, (_, hook)) in hooks.iter().enumerate() {
                let out = generate(model, &prompts(vocab, batch, prompt_len, rep + 1), 0, &config, *hook);
                totals[i].0 += out.prefill_seconds;
                totals[i].1 += out.decode_seconds;
                totals[i].2 += out.decode_steps;
                decode_seconds[i].push(out.decode_seconds);
                if let Some((prefill, decode)) = out.parts {
                    parts[i].0.add(&prefill, out.prefill_seconds);
                    parts[i].1.add(&decode, out.decode_seconds);
                }
            }
            read(&mut weights_readings, &mut readings);
        }
        let bounds = steps_bounds(&readings, weight_bytes);
        let weights_bounds = weights_probe.as_ref().map(|w| steps_bounds(&weights_readings, w.bytes()));
        // Steps run ÷ the steps `bounds` allow in each repeat's seconds.
        let fraction = |steps: usize, seconds: &[f64], bounds: &[f64]| steps as f64 / seconds.iter().zip(bounds).map(|(s, bound)| s * bound).sum::<f64>();
        let mut models = BTreeMap::new();
        for ((((name, _), (prefill_s, decode_s, steps)), (prefill_parts, decode_parts)), seconds) in hooks.iter().zip(&totals).zip(&parts).zip(&decode_seconds)
        {
            let speed = GenerateSpeed {
                prefill_tokens_per_s: (batch * prompt_len * repeats) as f64 / prefill_s,
                decode_tokens_per_s: (batch * steps) as f64 / decode_s,
                prefill_ms: 1000.0 * prefill_s / repeats as f64,
                decode_ms_per_step: 1000.0 * decode_s / (*steps).max(1) as f64,
                decode_fraction_of_bandwidth_bound: fraction(*steps, seconds, &bounds),
                decode_fraction_of_weights_read: weights_bounds.as_ref().map(|b| fraction(*steps, seconds, b)),
                profile: profile.then(|| GenerateProfile {
                    prefill_ms: prefill_parts.report(repeats as f64),
                    decode_ms_per_step: decode_parts.report((*steps).max(1) as f64),
                }),
            };
            models.insert(name.to_string(), speed);
        }
        let rate = |t: &(f64, f64, usize)| t.2 as f64 / t.1;
        let tuned = (totals.len() == 2).then_some(());
        results.push(GenerateRow {
            batch,
            prompt_tokens: prompt_len,
            new_tokens,
            repeats,
            models,
            read_bandwidth_gb_per_s: readings.iter().map(|r| r / 1e9).collect(),
            decode_bandwidth_bound_tokens_per_s: batch as f64 * bounds.iter().sum::<f64>() / bounds.len().max(1) as f64,
            weights_read_gb_per_s: weights_readings.iter().map(|r| r / 1e9).collect(),
            tuned_decode_speed_vs_bare: tuned.map(|_| rate(&totals[1]) / rate(&totals[0])),
            tuned_prefill_time_vs_bare: tuned.map(|_| totals[1].0 / totals[0].0),
        });
    }
    iapt_model::profile::enable(false);
    Ok(GenerateBench {
        bench: "generate".into(),
        threads: threads(),
        kernels: iapt_kernels::accelerated::<B>(),
        read_bandwidth_gb_per_s: bandwidth / 1e9,
        weight_bytes_per_decode_step: weight_bytes,
        results,
    })
}

/// Batch-1 decode steps/s the bandwidth allowed during each repeat: repeat `r` ran between
/// `readings[r]` and `readings[r + 1]` (bytes/s), so its bound is their mean ÷ the bytes a step reads.
fn steps_bounds(readings: &[f64], weight_bytes: usize) -> Vec<f64> {
    readings.windows(2).map(|w| (w[0] + w[1]) / 2.0 / weight_bytes as f64).collect()
}

/// Passes per reading beside the repeats (best of them), over the probe's 1 GiB (~0.1 s) and
/// over the model's matrices (each pass as long as a batch-1 decode step, at best).
const PROBE_PASSES: usize = 3;

pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Seconds per kind of work summed over runs, and the runs' whole time.
#[derive(Default, Clone)]
struct PartTotals {
    seconds: [f64; iapt_model::profile::PARTS],
    total: f64,
}

impl PartTotals {
    fn add(&mut self, parts: &iapt_model::PartSeconds, total: f64) {
        for (sum, (_, s)) in self.seconds.iter_mut().zip(parts) {
            *sum += s;
        }
        self.total += total;
    }

    /// Milliseconds per `per` (runs or steps) of each part, and of everything else.
    fn report(&self, per: f64) -> BTreeMap<String, f64> {
        let mut out: BTreeMap<String, f64> =
            iapt_model::profile::Part::ALL.iter().zip(self.seconds).map(|(part, s)| (part.name().to_string(), 1000.0 * s / per)).collect();
        out.insert("other".into(), 1000.0 * (self.total - self.seconds.iter().sum::<f64>()) / per);
        out
    }
}

/// `iapt bench train`: a tuner's training throughput on the real backbone, split into forward,
/// backward and optimiser time, next to an inference-only forward of the same batch.
///
/// Every step is one batch of `batch` sequences of `prompt_len` instruction tokens and
/// `response_len` response tokens (a classification-style example); one warm-up step first.
pub fn bench_train<B: Backend>(backbone: Llama<burn::backend::Autodiff<B>>, config: &iapt_tuners::TunerConfig, shape: &TrainShape) -> Result<TrainBench> {
    let TrainShape { batch, prompt_len, response_len, steps, profile } = *shape;
    let device = &backbone.device();
    use burn::backend::Autodiff;
    use burn::module::{AutodiffModule, Module};
    use burn::optim::{GradientsParams, Optimizer};
    use burn::tensor::ElementConversion;
    use iapt_train::{optim::GroupedAdamWConfig, LmBatch, LmExample, StepMonitor, TunedLm};
    use std::time::Instant;

    let base = backbone.config().clone();
    let tuner = config.init_from_backbone(&backbone).map_err(|e| anyhow::anyhow!("tuner ({}): {e}", config.name()))?;
    let trainable = tuner.num_params();
    let mut model = TunedLm::new(backbone, tuner);
    let mut optimizer = GroupedAdamWConfig { max_grad_norm: Some(1.0), small_lr_ratio: 1.0 / 30.0, ..Default::default() }
        .init::<Autodiff<B>, TunedLm<Autodiff<B>, iapt_tuners::Tuner<Autodiff<B>>>>(StepMonitor::default());
    let len = prompt_len + response_len;
    let examples = |salt: usize| -> Vec<LmExample> {
        prompts(base.vocab_size, batch, len, salt).into_iter().map(|ids| LmExample::new(ids, prompt_len).expect("prompt and response are non-empty")).collect()
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
    Ok(TrainBench {
        bench: "train".into(),
        threads: threads(),
        tuner: config.name().into(),
        tuner_config: config.to_json(),
        trainable_params: trainable,
        batch,
        prompt_tokens: prompt_len,
        response_tokens: response_len,
        steps,
        train_tokens_per_s: tokens / total,
        ms_per_step: 1000.0 * total / n,
        forward_ms: 1000.0 * forward / n,
        backward_ms: 1000.0 * backward / n,
        optimizer_ms: 1000.0 * step / n,
        inference_forward_ms: 1000.0 * inference / n,
        inference_tokens_per_s: tokens / inference,
        kernels: iapt_kernels::accelerated::<Autodiff<B>>(),
        // The backward pass runs inside burn's autodiff graph and is reported whole.
        profile: profile.then(|| TrainProfile { forward_ms_per_step: forward_parts.report(n) }),
    })
}

/// What `iapt bench train` measures: `steps` batches of `batch` sequences of `prompt_len`
/// instruction and `response_len` response tokens.
#[derive(Debug, Clone, Copy)]
pub struct TrainShape {
    pub batch: usize,
    pub prompt_len: usize,
    pub response_len: usize,
    pub steps: usize,
    /// Split the forward pass by kind of work.
    pub profile: bool,
}

/// The output of `iapt bench train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainBench {
    /// `"train"`.
    pub bench: String,
    pub threads: usize,
    pub tuner: String,
    pub tuner_config: serde_json::Value,
    pub trainable_params: usize,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub response_tokens: usize,
    pub steps: usize,
    pub train_tokens_per_s: f64,
    pub ms_per_step: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub inference_forward_ms: f64,
    pub inference_tokens_per_s: f64,
    pub kernels: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<TrainProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainProfile {
    pub forward_ms_per_step: BTreeMap<String, f64>,
}

/// `iapt bench data`: time loading `spec` (through the cache, so a first run includes the
/// download), encoding `n` examples (the task's examples repeated as needed), ordering them
/// into length-grouped batches of 16 as training does ([`iapt_train::loader::EpochLoader`]) and
/// building those batches as tensors on `device`.
pub fn bench_data<B: Backend>(spec: &iapt_data::TaskSpec, tokenizer: &iapt_model::Tokenizer, n: usize, device: &B::Device) -> Result<DataBench> {
    use iapt_data::{EncodeConfig, Encoder, Example, Split};
    use iapt_train::loader::EpochLoader;
    use iapt_train::{LmBatch, LmBatcher};
    use std::time::Instant;

    let start = Instant::now();
    let data = iapt_data::load_task(spec)?;
    let load_task_s = start.elapsed().as_secs_f64();
    let pool: Vec<&Example> = Split::ALL.iter().flat_map(|&s| data.split(s)).collect();
    if pool.is_empty() {
        anyhow::bail!("task {}: no examples to benchmark", spec.name);
    }
    let examples: Vec<Example> = pool.iter().cycle().take(n).map(|&e| e.clone()).collect();

    let encoder = Encoder::new(tokenizer, &data.spec, EncodeConfig { max_len: 4096, ..EncodeConfig::default() });
    // Warm-up (template compilation, tokenizer caches), then the timed runs.
    encoder.encode_all(&examples[..examples.len().min(32)])?;
    let start = Instant::now();
    for example in &examples {
        encoder.prompt_text(example)?;
    }
    let render_prompts_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (encoded, stats) = encoder.encode_all(&examples)?;
    let encode_s = start.elapsed().as_secs_f64();
    let tokens = stats.prompt_tokens + stats.response_tokens;

    let lm = crate::task::lm_examples(&encoded)?;
    let lengths: Vec<usize> = lm.iter().map(|e| e.ids.len()).collect();
    let dataset: std::sync::Arc<dyn burn::data::dataset::Dataset<iapt_train::LmExample>> =
        std::sync::Arc::new(burn::data::dataset::InMemDataset::new(lm.clone()));
    // Training's order: shuffled, classes balanced (the default), grouped by length or not.
    let loader = |grouped: bool| {
        EpochLoader::<B>::new(dataset.clone(), DATA_BATCH, LmBatcher { pad_id: tokenizer.pad_id() }, device.clone(), Some(data.spec.split.seed), 0)
            .with_length_grouping(grouped)
            .with_class_balance(iapt_train::TrainConfig::default().balance_classes)
    };
    let start = Instant::now();
    let order = loader(true).order(0);
    let plan_s = start.elapsed().as_secs_f64();
    let batches: Vec<&[usize]> = order.chunks(DATA_BATCH).collect();
    let ungrouped = loader(false).order(0);

    let start = Instant::now();
    let mut rows = 0;
    for batch in &batches {
        let items: Vec<iapt_train::LmExample> = batch.iter().map(|&i| lm[i].clone()).collect();
        rows += LmBatch::<B>::from_examples(&items, tokenizer.pad_id(), device).ids.dims()[0];
    }
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let build_s = start.elapsed().as_secs_f64();

    let rate = |count: usize, secs: f64| if secs > 0.0 { count as f64 / secs } else { f64::INFINITY };
    Ok(DataBench {
        task: data.spec.name.clone(),
        examples: n,
        load_task_s,
        encode: EncodeBench {
            seconds: encode_s,
            render_prompts_s,
            examples_per_s: rate(n, encode_s),
            tokens_per_s: rate(tokens, encode_s),
            mean_tokens: tokens as f64 / stats.kept.max(1) as f64,
            longest: stats.longest,
            chat_template: data.spec.use_chat_template,
        },
        batch: BatchBench {
            batch_size: DATA_BATCH,
            batches: batches.len(),
            rows,
            plan_s,
            build_s,
            batches_per_s: rate(batches.len(), build_s),
            padding_fraction_bucketed: padding_fraction(&lengths, &order),
            padding_fraction_unbucketed: padding_fraction(&lengths, &ungrouped),
        },
    })
}

/// Batch size of `iapt bench data`.
const DATA_BATCH: usize = 16;

/// Fraction of padded slots when `order` is cut into batches of [`DATA_BATCH`] (0 = none).
fn padding_fraction(lengths: &[usize], order: &[usize]) -> f64 {
    let (mut slots, mut used) = (0usize, 0usize);
    for batch in order.chunks(DATA_BATCH) {
        let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        slots += longest * batch.len();
        used += batch.iter().map(|&i| lengths[i]).sum::<usize>();
    }
    if slots == 0 {
        0.0
    } else {
        1.0 - used as f64 / slots as f64
    }
}

/// The output of `iapt bench data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataBench {
    pub task: String,
    pub examples: usize,
    pub load_task_s: f64,
    pub encode: EncodeBench,
    pub batch: BatchBench,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodeBench {
    pub seconds: f64,
    pub render_prompts_s: f64,
    pub examples_per_s: f64,
    pub tokens_per_s: f64,
    pub mean_tokens: f64,
    pub longest: usize,
    pub chat_template: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchBench {
    pub batch_size: usize,
    pub batches: usize,
    pub rows: usize,
    pub plan_s: f64,
    pub build_s: f64,
    pub batches_per_s: f64,
    /// With training's length grouping.
    pub padding_fraction_bucketed: f64,
    /// A plain shuffle.
    pub padding_fraction_unbucketed: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_fraction_counts_padded_slots() {
        // One batch of lengths 4 and 2: 8 slots, 6 used.
        assert!((padding_fraction(&[4, 2], &[0, 1]) - 0.25).abs() < 1e-12);
        assert_eq!(padding_fraction(&[3, 3, 3], &[2, 0, 1]), 0.0);
        assert_eq!(padding_fraction(&[], &[]), 0.0);
    }

    /// Each repeat's bound comes from the readings on either side of it: 100 bytes a step, read
    /// at 1000, 3000, 2000 bytes/s around two repeats, allow 20 and 25 steps/s.
    #[test]
    fn each_repeat_is_bounded_by_the_readings_beside_it() {
        assert_eq!(steps_bounds(&[1000.0, 3000.0, 2000.0], 100), vec![20.0, 25.0]);
        assert!(steps_bounds(&[1000.0], 100).is_empty());
    }

    /// `--model random:<preset>` runs the benchmarks on a random model of that shape; an
    /// unknown shape is refused naming the known ones.
    #[test]
    fn benchmarks_run_on_a_random_model_of_a_preset_shape() {
        use crate::model_source::load_bench_backbone;
        use crate::run_config::WeightDtype;
        type Cpu = burn::backend::NdArray<f32>;
        let device = Default::default();
        let backbone = load_bench_backbone::<burn::backend::Autodiff<Cpu>>("random:tiny", &device, WeightDtype::F32).unwrap();
        assert_eq!(backbone.config(), &iapt_model::LlamaConfig::tiny());
        let shape = TrainShape { batch: 2, prompt_len: 5, response_len: 2, steps: 2, profile: false };
        let report = bench_train::<Cpu>(backbone, &iapt_tuners::TunerConfig::Iapt(iapt_tuners::IaptConfig::new(8)), &shape).unwrap();
        assert_eq!((report.steps, report.batch), (2, 2));
        assert!(report.ms_per_step > 0.0 && report.trainable_params > 0);
        let model = load_bench_backbone::<Cpu>("random:tiny", &device, WeightDtype::F32).unwrap();
        let generated = bench_generate(&model, 4, 3, &[1, 2], 1, None, false).unwrap();
        assert_eq!(generated.results.len(), 2);
        let err = bench_generate(&model, 4, 3, &[1], 0, None, false).err().unwrap().to_string();
        assert!(err.contains("--repeats must be at least 1"), "{err}");
        for row in &generated.results {
            // A reading before the one repeat and one after it.
            assert_eq!(row.read_bandwidth_gb_per_s.len(), 2, "{row:?}");
            assert!(row.read_bandwidth_gb_per_s.iter().all(|&r| r > 0.0) && row.decode_bandwidth_bound_tokens_per_s > 0.0, "{row:?}");
            let fraction = row.models["bare"].decode_fraction_of_bandwidth_bound;
            assert!(fraction.is_finite() && fraction > 0.0, "{row:?}");
            // ndarray's weights are read in place, so the stream over them is measured too.
            assert!(row.weights_read_gb_per_s.len() == 2 && row.models["bare"].decode_fraction_of_weights_read.is_some_and(|f| f > 0.0), "{row:?}");
        }
        let err = load_bench_backbone::<Cpu>("random:llama9", &device, WeightDtype::F32).err().unwrap().to_string();
        assert!(err.contains("unknown shape `llama9`") && err.contains("llama2-7b"), "{err}");
        let err = load_bench_backbone::<Cpu>("random:tiny", &device, WeightDtype::Bf16).err().unwrap().to_string();
        assert!(err.contains("--dtype bf16"), "{err}");
    }
}
