//! What a tuner's config must provide to be registered in [`crate::tuner`]: parsing, checks,
//! its parameter count, the module it builds, and its main size knob. The registry builds the
//! runtime-selected [`crate::Tuner`] and [`crate::TunerConfig`] from these, so a new tuner is
//! one `impl TunerKind` next to its module plus one line in the registry.

use burn::module::Module;
use burn::tensor::backend::Backend;
use iapt_model::{Llama, LlamaConfig, ModelHook, TrainableTuner};

pub trait TunerKind: Clone + PartialEq + std::fmt::Debug + Default + serde::Serialize + serde::de::DeserializeOwned {
    /// The `"tuner"` tag of configs and adapter files.
    const NAME: &'static str;

    /// The module this config builds.
    type Module<B: Backend>: Module<B> + ModelHook<B> + TrainableTuner;

    /// Parse a possibly partial JSON object: absent fields take their defaults, unknown fields
    /// and invalid values are refused naming the field, then [`TunerKind::validate`].
    fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let config: Self = crate::config::parse(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Values that parse but make no sense.
    fn validate(&self) -> Result<(), String>;

    /// Trainable parameters for a backbone of shape `base`, by formula.
    fn num_params(&self, base: &LlamaConfig) -> usize;

    /// The module for a backbone of shape `base`; an invalid config is refused.
    fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Result<Self::Module<B>, String>;

    /// The module to start training on `backbone`; by default [`TunerKind::init`] (prompt
    /// tuning and P-tuning v2 start from real tokens instead).
    fn init_from_backbone<B: Backend>(&self, backbone: &Llama<B>) -> Result<Self::Module<B>, String> {
        self.init(backbone.config(), &backbone.device())
    }

    /// The config a module was built from, and the backbone shape it was built for.
    fn of<B: Backend>(module: &Self::Module<B>) -> (&Self, &LlamaConfig);

    /// The main size knob (IAPT's bottleneck, the prompt / prefix length, LoRA's rank), which
    /// `iapt compare` sets to reach a parameter budget; every count grows with it.
    fn size(&self) -> usize;
    fn with_size(&self, size: usize) -> Self;
}
