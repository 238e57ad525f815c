//! One layer's prompt generator (method spec §2):
//! `X = H W_down + b_down`, `p = pool(X)`, `p' = g(p)`, `P = p' W_up + b_up`.

use crate::pooler::{Pooler, PoolerConfig, PoolerKind};
use crate::rational::{Activation, ActivationConfig};
use burn::module::{Initializer, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{backend::Backend, Bool, FloatDType, Tensor};

/// The bottleneck pair `d -> m -> d`, shared across layers or owned by one generator.
#[derive(Debug, Clone)]
pub struct ProjectionsConfig {
    /// Hidden size `d` of the backbone.
    pub d_model: usize,
    /// Bottleneck width `m`.
    pub bottleneck: usize,
    /// Init of W_up: see [`crate::IaptConfig::up_init_std`].
    pub up_init_std: Option<f64>,
}

impl ProjectionsConfig {
    /// `d -> m -> d` with burn's default `Linear` init.
    pub fn new(d_model: usize, bottleneck: usize) -> Self {
        Self { d_model, bottleneck, up_init_std: None }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Projections<B> {
        let down = LinearConfig::new(self.d_model, self.bottleneck).init(device);
        let up = match self.up_init_std {
            None => LinearConfig::new(self.bottleneck, self.d_model).init(device),
            Some(std) => {
                let mut up = LinearConfig::new(self.bottleneck, self.d_model).with_initializer(Initializer::Normal { mean: 0.0, std }).init(device);
                up.bias = Some(Initializer::Zeros.init([self.d_model], device));
                up
            }
        };
        Projections { down, up }
    }

    /// `2 d m + m + d`.
    pub fn num_params(&self) -> usize {
        2 * self.d_model * self.bottleneck + self.bottleneck + self.d_model
    }
}

/// `W_down, b_down` (`d -> m`) and `W_up, b_up` (`m -> d`).
#[derive(Module, Debug)]
pub struct Projections<B: Backend> {
    pub down: Linear<B>,
    pub up: Linear<B>,
}

/// One layer's generator.
#[derive(Debug, Clone)]
pub struct PromptGeneratorConfig {
    /// Shape and init of its bottleneck pair (its own, or the shared one it is handed).
    pub projections: ProjectionsConfig,
    /// `l_sp`.
    pub num_tokens: usize,
    pub pooler: PoolerKind,
    /// Scale pooler scores by 1/sqrt(m).
    pub pooler_scale: bool,
    pub activation: ActivationConfig,
    /// Give this generator its own projections (else it uses the caller's shared ones).
    pub own_projections: bool,
}

impl PromptGeneratorConfig {
    /// A generator of `num_tokens` soft tokens with the paper's pooler and activation, using
    /// shared projections of shape `projections`.
    pub fn new(projections: ProjectionsConfig, num_tokens: usize) -> Self {
        Self { projections, num_tokens, pooler: PoolerKind::SelfAttn, pooler_scale: false, activation: ActivationConfig::default(), own_projections: false }
    }

    fn pooler(&self) -> PoolerConfig {
        PoolerConfig { kind: self.pooler, scale: self.pooler_scale, ..PoolerConfig::new(self.projections.bottleneck, self.num_tokens) }
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> PromptGenerator<B> {
        PromptGenerator {
            projections: self.own_projections.then(|| self.projections.init(device)),
            pooler: self.pooler().init(device),
            activation: self.activation.init(device),
        }
    }

    /// Learnable scalars of this generator (its own projections included when it has them).
    pub fn num_params(&self) -> usize {
        let own = if self.own_projections { self.projections.num_params() } else { 0 };
        own + self.pooler().num_params() + self.activation.num_params()
    }
}

/// Reads `[b, n, d]` hidden states and the instruction mask, emits `[b, l_sp, d]` soft tokens.
#[derive(Module, Debug)]
pub struct PromptGenerator<B: Backend> {
    /// This layer's own projections; `None` when they are shared across layers.
    pub projections: Option<Projections<B>>,
    pub pooler: Pooler<B>,
    pub activation: Activation<B>,
}

impl<B: Backend> PromptGenerator<B> {
    /// Soft tokens for every row. `shared` is used when this generator has no projections of its
    /// own. The computation runs in the parameters' dtype (pooler softmax and activation in f32),
    /// and the result comes back in `hidden`'s dtype.
    pub fn forward(&self, hidden: Tensor<B, 3>, instruction: Tensor<B, 2, Bool>, shared: Option<&Projections<B>>) -> Tensor<B, 3> {
        let projections = self.projections.as_ref().or(shared).expect("a prompt generator needs its own or shared projections");
        let (hidden, instruction) = instruction_span(hidden, instruction);
        let dtype = hidden.dtype();
        let hidden = hidden.cast(FloatDType::from(projections.down.weight.val().dtype()));
        let x = project(&projections.down, hidden); // [b, n, m]
        let pooled = self.pooler.forward(x, instruction); // [b, l_sp, m]
        let activated = self.activation.forward(pooled);
        project(&projections.up, activated).cast(FloatDType::from(dtype)) // [b, l_sp, d]
    }
}

/// `x W + b` for `x` `[b, n, i]` as one `[b n, i]` product, the formula of burn's `Linear`: on
/// the CPU backends the kernels run it and both its gradients, where burn's `Linear` runs a 3-D
/// input as a batched product per sequence (`iapt bench train --batch 8 --prompt-tokens 120
/// --response-tokens 8`: the forward's work outside the backbone 311–319 → 274–276 ms a step);
/// burn's matmul elsewhere.
fn project<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, n, i] = x.dims();
    let out = iapt_kernels::matmul(x.reshape([b * n, i]), linear.weight.val());
    let out = match &linear.bias {
        Some(bias) => out + bias.val().unsqueeze(),
        None => out,
    };
    let o = out.dims()[1];
    out.reshape([b, n, o])
}

/// `hidden` `[b, n, d]` and `instruction` `[b, n]` narrowed to the positions from the first to
/// the last instruction row of any sequence: every pooler leaves the rows outside the mask out
/// exactly (zero weight, excluded from sums, maxima and "last"), so the generator need not
/// project them, and a training batch's responses are most of its positions. Only on the CPU
/// backends, where reading the mask costs nothing (a GPU backend would wait for it), and only
/// when some row is an instruction row (an empty mask is the pooler's own case).
fn instruction_span<B: Backend>(hidden: Tensor<B, 3>, instruction: Tensor<B, 2, Bool>) -> (Tensor<B, 3>, Tensor<B, 2, Bool>) {
    if !iapt_kernels::accelerated::<B>() {
        return (hidden, instruction);
    }
    let [_, n] = instruction.dims();
    let Some(mask) = iapt_kernels::host::bool_values(&instruction) else { return (hidden, instruction) };
    let used = |j: &usize| mask.iter().skip(*j).step_by(n.max(1)).any(|&m| m);
    let (Some(lo), Some(hi)) = ((0..n).find(used), (0..n).rev().find(used)) else { return (hidden, instruction) };
    if lo == 0 && hi == n - 1 {
        return (hidden, instruction);
    }
    (hidden.narrow(1, lo, hi + 1 - lo), instruction.narrow(1, lo, hi + 1 - lo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rational::ActivationKind;
    use burn::tensor::{Distribution, TensorData};
    type TB = burn::backend::NdArray;

    fn host<const D: usize>(t: Tensor<TB, D>) -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec().unwrap()
    }

    /// The generator equals the spec's formula written out with plain host arithmetic.
    #[test]
    fn forward_equals_the_formula() {
        let device = Default::default();
        <TB as Backend>::seed(&device, 3);
        let (d, m, l, n) = (6, 3, 2, 4);
        let activation = ActivationConfig { kind: ActivationKind::Gelu, ..Default::default() };
        let config = PromptGeneratorConfig { own_projections: true, activation, ..PromptGeneratorConfig::new(ProjectionsConfig::new(d, m), l) };
        let generator = config.init::<TB>(&device);
        let h = Tensor::<TB, 3>::random([1, n, d], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<TB, 2, Bool>::from_data(TensorData::new(vec![true, true, true, false], [1, n]), &device);
        let got = host(generator.forward(h.clone(), mask, None));

        let p = generator.projections.as_ref().unwrap();
        let (wd, bd, wu, bu) =
            (host(p.down.weight.val()), host(p.down.bias.as_ref().unwrap().val()), host(p.up.weight.val()), host(p.up.bias.as_ref().unwrap().val()));
        let wq = host(generator.pooler.queries.as_ref().unwrap().val());
        let h = host(h);
        let x: Vec<Vec<f64>> = (0..3).map(|i| (0..m).map(|k| bd[k] + (0..d).map(|j| h[i * d + j] * wd[j * m + k]).sum::<f64>()).collect()).collect();
        for t in 0..l {
            let scores: Vec<f64> = x.iter().map(|row| (0..m).map(|k| row[k] * wq[k * l + t]).sum()).collect();
            let z: f64 = scores.iter().map(|s| s.exp()).sum();
            let pooled: Vec<f64> = (0..m).map(|k| x.iter().zip(&scores).map(|(row, s)| s.exp() / z * row[k]).sum()).collect();
            let act: Vec<f64> = pooled.iter().map(|&v| crate::gelu_fit::gelu(v)).collect();
            for o in 0..d {
                let want = bu[o] + (0..m).map(|k| act[k] * wu[k * d + o]).sum::<f64>();
                assert!((got[t * d + o] - want).abs() < 1e-5, "token {t} dim {o}: {} vs {want}", got[t * d + o]);
            }
        }
    }

    /// Narrowing to the instruction span changes nothing: for every pooler, soft tokens and
    /// every parameter's gradient equal the generator's steps run over all positions, with
    /// sequences whose instructions sit at different places (one has none).
    #[test]
    fn instruction_span_gives_the_same_tokens_and_gradients() {
        type AD = burn::backend::Autodiff<TB>;
        let device = Default::default();
        let (b, n, d) = (3, 9, 8);
        let rows = [2..5, 3..7, 0..0];
        let mask: Vec<bool> = rows.iter().flat_map(|r| (0..n).map(move |j| r.contains(&j))).collect();
        for pooler in [PoolerKind::SelfAttn, PoolerKind::Mean, PoolerKind::Max, PoolerKind::Last] {
            let config = PromptGeneratorConfig { own_projections: true, pooler, ..PromptGeneratorConfig::new(ProjectionsConfig::new(d, 4), 2) };
            let g = config.init::<AD>(&device);
            let h = Tensor::<AD, 3>::random([b, n, d], Distribution::Normal(0.0, 1.0), &device);
            let mask = Tensor::<AD, 2, Bool>::from_data(TensorData::new(mask.clone(), [b, n]), &device);
            // Positions 2..7 hold every instruction row: that is what the generator reads.
            assert_eq!(instruction_span(h.clone(), mask.clone()).0.dims(), [b, 5, d]);
            let narrowed = g.forward(h.clone(), mask.clone(), None);
            let p = g.projections.as_ref().unwrap();
            let full = p.up.forward(g.activation.forward(g.pooler.forward(p.down.forward(h), mask)));
            let (got, want) = (host(narrowed.clone().inner()), host(full.clone().inner()));
            for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                assert!((x - y).abs() < 1e-6, "{pooler:?}: element {i}: {x} vs {y}");
            }
            let w = Tensor::<AD, 3>::random(full.dims(), Distribution::Normal(0.0, 1.0), &device);
            let (gn, gf) = ((narrowed * w.clone()).sum().backward(), (full * w).sum().backward());
            let mut params = vec![p.down.weight.clone(), p.up.weight.clone()];
            if let Some(q) = &g.pooler.queries {
                params.push(q.clone());
            }
            for param in params {
                let (x, y) = (host(param.grad(&gn).unwrap()), host(param.grad(&gf).unwrap()));
                let scale = y.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
                assert!(x.iter().zip(&y).all(|(x, y)| (x - y).abs() <= 1e-5 * scale), "{pooler:?}: gradients differ");
            }
        }
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let device = Default::default();
        for own in [false, true] {
            for pooler in [PoolerKind::SelfAttn, PoolerKind::Mean] {
                let config = PromptGeneratorConfig { own_projections: own, pooler, ..PromptGeneratorConfig::new(ProjectionsConfig::new(10, 4), 3) };
                assert_eq!(Module::num_params(&config.init::<TB>(&device)), config.num_params());
            }
        }
        let shared = ProjectionsConfig::new(10, 4);
        assert_eq!(Module::num_params(&shared.init::<TB>(&device)), shared.num_params());
    }

    #[test]
    fn up_init_std_zero_gives_input_independent_zero_tokens() {
        let device = Default::default();
        let projections = ProjectionsConfig { up_init_std: Some(0.0), ..ProjectionsConfig::new(8, 4) };
        let config = PromptGeneratorConfig { own_projections: true, ..PromptGeneratorConfig::new(projections, 2) };
        let g = config.init::<TB>(&device);
        let h = Tensor::<TB, 3>::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let mask = Tensor::<TB, 2, Bool>::full([2, 3], true, &device);
        assert!(host(g.forward(h, mask, None)).iter().all(|&v| v == 0.0));
    }
}
