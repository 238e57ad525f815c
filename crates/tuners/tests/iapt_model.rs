//! IAPT on a tiny random LLaMA, through the model's forward, KV cache and generation loop,
//! against a naive f64 reference.

mod reference;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use iapt_model::hook::{LayerInput, LayerPrefix, ModelHook};
use iapt_model::{generate, GenerationConfig, KvCache, Llama, LlamaConfig, NoHook, Padding, SamplingConfig, TokenBatch};
use iapt_tuners::adapter::{load_module_tensors, module_tensors, ParamCount};
use iapt_tuners::{ActivationKind, GeneratorInput, Iapt, IaptConfig, PoolerKind, PrefixPositions, SoftTokenSpace};
use reference::{max_diff, reference_iapt_logits, reference_logits, TB};
use std::cell::{Cell, RefCell};

type AD = burn::backend::Autodiff<TB>;

const SEQ: [u32; 7] = [5, 17, 42, 3, 88, 61, 9];
/// Tokens of SEQ that form the instruction; the rest is the response.
const N_INSTRUCTION: usize = 4;

fn tiny<B: Backend>(seed: u64, tied: bool) -> Llama<B> {
    B::seed(&Default::default(), seed);
    let mut c = LlamaConfig::tiny();
    c.tie_word_embeddings = tied;
    Llama::random(&c, &Default::default())
}

fn iapt<B: Backend>(config: &IaptConfig, seed: u64) -> Iapt<B> {
    B::seed(&Default::default(), seed);
    config.init(&LlamaConfig::tiny(), &Default::default())
}

/// The ablation grid the reference is checked on (every [decision] switch at least once).
fn configs() -> Vec<IaptConfig> {
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

fn ids_tensor<B: Backend>(rows: &[Vec<u32>]) -> Tensor<B, 2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat().iter().map(|&v| v as i64).collect::<Vec<_>>(), [b, t]), &Default::default())
}

/// A dense batch whose first `n_instruction` tokens per row are the instruction.
fn instruction_batch<B: Backend>(rows: &[Vec<u32>], n_instruction: usize) -> TokenBatch<B> {
    let (b, t) = (rows.len(), rows[0].len());
    let mask: Vec<bool> = (0..b).flat_map(|_| (0..t).map(move |i| i < n_instruction)).collect();
    TokenBatch::dense(ids_tensor(rows)).with_instruction(Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [b, t]), &Default::default()))
}

fn rows_of<B: Backend>(t: Tensor<B, 3>) -> Vec<Vec<Vec<f32>>> {
    let [b, s, v] = t.dims();
    let data: Vec<f32> = t.into_data().convert::<f32>().to_vec().unwrap();
    (0..b).map(|i| (0..s).map(|j| data[(i * s + j) * v..(i * s + j + 1) * v].to_vec()).collect()).collect()
}

fn logits<B: Backend>(model: &Llama<B>, batch: TokenBatch<B>, hook: &dyn ModelHook<B>) -> Vec<Vec<Vec<f32>>> {
    rows_of(model.logits(model.forward(batch, &mut KvCache::new(model.layers.len()), hook)))
}

fn max_abs(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Wraps a hook: counts prefix requests and records the soft tokens of every layer.
struct Recording<'a, B: Backend> {
    inner: &'a Iapt<B>,
    calls: Cell<usize>,
    tokens: RefCell<Vec<Tensor<B, 3>>>,
}

impl<'a, B: Backend> Recording<'a, B> {
    fn new(inner: &'a Iapt<B>) -> Self {
        Self { inner, calls: Cell::new(0), tokens: RefCell::new(Vec::new()) }
    }
}

impl<B: Backend> ModelHook<B> for Recording<'_, B> {
    fn position_offset(&self) -> usize {
        self.inner.position_offset()
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        self.calls.set(self.calls.get() + 1);
        let prefix = self.inner.layer_prefix(layer, input);
        if let Some(LayerPrefix::Hidden { tokens, .. }) = &prefix {
            self.tokens.borrow_mut().push(tokens.clone());
        }
        prefix
    }
}

#[test]
fn iapt_forward_matches_the_naive_f64_reference() {
    for (i, config) in configs().iter().enumerate() {
        let model = tiny::<TB>(10 + i as u64, i % 2 == 1);
        let iapt = iapt::<TB>(config, 100 + i as u64);
        let got = logits(&model, instruction_batch(&[SEQ.to_vec()], N_INSTRUCTION), &iapt).remove(0);
        let want = reference_iapt_logits(&model, &iapt, &SEQ, N_INSTRUCTION);
        for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(max_diff(g, w) < 1e-4, "config {i} ({config:?}) position {pos}: logits differ from the reference by {}", max_diff(g, w));
        }
        // IAPT changes the output (so the comparison is not vacuous).
        let bare = reference_logits(&model, &SEQ, &[], 0);
        assert!(max_diff(&got[N_INSTRUCTION], &bare[N_INSTRUCTION]) > 1e-3, "config {i}: IAPT had no effect");
    }
}

