//! Fused inference kernels for the CPU backends: RMSNorm, rotary embedding and causal GQA
//! attention over the KV cache, each one pass over its data instead of burn's chain of
//! element-wise ops, broadcasts, masks and copies. Inference backends only ([`crate::host`]);
//! each returns `None` elsewhere and the model runs burn's ops.

use crate::host::{from_vec, with_view, HostView};
use burn::tensor::{backend::Backend, Bool, Tensor};
use rayon::prelude::*;

/// Below this many output elements the work runs on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// `x / sqrt(mean(x²) + eps) * gamma` over the last axis of `x`.
pub fn rms_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, gamma: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, D>> {
    if !crate::enabled() {
        return None;
    }
    let gamma: Vec<f32> = with_view(gamma, |g| contiguous(&g))?;
    let shape = x.dims();
    let out = with_view(x, |x| {
        let x = contiguous(&x);
        let d = gamma.len();
        let mut out = vec![0.0f32; x.len()];
        let row = |(out, x): (&mut [f32], &[f32])| {
            let mean = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let rms = (mean + eps as f32).sqrt();
            for ((o, v), g) in out.iter_mut().zip(x).zip(&gamma) {
                *o = (v / rms) * g;
            }
        };
        if x.len() >= PARALLEL_ELEMENTS {
            out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(row);
        } else {
            out.chunks_mut(d).zip(x.chunks(d)).for_each(row);
        }
        out
    })?;
    from_vec(out, shape)
}

/// Rotary embedding of `x` `[b, t, heads, hd]` with `cos` / `signed_sin` `[b, t, 1, hd]`:
/// `x * cos + rotate_half(x) * signed_sin`, `rotate_half([x1, x2]) = [x2, x1]` (the sign is in
/// `signed_sin`), the same products and sum as the tensor expression.
pub fn rope<B: Backend>(x: &Tensor<B, 4>, cos: &Tensor<B, 4>, signed_sin: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    if !crate::enabled() {
        return None;
    }
    let [b, t, heads, hd] = x.dims();
    if cos.dims() != [b, t, 1, hd] || signed_sin.dims() != [b, t, 1, hd] || hd % 2 != 0 {
        return None;
    }
    let cos: Vec<f32> = with_view(cos, |c| contiguous(&c))?;
    let sin: Vec<f32> = with_view(signed_sin, |s| contiguous(&s))?;
    let out = with_view(x, |x| {
        let x = contiguous(&x);
        let half = hd / 2;
        let mut out = vec![0.0f32; x.len()];
        // One position (b, t) at a time: its heads share one row of the tables.
        let position = |(p, (out, x)): (usize, (&mut [f32], &[f32]))| {
            let (cos, sin) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
            for (out, x) in out.chunks_exact_mut(hd).zip(x.chunks_exact(hd)) {
                for d in 0..hd {
                    let swapped = x[(d + half) % hd];
                    out[d] = x[d] * cos[d] + swapped * sin[d];
                }
            }
        };
        let row = heads * hd;
        if x.len() >= PARALLEL_ELEMENTS {
            out.par_chunks_mut(row).zip(x.par_chunks(row)).enumerate().for_each(position);
        } else {
            out.chunks_mut(row).zip(x.chunks(row)).enumerate().for_each(position);
        }
        out
    })?;
    from_vec(out, [b, t, heads, hd])
}

