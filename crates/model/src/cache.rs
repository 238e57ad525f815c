//! The KV cache, kept outside the Module so it is never mistaken for a parameter.
//!
//! Each layer's keys and values live in buffers with room to spare: a decode step writes its
//! slot in place (`slice_assign` on a buffer nothing else holds) instead of concatenating the
//! whole cache into a fresh tensor every step. Attention reads views of the filled slots.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

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
        let kv = &self.filled;
        let filled = |t: &Tensor<B, 4>| t.clone().narrow(2, 0, self.len);
        *self = Self::placed(filled(&kv.keys), filled(&kv.values), kv.valid.clone().narrow(1, 0, self.len), capacity);
    }

    /// Fresh buffers of `capacity` slots holding `keys`/`values`/`valid` (all filled) first.
    fn placed(keys: Tensor<B, 4>, values: Tensor<B, 4>, valid: Tensor<B, 2, Bool>, capacity: usize) -> Self {
        let [b, heads, len, hd] = keys.dims();
        let device = keys.device();
        let place = |t: Tensor<B, 4>| iapt_kernels::host::zeros([b, heads, capacity, hd], &device).slice_assign([0..b, 0..heads, 0..len, 0..hd], t);
        let valid = Tensor::<B, 2, Bool>::full([b, capacity], false, &device).slice_assign([0..b, 0..len], valid);
        Self { filled: LayerKv { keys: place(keys), values: place(values), valid, len }, len }
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

    /// The keys and values `layer` holds, `[batch, kv_heads, len, head_dim]` (RoPE applied,
    /// prefix positions included); `None` before prefill reached it.
    pub fn keys_values(&self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.layers[layer].as_ref().map(|slots| {
            let (keys, values, _) = slots.filled.filled();
            (keys, values)
        })
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

impl<B: Backend> KvCache<B> {
    /// The shape of `layer`'s key (and value) buffers, `[batch, kv_heads, capacity, head_dim]`;
    /// `None` before prefill reached it.
    pub(crate) fn buffer_dims(&self, layer: usize) -> Option<[usize; 4]> {
        self.layers[layer].as_ref().map(|slots| slots.filled.keys.dims())
    }

    /// A decode step's [`KvCache::append`] from host values: one valid slot per row, keys and
    /// values `[b, kv_heads, hd]` row-major, written into `layer`'s buffers in place where nothing
    /// else holds them (through `slice_assign` otherwise). `layer` must hold a prefill.
    pub(crate) fn append_host_slot(&mut self, layer: usize, keys: &[f32], values: &[f32]) -> LayerKv<B> {
        let mut slots = self.layers[layer].take().expect("a decode step appends to a prefilled layer");
        slots.reserve(slots.len + 1);
        let slot = slots.len;
        let [b, heads, _, hd] = slots.filled.keys.dims();
        let device = slots.filled.keys.device();
        let write = |buffer: Tensor<B, 4>, new: &[f32]| {
            iapt_kernels::host::write_slot_values(buffer, slot, 1, new).unwrap_or_else(|buffer| {
                let new = Tensor::<B, 4>::from_data(TensorData::new(new.to_vec(), [b, heads, 1, hd]), &device);
                buffer.slice_assign([0..b, 0..heads, slot..slot + 1, 0..hd], new)
            })
        };
        let kv = slots.filled;
        let valid = iapt_kernels::host::set_column(kv.valid, slot)
            .unwrap_or_else(|valid| valid.slice_assign([0..b, slot..slot + 1], Tensor::<B, 2, Bool>::full([b, 1], true, &device)));
        let filled = LayerKv { keys: write(kv.keys, keys), values: write(kv.values, values), valid, len: slot + 1 };
        let slots = LayerSlots { filled, len: slot + 1 };
        let buffers = slots.filled.clone();
        self.layers[layer] = Some(slots);
        buffers
    }
}

/// Slots a rebuilt buffer keeps spare beyond its filled ones, so the next decode steps write
/// in place before a growth copies.
const SPARE_SLOTS: usize = 32;

impl<B: Backend> KvCache<B> {
    /// Rows (sequences) held; 0 before prefill.
    pub fn rows(&self) -> usize {
        self.next_position.as_ref().map_or(0, |p| p.dims()[0])
    }

    /// Keep only the rows `keep` (in that order), then drop the leading slots that no kept row
    /// uses any more. Continuous batching calls this when rows finish.
    pub fn retain_rows(&mut self, keep: &[usize]) {
        let Some(next) = self.next_position.take() else { return };
        if keep.is_empty() {
            *self = Self::new(self.layers.len());
            return;
        }
        let device = next.device();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(keep.iter().map(|&r| r as i64).collect::<Vec<_>>(), [keep.len()]), &device);
        self.next_position = Some(next.select(0, index.clone()));
        for slots in self.layers.iter_mut().flatten() {
            let kv = &slots.filled;
            let valid = kv.valid.clone().select(0, index.clone()).narrow(1, 0, slots.len);
            let unused = leading_unused_slots(&valid);
            let select = |t: &Tensor<B, 4>| t.clone().select(0, index.clone()).narrow(2, unused, slots.len - unused);
            *slots = LayerSlots::packed(select(&kv.keys), select(&kv.values), valid.narrow(1, unused, slots.len - unused));
        }
    }

    /// The rows of `self` followed by the rows of `other`, as one cache. Each layer's filled
    /// slots are right-aligned: a shorter row gets invalid slots in front, so every row's
    /// newest slot is the last one and the next token of every row takes the same slot
    /// (causality stays "key slot <= query slot"; positions are per row, in `next_position`).
    pub fn join(self, other: Self) -> Self {
        let (Some(a_next), Some(b_next)) = (&self.next_position, &other.next_position) else {
            return if self.is_empty() { other } else { self };
        };
        let next_position = Some(Tensor::cat(vec![a_next.clone(), b_next.clone()], 0));
        let layers = self
            .layers
            .into_iter()
            .zip(other.layers)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Some(LayerSlots::stacked(&a, &b)),
                (a, b) => a.or(b),
            })
            .collect();
        Self { layers, next_position }
    }
}

