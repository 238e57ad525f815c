//! Load a user's Hugging Face LLaMA checkpoint directory (`config.json` + safetensors).
//!
//! Supported layouts: a single `model.safetensors`, or `model.safetensors.index.json` whose
//! `weight_map` names the shard files. Tensors may be F32, F16 or BF16; everything is cast to
//! f32 host tensors in HF naming and layout (HF checkpoints already use the rotate-half RoPE
//! convention, so no Q/K permutation is needed here).

use crate::config::LlamaConfig;
use crate::error::LoadError;
use crate::weights::{HostTensor, WeightMap};
use safetensors::tensor::{Dtype, SafeTensorError};
use safetensors::SafeTensors;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Component, Path};

pub(crate) const CONFIG_FILE: &str = "config.json";
const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";
const EMBED: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

/// Read `dir/config.json` and the safetensors weights next to it.
///
/// The returned [`WeightMap`] has `source = dir`; rotary `inv_freq` buffers are dropped, and a
/// tied `lm_head.weight` identical to the embedding is dropped too. The model loader takes the
/// tensors it needs and reports any that are missing or left over.
pub fn load_llama_hf_dir(dir: &Path) -> Result<(LlamaConfig, WeightMap), LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::Other(format!(
            "{}: not a directory (expected a Hugging Face checkpoint directory with config.json and model.safetensors)",
            dir.display()
        )));
    }
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let mut tensors = read_weights(dir)?;

    if config.tie_word_embeddings {
        if let Some(head) = tensors.get(LM_HEAD) {
            match tensors.get(EMBED) {
                Some(embed) if embed == head => {
                    tensors.remove(LM_HEAD);
                }
                Some(_) => {
                    return Err(LoadError::Other(format!(
                        "{}: config.json sets tie_word_embeddings = true but `{LM_HEAD}` differs from `{EMBED}`; \
                         set tie_word_embeddings to false to use the separate LM head",
                        dir.display()
                    )))
                }
                // No embedding at all: leave both questions to the model loader, which reports
                // the missing embedding and the unused head.
                None => {}
            }
        }
    }

    Ok((config, WeightMap { source: dir.to_path_buf(), tensors }))
}

// ---------------------------------------------------------------------------------------------
// config.json

/// Parse an HF LLaMA `config.json` into a [`LlamaConfig`].
pub fn read_config(path: &Path) -> Result<LlamaConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    parse_config(path, &text)
}

fn parse_config(path: &Path, text: &str) -> Result<LlamaConfig, LoadError> {
    // serde_json's message carries "at line L column C".
    let value: Value = serde_json::from_str(text).map_err(|e| LoadError::format(path, "JSON", e.to_string()))?;
    let obj = value.as_object().ok_or_else(|| LoadError::format(path, "config.json", "the top level is not a JSON object"))?;

    check_architecture(path, obj)?;

    if let Some(v) = obj.get("rope_scaling") {
        if !v.is_null() {
            return Err(LoadError::field(path, "rope_scaling", format!("rope_scaling not supported (found {v}); only plain RoPE checkpoints can be loaded")));
        }
    }
    if let Some(v) = obj.get("hidden_act") {
        match v.as_str() {
            Some("silu") | Some("swish") => {}
            _ => return Err(LoadError::field(path, "hidden_act", format!("only \"silu\" is supported, found {v}"))),
        }
    }
    for flag in ["attention_bias", "mlp_bias"] {
        if let Some(v) = obj.get(flag) {
            match v.as_bool() {
                Some(false) => {}
                Some(true) => return Err(LoadError::field(path, flag, "bias terms are not supported by this LLaMA implementation")),
                None => return Err(LoadError::field(path, flag, format!("expected a boolean, found {v}"))),
            }
        }
    }

    let hidden_size = req_usize(path, obj, "hidden_size")?;
    let num_heads = req_usize(path, obj, "num_attention_heads")?;
    if num_heads == 0 {
        return Err(LoadError::field(path, "num_attention_heads", "must be positive"));
    }
    let num_kv_heads = opt_usize(path, obj, "num_key_value_heads")?.unwrap_or(num_heads);
    let head_dim = match opt_usize(path, obj, "head_dim")? {
        Some(h) => h,
        None => {
            if hidden_size % num_heads != 0 {
                return Err(LoadError::field(
                    path,
                    "head_dim",
                    format!("absent, and hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_heads})"),
                ));
            }
            hidden_size / num_heads
        }
    };
    let config = LlamaConfig {
        vocab_size: req_usize(path, obj, "vocab_size")?,
        hidden_size,
        intermediate_size: req_usize(path, obj, "intermediate_size")?,
        num_layers: req_usize(path, obj, "num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: req_f64(path, obj, "rms_norm_eps")?,
        rope_theta: opt_f64(path, obj, "rope_theta")?.unwrap_or(10000.0),
        max_position_embeddings: req_usize(path, obj, "max_position_embeddings")?,
        tie_word_embeddings: opt_bool(path, obj, "tie_word_embeddings")?.unwrap_or(false),
    };
    config.validate().map_err(|reason| LoadError::format(path, "LLaMA config", reason))?;
    Ok(config)
}

fn check_architecture(path: &Path, obj: &Map<String, Value>) -> Result<(), LoadError> {
    let model_type = obj.get("model_type");
    let architectures = obj.get("architectures");
    if model_type.is_none() && architectures.is_none() {
        return Err(LoadError::field(path, "model_type", "missing (and no `architectures` either); expected \"llama\""));
    }
    if let Some(v) = model_type {
        if v.as_str() != Some("llama") {
            return Err(LoadError::field(path, "model_type", format!("only LLaMA checkpoints are supported (expected \"llama\", found {v})")));
        }
    }
    if let Some(v) = architectures {
        let list = v.as_array().ok_or_else(|| LoadError::field(path, "architectures", format!("expected a list of strings, found {v}")))?;
        for a in list {
            match a.as_str() {
                Some("LlamaForCausalLM") => {}
                _ => return Err(LoadError::field(path, "architectures", format!("only LlamaForCausalLM is supported, found {a}"))),
            }
        }
    }
    Ok(())
}

fn opt_usize(path: &Path, obj: &Map<String, Value>, field: &str) -> Result<Option<usize>, LoadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| LoadError::field(path, field, format!("expected a non-negative integer, found {v}"))),
    }
}

