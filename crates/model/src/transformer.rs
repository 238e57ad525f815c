//! The LLaMA-2-family decoder: RMSNorm, rotary GQA attention, SwiGLU MLP, optional tied head.

use crate::batch::TokenBatch;
use crate::cache::{KvCache, LayerKv};
use crate::config::LlamaConfig;
use crate::hook::{LayerInput, LayerPrefix, ModelHook, Projection};
use crate::host_decode::HostWeights;
use crate::profile::{timed, Part};
use crate::rope::{inverse_frequencies, RopeAngles};
use crate::weights::{HostTensor, WeightMap};
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{backend::Backend, Bool, FloatDType, Int, Tensor};
use iapt_kernels::host::reshape;
use iapt_kernels::{accelerated, frozen_matmul};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Score given to masked slots before a softmax (attention here, the tuners' pooling). Finite,
/// so a fully masked row (a padding query) yields a uniform distribution rather than NaN; exp
/// of it underflows to exactly 0 in f32.
pub const MASKED: f32 = -1.0e9;

/// A linear layer without bias whose output a tuner may add a delta to.
fn project<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>, hook: &dyn ModelHook<B>, layer: usize, projection: Projection) -> Tensor<B, 3> {
    // One [b*t, d_in] x [d_in, d_out] product rather than b batched ones: CPU backends pack
    // the weight once per product, and one tall product also blocks better.
    timed(Part::Projections, || {
        let [b, t, d] = x.dims();
        let base = frozen_linear(linear, reshape(x.clone(), [b * t, d]));
        let out = base.dims()[1];
        let base = reshape(base, [b, t, out]);
        match hook.projection_delta(layer, projection, &x) {
            Some(delta) => base + delta,
            None => base,
        }
    })
}

/// `x · W (+ bias)` for a backbone linear layer, whose weight is frozen: on the CPU backends
/// this runs `iapt-kernels`' products, elsewhere burn's matmul.
fn frozen_linear<B: Backend>(linear: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let out = frozen_matmul(x, linear.weight.val());
    match &linear.bias {
        Some(bias) => out + bias.val().unsqueeze(),
        None => out,
    }
}

/// `linear` with its weight stored as `dtype` (a no-op for the type it has).
pub(crate) fn cast_linear<B: Backend>(linear: Linear<B>, dtype: FloatDType) -> Linear<B> {
    if linear.weight.val().dtype() == dtype.into() {
        return linear;
    }
    Linear { weight: linear.weight.map(|w| w.cast(dtype)), bias: linear.bias }
}

/// RMSNorm, in one pass on the CPU inference backends.
fn rms_norm<B: Backend, const D: usize>(norm: &RmsNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    iapt_kernels::fused::rms_norm(&x, &norm.gamma.val(), norm.epsilon).unwrap_or_else(|| norm.forward(x))
}

/// Grouped-query self-attention with rotary embeddings.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub(crate) q_proj: Linear<B>,
    pub(crate) k_proj: Linear<B>,
    pub(crate) v_proj: Linear<B>,
    pub(crate) o_proj: Linear<B>,
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    /// RoPE base, needed here to rotate prefix keys at their own positions.
    pub(crate) rope_theta: f64,
}

