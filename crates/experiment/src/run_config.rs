//! The configuration of `iapt train` / `iapt eval`: one TOML file with the sections `[model]`,
//! `[tuner]`, `[data]`, `[train]`, `[eval]` and `[run]`. Every key is optional; its default and
//! meaning are written out in `configs/defaults.toml` (a test keeps that file equal to
//! [`RunConfig::default`]). `--set section.key=value` overrides any key after the file is read,
//! and the fully resolved config (tuner defaults filled in) is saved as `<run dir>/config.toml`.

use anyhow::{anyhow, bail, Context, Result};
use iapt_data::{Split, Truncation};
use iapt_train::TrainConfig;
use iapt_tuners::TunerConfig;
use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};

/// The compute backends a run can use; GPU ones need the `iapt` binary's cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// CPU, pure Rust, ndarray-based: the reference CPU backend the tests run on.
    Ndarray,
    /// CPU, pure Rust, burn's `gemm`-based backend.
    Flex,
    /// Vulkan/Metal/DX12 through wgpu (cargo feature `wgpu`).
    Wgpu,
    /// NVIDIA CUDA (cargo feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// The name `--backend` and configs use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ndarray => "ndarray",
            Self::Flex => "flex",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The type the frozen backbone's matrices are stored in (`--dtype`). Half precision halves the
/// backbone's memory on the GPU backends; activations, norms, softmax, the KV cache, the tuners
/// and the optimiser state stay f32 whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    #[default]
    F32,
    /// Half precision (CUDA; wgpu on adapters with f16 shaders).
    F16,
    /// bfloat16 (CUDA).
    Bf16,
}

impl WeightDtype {
    /// burn's float type for it.
    pub fn float(self) -> burn::tensor::FloatDType {
        match self {
            Self::F32 => burn::tensor::FloatDType::F32,
            Self::F16 => burn::tensor::FloatDType::F16,
            Self::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }
}

/// Name of the resolved config inside a run directory.
pub const RESOLVED_CONFIG: &str = "config.toml";

/// A whole run: what to train, on what, how, and how to evaluate it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    /// `[tuner]`: `kind` (`iapt`, `prompt_tuning`, `p_tuning_v2`, `lora`) plus that tuner's own
    /// hyper-parameters; absent ones take the tuner's defaults, unknown ones are errors.
    pub tuner: TunerConfig,
    pub data: DataSection,
    pub train: TrainConfig,
    pub eval: EvalSection,
    pub run: RunSection,
}

/// `[model]`: the frozen backbone and where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A known model name (fetched on first use) or a GGUF file / HF directory.
    pub name: String,
    /// Compute backend (`--backend` overrides it).
    pub backend: BackendKind,
    /// Devices to train on in parallel (burn-train's multi-device strategy).
    pub devices: usize,
    /// The type of the frozen backbone's matrices: `f32`, or `f16` / `bf16` on the GPU
    /// backends (`--dtype` overrides it).
    pub dtype: WeightDtype,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { name: "smollm2".into(), backend: BackendKind::Ndarray, devices: 1, dtype: WeightDtype::F32 }
    }
}

/// `[data]`: the task and how its examples become token sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// A built-in task name (`rotten_tomatoes`, `boolq`, `siqa`, `piqa`, `gsm8k`, and the BIG-bench
    /// ones, see `iapt_data::BUILTIN_TASKS`) or a task file (`.json`/`.toml` holding a task spec).
    pub task: String,
    /// Replace the task's system message. `""` keeps chat prompts short with templates that
    /// otherwise insert a long default system message (SmolLM2's). Absent: the task's own.
    pub system: Option<String>,
    /// Longest example (prompt + response + EOS), in tokens.
    pub max_len: usize,
    /// Longer examples: `drop` them or `truncate_left` their prompt.
    pub truncation: Truncation,
    /// Train on at most this many examples (the first ones of the seeded split); 0 = all.
    pub max_train_examples: usize,
    /// Validate on at most this many dev examples; 0 = all.
    pub max_dev_examples: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self { task: "rotten_tomatoes".into(), system: None, max_len: 256, truncation: Truncation::Drop, max_train_examples: 0, max_dev_examples: 0 }
    }
}

/// How answers are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EvalMethod {
    /// `rank` for classification tasks, `generate` for generation tasks.
    Auto,
    /// Pick the choice whose response (verbalised label + EOS) has the highest log-likelihood.
    Rank,
    /// Greedy generation, then exact match (GSM8K: the final number).
    Generate,
}

