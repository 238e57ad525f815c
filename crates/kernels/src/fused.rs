//! Fused kernels for the CPU backends: RMSNorm, SwiGLU gating, rotary embedding and causal GQA
//! attention over the KV cache, each one pass over its data instead of burn's chain of
//! element-wise ops, broadcasts, masks and copies. The inference backends ([`crate::host`]) run
//! them directly; their autodiff wrappers run them with backward nodes of their own
//! ([`crate::grad`]); each returns `None` elsewhere and the model runs burn's ops.

use crate::cpu::MatRef;
use crate::host::{from_vec, with_view, HostView};
use crate::pool::{self, SendPtr, PARALLEL_ELEMENTS};
use crate::simd;
use burn::tensor::{backend::Backend, Bool, Tensor};
use std::borrow::Cow;

/// Queries per attention task: a block sees only the slots up to its last query, so a causal
/// prefill skips most of the future, and short prompts still give every core work.
pub(crate) const QUERY_BLOCK: usize = 16;
/// Up to this many queries per task (decoding: one position's query heads of a KV head), the
/// scores and weighted values are two passes over the keys and values (the dot-product kernel of
/// one-row projections, on this thread, and [`simd::weighted_value_sums`]) instead of two general
/// products, whose packing and dispatch cost more than the arithmetic at that size.
const FEW_QUERIES: usize = 8;

/// `x / sqrt(mean(x²) + eps) * gamma` over the last axis of `x`.
pub fn rms_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, gamma: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, D>> {
    let d = x.dims()[D - 1];
    if !crate::enabled() || gamma.dims() != [d] || x.dims().contains(&0) {
        return None;
    }
    if crate::backends::autodiff::<B>() {
        return crate::grad::rms_norm(x, gamma, eps);
    }
    let gamma: Vec<f32> = with_view(gamma, |g| g.to_row_major())?;
    let shape = x.dims();
    let out = with_view(x, |x| rms_norm_rows(&x.row_major(), &gamma, eps as f32))?;
    from_vec(out, shape)
}

/// [`rms_norm`] of the rows of `x` (row-major, rows of `gamma.len()`).
pub fn rms_norm_rows(x: &[f32], gamma: &[f32], eps: f32) -> Vec<f32> {
    let d = gamma.len();
    let mut out = vec![0.0f32; x.len()];
    pool::for_each_chunk_mut(&mut out, d, x.len() >= PARALLEL_ELEMENTS, |i, out| {
        let x = &x[i * d..][..d];
        let rms = rms(x, eps);
        for ((o, v), g) in out.iter_mut().zip(x).zip(gamma) {
            *o = (v / rms) * g;
        }
    });
    out
}

/// `sqrt(mean(x²) + eps)` of one row.
pub(crate) fn rms(x: &[f32], eps: f32) -> f32 {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    (mean + eps).sqrt()
}

/// `silu(gate) * up` (SwiGLU's gating), element-wise over same-shaped tensors.
pub fn swiglu<B: Backend, const D: usize>(gate: &Tensor<B, D>, up: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    if !crate::enabled() || gate.dims() != up.dims() || gate.dims().contains(&0) {
        return None;
    }
    if crate::backends::autodiff::<B>() {
        return crate::grad::swiglu(gate, up);
    }
    let shape = gate.dims();
    // The gate's copy becomes the output; `up` is read in place.
    let gate: Vec<f32> = with_view(gate, |g| g.to_row_major())?;
    from_vec(with_view(up, |u| swiglu_values(gate, &u.row_major()))?, shape)
}

/// Pieces of element-wise work handed to one task.
pub(crate) const PIECE: usize = 4096;

/// [`swiglu`] of row-major values, written over `gate`.
pub fn swiglu_values(mut gate: Vec<f32>, up: &[f32]) -> Vec<f32> {
    pool::for_each_chunk_mut(&mut gate, PIECE, up.len() >= PARALLEL_ELEMENTS, |i, gate| crate::simd::silu_mul(gate, &up[i * PIECE..]));
    gate
}

