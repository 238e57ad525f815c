//! Scalars a hook records about its own internals during a forward pass, for the training
//! dashboard (IAPT's pooler attention entropy). Recording is per thread and off unless a caller
//! asks for it around one forward (training and validation steps do), so inference never pays.
//!
//! Values are kept as backend tensors until [`finish`], so recording adds no device sync of its
//! own; `finish` reads their means once.

use burn::tensor::{backend::Backend, ElementConversion, Tensor};
use std::any::Any;
use std::cell::RefCell;

/// Recorded values with their names, in recording order (each a backend's `Tensor<B, 1>`).
type Recorded = Vec<(&'static str, Box<dyn Any>)>;

thread_local! {
    /// `Some` while recording.
    static RECORDED: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

/// Start recording on this thread (dropping anything recorded and not finished).
pub fn start() {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
}

/// Whether this thread is recording.
pub fn recording() -> bool {
    RECORDED.with(|r| r.borrow().is_some())
}

/// Record one value of `name` (a `[1]` tensor); ignored unless recording.
pub fn record<B: Backend>(name: &'static str, value: Tensor<B, 1>) {
    RECORDED.with(|r| {
        if let Some(values) = r.borrow_mut().as_mut() {
            values.push((name, Box::new(value)));
        }
    });
}

/// Stop recording; every name recorded since [`start`] with the mean of its values, in order of
/// first appearance. Values recorded on another backend than `B` are left out.
pub fn finish<B: Backend>() -> Vec<(&'static str, f64)> {
    let values = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    let mut names: Vec<&'static str> = Vec::new();
    for (name, _) in &values {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .filter_map(|name| {
            let tensors: Vec<Tensor<B, 1>> = values.iter().filter(|(n, _)| *n == name).filter_map(|(_, v)| v.downcast_ref::<Tensor<B, 1>>().cloned()).collect();
            (!tensors.is_empty()).then(|| (name, Tensor::cat(tensors, 0).mean().into_scalar().elem::<f64>()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    type TB = burn::backend::NdArray;

    #[test]
    fn records_means_per_name_only_while_recording() {
        let device = Default::default();
        let one = |v: f32| Tensor::<TB, 1>::from_floats([v], &device);
        record("ignored", one(5.0));
        assert!(!recording() && finish::<TB>().is_empty());
        start();
        record("a", one(1.0));
        record("b", one(10.0));
        record("a", one(2.0));
        assert!(recording());
        assert_eq!(finish::<TB>(), [("a", 1.5), ("b", 10.0)]);
        assert!(!recording() && finish::<TB>().is_empty());
    }
}
