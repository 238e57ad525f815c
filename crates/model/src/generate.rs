//! Batched generation with a KV cache: one prefill, then one token per step for every row.

use crate::batch::{Padding, TokenBatch};
use crate::cache::KvCache;
use crate::hook::ModelHook;
use crate::host_decode::HostDecoder;
use crate::sampling::{Sampler, SamplingConfig};
use crate::transformer::Llama;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use std::time::Instant;

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// A row stops after emitting any of these (the EOS token belongs here).
    pub stop_tokens: Vec<u32>,
}

/// New tokens per row, plus where the time went.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated ids of each row, stop token included when one was emitted.
    pub tokens: Vec<Vec<u32>>,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// Decode steps run (one token for every row per step).
    pub decode_steps: usize,
    /// Seconds by kind of work in prefill and in all decode steps, when [`crate::profile`] is on.
    pub parts: Option<(PartSeconds, PartSeconds)>,
}

/// Seconds spent in each [`crate::profile::Part`].
pub type PartSeconds = [(crate::profile::Part, f64); crate::profile::PARTS];

/// Generate continuations for `prompts` (each non-empty) in one batch. Prompts are left-padded
/// with `pad_id`; a row that stopped keeps being fed its stop token, and its output is cut there.
pub fn generate<B: Backend>(model: &Llama<B>, prompts: &[Vec<u32>], pad_id: u32, config: &GenerationConfig, hook: &dyn ModelHook<B>) -> Generation {
    let device = model.device();
    let rows = prompts.len();
    let mut sampler = Sampler::new(config.sampling.clone());
    let mut cache = KvCache::new(model.num_layers());
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); rows];
    let mut done = vec![false; rows];
    if rows == 0 || config.max_new_tokens == 0 {
        return Generation { tokens, prefill_seconds: 0.0, decode_seconds: 0.0, decode_steps: 0, parts: None };
    }

    let profiling = crate::profile::enabled();
    let _ = crate::profile::take();
    let start = Instant::now();
    let batch = TokenBatch::<B>::padded(prompts, pad_id, Padding::Left, &device);
    let hidden = model.forward(batch, &mut cache, hook);
    let mut next = pick(model, hidden, &mut sampler);
    let prefill_seconds = start.elapsed().as_secs_f64();
    let prefill_parts = crate::profile::take();

    let start = Instant::now();
    let mut steps = 0;
    let decoder = HostDecoder::new(model);
    loop {
        for (row, &t) in next.iter().enumerate() {
            if !done[row] {
                tokens[row].push(t);
                done[row] = config.stop_tokens.contains(&t) || tokens[row].len() >= config.max_new_tokens;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let ids = next.iter().map(|&t| t as i64).collect::<Vec<_>>();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, 1]), &device);
        let hidden = decoder.forward(TokenBatch::dense(ids), &mut cache, hook);
        next = pick(model, hidden, &mut sampler);
        steps += 1;
    }
    let decode_seconds = start.elapsed().as_secs_f64();
    let parts = profiling.then(|| (prefill_parts, crate::profile::take()));
    Generation { tokens, prefill_seconds, decode_seconds, decode_steps: steps, parts }
}

/// The hidden state of each row's last slot, `[b, 1, d]` (with left padding, its newest token).
fn last_position<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 3> {
    let t = hidden.dims()[1];
    hidden.narrow(1, t - 1, 1)
}

/// Next-token logits of each row's last slot, on the host.
pub struct NextLogits {
    values: Vec<f32>,
    vocab: usize,
}

impl NextLogits {
    /// The LM head over the last slot of every row of `hidden` (`[b, t, d]`).
    pub fn of<B: Backend>(model: &Llama<B>, hidden: Tensor<B, 3>) -> Self {
        let logits = model.logits(last_position(hidden));
        crate::profile::timed(crate::profile::Part::Sampling, || {
            let vocab = logits.dims()[2];
            // burn-ndarray's `into_data` walks a dynamic-rank array element by element (10 ms for
            // 8 x 49152 logits); the CPU backends' memory is read directly instead.
            let values = iapt_kernels::host::to_vec(&logits).unwrap_or_else(|| logits.into_data().convert::<f32>().to_vec().expect("f32 logits"));
            Self { values, vocab }
        })
    }

    /// Row `row`'s logits over the vocabulary.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.values[row * self.vocab..(row + 1) * self.vocab]
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.vocab.max(1)
    }
}

/// Sample one token per row from the last slot of `[b, t, d]` hidden states.
fn pick<B: Backend>(model: &Llama<B>, hidden: Tensor<B, 3>, sampler: &mut Sampler) -> Vec<u32> {
    let logits = NextLogits::of(model, hidden);
    crate::profile::timed(crate::profile::Part::Sampling, || (0..logits.rows()).map(|row| sampler.sample(logits.row(row))).collect())
}
