//! Pooling the instruction's bottleneck states into `l_sp` vectors (method spec §2):
//! self-attention pooling with one learnable query per soft token, or mean / max / last.

use burn::module::{Initializer, Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, FloatDType, Int, Tensor};
use serde::{Deserialize, Serialize};

use iapt_model::MASKED;

/// How one layer's generator summarises the instruction.
///
/// `mean`, `max` and `last` yield one vector, repeated for all `l_sp` soft tokens: the tokens
/// are identical (same values; with shifted positions their keys differ only by RoPE), so they
/// act like a single prefix slot whose attention weight is multiplied by `l_sp`. That is the
/// point of the ablation: only `self_attn` gives the soft tokens distinct contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolerKind {
    /// `A = softmax_rows(X W_q)`, `p = A^T X` (the paper's pooler).
    SelfAttn,
    Mean,
    Max,
    /// The last instruction token's state.
    Last,
}

/// Shapes and form of a pooler.
#[derive(Debug, Clone)]
pub struct PoolerConfig {
    /// Width `m` of the states being pooled (the generator's bottleneck).
    pub d_input: usize,
    /// `l_sp`, the number of pooled vectors (soft tokens).
    pub num_tokens: usize,
    pub kind: PoolerKind,
    /// Divide the attention scores by sqrt(m). Off by default, as the paper writes the pooler.
    pub scale: bool,
}

impl PoolerConfig {
    /// The paper's self-attention pooler, unscaled.
    pub fn new(d_input: usize, num_tokens: usize) -> Self {
        Self { d_input, num_tokens, kind: PoolerKind::SelfAttn, scale: false }
    }

    /// Queries start as N(0, 1/m): with bottleneck states of unit-ish scale the scores are O(1),
    /// and distinct random queries break the symmetry between soft tokens (zeros would make all
    /// `l_sp` tokens identical, and with unrotated prefixes they would stay identical).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Pooler<B> {
        let queries = (self.kind == PoolerKind::SelfAttn)
            .then(|| Initializer::Normal { mean: 0.0, std: 1.0 / (self.d_input as f64).sqrt() }.init([self.d_input, self.num_tokens], device));
        Pooler { queries, kind: self.kind, num_tokens: self.num_tokens, scale: self.scale }
    }

    /// Learnable scalars: `m * l_sp` queries for self-attention, none otherwise.
    pub fn num_params(&self) -> usize {
        match self.kind {
            PoolerKind::SelfAttn => self.d_input * self.num_tokens,
            _ => 0,
        }
    }
}

/// What the self-attention pooler records while [`iapt_model::diagnostics`] is on: the entropy
/// of each soft token's attention over the instruction divided by ln(instruction length), so 1
/// is uniform weights (mean pooling) and 0 all weight on one token; averaged over sequences with
/// at least two instruction tokens, soft tokens and (by the recorder) layers.
pub const ATTENTION_ENTROPY: &str = "Pooler Entropy";

/// `[1]`: the mean normalised entropy of `weights` (`[b, n, l]`, each column summing to 1 over
/// the `count` (`[b, 1, 1]`) rows inside the mask, 0 elsewhere).
fn normalized_entropy<B: Backend>(weights: Tensor<B, 3>, count: Tensor<B, 3, Int>) -> Tensor<B, 1> {
    let [_, _, l] = weights.dims();
    // 0 · ln 0 = 0: clamping the logarithm's argument leaves zero weights contributing zero.
    let entropy = (weights.clone() * weights.clamp_min(1e-30).log()).sum_dim(1).neg(); // [b, 1, l]
    let n = count.float().cast(FloatDType::F32);
    let usable = n.clone().greater_elem(1.0).float().cast(FloatDType::F32); // [b, 1, 1]
    let per_sequence = (entropy / n.clamp_min(2.0).log()).sum_dim(2) / l as f64; // [b, 1, 1]
    ((per_sequence * usable.clone()).sum() / usable.sum().clamp_min(1.0)).reshape([1])
}

