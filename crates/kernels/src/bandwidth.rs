//! This machine's memory read bandwidth, the bound on decoding one token at a time: every weight
//! is read once per step, so tokens/s cannot exceed bandwidth ÷ bytes of weights.

use rayon::prelude::*;
use std::time::Instant;

/// Bytes per second read by summing a `bytes`-long f32 buffer on all of rayon's threads (best of
/// `repeats`, after one pass that faults the pages in). Use a buffer well beyond the last-level cache.
pub fn read_bandwidth(bytes: usize, repeats: usize) -> f64 {
    let data = vec![1.0f32; bytes / 4];
    let threads = rayon::current_num_threads().max(1);
    let chunk = data.len().div_ceil(threads * 8).max(1);
    let pass = || data.par_chunks(chunk).map(sum).sum::<f32>();
    let mut best = f64::INFINITY;
    std::hint::black_box(pass());
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        std::hint::black_box(pass());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (data.len() * 4) as f64 / best
}

/// A sum with 64 independent lanes, compiled for the widest SIMD found at run time, so the loop
/// is bound by memory and not by one chain of additions.
fn sum(values: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return unsafe { sum_avx512(values) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return unsafe { sum_avx2(values) };
        }
    }
    sum_lanes(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(values: &[f32]) -> f32 {
    sum_lanes(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(values: &[f32]) -> f32 {
    sum_lanes(values)
}

#[inline(always)]
fn sum_lanes(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 64];
    let mut chunks = values.chunks_exact(64);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}
