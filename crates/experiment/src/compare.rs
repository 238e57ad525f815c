//! `iapt compare`: several tuners trained and evaluated on one task with the same data, seeds and
//! budget, then one table (markdown + JSON) of what each costs and reaches.
//!
//! Every (method, seed) run is an ordinary `iapt train` run in its own directory
//! (`<out_dir>/<method>/seed-<s>`), started as a child process: the peak memory it reports is its
//! own, a crash leaves the finished runs intact, and running `iapt compare` again reuses every
//! run that already wrote its results (and resumes an interrupted one from its checkpoint).
//!
//! With `lr_grid`, each method's learning rate is chosen on dev first: one run per grid value
//! with the first seed (`<out_dir>/<method>/lr-<lr>`), the best dev accuracy wins (ties: the
//! lower dev loss), and the seeds then run at that rate (the first seed's run is the search run
//! itself). The test split plays no part in the choice.

use crate::bench::GenerateBench;
use crate::bootstrap::{paired_difference, Interval, RESAMPLES};
use crate::plot::{Chart, Level, Panel, Series};
use crate::provenance::RunInputs;
use crate::results::{RunResults, RESULTS_FILE};
use crate::run_config::RunConfig;
use crate::runs::adapter_dir;
use anyhow::{anyhow, bail, Context, Result};
use iapt_model::LlamaConfig;
use iapt_tuners::human_count;
use iapt_tuners::TunerConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A comparison file: `[compare]`, the run config every method starts from (`[base]`, the
/// sections of `configs/defaults.toml`), and the methods (`[[methods]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareFile {
    #[serde(default)]
    compare: CompareSection,
    #[serde(default)]
    #[allow(dead_code)] // parsed only to check it (with line numbers); applied as a table
    base: RunConfig,
    methods: Vec<MethodEntry>,
}

/// `[compare]`: what is shared by every method.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareSection {
    /// A run config file (relative to this file) every method starts from; `[base]` then
    /// overrides its keys. Absent: the defaults plus `[base]`.
    pub base_config: Option<PathBuf>,
    /// Runs go to `<out_dir>/<method>/seed-<s>`, the tables to `<out_dir>/comparison.{md,json}`.
    pub out_dir: PathBuf,
    /// One run per method and seed (the tuner's initialisation and the data order).
    pub seeds: Vec<u64>,
    /// Size each method's main knob (IAPT bottleneck, prompt / prefix tokens, LoRA rank) so its
    /// trainable parameter count comes as close as possible to this; 0 = as configured.
    pub param_budget: usize,
    /// Decode throughput with each adapter, at batch 1: tokens generated per repeat; 0 = skip.
    pub decode_tokens: usize,
    pub decode_repeats: usize,
    /// Learning rates to choose each method's from on dev (empty: each method's configured
    /// rate). The grid replaces a method's own `train.learning_rate`.
    pub lr_grid: Vec<f64>,
}

impl Default for CompareSection {
    fn default() -> Self {
        Self {
            base_config: None,
            out_dir: PathBuf::from("runs/compare"),
            seeds: vec![0],
            param_budget: 0,
            decode_tokens: 16,
            decode_repeats: 2,
            lr_grid: Vec::new(),
        }
    }
}

/// `[[methods]]`: a name (its directory and table row), the `[methods.tuner]` section,
/// `sets`: overrides of the base config for this method only (e.g. its learning rate), and
/// `keep_size`: run the tuner at its configured size even when `compare.param_budget` is set
/// (e.g. prompt tuning at 32, 64 and 128 tokens beside methods sized to the budget).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodEntry {
    name: String,
    tuner: TunerConfig,
    #[serde(default)]
    sets: Vec<String>,
    #[serde(default)]
    keep_size: bool,
}

/// One planned run.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub method: String,
    pub seed: u64,
    pub config: RunConfig,
    /// A learning-rate search run (first seed, one grid value); `false` for the runs the table
    /// reports, whose learning rate is set once the search has chosen it.
    pub search: bool,
}

