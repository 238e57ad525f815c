//! The tuner registry: every tuner the project knows, listed once in [`tuners!`], and the two
//! runtime-selected types built from that list — [`TunerConfig`] (what the `"tuner"` tag of a
//! config selects) and the [`Tuner`] module it builds — so the trainer, the adapter files,
//! evaluation and `iapt compare` handle every method through one type.
//!
//! Adding a tuner: its module and config (with `impl TunerKind`, see [`crate::kind`]) in their
//! own file, and one line in the `tuners!` invocation below.

// burn's `Module` derive also generates a record enum for `Tuner`, whose variants differ in size
// as the modules do; a tuner is built once per run, so that costs nothing.
#![allow(clippy::large_enum_variant)]

use crate::iapt::{Iapt, IaptConfig};
use crate::kind::TunerKind;
use crate::lora::{Lora, LoraConfig};
use crate::prefix_tuning::{PrefixTuning, PrefixTuningConfig};
use crate::prompt_tuning::{PromptTuning, PromptTuningConfig};
use burn::module::{Module, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use iapt_model::{HostTensor, Llama, LlamaConfig};
use iapt_model::{LayerInput, LayerPrefix, ModelHook, Projection, TrainableTuner};
use std::collections::BTreeMap;
use std::path::Path;

/// A registered tuner's own module type, recovered from (and turned into) the enum.
pub trait TunerModule<B: Backend>: Module<B> + Into<Tuner<B>> {
    /// The `"tuner"` tag.
    const NAME: &'static str;
    /// The module inside `tuner`, or the tag of the kind it holds instead.
    fn from_tuner(tuner: Tuner<B>) -> Result<Self, &'static str>;
    /// The config it was built from.
    fn tuner_config(&self) -> TunerConfig;
    /// The backbone shape it was built for.
    fn base(&self) -> &LlamaConfig;
}

/// Generates [`TunerConfig`] and [`Tuner`], one variant per registered tuner, and every
/// dispatch between them. Each entry: `Variant(Module, Config)`, where `Config: TunerKind`
/// builds `Module<B>` (its `NAME` is the tag).
macro_rules! tuners {
    ($($(#[$doc:meta])* $variant:ident($module:ident, $config:ident)),+ $(,)?) => {
        /// Which tuner, with its hyper-parameters. Serialised as a `"tuner"` tag (see
        /// [`TunerConfig::KINDS`]) next to the variant's own config object.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TunerConfig {
            $($(#[$doc])* $variant($config),)+
        }

        /// Any tuner, chosen at run time. Delegates `ModelHook` and `TrainableTuner` to the
        /// variant.
        ///
        /// burn's derived visitors name the variant in module paths (`Lora.layers.0...`);
        /// adapter files use the variant's own paths instead ([`Tuner::tensors`]), so a file
        /// does not depend on whether it was written from the enum or from the bare tuner.
        ///
        /// Variants are unboxed (burn's `Module` derive needs the modules themselves); a tuner
        /// is built once per run, so the size difference between variants costs nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Module, Debug)]
        pub enum Tuner<B: Backend> {
            $($(#[$doc])* $variant($module<B>),)+
        }

        impl TunerConfig {
            /// Every `"tuner"` tag, in registry order.
            pub const KINDS: &'static [&'static str] = &[$(<$config as TunerKind>::NAME),+];

            /// The `"tuner"` tag.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$config as TunerKind>::NAME,)+ }
            }

            /// Parse the config object of tuner `kind`: absent fields take their defaults,
            /// unknown fields and invalid values are refused naming the field.
            pub fn from_json(kind: &str, config: &serde_json::Value) -> Result<Self, TunerConfigError> {
                $(if kind == <$config as TunerKind>::NAME {
                    return <$config as TunerKind>::from_json(config).map(Self::$variant).map_err(TunerConfigError::Invalid);
                })+
                Err(TunerConfigError::UnknownKind(kind.to_string()))
            }

            /// The variant's config object, every field present (the `"tuner"` tag is
            /// [`Self::name`]).
            pub fn to_json(&self) -> serde_json::Value {
                let value = match self { $(Self::$variant(c) => serde_json::to_value(c),)+ };
                value.expect("tuner configs serialise")
            }

            pub fn validate(&self) -> Result<(), String> {
                match self { $(Self::$variant(c) => c.validate(),)+ }
            }

            /// Trainable parameters for a backbone of shape `base`, by each tuner's formula.
            pub fn num_params(&self, base: &LlamaConfig) -> usize {
                match self { $(Self::$variant(c) => c.num_params(base),)+ }
            }

            /// The main size knob (see [`TunerKind::size`]).
            pub fn size(&self) -> usize {
                match self { $(Self::$variant(c) => c.size(),)+ }
            }

            /// The same config with its main size knob set to `size`.
            pub fn with_size(&self, size: usize) -> Self {
                match self { $(Self::$variant(c) => Self::$variant(c.with_size(size)),)+ }
            }

            /// Build the tuner from the backbone's shape alone (an invalid config is refused).
            /// Right for loading (the values are then replaced); prompt tuning's
            /// `vocab`/`random` init needs the embedding table, so training should start from
            /// [`TunerConfig::init_from_backbone`].
            pub fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Result<Tuner<B>, String> {
                Ok(match self { $(Self::$variant(c) => Tuner::$variant(c.init(base, device)?),)+ })
            }

            /// Build the tuner to start training on `backbone`: as [`TunerConfig::init`],
            /// except where a tuner initialises from the backbone's weights.
            pub fn init_from_backbone<B: Backend>(&self, backbone: &Llama<B>) -> Result<Tuner<B>, String> {
                Ok(match self { $(Self::$variant(c) => Tuner::$variant(c.init_from_backbone(backbone)?),)+ })
            }
        }

        /// The `[tuner]` table of a run config: `kind` (the `"tuner"` tag) next to the
        /// variant's fields; unset optional fields are left out.
        impl serde::Serialize for TunerConfig {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                #[derive(serde::Serialize)]
                struct Tagged<'a, C> {
                    kind: &'static str,
                    #[serde(flatten)]
                    config: &'a C,
                }
                match self { $(Self::$variant(c) => Tagged { kind: <$config as TunerKind>::NAME, config: c }.serialize(serializer),)+ }
            }
        }

        impl<B: Backend> Tuner<B> {
            /// The config it was built from.
            pub fn config(&self) -> TunerConfig {
                match self { $(Self::$variant(t) => TunerConfig::$variant(<$config as TunerKind>::of(t).0.clone()),)+ }
            }

            /// The `"tuner"` tag.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$config as TunerKind>::NAME,)+ }
            }

            /// The backbone shape it was built for.
            pub fn base(&self) -> &LlamaConfig {
                match self { $(Self::$variant(t) => <$config as TunerKind>::of(t).1,)+ }
            }

            fn hook(&self) -> &dyn ModelHook<B> {
                match self { $(Self::$variant(t) => t,)+ }
            }

            fn trainable(&self) -> &dyn TrainableTuner {
                match self { $(Self::$variant(t) => t,)+ }
            }

            /// The variant's tensors by its own module paths.
            pub fn tensors(&self) -> BTreeMap<String, HostTensor> {
                match self { $(Self::$variant(t) => crate::adapter::module_tensors(t),)+ }
            }

            /// [`crate::adapter::load_module_tensors`] on the variant, by its own module paths.
            pub fn load_tensors(self, tensors: BTreeMap<String, HostTensor>, path: &Path) -> Result<Self, crate::adapter::AdapterError> {
                Ok(match self { $(Self::$variant(t) => Self::$variant(crate::adapter::load_module_tensors(t, tensors, path)?),)+ })
            }
        }

        $(impl<B: Backend> From<$module<B>> for Tuner<B> {
            fn from(t: $module<B>) -> Self {
                Self::$variant(t)
            }
        }

        impl<B: Backend> TunerModule<B> for $module<B> {
            const NAME: &'static str = <$config as TunerKind>::NAME;
            #[allow(unreachable_patterns)]
            fn from_tuner(tuner: Tuner<B>) -> Result<Self, &'static str> {
                match tuner {
                    Tuner::$variant(t) => Ok(t),
                    other => Err(other.name()),
                }
            }
            fn tuner_config(&self) -> TunerConfig {
                TunerConfig::$variant(<$config as TunerKind>::of(self).0.clone())
            }
            fn base(&self) -> &LlamaConfig {
                <$config as TunerKind>::of(self).1
            }
        })+
    };
}

