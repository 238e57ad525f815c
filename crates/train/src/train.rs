//! The entry point: [`train`] wires a [`TunedLm`] and two datasets into burn-train's
//! `SupervisedTraining` and returns the trained model with a [`TrainReport`].
//!
//! What comes from burn-train and what is this crate's:
//! - epoch loop, validation pass, gradient accumulation, multi-device data parallelism,
//!   checkpoint save/restore plumbing, the TUI, metric logging (`<run_dir>/train|valid/epoch-N`)
//!   and `experiment.log`: burn-train, configured here;
//! - the loss and steps ([`TunedLm`]), parameter groups / clipping / averaging ([`crate::optim`]),
//!   the schedule ([`crate::schedule`]), resumable data order ([`crate::loader`]), which epochs
//!   to keep and atomic files ([`crate::checkpoint`]), early stopping ([`crate::stopping`]) and
//!   the plain-text progress ([`crate::progress`]): plugged into burn-train's traits.

use crate::batch::{LmBatcher, LmExample};
use crate::checkpoint::{self, CheckpointPolicy, CheckpointRecorder, CHECKPOINT_DIR};
use crate::config::TrainConfig;
use crate::interrupt::CtrlCWatch;
use crate::loader::EpochLoader;
use crate::metric::{DiagnosticMetric, PerplexityMetric, TokenAccuracyMetric};
use crate::metric_log::{self, ResumedFileLogger};
use crate::model::TunedLm;
use crate::monitor::{EpochLosses, StepMonitor};
use crate::optim::GroupedAdamWConfig;
use crate::progress::{Dashboard, ProgressLog, Sink};
use crate::schedule::WarmupLinearDecay;
use crate::stopping::DevLossPatience;
use burn::backend::Flex;
use burn::data::dataset::Dataset;
use burn::module::{AutodiffModule, Module, ModuleDisplay};
use burn::record::{FileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::{LearningRateMetric, LossMetric};
use burn::train::renderer::tui::TuiMetricsRendererWrapper;
use burn::train::{ExecutionStrategy, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining};
use iapt_model::ModelHook;
use iapt_model::TrainableTuner;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why training ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StopReason {
    /// Ran every epoch.
    Completed,
    /// The dev loss did not improve for `patience` epochs.
    EarlyStopped {
        /// The last epoch run.
        epoch: usize,
    },
    /// Stopped from outside (e.g. `q` in the TUI) or by a failed checkpoint write; the last
    /// finished epoch is checkpointed.
    Interrupted {
        /// burn-train's stop message.
        reason: String,
    },
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The checkpoint epoch this session continued from.
    pub resumed_from_epoch: Option<usize>,
    /// Losses of every finished epoch, resumed ones included.
    pub epochs: Vec<EpochLosses>,
    /// The epoch with the lowest dev loss.
    pub best_epoch: Option<usize>,
    /// Its dev loss (mean NLL per response token).
    pub best_dev_loss: Option<f64>,
    /// The epoch whose tuner the returned model holds (the best one with `restore_best`).
    pub returned_epoch: Option<usize>,
    /// Why the run ended.
    pub stop: StopReason,
    /// Schedule steps per epoch (batches, or rounds of one batch per device) and in all.
    pub steps_per_epoch: usize,
    /// Schedule steps of the whole run.
    pub total_steps: usize,
    /// Schedule steps of linear warm-up.
    pub warmup_steps: usize,
    /// Mean loss of every training batch of this session, in completion order.
    pub batch_losses: Vec<f64>,
    /// Trainable (tuner) parameters.
    pub trainable_params: usize,
    /// Where the per-epoch checkpoints are.
    pub checkpoint_dir: PathBuf,
}

/// The trained model (on the inner, non-autodiff backend) and the report.
pub struct Trained<B: Backend, T> {
    /// Backbone + trained tuner (the best epoch's with `restore_best`).
    pub model: TunedLm<B, T>,
    /// What the run did (also in `<run_dir>/report.json`).
    pub report: TrainReport,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A [`TrainConfig`] value is out of range.
    #[error("invalid training config: {0}")]
    Config(String),
    /// A dataset is empty or holds an example with no prompt or no response.
    #[error("invalid {split} data: {message}")]
    Data {
        /// `training` or `dev`.
        split: &'static str,
        /// What is wrong, with the example's index.
        message: String,
    },
    /// Reading or writing the run directory failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error (in the message, not a separate cause: printed once).
        error: std::io::Error,
    },
    /// The run directory has checkpoints and `resume` is off.
    #[error("{0} already holds checkpoints; set `resume` to continue them or choose another run directory")]
    RunDirInUse(PathBuf),
    /// The checkpoints were made with different trajectory settings.
    #[error("cannot resume {dir}: its checkpoints were made with different {fields:?}")]
    ConfigMismatch {
        /// The run directory.
        dir: PathBuf,
        /// The [`TrainConfig`] fields that differ.
        fields: Vec<String>,
    },
    /// A training loss was NaN or infinite; training stopped before checkpointing that epoch.
    #[error("{message} (last good checkpoint: epoch {last_checkpoint:?})")]
    NonFinite {
        /// Which batch went non-finite.
        message: String,
        /// The newest complete checkpoint, from which a run can resume.
        last_checkpoint: Option<usize>,
        /// The run up to the stop.
        report: Box<TrainReport>,
    },
    /// The best epoch's checkpoint could not be read back.
    #[error("cannot load checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file (without extension).
        path: PathBuf,
        /// The recorder's error.
        message: String,
    },
}

