//! Training of a tuner on a frozen LLaMA backbone, on burn-train 0.21.
//!
//! Data path: [`LmExample`]s (a burn `Dataset`) → [`LmBatch`] ([`LmBatcher`]) → [`TunedLm`]
//! (frozen backbone + tuner, response-only next-token loss) → burn-train's `SupervisedTraining`
//! with [`GroupedAdamW`](optim::GroupedAdamW) and [`WarmupLinearDecay`] → tuner-only checkpoints
//! per epoch → [`TrainReport`]. Start at `train`.
//!
//! A tuner plugs in by implementing burn's `Module` (its parameters are what is trained), the
//! model crate's `ModelHook` (how it changes the forward pass) and `TrainableTuner` (which of
//! its parameters get the small learning rate).

#![warn(missing_docs)]

mod batch;
pub mod checkpoint;
mod config;
pub mod interrupt;
pub mod loader;
pub mod metric;
mod metric_log;
mod model;
mod monitor;
pub mod optim;
mod progress;
mod schedule;
pub mod stopping;
mod train;

pub use batch::{LmBatch, LmBatcher, LmExample};
pub use config::{TrainConfig, PRESENTATION_FIELDS};
pub use model::{response_logits, LmOutput, TunedLm};
pub use monitor::{EpochLosses, StepMonitor};
pub use progress::Dashboard;
pub use schedule::WarmupLinearDecay;
#[cfg(feature = "ddp")]
pub use train::train_ddp;
pub use train::{train, train_on_devices, StopReason, TrainError, TrainReport, Trained};
