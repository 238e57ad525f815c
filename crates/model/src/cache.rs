//! The KV cache, kept outside the Module so it is never mistaken for a parameter.
//!
//! Each layer's keys and values live in buffers with room to spare: a decode step writes its
//! slot in place (`slice_assign` on a buffer nothing else holds) instead of concatenating the
//! whole cache into a fresh tensor every step. Attention reads views of the filled slots.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// One layer's cached keys and values, prefix positions included: the first `len` slots of
/// the buffers are filled (the rest is spare room, never attended to).
#[derive(Clone, Debug)]
pub struct LayerKv<B: Backend> {
    /// `[batch, kv_heads, capacity, head_dim]`, RoPE already applied.
    pub keys: Tensor<B, 4>,
    pub values: Tensor<B, 4>,
    /// `[batch, capacity]`: false on padding slots, which nothing may attend to.
    pub valid: Tensor<B, 2, Bool>,
    /// Filled slots.
    pub len: usize,
}

impl<B: Backend> LayerKv<B> {
    /// The filled slots alone (a copy on burn-ndarray, whose slices are copies: the fused CPU
    /// attention reads the buffers in place instead).
    pub fn filled(&self) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 2, Bool>) {
        if self.len == self.keys.dims()[2] {
            return (self.keys.clone(), self.values.clone(), self.valid.clone());
        }
        (self.keys.clone().narrow(2, 0, self.len), self.values.clone().narrow(2, 0, self.len), self.valid.clone().narrow(1, 0, self.len))
    }
}

/// A layer's buffers and how many slots are filled.
#[derive(Clone, Debug)]
struct LayerSlots<B: Backend> {
    filled: LayerKv<B>,
    len: usize,
}

impl<B: Backend> LayerSlots<B> {
    fn capacity(&self) -> usize {
        self.filled.keys.dims()[2]
    }

    /// Room for at least `slots` slots; grown buffers get the same amount again spare (so a
    /// decode of n tokens copies the cache O(log n) times).
    fn reserve(&mut self, slots: usize) {
        if slots <= self.capacity() {
            return;
        }
        let capacity = slots.max(2 * self.len).next_multiple_of(64);
        let [b, heads, _, hd] = self.filled.keys.dims();
        let device = self.filled.keys.device();
        let grow =
            |t: Tensor<B, 4>| Tensor::zeros([b, heads, capacity, hd], &device).slice_assign([0..b, 0..heads, 0..self.len, 0..hd], t.narrow(2, 0, self.len));
        let valid =
            Tensor::<B, 2, Bool>::full([b, capacity], false, &device).slice_assign([0..b, 0..self.len], self.filled.valid.clone().narrow(1, 0, self.len));
        self.filled = LayerKv { keys: grow(self.filled.keys.clone()), values: grow(self.filled.values.clone()), valid, len: self.len };
    }
}

/// Per-sequence generation state: every layer's keys/values plus each row's next position.
/// Slots are in time order, so causality is "key slot <= query slot".
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerSlots<B>>>,
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

    /// True while `layer` holds nothing (prefill has not reached it).
    pub fn layer_is_empty(&self, layer: usize) -> bool {
        self.layers[layer].is_none()
    }

    /// Number of cached slots in `layer` (prefix positions included).
    pub fn len(&self, layer: usize) -> usize {
        self.layers[layer].as_ref().map_or(0, |slots| slots.len)
    }

    /// Append new keys/values/validity to `layer` and return its buffers (sharing memory).
    pub fn append(&mut self, layer: usize, keys: Tensor<B, 4>, values: Tensor<B, 4>, valid: Tensor<B, 2, Bool>) -> LayerKv<B> {
        let n = keys.dims()[2];
        let slots = match self.layers[layer].take() {
            // The first entry (a prefill) is kept as it comes: training never appends again.
            None => LayerSlots { filled: LayerKv { keys, values, valid, len: n }, len: n },
            Some(mut slots) => {
                slots.reserve(slots.len + n);
                let (start, end) = (slots.len, slots.len + n);
                let [b, heads, _, hd] = keys.dims();
                let kv = slots.filled;
                // In place on the CPU inference backends; `slice_assign` (which may copy) elsewhere.
                let write = |buffer: Tensor<B, 4>, new: Tensor<B, 4>| {
                    iapt_kernels::host::write_slots(buffer, start, &new).unwrap_or_else(|buffer| buffer.slice_assign([0..b, 0..heads, start..end, 0..hd], new))
                };
                let filled =
                    LayerKv { keys: write(kv.keys, keys), values: write(kv.values, values), valid: kv.valid.slice_assign([0..b, start..end], valid), len: end };
                LayerSlots { filled, len: end }
            }
        };
        let buffers = slots.filled.clone();
        self.layers[layer] = Some(slots);
        buffers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    type TB = burn::backend::NdArray;

    /// Appending one slot at a time across a buffer growth gives exactly the concatenation.
    #[test]
    fn appends_equal_concatenation_across_growth() {
        let device = Default::default();
        let step = |i: usize, n: usize| {
            let values: Vec<f32> = (0..2 * 3 * n * 4).map(|v| (v + 1000 * i) as f32).collect();
            Tensor::<TB, 4>::from_data(TensorData::new(values, [2, 3, n, 4]), &device)
        };
        let mut cache = KvCache::<TB>::new(1);
        let mut keys = vec![step(0, 5)];
        cache.append(0, step(0, 5), step(0, 5).neg(), Tensor::full([2, 5], true, &device));
        let mut all: Option<LayerKv<TB>> = None;
        for i in 1..80 {
            keys.push(step(i, 1));
            // On even steps nothing else holds the buffers (the in-place write); on odd steps the
            // last views are still alive (the copying write).
            if i % 2 == 0 {
                drop(all.take());
            }
            let next = cache.append(0, step(i, 1), step(i, 1).neg(), Tensor::full([2, 1], i % 3 != 0, &device));
            all = Some(next);
        }
        let (all_keys, all_values, all_valid) = all.unwrap().filled();
        let want = Tensor::cat(keys, 2);
        assert_eq!(cache.len(0), 84);
        assert_eq!(all_keys.into_data(), want.clone().into_data());
        assert_eq!(all_values.into_data(), want.neg().into_data());
        let valid: Vec<bool> = all_valid.into_data().to_vec().unwrap();
        let expect: Vec<bool> = (0..2).flat_map(|_| (0..84).map(|s| s < 5 || (s - 4) % 3 != 0)).collect();
        assert_eq!(valid, expect);
    }
}
