//! The fused kernels against naive f64 recomputations, on both inference CPU backends (their
//! autodiff nodes are checked against burn's autodiff in `gradients.rs`).

use burn::backend::{Flex, NdArray};
use burn::tensor::{backend::Backend, Bool, Distribution, Tensor, TensorData};
use iapt_kernels::fused::{attention, rms_norm, rope, swiglu, token_nll, token_nll_and_argmax};

fn host<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f64> {
    t.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: {g} vs {w}");
    }
}

fn rms_norm_matches<B: Backend>() {
    let device = B::Device::default();
    let (rows, d) = (7, 37);
    let x = Tensor::<B, 3>::random([1, rows, d], Distribution::Normal(0.0, 2.0), &device);
    let gamma = Tensor::<B, 1>::random([d], Distribution::Normal(1.0, 0.5), &device);
    let got = host(&rms_norm(&x, &gamma, 1e-5).expect("fused on an inference backend"));
    let (xs, gs) = (host(&x), host(&gamma));
    let want: Vec<f64> = xs
        .chunks(d)
        .flat_map(|row| {
            let rms = (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + 1e-5).sqrt();
            row.iter().zip(&gs).map(move |(v, g)| v / rms * g).collect::<Vec<_>>()
        })
        .collect();
    assert_close(&got, &want, 1e-5, "rms_norm");
}

fn swiglu_matches<B: Backend>() {
    let device = B::Device::default();
    let gate = Tensor::<B, 3>::random([2, 3, 50], Distribution::Normal(0.0, 3.0), &device);
    let up = Tensor::<B, 3>::random([2, 3, 50], Distribution::Normal(0.0, 1.0), &device).swap_dims(0, 1).swap_dims(0, 1);
    let got = host(&swiglu(&gate, &up).expect("fused on an inference backend"));
    let want: Vec<f64> = host(&gate).iter().zip(host(&up)).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
    assert_close(&got, &want, 1e-6, "swiglu");
}

fn rope_matches<B: Backend>() {
    let device = B::Device::default();
    let (b, t, heads, hd) = (2, 5, 3, 8);
    let x = Tensor::<B, 4>::random([b, t, heads, hd], Distribution::Normal(0.0, 1.0), &device);
    // A strided input: the kernel must read through any layout.
    let x = x.swap_dims(1, 2).swap_dims(1, 2);
    let angles = Tensor::<B, 4>::random([b, t, 1, hd / 2], Distribution::Uniform(-3.0, 3.0), &device);
    let (cos, sin) = (angles.clone().cos(), angles.sin());
    let cos = Tensor::cat(vec![cos.clone(), cos], 3);
    let signed_sin = Tensor::cat(vec![sin.clone().neg(), sin], 3);
    let got = host(&rope(&x, &cos, &signed_sin).expect("fused on an inference backend"));
    let (xs, cs, ss) = (host(&x), host(&cos), host(&signed_sin));
    let mut want = vec![0.0; xs.len()];
    for p in 0..b * t {
        for h in 0..heads {
            let base = (p * heads + h) * hd;
            for d in 0..hd {
                let swapped = xs[base + (d + hd / 2) % hd];
                want[base + d] = xs[base + d] * cs[p * hd + d] + swapped * ss[p * hd + d];
            }
        }
    }
    assert_close(&got, &want, 1e-6, "rope");
}

/// Naive causal GQA attention in f64 with the model's visibility rule.
#[allow(clippy::too_many_arguments)]
fn naive_attention(q: &[f64], k: &[f64], v: &[f64], valid: &[bool], b: usize, t: usize, heads: usize, kv: usize, s: usize, hd: usize) -> Vec<f64> {
    let groups = heads / kv;
    let mut out = vec![0.0; b * t * heads * hd];
    for r in 0..b {
        for h in 0..heads {
            let kvh = h / groups;
            for i in 0..t {
                let slot = s - t + i;
                let query = &q[((r * t + i) * heads + h) * hd..][..hd];
                let seen: Vec<usize> = (0..=slot).filter(|&j| j == slot || valid[r * s + j]).collect();
                let key = |j: usize| &k[((r * kv + kvh) * s + j) * hd..][..hd];
                let scores: Vec<f64> = seen.iter().map(|&j| query.iter().zip(key(j)).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()).collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for d in 0..hd {
                    out[((r * t + i) * heads + h) * hd + d] =
                        seen.iter().zip(&weights).map(|(&j, w)| w * v[((r * kv + kvh) * s + j) * hd + d]).sum::<f64>() / total;
                }
            }
        }
    }
    out
}

