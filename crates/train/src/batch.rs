//! What the trainer consumes: one tokenized example ([`LmExample`]) and a right-padded batch of
//! them ([`LmBatch`]), built by [`LmBatcher`] (a burn [`Batcher`]).
//!
//! # The loss-mask convention
//! `loss_mask[b, i]` is true exactly when **token `i` of row `b` is a response token the model
//! must predict**. The prediction of token `i` is read from the logits at position `i - 1`
//! (teacher forcing), so the loss is `-log p(ids[b, i] | ids[b, ..i])` summed over every `(b, i)`
//! with `loss_mask[b, i]`, divided by the number of such tokens. Column 0 can never be predicted
//! and must be false. Padding is always false.
//!
//! For an [`LmExample`] with `instruction_len = n` and `ids.len() = L`:
//! - `instruction[b, i] = i < n` (what an instruction-aware tuner may read),
//! - `loss_mask[b, i]   = n <= i < L` (the whole response, EOS included),
//! - `valid[b, i]       = i < L`.
//!
//! (The data crate's own `TrainBatch` marks the *predicting* position instead — `mask[t]` true when
//! `ids[t + 1]` is a response token — which is this mask shifted left by one.)

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};
use iapt_model::TokenBatch;
use serde::{Deserialize, Serialize};

/// One training example: a prompt followed by its response, as token ids.
///
/// The data crate maps its encoded examples onto this (`ids` = prompt ++ response ++ EOS,
/// `instruction_len` = prompt length).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LmExample {
    /// Prompt tokens, then response tokens.
    pub ids: Vec<u32>,
    /// Number of prompt (instruction) tokens at the start of `ids`: at least 1, and less than
    /// `ids.len()`, so there is a token to condition on and at least one response token.
    pub instruction_len: usize,
    /// The example's class (label index) on a classification task, `None` otherwise. The
    /// training loader can balance classes within batches (`TrainConfig::balance_classes`).
    #[serde(default)]
    pub class: Option<usize>,
}

impl LmExample {
    /// An example, checked: `1 <= instruction_len < ids.len()`.
    pub fn new(ids: Vec<u32>, instruction_len: usize) -> Result<Self, String> {
        let example = Self { ids, instruction_len, class: None };
        example.check()?;
        Ok(example)
    }

    /// The same example with its class set.
    pub fn with_class(mut self, class: Option<usize>) -> Self {
        self.class = class;
        self
    }

    /// Why this example cannot be trained on, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.instruction_len == 0 {
            return Err("instruction_len must be at least 1 (the first token is never predicted)".into());
        }
        if self.instruction_len >= self.ids.len() {
            return Err(format!("no response tokens: instruction_len {} >= length {}", self.instruction_len, self.ids.len()));
        }
        Ok(())
    }

    /// Number of tokens the loss is taken on.
    pub fn response_len(&self) -> usize {
        self.ids.len() - self.instruction_len
    }
}

/// A right-padded batch; see the module docs for the exact mask convention.
#[derive(Debug, Clone)]
pub struct LmBatch<B: Backend> {
    /// `[batch, tokens]`; padding slots hold the pad id (any id: they are masked everywhere).
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, tokens]`, false on padding.
    pub valid: Tensor<B, 2, Bool>,
    /// `[batch, tokens]`, true on instruction (prompt) tokens.
    pub instruction: Tensor<B, 2, Bool>,
    /// `[batch, tokens]`, true on the response tokens to predict (column 0 always false).
    pub loss_mask: Tensor<B, 2, Bool>,
}

impl<B: Backend> LmBatch<B> {
    /// Right-pad `examples` with `pad_id` and derive the masks. Panics on an example that fails
    /// [`LmExample::check`] or on an empty slice.
    pub fn from_examples(examples: &[LmExample], pad_id: u32, device: &B::Device) -> Self {
        assert!(!examples.is_empty(), "a batch needs at least one example");
        let width = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let cells = examples.len() * width;
        let (mut ids, mut valid) = (Vec::with_capacity(cells), Vec::with_capacity(cells));
        let (mut instruction, mut loss_mask) = (Vec::with_capacity(cells), Vec::with_capacity(cells));
        for example in examples {
            if let Err(why) = example.check() {
                panic!("cannot batch example: {why}");
            }
            let len = example.ids.len();
            for i in 0..width {
                ids.push(example.ids.get(i).map_or(pad_id, |&t| t) as i64);
                valid.push(i < len);
                instruction.push(i < example.instruction_len);
                loss_mask.push(i >= example.instruction_len && i < len);
            }
        }
        let shape = [examples.len(), width];
        Self {
            ids: Tensor::from_data(TensorData::new(ids, shape), device),
            valid: Tensor::from_data(TensorData::new(valid, shape), device),
            instruction: Tensor::from_data(TensorData::new(instruction, shape), device),
            loss_mask: Tensor::from_data(TensorData::new(loss_mask, shape), device),
        }
    }

    /// The model's input view of this batch.
    pub fn tokens(&self) -> TokenBatch<B> {
        TokenBatch { ids: self.ids.clone(), valid: self.valid.clone(), instruction: Some(self.instruction.clone()) }
    }
}

/// Builds [`LmBatch`]es from [`LmExample`]s (a burn [`Batcher`], usable with burn's own loaders).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LmBatcher {
    /// Id written into padding slots. Its value never matters (padding is masked out).
    pub pad_id: u32,
}

impl<B: Backend> Batcher<B, LmExample, LmBatch<B>> for LmBatcher {
    fn batch(&self, items: Vec<LmExample>, device: &B::Device) -> LmBatch<B> {
        LmBatch::from_examples(&items, self.pad_id, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TestBackend = burn::backend::NdArray;

    #[test]
    fn masks_follow_the_documented_convention() {
        let examples = [LmExample::new(vec![5, 6, 7, 8], 2).unwrap(), LmExample::new(vec![9, 10, 11], 1).unwrap()];
        let batch = LmBatch::<TestBackend>::from_examples(&examples, 0, &Default::default());
        let flat = |t: Tensor<TestBackend, 2, Bool>| t.into_data().to_vec::<bool>().unwrap();
        assert_eq!(batch.ids.into_data().to_vec::<i64>().unwrap(), vec![5, 6, 7, 8, 9, 10, 11, 0]);
        assert_eq!(flat(batch.valid), vec![true, true, true, true, true, true, true, false]);
        assert_eq!(flat(batch.instruction), vec![true, true, false, false, true, false, false, false]);
        assert_eq!(flat(batch.loss_mask), vec![false, false, true, true, false, true, true, false]);
    }

    #[test]
    fn examples_without_a_response_or_a_prompt_are_rejected() {
        assert!(LmExample::new(vec![1, 2], 2).is_err());
        assert!(LmExample::new(vec![1, 2], 0).is_err());
        assert_eq!(LmExample::new(vec![1, 2, 3], 1).unwrap().response_len(), 2);
    }
}
