//! P-tuning v2 (Liu et al., 2022), i.e. deep prefix tuning: every layer gets `n` learned key and
//! value positions that every real token attends to, handed to the model as a
//! [`LayerPrefix::KeyValue`]. The model asks for them once per layer at prefill and keeps them in
//! the KV cache, so decode steps recompute nothing — the same cost profile as IAPT, except that
//! the prefix does not depend on the input.
//!
//! Positions: the learned keys are not rotated, and real tokens keep positions `0..` (no offset).
//! This loses nothing against shifting the real tokens by `n` (what HF PEFT ends up doing):
//! RoPE gives `R(p + n) q · k = R(p) q · R(n)^T k`, so a shift only rotates every learned key by
//! a fixed orthogonal map, which the free keys (or the MLP's last linear map) absorb.
//!
//! Start: by default the prefix starts as the backbone's own keys and values of real tokens
//! (Li & Liang's "initialise with activations of real words"): `N(0, 1)` keys and values, PEFT's
//! start, lie far from anything the frozen layers have seen and barely train at small budgets.
//! The keys are those of the tokens at positions `0..n`, while the real tokens also start at 0,
//! so the start is not a literal preamble (a preamble would sit at `-n..0`): the row sees the
//! tokens' content at other relative distances, which training is free to correct.

use crate::config::tuner_config;
use crate::kind::TunerKind;
use crate::prompt_tuning::random_token_ids;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::tanh;
use burn::tensor::{backend::Backend, FloatDType, Int, Tensor};
use iapt_model::{KvCache, LayerInput, LayerPrefix, ModelHook, NoHook, Projection, TokenBatch};
use iapt_model::{Llama, LlamaConfig, TrainableTuner};
use serde::{Deserialize, Serialize};

/// How the prefix starts when training begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefixInit {
    /// From `n` tokens drawn uniformly from the vocabulary: the direct form takes the keys and
    /// values the backbone caches for them at positions `0..n` (a prefill with no tuner); the
    /// reparameterised form copies their embedding rows into the MLP's input.
    Tokens,
    /// `N(0, 1)` keys and values, or MLP input embeddings (HF PEFT's prefix encoder, an
    /// `nn.Embedding`).
    Random,
}

tuner_config! {
    /// P-tuning v2's hyper-parameters; saved verbatim in `adapter_config.json`.
    pub struct PrefixTuningConfig {
        /// Prefix positions per layer.
        pub num_tokens: usize = 16,
        /// Width `h` of the reparameterisation MLP `E [n, d] -> Linear(d, h) -> tanh ->
        /// Linear(h, L 2 kv_dim)` (Li & Liang's trick to stabilise training). `None`: the keys and
        /// values are parameters themselves (P-tuning v2's default).
        #[serde(skip_serializing_if = "Option::is_none")]
        pub reparam_hidden: Option<usize> = None,
        pub init: PrefixInit = PrefixInit::Tokens,
    }
}

impl PrefixTuningConfig {
    /// The defaults (16 positions, no reparameterisation).
    pub fn new() -> Self {
        Self::default()
    }
}

impl TunerKind for PrefixTuningConfig {
    const NAME: &'static str = "p_tuning_v2";
    type Module<B: Backend> = PrefixTuning<B>;

    fn validate(&self) -> Result<(), String> {
        if self.num_tokens == 0 {
            return Err("num_tokens must be positive".into());
        }
        if self.reparam_hidden == Some(0) {
            return Err("reparam_hidden must be positive (or absent for no reparameterisation)".into());
        }
        Ok(())
    }

    /// Direct: `2 L n kv_dim`. Reparameterised: `n d + (d h + h) + (h + 1) 2 L kv_dim`.
    fn num_params(&self, base: &LlamaConfig) -> usize {
        let prefix = 2 * base.num_layers * base.kv_dim();
        match self.reparam_hidden {
            None => self.num_tokens * prefix,
            Some(h) => self.num_tokens * base.hidden_size + base.hidden_size * h + h + (h + 1) * prefix,
        }
    }

    /// Build the tuner for a backbone of shape `base`. Without the backbone there are no tokens
    /// to start from: direct keys/values and the MLP's input embeddings start as `N(0, 1)`
    /// whatever `init` says (right for loading an adapter, whose values replace them); to start
    /// training use [`TunerKind::init_from_backbone`], which honours `init`. The MLP's linear
    /// maps take burn's default init.
    fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Result<PrefixTuning<B>, String> {
        self.validate().map_err(|e| format!("invalid prefix tuning config: {e}"))?;
        let (n, d, layers) = (self.num_tokens, base.hidden_size, base.num_layers);
        let unit = Initializer::Normal { mean: 0.0, std: 1.0 };
        let direct = || unit.init([layers, base.num_kv_heads, n, base.head_dim], device);
        let (keys, values, encoder) = match self.reparam_hidden {
            None => (Some(direct()), Some(direct()), None),
            Some(h) => {
                let encoder = PrefixEncoder {
                    embedding: unit.init([n, d], device),
                    hidden: LinearConfig::new(d, h).init(device),
                    out: LinearConfig::new(h, 2 * layers * base.kv_dim()).init(device),
                };
                (None, None, Some(encoder))
            }
        };
        let tuner = PrefixTuning { keys, values, encoder, config: self.clone(), base: base.clone() };
        Ok(iapt_model::materialize(tuner))
    }