/// The model only computes K/V for the soft tokens; the reference runs them through the whole
/// layer (attention + MLP, outputs dropped). Same soft tokens in, same logits out.
#[test]
fn kv_prefix_shortcut_equals_running_soft_tokens_through_the_layer() {
    for config in [
        IaptConfig::new(8),
        IaptConfig::new(8).with_prefix_positions(PrefixPositions::Unrotated),
        IaptConfig::new(8).with_soft_token_space(SoftTokenSpace::Normed),
    ] {
        let model = tiny::<TB>(21, false);
        let iapt = iapt::<TB>(&config, 22);
        let recording = Recording::new(&iapt);
        let got = logits(&model, instruction_batch(&[SEQ.to_vec()], N_INSTRUCTION), &recording).remove(0);
        let soft: Vec<Option<Vec<Vec<f64>>>> = recording
            .tokens
            .borrow()
            .iter()
            .map(|t| Some(rows_of(t.clone()).remove(0).iter().map(|r| r.iter().map(|&v| v as f64).collect()).collect()))
            .collect();
        assert_eq!(soft.len(), 2);
        let shifted = config.prefix_positions == PrefixPositions::Shifted;
        let offset = if shifted { 4 } else { 0 };
        let norm_soft = config.soft_token_space == SoftTokenSpace::Hidden;
        let want = reference::reference_logits_generated(&model, &SEQ, offset, shifted, norm_soft, &|l, _, _| soft[l].clone());
        for (g, w) in got.iter().zip(&want) {
            assert!(max_diff(g, w) < 1e-4, "{config:?}: shortcut differs by {}", max_diff(g, w));
        }
    }
}

#[test]
fn response_tokens_never_change_the_prompts_or_instruction_logits() {
    let model = tiny::<TB>(31, true);
    for config in configs() {
        let iapt = iapt::<TB>(&config, 32);
        let run = |seq: Vec<u32>| {
            let recording = Recording::new(&iapt);
            let out = logits(&model, instruction_batch(&[seq], N_INSTRUCTION), &recording).remove(0);
            let tokens: Vec<Vec<Vec<f32>>> = recording.tokens.borrow().iter().map(|t| rows_of(t.clone()).remove(0)).collect();
            (out, tokens)
        };
        let (base_logits, base_tokens) = run(SEQ.to_vec());
        let mut other = SEQ.to_vec();
        other[N_INSTRUCTION..].copy_from_slice(&[1, 2, 90]);
        let (logits2, tokens2) = run(other);
        for (layer, (a, b)) in base_tokens.iter().zip(&tokens2).enumerate() {
            assert_eq!(a, b, "{config:?}: layer {layer}'s soft tokens depend on the response");
        }
        assert_eq!(&base_logits[..N_INSTRUCTION], &logits2[..N_INSTRUCTION], "{config:?}: instruction logits depend on the response");
        // Changing an instruction token does change the prompts (the check can fail).
        let mut other = SEQ.to_vec();
        other[1] = 70;
        let (_, tokens3) = run(other);
        assert!(max_abs(&base_tokens[1], &tokens3[1]) > 1e-5, "{config:?}: prompts ignore the instruction");
    }
}

/// Teacher-forced forward with instruction = prompt equals prefill(prompt) + one-token decode
/// steps; the generators run once per layer at prefill and never at decode.
#[test]
fn cached_generation_equals_full_recompute_and_decode_never_calls_the_generators() {
    for (i, config) in configs().iter().enumerate() {
        let model = tiny::<TB>(40 + i as u64, i % 2 == 0);
        let iapt = iapt::<TB>(config, 41);
        let prompt = 3;
        let full = logits(&model, instruction_batch(&[SEQ.to_vec()], prompt), &iapt).remove(0);
        let hook = Recording::new(&iapt);
        let mut cache = KvCache::new(model.layers.len());
        let prefill = TokenBatch::padded(&[SEQ[..prompt].to_vec()], 0, Padding::Left, &Default::default());
        let mut got = rows_of(model.logits(model.forward(prefill, &mut cache, &hook))).remove(0);
        assert_eq!(hook.calls.get(), model.layers.len(), "one generator call per layer at prefill");
        for &t in &SEQ[prompt..] {
            got.extend(rows_of(model.logits(model.forward(TokenBatch::dense(ids_tensor(&[vec![t]])), &mut cache, &hook))).remove(0));
        }
        assert_eq!(hook.calls.get(), model.layers.len(), "decode steps called the generators");
        assert_eq!(cache.len(0), config.num_soft_tokens + SEQ.len(), "prefix slots + tokens in the cache");
        let d = max_abs(&got, &full);
        assert!(d < 1e-4, "config {i}: cached and full logits differ by {d}");
    }
}

