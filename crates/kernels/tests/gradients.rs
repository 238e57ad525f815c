//! The kernels' backward nodes on the autodiff CPU backends (products of trainable operands, the
//! fused ops) against burn's own ops and autodiff on the same expressions: outputs and every
//! input's gradient.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::activation::{log_softmax, silu, softmax};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use iapt_kernels::fused::{attention, losses_in_place, rms_norm, rope, swiglu, token_nll, token_nll_and_argmax};

fn host<B: burn::tensor::backend::Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale.max(1e-3), "{what}: element {i}: {g} vs {w} (largest {scale})");
    }
}

/// A random tensor that takes gradients.
fn tracked<B: AutodiffBackend, const D: usize>(shape: [usize; D], std: f64) -> Tensor<B, D> {
    Tensor::random(shape, Distribution::Normal(0.0, std), &Default::default()).require_grad()
}

/// `sum(out · w)` for a fixed random `w`: every output element gets its own upstream gradient.
fn weighted_sum<B: AutodiffBackend, const D: usize>(out: Tensor<B, D>, w: &Tensor<B, D>) -> Tensor<B, 1> {
    (out * w.clone()).sum()
}

/// The fused op (`fused`) and burn's (`reference`) on the same inputs: equal outputs and
/// gradients for each input, `what` naming them.
fn compare<B: AutodiffBackend, const D: usize, const E: usize>(
    inputs: &[Tensor<B, E>],
    fused: impl Fn(&[Tensor<B, E>]) -> Option<Tensor<B, D>>,
    reference: impl Fn(&[Tensor<B, E>]) -> Tensor<B, D>,
    what: &str,
) {
    let got = fused(inputs).unwrap_or_else(|| panic!("{what}: the fused kernel declined an autodiff CPU backend"));
    let want = reference(inputs);
    assert_eq!(got.dims(), want.dims(), "{what}: output shape");
    assert_close(&host(&got), &host(&want), 1e-5, &format!("{what}: output"));
    let w = Tensor::<B, D>::random(want.dims(), Distribution::Normal(0.0, 1.0), &Default::default());
    let got_grads = weighted_sum(got, &w).backward();
    let want_grads = weighted_sum(want, &w).backward();
    for (i, input) in inputs.iter().enumerate() {
        let got = input.grad(&got_grads).unwrap_or_else(|| panic!("{what}: input {i} got no gradient from the fused node"));
        let want = input.grad(&want_grads).unwrap();
        // 1e-3 of the largest entry: both sides are f32, and attention's dS = P ⊙ (dP − rowsum(dO ⊙ O))
        // cancels (seen: 1.05e-4 on one key entry); a wrong formula is off by O(1) (a dropped
        // softmax scale: 0.89 against 0.31).
        assert_close(&host(&got), &host(&want), 1e-3, &format!("{what}: gradient of input {i}"));
    }
}

/// Both operands take gradients (a tuner's factors), on shapes the kernels split different ways
/// (one row, a thin rank, a tall product).
fn matmul_gradients<B: AutodiffBackend>() {
    for &(m, k, n) in &[(1, 9, 5), (40, 33, 8), (70, 8, 130)] {
        let inputs = [tracked::<B, 2>([m, k], 1.0), tracked::<B, 2>([k, n], 1.0)];
        compare(&inputs, |x| Some(iapt_kernels::matmul(x[0].clone(), x[1].clone())), |x| x[0].clone().matmul(x[1].clone()), &format!("matmul {m}x{k}x{n}"));
    }
}