/// Rotary embedding of `x` `[b, t, heads, hd]` with `cos` / `signed_sin` `[b, t, 1, hd]`:
/// `x * cos + rotate_half(x) * signed_sin`, `rotate_half([x1, x2]) = [x2, x1]` (the sign is in
/// `signed_sin`), the same products and sum as the tensor expression.
pub fn rope<B: Backend>(x: &Tensor<B, 4>, cos: &Tensor<B, 4>, signed_sin: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    if !crate::enabled() {
        return None;
    }
    let [b, t, _heads, hd] = x.dims();
    if cos.dims() != [b, t, 1, hd] || signed_sin.dims() != [b, t, 1, hd] || hd % 2 != 0 || x.dims().contains(&0) {
        return None;
    }
    if crate::backends::autodiff::<B>() {
        return crate::grad::rope(x, cos, signed_sin);
    }
    let cos: Vec<f32> = with_view(cos, |c| c.to_row_major())?;
    let sin: Vec<f32> = with_view(signed_sin, |s| s.to_row_major())?;
    let out = with_view(x, |x| rotate(&x.row_major(), &cos, &sin, hd, Rotation::Forward))?;
    from_vec(out, x.dims())
}

/// [`rope`] of row-major `x` `[positions, heads, hd]` with `cos` / `signed_sin` `[positions, hd]`.
pub fn rope_rows(x: &[f32], cos: &[f32], signed_sin: &[f32], hd: usize) -> Vec<f32> {
    rotate(x, cos, signed_sin, hd, Rotation::Forward)
}

/// Which way [`rotate`] turns: the embedding itself, or its transpose (the input's gradient).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Rotation {
    Forward,
    Transposed,
}

/// Next-token negative log-likelihoods `−log softmax(logits)[i, targets[i]]` `[n]` of `logits`
/// `[n, vocab]`: [`token_nll_and_argmax`] without the argmax, for callers that keep the logits.
pub fn token_nll<B: Backend>(logits: &Tensor<B, 2>, targets: &[usize]) -> Option<Tensor<B, 1>> {
    token_nll_and_argmax(logits.clone(), targets).ok().map(|(nll, _)| nll)
}

/// Next-token negative log-likelihoods `−log softmax(logits)[i, targets[i]]` `[n]` of `logits`
/// `[n, vocab]`, the training loss, and each row's most likely token (its first maximum), in
/// one pass over each row: its maximum, its first position, its `Σ exp`; the `[n, vocab]`
/// log-probabilities (190 MB for 960 rows of a 49k vocabulary) are never written.
///
/// On the autodiff CPU backends, while each row is still in cache, the same pass turns it into
/// the loss's gradient for a unit upstream `softmax_i − onehot(targets[i])` — over the logits
/// themselves when nothing else holds them (so pass them by value), else into a copy — and the
/// backward only scales each row by its upstream gradient. `Err` gives the logits back on
/// other backends, or for a target outside the vocabulary.
pub fn token_nll_and_argmax<B: Backend>(logits: Tensor<B, 2>, targets: &[usize]) -> Result<(Tensor<B, 1>, Vec<usize>), Tensor<B, 2>> {
    let [n, vocab] = logits.dims();
    if !crate::enabled() || n == 0 || targets.len() != n || targets.iter().any(|&t| t >= vocab) {
        return Err(logits);
    }
    if crate::backends::autodiff::<B>() {
        return crate::grad::token_nll_and_argmax(logits, targets);
    }
    let Some(rows) = with_view(&logits, |view| rows_nll(&view, targets)) else { return Err(logits) };
    match from_vec(rows.nll, [n]) {
        Some(nll) => Ok((nll, rows.argmax)),
        None => Err(logits),
    }
}

/// How many [`token_nll_and_argmax`] calls on this thread wrote the loss's gradient over their
/// logits' own buffer (the rest copied them first): lets tests show which path ran.
pub fn losses_in_place() -> u64 {
    crate::grad::losses_in_place()
}

