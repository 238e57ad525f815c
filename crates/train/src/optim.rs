//! AdamW with two parameter groups, global-norm gradient clipping and gradient averaging.
//!
//! burn 0.21 has no parameter groups: an `OptimizerAdaptor` applies one `SimpleOptimizer` (one
//! learning rate, one weight decay) to every parameter that has a gradient, and its
//! `GradientClipping::Norm` clips each tensor by its own norm. The burn-native way to get more is
//! to implement [`Optimizer`] — the trait the `Learner` is generic over — so this type does:
//! it splits the step's [`GradientsParams`] by [`ParamId`] into the tuner's small-LR group
//! ([`TrainableTuner::small_lr_params`]) and the rest, and steps two ordinary AdamW adaptors on
//! the same module, the small group at `lr * small_lr_ratio` with no weight decay. Both groups
//! follow the same schedule, and the optimiser state is the pair of the two adaptors' records.

use crate::monitor::StepMonitor;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, LearningRate, MultiGradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use iapt_model::TrainableTuner;
use std::collections::HashSet;

/// How [`GroupedAdamW`] is set up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupedAdamWConfig {
    /// First-moment decay. Default 0.9.
    pub beta_1: f32,
    /// Second-moment decay. Default 0.999.
    pub beta_2: f32,
    /// Denominator epsilon. Default 1e-8 (burn's AdamW default is 1e-5).
    pub epsilon: f32,
    /// Decoupled weight decay of the main group (the small-LR group gets none).
    pub weight_decay: f32,
    /// Small-group learning rate / main learning rate.
    pub small_lr_ratio: f64,
    /// Clip the global L2 norm of all gradients (after averaging) to this; `None` = no clipping.
    pub max_grad_norm: Option<f32>,
    /// Multiplies every gradient before clipping. burn-train *sums* gradients over accumulated
    /// batches and over devices, so `1 / (accumulation * devices)` turns the sum into the mean.
    pub grad_scale: f32,
}

impl Default for GroupedAdamWConfig {
    fn default() -> Self {
        Self { beta_1: 0.9, beta_2: 0.999, epsilon: 1e-8, weight_decay: 0.0, small_lr_ratio: 1.0, max_grad_norm: None, grad_scale: 1.0 }
    }
}

impl GroupedAdamWConfig {
    /// The optimiser; it skips every step once `monitor` has seen a non-finite loss, so the
    /// model keeps its last finite parameters.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self, monitor: StepMonitor) -> GroupedAdamW<M, B> {
        let adamw = |decay: f32| {
            AdamWConfig::new().with_beta_1(self.beta_1).with_beta_2(self.beta_2).with_epsilon(self.epsilon).with_weight_decay(decay).init::<B, M>()
        };
        GroupedAdamW { main: adamw(self.weight_decay), small: adamw(0.0), config: *self, monitor }
    }
}

/// See the module docs.
pub struct GroupedAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    main: OptimizerAdaptor<AdamW, M, B>,
    small: OptimizerAdaptor<AdamW, M, B>,
    config: GroupedAdamWConfig,
    monitor: StepMonitor,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Clone for GroupedAdamW<M, B> {
    fn clone(&self) -> Self {
        Self { main: self.main.clone(), small: self.small.clone(), config: self.config, monitor: self.monitor.clone() }
    }
}

type AdaptorRecord<M, B> = <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record;

