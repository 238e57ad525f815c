//! Parameter-efficient tuners for the frozen backbone, plugged in through `iapt_model::ModelHook`.
//!
//! IAPT (arXiv 2405.18203): per layer, a small prompt generator reads the instruction's hidden
//! states and emits `l_sp` soft tokens that become a per-input KV prefix (method spec §2–4).
//! One concept per module: the activation (`rational`, fitted by [`gelu_fit`]), the pooling
//! (`pooler`), one layer's generator (`generator`), the whole tuner and its hook (`iapt`).
//!
//! The baselines it is compared with use the same hooks: `prompt_tuning` (input embeddings),
//! `prefix_tuning` (P-tuning v2: learned per-layer keys/values) and `lora` (low-rank
//! projection deltas). `kind` says what a tuner provides; `tuner` is the registry that lists
//! them once and builds the runtime-selected [`Tuner`] and its [`TunerConfig`]; `adapter` the
//! adapter files, one layout for all; `config` how configs are declared and read.

mod adapter;
mod config;
pub mod gelu_fit;
mod generator;
mod iapt;
mod kind;
mod lora;
pub mod peft;
mod pooler;
mod prefix_tuning;
mod prompt_tuning;
mod rational;
mod tuner;

pub use adapter::{
    human_count, load_module, load_module_tensors, load_tuner, module_tensors, read_safetensors, save_module, save_tuner, write_safetensors, AdapterConfig,
    AdapterError, BaseModel, ParamCount, CONFIG_FILE, WEIGHTS_FILE,
};
pub use generator::{Projections, ProjectionsConfig, PromptGenerator, PromptGeneratorConfig};
pub use iapt::{GeneratorInput, Iapt, IaptConfig, PrefixPositions, SoftTokenSpace};
pub use kind::TunerKind;
pub use lora::{merge_lora, Lora, LoraConfig, LoraLayer, LoraPair};
pub use pooler::{Pooler, PoolerConfig, PoolerKind};
pub use prefix_tuning::{token_keys_values, PrefixEncoder, PrefixInit, PrefixTuning, PrefixTuningConfig};
pub use prompt_tuning::{PromptInit, PromptTuning, PromptTuningConfig};
pub use rational::{Activation, ActivationConfig, ActivationKind, Rational, RationalConfig};
pub use tuner::{Tuner, TunerConfig, TunerConfigError, TunerModule};
