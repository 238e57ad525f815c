//! Fused inference kernels for the CPU backends: RMSNorm, rotary embedding and causal GQA
//! attention over the KV cache, each one pass over its data instead of burn's chain of
//! element-wise ops, broadcasts, masks and copies. Inference backends only ([`crate::host`]);
//! each returns `None` elsewhere and the model runs burn's ops.

use crate::host::{from_vec, with_view, HostView};
use crate::pool::{self, SendPtr, PARALLEL_ELEMENTS};
use burn::tensor::{backend::Backend, Bool, Tensor};

/// Queries per attention task: a block sees only the slots up to its last query, so a causal
/// prefill skips most of the future, and short prompts still give every core work.
const QUERY_BLOCK: usize = 16;

/// `x / sqrt(mean(x²) + eps) * gamma` over the last axis of `x`.
pub fn rms_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, gamma: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, D>> {
    if !crate::enabled() {
        return None;
    }
    let gamma: Vec<f32> = with_view(gamma, |g| g.to_row_major())?;
    let shape = x.dims();
    let out = with_view(x, |x| {
        let x = x.to_row_major();
        let d = gamma.len();
        let mut out = vec![0.0f32; x.len()];
        let row = |(out, x): (&mut [f32], &[f32])| {
            let mean = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let rms = (mean + eps as f32).sqrt();
            for ((o, v), g) in out.iter_mut().zip(x).zip(&gamma) {
                *o = (v / rms) * g;
            }
        };
        pool::for_each_chunk_mut(&mut out, d, x.len() >= PARALLEL_ELEMENTS, |i, out| row((out, &x[i * d..][..d])));
        out
    })?;
    from_vec(out, shape)
}

/// `silu(gate) * up` (SwiGLU's gating), element-wise over same-shaped tensors.
pub fn swiglu<B: Backend, const D: usize>(gate: &Tensor<B, D>, up: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    if !crate::enabled() || gate.dims() != up.dims() {
        return None;
    }
    let shape = gate.dims();
    let up: Vec<f32> = with_view(up, |u| u.to_row_major())?;
    let mut out: Vec<f32> = with_view(gate, |g| g.to_row_major())?;
    const PIECE: usize = 4096;
    pool::for_each_chunk_mut(&mut out, PIECE, up.len() >= PARALLEL_ELEMENTS, |i, gate| {
        for (g, u) in gate.iter_mut().zip(&up[i * PIECE..]) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
    });
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
    let cos: Vec<f32> = with_view(cos, |c| c.to_row_major())?;
    let sin: Vec<f32> = with_view(signed_sin, |s| s.to_row_major())?;
    let out = with_view(x, |x| {
        let x = x.to_row_major();
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
        pool::for_each_chunk_mut(&mut out, row, x.len() >= PARALLEL_ELEMENTS, |p, out| position((p, (out, &x[p * row..][..row]))));
        out
    })?;
    from_vec(out, [b, t, heads, hd])
}