impl<M, B> Optimizer<M, B> for GroupedAdamW<M, B>
where
    M: AutodiffModule<B> + TrainableTuner,
    B: AutodiffBackend,
{
    /// (main group, small-LR group): each adaptor keeps state only for the parameters it stepped.
    type Record = (AdaptorRecord<M, B>, AdaptorRecord<M, B>);

    fn step(&mut self, lr: LearningRate, module: M, mut grads: GradientsParams) -> M {
        if self.monitor.non_finite().is_some() {
            return module;
        }
        let scale = self.gradient_scale(&module, &grads);
        let mut regroup = Regroup::<B> { grads: &mut grads, small: GradientsParams::new(), small_ids: module.small_lr_params().into_iter().collect(), scale };
        module.visit(&mut regroup);
        let small = regroup.small;
        let module = self.main.step(lr, module, grads);
        if small.is_empty() {
            module
        } else {
            self.small.step(lr * self.config.small_lr_ratio, module, small)
        }
    }

    /// Gradients from several devices (burn-train's sharded multi-device strategy): each
    /// parameter's gradients are summed on the device burn assigns to it, then the step is the
    /// single-gradient step (the adaptor moves each parameter to its gradient's device).
    fn step_multi(&mut self, lr: LearningRate, module: M, mut grads: MultiGradientsParams) -> M {
        let mut gather = Gather::<B> { multi: &mut grads, single: GradientsParams::new(), _b: Default::default() };
        module.visit(&mut gather);
        let single = gather.single;
        self.step(lr, module, single)
    }

    fn to_record(&self) -> Self::Record {
        (self.main.to_record(), self.small.to_record())
    }

    fn load_record(mut self, (main, small): Self::Record) -> Self {
        self.main = self.main.load_record(main);
        self.small = self.small.load_record(small);
        self
    }
}

/// What every gradient is multiplied by this step.
enum Scale<B: AutodiffBackend> {
    None,
    Constant(f32),
    /// `[1]`, computed on the device (no host sync): `grad_scale * min(1, max / norm)`.
    Tensor(Tensor<B::InnerBackend, 1>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> GroupedAdamW<M, B> {
    fn gradient_scale(&self, module: &M, grads: &GradientsParams) -> Scale<B> {
        let scale = self.config.grad_scale;
        let Some(max_norm) = self.config.max_grad_norm else {
            return if scale == 1.0 { Scale::None } else { Scale::Constant(scale) };
        };
        let mut squares = SumOfSquares::<B> { grads, total: None };
        module.visit(&mut squares);
        match squares.total {
            None => Scale::None,
            Some(total) => {
                let norm = total.sqrt().mul_scalar(scale);
                let clip = norm.add_scalar(1e-6).recip().mul_scalar(max_norm).clamp_max(1.0);
                Scale::Tensor(clip.mul_scalar(scale))
            }
        }
    }
}

/// Sum of squared gradient entries over the module's parameters.
struct SumOfSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumOfSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let squares = grad.square().sum();
            self.total = Some(match self.total.take() {
                None => squares,
                Some(total) => {
                    let device = total.device();
                    total + squares.to_device(&device)
                }
            });
        }
    }
}

/// Rescales every gradient and moves the small-LR group's into their own [`GradientsParams`].
struct Regroup<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    small: GradientsParams,
    small_ids: HashSet<ParamId>,
    scale: Scale<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Regroup<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let grad = match &self.scale {
            Scale::None => grad,
            Scale::Constant(c) => grad.mul_scalar(*c),
            Scale::Tensor(t) => {
                let t = t.clone().to_device(&grad.device());
                grad * t.unsqueeze::<D>()
            }
        };
        let target = if self.small_ids.contains(&param.id) { &mut self.small } else { &mut *self.grads };
        target.register::<B::InnerBackend, D>(param.id, grad);
    }
}

