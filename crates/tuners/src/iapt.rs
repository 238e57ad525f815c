//! IAPT: a prompt generator before every layer, plugged into the frozen backbone as a per-input
//! KV prefix through [`ModelHook`] (method spec §2 and §4).

use crate::config::tuner_config;
use crate::generator::{Projections, ProjectionsConfig, PromptGenerator, PromptGeneratorConfig};
use crate::kind::TunerKind;
use crate::pooler::PoolerKind;
use crate::rational::{ActivationConfig, ActivationKind, RationalConfig};
use burn::module::{Module, ParamId};
use burn::tensor::{backend::Backend, Bool, Tensor};
use iapt_model::LlamaConfig;
use iapt_model::TrainableTuner;
use iapt_model::{LayerInput, LayerPrefix, ModelHook, Projection};
use serde::{Deserialize, Serialize};

/// Which hidden states the generators read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorInput {
    /// After the layer's frozen input RMSNorm: unit-scale inputs keep the rational in range.
    Normed,
    /// The residual stream as it enters the layer.
    Raw,
}

/// RoPE positions of the soft tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrefixPositions {
    /// Soft tokens at `0..l_sp`, real tokens shifted by `l_sp`.
    #[serde(rename = "shifted")]
    Shifted,
    /// Soft-token keys are not rotated; real tokens keep positions `0..`.
    #[serde(rename = "none")]
    Unrotated,
}

/// Where the soft tokens live, i.e. whether they pass the layer's input RMSNorm before W_k/W_v.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SoftTokenSpace {
    /// Residual-stream states, prepended to the layer's input: they pass its input RMSNorm, as
    /// real tokens do. The norm is scale-invariant, so a soft token's size never matters, only
    /// its direction; from P = 0 the first optimiser step sets a full-size key/value.
    Hidden,
    /// States in the normed space the K/V projections read: the norm is skipped. Keys and values
    /// are linear in P, so W_up = 0 starts exactly at k = v = 0 and grows smoothly from there.
    Normed,
}

tuner_config! {
    /// Every IAPT hyper-parameter; saved verbatim in `adapter_config.json`.
    pub struct IaptConfig {
        /// Bottleneck width `m` of the generators (`m << d`); 64 = d/9 for SmolLM2's d = 576.
        pub bottleneck: usize = 64,
        /// `l_sp`, soft tokens per layer.
        pub num_soft_tokens: usize = 4,
        pub activation: ActivationKind = ActivationKind::Rational,
        /// Degrees of the rational activation (when `activation` is `rational`).
        pub rational: RationalConfig = RationalConfig::default(),
        pub pooler: PoolerKind = PoolerKind::SelfAttn,
        /// Scale pooler scores by 1/sqrt(m) (off: the paper's form).
        pub pooler_scale: bool = false,
        /// Share W_down, b_down, W_up, b_up across layers (pooler and activation stay per layer).
        pub share_projections: bool = true,
        pub generator_input: GeneratorInput = GeneratorInput::Normed,
        pub prefix_positions: PrefixPositions = PrefixPositions::Shifted,
        pub soft_token_space: SoftTokenSpace = SoftTokenSpace::Hidden,
        /// Init of W_up. `None` (default): burn's `Linear` default, Kaiming-uniform with bound
        /// 1/sqrt(m), the same as W_down; `Some(s)`: N(0, s) with b_up = 0. Why the default is not a
        /// tiny W_up: `docs/method.md`, section 4.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub up_init_std: Option<f64> = None,
    }
}

impl IaptConfig {
    /// The defaults with bottleneck width `m`.
    pub fn new(bottleneck: usize) -> Self {
        Self { bottleneck, ..Self::default() }
    }

    /// The generator of one layer.
    pub fn generator(&self, base: &LlamaConfig) -> PromptGeneratorConfig {
        let projections = ProjectionsConfig { up_init_std: self.up_init_std, ..ProjectionsConfig::new(base.hidden_size, self.bottleneck) };
        PromptGeneratorConfig {
            pooler: self.pooler,
            pooler_scale: self.pooler_scale,
            activation: ActivationConfig { kind: self.activation, rational: self.rational.clone() },
            own_projections: !self.share_projections,
            ..PromptGeneratorConfig::new(projections, self.num_soft_tokens)
        }
    }
}

impl TunerKind for IaptConfig {
    const NAME: &'static str = "iapt";
    type Module<B: Backend> = Iapt<B>;