/// Causal grouped-query attention of `q` `[b, t, heads, hd]` (RoPE applied) over `keys` /
/// `values` `[b, kv_heads, s, hd]`, where the `t` queries occupy the last `t` of the `s` slots:
/// a query sees the valid slots (`key_valid` `[b, s]`) at or before its own, and always its own.
/// Query head `i * groups + g` reads KV head `i`. Only the first `s` slots of the buffers are
/// read (the KV cache's spare room is not). Returns `[b, t, heads * hd]`, the layout the
/// output projection takes.
pub fn attention<B: Backend>(q: &Tensor<B, 4>, keys: &Tensor<B, 4>, values: &Tensor<B, 4>, key_valid: &Tensor<B, 2, Bool>, s: usize) -> Option<Tensor<B, 3>> {
    if !crate::enabled() || !crate::host::readable::<B>() {
        return None;
    }
    let [b, t, heads, hd] = q.dims();
    let [kb, kv_heads, capacity, khd] = keys.dims();
    if kb != b
        || khd != hd
        || values.dims() != keys.dims()
        || key_valid.dims() != [b, capacity]
        || kv_heads == 0
        || heads % kv_heads != 0
        || t > s
        || s > capacity
    {
        return None;
    }
    let all_valid: Vec<bool> = key_valid.clone().into_data().to_vec().ok()?;
    let valid: Vec<bool> = all_valid.chunks(capacity).flat_map(|row| row[..s].iter().copied()).collect();
    let scale = 1.0 / (hd as f32).sqrt();
    let groups = heads / kv_heads;
    let out = with_view(q, |q| {
        let q = q.to_row_major();
        with_view(keys, |k| {
            with_view(values, |v| {
                let (k, v) = (Kv::new(k)?, Kv::new(v)?);
                let mut out = vec![0.0f32; b * t * heads * hd];
                let ptr = SendPtr(out.as_mut_ptr());
                // One task per (row, KV head): the `groups * t` queries that read this head get
                // their scores against every slot in one register-tiled product, then a softmax
                // over the visible slots and a weighted sum of values.
                // One task per (row, KV head, block of queries): the block's `groups * n` queries
                // get their scores against the slots they can see (up to the block's last query)
                // in one register-tiled product, then a softmax over the visible slots and a
                // weighted sum of values.
                let task = |(row, kvh, i0): (usize, usize, usize)| {
                    #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
                    let ptr = ptr;
                    let n = QUERY_BLOCK.min(t - i0);
                    let seen = s - t + i0 + n; // slots up to and including the block's last query
                    let queries = groups * n;
                    let mut qbuf = vec![0.0f32; queries * hd];
                    for g in 0..groups {
                        for i in 0..n {
                            let head = kvh * groups + g;
                            qbuf[(g * n + i) * hd..][..hd].copy_from_slice(&q[((row * t + i0 + i) * heads + head) * hd..][..hd]);
                        }
                    }
                    let mut scores = vec![0.0f32; queries * seen];
                    let (keys, stride) = k.rows(row, kvh, seen);
                    crate::cpu::dot_products_here(&qbuf, hd, queries, keys, stride, hd, seen, &mut scores);
                    let mut acc = vec![0.0f32; hd];
                    for (query, scores) in scores.chunks_exact_mut(seen).enumerate() {
                        let (g, i) = (query / n, i0 + query % n);
                        let slot = s - t + i;
                        let visible = |j: usize| j == slot || (j < slot && valid[row * s + j]);
                        let mut max = f32::NEG_INFINITY;
                        for (j, score) in scores.iter_mut().enumerate() {
                            *score = if visible(j) { *score * scale } else { f32::NEG_INFINITY };
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
                        let head = kvh * groups + g;
                        // SAFETY: task (row, kvh, i0) alone writes these queries of its heads.
                        let out = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(((row * t + i) * heads + head) * hd), hd) };
                        for (o, a) in out.iter_mut().zip(&acc) {
                            *o = a / total;
                        }
                    }
                };
                let tasks: Vec<(usize, usize, usize)> =
                    (0..b).flat_map(|r| (0..kv_heads).flat_map(move |h| (0..t).step_by(QUERY_BLOCK).map(move |i0| (r, h, i0)))).collect();
                if t * s * heads * b * hd >= PARALLEL_ELEMENTS {
                    pool::run(tasks.len(), &|i| task(tasks[i]));
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

    /// The `slots` slots of (row, head) from its first element, and the stride between slots.
    fn rows(&self, row: usize, head: usize, slots: usize) -> (&'a [f32], usize) {
        let start = row * self.strides[0] + head * self.strides[1];
        let span = if slots == 0 { 0 } else { (slots - 1) * self.strides[2] + self.hd };
        (&self.data[start..start + span], self.strides[2])
    }

    fn row(&self, row: usize, head: usize, slot: usize) -> &'a [f32] {
        let start = row * self.strides[0] + head * self.strides[1] + slot * self.strides[2];
        &self.data[start..start + self.hd]
    }
}