    /// The tuner to start training on `backbone`, its prefix as `init` says. Draws use the
    /// backend's RNG (seed it for reproducible starts).
    fn init_from_backbone<B: Backend>(&self, backbone: &Llama<B>) -> Result<PrefixTuning<B>, String> {
        let mut tuner = self.init(backbone.config(), &backbone.device())?;
        if self.init == PrefixInit::Random {
            return Ok(tuner);
        }
        let vocab = backbone.config().vocab_size;
        let ids = random_token_ids::<B>(vocab, self.num_tokens, &backbone.device());
        // Drawn from the frozen backbone, the start is an op's output; on an autodiff backend a
        // parameter must be a leaf of its own, so each one starts a new graph here.
        let start = |drawn: Tensor<B, 4>, like: &Option<Param<Tensor<B, 4>>>| {
            let dtype = like.as_ref().expect("the direct form has keys and values").val().dtype();
            Some(Param::from_tensor(drawn.cast(FloatDType::from(dtype)).detach()))
        };
        match &mut tuner.encoder {
            Some(encoder) => {
                let dtype = FloatDType::from(encoder.embedding.val().dtype());
                encoder.embedding = Param::from_tensor(backbone.embedding_table().select(0, ids).cast(dtype).detach());
            }
            None => {
                let (keys, values) = token_keys_values(backbone, ids.unsqueeze());
                (tuner.keys, tuner.values) = (start(keys, &tuner.keys), start(values, &tuner.values));
            }
        }
        Ok(tuner)
    }

    fn of<B: Backend>(module: &PrefixTuning<B>) -> (&Self, &LlamaConfig) {
        (&module.config, &module.base)
    }

    /// The prefix length `n`.
    fn size(&self) -> usize {
        self.num_tokens
    }

    fn with_size(&self, size: usize) -> Self {
        Self { num_tokens: size, ..self.clone() }
    }
}

/// The keys and values `[L, kv_heads, n, head_dim]` the bare backbone caches for the token row
/// `ids [1, n]` at positions `0..n`: a prefix that makes every layer attend to these tokens.
pub fn token_keys_values<B: Backend>(backbone: &Llama<B>, ids: Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let layers = backbone.num_layers();
    let mut cache = KvCache::new(layers);
    backbone.forward(TokenBatch::dense(ids), &mut cache, &NoHook);
    let (keys, values): (Vec<_>, Vec<_>) = (0..layers).map(|l| cache.keys_values(l).expect("prefill fills every layer")).unzip();
    // Each layer's `[1, kv_heads, n, head_dim]` becomes one row of `[L, kv_heads, n, head_dim]`.
    (Tensor::cat(keys, 0), Tensor::cat(values, 0))
}

/// The reparameterisation MLP. Its output row `i` holds, layer after layer, that layer's key
/// then value for prefix position `i`: `[k_0 | v_0 | k_1 | v_1 | ...]`, each `kv_dim` wide.
#[derive(Module, Debug)]
pub struct PrefixEncoder<B: Backend> {
    /// `[n, d]`
    pub embedding: Param<Tensor<B, 2>>,
    /// `d -> h`
    pub hidden: Linear<B>,
    /// `h -> L 2 kv_dim`
    pub out: Linear<B>,
}

impl<B: Backend> PrefixEncoder<B> {
    /// `[n, 2 kv_dim]`: one layer's keys and values. Only that layer's columns of the last map
    /// are multiplied, so asking for every layer costs one MLP pass, not `L`.
    fn layer_output(&self, layer: usize, kv_dim: usize) -> Tensor<B, 2> {
        let hidden = tanh(self.hidden.forward(self.embedding.val()));
        let width = 2 * kv_dim;
        let weight = self.out.weight.val().narrow(1, layer * width, width);
        let out = hidden.matmul(weight);
        match &self.out.bias {
            Some(bias) => out + bias.val().narrow(0, layer * width, width).unsqueeze(),
            None => out,
        }
    }
}