fn rms_norm_gradients<B: AutodiffBackend>() {
    let device = Default::default();
    let d = 37;
    let gamma = Tensor::<B, 1>::random([d], Distribution::Normal(1.0, 0.5), &device);
    let reference = |x: &[Tensor<B, 3>]| {
        let x = x[0].clone();
        let rms = (x.clone().powi_scalar(2).mean_dim(2) + 1e-5).sqrt();
        x / rms * gamma.clone().reshape([1, 1, d])
    };
    compare(&[tracked::<B, 3>([2, 5, d], 2.0)], |x| rms_norm(&x[0], &gamma, 1e-5), reference, "rms_norm");
    // Enough rows to be split over the pool.
    compare(&[tracked::<B, 3>([8, 120, d], 2.0)], |x| rms_norm(&x[0], &gamma, 1e-5), reference, "rms_norm, parallel");
    // A gain in the graph (a parameter, or computed from one) is left to burn's ops, which give
    // it its gradient; so is one of the wrong length.
    let x = tracked::<B, 3>([1, 2, d], 1.0);
    assert!(rms_norm(&x, &gamma.clone().require_grad(), 1e-5).is_none());
    assert!(rms_norm(&x, &(gamma.clone().require_grad() * 2.0), 1e-5).is_none());
    assert!(rms_norm(&x, &gamma.clone().narrow(0, 0, d - 1), 1e-5).is_none());
}

fn swiglu_gradients<B: AutodiffBackend>() {
    let inputs = [tracked::<B, 3>([2, 3, 50], 3.0), tracked::<B, 3>([2, 3, 50], 1.0)];
    compare(&inputs, |x| swiglu(&x[0], &x[1]), |x| silu(x[0].clone()) * x[1].clone(), "swiglu");
    // Many pieces over the pool, read through a strided (transposed) layout.
    let inputs = [tracked::<B, 3>([25, 4, 1000], 3.0), tracked::<B, 3>([25, 4, 1000], 1.0)];
    let strided = |x: &Tensor<B, 3>| x.clone().swap_dims(0, 1);
    compare(&inputs, |x| swiglu(&strided(&x[0]), &strided(&x[1])), |x| silu(strided(&x[0])) * strided(&x[1]), "swiglu, parallel and strided");
    // Only one input takes gradients (the backward computes both in one pass when it can).
    for tracked_input in 0..2 {
        let device = Default::default();
        let make = |i: usize, std: f64| {
            let t = Tensor::<B, 3>::random([3, 4, 40], Distribution::Normal(0.0, std), &device);
            if i == tracked_input {
                t.require_grad()
            } else {
                t
            }
        };
        let (gate, up) = (make(0, 3.0), make(1, 1.0));
        let w = Tensor::<B, 3>::random([3, 4, 40], Distribution::Normal(0.0, 1.0), &device);
        let got = weighted_sum(swiglu(&gate, &up).expect("the fused kernel"), &w).backward();
        let want = weighted_sum(silu(gate.clone()) * up.clone(), &w).backward();
        let x = [&gate, &up][tracked_input];
        let what = format!("swiglu, only input {tracked_input} tracked");
        assert_close(&host(&x.grad(&got).expect(&what)), &host(&x.grad(&want).unwrap()), 1e-3, &what);
        assert!([&gate, &up][1 - tracked_input].grad(&got).is_none(), "{what}: the constant got a gradient");
    }
}

fn rope_gradients<B: AutodiffBackend>() {
    let device = Default::default();
    let (b, t, heads, hd) = (2, 5, 3, 8);
    let angles = Tensor::<B, 4>::random([b, t, 1, hd / 2], Distribution::Uniform(-3.0, 3.0), &device);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let cos = Tensor::cat(vec![cos.clone(), cos], 3);
    let signed_sin = Tensor::cat(vec![sin.clone().neg(), sin], 3);
    let reference = |x: &[Tensor<B, 4>]| {
        let x = x[0].clone();
        let swapped = Tensor::cat(vec![x.clone().narrow(3, hd / 2, hd / 2), x.clone().narrow(3, 0, hd / 2)], 3);
        x * cos.clone() + swapped * signed_sin.clone()
    };
    compare(&[tracked::<B, 4>([b, t, heads, hd], 1.0)], |x| rope(&x[0], &cos, &signed_sin), reference, "rope");
    // Tables in the graph are left to burn's ops.
    assert!(rope(&tracked::<B, 4>([b, t, heads, hd], 1.0), &(cos.clone().require_grad() * 1.0), &signed_sin).is_none());
}