/// Read a comparison file and resolve every run's config (`cli_sets` override the base config
/// of every method). Errors name the file and line, or the method and key.
pub fn plan(path: &Path, cli_sets: &[String], out_dir: Option<&Path>, seeds: Option<&[u64]>) -> Result<(CompareSection, Vec<PlannedRun>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CompareFile = toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut table: toml::Table = text.parse().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut base = match &file.compare.base_config {
        Some(relative) => {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(relative);
            RunConfig::read_table(&base_path).map_err(|e| anyhow!("{}: compare.base_config: {e:#}", path.display()))?
        }
        None => toml::Table::new(),
    };
    if let Some(toml::Value::Table(overrides)) = table.remove("base") {
        merge(&mut base, overrides);
    }
    let mut compare = file.compare;
    if let Some(dir) = out_dir {
        compare.out_dir = dir.to_path_buf();
    }
    if let Some(seeds) = seeds {
        compare.seeds = seeds.to_vec();
    }
    if compare.seeds.is_empty() {
        bail!("{}: compare.seeds is empty", path.display());
    }
    if file.methods.is_empty() {
        bail!("{}: no [[methods]]", path.display());
    }
    if let Some(bad) = compare.lr_grid.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
        bail!("{}: compare.lr_grid: {bad} is not a positive learning rate", path.display());
    }
    for (i, method) in file.methods.iter().enumerate() {
        let valid = !method.name.is_empty() && method.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            bail!("{}: methods[{i}].name `{}`: use letters, digits, `-`, `_` or `.` (it names a directory)", path.display(), method.name);
        }
        if file.methods[..i].iter().any(|m| m.name == method.name) {
            bail!("{}: methods[{i}].name `{}` is used twice", path.display(), method.name);
        }
    }

    let mut backbone: Option<LlamaConfig> = None;
    let mut runs = Vec::new();
    for method in &file.methods {
        // The search runs first (first seed, each grid value), then one run per seed.
        let searched = compare.lr_grid.iter().map(|&lr| (compare.seeds[0], Some(lr)));
        for (s, (seed, lr)) in searched.chain(compare.seeds.iter().map(|&seed| (seed, None))).enumerate() {
            let mut run_table = base.clone();
            run_table.insert("tuner".into(), toml::Value::try_from(&method.tuner).expect("a tuner config is TOML"));
            let dir = match lr {
                Some(lr) => compare.out_dir.join(&method.name).join(format!("lr-{lr}")),
                None => compare.out_dir.join(&method.name).join(format!("seed-{seed}")),
            };
            let mut sets: Vec<String> = method.sets.iter().chain(cli_sets).cloned().collect();
            sets.extend(lr.map(|lr| format!("train.learning_rate={}", toml::Value::Float(lr))));
            sets.extend([
                format!("run.dir={}", toml::Value::String(dir.display().to_string())),
                format!("run.seed={seed}"),
                format!("train.seed={seed}"),
                "eval.dev=true".to_string(),
                // The backbone alone does not depend on the method or seed: measured once.
                format!("eval.zero_shot={}", runs.is_empty() && s == 0),
            ]);
            let mut config = RunConfig::from_table(run_table, &sets).map_err(|e| anyhow!("{}: method `{}`: {e:#}", path.display(), method.name))?;
            if compare.param_budget > 0 && !method.keep_size {
                if backbone.is_none() {
                    let model = crate::model_source::resolve_model(&config.model.name)?;
                    backbone = Some(iapt_model::read_checkpoint_config(&model)?);
                }
                config.tuner = size_to_budget(&config.tuner, backbone.as_ref().expect("just read"), compare.param_budget);
            }
            runs.push(PlannedRun { method: method.name.clone(), seed, config, search: lr.is_some() });
        }
    }
    Ok((compare, runs))
}

/// Write `overrides` into `table`, section by section (a key in both: the override wins).
fn merge(table: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (table.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge(inner, value),
            (_, value) => {
                table.insert(key, value);
            }
        }
    }
}

/// `config` with its main size knob set so that its trainable parameters come closest to `budget`.
pub fn size_to_budget(config: &TunerConfig, base: &LlamaConfig, budget: usize) -> TunerConfig {
    // Every kind's count grows with its size: binary-search the first size whose count reaches
    // the budget, then take it or the size below, whichever is closer.
    let params = |size: usize| config.with_size(size).num_params(base);
    let (mut low, mut high) = (1usize, MAX_SIZE);
    while low < high {
        let mid = (low + high) / 2;
        if params(mid) < budget {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    let best = if low > 1 && budget.abs_diff(params(low - 1)) <= budget.abs_diff(params(low)) { low - 1 } else { low };
    config.with_size(best)
}

/// Largest bottleneck / token count / rank `size_to_budget` considers.
const MAX_SIZE: usize = 4096;

/// Run every planned run not finished yet (each an `iapt train` child process of the `iapt`
/// executable `exe`), measure decode speed with its adapter, then write the comparison tables
/// and return the markdown one.
pub fn run(compare: &CompareSection, runs: &[PlannedRun], exe: &Path) -> Result<String> {
    std::fs::create_dir_all(&compare.out_dir).with_context(|| format!("creating {}", compare.out_dir.display()))?;
    let (search, reported): (Vec<PlannedRun>, Vec<PlannedRun>) = runs.iter().cloned().partition(|r| r.search);
    let total = runs.len();
    train_all(compare, &search, exe, 0, total)?;
    let chosen = choose_learning_rates(&search)?;
    let reported = at_chosen_learning_rates(reported, &search, &chosen);
    train_all(compare, &reported, exe, search.len(), total)?;
    let mut table = Comparison::collect(compare, &reported)?;
    // The backbone alone is measured by the very first run, a search run when there is a grid.
    for planned in &search {
        if table.zero_shot_accuracy.is_none() {
            table.zero_shot_accuracy = RunResults::read(&planned.config.run.dir)?.and_then(|r| r.zero_shot_accuracy);
        }
    }
    for row in &mut table.methods {
        row.lr_search = chosen.get(&row.method).map(|(_, trials)| trials.clone()).unwrap_or_default();
    }
    let markdown = table.markdown();
    write(&compare.out_dir.join("comparison.md"), markdown.as_bytes())?;
    write(&compare.out_dir.join("comparison.json"), serde_json::to_string_pretty(&table)?.as_bytes())?;
    accuracy_chart(std::slice::from_ref(&table)).write_png(&compare.out_dir.join(CHART_FILE))?;
    eprintln!("tables written to {}/comparison.{{md,json}}, the chart to {CHART_FILE}", compare.out_dir.display());
    Ok(markdown)
}

/// One learning rate tried on dev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrTrial {
    pub learning_rate: f64,
    pub dev_accuracy: Option<f64>,
    pub best_dev_loss: Option<f64>,
}

/// Per method: the chosen learning rate and every trial, from the finished search runs. The
/// best dev accuracy wins; ties go to the lower dev loss.
fn choose_learning_rates(search: &[PlannedRun]) -> Result<BTreeMap<String, (f64, Vec<LrTrial>)>> {
    let mut trials: BTreeMap<String, Vec<LrTrial>> = BTreeMap::new();
    for planned in search {
        let dir = &planned.config.run.dir;
        let results = RunResults::read(dir)?.ok_or_else(|| anyhow!("{}: no {RESULTS_FILE}", dir.display()))?;
        let trial = LrTrial { learning_rate: planned.config.train.learning_rate, dev_accuracy: results.dev_accuracy, best_dev_loss: results.best_dev_loss };
        trials.entry(planned.method.clone()).or_default().push(trial);
    }
    trials
        .into_iter()
        .map(|(method, trials)| {
            let key = |t: &LrTrial| (t.dev_accuracy.unwrap_or(f64::NEG_INFINITY), -t.best_dev_loss.unwrap_or(f64::INFINITY));
            let best = trials.iter().max_by(|a, b| key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)).expect("a method has trials");
            if best.dev_accuracy.is_none() {
                bail!("method `{method}`: the learning-rate search runs report no dev accuracy");
            }
            Ok((method, (best.learning_rate, trials)))
        })
        .collect()
}

