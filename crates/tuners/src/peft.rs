//! Hugging Face PEFT's adapter layout, read and written for the methods PEFT has: LoRA
//! (`peft_type: "LORA"`), prompt tuning (`"PROMPT_TUNING"`) and prefix tuning
//! (`"PREFIX_TUNING"`, our `p_tuning_v2`). An adapter trained with PEFT loads and serves like one
//! of ours, and `iapt export --format peft` writes ours so PEFT loads them. IAPT has no PEFT
//! counterpart; it is refused with that reason.
//!
//! The differences in layout:
//! - LoRA: PEFT's tensors are named after the HF module they adapt
//!   (`base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`) and stored as
//!   `nn.Linear` weights, `[out, in]`; ours are `x W` factors, `A: [in, r]`, `B: [r, out]`, so
//!   each factor is transposed on the way.
//! - Prompt tuning: PEFT's embedding is `prompt_embeddings`, `[n, d]`, as ours.
//! - Prefix tuning: PEFT saves the prefix itself (its MLP, if any, already evaluated) as
//!   `prompt_embeddings` `[n, L · 2 · kv_dim]`: row `i` holds, layer after layer, that layer's
//!   key then value for prefix slot `i`, each `[kv_heads, head_dim]` (PEFT sizes the prefix to the
//!   KV heads on grouped-query models). Ours are `keys` / `values` `[L, kv_heads, n, head_dim]`.
//!   The positions differ too: PEFT's prefix sits in the KV cache ahead of the prompt, so the
//!   prompt's tokens take positions `n..` and each query is rotated `n` positions further than
//!   ours (ours start at 0). RoPE's `R(p + n) q · k = R(p) q · R(-n) k` makes the two the same
//!   computation once every PEFT key is rotated by `-n` on the way in (and `+n` on the way out);
//!   values and the prompt's attention among itself are unchanged.

use crate::adapter::{read_safetensors, write_safetensors, AdapterError, CONFIG_FILE, WEIGHTS_FILE};
use crate::lora::LoraConfig;
use crate::prefix_tuning::PrefixTuningConfig;
use crate::prompt_tuning::{PromptInit, PromptTuningConfig};
use crate::tuner::{Tuner, TunerConfig};
use burn::tensor::backend::Backend;
use iapt_model::{HostTensor, LlamaConfig, Projection};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Whether an `adapter_config.json` is PEFT's (it has `peft_type`).
pub fn is_peft_config(value: &Value) -> bool {
    value.get("peft_type").is_some()
}

/// The HF module path of a projection inside a decoder layer.
fn module_path(projection: Projection) -> &'static str {
    match projection {
        Projection::Q => "self_attn.q_proj",
        Projection::K => "self_attn.k_proj",
        Projection::V => "self_attn.v_proj",
        Projection::O => "self_attn.o_proj",
        Projection::Gate => "mlp.gate_proj",
        Projection::Up => "mlp.up_proj",
        Projection::Down => "mlp.down_proj",
    }
}

const PREFIX: &str = "base_model.model.";

/// Load the PEFT adapter in `dir` (its parsed config `value`, read from `config_path`).
pub fn load_peft<B: Backend>(dir: &Path, value: &Value, config_path: &Path, base: &LlamaConfig, device: &B::Device) -> Result<Tuner<B>, AdapterError> {
    let bad = |reason: String| AdapterError::Config { path: config_path.to_path_buf(), reason };
    let kind = value["peft_type"].as_str().ok_or_else(|| bad("`peft_type` is not a string".into()))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    match kind {
        "LORA" => {
            let config = lora_config(value).map_err(bad)?;
            let tensors = read_safetensors(&weights_path)?;
            let mut ours = BTreeMap::new();
            let mut unused = Vec::new();
            for (name, t) in tensors {
                match lora_tensor_name(&name) {
                    Some(our_name) => {
                        ours.insert(our_name, transposed(&t));
                    }
                    None => unused.push(name),
                }
            }
            if !unused.is_empty() {
                return Err(AdapterError::UnusedTensors { path: weights_path, tensors: unused.join(", ") });
            }
            let tuner = TunerConfig::Lora(config).init::<B>(base, device).map_err(bad)?;
            tuner.load_tensors(ours, &weights_path)
        }
        "PROMPT_TUNING" => {
            let (n, prompt) = read_virtual_tokens(value, config_path, &weights_path, &[("token_dim", base.hidden_size)])?;
            let config = PromptTuningConfig::new().with_num_tokens(n).with_init(PromptInit::Random);
            let tuner = TunerConfig::PromptTuning(config).init::<B>(base, device).map_err(bad)?;
            tuner.load_tensors(BTreeMap::from([("prompt".to_string(), prompt)]), &weights_path)
        }
        "PREFIX_TUNING" => {
            // PEFT's own sizes, after its grouped-query adjustment (`token_dim` = kv_dim).
            let sizes = [("num_layers", base.num_layers), ("token_dim", base.kv_dim()), ("num_attention_heads", base.num_kv_heads)];
            let (n, flat) = read_virtual_tokens(value, config_path, &weights_path, &sizes)?;
            let expected = vec![n, 2 * base.num_layers * base.kv_dim()];
            if flat.shape != expected {
                return Err(AdapterError::ShapeMismatch { path: weights_path, tensor: "prompt_embeddings".into(), found: flat.shape, expected });
            }
            let (mut keys, values) = prefix_from_peft(&flat, n, base);
            rotate_keys(&mut keys, -(n as f64), base);
            let tuner = TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(n)).init::<B>(base, device).map_err(bad)?;
            tuner.load_tensors(BTreeMap::from([("keys".to_string(), keys), ("values".to_string(), values)]), &weights_path)
        }
        other => Err(bad(format!("PEFT adapters of type `{other}` are not supported (LORA, PROMPT_TUNING and PREFIX_TUNING are)"))),
    }
}

