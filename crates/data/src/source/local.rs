//! Local data files: instruction JSONL, Alpaca JSON, chat JSONL, classification JSONL.

use super::{ClassTarget, Content, MatchRule, RawExample, Target, TextTarget};
use crate::error::{DataError, Place};
use crate::json;
use iapt_model::ChatMessage;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::path::Path;

/// JSONL `{"instruction", "input"?, "output"}` (`input` may be absent or empty).
pub fn read_instruction_jsonl(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let text = json::read_text(path)?;
    json::jsonl_objects(path, &text)?.into_iter().map(|(place, obj)| instruction_record(place, &obj)).collect()
}

/// Alpaca JSON: an array of instruction records.
pub fn read_alpaca(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let text = json::read_text(path)?;
    let items: Vec<&RawValue> = serde_json::from_str(&text).map_err(|e| json::parse_error(path, e))?;
    json::array_objects(path, &text, &items, "item")?.into_iter().map(|(place, obj)| instruction_record(place, &obj)).collect()
}

fn instruction_record(place: Place, obj: &Map<String, Value>) -> Result<RawExample, DataError> {
    let instruction = json::non_empty(obj, "instruction", &place, "instruction")?;
    let input = json::opt_string(obj, "input", &place)?.unwrap_or_default();
    let output = json::non_empty(obj, "output", &place, "response")?;
    Ok(RawExample {
        place,
        content: Content::Text { instruction: instruction.trim().to_string(), input: input.trim().to_string() },
        target: Target { class: None, text: Some(exact(output.trim().to_string())) },
    })
}

/// Chat JSONL: `{"messages": [{"role", "content"}, ...]}`. The last assistant message is the
/// response; the messages before it are the prompt (anything after it is ignored).
pub fn read_chat(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let text = json::read_text(path)?;
    json::jsonl_objects(path, &text)?
        .into_iter()
        .map(|(place, obj)| {
            let messages = match obj.get("messages") {
                Some(Value::Array(items)) => items,
                Some(other) => return Err(DataError::field(place, "messages", format!("expected an array, found {}", json::kind(other)))),
                None => return Err(DataError::field(place, "messages", "missing")),
            };
            let mut parsed = Vec::with_capacity(messages.len());
            for (i, m) in messages.iter().enumerate() {
                let field = |name: &str| format!("messages[{i}].{name}");
                let obj = m
                    .as_object()
                    .ok_or_else(|| DataError::field(place.clone(), &format!("messages[{i}]"), format!("expected an object, found {}", json::kind(m))))?;
                let get = |name: &str| match obj.get(name) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(other) => Err(DataError::field(place.clone(), &field(name), format!("expected a string, found {}", json::kind(other)))),
                    None => Err(DataError::field(place.clone(), &field(name), "missing")),
                };
                parsed.push(ChatMessage::new(get("role")?, get("content")?));
            }
            let last = parsed
                .iter()
                .rposition(|m| m.role == "assistant")
                .ok_or_else(|| DataError::field(place.clone(), "messages", "no assistant message (the response)"))?;
            if last == 0 {
                return Err(DataError::field(place, "messages", "nothing before the assistant response"));
            }
            let response = parsed[last].content.trim().to_string();
            if response.is_empty() {
                return Err(DataError::field(place, &format!("messages[{last}].content"), "empty response"));
            }
            parsed.truncate(last);
            Ok(RawExample { place, content: Content::Chat(parsed), target: Target { class: None, text: Some(exact(response)) } })
        })
        .collect()
}

/// Classification JSONL: `{"text", "label"}`, `label` a name from `labels` or an index into it.
pub fn read_classification(path: &Path, labels: Option<&[String]>) -> Result<Vec<RawExample>, DataError> {
    let labels = labels.ok_or_else(|| DataError::Spec {
        task: format!("classification:{}", path.display()),
        reason: "classification sources need the task's `labels` list".into(),
    })?;
    let text = json::read_text(path)?;
    let known = || labels.join(", ");
    json::jsonl_objects(path, &text)?
        .into_iter()
        .map(|(place, obj)| {
            let input = json::non_empty(&obj, "text", &place, "text")?;
            let label = match obj.get("label") {
                Some(Value::String(s)) => {
                    if !labels.contains(s) {
                        return Err(DataError::UnknownLabel { place, field: "label".into(), label: s.clone(), known: known() });
                    }
                    s.clone()
                }
                Some(Value::Number(n)) => match n.as_u64().and_then(|i| labels.get(i as usize)) {
                    Some(l) => l.clone(),
                    None => return Err(DataError::UnknownLabel { place, field: "label".into(), label: n.to_string(), known: known() }),
                },
                Some(other) => return Err(DataError::field(place, "label", format!("expected a label name or index, found {}", json::kind(other)))),
                None => return Err(DataError::field(place, "label", "missing")),
            };
            Ok(RawExample {
                place,
                content: Content::Text { instruction: String::new(), input: input.trim().to_string() },
                target: Target { class: Some(ClassTarget { label, choices: None, answers: None }), text: None },
            })
        })
        .collect()
}

fn exact(response: String) -> TextTarget {
    TextTarget { references: vec![response.clone()], response, rule: MatchRule::Exact }
}