/// The rows of a `[n, vocab]` view as one slice and the distance between row starts (a copy
/// only when a row's elements are not adjacent).
fn rows_of<'a>(view: &HostView<'a>) -> (Cow<'a, [f32]>, usize) {
    if view.inner_contiguous() {
        (Cow::Borrowed(view.data), view.strides[0])
    } else {
        (Cow::Owned(view.to_row_major()), view.shape[1])
    }
}

/// Per row of a `[n, vocab]` matrix of logits: the NLL of its target and its argmax.
pub(crate) struct RowsNll {
    pub(crate) nll: Vec<f32>,
    pub(crate) argmax: Vec<usize>,
}

/// A row's log-sum-exp, the NLL of its target and its argmax. The NLL is `(max − logit) + ln Σ
/// exp(x − max)`, not `lse − logit`: for a confident prediction the latter subtracts two large,
/// nearly equal numbers and keeps only a few bits. A row with no maximum (NaN) gives argmax 0.
fn row_nll(row: &[f32], target: usize) -> (f32, f32, usize) {
    let mut stats = [0.0f32; 2];
    simd::max_and_sum_exp(row, &mut stats);
    let [max, sum] = stats;
    let log_sum = sum.ln();
    let argmax = simd::first_index_of(row, max).unwrap_or(0);
    (max + log_sum, (max - row[target]) + log_sum, argmax)
}

/// [`row_nll`] of every row of a `[n, vocab]` view.
pub(crate) fn rows_nll(view: &HostView<'_>, targets: &[usize]) -> RowsNll {
    let ((data, stride), vocab) = (rows_of(view), view.shape[1]);
    let mut nll = vec![0.0f32; targets.len()];
    let mut argmax = vec![0usize; targets.len()];
    let argmax_out = SendPtr(argmax.as_mut_ptr());
    pool::for_each_chunk_mut(&mut nll, 1, targets.len() * vocab >= PARALLEL_ELEMENTS, |i, nll| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
        let argmax_out = argmax_out;
        let (_, row_nll, row_argmax) = row_nll(&data[i * stride..][..vocab], targets[i]);
        nll[0] = row_nll;
        // SAFETY: row i writes only element i of `argmax`, which outlives the pool's job.
        unsafe { *argmax_out.0.add(i) = row_argmax };
    });
    RowsNll { nll, argmax }
}

/// [`rows_nll`] of the row-major `[n, vocab]` `logits`, each row then overwritten, while in
/// cache, by the gradient of its NLL: `softmax(x_i) − onehot(targets[i])`.
pub(crate) fn rows_nll_to_gradient(logits: &mut [f32], targets: &[usize]) -> RowsNll {
    let vocab = logits.len() / targets.len().max(1);
    let mut nll = vec![0.0f32; targets.len()];
    let mut argmax = vec![0usize; targets.len()];
    let (nll_out, argmax_out) = (SendPtr(nll.as_mut_ptr()), SendPtr(argmax.as_mut_ptr()));
    pool::for_each_chunk_mut(logits, vocab, targets.len() * vocab >= PARALLEL_ELEMENTS, |i, row| {
        #[allow(clippy::redundant_locals)] // capture the Send wrappers whole, not their raw-pointer fields
        let (nll_out, argmax_out) = (nll_out, argmax_out);
        let (lse, row_nll, row_argmax) = row_nll(row, targets[i]);
        simd::scale_exp_in_place(row, lse, 1.0);
        row[targets[i]] -= 1.0;
        // SAFETY: row i writes only element i of `nll` and of `argmax`, which outlive the job.
        unsafe {
            *nll_out.0.add(i) = row_nll;
            *argmax_out.0.add(i) = row_argmax;
        }
    });
    RowsNll { nll, argmax }
}

