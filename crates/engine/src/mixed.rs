//! One decode step for a batch whose rows run different adapters.
//!
//! Only projection deltas (LoRA) act at decode steps; prefix-style tuners put their work in the
//! KV cache at their row's prefill. For each adapter with rows in the batch, its rows' inputs
//! are gathered, its delta is computed for all of them in one product, and the deltas are
//! scattered back into a batch-shaped sum — one product per adapter and projection, never one
//! per row. Rows without a delta-adding adapter get none.

use burn::tensor::{backend::Backend, IndexingUpdateOp, Int, Tensor, TensorData};
use iapt_model::{ModelHook, Projection};

/// The rows of one adapter in the batch.
struct Group<'a, B: Backend> {
    hook: &'a dyn ModelHook<B>,
    rows: Tensor<B, 1, Int>,
    all: bool,
}

/// A [`ModelHook`] for decode steps over rows that each have their own adapter (or none).
pub struct MixedHook<'a, B: Backend> {
    groups: Vec<Group<'a, B>>,
}

impl<'a, B: Backend> MixedHook<'a, B> {
    /// `rows[i]` is row i's adapter. Rows with the same adapter (the same `hook` object) form
    /// one group.
    pub fn new(rows: &[Option<&'a dyn ModelHook<B>>], device: &B::Device) -> Self {
        let mut groups: Vec<(&'a dyn ModelHook<B>, Vec<i64>)> = Vec::new();
        for (row, hook) in rows.iter().enumerate() {
            let Some(hook) = hook else { continue };
            match groups.iter_mut().find(|(h, _)| std::ptr::addr_eq(*h as *const _, *hook as *const _)) {
                Some((_, members)) => members.push(row as i64),
                None => groups.push((*hook, vec![row as i64])),
            }
        }
        let groups = groups
            .into_iter()
            .map(|(hook, members)| Group {
                hook,
                all: members.len() == rows.len(),
                rows: Tensor::from_data(TensorData::new(members.clone(), [members.len()]), device),
            })
            .collect();
        Self { groups }
    }
}

impl<B: Backend> ModelHook<B> for MixedHook<'_, B> {
    fn projection_delta(&self, layer: usize, projection: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let mut sum: Option<Tensor<B, 3>> = None;
        for group in &self.groups {
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
