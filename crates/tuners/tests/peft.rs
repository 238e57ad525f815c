//! PEFT's layout: our LoRA and prompt tuning written as PEFT adapters load back to the same
//! tensors (so the same outputs), prefix tuning (direct or reparameterised) to the same
//! outputs; IAPT, which PEFT lacks, is refused with the reason.

mod common;

use iapt_model::{LlamaConfig, Projection};
use iapt_tuners::peft::save_peft;
use iapt_tuners::{load_tuner, IaptConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, Tuner, TunerConfig};
use std::path::PathBuf;

type TB = burn::backend::NdArray;

fn perturbed(config: TunerConfig) -> Tuner<TB> {
    config.init::<TB>(&LlamaConfig::tiny(), &Default::default()).unwrap().jittered(7, 1.0, |_| true)
}

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iapt-peft-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn lora_and_prompt_tuning_round_trip_through_peft_files() {
    for (tag, config) in [
        ("lora", TunerConfig::Lora(LoraConfig::new().with_rank(3).with_alpha(5.0).with_targets(Projection::ALL.to_vec()))),
        ("lora-qv", TunerConfig::Lora(LoraConfig::new())),
        ("prompt", TunerConfig::PromptTuning(PromptTuningConfig::new().with_num_tokens(3))),
    ] {
        let tuner = perturbed(config);
        let dir = temp(tag);
        save_peft(&dir, &tuner, "tiny").unwrap();
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        assert!(config["peft_type"].is_string(), "{config}");
        let back = load_tuner::<TB>(&dir, &LlamaConfig::tiny(), &Default::default()).unwrap();
        assert_eq!(back.name(), tuner.name());
        assert_eq!(back.tensors(), tuner.tensors(), "{tag}: tensors changed through PEFT's layout");
        if let (Tuner::Lora(a), Tuner::Lora(b)) = (&tuner, &back) {
            assert_eq!(a.config.scale(), b.config.scale());
            assert_eq!(a.config.targets, b.config.targets);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Prefix tuning goes out with its keys rotated `+n` (PEFT's prompt starts at position `n`) and
/// its MLP evaluated, and comes back rotated `-n`: the same logits, up to the rotations'
/// rounding, and PEFT's tensor shape `[n, L · 2 · kv_dim]`.
#[test]
fn prefix_tuning_round_trips_through_peft_files_to_the_same_outputs() {
    let base = LlamaConfig::tiny();
    let model = common::tiny::<TB>(3, false);
    let batch = || iapt_model::TokenBatch::dense(common::ids_tensor(&[vec![5, 9, 2, 7, 1], vec![3, 3, 8, 0, 4]]));
    for (tag, config) in
        [("direct", PrefixTuningConfig::new().with_num_tokens(3)), ("reparam", PrefixTuningConfig::new().with_num_tokens(2).with_reparam_hidden(Some(6)))]
    {
        let tuner = perturbed(TunerConfig::PrefixTuning(config.clone()));
        let dir = temp(&format!("prefix-{tag}"));
        save_peft(&dir, &tuner, "tiny").unwrap();
        let tensors = iapt_tuners::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
        assert_eq!(tensors["prompt_embeddings"].shape, vec![config.num_tokens, 2 * base.num_layers * base.kv_dim()]);
        let back = load_tuner::<TB>(&dir, &base, &Default::default()).unwrap();
        assert_eq!(back.name(), "p_tuning_v2");
        let (want, got) = (common::logits(&model, batch(), &tuner), common::logits(&model, batch(), &back));
        let bare = common::logits(&model, batch(), &iapt_model::NoHook);
        let diff = common::max_abs(&want, &got);
        assert!(diff < 1e-4, "{tag}: logits moved by {diff} through PEFT's layout");
        assert!(common::max_abs(&want, &bare) > 1e-2, "{tag}: the prefix changes the output");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn peft_names_and_layouts_are_peft_s() {
    let tuner = perturbed(TunerConfig::Lora(LoraConfig::new().with_rank(2)));
    let dir = temp("names");
    save_peft(&dir, &tuner, "tiny").unwrap();
    let tensors = iapt_tuners::read_safetensors(&dir.join("adapter_model.safetensors")).unwrap();
    let base = LlamaConfig::tiny();
    let (d_in, d_out) = base.projection_shape(Projection::V);
    // nn.Linear weights: lora_A is [r, in], lora_B is [out, r].
    assert_eq!(tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].shape, vec![2, d_in]);
    assert_eq!(tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape, vec![d_out, 2]);
    assert_eq!(tensors.len(), base.num_layers * 2 * 2);
    // A tensor PEFT would have and we cannot use is refused by name.
    let mut extra = tensors.clone();
    extra.insert("base_model.model.lm_head.lora_A.weight".into(), extra["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"].clone());
    iapt_tuners::write_safetensors(&dir.join("adapter_model.safetensors"), &extra).unwrap();
    let err = load_tuner::<TB>(&dir, &base, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("lm_head") && err.contains("adapter_model.safetensors"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn iapt_has_no_peft_layout() {
    let tuner = TunerConfig::Iapt(IaptConfig::new(4)).init::<TB>(&LlamaConfig::tiny(), &Default::default()).unwrap();
    let err = save_peft(&temp("iapt"), &tuner, "tiny").unwrap_err().to_string();
    assert!(err.contains("iapt") && err.contains("PEFT"), "{err}");
}