/// The reported runs at their method's chosen learning rate; the first seed's run is the search
/// run that chose it (same config, same directory).
fn at_chosen_learning_rates(reported: Vec<PlannedRun>, search: &[PlannedRun], chosen: &BTreeMap<String, (f64, Vec<LrTrial>)>) -> Vec<PlannedRun> {
    reported
        .into_iter()
        .map(|mut planned| {
            if let Some(&(lr, _)) = chosen.get(&planned.method) {
                planned.config.train.learning_rate = lr;
                let same = search.iter().find(|s| s.method == planned.method && s.seed == planned.seed && s.config.train.learning_rate == lr);
                if let Some(same) = same {
                    planned.config = same.config.clone();
                }
            }
            planned
        })
        .collect()
}

/// Train (or reuse) every run in `runs` and measure decode speed with its adapter; `offset` and
/// `total` number them in the progress lines.
fn train_all(compare: &CompareSection, runs: &[PlannedRun], exe: &Path, offset: usize, total: usize) -> Result<()> {
    for (i, planned) in runs.iter().enumerate() {
        let dir = &planned.config.run.dir;
        let what = if planned.search { format!("lr {} (search)", planned.config.train.learning_rate) } else { format!("seed {}", planned.seed) };
        let label = format!("[{}/{total}] {} {what}", offset + i + 1, planned.method);
        // A run started with other settings names them (and is never mixed into this table).
        planned.config.check_run_dir(dir).with_context(|| format!("{label}: change compare.out_dir (--out-dir) or remove the run"))?;
        if dir.join(RESULTS_FILE).is_file() {
            // The same settings can name other examples (a task whose definition changed, an
            // edited data file): such a run is refused, not mixed into the table.
            RunInputs::of_config(&planned.config)?.check(dir).with_context(|| format!("{label}: change compare.out_dir (--out-dir) or remove the run"))?;
            eprintln!("{label}: finished earlier ({})", dir.display());
        } else {
            eprintln!("{label}: training in {}", dir.display());
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let config_path = planned.config.save(dir)?;
            // The child's JSON summary goes to stderr, so stdout carries only the final table.
            let status = Command::new(exe).arg("train").arg("--config").arg(&config_path).stdout(Stdio::from(std::io::stderr())).status()?;
            if !status.success() {
                bail!("{label}: `iapt train --config {}` failed ({status})", config_path.display());
            }
        }
        let decode_path = dir.join(DECODE_FILE);
        if compare.decode_tokens > 0 && !planned.search && !decode_path.is_file() {
            let config = &planned.config;
            let output = Command::new(exe)
                .args(["bench", "generate", "--json", "--batch", "1", "--prompt-tokens", "64"])
                .args(["--model", &config.model.name, "--backend", config.model.backend.name()])
                .args(["--new-tokens", &compare.decode_tokens.to_string(), "--repeats", &compare.decode_repeats.to_string()])
                .arg("--adapter")
                .arg(adapter_dir(dir)?)
                .stderr(Stdio::inherit())
                .output()?;
            if !output.status.success() {
                bail!("{label}: the decode benchmark failed ({})", output.status);
            }
            write(&decode_path, &output.stdout)?;
        }
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    iapt_assets::atomic::write_atomically(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The decode benchmark's output, inside a run directory.
const DECODE_FILE: &str = "decode.json";

/// Mean and sample standard deviation (0 for one value).
fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Some((mean, var.sqrt()))
}

/// Mean, sample standard deviation and count of one number over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    /// Over the values that exist; `None` when none does.
    fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Self> {
        let values: Vec<f64> = values.into_iter().flatten().collect();
        mean_std(&values).map(|(mean, std)| Self { mean, std, n: values.len() })
    }
}

/// One (method, seed) run's numbers in the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRow {
    pub seed: u64,
    pub tuner: String,
    pub trainable_params: usize,
    pub dev_accuracy: Option<f64>,
    pub test_accuracy: f64,
    pub seconds_per_batch: f64,
    pub peak_rss_bytes: Option<u64>,
    pub decode_tokens_per_s: Option<f64>,
    pub decode_speed_vs_bare: Option<f64>,
    /// The tuner as run (`kind` and every set field).
    pub tuner_config: TunerConfig,
}

