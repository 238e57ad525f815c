//! The checks every tuner must pass, run for each kind through the runtime-selected `Tuner`
//! (IAPT included), on a tiny random LLaMA: adapter files, KV-cached generation, gradients,
//! parameter counts and config errors; plus LoRA's own identities (zero at init, merging, the
//! delta by hand).

mod common;

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use common::*;
use iapt_model::{generate, GenerationConfig, KvCache, Llama, LlamaConfig, NoHook, Padding, SamplingConfig, TokenBatch};
use iapt_model::{LayerInput, LayerPrefix, ModelHook, Projection};
use iapt_tuners::{
    load_module, load_tuner, merge_lora, save_module, save_tuner, AdapterError, Iapt, IaptConfig, Lora, LoraConfig, PrefixTuning, PrefixTuningConfig,
    PromptInit, PromptTuning, PromptTuningConfig, Tuner, TunerConfig, TunerKind,
};
use iapt_tuners::{module_tensors, AdapterConfig, CONFIG_FILE, WEIGHTS_FILE};
use std::cell::Cell;
use std::path::{Path, PathBuf};

/// One config per kind and form: the matrix every test runs over.
fn configs() -> Vec<TunerConfig> {
    let iapt = iapt_grid().into_iter().map(TunerConfig::Iapt);
    iapt.chain([
        TunerConfig::PromptTuning(PromptTuningConfig::new().with_num_tokens(3)),
        TunerConfig::PromptTuning(PromptTuningConfig::new().with_num_tokens(1).with_init(PromptInit::Random)),
        TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(5)),
        TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(2).with_reparam_hidden(Some(6))),
        TunerConfig::Lora(LoraConfig::new()),
        TunerConfig::Lora(LoraConfig::new().with_rank(2).with_alpha(3.0).with_dropout(0.1).with_targets(Projection::ALL.to_vec())),
    ])
    .collect()
}

/// `config`'s tuner with every parameter moved by a deterministic pseudo-random amount in
/// `[-0.5, 0.5)`: LoRA's `B = 0` would make most checks vacuous, and the other tuners' inits are
/// small. IAPT is left as initialised (its rational activation has a tuned shape).
fn tuner<B: Backend>(config: &TunerConfig, seed: u64) -> Tuner<B> {
    let tuner = config.init::<B>(&LlamaConfig::tiny(), &Default::default()).unwrap();
    if matches!(config, TunerConfig::Iapt(_)) {
        return tuner;
    }
    tuner.jittered(seed, 1.0, |_| true)
}

fn padded_logits<B: Backend>(model: &Llama<B>, hook: &dyn ModelHook<B>) -> Vec<Vec<Vec<f32>>> {
    logits(model, TokenBatch::padded(&[vec![5, 17, 42, 3, 88], vec![9, 8]], 0, Padding::Left, &Default::default()), hook)
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iapt-baselines-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Wraps a hook and counts what the model asks of it.
struct Counting<'a, B: Backend> {
    inner: &'a dyn ModelHook<B>,
    input_prefix: Cell<usize>,
    layer_prefix: Cell<usize>,
}

impl<'a, B: Backend> Counting<'a, B> {
    fn new(inner: &'a dyn ModelHook<B>) -> Self {
        Self { inner, input_prefix: Cell::new(0), layer_prefix: Cell::new(0) }
    }
    fn prefix_calls(&self) -> (usize, usize) {
        (self.input_prefix.get(), self.layer_prefix.get())
    }
}

impl<B: Backend> ModelHook<B> for Counting<'_, B> {
    fn input_prefix(&self, batch: usize, device: &B::Device) -> Option<Tensor<B, 3>> {
        self.input_prefix.set(self.input_prefix.get() + 1);
        self.inner.input_prefix(batch, device)
    }
    fn position_offset(&self) -> usize {
        self.inner.position_offset()
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        self.layer_prefix.set(self.layer_prefix.get() + 1);
        self.inner.layer_prefix(layer, input)
    }
    fn projection_delta(&self, layer: usize, projection: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        self.inner.projection_delta(layer, projection, x)
    }
}

