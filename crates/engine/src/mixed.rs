//! One decode step for a batch whose rows run different adapters.
//!
//! Only projection deltas (LoRA) act at decode steps; prefix-style tuners put their work in the
//! KV cache at their row's prefill, and say so ([`ModelHook::adds_delta`]), so they are never
//! asked. Deltas are computed one of two ways, never one product per row:
//! - **gathered** ([`LowRankStack`]): when every delta-adding adapter in the batch is low-rank
//!   (`scale · x A B`), each row's factors are stacked once per batch composition into
//!   `[rows, in, r]` / `[rows, r, out]` tensors (zeros for rows without a delta; ranks padded
//!   with zeros; the scale folded into `B`), and every row's delta is two batched products per
//!   projection, however many adapters the batch holds (one pass over the factors on the CPU
//!   backends, [`iapt_kernels::low_rank`]);
//! - **grouped**: otherwise, each adapter's rows are gathered, its delta computed for them in
//!   one product, and scattered back into the batch-shaped sum.

use burn::tensor::{backend::Backend, IndexingUpdateOp, Int, Tensor, TensorData};
use iapt_model::{LlamaConfig, LowRankFactors, ModelHook, Projection};
use std::collections::HashMap;

/// The rows of one adapter in the batch.
struct Group<'a, B: Backend> {
    hook: &'a dyn ModelHook<B>,
    rows: Tensor<B, 1, Int>,
    all: bool,
}

/// Group rows by adapter (the same `hook` object): `(hook, row indices)`, in order of first row.
fn groups<'a, B: Backend>(rows: &[Option<&'a dyn ModelHook<B>>]) -> Vec<(&'a dyn ModelHook<B>, Vec<usize>)> {
    let mut groups: Vec<(&'a dyn ModelHook<B>, Vec<usize>)> = Vec::new();
    for (row, hook) in rows.iter().enumerate() {
        let Some(hook) = hook else { continue };
        match groups.iter_mut().find(|(h, _)| std::ptr::addr_eq(*h as *const _, *hook as *const _)) {
            Some((_, members)) => members.push(row),
            None => groups.push((*hook, vec![row])),
        }
    }
    groups
}

/// Every row's low-rank factors for every `(layer, projection)` any row adapts, stacked along
/// the batch. Built when the batch's rows change; `None` when the grouped path is as good
/// (at most one delta-adding adapter covering every row) or not possible (an adapter whose
/// delta is not low-rank).
pub struct LowRankStack<B: Backend> {
    factors: HashMap<(usize, Projection), (Tensor<B, 3>, Tensor<B, 3>)>,
}

impl<B: Backend> LowRankStack<B> {
    pub fn build(rows: &[Option<&dyn ModelHook<B>>], config: &LlamaConfig, device: &B::Device) -> Option<Self> {
        let groups = groups(rows);
        let adds = |hook: &dyn ModelHook<B>| (0..config.num_layers).any(|l| Projection::ALL.iter().any(|&p| hook.adds_delta(l, p)));
        let adding: Vec<_> = groups.iter().filter(|(hook, _)| adds(*hook)).collect();
        if adding.is_empty() || (adding.len() == 1 && adding[0].1.len() == rows.len()) {
            return None;
        }
        let mut factors = HashMap::new();
        for layer in 0..config.num_layers {
            for projection in Projection::ALL {
                let per_row: Vec<Option<LowRankFactors<B>>> = rows
                    .iter()
                    .map(|hook| hook.filter(|h| h.adds_delta(layer, projection)).map(|h| h.low_rank_factors(layer, projection).ok_or(())))
                    .map(|f| f.transpose())
                    .collect::<Result<_, ()>>()
                    .ok()?;
                let rank = per_row.iter().flatten().map(|(a, _, _)| a.dims()[1]).max();
                let Some(rank) = rank else { continue };
                let (d_in, d_out) = config.projection_shape(projection);
                let (mut a_rows, mut b_rows) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
                for row in per_row {
                    let (a, b) = match row {
                        Some((a, b, scale)) => (pad(a, 1, rank), pad(b * scale, 0, rank)),
                        None => (Tensor::zeros([d_in, rank], device), Tensor::zeros([rank, d_out], device)),
                    };
                    a_rows.push(a);
                    b_rows.push(b);
                }
                factors.insert((layer, projection), (Tensor::stack(a_rows, 0), Tensor::stack(b_rows, 0)));
            }
        }
        Some(Self { factors })
    }
}

/// `t` with zeros appended along `dim` up to `size`.
fn pad<B: Backend>(t: Tensor<B, 2>, dim: usize, size: usize) -> Tensor<B, 2> {
    let mut shape = t.dims();
    if shape[dim] == size {
        return t;
    }
    shape[dim] = size - shape[dim];
    let zeros = Tensor::zeros(shape, &t.device());
    Tensor::cat(vec![t, zeros], dim)
}

/// A [`ModelHook`] for decode steps over rows that each have their own adapter (or none).
pub struct MixedHook<'a, B: Backend> {
    groups: Vec<Group<'a, B>>,
    stack: Option<&'a LowRankStack<B>>,
}

impl<'a, B: Backend> MixedHook<'a, B> {
    /// `rows[i]` is row i's adapter; `stack`, if built for these rows, computes their deltas.
    pub fn new(rows: &[Option<&'a dyn ModelHook<B>>], stack: Option<&'a LowRankStack<B>>, device: &B::Device) -> Self {
        let groups = groups(rows)
            .into_iter()
            .map(|(hook, members)| Group {
                hook,
                all: members.len() == rows.len(),
                rows: Tensor::from_data(TensorData::new(members.iter().map(|&r| r as i64).collect::<Vec<_>>(), [members.len()]), device),
            })
            .collect();
        Self { groups, stack }
    }
}

impl<B: Backend> ModelHook<B> for MixedHook<'_, B> {
    /// Whether any row's adapter adds a delta here: a batch of prefix-style adapters (and bare
    /// rows) has none, and its decode steps run the model's host path.
    fn adds_delta(&self, layer: usize, projection: Projection) -> bool {
        match self.stack {
            Some(stack) => stack.factors.contains_key(&(layer, projection)),
            None => self.groups.iter().any(|g| g.hook.adds_delta(layer, projection)),
        }
    }

    fn projection_delta(&self, layer: usize, projection: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        if let Some(stack) = self.stack {
            let (a, b) = stack.factors.get(&(layer, projection))?;
            let fast = iapt_kernels::low_rank::batched_low_rank(x, a, b);
            return Some(fast.unwrap_or_else(|| x.clone().matmul(a.clone()).matmul(b.clone())));
        }
        let mut sum: Option<Tensor<B, 3>> = None;
        for group in self.groups.iter().filter(|g| g.hook.adds_delta(layer, projection)) {
            if group.all {
                return group.hook.projection_delta(layer, projection, x);
            }
            let Some(delta) = group.hook.projection_delta(layer, projection, &x.clone().select(0, group.rows.clone())) else { continue };
            let [_, t, out] = delta.dims();
            let base = sum.take().unwrap_or_else(|| Tensor::zeros([x.dims()[0], t, out], &x.device()));
            sum = Some(base.select_assign(0, group.rows.clone(), delta, IndexingUpdateOp::Add));
        }
        sum
    }
}
