//! burn-train's per-epoch metric logs (`<run_dir>/{train,valid}/epoch-N/<Metric>.log`), kept
//! true across a resume.
//!
//! burn-train 0.21's event store numbers the epochs it logs from 1 in every session, whatever
//! checkpoint the session resumed from, until the first epoch ends: a run resumed from epoch 2
//! would write epoch 3's metrics over `epoch-1/` and never write `epoch-3/`. [`ResumedFileLogger`]
//! wraps its file logger and numbers them from the resumed epoch instead; [`remove_logs_after`]
//! clears what a killed session logged after its last checkpoint.

use burn::train::logger::{FileMetricLogger, MetricLogger};
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, NumericEntry};
use std::fs;
use std::path::Path;

/// The metric-log splits burn-train writes under the run directory.
const LOG_SPLITS: [&str; 2] = ["train", "valid"];

/// Remove the metric logs of every epoch after `epoch` (the checkpoint a run resumes from, 0
/// for none): they belong to a session that stopped before checkpointing them (killed, or
/// interrupted), and a resumed run that stops earlier than that session would otherwise leave
/// them beside its own.
pub fn remove_logs_after(run_dir: &Path, epoch: usize) -> std::io::Result<()> {
    for split in LOG_SPLITS {
        let Ok(entries) = fs::read_dir(run_dir.join(split)) else { continue };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let later = name.to_str().and_then(|n| n.strip_prefix("epoch-")?.parse::<usize>().ok()).is_some_and(|n| n > epoch);
            if later {
                fs::remove_dir_all(entry.path())?;
            }
        }
    }
    Ok(())
}

/// burn-train's [`FileMetricLogger`] for a session whose first epoch is `first_epoch`.
pub struct ResumedFileLogger {
    inner: FileMetricLogger,
    first_epoch: usize,
}

impl ResumedFileLogger {
    /// Log under `run_dir`, this session's first epoch being `resumed_from + 1`.
    pub fn new(run_dir: &Path, resumed_from: Option<usize>) -> Self {
        Self { inner: FileMetricLogger::new(run_dir), first_epoch: resumed_from.unwrap_or(0) + 1 }
    }

    /// The epoch an update belongs to: the store's number once it counts from this session's
    /// first epoch (after that epoch's end), this session's first epoch before.
    fn epoch(&self, store_epoch: usize) -> usize {
        store_epoch.max(self.first_epoch)
    }
}

impl MetricLogger for ResumedFileLogger {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        let epoch = self.epoch(epoch);
        self.inner.log(update, epoch, split)
    }

    fn read_numeric(&mut self, name: &str, epoch: usize, split: &Split) -> Result<Vec<NumericEntry>, String> {
        self.inner.read_numeric(name, epoch, split)
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.inner.log_metric_definition(definition)
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        self.inner.log_epoch_summary(summary)
    }
}
