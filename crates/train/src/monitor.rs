//! Host-side bookkeeping shared by the train/valid steps, the optimiser, the checkpoint policy and
//! early stopping: per-batch losses, per-epoch train/dev losses, and the non-finite-loss stop.
//!
//! Why not read these back from burn-train's event store: metric events are processed on a
//! background thread and written by asynchronous file loggers, so when the epoch loop asks the
//! store for "this epoch's dev loss" right after validation, the last events may not have landed.
//! The steps themselves run on the training threads, so numbers recorded here are complete by the
//! time the loop checkpoints or checks early stopping, and decisions are deterministic.

use burn::train::Interrupter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Losses of one finished epoch (means over response tokens, in nats).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLosses {
    /// 1-based epoch number.
    pub epoch: usize,
    /// `None` when no training batch finished with a finite loss.
    pub train_loss: Option<f64>,
    /// Response tokens the training loss was taken on.
    pub train_tokens: usize,
    /// `None` when the dev set produced no tokens.
    pub dev_loss: Option<f64>,
    /// Response tokens of the dev set.
    pub dev_tokens: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Mean loss of every training batch of this session, in the order they finished.
    batch_losses: Vec<f64>,
    train: Tally,
    dev: Tally,
    epochs: BTreeMap<usize, EpochLosses>,
    non_finite: Option<String>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    nll_sum: f64,
    tokens: usize,
}

impl Tally {
    fn add(&mut self, mean: f64, tokens: usize) {
        self.nll_sum += mean * tokens as f64;
        self.tokens += tokens;
    }
    fn take_mean(&mut self) -> (Option<f64>, usize) {
        let taken = std::mem::take(self);
        ((taken.tokens > 0).then(|| taken.nll_sum / taken.tokens as f64), taken.tokens)
    }
}

/// Cheap to clone: every clone shares the same state (the model, its forks on other devices,
/// the optimiser and the epoch-loop strategies all hold one).
#[derive(Clone, Default)]
pub struct StepMonitor {
    state: Arc<Mutex<State>>,
    interrupter: Interrupter,
}

impl core::fmt::Debug for StepMonitor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("StepMonitor")
    }
}

impl StepMonitor {
    /// A monitor that stops training through `interrupter` when a loss is not finite.
    pub fn new(interrupter: Interrupter) -> Self {
        Self { state: Arc::default(), interrupter }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record a training batch's mean loss over `tokens` response tokens. A non-finite loss
    /// stops training (the epoch loop breaks before validating or checkpointing that epoch, so
    /// the last checkpoint on disk stays the last good one).
    pub fn record_train(&self, mean: f64, tokens: usize) {
        let mut state = self.lock();
        let batch = state.batch_losses.len();
        state.batch_losses.push(mean);
        if !mean.is_finite() {
            if state.non_finite.is_none() {
                let message = format!("training loss became {mean} at batch {batch} of this session; stopped, keeping the last good checkpoint");
                self.interrupter.stop(Some(&message));
                state.non_finite = Some(message);
            }
            return;
        }
        state.train.add(mean, tokens);
    }

    /// Record a dev batch's mean loss over `tokens` response tokens.
    pub fn record_dev(&self, mean: f64, tokens: usize) {
        self.lock().dev.add(mean, tokens);
    }

    /// The message of the non-finite loss that stopped training, if one did.
    pub fn non_finite(&self) -> Option<String> {
        self.lock().non_finite.clone()
    }

    /// Close `epoch`: what was recorded since the last close becomes its losses. Idempotent,
    /// so the checkpoint policy and early stopping can both call it after validation.
    pub fn close_epoch(&self, epoch: usize) -> EpochLosses {
        let mut state = self.lock();
        if let Some(done) = state.epochs.get(&epoch) {
            return *done;
        }
        let (train_loss, train_tokens) = state.train.take_mean();
        let (dev_loss, dev_tokens) = state.dev.take_mean();
        let closed = EpochLosses { epoch, train_loss, train_tokens, dev_loss, dev_tokens };
        state.epochs.insert(epoch, closed);
        closed
    }

    /// Losses of every closed epoch, including those restored from a resumed run.
    pub fn epochs(&self) -> Vec<EpochLosses> {
        self.lock().epochs.values().copied().collect()
    }

    /// Put back the epochs of the run being resumed (only those up to `last_epoch`).
    pub fn restore_epochs(&self, epochs: &[EpochLosses], last_epoch: usize) {
        let mut state = self.lock();
        for e in epochs.iter().filter(|e| e.epoch <= last_epoch) {
            state.epochs.insert(e.epoch, *e);
        }
    }

    /// The epoch with the lowest finite dev loss (the earliest on ties).
    pub fn best_dev_epoch(&self) -> Option<(usize, f64)> {
        self.lock().epochs.values().filter_map(|e| e.dev_loss.filter(|l| l.is_finite()).map(|l| (e.epoch, l))).fold(None, |best, (epoch, loss)| match best {
            Some((_, b)) if b <= loss => best,
            _ => Some((epoch, loss)),
        })
    }

    /// Mean loss of every training batch of this session, in completion order.
    pub fn batch_losses(&self) -> Vec<f64> {
        self.lock().batch_losses.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_close_once_and_weight_by_tokens() {
        let monitor = StepMonitor::default();
        monitor.record_train(1.0, 1);
        monitor.record_train(4.0, 3);
        monitor.record_dev(2.0, 2);
        let first = monitor.close_epoch(1);
        assert_eq!(first.train_loss, Some(13.0 / 4.0));
        assert_eq!(first.dev_loss, Some(2.0));
        monitor.record_dev(1.0, 1);
        assert_eq!(monitor.close_epoch(1), first, "closing twice changes nothing");
        assert_eq!(monitor.close_epoch(2).dev_loss, Some(1.0));
        assert_eq!(monitor.best_dev_epoch(), Some((2, 1.0)));
    }

    #[test]
    fn a_non_finite_loss_interrupts() {
        let interrupter = Interrupter::new();
        let monitor = StepMonitor::new(interrupter.clone());
        monitor.record_train(0.5, 4);
        assert!(!interrupter.should_stop());
        monitor.record_train(f64::NAN, 4);
        assert!(interrupter.should_stop());
        assert!(monitor.non_finite().unwrap().contains("NaN"));
        assert_eq!(monitor.close_epoch(1).train_loss, Some(0.5), "the bad batch is not averaged in");
    }
}
