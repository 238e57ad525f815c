//! Where one decode step's time goes, on a real checkpoint:
//! `cargo run --release -p iapt-model --example profile_decode -- MODEL.gguf [ndarray|flex]`.
//!
//! Times the whole step (forward + head) and each kind of operation at decode shapes on their
//! own (median of several runs), so a slow primitive stands out from the sum.

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{backend::Backend, Distribution, Tensor, TensorData};
use iapt_model::{load_llama, KvCache, Llama, NoHook, TokenBatch};
use std::time::Instant;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[reps / 2]
}

fn sync<B: Backend, const D: usize>(t: Tensor<B, D>) {
    let _ = t.into_data();
}

fn profile<B: Backend>(path: &str, batch: usize) {
    let device = B::Device::default();
    let start = Instant::now();
    let model: Llama<B> = load_llama(std::path::Path::new(path), &device).expect("model loads");
    eprintln!("load: {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let c = model.config().clone();
    let (d, ff, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let prompt: Vec<Vec<u32>> = (0..batch).map(|r| (0..64).map(|i| 1000 + (i * 37 + r * 101) as u32).collect()).collect();

    // Whole steps.
    let mut cache = KvCache::new(c.num_layers);
    let start = Instant::now();
    let hidden = model.forward(TokenBatch::padded(&prompt, 0, iapt_model::Padding::Left, &device), &mut cache, &NoHook);
    sync(model.logits(hidden.narrow(1, 63, 1)));
    println!("prefill b{batch} t64 (+head): {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    let (mut fwd, mut head) = (0.0, 0.0);
    let steps = 8;
    for _ in 0..steps {
        let ids = Tensor::from_data(TensorData::new(vec![1234i64; batch], [batch, 1]), &device);
        let start = Instant::now();
        let hidden = model.forward(TokenBatch::dense(ids), &mut cache, &NoHook);
        let h = hidden.clone();
        sync(hidden);
        fwd += start.elapsed().as_secs_f64();
        let start = Instant::now();
        sync(model.logits(h));
        head += start.elapsed().as_secs_f64();
    }
    println!("decode step b{batch}: forward {:.1} ms, head {:.1} ms", fwd * 1e3 / steps as f64, head * 1e3 / steps as f64);

    // Under a sampling profiler, only the whole steps matter.
    if std::env::var_os("PROFILE_STEPS_ONLY").is_some() {
        for _ in 0..4 {
            let mut cache = KvCache::new(c.num_layers);
            let hidden = model.forward(TokenBatch::padded(&prompt, 0, iapt_model::Padding::Left, &device), &mut cache, &NoHook);
            sync(model.logits(hidden.narrow(1, 63, 1)));
            for _ in 0..16 {
                let ids = Tensor::from_data(TensorData::new(vec![1234i64; batch], [batch, 1]), &device);
                let hidden = model.forward(TokenBatch::dense(ids), &mut cache, &NoHook);
                sync(model.logits(hidden));
            }
        }
        return;
    }

    // Pieces at decode shapes.
    let m = batch;
    let x = Tensor::<B, 2>::random([m, d], Distribution::Default, &device);
    let xf = Tensor::<B, 2>::random([m, ff], Distribution::Default, &device);
    let layer = &model.layers[0];
    let lin = |name: &str, l: &burn::nn::Linear<B>, x: &Tensor<B, 2>| {
        let ms = median_ms(15, || sync(l.forward(x.clone())));
        println!("  linear {name} {:?}: {ms:.3} ms", l.weight.dims());
        ms
    };
    let per_layer = lin("q", &layer.self_attn.q_proj, &x)
        + lin("k", &layer.self_attn.k_proj, &x)
        + lin("v", &layer.self_attn.v_proj, &x)
        + lin("o", &layer.self_attn.o_proj, &x)
        + lin("gate", &layer.mlp.gate_proj, &x)
        + lin("up", &layer.mlp.up_proj, &x)
        + lin("down", &layer.mlp.down_proj, &xf);
    println!("  => linears x{} layers: {:.1} ms", c.num_layers, per_layer * c.num_layers as f64);
    // The same products over every layer's own weights, as a step runs them: the weights no
    // longer sit in cache, so this is the step's floor for the linears.
    let every_layer_linears = |x: &Tensor<B, 2>, xf: &Tensor<B, 2>| {
        for l in &model.layers {
            let (a, f) = (&l.self_attn, &l.mlp);
            for p in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &f.gate_proj, &f.up_proj] {
                sync(p.forward(x.clone()));
            }
            sync(f.down_proj.forward(xf.clone()));
        }
    };
    let ms = median_ms(5, || every_layer_linears(&x, &xf));
    println!("  => every layer's linears in turn: {ms:.1} ms");
    let table = model.embed_tokens.weight.val();
    let ms = median_ms(5, || sync(x.clone().matmul(table.clone().transpose())));
    println!("  head via transposed embedding view: {ms:.1} ms");
    let contiguous: Tensor<B, 2> = Tensor::from_data(table.clone().transpose().into_data(), &device);
    let ms = median_ms(5, || sync(x.clone().matmul(contiguous.clone())));
    println!("  head via contiguous [d, vocab] copy: {ms:.1} ms");
    let ms = median_ms(5, || sync(table.clone().matmul(x.clone().transpose()).transpose()));
    println!("  head as embedding [vocab, d] x h^T [d, m], transposed back: {ms:.1} ms");
    let ms = median_ms(5, || sync(table.clone().matmul(x.clone().transpose()).transpose().reshape([m, 1, vocab])));
    println!("  same + reshape to [m, 1, vocab]: {ms:.1} ms");
    // burn-ndarray copies both matmul operands into fresh buffers on every call; this shows
    // how much of the head is that copy (113 MB of fresh pages) rather than arithmetic.
    let rows = 4096;
    let split: Vec<Tensor<B, 2>> = (0..vocab)
        .step_by(rows)
        .map(|s| Tensor::from_data(table.clone().narrow(0, s, rows.min(vocab - s)).into_data(), &device))
        .collect();
    let ms = median_ms(5, || sync(Tensor::cat(split.iter().map(|c| c.clone().matmul(x.clone().transpose())).collect(), 0)));
    println!("  head E h^T over pre-split {rows}-row chunks: {ms:.1} ms");
    for rows in [8192, 12288, 16384, 24576] {
        let ms = median_ms(5, || {
            let parts = (0..vocab).step_by(rows).map(|s| table.clone().narrow(0, s, rows.min(vocab - s)).matmul(x.clone().transpose()));
            sync(Tensor::cat(parts.collect(), 0).transpose())
        });
        println!("  head E h^T over {rows}-row views of E: {ms:.1} ms");
    }
    // Fused products: one [d, q|k|v] and one [d, gate|up] weight instead of five.
    let fuse = |ws: &[&burn::nn::Linear<B>]| Tensor::cat(ws.iter().map(|l| l.weight.val()).collect(), 1);
    let fused: Vec<(Tensor<B, 2>, Tensor<B, 2>)> = model
        .layers
        .iter()
        .map(|l| (fuse(&[&l.self_attn.q_proj, &l.self_attn.k_proj, &l.self_attn.v_proj]), fuse(&[&l.mlp.gate_proj, &l.mlp.up_proj])))
        .collect();
    for rows in [m, 64 * m] {
        let x = Tensor::<B, 2>::random([rows, d], Distribution::Default, &device);
        let xf = Tensor::<B, 2>::random([rows, ff], Distribution::Default, &device);
        let separate = median_ms(5, || every_layer_linears(&x, &xf));
        let joined = median_ms(5, || {
            for (l, (qkv, gu)) in model.layers.iter().zip(&fused) {
                sync(x.clone().matmul(qkv.clone()));
                sync(l.self_attn.o_proj.forward(x.clone()));
                sync(x.clone().matmul(gu.clone()));
                sync(l.mlp.down_proj.forward(xf.clone()));
            }
        });
        println!("  all linears at m={rows}: separate {separate:.1} ms, fused qkv/gate-up {joined:.1} ms");
    }
    let ms = median_ms(5, || sync(table.clone().mul_scalar(1.0)));
    println!("  elementwise pass over the embedding: {ms:.1} ms");
    for l in [&layer.mlp.gate_proj, &layer.mlp.down_proj, &layer.self_attn.q_proj] {
        let w = l.weight.val();
        let wt: Tensor<B, 2> = Tensor::from_data(w.clone().transpose().into_data(), &device);
        let xin = if w.dims()[0] == d { x.clone() } else { xf.clone() };
        let a = median_ms(15, || sync(xin.clone().matmul(w.clone())));
        let b = median_ms(15, || sync(wt.clone().matmul(xin.clone().transpose()).transpose()));
        let b2 = median_ms(15, || sync(wt.clone().matmul(xin.clone().transpose()).transpose().reshape([m, 1, w.dims()[1]])));
        println!("  {:?}: x.W {a:.3} ms, (W^T x^T)^T {b:.3} ms (+reshape {b2:.3})", w.dims());
    }

    // Attention pieces (s = 65 slots).
    let (h, kv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let s = 65;
    let q = Tensor::<B, 4>::random([m, kv, h / kv, hd], Distribution::Default, &device);
    let k = Tensor::<B, 4>::random([m, kv, s, hd], Distribution::Default, &device);
    let ms = median_ms(15, || sync(q.clone().matmul(k.clone().swap_dims(2, 3))));
    println!("  attn q.k^T 4D: {ms:.3} ms");
    let p = Tensor::<B, 4>::random([m, kv, h / kv, s], Distribution::Default, &device);
    let ms = median_ms(15, || sync(softmax(p.clone(), 3)));
    println!("  attn softmax: {ms:.3} ms");
    let ms = median_ms(15, || sync(p.clone().matmul(k.clone())));
    println!("  attn p.v 4D: {ms:.3} ms");
    let new = Tensor::<B, 4>::random([m, kv, 1, hd], Distribution::Default, &device);
    let ms = median_ms(15, || sync(Tensor::cat(vec![k.clone(), new.clone()], 2)));
    println!("  kv cat: {ms:.3} ms");
    let x3 = x.clone().reshape([m, 1, d]);
    let ms = median_ms(15, || sync(layer.input_layernorm.forward(x3.clone())));
    println!("  rmsnorm: {ms:.3} ms");
    let g = Tensor::<B, 3>::random([m, 1, ff], Distribution::Default, &device);
    let ms = median_ms(15, || sync(silu(g.clone()) * g.clone()));
    println!("  silu*up: {ms:.3} ms");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: profile_decode MODEL.gguf [ndarray|flex] [batch]");
    let backend = args.get(2).map(String::as_str).unwrap_or("ndarray");
    let batch = args.get(3).map(|b| b.parse().unwrap()).unwrap_or(1);
    match backend {
        "ndarray" => profile::<burn::backend::NdArray<f32>>(path, batch),
        "flex" => profile::<burn::backend::Flex<f32, i32>>(path, batch),
        other => panic!("unknown backend {other}"),
    }
}
