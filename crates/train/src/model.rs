//! The module burn-train trains: a frozen backbone plus a tuner, with the response-only
//! next-token loss and burn-train's step traits.

use crate::batch::LmBatch;
use crate::monitor::StepMonitor;
use burn::module::{AutodiffModule, Module, ModuleDisplay, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, ElementConversion, Int, Tensor, Transaction};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};
use iapt_kernels::host::reshape;
use iapt_model::score::token_nll_and_argmax;
use iapt_model::{KvCache, Llama, ModelHook, TrainableTuner};

/// Frozen backbone + trainable tuner.
///
/// The backbone is a `#[module(skip)]` field: burn moves it with the module (`fork`,
/// `to_device`, `valid`), but leaves it out of everything parameter-wise — it is never visited
/// (no gradients collected, no optimiser state, not counted by `num_params`) and its record is
/// empty, so checkpoints of this module hold the tuner only. Its tensors are also set to
/// `no_grad`, so autodiff does not even compute gradients for them.
#[derive(Module, Debug)]
pub struct TunedLm<B: Backend, T> {
    /// The pretrained decoder, frozen.
    #[module(skip)]
    pub backbone: Llama<B>,
    /// The trainable part.
    pub tuner: T,
    /// Losses of every step go here; shared by all clones and forks.
    #[module(skip)]
    pub(crate) monitor: StepMonitor,
}

impl<B: Backend, T: Module<B> + ModelHook<B>> TunedLm<B, T> {
    /// Freeze `backbone` and pair it with `tuner`.
    pub fn new(backbone: Llama<B>, tuner: T) -> Self {
        Self { backbone: backbone.no_grad(), tuner, monitor: StepMonitor::default() }
    }

    pub(crate) fn with_monitor(mut self, monitor: StepMonitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// Forward pass and response-only loss of `batch` (see [`crate::batch`] for the masks and
    /// [`response_logits`] for what is computed).
    pub fn forward_loss(&self, batch: LmBatch<B>) -> LmOutput<B> {
        iapt_model::diagnostics::start();
        let (logits, targets) = response_logits(&self.backbone, &self.tuner, &batch);
        let diagnostics = iapt_model::diagnostics::finish::<B>();
        let (token_nll, argmax) = token_nll_and_argmax(logits, targets.clone());
        let correct = argmax.equal(targets);
        LmOutput { loss: token_nll.clone().mean(), token_nll: token_nll.detach(), correct, diagnostics }
    }
}

/// Logits `[n, vocab]` of the positions that predict the `n` response tokens of `batch` (row by
/// row, left to right: the order of [`LmBatch::loss_mask`]'s true cells), and those tokens `[n]`.
///
/// Only the positions that predict a response token go through the LM head: for a 49k
/// vocabulary the `[batch, tokens, vocab]` logits of every position would dominate memory and
/// time, while prompts are usually much longer than responses.
pub fn response_logits<B: Backend>(backbone: &Llama<B>, hook: &dyn ModelHook<B>, batch: &LmBatch<B>) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let [b, t] = batch.ids.dims();
    assert!(t >= 2, "sequences need at least two tokens");
    let hidden = backbone.forward(batch.tokens(), &mut KvCache::new(backbone.num_layers()), hook);
    // An input prefix (prompt tuning) adds positions in front: keep the real tokens only.
    let [_, total, d] = hidden.dims();
    let hidden = hidden.narrow(1, total - t, t);

    // Position i predicts token i + 1, so the rows we need are where loss_mask[:, 1..] holds.
    let predicts = batch.loss_mask.clone().narrow(1, 1, t - 1).reshape([b * (t - 1)]);
    let rows = predicts.argwhere();
    let n = rows.dims()[0];
    assert!(n > 0, "batch has no response tokens to score");
    let rows = rows.reshape([n]);
    let hidden = hidden.narrow(1, 0, t - 1).reshape([b * (t - 1), d]).select(0, rows.clone());
    let targets = batch.ids.clone().narrow(1, 1, t - 1).reshape([b * (t - 1)]).select(0, rows);

    let logits = backbone.logits(reshape(hidden, [1, n, d]));
    let vocab = logits.dims()[2];
    (reshape(logits, [n, vocab]), targets)
}

impl<B: Backend, T: TrainableTuner> TrainableTuner for TunedLm<B, T> {
    fn small_lr_params(&self) -> Vec<ParamId> {
        self.tuner.small_lr_params()
    }
    fn diagnostics(&self) -> Vec<&'static str> {
        self.tuner.diagnostics()
    }
}

