//! A Hugging Face checkpoint directory, end to end: a tiny LLaMA-2-architecture model written by
//! the test in the layout `transformers` saves (`config.json`, sharded safetensors with their
//! index, a sentencepiece-style `tokenizer.json`, `tokenizer_config.json` with LLaMA-2's chat
//! template) loads into the model and tokenizer, and computes what the model it was written from
//! computes, which the naive f64 reference confirms. Errors in such a directory name the file.

mod reference;

use iapt_model::{load_llama, load_tokenizer, ChatMessage, KvCache, Llama, LlamaConfig, LoadError, NoHook, Padding, TokenBatch};
use reference::{max_diff, reference_logits, TB};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iapt-hf-checkpoint-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// LLaMA-2's pieces, in its `tokenizer.json` layout: `<unk>`, `<s>`, `</s>` first, then
/// sentencepiece pieces with `▁` for a leading space.
const PIECES: [&str; 12] = ["<unk>", "<s>", "</s>", "▁", "a", "b", "c", "▁a", "▁b", "ab", "▁ab", "▁c"];
const MERGES: [&str; 5] = ["▁ a", "▁ b", "a b", "▁a b", "▁ c"];

/// LLaMA-2-chat's template (as shipped in its `tokenizer_config.json`), without the system turn.
const LLAMA2_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}\
{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}";

fn tokenizer_json() -> serde_json::Value {
    let special =
        |id: usize| json!({"id": id, "content": PIECES[id], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let vocab: serde_json::Map<String, serde_json::Value> = PIECES.iter().enumerate().map(|(i, p)| (p.to_string(), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0), special(1), special(2)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false, "vocab": vocab, "merges": MERGES}
    })
}

fn config_json(c: &LlamaConfig) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32"
    })
}

/// Write `model` as a two-shard HF checkpoint with its tokenizer into `dir`.
fn write_checkpoint(model: &Llama<TB>, dir: &Path) {
    let weights = model.to_weights();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        weights.tensors.iter().map(|(name, t)| (name.clone(), t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
    let half = bytes.len() / 2;
    let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in shards.iter().zip([&bytes[..half], &bytes[half..]]) {
        let views: Vec<(String, TensorView<'_>)> =
            part.iter().map(|(name, shape, data)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), data).unwrap())).collect();
        std::fs::write(dir.join(shard), safetensors::serialize(views, &None).unwrap()).unwrap();
        for (name, _, _) in part {
            weight_map.insert(name.clone(), json!(shard));
        }
    }
    let index = json!({"metadata": {"total_size": 4 * weights.tensors.values().map(|t| t.data.len()).sum::<usize>()}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), config_json(model.config()).to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    let tokenizer_config = json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": LLAMA2_CHAT_TEMPLATE});
    std::fs::write(dir.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
}

fn logits(model: &Llama<TB>, ids: &[u32]) -> Vec<f32> {
    let batch = TokenBatch::padded(&[ids.to_vec()], 0, Padding::Right, &Default::default());
    let hidden = model.forward(batch, &mut KvCache::new(model.num_layers()), &NoHook);
    model.logits(hidden).into_data().to_vec().unwrap()
}

fn random_model(seed: u64) -> Llama<TB> {
    <TB as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    let mut c = LlamaConfig::tiny();
    c.vocab_size = PIECES.len();
    Llama::random(&c, &Default::default())
}

#[test]
fn a_hf_directory_loads_into_the_model_and_tokenizer_it_was_written_from() {
    let dir = TempDir::new("e2e");
    let model = random_model(7);
    write_checkpoint(&model, &dir.0);

    let tokenizer = load_tokenizer(&dir.0).unwrap();
    assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (Some(1), 2));
    // Sentencepiece-style: a leading `▁` on the first word and after every space.
    let ids = tokenizer.encode("ab ab c a").unwrap();
    let pieces: Vec<&str> = ids.iter().map(|&i| PIECES[i as usize]).collect();
    assert_eq!(pieces, ["▁ab", "▁ab", "▁c", "▁a"]);
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "ab ab c a");
    let chat = tokenizer.apply_chat_template(&[ChatMessage::new("user", "ab")], true).unwrap();
    assert_eq!(chat, "<s>[INST] ab [/INST]");

    let loaded = load_llama::<TB>(&dir.0, &Default::default()).unwrap();
    assert_eq!(loaded.config(), model.config());
    let prompt: Vec<u32> = [tokenizer.bos_id().unwrap()].into_iter().chain(ids).collect();
    // Every tensor comes back bit for bit (the safetensors round trip loses nothing)...
    let (read, written) = (loaded.to_weights(), model.to_weights());
    assert_eq!(read.tensors.keys().collect::<Vec<_>>(), written.tensors.keys().collect::<Vec<_>>());
    for (name, tensor) in &written.tensors {
        let back = &read.tensors[name];
        assert_eq!(back.shape, tensor.shape, "{name}");
        assert!(back.data.iter().zip(&tensor.data).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} differs after loading");
    }
    // ...so the loaded model computes what the written one does (up to the order of f32 sums,
    // which a loaded model's weight layout may change)...
    let (got, want) = (logits(&loaded, &prompt), logits(&model, &prompt));
    assert!(max_diff(&got, &want.iter().map(|&v| v as f64).collect::<Vec<_>>()) < 1e-5, "the loaded model's logits differ from the written one's");
    // ...and what the architecture's definition says, recomputed in f64 from the loaded weights.
    let vocab = PIECES.len();
    for (position, row) in reference_logits(&loaded, &prompt, &[], 0).iter().enumerate() {
        let d = max_diff(&got[position * vocab..(position + 1) * vocab], row);
        assert!(d < 1e-4, "position {position}: logits differ from the f64 reference by {d}");
    }
}

#[test]
fn a_missing_config_is_named_once_and_a_config_of_another_model_is_named() {
    let dir = TempDir::new("errors");
    write_checkpoint(&random_model(8), &dir.0);
    let config = dir.0.join("config.json");

    // Sizes in config.json that the weights do not have: the error says which file set them.
    let mut other = config_json(&LlamaConfig::tiny());
    other["vocab_size"] = json!(PIECES.len());
    other["hidden_size"] = json!(64);
    other["head_dim"] = json!(8);
    std::fs::write(&config, other.to_string()).unwrap();
    let err = load_llama::<TB>(&dir.0, &Default::default()).expect_err("mismatched config accepted");
    assert!(matches!(err, LoadError::ConfigMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&config.display().to_string()) && msg.contains("hidden_size 64") && msg.contains("model.embed_tokens.weight"), "{msg}");

    // No config.json: the file is named, and the operating system's reason is said once even
    // when the error is printed with its causes (as `iapt` prints it).
    std::fs::remove_file(&config).unwrap();
    let err = load_llama::<TB>(&dir.0, &Default::default()).expect_err("a directory without config.json accepted");
    let mut report = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        report.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(report.contains(&config.display().to_string()), "{report}");
    assert_eq!(report.matches("No such file or directory").count(), 1, "{report}");
}