#[test]
fn every_kind_changes_the_output() {
    let model = tiny::<TB>(1, false);
    let bare = padded_logits(&model, &NoHook);
    for (i, config) in configs().iter().enumerate() {
        let tuned = padded_logits(&model, &tuner::<TB>(config, i as u64));
        assert!(max_abs(&tuned, &bare) > 1e-3, "{config:?} had no effect, so the other checks would not notice a no-op");
    }
}

#[test]
fn iapt_through_the_enum_is_iapt() {
    let model = tiny::<TB>(2, true);
    let iapt = IaptConfig::new(8).init::<TB>(model.config(), &Default::default()).unwrap();
    let through = Tuner::from(iapt.clone());
    assert_eq!(padded_logits(&model, &through), padded_logits(&model, &iapt));
    assert_eq!(through.tensors(), module_tensors(&iapt), "enum tensors carry a variant prefix");
}

#[test]
fn save_load_round_trip_gives_identical_logits() {
    let model = tiny::<TB>(3, false);
    for (i, config) in configs().iter().enumerate() {
        let saved = tuner::<TB>(config, 10 + i as u64);
        let dir = temp_dir(&format!("roundtrip{i}"));
        save_tuner(&dir, &saved, "tiny-random").unwrap();
        let loaded = load_tuner::<TB>(&dir, model.config(), &Default::default()).unwrap();
        assert_eq!(&loaded.config(), config);
        assert_eq!(loaded.tensors(), saved.tensors());
        assert_eq!(padded_logits(&model, &loaded), padded_logits(&model, &saved), "{config:?}: outputs changed across save/load");
        // A fresh tuner differs, so the comparison can fail.
        assert_ne!(padded_logits(&model, &tuner::<TB>(config, 99)), padded_logits(&model, &saved));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(json["tuner"], config.name());
        assert_eq!(json["config"], config.to_json());
        assert_eq!(json["base_model"]["name"], "tiny-random");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Existing IAPT adapters stay readable and identical: the enum writes the same bytes.
#[test]
fn iapt_files_are_the_same_through_the_enum_and_the_iapt_functions() {
    let iapt = IaptConfig::new(6).with_share_projections(false).init::<TB>(&LlamaConfig::tiny(), &Default::default()).unwrap();
    let (direct, through) = (temp_dir("iapt-direct"), temp_dir("iapt-enum"));
    save_module(&direct, &iapt, "tiny").unwrap();
    save_tuner(&through, &Tuner::from(iapt.clone()), "tiny").unwrap();
    for file in [CONFIG_FILE, WEIGHTS_FILE] {
        assert_eq!(std::fs::read(direct.join(file)).unwrap(), std::fs::read(through.join(file)).unwrap(), "{file} differs");
    }
    let names: Vec<String> = iapt_tuners::read_safetensors(&direct.join(WEIGHTS_FILE)).unwrap().into_keys().collect();
    assert!(names.contains(&"layers.0.projections.down.weight".to_string()), "{names:?}");
    let loaded = load_module::<TB, Iapt<TB>>(&through, &LlamaConfig::tiny(), &Default::default()).unwrap();
    assert_eq!(module_tensors(&loaded), module_tensors(&iapt));
    for dir in [direct, through] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn each_kinds_loader_refuses_the_other_kinds() {
    let base = LlamaConfig::tiny();
    let device = Default::default();
    for (i, config) in configs().iter().enumerate() {
        let dir = temp_dir(&format!("wrong{i}"));
        save_tuner(&dir, &tuner::<TB>(config, 20 + i as u64), "tiny").unwrap();
        let results: [(&str, Result<(), AdapterError>); 4] = [
            ("iapt", load_module::<TB, Iapt<TB>>(&dir, &base, &device).map(drop)),
            ("prompt_tuning", load_module::<TB, PromptTuning<TB>>(&dir, &base, &device).map(drop)),
            ("p_tuning_v2", load_module::<TB, PrefixTuning<TB>>(&dir, &base, &device).map(drop)),
            ("lora", load_module::<TB, Lora<TB>>(&dir, &base, &device).map(drop)),
        ];
        for (expected, result) in results {
            if expected == config.name() {
                result.unwrap();
                continue;
            }
            let err = result.unwrap_err();
            assert!(matches!(&err, AdapterError::WrongTuner { found, expected: e, .. } if found == config.name() && e == expected), "{err}");
            let message = err.to_string();
            assert!(message.contains(config.name()) && message.contains(expected) && message.contains(CONFIG_FILE), "{message}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Teacher-forced forward with instruction = prompt equals prefill(prompt) + one-token decode
/// steps; prefixes are asked for only at prefill.
#[test]
fn cached_generation_equals_full_recompute() {
    for (i, config) in configs().iter().enumerate() {
        let model = tiny::<TB>(30 + i as u64, i % 2 == 0);
        let tuner = tuner::<TB>(config, 31);
        let prompt = 3;
        let full = logits(&model, instruction_batch(&[SEQ.to_vec()], prompt), &tuner).remove(0);

        let hook = Counting::new(&tuner);
        let mut cache = KvCache::new(model.num_layers());
        let prefill = TokenBatch::padded(&[SEQ[..prompt].to_vec()], 0, Padding::Left, &Default::default());
        let hidden = model.forward(prefill, &mut cache, &hook);
        let total = hidden.dims()[1];
        let mut got = rows_of(model.logits(hidden.narrow(1, total - prompt, prompt))).remove(0);
        let at_prefill = hook.prefix_calls();
        for &t in &SEQ[prompt..] {
            got.extend(rows_of(model.logits(model.forward(TokenBatch::dense(ids_tensor(&[vec![t]])), &mut cache, &hook))).remove(0));
        }
        assert_eq!(hook.prefix_calls(), at_prefill, "{config:?}: decode steps asked for a prefix");
        assert_eq!(at_prefill, (1, model.num_layers()), "{config:?}: one input-prefix and one layer-prefix request per layer at prefill");
        let extra = match config {
            TunerConfig::Iapt(c) => c.num_soft_tokens,
            TunerConfig::PromptTuning(c) => c.num_tokens,
            TunerConfig::PrefixTuning(c) => c.num_tokens,
            TunerConfig::Lora(_) => 0,
        };
        assert_eq!(cache.len(0), extra + SEQ.len(), "{config:?}: prefix slots + tokens in the cache");
        let d = max_abs(&[got], &[full]);
        assert!(d < 1e-4, "{config:?}: cached and full logits differ by {d}");
    }
}

#[test]
fn batched_generation_matches_each_prompt_alone() {
    let model = tiny::<TB>(40, true);
    let prompts = vec![vec![5u32, 17, 42, 3, 88], vec![7, 8], vec![60, 1, 2, 3, 4, 5, 6, 7, 8]];
    let generation = GenerationConfig { max_new_tokens: 4, sampling: SamplingConfig::default(), stop_tokens: vec![] };
    for (i, config) in configs().iter().enumerate() {
        let tuner = tuner::<TB>(config, 41 + i as u64);
        let batched = generate(&model, &prompts, 0, &generation, &tuner);
        let batch_logits = logits(&model, TokenBatch::padded(&prompts, 0, Padding::Left, &Default::default()), &tuner);
        for (row, prompt) in prompts.iter().enumerate() {
            let alone = generate(&model, std::slice::from_ref(prompt), 0, &generation, &tuner);
            assert_eq!(batched.tokens[row], alone.tokens[0], "{config:?} row {row}: batched generation differs");
            let alone_last =
                logits(&model, TokenBatch::padded(std::slice::from_ref(prompt), 0, Padding::Left, &Default::default()), &tuner).remove(0).pop().unwrap();
            let batched_last = batch_logits[row].last().unwrap().clone();
            assert!(max_abs(&[vec![batched_last]], &[vec![alone_last]]) < 1e-4, "{config:?} row {row}: last-position logits differ");
        }
    }
}

#[test]
fn gradients_reach_every_tuner_parameter_and_never_the_backbone() {
    for (i, config) in configs().iter().enumerate() {
        let model = tiny::<AD>(50 + i as u64, i % 2 == 1).no_grad();
        let tuner = tuner::<AD>(config, 51);
        let grads = response_loss(&model, &tuner, &SEQ, N_INSTRUCTION).backward();

        let check = GradCheck::<AD>::of(&tuner, &grads);
        assert!(check.without.is_empty(), "{config:?}: no gradient for {:?}", check.without);
        let zero: Vec<_> = check.with.iter().filter(|(_, nonzero)| !nonzero).map(|(n, _)| n).collect();
        assert!(zero.is_empty(), "{config:?}: all-zero gradient for {zero:?}");
        assert_eq!(check.with.len(), tuner.tensors().len());

        let backbone = GradCheck::<AD>::of(&model, &grads);
        assert!(backbone.with.is_empty(), "{config:?}: the frozen backbone got gradients for {:?}", backbone.with);
        assert!(!backbone.without.is_empty());
    }
}

/// With `B = 0` only `B` gets a gradient on the first step (dL/dA = x^T g B^T = 0): LoRA's usual
/// start, which is why the matrix above perturbs `B`.
#[test]
fn lora_at_init_trains_b_first() {
    let model = tiny::<AD>(55, false).no_grad();
    let lora = LoraConfig::new().init::<AD>(model.config(), &Default::default()).unwrap();
    let grads = response_loss(&model, &lora, &SEQ, N_INSTRUCTION).backward();
    let check = GradCheck::<AD>::of(&lora, &grads);
    for (name, nonzero) in &check.with {
        assert_eq!(*nonzero, name.ends_with("lora_b"), "{name}");
    }
    assert_eq!(check.with.len(), 2 * 2 * 2);
}

#[test]
fn lora_at_init_equals_the_base_model_exactly() {
    for tied in [false, true] {
        let model = tiny::<TB>(60, tied);
        let lora = LoraConfig::new().with_targets(Projection::ALL.to_vec()).init::<TB>(model.config(), &Default::default()).unwrap();
        assert_eq!(padded_logits(&model, &lora), padded_logits(&model, &NoHook));
    }
}

#[test]
fn merged_lora_equals_unmerged_lora() {
    for (i, targets) in [vec![Projection::Q, Projection::V], Projection::ALL.to_vec()].into_iter().enumerate() {
        let model = tiny::<TB>(70 + i as u64, i == 1);
        let config = TunerConfig::Lora(LoraConfig::new().with_rank(3).with_targets(targets));
        let Tuner::Lora(lora) = tuner::<TB>(&config, 71) else { unreachable!() };
        let before = module_tensors(&model);
        let merged = merge_lora(&model, &lora);
        assert_eq!(module_tensors(&model), before, "merging changed the original backbone");
        let unmerged = padded_logits(&model, &lora);
        let d = max_abs(&padded_logits(&merged, &NoHook), &unmerged);
        let scale = unmerged.iter().flatten().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        // The merged weights are `W + s·A·B` rounded to f32 once per element: across random
        // draws the logits moved by up to 1.2e-5 of their scale (a wrong merge moves them by far
        // more than the 1e-3 checked below).
        assert!(d < 3e-5 * scale.max(1.0), "merged and unmerged LoRA differ by {d} (logits up to {scale})");
        assert!(max_abs(&padded_logits(&merged, &NoHook), &padded_logits(&model, &NoHook)) > 1e-3, "merge had no effect");
    }
}

/// `x A B · alpha / r` written out as loops, against the hook's delta.
#[test]
fn lora_delta_matches_a_hand_computed_loop() {
    let base = LlamaConfig::tiny();
    let (rank, alpha) = (2, 5.0);
    let config = LoraConfig::new().with_rank(rank).with_alpha(alpha).with_targets(vec![Projection::K]);
    let lora = config.init::<TB>(&base, &Default::default()).unwrap();
    let (n_in, n_out) = (base.hidden_size, base.kv_dim());
    let mut tensors = module_tensors(&lora);
    let a: Vec<f32> = (0..n_in * rank).map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0).collect();
    let b: Vec<f32> = (0..rank * n_out).map(|i| ((i * 3 % 7) as f32 - 3.0) / 4.0).collect();
    tensors.get_mut("layers.1.k.lora_a").unwrap().data = a.clone();
    tensors.get_mut("layers.1.k.lora_b").unwrap().data = b.clone();
    let lora = iapt_tuners::load_module_tensors(lora, tensors, Path::new("memory")).unwrap();

    let x: Vec<f32> = (0..2 * n_in).map(|i| ((i * 5 % 13) as f32 - 6.0) / 3.0).collect();
    let x_tensor = Tensor::<TB, 3>::from_data(TensorData::new(x.clone(), [1, 2, n_in]), &Default::default());
    assert!(lora.projection_delta(1, Projection::Q, &x_tensor).is_none(), "q is not a target");
    let got: Vec<f32> = lora.projection_delta(1, Projection::K, &x_tensor).unwrap().into_data().to_vec().unwrap();
    assert_eq!(got.len(), 2 * n_out);
    let scale = alpha / rank as f64;
    for t in 0..2 {
        for o in 0..n_out {
            let mut want = 0.0f64;
            for k in 0..rank {
                let xa: f64 = (0..n_in).map(|i| x[t * n_in + i] as f64 * a[i * rank + k] as f64).sum();
                want += xa * b[k * n_out + o] as f64;
            }
            want *= scale;
            let g = got[t * n_out + o] as f64;
            assert!((g - want).abs() < 1e-4 * want.abs().max(1.0), "token {t} output {o}: {g} vs {want}");
        }
    }
}

#[test]
fn folded_prefix_encoder_gives_the_same_outputs() {
    let model = tiny::<TB>(80, false);
    let config = TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(3).with_reparam_hidden(Some(7)));
    let Tuner::PrefixTuning(reparameterised) = tuner::<TB>(&config, 81) else { unreachable!() };
    let folded = reparameterised.fold_reparameterization();
    assert!(folded.encoder.is_none() && folded.config.reparam_hidden.is_none());
    assert_eq!(burn::module::Module::num_params(&folded), folded.config.num_params(model.config()));
    let d = max_abs(&padded_logits(&model, &folded), &padded_logits(&model, &reparameterised));
    assert!(d < 1e-5, "folding changed the outputs by {d}");
}

#[test]
fn parameter_counts_match_the_formulas() {
    let device = Default::default();
    for base in [LlamaConfig::tiny(), LlamaConfig::smollm2_135m()] {
        for config in configs() {
            let built = config.init::<TB>(&base, &device).unwrap();
            assert_eq!(built.num_params(), config.num_params(&base), "{config:?} on {base:?}");
        }
    }
    // By hand on tiny (d = 32, L = 2, kv_dim = 16, ffn = 48).
    let tiny = LlamaConfig::tiny();
    let count = |c: TunerConfig| c.num_params(&tiny);
    assert_eq!(count(TunerConfig::PromptTuning(PromptTuningConfig::new())), 32 * 32);
    assert_eq!(count(TunerConfig::PrefixTuning(PrefixTuningConfig::new())), 2 * 2 * 16 * 16);
    assert_eq!(count(TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_reparam_hidden(Some(10)))), 16 * 32 + 32 * 10 + 10 + 10 * 64 + 64);
    assert_eq!(count(TunerConfig::Lora(LoraConfig::new())), 2 * (8 * (32 + 32) + 8 * (32 + 16)));
    let all = LoraConfig::new().with_rank(1).with_targets(Projection::ALL.to_vec());
    assert_eq!(count(TunerConfig::Lora(all)), 2 * (32 + 32 + 2 * (32 + 16) + 32 + 32 + 2 * (32 + 48) + 48 + 32));
    // LLaMA-2 7B, LoRA r = 8 on q and v: the well-known 4.19M.
    assert_eq!(LoraConfig::new().num_params(&LlamaConfig::llama2_7b()), 4_194_304);
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let cases: [(&str, serde_json::Value, &str); 12] = [
        ("iapt", serde_json::json!({"bottleneck": 8, "pooler": "sum"}), "pooler"),
        ("iapt", serde_json::json!({"bottleneck": 0}), "bottleneck"),
        ("prompt_tuning", serde_json::json!({"num_tokens": 0}), "num_tokens"),
        ("prompt_tuning", serde_json::json!({"init": "text"}), "init"),
        ("prompt_tuning", serde_json::json!({"tokens": 3}), "tokens"),
        ("p_tuning_v2", serde_json::json!({"num_tokens": "many"}), "num_tokens"),
        ("p_tuning_v2", serde_json::json!({"reparam_hidden": 0}), "reparam_hidden"),
        ("lora", serde_json::json!({"rank": 0}), "rank"),
        ("lora", serde_json::json!({"alpha": 0.0}), "alpha"),
        ("lora", serde_json::json!({"dropout": -0.1}), "dropout"),
        ("lora", serde_json::json!({"targets": ["q", "qkv"]}), "targets"),
        ("lora", serde_json::json!({"lora_alpha": 16}), "lora_alpha"),
    ];
    for (kind, value, field) in cases {
        let err = TunerConfig::from_json(kind, &value).unwrap_err().to_string();
        assert!(err.contains(field), "{kind} {value}: `{err}` does not name `{field}`");
    }
    // The same message through an adapter file, naming the file too.
    let dir = temp_dir("bad-config");
    save_tuner(&dir, &tuner::<TB>(&TunerConfig::Lora(LoraConfig::new()), 90), "tiny").unwrap();
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"rank\": 8", "\"rank\": 8, \"rnak\": 4")).unwrap();
    let err = load_tuner::<TB>(&dir, &LlamaConfig::tiny(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains("rnak") && err.contains(CONFIG_FILE), "{err}");
    std::fs::write(&path, text.replace("\"tuner\": \"lora\"", "\"tuner\": \"adalora\"")).unwrap();
    let err = AdapterConfig::read(&dir).unwrap_err().to_string();
    assert!(err.contains("adalora") && err.contains("lora"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Training starts from `init_from_backbone` on the autodiff backbone (prompt tuning copies
/// embedding rows there): every kind must come out as trainable leaf parameters.
#[test]
fn tuners_built_from_an_autodiff_backbone_train() {
    for (i, config) in configs().iter().enumerate() {
        // As `iapt train` does it: the tuner is built before the backbone is frozen.
        let model = tiny::<AD>(60 + i as u64, i % 2 == 0);
        let tuner = config.init_from_backbone(&model).unwrap();
        let model = model.no_grad();
        let grads = response_loss(&model, &tuner, &SEQ, N_INSTRUCTION).backward();
        let check = GradCheck::<AD>::of(&tuner, &grads);
        assert!(check.without.is_empty(), "{config:?}: no gradient for {:?}", check.without);
        assert_eq!(check.with.len(), tuner.tensors().len(), "{config:?}");
    }
}