/// Pools `[b, n, m]` states over the rows where `mask` is true into `[b, l_sp, m]`.
///
/// Rows outside the mask (padding, response) are zeroed before anything reads them, so their
/// values can never reach the output. A sequence with **no** masked-in row pools to the zero
/// vector for every variant (finite, no NaN): its soft tokens are then the generator's response
/// to an empty summary, `g(0) W_up + b_up`, the same for every such sequence.
#[derive(Module, Debug)]
pub struct Pooler<B: Backend> {
    /// `W_q`, `[m, l_sp]`: column j is soft token j's query. Present only for `self_attn`.
    pub queries: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    pub kind: PoolerKind,
    pub num_tokens: usize,
    pub scale: bool,
}

impl<B: Backend> Pooler<B> {
    pub fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let [b, n, m] = x.dims();
        let l = self.num_tokens;
        let outside = mask.clone().bool_not().reshape([b, n, 1]);
        let x = x.mask_fill(outside.clone().expand([b, n, m]), 0.0);
        let count = mask.clone().int().sum_dim(1).reshape([b, 1, 1]); // [b, 1, 1]
        let empty = count.clone().equal_elem(0);
        let pooled = match self.kind {
            PoolerKind::SelfAttn => {
                let queries = self.queries.as_ref().expect("self-attention pooler without queries").val();
                let scores = x.clone().matmul(queries.unsqueeze::<3>().expand([b, m, l])); // [b, n, l]
                let mut scores = scores.cast(FloatDType::F32);
                if self.scale {
                    scores = scores / (m as f64).sqrt();
                }
                let scores = scores.mask_fill(outside.clone().expand([b, n, l]), MASKED);
                // Softmax over the n rows, per column, in f32; rows outside the mask get exactly 0
                // (and a sequence with no instruction row gets all zeros instead of uniform).
                let inside = mask.float().cast(FloatDType::F32).reshape([b, n, 1]);
                let weights = softmax(scores, 1) * inside;
                if iapt_model::diagnostics::recording() {
                    iapt_model::diagnostics::record(ATTENTION_ENTROPY, normalized_entropy(weights.clone().detach(), count));
                }
                return weights.cast(FloatDType::from(x.dtype())).swap_dims(1, 2).matmul(x);
            }
            PoolerKind::Mean => {
                let denominator = count.clamp_min(1).float().cast(FloatDType::from(x.dtype()));
                x.sum_dim(1) / denominator
            }
            PoolerKind::Max => x.mask_fill(outside.expand([b, n, m]), MASKED).max_dim(1).mask_fill(empty.expand([b, 1, m]), 0.0),
            PoolerKind::Last => {
                // Index of the last masked-in row: argmax of mask * (1..=n).
                let order = Tensor::<B, 1, Int>::arange(1..n as i64 + 1, &x.device()).reshape([1, n]);
                let last = (mask.int() * order).argmax(1); // [b, 1]
                x.gather(1, last.reshape([b, 1, 1]).expand([b, 1, m]))
            }
        };
        pooled.expand([b, l, m])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    type TB = burn::backend::NdArray;