fn attention_matches<B: Backend>() {
    let device = B::Device::default();
    // Prefill with left padding (t = s) and a prefix; decode (t = 1); GQA groups 3; odd sizes;
    // a prompt longer than one block of queries; decoding's few queries per KV head (one or two
    // positions, SmolLM2's heads) over a long cache, spread over the pool.
    for &(b, t, s, heads, kv, hd) in
        &[(2, 6, 6, 6, 2, 8), (3, 1, 9, 6, 2, 16), (1, 4, 11, 3, 3, 12), (2, 7, 7, 4, 1, 20), (2, 40, 45, 4, 2, 8), (2, 2, 50, 9, 3, 64), (1, 1, 150, 9, 3, 64)]
    {
        let q = Tensor::<B, 4>::random([b, t, heads, hd], Distribution::Normal(0.0, 1.0), &device);
        // Keys/values as the cache holds them after prefill: a [b, s, kv, hd] tensor's axes swapped.
        let k = Tensor::<B, 4>::random([b, s, kv, hd], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
        let v = Tensor::<B, 4>::random([b, s, kv, hd], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
        // Row r has its first r slots invalid (left padding); one middle slot of row 0 invalid.
        let valid: Vec<bool> = (0..b).flat_map(|r| (0..s).map(move |j| j >= r && !(r == 0 && j == s / 2 && j < s - t))).collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(valid.clone(), [b, s]), &device);
        let got = host(&attention(&q, &k, &v, &mask, s).expect("fused on an inference backend"));
        // The same slots inside bigger buffers (the KV cache's spare room) give the same result.
        let spare = |t: Tensor<B, 4>| Tensor::cat(vec![t.clone(), Tensor::random([b, kv, 5, hd], Distribution::Normal(0.0, 1.0), &device)], 2);
        let roomy_mask = Tensor::cat(vec![mask.clone(), Tensor::<B, 2, Bool>::full([b, 5], true, &device)], 1);
        let roomy = host(&attention(&q, &spare(k.clone()), &spare(v.clone()), &roomy_mask, s).expect("fused on an inference backend"));
        assert_eq!(got, roomy, "spare slots are never read");
        let want = naive_attention(&host(&q), &host(&k), &host(&v), &valid, b, t, heads, kv, s, hd);
        assert_close(&got, &want, 1e-5, &format!("attention b{b} t{t} s{s} heads{heads}/{kv} hd{hd}"));
    }
}

/// Next-token NLLs of rows with logits far apart (a naive `Σ exp` would overflow at 100), of a
/// 49k-wide vocabulary split over the pool, and of a transposed (strided) view.
fn token_nll_matches<B: Backend>() {
    let device = B::Device::default();
    let naive = |x: &[f64], vocab: usize, targets: &[usize]| -> Vec<f64> {
        x.chunks(vocab)
            .zip(targets)
            .map(|(row, &t)| {
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - row[t]
            })
            .collect()
    };
    for (n, vocab, std, offset) in [(3, 11, 3.0, 100.0), (20, 49_152, 4.0, 0.0)] {
        let x = Tensor::<B, 2>::random([n, vocab], Distribution::Normal(offset, std), &device);
        let targets: Vec<usize> = (0..n).map(|i| (i * 7919) % vocab).collect();
        let got = host(&token_nll(&x, &targets).expect("fused on an inference backend"));
        assert_close(&got, &naive(&host(&x), vocab, &targets), 1e-5, &format!("token_nll {n}x{vocab}"));
    }
    // The argmax is each row's first maximum: row 0 holds its maximum twice, row 1 three times,
    // row 2 in every column.
    let values = [0.5f32, 2.0, -1.0, 2.0, 0.0, 3.0, -3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 9.0];
    let x = Tensor::<B, 2>::from_data(TensorData::new(values.to_vec(), [4, 5]), &device);
    let targets = [1, 0, 4, 2];
    let (nll, argmax) = token_nll_and_argmax(x.clone(), &targets).unwrap_or_else(|_| panic!("fused on an inference backend"));
    assert_eq!(argmax, [1, 0, 0, 4]);
    assert_close(&host(&nll), &naive(&host(&x), 5, &targets), 1e-5, "token_nll_and_argmax");
    // A row of NaN has no maximum: argmax 0, and its NLL is NaN, not a number that looks valid.
    let x = Tensor::<B, 2>::from_data(TensorData::new(vec![f32::NAN; 3], [1, 3]), &device);
    let (nll, argmax) = token_nll_and_argmax(x, &[1]).unwrap_or_else(|_| panic!("fused on an inference backend"));
    assert_eq!(argmax, [0]);
    assert!(host(&nll)[0].is_nan());
    let stored = Tensor::<B, 2>::random([13, 5], Distribution::Normal(0.0, 2.0), &device);
    let x = stored.swap_dims(0, 1);
    let targets = [0, 12, 3, 7, 7];
    let got = host(&token_nll(&x, &targets).expect("fused on a strided view"));
    assert_close(&got, &naive(&host(&x), 13, &targets), 1e-5, "token_nll, strided");
    assert!(token_nll(&x, &[0, 1, 2, 3, 13]).is_none(), "a target outside the vocabulary is refused");
}

/// A reshape is burn's reshape; on burn-ndarray a contiguous tensor keeps its buffer (burn's own
/// reshape copies it), a strided one is copied into the new shape.
fn reshape_matches<B: Backend>(shares_buffer: bool) {
    let device = B::Device::default();
    let x = Tensor::<B, 3>::random([2, 3, 4], Distribution::Normal(0.0, 1.0), &device);
    let address = |t: &Tensor<B, 2>| iapt_kernels::host::with_view(t, |v| v.data.as_ptr() as usize).unwrap();
    let first = |t: &Tensor<B, 3>| iapt_kernels::host::with_view(t, |v| v.data.as_ptr() as usize).unwrap();
    let reshaped = iapt_kernels::host::reshape(x.clone(), [6, 4]);
    assert_eq!(host(&reshaped), host(&x.clone().reshape([6, 4])));
    if shares_buffer {
        assert_eq!(address(&reshaped), first(&x), "a contiguous reshape kept its buffer");
    }
    // The two tensors share memory now: an op that may write in place must not reach `x`.
    let before = host(&x);
    let bumped = reshaped + 1.0;
    assert_eq!(host(&x), before, "writing through the reshape changed the original");
    assert_eq!(host(&bumped), before.iter().map(|&v| f64::from(v as f32 + 1.0)).collect::<Vec<_>>());
    let strided = x.clone().swap_dims(0, 2);
    assert_eq!(host(&iapt_kernels::host::reshape(strided.clone(), [4, 6])), host(&strided.reshape([4, 6])));
}

#[test]
fn ndarray_fused_kernels_match_naive_f64() {
    reshape_matches::<NdArray>(true);
    token_nll_matches::<NdArray>();
    rms_norm_matches::<NdArray>();
    swiglu_matches::<NdArray>();
    rope_matches::<NdArray>();
    attention_matches::<NdArray>();
}

#[test]
fn flex_fused_kernels_match_naive_f64() {
    reshape_matches::<Flex>(false);
    token_nll_matches::<Flex>();
    rms_norm_matches::<Flex>();
    swiglu_matches::<Flex>();
    rope_matches::<Flex>();
    attention_matches::<Flex>();
}

/// The KV cache's decode write goes in place into a buffer nothing else holds, and is refused
/// (the buffer handed back unchanged) while a view of it is alive.
fn slots_write_in_place<B: Backend>() {
    let device = B::Device::default();
    let buffer = Tensor::<B, 4>::zeros([2, 1, 4, 3], &device);
    let new = Tensor::<B, 4>::ones([2, 1, 1, 3], &device);
    let buffer = iapt_kernels::host::write_slots(buffer, 2, &new).expect("a unique buffer is written in place");
    let held = buffer.clone();
    let buffer = iapt_kernels::host::write_slots(buffer, 3, &new).expect_err("a shared buffer is refused");
    let got: Vec<f32> = buffer.into_data().to_vec().unwrap();
    let want: Vec<f32> = (0..24).map(|i| if (i % 12) / 3 == 2 { 1.0 } else { 0.0 }).collect();
    assert_eq!(got, want, "the refused buffer is unchanged");
    assert_eq!(held.into_data().to_vec::<f32>().unwrap(), want, "and so is what shares it");
}

#[test]
fn kv_slots_are_written_in_place_on_both_backends() {
    slots_write_in_place::<NdArray>();
    slots_write_in_place::<Flex>();
}
