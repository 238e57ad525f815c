//! LoRA (Hu et al., 2021): a low-rank delta `scale · dropout(x) A B` added to chosen frozen
//! projections through [`ModelHook::projection_delta`], with `scale = alpha / rank`. Unmerged,
//! it costs two extra thin matmuls per adapted projection at every step, decode included — the
//! cost IAPT avoids; [`merge_lora`] folds it into the weights for deployment.

use crate::config::tuner_config;
use crate::kind::TunerKind;
use burn::module::{Initializer, Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{backend::Backend, FloatDType, Tensor};
use iapt_model::{Llama, LlamaConfig};
use iapt_model::{ModelHook, Projection, TrainableTuner};

tuner_config! {
    /// LoRA's hyper-parameters; saved verbatim in `adapter_config.json`.
    pub struct LoraConfig {
        /// Rank `r` of every delta.
        pub rank: usize = 8,
        /// The delta is scaled by `alpha / rank`, so changing the rank does not rescale the update.
        pub alpha: f64 = 16.0,
        /// Dropout on the delta's input. burn's dropout is active only on autodiff backends, i.e.
        /// in training; inference never drops.
        pub dropout: f64 = 0.0,
        /// Projections that get a delta, in every layer (`q k v o gate up down`).
        pub targets: Vec<Projection> = vec![Projection::Q, Projection::V],
    }
}

impl LoraConfig {
    /// The defaults (rank 8 on q and v).
    pub fn new() -> Self {
        Self::default()
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

impl TunerKind for LoraConfig {
    const NAME: &'static str = "lora";
    type Module<B: Backend> = Lora<B>;

    fn validate(&self) -> Result<(), String> {
        if self.rank == 0 {
            return Err("rank must be positive".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("alpha must be a finite positive number, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.targets.is_empty() {
            return Err("targets must name at least one projection".into());
        }
        for (i, target) in self.targets.iter().enumerate() {
            if self.targets[..i].contains(target) {
                return Err(format!("targets lists `{}` twice", target.name()));
            }
        }
        Ok(())
    }

    /// `L Σ_targets r (in + out)`.
    fn num_params(&self, base: &LlamaConfig) -> usize {
        let per_layer: usize = self
            .targets
            .iter()
            .map(|&p| {
                let (i, o) = base.projection_shape(p);
                self.rank * (i + o)
            })
            .sum();
        base.num_layers * per_layer
    }

    /// Build the tuner: `A` Kaiming-uniform with bound `1/sqrt(in)` (as HF PEFT), `B = 0`, so the
    /// tuned model starts exactly at the base model.
    fn init<B: Backend>(&self, base: &LlamaConfig, device: &B::Device) -> Result<Lora<B>, String> {
        self.validate().map_err(|e| format!("invalid LoRA config: {e}"))?;
        let pair = |p: Projection| {
            self.targets.contains(&p).then(|| {
                let (i, o) = base.projection_shape(p);
                let a = Initializer::KaimingUniform { gain: 1.0 / 3f64.sqrt(), fan_out_only: false };
                LoraPair { lora_a: a.init_with([i, self.rank], Some(i), Some(self.rank), device), lora_b: Initializer::Zeros.init([self.rank, o], device) }
            })
        };
        let layer = || LoraLayer {
            q: pair(Projection::Q),
            k: pair(Projection::K),
            v: pair(Projection::V),
            o: pair(Projection::O),
            gate: pair(Projection::Gate),
            up: pair(Projection::Up),
            down: pair(Projection::Down),
        };
        let lora = Lora {
            layers: (0..base.num_layers).map(|_| layer()).collect(),
            dropout: DropoutConfig::new(self.dropout).init(),
            config: self.clone(),
            base: base.clone(),
        };
        Ok(iapt_model::materialize(lora))
    }

    fn of<B: Backend>(module: &Lora<B>) -> (&Self, &LlamaConfig) {
        (&module.config, &module.base)
    }

    /// The rank `r`.
    fn size(&self) -> usize {
        self.rank
    }

    fn with_size(&self, size: usize) -> Self {
        Self { rank: size, ..self.clone() }
    }
}

/// One projection's factors, laid out like burn's `Linear` (`x W` with `W: [in, out]`).
#[derive(Module, Debug)]
pub struct LoraPair<B: Backend> {
    /// `[in, r]`
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[r, out]`
    pub lora_b: Param<Tensor<B, 2>>,
}

impl<B: Backend> LoraPair<B> {
    /// `A B`, `[in, out]`.
    pub fn product(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val())
    }
}

/// One layer's deltas; `None` for projections that are not targets.
#[derive(Module, Debug)]
pub struct LoraLayer<B: Backend> {
    pub q: Option<LoraPair<B>>,
    pub k: Option<LoraPair<B>>,
    pub v: Option<LoraPair<B>>,
    pub o: Option<LoraPair<B>>,
    pub gate: Option<LoraPair<B>>,
    pub up: Option<LoraPair<B>>,
    pub down: Option<LoraPair<B>>,
}

impl<B: Backend> LoraLayer<B> {
    pub fn get(&self, projection: Projection) -> Option<&LoraPair<B>> {
        match projection {
            Projection::Q => self.q.as_ref(),
            Projection::K => self.k.as_ref(),
            Projection::V => self.v.as_ref(),
            Projection::O => self.o.as_ref(),
            Projection::Gate => self.gate.as_ref(),
            Projection::Up => self.up.as_ref(),
            Projection::Down => self.down.as_ref(),
        }
    }
}

/// Every layer's deltas.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub layers: Vec<LoraLayer<B>>,
    pub dropout: Dropout,
    #[module(skip)]
    pub config: LoraConfig,
    /// The backbone shape this tuner was built for.
    #[module(skip)]
    pub base: LlamaConfig,
}

impl<B: Backend> Lora<B> {
    fn pair(&self, layer: usize, projection: Projection) -> Option<&LoraPair<B>> {
        let deltas = self.layers.get(layer).unwrap_or_else(|| panic!("LoRA built for {} layers was asked for layer {layer}", self.layers.len()));
        deltas.get(projection)
    }
}

impl<B: Backend> TrainableTuner for Lora<B> {}

impl<B: Backend> ModelHook<B> for Lora<B> {
    /// `scale · dropout(x) A B`, computed in the factors' dtype and returned in `x`'s.
    fn projection_delta(&self, layer: usize, projection: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let pair = self.pair(layer, projection)?;
        let [b, t, i] = x.dims();
        let dtype = x.dtype();
        let a = pair.lora_a.val();
        let x = self.dropout.forward(x.clone().cast(FloatDType::from(a.dtype()))).reshape([b * t, i]);
        // On the CPU backends both thin products (and their gradients) run the kernels.
        let delta = iapt_kernels::matmul(iapt_kernels::matmul(x, a), pair.lora_b.val()) * self.config.scale();
        let out = delta.dims()[1];
        Some(delta.reshape([b, t, out]).cast(FloatDType::from(dtype)))
    }
    fn adds_delta(&self, layer: usize, projection: Projection) -> bool {
        self.pair(layer, projection).is_some()
    }
    fn low_rank_factors(&self, layer: usize, projection: Projection) -> Option<iapt_model::LowRankFactors<B>> {
        self.pair(layer, projection).map(|pair| (pair.lora_a.val(), pair.lora_b.val(), self.config.scale()))
    }
}

/// A copy of `model` with every delta folded in (`W + scale · A B`), to run without the hook at
/// the base model's cost. The merged weights are constants: they keep the backbone's
/// `require_grad` state and carry no gradient path to the LoRA factors.
pub fn merge_lora<B: Backend>(model: &Llama<B>, lora: &Lora<B>) -> Llama<B> {
    assert_eq!(model.num_layers(), lora.layers.len(), "LoRA and backbone differ in layer count");
    let mut merged = model.clone();
    for (layer, deltas) in lora.layers.iter().enumerate() {
        for projection in Projection::ALL {
            if let Some(pair) = deltas.get(projection) {
                let linear = merged.projection_mut(layer, projection);
                let delta = pair.product().detach() * lora.config.scale();
                linear.weight = linear.weight.clone().map(|w| {
                    let tracked = w.is_require_grad();
                    let dtype = FloatDType::from(w.dtype());
                    (w.detach() + delta.cast(dtype)).set_require_grad(tracked)
                });
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    #[test]
    fn json_defaults_and_refusals() {
        let parse = |s: &str| LoraConfig::from_json(&serde_json::from_str(s).unwrap());
        let defaults = parse("{}").unwrap();
        assert_eq!(defaults, LoraConfig::new());
        assert_eq!((defaults.rank, defaults.alpha, defaults.dropout, defaults.targets.clone()), (8, 16.0, 0.0, vec![Projection::Q, Projection::V]));
        assert_eq!(serde_json::to_value(&defaults).unwrap()["targets"], serde_json::json!(["q", "v"]));
        let all = parse(r#"{"targets": ["q", "k", "v", "o", "gate", "up", "down"], "rank": 2}"#).unwrap();
        assert_eq!(all.targets, Projection::ALL.to_vec());
        assert!(parse(r#"{"targets": ["qkv"]}"#).unwrap_err().contains("targets"));
        assert!(parse(r#"{"targets": []}"#).unwrap_err().contains("targets"));
        assert!(parse(r#"{"targets": ["q", "q"]}"#).unwrap_err().contains("targets"));
        assert!(parse(r#"{"rank": 0}"#).unwrap_err().contains("rank"));
        assert!(parse(r#"{"alpha": -1}"#).unwrap_err().contains("alpha"));
        assert!(parse(r#"{"dropout": 1.0}"#).unwrap_err().contains("dropout"));
        assert!(parse(r#"{"r": 4}"#).unwrap_err().contains("`r`"));
    }

    #[test]
    fn a_is_kaiming_uniform_and_b_is_zero() {
        let base = LlamaConfig::tiny();
        let lora = LoraConfig::new().with_rank(4).with_targets(vec![Projection::Down]).init::<TB>(&base, &Default::default()).unwrap();
        let pair = lora.layers[0].down.as_ref().unwrap();
        assert_eq!(pair.lora_a.dims(), [base.intermediate_size, 4]);
        assert_eq!(pair.lora_b.dims(), [4, base.hidden_size]);
        let a: Vec<f32> = pair.lora_a.val().into_data().to_vec().unwrap();
        let bound = 1.0 / (base.intermediate_size as f32).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
        assert!(pair.lora_b.val().into_data().to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
        assert!(lora.layers[1].q.is_none() && lora.layers[1].down.is_some());
    }
}