/// Sums per-device gradients into one [`GradientsParams`].
struct Gather<'a, B: AutodiffBackend> {
    multi: &'a mut MultiGradientsParams,
    single: GradientsParams,
    _b: core::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((grad, _device)) = self.multi.remove::<B::InnerBackend, D>(param.id) {
            self.single.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::backend::Backend;
    use burn::tensor::TensorData;

    type TestBackend = burn::backend::Autodiff<burn::backend::NdArray>;

    #[derive(Module, Debug)]
    struct TwoGroups<B: Backend> {
        weight: Param<Tensor<B, 2>>,
        coefficients: Param<Tensor<B, 1>>,
    }

    impl<B: Backend> TrainableTuner for TwoGroups<B> {
        fn small_lr_params(&self) -> Vec<ParamId> {
            vec![self.coefficients.id]
        }
    }

    fn module() -> TwoGroups<TestBackend> {
        let device = Default::default();
        TwoGroups {
            weight: Param::from_tensor(Tensor::from_data(TensorData::from([[1.0f32, 2.0], [3.0, 4.0]]), &device)),
            coefficients: Param::from_tensor(Tensor::from_data(TensorData::from([1.0f32, -1.0]), &device)),
        }
    }

    /// Gradients of `sum(weight) * k + sum(coefficients) * k`.
    fn grads(m: &TwoGroups<TestBackend>, k: f32) -> GradientsParams {
        let loss = m.weight.val().sum().mul_scalar(k) + m.coefficients.val().sum().mul_scalar(k);
        GradientsParams::from_grads(loss.backward(), m)
    }

    fn values<const D: usize>(p: &Param<Tensor<TestBackend, D>>) -> Vec<f32> {
        p.val().into_data().to_vec().unwrap()
    }

    #[test]
    fn groups_get_their_own_rate_and_decay() {
        let m = module();
        let config = GroupedAdamWConfig { weight_decay: 0.5, small_lr_ratio: 0.01, ..Default::default() };
        let mut optim = config.init::<TestBackend, TwoGroups<TestBackend>>(StepMonitor::default());
        let g = grads(&m, 1.0);
        let m = optim.step(0.1, m, g);
        // Adam's first step moves every entry by lr (sign of the gradient); AdamW decays by lr * wd.
        let w = values(&m.weight);
        let expected_w: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x * (1.0 - 0.05) - 0.1).collect();
        for (a, b) in w.iter().zip(&expected_w) {
            assert!((a - b).abs() < 1e-5, "{w:?} vs {expected_w:?}");
        }
        let c = values(&m.coefficients);
        assert!((c[0] - (1.0 - 0.001)).abs() < 1e-6 && (c[1] - (-1.0 - 0.001)).abs() < 1e-6, "{c:?}");
        let (main, small) = optim.to_record();
        assert_eq!((main.len(), small.len()), (1, 1), "each group keeps state for its own parameters");
    }

    #[test]
    fn global_norm_clipping_scales_all_gradients_together() {
        let m = module();
        // Gradient 3 everywhere: global norm = 3 * sqrt(6); clip to 1 => each entry 1/sqrt(6).
        let config = GroupedAdamWConfig { max_grad_norm: Some(1.0), ..Default::default() };
        let optim = config.init::<TestBackend, TwoGroups<TestBackend>>(StepMonitor::default());
        let g = grads(&m, 3.0);
        let Scale::Tensor(coef) = optim.gradient_scale(&m, &g) else { panic!("expected a clip coefficient") };
        let coef: f32 = coef.into_scalar();
        assert!((coef * 3.0 - 1.0 / 6f32.sqrt()).abs() < 1e-5, "{coef}");

        // Below the threshold nothing changes; averaging alone is a constant.
        let config = GroupedAdamWConfig { max_grad_norm: Some(100.0), grad_scale: 0.5, ..Default::default() };
        let optim = config.init::<TestBackend, TwoGroups<TestBackend>>(StepMonitor::default());
        let Scale::Tensor(coef) = optim.gradient_scale(&m, &g) else { panic!() };
        assert!((coef.into_scalar() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn steps_are_skipped_after_a_non_finite_loss() {
        let interrupter = burn::train::Interrupter::new();
        let monitor = StepMonitor::new(interrupter);
        let m = module();
        let mut optim = GroupedAdamWConfig::default().init::<TestBackend, TwoGroups<TestBackend>>(monitor.clone());
        monitor.record_train(f64::INFINITY, 1);
        let g = grads(&m, 1.0);
        let before = values(&m.weight);
        let m = optim.step(0.1, m, g);
        assert_eq!(values(&m.weight), before);
    }
}