tuners! {
    Iapt(Iapt, IaptConfig),
    PromptTuning(PromptTuning, PromptTuningConfig),
    /// Deep prefix tuning, tagged `p_tuning_v2`.
    PrefixTuning(PrefixTuning, PrefixTuningConfig),
    Lora(Lora, LoraConfig),
}

/// Why a tuner config object was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TunerConfigError {
    /// The `"tuner"` tag names no registered tuner.
    UnknownKind(String),
    /// The tuner is known; its config object is not valid (the message names the field).
    Invalid(String),
}

impl std::fmt::Display for TunerConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(kind) => write!(f, "unknown tuner `{kind}` (known: {})", TunerConfig::KINDS.join(", ")),
            Self::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for TunerConfigError {}

impl Default for TunerConfig {
    /// IAPT with its defaults.
    fn default() -> Self {
        Self::Iapt(IaptConfig::default())
    }
}

/// Reads the `[tuner]` table of a run config: `kind` (default `iapt`) and that tuner's fields,
/// absent ones defaulted, then checked. Errors say `tuner.kind: ...` or `tuner (KIND): ...`.
impl<'de> serde::Deserialize<'de> for TunerConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let kind = match fields.remove("kind") {
            None => IaptConfig::NAME.to_string(),
            Some(serde_json::Value::String(kind)) => kind,
            Some(other) => return Err(D::Error::custom(format!("tuner.kind: expected a string, found {other}"))),
        };
        Self::from_json(&kind, &serde_json::Value::Object(fields)).map_err(|e| match e {
            TunerConfigError::UnknownKind(_) => D::Error::custom(format!("tuner.kind: {e}")),
            TunerConfigError::Invalid(_) => D::Error::custom(format!("tuner ({kind}): {e}")),
        })
    }
}

