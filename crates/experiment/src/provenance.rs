//! What a run was made from, beyond its settings: the model file and the examples it trains and
//! is evaluated on. `config.toml` names the model and task; a file replaced at the same path
//! (another quantisation, an edited task file, a changed chat template or tokenizer) would keep
//! those names and silently mix two runs in one directory. `inputs.json` records a fingerprint
//! of each, and a run directory is reused only when they match.

use crate::run_config::RunConfig;
use crate::task::PreparedTask;
use anyhow::{bail, Context, Result};
use iapt_data::{EncodedExample, Split};
use iapt_model::LlamaConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// The file beside `config.toml` that holds a run's [`RunInputs`].
pub const INPUTS_FILE: &str = "inputs.json";

/// The splits a run of `config` trains and is evaluated on: train, dev, and `eval.split`.
pub fn run_splits(config: &RunConfig) -> Vec<Split> {
    let mut splits = vec![Split::Train, Split::Dev, config.eval.split];
    splits.dedup();
    splits
}

/// Fingerprints of a run's model and examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInputs {
    pub model: ModelIdentity,
    /// Every split the run uses, by name.
    pub splits: BTreeMap<String, SplitIdentity>,
}

/// A checkpoint, by its size on disk and its architecture. Hashing every weight would cost
/// seconds per run for SmolLM2 and minutes for a 7B model; a different file of the same
/// architecture and the very same byte count is not a mistake made by accident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub bytes: u64,
    /// sha256 of the architecture (the checkpoint's config as this project reads it).
    pub config_sha256: String,
}

/// A split's examples as the model sees them: ids, token ids and prompt lengths, so that a
/// changed source, template, tokenizer or length limit all show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitIdentity {
    pub examples: usize,
    pub sha256: String,
}

impl RunInputs {
    /// The fingerprints of `model_path` (a file or a HF directory) and of `task`'s `splits`.
    pub fn of(model_path: &Path, config: &LlamaConfig, task: &PreparedTask, splits: &[Split]) -> Result<Self> {
        let config_json = serde_json::to_vec(config).expect("a config serialises");
        let model = ModelIdentity { bytes: size_on_disk(model_path)?, config_sha256: hex(&Sha256::digest(&config_json)) };
        let splits = splits.iter().map(|&s| (s.name().to_string(), SplitIdentity::of(task.split(s)))).collect();
        Ok(Self { model, splits })
    }

