//! How training shows its progress: burn-train's TUI dashboard on a terminal, otherwise
//! [`ProgressLog`], a concise plain-text renderer.
//!
//! burn's `CliMetricsRenderer` (its non-terminal default) prints a `Debug` dump of the progress
//! for every batch and no metric values; [`ProgressLog`] prints one line every `every` batches
//! and one at the end of each epoch's training and validation, with epoch-running metrics.

use crate::metric::{LEARNING_RATE, LOSS, PERPLEXITY, TOKEN_ACCURACY};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation, MetricsRendererTraining, ProgressType, TrainingProgress,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
#[cfg(test)]
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dashboard {
    /// burn-train's TUI when stdout is a terminal, plain-text lines otherwise.
    #[default]
    Auto,
    /// Plain-text lines even on a terminal.
    Plain,
    /// Nothing (embedding, tests).
    Off,
}

impl Dashboard {
    /// Whether this choice shows the TUI in the current process (only ever on a terminal).
    pub fn uses_tui(self) -> bool {
        self == Dashboard::Auto && std::io::stdout().is_terminal()
    }
}

/// Where [`ProgressLog`] writes its lines.
#[derive(Clone)]
pub enum Sink {
    /// Standard error, one line per call: stdout stays free for a command's result (`iapt
    /// train` prints its results as JSON there).
    Stderr,
    /// Collected in memory (tests).
    #[cfg(test)]
    Memory(Arc<Mutex<Vec<String>>>),
    /// Nowhere.
    Discard,
}

impl Sink {
    fn emit(&self, line: String) {
        match self {
            Sink::Stderr => eprintln!("{line}"),
            #[cfg(test)]
            Sink::Memory(lines) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
            Sink::Discard => {}
        }
    }
}

/// A plain-text [`MetricsRenderer`]: a line every `every` training batches, at the end of each
/// epoch's training, and after each validation pass.
pub struct ProgressLog {
    every: usize,
    sink: Sink,
    names: HashMap<MetricId, String>,
    train: Tally,
    valid: Tally,
    started: Instant,
}

/// Epoch-running, count-weighted metric means of one split.
#[derive(Default)]
struct Tally {
    epoch: usize,
    pending: Vec<(String, f64, usize)>,
    running: BTreeMap<String, (f64, usize)>,
    last: BTreeMap<String, f64>,
}

impl Tally {
    fn update(&mut self, name: String, entry: &NumericEntry) {
        let (value, count) = match entry {
            NumericEntry::Value(v) => (*v, 1),
            NumericEntry::Aggregated { aggregated_value, count } => (*aggregated_value, *count),
        };
        self.pending.push((name, value, count));
    }

    /// Fold the pending updates into `epoch`'s running means.
    fn settle(&mut self, epoch: usize) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.running.clear();
        }
        for (name, value, count) in self.pending.drain(..) {
            // Perplexity is averaged as its logarithm (the token-weighted mean NLL), so the
            // running value is the epoch's exact perplexity rather than a mean of exponentials
            // that the first, high-loss batches would dominate.
            let averaged = if name == PERPLEXITY { value.ln() } else { value };
            if averaged.is_finite() {
                let slot = self.running.entry(name.clone()).or_default();
                slot.0 += averaged * count as f64;
                slot.1 += count;
            }
            self.last.insert(name, value);
        }
    }

    fn mean(&self, name: &str) -> Option<f64> {
        let mean = self.running.get(name).filter(|(_, n)| *n > 0).map(|(s, n)| s / *n as f64)?;
        Some(if name == PERPLEXITY { mean.exp() } else { mean })
    }

    /// `loss 1.2345  ppl 3.44  acc 0.5123  lr 3.0e-4`, then any other metric by name.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, label) in [(LOSS, "loss"), (PERPLEXITY, "ppl"), (TOKEN_ACCURACY, "acc")] {
            if let Some(v) = self.mean(name) {
                parts.push(format!("{label} {}", fixed(v)));
            }
        }
        if let Some(lr) = self.last.get(LEARNING_RATE) {
            parts.push(format!("lr {lr:.2e}"));
        }
        for name in self.running.keys().filter(|n| ![LOSS, PERPLEXITY, TOKEN_ACCURACY, LEARNING_RATE].contains(&n.as_str())) {
            if let Some(v) = self.mean(name) {
                parts.push(format!("{} {}", name.to_lowercase(), fixed(v)));
            }
        }
        parts.join("  ")
    }
}

