//! Early stopping on the dev loss (a burn-train [`EarlyStoppingStrategy`]).
//!
//! burn's `MetricEarlyStoppingStrategy` reads the dev loss from the metric event store, which
//! is filled asynchronously and starts empty after a resume; this one reads the losses the
//! steps recorded in the [`StepMonitor`], restored from `history.json` on resume.

use crate::monitor::StepMonitor;
use burn::train::metric::store::EventStoreClient;
use burn::train::EarlyStoppingStrategy;

/// Stop once `patience` epochs have passed without a new lowest dev loss.
#[derive(Clone, Debug)]
pub struct DevLossPatience {
    monitor: StepMonitor,
    patience: usize,
}

impl DevLossPatience {
    /// Stop after `patience` (at least 1) epochs without improvement, as recorded in `monitor`.
    pub fn new(monitor: StepMonitor, patience: usize) -> Self {
        Self { monitor, patience: patience.max(1) }
    }

    /// Whether training should stop after `epoch` (closes the epoch in the monitor).
    pub fn decide(&self, epoch: usize) -> bool {
        self.monitor.close_epoch(epoch);
        self.monitor.best_dev_epoch().is_some_and(|(best, _)| epoch >= best + self.patience)
    }
}

impl EarlyStoppingStrategy for DevLossPatience {
    fn should_stop(&mut self, epoch: usize, _store: &EventStoreClient) -> bool {
        self.decide(epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_epochs_without_improvement() {
        let monitor = StepMonitor::default();
        let stopping = DevLossPatience::new(monitor.clone(), 2);
        let decisions: Vec<bool> = [3.0, 2.0, 2.5, 2.1, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &dev)| {
                monitor.record_dev(dev, 1);
                stopping.decide(i + 1)
            })
            .collect();
        assert_eq!(decisions, vec![false, false, false, true, false]);
    }
}