/// `rows[i] ← g[i] · rows[i]` for the row-major `rows` `[g.len(), vocab]`: the loss's gradient for
/// a unit upstream ([`rows_nll_to_gradient`]) scaled by the one that arrived.
pub(crate) fn scale_rows(rows: &mut [f32], g: &[f32]) {
    let vocab = rows.len() / g.len().max(1);
    pool::for_each_chunk_mut(rows, vocab, rows.len() >= PARALLEL_ELEMENTS, |i, row| {
        for v in row.iter_mut() {
            *v *= g[i];
        }
    });
}

/// Rotate every head of row-major `x` `[positions, heads, hd]`, where each position's heads
/// share one `hd`-long row of `cos` / `sin` `[positions, hd]`. Forward: `out[d] = x[d]·cos[d] +
/// x[σd]·sin[d]` with `σd = (d + hd/2) mod hd`; transposed: `out[d] = x[d]·cos[d] + x[σd]·sin[σd]`.
pub(crate) fn rotate(x: &[f32], cos: &[f32], sin: &[f32], hd: usize, rotation: Rotation) -> Vec<f32> {
    let half = hd / 2;
    let positions = cos.len() / hd;
    let row = x.len() / positions.max(1);
    let mut out = vec![0.0f32; x.len()];
    // One position (b, t) at a time: its heads share one row of the tables.
    pool::for_each_chunk_mut(&mut out, row, x.len() >= PARALLEL_ELEMENTS, |p, out| {
        let (cos, sin) = (&cos[p * hd..(p + 1) * hd], &sin[p * hd..(p + 1) * hd]);
        // The halves in turn, each element's partner in the other half (no index arithmetic
        // per element, so the loops vectorise).
        let (sin_lo, sin_hi) = sin.split_at(half);
        let (cos_lo, cos_hi) = cos.split_at(half);
        let (partner_sin_lo, partner_sin_hi) = match rotation {
            Rotation::Forward => (sin_lo, sin_hi),
            Rotation::Transposed => (sin_hi, sin_lo),
        };
        for (out, x) in out.chunks_exact_mut(hd).zip(x[p * row..][..row].chunks_exact(hd)) {
            let (x_lo, x_hi) = x.split_at(half);
            let (out_lo, out_hi) = out.split_at_mut(half);
            for (((o, x), partner), (c, s)) in out_lo.iter_mut().zip(x_lo).zip(x_hi).zip(cos_lo.iter().zip(partner_sin_lo)) {
                *o = x * c + partner * s;
            }
            for (((o, x), partner), (c, s)) in out_hi.iter_mut().zip(x_hi).zip(x_lo).zip(cos_hi.iter().zip(partner_sin_hi)) {
                *o = x * c + partner * s;
            }
        }
    });
    out
}

/// Causal grouped-query attention of `q` `[b, t, heads, hd]` (RoPE applied) over `keys` /
/// `values` `[b, kv_heads, s, hd]`, where the `t` queries occupy the last `t` of the `s` slots:
/// a query sees the valid slots (`key_valid` `[b, s]`) at or before its own, and always its own.
/// Query head `i * groups + g` reads KV head `i`. Only the first `s` slots of the buffers are
/// read (the KV cache's spare room is not). Returns `[b, t, heads * hd]`, the layout the
/// output projection takes.
pub fn attention<B: Backend>(q: &Tensor<B, 4>, keys: &Tensor<B, 4>, values: &Tensor<B, 4>, key_valid: &Tensor<B, 2, Bool>, s: usize) -> Option<Tensor<B, 3>> {
    let autodiff = crate::backends::autodiff::<B>();
    if !crate::enabled() || !(crate::host::readable::<B>() || autodiff) {
        return None;
    }
    let [b, t, heads, hd] = q.dims();
    let [kb, kv_heads, capacity, khd] = keys.dims();
    if q.dims().contains(&0)
        || kb != b
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
    if autodiff {
        let valid = visible_flags(key_valid, s)?;
        return crate::grad::attention(q, keys, values, valid, AttentionShape { b, t, heads, kv_heads, hd, s });
    }
    let out = with_view(q, |q| attention_rows(&q.row_major(), [b, t, heads, hd], keys, values, key_valid, s))??;
    from_vec(out, [b, t, heads * hd])
}