impl<B: Backend> Attention<B> {
    fn new(c: &LlamaConfig, device: &B::Device) -> Self {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            q_proj: linear(c.hidden_size, c.num_heads * c.head_dim),
            k_proj: linear(c.hidden_size, c.kv_dim()),
            v_proj: linear(c.hidden_size, c.kv_dim()),
            o_proj: linear(c.num_heads * c.head_dim, c.hidden_size),
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            rope_theta: c.rope_theta,
        }
    }

    /// `[b, t, heads*hd]` -> `[b, heads, t, hd]`, RoPE applied on the way when `rope` is given.
    fn split_heads(&self, x: Tensor<B, 3>, heads: usize, rope: Option<&RopeAngles<B>>) -> Tensor<B, 4> {
        let [b, t, _] = x.dims();
        let x = reshape(x, [b, t, heads, self.head_dim]);
        to_heads_major(match rope {
            Some(r) => r.apply(x),
            None => x,
        })
    }

    /// Keys and values of `normed` (`[b, t, d]`), RoPE applied to keys when `rope` is given.
    pub fn keys_values(&self, normed: Tensor<B, 3>, rope: Option<&RopeAngles<B>>, hook: &dyn ModelHook<B>, layer: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let k = project(&self.k_proj, normed.clone(), hook, layer, Projection::K);
        let v = project(&self.v_proj, normed, hook, layer, Projection::V);
        timed(Part::NormsRope, || (self.split_heads(k, self.num_kv_heads, rope), self.split_heads(v, self.num_kv_heads, None)))
    }

    /// Attention of the queries in `normed` over all cached keys/values (`[b, kv, s, hd]`, the
    /// new tokens in the last `t` slots); `mask` gives `[b, 1, t, s]` (true = may not attend)
    /// when burn's ops run it. On the CPU inference backends one fused kernel does it all.
    pub fn attend(
        &self,
        normed: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        cached: &LayerKv<B>,
        mask: impl FnOnce() -> Tensor<B, 4, Bool>,
        hook: &dyn ModelHook<B>,
        layer: usize,
    ) -> Tensor<B, 3> {
        let [b, t, _] = normed.dims();
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let groups = h / kv;
        let q = project(&self.q_proj, normed, hook, layer, Projection::Q);
        let q = timed(Part::NormsRope, || rope.apply(reshape(q, [b, t, h, hd])));
        if let Some(out) = timed(Part::Attention, || iapt_kernels::fused::attention(&q, &cached.keys, &cached.values, &cached.valid, cached.len)) {
            return project(&self.o_proj, out, hook, layer, Projection::O);
        }
        let (keys, values, _) = cached.filled();
        let s = cached.len;
        let hidden = mask();
        let q = to_heads_major(q);
        let out = timed(Part::Attention, || {
            // GQA without repeating K/V: the query heads sharing a KV head are folded into the
            // token axis for the two matmuls. Query head i*groups+g uses KV head i (HF repeat_kv order).
            let q = q.reshape([b, kv, groups * t, hd]);
            let scores = q.matmul(keys.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
            let scores = scores.reshape([b, h, t, s]).mask_fill(hidden.clone().expand([b, h, t, s]), MASKED);
            let probs = softmax(scores, 3).reshape([b, kv, groups * t, s]);
            let out = probs.matmul(values).reshape([b, h, t, hd]);
            // `[b, h, t, hd]` -> `[b, t, h*hd]`; with one token the order is already right.
            if t == 1 {
                out.reshape([b, 1, h * hd])
            } else {
                out.swap_dims(1, 2).reshape([b, t, h * hd])
            }
        });
        project(&self.o_proj, out, hook, layer, Projection::O)
    }
}

/// `[b, t, heads, hd]` -> `[b, heads, t, hd]`. With one token (decoding) that is a plain
/// reshape, which keeps the tensor contiguous instead of a strided view every later op walks.
fn to_heads_major<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, t, heads, hd] = x.dims();
    if t == 1 {
        x.reshape([b, heads, 1, hd])
    } else {
        x.swap_dims(1, 2)
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub(crate) gate_proj: Linear<B>,
    pub(crate) up_proj: Linear<B>,
    pub(crate) down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(c: &LlamaConfig, device: &B::Device) -> Self {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            gate_proj: linear(c.hidden_size, c.intermediate_size),
            up_proj: linear(c.hidden_size, c.intermediate_size),
            down_proj: linear(c.intermediate_size, c.hidden_size),
        }
    }

    fn forward(&self, x: Tensor<B, 3>, hook: &dyn ModelHook<B>, layer: usize) -> Tensor<B, 3> {
        let gate = project(&self.gate_proj, x.clone(), hook, layer, Projection::Gate);
        let up = project(&self.up_proj, x, hook, layer, Projection::Up);
        let gated = iapt_kernels::fused::swiglu(&gate, &up).unwrap_or_else(|| silu(gate) * up);
        project(&self.down_proj, gated, hook, layer, Projection::Down)
    }
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub(crate) input_layernorm: RmsNorm<B>,
    pub(crate) self_attn: Attention<B>,
    pub(crate) post_attention_layernorm: RmsNorm<B>,
    pub(crate) mlp: Mlp<B>,
}

