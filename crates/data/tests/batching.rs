//! burn batches: right-padded training batches (masks, shifted targets), left-padded generation
//! batches, deterministic length-bucketed batch order.

mod common;

use burn::backend::NdArray;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::{Bool, Int, Tensor};
use common::{toy_tokenizer, TempDir};
use iapt_data::batch::{padding_fraction, SplitMix64};
use iapt_data::{
    load_task_in, BatchPlan, EncodeConfig, EncodedDataset, EncodedExample, Encoder, GenerationBatcher, Source, SplitSpec, TaskSpec,
    TrainBatcher,
};

type B = NdArray;

fn ints(t: Tensor<B, 2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec().unwrap()
}
fn bools(t: Tensor<B, 2, Bool>) -> Vec<bool> {
    t.into_data().to_vec().unwrap()
}

fn encoded(t: &TempDir, n: usize) -> (Vec<EncodedExample>, iapt_model::Tokenizer) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!("{{\"instruction\": \"Repeat {i} {}\", \"output\": \"{}\"}}\n", "x".repeat(i % 13), "y".repeat(1 + i % 5)));
    }
    let path = t.write("b.jsonl", &text);
    let spec = TaskSpec { split: SplitSpec { train: 1.0, dev: 0.0, test: 0.0, seed: 3 }, ..TaskSpec::new("b", Source::InstructionJsonl(path)) };
    let data = load_task_in(t.path(), &spec).unwrap();
    let tok = toy_tokenizer();
    let (items, stats) = Encoder::new(&tok, &spec, EncodeConfig::default()).encode_all(&data.train).unwrap();
    assert_eq!(stats.kept, n);
    (items, tok)
}

#[test]
fn train_batches_pad_right_and_shift_targets() {
    let t = TempDir::new("train");
    let (items, tok) = encoded(&t, 5);
    let pad = tok.pad_id();
    let device = Default::default();
    let batch: iapt_data::TrainBatch<B> = TrainBatcher::new(pad).batch(items.clone(), &device);
    let width = items.iter().map(|e| e.len()).max().unwrap();
    assert_eq!(batch.ids.dims(), [5, width]);
    let ids = ints(batch.ids.clone());
    let valid = bools(batch.valid.clone());
    let inst = bools(batch.instruction.clone());
    let targets = ints(batch.targets.clone());
    let loss = bools(batch.loss_mask.clone());
    let response = bools(batch.response.clone());
    let mut loss_tokens = 0;
    for (r, e) in items.iter().enumerate() {
        let row = |v: &[i64]| v[r * width..(r + 1) * width].to_vec();
        let rowb = |v: &[bool]| v[r * width..(r + 1) * width].to_vec();
        let (ids, valid, inst, targets, loss, response) =
            (row(&ids), rowb(&valid), rowb(&inst), row(&targets), rowb(&loss), rowb(&response));
        assert_eq!(response, (0..width).map(|i| i >= e.prompt_len && i < e.len()).collect::<Vec<_>>());
        assert!((1..width).all(|i| response[i] == loss[i - 1]) && !response[0], "response = loss_mask shifted right");
        assert_eq!(&ids[..e.len()], e.ids.iter().map(|&x| x as i64).collect::<Vec<_>>().as_slice());
        assert!(ids[e.len()..].iter().all(|&x| x == pad as i64));
        assert_eq!(valid, (0..width).map(|i| i < e.len()).collect::<Vec<_>>());
        assert_eq!(inst, (0..width).map(|i| i < e.prompt_len).collect::<Vec<_>>());
        // The loss positions predict exactly the response tokens, EOS included, in order.
        let predicted: Vec<u32> = (0..width).filter(|&i| loss[i]).map(|i| targets[i] as u32).collect();
        assert_eq!(predicted, e.response());
        assert_eq!(*predicted.last().unwrap(), tok.eos_id());
        for i in 0..width {
            if i + 1 < e.len() {
                assert_eq!(targets[i], ids[i + 1]);
            }
            assert!(!loss[i] || valid[i], "loss only on valid positions");
        }
        loss_tokens += e.len() - e.prompt_len;
    }
    assert_eq!(batch.loss_tokens, loss_tokens);
    assert_eq!(batch.prompt_lens, items.iter().map(|e| e.prompt_len).collect::<Vec<_>>());
    let tokens = batch.tokens();
    assert_eq!(bools(tokens.instruction.unwrap()), inst);
}

