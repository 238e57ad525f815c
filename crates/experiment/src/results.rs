//! What a finished `iapt train` run reports (`<run dir>/results.json`), as one typed record that
//! the run writes and `iapt compare` reads back.

use anyhow::{anyhow, Context, Result};
use iapt_train::StopReason;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The summary of a finished `iapt train`, inside its run directory.
pub const RESULTS_FILE: &str = "results.json";

/// A finished run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    pub task: String,
    /// The `"tuner"` tag.
    pub tuner: String,
    /// The split `tuned_accuracy` is measured on.
    pub split: String,
    /// The backbone alone, when `eval.zero_shot`.
    pub zero_shot_accuracy: Option<f64>,
    pub tuned_accuracy: f64,
    /// Tuned accuracy on dev, when `eval.dev`.
    pub dev_accuracy: Option<f64>,
    pub majority_label: Option<String>,
    pub majority_accuracy: Option<f64>,
    /// Examples `tuned_accuracy` is measured on.
    pub examples: usize,
    pub trainable_params: usize,
    /// Backbone plus tuner.
    pub total_params: usize,
    pub epochs: usize,
    pub best_epoch: Option<usize>,
    pub best_dev_loss: Option<f64>,
    pub stop: StopReason,
    pub train_seconds: f64,
    pub train_batches: usize,
    /// Wall time of this session's training (per-epoch validation included) per batch.
    pub seconds_per_batch: f64,
    /// `None` when this session trained nothing (a finished run resumed).
    pub train_tokens_per_second: Option<f64>,
    /// The process's peak resident memory, where the platform reports it.
    pub peak_rss_bytes: Option<u64>,
    pub backend: String,
}

impl RunResults {
    /// Write `<dir>/results.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RESULTS_FILE);
        iapt_assets::atomic::write_atomically(&path, self.to_json().as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// Pretty JSON, as written.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("run results serialise")
    }

    /// Read `<dir>/results.json`; `None` when the run has not finished.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(RESULTS_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).map(Some).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes; `None` where unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file_and_refuses_a_damaged_one() {
        let dir = std::env::temp_dir().join(format!("iapt-results-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(RunResults::read(&dir).unwrap(), None);
        let results = RunResults {
            task: "multiemo".into(),
            tuner: "iapt".into(),
            split: "test".into(),
            zero_shot_accuracy: Some(0.5),
            tuned_accuracy: 0.75,
            dev_accuracy: None,
            majority_label: Some("positive".into()),
            majority_accuracy: Some(0.4),
            examples: 92,
            trainable_params: 74_668,
            total_params: 134_589_676,
            epochs: 2,
            best_epoch: Some(2),
            best_dev_loss: Some(0.31),
            stop: StopReason::Completed,
            train_seconds: 100.0,
            train_batches: 96,
            seconds_per_batch: 1.04,
            train_tokens_per_second: Some(900.0),
            peak_rss_bytes: None,
            backend: "ndarray".into(),
        };
        results.write(&dir).unwrap();
        assert_eq!(RunResults::read(&dir).unwrap(), Some(results.clone()));
        let json: serde_json::Value = serde_json::from_str(&results.to_json()).unwrap();
        assert_eq!((json["tuned_accuracy"].as_f64(), json["stop"]["kind"].as_str()), (Some(0.75), Some("completed")));
        std::fs::write(dir.join(RESULTS_FILE), "{\"task\": 1}").unwrap();
        let err = RunResults::read(&dir).unwrap_err().to_string();
        assert!(err.contains(RESULTS_FILE), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