/// Per-layer learned keys and values, stored directly or produced by the MLP.
#[derive(Module, Debug)]
pub struct PrefixTuning<B: Backend> {
    /// `[L, kv_heads, n, head_dim]`; `None` when reparameterised.
    pub keys: Option<Param<Tensor<B, 4>>>,
    /// `[L, kv_heads, n, head_dim]`; `None` when reparameterised.
    pub values: Option<Param<Tensor<B, 4>>>,
    /// The MLP; `None` in the direct form.
    pub encoder: Option<PrefixEncoder<B>>,
    #[module(skip)]
    pub config: PrefixTuningConfig,
    /// The backbone shape this tuner was built for.
    #[module(skip)]
    pub base: LlamaConfig,
}

impl<B: Backend> PrefixTuning<B> {
    /// Keys and values `[kv_heads, n, head_dim]` of `layer`.
    pub fn layer_keys_values(&self, layer: usize) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let layers = self.base.num_layers;
        assert!(layer < layers, "prefix tuning built for {layers} layers was asked for layer {layer}");
        let (kv_heads, head_dim, n) = (self.base.num_kv_heads, self.base.head_dim, self.config.num_tokens);
        if let Some(encoder) = &self.encoder {
            let kv_dim = kv_heads * head_dim;
            let out = encoder.layer_output(layer, kv_dim);
            let split = |t: Tensor<B, 2>| t.reshape([n, kv_heads, head_dim]).swap_dims(0, 1);
            return (split(out.clone().narrow(1, 0, kv_dim)), split(out.narrow(1, kv_dim, kv_dim)));
        }
        let pick = |p: &Option<Param<Tensor<B, 4>>>| {
            p.as_ref().expect("direct prefix tuning has keys and values").val().narrow(0, layer, 1).reshape([kv_heads, n, head_dim])
        };
        (pick(&self.keys), pick(&self.values))
    }

    /// The same prefixes in the direct form (the MLP evaluated once and dropped): for export or
    /// inference once training is over. A direct-form tuner is returned as a copy.
    pub fn fold_reparameterization(&self) -> PrefixTuning<B> {
        let layers = 0..self.base.num_layers;
        let (keys, values): (Vec<_>, Vec<_>) = layers.map(|l| self.layer_keys_values(l)).unzip();
        let param = |t: Vec<Tensor<B, 3>>| Some(Param::from_tensor(Tensor::stack::<4>(t, 0).detach()));
        PrefixTuning { keys: param(keys), values: param(values), encoder: None, config: self.config.clone().with_reparam_hidden(None), base: self.base.clone() }
    }
}

impl<B: Backend> TrainableTuner for PrefixTuning<B> {}

