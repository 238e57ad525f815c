//! LLaMA-2-family decoder on burn: checkpoints (GGUF, HF safetensors), tokenizer and chat
//! template, batched forward with padding, KV cache, generation, and the hook tuners plug into.

pub mod batch;
pub mod cache;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod hook;
pub mod load;
pub mod profile;
pub mod rope;
pub mod sampling;
pub mod score;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use batch::{Padding, TokenBatch};
pub use cache::KvCache;
pub use config::LlamaConfig;
pub use error::LoadError;
pub use generate::{generate, Generation, GenerationConfig};
pub use hook::{LayerInput, LayerPrefix, ModelHook, NoHook, Projection, TrainableTuner};
pub use load::{load_llama, read_checkpoint, read_checkpoint_config};
pub use sampling::SamplingConfig;
pub use tokenizer::{ChatMessage, Tokenizer};
pub use transformer::Llama;
pub use weights::{HostTensor, WeightMap};