/// What PEFT's prompt and prefix tuning share: `num_virtual_tokens`, the `sizes` their config
/// records (each checked against the base model), one decoder submodule, and a weights file
/// holding `prompt_embeddings` alone.
fn read_virtual_tokens(value: &Value, config_path: &Path, weights_path: &Path, sizes: &[(&str, usize)]) -> Result<(usize, HostTensor), AdapterError> {
    let bad = |reason: &str| AdapterError::Config { path: config_path.to_path_buf(), reason: reason.into() };
    let n = value["num_virtual_tokens"].as_u64().filter(|&n| n > 0).ok_or_else(|| bad("`num_virtual_tokens` must be a positive integer"))? as usize;
    for &(field, model) in sizes {
        if let Some(found) = value[field].as_u64().filter(|&v| v as usize != model) {
            return Err(AdapterError::BaseMismatch {
                path: config_path.to_path_buf(),
                field: field.into(),
                adapter: found.to_string(),
                model: model.to_string(),
            });
        }
    }
    if value["num_transformer_submodules"].as_u64().is_some_and(|m| m != 1) {
        return Err(bad("num_transformer_submodules must be 1 (a decoder-only model)"));
    }
    let mut tensors = read_safetensors(weights_path)?;
    let embeddings = tensors
        .remove("prompt_embeddings")
        .ok_or_else(|| AdapterError::MissingTensor { path: weights_path.to_path_buf(), tensor: "prompt_embeddings".into() })?;
    if !tensors.is_empty() {
        return Err(AdapterError::UnusedTensors { path: weights_path.to_path_buf(), tensors: tensors.into_keys().collect::<Vec<_>>().join(", ") });
    }
    Ok((n, embeddings))
}

/// PEFT's flat prefix `[n, L · 2 · kv_dim]` as our keys and values `[L, kv_heads, n, head_dim]`.
fn prefix_from_peft(flat: &HostTensor, n: usize, base: &LlamaConfig) -> (HostTensor, HostTensor) {
    let (layers, heads, hd) = (base.num_layers, base.num_kv_heads, base.head_dim);
    let kv_dim = heads * hd;
    let shape = vec![layers, heads, n, hd];
    let (mut keys, mut values) = (vec![0.0; flat.data.len() / 2], vec![0.0; flat.data.len() / 2]);
    for i in 0..n {
        for layer in 0..layers {
            for (kv, out) in [&mut keys, &mut values].into_iter().enumerate() {
                for head in 0..heads {
                    let src = i * 2 * layers * kv_dim + (2 * layer + kv) * kv_dim + head * hd;
                    let dst = ((layer * heads + head) * n + i) * hd;
                    out[dst..dst + hd].copy_from_slice(&flat.data[src..src + hd]);
                }
            }
        }
    }
    (HostTensor { shape: shape.clone(), data: keys }, HostTensor { shape, data: values })
}

