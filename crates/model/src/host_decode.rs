//! A decode step on host memory. When every row takes one new token, the backend is a CPU
//! inference backend and no tuner adds a per-token delta (the bare model; IAPT, P-tuning v2 and
//! prompt tuning, whose work sits in the KV cache), the layers run on plain vectors: the residual
//! stream stays one host vector from the embedding to the final norm, the products that read one
//! input run in one job of the kernels' pool (q, k, v; gate, up), and the norms, RoPE, attention
//! and SwiGLU are the fused kernels the tensor path calls, without the ~20 tensor ops per layer
//! around them (a tensor each, and on burn-ndarray a dynamic-rank array each). Anything else
//! runs [`Llama::forward`]'s tensor path, which computes the same values.

use crate::batch::TokenBatch;
use crate::cache::KvCache;
use crate::hook::{ModelHook, Projection};
use crate::profile::{timed, Part};
use crate::rope::inverse_frequencies;
use crate::transformer::Llama;
use burn::tensor::{backend::Backend, Tensor};
use iapt_kernels::cpu::{matmul, matmul_sharing_input, MatRef};
use iapt_kernels::fused::{attention_rows, rms_norm_rows, rope_rows, swiglu_values};
use iapt_kernels::host::{bool_values, from_vec, to_vec, HeldMatrices};

