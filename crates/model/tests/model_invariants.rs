//! Invariants of the tensor implementation on tiny random models, against a naive reference.

mod reference;

use burn::tensor::{Int, Tensor, TensorData};
use iapt_model::{HostDecoder, KvCache, Llama, LlamaConfig, NoHook, Padding, TokenBatch};
use iapt_model::{LayerInput, LayerPrefix, ModelHook};
use reference::{max_diff, reference_logits, TB};
use std::cell::Cell;

fn tiny(seed: u64, tied: bool) -> Llama<TB> {
    <TB as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    let mut c = LlamaConfig::tiny();
    c.tie_word_embeddings = tied;
    Llama::random(&c, &Default::default())
}

fn rows_of(t: Tensor<TB, 3>) -> Vec<Vec<Vec<f32>>> {
    let [b, s, v] = t.dims();
    let data: Vec<f32> = t.into_data().to_vec().unwrap();
    (0..b).map(|i| (0..s).map(|j| data[(i * s + j) * v..(i * s + j + 1) * v].to_vec()).collect()).collect()
}

fn full_logits(model: &Llama<TB>, rows: &[Vec<u32>], side: Padding, hook: &dyn ModelHook<TB>) -> Vec<Vec<Vec<f32>>> {
    let batch = TokenBatch::padded(rows, 0, side, &Default::default());
    let hidden = model.forward(batch, &mut KvCache::new(model.num_layers()), hook);
    rows_of(model.logits(hidden))
}

const SEQ: [u32; 7] = [5, 17, 42, 3, 88, 61, 9];

#[test]
fn forward_matches_naive_reference() {
    for tied in [false, true] {
        let model = tiny(1, tied);
        let got = &full_logits(&model, &[SEQ.to_vec()], Padding::Right, &NoHook)[0];
        let want = reference_logits(&model, &SEQ, &[], 0);
        for (g, w) in got.iter().zip(&want) {
            assert!(max_diff(g, w) < 1e-4, "tied={tied}: logits differ by {}", max_diff(g, w));
        }
    }
}

#[test]
fn cached_decoding_equals_full_recompute() {
    let model = tiny(2, false);
    let full = &full_logits(&model, &[SEQ.to_vec()], Padding::Right, &NoHook)[0];
    let device = Default::default();
    let mut cache = KvCache::new(model.num_layers());
    // prefill 3 tokens, then one at a time
    let prefill = TokenBatch::padded(&[SEQ[..3].to_vec()], 0, Padding::Left, &device);
    let mut got = rows_of(model.logits(model.forward(prefill, &mut cache, &NoHook))).remove(0);
    for &t in &SEQ[3..] {
        let ids = Tensor::<TB, 2, Int>::from_data(TensorData::new(vec![t as i64], [1, 1]), &device);
        got.extend(rows_of(model.logits(model.forward(TokenBatch::dense(ids), &mut cache, &NoHook))).remove(0));
    }
    for (i, (g, f)) in got.iter().zip(full).enumerate() {
        let d = g.iter().zip(f).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-4, "position {i}: cached and full logits differ by {d}");
    }
}