    /// Refuse a run directory whose recorded inputs differ from these, naming what differs.
    /// A directory without `inputs.json` (new, or written by an older version) passes.
    pub fn check(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(INPUTS_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let saved: RunInputs = serde_json::from_str(&text).with_context(|| format!("{}: not a valid inputs file", path.display()))?;
        let mut differences = Vec::new();
        if saved.model.bytes != self.model.bytes {
            differences.push(format!("the model file ({} bytes then, {} now)", saved.model.bytes, self.model.bytes));
        }
        if saved.model.config_sha256 != self.model.config_sha256 {
            differences.push("the model's architecture".to_string());
        }
        for (name, split) in &self.splits {
            match saved.splits.get(name) {
                Some(before) if before == split => {}
                Some(before) => differences.push(format!(
                    "the {name} split ({} examples then, {} now{})",
                    before.examples,
                    split.examples,
                    if before.examples == split.examples { ", different contents" } else { "" }
                )),
                None => {}
            }
        }
        if !differences.is_empty() {
            bail!(
                "{}: this run was made from other inputs: {} differ from what {} records; \
                 remove the directory or choose another run.dir to start afresh",
                run_dir.display(),
                differences.join(", "),
                path.display()
            );
        }
        Ok(())
    }

    /// What `config` makes of its model and task now, as `iapt train` records it (the model's
    /// architecture from the checkpoint's header; no weight is read).
    pub fn of_config(config: &RunConfig) -> Result<Self> {
        let model_path = crate::model_source::resolve_model(&config.model.name)?;
        let tokenizer = iapt_model::load_tokenizer(&model_path)?;
        let splits = run_splits(config);
        let task = crate::task::prepare_task(&config.data, &tokenizer, &splits)?;
        let architecture = iapt_model::read_checkpoint_config(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
        Self::of(&model_path, &architecture, &task, &splits)
    }

    /// Write `run_dir/inputs.json` atomically.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let path = run_dir.join(INPUTS_FILE);
        let json = serde_json::to_vec_pretty(self).expect("inputs serialise");
        iapt_assets::atomic::write_atomically(&path, &json).with_context(|| format!("writing {}", path.display()))
    }
}

impl SplitIdentity {
    fn of(examples: &[EncodedExample]) -> Self {
        let mut hash = Sha256::new();
        for e in examples {
            hash.update(e.id.as_bytes());
            hash.update((e.prompt_len as u64).to_le_bytes());
            hash.update((e.ids.len() as u64).to_le_bytes());
            for id in &e.ids {
                hash.update(id.to_le_bytes());
            }
        }
        Self { examples: examples.len(), sha256: hex(&hash.finalize()) }
    }
}

/// A file's size, or the total size of the files in a directory (a HF checkpoint).
fn size_on_disk(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
        let meta = entry.with_context(|| format!("reading {}", path.display()))?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iapt_data::{Answer, TaskSpec};

    fn example(id: &str, ids: Vec<u32>) -> EncodedExample {
        EncodedExample {
            id: id.into(),
            prompt_len: ids.len() - 1,
            ids,
            truncated: 0,
            answer: Answer::Class { label: 0, names: vec!["a".into()], choices: vec!["A".into()] },
            choice_ids: vec![vec![9]],
        }
    }

    fn task(test: Vec<EncodedExample>) -> PreparedTask {
        let spec = TaskSpec::new("toy", iapt_data::Source::Classification("toy.jsonl".into()));
        PreparedTask { spec, train: vec![example("t", vec![1, 2, 3])], dev: Vec::new(), test }
    }

    #[test]
    fn a_run_directory_is_reused_only_with_the_same_model_file_and_examples() {
        let dir = std::env::temp_dir().join(format!("iapt-provenance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("model.gguf");
        std::fs::write(&model, [0u8; 100]).unwrap();
        let config = LlamaConfig::tiny();
        let splits = [Split::Train, Split::Dev, Split::Test];
        let inputs = RunInputs::of(&model, &config, &task(vec![example("a", vec![4, 5])]), &splits).unwrap();
        inputs.check(&dir).unwrap(); // nothing recorded yet
        inputs.save(&dir).unwrap();
        inputs.check(&dir).unwrap();
        assert_eq!(RunInputs::of(&model, &config, &task(vec![example("a", vec![4, 5])]), &splits).unwrap(), inputs);

        // Same names, other contents: a changed token (template, tokenizer), an added example.
        let retokenized = RunInputs::of(&model, &config, &task(vec![example("a", vec![4, 6])]), &splits).unwrap();
        let err = retokenized.check(&dir).unwrap_err().to_string();
        assert!(err.contains("the test split (1 examples then, 1 now, different contents)") && err.contains(INPUTS_FILE), "{err}");
        assert!(!err.contains("train") && !err.contains("model"), "{err}");
        let more = RunInputs::of(&model, &config, &task(vec![example("a", vec![4, 5]), example("b", vec![7, 8])]), &splits).unwrap();
        assert!(more.check(&dir).unwrap_err().to_string().contains("1 examples then, 2 now"));
        // Another file at the model's path, or another architecture.
        std::fs::write(&model, [0u8; 120]).unwrap();
        let replaced = RunInputs::of(&model, &config, &task(vec![example("a", vec![4, 5])]), &splits).unwrap();
        let err = replaced.check(&dir).unwrap_err().to_string();
        assert!(err.contains("the model file (100 bytes then, 120 now)") && err.contains("run.dir"), "{err}");
        std::fs::write(&model, [0u8; 100]).unwrap();
        let wider = LlamaConfig { hidden_size: 64, ..config };
        let err = RunInputs::of(&model, &wider, &task(vec![example("a", vec![4, 5])]), &splits).unwrap().check(&dir).unwrap_err().to_string();
        assert!(err.contains("architecture"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
