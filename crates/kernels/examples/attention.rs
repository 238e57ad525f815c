//! A training batch's attention, forward and backward, on the autodiff ndarray backend: SmolLM2's
//! heads (9 query heads over 3 KV heads of 64), `rows` rows of `t` queries behind a `prefix` of
//! extra slots (IAPT's soft tokens): `cargo run --release -p iapt-kernels --example attention
//! [rows 8] [t 128] [prefix 4]`. Prints milliseconds per layer and the whole model's 30 layers.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Bool, Distribution, Tensor};
use std::time::Instant;

type B = Autodiff<NdArray>;

fn main() {
    iapt_kernels::use_this_thread_in_pool();
    let arg = |i: usize, default: usize| std::env::args().nth(i).map(|a| a.parse().expect("a number")).unwrap_or(default);
    let (rows, t, prefix) = (arg(1, 8), arg(2, 128), arg(3, 4));
    let (heads, kv_heads, hd, s) = (9, 3, 64, t + prefix);
    let device = Default::default();
    let q = Tensor::<B, 4>::random([rows, t, heads, hd], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let k = Tensor::<B, 4>::random([rows, kv_heads, s, hd], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let v = Tensor::<B, 4>::random([rows, kv_heads, s, hd], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let valid = Tensor::<B, 2, Bool>::from_data(burn::tensor::TensorData::new(vec![true; rows * s], [rows, s]), &device);
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let start = Instant::now();
        let out = iapt_kernels::fused::attention(&q, &k, &v, &valid, s).expect("the fused path on autodiff ndarray");
        forward.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        std::hint::black_box(out.sum().backward());
        backward.push(start.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let (f, b) = (median(&mut forward), median(&mut backward));
    println!("attention {rows} x {t} queries over {s} slots: forward {f:.2} ms, backward {b:.2} ms a layer; 30 layers {:.0} / {:.0} ms", 30.0 * f, 30.0 * b);
}
