//! Backward nodes for the fused kernels on the autodiff CPU backends (ndarray and flex under
//! `Autodiff`), so training runs the same one-pass RMSNorm, SwiGLU, RoPE and attention as
//! inference instead of burn's chains of element-wise ops, each with its own saved tensors.
//!
//! The backbone is frozen: RMSNorm's gain and RoPE's tables are constants (a gain or table in
//! the graph is refused and burn's ops run), while activations, the tuners' prefix keys and
//! values, and SwiGLU's two inputs all get their gradients here. Each node keeps the
//! row-major values its backward reads; attention recomputes its probabilities from them.

use crate::backends::{on_autodiff, tracked, AutodiffPrimitive, HostOp};
use crate::cpu::{self, MatRef};
use crate::fused::{self, attention_values, rotate, AttentionShape, Kv, Rotation, PIECE};
use crate::host;
use crate::pool::{self, SendPtr, PARALLEL_ELEMENTS};
use crate::simd;
use burn::tensor::{backend::Backend, Tensor, TensorPrimitive};
use burn_autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{binary, unary, Backward, Ops, OpsKind};
use std::sync::{Arc, OnceLock};

/// [`fused::rms_norm`] on an autodiff backend, with the gain frozen.
pub(crate) fn rms_norm<B: Backend, const D: usize>(x: &Tensor<B, D>, gamma: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, D>> {
    if tracked(gamma) {
        return None;
    }
    let gamma: Vec<f32> = gamma.to_data().convert::<f32>().to_vec().ok()?;
    let op = RmsNorm { gamma: Arc::new(gamma), eps: eps as f32, shape: x.dims().to_vec() };
    run(op, [x])
}

/// [`fused::swiglu`] on an autodiff backend: both inputs get gradients.
pub(crate) fn swiglu<B: Backend, const D: usize>(gate: &Tensor<B, D>, up: &Tensor<B, D>) -> Option<Tensor<B, D>> {
    run(Swiglu { shape: gate.dims().to_vec() }, [gate, up])
}

/// [`fused::rope`] on an autodiff backend, the tables constant.
pub(crate) fn rope<B: Backend>(x: &Tensor<B, 4>, cos: &Tensor<B, 4>, signed_sin: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    if tracked(cos) || tracked(signed_sin) {
        return None;
    }
    // The tables travel as inputs and are read in place (burn's `to_data` of the concatenated
    // tables costs more than the rotation).
    run(Rope { shape: x.dims().to_vec() }, [x, cos, signed_sin])
}

/// [`fused::attention`] on an autodiff backend: queries, keys and values get gradients.
pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    valid: Vec<bool>,
    shape: AttentionShape,
) -> Option<Tensor<B, 3>> {
    let capacity = keys.dims()[2];
    let out: Tensor<B, 4> = run(Attention { valid: Arc::new(valid), shape, capacity }, [q, keys, values])?;
    let [b, t, heads, hd] = out.dims();
    Some(host::reshape(out, [b, t, heads * hd]))
}

/// `x · w` on an autodiff backend with both operands taking gradients (a tuner's own factors).
pub(crate) fn matmul<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([m, k], [k2, n]) = (x.dims(), w.dims());
    (k == k2).then_some(())?;
    run(Matmul { m, k, n }, [x, w])
}

/// [`fused::token_nll_and_argmax`] on an autodiff backend: the logits get the gradient.
pub(crate) fn token_nll_and_argmax<B: Backend>(logits: Tensor<B, 2>, targets: &[usize]) -> Result<(Tensor<B, 1>, Vec<usize>), Tensor<B, 2>> {
    // The op consumes the logits: anything it could not read must be refused before.
    if logits.dtype() != burn::tensor::DType::F32 || !crate::backends::readable_on_autodiff(&logits) {
        return Err(logits);
    }
    let [_, vocab] = logits.dims();
    let argmax = Arc::new(OnceLock::new());
    let op = TokenNll { targets: targets.to_vec(), vocab, argmax: argmax.clone() };
    // By value, so that the node may hold the only reference to the logits' buffer.
    let primitive = logits.into_primitive().tensor();
    let nll = on_autodiff::<B, 1, _>(op, [primitive]).expect("f32 logits on an autodiff CPU backend are read on the host");
    let argmax = Arc::into_inner(argmax).and_then(OnceLock::into_inner).expect("the node records the argmax");
    Ok((Tensor::from_primitive(TensorPrimitive::Float(nll)), argmax))
}

