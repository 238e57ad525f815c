//! BIG-bench tasks, read straight out of the `bigbench==1.0.0` sdist.
//!
//! The 358 MB archive is streamed (never unpacked) the first time a task is asked for; the task's
//! `task.json` is then kept at `<home>/data/bigbench/<task>[/<subtask>]/task.json`, so later runs
//! read a small file. Every task missing from the cache is extracted in the same single pass.
//!
//! Format: `{"task_prefix"?, "examples": [{"input", "target_scores"?: {label: score}, "target"?: str | [str]}]}`.
//! `target_scores` makes a classification example (the answer is the one key with the highest
//! score, which must be positive); `target` a generation example (the first string is the
//! reference response; all are accepted answers).

use super::{ClassTarget, Content, MatchRule, RawExample, Target, TextTarget};
use crate::error::{DataError, Place};
use crate::json;
use crate::store;
use iapt_assets::{BIGBENCH_PACKAGE, BIGBENCH_TASKS_PREFIX};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a task's `task.json` is cached under `home`.
pub fn cached_task_path(home: &Path, task: &str) -> PathBuf {
    let mut p = home.join("data").join("bigbench");
    for part in task.split('/') {
        p.push(part);
    }
    p.join("task.json")
}

/// The sdist member holding a task's `task.json`.
pub fn archive_member(task: &str) -> String {
    format!("{BIGBENCH_TASKS_PREFIX}{task}/task.json")
}

/// Make sure every task in `tasks` has its `task.json` in the cache (downloading the sdist if
/// needed, then extracting all missing tasks in one pass over it); returns their cached paths.
pub fn fetch_tasks(home: &Path, tasks: &[&str]) -> Result<Vec<PathBuf>, DataError> {
    let paths: Vec<PathBuf> = tasks.iter().map(|t| cached_task_path(home, t)).collect();
    let missing: Vec<(String, &PathBuf)> = tasks.iter().zip(&paths).filter(|(_, p)| !p.is_file()).map(|(t, p)| (archive_member(t), p)).collect();
    if missing.is_empty() {
        return Ok(paths);
    }
    let archive =
        iapt_assets::fetch_package_in(home, &BIGBENCH_PACKAGE).map_err(|e| DataError::asset(format!("BIG-bench package {}", BIGBENCH_PACKAGE.spec()), e))?;
    let members = iapt_assets::read_tar_gz_members(&archive, |name| missing.iter().any(|(m, _)| m == name))
        .map_err(|e| DataError::asset("reading BIG-bench tasks", e))?;
    for (member, path) in &missing {
        let bytes = members.iter().find(|(name, _)| name == member).map(|(_, b)| b).ok_or_else(|| {
            DataError::asset(
                format!("BIG-bench task `{}`", member.trim_start_matches(BIGBENCH_TASKS_PREFIX).trim_end_matches("/task.json")),
                iapt_assets::AssetError::MissingMember { archive: archive.clone(), member: member.clone() },
            )
        })?;
        store::write_atomic(path, bytes)?;
    }
    Ok(paths)
}

/// Read a BIG-bench task (through the cache), optionally prefixing inputs with its `task_prefix`.
pub fn read_task(home: &Path, task: &str, use_task_prefix: bool) -> Result<Vec<RawExample>, DataError> {
    let path = fetch_tasks(home, &[task])?.remove(0);
    let text = json::read_text(&path)?;
    parse_task(&path, &text, use_task_prefix)
}

#[derive(Deserialize)]
struct TaskFile<'a> {
    #[serde(default)]
    task_prefix: Option<String>,
    #[serde(borrow, default)]
    examples: Option<Vec<&'a RawValue>>,
}

/// Parse a `task.json` held in `text` (read from `path`, which errors name).
pub fn parse_task(path: &Path, text: &str, use_task_prefix: bool) -> Result<Vec<RawExample>, DataError> {
    let file: TaskFile<'_> = serde_json::from_str(text).map_err(|e| json::parse_error(path, e))?;
    let items =
        file.examples.ok_or_else(|| DataError::field(Place::file(path), "examples", "missing (a task with subtasks is named `bigbench:<task>/<subtask>`)"))?;
    let prefix = file.task_prefix.filter(|p| use_task_prefix && !p.trim().is_empty());
    json::array_objects(path, text, &items, "examples")?
        .into_iter()
        .map(|(place, obj)| {
            let input = json::string(&obj, "input", &place)?;
            let input = match &prefix {
                Some(p) => format!("{}\n{}", p.trim_end(), input.trim()),
                None => input.trim().to_string(),
            };
            let class = target_scores(&obj, &place)?;
            let text = target_texts(&obj, &place)?.map(|refs| TextTarget { response: refs[0].clone(), references: refs, rule: MatchRule::Exact });
            if class.is_none() && text.is_none() {
                return Err(DataError::field(place, "target_scores/target", "missing (an example needs one of them)"));
            }
            Ok(RawExample { place, content: Content::Text { instruction: String::new(), input }, target: Target { class, text } })
        })
        .collect()
}

fn target_scores(obj: &Map<String, Value>, place: &Place) -> Result<Option<ClassTarget>, DataError> {
    let scores = match obj.get("target_scores") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(DataError::field(place.clone(), "target_scores", format!("expected an object, found {}", json::kind(other)))),
    };
    let mut sorted = BTreeMap::new();
    for (label, score) in scores {
        let s = score
            .as_f64()
            .ok_or_else(|| DataError::field(place.clone(), &format!("target_scores.{label}"), format!("expected a number, found {}", json::kind(score))))?;
        sorted.insert(label.clone(), s);
    }
    let best = sorted.values().cloned().fold(f64::NEG_INFINITY, f64::max);
    let winners: Vec<&String> = sorted.iter().filter(|(_, &s)| s == best).map(|(l, _)| l).collect();
    if winners.len() != 1 || best <= 0.0 {
        return Err(DataError::field(place.clone(), "target_scores", format!("no single correct answer (best score {best} held by {} labels)", winners.len())));
    }
    Ok(Some(ClassTarget { label: winners[0].clone(), choices: Some(sorted.into_keys().collect()), answers: None }))
}

fn target_texts(obj: &Map<String, Value>, place: &Place) -> Result<Option<Vec<String>>, DataError> {
    let texts: Vec<String> = match obj.get("target") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![s.trim().to_string()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| DataError::field(place.clone(), &format!("target[{i}]"), format!("expected a string, found {}", json::kind(v))))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(DataError::field(place.clone(), "target", format!("expected a string or a list of strings, found {}", json::kind(other)))),
    };
    if texts.first().is_none_or(|t| t.is_empty()) {
        return Err(DataError::field(place.clone(), "target", "empty response"));
    }
    Ok(Some(texts))
}