fn fixed(v: f64) -> String {
    if v.abs() >= 1e4 || (v != 0.0 && v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

impl ProgressLog {
    /// A renderer printing to stderr every `every` batches.
    pub fn new(every: usize) -> Self {
        Self::with_sink(every, Sink::Stderr)
    }

    /// A renderer writing to `sink` every `every` batches.
    pub fn with_sink(every: usize, sink: Sink) -> Self {
        Self { every: every.max(1), sink, names: HashMap::new(), train: Tally::default(), valid: Tally::default(), started: Instant::now() }
    }

    fn name_of(&self, id: &MetricId) -> String {
        self.names.get(id).cloned().unwrap_or_else(|| "?".into())
    }

    fn elapsed(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

impl MetricsRendererTraining for ProgressLog {
    fn update_train(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self.name_of(&entry.metric_id);
            self.train.update(name, &value);
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self.name_of(&entry.metric_id);
            self.valid.update(name, &value);
        }
    }

    fn render_train(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        self.train.settle(epoch);
        let iteration = item.iteration.unwrap_or(0);
        let finished = item.progress.as_ref().is_some_and(|p| p.items_processed >= p.items_total);
        if iteration % self.every == 0 || finished {
            let items = item.progress.map(|p| format!("{}/{}", p.items_processed, p.items_total)).unwrap_or_default();
            self.sink.emit(format!(
                "[{}] epoch {epoch}/{} train  batch {iteration:>5}  items {items:>11}  {}",
                self.elapsed(),
                item.global_progress.items_total,
                self.train.describe()
            ));
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        self.valid.settle(epoch);
        if item.progress.as_ref().is_some_and(|p| p.items_processed >= p.items_total) {
            self.sink.emit(format!("[{}] epoch {epoch}/{} dev    {}", self.elapsed(), item.global_progress.items_total, self.valid.describe()));
        }
    }
}

impl MetricsRendererEvaluation for ProgressLog {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for ProgressLog {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::data::dataloader::Progress;
    use burn::train::metric::{MetricAttributes, MetricEntry, SerializedEntry};

    fn definition(id: &MetricId, name: &str) -> MetricDefinition {
        MetricDefinition { metric_id: id.clone(), name: name.into(), description: None, attributes: MetricAttributes::None }
    }

    #[test]
    fn prints_every_n_batches_and_at_epoch_ends() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut log = ProgressLog::with_sink(2, Sink::Memory(lines.clone()));
        let loss = MetricId::new(Arc::new("loss-id".into()));
        log.register_metric(definition(&loss, LOSS));
        let entry = || MetricEntry::new(loss.clone(), SerializedEntry::new(String::new(), String::new()));
        for (i, value) in [(1, 2.0), (2, 4.0), (3, 6.0)] {
            log.update_train(MetricState::Numeric(entry(), NumericEntry::Aggregated { aggregated_value: value, count: 1 }));
            log.render_train(TrainingProgress { progress: Some(Progress::new(i, 3)), global_progress: Progress::new(1, 5), iteration: Some(i) }, vec![]);
        }
        log.update_valid(MetricState::Numeric(entry(), NumericEntry::Aggregated { aggregated_value: 1.0, count: 4 }));
        log.render_valid(TrainingProgress { progress: Some(Progress::new(4, 4)), global_progress: Progress::new(1, 5), iteration: Some(1) }, vec![]);
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("epoch 1/5 train") && lines[0].contains("loss 3.0000"), "{}", lines[0]);
        assert!(lines[1].contains("loss 4.0000"), "{}", lines[1]);
        assert!(lines[2].contains("dev") && lines[2].contains("loss 1.0000"), "{}", lines[2]);
    }

    #[test]
    fn perplexity_is_the_exp_of_the_token_weighted_mean_nll() {
        let mut tally = Tally::default();
        let ppl = |nll: f64, tokens: usize| NumericEntry::Aggregated { aggregated_value: nll.exp(), count: tokens };
        // Batch NLLs 10 (2 tokens) and 1 (6 tokens): mean NLL 3.25, so ppl e^3.25 (not the
        // token-weighted mean of e^10 and e^1, ~5507).
        tally.update(PERPLEXITY.into(), &ppl(10.0, 2));
        tally.update(PERPLEXITY.into(), &ppl(1.0, 6));
        tally.settle(1);
        let value = tally.mean(PERPLEXITY).unwrap();
        assert!((value - 3.25f64.exp()).abs() < 1e-9, "{value}");
    }
}