impl EvalMethod {
    /// The name configs and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Rank => "rank",
            Self::Generate => "generate",
        }
    }
}

/// `[eval]`: what is measured after training (and before it, zero-shot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// The split reported after training.
    pub split: Split,
    pub method: EvalMethod,
    /// Sequences per forward pass.
    pub batch_size: usize,
    /// Generation budget per answer (`generate` method).
    pub max_new_tokens: usize,
    /// Also evaluate the bare backbone (no tuner) first, so the gain is visible.
    pub zero_shot: bool,
    /// After training, also report the tuned accuracy on the dev split (as `iapt compare` does).
    pub dev: bool,
    /// Evaluate at most this many examples; 0 = all.
    pub max_examples: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self { split: Split::Test, method: EvalMethod::Auto, batch_size: 16, max_new_tokens: 256, zero_shot: true, dev: false, max_examples: 0 }
    }
}

/// `[run]`: where results go and the tuner's initialisation seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// Checkpoints, logs, the adapter and the results go here (`--run-dir` overrides it).
    pub dir: PathBuf,
    /// Seed of the tuner's parameter initialisation.
    pub seed: u64,
}

impl Default for RunSection {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/iapt"), seed: 0 }
    }
}

impl RunConfig {
    /// Read `path` (if any), apply the `--set key=value` overrides in order, fill in the tuner's
    /// defaults and check every value. Errors name the file, line and key, or the `--set` key.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<Self> {
        let table = match path {
            Some(path) => Self::read_table(path)?,
            None => toml::Table::new(),
        };
        Self::from_table(table, sets)
    }

    /// A run config file as a TOML table, checked against the config's keys and types first
    /// (that error carries the file, line and key).
    pub fn read_table(path: &Path) -> Result<toml::Table> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str::<RunConfig>(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        text.parse::<toml::Table>().map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// [`RunConfig::load`] for a config already read into a TOML table.
    pub fn from_table(mut table: toml::Table, sets: &[String]) -> Result<Self> {
        for set in sets {
            let (key, value) = set.split_once('=').ok_or_else(|| anyhow!("--set {set}: expected key=value"))?;
            apply_override(&mut table, key.trim(), value.trim()).map_err(|e| anyhow!("--set {set}: {e}"))?;
            // Check after each override so the error names the key that broke it.
            toml::Value::Table(table.clone()).try_into::<RunConfig>().map_err(|e| anyhow!("--set {set}: {}", e.message()))?;
        }
        let config: RunConfig = toml::Value::Table(table).try_into().map_err(|e| anyhow!("{}", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// Values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        self.train.validate().map_err(|e| anyhow!("train: {e}"))?;
        if self.model.devices == 0 {
            bail!("model.devices must be at least 1");
        }
        if self.model.devices > 1 && self.model.backend == BackendKind::Wgpu {
            // burn 0.21 cannot copy a tensor between two wgpu devices (README, "GPU backends"):
            // refused here, before wgpu is asked for devices the machine may not have.
            bail!("model.devices = {}: training on several wgpu devices is not possible with burn 0.21 (it cannot copy tensors between wgpu devices); use 1, or cuda or a CPU backend for several", self.model.devices);
        }
        if self.data.max_len < 2 {
            bail!("data.max_len must be at least 2");
        }
        if self.eval.batch_size == 0 {
            bail!("eval.batch_size must be at least 1");
        }
        Ok(())
    }

    /// The resolved config as TOML (what `<run dir>/config.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config serialises to TOML")
    }

    /// The dotted keys whose values differ between `self` and `other` (a key present in only one
    /// counts), sorted.
    pub fn differences(&self, other: &RunConfig) -> Vec<String> {
        fn walk(a: &toml::Table, b: &toml::Table, prefix: &str, out: &mut Vec<String>) {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let name = format!("{prefix}{key}");
                match (a.get(key), b.get(key)) {
                    (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => walk(x, y, &format!("{name}."), out),
                    (x, y) if x != y => out.push(name),
                    _ => {}
                }
            }
        }
        let table = |c: &RunConfig| c.to_toml().parse::<toml::Table>().expect("a run config is TOML");
        let mut out = Vec::new();
        walk(&table(self), &table(other), "", &mut out);
        out
    }

    /// Refuse to reuse a run directory that holds another run: when `dir/config.toml` exists (an
    /// earlier session, finished or not), every key that shapes what is trained and measured must
    /// be the same; only where it runs (`run.dir`, `model.backend`, `model.devices`) and how it
    /// is shown or kept (iapt-train's `PRESENTATION_FIELDS`) may change. Checked before anything
    /// is written into `dir`.
    pub fn check_run_dir(&self, dir: &Path) -> Result<()> {
        let path = dir.join(RESOLVED_CONFIG);
        if !path.is_file() {
            return Ok(());
        }
        let previous = RunConfig::load(Some(&path), &[]).with_context(|| format!("{}: the run directory's config", path.display()))?;
        let free = |key: &str| {
            ["run.dir", "model.backend", "model.devices"].contains(&key)
                || key.strip_prefix("train.").is_some_and(|f| iapt_train::PRESENTATION_FIELDS.contains(&f))
        };
        let changed: Vec<String> = self.differences(&previous).into_iter().filter(|k| !free(k)).collect();
        if !changed.is_empty() {
            bail!(
                "{}: this run directory holds a run with other settings ({} differ); use another run.dir (--run-dir) or remove the directory (to evaluate a finished run differently: iapt eval --adapter DIR)",
                dir.display(),
                changed.join(", ")
            );
        }
        Ok(())
    }

    /// Write the resolved config into `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join(RESOLVED_CONFIG);
        iapt_assets::atomic::write_atomically(&path, self.to_toml().as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Set `a.b.c = value` in `table`. The value is read as TOML (`1e-3`, `true`, `"x"`,
/// `[1, 2]`); anything that is not a TOML value is taken as a bare string (`task=strategyqa`).
fn apply_override(table: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("`{key}` is not a dotted key like train.learning_rate");
    }
    let value = format!("v = {value}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = parts.split_last().expect("at least one part");
    let mut slot = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = slot.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        slot = entry.as_table_mut().ok_or_else(|| anyhow!("`{}` is not a section", parts[..=i].join(".")))?;
    }
    slot.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several devices: fine on the CPU backends, refused up front on wgpu (burn 0.21 cannot copy
    /// between wgpu devices), naming the key.
    #[test]
    fn several_wgpu_devices_are_refused_before_any_device_is_asked_for() {
        let mut config = RunConfig::default();
        config.model.devices = 2;
        assert!(config.validate().is_ok());
        config.model.backend = BackendKind::Wgpu;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("model.devices = 2: training on several wgpu devices is not possible"), "{err}");
        config.model.devices = 1;
        assert!(config.validate().is_ok());
    }

    fn load(text: &str, sets: &[&str]) -> Result<RunConfig> {
        // One file per call: tests run on parallel threads, and two that shared a file could read
        // each other's half-written text.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("iapt-run-config-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let config = RunConfig::load(Some(&path), &sets);
        std::fs::remove_dir_all(&dir).unwrap();
        config
    }

    #[test]
    fn documented_defaults_file_equals_the_code_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/defaults.toml");
        let config = RunConfig::load(Some(&path), &[]).unwrap();
        assert_eq!(config, RunConfig::default());
        // ...and every key of the resolved config is written out in it (documented).
        let documented = std::fs::read_to_string(&path).unwrap().parse::<toml::Table>().unwrap();
        let resolved = RunConfig::default().to_toml().parse::<toml::Table>().unwrap();
        assert_eq!(keys(&documented, ""), keys(&resolved, ""));
    }

    fn keys(table: &toml::Table, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in table {
            let name = format!("{prefix}{k}");
            match v.as_table() {
                Some(t) => out.extend(keys(t, &format!("{name}."))),
                None => out.push(name),
            }
        }
        out.sort();
        out
    }

    #[test]
    fn overrides_apply_in_order_and_round_trip() {
        let config = load(
            "[train]\nepochs = 2\n[tuner]\nbottleneck = 16\n",
            &["train.learning_rate=1e-3", "data.task=strategyqa", "tuner.pooler=\"mean\"", "data.system=", "train.epochs=3"],
        )
        .unwrap();
        assert_eq!((config.train.epochs, config.train.learning_rate), (3, 1e-3));
        assert_eq!(config.data.task, "strategyqa");
        assert_eq!(config.data.system.as_deref(), Some(""));
        let iapt = match config.tuner.clone() {
            TunerConfig::Iapt(iapt) => iapt,
            other => panic!("expected IAPT, got {other:?}"),
        };
        assert_eq!((iapt.bottleneck, iapt.pooler), (16, iapt_tuners::PoolerKind::Mean));
        let back: RunConfig = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn patience_and_clipping_switch_off_in_a_file_and_with_set() {
        let config = load("[train]\npatience = \"off\"\n", &["train.max_grad_norm=off"]).unwrap();
        assert_eq!((config.train.patience, config.train.max_grad_norm), (None, None));
        // The resolved config.toml says so, and reads back the same (not as the defaults).
        let text = config.to_toml();
        assert!(text.contains("patience = \"off\"") && text.contains("max_grad_norm = \"off\""), "{text}");
        assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), config);
        let err = load("[train]\npatience = \"never\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("patience") && err.contains("\"off\"") && err.contains("line 2"), "{err}");
        let err = load("", &["train.patience=0"]).unwrap_err().to_string();
        assert!(err.contains("patience") && err.contains("\"off\""), "{err}");
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = load("[train]\nepochs = 2\nlearnin_rate = 1\n", &[]).unwrap_err().to_string();
        assert!(err.contains("learnin_rate") && err.contains("line 3") && err.contains("c.toml"), "{err}");
        let err = load("", &["train.learnin_rate=1"]).unwrap_err().to_string();
        assert!(err.contains("learnin_rate"), "{err}");
        let err = load("", &["train.epochs=many"]).unwrap_err().to_string();
        assert!(err.contains("train.epochs=many"), "{err}");
        let err = load("", &["tuner.poolr=mean"]).unwrap_err().to_string();
        assert!(err.contains("poolr"), "{err}");
        let err = load("", &["tuner.pooler=sum"]).unwrap_err().to_string();
        assert!(err.contains("sum"), "{err}");
        let err = load("", &["train.learning_rate=-1"]).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let err = load("", &["epochs"]).unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
        let err = load("", &["tuner.kind=lora2"]).unwrap_err().to_string();
        assert!(err.contains("tuner.kind") && err.contains("lora2"), "{err}");
        // IAPT's defaults are not carried over to another kind: its keys are unknown there.
        let err = load("[tuner]\nkind = \"lora\"\nbottleneck = 8\n", &[]).unwrap_err().to_string();
        assert!(err.contains("bottleneck") && err.contains("lora"), "{err}");
        let err = load("[tuner]\nkind = \"lora\"\nrank = 0\n", &[]).unwrap_err().to_string();
        assert!(err.contains("rank"), "{err}");
    }

    #[test]
    fn a_run_directory_is_reused_only_with_the_same_settings() {
        let dir = std::env::temp_dir().join(format!("iapt-run-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = RunConfig::default();
        config.check_run_dir(&dir).unwrap(); // no directory yet
        std::fs::create_dir_all(&dir).unwrap();
        config.save(&dir).unwrap();
        config.check_run_dir(&dir).unwrap();
        // Where it runs may change...
        let moved = load("", &["model.backend=\"flex\"", "run.dir=\"elsewhere\"", "train.dashboard=\"off\""]).unwrap();
        moved.check_run_dir(&dir).unwrap();
        // ...what it trains or measures may not, and the saved config is left as it was.
        let before = std::fs::read_to_string(dir.join(RESOLVED_CONFIG)).unwrap();
        let other = load("", &["data.task=strategyqa", "tuner.bottleneck=8", "eval.max_examples=16"]).unwrap();
        let err = other.check_run_dir(&dir).unwrap_err().to_string();
        assert!(err.contains("data.task") && err.contains("tuner.bottleneck") && err.contains("eval.max_examples"), "{err}");
        assert!(!err.contains("model.backend"), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join(RESOLVED_CONFIG)).unwrap(), before);
        assert_eq!(other.differences(&other), Vec::<String>::new());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_tuner_kind_resolves_with_its_defaults() {
        for &kind in TunerConfig::KINDS {
            let config = load(&format!("[tuner]\nkind = \"{kind}\"\n"), &[]).unwrap();
            let tuner = config.tuner.clone();
            assert_eq!(tuner.name(), kind);
            // The resolved section writes every set option out, and reads back to the same tuner.
            let written = config.to_toml().parse::<toml::Table>().unwrap()["tuner"].as_table().unwrap().clone();
            let fields = tuner.to_json().as_object().unwrap().iter().filter(|(_, v)| !v.is_null()).count();
            assert_eq!((written["kind"].as_str(), written.len()), (Some(kind), fields + 1), "{written:?}");
            let back: RunConfig = toml::from_str(&config.to_toml()).unwrap();
            assert_eq!(back.tuner, tuner);
        }
        let lora = load("[tuner]\nkind = \"lora\"\nrank = 4\ntargets = [\"q\", \"up\"]\n", &[]).unwrap();
        match lora.tuner.clone() {
            TunerConfig::Lora(c) => assert_eq!((c.rank, c.alpha, c.targets.len()), (4, 16.0, 2)),
            other => panic!("expected LoRA, got {other:?}"),
        }
    }
}