/// Everything about the current step that all layers share.
struct StepContext<'a, B: Backend> {
    rope: RopeAngles<B>,
    /// `[b, t]` validity of the new tokens.
    valid: Tensor<B, 2, Bool>,
    instruction: Tensor<B, 2, Bool>,
    hook: &'a dyn ModelHook<B>,
    /// Last attention mask built (negated: true = hidden, what `mask_fill` takes), keyed by
    /// the key length it was built for: all layers normally share it, and building it is not
    /// free for long prompts.
    mask_memo: Option<(usize, usize, Tensor<B, 4, Bool>)>,
}

impl<B: Backend> DecoderLayer<B> {
    fn new(c: &LlamaConfig, device: &B::Device) -> Self {
        let norm = || RmsNormConfig::new(c.hidden_size).with_epsilon(c.rms_norm_eps).init(device);
        Self { input_layernorm: norm(), self_attn: Attention::new(c, device), post_attention_layernorm: norm(), mlp: Mlp::new(c, device) }
    }

    fn forward(&self, x: Tensor<B, 3>, layer: usize, cache: &mut KvCache<B>, ctx: &mut StepContext<'_, B>) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let device = x.device();
        let normed = timed(Part::NormsRope, || rms_norm(&self.input_layernorm, x.clone()));

        // At prefill (empty layer cache) the tuner may put a prefix in front of the sequence.
        if cache.layer_is_empty(layer) {
            let input = LayerInput { hidden: &x, normed: &normed, instruction: &ctx.instruction };
            if let Some(prefix) = ctx.hook.layer_prefix(layer, &input) {
                let (keys, values) = self.prefix_keys_values(prefix, ctx.hook, layer);
                let n = keys.dims()[2];
                cache.append(layer, keys, values, Tensor::<B, 2, Bool>::full([b, n], true, &device));
            }
        }

        let (keys, values) = self.self_attn.keys_values(normed.clone(), Some(&ctx.rope), ctx.hook, layer);
        let all = timed(Part::KvCache, || cache.append(layer, keys, values, ctx.valid.clone()));
        let s = all.len;
        let memo = &mut ctx.mask_memo;
        let mask = || {
            timed(Part::Attention, || match memo {
                Some((memo_s, memo_t, m)) if *memo_s == s && *memo_t == t => m.clone(),
                _ => {
                    let m = attention_mask(&all.filled().2, t).bool_not();
                    *memo = Some((s, t, m.clone()));
                    m
                }
            })
        };
        let attn = self.self_attn.attend(normed, &ctx.rope, &all, mask, ctx.hook, layer);
        let x = x + attn;
        let normed = timed(Part::NormsRope, || rms_norm(&self.post_attention_layernorm, x.clone()));
        let mlp = self.mlp.forward(normed, ctx.hook, layer);
        x + mlp
    }

    /// Keys/values of a tuner's prefix for this layer.
    fn prefix_keys_values(&self, prefix: LayerPrefix<B>, hook: &dyn ModelHook<B>, layer: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        match prefix {
            LayerPrefix::KeyValue { keys, values } => (keys, values),
            LayerPrefix::Hidden { tokens, rope, normalize } => {
                let [b, n, _] = tokens.dims();
                let normed = if normalize { rms_norm(&self.input_layernorm, tokens) } else { tokens };
                let angles = rope.then(|| {
                    let positions = Tensor::<B, 1, Int>::arange(0..n as i64, &normed.device()).reshape([1, n]).expand([b, n]);
                    let attn = &self.self_attn;
                    RopeAngles::new(positions, &inverse_frequencies(attn.head_dim, attn.rope_theta))
                });
                self.self_attn.keys_values(normed, angles.as_ref(), hook, layer)
            }
        }
    }
}

