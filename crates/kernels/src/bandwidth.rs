//! This machine's memory read bandwidth, the bound on decoding one token at a time: every weight
//! is read once per step, so tokens/s cannot exceed bandwidth ÷ bytes of weights. Two readings:
//! a fresh buffer's ([`BandwidthProbe`]), and the model's own weight matrices where they lie
//! ([`MatrixProbe`]).

use crate::host::{HeldMatrices, HostView};
use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;
use std::time::Instant;

/// Bytes per second read by summing a `bytes`-long f32 buffer on all of rayon's threads (best of
/// `repeats`, after one pass that faults the pages in). Use a buffer well beyond the last-level cache.
pub fn read_bandwidth(bytes: usize, repeats: usize) -> f64 {
    BandwidthProbe::new(bytes).read(repeats)
}

/// A buffer kept for repeated readings of the bandwidth: on the shared hosts this project is
/// measured on, the memory's speed moves within minutes, so a benchmark reads it beside each
/// measurement instead of once at start, and only the first reading pays for faulting the
/// buffer in.
pub struct BandwidthProbe {
    data: Vec<f32>,
}

impl BandwidthProbe {
    /// A `bytes`-long buffer, its pages faulted in by one pass.
    pub fn new(bytes: usize) -> Self {
        let probe = Self { data: vec![1.0f32; (bytes / 4).max(1)] };
        std::hint::black_box(probe.pass());
        probe
    }

    /// Bytes per second, the best of `passes` passes over the buffer.
    pub fn read(&self, passes: usize) -> f64 {
        best_rate((self.data.len() * 4) as f64, passes, || self.pass())
    }

    /// One sum of the whole buffer, in a few chunks per thread.
    fn pass(&self) -> f32 {
        let threads = rayon::current_num_threads().max(1);
        let chunk = self.data.len().div_ceil(threads * 8).max(1);
        self.data.par_chunks(chunk).map(sum).sum::<f32>()
    }
}

/// `bytes` ÷ the fastest of `passes` runs of `pass`.
fn best_rate(bytes: f64, passes: usize, pass: impl Fn() -> f32) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        std::hint::black_box(pass());
        best = best.min(start.elapsed().as_secs_f64());
    }
    bytes / best
}

/// A sum with 64 independent lanes, compiled for the widest SIMD found at run time, so the loop
/// is bound by memory and not by one chain of additions.
fn sum(values: &[f32]) -> f32 {
    sum_runs(std::iter::once(values))
}

/// [`sum`] over several runs of values, the lanes carried from one run to the next (one
/// dispatch for them all).
fn sum_runs<'a>(runs: impl Iterator<Item = &'a [f32]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return unsafe { sum_avx512(runs) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return unsafe { sum_avx2(runs) };
        }
    }
    sum_lanes(runs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512<'a>(runs: impl Iterator<Item = &'a [f32]>) -> f32 {
    sum_lanes(runs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2<'a>(runs: impl Iterator<Item = &'a [f32]>) -> f32 {
    sum_lanes(runs)
}

#[inline(always)]
fn sum_lanes<'a>(runs: impl Iterator<Item = &'a [f32]>) -> f32 {
    let mut lanes = [0.0f32; 64];
    let mut rest = 0.0f32;
    for values in runs {
        let mut chunks = values.chunks_exact(64);
        for chunk in &mut chunks {
            for (lane, v) in lanes.iter_mut().zip(chunk) {
                *lane += v;
            }
        }
        rest += chunks.remainder().iter().sum::<f32>();
    }
    lanes.iter().sum::<f32>() + rest
}

/// Matrices to be read where they lie, the bandwidth bound's other reading: how fast exactly
/// these weights, in their own memory and pages, can be streamed matrix by matrix on the
/// kernels' pool, as a decode step streams them (on a virtual machine a fresh buffer can read
/// faster or slower than the weights' own memory).
pub struct MatrixProbe<B: Backend> {
    rows: Vec<StoredRows>,
    /// The tensors `rows` point into, held as long as the probe.
    _held: HeldMatrices<B>,
}

