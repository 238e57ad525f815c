//! Set-ups shared by the training tests (`training.rs` on the CPU, `gpu.rs` on a GPU backend):
//! the example set, a module's parameter values, and fresh run directories.
#![allow(dead_code)]

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use iapt_train::LmExample;
use std::path::PathBuf;

/// `n` prompt/response pairs: distinct prompts, 3-token responses ending in EOS (2).
pub fn examples(n: usize, offset: u32) -> Vec<LmExample> {
    (0..n as u32).map(|i| LmExample::new(vec![1, 10 + i, 30 + (i * 7) % 20, 60 + offset + i, 80 + (i + offset) % 10, 2], 3).unwrap()).collect()
}

/// A fresh (removed) directory under the system temp dir, unique to this process and `tag`.
pub fn run_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("iapt-train-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every float parameter of `module`, each flattened.
pub fn values<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push(param.val().into_data().convert::<f32>().to_vec().unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    module.visit(&mut collect);
    collect.0
}

/// The largest absolute difference between two modules' [`values`].
pub fn max_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0.0, f32::max)
}