#[test]
fn rows_do_not_depend_on_batch_company_or_padding_side() {
    let model = tiny(3, true);
    let a = SEQ.to_vec();
    let b = vec![7u32, 8, 9];
    let c = vec![60u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let alone_a = full_logits(&model, std::slice::from_ref(&a), Padding::Right, &NoHook).remove(0);
    let alone_b = full_logits(&model, std::slice::from_ref(&b), Padding::Right, &NoHook).remove(0);
    for side in [Padding::Left, Padding::Right] {
        let batched = full_logits(&model, &[c.clone(), a.clone(), b.clone()], side, &NoHook);
        for (row, alone) in [(1, &alone_a), (2, &alone_b)] {
            let len = alone.len();
            let got = &batched[row];
            let got = match side {
                Padding::Left => &got[got.len() - len..],
                Padding::Right => &got[..len],
            };
            for (g, w) in got.iter().zip(alone) {
                let d = g.iter().zip(w).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(d < 1e-4, "{side:?} row {row}: batched differs from alone by {d}");
            }
        }
    }
}

#[test]
fn gqa_equals_multi_head_attention_with_repeated_kv() {
    let gqa = tiny(4, false);
    let c = gqa.config().clone();
    let mut mha_config = c.clone();
    mha_config.num_kv_heads = c.num_heads;
    // The same weights, with each KV head's rows repeated `groups` times (HF stores [out, in]).
    let groups = c.num_heads / c.num_kv_heads;
    let mut weights = gqa.to_weights();
    for (name, t) in weights.tensors.iter_mut() {
        if name.ends_with("k_proj.weight") || name.ends_with("v_proj.weight") {
            let row = c.hidden_size * c.head_dim; // one head's rows
            let data: Vec<f32> = (0..c.num_kv_heads).flat_map(|h| std::iter::repeat_n(&t.data[h * row..(h + 1) * row], groups).flatten().copied()).collect();
            *t = iapt_model::HostTensor { shape: vec![c.num_heads * c.head_dim, c.hidden_size], data };
        }
    }
    let mha = iapt_model::llama_from_weights::<TB>(&mha_config, weights, &Default::default()).unwrap();
    let a = full_logits(&gqa, &[SEQ.to_vec()], Padding::Right, &NoHook);
    let b = full_logits(&mha, &[SEQ.to_vec()], Padding::Right, &NoHook);
    let d = a[0].iter().flatten().zip(b[0].iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d < 1e-5, "GQA and repeated-KV MHA differ by {d}");
}

/// A hook giving fixed soft tokens at chosen layers, counting how often it is asked.
struct FixedSoftTokens {
    tokens: Vec<Option<Vec<Vec<f32>>>>,
    calls: Cell<usize>,
}

impl<B: burn::tensor::backend::Backend> ModelHook<B> for FixedSoftTokens {
    fn position_offset(&self) -> usize {
        self.tokens.iter().flatten().map(Vec::len).max().unwrap_or(0)
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        self.calls.set(self.calls.get() + 1);
        let soft = self.tokens[layer].as_ref()?;
        let b = input.hidden.dims()[0];
        let (n, d) = (soft.len(), soft[0].len());
        let flat: Vec<f32> = soft.iter().flatten().copied().collect();
        let t = Tensor::<B, 2>::from_data(TensorData::new(flat, [n, d]), &input.hidden.device());
        Some(LayerPrefix::Hidden { tokens: t.unsqueeze::<3>().expand([b, n, d]), rope: true, normalize: true })
    }
}

#[test]
fn kv_prefix_equals_running_soft_tokens_through_the_layer() {
    let model = tiny(5, true);
    let d = model.config().hidden_size;
    let soft: Vec<Vec<f32>> = (0..4).map(|i| (0..d).map(|j| ((i * 31 + j * 7) % 13) as f32 / 6.0 - 1.0).collect()).collect();
    let hook = FixedSoftTokens { tokens: vec![Some(soft.clone()), Some(soft.iter().rev().cloned().collect())], calls: Cell::new(0) };
    let got = full_logits(&model, &[SEQ.to_vec()], Padding::Right, &hook).remove(0);
    let soft64 = |s: &Vec<Vec<f32>>| Some(s.iter().map(|r| r.iter().map(|&v| v as f64).collect()).collect());
    let want = reference_logits(&model, &SEQ, &[soft64(&soft), soft64(&hook.tokens[1].clone().unwrap())], 4);
    for (g, w) in got.iter().zip(&want) {
        assert!(max_diff(g, w) < 1e-4, "prefix shortcut differs from the literal soft-token layer by {}", max_diff(g, w));
    }
    // and the prefix matters
    let bare = reference_logits(&model, &SEQ, &[], 0);
    assert!(max_diff(&got[3], &bare[3]) > 1e-3);
}

#[test]
fn decode_steps_never_ask_for_prefixes_and_match_recompute() {
    let model = tiny(6, false);
    let d = model.config().hidden_size;
    let soft: Vec<Vec<f32>> = (0..4).map(|i| (0..d).map(|j| ((i + j) % 5) as f32 / 5.0).collect()).collect();
    let hook = FixedSoftTokens { tokens: vec![Some(soft.clone()), Some(soft)], calls: Cell::new(0) };
    let full = full_logits(&model, &[SEQ.to_vec()], Padding::Right, &hook).remove(0);
    hook.calls.set(0);
    let device = Default::default();
    let mut cache = KvCache::new(2);
    let prefill = TokenBatch::padded(&[SEQ[..4].to_vec()], 0, Padding::Left, &device);
    let mut got = rows_of(model.logits(model.forward(prefill, &mut cache, &hook))).remove(0);
    assert_eq!(hook.calls.get(), 2, "one prefix request per layer at prefill");
    for &t in &SEQ[4..] {
        let ids = Tensor::<TB, 2, Int>::from_data(TensorData::new(vec![t as i64], [1, 1]), &device);
        got.extend(rows_of(model.logits(model.forward(TokenBatch::dense(ids), &mut cache, &hook))).remove(0));
    }
    assert_eq!(hook.calls.get(), 2, "decode steps asked the hook for prefixes");
    let diff = got.iter().flatten().zip(full.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "cached generation with a prefix differs from recompute by {diff}");
}

#[test]
fn parameter_count_matches_formula() {
    for tied in [false, true] {
        let model = tiny(7, tied);
        assert_eq!(burn::module::Module::num_params(&model), model.config().num_params());
    }
    // SmolLM2-135M: the published 134.5M.
    let n = LlamaConfig::smollm2_135m().num_params();
    assert!((134_400_000..134_600_000).contains(&n), "{n}");
    let n7 = LlamaConfig::llama2_7b().num_params();
    assert_eq!(n7, 6_738_415_616);
}

/// One decode step of `tokens` (one per row) on `cache`: last-slot logits per row.
fn step(model: &Llama<TB>, cache: &mut KvCache<TB>, hook: &dyn ModelHook<TB>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let ids = Tensor::<TB, 2, Int>::from_data(TensorData::new(ids, [tokens.len(), 1]), &Default::default());
    rows_of(model.logits(model.forward(TokenBatch::dense(ids), cache, hook))).into_iter().map(|mut r| r.remove(0)).collect()
}

fn prefilled(model: &Llama<TB>, prompt: &[u32], hook: &dyn ModelHook<TB>) -> KvCache<TB> {
    let mut cache = KvCache::new(model.num_layers());
    model.forward(TokenBatch::padded(&[prompt.to_vec()], 0, Padding::Left, &Default::default()), &mut cache, hook);
    cache
}

/// Continuous batching's cache surgery: rows prefilled alone (of different lengths, one with a
/// KV prefix) and joined into one cache continue exactly as they do alone, and so do the rows
/// left when one is dropped — across a buffer growth and a trim of unused leading slots.
#[test]
fn joined_and_retained_rows_decode_as_they_do_alone() {
    let model = tiny(8, false);
    let d = model.config().hidden_size;
    let soft: Vec<Vec<f32>> = (0..3).map(|i| (0..d).map(|j| ((i * 3 + j) % 7) as f32 / 7.0 - 0.5).collect()).collect();
    let prefix = FixedSoftTokens { tokens: vec![Some(soft.clone()), Some(soft)], calls: Cell::new(0) };
    let prompts: [(&[u32], &dyn ModelHook<TB>); 3] = [(&SEQ[..2], &NoHook), (&SEQ, &prefix), (&SEQ[1..5], &NoHook)];
    let mut alone: Vec<KvCache<TB>> = prompts.iter().map(|(p, h)| prefilled(&model, p, *h)).collect();
    // Rows 0 and 1 joined first, decoded a while, then row 2 joins (a different length again).
    let mut joined = prefilled(&model, prompts[0].0, &NoHook).join(prefilled(&model, prompts[1].0, &prefix));
    let mut tokens: Vec<u32> = vec![11, 12, 13];
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    for i in 0..70 {
        if i == 3 {
            joined = joined.join(prefilled(&model, prompts[2].0, &NoHook));
        }
        // Row 1, the longest, leaves at step 40: the others shift down and lose their
        // now-unused leading slots.
        let live: Vec<usize> = match (i >= 3, i >= 40) {
            (false, _) => vec![0, 1],
            (true, false) => vec![0, 1, 2],
            (true, true) => vec![0, 2],
        };
        if i == 40 {
            let before = joined.len(0);
            joined.retain_rows(&[0, 2]);
            assert!(joined.len(0) < before, "no leading slot was trimmed ({before} -> {})", joined.len(0));
        }
        let batch_tokens: Vec<u32> = live.iter().map(|&r| tokens[r]).collect();
        let got = step(&model, &mut joined, &NoHook, &batch_tokens);
        assert_eq!(joined.rows(), live.len());
        for (k, &r) in live.iter().enumerate() {
            let want = step(&model, &mut alone[r], prompts[r].1, &[tokens[r]]).remove(0);
            let diff = close(&got[k], &want);
            assert!(diff < 1e-4, "step {i}, row {r}: joined cache differs from the row alone by {diff}");
            tokens[r] = (tokens[r] * 7 + 3) % 97;
        }
    }
}

/// A hook with every default: it says it may add projection deltas (it never does), so the
/// steps it runs take the tensor path.
struct TensorPath;
impl<B: burn::tensor::backend::Backend> ModelHook<B> for TensorPath {}

/// [`FixedSoftTokens`] saying it adds no deltas, as IAPT does: its decode steps run on host memory.
struct PrefixOnly(FixedSoftTokens);
impl<B: burn::tensor::backend::Backend> ModelHook<B> for PrefixOnly {
    fn position_offset(&self) -> usize {
        ModelHook::<B>::position_offset(&self.0)
    }
    fn layer_prefix(&self, layer: usize, input: &LayerInput<'_, B>) -> Option<LayerPrefix<B>> {
        self.0.layer_prefix(layer, input)
    }
    fn adds_delta(&self, _layer: usize, _projection: iapt_model::Projection) -> bool {
        false
    }
}

/// Logits of a decode step of `tokens` on `B`, and whether it ran on host memory.
fn step_on<B: burn::tensor::backend::Backend>(
    model: &Llama<B>,
    cache: &mut KvCache<B>,
    hook: &dyn ModelHook<B>,
    tokens: &[u32],
    decoder: Option<&HostDecoder<B>>,
) -> (Vec<f32>, bool) {
    let before = iapt_model::host_decode_steps();
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [tokens.len(), 1]), &model.device());
    let hidden = match decoder {
        Some(decoder) => decoder.forward(TokenBatch::dense(ids), cache, hook),
        None => model.forward(TokenBatch::dense(ids), cache, hook),
    };
    let logits = model.logits(hidden);
    (logits.into_data().convert::<f32>().to_vec().unwrap(), iapt_model::host_decode_steps() == before + 1)
}

