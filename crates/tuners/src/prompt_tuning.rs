//! Prompt tuning (Lester et al., 2021): `n` learnable input embeddings placed before the tokens,
//! through [`ModelHook::input_prefix`]. Unlike a KV prefix, the soft prompt runs through every
//! layer like real tokens; the model gives it positions `0..n` and shifts the real tokens by `n`
//! itself (positions count the prefix as valid tokens), so no position offset is declared here.

use crate::config::tuner_config;
use crate::kind::TunerKind;
use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Distribution, Int, Tensor};
use iapt_model::TrainableTuner;
use iapt_model::{Llama, LlamaConfig};
use iapt_model::{ModelHook, Projection};
use serde::{Deserialize, Serialize};

/// Standard deviation of the random prompt when no embedding table is at hand: LLaMA's
/// `initializer_range`, the scale its embeddings were initialised at.
pub const DEFAULT_INIT_STD: f64 = 0.02;

/// How the soft prompt starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptInit {
    /// Copies of embedding rows of tokens drawn uniformly from the vocabulary: the prompt starts
    /// inside the region of embedding space the backbone was trained on.
    Vocab,
    /// `N(0, s^2)`, `s` = the RMS of the backbone's embedding table, so the soft tokens enter the
    /// residual stream at the scale of real ones.
    Random,
}

tuner_config! {
    /// Prompt tuning's hyper-parameters; saved verbatim in `adapter_config.json`.
    pub struct PromptTuningConfig {
        /// Soft tokens placed before the input.
        pub num_tokens: usize = 32,
        pub init: PromptInit = PromptInit::Vocab,
    }
}

impl PromptTuningConfig {
    /// The defaults (32 tokens copied from the vocabulary).
    pub fn new() -> Self {
        Self::default()
    }

    fn build<B: Backend>(&self, base: &LlamaConfig, prompt: Tensor<B, 2>) -> PromptTuning<B> {
        PromptTuning { prompt: Param::from_tensor(prompt), config: self.clone(), base: base.clone() }
    }
}

impl TunerKind for PromptTuningConfig {
    const NAME: &'static str = "prompt_tuning";
    type Module<B: Backend> = PromptTuning<B>;

    fn validate(&self) -> Result<(), String> {
        if self.num_tokens == 0 {
            return Err("num_tokens must be positive".into());
        }
        Ok(())
    }

    /// `n d`.
    fn num_params(&self, base: &LlamaConfig) -> usize {
        self.num_tokens * base.hidden_size
    }

    /// A prompt of the right shape drawn from `N(0, DEFAULT_INIT_STD^2)` whatever `init` says:
    /// without the backbone there are no embeddings to copy or measure. Right for loading an
    /// adapter (the values are replaced); to start training use
    /// [`TunerKind::init_from_backbone`], which honours `init`.
    fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Result<PromptTuning<B>, String> {
        self.validate().map_err(|e| format!("invalid prompt tuning config: {e}"))?;
        let prompt = Tensor::random([self.num_tokens, base.hidden_size], Distribution::Normal(0.0, DEFAULT_INIT_STD), device);
        Ok(self.build(base, prompt))
    }

    /// The prompt initialised as `init` says from `backbone`'s embedding table `[vocab, d]`.
    /// Draws use the backend's RNG (seed it for reproducible starts).
    fn init_from_backbone<B: Backend>(&self, backbone: &Llama<B>) -> Result<PromptTuning<B>, String> {
        self.validate().map_err(|e| format!("invalid prompt tuning config: {e}"))?;
        let table = backbone.embedding_table().detach();
        let [vocab, d] = table.dims();
        let device = table.device();
        let prompt = match self.init {
            PromptInit::Vocab => table.select(0, random_token_ids(vocab, self.num_tokens, &device)),
            PromptInit::Random => {
                let rms = table.powi_scalar(2).mean().sqrt().into_scalar();
                let std: f64 = burn::tensor::ElementConversion::elem(rms);
                Tensor::random([self.num_tokens, d], Distribution::Normal(0.0, std), &device)
            }
        };
        // Drawn from the (frozen) table, the prompt is an op's output; on an autodiff backend a
        // parameter must be a leaf of its own, so it starts a new graph here.
        Ok(self.build(backbone.config(), prompt.detach()))
    }

