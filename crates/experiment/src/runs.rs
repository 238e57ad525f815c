//! `iapt train` and `iapt eval` as library calls: zero-shot evaluation, training through
//! burn-train, the adapter saved, and the tuned model evaluated — every number written into the
//! run directory and returned as [`RunResults`].

use crate::evaluate::{evaluate, save_report, EvalReport, EvalRequest};
use crate::provenance::RunInputs;
use crate::results::{peak_rss_bytes, RunResults};
use crate::run_config::{EvalMethod, RunConfig, RESOLVED_CONFIG};
use crate::task::{lm_examples, prepare_task, PreparedTask};
use anyhow::{anyhow, bail, Context, Result};
use burn::backend::Autodiff;
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use iapt_data::{EncodedExample, Split};
use iapt_model::{Llama, ModelHook, NoHook, Tokenizer};
use iapt_train::{TrainReport, TunedLm};
use iapt_tuners::ParamCount;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the adapter goes inside a run directory.
pub const ADAPTER_DIR: &str = "adapter";

/// One evaluation of a run: which split, with which adapter (`None`: the bare backbone), and
/// where its report goes (`<dir>/<stem>.json` + predictions).
struct RunEval<'a> {
    task: &'a PreparedTask,
    config: &'a RunConfig,
    split: Split,
    adapter: Option<String>,
    dir: &'a Path,
    stem: String,
}

/// Evaluate as `what` says, save the report, and print its summary line to stderr.
fn evaluate_and_save<B: Backend>(model: &Llama<B>, hook: &dyn ModelHook<B>, tokenizer: &Tokenizer, what: RunEval<'_>) -> Result<EvalReport> {
    let request = eval_request(what.config, what.task, what.split, what.adapter);
    let report = evaluate(model, hook, tokenizer, limit(what.task.split(what.split), what.config), request)?;
    save_report(&report, what.dir, &what.stem)?;
    eprintln!("{}", report.summary());
    Ok(report)
}

/// The accuracy saved in `<dir>/<stem>.json` by an earlier evaluation, if there is one and it
/// was measured on `examples` examples (the same limit) by `method`.
fn saved_accuracy(dir: &Path, stem: &str, examples: usize, method: EvalMethod) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(format!("{stem}.json"))).ok()?;
    let saved = serde_json::from_str::<serde_json::Value>(&text).ok()?;
    let same = saved.get("examples")?.as_u64()? == examples as u64 && (method == EvalMethod::Auto || saved.get("method")?.as_str()? == method.name());
    same.then(|| saved.get("accuracy")?.as_f64()).flatten()
}

/// Refuse what would run past the model's context (`max_position_embeddings`): training
/// examples up to `data.max_len` tokens, and generated answers of `eval.max_new_tokens` after a
/// prompt of up to `data.max_len` tokens.
fn check_context(model: &iapt_model::LlamaConfig, data: &crate::run_config::DataSection, eval: &crate::run_config::EvalSection) -> Result<()> {
    let context = model.max_position_embeddings;
    if data.max_len > context {
        bail!("data.max_len = {} exceeds the model's context of {context} tokens (max_position_embeddings)", data.max_len);
    }
    if eval.method != EvalMethod::Rank && data.max_len + eval.max_new_tokens > context {
        bail!(
            "data.max_len + eval.max_new_tokens = {} exceeds the model's context of {context} tokens (max_position_embeddings)",
            data.max_len + eval.max_new_tokens
        );
    }
    Ok(())
}