/// `[b, 1, t, s]` mask for `t` new queries that occupy the last `t` of `s` key slots:
/// a query sees valid keys at or before its own slot, and always itself (so no row is empty).
pub fn attention_mask<B: Backend>(key_valid: &Tensor<B, 2, Bool>, t: usize) -> Tensor<B, 4, Bool> {
    let [b, s] = key_valid.dims();
    let device = key_valid.device();
    let key_slot = Tensor::<B, 1, Int>::arange(0..s as i64, &device).reshape([1, s]);
    let query_slot = Tensor::<B, 1, Int>::arange((s - t) as i64..s as i64, &device).reshape([t, 1]);
    let causal = key_slot.clone().expand([t, s]).lower_equal(query_slot.clone().expand([t, s]));
    let diagonal = key_slot.expand([t, s]).equal(query_slot.expand([t, s]));
    let visible = key_valid.clone().reshape([b, 1, 1, s]).expand([b, 1, t, s]);
    let causal = causal.reshape([1, 1, t, s]).expand([b, 1, t, s]);
    visible.bool_and(causal).bool_or(diagonal.reshape([1, 1, t, s]).expand([b, 1, t, s]))
}

/// Initialise every lazily-initialised parameter of `module` now. burn defers random init to
/// first use, and a clone of a not-yet-initialised parameter draws its own values, so parts
/// copied between models (tests, tuner set-ups) would silently differ without this.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// The decoder: embeddings, layers, final norm, LM head.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub(crate) embed_tokens: Embedding<B>,
    pub(crate) layers: Vec<DecoderLayer<B>>,
    pub(crate) norm: RmsNorm<B>,
    /// `None` when the head is tied to the embeddings.
    pub(crate) lm_head: Option<Linear<B>>,
    #[module(skip)]
    pub(crate) config: LlamaConfig,
}