#[test]
fn generation_batches_pad_left_with_prompts_only() {
    let t = TempDir::new("gen");
    let (items, tok) = encoded(&t, 4);
    let device = Default::default();
    let batch: iapt_data::GenerationBatch<B> = GenerationBatcher::new(tok.pad_id()).batch(items.clone(), &device);
    let width = items.iter().map(|e| e.prompt_len).max().unwrap();
    assert_eq!(batch.ids.dims(), [4, width]);
    let ids = ints(batch.ids.clone());
    let valid = bools(batch.valid.clone());
    for (r, e) in items.iter().enumerate() {
        let row = &ids[r * width..(r + 1) * width];
        let pads = width - e.prompt_len;
        assert_eq!(&row[pads..], e.prompt().iter().map(|&x| x as i64).collect::<Vec<_>>().as_slice());
        assert_eq!(&valid[r * width..(r + 1) * width], (0..width).map(|i| i >= pads).collect::<Vec<_>>().as_slice());
        assert_eq!(batch.answers[r], e.answer);
    }
    assert!(batch.tokens().instruction.is_none());
}

#[test]
fn dataset_and_batch_plan_are_deterministic_and_complete() {
    let t = TempDir::new("plan");
    let (items, _) = encoded(&t, 203);
    let data = EncodedDataset::new(items);
    assert_eq!(Dataset::len(&data), 203);
    assert_eq!(data.get(5).unwrap(), data.items()[5]);
    assert!(data.get(203).is_none());
    let lengths = data.lengths();

    let plan = BatchPlan { batch_size: 8, bucket_batches: 4, seed: 11, drop_last: false };
    let e0 = plan.epoch(&lengths, 0);
    assert_eq!(e0, plan.epoch(&lengths, 0), "same seed and epoch, same batches");
    assert_ne!(e0, plan.epoch(&lengths, 1), "epochs differ");
    assert_ne!(e0, BatchPlan { seed: 12, ..plan.clone() }.epoch(&lengths, 0));
    let mut all: Vec<usize> = e0.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..203).collect::<Vec<_>>(), "every example exactly once");
    assert!(e0.iter().all(|b| !b.is_empty() && b.len() <= 8));

    let dropped = BatchPlan { drop_last: true, ..plan.clone() }.epoch(&lengths, 0);
    assert!(dropped.iter().all(|b| b.len() == 8));
    assert_eq!(dropped.len(), 203 / 8);

    // Bucketing cuts padding compared with plain shuffled batches.
    let plain = BatchPlan { bucket_batches: 1, ..plan.clone() }.epoch(&lengths, 0);
    let (bucketed_pad, plain_pad) = (padding_fraction(&lengths, &e0), padding_fraction(&lengths, &plain));
    assert!(bucketed_pad < plain_pad, "bucketed {bucketed_pad} vs plain {plain_pad}");

    // Building the epoch's tensors.
    let device = Default::default();
    let batches: Vec<iapt_data::TrainBatch<B>> = plan.train_batches(&data, TrainBatcher::new(2), &device, 0).collect();
    assert_eq!(batches.len(), e0.len());
    assert_eq!(batches.iter().map(|b| b.prompt_lens.len()).sum::<usize>(), 203);

    let sorted = iapt_data::sorted_batches(&lengths, 16);
    assert!(sorted.windows(2).all(|w| lengths[w[0][0]] >= lengths[w[1][0]]));
}

#[test]
fn splitmix64_matches_the_reference_sequence() {
    // Reference values of SplitMix64 with seed 0 (Vigna's splitmix64.c).
    let mut rng = SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    let mut v: Vec<u32> = (0..10).collect();
    SplitMix64::new(5).shuffle(&mut v);
    let mut w: Vec<u32> = (0..10).collect();
    SplitMix64::new(5).shuffle(&mut w);
    assert_eq!(v, w);
    assert_ne!(v, (0..10).collect::<Vec<_>>());
}