/// `iapt train`: zero-shot eval (optional), train, save the adapter, evaluate the tuned model.
/// Progress goes to stderr; the results are written to the run directory and returned.
pub fn train<B: Backend>(config: &RunConfig, model_path: &Path, device: B::Device, devices: Vec<B::Device>) -> Result<RunResults> {
    let run_dir = config.run.dir.clone();
    config.check_run_dir(&run_dir)?;
    let tuner_config = config.tuner.clone();

    // Everything that can be refused is checked before the run directory is written to.
    let tokenizer = iapt_model::load_tokenizer(model_path)?;
    let split = config.eval.split;
    let splits = crate::provenance::run_splits(config);
    let task = prepare_task(&config.data, &tokenizer, &splits)?;
    eprintln!("task {}: train {} / dev {} / {} {} examples", task.spec.name, task.train.len(), task.dev.len(), split.name(), task.split(split).len());
    let backbone = iapt_model::load_llama_as::<Autodiff<B>>(model_path, &device, config.model.dtype.float())?;
    check_context(backbone.config(), &config.data, &config.eval)?;
    let inputs = RunInputs::of(model_path, backbone.config(), &task, &splits)?;
    inputs.check(&run_dir)?;
    <Autodiff<B> as Backend>::seed(&device, config.run.seed);
    let tuner = tuner_config.init_from_backbone(&backbone).map_err(|e| anyhow!("tuner ({}): {e}", tuner_config.name()))?;
    let train_examples = lm_examples(&task.train)?;
    let dev_examples = lm_examples(&task.dev)?;
    for (split, examples) in [("training", &train_examples), ("dev", &dev_examples)] {
        if examples.is_empty() {
            bail!("task {}: the {split} split is empty; training needs both (see the task's split fractions and data.max_*_examples)", task.spec.name);
        }
    }

    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let saved = config.save(&run_dir)?;
    inputs.save(&run_dir)?;
    eprintln!("run directory {} (resolved config: {})", run_dir.display(), saved.display());
    let zero_shot = zero_shot_accuracy(&backbone.valid(), &tokenizer, &task, config)?;
    let count = ParamCount::new(tuner.num_params(), backbone.config().num_params());
    eprintln!("tuner {}: {count}", tuner_config.name());
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

    let adapter_dir = run_dir.join(ADAPTER_DIR);
    iapt_tuners::save_tuner(&adapter_dir, &trained.model.tuner, &config.model.name)?;
    eprintln!("adapter saved to {} (epoch {:?})", adapter_dir.display(), report.returned_epoch);

    let (backbone, tuner) = (&trained.model.backbone, &trained.model.tuner);
    let adapter = Some(adapter_dir.display().to_string());
    let eval_split = |split: Split| {
        let stem = format!("eval-{}-{}", task.spec.name, split.name());
        evaluate_and_save(backbone, tuner, &tokenizer, RunEval { task: &task, config, split, adapter: adapter.clone(), dir: &run_dir, stem })
    };
    let dev = if config.eval.dev && split != Split::Dev && !task.dev.is_empty() { Some(eval_split(Split::Dev)?) } else { None };
    let tuned = eval_split(split)?;

    let results = RunResults {
        task: task.spec.name.clone(),
        tuner: tuner_config.name().to_string(),
        split: split.name().to_string(),
        zero_shot_accuracy: zero_shot,
        tuned_accuracy: tuned.accuracy,
        dev_accuracy: dev.as_ref().map(|r| r.accuracy),
        majority_label: tuned.majority_label.clone(),
        majority_accuracy: tuned.majority_accuracy,
        examples: tuned.examples,
        trainable_params: count.trainable,
        total_params: count.total,
        epochs: report.epochs.len(),
        best_epoch: report.best_epoch,
        best_dev_loss: report.best_dev_loss,
        stop: report.stop.clone(),
        train_seconds,
        train_batches: report.batch_losses.len(),
        seconds_per_batch: train_seconds / report.batch_losses.len().max(1) as f64,
        train_tokens_per_second: match epochs_this_session(report) {
            0 => None,
            epochs => Some((train_tokens * epochs) as f64 / train_seconds),
        },
        peak_rss_bytes: peak_rss_bytes(),
        backend: config.model.backend.name().to_string(),
    };
    results.write(&run_dir)?;
    Ok(results)
}

/// Epochs trained by this session (a resumed run skips the checkpointed ones).
fn epochs_this_session(report: &TrainReport) -> usize {
    report.epochs.len() - report.resumed_from_epoch.unwrap_or(0)
}

/// The backbone's accuracy before training, when `eval.zero_shot`: measured and saved, or read
/// back from an earlier session of the same run.
fn zero_shot_accuracy<B: Backend>(backbone: &Llama<B>, tokenizer: &Tokenizer, task: &PreparedTask, config: &RunConfig) -> Result<Option<f64>> {
    if !config.eval.zero_shot {
        return Ok(None);
    }
    let (dir, split) = (&config.run.dir, config.eval.split);
    let stem = format!("zero_shot-{}-{}", task.spec.name, split.name());
    let examples = limit(task.split(split), config).len();
    if let Some(accuracy) = saved_accuracy(dir, &stem, examples, config.eval.method) {
        eprintln!("zero-shot accuracy {:.1}% (from {stem}.json of an earlier session)", 100.0 * accuracy);
        return Ok(Some(accuracy));
    }
    let report = evaluate_and_save(backbone, &NoHook, tokenizer, RunEval { task, config, split, adapter: None, dir, stem })?;
    Ok(Some(report.accuracy))
}

