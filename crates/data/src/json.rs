//! Reading JSON records while remembering where they came from, so errors can name the file,
//! line and field.

use crate::error::{DataError, Place};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::path::Path;

/// A JSON object with where it was found.
pub(crate) type Record = (Place, Map<String, Value>);

/// A file's text, or an `Io` error naming it.
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))
}

/// One JSON object per non-blank line: `(place, object)` in file order.
pub(crate) fn jsonl_objects(path: &Path, text: &str) -> Result<Vec<Record>, DataError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let place = Place::line(path, i + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| DataError::Json { place: place.clone(), reason: e.to_string() })?;
        match value {
            Value::Object(obj) => out.push((place, obj)),
            other => return Err(DataError::Json { place, reason: format!("expected a JSON object, found {}", kind(&other)) }),
        }
    }
    Ok(out)
}

/// The elements of a JSON array (raw slices of `text`), each as an object with a place
/// `"{label}[i] (line N)"` computed from its offset in `text`.
pub(crate) fn array_objects(path: &Path, text: &str, items: &[&RawValue], label: &str) -> Result<Vec<Record>, DataError> {
    let mut lines = LineCounter::new(text);
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let place = Place::at(path, format!("{label}[{i}] (line {})", lines.line_of(raw.get())));
            match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::Object(obj)) => Ok((place, obj)),
                Ok(other) => Err(DataError::Json { place, reason: format!("expected a JSON object, found {}", kind(&other)) }),
                Err(e) => Err(DataError::Json { place, reason: e.to_string() }),
            }
        })
        .collect()
}

/// Whole-file JSON parse error with the line and column serde reports.
pub(crate) fn parse_error(path: &Path, e: serde_json::Error) -> DataError {
    let place = if e.line() > 0 { Place::line(path, e.line()) } else { Place::file(path) };
    DataError::Json { place, reason: e.to_string() }
}

/// 1-based line numbers of subslices of one text, counted incrementally (array items come in
/// increasing offset order, so a whole file costs one pass).
struct LineCounter<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, offset: 0, line: 1 }
    }

    fn line_of(&mut self, inner: &str) -> usize {
        let at = (inner.as_ptr() as usize).saturating_sub(self.text.as_ptr() as usize).min(self.text.len());
        if at < self.offset {
            *self = Self::new(self.text);
        }
        self.line += self.text.as_bytes()[self.offset..at].iter().filter(|&&b| b == b'\n').count();
        self.offset = at;
        self.line
    }
}

/// A required string field.
pub(crate) fn string(obj: &Map<String, Value>, field: &str, place: &Place) -> Result<String, DataError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(DataError::field(place.clone(), field, format!("expected a string, found {}", kind(other)))),
        None => Err(DataError::field(place.clone(), field, "missing")),
    }
}

/// An optional string field (absent or null -> `None`).
pub(crate) fn opt_string(obj: &Map<String, Value>, field: &str, place: &Place) -> Result<Option<String>, DataError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(obj, field, place).map(Some),
    }
}

/// A required string field that must hold some non-whitespace text (responses, inputs).
pub(crate) fn non_empty(obj: &Map<String, Value>, field: &str, place: &Place, what: &str) -> Result<String, DataError> {
    let s = string(obj, field, place)?;
    if s.trim().is_empty() {
        return Err(DataError::field(place.clone(), field, format!("empty {what}")));
    }
    Ok(s)
}

/// A short name for a JSON value's type, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_items_know_their_lines() {
        let text = "[\n  {\"a\": 1},\n\n  {\"a\": 2}\n]";
        let items: Vec<&RawValue> = serde_json::from_str(text).unwrap();
        let objs = array_objects(Path::new("f.json"), text, &items, "item").unwrap();
        assert_eq!(objs[0].0.to_string(), "f.json: item[0] (line 2)");
        assert_eq!(objs[1].0.to_string(), "f.json: item[1] (line 4)");
    }
}
