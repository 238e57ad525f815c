//! Metrics shown on the dashboard and logged per epoch: burn's `LossMetric` and
//! `LearningRateMetric`, plus response-token perplexity and accuracy, and any scalar the tuner
//! records about itself (IAPT's pooler attention entropy).
//!
//! Every metric is weighted by response tokens, so an epoch's value is the token-level mean, not
//! a mean of batch means: the loss metric is fed the NLL of each response token (burn's
//! `LossMetric` weights an update by the length of the tensor it gets), and the two custom
//! metrics report their token counts. burn's own `PerplexityMetric` is not used because it needs
//! the `[tokens, vocab]` logits of every batch copied to the metric thread.

use crate::model::LmStepStats;
use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, LossInput, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use std::sync::Arc;

/// Name of burn's loss metric, as logged and rendered.
pub const LOSS: &str = "Loss";
/// Name of [`PerplexityMetric`].
pub const PERPLEXITY: &str = "Perplexity";
/// Name of [`TokenAccuracyMetric`].
pub const TOKEN_ACCURACY: &str = "Token Accuracy";
/// Name of burn's learning-rate metric.
pub const LEARNING_RATE: &str = "Learning Rate";

impl Adaptor<LossInput<Flex>> for LmStepStats {
    fn adapt(&self) -> LossInput<Flex> {
        let n = self.token_nll.len();
        LossInput::new(Tensor::from_data(TensorData::new(self.token_nll.clone(), [n]), &Default::default()))
    }
}

/// Response tokens of a step and their summed NLL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenNll {
    /// Summed NLL (nats).
    pub nll_sum: f64,
    /// Response tokens.
    pub tokens: usize,
}

/// Response tokens of a step and how many the argmax predicted exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHits {
    /// Tokens whose argmax prediction is the target.
    pub correct: usize,
    /// Response tokens.
    pub tokens: usize,
}

impl Adaptor<TokenNll> for LmStepStats {
    fn adapt(&self) -> TokenNll {
        TokenNll { nll_sum: self.token_nll.iter().map(|&x| x as f64).sum(), tokens: self.token_nll.len() }
    }
}

impl Adaptor<TokenHits> for LmStepStats {
    fn adapt(&self) -> TokenHits {
        TokenHits { correct: self.correct, tokens: self.token_nll.len() }
    }
}

/// `exp(mean NLL)` over response tokens. The batch value is weighted by its token count when
/// burn aggregates an epoch (the exact epoch perplexity is `exp` of the epoch's loss).
#[derive(Clone)]
pub struct PerplexityMetric {
    name: MetricName,
    state: NumericMetricState,
}

impl Default for PerplexityMetric {
    fn default() -> Self {
        Self { name: Arc::new(PERPLEXITY.to_string()), state: NumericMetricState::new() }
    }
}

impl Metric for PerplexityMetric {
    type Input = TokenNll;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &TokenNll, _metadata: &MetricMetadata) -> SerializedEntry {
        let tokens = item.tokens.max(1);
        let value = (item.nll_sum / tokens as f64).exp();
        self.state.update(value, tokens, FormatOptions::new(self.name()).precision(3))
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: false }.into()
    }
}

impl Numeric for PerplexityMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// Share of response tokens whose argmax prediction is the target (teacher forced).
#[derive(Clone)]
pub struct TokenAccuracyMetric {
    name: MetricName,
    state: NumericMetricState,
}

impl Default for TokenAccuracyMetric {
    fn default() -> Self {
        Self { name: Arc::new(TOKEN_ACCURACY.to_string()), state: NumericMetricState::new() }
    }
}

impl Metric for TokenAccuracyMetric {
    type Input = TokenHits;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &TokenHits, _metadata: &MetricMetadata) -> SerializedEntry {
        let tokens = item.tokens.max(1);
        let value = item.correct as f64 / tokens as f64;
        self.state.update(value, tokens, FormatOptions::new(self.name()).precision(4))
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: true }.into()
    }
}

impl Numeric for TokenAccuracyMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

/// The scalars a tuner recorded in one step (name, batch mean).
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics(pub Vec<(&'static str, f64)>);

impl Adaptor<Diagnostics> for LmStepStats {
    fn adapt(&self) -> Diagnostics {
        Diagnostics(self.diagnostics.clone())
    }
}

/// One scalar the tuner records ([`iapt_model::diagnostics`], listed by
/// `TrainableTuner::diagnostics`), named as recorded; the epoch value is the mean of its batches.
#[derive(Clone)]
pub struct DiagnosticMetric {
    key: &'static str,
    name: MetricName,
    state: NumericMetricState,
}

impl DiagnosticMetric {
    /// The metric of the scalar recorded as `key`.
    pub fn new(key: &'static str) -> Self {
        Self { key, name: Arc::new(key.to_string()), state: NumericMetricState::new() }
    }
}

impl Metric for DiagnosticMetric {
    type Input = Diagnostics;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, item: &Diagnostics, _metadata: &MetricMetadata) -> SerializedEntry {
        // A step that recorded nothing (it cannot happen for a tuner that lists the name) shows NaN
        // rather than a made-up value.
        let value = item.0.iter().find(|(k, _)| *k == self.key).map_or(f64::NAN, |(_, v)| *v);
        self.state.update(value, 1, FormatOptions::new(self.name()).precision(4))
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes { unit: None, higher_is_better: true }.into()
    }
}

impl Numeric for DiagnosticMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }
    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::data::dataloader::Progress;
    use burn::train::metric::LossMetric;

    fn metadata() -> MetricMetadata {
        MetricMetadata { progress: Progress::new(1, 1), global_progress: Progress::new(1, 1), iteration: Some(1), lr: None }
    }

    #[test]
    fn epoch_values_are_token_weighted() {
        let small = LmStepStats { token_nll: vec![1.0], correct: 1, diagnostics: vec![] };
        let large = LmStepStats { token_nll: vec![2.0, 2.0, 2.0], correct: 0, diagnostics: vec![] };
        let mut loss = LossMetric::<Flex>::new();
        let mut ppl = PerplexityMetric::default();
        let mut acc = TokenAccuracyMetric::default();
        for stats in [&small, &large] {
            loss.update(&<LmStepStats as Adaptor<LossInput<Flex>>>::adapt(stats), &metadata());
            ppl.update(&stats.adapt(), &metadata());
            acc.update(&stats.adapt(), &metadata());
        }
        assert!((loss.running_value().current() - 7.0 / 4.0).abs() < 1e-9);
        assert!((acc.running_value().current() - 0.25).abs() < 1e-12);
        assert!((ppl.value().current() - 2f64.exp()).abs() < 1e-9);
    }
}
