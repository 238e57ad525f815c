//! LLaMA-2-family decoder on burn: checkpoints (GGUF, HF safetensors), tokenizer and chat
//! template, batched forward with padding, KV cache, generation, and the hook tuners plug into.

mod batch;
mod cache;
mod config;
pub mod diagnostics;
mod error;
mod generate;
pub mod gguf;
pub mod hf;
mod hook;
mod host_decode;
mod load;
pub mod profile;
pub mod rope;
mod sampling;
pub mod score;
mod tokenizer;
mod transformer;
mod weights;

pub use batch::{Padding, TokenBatch};
pub use cache::KvCache;
pub use config::LlamaConfig;
pub use error::LoadError;
pub use generate::{generate, Generation, GenerationConfig, NextLogits, PartSeconds};
pub use hook::{LayerInput, LayerPrefix, LowRankFactors, ModelHook, NoHook, Projection, TrainableTuner};
pub use host_decode::{host_decode_steps, HostDecoder};
pub use load::{check_weight_dtype, dtype_name, llama_from_weights, llama_from_weights_as, load_llama, load_llama_as, read_checkpoint, read_checkpoint_config};
pub use sampling::{Sampler, SamplingConfig};
pub use tokenizer::{load_tokenizer, ChatMessage, Tokenizer};
pub use transformer::{materialize, Llama, MASKED};
pub use weights::{HostTensor, WeightMap};