    fn validate(&self) -> Result<(), String> {
        if self.bottleneck == 0 {
            return Err("bottleneck must be positive".into());
        }
        if self.num_soft_tokens == 0 {
            return Err("num_soft_tokens must be positive".into());
        }
        if self.activation == ActivationKind::Rational && self.rational.numerator_degree == 0 {
            return Err("rational.numerator_degree must be positive".into());
        }
        if let Some(std) = self.up_init_std {
            if !(std >= 0.0 && std.is_finite()) {
                return Err(format!("up_init_std must be a finite non-negative number, got {std}"));
            }
        }
        Ok(())
    }

    /// Shared: `(2dm + m + d) + L (m l_sp + r)`; unshared: `L (2dm + m + d + m l_sp + r)`, with
    /// `r` = rational coefficients (10 for degrees (5, 4); 0 for fixed activations) and the
    /// `m l_sp` pooler queries only for the self-attention pooler.
    fn num_params(&self, base: &LlamaConfig) -> usize {
        let generator = self.generator(base);
        let per_layer = generator.num_params();
        let shared = if self.share_projections { generator.projections.num_params() } else { 0 };
        shared + base.num_layers * per_layer
    }

    fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Result<Iapt<B>, String> {
        self.validate().map_err(|e| format!("invalid IAPT config: {e}"))?;
        let generator = self.generator(base);
        let iapt = Iapt {
            shared: self.share_projections.then(|| generator.projections.init(device)),
            layers: (0..base.num_layers).map(|_| generator.init(device)).collect(),
            config: self.clone(),
            base: base.clone(),
        };
        // Draw every lazy parameter now, so clones of this module are copies, not fresh draws.
        Ok(iapt_model::materialize(iapt))
    }

    fn of<B: Backend>(module: &Iapt<B>) -> (&Self, &LlamaConfig) {
        (&module.config, &module.base)
    }

    /// The bottleneck `m`.
    fn size(&self) -> usize {
        self.bottleneck
    }

    fn with_size(&self, size: usize) -> Self {
        Self { bottleneck: size, ..self.clone() }
    }
}

/// The IAPT tuner: one generator per backbone layer, plus the shared projections.
#[derive(Module, Debug)]
pub struct Iapt<B: Backend> {
    /// W_down, b_down, W_up, b_up shared by all layers (`None` when each layer owns its own).
    pub shared: Option<Projections<B>>,
    /// One generator per backbone layer.
    pub layers: Vec<PromptGenerator<B>>,
    #[module(skip)]
    pub config: IaptConfig,
    /// The backbone shape this tuner was built for.
    #[module(skip)]
    pub base: LlamaConfig,
}

impl<B: Backend> Iapt<B> {
    /// The soft tokens `[b, l_sp, d]` of `layer` for hidden states `[b, n, d]` (already chosen
    /// per `generator_input`), reading only rows where `instruction` is true.
    pub fn soft_tokens(&self, layer: usize, hidden: Tensor<B, 3>, instruction: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let generator = self.layers.get(layer).unwrap_or_else(|| panic!("IAPT built for {} layers was asked for layer {layer}", self.layers.len()));
        generator.forward(hidden, instruction, self.shared.as_ref())
    }

    /// The soft tokens of `layer` from what the model shows the hook.
    pub fn soft_tokens_for(&self, layer: usize, input: &LayerInput<'_, B>) -> Tensor<B, 3> {
        let hidden = match self.config.generator_input {
            GeneratorInput::Normed => input.normed,
            GeneratorInput::Raw => input.hidden,
        };
        self.soft_tokens(layer, hidden.clone(), input.instruction.clone())
    }
}

impl<B: Backend> TrainableTuner for Iapt<B> {
    /// Every layer's rational coefficients (spec §3/§5: their own small learning rate, no
    /// weight decay).
    fn small_lr_params(&self) -> Vec<ParamId> {
        self.layers.iter().filter_map(|g| g.activation.rational.as_ref()).flat_map(|r| [r.numerator.id, r.denominator.id]).collect()
    }

    /// The self-attention pooler's attention entropy (the other poolers have no attention).
    fn diagnostics(&self) -> Vec<&'static str> {
        if self.layers.iter().any(|g| g.pooler.kind == PoolerKind::SelfAttn) {
            vec![crate::pooler::ATTENTION_ENTROPY]
        } else {
            Vec::new()
        }
    }
}