/// Leading slots invalid in every row of `valid` (`[rows, slots]`).
fn leading_unused_slots<B: Backend>(valid: &Tensor<B, 2, Bool>) -> usize {
    let [rows, slots] = valid.dims();
    let flags = iapt_kernels::host::bool_values(valid).unwrap_or_default();
    if flags.len() != rows * slots {
        return 0;
    }
    (0..rows).map(|r| flags[r * slots..(r + 1) * slots].iter().position(|&v| v).unwrap_or(slots)).min().unwrap_or(0)
}

impl<B: Backend> LayerSlots<B> {
    /// Fresh buffers holding exactly `keys`/`values`/`valid` (all filled) plus spare room.
    fn packed(keys: Tensor<B, 4>, values: Tensor<B, 4>, valid: Tensor<B, 2, Bool>) -> Self {
        let capacity = (keys.dims()[2] + SPARE_SLOTS).next_multiple_of(64);
        Self::placed(keys, values, valid, capacity)
    }

    /// `a`'s rows then `b`'s, both right-aligned to the longer one's filled length.
    fn stacked(a: &Self, b: &Self) -> Self {
        let len = a.len.max(b.len);
        let [ra, heads, _, hd] = a.filled.keys.dims();
        let rb = b.filled.keys.dims()[0];
        let rows = ra + rb;
        let capacity = (len + SPARE_SLOTS).next_multiple_of(64);
        let device = a.filled.keys.device();
        let place = |pick: fn(&LayerKv<B>) -> &Tensor<B, 4>| {
            let buffer = iapt_kernels::host::zeros([rows, heads, capacity, hd], &device);
            let buffer = buffer.slice_assign([0..ra, 0..heads, len - a.len..len, 0..hd], pick(&a.filled).clone().narrow(2, 0, a.len));
            buffer.slice_assign([ra..rows, 0..heads, len - b.len..len, 0..hd], pick(&b.filled).clone().narrow(2, 0, b.len))
        };
        let (keys, values) = (place(|kv| &kv.keys), place(|kv| &kv.values));
        let valid = Tensor::<B, 2, Bool>::full([rows, capacity], false, &device)
            .slice_assign([0..ra, len - a.len..len], a.filled.valid.clone().narrow(1, 0, a.len))
            .slice_assign([ra..rows, len - b.len..len], b.filled.valid.clone().narrow(1, 0, b.len));
        Self { filled: LayerKv { keys, values, valid, len }, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