/// Causal grouped-query attention of `q` `[b, t, heads, hd]` (RoPE applied) over `keys` /
/// `values` `[b, kv_heads, s, hd]`, where the `t` queries occupy the last `t` of the `s` slots:
/// a query sees the valid slots (`key_valid` `[b, s]`) at or before its own, and always its own.
/// Query head `i * groups + g` reads KV head `i`. Returns `[b, t, heads * hd]`, the layout the
/// output projection takes.
pub fn attention<B: Backend>(q: &Tensor<B, 4>, keys: &Tensor<B, 4>, values: &Tensor<B, 4>, key_valid: &Tensor<B, 2, Bool>) -> Option<Tensor<B, 3>> {
    if !crate::enabled() || !crate::host::readable::<B>() {
        return None;
    }
    let [b, t, heads, hd] = q.dims();
    let [kb, kv_heads, s, khd] = keys.dims();
    if kb != b || khd != hd || values.dims() != keys.dims() || key_valid.dims() != [b, s] || kv_heads == 0 || heads % kv_heads != 0 || t > s {
        return None;
    }
    let valid: Vec<bool> = key_valid.clone().into_data().to_vec().ok()?;
    let scale = 1.0 / (hd as f32).sqrt();
    let groups = heads / kv_heads;
    let out = with_view(q, |q| {
        let q = contiguous(&q);
        with_view(keys, |k| {
            with_view(values, |v| {
                let (k, v) = (Kv::new(k)?, Kv::new(v)?);
                let mut out = vec![0.0f32; b * t * heads * hd];
                let ptr = OutPtr(out.as_mut_ptr());
                let task = |(row, head): (usize, usize)| {
                    let ptr = ptr;
                    let kvh = head / groups;
                    let mut scores = vec![0.0f32; s];
                    let mut acc = vec![0.0f32; hd];
                    for i in 0..t {
                        let slot = s - t + i;
                        let query = &q[((row * t + i) * heads + head) * hd..][..hd];
                        let visible = |j: usize| j == slot || valid[row * s + j];
                        let mut max = f32::NEG_INFINITY;
                        for (j, score) in scores.iter_mut().enumerate().take(slot + 1) {
                            *score = if visible(j) { dot(query, k.row(row, kvh, j)) * scale } else { f32::NEG_INFINITY };
                            max = max.max(*score);
                        }
                        let mut total = 0.0f32;
                        acc.fill(0.0);
                        for (j, score) in scores.iter().enumerate().take(slot + 1) {
                            if *score == f32::NEG_INFINITY {
                                continue;
                            }
                            let p = (score - max).exp();
                            total += p;
                            for (a, x) in acc.iter_mut().zip(v.row(row, kvh, j)) {
                                *a += p * x;
                            }
                        }
                        // SAFETY: task (row, head) alone writes these hd elements of query i.
                        let out = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(((row * t + i) * heads + head) * hd), hd) };
                        for (o, a) in out.iter_mut().zip(&acc) {
                            *o = a / total;
                        }
                    }
                };
                let tasks: Vec<(usize, usize)> = (0..b).flat_map(|r| (0..heads).map(move |h| (r, h))).collect();
                if t * s * heads * b * hd >= PARALLEL_ELEMENTS {
                    tasks.into_par_iter().for_each(task);
                } else {
                    tasks.into_iter().for_each(task);
                }
                Some(out)
            })
        })
    })????;
    from_vec(out, [b, t, heads * hd])
}

/// Keys or values `[b, kv_heads, s, hd]` with a contiguous last axis.
struct Kv<'a> {
    data: &'a [f32],
    strides: [usize; 3],
    hd: usize,
}

impl<'a> Kv<'a> {
    fn new(view: HostView<'a>) -> Option<Self> {
        if !view.inner_contiguous() || view.shape.len() != 4 {
            return None;
        }
        Some(Self { data: view.data, strides: [view.strides[0], view.strides[1], view.strides[2]], hd: view.shape[3] })
    }

    fn row(&self, row: usize, head: usize, slot: usize) -> &'a [f32] {
        let start = row * self.strides[0] + head * self.strides[1] + slot * self.strides[2];
        &self.data[start..start + self.hd]
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Dot product in eight independent lanes (which the compiler keeps in one vector register).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The view's elements in row-major order (borrowed work is not worth a special case here:
/// these tensors are activations, copied once per op).
fn contiguous(view: &HostView<'_>) -> Vec<f32> {
    let n: usize = view.shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let rank = view.shape.len();
    if rank == 0 {
        return vec![view.data[0]];
    }
    let inner = view.shape[rank - 1];
    let inner_stride = view.strides[rank - 1];
    let outer: usize = view.shape[..rank - 1].iter().product();
    let mut index = vec![0usize; rank - 1];
    for _ in 0..outer {
        let start: usize = index.iter().zip(&view.strides).map(|(i, s)| i * s).sum();
        if inner_stride == 1 {
            out.extend_from_slice(&view.data[start..start + inner]);
        } else {
            out.extend((0..inner).map(|c| view.data[start + c * inner_stride]));
        }
        for axis in (0..rank - 1).rev() {
            index[axis] += 1;
            if index[axis] < view.shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    out
}
