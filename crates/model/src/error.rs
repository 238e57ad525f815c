//! Errors from reading checkpoints, tokenizers and fetched assets.

use std::path::PathBuf;

/// Anything that can go wrong turning files on disk into a model or tokenizer.
/// Every variant names the file (and the tensor or field) so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The I/O error is part of the message, not a separate cause, so that a report printed
    /// with its chain of causes (`{:#}`) does not say it twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a valid {format} file: {reason}")]
    Format { path: PathBuf, format: &'static str, reason: String },
    #[error("{path}: tensor `{tensor}` is missing from the checkpoint")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor(s) in the file not used by the model: {tensors}")]
    UnusedTensors { path: PathBuf, tensors: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, tensor: String, found: Vec<usize>, expected: Vec<usize> },
    #[error(
        "{path}: tensor `{tensor}` has shape {found:?}, but {config_gives}, so {expected:?} was expected: \
         the weights and the config are from different models"
    )]
    /// `config_gives` names the config and the sizes it sets, in one string so that the error
    /// stays small (it is returned by every loading function).
    ConfigMismatch { path: PathBuf, tensor: String, found: Vec<usize>, expected: Vec<usize>, config_gives: String },
    #[error("{path}: tensor `{tensor}` holds {count} non-finite value(s) (NaN or infinity): a damaged or wrongly decoded checkpoint")]
    NonFinite { path: PathBuf, tensor: String, count: usize },
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype}")]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String },
    #[error("{path}: field `{field}`: {reason}")]
    Field { path: PathBuf, field: String, reason: String },
    #[error("{path}: sha256 {found} does not match the expected {expected}")]
    HashMismatch { path: PathBuf, expected: String, found: String },
    #[error("{0}")]
    Other(String),
}

impl LoadError {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        LoadError::Io { path: path.into(), error }
    }
    pub fn format(path: impl Into<PathBuf>, format: &'static str, reason: impl Into<String>) -> Self {
        LoadError::Format { path: path.into(), format, reason: reason.into() }
    }
    pub fn field(path: impl Into<PathBuf>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        LoadError::Field { path: path.into(), field: field.into(), reason: reason.into() }
    }
}