fn req_usize(path: &Path, obj: &Map<String, Value>, field: &str) -> Result<usize, LoadError> {
    opt_usize(path, obj, field)?.ok_or_else(|| LoadError::field(path, field, "missing required field"))
}

fn opt_f64(path: &Path, obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, LoadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(LoadError::field(path, field, format!("expected a positive number, found {v}"))),
        },
    }
}

fn req_f64(path: &Path, obj: &Map<String, Value>, field: &str) -> Result<f64, LoadError> {
    opt_f64(path, obj, field)?.ok_or_else(|| LoadError::field(path, field, "missing required field"))
}

fn opt_bool(path: &Path, obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, LoadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| LoadError::field(path, field, format!("expected true or false, found {v}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// safetensors

fn read_weights(dir: &Path) -> Result<BTreeMap<String, HostTensor>, LoadError> {
    let single = dir.join(SINGLE_FILE);
    let index = dir.join(INDEX_FILE);
    if single.is_file() {
        return read_safetensors_file(&single);
    }
    if index.is_file() {
        return read_sharded(dir, &index);
    }
    let hint = if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
        " (found pytorch_model.bin: PyTorch pickle checkpoints are not supported, convert them to safetensors)"
    } else {
        ""
    };
    Err(LoadError::Other(format!("{}: neither {SINGLE_FILE} nor {INDEX_FILE} found{hint}", dir.display())))
}

fn read_sharded(dir: &Path, index: &Path) -> Result<BTreeMap<String, HostTensor>, LoadError> {
    let text = std::fs::read_to_string(index).map_err(|e| LoadError::io(index, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| LoadError::format(index, "JSON", e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| LoadError::field(index, "weight_map", "missing or not an object of tensor name -> shard file"))?;

    // shard file -> tensor names the index assigns to it
    let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| LoadError::field(index, format!("weight_map.{tensor}"), format!("expected a file name, found {file}")))?;
        let plain = {
            let mut comps = Path::new(file).components();
            matches!((comps.next(), comps.next()), (Some(Component::Normal(_)), None))
        };
        if !plain {
            return Err(LoadError::field(
                index,
                format!("weight_map.{tensor}"),
                format!("shard `{file}` must be a plain file name in the checkpoint directory"),
            ));
        }
        shards.entry(file.to_string()).or_default().insert(tensor.clone());
    }
    if shards.is_empty() {
        return Err(LoadError::field(index, "weight_map", "is empty"));
    }
    // Check every shard exists before reading any (a download cut short is the common case).
    let missing: Vec<&str> = shards.keys().filter(|f| !dir.join(f).is_file()).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(LoadError::Other(format!("{}: shard file(s) listed in {INDEX_FILE} are missing: {}", dir.display(), missing.join(", "))));
    }

    let mut all: BTreeMap<String, HostTensor> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (file, expected) in &shards {
        let path = dir.join(file);
        let tensors = read_safetensors_file(&path)?;
        for name in expected {
            if !tensors.contains_key(name) && !is_rotary_buffer(name) {
                return Err(LoadError::MissingTensor { path: path.clone(), tensor: name.clone() });
            }
        }
        for (name, t) in tensors {
            if let Some(first) = origin.get(&name) {
                return Err(LoadError::Other(format!("{}: tensor `{name}` appears in two shards: {first} and {file}", dir.display())));
            }
            origin.insert(name.clone(), file.clone());
            all.insert(name, t);
        }
    }
    Ok(all)
}

fn is_rotary_buffer(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// Read one safetensors file into f32 host tensors (rotary `inv_freq` buffers skipped).
pub fn read_safetensors_file(path: &Path) -> Result<BTreeMap<String, HostTensor>, LoadError> {
    let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
    // SAFETY: the map is read-only and dropped before returning; a checkpoint being rewritten
    // while we read it is outside what we can defend against (same as every mmap loader).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
    let bytes: &[u8] = &mmap;
    let (header_len, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| LoadError::format(path, "safetensors", describe_safetensors_error(&e)))?;
    let data = &bytes[8 + header_len..];

    let mut out = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        if is_rotary_buffer(&name) {
            continue;
        }
        let (start, end) = info.data_offsets;
        // read_metadata validated offsets against the buffer; stay defensive anyway.
        let raw = data.get(start..end).ok_or_else(|| LoadError::format(path, "safetensors", format!("tensor `{name}` data lies outside the file")))?;
        let values = to_f32(raw, info.dtype).ok_or_else(|| LoadError::UnsupportedDtype {
            path: path.to_path_buf(),
            tensor: name.clone(),
            dtype: format!("{:?} (only F32, F16 and BF16 are supported)", info.dtype),
        })?;
        out.insert(name, HostTensor { shape: info.shape.clone(), data: values });
    }
    Ok(out)
}

fn to_f32(raw: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => raw.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        Dtype::BF16 => raw.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        _ => return None,
    })
}