/// Train `model`'s tuner on its own device. See [`train_on_devices`].
pub fn train<B, T, DT, DD>(
    config: &TrainConfig,
    model: TunedLm<B, T>,
    train_data: DT,
    dev_data: DD,
    run_dir: impl AsRef<Path>,
) -> Result<Trained<B::InnerBackend, T::InnerModule>, TrainError>
where
    B: AutodiffBackend,
    T: AutodiffModule<B> + ModelHook<B> + TrainableTuner + ModuleDisplay + 'static,
    T::InnerModule: ModelHook<B::InnerBackend> + ModuleDisplay + 'static,
    DT: Dataset<LmExample> + 'static,
    DD: Dataset<LmExample> + 'static,
{
    train_on_devices(config, model, train_data, dev_data, run_dir, Vec::new())
}

/// Train `model`'s tuner on `train_data`, validating on `dev_data` after every epoch, with
/// checkpoints, metric logs and `report.json` under `run_dir`.
///
/// With two or more `devices`, burn-train's multi-device strategy runs: every device gets a
/// contiguous share of the training set and the model, each round processes one batch per
/// device, and the gradients are summed (and averaged here) into one optimiser step. An empty
/// `devices` means the model's own device. (When the shares differ in batch count, the last
/// round of an epoch has fewer batches but is still divided by the device count: give every
/// device the same number of batches for exact averaging.)
///
/// Data: every example must pass [`LmExample::check`]; batches are built with [`LmBatcher`]
/// (`config.pad_id`). The training set is reshuffled each epoch from `config.seed`.
pub fn train_on_devices<B, T, DT, DD>(
    config: &TrainConfig,
    model: TunedLm<B, T>,
    train_data: DT,
    dev_data: DD,
    run_dir: impl AsRef<Path>,
    devices: Vec<B::Device>,
) -> Result<Trained<B::InnerBackend, T::InnerModule>, TrainError>
where
    B: AutodiffBackend,
    T: AutodiffModule<B> + ModelHook<B> + TrainableTuner + ModuleDisplay + 'static,
    T::InnerModule: ModelHook<B::InnerBackend> + ModuleDisplay + 'static,
    DT: Dataset<LmExample> + 'static,
    DD: Dataset<LmExample> + 'static,
{
    let devices = if devices.is_empty() { model.devices().into_iter().take(1).collect() } else { devices };
    check_exchange::<B::InnerBackend>(&devices)?;
    let layout = Layout::Local { devices: devices.len() };
    let strategy = if devices.len() > 1 {
        let optim = if config.sharded_optimizer { MultiDeviceOptim::OptimSharded } else { MultiDeviceOptim::OptimMainDevice };
        ExecutionStrategy::multi(devices, optim)
    } else {
        ExecutionStrategy::single(devices[0].clone())
    };
    run(config, model, train_data, dev_data, run_dir.as_ref(), strategy, layout)
}

