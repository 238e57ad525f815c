//! Adapters saved by Hugging Face PEFT itself (`tests/fixtures/peft`, made by its `make.py` with
//! PyTorch + PEFT 0.21 on the same SmolLM2 weights): loaded here, they give PEFT's next-token
//! logits and greedy tokens. Needs the real checkpoint (fetched on first use).

use iapt_model::{generate, GenerationConfig, KvCache, Llama, ModelHook, NoHook, Padding, SamplingConfig, TokenBatch};
use std::path::PathBuf;

type TB = burn::backend::NdArray;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/peft")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
#[ignore = "needs the network (fetches the real model once); scripts/test.sh runs it"]
fn peft_adapters_give_peft_s_logits_and_greedy_tokens() {
    let path = iapt_assets::fetch_asset("smollm2").unwrap();
    let model: Llama<TB> = iapt_model::load_llama(&path, &Default::default()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
    let prompt = ids(&expected["prompt_ids"]);
    let max_new_tokens = expected["max_new_tokens"].as_u64().unwrap() as usize;
    for name in ["bare", "lora", "prompt_tuning", "prefix_tuning"] {
        let tuner = (name != "bare").then(|| iapt_tuners::load_tuner::<TB>(&fixtures().join(name), model.config(), &Default::default()).unwrap());
        let hook: &dyn ModelHook<TB> = match &tuner {
            Some(t) => t,
            None => &NoHook,
        };
        // First-step logits at PEFT's top 5 tokens.
        let batch = TokenBatch::padded(std::slice::from_ref(&prompt), 0, Padding::Left, &Default::default());
        let hidden = model.forward(batch, &mut KvCache::new(model.num_layers()), hook);
        let logits = iapt_model::NextLogits::of(&model, hidden);
        let first = &expected[format!("{name}_first_logits")];
        for (id, want) in ids(&first["ids"]).into_iter().zip(first["values"].as_array().unwrap()) {
            let got = logits.row(0)[id as usize];
            let want = want.as_f64().unwrap() as f32;
            assert!((got - want).abs() < 2e-3, "{name}: logit of token {id} is {got}, PEFT's {want}");
        }
        let config = GenerationConfig { max_new_tokens, sampling: SamplingConfig::default(), stop_tokens: vec![] };
        let tokens = generate(&model, std::slice::from_ref(&prompt), 0, &config, hook).tokens.remove(0);
        assert_eq!(tokens, ids(&expected[name]), "{name}: greedy tokens differ from PyTorch + PEFT's");
    }
}