thread_local! {
    /// Decode steps this thread ran on host memory.
    static HOST_STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many decode steps the calling thread has run on host memory (the rest of its forward
/// passes ran the tensor path): lets tests and benchmarks show which path ran.
pub fn host_decode_steps() -> u64 {
    HOST_STEPS.get()
}

/// `IAPT_HOST_DECODE=off` runs every decode step on the tensor path (to compare the two).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !iapt_kernels::switched_off("IAPT_HOST_DECODE"))
}

/// Matrices held per layer: the seven projections in [`Projection::ALL`]'s order.
const PER_LAYER: usize = Projection::ALL.len();

/// A model ready for a generation loop's decode steps: on the CPU inference backends its
/// weights are gathered once here (the projections and the embedding table viewed where they
/// lie, the norms' gains copied: ~0.15 ms, a tenth of a step's small work, if done per step).
/// It holds its own handle on the model (a clone shares the weights), so the weights it gathered
/// are always the ones it decodes with.
pub struct HostDecoder<B: Backend> {
    model: Llama<B>,
    weights: Option<HostWeights<B>>,
}

impl<B: Backend> HostDecoder<B> {
    pub fn new(model: &Llama<B>) -> Self {
        Self { model: model.clone(), weights: HostWeights::new(model) }
    }

    /// [`Llama::forward`] of the model: decode steps that can run on host memory do, with the
    /// weights gathered here.
    pub fn forward(&self, batch: TokenBatch<B>, cache: &mut KvCache<B>, hook: &dyn ModelHook<B>) -> Tensor<B, 3> {
        self.model.forward_with(batch, cache, hook, self.weights.as_ref())
    }
}

/// What a decode step on host memory reads besides the KV cache.
pub(crate) struct HostWeights<B: Backend> {
    weights: HeldMatrices<B>,
    /// Input and post-attention gains of every layer, then the final norm's.
    gains: Vec<Vec<f32>>,
}

impl<B: Backend> HostWeights<B> {
    /// `None` where decode steps cannot run on host memory: a backend other than the CPU
    /// inference ones, weights other than f32, a projection with a bias, or
    /// `IAPT_HOST_DECODE=off`.
    fn new(model: &Llama<B>) -> Option<Self> {
        if !(iapt_kernels::accelerated::<B>() && iapt_kernels::host::readable::<B>() && enabled()) {
            return None;
        }
        let layers = model.layers.len();
        if (0..layers).any(|l| Projection::ALL.iter().any(|&p| model.projection(l, p).bias.is_some())) {
            return None;
        }
        let mut matrices: Vec<Tensor<B, 2>> = (0..layers).flat_map(|l| Projection::ALL.map(|p| model.projection(l, p).weight.val())).collect();
        matrices.push(model.embed_tokens.weight.val());
        // f32 weights read in place only (half-precision and quantized ones take the tensor path).
        let weights = HeldMatrices::new(&matrices)?;
        let c = &model.config;
        if weights.view(weights.len() - 1).shape != [c.vocab_size, c.hidden_size] {
            return None;
        }
        let mut gains = Vec::with_capacity(2 * layers + 1);
        for layer in &model.layers {
            gains.push(to_vec(&layer.input_layernorm.gamma.val())?);
            gains.push(to_vec(&layer.post_attention_layernorm.gamma.val())?);
        }
        gains.push(to_vec(&model.norm.gamma.val())?);
        Some(Self { weights, gains })
    }
}

impl<B: Backend> Llama<B> {
    /// [`Llama::forward`] of a decode step (`batch` one dense token per row), computed on host
    /// memory with `held`, this model's weights (gathered here when not given); `None`, with
    /// `cache` untouched, where that does not apply.
    pub(crate) fn decode_on_host(
        &self,
        batch: &TokenBatch<B>,
        cache: &mut KvCache<B>,
        hook: &dyn ModelHook<B>,
        held: Option<&HostWeights<B>>,
    ) -> Option<Tensor<B, 3>> {
        let [b, t] = batch.ids.dims();
        let layers = self.layers.len();
        let c = &self.config;
        let (heads, kv_heads, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        // Every layer's buffers `[b, kv_heads, capacity, hd]` with a prefill in them.
        let fits = |l: usize| cache.buffer_dims(l).is_some_and(|[rows, h, _, d]| [rows, h, d] == [b, kv_heads, hd]);
        if t != 1 || cache.rows() != b || !(0..layers).all(fits) {
            return None;
        }
        if (0..layers).any(|l| Projection::ALL.iter().any(|&p| hook.adds_delta(l, p))) || !bool_values(&batch.valid)?.iter().all(|&v| v) {
            return None;
        }
        let built;
        let decoder = match held {
            Some(held) => held,
            None => {
                built = HostWeights::new(self)?;
                &built
            }
        };
        let (weights, gains) = (&decoder.weights, &decoder.gains);
        let d = c.hidden_size;
        let table = weights.view(layers * PER_LAYER);
        let ids: Vec<i64> = batch.ids.clone().into_data().convert::<i64>().to_vec().ok()?;
        if ids.iter().any(|&id| id < 0 || id as usize >= c.vocab_size) {
            return None;
        }
        let next = cache.next_position.clone()?;
        let positions: Vec<i64> = next.clone().into_data().convert::<i64>().to_vec().ok()?;
        let eps = |norm: &burn::nn::RmsNorm<B>| norm.epsilon as f32;

        // Nothing above changed the cache; from here on the step is committed.
        cache.next_position = Some(next + 1);
        let (cos, sin) = timed(Part::NormsRope, || rope_tables(&positions, &inverse_frequencies(hd, c.rope_theta)));
        let mut x: Vec<f32> =
            ids.iter().flat_map(|&id| (0..d).map(move |j| (id as usize, j))).map(|(r, j)| table.data[r * table.strides[0] + j * table.strides[1]]).collect();
        for (l, layer) in self.layers.iter().enumerate() {
            let w = |p: Projection| weights.matrix(l * PER_LAYER + Projection::ALL.iter().position(|&q| q == p).expect("every projection is in ALL"));

            let normed = timed(Part::NormsRope, || rms_norm_rows(&x, &gains[2 * l], eps(&layer.input_layernorm)));
            let qkv = timed(Part::Projections, || matmul_sharing_input(rows(&normed, b, d), &[w(Projection::Q), w(Projection::K), w(Projection::V)]));
            let [q, k, v]: [Vec<f32>; 3] = qkv.try_into().expect("three products");
            let (q, k) = timed(Part::NormsRope, || (rope_rows(&q, &cos, &sin, hd), rope_rows(&k, &cos, &sin, hd)));
            let kv = timed(Part::KvCache, || cache.append_host_slot(l, &k, &v));
            let attended = timed(Part::Attention, || attention_rows(&q, [b, 1, heads, hd], &kv.keys, &kv.values, &kv.valid, kv.len));
            let attended = attended.expect("the cache's host buffers fit this step's queries (checked above)");
            drop(kv);
            let o = timed(Part::Projections, || matmul(rows(&attended, b, heads * hd), w(Projection::O)));
            add(&mut x, &o);

            let normed = timed(Part::NormsRope, || rms_norm_rows(&x, &gains[2 * l + 1], eps(&layer.post_attention_layernorm)));
            let gate_up = timed(Part::Projections, || matmul_sharing_input(rows(&normed, b, d), &[w(Projection::Gate), w(Projection::Up)]));
            let [gate, up]: [Vec<f32>; 2] = gate_up.try_into().expect("two products");
            let gated = swiglu_values(gate, &up);
            let down = timed(Part::Projections, || matmul(rows(&gated, b, c.intermediate_size), w(Projection::Down)));
            add(&mut x, &down);
        }
        let out = timed(Part::NormsRope, || rms_norm_rows(&x, &gains[2 * layers], eps(&self.norm)));
        HOST_STEPS.set(HOST_STEPS.get() + 1);
        from_vec(out, [b, 1, d])
    }
}

/// `values` as a row-major `[rows, cols]` matrix.
fn rows(values: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
    MatRef::row_major(values, rows, cols).expect("a row-major [rows, cols] vector")
}

/// `x += y`, element-wise (a residual connection).
fn add(x: &mut [f32], y: &[f32]) {
    for (x, y) in x.iter_mut().zip(y) {
        *x += y;
    }
}

/// Each row's cosines and signed sines `[rows, hd]` at its position, as [`crate::rope::RopeAngles`]
/// computes them: angle `position · inv_freq[i]` in f32, both halves of the head alike, the sine
/// negated on the first half.
fn rope_tables(positions: &[i64], inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for &p in positions {
        let angles: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
        for _half in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
        }
        sin.extend(angles.iter().map(|a| -a.sin()));
        sin.extend(angles.iter().map(|a| a.sin()));
    }
    (cos, sin)
}
