//! Datasets for iapt, read top to bottom:
//!
//! - [`source`]: where examples come from (`bigbench:<task>`, `gsm8k`, local JSONL/JSON files),
//!   read by [`bigbench`], [`gsm8k`] and [`local`];
//! - [`task`]: a task = source + template + answer format; label filter, dedupe, class balance,
//!   built-in tasks; [`split`]: seeded, machine-independent splits and their manifest;
//! - [`encode`]: prompt/response token ids with instruction and loss masks, truncation policy;
//! - [`batch`]: burn `Dataset`/`Batcher`s, length-bucketed batch order;
//! - [`report`] (`iapt data show`) and [`bench`] (`iapt bench data`);
//! - [`error`]: every failure names the file, line and field.

pub mod batch;
pub mod bench;
pub mod bigbench;
pub mod encode;
pub mod error;
pub mod gsm8k;
mod json;
pub mod local;
pub mod report;
pub mod source;
pub mod split;
pub mod store;
pub mod task;

pub use batch::{sorted_batches, BatchPlan, EncodedDataset, GenerationBatch, GenerationBatcher, TrainBatch, TrainBatcher};
pub use bench::{bench_encode, bench_prepared};
pub use encode::{EncodeConfig, EncodeStats, EncodedExample, Encoder, Encoding, Truncation};
pub use error::{DataError, Place};
pub use report::{show, show_task};
pub use source::{MatchRule, Source};
pub use split::{Split, SplitManifest, SplitSpec};
pub use task::{builtin_task, load_task, load_task_in, resolve_task, Answer, Example, TaskData, TaskKind, TaskSpec, BUILTIN_TASKS};
