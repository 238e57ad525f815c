//! Shape and hyper-parameters of a LLaMA-2-family model, read from the checkpoint.

use crate::hook::Projection;
use serde::{Deserialize, Serialize};

/// Everything that fixes a LLaMA-2-family architecture. Read from the checkpoint
/// (GGUF metadata or HF `config.json`), never hard-coded; presets exist for tests and counting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// The LM head reuses the token embedding matrix (no separate `lm_head.weight`).
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// SmolLM2-135M(-Instruct): the project's default model.
    pub fn smollm2_135m() -> Self {
        Self {
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
        }
    }

    /// LLaMA-2 7B shapes.
    pub fn llama2_7b() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
        }
    }

    /// LLaMA-2 13B shapes.
    pub fn llama2_13b() -> Self {
        Self { hidden_size: 5120, intermediate_size: 13824, num_layers: 40, num_heads: 40, num_kv_heads: 40, ..Self::llama2_7b() }
    }

    /// A tiny random-weight shape for unit tests (GQA: 4 query heads share 2 KV heads).
    pub fn tiny() -> Self {
        Self {
            vocab_size: 97,
            hidden_size: 32,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
        }
    }

    /// The names [`LlamaConfig::preset`] knows (`smollm2` is also accepted for `smollm2-135m`).
    pub const PRESETS: [&'static str; 4] = ["smollm2-135m", "llama2-7b", "llama2-13b", "tiny"];

    /// Look up a preset by name (one of [`LlamaConfig::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "smollm2-135m" | "smollm2" => Some(Self::smollm2_135m()),
            "llama2-7b" => Some(Self::llama2_7b()),
            "llama2-13b" => Some(Self::llama2_13b()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    /// Number of query heads that share one KV head.
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Width of the K (and V) projection output.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameter count of the backbone, by formula (checked against the built module in tests).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let attn = d * self.num_heads * self.head_dim * 2 + d * self.kv_dim() * 2;
        let mlp = 3 * d * self.intermediate_size;
        let norms = 2 * d;
        let embed = self.vocab_size * d;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * d };
        self.num_layers * (attn + mlp + norms) + embed + head + d
    }

    /// Weights one decode step reads: every layer, the final norm and the LM head (the embedding
    /// table when tied); of an untied embedding only one row per token, which is left out.
    pub fn weights_read_per_step(&self) -> usize {
        let embed = self.vocab_size * self.hidden_size;
        if self.tie_word_embeddings {
            self.num_params()
        } else {
            self.num_params() - embed
        }
    }

    /// `(in, out)` features of `projection` (the same in every layer).
    pub fn projection_shape(&self, projection: Projection) -> (usize, usize) {
        let (d, q, ff) = (self.hidden_size, self.num_heads * self.head_dim, self.intermediate_size);
        match projection {
            Projection::Q => (d, q),
            Projection::K | Projection::V => (d, self.kv_dim()),
            Projection::O => (q, d),
            Projection::Gate | Projection::Up => (d, ff),
            Projection::Down => (ff, d),
        }
    }

    /// Check the shape is self-consistent (the caller names the file in its error).
    pub fn validate(&self) -> Result<(), String> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!("num_heads ({}) must be a positive multiple of num_kv_heads ({})", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return Err("hidden_size, num_layers and vocab_size must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::LlamaConfig;

    #[test]
    fn every_listed_preset_resolves() {
        for name in LlamaConfig::PRESETS {
            assert!(LlamaConfig::preset(name).is_some(), "{name}");
        }
        assert_eq!(LlamaConfig::preset("smollm2"), Some(LlamaConfig::smollm2_135m()));
        assert_eq!(LlamaConfig::preset("gpt2"), None);
    }
}
