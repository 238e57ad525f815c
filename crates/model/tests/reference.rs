//! A naive, loop-based LLaMA forward in f64 written from the architecture's definition, used as an
//! independent reference for the tensor implementation. Shared by the integration tests.
//! Soft tokens may be given per layer or generated from the states entering it (the tuners'
//! tests include this file and generate them with an f64 IAPT generator).
#![allow(dead_code)]

use burn::tensor::{backend::Backend, Tensor};
use iapt_model::{HostTensor, Llama};

pub type TB = burn::backend::NdArray;

/// Row-major host matrix.
#[derive(Clone)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn from_tensor<B: Backend>(t: Tensor<B, 2>) -> Self {
        let [rows, cols] = t.dims();
        let data = t.into_data().convert::<f64>().to_vec::<f64>().unwrap();
        Mat { rows, cols, data }
    }
    /// A HF `[out, in]` weight as the `[in, out]` matrix [`Mat::apply`] multiplies by.
    pub fn from_hf(t: &HostTensor) -> Self {
        let (out, inp) = (t.shape[0], t.shape[1]);
        let mut data = vec![0.0; out * inp];
        for o in 0..out {
            for i in 0..inp {
                data[i * out + o] = t.data[o * inp + i] as f64;
            }
        }
        Mat { rows: inp, cols: out, data }
    }
    /// x (len rows) times this `[in, out]` matrix.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.cols];
        for (i, xi) in x.iter().enumerate() {
            for (j, yj) in y.iter_mut().enumerate() {
                *yj += xi * self.data[i * self.cols + j];
            }
        }
        y
    }
}