impl<B: Backend> ModelHook<B> for Iapt<B> {
    /// No projection deltas: its work is in the KV cache (or the input) from prefill on.
    fn adds_delta(&self, _layer: usize, _projection: Projection) -> bool {
        false
    }
    fn position_offset(&self) -> usize {
        match self.config.prefix_positions {
            PrefixPositions::Shifted => self.config.num_soft_tokens,
            PrefixPositions::Unrotated => 0,
        }
    }

    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        let tokens = self.soft_tokens_for(layer, input);
        Some(LayerPrefix::Hidden {
            tokens,
            rope: self.config.prefix_positions == PrefixPositions::Shifted,
            normalize: self.config.soft_token_space == SoftTokenSpace::Hidden,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    #[test]
    fn config_json_uses_the_documented_names_and_defaults() {
        let config = IaptConfig::new(32);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["num_soft_tokens"], 4);
        assert_eq!(json["activation"], "rational");
        assert_eq!(json["pooler"], "self_attn");
        assert_eq!(json["generator_input"], "normed");
        assert_eq!(json["prefix_positions"], "shifted");
        assert_eq!(json["soft_token_space"], "hidden");
        assert_eq!(json["share_projections"], true);
        assert_eq!(json["rational"]["numerator_degree"], 5);
        let back: IaptConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, config);
        // Missing optional fields take their defaults; an unknown enum value is refused.
        let parse = |s: &str| IaptConfig::from_json(&serde_json::from_str(s).unwrap());
        let minimal = parse(r#"{"bottleneck": 8, "prefix_positions": "none", "rational": {"denominator_degree": 3}}"#).unwrap();
        assert_eq!(
            minimal,
            IaptConfig::new(8).with_prefix_positions(PrefixPositions::Unrotated).with_rational(RationalConfig::new().with_denominator_degree(3))
        );
        assert!(parse(r#"{"bottleneck": 8, "pooler": "sum"}"#).unwrap_err().contains("sum"));
        assert!(parse(r#"{"bottleneck": 8, "rational": {"degree": 3}}"#).unwrap_err().contains("rational.degree"));
        assert_eq!(parse(r#"{"num_soft_tokens": 8}"#).unwrap(), IaptConfig::default().with_num_soft_tokens(8));
        assert_eq!(IaptConfig::default().bottleneck, 64);
        assert!(parse(r#"{"bottleneck": 0}"#).is_err());
    }

    #[test]
    fn module_parameter_count_matches_the_formula() {
        let base = LlamaConfig::tiny();
        for share in [true, false] {
            for (activation, pooler) in [(ActivationKind::Rational, PoolerKind::SelfAttn), (ActivationKind::Gelu, PoolerKind::Max)] {
                let config = IaptConfig::new(8).with_share_projections(share).with_activation(activation).with_pooler(pooler);
                let iapt = config.init::<TB>(&base, &Default::default()).unwrap();
                assert_eq!(Module::num_params(&iapt), config.num_params(&base), "share={share} {activation:?} {pooler:?}");
            }
        }
        // By hand, tiny (d = 32, L = 2), m = 8, l_sp = 4, rational (5, 4):
        let shared = 2 * 32 * 8 + 8 + 32 + 2 * (8 * 4 + 10);
        let unshared = 2 * (2 * 32 * 8 + 8 + 32 + 8 * 4 + 10);
        assert_eq!(IaptConfig::new(8).num_params(&base), shared);
        assert_eq!(IaptConfig::new(8).with_share_projections(false).num_params(&base), unshared);
    }

    #[test]
    fn small_lr_group_is_exactly_the_rational_coefficients() {
        let base = LlamaConfig::tiny();
        let iapt = IaptConfig::new(8).init::<TB>(&base, &Default::default()).unwrap();
        let ids = iapt.small_lr_params();
        assert_eq!(ids.len(), 2 * base.num_layers);
        let coefficient_count: usize = iapt.layers.iter().map(|g| Module::num_params(&g.activation)).sum();
        assert_eq!(coefficient_count, 10 * base.num_layers);
        let gelu = IaptConfig::new(8).with_activation(ActivationKind::Gelu).init::<TB>(&base, &Default::default()).unwrap();
        assert!(gelu.small_lr_params().is_empty());
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(IaptConfig::new(0).validate().is_err());
        assert!(IaptConfig::new(4).with_num_soft_tokens(0).validate().is_err());
        assert!(IaptConfig::new(4).with_up_init_std(Some(-1.0)).validate().is_err());
        assert!(IaptConfig::new(4).validate().is_ok());
    }
}
