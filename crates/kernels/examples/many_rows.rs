//! The products of one SmolLM2 forward pass over many rows (a prefill, a training batch) on the
//! ndarray backend, through `frozen_matmul` with weights built by `frozen_weight` as the model
//! loads them (so packed into panels on AVX-512 CPUs): `cargo run --release -p iapt-kernels
//! --example many_rows [rows 128] [repeats 5] [which: both | forward | backward]`. Prints GFLOP/s per weight shape, forward
//! (`x · w`) and the input gradient's `dy · wᵀ`, the median of the repeats.

use burn::backend::NdArray;
use burn::tensor::{Distribution, Tensor};
use iapt_kernels::{frozen_matmul, frozen_weight};
use std::time::Instant;

type B = NdArray;

fn main() {
    iapt_kernels::use_this_thread_in_pool();
    let arg = |i: usize, default: usize| std::env::args().nth(i).map(|a| a.parse().expect("a number")).unwrap_or(default);
    let (rows, repeats) = (arg(1, 128), arg(2, 5));
    let which = std::env::args().nth(3).unwrap_or_else(|| "both".into());
    let device = Default::default();
    // SmolLM2's seven projections per layer, stored [d_out, d_in]; thirty layers' worth.
    let (d, ff, kv) = (576, 1536, 192);
    let shapes = [("q", d, d), ("k", kv, d), ("v", kv, d), ("o", d, d), ("gate", ff, d), ("up", ff, d), ("down", d, ff)];
    let layers = 30;
    let weights: Vec<Tensor<B, 2>> = (0..layers)
        .flat_map(|l| shapes.iter().enumerate().map(move |(s, &(_, o, i))| (l, s, o, i)))
        .map(|(l, s, o, i)| {
            let values = (0..o * i).map(|j| ((j * 31 + l * 7 + s) % 97) as f32 / 97.0 - 0.5).collect();
            frozen_weight::<B>(values, o, i, &device)
        })
        .collect();
    let widths = [d, ff, kv];
    let inputs: Vec<Tensor<B, 2>> = widths.iter().map(|&i| Tensor::random([rows, i], Distribution::Normal(0.0, 1.0), &device)).collect();
    let input = |i: usize| inputs[widths.iter().position(|&w| w == i).expect("a model width")].clone();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{rows} rows, {} threads, median of {repeats}", iapt_kernels::pool::team_size());
    for backward in [false, true].into_iter().filter(|&b| which == "both" || (which == "backward") == b) {
        let mut total = 0.0;
        for (s, &(name, o, i)) in shapes.iter().enumerate() {
            let times: Vec<f64> = (0..repeats)
                .map(|_| {
                    let start = Instant::now();
                    for l in 0..layers {
                        let w = weights[l * shapes.len() + s].clone();
                        let out = if backward { frozen_matmul(input(o), w) } else { frozen_matmul(input(i), w.transpose()) };
                        std::hint::black_box(out.into_primitive());
                    }
                    start.elapsed().as_secs_f64()
                })
                .collect();
            let t = median(times);
            total += t;
            let flops = 2.0 * (rows * o * i * layers) as f64;
            println!("{} {name:>4} [{o}, {i}]: {:7.2} ms for {layers} = {:6.1} GFLOP/s", if backward { "dy·wᵀ" } else { "x·w  " }, t * 1e3, flops / t / 1e9);
        }
        let flops: f64 = shapes.iter().map(|&(_, o, i)| 2.0 * (rows * o * i * layers) as f64).sum();
        println!("{} all: {:.1} ms = {:.1} GFLOP/s", if backward { "dy·wᵀ" } else { "x·w  " }, total * 1e3, flops / total / 1e9);
    }
}
