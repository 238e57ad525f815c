//! IAPT on a tiny random LLaMA, through the model's forward, KV cache and generation loop,
//! against a naive f64 reference.

mod common;
mod reference;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use common::*;
use iapt_model::LlamaConfig;
use iapt_model::{LayerInput, LayerPrefix, ModelHook};
use iapt_tuners::{load_module_tensors, module_tensors, ParamCount};
use iapt_tuners::{Iapt, IaptConfig, PrefixPositions, SoftTokenSpace, TunerKind};
use reference::{max_diff, reference_iapt_logits, reference_logits};
use std::cell::RefCell;

fn iapt<B: Backend>(config: &IaptConfig, seed: u64) -> Iapt<B> {
    B::seed(&Default::default(), seed);
    config.init(&LlamaConfig::tiny(), &Default::default()).unwrap()
}

/// Wraps IAPT and records the soft tokens it generates for every layer.
struct Recording<'a, B: Backend> {
    inner: &'a Iapt<B>,
    tokens: RefCell<Vec<Tensor<B, 3>>>,
}

impl<'a, B: Backend> Recording<'a, B> {
    fn new(inner: &'a Iapt<B>) -> Self {
        Self { inner, tokens: RefCell::new(Vec::new()) }
    }
}

impl<B: Backend> ModelHook<B> for Recording<'_, B> {
    fn position_offset(&self) -> usize {
        self.inner.position_offset()
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        let prefix = self.inner.layer_prefix(layer, input);
        if let Some(LayerPrefix::Hidden { tokens, .. }) = &prefix {
            self.tokens.borrow_mut().push(tokens.clone());
        }
        prefix
    }
}

#[test]
fn iapt_forward_matches_the_naive_f64_reference() {
    for (i, config) in iapt_grid().iter().enumerate() {
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
    for config in iapt_grid() {
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
        assert!(max_abs(&base_tokens[1..2], &tokens3[1..2]) > 1e-5, "{config:?}: prompts ignore the instruction");
    }
}

#[test]
fn gradients_reach_every_generator_parameter_and_never_the_backbone() {
    for share in [true, false] {
        let model = tiny::<AD>(50, false).no_grad();
        let iapt = iapt::<AD>(&IaptConfig::new(8).with_share_projections(share), 51);
        let loss = response_loss(&model, &iapt, &SEQ, N_INSTRUCTION);
        let grads = loss.backward();

        let check = GradCheck::<AD>::of(&iapt, &grads);
        assert!(check.without.is_empty(), "share={share}: no gradient for {:?}", check.without);
        let zero: Vec<_> = check.with.iter().filter(|(_, nz)| !nz).map(|(n, _)| n).collect();
        assert!(zero.is_empty(), "share={share}: all-zero gradient for {zero:?}");
        let expected: Vec<String> = module_tensors(&iapt).into_keys().collect();
        assert_eq!(check.with.len(), expected.len());
        for part in [
            "down.weight",
            "down.bias",
            "up.weight",
            "up.bias",
            "layers.0.pooler.queries",
            "layers.1.pooler.queries",
            "layers.0.activation.rational.numerator",
            "layers.1.activation.rational.denominator",
        ] {
            assert!(expected.iter().any(|p| p.contains(part)), "{part} not among {expected:?}");
        }

        let backbone = GradCheck::<AD>::of(&model, &grads);
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
        let built = config.init::<TB>(&smol, &Default::default()).unwrap();
        assert_eq!(built.num_params(), config.num_params(&smol), "share={share}");
    }
}
