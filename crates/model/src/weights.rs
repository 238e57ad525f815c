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
    /// Remove and return a tensor, checking its shape and that every value is finite.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, LoadError> {
        let t = self.tensors.remove(name).ok_or_else(|| LoadError::MissingTensor { path: self.source.clone(), tensor: name.to_string() })?;
        if t.shape != expected {
            return Err(LoadError::ShapeMismatch { path: self.source.clone(), tensor: name.to_string(), found: t.shape, expected: expected.to_vec() });
        }
        let count = t.data.iter().filter(|v| !v.is_finite()).count();
        if count > 0 {
            return Err(LoadError::NonFinite { path: self.source.clone(), tensor: name.to_string(), count });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(data: Vec<f32>) -> WeightMap {
        let tensors = [("w".to_string(), HostTensor { shape: vec![2, 2], data })].into();
        WeightMap { source: PathBuf::from("model.gguf"), tensors }
    }

    #[test]
    fn take_checks_presence_shape_and_finite_values() {
        assert_eq!(map(vec![1.0, 2.0, 3.0, 4.0]).take("w", &[2, 2]).unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(matches!(map(vec![0.0; 4]).take("v", &[2, 2]), Err(LoadError::MissingTensor { .. })));
        assert!(matches!(map(vec![0.0; 4]).take("w", &[4]), Err(LoadError::ShapeMismatch { .. })));
        let err = map(vec![1.0, f32::NAN, f32::INFINITY, 0.0]).take("w", &[2, 2]).unwrap_err();
        assert!(matches!(err, LoadError::NonFinite { count: 2, .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("model.gguf") && message.contains("`w`") && message.contains("non-finite"), "{message}");
    }
}
