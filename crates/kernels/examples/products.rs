//! Bandwidth of the few-row kernel over SmolLM2-shaped weights, against this machine's read
//! bandwidth: `cargo run --release -p iapt-kernels --example products [rows]`.

use iapt_kernels::cpu::{matmul, MatRef};
use std::time::Instant;

fn main() {
    iapt_kernels::use_this_thread_in_pool();
    let rows: usize = std::env::args().nth(1).map(|r| r.parse().unwrap()).unwrap_or(1);
    let bandwidth = iapt_kernels::bandwidth::read_bandwidth(1 << 30, 5);
    println!("read bandwidth {:.1} GB/s, {} threads", bandwidth / 1e9, rayon::current_num_threads());
    // Thirty layers' worth of [d_out, d_in] weights: far beyond the last-level cache.
    let (d, ff, kv) = (576, 1536, 192);
    let shapes = [(d, d), (kv, d), (kv, d), (d, d), (ff, d), (ff, d), (d, ff)];
    let weights: Vec<Vec<f32>> = (0..30).flat_map(|_| shapes.iter().map(|&(o, i)| vec![0.5f32; o * i])).collect();
    let bytes: usize = weights.iter().map(|w| w.len() * 4).sum();
    let x = vec![1.0f32; rows * ff];
    for _ in 0..3 {
        let start = Instant::now();
        for (w, &(o, i)) in weights.iter().zip(shapes.iter().cycle()) {
            let a = MatRef::row_major(&x[..rows * i], rows, i).unwrap();
            let b = MatRef::new(w, i, o, 1, i).unwrap();
            std::hint::black_box(matmul(a, b));
        }
        let s = start.elapsed().as_secs_f64();
        println!(
            "rows {rows}: {} products, {:.0} MB in {:.2} ms = {:.1} GB/s ({:.0}% of read bandwidth)",
            weights.len(),
            bytes as f64 / 1e6,
            s * 1e3,
            bytes as f64 / s / 1e9,
            100.0 * bytes as f64 / s / bandwidth
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
