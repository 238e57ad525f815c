//! Per-epoch checkpoints of the tuner, its optimiser state and the schedule, written atomically.
//!
//! These go through burn-train's own checkpointing (`SupervisedTraining::with_file_checkpointer`
//! and a [`CheckpointingStrategy`]); three things make it fit this project:
//! - **tuner only**: the backbone is a `#[module(skip)]` field of [`crate::TunedLm`], so the
//!   model record burn saves holds the tuner's parameters and an empty record for the backbone
//!   (a frozen 540 MB backbone is never copied); AdamW state exists only for parameters with
//!   gradients, i.e. the tuner's;
//! - **atomic files**: [`AtomicRecorder`] wraps a burn file recorder so each file is written
//!   under a temporary name, flushed to disk, then renamed over the final name — a crash leaves
//!   the previous file or the new one, never a torn one;
//! - **which epochs**: [`CheckpointPolicy`] saves every epoch whose losses are finite, keeps the
//!   last `keep_last` and the best-on-dev epoch, and records per-epoch losses in `history.json`
//!   (so early stopping and "best epoch" survive a resume).
//!
//! Layout of `<run_dir>/checkpoint/`: `model-<epoch>.mpk` (tuner parameters), `optim-<epoch>.mpk`
//! (both AdamW groups' moments and step counts), `scheduler-<epoch>.mpk` (schedule steps taken =
//! optimiser iterations so far), `history.json`. A run resumes from the highest epoch that has
//! all three `.mpk` files.

use crate::monitor::{EpochLosses, StepMonitor};
use burn::record::{FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use iapt_assets::atomic::write_atomically;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The recorder checkpoints are written with: named MessagePack, full precision, atomic.
pub type CheckpointRecorder = AtomicRecorder<NamedMpkFileRecorder<FullPrecisionSettings>>;

/// Files that make up one epoch's checkpoint (burn-train's names).
pub const CHECKPOINT_PARTS: [&str; 3] = ["model", "optim", "scheduler"];

/// Sub-directory of the run directory that holds checkpoints (burn-train's choice).
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// A burn [`FileRecorder`] that writes through a temporary file and a rename.
#[derive(Debug, Default, Clone)]
pub struct AtomicRecorder<R> {
    inner: R,
}

impl<R: FileRecorder<B>, B: Backend> Recorder<B> for AtomicRecorder<R> {
    type Settings = R::Settings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, path: PathBuf) -> Result<(), RecorderError> {
        let extension = <R as FileRecorder<B>>::file_extension();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The inner recorder appends its extension to whatever base it gets.
        let temporary_base = path.with_file_name(format!("{name}-partial"));
        self.inner.save_item(item, temporary_base.clone())?;
        let temporary = with_extension(&temporary_base, extension);
        let target = with_extension(&path, extension);
        iapt_assets::atomic::rename_durably(&temporary, &target).map_err(|e| RecorderError::Unknown(format!("{}: {e}", target.display())))
    }

    fn load_item<I: DeserializeOwned>(&self, path: &mut PathBuf) -> Result<I, RecorderError> {
        self.inner.load_item(path)
    }
}

impl<R: FileRecorder<B>, B: Backend> FileRecorder<B> for AtomicRecorder<R> {
    fn file_extension() -> &'static str {
        <R as FileRecorder<B>>::file_extension()
    }
}

/// `path` with `.extension` appended the way burn's file recorders do it.
fn with_extension(path: &Path, extension: &str) -> PathBuf {
    let mut path = path.to_path_buf();
    path.set_extension(extension);
    path
}

/// Epochs with a complete checkpoint (all of [`CHECKPOINT_PARTS`]) in `dir`.
pub fn complete_epochs(dir: &Path, extension: &str) -> BTreeSet<usize> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    let names: BTreeSet<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let epochs_of = |part: &str| -> BTreeSet<usize> {
        names.iter().filter_map(|n| n.strip_prefix(part)?.strip_prefix('-')?.strip_suffix(extension)?.strip_suffix('.')?.parse().ok()).collect()
    };
    let mut complete = epochs_of(CHECKPOINT_PARTS[0]);
    for part in &CHECKPOINT_PARTS[1..] {
        complete = complete.intersection(&epochs_of(part)).copied().collect();
    }
    complete
}

/// Path of `history.json` in a checkpoint directory.
pub fn history_path(checkpoint_dir: &Path) -> PathBuf {
    checkpoint_dir.join("history.json")
}

