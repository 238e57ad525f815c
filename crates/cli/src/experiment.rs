//! `iapt train` and `iapt eval`: a task's data prepared for a model, zero-shot evaluation, IAPT
//! training through burn-train, the adapter saved, and the tuned model evaluated — every
//! number written into the run directory.

use crate::evaluate::{evaluate, save_report, EvalReport, EvalRequest};
use crate::run_config::{DataSection, EvalMethod, RunConfig, RESOLVED_CONFIG};
use anyhow::{anyhow, bail, Context, Result};
use burn::backend::Autodiff;
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use iapt_data::{EncodeConfig, EncodedExample, Encoder, Split, TaskSpec};
use iapt_model::{Llama, ModelHook, NoHook, Tokenizer};
use iapt_train::{LmExample, TunedLm};
use iapt_tuners::ParamCount;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the adapter goes inside a run directory.
pub const ADAPTER_DIR: &str = "adapter";
/// The summary of a finished `iapt train`, inside its run directory.
pub const RESULTS_FILE: &str = "results.json";

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
    let mut spec = if iapt_data::builtin_task(&data.task).is_none() && path.is_file() {
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

fn lm_examples(examples: &[EncodedExample]) -> Result<Vec<LmExample>> {
    examples
        .iter()
        .map(|e| LmExample::new(e.ids.clone(), e.prompt_len).map(|x| x.with_class(e.answer.label())).map_err(|why| anyhow!("example {}: {why}", e.id)))
        .collect()
}

/// Evaluate and save `<stem>.json` (+ predictions) into `dir`, printing the summary.
#[allow(clippy::too_many_arguments)]
fn evaluate_and_save<B: Backend>(
    model: &Llama<B>,
    hook: &dyn ModelHook<B>,
    tokenizer: &Tokenizer,
    task: &PreparedTask,
    config: &RunConfig,
    split: Split,
    adapter: Option<String>,
    dir: &Path,
    stem: &str,
) -> Result<EvalReport> {
    let request = eval_request(config, task, split, adapter);
    let examples = limit(task.split(split), config);
    let report = evaluate(model, hook, tokenizer, examples, request)?;
    save_report(&report, dir, stem)?;
    eprintln!("{}", report.summary());
    Ok(report)
}

/// The accuracy saved in `<dir>/<stem>.json` by an earlier evaluation, if there is one.
fn saved_accuracy(dir: &Path, stem: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(format!("{stem}.json"))).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?.get("accuracy")?.as_f64()
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes; `None` where unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `iapt train`: zero-shot eval (optional), train, save the adapter, evaluate the tuned model.
pub fn train<B: Backend>(config: &RunConfig, model_path: &Path, device: B::Device, devices: Vec<B::Device>) -> Result<()> {
    let run_dir = config.run.dir.clone();
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let saved = config.save(&run_dir)?;
    eprintln!("run directory {} (resolved config: {})", run_dir.display(), saved.display());

    let tokenizer = iapt_model::tokenizer::load_tokenizer(model_path)?;
    let split = config.eval.split;
    let mut splits = vec![Split::Train, Split::Dev, split];
    splits.dedup();
    let task = prepare_task(&config.data, &tokenizer, &splits)?;
    eprintln!(
        "task {}: train {} / dev {} / {} {} examples",
        task.spec.name,
        task.train.len(),
        task.dev.len(),
        split.name(),
        task.split(split).len()
    );
    let backbone = iapt_model::load_llama::<Autodiff<B>>(model_path, &device)?;
    let base = backbone.config().clone();

    let zero_shot_stem = format!("zero_shot-{}-{}", task.spec.name, split.name());
    let zero_shot = match (config.eval.zero_shot, saved_accuracy(&run_dir, &zero_shot_stem)) {
        (false, _) => None,
        (true, Some(accuracy)) => {
            eprintln!("zero-shot accuracy {:.1}% (from {zero_shot_stem}.json of an earlier session)", 100.0 * accuracy);
            Some(accuracy)
        }
        (true, None) => {
            let report = evaluate_and_save(&backbone.valid(), &NoHook, &tokenizer, &task, config, split, None, &run_dir, &zero_shot_stem)?;
            Some(report.accuracy)
        }
    };

    let tuner_config = config.tuner.config()?;
    <Autodiff<B> as Backend>::seed(&device, config.run.seed);
    let tuner = tuner_config.init_from_backbone(&backbone);
    let count = ParamCount::new(tuner.num_params(), base.num_params());
    eprintln!("tuner {}: {count}", tuner_config.name());

    let train_examples = lm_examples(&task.train)?;
    let dev_examples = lm_examples(&task.dev)?;
    let train_tokens: usize = train_examples.iter().map(|e| e.ids.len()).sum();
    let start = Instant::now();
    let trained = iapt_train::train_on_devices(
        &config.train,
        TunedLm::new(backbone, tuner),
        InMemDataset::new(train_examples),
        InMemDataset::new(dev_examples),
        &run_dir,
        devices,
    )?;
    let train_seconds = start.elapsed().as_secs_f64();
    let report = &trained.report;
    if let Some(epoch) = report.resumed_from_epoch {
        eprintln!("resumed from the epoch {epoch} checkpoint in {}", run_dir.display());
    }
    let epochs_this_session = report.epochs.len() - report.resumed_from_epoch.unwrap_or(0);

    let adapter_dir = run_dir.join(ADAPTER_DIR);
    iapt_tuners::save_tuner(&adapter_dir, &trained.model.tuner, &config.model.name)?;
    eprintln!("adapter saved to {} (epoch {:?})", adapter_dir.display(), report.returned_epoch);

    let (backbone, tuner) = (&trained.model.backbone, &trained.model.tuner);
    let adapter = Some(adapter_dir.display().to_string());
    let eval_split = |split: Split| {
        let stem = format!("eval-{}-{}", task.spec.name, split.name());
        evaluate_and_save(backbone, tuner, &tokenizer, &task, config, split, adapter.clone(), &run_dir, &stem)
    };
    let dev = if config.eval.dev && split != Split::Dev && !task.dev.is_empty() { Some(eval_split(Split::Dev)?) } else { None };
    let tuned = eval_split(split)?;

    let results = json!({
        "task": task.spec.name,
        "tuner": tuner_config.name(),
        "split": split.name(),
        "zero_shot_accuracy": zero_shot,
        "tuned_accuracy": tuned.accuracy,
        "dev_accuracy": dev.as_ref().map(|r| r.accuracy),
        "majority_label": tuned.majority_label,
        "majority_accuracy": tuned.majority_accuracy,
        "examples": tuned.examples,
        "trainable_params": count.trainable,
        "total_params": count.total,
        "epochs": report.epochs.len(),
        "best_epoch": report.best_epoch,
        "best_dev_loss": report.best_dev_loss,
        "stop": report.stop,
        "train_seconds": train_seconds,
        "train_batches": report.batch_losses.len(),
        // Wall time of this session's training (per-epoch validation included) per batch.
        "seconds_per_batch": train_seconds / report.batch_losses.len().max(1) as f64,
        "train_tokens_per_second": (train_tokens * epochs_this_session) as f64 / train_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "backend": config.model.backend.name(),
    });
    iapt_tuners::adapter::write_atomically(&run_dir.join(RESULTS_FILE), serde_json::to_string_pretty(&results)?.as_bytes())?;
    println!("{}", serde_json::to_string_pretty(&results)?);
    Ok(())
}

/// The adapter directory `path` names: itself, or a run directory's `adapter/`.
pub fn adapter_dir(path: &Path) -> Result<PathBuf> {
    let dir = if path.join(ADAPTER_DIR).is_dir() { path.join(ADAPTER_DIR) } else { path.to_path_buf() };
    if !dir.join(iapt_tuners::adapter::CONFIG_FILE).is_file() {
        bail!("--adapter {}: neither an adapter directory nor a run directory with `{ADAPTER_DIR}/`", path.display());
    }
    Ok(dir)
}

/// What `iapt eval` was asked.
pub struct EvalArgs {
    pub adapter: Option<PathBuf>,
    pub task: Option<String>,
    pub split: Split,
    pub method: Option<EvalMethod>,
    pub json: bool,
}

/// The run config of a run directory, when `adapter` is one.
pub fn run_config_of(adapter: &Path) -> Option<PathBuf> {
    let path = adapter.join(RESOLVED_CONFIG);
    path.is_file().then_some(path)
}

/// `iapt eval`: accuracy of the backbone alone (no `--adapter`) or with an adapter (a run
/// directory or an adapter directory). Results go into the run directory when there is one.
pub fn eval<B: Backend>(config: &RunConfig, model_path: &Path, args: &EvalArgs, device: B::Device) -> Result<()> {
    let mut config = config.clone();
    if let Some(task) = &args.task {
        config.data.task = task.clone();
    }
    if let Some(method) = args.method {
        config.eval.method = method;
    }
    let tokenizer = iapt_model::tokenizer::load_tokenizer(model_path)?;
    let task = prepare_task(&config.data, &tokenizer, &[args.split])?;
    let backbone = iapt_model::load_llama::<B>(model_path, &device)?;
    let (report, out_dir) = match &args.adapter {
        None => {
            let request = eval_request(&config, &task, args.split, None);
            (evaluate(&backbone, &NoHook, &tokenizer, limit(task.split(args.split), &config), request)?, None)
        }
        Some(path) => {
            let adapter_dir = adapter_dir(path)?;
            let tuner = iapt_tuners::load_tuner::<B>(&adapter_dir, backbone.config(), &device)?;
            let request = eval_request(&config, &task, args.split, Some(adapter_dir.display().to_string()));
            let report = evaluate(&backbone, &tuner, &tokenizer, limit(task.split(args.split), &config), request)?;
            (report, run_config_of(path).map(|_| path.clone()))
        }
    };
    if let Some(dir) = out_dir {
        save_report(&report, &dir, &format!("eval-{}-{}", task.spec.name, args.split.name()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

fn limit<'a>(examples: &'a [EncodedExample], config: &RunConfig) -> &'a [EncodedExample] {
    match config.eval.max_examples {
        0 => examples,
        n => &examples[..n.min(examples.len())],
    }
}

fn eval_request<'a>(config: &RunConfig, task: &'a PreparedTask, split: Split, adapter: Option<String>) -> EvalRequest<'a> {
    EvalRequest {
        task: &task.spec.name,
        split: split.name(),
        method: config.eval.method,
        adapter,
        batch_size: config.eval.batch_size,
        max_new_tokens: config.eval.max_new_tokens,
    }
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
        assert_eq!((spec.name.as_str(), spec.system.as_deref()), ("multiemo", Some("")));
        let err = task_spec(&DataSection { task: "no_such_task".into(), ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("data.task") && err.contains("multiemo"), "{err}");
    }
}