impl<B: Backend> MatrixProbe<B> {
    /// `None` where a tensor cannot be read in place (other backends, quantized or other
    /// dtypes) or has no contiguous axis. Empty matrices are left out.
    pub fn new(tensors: &[Tensor<B, 2>]) -> Option<Self> {
        let held = HeldMatrices::new(tensors)?;
        let rows = (0..held.len()).map(|i| StoredRows::of(&held.view(i))).collect::<Option<Vec<_>>>()?;
        Some(Self { rows: rows.into_iter().filter(|r| r.rows * r.len > 0).collect(), _held: held })
    }

    /// The bytes of values one pass reads.
    pub fn bytes(&self) -> usize {
        self.rows.iter().map(|r| r.rows * r.len * 4).sum()
    }

    /// Bytes per second, the best of `passes` passes, each summing every value once in one job
    /// of the kernels' pool, one task per member of its team, each a contiguous share of every
    /// matrix's rows (a job started while another thread's runs on the caller alone).
    pub fn read(&self, passes: usize) -> f64 {
        best_rate(self.bytes() as f64, passes, || self.pass())
    }

    fn pass(&self) -> f32 {
        let threads = crate::pool::team_size();
        // One task per share, each writing its sum into its own element.
        let mut sums = vec![0.0f32; threads];
        crate::pool::for_each_chunk_mut(&mut sums, 1, true, |t, sum| {
            let runs = self.rows.iter().flat_map(|m| {
                // SAFETY: `StoredRows::of` took these runs from views of the tensors `_held`
                // keeps alive as long as `self`; the rows of a non-empty matrix lie in its view.
                (m.rows * t / threads..m.rows * (t + 1) / threads).map(|r| unsafe { std::slice::from_raw_parts(m.first.add(r * m.stride), m.len) })
            });
            sum[0] = sum_runs(runs);
        });
        sums.iter().sum()
    }
}

/// A matrix's values as runs of adjacent floats: `rows` runs of `len`, `stride` apart from `first`.
struct StoredRows {
    first: *const f32,
    rows: usize,
    len: usize,
    stride: usize,
}

// SAFETY: the pointer is only read, while the tensor it points into is held (`MatrixProbe`).
unsafe impl Sync for StoredRows {}

impl StoredRows {
    fn of(view: &HostView<'_>) -> Option<Self> {
        let ([a, b], [sa, sb]) = (<[usize; 2]>::try_from(view.shape.as_slice()).ok()?, <[usize; 2]>::try_from(view.strides.as_slice()).ok()?);
        let (rows, len, stride) = if a == 0 || b == 0 {
            // Nothing to read, whatever strides an empty view has.
            (0, 0, 0)
        } else if sb == 1 || b == 1 {
            (a, b, sa)
        } else if sa == 1 || a == 1 {
            (b, a, sb)
        } else {
            return None;
        };
        Some(Self { first: view.data.as_ptr(), rows, len, stride })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type Cpu = burn::backend::NdArray<f32>;

    /// A pass reads every value of every matrix once, whatever its layout: a frozen weight
    /// (rows padded in memory), its transposed view, and a plain tensor; the padding is neither
    /// counted nor summed, and an empty matrix is left out.
    #[test]
    fn a_pass_over_matrices_reads_each_value_once() {
        let device = Default::default();
        let (rows, cols) = (7, 5);
        let values: Vec<f32> = (1..=rows * cols).map(|v| v as f32).collect();
        let frozen = crate::frozen_weight::<Cpu>(values.clone(), rows, cols, &device);
        let plain = Tensor::<Cpu, 2>::from_data(burn::tensor::TensorData::new(vec![2.0f32; 6], [2, 3]), &device);
        let empty = Tensor::<Cpu, 2>::from_data(burn::tensor::TensorData::new(Vec::<f32>::new(), [3, 0]), &device);
        let matrices = [frozen.clone(), frozen.transpose(), plain, empty];
        let probe = MatrixProbe::new(&matrices).expect("ndarray tensors are read in place");
        assert_eq!(probe.bytes(), (2 * rows * cols + 6) * 4);
        let total: f32 = 2.0 * values.iter().sum::<f32>() + 12.0;
        assert_eq!(probe.pass(), total);
        assert!(probe.read(2) > 0.0);
    }
}
