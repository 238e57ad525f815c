//! Decoding's attention on the ndarray backend, one step of SmolLM2's 30 layers: `rows` rows of
//! one new query (9 query heads over 3 KV heads of 64) over the first `slots` of a KV cache with
//! room for `capacity`, each layer with its own cache (so keys and values come from memory, as in
//! a real step; `caches 1` gives every layer the same, cache-resident one):
//! `cargo run --release -p iapt-kernels --example decode_attention [rows 8] [slots 192]
//! [capacity 256] [caches 30] [repeats 21]`. Prints the median step and the keys and values it
//! read per second.

use burn::backend::NdArray;
use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use std::time::Instant;

type B = NdArray;

const LAYERS: usize = 30;

fn main() {
    iapt_kernels::use_this_thread_in_pool();
    let arg = |i: usize, default: usize| std::env::args().nth(i).map(|a| a.parse().expect("a number")).unwrap_or(default);
    let (rows, slots, capacity, caches, repeats) = (arg(1, 8), arg(2, 192), arg(3, 256), arg(4, LAYERS).max(1), arg(5, 21).max(1));
    assert!(slots <= capacity, "slots {slots} > capacity {capacity}");
    let (heads, kv_heads, hd) = (9, 3, 64);
    let device = Default::default();
    let cache = || Tensor::<B, 4>::random([rows, kv_heads, capacity, hd], Distribution::Normal(0.0, 1.0), &device);
    let layers: Vec<_> = (0..caches.min(LAYERS)).map(|_| (cache(), cache())).collect();
    let q = Tensor::<B, 4>::random([rows, 1, heads, hd], Distribution::Normal(0.0, 1.0), &device);
    let valid = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; rows * capacity], [rows, capacity]), &device);
    let mut steps = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        for layer in 0..LAYERS {
            let (keys, values) = &layers[layer % layers.len()];
            std::hint::black_box(iapt_kernels::fused::attention(&q, keys, values, &valid, slots).expect("the fused path on ndarray"));
        }
        steps.push(start.elapsed().as_secs_f64());
    }
    steps.sort_by(f64::total_cmp);
    let ms = steps[steps.len() / 2] * 1e3;
    let bytes = (LAYERS * rows * kv_heads * slots * hd * 4 * 2) as f64;
    println!("decoding's attention, {rows} rows over {slots} slots, {LAYERS} layers: {ms:.2} ms a step ({:.1} GB/s of keys and values read)", bytes / ms / 1e6);
}