impl<B: Backend> ModelHook<B> for PrefixTuning<B> {
    /// No projection deltas: its work is in the KV cache (or the input) from prefill on.
    fn adds_delta(&self, _layer: usize, _projection: Projection) -> bool {
        false
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        let batch = input.hidden.dims()[0];
        let dtype = FloatDType::from(input.hidden.dtype());
        let (keys, values) = self.layer_keys_values(layer);
        let rows = |t: Tensor<B, 3>| {
            let [h, n, hd] = t.dims();
            t.reshape([1, h, n, hd]).expand([batch, h, n, hd]).cast(dtype)
        };
        Some(LayerPrefix::KeyValue { keys: rows(keys), values: rows(values) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    #[test]
    fn json_defaults_and_refusals() {
        let parse = |s: &str| PrefixTuningConfig::from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(parse("{}").unwrap(), PrefixTuningConfig::new());
        assert_eq!(parse(r#"{"init": "random"}"#).unwrap(), PrefixTuningConfig::new().with_init(PrefixInit::Random));
        assert!(parse(r#"{"init": "zeros"}"#).unwrap_err().contains("init"));
        assert_eq!(parse(r#"{"reparam_hidden": 64}"#).unwrap(), PrefixTuningConfig::new().with_reparam_hidden(Some(64)));
        assert!(parse(r#"{"reparam_hidden": 0}"#).unwrap_err().contains("reparam_hidden"));
        assert!(parse(r#"{"num_tokens": -1}"#).unwrap_err().contains("num_tokens"));
        assert!(parse(r#"{"prefix_projection": true}"#).unwrap_err().contains("prefix_projection"));
    }

    #[test]
    fn encoder_layers_are_column_blocks_of_one_mlp_pass() {
        let base = LlamaConfig::tiny();
        let tuner = PrefixTuningConfig::new().with_num_tokens(3).with_reparam_hidden(Some(5)).init::<TB>(&base, &Default::default()).unwrap();
        let encoder = tuner.encoder.as_ref().unwrap();
        let full = encoder.out.forward(tanh(encoder.hidden.forward(encoder.embedding.val()))); // [n, L 2 kv]
        let kv = base.kv_dim();
        for layer in 0..base.num_layers {
            let (k, v) = tuner.layer_keys_values(layer);
            let want_k = full.clone().narrow(1, 2 * kv * layer, kv).reshape([3, base.num_kv_heads, base.head_dim]).swap_dims(0, 1);
            let want_v = full.clone().narrow(1, 2 * kv * layer + kv, kv).reshape([3, base.num_kv_heads, base.head_dim]).swap_dims(0, 1);
            k.into_data().assert_approx_eq::<f32>(&want_k.into_data(), burn::tensor::Tolerance::absolute(1e-6));
            v.into_data().assert_approx_eq::<f32>(&want_v.into_data(), burn::tensor::Tolerance::absolute(1e-6));
        }
    }

    /// Behind a prefix made of tokens' keys and values, a row reads exactly as it does after
    /// those tokens: the output for `x` (its positions shifted past the prefix) equals the bare
    /// model's output for `x`'s positions in the row `ids ++ x`.
    #[test]
    fn a_prefix_of_token_keys_values_reads_as_those_tokens() {
        struct Shifted<'a>(&'a PrefixTuning<TB>, usize);
        impl ModelHook<TB> for Shifted<'_> {
            fn position_offset(&self) -> usize {
                self.1
            }
            fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, TB>) -> Option<LayerPrefix<TB>> {
                self.0.layer_prefix(layer, input)
            }
        }
        let device = Default::default();
        let base = LlamaConfig::tiny();
        let backbone = Llama::<TB>::random(&base, &device);
        let (prefix_ids, x) = ([5i64, 1, 9], [3i64, 3, 7, 2]);
        let row = |ids: &[i64]| Tensor::<TB, 2, Int>::from_data(burn::tensor::TensorData::new(ids.to_vec(), [1, ids.len()]), &device);
        let mut tuner = PrefixTuningConfig::new().with_num_tokens(3).init::<TB>(&base, &device).unwrap();
        let (keys, values) = token_keys_values(&backbone, row(&prefix_ids));
        (tuner.keys, tuner.values) = (Some(Param::from_tensor(keys)), Some(Param::from_tensor(values)));

        let behind_prefix = backbone.forward(TokenBatch::dense(row(&x)), &mut KvCache::new(base.num_layers), &Shifted(&tuner, 3));
        let joined: Vec<i64> = prefix_ids.iter().chain(&x).copied().collect();
        let after_tokens = backbone.forward(TokenBatch::dense(row(&joined)), &mut KvCache::new(base.num_layers), &NoHook).narrow(1, 3, x.len());
        behind_prefix.into_data().assert_approx_eq::<f32>(&after_tokens.into_data(), burn::tensor::Tolerance::absolute(1e-5));
    }

    /// The default start is some token row's keys and values (found by trying every row of a
    /// 7-token vocabulary); `init = "random"` is `N(0, 1)`; the reparameterised form starts its
    /// MLP input from embedding rows.
    #[test]
    fn training_starts_from_tokens_unless_told_random() {
        let device = Default::default();
        let mut base = LlamaConfig::tiny();
        base.vocab_size = 7;
        let backbone = Llama::<TB>::random(&base, &device);
        let values_of = |t: &Option<Param<Tensor<TB, 4>>>| t.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
        let tuner = PrefixTuningConfig::new().with_num_tokens(2).init_from_backbone(&backbone).unwrap();
        let (keys, values) = (values_of(&tuner.keys), values_of(&tuner.values));
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        let matches = (0..7i64)
            .flat_map(|a| (0..7i64).map(move |b| [a, b]))
            .filter(|ids| {
                let (k, v) = token_keys_values(&backbone, Tensor::from_data(burn::tensor::TensorData::new(ids.to_vec(), [1, 2]), &device));
                close(&k.into_data().to_vec::<f32>().unwrap(), &keys) && close(&v.into_data().to_vec::<f32>().unwrap(), &values)
            })
            .count();
        assert_eq!(matches, 1, "the started prefix is not the keys and values of one token row");

        let random = PrefixTuningConfig::new().with_num_tokens(64).with_init(PrefixInit::Random).init_from_backbone(&backbone).unwrap();
        let drawn = values_of(&random.keys);
        let std = (drawn.iter().map(|x| x * x).sum::<f32>() / drawn.len() as f32).sqrt();
        assert!((std - 1.0).abs() < 0.1, "random keys have std {std}, not 1");

        let reparam = PrefixTuningConfig::new().with_num_tokens(3).with_reparam_hidden(Some(4)).init_from_backbone(&backbone).unwrap();
        let table: Vec<f32> = backbone.embedding_table().into_data().to_vec().unwrap();
        let rows: Vec<&[f32]> = table.chunks(base.hidden_size).collect();
        let embedding: Vec<f32> = reparam.encoder.as_ref().unwrap().embedding.val().into_data().to_vec().unwrap();
        assert!(embedding.chunks(base.hidden_size).all(|e| rows.contains(&e)), "the MLP's input is not embedding rows");
    }
}