impl<B: Backend> Llama<B> {
    /// A randomly initialised model of this shape (tests; real weights come from `load`).
    pub fn random(config: &LlamaConfig, device: &B::Device) -> Self {
        let model = Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, config.hidden_size).init(device),
            layers: (0..config.num_layers).map(|_| DecoderLayer::new(config, device)).collect(),
            norm: RmsNormConfig::new(config.hidden_size).with_epsilon(config.rms_norm_eps).init(device),
            lm_head: (!config.tie_word_embeddings).then(|| LinearConfig::new(config.hidden_size, config.vocab_size).with_bias(false).init(device)),
            config: config.clone(),
        };
        materialize(model)
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// This model with its matrices (projections, embeddings, LM head) stored as `dtype`, as
    /// [`crate::llama_from_weights_as`] builds them; the norms stay as they are. For models
    /// built in place ([`Llama::random`]); a checkpoint is better cast as it loads.
    pub fn with_matrix_dtype(mut self, dtype: FloatDType) -> Self {
        let cast = |linear: Linear<B>| cast_linear(linear, dtype);
        self.embed_tokens.weight = self.embed_tokens.weight.map(|w| w.cast(dtype));
        self.lm_head = self.lm_head.map(cast);
        for layer in &mut self.layers {
            let attention = &mut layer.self_attn;
            for linear in [&mut attention.q_proj, &mut attention.k_proj, &mut attention.v_proj, &mut attention.o_proj] {
                *linear = cast(linear.clone());
            }
            let mlp = &mut layer.mlp;
            for linear in [&mut mlp.gate_proj, &mut mlp.up_proj, &mut mlp.down_proj] {
                *linear = cast(linear.clone());
            }
        }
        self
    }

    /// The frozen `Linear` behind `projection` in `layer`. Panics on a layer the model does not
    /// have.
    pub fn projection(&self, layer: usize, projection: Projection) -> &Linear<B> {
        let layer = &self.layers[layer];
        match projection {
            Projection::Q => &layer.self_attn.q_proj,
            Projection::K => &layer.self_attn.k_proj,
            Projection::V => &layer.self_attn.v_proj,
            Projection::O => &layer.self_attn.o_proj,
            Projection::Gate => &layer.mlp.gate_proj,
            Projection::Up => &layer.mlp.up_proj,
            Projection::Down => &layer.mlp.down_proj,
        }
    }

    /// [`Llama::projection`], for code that rewrites backbone weights (merging LoRA).
    pub fn projection_mut(&mut self, layer: usize, projection: Projection) -> &mut Linear<B> {
        let layer = &mut self.layers[layer];
        match projection {
            Projection::Q => &mut layer.self_attn.q_proj,
            Projection::K => &mut layer.self_attn.k_proj,
            Projection::V => &mut layer.self_attn.v_proj,
            Projection::O => &mut layer.self_attn.o_proj,
            Projection::Gate => &mut layer.mlp.gate_proj,
            Projection::Up => &mut layer.mlp.up_proj,
            Projection::Down => &mut layer.mlp.down_proj,
        }
    }

    /// The matrices one decode step reads whole: every layer's projections and the LM head (the
    /// embedding table when tied), as stored.
    pub fn decode_matrices(&self) -> Vec<Tensor<B, 2>> {
        let projections = (0..self.layers.len()).flat_map(|layer| Projection::ALL.map(|p| self.projection(layer, p).weight.val()));
        let head = match &self.lm_head {
            Some(head) => head.weight.val(),
            None => self.embed_tokens.weight.val(),
        };
        projections.chain([head]).collect()
    }

    /// The token embedding table `[vocab, d]` (also the LM head when tied).
    pub fn embedding_table(&self) -> Tensor<B, 2> {
        self.embed_tokens.weight.val().cast(self.compute_dtype())
    }

    /// The float type activations are computed in (f32; the norms' weights are kept in it even
    /// when the matrices are stored in half precision).
    fn compute_dtype(&self) -> FloatDType {
        FloatDType::from(self.norm.gamma.val().dtype())
    }

    /// Every weight on the host in HF names and layouts (a projection `[out, in]`): what
    /// [`crate::llama_from_weights`] reads, so `llama_from_weights(config, model.to_weights())`
    /// rebuilds the same model. For references and tests that edit weights.
    pub fn to_weights(&self) -> WeightMap {
        fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> HostTensor {
            HostTensor { shape: t.dims().to_vec(), data: t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 weights") }
        }
        let mut tensors = BTreeMap::new();
        tensors.insert("model.embed_tokens.weight".to_string(), host(self.embedding_table()));
        tensors.insert("model.norm.weight".to_string(), host(self.norm.gamma.val()));
        if let Some(head) = &self.lm_head {
            tensors.insert("lm_head.weight".to_string(), host(head.weight.val().transpose()));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let name = |part: &str| format!("model.layers.{l}.{part}.weight");
            tensors.insert(name("input_layernorm"), host(layer.input_layernorm.gamma.val()));
            tensors.insert(name("post_attention_layernorm"), host(layer.post_attention_layernorm.gamma.val()));
            for projection in Projection::ALL {
                let part = match projection {
                    Projection::Gate | Projection::Up | Projection::Down => format!("mlp.{}_proj", projection.name()),
                    _ => format!("self_attn.{}_proj", projection.name()),
                };
                tensors.insert(name(&part), host(self.projection(l, projection).weight.val().transpose()));
            }
        }
        WeightMap { source: PathBuf::from("<in-memory model>"), tensors }
    }

    /// The number of decoder layers (the KV cache needs one slot per layer).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    /// Run `batch` through the model, appending to `cache`, and return the final hidden states
    /// `[b, t, d]` of the new tokens (after the final norm). An empty cache means prefill:
    /// positions come from the padding mask (left or right padding both work) shifted by the
    /// hook's offset, and the hook's prefixes enter the cache. Otherwise the tokens continue each
    /// row from its cached position.
    pub fn forward(&self, batch: TokenBatch<B>, cache: &mut KvCache<B>, hook: &dyn ModelHook<B>) -> Tensor<B, 3> {
        self.forward_with(batch, cache, hook, None)
    }

    /// [`Llama::forward`], where a decode step that can run on host memory reads `held`, this
    /// model's weights gathered once by a [`crate::HostDecoder`] (or gathers them itself).
    pub(crate) fn forward_with(&self, batch: TokenBatch<B>, cache: &mut KvCache<B>, hook: &dyn ModelHook<B>, held: Option<&HostWeights<B>>) -> Tensor<B, 3> {
        if let Some(hidden) = self.decode_on_host(&batch, cache, hook, held) {
            return hidden;
        }
        let config = self.config();
        let device = batch.ids.device();
        let [b, _] = batch.ids.dims();
        let mut x = self.embed_tokens.forward(batch.ids).cast(self.compute_dtype());
        let mut valid = batch.valid;
        // Padding is never instruction, whatever the caller's mask says.
        let mut instruction = match batch.instruction {
            Some(mask) => mask.bool_and(valid.clone()),
            None => valid.clone(),
        };

        let positions = match cache.next_position.take() {
            None => {
                if let Some(prefix) = hook.input_prefix(b, &device) {
                    let n = prefix.dims()[1];
                    x = Tensor::cat(vec![prefix, x], 1);
                    let ones = Tensor::<B, 2, Bool>::full([b, n], true, &device);
                    valid = Tensor::cat(vec![ones.clone(), valid], 1);
                    instruction = Tensor::cat(vec![ones, instruction], 1);
                }
                let counted = valid.clone().int().cumsum(1);
                (counted - 1).clamp_min(0) + hook.position_offset() as i64
            }
            Some(next) => {
                let t = x.dims()[1];
                let steps = valid.clone().int().cumsum(1) - 1;
                next.expand([b, t]) + steps.clamp_min(0)
            }
        };
        cache.next_position = Some(positions.clone().narrow(1, positions.dims()[1] - 1, 1) + 1);

        let rope = timed(Part::NormsRope, || RopeAngles::new(positions, &inverse_frequencies(config.head_dim, config.rope_theta)));
        let mut ctx = StepContext { rope, valid, instruction, hook, mask_memo: None };
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, i, cache, &mut ctx);
        }
        timed(Part::NormsRope, || rms_norm(&self.norm, x))
    }

    /// Next-token logits `[b, t, vocab]` from final hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        timed(Part::LmHead, || self.head(hidden))
    }

    fn head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => {
                let [b, t, d] = hidden.dims();
                let logits = frozen_linear(head, reshape(hidden, [b * t, d]));
                let vocab = logits.dims()[1];
                reshape(logits, [b, t, vocab])
            }
            None if accelerated::<B>() => {
                // Tied head: h · Eᵀ, with the [vocab, d] table viewed transposed, which is the
                // layout the kernels stream fastest.
                let [b, t, d] = hidden.dims();
                let table = self.embed_tokens.weight.val(); // [vocab, d]
                let vocab = table.dims()[0];
                reshape(frozen_matmul(reshape(hidden, [b * t, d]), table.transpose()), [b, t, vocab])
            }
            None => {
                // Tied head on other backends: logits^T = E h^T, with the [vocab, d] embedding
                // table E as the left operand, in the layout it is stored in, so no backend has
                // to copy a transposed view of E on every call. Same products, same gradients.
                let [b, t, d] = hidden.dims();
                let table = self.embed_tokens.weight.val(); // [vocab, d]
                let vocab = table.dims()[0];
                let dtype = FloatDType::from(hidden.dtype());
                let hidden = hidden.cast(FloatDType::from(table.dtype()));
                table.matmul(hidden.reshape([b * t, d]).transpose()).transpose().reshape([b, t, vocab]).cast(dtype)
            }
        }
    }
}