/// [`host::reshape`] on an autodiff backend: the same buffer under a new shape, and a backward
/// node that reshapes the gradient back (both without a copy where burn-ndarray would copy).
pub(crate) fn reshape<B: Backend, const D1: usize, const D2: usize>(x: &Tensor<B, D1>, shape: &[usize; D2]) -> Option<Tensor<B, D2>> {
    run(Reshape { from: x.dims().to_vec(), to: shape.to_vec() }, [x])
}

/// Run `op` on `inputs`' primitives; its output has the rank the caller names.
fn run<B: Backend, const D: usize, const E: usize, const N: usize>(op: impl HostOp<N>, inputs: [&Tensor<B, E>; N]) -> Option<Tensor<B, D>> {
    let primitives = inputs.map(|t| t.clone().into_primitive().tensor());
    let out = on_autodiff::<B, N, _>(op, primitives)?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// An inner primitive's values in row-major order.
fn values<I: Backend>(primitive: &I::FloatTensorPrimitive) -> Option<Vec<f32>> {
    host::with_primitive_view(primitive, |v| v.to_row_major())
}

/// An inner primitive holding `values` (row-major `shape`); only called for the CPU backends
/// [`on_autodiff`] admits, whose primitives can always be built.
fn primitive<I: Backend>(values: Vec<f32>, shape: &[usize]) -> I::FloatTensorPrimitive {
    host::primitive_from_vec(values, shape).expect("a CPU backend's tensor from a vector")
}

/// `f` over `primitive`'s row-major values, in place where the tensor holds the only reference to
/// a row-major buffer, else over a copy that then replaces it (`shape` is the tensor's). Returns
/// `f`'s result and whether it ran in place; `None` where the values cannot be read.
fn update_values<I: Backend, R>(primitive: &mut I::FloatTensorPrimitive, shape: &[usize], mut f: impl FnMut(&mut [f32]) -> R) -> Option<(R, bool)> {
    if let Some(result) = host::with_unique_values_mut(primitive, &mut f) {
        return Some((result, true));
    }
    let mut copy = values::<I>(primitive)?;
    let result = f(&mut copy);
    *primitive = self::primitive::<I>(copy, shape);
    Some((result, false))
}

/// A gradient arriving in a backward pass, as row-major values (a buffer of its own, for
/// callers that write the input's gradient over it).
fn gradient<I: Backend>(grad: &I::FloatTensorPrimitive) -> Vec<f32> {
    values::<I>(grad).expect("a CPU backend's gradient is readable")
}

/// `f` on an inner primitive's values in row-major order, read in place when the tensor is laid
/// out that way (a copy only otherwise).
fn read<I: Backend, R>(primitive: &I::FloatTensorPrimitive, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    host::with_primitive_view(primitive, |view| f(&view.row_major()))
}

/// [`read`] of a gradient arriving in a backward pass.
fn read_gradient<I: Backend, R>(grad: &I::FloatTensorPrimitive, f: impl FnOnce(&[f32]) -> R) -> R {
    read::<I, R>(grad, f).expect("a CPU backend's gradient is readable")
}

/// A forward input kept for the backward pass: the tensor itself (its buffer shared, not
/// copied), read in place there.
struct Saved<I: Backend>(I::FloatTensorPrimitive);

impl<I: Backend> Saved<I> {
    fn read<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        read::<I, R>(&self.0, f).expect("a saved CPU tensor is readable")
    }
}

impl<I: Backend> Clone for Saved<I> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<I: Backend> std::fmt::Debug for Saved<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Saved")
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: y = x·g / r, r = sqrt(mean(x²) + eps). With u = g ⊙ dy:
// dx = (u − x · Σ(x ⊙ u) / (d · r²)) / r.