/// The adapter directory `path` names: itself, or a run directory's `adapter/`.
pub fn adapter_dir(path: &Path) -> Result<PathBuf> {
    let dir = if path.join(ADAPTER_DIR).is_dir() { path.join(ADAPTER_DIR) } else { path.to_path_buf() };
    if !dir.join(iapt_tuners::CONFIG_FILE).is_file() {
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
}

/// The run config of a run directory, when `adapter` is one.
pub fn run_config_of(adapter: &Path) -> Option<PathBuf> {
    let path = adapter.join(RESOLVED_CONFIG);
    path.is_file().then_some(path)
}

/// `iapt eval`: accuracy of the backbone alone (no `adapter`) or with an adapter (a run
/// directory or an adapter directory). The report is also saved into the run directory when
/// there is one.
pub fn eval<B: Backend>(config: &RunConfig, model_path: &Path, args: &EvalArgs, device: B::Device) -> Result<EvalReport> {
    let mut config = config.clone();
    if let Some(task) = &args.task {
        config.data.task = task.clone();
    }
    if let Some(method) = args.method {
        config.eval.method = method;
    }
    let tokenizer = iapt_model::load_tokenizer(model_path)?;
    let task = prepare_task(&config.data, &tokenizer, &[args.split])?;
    let backbone = iapt_model::load_llama_as::<B>(model_path, &device, config.model.dtype.float())?;
    check_context(backbone.config(), &config.data, &config.eval)?;
    let examples = limit(task.split(args.split), &config);
    let Some(path) = &args.adapter else {
        return evaluate(&backbone, &NoHook, &tokenizer, examples, eval_request(&config, &task, args.split, None));
    };
    let adapter_dir = adapter_dir(path)?;
    let tuner = iapt_tuners::load_tuner::<B>(&adapter_dir, backbone.config(), &device)?;
    let request = eval_request(&config, &task, args.split, Some(adapter_dir.display().to_string()));
    let report = evaluate(&backbone, &tuner, &tokenizer, examples, request)?;
    if run_config_of(path).is_some() {
        save_report(&report, path, &format!("eval-{}-{}", task.spec.name, args.split.name()))?;
    }
    Ok(report)
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
    use crate::run_config::{DataSection, EvalSection};

    #[test]
    fn a_saved_zero_shot_result_is_reused_only_for_the_same_examples_and_method() {
        let dir = std::env::temp_dir().join(format!("iapt-saved-accuracy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(saved_accuracy(&dir, "zero", 8, EvalMethod::Rank), None, "nothing saved");
        std::fs::write(dir.join("zero.json"), r#"{"examples": 8, "method": "rank", "accuracy": 0.625}"#).unwrap();
        assert_eq!(saved_accuracy(&dir, "zero", 8, EvalMethod::Rank), Some(0.625));
        assert_eq!(saved_accuracy(&dir, "zero", 8, EvalMethod::Auto), Some(0.625), "auto accepts the method it resolved to");
        assert_eq!(saved_accuracy(&dir, "zero", 16, EvalMethod::Rank), None, "another example limit");
        assert_eq!(saved_accuracy(&dir, "zero", 8, EvalMethod::Generate), None, "another method");
        std::fs::write(dir.join("zero.json"), "{\"examples\": 8, ").unwrap();
        assert_eq!(saved_accuracy(&dir, "zero", 8, EvalMethod::Rank), None, "a damaged file is measured again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_past_the_context_are_refused_with_both_numbers() {
        let model = iapt_model::LlamaConfig::tiny(); // a context of 256 tokens
        let data = |max_len| DataSection { max_len, ..Default::default() };
        let eval = |method, max_new_tokens| EvalSection { method, max_new_tokens, ..Default::default() };
        check_context(&model, &data(256), &eval(EvalMethod::Rank, 1000)).unwrap();
        let err = check_context(&model, &data(300), &eval(EvalMethod::Rank, 0)).unwrap_err().to_string();
        assert!(err.contains("data.max_len = 300") && err.contains("256 tokens"), "{err}");
        // Generated answers follow the prompt: together they must fit.
        check_context(&model, &data(200), &eval(EvalMethod::Generate, 56)).unwrap();
        let err = check_context(&model, &data(200), &eval(EvalMethod::Generate, 57)).unwrap_err().to_string();
        assert!(err.contains("= 257") && err.contains("256 tokens"), "{err}");
        let err = check_context(&model, &data(200), &eval(EvalMethod::Auto, 100)).unwrap_err().to_string();
        assert!(err.contains("eval.max_new_tokens"), "{err}");
    }
}
