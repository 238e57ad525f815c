//! Token batches with padding masks: left padding for generation, right padding for training.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

/// One batch of token ids with its padding mask.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// `[batch, tokens]`
    pub ids: Tensor<B, 2, Int>,
    /// `[batch, tokens]`, false on padding.
    pub valid: Tensor<B, 2, Bool>,
    /// `[batch, tokens]`, true on instruction (prompt) tokens: what prefix hooks may read.
    /// `None` means "every valid token" (generation prefill).
    pub instruction: Option<Tensor<B, 2, Bool>>,
}

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pads before the tokens, so every row's last slot is its newest token (generation).
    Left,
    /// Pads after the tokens (training, scoring).
    Right,
}

impl<B: Backend> TokenBatch<B> {
    /// Pad `rows` to the longest with `pad_id`. Rows must be non-empty.
    pub fn padded(rows: &[Vec<u32>], pad_id: u32, side: Padding, device: &B::Device) -> Self {
        let (ids, valid, shape) = pad_rows(rows, pad_id, side);
        Self { ids: Tensor::from_data(TensorData::new(ids, shape), device), valid: Tensor::from_data(TensorData::new(valid, shape), device), instruction: None }
    }

    /// Every token valid (decode steps).
    pub fn dense(ids: Tensor<B, 2, Int>) -> Self {
        let valid = Tensor::full(ids.dims(), true, &ids.device());
        Self { ids, valid, instruction: None }
    }

    pub fn with_instruction(mut self, instruction: Tensor<B, 2, Bool>) -> Self {
        self.instruction = Some(instruction);
        self
    }
}

/// Host-side padding: flattened ids, validity, and `[rows, longest]`.
pub fn pad_rows(rows: &[Vec<u32>], pad_id: u32, side: Padding) -> (Vec<i64>, Vec<bool>, [usize; 2]) {
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * longest);
    let mut valid = Vec::with_capacity(rows.len() * longest);
    for row in rows {
        let pads = longest - row.len();
        let (before, after) = match side {
            Padding::Left => (pads, 0),
            Padding::Right => (0, pads),
        };
        ids.extend(std::iter::repeat_n(pad_id as i64, before).chain(row.iter().map(|&t| t as i64)).chain(std::iter::repeat_n(pad_id as i64, after)));
        valid.extend(std::iter::repeat_n(false, before).chain(std::iter::repeat_n(true, row.len())).chain(std::iter::repeat_n(false, after)));
    }
    (ids, valid, [rows.len(), longest])
}