    fn tensor3(rows: &[Vec<Vec<f32>>]) -> Tensor<TB, 3> {
        let (b, n, m) = (rows.len(), rows[0].len(), rows[0][0].len());
        let flat: Vec<f32> = rows.iter().flatten().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [b, n, m]), &Default::default())
    }
    fn mask(rows: &[Vec<bool>]) -> Tensor<TB, 2, Bool> {
        let (b, n) = (rows.len(), rows[0].len());
        Tensor::from_data(TensorData::new(rows.concat(), [b, n]), &Default::default())
    }
    fn host(t: Tensor<TB, 3>) -> Vec<Vec<Vec<f32>>> {
        let [b, l, m] = t.dims();
        let v: Vec<f32> = t.into_data().to_vec().unwrap();
        (0..b).map(|i| (0..l).map(|j| v[(i * l + j) * m..(i * l + j + 1) * m].to_vec()).collect()).collect()
    }
    fn attention_pooler(queries: [[f32; 2]; 2], scale: bool) -> Pooler<TB> {
        let mut p = PoolerConfig { scale, ..PoolerConfig::new(2, 2) }.init::<TB>(&Default::default());
        p.queries = Some(Param::from_tensor(Tensor::from_floats(queries, &Default::default())));
        p
    }
    fn close(a: &[f32], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (*x as f64 - y).abs() < 1e-6)
    }

    /// Two instruction rows x1 = (1, 0), x2 = (0, 2); a response row after them; W_q = I.
    /// U = X W_q = [[1, 0], [0, 2]]. Column 0: softmax(1, 0); column 1: softmax(0, 2).
    #[test]
    fn self_attention_by_hand() {
        let x = tensor3(&[vec![vec![1.0, 0.0], vec![0.0, 2.0], vec![7.0, -3.0]]]);
        let m = mask(&[vec![true, true, false]]);
        let e = std::f64::consts::E;
        let (a0, a1) = (e / (e + 1.0), 1.0 / (e + 1.0)); // column 0 weights of x1, x2
        let (c0, c1) = (1.0 / (1.0 + e * e), e * e / (1.0 + e * e)); // column 1
        let got = host(attention_pooler([[1.0, 0.0], [0.0, 1.0]], false).forward(x.clone(), m.clone()));
        assert!(close(&got[0][0], &[a0, 2.0 * a1]), "{got:?}");
        assert!(close(&got[0][1], &[c0, 2.0 * c1]), "{got:?}");
        // With 1/sqrt(m) scaling the scores are divided by sqrt(2).
        let s = 2f64.sqrt();
        let (a0, a1) = ((1.0 / s).exp() / ((1.0 / s).exp() + 1.0), 1.0 / ((1.0 / s).exp() + 1.0));
        let got = host(attention_pooler([[1.0, 0.0], [0.0, 1.0]], true).forward(x, m));
        assert!(close(&got[0][0], &[a0, 2.0 * a1]), "{got:?}");
    }

    /// Recorded entropy by hand: column 0 attends (e/(e+1), 1/(e+1)), column 1 (1/(1+e^2),
    /// e^2/(1+e^2)), over 2 instruction rows (so divided by ln 2); a second sequence with one
    /// instruction row has no entropy to speak of and is left out.
    #[test]
    fn attention_entropy_by_hand() {
        let x = tensor3(&[vec![vec![1.0, 0.0], vec![0.0, 2.0], vec![7.0, -3.0]], vec![vec![1.0, 1.0], vec![5.0, 5.0], vec![0.0, 0.0]]]);
        let m = mask(&[vec![true, true, false], vec![false, true, false]]);
        let h = |p: f64| -(p * p.ln() + (1.0 - p) * (1.0 - p).ln()) / 2f64.ln();
        let e = std::f64::consts::E;
        let want = (h(e / (e + 1.0)) + h(1.0 / (1.0 + e * e))) / 2.0;
        iapt_model::diagnostics::start();
        attention_pooler([[1.0, 0.0], [0.0, 1.0]], false).forward(x.clone(), m.clone());
        let got = iapt_model::diagnostics::finish::<TB>();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, ATTENTION_ENTROPY);
        assert!((got[0].1 - want).abs() < 1e-6, "{got:?} vs {want}");
        // Equal scores: uniform weights, entropy 1. Nothing is recorded when not asked for.
        iapt_model::diagnostics::start();
        attention_pooler([[0.0, 0.0], [0.0, 0.0]], false).forward(x.clone(), m.clone());
        assert!((iapt_model::diagnostics::finish::<TB>()[0].1 - 1.0).abs() < 1e-6);
        attention_pooler([[1.0, 0.0], [0.0, 1.0]], false).forward(x, m);
        assert!(iapt_model::diagnostics::finish::<TB>().is_empty());
    }

    #[test]
    fn rows_outside_the_mask_never_change_the_output() {
        let device = Default::default();
        let mut keep = vec![vec![true, true, true, false, false]; 2];
        keep[1] = vec![false, true, true, true, false]; // left pad, then response
        let m = mask(&keep);
        for kind in [PoolerKind::SelfAttn, PoolerKind::Mean, PoolerKind::Max, PoolerKind::Last] {
            <TB as Backend>::seed(&device, 11);
            let pooler = PoolerConfig { kind, ..PoolerConfig::new(3, 4) }.init::<TB>(&device);
            let x = Tensor::<TB, 3>::random([2, 5, 3], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
            let noise = Tensor::<TB, 3>::random([2, 5, 3], burn::tensor::Distribution::Normal(0.0, 100.0), &device);
            let outside = m.clone().bool_not().float().reshape([2, 5, 1]);
            let changed = x.clone() + noise * outside;
            let (a, b) = (host(pooler.forward(x.clone(), m.clone())), host(pooler.forward(changed, m.clone())));
            assert_eq!(a, b, "{kind:?}: masked-out rows changed the pooled vectors");
            // ... while an instruction row does change it.
            let bumped = x.clone()
                + Tensor::<TB, 3>::ones([2, 5, 3], &device)
                    * mask(&[vec![false, false, true, false, false], vec![false, false, false, true, false]]).float().reshape([2, 5, 1]);
            assert_ne!(a, host(pooler.forward(bumped, m.clone())), "{kind:?}: instruction rows do not matter");
        }
    }

    #[test]
    fn mean_max_last_by_hand() {
        let x = tensor3(&[vec![vec![1.0, -4.0], vec![3.0, 2.0], vec![9.0, 9.0]], vec![vec![5.0, 5.0], vec![-1.0, -2.0], vec![-3.0, 0.5]]]);
        let m = mask(&[vec![true, true, false], vec![false, true, true]]);
        let run = |kind| host(PoolerConfig { kind, ..PoolerConfig::new(2, 3) }.init::<TB>(&Default::default()).forward(x.clone(), m.clone()));
        let want =
            [(PoolerKind::Mean, [[2.0, -1.0], [-2.0, -0.75]]), (PoolerKind::Max, [[3.0, 2.0], [-1.0, 0.5]]), (PoolerKind::Last, [[3.0, 2.0], [-3.0, 0.5]])];
        for (kind, rows) in want {
            let got = run(kind);
            for (b, row) in rows.iter().enumerate() {
                assert_eq!(got[b].len(), 3, "repeated to l_sp tokens");
                for token in &got[b] {
                    assert_eq!(token, &row.to_vec(), "{kind:?} row {b}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn a_row_without_instruction_pools_to_zero_without_nan() {
        let x = tensor3(&[vec![vec![1.0, 2.0], vec![3.0, 4.0]], vec![vec![1.0, 2.0], vec![3.0, 4.0]]]);
        let m = mask(&[vec![false, false], vec![true, false]]);
        for kind in [PoolerKind::SelfAttn, PoolerKind::Mean, PoolerKind::Max, PoolerKind::Last] {
            let got = host(PoolerConfig { kind, ..PoolerConfig::new(2, 2) }.init::<TB>(&Default::default()).forward(x.clone(), m.clone()));
            assert!(got[0].iter().flatten().all(|&v| v == 0.0), "{kind:?}: {got:?}");
            assert!(got[1].iter().flatten().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn parameter_count() {
        assert_eq!(PoolerConfig::new(16, 4).num_params(), 64);
        assert_eq!(burn::module::Module::num_params(&PoolerConfig::new(16, 4).init::<TB>(&Default::default())), 64);
        assert_eq!(PoolerConfig { kind: PoolerKind::Max, ..PoolerConfig::new(16, 4) }.num_params(), 0);
    }
}