/// One method over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    pub method: String,
    pub tuner: String,
    pub trainable_params: usize,
    pub dev_accuracy: Option<Stat>,
    pub test_accuracy: Option<Stat>,
    pub seconds_per_batch: Option<Stat>,
    /// The largest over seeds.
    pub peak_rss_bytes: Option<u64>,
    pub decode_tokens_per_s: Option<Stat>,
    pub decode_speed_vs_bare: Option<Stat>,
    /// Test accuracy minus the reference method's (the first one), on the test examples both
    /// were scored on, each example's correctness averaged over seeds: the mean difference and a
    /// paired bootstrap 95% interval. `None` for the reference itself.
    pub test_minus_reference: Option<Interval>,
    /// The learning rate the seeds ran at (the first run's).
    pub learning_rate: f64,
    /// The learning rates tried on dev, when `lr_grid` chose it.
    pub lr_search: Vec<LrTrial>,
    pub runs: Vec<SeedRow>,
}

/// The comparison table (`comparison.json`); [`Comparison::markdown`] renders it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub task: Option<String>,
    pub split: Option<String>,
    pub seeds: Vec<u64>,
    pub param_budget: usize,
    pub zero_shot_accuracy: Option<f64>,
    pub majority_accuracy: Option<f64>,
    pub methods: Vec<MethodRow>,
}

impl Comparison {
    fn collect(compare: &CompareSection, runs: &[PlannedRun]) -> Result<Self> {
        let mut methods: Vec<&str> = runs.iter().map(|r| r.method.as_str()).collect();
        methods.dedup();
        let mut table = Comparison {
            task: None,
            split: None,
            seeds: compare.seeds.clone(),
            param_budget: compare.param_budget,
            zero_shot_accuracy: None,
            majority_accuracy: None,
            methods: Vec::new(),
        };
        // Per method: each test example's correctness, averaged over the seeds that scored it.
        let mut correctness: Vec<BTreeMap<String, f64>> = Vec::new();
        for method in methods {
            let mut per_seed = Vec::new();
            let mut scored: BTreeMap<String, (f64, usize)> = BTreeMap::new();
            for planned in runs.iter().filter(|r| r.method == method) {
                let dir = &planned.config.run.dir;
                let results = RunResults::read(dir)?.ok_or_else(|| anyhow!("{}: no {RESULTS_FILE}", dir.display()))?;
                table.zero_shot_accuracy = table.zero_shot_accuracy.or(results.zero_shot_accuracy);
                table.majority_accuracy = table.majority_accuracy.or(results.majority_accuracy);
                table.task.get_or_insert_with(|| results.task.clone());
                table.split.get_or_insert_with(|| results.split.clone());
                for (id, correct) in read_correctness(&dir.join(format!("eval-{}-{}.predictions.jsonl", results.task, results.split)))? {
                    let entry = scored.entry(id).or_default();
                    entry.0 += correct as u8 as f64;
                    entry.1 += 1;
                }
                let decode = read_decode(&dir.join(DECODE_FILE))?;
                let row = decode.as_ref().and_then(|d| d.results.first());
                per_seed.push(SeedRow {
                    seed: planned.seed,
                    trainable_params: results.trainable_params,
                    dev_accuracy: results.dev_accuracy,
                    test_accuracy: results.tuned_accuracy,
                    seconds_per_batch: results.seconds_per_batch,
                    peak_rss_bytes: results.peak_rss_bytes,
                    // The benchmark names its models `bare` and the adapter's tuner kind.
                    decode_tokens_per_s: row.and_then(|r| r.models.get(&results.tuner)).map(|s| s.decode_tokens_per_s),
                    decode_speed_vs_bare: row.and_then(|r| r.tuned_decode_speed_vs_bare),
                    tuner_config: planned.config.tuner.clone(),
                    tuner: results.tuner,
                });
            }
            table.methods.push(MethodRow {
                method: method.to_string(),
                tuner: per_seed[0].tuner.clone(),
                trainable_params: per_seed[0].trainable_params,
                dev_accuracy: Stat::of(per_seed.iter().map(|r| r.dev_accuracy)),
                test_accuracy: Stat::of(per_seed.iter().map(|r| Some(r.test_accuracy))),
                seconds_per_batch: Stat::of(per_seed.iter().map(|r| Some(r.seconds_per_batch))),
                peak_rss_bytes: per_seed.iter().filter_map(|r| r.peak_rss_bytes).max(),
                decode_tokens_per_s: Stat::of(per_seed.iter().map(|r| r.decode_tokens_per_s)),
                decode_speed_vs_bare: Stat::of(per_seed.iter().map(|r| r.decode_speed_vs_bare)),
                test_minus_reference: None,
                learning_rate: runs.iter().find(|r| r.method == method).map_or(f64::NAN, |r| r.config.train.learning_rate),
                lr_search: Vec::new(),
                runs: per_seed,
            });
            correctness.push(scored.into_iter().map(|(id, (sum, n))| (id, sum / n as f64)).collect());
        }
        for (row, interval) in table.methods.iter_mut().zip(differences_to_first(&correctness)) {
            row.test_minus_reference = interval;
        }
        Ok(table)
    }