/// Every float parameter of a module with its path, for reporting.
fn param_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    module_tensors(module).into_keys().collect()
}

/// Paths of the parameters that have (or lack) a gradient, and whether it is non-zero.
struct GradCheck<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    with: Vec<(String, bool)>,
    without: Vec<String>,
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

/// Mean next-token cross-entropy over the response positions (the training loss).
fn response_loss<B: Backend>(model: &Llama<B>, hook: &dyn ModelHook<B>, seq: &[u32], n_instruction: usize) -> Tensor<B, 1> {
    let hidden = model.forward(instruction_batch(&[seq.to_vec()], n_instruction), &mut KvCache::new(model.layers.len()), hook);
    let logits = model.logits(hidden); // [1, t, V]
    let t = seq.len();
    let predicting = n_instruction - 1..t - 1; // positions whose next token is a response token
    let n = predicting.len();
    let logp = burn::tensor::activation::log_softmax(logits.slice([0..1, predicting.clone()]), 2); // [1, n, V]
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(seq[n_instruction..].iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]), &Default::default());
    let picked = logp.gather(2, targets.reshape([1, n, 1])); // [1, n, 1]
    picked.mean().neg()
}

#[test]
fn gradients_reach_every_generator_parameter_and_never_the_backbone() {
    for share in [true, false] {
        let model = tiny::<AD>(50, false).no_grad();
        let iapt = iapt::<AD>(&IaptConfig::new(8).with_share_projections(share), 51);
        let loss = response_loss(&model, &iapt, &SEQ, N_INSTRUCTION);
        let grads = loss.backward();

        let mut check = GradCheck::<AD> { grads: &grads, path: vec![], with: vec![], without: vec![] };
        iapt.visit(&mut check);
        assert!(check.without.is_empty(), "share={share}: no gradient for {:?}", check.without);
        let zero: Vec<_> = check.with.iter().filter(|(_, nz)| !nz).map(|(n, _)| n).collect();
        assert!(zero.is_empty(), "share={share}: all-zero gradient for {zero:?}");
        let expected = param_paths(&iapt);
        assert_eq!(check.with.len(), expected.len());
        for part in ["down.weight", "down.bias", "up.weight", "up.bias", "layers.0.pooler.queries", "layers.1.pooler.queries", "layers.0.activation.rational.numerator", "layers.1.activation.rational.denominator"] {
            assert!(expected.iter().any(|p| p.contains(part)), "{part} not among {expected:?}");
        }

        let mut backbone = GradCheck::<AD> { grads: &grads, path: vec![], with: vec![], without: vec![] };
        model.visit(&mut backbone);
        let leaked: Vec<_> = backbone.with.iter().map(|(n, _)| n).collect();
        assert!(leaked.is_empty(), "share={share}: frozen backbone got gradients for {leaked:?}");
        assert!(!backbone.without.is_empty());
    }
}

/// Autodiff d loss / d (a few generator parameters) against central differences, in f32.
#[test]
fn generator_gradients_match_finite_differences() {
    let config = IaptConfig::new(6);
    let model_ad = tiny::<AD>(60, false).no_grad();
    let iapt_ad = iapt::<AD>(&config, 61);
    let grads = response_loss(&model_ad, &iapt_ad, &SEQ, N_INSTRUCTION).backward();
    let grad_of = |path: &str| -> Vec<f32> {
        let mut found = None;
        struct Find<'a> {
            want: &'a str,
            grads: &'a <AD as AutodiffBackend>::Gradients,
            path: Vec<String>,
            found: &'a mut Option<Vec<f32>>,
        }
        impl ModuleVisitor<AD> for Find<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.into());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
                if self.path.join(".") == self.want {
                    *self.found = Some(param.grad(self.grads).unwrap().into_data().to_vec().unwrap());
                }
            }
        }
        iapt_ad.visit(&mut Find { want: path, grads: &grads, path: vec![], found: &mut found });
        found.unwrap_or_else(|| panic!("no parameter {path}"))
    };

    // The same weights on the plain backend for the finite differences (converted, not re-drawn
    // from a seed: tests run in parallel and share the backend's RNG).
    let model = model_ad.valid();
    let tensors = module_tensors(&iapt_ad);
    let template = iapt_ad.valid();
    let loss_with = |path: &str, index: usize, delta: f32| -> f64 {
        let mut t = tensors.clone();
        t.get_mut(path).unwrap().data[index] += delta;
        let iapt = load_module_tensors(template.clone(), t, std::path::Path::new("memory")).unwrap();
        response_loss(&model, &iapt, &SEQ, N_INSTRUCTION).into_scalar() as f64
    };
    let eps = 1e-2f32;
    let mut checked = 0;
    // Per parameter, the entry with the largest gradient (random weights: a fixed index may
    // happen to have a negligible one, which would check nothing).
    for path in [
        "shared.down.weight",
        "shared.down.bias",
        "shared.up.weight",
        "shared.up.bias",
        "layers.0.pooler.queries",
        "layers.1.pooler.queries",
        "layers.0.activation.rational.numerator",
        "layers.1.activation.rational.numerator",
        "layers.1.activation.rational.denominator",
    ] {
        let grad = grad_of(path);
        let index = (0..grad.len()).max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs())).unwrap();
        let analytic = grad[index] as f64;
        let numeric = (loss_with(path, index, eps) - loss_with(path, index, -eps)) / (2.0 * eps as f64);
        // f32 loss ~ 4.6 carries ~5e-7 rounding, i.e. ~3e-5 after dividing by 2 eps; the O(eps^2)
        // truncation error is a few percent at most for these smooth functions.
        let tolerance = 1e-4 + 0.03 * numeric.abs().max(analytic.abs());
        assert!((analytic - numeric).abs() <= tolerance, "{path}[{index}]: autodiff {analytic:.6}, finite difference {numeric:.6}");
        if analytic.abs() > 1e-3 {
            checked += 1;
        }
    }
    assert!(checked >= 7, "too few gradients large enough to be a meaningful check ({checked})");
}

