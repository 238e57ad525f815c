//! The extension points tuners plug into, so the model code is never forked per method.
//!
//! Three hooks cover the PEFT families this project compares (see the method spec, §4):
//! - a per-layer, per-row **KV prefix** (IAPT, P-tuning v2), asked for once per layer at prefill;
//! - **low-rank deltas** added to any frozen projection (LoRA);
//! - **input embeddings** placed before the tokens (prompt tuning).

use burn::tensor::{backend::Backend, Bool, Tensor};

/// The frozen projections a delta can attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub const ALL: [Projection; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::O => "o",
            Self::Gate => "gate",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

/// What a layer shows a prefix hook at prefill.
pub struct LayerInput<'a, B: Backend> {
    /// Hidden states entering the layer, `[batch, tokens, d]`.
    pub hidden: &'a Tensor<B, 3>,
    /// The same states after the layer's frozen input RMSNorm.
    pub normed: &'a Tensor<B, 3>,
    /// `[batch, tokens]`, true on instruction tokens (the prompt, never the response or padding).
    pub instruction: &'a Tensor<B, 2, Bool>,
}

/// A layer's prefix: extra key/value positions every real token attends to. They sit in the
/// KV cache after prefill, so decode steps never recompute them.
pub enum LayerPrefix<B: Backend> {
    /// Soft tokens `[batch, n, d]` the model runs through the frozen K/V projections (IAPT).
    /// With `normalize`, they are residual-stream states and pass the layer's input RMSNorm
    /// first; without, they already live in the normed space the projections read. With
    /// `rope`, they take positions `0..n`.
    Hidden { tokens: Tensor<B, 3>, rope: bool, normalize: bool },
    /// Keys and values directly, `[batch, kv_heads, n, head_dim]` (P-tuning v2); no RoPE.
    KeyValue { keys: Tensor<B, 4>, values: Tensor<B, 4> },
}

/// A low-rank delta `scale · x A B`: `A [in, r]`, `B [r, out]`, `scale`.
pub type LowRankFactors<B> = (Tensor<B, 2>, Tensor<B, 2>, f64);

/// Implemented by every tuner; the bare model uses [`NoHook`]. All methods default to "nothing".
pub trait ModelHook<B: Backend> {
    /// Learned embeddings `[batch, n, d]` placed before the input tokens at prefill.
    fn input_prefix(&self, _batch: usize, _device: &B::Device) -> Option<Tensor<B, 3>> {
        None
    }
    /// How far real tokens' RoPE positions are shifted (a `Hidden` prefix with `rope` takes
    /// the positions below this). Must agree between training and generation.
    fn position_offset(&self) -> usize {
        0
    }
    /// The KV prefix of `layer`, asked for once at prefill; never at decode steps.
    fn layer_prefix(&self, _layer: usize, _input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        None
    }
    /// A delta added to `projection(x)` of `layer`; `x` is the projection's input `[b, t, in]`.
    fn projection_delta(&self, _layer: usize, _projection: Projection, _x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        None
    }
    /// Whether [`projection_delta`](Self::projection_delta) may return a delta for `layer`'s
    /// `projection`. A batch of rows with different adapters skips asking the hooks that never
    /// do; the safe default is yes.
    fn adds_delta(&self, _layer: usize, _projection: Projection) -> bool {
        true
    }
    /// The delta as low-rank factors when it is `scale · x A B` (LoRA): `A [in, r]`, `B [r, out]`
    /// and `scale`. With them a batch of rows with different adapters computes every row's
    /// delta in one batched product.
    fn low_rank_factors(&self, _layer: usize, _projection: Projection) -> Option<LowRankFactors<B>> {
        None
    }
}

/// What a trainer needs to know about a tuner besides its hooks: its parameter groups. The
/// defaults describe a tuner with one parameter group.
pub trait TrainableTuner {
    /// Parameters trained with the small learning rate (the training config's `rational_lr`)
    /// and no weight decay — IAPT's rational-activation coefficients. Ids as in the tuner's
    /// current parameters (they are asked for at every optimiser step, so ids restored from a
    /// checkpoint are always the ones in use).
    fn small_lr_params(&self) -> Vec<burn::module::ParamId> {
        Vec::new()
    }

    /// Names of the scalars the tuner records through [`crate::diagnostics`] in every forward
    /// (training shows each as a metric).
    fn diagnostics(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The bare model: no tuner.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;
impl<B: Backend> ModelHook<B> for NoHook {
    fn adds_delta(&self, _layer: usize, _projection: Projection) -> bool {
        false
    }
}
