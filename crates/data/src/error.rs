//! What can go wrong turning a data source into batches. Every message names the file, the place
//! in it (line, or item/example index with its line) and the field involved.

use iapt_assets::AssetError;
use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a data file: `path`, plus `line 3` / `item 4 (line 17)` / `examples[12] (line 40)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub path: PathBuf,
    /// Where inside the file; empty for the file as a whole.
    pub at: String,
}

impl Place {
    pub fn file(path: &Path) -> Self {
        Self { path: path.to_path_buf(), at: String::new() }
    }
    pub fn line(path: &Path, line: usize) -> Self {
        Self { path: path.to_path_buf(), at: format!("line {line}") }
    }
    pub fn at(path: &Path, at: impl Into<String>) -> Self {
        Self { path: path.to_path_buf(), at: at.into() }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}", self.path.display())
        } else {
            write!(f, "{}: {}", self.path.display(), self.at)
        }
    }
}

/// Errors from reading sources, building tasks and encoding examples.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// Text that is not valid JSON (a JSONL line, a JSON file).
    #[error("{place}: malformed JSON: {reason}")]
    Json { place: Place, reason: String },
    /// A CSV record that cannot be read (bad quoting, a missing column).
    #[error("{place}: malformed CSV: {reason}")]
    Csv { place: Place, reason: String },
    /// A field that is missing, has the wrong type, or holds an unusable value (e.g. an empty response).
    #[error("{place}: field `{field}`: {reason}")]
    Field { place: Place, field: String, reason: String },
    /// A label outside the task's label list.
    #[error("{place}: field `{field}`: unknown label `{label}` (known labels: {known})")]
    UnknownLabel { place: Place, field: String, label: String, known: String },
    /// Fetching or reading a packaged asset failed (download, hash mismatch, missing member).
    #[error("{what}: {error}")]
    Asset { what: String, error: Box<AssetError> },
    /// A task specification that cannot work (bad template, bad fractions, unknown source ...).
    #[error("task `{task}`: {reason}")]
    Spec { task: String, reason: String },
    /// The tokenizer or chat template failed on an example.
    #[error("task `{task}`, example {id}: {reason}")]
    Encode { task: String, id: String, reason: String },
}

impl DataError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        DataError::Io { path: path.to_path_buf(), error }
    }
    pub(crate) fn field(place: Place, field: &str, reason: impl Into<String>) -> Self {
        DataError::Field { place, field: field.to_string(), reason: reason.into() }
    }
    pub(crate) fn spec(task: &str, reason: impl Into<String>) -> Self {
        DataError::Spec { task: task.to_string(), reason: reason.into() }
    }
    pub(crate) fn asset(what: impl Into<String>, source: AssetError) -> Self {
        DataError::Asset { what: what.into(), error: Box::new(source) }
    }
}