/// The first `s` of each row's `[b, capacity]` valid flags, row after row.
fn visible_flags<B: Backend>(key_valid: &Tensor<B, 2, Bool>, s: usize) -> Option<Vec<bool>> {
    let capacity = key_valid.dims()[1];
    let all_valid = crate::host::bool_values(key_valid)?;
    Some(all_valid.chunks(capacity).flat_map(|row| row[..s].iter().copied()).collect())
}

/// [`attention`] of row-major queries `q` `[b, t, heads, hd]` (`shape`) already on the host, for
/// an inference backend's keys, values and flags read in place: `[b, t, heads * hd]`. `None`
/// where those cannot be read in place or the shapes do not fit.
pub fn attention_rows<B: Backend>(
    q: &[f32],
    shape: [usize; 4],
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    key_valid: &Tensor<B, 2, Bool>,
    s: usize,
) -> Option<Vec<f32>> {
    let [b, t, heads, hd] = shape;
    let [kb, kv_heads, capacity, khd] = keys.dims();
    let fits = q.len() == b * t * heads * hd && kb == b && khd == hd && values.dims() == keys.dims() && key_valid.dims() == [b, capacity];
    if !fits || kv_heads == 0 || heads % kv_heads != 0 || t > s || s > capacity || !crate::host::readable::<B>() {
        return None;
    }
    let valid = visible_flags(key_valid, s)?;
    let shape = AttentionShape { b, t, heads, kv_heads, hd, s };
    with_view(keys, |k| with_view(values, |v| Some(attention_values(q, &Kv::new(k)?, &Kv::new(v)?, &valid, &shape))))??
}

/// The sizes of one attention call: `t` queries of `heads` heads over the first `s` slots of
/// `kv_heads` heads, `hd` wide, in each of `b` rows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
    pub s: usize,
}

impl AttentionShape {
    pub fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    pub fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }

    /// Query `i`'s scores against the first `scores.len()` slots of `row` → its attention
    /// probabilities: scaled, softmax over the visible slots, exactly 0 on the others.
    pub fn softmax_of_visible(&self, scores: &mut [f32], valid: &[bool], row: usize, i: usize) {
        let (slot, scale) = (self.s - self.t + i, self.scale());
        // Slots after the query's own are never visible; its own always is.
        let (seen, later) = scores.split_at_mut(slot + 1);
        later.fill(0.0);
        let valid = &valid[row * self.s..][..slot];
        seen[slot] *= scale;
        for (score, &valid) in seen[..slot].iter_mut().zip(valid) {
            *score = if valid { *score * scale } else { f32::NEG_INFINITY };
        }
        crate::simd::softmax_in_place(seen);
    }

    /// Whether a call is big enough to spread over the pool.
    pub fn parallel(&self) -> bool {
        self.t * self.s * self.heads * self.b * self.hd >= PARALLEL_ELEMENTS
    }
}