    /// The table for people: one row per method, mean ± std over seeds.
    pub fn markdown(&self) -> String {
        let pct = |v: &Option<Stat>| match v {
            Some(Stat { mean, std, n }) if *n > 1 => format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * std),
            Some(Stat { mean, .. }) => format!("{:.1}", 100.0 * mean),
            None => "–".into(),
        };
        let num = |v: &Option<Stat>, digits: usize| v.map_or("–".into(), |s| format!("{:.digits$}", s.mean));
        let mut out = format!(
            "Task `{}`, evaluated on split `{}`, seeds {:?}{}.\n\n",
            self.task.as_deref().unwrap_or("?"),
            self.split.as_deref().unwrap_or("?"),
            self.seeds,
            match self.param_budget {
                0 => String::new(),
                b => format!(", each method sized to about {} trainable parameters", human_count(b)),
            }
        );
        let reference = self.methods.first().map_or("", |m| m.method.as_str());
        let delta = |v: &Option<Interval>| match v {
            Some(i) => format!("{:+.1} [{:+.1}, {:+.1}]", 100.0 * i.mean, 100.0 * i.low, 100.0 * i.high),
            None => "–".into(),
        };
        out.push_str(&format!(
            "| method | tuner | trainable params | lr | dev acc % | test acc % | test − {reference} (95% CI) | s / batch | peak RSS | decode tok/s (b1) | decode vs bare |\n"
        ));
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for row in &self.methods {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row.method,
                row.tuner,
                human_count(row.trainable_params),
                row.learning_rate,
                pct(&row.dev_accuracy),
                pct(&row.test_accuracy),
                delta(&row.test_minus_reference),
                num(&row.seconds_per_batch, 2),
                row.peak_rss_bytes.map_or("–".into(), |b| format!("{:.2} GB", b as f64 / 1e9)),
                num(&row.decode_tokens_per_s, 1),
                num(&row.decode_speed_vs_bare, 3),
            ));
        }
        let percent = |v: Option<f64>| v.map_or("–".into(), |a| format!("{:.1}%", 100.0 * a));
        out.push_str(&format!(
            "\nZero-shot (backbone alone): {}; majority class: {}. Mean ± sample std over seeds. The difference to {reference} is in \
             points on the test examples both scored (each example's correctness averaged over seeds), with a paired bootstrap \
             95% interval ({RESAMPLES} resamples of the examples).\n",
            percent(self.zero_shot_accuracy),
            percent(self.majority_accuracy)
        ));
        for row in self.methods.iter().filter(|r| !r.lr_search.is_empty()) {
            let trials: Vec<String> = row.lr_search.iter().map(|t| format!("{}: {}", t.learning_rate, percent(t.dev_accuracy))).collect();
            out.push_str(&format!("\n{}: learning rate chosen on dev (first seed) from {}.", row.method, trials.join(", ")));
        }
        if self.methods.iter().any(|r| !r.lr_search.is_empty()) {
            out.push('\n');
        }
        out
    }
}

/// The chart `iapt compare` writes beside its tables.
pub const CHART_FILE: &str = "accuracy-vs-params.png";

/// Test accuracy against trainable parameters: one panel per task, one line per method name
/// through its points in every table given (e.g. the same methods at two budgets), each point
/// the mean over seeds with a ± std bar; zero-shot and the majority class as dashed levels.
pub fn accuracy_chart(tables: &[Comparison]) -> Chart {
    let mut panels: Vec<Panel> = Vec::new();
    for table in tables {
        let title = table.task.clone().unwrap_or_else(|| "?".into());
        let at = match panels.iter().position(|p| p.title == title) {
            Some(at) => at,
            None => {
                panels.push(Panel { title, series: Vec::new(), levels: Vec::new() });
                panels.len() - 1
            }
        };
        let panel = &mut panels[at];
        for (label, value) in [("zero-shot", table.zero_shot_accuracy), ("majority class", table.majority_accuracy)] {
            if let (Some(y), false) = (value, panel.levels.iter().any(|l| l.label == label)) {
                panel.levels.push(Level { label: label.into(), y: 100.0 * y });
            }
        }
        for row in &table.methods {
            let Some(test) = row.test_accuracy else { continue };
            let series = match panel.series.iter().position(|s| s.label == row.method) {
                Some(i) => &mut panel.series[i],
                None => {
                    panel.series.push(Series { label: row.method.clone(), points: Vec::new(), spread: Vec::new() });
                    panel.series.last_mut().expect("just pushed")
                }
            };
            series.points.push((row.trainable_params as f64, 100.0 * test.mean));
            series.spread.push(100.0 * test.std);
        }
    }
    for series in panels.iter_mut().flat_map(|p| p.series.iter_mut()) {
        let mut pairs: Vec<((f64, f64), f64)> = series.points.drain(..).zip(series.spread.drain(..)).collect();
        pairs.sort_by(|a, b| a.0 .0.total_cmp(&b.0 .0));
        (series.points, series.spread) = pairs.into_iter().unzip();
    }
    let mut seeds: Vec<usize> = tables.iter().flat_map(|t| t.methods.iter().filter_map(|m| m.test_accuracy.map(|s| s.n))).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let seeds: Vec<String> = seeds.iter().map(|n| n.to_string()).collect();
    let split = tables.iter().find_map(|t| t.split.clone()).unwrap_or_else(|| "?".into());
    Chart {
        title: "Test accuracy against trainable parameters".into(),
        subtitle: format!("split `{split}`; each point the mean over {} seed(s), bars +- one std", seeds.join(" / ")),
        x_label: "trainable parameters".into(),
        y_label: "test accuracy %".into(),
        x_log2: true,
        panels,
    }
}

/// For every method after the first: its accuracy minus the first's over the examples both
/// scored (`correctness`: example id -> correctness averaged over seeds), with a paired
/// bootstrap 95% interval. `None` for the first.
fn differences_to_first(correctness: &[BTreeMap<String, f64>]) -> Vec<Option<Interval>> {
    let Some(reference) = correctness.first() else { return Vec::new() };
    let mut out = vec![None];
    for scored in &correctness[1..] {
        let (mine, theirs): (Vec<f64>, Vec<f64>) = scored.iter().filter_map(|(id, &c)| reference.get(id).map(|&r| (c, r))).unzip();
        out.push(paired_difference(&mine, &theirs, 0.95, RESAMPLES, 0));
    }
    out
}