#[test]
fn parameter_counts_for_real_shapes() {
    let smol = LlamaConfig::smollm2_135m();
    let llama7 = LlamaConfig::llama2_7b();
    let mut report = String::new();
    for (name, base, bottleneck) in [("SmolLM2-135M", &smol, 64usize), ("SmolLM2-135M", &smol, 45), ("LLaMA-2 7B", &llama7, 320)] {
        for share in [true, false] {
            let config = IaptConfig::new(bottleneck).with_share_projections(share);
            let n = config.num_params(base);
            report += &format!("{name} m={bottleneck} share_projections={share}: {n} ({})\n", ParamCount::new(n, base.num_params()));
        }
    }
    println!("{report}");
    // By hand: LLaMA-2 7B, m = 320, unshared: 32 * (2*4096*320 + 320 + 4096 + 320*4 + 10).
    assert_eq!(IaptConfig::new(320).with_share_projections(false).num_params(&llama7), 32 * (2 * 4096 * 320 + 320 + 4096 + 320 * 4 + 10));
    assert_eq!(IaptConfig::new(320).num_params(&llama7), 2 * 4096 * 320 + 320 + 4096 + 32 * (320 * 4 + 10));
    // The SmolLM2-shaped module itself (cheap) agrees with the formula in both modes.
    for share in [true, false] {
        let config = IaptConfig::new(64).with_share_projections(share);
        let built = config.init::<TB>(&smol, &Default::default());
        assert_eq!(built.num_params(), config.num_params(&smol), "share={share}");
    }
}

#[test]
fn batched_generation_matches_each_prompt_alone() {
    let model = tiny::<TB>(70, true);
    let iapt = iapt::<TB>(&IaptConfig::new(8), 71);
    let prompts = vec![vec![5u32, 17, 42, 3, 88], vec![7, 8], vec![60, 1, 2, 3, 4, 5, 6, 7, 8]];
    let config = GenerationConfig { max_new_tokens: 6, sampling: SamplingConfig::default(), stop_tokens: vec![] };
    let batched = generate(&model, &prompts, 0, &config, &iapt);
    let mut differs_from_bare = false;
    for (row, prompt) in prompts.iter().enumerate() {
        let alone = generate(&model, std::slice::from_ref(prompt), 0, &config, &iapt);
        assert_eq!(batched.tokens[row], alone.tokens[0], "row {row}: batched generation differs from the prompt alone");
        assert_eq!(alone.tokens[0].len(), 6);
        // The logits behind the greedy choice agree too, not just the argmax.
        let batch = TokenBatch::padded(&prompts, 0, Padding::Left, &Default::default());
        let batched_last = logits(&model, batch, &iapt).remove(row).pop().unwrap();
        let alone_last = logits(&model, TokenBatch::padded(std::slice::from_ref(prompt), 0, Padding::Left, &Default::default()), &iapt).remove(0).pop().unwrap();
        assert!(max_abs(std::slice::from_ref(&batched_last), &[alone_last]) < 1e-4, "row {row}: last-position logits differ");
        let bare_last = logits(&model, TokenBatch::padded(std::slice::from_ref(prompt), 0, Padding::Left, &Default::default()), &NoHook).remove(0).pop().unwrap();
        differs_from_bare |= max_abs(&[batched_last], &[bare_last]) > 1e-3;
    }
    assert!(differs_from_bare, "IAPT never changed the logits; the test would not notice a no-op hook");
}
