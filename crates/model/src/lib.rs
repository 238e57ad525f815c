//! LLaMA-2-family decoder on burn: checkpoints (GGUF, HF safetensors), tokenizer and chat
//! template, batched forward with padding, KV cache, generation, and the hook tuners plug into.

pub mod config;
pub mod error;
pub mod tokenizer;
pub mod weights;

pub use config::LlamaConfig;
pub use error::LoadError;
pub use weights::{HostTensor, WeightMap};
pub use tokenizer::{ChatMessage, Tokenizer};