    fn of<B: Backend>(module: &PromptTuning<B>) -> (&Self, &LlamaConfig) {
        (&module.config, &module.base)
    }

    /// The prompt length `n`.
    fn size(&self) -> usize {
        self.num_tokens
    }

    fn with_size(&self, size: usize) -> Self {
        Self { num_tokens: size, ..self.clone() }
    }
}

/// The soft prompt: `[n, d]` embeddings shared by every input.
#[derive(Module, Debug)]
pub struct PromptTuning<B: Backend> {
    pub prompt: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub config: PromptTuningConfig,
    /// The backbone shape this tuner was built for.
    #[module(skip)]
    pub base: LlamaConfig,
}

impl<B: Backend> TrainableTuner for PromptTuning<B> {}

impl<B: Backend> ModelHook<B> for PromptTuning<B> {
    /// No projection deltas: its work is in the KV cache (or the input) from prefill on.
    fn adds_delta(&self, _layer: usize, _projection: Projection) -> bool {
        false
    }
    fn input_prefix(&self, batch: usize, device: &B::Device) -> Option<Tensor<B, 3>> {
        let [n, d] = self.prompt.dims();
        Some(self.prompt.val().to_device(device).reshape([1, n, d]).expand([batch, n, d]))
    }
}

/// `n` vocabulary ids drawn uniformly from `0..vocab` with the backend's RNG: the tokens a
/// prompt (or P-tuning v2's prefix) starts from.
pub(crate) fn random_token_ids<B: Backend>(vocab: usize, n: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::<B, 1, Int>::random([n], Distribution::Uniform(0.0, vocab as f64), device)
        // Guards backends whose draw may land on the open upper bound.
        .clamp(0, vocab as i64 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    /// Every drawn id is a vocabulary row, and a long draw reaches both ends of the range.
    #[test]
    fn random_token_ids_cover_the_vocabulary_and_stay_inside_it() {
        let ids: Vec<i64> = random_token_ids::<TB>(3, 600, &Default::default()).into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(ids.len(), 600);
        assert!(ids.iter().all(|&i| (0..3).contains(&i)), "{ids:?}");
        for v in 0..3 {
            assert!(ids.contains(&v), "id {v} never drawn");
        }
    }

    #[test]
    fn json_defaults_and_refusals() {
        let parse = |s: &str| PromptTuningConfig::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(parse("{}").unwrap(), PromptTuningConfig::new());
        assert_eq!(parse(r#"{"init": "random", "num_tokens": 4}"#).unwrap(), PromptTuningConfig::new().with_num_tokens(4).with_init(PromptInit::Random));
        assert!(parse(r#"{"init": "text"}"#).unwrap_err().contains("init"));
        assert!(parse(r#"{"num_token": 4}"#).unwrap_err().contains("num_token"));
        assert!(parse(r#"{"num_tokens": 0}"#).unwrap_err().contains("num_tokens"));
    }

    #[test]
    fn vocab_init_copies_embedding_rows_and_random_init_matches_their_scale() {
        let device = Default::default();
        let mut base = LlamaConfig::tiny();
        base.vocab_size = 7;
        let backbone = Llama::<TB>::random(&base, &device);
        let table: Vec<f32> = backbone.embedding_table().into_data().to_vec().unwrap();
        let rows: Vec<&[f32]> = table.chunks(base.hidden_size).collect();
        let vocab = PromptTuningConfig::new().with_num_tokens(5).init_from_backbone(&backbone).unwrap();
        let prompt: Vec<f32> = vocab.prompt.val().into_data().to_vec().unwrap();
        for token in prompt.chunks(base.hidden_size) {
            assert!(rows.contains(&token), "a vocab-initialised soft token is not an embedding row");
        }
        let random = PromptTuningConfig::new().with_num_tokens(64).with_init(PromptInit::Random).init_from_backbone(&backbone).unwrap();
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let got: Vec<f32> = random.prompt.val().into_data().to_vec().unwrap();
        assert!((rms(&got) / rms(&table) - 1.0).abs() < 0.1, "{} vs {}", rms(&got), rms(&table));
    }
}
