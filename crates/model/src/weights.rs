//! Checkpoint-format-independent view of weights: named f32 host tensors in HF naming and layout.

use crate::error::LoadError;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One tensor on the host, row-major, in HF layout (a projection is `[out_features, in_features]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of a checkpoint, already dequantised/cast to f32 and renamed to HF names
/// (`model.layers.0.self_attn.q_proj.weight`, ...), with Q/K rows in the HF rotate-half order.
/// The model loader takes tensors out one by one and reports leftovers, so that a checkpoint
/// with missing or unused tensors fails loudly instead of silently.
pub struct WeightMap {
    /// The file (or directory) the weights came from, for error messages.
    pub source: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl WeightMap {
    /// Remove and return a tensor, checking its shape.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        let t = self.tensors.remove(name).ok_or_else(|| LoadError::MissingTensor { path: self.source.clone(), tensor: name.to_string() })?;
        if t.shape != expected {
            return Err(LoadError::ShapeMismatch { path: self.source.clone(), tensor: name.to_string(), found: t.shape, expected: expected.to_vec() });
        }
        Ok(t)
    }

    /// Fail if any tensor was left untaken (a checkpoint for some other architecture).
    pub fn finish(self) -> Result<(), LoadError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        let shown = if names.len() > 8 { format!("{} ... ({} in all)", names[..8].join(", "), names.len()) } else { names.join(", ") };
        Err(LoadError::UnusedTensors { path: self.source, tensors: shown })
    }
}