/// Several devices train one model only if tensors move between them intact: burn-train copies
/// the model to every device and the gradients back. On some backends a copy between two devices
/// silently yields other values (burn 0.21's wgpu backend sends cross-device copies through a
/// device-to-device path that only CUDA implements: the copy never happens, and reading it
/// fails or gives other values), which would train on garbage. A few known values are sent from
/// the first device to each other one and read back.
fn check_exchange<B: Backend>(devices: &[B::Device]) -> Result<(), TrainError> {
    let Some((first, others)) = devices.split_first() else { return Ok(()) };
    let probe: Vec<f32> = (1..=64).map(|i| i as f32 * 0.25).collect();
    let sent = burn::tensor::Tensor::<B, 1>::from_floats(probe.as_slice(), first);
    for (i, device) in others.iter().enumerate() {
        if device == first {
            continue;
        }
        let received = sent.clone().to_device(device).try_into_data().ok().and_then(|data| data.convert::<f32>().to_vec::<f32>().ok());
        if received.as_deref() != Some(probe.as_slice()) {
            return Err(TrainError::Config(format!(
                "devices 0 ({first:?}) and {} ({device:?}) cannot exchange tensors on this backend (a copy between them failed or came back changed), so they cannot train one model together; train on one device, or on the CPU backends or CUDA for several",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Train with burn-train's distributed data parallel strategy (DDP): one worker thread and
/// model replica per device, gradients averaged across replicas by an all-reduce inside the
/// backward pass. Needs a backend implementing burn's `DistributedBackend` and this crate's
/// `ddp` feature: in burn 0.21 that is CUDA only (burn's `distributed` feature switches on
/// burn-cubecl's implementation through burn-cuda alone, and the all-reduce is NCCL's; cubecl's
/// wgpu runtime has no collective operations and cannot copy between devices).
///
/// Early stopping is not used under DDP: burn-train 0.21 asks every worker's copy of the
/// strategy right after its training epoch, before the main worker has validated, so workers
/// could decide differently and leave the others waiting in an all-reduce.
#[cfg(feature = "ddp")]
pub fn train_ddp<B, T, DT, DD>(
    config: &TrainConfig,
    model: TunedLm<B, T>,
    train_data: DT,
    dev_data: DD,
    run_dir: impl AsRef<Path>,
    devices: Vec<B::Device>,
) -> Result<Trained<B::InnerBackend, T::InnerModule>, TrainError>
where
    B: AutodiffBackend + burn::tensor::backend::distributed::DistributedBackend,
    T: AutodiffModule<B> + ModelHook<B> + TrainableTuner + ModuleDisplay + 'static,
    T::InnerModule: ModelHook<B::InnerBackend> + ModuleDisplay + 'static,
    DT: Dataset<LmExample> + 'static,
    DD: Dataset<LmExample> + 'static,
{
    use burn::tensor::backend::distributed::{DistributedConfig, ReduceOperation};
    if devices.is_empty() {
        return Err(TrainError::Config("DDP needs at least one device".into()));
    }
    check_exchange::<B::InnerBackend>(&devices)?;
    let layout = Layout::Ddp { devices: devices.len() };
    let strategy = ExecutionStrategy::ddp(devices, DistributedConfig { all_reduce_op: ReduceOperation::Mean });
    run(config, model, train_data, dev_data, run_dir.as_ref(), strategy, layout)
}

/// How batches are spread over devices, which fixes the schedule length and gradient scaling.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// burn-train's single- or multi-device strategy: gradients of all devices are summed.
    Local { devices: usize },
    /// burn-train's DDP: gradients are already averaged by the all-reduce, and each worker
    /// steps its schedule once per device for every batch it trains.
    #[cfg_attr(not(feature = "ddp"), allow(dead_code))]
    Ddp { devices: usize },
}

fn run<B, T, DT, DD>(
    config: &TrainConfig,
    model: TunedLm<B, T>,
    train_data: DT,
    dev_data: DD,
    run_dir: &Path,
    strategy: ExecutionStrategy<B>,
    layout: Layout,
) -> Result<Trained<B::InnerBackend, T::InnerModule>, TrainError>
where
    B: AutodiffBackend,
    T: AutodiffModule<B> + ModelHook<B> + TrainableTuner + ModuleDisplay + 'static,
    T::InnerModule: ModelHook<B::InnerBackend> + ModuleDisplay + 'static,
    DT: Dataset<LmExample> + 'static,
    DD: Dataset<LmExample> + 'static,
{
    config.validate().map_err(TrainError::Config)?;
    check_data("training", &train_data)?;
    check_data("dev", &dev_data)?;
    let run_dir = run_dir.to_path_buf();
    let checkpoint_dir = run_dir.join(CHECKPOINT_DIR);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| TrainError::Io { path, error }
    };
    std::fs::create_dir_all(&checkpoint_dir).map_err(io(&checkpoint_dir))?;

    let extension = <CheckpointRecorder as FileRecorder<B>>::file_extension();
    let saved = checkpoint::complete_epochs(&checkpoint_dir, extension);
    let resume_epoch = resume_point(config, &run_dir, &saved)?;
    metric_log::remove_logs_after(&run_dir, resume_epoch.unwrap_or(0)).map_err(io(&run_dir))?;

    let interrupter = Interrupter::new();
    let monitor = StepMonitor::new(interrupter.clone());
    if let Some(epoch) = resume_epoch {
        monitor.restore_epochs(&checkpoint::read_history(&checkpoint_dir), epoch);
    }

    // One schedule step per batch (one device) or per round of one batch per device; DDP
    // workers step once per device for each of their batches.
    let (steps_per_epoch, grad_scale) = match layout {
        Layout::Local { devices } => {
            (schedule_steps_per_epoch(train_data.len(), config.batch_size, devices), 1.0 / (config.grad_accumulation * devices) as f32)
        }
        Layout::Ddp { devices } => (schedule_steps_per_epoch(train_data.len(), config.batch_size, devices) * devices, 1.0 / config.grad_accumulation as f32),
    };
    let total_steps = steps_per_epoch * config.epochs;
    let schedule = WarmupLinearDecay::new(config.learning_rate, config.warmup_fraction, total_steps);
    let optimizer = GroupedAdamWConfig {
        weight_decay: config.weight_decay,
        small_lr_ratio: config.rational_lr / config.learning_rate,
        max_grad_norm: config.max_grad_norm,
        grad_scale,
        ..Default::default()
    }
    .init::<B, TunedLm<B, T>>(monitor.clone());
    let model = model.with_monitor(monitor.clone());
    let trainable_params = model.num_params();

    // Loader devices are placeholders: burn-train moves (or splits) loaders onto the devices.
    let batcher = LmBatcher { pad_id: config.pad_id };
    let train_loader = EpochLoader::<B>::new(
        Arc::new(train_data),
        config.batch_size,
        batcher,
        Default::default(),
        config.shuffle.then_some(config.seed),
        resume_epoch.unwrap_or(0),
    )
    .with_length_grouping(config.group_by_length)
    .with_class_balance(config.balance_classes);
    let dev_loader = EpochLoader::<B::InnerBackend>::new(Arc::new(dev_data), config.batch_size, batcher, Default::default(), None, 0);

    let policy = CheckpointPolicy::new(monitor.clone(), config.keep_last, checkpoint_dir.clone(), saved);
    let mut training = SupervisedTraining::new(&run_dir, Arc::new(train_loader), Arc::new(dev_loader))
        .with_metric_logger(ResumedFileLogger::new(&run_dir, resume_epoch))
        .metrics((LossMetric::<Flex>::new(), PerplexityMetric::default(), TokenAccuracyMetric::default()))
        .metric_train_numeric(LearningRateMetric::new())
        .with_file_checkpointer(CheckpointRecorder::default())
        .with_checkpointing_strategy(policy)
        .num_epochs(config.epochs)
        .with_interrupter(interrupter.clone());
    training = match config.dashboard {
        dashboard if dashboard.uses_tui() => training.renderer(TuiMetricsRendererWrapper::new(interrupter.clone(), resume_epoch)),
        Dashboard::Off => training.renderer(ProgressLog::with_sink(config.log_every, Sink::Discard)),
        _ => training.renderer(ProgressLog::new(config.log_every)),
    };
    for name in model.diagnostics() {
        training = training.metric_train_numeric(DiagnosticMetric::new(name)).metric_valid_numeric(DiagnosticMetric::new(name));
    }
    if config.grad_accumulation > 1 {
        training = training.grads_accumulation(config.grad_accumulation);
    }
    if let (Some(patience), Layout::Local { .. }) = (config.patience, layout) {
        training = training.early_stopping(DevLossPatience::new(monitor.clone(), patience));
    }
    if let Some(epoch) = resume_epoch {
        training = training.checkpoint(epoch);
    }
    training = training.with_training_strategy(strategy.into());

    let learner = Learner::new(model, optimizer, schedule);
    let ctrl_c = CtrlCWatch::start(interrupter.clone());
    let result = training.launch(learner);
    drop(ctrl_c);
    drop(result.renderer); // leaves the TUI's alternate screen before anything is printed
    let mut model = result.model;

    let epochs = monitor.epochs();
    let best = monitor.best_dev_epoch();
    let last_epoch = epochs.last().map(|e| e.epoch);
    let stop = stop_reason(&interrupter, last_epoch, config.epochs);
    let mut report = TrainReport {
        resumed_from_epoch: resume_epoch,
        epochs,
        best_epoch: best.map(|(e, _)| e),
        best_dev_loss: best.map(|(_, l)| l),
        returned_epoch: last_epoch,
        stop,
        steps_per_epoch,
        total_steps,
        warmup_steps: schedule.warmup_steps(),
        batch_losses: monitor.batch_losses(),
        trainable_params,
        checkpoint_dir: checkpoint_dir.clone(),
    };

    if let Some(message) = monitor.non_finite() {
        let last_checkpoint = checkpoint::complete_epochs(&checkpoint_dir, extension).last().copied();
        report.returned_epoch = None;
        write_json(&run_dir.join("report.json"), &report)?;
        return Err(TrainError::NonFinite { message, last_checkpoint, report: Box::new(report) });
    }

    if let (true, Some((best_epoch, _))) = (config.restore_best, best) {
        if Some(best_epoch) != last_epoch {
            model = load_epoch(model, &checkpoint_dir, best_epoch)?;
            report.returned_epoch = Some(best_epoch);
        }
    }
    write_json(&run_dir.join("report.json"), &report)?;
    Ok(Trained { model, report })
}

/// The epoch to resume from: the latest complete checkpoint in `saved` (at most the configured
/// epochs), made with the same trajectory settings; `None` for a fresh run. Records this
/// session's settings for the next one.
fn resume_point(config: &TrainConfig, run_dir: &Path, saved: &BTreeSet<usize>) -> Result<Option<usize>, TrainError> {
    let config_path = run_dir.join("train_config.json");
    let resume_epoch = match saved.range(..=config.epochs).last() {
        None => None,
        Some(_) if !config.resume => return Err(TrainError::RunDirInUse(run_dir.to_path_buf())),
        Some(&last) => {
            if let Some(previous) = read_json::<TrainConfig>(&config_path) {
                let fields = config.trajectory_differences(&previous);
                if !fields.is_empty() {
                    return Err(TrainError::ConfigMismatch { dir: run_dir.to_path_buf(), fields });
                }
            }
            Some(last)
        }
    };
    write_json(&config_path, config)?;
    Ok(resume_epoch)
}

/// Why training ended, from the interrupter and the last finished epoch.
fn stop_reason(interrupter: &Interrupter, last_epoch: Option<usize>, epochs: usize) -> StopReason {
    // burn's TUI resets the interrupter when training ends, but keeps its message.
    match (interrupter.get_message(), last_epoch) {
        (Some(reason), _) => StopReason::Interrupted { reason },
        (None, _) if interrupter.should_stop() => StopReason::Interrupted { reason: "stopped".into() },
        (None, Some(epoch)) if epoch < epochs => StopReason::EarlyStopped { epoch },
        _ => StopReason::Completed,
    }
}

/// `model` with the tuner of epoch `epoch`'s checkpoint.
fn load_epoch<B: Backend, M: Module<B>>(model: M, checkpoint_dir: &Path, epoch: usize) -> Result<M, TrainError> {
    let path = checkpoint_dir.join(format!("model-{epoch}"));
    let device = model.devices().into_iter().next().unwrap_or_default();
    let record =
        Recorder::<B>::load(&CheckpointRecorder::default(), path.clone(), &device).map_err(|e| TrainError::Checkpoint { path, message: e.to_string() })?;
    Ok(model.load_record(record))
}

/// Schedule steps in one epoch of `items` examples: burn-train steps the schedule once per
/// batch on one device, and once per round (one batch on each device) on several, where device
/// `i` gets a contiguous `items / devices` share and the last device the remainder.
pub fn schedule_steps_per_epoch(items: usize, batch_size: usize, devices: usize) -> usize {
    let devices = devices.max(1);
    let largest_share = items - (items / devices) * (devices - 1);
    largest_share.div_ceil(batch_size.max(1))
}

fn check_data(split: &'static str, data: &dyn Dataset<LmExample>) -> Result<(), TrainError> {
    if data.is_empty() {
        return Err(TrainError::Data { split, message: "no examples".into() });
    }
    for i in 0..data.len() {
        let example = data.get(i).ok_or_else(|| TrainError::Data { split, message: format!("no item {i}") })?;
        example.check().map_err(|why| TrainError::Data { split, message: format!("example {i}: {why}") })?;
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let json = serde_json::to_vec_pretty(value).expect("serialisable");
    iapt_assets::atomic::write_atomically(path, &json).map_err(|error| TrainError::Io { path: path.to_path_buf(), error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_steps_follow_burns_loop() {
        assert_eq!(schedule_steps_per_epoch(33, 16, 1), 3);
        assert_eq!(schedule_steps_per_epoch(32, 16, 1), 2);
        // Two devices: shares of 16 and 17 -> 3 rounds of 8; shares of 16 and 16 -> 2.
        assert_eq!(schedule_steps_per_epoch(33, 8, 2), 3);
        assert_eq!(schedule_steps_per_epoch(32, 8, 2), 2);
        assert_eq!(schedule_steps_per_epoch(3, 8, 4), 1);
    }
}