/// Our keys and values `[L, kv_heads, n, head_dim]` as PEFT's flat prefix `[n, L · 2 · kv_dim]`.
fn prefix_to_peft(keys: &HostTensor, values: &HostTensor, base: &LlamaConfig) -> HostTensor {
    let (layers, heads, hd) = (base.num_layers, base.num_kv_heads, base.head_dim);
    let n = keys.shape[2];
    let kv_dim = heads * hd;
    let mut flat = vec![0.0; 2 * keys.data.len()];
    for i in 0..n {
        for layer in 0..layers {
            for (kv, ours) in [keys, values].into_iter().enumerate() {
                for head in 0..heads {
                    let dst = i * 2 * layers * kv_dim + (2 * layer + kv) * kv_dim + head * hd;
                    let src = ((layer * heads + head) * n + i) * hd;
                    flat[dst..dst + hd].copy_from_slice(&ours.data[src..src + hd]);
                }
            }
        }
    }
    HostTensor { shape: vec![n, 2 * layers * kv_dim], data: flat }
}

/// Rotate every key `[L, kv_heads, n, head_dim]` by RoPE at position `by` (HF's rotate-half
/// pairs `(d, d + hd/2)`, angle `by · inv_freq[d]`), in f64.
fn rotate_keys(keys: &mut HostTensor, by: f64, base: &LlamaConfig) {
    let hd = base.head_dim;
    let half = hd / 2;
    let inv = iapt_model::rope::inverse_frequencies(hd, base.rope_theta);
    let (cos, sin): (Vec<f64>, Vec<f64>) = inv.iter().map(|&f| ((by * f as f64).cos(), (by * f as f64).sin())).unzip();
    for key in keys.data.chunks_exact_mut(hd) {
        for d in 0..half {
            let (x1, x2) = (key[d] as f64, key[d + half] as f64);
            key[d] = (x1 * cos[d] - x2 * sin[d]) as f32;
            key[d + half] = (x2 * cos[d] + x1 * sin[d]) as f32;
        }
    }
}

/// Our LoRA config from PEFT's, refusing every option that would compute something else.
fn lora_config(value: &Value) -> Result<LoraConfig, String> {
    let rank = value["r"].as_u64().filter(|&r| r > 0).ok_or("`r` must be a positive integer")? as usize;
    let mut alpha = match &value["lora_alpha"] {
        Value::Null => 8.0,
        v => v.as_f64().ok_or("`lora_alpha` must be a number")?,
    };
    if value["use_rslora"].as_bool() == Some(true) {
        // rsLoRA scales by alpha / sqrt(r); ours is alpha / r.
        alpha *= (rank as f64).sqrt();
    }
    for (field, default_ok) in [("use_dora", "false"), ("fan_in_fan_out", "false")] {
        if value[field].as_bool() == Some(true) {
            return Err(format!("`{field}: true` is not supported (only {default_ok})"));
        }
    }
    if value["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(format!("`bias: {}` is not supported (only \"none\")", value["bias"]));
    }
    for field in ["rank_pattern", "alpha_pattern"] {
        if value[field].as_object().is_some_and(|m| !m.is_empty()) {
            return Err(format!("`{field}` (per-module ranks) is not supported"));
        }
    }
    for field in ["layers_to_transform", "modules_to_save"] {
        if value[field].as_array().is_some_and(|l| !l.is_empty()) || value[field].is_number() {
            return Err(format!("`{field}` is not supported"));
        }
    }
    // Variants of LoRA that compute something else, or adapt more than projections.
    for field in ["lora_bias", "use_qalora"] {
        if value[field].as_bool() == Some(true) {
            return Err(format!("`{field}: true` is not supported"));
        }
    }
    for field in ["layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens", "exclude_modules"] {
        let set = match &value[field] {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        if set {
            return Err(format!("`{field}` is not supported"));
        }
    }
    let targets = match &value["target_modules"] {
        Value::String(s) if s == "all-linear" => Projection::ALL.to_vec(),
        Value::String(s) => return Err(format!("`target_modules: \"{s}\"` (a pattern) is not supported; list the modules, e.g. [\"q_proj\", \"v_proj\"]")),
        Value::Array(names) => {
            let mut targets = Vec::new();
            for name in names {
                let name = name.as_str().ok_or("`target_modules` must be a list of module names")?;
                let p = Projection::ALL.into_iter().find(|&p| module_path(p).ends_with(&format!(".{name}")) || module_path(p) == name);
                targets.push(p.ok_or(format!("target module `{name}` is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"))?);
            }
            targets
        }
        _ => return Err("`target_modules` is missing".into()),
    };
    let dropout = value["lora_dropout"].as_f64().unwrap_or(0.0);
    Ok(LoraConfig::new().with_rank(rank).with_alpha(alpha).with_dropout(dropout).with_targets(targets))
}

