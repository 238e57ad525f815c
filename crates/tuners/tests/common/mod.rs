//! Set-ups shared by the tuners' integration tests: a tiny random LLaMA, batches with an
//! instruction mask, logits on the host, the response-only loss and a gradient inventory.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use iapt_model::ModelHook;
use iapt_model::{KvCache, Llama, LlamaConfig, TokenBatch};
use iapt_tuners::{ActivationKind, GeneratorInput, IaptConfig, PoolerKind, PrefixPositions, SoftTokenSpace};

pub type TB = burn::backend::NdArray;
pub type AD = burn::backend::Autodiff<TB>;

pub const SEQ: [u32; 7] = [5, 17, 42, 3, 88, 61, 9];
/// Tokens of SEQ that form the instruction (the prompt); the rest is the response.
pub const N_INSTRUCTION: usize = 4;

/// IAPT's ablation grid: every [decision] switch of the method spec at least once.
pub fn iapt_grid() -> Vec<IaptConfig> {
    vec![
        IaptConfig::new(8),
        IaptConfig::new(8).with_share_projections(false).with_generator_input(GeneratorInput::Raw).with_prefix_positions(PrefixPositions::Unrotated),
        IaptConfig::new(6).with_pooler(PoolerKind::Mean).with_activation(ActivationKind::Gelu).with_num_soft_tokens(2),
        IaptConfig::new(6).with_pooler(PoolerKind::Max).with_activation(ActivationKind::Relu).with_pooler_scale(true),
        IaptConfig::new(5).with_pooler(PoolerKind::Last).with_activation(ActivationKind::Identity).with_num_soft_tokens(1),
        IaptConfig::new(8).with_pooler_scale(true).with_num_soft_tokens(8),
        IaptConfig::new(8).with_soft_token_space(SoftTokenSpace::Normed).with_pooler(PoolerKind::Mean),
    ]
}

pub fn tiny<B: Backend>(seed: u64, tied: bool) -> Llama<B> {
    B::seed(&Default::default(), seed);
    let mut c = LlamaConfig::tiny();
    c.tie_word_embeddings = tied;
    Llama::random(&c, &Default::default())
}

pub fn ids_tensor<B: Backend>(rows: &[Vec<u32>]) -> Tensor<B, 2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat().iter().map(|&v| v as i64).collect::<Vec<_>>(), [b, t]), &Default::default())
}

/// A dense batch whose first `n_instruction` tokens per row are the instruction.
pub fn instruction_batch<B: Backend>(rows: &[Vec<u32>], n_instruction: usize) -> TokenBatch<B> {
    let (b, t) = (rows.len(), rows[0].len());
    let mask: Vec<bool> = (0..b).flat_map(|_| (0..t).map(move |i| i < n_instruction)).collect();
    TokenBatch::dense(ids_tensor(rows)).with_instruction(Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [b, t]), &Default::default()))
}

/// `[b, t, v]` on the host as rows of positions.
pub fn rows_of<B: Backend>(t: Tensor<B, 3>) -> Vec<Vec<Vec<f32>>> {
    let [b, s, v] = t.dims();
    let data: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap();
    (0..b).map(|i| (0..s).map(|j| data[(i * s + j) * v..(i * s + j + 1) * v].to_vec()).collect()).collect()
}

/// Logits of the batch's own tokens (an input prefix, as prompt tuning adds, is cut off).
pub fn logits<B: Backend>(model: &Llama<B>, batch: TokenBatch<B>, hook: &dyn ModelHook<B>) -> Vec<Vec<Vec<f32>>> {
    let t = batch.ids.dims()[1];
    let hidden = model.forward(batch, &mut KvCache::new(model.num_layers()), hook);
    let total = hidden.dims()[1];
    rows_of(model.logits(hidden.narrow(1, total - t, t)))
}

/// Largest absolute difference between two equally shaped `[row][position][value]` sets.
pub fn max_abs(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    assert_eq!((a.len(), a[0].len()), (b.len(), b[0].len()));
    a.iter().flatten().flatten().zip(b.iter().flatten().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Mean next-token cross-entropy over the response positions (the training loss).
pub fn response_loss<B: Backend>(model: &Llama<B>, hook: &dyn ModelHook<B>, seq: &[u32], n_instruction: usize) -> Tensor<B, 1> {
    let t = seq.len();
    let hidden = model.forward(instruction_batch(&[seq.to_vec()], n_instruction), &mut KvCache::new(model.num_layers()), hook);
    let total = hidden.dims()[1];
    let logits = model.logits(hidden.narrow(1, total - t, t));
    let predicting = n_instruction - 1..t - 1; // positions whose next token is a response token
    let n = predicting.len();
    let logp = burn::tensor::activation::log_softmax(logits.slice([0..1, predicting]), 2);
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(seq[n_instruction..].iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]), &Default::default());
    logp.gather(2, targets.reshape([1, n, 1])).mean().neg()
}

/// Paths of a module's parameters that have (or lack) a gradient, and whether it is non-zero.
pub struct GradCheck<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    pub with: Vec<(String, bool)>,
    pub without: Vec<String>,
}

impl<'a, B: AutodiffBackend> GradCheck<'a, B> {
    pub fn of<M: Module<B>>(module: &M, grads: &'a B::Gradients) -> Self {
        let mut check = Self { grads, path: vec![], with: vec![], without: vec![] };
        module.visit(&mut check);
        check
    }
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradCheck<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let name = self.path.join(".");
        match param.grad(self.grads) {
            Some(g) => {
                let nonzero = g.abs().max().into_data().convert::<f32>().to_vec::<f32>().unwrap()[0] > 0.0;
                self.with.push((name, nonzero))
            }
            None => self.without.push(name),
        }
    }
}