/// A safetensors reading error in words a user can act on (the library's own names, such as
/// `MetadataIncompleteBuffer`, say little).
pub fn describe_safetensors_error(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => "file is shorter than the 8-byte header length (truncated?)".into(),
        SafeTensorError::InvalidHeaderLength => "header length exceeds the file size (truncated?)".into(),
        SafeTensorError::MetadataIncompleteBuffer => "file size does not match the tensor data the header describes (truncated or corrupt download?)".into(),
        SafeTensorError::HeaderTooLarge => "header length field is implausibly large (corrupt file?)".into(),
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderDeserialization => "header is not valid JSON metadata (corrupt file?)".into(),
        other => format!("{other}"),
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!("iapt-hf-test-{}-{}-{}", tag, std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn config_json(c: &LlamaConfig) -> Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers,
            "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "hidden_act": "silu",
            "rope_scaling": null,
            "torch_dtype": "bfloat16",
        })
    }

    /// All HF tensor names and shapes of a LLaMA checkpoint with config `c`.
    fn tensor_specs(c: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
        let d = c.hidden_size;
        let q = c.num_heads * c.head_dim;
        let kv = c.kv_dim();
        let mut v = vec![(EMBED.to_string(), vec![c.vocab_size, d]), ("model.norm.weight".into(), vec![d])];
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.input_layernorm.weight"), vec![d]));
            v.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![q, d]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, d]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, d]));
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, q]));
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![c.intermediate_size, d]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![c.intermediate_size, d]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![d, c.intermediate_size]));
        }
        if !c.tie_word_embeddings {
            v.push((LM_HEAD.into(), vec![c.vocab_size, d]));
        }
        v
    }

    /// Deterministic values exactly representable in bf16 and f16 (small multiples of 1/64).
    fn values(seed: usize, n: usize) -> Vec<f32> {
        let mut s = (seed as u64).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) % 129) as f32 / 64.0 - 1.0
            })
            .collect()
    }

    fn encode(v: &[f32], dtype: Dtype) -> Vec<u8> {
        match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect(),
            Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect(),
            _ => unreachable!(),
        }
    }

    /// Raw tensors: name -> (dtype, shape, bytes); and the expected f32 values.
    type Raw = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

    fn make_tensors(c: &LlamaConfig) -> (Raw, BTreeMap<String, HostTensor>) {
        let dtypes = [Dtype::F32, Dtype::F16, Dtype::BF16];
        let mut raw = Raw::new();
        let mut expected = BTreeMap::new();
        for (i, (name, shape)) in tensor_specs(c).into_iter().enumerate() {
            let n: usize = shape.iter().product();
            let data = values(i, n);
            let dtype = dtypes[i % 3];
            raw.insert(name.clone(), (dtype, shape.clone(), encode(&data, dtype)));
            expected.insert(name, HostTensor { shape, data });
        }
        (raw, expected)
    }

    fn serialize(raw: &Raw, names: &[&String]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = names
            .iter()
            .map(|n| {
                let (dt, shape, bytes) = &raw[*n];
                ((*n).clone(), TensorView::new(*dt, shape.clone(), bytes).unwrap())
            })
            .collect();
        safetensors::serialize(views, &None).unwrap()
    }

    fn write_config(dir: &Path, v: &Value) {
        std::fs::write(dir.join(CONFIG_FILE), serde_json::to_string_pretty(v).unwrap()).unwrap();
    }

    /// A complete single-file checkpoint of `LlamaConfig::tiny()`.
    fn write_single(dir: &Path) -> BTreeMap<String, HostTensor> {
        let c = LlamaConfig::tiny();
        write_config(dir, &config_json(&c));
        let (raw, expected) = make_tensors(&c);
        let names: Vec<&String> = raw.keys().collect();
        std::fs::write(dir.join(SINGLE_FILE), serialize(&raw, &names)).unwrap();
        expected
    }

    /// A two-shard checkpoint; returns the expected tensors and the shard names.
    fn write_sharded(dir: &Path) -> (BTreeMap<String, HostTensor>, [String; 2]) {
        let c = LlamaConfig::tiny();
        write_config(dir, &config_json(&c));
        let (raw, expected) = make_tensors(&c);
        let shard_names = ["model-00001-of-00002.safetensors".to_string(), "model-00002-of-00002.safetensors".to_string()];
        let names: Vec<&String> = raw.keys().collect();
        let (a, b) = names.split_at(names.len() / 2);
        std::fs::write(dir.join(&shard_names[0]), serialize(&raw, a)).unwrap();
        std::fs::write(dir.join(&shard_names[1]), serialize(&raw, b)).unwrap();
        let mut map = serde_json::Map::new();
        for n in a {
            map.insert((*n).clone(), Value::String(shard_names[0].clone()));
        }
        for n in b {
            map.insert((*n).clone(), Value::String(shard_names[1].clone()));
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.join(INDEX_FILE), index.to_string()).unwrap();
        (expected, shard_names)
    }

    fn err_string(r: Result<(LlamaConfig, WeightMap), LoadError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn single_file_round_trips_all_dtypes() {
        let t = TempDir::new("single");
        let expected = write_single(&t.0);
        let (config, weights) = load_llama_hf_dir(&t.0).unwrap();
        assert_eq!(config, LlamaConfig::tiny());
        assert_eq!(crate::read_checkpoint_config(&t.0).unwrap(), config);
        assert!(crate::read_checkpoint_config(&t.0.join("absent")).unwrap_err().to_string().contains("absent"));
        assert_eq!(weights.source, t.0);
        assert_eq!(weights.tensors.len(), expected.len());
        assert_eq!(weights.tensors, expected);
    }

    #[test]
    fn weight_map_feeds_the_model_loader_protocol() {
        let t = TempDir::new("take");
        write_single(&t.0);
        let (c, mut w) = load_llama_hf_dir(&t.0).unwrap();
        for (name, shape) in tensor_specs(&c) {
            w.take(&name, &shape).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn sharded_index_works() {
        let t = TempDir::new("sharded");
        let (expected, _) = write_sharded(&t.0);
        let (config, weights) = load_llama_hf_dir(&t.0).unwrap();
        assert_eq!(config, LlamaConfig::tiny());
        assert_eq!(weights.tensors, expected);
    }

    #[test]
    fn missing_shard_is_named() {
        let t = TempDir::new("missing-shard");
        let (_, shards) = write_sharded(&t.0);
        std::fs::remove_file(t.0.join(&shards[1])).unwrap();
        let msg = err_string(load_llama_hf_dir(&t.0));
        assert!(msg.contains(&shards[1]), "{msg}");
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn duplicate_tensor_in_two_shards_is_named() {
        let t = TempDir::new("dup2");
        let c = LlamaConfig::tiny();
        write_config(&t.0, &config_json(&c));
        let (raw, _) = make_tensors(&c);
        let names: Vec<&String> = raw.keys().collect();
        std::fs::write(t.0.join("a.safetensors"), serialize(&raw, &names)).unwrap();
        // b repeats the first tensor and holds one the index assigns to it.
        std::fs::write(t.0.join("b.safetensors"), serialize(&raw, &names[..2])).unwrap();
        let mut map = serde_json::Map::new();
        for n in &names {
            map.insert((*n).clone(), Value::String("a.safetensors".into()));
        }
        map.insert(names[1].clone(), Value::String("b.safetensors".into()));
        std::fs::write(t.0.join(INDEX_FILE), serde_json::json!({"weight_map": map}).to_string()).unwrap();
        let msg = err_string(load_llama_hf_dir(&t.0));
        assert!(msg.contains("two shards"), "{msg}");
        assert!(msg.contains(names[0].as_str()) || msg.contains(names[1].as_str()), "{msg}");
    }

    #[test]
    fn truncated_file_is_named_not_a_panic() {
        let t = TempDir::new("trunc");
        write_single(&t.0);
        let path = t.0.join(SINGLE_FILE);
        let bytes = std::fs::read(&path).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, 100, 7, 0] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let r = load_llama_hf_dir(&t.0);
            match r {
                // In words a user can act on, not the safetensors library's variant names.
                Err(LoadError::Format { path: p, reason, .. }) => assert!(p == path && reason.contains("truncated"), "cut {cut}: {reason}"),
                Err(LoadError::Io { path: p, .. }) => assert_eq!(p, path, "cut {cut}"),
                Err(other) => panic!("cut {cut}: unexpected error {other}"),
                Ok(_) => panic!("cut {cut}: truncated file accepted"),
            }
        }
        // Garbage of plausible size.
        std::fs::write(&path, vec![0xAB; 4096]).unwrap();
        let msg = err_string(load_llama_hf_dir(&t.0));
        assert!(msg.contains(SINGLE_FILE) && msg.contains("corrupt"), "{msg}");
    }

    #[test]
    fn unsupported_dtype_names_tensor() {
        let t = TempDir::new("dtype");
        let c = LlamaConfig::tiny();
        write_config(&t.0, &config_json(&c));
        let bytes = vec![0u8; 8 * 4];
        let views = vec![("model.norm.weight".to_string(), TensorView::new(Dtype::F64, vec![4], &bytes).unwrap())];
        std::fs::write(t.0.join(SINGLE_FILE), safetensors::serialize(views, &None).unwrap()).unwrap();
        match load_llama_hf_dir(&t.0) {
            Err(LoadError::UnsupportedDtype { tensor, .. }) => assert_eq!(tensor, "model.norm.weight"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("F64 accepted"),
        }
    }

    #[test]
    fn rotary_inv_freq_is_dropped() {
        let t = TempDir::new("invfreq");
        let c = LlamaConfig::tiny();
        write_config(&t.0, &config_json(&c));
        let (mut raw, expected) = make_tensors(&c);
        raw.insert("model.layers.0.self_attn.rotary_emb.inv_freq".into(), (Dtype::F32, vec![4], encode(&[1.0, 0.5, 0.25, 0.125], Dtype::F32)));
        let names: Vec<&String> = raw.keys().collect();
        std::fs::write(t.0.join(SINGLE_FILE), serialize(&raw, &names)).unwrap();
        let (_, w) = load_llama_hf_dir(&t.0).unwrap();
        assert_eq!(w.tensors, expected);
    }

    #[test]
    fn tied_embeddings_drop_identical_head_and_reject_different_one() {
        let t = TempDir::new("tied");
        let mut c = LlamaConfig::tiny();
        c.tie_word_embeddings = true;
        write_config(&t.0, &config_json(&c));
        let (mut raw, expected) = make_tensors(&c);
        assert!(!raw.contains_key(LM_HEAD));
        // Identical head (stored in another dtype holding the same values) is dropped.
        let embed = &expected[EMBED];
        raw.insert(LM_HEAD.into(), (Dtype::F32, embed.shape.clone(), encode(&embed.data, Dtype::F32)));
        let names: Vec<&String> = raw.keys().collect();
        std::fs::write(t.0.join(SINGLE_FILE), serialize(&raw, &names)).unwrap();
        let (config, w) = load_llama_hf_dir(&t.0).unwrap();
        assert!(config.tie_word_embeddings);
        assert_eq!(w.tensors, expected);

        // A different head contradicts the config.
        let mut other = embed.data.clone();
        other[0] += 0.5;
        raw.insert(LM_HEAD.into(), (Dtype::F32, embed.shape.clone(), encode(&other, Dtype::F32)));
        let names: Vec<&String> = raw.keys().collect();
        std::fs::write(t.0.join(SINGLE_FILE), serialize(&raw, &names)).unwrap();
        let msg = err_string(load_llama_hf_dir(&t.0));
        assert!(msg.contains("tie_word_embeddings") && msg.contains(LM_HEAD), "{msg}");
    }

    #[test]
    fn config_defaults() {
        let t = TempDir::new("defaults");
        let c = LlamaConfig::tiny();
        let mut v = config_json(&c);
        let obj = v.as_object_mut().unwrap();
        for k in ["num_key_value_heads", "head_dim", "rope_theta", "tie_word_embeddings", "rope_scaling"] {
            obj.remove(k);
        }
        let cfg = parse_config(&t.0.join(CONFIG_FILE), &v.to_string()).unwrap();
        assert_eq!(cfg.num_kv_heads, c.num_heads);
        assert_eq!(cfg.head_dim, c.hidden_size / c.num_heads);
        assert_eq!(cfg.rope_theta, 10000.0);
        assert!(!cfg.tie_word_embeddings);
    }

    #[test]
    fn bad_config_field_is_named() {
        let t = TempDir::new("badfield");
        write_single(&t.0);
        let path = t.0.join(CONFIG_FILE);
        let base = config_json(&LlamaConfig::tiny());
        let cases: Vec<(&str, Option<Value>)> = vec![
            ("hidden_size", Some(Value::String("32".into()))),
            ("num_hidden_layers", None),
            ("vocab_size", Some(serde_json::json!(-3))),
            ("rms_norm_eps", Some(serde_json::json!("tiny"))),
            ("tie_word_embeddings", Some(serde_json::json!(1))),
            ("model_type", Some(serde_json::json!("gpt2"))),
            ("architectures", Some(serde_json::json!(["MistralForCausalLM"]))),
        ];
        for (field, value) in cases {
            let mut v = base.clone();
            match value {
                Some(x) => {
                    v[field] = x;
                }
                None => {
                    v.as_object_mut().unwrap().remove(field);
                }
            }
            write_config(&t.0, &v);
            match load_llama_hf_dir(&t.0) {
                Err(LoadError::Field { path: p, field: f, reason }) => {
                    assert_eq!(p, path);
                    assert_eq!(f, field, "{reason}");
                }
                Err(e) => panic!("{field}: unexpected error {e}"),
                Ok(_) => panic!("{field}: accepted"),
            }
        }
    }

    #[test]
    fn inconsistent_config_fails_validation() {
        let t = TempDir::new("validate");
        let mut v = config_json(&LlamaConfig::tiny());
        v["num_key_value_heads"] = serde_json::json!(3); // 4 heads not a multiple of 3
        let msg = parse_config(&t.0.join(CONFIG_FILE), &v.to_string()).unwrap_err().to_string();
        assert!(msg.contains("num_kv_heads"), "{msg}");
    }

    #[test]
    fn invalid_json_reports_position() {
        let t = TempDir::new("json");
        write_single(&t.0);
        std::fs::write(t.0.join(CONFIG_FILE), "{\n  \"hidden_size\": 32,\n  oops\n}").unwrap();
        let msg = err_string(load_llama_hf_dir(&t.0));
        assert!(msg.contains("config.json"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn rope_scaling_is_rejected() {
        let t = TempDir::new("rope");
        write_single(&t.0);
        let mut v = config_json(&LlamaConfig::tiny());
        v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
        write_config(&t.0, &v);
        match load_llama_hf_dir(&t.0) {
            Err(e @ LoadError::Field { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("rope_scaling not supported"), "{msg}");
                assert!(msg.contains("`rope_scaling`"), "{msg}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("rope_scaling accepted"),
        }
    }

    #[test]
    fn missing_weights_and_missing_dir() {
        let t = TempDir::new("noweights");
        write_config(&t.0, &config_json(&LlamaConfig::tiny()));
        let msg = err_string(load_llama_hf_dir(&t.0));
        assert!(msg.contains(SINGLE_FILE), "{msg}");
        let msg = err_string(load_llama_hf_dir(&t.0.join("nope")));
        assert!(msg.contains("nope"), "{msg}");
    }
}