/// One step's output: the loss to minimise and what the metrics need.
pub struct LmOutput<B: Backend> {
    /// `[1]`: mean NLL over the batch's response tokens (attached to the graph when training).
    pub loss: Tensor<B, 1>,
    /// `[n]`: NLL of each response token (detached).
    pub token_nll: Tensor<B, 1>,
    /// `[n]`: argmax prediction == target, per response token.
    pub correct: Tensor<B, 1, Bool>,
    /// The tuner's recorded scalars ([`iapt_model::diagnostics`]), batch means.
    pub diagnostics: Vec<(&'static str, f64)>,
}

/// Host-side numbers of one step, what the metrics read (burn syncs outputs on its metric thread).
#[derive(Debug, Clone, PartialEq)]
pub struct LmStepStats {
    /// NLL of each response token.
    pub token_nll: Vec<f32>,
    /// Response tokens predicted exactly (argmax).
    pub correct: usize,
    /// The tuner's recorded scalars, batch means.
    pub diagnostics: Vec<(&'static str, f64)>,
}

impl<B: Backend> ItemLazy for LmOutput<B> {
    type ItemSync = LmStepStats;

    fn sync(self) -> LmStepStats {
        let [nll, correct]: [_; 2] =
            Transaction::default().register(self.token_nll).register(self.correct.int().sum()).execute().try_into().expect("two tensors registered");
        let token_nll = nll.convert::<f32>().to_vec::<f32>().expect("float data");
        let correct = correct.iter::<i64>().next().unwrap_or(0) as usize;
        LmStepStats { token_nll, correct, diagnostics: self.diagnostics }
    }
}

impl<B, T> TrainStep for TunedLm<B, T>
where
    B: AutodiffBackend,
    T: AutodiffModule<B> + ModelHook<B> + ModuleDisplay + 'static,
    T::InnerModule: ModuleDisplay,
{
    type Input = LmBatch<B>;
    type Output = LmOutput<B>;

    fn step(&self, batch: LmBatch<B>) -> TrainOutput<LmOutput<B>> {
        let output = self.forward_loss(batch);
        let tokens = output.token_nll.dims()[0];
        self.monitor.record_train(output.loss.clone().into_scalar().elem::<f64>(), tokens);
        let grads = output.loss.backward();
        let item = LmOutput { loss: output.loss.detach(), ..output };
        TrainOutput::new(self, grads, item)
    }
}

impl<B, T> InferenceStep for TunedLm<B, T>
where
    B: Backend,
    T: Module<B> + ModelHook<B>,
{
    type Input = LmBatch<B>;
    type Output = LmOutput<B>;

    fn step(&self, batch: LmBatch<B>) -> LmOutput<B> {
        let output = self.forward_loss(batch);
        let tokens = output.token_nll.dims()[0];
        self.monitor.record_dev(output.loss.clone().into_scalar().elem::<f64>(), tokens);
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::LmExample;
    use iapt_model::score::next_token_nll;
    use iapt_model::{LlamaConfig, NoHook};

    type TestBackend = burn::backend::NdArray;

    /// A tuner that changes nothing.
    #[derive(Module, Debug)]
    struct Bare<B: Backend> {
        gain: burn::module::Param<Tensor<B, 1>>,
    }
    impl<B: Backend> ModelHook<B> for Bare<B> {}

    #[test]
    fn loss_is_the_masked_mean_of_next_token_nll() {
        let device = Default::default();
        let backbone = Llama::<TestBackend>::random(&LlamaConfig::tiny(), &device);
        let examples = [LmExample::new(vec![3, 4, 5, 6, 7], 2).unwrap(), LmExample::new(vec![8, 9, 10], 2).unwrap()];
        let batch = LmBatch::<TestBackend>::from_examples(&examples, 0, &device);

        // Reference: full-vocabulary NLL at every position, masked by the shifted loss mask.
        let hidden = backbone.forward(batch.tokens(), &mut KvCache::new(2), &NoHook);
        let nll = next_token_nll(backbone.logits(hidden), batch.ids.clone());
        let mask = batch.loss_mask.clone().narrow(1, 1, 4).float();
        let expected = (nll * mask.clone()).sum().into_scalar() / mask.sum().into_scalar();

        let model = TunedLm::new(backbone, Bare { gain: burn::module::Param::from_tensor(Tensor::ones([1], &device)) });
        let output = model.forward_loss(batch);
        assert_eq!(output.token_nll.dims(), [4]);
        let loss = output.loss.into_scalar();
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        let stats = LmOutput { loss: Tensor::zeros([1], &device), ..model.forward_loss(LmBatch::from_examples(&examples, 0, &device)) }.sync();
        assert_eq!(stats.token_nll.len(), 4);
        assert!(stats.correct <= 4);
    }
}
