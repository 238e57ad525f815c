//! Parameter-efficient tuners for the frozen backbone, plugged in through `iapt_model::ModelHook`.
//!
//! IAPT (arXiv 2405.18203): per layer, a small prompt generator reads the instruction's hidden
//! states and emits `l_sp` soft tokens that become a per-input KV prefix (method spec §2–4).
//! One concept per module: the activation ([`rational`], fitted by [`gelu_fit`]), the pooling
//! ([`pooler`]), one layer's generator ([`generator`]), the whole tuner and its hook ([`iapt`]),
//! and the adapter files shared by every tuner ([`adapter`]).

pub mod adapter;
pub mod gelu_fit;
pub mod generator;
pub mod iapt;
pub mod pooler;
pub mod rational;

pub use adapter::{load_iapt, save_iapt, AdapterConfig, AdapterError, BaseModel, ParamCount, TunerConfig};
pub use generator::{Projections, ProjectionsConfig, PromptGenerator, PromptGeneratorConfig};
pub use iapt::{GeneratorInput, Iapt, IaptConfig, PrefixPositions};
pub use pooler::{Pooler, PoolerConfig, PoolerKind};
pub use rational::{Activation, ActivationConfig, ActivationKind, Rational, RationalConfig};
