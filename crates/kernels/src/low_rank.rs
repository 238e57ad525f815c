//! Per-row low-rank deltas for a batch whose rows hold different LoRA adapters:
//! `out[r] = x[r] · a[r] · b[r]`, one pass over each row's factors.
//!
//! burn-ndarray runs a batched product `[rows, t, in] × [rows, in, rank]` as one small `gemm`
//! call per row, each packing its operands: at decode (t = 1, rank 8) that is hundreds of calls
//! per step whose set-up costs more than their arithmetic. Here each row's `x · a` is `t × in`
//! multiply-adds into a `t × rank` accumulator (a row of `a` is `rank` contiguous floats) and
//! `h · b` adds `rank` scaled rows of `b` into the output, so the factors are read once, in
//! order, and rows run in parallel. Inference backends only ([`crate::host`]).

use crate::host::{from_vec, with_view, HostView};
use crate::pool;
use burn::tensor::{backend::Backend, Tensor};
use std::borrow::Cow;

/// Below this many multiply-adds the rows run on the calling thread.
const PARALLEL_WORK: usize = 1 << 16;

/// `x · a · b` per row for `x` `[rows, t, in]`, `a` `[rows, in, rank]`, `b` `[rows, rank, out]`;
/// `None` on other backends or shapes (the caller runs burn's batched matmul).
pub fn batched_low_rank<B: Backend>(x: &Tensor<B, 3>, a: &Tensor<B, 3>, b: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !crate::enabled() || !crate::host::readable::<B>() {
        return None;
    }
    let [rows, t, d_in] = x.dims();
    let [a_rows, a_in, rank] = a.dims();
    let [b_rows, b_rank, d_out] = b.dims();
    if a_rows != rows || b_rows != rows || a_in != d_in || b_rank != rank {
        return None;
    }
    let x = crate::host::to_vec(x)?;
    let out = with_view(a, |a| {
        with_view(b, |b| {
            let (a, b) = (Factor::new(&a)?, Factor::new(&b)?);
            let mut out = vec![0.0f32; rows * t * d_out];
            let row = |(r, out): (usize, &mut [f32])| {
                let x = &x[r * t * d_in..][..t * d_in];
                let mut h = vec![0.0f32; t * rank];
                for (h, x) in h.chunks_exact_mut(rank).zip(x.chunks_exact(d_in)) {
                    for (i, &xi) in x.iter().enumerate() {
                        axpy(h, xi, a.row(r, i, rank));
                    }
                }
                for (out, h) in out.chunks_exact_mut(d_out).zip(h.chunks_exact(rank)) {
                    for (j, &hj) in h.iter().enumerate() {
                        axpy(out, hj, b.row(r, j, d_out));
                    }
                }
            };
            let parallel = rows > 1 && rows * t * rank * (d_in + d_out) >= PARALLEL_WORK;
            pool::for_each_chunk_mut(&mut out, t * d_out, parallel, |r, out| row((r, out)));
            Some(out)
        })
    })???;
    from_vec(out, [rows, t, d_out])
}

/// `y += alpha * x` (the compiler vectorises it).
#[inline]
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// A `[rows, n, len]` factor, read in place when its last axis is contiguous (the stacked
/// factors are), copied to row-major otherwise.
struct Factor<'a> {
    data: Cow<'a, [f32]>,
    row_stride: usize,
    line_stride: usize,
}

impl<'a> Factor<'a> {
    fn new(view: &HostView<'a>) -> Option<Self> {
        let &[_, n, len] = view.shape.as_slice() else { return None };
        Some(if view.inner_contiguous() {
            Self { data: Cow::Borrowed(view.data), row_stride: view.strides[0], line_stride: view.strides[1] }
        } else {
            Self { data: Cow::Owned(view.to_row_major()), row_stride: n * len, line_stride: len }
        })
    }

    /// Line `i` (of `len` floats) of batch row `r`.
    #[inline]
    fn row(&self, r: usize, i: usize, len: usize) -> &[f32] {
        &self.data[r * self.row_stride + i * self.line_stride..][..len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray<f32>;

    /// The product in f64, from the tensors' values.
    fn reference(x: &[f32], a: &[f32], b: &[f32], [rows, t, d_in, rank, d_out]: [usize; 5]) -> Vec<f64> {
        let mut out = vec![0.0f64; rows * t * d_out];
        for r in 0..rows {
            for i in 0..t {
                let h: Vec<f64> = (0..rank).map(|j| (0..d_in).map(|k| x[(r * t + i) * d_in + k] as f64 * a[(r * d_in + k) * rank + j] as f64).sum()).collect();
                for o in 0..d_out {
                    out[(r * t + i) * d_out + o] = (0..rank).map(|j| h[j] * b[(r * rank + j) * d_out + o] as f64).sum();
                }
            }
        }
        out
    }

    #[test]
    fn matches_an_f64_product_on_odd_shapes_and_strided_factors() {
        let device = Default::default();
        for (rows, t, d_in, rank, d_out) in [(1, 1, 1, 1, 1), (3, 1, 37, 5, 19), (16, 1, 576, 8, 1536), (2, 7, 64, 3, 33), (9, 2, 130, 16, 70)] {
            let x = Tensor::<B, 3>::random([rows, t, d_in], Distribution::Normal(0.0, 1.0), &device);
            let a = Tensor::<B, 3>::random([rows, d_in, rank], Distribution::Normal(0.0, 1.0), &device);
            // b built transposed and swapped back: a factor with strides other than row-major.
            let b = Tensor::<B, 3>::random([rows, d_out, rank], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
            let got: Vec<f32> = batched_low_rank(&x, &a, &b).expect("ndarray runs the kernel").into_data().to_vec().unwrap();
            let values = |t: &Tensor<B, 3>| -> Vec<f32> { t.clone().into_data().convert::<f32>().to_vec().unwrap() };
            let (xv, av, bv) = (values(&x), values(&a), values(&b));
            let want = reference(&xv, &av, &bv, [rows, t, d_in, rank, d_out]);
            let burn: Vec<f32> = x.clone().matmul(a.clone()).matmul(b.clone()).into_data().to_vec().unwrap();
            // Relative to the whole output's size: elements near zero carry the rounding of
            // terms as large as the others.
            let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|e| e * e).sum::<f64>().sqrt();
            let size = norm(&mut want.iter().copied());
            let to_f64 = norm(&mut got.iter().zip(&want).map(|(g, w)| *g as f64 - w));
            let to_burn = norm(&mut got.iter().zip(&burn).map(|(g, m)| (g - m) as f64));
            assert!(to_f64 <= 1e-6 * size, "[{rows},{t},{d_in},{rank},{d_out}]: {to_f64} from the f64 product (size {size})");
            assert!(to_burn <= 1e-5 * size, "[{rows},{t},{d_in},{rank},{d_out}]: {to_burn} from burn's matmul (size {size})");
        }
    }

    #[test]
    fn mismatched_shapes_are_left_to_burn() {
        let device = Default::default();
        let x = Tensor::<B, 3>::from_data(TensorData::new(vec![1.0f32; 6], [2, 1, 3]), &device);
        let a = Tensor::<B, 3>::zeros([2, 4, 2], &device);
        let b = Tensor::<B, 3>::zeros([2, 2, 5], &device);
        assert!(batched_low_rank(&x, &a, &b).is_none());
    }
}
