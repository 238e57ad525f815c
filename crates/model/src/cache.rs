//! The KV cache, kept outside the Module so it is never mistaken for a parameter.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// One layer's cached keys and values, prefix positions included.
#[derive(Clone, Debug)]
pub struct LayerKv<B: Backend> {
    /// `[batch, kv_heads, slots, head_dim]`, RoPE already applied.
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
    /// `[batch, slots]`: false on padding slots, which nothing may attend to.
    pub valid: Tensor<B, 2, Bool>,
}

/// Per-sequence generation state: every layer's keys/values plus each row's next position.
/// Slots are in time order, so causality is "key slot <= query slot".
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<LayerKv<B>>>,
    /// `[batch, 1]`: the RoPE position the next token of each row takes.
    pub next_position: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], next_position: None }
    }

    /// True before prefill.
    pub fn is_empty(&self) -> bool {
        self.next_position.is_none()
    }

    /// Number of cached slots in `layer` (prefix positions included).
    pub fn len(&self, layer: usize) -> usize {
        self.layers[layer].as_ref().map_or(0, |kv| kv.keys.dims()[2])
    }

    /// Append new keys/values/validity to `layer` and return the full cached tensors.
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        valid: Tensor<B, 2, Bool>,
    ) -> LayerKv<B> {
        let merged = match self.layers[layer].take() {
            None => LayerKv { keys, values, valid },
            Some(old) => LayerKv {
                keys: Tensor::cat(vec![old.keys, keys], 2),
                values: Tensor::cat(vec![old.values, values], 2),
                valid: Tensor::cat(vec![old.valid, valid], 1),
            },
        };
        self.layers[layer] = Some(merged.clone());
        merged
    }
}