/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` -> `layers.3.q.lora_a`.
fn lora_tensor_name(peft: &str) -> Option<String> {
    let rest = peft.strip_prefix(PREFIX)?.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, factor) = rest.rsplit_once(".lora_")?;
    let factor = match factor {
        "A.weight" => "lora_a",
        "B.weight" => "lora_b",
        _ => return None,
    };
    let projection = Projection::ALL.into_iter().find(|&p| module_path(p) == module)?;
    Some(format!("layers.{layer}.{}.{factor}", projection.name()))
}

/// A 2-D tensor transposed.
fn transposed(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape.get(1).copied().unwrap_or(1));
    let mut data = vec![0.0; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    HostTensor { shape: vec![cols, rows], data }
}

/// Write `tuner` in PEFT's layout into `dir`: `adapter_config.json` and
/// `adapter_model.safetensors`. `base_name` goes to `base_model_name_or_path`.
pub fn save_peft<B: Backend>(dir: &Path, tuner: &Tuner<B>, base_name: &str) -> Result<(), AdapterError> {
    let config_path = dir.join(CONFIG_FILE);
    let base = tuner.base();
    let ours = tuner.tensors();
    let (config, tensors) = match tuner.config() {
        TunerConfig::Lora(lora) => {
            let names: Vec<&str> = lora.targets.iter().map(|&p| module_path(p).rsplit('.').next().unwrap_or_default()).collect();
            let config = json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_name,
                "r": lora.rank,
                "lora_alpha": lora.alpha,
                "lora_dropout": lora.dropout,
                "target_modules": names,
                "bias": "none",
                "fan_in_fan_out": false,
                "use_rslora": false,
                "use_dora": false,
                "inference_mode": true,
            });
            let mut tensors = BTreeMap::new();
            for (layer, projection) in (0..base.num_layers).flat_map(|l| lora.targets.iter().map(move |&p| (l, p))) {
                for (ours_factor, peft_factor) in [("lora_a", "lora_A"), ("lora_b", "lora_B")] {
                    let name = format!("layers.{layer}.{}.{ours_factor}", projection.name());
                    let t = ours.get(&name).ok_or_else(|| AdapterError::MissingTensor { path: dir.to_path_buf(), tensor: name.clone() })?;
                    tensors.insert(format!("{PREFIX}model.layers.{layer}.{}.{peft_factor}.weight", module_path(projection)), transposed(t));
                }
            }
            (config, tensors)
        }
        TunerConfig::PromptTuning(prompt) => {
            let config = json!({
                "peft_type": "PROMPT_TUNING",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_name,
                "num_virtual_tokens": prompt.num_tokens,
                "token_dim": base.hidden_size,
                "num_transformer_submodules": 1,
                "num_attention_heads": base.num_heads,
                "num_layers": base.num_layers,
                "prompt_tuning_init": "RANDOM",
                "inference_mode": true,
            });
            let t = ours.get("prompt").ok_or_else(|| AdapterError::MissingTensor { path: dir.to_path_buf(), tensor: "prompt".into() })?;
            (config, BTreeMap::from([("prompt_embeddings".to_string(), t.clone())]))
        }
        TunerConfig::PrefixTuning(prefix) => {
            let n = prefix.num_tokens;
            let config = json!({
                "peft_type": "PREFIX_TUNING",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base_name,
                "num_virtual_tokens": n,
                "token_dim": base.kv_dim(),
                "num_transformer_submodules": 1,
                "num_attention_heads": base.num_kv_heads,
                "num_layers": base.num_layers,
                "encoder_hidden_size": base.kv_dim(),
                "prefix_projection": false,
                "inference_mode": true,
            });
            // The saved prefix itself: a reparameterised tuner's MLP is evaluated first, as PEFT does.
            let Tuner::PrefixTuning(module) = tuner else { unreachable!("a prefix-tuning config belongs to a prefix tuner") };
            let direct = crate::adapter::module_tensors(&module.fold_reparameterization());
            let missing = |tensor: &str| AdapterError::MissingTensor { path: dir.to_path_buf(), tensor: tensor.into() };
            let mut keys = direct.get("keys").ok_or_else(|| missing("keys"))?.clone();
            let values = direct.get("values").ok_or_else(|| missing("values"))?;
            rotate_keys(&mut keys, n as f64, base);
            (config, BTreeMap::from([("prompt_embeddings".to_string(), prefix_to_peft(&keys, values, base))]))
        }
        other => {
            return Err(AdapterError::Config {
                path: config_path,
                reason: format!(
                    "a `{}` adapter has no PEFT equivalent (PEFT's layout holds LoRA, prompt tuning and prefix tuning); keep iapt's own layout",
                    other.name()
                ),
            })
        }
    };
    std::fs::create_dir_all(dir).map_err(|source| AdapterError::Io { path: dir.to_path_buf(), error: source })?;
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    let text = serde_json::to_string_pretty(&config).expect("JSON value serialises");
    iapt_assets::atomic::write_atomically(&config_path, text.as_bytes()).map_err(|source| AdapterError::Io { path: config_path.clone(), error: source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_tensor_names_map_to_ours() {
        assert_eq!(lora_tensor_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight").as_deref(), Some("layers.3.q.lora_a"));
        assert_eq!(lora_tensor_name("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight").as_deref(), Some("layers.12.down.lora_b"));
        assert_eq!(lora_tensor_name("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(lora_tensor_name("base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector"), None);
    }

    /// PEFT's prefix layout, hand-indexed: row `i`, layer `l`, key (0) or value (1), head `h`,
    /// element `d` sits at `i·(2 L kv_dim) + (2l + kv)·kv_dim + h·hd + d`.
    #[test]
    fn peft_prefix_layout_round_trips_and_puts_each_element_where_peft_reads_it() {
        let base = LlamaConfig { num_layers: 3, num_kv_heads: 2, head_dim: 4, num_heads: 4, hidden_size: 16, ..LlamaConfig::tiny() };
        let n = 5;
        let width = 2 * base.num_layers * base.kv_dim();
        let flat = HostTensor { shape: vec![n, width], data: (0..n * width).map(|v| v as f32).collect() };
        let (keys, values) = prefix_from_peft(&flat, n, &base);
        let at = |t: &HostTensor, l: usize, h: usize, i: usize, d: usize| t.data[((l * 2 + h) * n + i) * 4 + d];
        let peft = |i: usize, l: usize, kv: usize, h: usize, d: usize| (i * width + (2 * l + kv) * 8 + h * 4 + d) as f32;
        assert_eq!(at(&keys, 2, 1, 3, 2), peft(3, 2, 0, 1, 2));
        assert_eq!(at(&values, 1, 0, 4, 3), peft(4, 1, 1, 0, 3));
        assert_eq!(prefix_to_peft(&keys, &values, &base), flat);
    }

    /// A PEFT key scored against a query at position p + n equals our rotated key scored
    /// against the same query at position p (the reason keys are rotated by -n on import).
    #[test]
    fn rotating_keys_by_minus_n_moves_the_prompt_back_to_position_zero() {
        let base = LlamaConfig { num_layers: 1, num_kv_heads: 1, head_dim: 8, rope_theta: 10000.0, ..LlamaConfig::tiny() };
        let q: Vec<f32> = (0..8).map(|v| (v as f32 * 0.7).sin()).collect();
        let k: Vec<f32> = (0..8).map(|v| (v as f32 * 1.3).cos()).collect();
        let rotated = |x: &[f32], by: f64| {
            let mut t = HostTensor { shape: vec![1, 1, 1, 8], data: x.to_vec() };
            rotate_keys(&mut t, by, &base);
            t.data
        };
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum::<f64>();
        let (p, n) = (7.0, 4.0);
        let peft = dot(&rotated(&q, p + n), &k);
        let ours = dot(&rotated(&q, p), &rotated(&k, -n));
        assert!((peft - ours).abs() < 1e-5, "{peft} vs {ours}");
        assert!((peft - dot(&rotated(&q, p), &k)).abs() > 1e-3, "the shift matters for this pair");
        let back = rotated(&rotated(&k, -n), n);
        assert!(back.iter().zip(&k).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn peft_lora_options_that_compute_something_else_are_refused() {
        let ok = json!({ "peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"] });
        let c = lora_config(&ok).unwrap();
        assert_eq!((c.rank, c.alpha, c.targets.clone()), (4, 8.0, vec![Projection::Q, Projection::Down]));
        let rs = lora_config(&json!({ "r": 4, "lora_alpha": 8, "use_rslora": true, "target_modules": "all-linear" })).unwrap();
        assert!((rs.scale() - 8.0 / 2.0).abs() < 1e-12, "rsLoRA scales by alpha / sqrt(r)");
        assert_eq!(rs.targets, Projection::ALL.to_vec());
        for (field, value) in [
            ("use_dora", json!(true)),
            ("bias", json!("all")),
            ("rank_pattern", json!({"q_proj": 8})),
            ("layers_to_transform", json!([0])),
            ("target_modules", json!(".*proj")),
            ("target_modules", json!(["lm_head"])),
        ] {
            let mut v = ok.clone();
            v[field] = value;
            let e = lora_config(&v).unwrap_err();
            assert!(e.contains(field) || e.contains("lm_head") || e.contains("pattern"), "{field}: {e}");
        }
    }
}
