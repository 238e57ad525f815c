//! What every tuner is to the rest of the project: a burn `Module`, a `ModelHook`, and a
//! [`TrainableTuner`]; plus the runtime choice between them — [`TunerConfig`] (what the `"tuner"`
//! tag of a config selects) and the [`Tuner`] module it builds, so the trainer, the adapter
//! files and evaluation handle every method through one type.

use crate::iapt::{Iapt, IaptConfig};
use crate::lora::{Lora, LoraConfig};
use crate::prefix_tuning::{PrefixTuning, PrefixTuningConfig};
use crate::prompt_tuning::{PromptTuning, PromptTuningConfig};
use burn::module::{Module, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use iapt_model::hook::{LayerInput, LayerPrefix, ModelHook, Projection};
use iapt_model::{Llama, LlamaConfig};

/// Parameter groups of a tuner. The defaults describe a tuner with one parameter group.
pub trait TrainableTuner {
    /// Parameters trained with the small learning rate (the training config's `rational_lr`)
    /// and no weight decay — IAPT's rational-activation coefficients. Ids as in the tuner's
    /// current parameters (they are asked for at every optimiser step, so ids restored from a
    /// checkpoint are always the ones in use).
    fn small_lr_params(&self) -> Vec<ParamId> {
        Vec::new()
    }
}

/// Which tuner, with its hyper-parameters. Serialised as a `"tuner"` tag (see
/// [`TunerConfig::KINDS`]) next to the variant's own config object.
#[derive(Debug, Clone, PartialEq)]
pub enum TunerConfig {
    Iapt(IaptConfig),
    PromptTuning(PromptTuningConfig),
    /// Deep prefix tuning, tagged `p_tuning_v2`.
    PrefixTuning(PrefixTuningConfig),
    Lora(LoraConfig),
}

impl TunerConfig {
    /// Every `"tuner"` tag, in variant order.
    pub const KINDS: [&'static str; 4] = ["iapt", "prompt_tuning", "p_tuning_v2", "lora"];

    /// The `"tuner"` tag.
    pub fn name(&self) -> &'static str {
        let index = match self {
            Self::Iapt(_) => 0,
            Self::PromptTuning(_) => 1,
            Self::PrefixTuning(_) => 2,
            Self::Lora(_) => 3,
        };
        Self::KINDS[index]
    }

    /// Parse the config object of tuner `kind`: absent fields take their defaults (IAPT requires
    /// `bottleneck`), unknown fields and invalid values are refused naming the field.
    pub fn from_json(kind: &str, config: &serde_json::Value) -> Result<Self, String> {
        Ok(match kind {
            "iapt" => Self::Iapt(IaptConfig::from_json(config)?),
            "prompt_tuning" => Self::PromptTuning(PromptTuningConfig::from_json(config)?),
            "p_tuning_v2" => Self::PrefixTuning(PrefixTuningConfig::from_json(config)?),
            "lora" => Self::Lora(LoraConfig::from_json(config)?),
            other => return Err(format!("unknown tuner `{other}` (known: {})", Self::KINDS.join(", "))),
        })
    }

    /// The variant's config object, every field present (the `"tuner"` tag is [`Self::name`]).
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Self::Iapt(c) => serde_json::to_value(c),
            Self::PromptTuning(c) => serde_json::to_value(c),
            Self::PrefixTuning(c) => serde_json::to_value(c),
            Self::Lora(c) => serde_json::to_value(c),
        };
        value.expect("tuner configs serialise")
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Iapt(c) => c.validate(),
            Self::PromptTuning(c) => c.validate(),
            Self::PrefixTuning(c) => c.validate(),
            Self::Lora(c) => c.validate(),
        }
    }

    /// Trainable parameters for a backbone of shape `base`, by each tuner's formula.
    pub fn num_params(&self, base: &LlamaConfig) -> usize {
        match self {
            Self::Iapt(c) => c.num_params(base),
            Self::PromptTuning(c) => c.num_params(base),
            Self::PrefixTuning(c) => c.num_params(base),
            Self::Lora(c) => c.num_params(base),
        }
    }

    /// Build the tuner from the backbone's shape alone. Right for loading (the values are then
    /// replaced); prompt tuning's `vocab`/`random` init needs the embedding table, so training
    /// should start from [`TunerConfig::init_from_backbone`]. Panics on an invalid config.
    pub fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Tuner<B> {
        match self {
            Self::Iapt(c) => Tuner::Iapt(c.init(base, device)),
            Self::PromptTuning(c) => Tuner::PromptTuning(c.init(base, device)),
            Self::PrefixTuning(c) => Tuner::PrefixTuning(c.init(base, device)),
            Self::Lora(c) => Tuner::Lora(c.init(base, device)),
        }
    }

    /// Build the tuner to start training on `backbone`: as [`TunerConfig::init`], except that
    /// prompt tuning initialises from the embedding table as its `init` says.
    pub fn init_from_backbone<B: Backend>(&self, backbone: &Llama<B>) -> Tuner<B> {
        match self {
            Self::PromptTuning(c) => Tuner::PromptTuning(c.init_from_backbone(backbone)),
            other => other.init(backbone.config(), &backbone.embed_tokens.weight.device()),
        }
    }
}

