//! A task's data made ready for one model: the task named by a config (built-in or a task
//! file), split, encoded with the model's tokenizer and chat template, and turned into
//! training examples.

use crate::run_config::DataSection;
use anyhow::{anyhow, bail, Context, Result};
use iapt_data::{EncodeConfig, EncodedExample, Encoder, Split, TaskSpec};
use iapt_model::Tokenizer;
use iapt_train::LmExample;
use std::path::Path;

/// A task encoded for one tokenizer.
pub struct PreparedTask {
    pub spec: TaskSpec,
    pub train: Vec<EncodedExample>,
    pub dev: Vec<EncodedExample>,
    pub test: Vec<EncodedExample>,
}

impl PreparedTask {
    pub fn split(&self, split: Split) -> &[EncodedExample] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
}

/// The task named by `data.task`: a built-in name, or a `.json`/`.toml` task spec file.
pub fn task_spec(data: &DataSection) -> Result<TaskSpec> {
    let path = Path::new(&data.task);
    let builtin = iapt_data::builtin_task(&data.task).is_some();
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !builtin && matches!(extension, "jsonl" | "jsonlines") {
        // `classification:reviews.jsonl` is how a task file's `source` names it, not a task.
        let file = data.task.split_once(':').map_or(data.task.as_str(), |(_, file)| file);
        bail!(
            "data.task = {}: a .{extension} file holds examples, not a task; write a task file (.toml or .json) whose `source` names it, e.g. `source = \"classification:{file}\"` (see examples/own_task/task.toml)",
            data.task,
        );
    }
    if !builtin && !path.is_file() && (matches!(extension, "toml" | "json") || data.task.contains('/')) {
        bail!("data.task = {}: no such task file", data.task);
    }
    let mut spec = if !builtin && path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parsed = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str::<TaskSpec>(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
        } else {
            serde_json::from_str::<TaskSpec>(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
        };
        parsed?
    } else {
        iapt_data::resolve_task(&data.task).map_err(|e| anyhow!("data.task: {e}"))?
    };
    if let Some(system) = &data.system {
        spec.system = Some(system.clone());
    }
    spec.validate()?;
    Ok(spec)
}

/// Load and split the task, and encode the `splits` asked for (the others stay empty);
/// report what was dropped or cut.
pub fn prepare_task(data: &DataSection, tokenizer: &Tokenizer, splits: &[Split]) -> Result<PreparedTask> {
    let spec = task_spec(data)?;
    let task = iapt_data::load_task(&spec)?;
    let encoder = Encoder::new(tokenizer, &spec, EncodeConfig { max_len: data.max_len, truncation: data.truncation, add_bos: false });
    let encode = |split: Split, limit: usize| -> Result<Vec<EncodedExample>> {
        if !splits.contains(&split) {
            return Ok(Vec::new());
        }
        let (mut examples, stats) = encoder.encode_all(task.split(split))?;
        if stats.dropped > 0 || stats.truncated > 0 {
            eprintln!(
                "{} {}: {} examples longer than data.max_len = {} were dropped, {} truncated",
                spec.name,
                split.name(),
                stats.dropped,
                data.max_len,
                stats.truncated
            );
        }
        if limit > 0 && examples.len() > limit {
            examples.truncate(limit);
        }
        Ok(examples)
    };
    let train = encode(Split::Train, data.max_train_examples)?;
    let dev = encode(Split::Dev, data.max_dev_examples)?;
    let test = encode(Split::Test, 0)?;
    Ok(PreparedTask { spec, train, dev, test })
}

pub fn lm_examples(examples: &[EncodedExample]) -> Result<Vec<LmExample>> {
    examples
        .iter()
        .map(|e| LmExample::new(e.ids.clone(), e.prompt_len).map(|x| x.with_class(e.answer.label())).map_err(|why| anyhow!("example {}: {why}", e.id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_task_example_loads_as_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let data = DataSection { task: root.join("examples/own_task/task.toml").display().to_string(), ..Default::default() };
        let mut spec = task_spec(&data).unwrap();
        assert_eq!(spec.name, "own_reviews");
        // The example's source path is relative to the repository root (where iapt is run).
        if let iapt_data::Source::Classification(path) = &mut spec.source {
            *path = root.join(&*path);
        } else {
            panic!("expected a classification source, got {:?}", spec.source);
        }
        let task = iapt_data::load_task(&spec).unwrap();
        assert_eq!(task.train.len() + task.dev.len() + task.test.len(), 20);
        assert!(!task.test.is_empty() && !task.dev.is_empty());
    }

    #[test]
    fn system_override_and_bad_task_names() {
        let spec = task_spec(&DataSection { system: Some(String::new()), ..Default::default() }).unwrap();
        assert_eq!((spec.name.as_str(), spec.system.as_deref()), ("rotten_tomatoes", Some("")));
        let err = task_spec(&DataSection { task: "no_such_task".into(), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("data.task") && err.contains("rotten_tomatoes"), "{err}");
        let err = task_spec(&DataSection { task: "tasks/missing.toml".into(), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("tasks/missing.toml") && err.contains("no such task file"), "{err}");
        let err = task_spec(&DataSection { task: "reviews.jsonl".into(), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("reviews.jsonl") && err.contains("classification:reviews.jsonl") && err.contains("task file"), "{err}");
    }
}