/// [`attention`] on row-major queries `[b, t, heads, hd]` and valid flags `[b, s]`: the
/// output `[b, t, heads * hd]`.
pub(crate) fn attention_values(q: &[f32], k: &Kv, v: &Kv, valid: &[bool], shape: &AttentionShape) -> Vec<f32> {
    let AttentionShape { b, t, heads, kv_heads, hd, s } = *shape;
    let groups = shape.groups();
    let mut out = vec![0.0f32; b * t * heads * hd];
    let ptr = SendPtr(out.as_mut_ptr());
    // One task per (row, KV head, block of queries): the block's `groups * n` queries (position
    // by position, a position's heads side by side as they lie in `q`) get their scores against
    // the slots they can see (up to the block's last query), a softmax over the visible slots,
    // and the weighted values: two general products, or for a few queries ([`FEW_QUERIES`]) the
    // dot-product kernel and one pass over the value rows.
    let task = |(row, kvh, i0): (usize, usize, usize)| {
        #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
        let ptr = ptr;
        let n = QUERY_BLOCK.min(t - i0);
        let seen = s - t + i0 + n; // slots up to and including the block's last query
        let (queries, width) = (groups * n, groups * hd);
        let at = |i: usize| ((row * t + i) * heads + kvh * groups) * hd; // position i's heads
        let mut qbuf = Vec::with_capacity(queries * hd);
        for i in i0..i0 + n {
            qbuf.extend_from_slice(&q[at(i)..][..width]);
        }
        let mut probs = vec![0.0f32; queries * seen];
        let mut block = vec![0.0f32; queries * hd];
        let (keys, key_stride) = k.rows(row, kvh, seen);
        let (values, value_stride) = v.rows(row, kvh, seen);
        let softmax = |probs: &mut [f32]| {
            for (query, scores) in probs.chunks_exact_mut(seen).enumerate() {
                shape.softmax_of_visible(scores, valid, row, i0 + query / groups);
            }
        };
        if queries <= FEW_QUERIES {
            crate::cpu::dot_products(&qbuf, hd, queries, keys, key_stride, hd, seen, SendPtr(probs.as_mut_ptr()), 1);
            softmax(&mut probs);
            simd::weighted_value_sums(&probs, values, value_stride, hd, &mut block);
        } else {
            let keys_t = MatRef::new(keys, hd, seen, 1, key_stride).expect("keys in bounds");
            crate::cpu::matmul_here(&mut probs, MatRef::row_major(&qbuf, queries, hd).expect("queries in bounds"), keys_t, false);
            softmax(&mut probs);
            let values = MatRef::new(values, seen, hd, value_stride, 1).expect("values in bounds");
            crate::cpu::matmul_here(&mut block, MatRef::row_major(&probs, queries, seen).expect("probabilities in bounds"), values, false);
        }
        for (i, heads_out) in (i0..i0 + n).zip(block.chunks_exact(width)) {
            // SAFETY: task (row, kvh, i0) alone writes these positions' heads of this KV head,
            // `width` adjacent values per position.
            unsafe { std::slice::from_raw_parts_mut(ptr.0.add(at(i)), width) }.copy_from_slice(heads_out);
        }
    };
    let tasks: Vec<(usize, usize, usize)> =
        (0..b).flat_map(|r| (0..kv_heads).flat_map(move |h| (0..t).step_by(QUERY_BLOCK).map(move |i0| (r, h, i0)))).collect();
    if shape.parallel() {
        pool::run(tasks.len(), &|i| task(tasks[i]));
    } else {
        tasks.into_iter().for_each(task);
    }
    out
}

/// Keys or values `[b, kv_heads, s, hd]` with a contiguous last axis.
pub(crate) struct Kv<'a> {
    data: &'a [f32],
    strides: [usize; 3],
    hd: usize,
}

impl<'a> Kv<'a> {
    pub fn new(view: HostView<'a>) -> Option<Self> {
        if !view.inner_contiguous() || view.shape.len() != 4 {
            return None;
        }
        Some(Self { data: view.data, strides: [view.strides[0], view.strides[1], view.strides[2]], hd: view.shape[3] })
    }

    /// The `slots` slots of (row, head) from its first element, and the stride between slots.
    /// Contiguous `[b, kv_heads, capacity, hd]` values.
    pub fn row_major(data: &'a [f32], kv_heads: usize, capacity: usize, hd: usize) -> Self {
        Self { data, strides: [kv_heads * capacity * hd, capacity * hd, hd], hd }
    }

    pub fn rows(&self, row: usize, head: usize, slots: usize) -> (&'a [f32], usize) {
        let start = row * self.strides[0] + head * self.strides[1];
        let span = if slots == 0 { 0 } else { (slots - 1) * self.strides[2] + self.hd };
        (&self.data[start..start + span], self.strides[2])
    }
}