/// Per-epoch losses saved next to the checkpoints; empty when there are none.
pub fn read_history(checkpoint_dir: &Path) -> Vec<EpochLosses> {
    fs::read(history_path(checkpoint_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Which epochs to checkpoint and which to delete (a burn-train [`CheckpointingStrategy`]).
pub struct CheckpointPolicy {
    monitor: StepMonitor,
    keep_last: usize,
    saved: BTreeSet<usize>,
    checkpoint_dir: PathBuf,
}

impl CheckpointPolicy {
    /// `already_saved`: complete checkpoints found on disk when the run (re)started.
    pub fn new(monitor: StepMonitor, keep_last: usize, checkpoint_dir: PathBuf, already_saved: BTreeSet<usize>) -> Self {
        Self { monitor, keep_last: keep_last.max(1), saved: already_saved, checkpoint_dir }
    }
}

impl CheckpointingStrategy for CheckpointPolicy {
    fn checkpointing(&mut self, epoch: usize, _store: &EventStoreClient) -> Vec<CheckpointingAction> {
        self.decide(epoch)
    }
}

impl CheckpointPolicy {
    /// What to do after `epoch` has been validated.
    pub fn decide(&mut self, epoch: usize) -> Vec<CheckpointingAction> {
        let closed = self.monitor.close_epoch(epoch);
        // Never save a state that has seen a non-finite loss: the last good checkpoint stays.
        if self.monitor.non_finite().is_some() || !closed.train_loss.is_some_and(f64::is_finite) {
            return Vec::new();
        }
        self.saved.insert(epoch);
        let best = self.monitor.best_dev_epoch().map(|(e, _)| e);
        let stale: Vec<usize> = self.saved.iter().copied().filter(|&e| e + self.keep_last <= epoch && Some(e) != best).collect();
        for e in &stale {
            self.saved.remove(e);
        }
        if let Ok(json) = serde_json::to_vec_pretty(&self.monitor.epochs()) {
            if let Err(e) = write_atomically(&history_path(&self.checkpoint_dir), &json) {
                eprintln!("warning: could not write the loss history: {e}");
            }
        }
        std::iter::once(CheckpointingAction::Save).chain(stale.into_iter().map(CheckpointingAction::Delete)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{Module, Param};
    use burn::tensor::{Tensor, TensorData};

    type TestBackend = burn::backend::NdArray;

    #[derive(Module, Debug)]
    struct Small<B: Backend> {
        w: Param<Tensor<B, 1>>,
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iapt-train-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_recorder_round_trips_and_leaves_no_temporary() {
        let dir = temp_dir("atomic");
        let device = Default::default();
        let module = Small::<TestBackend> { w: Param::from_tensor(Tensor::from_data(TensorData::from([1.5f32, -2.0]), &device)) };
        let recorder = CheckpointRecorder::default();
        Recorder::<TestBackend>::record(&recorder, module.clone().into_record(), dir.join("model-3")).unwrap();
        let files: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(files, vec!["model-3.mpk".to_string()]);
        let record = Recorder::<TestBackend>::load(&recorder, dir.join("model-3"), &device).unwrap();
        let loaded = Small::<TestBackend> { w: Param::from_tensor(Tensor::zeros([2], &device)) }.load_record(record);
        assert_eq!(loaded.w.val().into_data().to_vec::<f32>().unwrap(), vec![1.5, -2.0]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_epochs_with_every_part_count_as_complete() {
        let dir = temp_dir("complete");
        for name in ["model-1.mpk", "optim-1.mpk", "scheduler-1.mpk", "model-2.mpk", "optim-2.mpk", "model-2-partial.mpk"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(complete_epochs(&dir, "mpk"), BTreeSet::from([1]));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn policy_keeps_the_last_epochs_and_the_best() {
        let dir = temp_dir("policy");
        let monitor = StepMonitor::default();
        let mut policy = CheckpointPolicy::new(monitor.clone(), 2, dir.clone(), BTreeSet::new());
        let mut actions = Vec::new();
        for (epoch, dev) in [(1, 1.0), (2, 2.0), (3, 3.0), (4, 0.5)] {
            monitor.record_train(1.0, 1);
            monitor.record_dev(dev, 1);
            monitor.close_epoch(epoch);
            actions.push(policy.decide(epoch));
        }
        use CheckpointingAction::{Delete, Save};
        assert_eq!(actions[0], vec![Save]);
        assert_eq!(actions[1], vec![Save]);
        assert_eq!(actions[2], vec![Save], "epoch 1 is the best so far: kept");
        assert_eq!(actions[3], vec![Save, Delete(1), Delete(2)], "epoch 4 is the new best");
        assert_eq!(read_history(&dir).len(), 4);
        fs::remove_dir_all(dir).unwrap();
    }
}