/// The decode step on host memory computes what the tensor path does, on both CPU backends that
/// run it: weights in the layout loading gives them (so q/k/v and gate/up run as one job each),
/// tied and untied heads, left-padded rows of different lengths, a KV prefix in the cache, 70
/// steps (the cache's buffers grow once) from one prefill, the tensor path on a clone of it; the
/// host steps gather the weights themselves, or run through a decoder that gathered them once.
fn host_decode_equals_the_tensor_path_on<B: burn::tensor::backend::Backend>() {
    for tied in [false, true] {
        let random = tiny(9, tied);
        let model: Llama<B> = iapt_model::llama_from_weights(random.config(), random.to_weights(), &Default::default()).unwrap();
        let decoder = HostDecoder::new(&model);
        let d = model.config().hidden_size;
        let soft: Vec<Vec<f32>> = (0..4).map(|i| (0..d).map(|j| ((i * 5 + j) % 9) as f32 / 9.0 - 0.5).collect()).collect();
        let rows = [SEQ.to_vec(), SEQ[2..5].to_vec(), vec![40, 41]];
        let batch = TokenBatch::padded(&rows, 0, Padding::Left, &model.device());
        let prefix = FixedSoftTokens { tokens: vec![Some(soft.clone()), Some(soft)], calls: Cell::new(0) };
        let hook = PrefixOnly(prefix);
        let hook: &dyn ModelHook<B> = &hook;
        let mut prefilled = KvCache::new(model.num_layers());
        model.forward(batch, &mut prefilled, hook);
        for (decoder, which) in [(None, "gathering per step"), (Some(&decoder), "a decoder")] {
            let (mut host, mut tensor) = (prefilled.clone(), prefilled.clone());
            let mut tokens = vec![11u32, 12, 13];
            for i in 0..70 {
                let (want, on_host) = step_on(&model, &mut tensor, &TensorPath, &tokens, None);
                assert!(!on_host, "the tensor path's step ran on host memory");
                let (got, on_host) = step_on(&model, &mut host, hook, &tokens, decoder);
                assert!(on_host, "step {i}: the host step did not run");
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(diff <= 1e-5 * scale, "tied={tied}, {which}, step {i}: host and tensor decode differ by {diff} (logits up to {scale})");
                tokens = tokens.iter().map(|t| (t * 7 + 3) % 97).collect();
            }
        }
    }
}

#[test]
fn host_decode_equals_the_tensor_path() {
    host_decode_equals_the_tensor_path_on::<TB>();
    host_decode_equals_the_tensor_path_on::<burn::backend::Flex<f32, i32>>();
}