/// Any tuner, chosen at run time. Delegates `ModelHook` and `TrainableTuner` to the variant.
///
/// burn's derived visitors name the variant in module paths (`Lora.layers.0...`); adapter
/// files use the variant's own paths instead (see `adapter`), so a file does not depend on
/// whether it was written from the enum or from the bare tuner.
///
/// Variants are unboxed (burn's `Module` derive needs the modules themselves); a tuner is built
/// once per run, so the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Tuner<B: Backend> {
    Iapt(Iapt<B>),
    PromptTuning(PromptTuning<B>),
    PrefixTuning(PrefixTuning<B>),
    Lora(Lora<B>),
}

impl<B: Backend> Tuner<B> {
    /// The config it was built from.
    pub fn config(&self) -> TunerConfig {
        match self {
            Self::Iapt(t) => TunerConfig::Iapt(t.config.clone()),
            Self::PromptTuning(t) => TunerConfig::PromptTuning(t.config.clone()),
            Self::PrefixTuning(t) => TunerConfig::PrefixTuning(t.config.clone()),
            Self::Lora(t) => TunerConfig::Lora(t.config.clone()),
        }
    }

    /// The `"tuner"` tag.
    pub fn name(&self) -> &'static str {
        self.config().name()
    }

    /// The backbone shape it was built for.
    pub fn base(&self) -> &LlamaConfig {
        match self {
            Self::Iapt(t) => &t.base,
            Self::PromptTuning(t) => &t.base,
            Self::PrefixTuning(t) => &t.base,
            Self::Lora(t) => &t.base,
        }
    }

    fn hook(&self) -> &dyn ModelHook<B> {
        match self {
            Self::Iapt(t) => t,
            Self::PromptTuning(t) => t,
            Self::PrefixTuning(t) => t,
            Self::Lora(t) => t,
        }
    }

    fn trainable(&self) -> &dyn TrainableTuner {
        match self {
            Self::Iapt(t) => t,
            Self::PromptTuning(t) => t,
            Self::PrefixTuning(t) => t,
            Self::Lora(t) => t,
        }
    }
}

impl<B: Backend> ModelHook<B> for Tuner<B> {
    fn input_prefix(&self, batch: usize, device: &B::Device) -> Option<Tensor<B, 3>> {
        self.hook().input_prefix(batch, device)
    }
    fn position_offset(&self) -> usize {
        self.hook().position_offset()
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        self.hook().layer_prefix(layer, input)
    }
    fn projection_delta(&self, layer: usize, projection: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        self.hook().projection_delta(layer, projection, x)
    }
}

impl<B: Backend> TrainableTuner for Tuner<B> {
    fn small_lr_params(&self) -> Vec<ParamId> {
        self.trainable().small_lr_params()
    }
}

impl<B: Backend> From<Iapt<B>> for Tuner<B> {
    fn from(t: Iapt<B>) -> Self {
        Self::Iapt(t)
    }
}
impl<B: Backend> From<PromptTuning<B>> for Tuner<B> {
    fn from(t: PromptTuning<B>) -> Self {
        Self::PromptTuning(t)
    }
}
impl<B: Backend> From<PrefixTuning<B>> for Tuner<B> {
    fn from(t: PrefixTuning<B>) -> Self {
        Self::PrefixTuning(t)
    }
}
impl<B: Backend> From<Lora<B>> for Tuner<B> {
    fn from(t: Lora<B>) -> Self {
        Self::Lora(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    #[test]
    fn tags_round_trip_and_unknown_ones_are_listed() {
        let configs = [
            TunerConfig::Iapt(IaptConfig::new(8)),
            TunerConfig::PromptTuning(PromptTuningConfig::new()),
            TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_reparam_hidden(Some(32))),
            TunerConfig::Lora(LoraConfig::new().with_targets(vec![Projection::Up])),
        ];
        for (config, kind) in configs.iter().zip(TunerConfig::KINDS) {
            assert_eq!(config.name(), kind);
            assert_eq!(&TunerConfig::from_json(kind, &config.to_json()).unwrap(), config);
        }
        let err = TunerConfig::from_json("adapter", &serde_json::json!({})).unwrap_err();
        assert!(err.contains("`adapter`") && err.contains("p_tuning_v2"), "{err}");
    }

    #[test]
    fn the_enum_reports_its_variant_and_delegates_parameter_groups() {
        let base = LlamaConfig::tiny();
        let device = Default::default();
        for config in [TunerConfig::Iapt(IaptConfig::new(8)), TunerConfig::Lora(LoraConfig::new())] {
            let tuner = config.init::<TB>(&base, &device);
            assert_eq!(tuner.config(), config);
            assert_eq!(tuner.base(), &base);
            assert_eq!(Module::num_params(&tuner), config.num_params(&base));
            let expected = if let Tuner::Iapt(iapt) = &tuner { iapt.small_lr_params() } else { Vec::new() };
            assert_eq!(tuner.small_lr_params(), expected);
        }
    }
}