/// Causal GQA attention in burn's ops with the kernels' visibility rule: a query sees the valid
/// slots up to its own and always its own; slots past `s` are never read.
fn reference_attention<B: AutodiffBackend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, valid: &[bool], s: usize) -> Tensor<B, 3> {
    let [b, t, heads, hd] = q.dims();
    let kv = k.dims()[1];
    let groups = heads / kv;
    let repeat = |x: Tensor<B, 4>| x.narrow(2, 0, s).unsqueeze_dim::<5>(2).expand([b, kv, groups, s, hd]).reshape([b, heads, s, hd]);
    let hidden: Vec<bool> = (0..b)
        .flat_map(|r| (0..t).flat_map(move |i| (0..s).map(move |j| (r, s - t + i, j))))
        .map(|(r, slot, j)| !(j == slot || (j < slot && valid[r * s + j])))
        .collect();
    let hidden = Tensor::<B, 4, Bool>::from_data(TensorData::new(hidden, [b, 1, t, s]), &q.device()).expand([b, heads, t, s]);
    let scores = q.swap_dims(1, 2).matmul(repeat(k).swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
    let probs = softmax(scores.mask_fill(hidden, -1.0e9), 3);
    probs.matmul(repeat(v)).swap_dims(1, 2).reshape([b, t, heads * hd])
}

fn attention_gradients<B: AutodiffBackend>() {
    let device = Default::default();
    // Training's shapes (t = s: keys are the prompt's, or prefix + prompt) with padding, GQA,
    // one KV head for all, decode-like t < s inside buffers with spare slots, and one big
    // enough to be split over the pool.
    for &(b, t, s, capacity, heads, kv, hd) in
        &[(2, 6, 6, 6, 6, 2, 8), (2, 5, 9, 9, 4, 2, 16), (3, 7, 7, 7, 4, 1, 12), (2, 3, 8, 12, 6, 3, 8), (1, 40, 44, 44, 2, 2, 8), (2, 64, 66, 70, 8, 2, 16)]
    {
        let q = tracked::<B, 4>([b, t, heads, hd], 1.0);
        let k = tracked::<B, 4>([b, kv, capacity, hd], 1.0);
        let v = tracked::<B, 4>([b, kv, capacity, hd], 1.0);
        // Row r has its first r slots invalid (left padding); one middle slot of row 0 invalid.
        let valid: Vec<bool> = (0..b).flat_map(|r| (0..s).map(move |j| j >= r && !(r == 0 && j == s / 2 && j < s - t))).collect();
        let padded: Vec<bool> = valid.chunks(s).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(false, capacity - s))).collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(padded, [b, capacity]), &device);
        compare(
            &[q, k, v],
            |x| attention(&x[0], &x[1], &x[2], &mask, s),
            |x| reference_attention(x[0].clone(), x[1].clone(), x[2].clone(), &valid, s),
            &format!("attention b{b} t{t} s{s} capacity{capacity} heads{heads}/{kv} hd{hd}"),
        );
    }
}