#[derive(Clone, Debug)]
struct RmsNorm {
    gamma: Arc<Vec<f32>>,
    eps: f32,
    shape: Vec<usize>,
}

#[derive(Clone, Debug)]
struct RmsNormState<I: Backend> {
    op: RmsNorm,
    x: Saved<I>,
}

impl HostOp<1> for RmsNorm {
    fn run<I: Backend>(self, [x]: [AutodiffPrimitive<I>; 1]) -> Option<AutodiffPrimitive<I>> {
        let y = primitive::<I>(read::<I, _>(&x.primitive, |xs| fused::rms_norm_rows(xs, &self.gamma, self.eps))?, &self.shape);
        Some(match RmsNormBackward.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(RmsNormState { op: self, x: Saved(x.primitive) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl<I: Backend> Backward<I, 1> for RmsNormBackward {
    type State = RmsNormState<I>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let RmsNormState { op, x } = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let dx = x.read(|x| {
                read_gradient::<I, _>(&grad, |dy| {
                    let (gamma, d) = (&op.gamma[..], op.gamma.len());
                    let mut dx = vec![0.0f32; dy.len()];
                    pool::for_each_chunk_mut(&mut dx, d, dy.len() >= PARALLEL_ELEMENTS, |i, dx| {
                        let (x, dy) = (&x[i * d..][..d], &dy[i * d..][..d]);
                        let r = fused::rms(x, op.eps);
                        let xu: f32 = x.iter().zip(dy).zip(gamma).map(|((x, dy), g)| x * g * dy).sum();
                        let c = xu / (d as f32 * r * r);
                        for (((dx, x), dy), g) in dx.iter_mut().zip(x).zip(dy).zip(gamma) {
                            *dx = (g * dy - x * c) / r;
                        }
                    });
                    dx
                })
            });
            primitive::<I>(dx, &op.shape)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: y = silu(g) · u (the gradients' formulas are in `simd`).

#[derive(Clone, Debug)]
struct Swiglu {
    shape: Vec<usize>,
}

#[derive(Clone, Debug)]
struct SwigluState<I: Backend> {
    shape: Vec<usize>,
    gate: Saved<I>,
    up: Saved<I>,
}

impl HostOp<2> for Swiglu {
    fn run<I: Backend>(self, [gate, up]: [AutodiffPrimitive<I>; 2]) -> Option<AutodiffPrimitive<I>> {
        let y = read::<I, _>(&gate.primitive, |g| read::<I, _>(&up.primitive, |u| fused::swiglu_values(g.to_vec(), u)))??;
        let y = primitive::<I>(y, &self.shape);
        Some(match SwigluBackward.prepare::<NoCheckpointing>([gate.node.clone(), up.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(SwigluState { shape: self.shape, gate: Saved(gate.primitive), up: Saved(up.primitive) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl<I: Backend> Backward<I, 2> for SwigluBackward {
    type State = SwigluState<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let SwigluState { shape, gate, up } = ops.state;
        let wants_up = ops.parents[1].is_some();
        gate.read(|gate| {
            up.read(|up| {
                let parallel = gate.len() >= PARALLEL_ELEMENTS;
                // The gate's gradient (first) computes the up's in the same pass, into a buffer
                // of its own handed on to the second closure: one sigmoid and one read of the
                // saved inputs per element instead of two.
                let up_grad = std::cell::Cell::new(None::<Vec<f32>>);
                binary::<I, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |mut grad| {
                        let mut d_up = if wants_up { vec![0.0f32; gate.len()] } else { Vec::new() };
                        let d_up_ptr = pool::SendPtr(d_up.as_mut_ptr());
                        update_values::<I, _>(&mut grad, &shape, |d| {
                            pool::for_each_chunk_mut(d, PIECE, parallel, |i, d| {
                                #[allow(clippy::redundant_locals)] // capture the Send wrapper whole, not its raw-pointer field
                                let d_up_ptr = d_up_ptr;
                                let at = i * PIECE;
                                if wants_up {
                                    // SAFETY: pieces are disjoint and `d_up` is as long as `d`.
                                    let d_up = unsafe { std::slice::from_raw_parts_mut(d_up_ptr.0.add(at), d.len()) };
                                    simd::silu_mul_grads(d, d_up, &gate[at..], &up[at..]);
                                } else {
                                    simd::silu_mul_gate_grad(d, &gate[at..], &up[at..]);
                                }
                            })
                        })
                        .expect("a CPU backend's gradient is readable");
                        if wants_up {
                            up_grad.set(Some(d_up));
                        }
                        grad
                    },
                    // Without a gate to differentiate, over the output's gradient (in place when
                    // nothing else holds it).
                    |mut grad| match up_grad.take() {
                        Some(d_up) => primitive::<I>(d_up, &shape),
                        None => {
                            update_values::<I, _>(&mut grad, &shape, |d| {
                                pool::for_each_chunk_mut(d, PIECE, parallel, |i, d| simd::silu_mul_up_grad(d, &gate[i * PIECE..]))
                            })
                            .expect("a CPU backend's gradient is readable");
                            grad
                        }
                    },
                );
            })
        });
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE: y = x ⊙ cos + swap(x) ⊙ sin is linear in x; its transpose gives dx from dy.

#[derive(Clone, Debug)]
struct Rope {
    shape: Vec<usize>,
}

#[derive(Clone, Debug)]
struct RopeState {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    shape: Vec<usize>,
}

impl HostOp<3> for Rope {
    fn run<I: Backend>(self, [x, cos, sin]: [AutodiffPrimitive<I>; 3]) -> Option<AutodiffPrimitive<I>> {
        let (cos, sin) = (values::<I>(&cos.primitive)?, values::<I>(&sin.primitive)?);
        let hd = self.shape[3];
        let y = primitive::<I>(read::<I, _>(&x.primitive, |x| rotate(x, &cos, &sin, hd, Rotation::Forward))?, &self.shape);
        // Only `x` is a parent: the tables are constants.
        Some(match RopeBackward.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(RopeState { cos: Arc::new(cos), sin: Arc::new(sin), shape: self.shape }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<I: Backend> Backward<I, 1> for RopeBackward {
    type State = RopeState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let RopeState { cos, sin, shape } = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            primitive::<I>(read_gradient::<I, _>(&grad, |dy| rotate(dy, &cos, &sin, shape[3], Rotation::Transposed)), &shape)
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Products: y = x w, dx = dy wᵀ, dw = xᵀ dy, all on `cpu::matmul` (the transposes are views).

#[derive(Clone, Debug)]
struct Matmul {
    m: usize,
    k: usize,
    n: usize,
}

#[derive(Clone, Debug)]
struct MatmulState<I: Backend> {
    op: Matmul,
    x: Saved<I>,
    w: Saved<I>,
}

impl HostOp<2> for Matmul {
    fn run<I: Backend>(self, [x, w]: [AutodiffPrimitive<I>; 2]) -> Option<AutodiffPrimitive<I>> {
        let Matmul { m, k, n } = self;
        let y = read::<I, _>(&x.primitive, |xs| read::<I, _>(&w.primitive, |ws| cpu::matmul(matrix(xs, m, k, k, 1), matrix(ws, k, n, n, 1))))??;
        let y = primitive::<I>(y, &[m, n]);
        Some(match MatmulBackward.prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(MatmulState { op: self, x: Saved(x.primitive), w: Saved(w.primitive) }, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

#[derive(Debug)]
struct MatmulBackward;

impl<I: Backend> Backward<I, 2> for MatmulBackward {
    type State = MatmulState<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let MatmulState { op: Matmul { m, k, n }, x, w } = ops.state;
        binary::<I, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| primitive::<I>(read_gradient::<I, _>(&grad, |dy| w.read(|w| cpu::matmul(matrix(dy, m, n, n, 1), matrix(w, n, k, 1, n)))), &[m, k]),
            |grad| primitive::<I>(read_gradient::<I, _>(&grad, |dy| x.read(|x| cpu::matmul(matrix(x, k, m, 1, k), matrix(dy, m, n, n, 1)))), &[k, n]),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Attention, per (row, KV head), with P = softmax(scale · Q Kᵀ) over the visible slots and
// O = P V: dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)), dQ = scale · dS K,
// dK = scale · dSᵀ Q. The query heads sharing a KV head are one task, so its dK and dV are
// summed over them without sharing a buffer between tasks.

#[derive(Clone, Debug)]
struct Attention {
    valid: Arc<Vec<bool>>,
    shape: AttentionShape,
    /// Slots in the key and value buffers (at least `shape.s`).
    capacity: usize,
}

#[derive(Clone, Debug)]
struct AttentionState<I: Backend> {
    op: Attention,
    q: Saved<I>,
    k: Saved<I>,
    v: Saved<I>,
    out: Saved<I>,
}

impl HostOp<3> for Attention {
    fn run<I: Backend>(self, [q, k, v]: [AutodiffPrimitive<I>; 3]) -> Option<AutodiffPrimitive<I>> {
        let AttentionShape { b, t, heads, kv_heads, hd, .. } = self.shape;
        let out = read::<I, _>(&q.primitive, |qs| {
            read::<I, _>(&k.primitive, |ks| {
                read::<I, _>(&v.primitive, |vs| {
                    let (kview, vview) = (Kv::row_major(ks, kv_heads, self.capacity, hd), Kv::row_major(vs, kv_heads, self.capacity, hd));
                    attention_values(qs, &kview, &vview, &self.valid, &self.shape)
                })
            })
        })???;
        let y = primitive::<I>(out, &[b, t, heads, hd]);
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        Some(match AttentionBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let state = AttentionState { op: self, q: Saved(q.primitive), k: Saved(k.primitive), v: Saved(v.primitive), out: Saved(y.clone()) };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

#[derive(Debug)]
struct AttentionBackward;

impl<I: Backend> Backward<I, 3> for AttentionBackward {
    type State = AttentionState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let state = ops.state;
        let d_out = grads.consume::<I>(&ops.node);
        let (dq, dk, dv) = state.q.read(|q| {
            state
                .k
                .read(|k| state.v.read(|v| state.out.read(|out| read_gradient::<I, _>(&d_out, |d_out| attention_gradients(&state.op, [q, k, v, out], d_out)))))
        });
        let AttentionShape { b, t, heads, kv_heads, hd, .. } = state.op.shape;
        let kv_shape = [b, kv_heads, state.op.capacity, hd];
        let [q, k, v] = ops.parents;
        for (parent, grad, shape) in [(q, dq, &[b, t, heads, hd]), (k, dk, &kv_shape), (v, dv, &kv_shape)] {
            if let Some(node) = parent {
                grads.register::<I>(node.id, primitive::<I>(grad, shape));
            }
        }
    }
}

/// A view of one attention operand (in bounds by construction).
fn matrix(data: &[f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> MatRef<'_> {
    MatRef::new(data, rows, cols, row_stride, col_stride).expect("attention operand in bounds")
}

/// The gradients of queries, keys and values (row-major, the inputs' shapes) from the output's.
/// One task per (row, KV head) walks its queries in the forward pass's blocks: each block
/// recomputes its probabilities over the slots it can see, adds its part of the keys' and
/// values' gradients, and writes its queries'.
fn attention_gradients(op: &Attention, [q, k, v, out]: [&[f32]; 4], d_out: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let shape = op.shape;
    let AttentionShape { b, t, heads, kv_heads, hd, s } = shape;
    let (groups, scale, capacity) = (shape.groups(), shape.scale(), op.capacity);
    let width = groups * hd; // a position's heads of one KV head, adjacent in q, out and d_out
    let mut dq = vec![0.0f32; q.len()];
    let mut dk = vec![0.0f32; k.len()];
    let mut dv = vec![0.0f32; v.len()];
    let (dq_ptr, dk_ptr, dv_ptr) = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    let task = |task: usize| {
        #[allow(clippy::redundant_locals)] // capture the Send wrappers whole, not their raw-pointer fields
        let (dq_ptr, dk_ptr, dv_ptr) = (dq_ptr, dk_ptr, dv_ptr);
        let (row, kvh) = (task / kv_heads, task % kv_heads);
        // This KV head's queries position by position: query `i * groups + g` is head
        // `kvh * groups + g` at position i.
        let at = |i: usize| ((row * t + i) * heads + kvh * groups) * hd;
        let gather = |from: &[f32]| -> Vec<f32> {
            let mut rows = Vec::with_capacity(t * width);
            (0..t).for_each(|i| rows.extend_from_slice(&from[at(i)..][..width]));
            rows
        };
        let (qb, ob, dob) = (gather(q), gather(out), gather(d_out));
        let base = (row * kv_heads + kvh) * capacity * hd;
        let (keys, vals) = (&k[base..][..s * hd], &v[base..][..s * hd]);
        let (mut d_keys, mut d_values, mut d_queries) = (vec![0.0f32; s * hd], vec![0.0f32; s * hd], vec![0.0f32; t * width]);
        for i0 in (0..t).step_by(fused::QUERY_BLOCK) {
            let n = fused::QUERY_BLOCK.min(t - i0);
            let seen = s - t + i0 + n;
            let (queries, rows) = (groups * n, i0 * groups..(i0 + n) * groups);
            let (q_block, do_block) = (matrix(&qb[rows.start * hd..], queries, hd, hd, 1), matrix(&dob[rows.start * hd..], queries, hd, hd, 1));
            // P, the probabilities the forward pass used.
            let mut p = vec![0.0f32; queries * seen];
            cpu::matmul_here(&mut p, q_block, matrix(keys, hd, seen, 1, hd), false);
            for (query, scores) in p.chunks_exact_mut(seen).enumerate() {
                shape.softmax_of_visible(scores, &op.valid, row, i0 + query / groups);
            }
            cpu::matmul_here(&mut d_values[..seen * hd], matrix(&p, seen, queries, 1, seen), do_block, true);
            // dS (scaled), written over dP = dO Vᵀ: P ⊙ (dP − ⟨dO, O⟩) · scale.
            let mut ds = vec![0.0f32; queries * seen];
            cpu::matmul_here(&mut ds, do_block, matrix(vals, hd, seen, 1, hd), false);
            for ((ds, p), query) in ds.chunks_exact_mut(seen).zip(p.chunks_exact(seen)).zip(rows.clone()) {
                let delta: f32 = dob[query * hd..][..hd].iter().zip(&ob[query * hd..][..hd]).map(|(a, b)| a * b).sum();
                for (ds, p) in ds.iter_mut().zip(p) {
                    *ds = p * (*ds - delta) * scale;
                }
            }
            cpu::matmul_here(&mut d_queries[rows.start * hd..rows.end * hd], matrix(&ds, queries, seen, seen, 1), matrix(keys, seen, hd, hd, 1), false);
            cpu::matmul_here(&mut d_keys[..seen * hd], matrix(&ds, seen, queries, 1, seen), q_block, true);
        }
        // SAFETY: task (row, kvh) alone writes this KV head's slots of dk / dv and the rows of
        // dq that belong to its query heads; the buffers outlive the pool job.
        unsafe {
            std::slice::from_raw_parts_mut(dk_ptr.0.add(base), s * hd).copy_from_slice(&d_keys);
            std::slice::from_raw_parts_mut(dv_ptr.0.add(base), s * hd).copy_from_slice(&d_values);
            for (i, heads_dq) in d_queries.chunks_exact(width).enumerate() {
                std::slice::from_raw_parts_mut(dq_ptr.0.add(at(i)), width).copy_from_slice(heads_dq);
            }
        }
    };
    let tasks = b * kv_heads;
    if shape.parallel() {
        pool::run(tasks, &task);
    } else {
        (0..tasks).for_each(task);
    }
    (dq, dk, dv)
}

// ---------------------------------------------------------------------------------------------
// Next-token NLL: nll_i = lse_i − x_{i,t_i}; with upstream g_i, dx_ij = g_i (softmax_ij − [j = t_i]).
// The forward pass turns the logits, each row while in cache, into the gradient for g = 1 (over
// their own buffer when the node holds the only reference); the backward scales its rows by g.

thread_local! {
    static LOSSES_IN_PLACE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many loss nodes this thread has built over their logits' own buffer (tests: per thread,
/// so tests running beside each other do not count each other's).
pub(crate) fn losses_in_place() -> u64 {
    LOSSES_IN_PLACE.get()
}

#[derive(Debug)]
struct TokenNll {
    targets: Vec<usize>,
    vocab: usize,
    /// Where the forward pass leaves each row's argmax for the caller.
    argmax: Arc<OnceLock<Vec<usize>>>,
}

/// The loss's gradient for a unit upstream, `[n, vocab]`.
struct UnitGradient<I: Backend> {
    values: I::FloatTensorPrimitive,
    shape: [usize; 2],
}

impl<I: Backend> Clone for UnitGradient<I> {
    fn clone(&self) -> Self {
        Self { values: self.values.clone(), shape: self.shape }
    }
}

impl<I: Backend> std::fmt::Debug for UnitGradient<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitGradient").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl TokenNll {
    /// The loss node's output, `[n]` NLLs; leaves the rows' argmax for the caller.
    fn output<I: Backend>(&self, rows: fused::RowsNll) -> I::FloatTensorPrimitive {
        self.argmax.set(rows.argmax).expect("each node's argmax is set once");
        primitive::<I>(rows.nll, &[self.targets.len()])
    }
}

impl HostOp<1> for TokenNll {
    fn run<I: Backend>(self, [logits]: [AutodiffPrimitive<I>; 1]) -> Option<AutodiffPrimitive<I>> {
        match TokenNllBackward.prepare::<NoCheckpointing>([logits.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                // The logits become the loss's gradient for a unit upstream, row by row.
                let mut gradient = logits.primitive;
                let shape = [self.targets.len(), self.vocab];
                let (rows, in_place) = update_values::<I, _>(&mut gradient, &shape, |values| fused::rows_nll_to_gradient(values, &self.targets))?;
                if in_place {
                    LOSSES_IN_PLACE.set(LOSSES_IN_PLACE.get() + 1);
                }
                Some(prep.finish(UnitGradient::<I> { values: gradient, shape }, self.output::<I>(rows)))
            }
            OpsKind::UnTracked(prep) => {
                let rows = host::with_primitive_view(&logits.primitive, |view| fused::rows_nll(&view, &self.targets))?;
                Some(prep.finish(self.output::<I>(rows)))
            }
        }
    }
}

#[derive(Debug)]
struct TokenNllBackward;

impl<I: Backend> Backward<I, 1> for TokenNllBackward {
    type State = UnitGradient<I>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let UnitGradient { values: mut unit, shape } = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            let g = gradient::<I>(&grad);
            update_values::<I, _>(&mut unit, &shape, |rows| fused::scale_rows(rows, &g)).expect("the gradient was written on the host");
            unit
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Reshape: the gradient is the output's, reshaped back.

#[derive(Clone, Debug)]
struct Reshape {
    from: Vec<usize>,
    to: Vec<usize>,
}

/// `primitive` as `shape`: without a copy where [`host::reshape_primitive`] can, else the inner
/// backend's own reshape.
fn reshape_inner<I: Backend>(primitive: I::FloatTensorPrimitive, shape: &[usize]) -> I::FloatTensorPrimitive {
    host::reshape_primitive(primitive, shape).unwrap_or_else(|p| I::float_reshape(p, shape.into()))
}

impl HostOp<1> for Reshape {
    fn run<I: Backend>(self, [x]: [AutodiffPrimitive<I>; 1]) -> Option<AutodiffPrimitive<I>> {
        let y = reshape_inner::<I>(x.primitive.clone(), &self.to);
        Some(match ReshapeBackward.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(self, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        })
    }
}

#[derive(Debug)]
struct ReshapeBackward;

impl<I: Backend> Backward<I, 1> for ReshapeBackward {
    type State = Reshape;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let from = ops.state.from;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| reshape_inner::<I>(grad, &from));
    }
}
