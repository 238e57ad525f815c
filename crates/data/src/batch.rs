//! Encoded examples -> burn batches: right-padded training batches with instruction/loss masks
//! and shifted targets, left-padded generation batches, and a seeded length-bucketed batch order.
//!
//! Batch order ([`BatchPlan::epoch`]): shuffle example indices, cut them into chunks of
//! `batch_size * bucket_batches`, sort each chunk by length, cut chunks into batches, shuffle the
//! batches. Sequences in a batch then have similar lengths (little padding) while batches still
//! come in random order. The shuffles use SplitMix64 seeded from `(seed, epoch)`, so the order is
//! the same on every machine and platform.

use crate::encode::EncodedExample;
use crate::task::Answer;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use iapt_model::batch::pad_rows;
use iapt_model::{Padding, TokenBatch};

/// Encoded examples in memory, as a burn [`Dataset`].
#[derive(Debug, Clone, Default)]
pub struct EncodedDataset {
    items: Vec<EncodedExample>,
}

impl EncodedDataset {
    pub fn new(items: Vec<EncodedExample>) -> Self {
        Self { items }
    }
    pub fn items(&self) -> &[EncodedExample] {
        &self.items
    }
    /// Sequence length of every item (for bucketing).
    pub fn lengths(&self) -> Vec<usize> {
        self.items.iter().map(EncodedExample::len).collect()
    }
    /// The items at `indices`, cloned (a batch's worth).
    pub fn gather(&self, indices: &[usize]) -> Vec<EncodedExample> {
        indices.iter().map(|&i| self.items[i].clone()).collect()
    }
}

impl Dataset<EncodedExample> for EncodedDataset {
    fn get(&self, index: usize) -> Option<EncodedExample> {
        self.items.get(index).cloned()
    }
    fn len(&self) -> usize {
        self.items.len()
    }
}

/// A right-padded training batch for a next-token loss on response tokens.
///
/// Position `t` predicts `targets[t] = ids[t + 1]`; `loss_mask[t]` is true exactly when that
/// target is a response token (so it covers every response token, EOS included, and nothing
/// else). Summing the per-position loss over `loss_mask` and dividing by `loss_tokens` gives the
/// mean response-token NLL.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// `[batch, tokens]`
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, tokens]`, false on padding.
    pub valid: Tensor<B, 2, Bool>,
    /// `[batch, tokens]`, true on prompt tokens (what the IAPT pooler may read).
    pub instruction: Tensor<B, 2, Bool>,
    /// `[batch, tokens]`, `ids` shifted left by one; padding id where there is no next token.
    pub targets: Tensor<B, 2, Int>,
    /// `[batch, tokens]`, true where `targets` is a response token (the predicting positions).
    pub loss_mask: Tensor<B, 2, Bool>,
    /// `[batch, tokens]`, true on the response tokens themselves (EOS included): `loss_mask`
    /// shifted right by one. This is `iapt-train`'s `LmBatch::loss_mask` convention.
    pub response: Tensor<B, 2, Bool>,
    /// Number of true entries in `loss_mask` (and in `response`).
    pub loss_tokens: usize,
    /// Prompt length of each row (host side).
    pub prompt_lens: Vec<usize>,
    /// Example id of each row.
    pub example_ids: Vec<String>,
}

impl<B: Backend> TrainBatch<B> {
    /// The model's input view: ids, validity and instruction mask.
    pub fn tokens(&self) -> TokenBatch<B> {
        TokenBatch { ids: self.ids.clone(), valid: self.valid.clone(), instruction: Some(self.instruction.clone()) }
    }
}

/// Host-side arrays of a training batch (flattened `[rows, width]`), before they become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainArrays {
    pub shape: [usize; 2],
    pub ids: Vec<i64>,
    pub valid: Vec<bool>,
    pub instruction: Vec<bool>,
    pub targets: Vec<i64>,
    pub loss_mask: Vec<bool>,
    pub response: Vec<bool>,
}

/// Right-pad `items` and derive masks and targets.
pub fn train_arrays(items: &[EncodedExample], pad_id: u32) -> TrainArrays {
    let rows: Vec<Vec<u32>> = items.iter().map(|e| e.ids.clone()).collect();
    let (ids, valid, shape) = pad_rows(&rows, pad_id, Padding::Right);
    let width = shape[1];
    let mut instruction = Vec::with_capacity(ids.len());
    let mut targets = Vec::with_capacity(ids.len());
    let mut loss_mask = Vec::with_capacity(ids.len());
    let mut response = Vec::with_capacity(ids.len());
    for item in items {
        let len = item.len();
        for t in 0..width {
            instruction.push(t < item.prompt_len);
            response.push(t >= item.prompt_len && t < len);
            let next = t + 1;
            targets.push(if next < len { item.ids[next] as i64 } else { pad_id as i64 });
            loss_mask.push(next >= item.prompt_len && next < len);
        }
    }
    TrainArrays { shape, ids, valid, instruction, targets, loss_mask, response }
}

/// Builds [`TrainBatch`]es (burn [`Batcher`]).
#[derive(Debug, Clone, Copy)]
pub struct TrainBatcher {
    pub pad_id: u32,
}

impl TrainBatcher {
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }
}

impl<B: Backend> Batcher<B, EncodedExample, TrainBatch<B>> for TrainBatcher {
    fn batch(&self, items: Vec<EncodedExample>, device: &B::Device) -> TrainBatch<B> {
        let a = train_arrays(&items, self.pad_id);
        let loss_tokens = a.loss_mask.iter().filter(|&&m| m).count();
        TrainBatch {
            ids: Tensor::from_data(TensorData::new(a.ids, a.shape), device),
            valid: Tensor::from_data(TensorData::new(a.valid, a.shape), device),
            instruction: Tensor::from_data(TensorData::new(a.instruction, a.shape), device),
            targets: Tensor::from_data(TensorData::new(a.targets, a.shape), device),
            loss_mask: Tensor::from_data(TensorData::new(a.loss_mask, a.shape), device),
            response: Tensor::from_data(TensorData::new(a.response, a.shape), device),
            loss_tokens,
            prompt_lens: items.iter().map(|e| e.prompt_len).collect(),
            example_ids: items.into_iter().map(|e| e.id).collect(),
        }
    }
}

/// A left-padded batch of prompts for generation (every valid token is instruction).
#[derive(Debug, Clone)]
pub struct GenerationBatch<B: Backend> {
    /// `[batch, tokens]`: prompts only, padding on the left.
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, tokens]`, false on padding.
    pub valid: Tensor<B, 2, Bool>,
    pub prompt_lens: Vec<usize>,
    /// What each row should answer, for scoring the generations.
    pub answers: Vec<Answer>,
    pub example_ids: Vec<String>,
}