/// The next-token NLL's node: the logits' gradient `g (softmax − onehot)`, on rows split over the
/// pool and on a transposed (strided) view.
fn token_nll_gradients<B: AutodiffBackend>() {
    for (n, vocab, transposed) in [(3, 11, false), (40, 3000, false), (6, 13, true)] {
        let targets: Vec<usize> = (0..n).map(|i| (i * 7919) % vocab).collect();
        let ids = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(targets.iter().map(|&t| t as i64).collect(), [n]), &Default::default());
        let input = if transposed { tracked::<B, 2>([vocab, n], 3.0) } else { tracked::<B, 2>([n, vocab], 3.0) };
        let view = |x: &Tensor<B, 2>| if transposed { x.clone().swap_dims(0, 1) } else { x.clone() };
        let reference = |x: &[Tensor<B, 2>]| log_softmax(view(&x[0]), 1).gather(1, ids.clone().reshape([n, 1])).reshape([n]).neg();
        let what = format!("token_nll {n}x{vocab}{}", if transposed { ", strided" } else { "" });
        // Logits that share their buffer with the input: the gradient goes into a copy.
        compare(std::slice::from_ref(&input), |x| token_nll(&view(&x[0]), &targets), reference, &what);
        // Logits of their own (a product's output, passed by value): written over in place.
        let want_argmax: Vec<usize> = view(&input).argmax(1).into_data().convert::<i64>().iter::<i64>().map(|i| i as usize).collect();
        let before = losses_in_place();
        compare(
            std::slice::from_ref(&input),
            |x| {
                let (nll, argmax) = token_nll_and_argmax(view(&x[0]).mul_scalar(1.0), &targets).ok()?;
                assert_eq!(argmax, want_argmax, "{what}: argmax");
                Some(nll)
            },
            reference,
            &format!("{what}, in place"),
        );
        // Row-major logits of their own are written over (whether a transposed input's product
        // comes out row-major is the backend's choice: flex's does, ndarray's keeps the layout).
        if !transposed {
            assert_eq!(losses_in_place() - before, 1, "{what}: in place");
        }
        // Logits outside the graph: read only, same values and argmax.
        let (nll, argmax) = token_nll_and_argmax(view(&input.clone().detach()), &targets).unwrap_or_else(|_| panic!("{what}: untracked"));
        assert_eq!(argmax, want_argmax, "{what}: untracked argmax");
        assert_close(&host(&nll), &host(&reference(std::slice::from_ref(&input))), 1e-5, &format!("{what}: untracked"));
    }
    // Logits it cannot read in place (negative strides) are handed back for burn's ops.
    let flipped = tracked::<B, 2>([4, 9], 1.0).flip([1]);
    assert!(token_nll_and_argmax(flipped, &[0, 1, 2, 3]).is_err(), "flipped logits are refused, not consumed");
}

/// A reshape of a contiguous tensor, and of a transposed one (which burn copies), with the
/// gradient reshaped back.
fn reshape_gradients<B: AutodiffBackend>() {
    compare(&[tracked::<B, 3>([2, 3, 4], 1.0)], |x| Some(iapt_kernels::host::reshape(x[0].clone(), [6, 4])), |x| x[0].clone().reshape([6, 4]), "reshape");
    let strided = |x: &Tensor<B, 3>| x.clone().swap_dims(0, 2);
    compare(
        &[tracked::<B, 3>([2, 3, 4], 1.0)],
        |x| Some(iapt_kernels::host::reshape(strided(&x[0]), [4, 6])),
        |x| strided(&x[0]).reshape([4, 6]),
        "reshape, strided",
    );
}

/// Every node of the kernels on one autodiff backend.
fn all_gradients<B: AutodiffBackend>() {
    matmul_gradients::<B>();
    rms_norm_gradients::<B>();
    swiglu_gradients::<B>();
    rope_gradients::<B>();
    attention_gradients::<B>();
    token_nll_gradients::<B>();
    reshape_gradients::<B>();
}

#[test]
fn autodiff_ndarray_fused_gradients_match_burns_ops() {
    all_gradients::<Autodiff<NdArray>>();
}

/// On autodiff over burn-ndarray a contiguous reshape keeps its buffer (burn's own copies it):
/// the node of `reshape_gradients` above is the one that ran.
#[test]
fn autodiff_ndarray_reshape_keeps_the_buffer() {
    let x = tracked::<Autodiff<NdArray>, 3>([2, 3, 4], 1.0);
    let y = iapt_kernels::host::reshape(x.clone(), [6, 4]);
    let x_at = iapt_kernels::host::with_view(&x.inner(), |v| v.data.as_ptr() as usize).unwrap();
    let y_at = iapt_kernels::host::with_view(&y.inner(), |v| v.data.as_ptr() as usize).unwrap();
    assert_eq!(x_at, y_at);
}

#[test]
fn autodiff_flex_fused_gradients_match_burns_ops() {
    all_gradients::<Autodiff<Flex>>();
}

/// Without inputs that take gradients the fused ops still run, and record nothing to go back
/// through.
#[test]
fn untracked_inputs_run_forward_only() {
    type B = Autodiff<NdArray>;
    let x = Tensor::<B, 3>::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &Default::default());
    let y = swiglu(&x, &x).expect("fused on autodiff");
    assert!(!y.is_require_grad());
    assert_close(&host(&y), &host(&(silu(x.clone()) * x)), 1e-6, "untracked swiglu");
}
