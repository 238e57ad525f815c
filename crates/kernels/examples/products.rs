//! The products of one SmolLM2 forward step over weights stored `[d_out, d_in]` (as the loader
//! keeps them), against this machine's read bandwidth: `cargo run --release -p iapt-kernels
//! --example products [rows] [row padding] [backward: 1]`. One row is a batch-1 decode step (bound by reading
//! the weights); 128 rows is a 128-token prefill (bound by arithmetic). The padding is the floats
//! left after each stored weight row (`iapt_kernels::ROW_PADDING` is what the loader uses); with
//! `backward` 1, the input gradient's `dy · wᵀ` over the same stored weights.

use iapt_kernels::cpu::{matmul, MatRef};
use std::time::Instant;

fn main() {
    iapt_kernels::use_this_thread_in_pool();
    let arg = |i: usize, default: usize| std::env::args().nth(i).map(|a| a.parse().expect("a number")).unwrap_or(default);
    // backward = 1: the input gradient's product `dy · wᵀ`, `dy` [rows, d_out] times the weight
    // as stored, [d_out, d_in] (row-major).
    let (rows, pad, backward) = (arg(1, 1), arg(2, 0), arg(3, 0) == 1);
    let bandwidth = iapt_kernels::bandwidth::read_bandwidth(1 << 30, 5);
    println!(
        "read bandwidth {:.1} GB/s, {} threads, weight rows padded by {pad} floats, {}",
        bandwidth / 1e9,
        rayon::current_num_threads(),
        if backward { "dy · wᵀ (the input gradient)" } else { "x · w" }
    );
    // Thirty layers' worth of [d_out, d_in] weights: far beyond the last-level cache.
    let (d, ff, kv) = (576, 1536, 192);
    let shapes = [(d, d), (kv, d), (kv, d), (d, d), (ff, d), (ff, d), (d, ff)];
    let weights: Vec<Vec<f32>> = (0..30).flat_map(|_| shapes.iter().map(|&(o, i)| vec![0.5f32; o * (i + pad)])).collect();
    let bytes: usize = (0..30).flat_map(|_| shapes.iter().map(|&(o, i)| o * i * 4)).sum();
    let flops: usize = (0..30).flat_map(|_| shapes.iter().map(|&(o, i)| 2 * rows * o * i)).sum();
    let x = vec![1.0f32; rows * ff];
    for _ in 0..3 {
        let start = Instant::now();
        for (w, &(o, i)) in weights.iter().zip(shapes.iter().cycle()) {
            let (a, b) = if backward {
                (MatRef::row_major(&x[..rows * o], rows, o).unwrap(), MatRef::new(w, o, i, i + pad, 1).unwrap())
            } else {
                (MatRef::row_major(&x[..rows * i], rows, i).unwrap(), MatRef::new(w, i, o, 1, i + pad).unwrap())
            };
            std::hint::black_box(matmul(a, b));
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "rows {rows}: {} products, {:.0} MB in {:.2} ms = {:.1} GB/s ({:.0}% of read bandwidth), {:.1} GFLOP/s",
            weights.len(),
            bytes as f64 / 1e6,
            s * 1e3,
            bytes as f64 / s / 1e9,
            100.0 * bytes as f64 / s / bandwidth,
            flops as f64 / s / 1e9
        );
    }
    let head = vec![0.5f32; 49152 * d];
    for _ in 0..3 {
        let start = Instant::now();
        std::hint::black_box(matmul(MatRef::row_major(&x[..rows * d], rows, d).unwrap(), MatRef::new(&head, d, 49152, 1, d).unwrap()));
        let s = start.elapsed().as_secs_f64();
        println!("head: {:.2} ms = {:.1} GB/s", s * 1e3, (head.len() * 4) as f64 / s / 1e9);
    }
}