pub fn vec1<B: Backend>(t: Tensor<B, 1>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

fn rms_norm(x: &[f64], gamma: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(gamma).map(|(v, g)| v * r * g).collect()
}

fn rope(x: &mut [f64], pos: f64, theta: f64) {
    let hd = x.len();
    for i in 0..hd / 2 {
        let freq = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
        let (s, c) = (pos * freq).sin_cos();
        let (a, b) = (x[i], x[i + hd / 2]);
        x[i] = a * c - b * s;
        x[i + hd / 2] = b * c + a * s;
    }
}

/// Logits `[t][vocab]` of one unpadded sequence. `soft[layer]`, when given, are soft tokens
/// (hidden space) inserted before the sequence at that layer only, at positions 0..n, real
/// tokens shifted by `offset`; their outputs are dropped after the layer. This is the literal
/// "run the soft tokens through the layer" definition the KV-prefix shortcut must equal.
pub fn reference_logits<B: Backend>(model: &Llama<B>, ids: &[u32], soft: &[Option<Vec<Vec<f64>>>], offset: usize) -> Vec<Vec<f64>> {
    reference_logits_generated(model, ids, offset, true, true, &|layer, _, _| soft.get(layer).cloned().flatten())
}

/// Soft tokens of a layer from the states entering it: `(layer, hidden, normed) -> tokens`.
pub type SoftTokens<'a> = dyn Fn(usize, &[Vec<f64>], &[Vec<f64>]) -> Option<Vec<Vec<f64>>> + 'a;

/// As [`reference_logits`], with each layer's soft tokens computed by `soft` from the real
/// tokens' hidden states entering that layer (and their input-RMSNormed version). With
/// `rope_soft` false the soft tokens' keys are not rotated; with `norm_soft` false the soft tokens
/// skip the input RMSNorm (they are already in the normed space).
pub fn reference_logits_generated<B: Backend>(
    model: &Llama<B>,
    ids: &[u32],
    offset: usize,
    rope_soft: bool,
    norm_soft: bool,
    soft: &SoftTokens<'_>,
) -> Vec<Vec<f64>> {
    let c = model.config().clone();
    let weights = model.to_weights().tensors;
    let host = |name: &str| weights.get(name).unwrap_or_else(|| panic!("no {name}"));
    let gamma = |name: &str| host(name).data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let embed = Mat::from_tensor(model.embedding_table());
    let mut xs: Vec<Vec<f64>> = ids.iter().map(|&t| embed.data[t as usize * c.hidden_size..(t as usize + 1) * c.hidden_size].to_vec()).collect();
    let (h, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    for l in 0..c.num_layers {
        let layer = |part: &str| format!("model.layers.{l}.{part}.weight");
        let g_in = gamma(&layer("input_layernorm"));
        let g_post = gamma(&layer("post_attention_layernorm"));
        let w = |part: &str| Mat::from_hf(host(&layer(part)));
        let (wq, wk, wv, wo) = (w("self_attn.q_proj"), w("self_attn.k_proj"), w("self_attn.v_proj"), w("self_attn.o_proj"));
        let (wg, wu, wd) = (w("mlp.gate_proj"), w("mlp.up_proj"), w("mlp.down_proj"));

        let normed_real: Vec<Vec<f64>> = xs.iter().map(|x| rms_norm(x, &g_in, c.rms_norm_eps)).collect();
        let soft_here = soft(l, &xs, &normed_real).unwrap_or_default();
        let n_soft = soft_here.len();
        let seq: Vec<Vec<f64>> = soft_here.iter().cloned().chain(xs.iter().cloned()).collect();
        let positions: Vec<f64> = (0..n_soft).map(|p| p as f64).chain((0..xs.len()).map(|p| (p + offset) as f64)).collect();
        let normed: Vec<Vec<f64>> =
            seq.iter().enumerate().map(|(i, x)| if i < n_soft && !norm_soft { x.clone() } else { rms_norm(x, &g_in, c.rms_norm_eps) }).collect();
        let qs: Vec<Vec<f64>> = normed.iter().map(|x| wq.apply(x)).collect();
        let ks: Vec<Vec<f64>> = normed.iter().map(|x| wk.apply(x)).collect();
        let vs: Vec<Vec<f64>> = normed.iter().map(|x| wv.apply(x)).collect();
        let mut out = Vec::new();
        for i in n_soft..seq.len() {
            let mut attn = vec![0.0; h * hd];
            for head in 0..h {
                let kv = head / (h / kvh);
                let mut q = qs[i][head * hd..(head + 1) * hd].to_vec();
                rope(&mut q, positions[i], c.rope_theta);
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let mut k = ks[j][kv * hd..(kv + 1) * hd].to_vec();
                        if j >= n_soft || rope_soft {
                            rope(&mut k, positions[j], c.rope_theta);
                        }
                        q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    for d in 0..hd {
                        attn[head * hd + d] += e / total * vs[j][kv * hd + d];
                    }
                }
            }
            let o = wo.apply(&attn);
            let x1: Vec<f64> = seq[i].iter().zip(&o).map(|(a, b)| a + b).collect();
            let n2 = rms_norm(&x1, &g_post, c.rms_norm_eps);
            let gate = wg.apply(&n2);
            let up = wu.apply(&n2);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = wd.apply(&act);
            out.push(x1.iter().zip(&down).map(|(a, b)| a + b).collect::<Vec<f64>>());
        }
        xs = out;
    }
    let g = gamma("model.norm.weight");
    let head = match weights.get("lm_head.weight") {
        Some(t) => Mat::from_hf(t),
        None => {
            // tied: logits = h . embed[v]
            let mut t = Mat { rows: c.hidden_size, cols: c.vocab_size, data: vec![0.0; c.hidden_size * c.vocab_size] };
            for v in 0..c.vocab_size {
                for d in 0..c.hidden_size {
                    t.data[d * c.vocab_size + v] = embed.data[v * c.hidden_size + d];
                }
            }
            t
        }
    };
    xs.iter().map(|x| head.apply(&rms_norm(x, &g, c.rms_norm_eps))).collect()
}

/// Max absolute difference.
pub fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}