impl<B: Backend> Tuner<B> {
    /// This tuner with every parameter whose name `select` accepts moved by a deterministic
    /// pseudo-random amount in `[-amplitude/2, amplitude/2)`, seeded by `seed`. Tests and
    /// benchmarks need adapters that change the output, which LoRA's `B = 0` start does not.
    pub fn jittered(self, seed: u64, amplitude: f32, select: impl Fn(&str) -> bool) -> Self {
        let mut tensors = self.tensors();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for (_, t) in tensors.iter_mut().filter(|(name, _)| select(name)) {
            for v in &mut t.data {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *v += ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amplitude;
            }
        }
        self.load_tensors(tensors, Path::new("jittered tensors")).expect("a tuner's own tensors, moved in place, fit it")
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
    fn adds_delta(&self, layer: usize, projection: Projection) -> bool {
        self.hook().adds_delta(layer, projection)
    }
    fn low_rank_factors(&self, layer: usize, projection: Projection) -> Option<iapt_model::LowRankFactors<B>> {
        self.hook().low_rank_factors(layer, projection)
    }
}

impl<B: Backend> TrainableTuner for Tuner<B> {
    fn small_lr_params(&self) -> Vec<ParamId> {
        self.trainable().small_lr_params()
    }
    fn diagnostics(&self) -> Vec<&'static str> {
        self.trainable().diagnostics()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    fn one_of_each() -> Vec<TunerConfig> {
        vec![
            TunerConfig::Iapt(IaptConfig::new(8)),
            TunerConfig::PromptTuning(PromptTuningConfig::new()),
            TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_reparam_hidden(Some(32))),
            TunerConfig::Lora(LoraConfig::new().with_targets(vec![Projection::Up])),
        ]
    }

    #[test]
    fn tags_round_trip_and_unknown_ones_are_listed() {
        let configs = one_of_each();
        assert_eq!(configs.len(), TunerConfig::KINDS.len());
        for (config, kind) in configs.iter().zip(TunerConfig::KINDS) {
            assert_eq!(config.name(), *kind);
            assert_eq!(&TunerConfig::from_json(kind, &config.to_json()).unwrap(), config);
        }
        let err = TunerConfig::from_json("adapter", &serde_json::json!({})).unwrap_err().to_string();
        assert!(err.contains("`adapter`") && err.contains("p_tuning_v2"), "{err}");
    }

    #[test]
    fn the_enum_reports_its_variant_and_delegates_parameter_groups() {
        let base = LlamaConfig::tiny();
        let device = Default::default();
        for config in [TunerConfig::Iapt(IaptConfig::new(8)), TunerConfig::Lora(LoraConfig::new())] {
            let tuner = config.init::<TB>(&base, &device).unwrap();
            assert_eq!(tuner.config(), config);
            assert_eq!(tuner.base(), &base);
            assert_eq!(Module::num_params(&tuner), config.num_params(&base));
            // The small-learning-rate group is IAPT's rational coefficients and nothing else:
            // one numerator (6) and one denominator (4) per layer, parameters of this module.
            let small = tuner.small_lr_params();
            let params = param_sizes(&tuner);
            let sizes: Vec<usize> = small.iter().map(|id| params.iter().find(|(p, _)| p == id).expect("a parameter of the tuner").1).collect();
            match config {
                TunerConfig::Iapt(_) => assert_eq!(sizes, [6, 4].repeat(base.num_layers)),
                _ => assert!(small.is_empty()),
            }
        }
    }

    /// Every float parameter's id and element count.
    fn param_sizes<M: Module<TB>>(module: &M) -> Vec<(burn::module::ParamId, usize)> {
        struct Sizes(Vec<(burn::module::ParamId, usize)>);
        impl burn::module::ModuleVisitor<TB> for Sizes {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<TB, D>>) {
                self.0.push((param.id, param.val().shape().num_elements()));
            }
        }
        let mut sizes = Sizes(Vec::new());
        module.visit(&mut sizes);
        sizes.0
    }

    #[test]
    fn size_knobs_set_what_they_say_and_invalid_configs_are_refused_without_a_panic() {
        let base = LlamaConfig::tiny();
        for config in one_of_each() {
            let bigger = config.with_size(config.size() + 1);
            assert_eq!(bigger.size(), config.size() + 1);
            assert!(bigger.num_params(&base) > config.num_params(&base), "{}", config.name());
            let err = config.with_size(0).init::<TB>(&base, &Default::default()).unwrap_err();
            assert!(!err.is_empty(), "{}", config.name());
        }
    }
}