/// Each example's id and whether it was answered correctly, from an evaluation's predictions file.
fn read_correctness(path: &Path) -> Result<Vec<(String, bool)>> {
    #[derive(Deserialize)]
    struct Line {
        id: String,
        correct: bool,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str::<Line>(line).map(|l| (l.id, l.correct)).map_err(|e| anyhow!("{}: line {}: {e}", path.display(), i + 1)))
        .collect()
}

/// The decode benchmark saved in a run directory, when it was run.
fn read_decode(path: &Path) -> Result<Option<GenerateBench>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).map(Some).map_err(|e| anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iapt_tuners::{IaptConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig};

    #[test]
    fn budget_sizing_lands_on_the_closest_count() {
        let base = LlamaConfig::smollm2_135m();
        for config in [
            TunerConfig::Iapt(IaptConfig::new(8)),
            TunerConfig::PromptTuning(PromptTuningConfig::new()),
            TunerConfig::PrefixTuning(PrefixTuningConfig::new()),
            TunerConfig::Lora(LoraConfig::new()),
        ] {
            let budget = 300_000;
            let sized = size_to_budget(&config, &base, budget);
            let count = sized.num_params(&base);
            // No other size of the same knob comes closer (every size tried).
            let best = (1..=MAX_SIZE).map(|s| config.with_size(s).num_params(&base).abs_diff(budget)).min().unwrap();
            assert!(count.abs_diff(budget) <= best, "{}: {count} vs budget {budget}", config.name());
            assert!(count.abs_diff(budget) * 5 < budget, "{}: {count} is far from {budget}", config.name());
        }
        // LoRA r on q,v of SmolLM2: r (576 + 576) + r (576 + 192) per layer, 30 layers.
        let lora = size_to_budget(&TunerConfig::Lora(LoraConfig::new()), &base, 30 * 1920 * 4);
        assert_eq!(lora, TunerConfig::Lora(LoraConfig::new().with_rank(4)));
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iapt-compare-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("compare.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn plans_one_run_per_method_and_seed_with_zero_shot_once() {
        let path = write(
            "plan",
            r#"
[compare]
out_dir = "out"
seeds = [3, 4]
[base.train]
epochs = 2
[[methods]]
name = "iapt"
tuner = { kind = "iapt", bottleneck = 16 }
[[methods]]
name = "lora"
tuner = { kind = "lora", rank = 2 }
sets = ["train.learning_rate=1e-3"]
"#,
        );
        let (compare, runs) = plan(&path, &["train.batch_size=2".into()], None, None).unwrap();
        assert_eq!(compare.seeds, vec![3, 4]);
        let summary: Vec<_> = runs.iter().map(|r| (r.method.as_str(), r.seed, r.config.tuner.name(), r.config.eval.zero_shot)).collect();
        assert_eq!(summary, [("iapt", 3, "iapt", true), ("iapt", 4, "iapt", false), ("lora", 3, "lora", false), ("lora", 4, "lora", false)]);
        for run in &runs {
            assert_eq!((run.config.train.epochs, run.config.train.batch_size, run.config.run.seed, run.config.train.seed), (2, 2, run.seed, run.seed));
            assert_eq!(run.config.run.dir, Path::new("out").join(&run.method).join(format!("seed-{}", run.seed)));
            assert!(run.config.eval.dev);
        }
        assert_eq!((runs[0].config.train.learning_rate, runs[2].config.train.learning_rate), (RunConfig::default().train.learning_rate, 1e-3));
    }

    #[test]
    fn base_config_file_then_base_section_then_method_sets() {
        let path = write("baseconf", "[compare]\nbase_config = \"run.toml\"\n[base.train]\nepochs = 3\n[[methods]]\nname = \"m\"\ntuner = { kind = \"prompt_tuning\" }\nsets = [\"train.batch_size=5\"]\n");
        std::fs::write(path.with_file_name("run.toml"), "[train]\nepochs = 2\nbatch_size = 3\nlearning_rate = 0.5\n[data]\nmax_len = 99\n").unwrap();
        let (_, runs) = plan(&path, &[], Some(Path::new("o")), Some(&[7])).unwrap();
        let c = &runs[0].config;
        assert_eq!((c.train.epochs, c.train.batch_size, c.train.learning_rate, c.data.max_len), (3, 5, 0.5, 99));
        assert_eq!((runs.len(), runs[0].seed, c.tuner.name()), (1, 7, "prompt_tuning"));
        assert_eq!(c.run.dir, Path::new("o/m/seed-7"));
        std::fs::write(path.with_file_name("run.toml"), "[train]\nepoks = 2\n").unwrap();
        let err = plan(&path, &[], None, None).unwrap_err().to_string();
        assert!(err.contains("run.toml") && err.contains("epoks"), "{err}");
    }

    #[test]
    fn every_shipped_comparison_plans() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut planned = 0;
        for entry in std::fs::read_dir(&configs).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("compare-") || name.starts_with("ablation-") || name.starts_with("paper-") {
                let (compare, runs) = plan(&path, &[], None, None).unwrap_or_else(|e| panic!("{name}: {e:#}"));
                let reported = runs.iter().filter(|r| !r.search).count();
                assert_eq!(reported % compare.seeds.len(), 0, "{name}");
                assert_eq!(runs.len() - reported, reported / compare.seeds.len() * compare.lr_grid.len(), "{name}: one search run per method and grid value");
                assert!(runs.iter().all(|r| r.config.run.dir.starts_with(&compare.out_dir)), "{name}");
                planned += 1;
            }
        }
        assert!(planned >= 9, "found {planned} comparison configs");
    }

    /// With a budget, every method is sized to it except those marked `keep_size`.
    #[test]
    fn keep_size_methods_stay_as_configured_beside_a_budget() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper-tokens.toml");
        let (compare, runs) = plan(&path, &[], None, None).unwrap();
        let base = LlamaConfig::smollm2_135m();
        for run in runs.iter().filter(|r| r.seed == compare.seeds[0]) {
            let count = run.config.tuner.num_params(&base);
            match &run.config.tuner {
                TunerConfig::PromptTuning(pt) => assert_eq!(pt.num_tokens.to_string(), run.method.trim_start_matches("prompt_tuning-"), "{}", run.method),
                tuner => {
                    assert_eq!(tuner.name(), "iapt", "{}", run.method);
                    assert!(count.abs_diff(compare.param_budget) * 10 < compare.param_budget, "{}: {count} params", run.method);
                }
            }
        }
    }

    #[test]
    fn bad_comparison_files_are_named() {
        let err = plan(&write("unknown", "[compare]\nseed = [1]\n[[methods]]\nname = \"a\"\ntuner = {}\n"), &[], None, None).unwrap_err().to_string();
        assert!(err.contains("seed") && err.contains("line 2") && err.contains("compare.toml"), "{err}");
        let err =
            plan(&write("dup", "[[methods]]\nname = \"a\"\ntuner = {}\n[[methods]]\nname = \"a\"\ntuner = {}\n"), &[], None, None).unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");
        let err = plan(&write("slash", "[[methods]]\nname = \"a/b\"\ntuner = {}\n"), &[], None, None).unwrap_err().to_string();
        assert!(err.contains("a/b"), "{err}");
        let err = plan(&write("badtuner", "[[methods]]\nname = \"l\"\ntuner = { kind = \"lora\", rank = 0 }\n"), &[], None, None).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("tuner (lora): rank must be positive"), "{err}");
        let err = plan(&write("none", "[compare]\nseeds = [1]\n"), &[], None, None).unwrap_err().to_string();
        assert!(err.contains("methods"), "{err}");
    }

    /// The search runs come first, one per grid value at the first seed; the best dev accuracy
    /// (ties: the lower dev loss) sets every seed's rate, and the first seed reuses its search run.
    #[test]
    fn the_learning_rate_is_chosen_on_dev_and_the_first_seed_reuses_its_search_run() {
        let out = std::env::temp_dir().join(format!("iapt-compare-lr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let path = write("lrgrid", "[compare]\nseeds = [3, 4]\nlr_grid = [0.001, 0.01, 0.03]\n[[methods]]\nname = \"m\"\ntuner = { kind = \"prompt_tuning\" }\nsets = [\"train.learning_rate=0.5\"]\n");
        let (_, runs) = plan(&path, &[], Some(&out), None).unwrap();
        let summary: Vec<_> =
            runs.iter().map(|r| (r.search, r.seed, r.config.train.learning_rate, r.config.run.dir.strip_prefix(&out).unwrap().to_path_buf())).collect();
        assert_eq!(
            summary,
            vec![
                (true, 3, 0.001, PathBuf::from("m/lr-0.001")),
                (true, 3, 0.01, PathBuf::from("m/lr-0.01")),
                (true, 3, 0.03, PathBuf::from("m/lr-0.03")),
                (false, 3, 0.5, PathBuf::from("m/seed-3")),
                (false, 4, 0.5, PathBuf::from("m/seed-4")),
            ]
        );
        let (search, reported): (Vec<PlannedRun>, Vec<PlannedRun>) = runs.into_iter().partition(|r| r.search);
        // 0.01 and 0.03 tie on dev accuracy; 0.03 has the lower dev loss.
        for (planned, accuracy, loss) in search.iter().zip([0.70, 0.80, 0.80]).zip([1.0, 0.9, 0.8]).map(|((p, a), l)| (p, a, l)) {
            std::fs::create_dir_all(&planned.config.run.dir).unwrap();
            let results = serde_json::json!({
                "task": "t", "tuner": "prompt_tuning", "split": "test", "zero_shot_accuracy": null, "tuned_accuracy": 0.5,
                "dev_accuracy": accuracy, "majority_label": null, "majority_accuracy": null, "examples": 10, "trainable_params": 1,
                "total_params": 2, "epochs": 1, "best_epoch": 0, "best_dev_loss": loss, "stop": {"kind": "completed"},
                "train_seconds": 1.0, "train_batches": 1, "seconds_per_batch": 1.0, "train_tokens_per_second": null,
                "peak_rss_bytes": null, "backend": "ndarray"
            });
            std::fs::write(planned.config.run.dir.join(RESULTS_FILE), results.to_string()).unwrap();
        }
        let chosen = choose_learning_rates(&search).unwrap();
        let (lr, trials) = &chosen["m"];
        assert_eq!((*lr, trials.len(), trials[0].dev_accuracy), (0.03, 3, Some(0.70)));
        let reported = at_chosen_learning_rates(reported, &search, &chosen);
        assert_eq!(reported[0].config, search[2].config, "the first seed's run is the chosen search run");
        assert_eq!((reported[1].config.train.learning_rate, reported[1].config.run.dir.clone()), (0.03, out.join("m/seed-4")));
        std::fs::remove_dir_all(&out).unwrap();
        let err = plan(&write("badgrid", "[compare]\nlr_grid = [0.0]\n[[methods]]\nname = \"m\"\ntuner = { kind = \"lora\" }\n"), &[], None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("compare.lr_grid: 0 is not a positive learning rate"), "{err}");
    }

    /// The chart puts each method's points from every table on one line, ordered by parameter
    /// count, one panel per task, with the levels once per panel.
    #[test]
    fn the_accuracy_chart_joins_a_method_across_tables() {
        let row = |method: &str, params: usize, mean: f64, std: f64| MethodRow {
            method: method.into(),
            tuner: method.into(),
            trainable_params: params,
            dev_accuracy: None,
            test_accuracy: Some(Stat { mean, std, n: 3 }),
            seconds_per_batch: None,
            peak_rss_bytes: None,
            decode_tokens_per_s: None,
            decode_speed_vs_bare: None,
            test_minus_reference: None,
            learning_rate: 0.01,
            lr_search: vec![],
            runs: vec![],
        };
        let table = |task: &str, methods: Vec<MethodRow>| Comparison {
            task: Some(task.into()),
            split: Some("test".into()),
            seeds: vec![0, 1, 2],
            param_budget: 0,
            zero_shot_accuracy: Some(0.5),
            majority_accuracy: Some(0.52),
            methods,
        };
        let large = table("t", vec![row("iapt", 800_000, 0.85, 0.01), row("lora", 820_000, 0.86, 0.02)]);
        let small = table("t", vec![row("iapt", 80_000, 0.80, 0.015), row("lora", 81_000, 0.82, 0.0)]);
        let other = table("u", vec![row("iapt", 80_000, 0.6, 0.0)]);
        let chart = accuracy_chart(&[large, small, other]);
        assert_eq!(chart.panels.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(), ["t", "u"]);
        let t = &chart.panels[0];
        let iapt = &t.series[0];
        assert_eq!((iapt.label.as_str(), iapt.points.clone()), ("iapt", vec![(80_000.0, 80.0), (800_000.0, 85.0)]));
        assert!((iapt.spread[0] - 1.5).abs() < 1e-9 && (iapt.spread[1] - 1.0).abs() < 1e-9, "{:?}", iapt.spread);
        assert_eq!(t.series[1].points, vec![(81_000.0, 82.0), (820_000.0, 86.0)]);
        assert_eq!(t.levels.iter().map(|l| (l.label.as_str(), l.y)).collect::<Vec<_>>(), [("zero-shot", 50.0), ("majority class", 52.0)]);
        assert_eq!(chart.panels[1].series.len(), 1);
        assert!(chart.subtitle.contains("3 seed(s)"), "{}", chart.subtitle);
    }

    /// The difference to the first method is taken over the examples both scored, pairwise.
    #[test]
    fn differences_to_the_first_method_pair_the_examples() {
        let scores = |pairs: &[(&str, f64)]| pairs.iter().map(|(id, c)| (id.to_string(), *c)).collect::<BTreeMap<_, _>>();
        let first = scores(&[("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", 0.5)]);
        // Right where the first is wrong and vice versa on a, b; "e" was not scored by the first.
        let second = scores(&[("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", 0.5), ("e", 1.0)]);
        let same = first.clone();
        let out = differences_to_first(&[first, second, same]);
        assert_eq!(out[0], None);
        let second = out[1].unwrap();
        assert_eq!((second.pairs, second.mean), (4, 0.0));
        assert!(second.low < 0.0 && second.high > 0.0);
        let same = out[2].unwrap();
        assert_eq!((same.mean, same.low, same.high), (0.0, 0.0, 0.0));
        assert!(differences_to_first(&[]).is_empty());
    }

    #[test]
    fn statistics_and_table() {
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[0.5]), Some((0.5, 0.0)));
        let (m, s) = mean_std(&[0.6, 0.8]).unwrap();
        assert!((m - 0.7).abs() < 1e-12 && (s - 0.02f64.sqrt()).abs() < 1e-12);
        let stat = |mean, std, n| Some(Stat { mean, std, n });
        let table = Comparison {
            task: Some("t".into()),
            split: Some("test".into()),
            seeds: vec![0, 1],
            param_budget: 0,
            zero_shot_accuracy: Some(0.5),
            majority_accuracy: Some(0.6),
            methods: vec![MethodRow {
                method: "iapt".into(),
                tuner: "iapt".into(),
                trainable_params: 74668,
                dev_accuracy: stat(0.7, 0.1, 2),
                test_accuracy: stat(0.75, 0.0, 1),
                seconds_per_batch: stat(4.0, 0.0, 2),
                peak_rss_bytes: Some(2_000_000_000),
                decode_tokens_per_s: None,
                decode_speed_vs_bare: None,
                test_minus_reference: None,
                learning_rate: 0.005,
                lr_search: vec![],
                runs: vec![],
            }],
        };
        let mut table = table;
        let mut lora = table.methods[0].clone();
        lora.method = "lora".into();
        lora.test_minus_reference = Some(Interval { mean: -0.012, low: -0.031, high: 0.008, level: 0.95, pairs: 300 });
        table.methods.push(lora);
        let md = table.markdown();
        assert!(md.contains("| test − iapt (95% CI) |"), "{md}");
        assert!(md.contains("| iapt | iapt | 74.67K | 0.005 | 70.0 ± 10.0 | 75.0 | – | 4.00 | 2.00 GB | – | – |"), "{md}");
        assert!(md.contains("| lora | iapt | 74.67K | 0.005 | 70.0 ± 10.0 | 75.0 | -1.2 [-3.1, +0.8] | 4.00 |"), "{md}");
        assert!(md.contains("Zero-shot (backbone alone): 50.0%; majority class: 60.0%"), "{md}");
    }
}