impl<B: Backend> GenerationBatch<B> {
    /// The model's input view (instruction = every valid token).
    pub fn tokens(&self) -> TokenBatch<B> {
        TokenBatch { ids: self.ids.clone(), valid: self.valid.clone(), instruction: None }
    }
}

/// Builds [`GenerationBatch`]es (burn [`Batcher`]).
#[derive(Debug, Clone, Copy)]
pub struct GenerationBatcher {
    pub pad_id: u32,
}

impl GenerationBatcher {
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }
}

impl<B: Backend> Batcher<B, EncodedExample, GenerationBatch<B>> for GenerationBatcher {
    fn batch(&self, items: Vec<EncodedExample>, device: &B::Device) -> GenerationBatch<B> {
        let rows: Vec<Vec<u32>> = items.iter().map(|e| e.prompt().to_vec()).collect();
        let (ids, valid, shape) = pad_rows(&rows, self.pad_id, Padding::Left);
        GenerationBatch {
            ids: Tensor::from_data(TensorData::new(ids, shape), device),
            valid: Tensor::from_data(TensorData::new(valid, shape), device),
            prompt_lens: items.iter().map(|e| e.prompt_len).collect(),
            answers: items.iter().map(|e| e.answer.clone()).collect(),
            example_ids: items.into_iter().map(|e| e.id).collect(),
        }
    }
}

/// How training batches are formed and ordered.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPlan {
    pub batch_size: usize,
    /// Batches per sorting chunk: 1 = no bucketing beyond one batch; larger = less padding,
    /// less randomness in which examples share a batch.
    #[serde(default = "default_bucket_batches")]
    pub bucket_batches: usize,
    pub seed: u64,
    /// Drop a final batch smaller than `batch_size`.
    #[serde(default)]
    pub drop_last: bool,
}

fn default_bucket_batches() -> usize {
    32
}

impl BatchPlan {
    pub fn new(batch_size: usize, seed: u64) -> Self {
        Self { batch_size, bucket_batches: default_bucket_batches(), seed, drop_last: false }
    }

    /// Index batches for one epoch over items of the given `lengths`.
    pub fn epoch(&self, lengths: &[usize], epoch: u64) -> Vec<Vec<usize>> {
        let bs = self.batch_size.max(1);
        let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        rng.shuffle(&mut order);
        let mut batches = Vec::with_capacity(lengths.len().div_ceil(bs));
        for chunk in order.chunks(bs * self.bucket_batches.max(1)) {
            let mut chunk = chunk.to_vec();
            chunk.sort_by_key(|&i| (lengths[i], i));
            batches.extend(chunk.chunks(bs).map(<[usize]>::to_vec));
        }
        if self.drop_last {
            batches.retain(|b| b.len() == bs);
        }
        rng.shuffle(&mut batches);
        batches
    }

    /// The training batches of one epoch, built on `device`.
    pub fn train_batches<'a, B: Backend>(
        &self,
        data: &'a EncodedDataset,
        batcher: TrainBatcher,
        device: &'a B::Device,
        epoch: u64,
    ) -> impl Iterator<Item = TrainBatch<B>> + 'a {
        self.epoch(&data.lengths(), epoch).into_iter().map(move |idx| batcher.batch(data.gather(&idx), device))
    }
}

/// Batches for evaluation or generation: no shuffling, sorted by length (longest first, so
/// memory peaks early), in chunks of `batch_size`.
pub fn sorted_batches(lengths: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Fraction of padded slots over `batches` (0 = no padding).
pub fn padding_fraction(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let (mut slots, mut used) = (0usize, 0usize);
    for b in batches {
        let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        slots += longest * b.len();
        used += b.iter().map(|&i| lengths[i]).sum::<usize>();
    }
    if slots == 0 {
        0.0
    } else {
        1.0 - used as f64 / slots as f64
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, fully specified generator, so shuffles are
/// identical on every platform and library version.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
