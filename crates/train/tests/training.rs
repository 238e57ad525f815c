//! End-to-end runs of the burn-train integration on a tiny random LLaMA (ndarray, CPU).

mod common;

use burn::data::dataset::InMemDataset;
use burn::module::{Module, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use common::{examples, max_difference, run_dir, values};
use iapt_model::{Llama, LlamaConfig, ModelHook, Projection, TrainableTuner};
use iapt_train::{train, train_on_devices, Dashboard, LmBatch, LmExample, StopReason, TrainConfig, TrainError, TunedLm};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

type Inner = burn::backend::NdArray;
type AD = burn::backend::Autodiff<Inner>;

const RANK: usize = 4;
const PREFIX: usize = 2;

/// A test tuner: LoRA deltas on every projection, a learned input prefix (prompt tuning), and a
/// per-layer gain on the deltas reported as the small-learning-rate group.
#[derive(Module, Debug)]
struct TestTuner<B: Backend> {
    down: Vec<Param<Tensor<B, 2>>>,
    up: Vec<Param<Tensor<B, 2>>>,
    gains: Param<Tensor<B, 1>>,
    prefix: Param<Tensor<B, 2>>,
    #[module(skip)]
    /// Poisons the input prefix with NaN from the n-th forward pass on (counts are shared).
    poison: Poison,
}

#[derive(Clone, Debug, Default)]
struct Poison {
    after: Option<usize>,
    calls: Arc<AtomicUsize>,
}

impl<B: Backend> TestTuner<B> {
    fn new(c: &LlamaConfig, device: &B::Device) -> Self {
        let (mut down, mut up) = (Vec::new(), Vec::new());
        for _ in 0..c.num_layers {
            for p in Projection::ALL {
                let (i, o) = c.projection_shape(p);
                down.push(Param::from_tensor(Tensor::random([i, RANK], Distribution::Normal(0.0, 0.3), device)));
                up.push(Param::from_tensor(Tensor::zeros([RANK, o], device)));
            }
        }
        Self {
            down,
            up,
            gains: Param::from_tensor(Tensor::ones([c.num_layers], device)),
            prefix: Param::from_tensor(Tensor::random([PREFIX, c.hidden_size], Distribution::Normal(0.0, 0.5), device)),
            poison: Poison::default(),
        }
    }
}

impl<B: Backend> ModelHook<B> for TestTuner<B> {
    fn input_prefix(&self, batch: usize, _device: &B::Device) -> Option<Tensor<B, 3>> {
        let call = self.poison.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let prefix = self.prefix.val().unsqueeze::<3>().repeat_dim(0, batch);
        Some(match self.poison.after {
            Some(n) if call >= n => prefix * f32::NAN,
            _ => prefix,
        })
    }

    fn projection_delta(&self, layer: usize, projection: Projection, x: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        let index = layer * Projection::ALL.len() + Projection::ALL.iter().position(|&p| p == projection).unwrap();
        let [b, t, i] = x.dims();
        let delta = x.clone().reshape([b * t, i]).matmul(self.down[index].val()).matmul(self.up[index].val());
        let out = delta.dims()[1];
        let gain = self.gains.val().narrow(0, layer, 1).reshape([1, 1]);
        Some((delta * gain).reshape([b, t, out]))
    }
}

impl<B: Backend> TrainableTuner for TestTuner<B> {
    fn small_lr_params(&self) -> Vec<ParamId> {
        vec![self.gains.id]
    }
}

/// A tiny random backbone whose LM head is scaled up: a random 32-wide head is too flat to put
/// 95%+ on one token of 97, which any trained LM's head does easily.
fn backbone() -> Llama<AD> {
    let config = LlamaConfig::tiny();
    let mut weights = Llama::<AD>::random(&config, &Default::default()).to_weights();
    let head = weights.tensors.get_mut("lm_head.weight").expect("tiny() has an untied head");
    head.data.iter_mut().for_each(|w| *w *= 6.0);
    iapt_model::llama_from_weights(&config, weights, &Default::default()).unwrap()
}

fn model(seed: u64) -> TunedLm<AD, TestTuner<AD>> {
    model_with(seed, seed)
}

/// Seeding and drawing use the backend's one process-wide generator: tests that run at the same
/// time would draw from each other's seeds, so each model's init takes the generator whole.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The backbone stands for fixed pretrained weights; the tuner init may differ between processes.
fn model_with(backbone_seed: u64, tuner_seed: u64) -> TunedLm<AD, TestTuner<AD>> {
    let _generator = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let device = Default::default();
    AD::seed(&device, backbone_seed);
    let backbone = backbone();
    AD::seed(&device, tuner_seed);
    TunedLm::new(backbone, TestTuner::new(&LlamaConfig::tiny(), &device))
}

fn dataset(items: Vec<LmExample>) -> InMemDataset<LmExample> {
    InMemDataset::new(items)
}

fn quiet(config: TrainConfig) -> TrainConfig {
    TrainConfig { dashboard: Dashboard::Off, ..config }
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn backbone_gets_no_gradients() {
    let model = model(1);
    let batch = LmBatch::<AD>::from_examples(&examples(2, 0), 0, &Default::default());
    let grads = model.forward_loss(batch).loss.backward();
    assert!(model.backbone.embedding_table().grad(&grads).is_none());
    assert!(model.backbone.projection(0, Projection::Q).weight.val().grad(&grads).is_none());
    assert!(model.tuner.prefix.val().grad(&grads).is_some());
    let params = GradientsParams::from_grads(grads, &model);
    assert_eq!(params.len(), values(&model.tuner).len(), "one gradient per tuner tensor, none for the backbone");
    assert_eq!(model.num_params(), model.tuner.num_params(), "the backbone is not a parameter of the trained module");
}

#[test]
fn overfits_a_handful_of_examples_and_leaves_the_backbone_untouched() {
    let dir = run_dir("overfit");
    let model = model(2);
    let backbone_before = values(&model.backbone);
    let tuner_before = values(&model.tuner);
    let config =
        quiet(TrainConfig { epochs: 60, batch_size: 4, learning_rate: 1e-2, rational_lr: 1e-4, weight_decay: 0.0, patience: None, ..Default::default() });
    let data = examples(4, 0);
    let trained = train(&config, model, dataset(data.clone()), dataset(data.clone()), &dir).unwrap();
    let report = &trained.report;
    eprintln!("overfit: dev loss per epoch {:?}", report.epochs.iter().map(|e| e.dev_loss.unwrap()).collect::<Vec<_>>());
    assert_eq!(report.stop, StopReason::Completed);
    let last = report.epochs.last().unwrap();
    assert!(last.dev_loss.unwrap() < 0.05, "dev loss {:?}", report.epochs.iter().map(|e| e.dev_loss).collect::<Vec<_>>());
    assert!(last.train_loss.unwrap() < report.epochs[0].train_loss.unwrap());
    assert_eq!(report.total_steps, 60);
    assert_eq!(report.batch_losses.len(), 60);

    // The frozen backbone is bit-identical; the tuner moved.
    assert_eq!(values(&trained.model.backbone), backbone_before);
    assert!(max_difference(&values(&trained.model.tuner), &tuner_before) > 1e-3);

    // The returned model really has the low loss.
    let batch = LmBatch::<Inner>::from_examples(&data, 0, &Default::default());
    let loss: f32 = trained.model.forward_loss(batch).loss.into_scalar();
    assert!(loss < 0.05, "{loss}");

    // Checkpoints: tuner only, written atomically (no temporary files left behind).
    let checkpoint_dir = dir.join("checkpoint");
    let names = files(&checkpoint_dir);
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
    let model_file = names.iter().find(|n| n.starts_with("model-")).unwrap();
    let model_bytes = std::fs::read(checkpoint_dir.join(model_file)).unwrap();
    let backbone_bytes = LlamaConfig::tiny().num_params() * 4;
    let tuner_bytes = trained.model.tuner.num_params() * 4;
    assert!(model_bytes.len() < tuner_bytes + 8 * 1024, "{} bytes for a {tuner_bytes}-byte tuner", model_bytes.len());
    assert!(model_bytes.len() < backbone_bytes / 2, "{} vs backbone {backbone_bytes}", model_bytes.len());
    let text = String::from_utf8_lossy(&model_bytes);
    assert!(!text.contains("embed_tokens") && !text.contains("q_proj"), "backbone tensors in the checkpoint");
    let optim_bytes = std::fs::metadata(checkpoint_dir.join(model_file.replace("model", "optim"))).unwrap().len();
    assert!((optim_bytes as usize) < 2 * tuner_bytes + 16 * 1024, "optimiser state {optim_bytes} bytes");
    assert!(dir.join("report.json").exists() && dir.join("train_config.json").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn small_lr_group_moves_slower() {
    let dir = run_dir("groups");
    let model = model(3);
    let gains_before = model.tuner.gains.val().into_data().to_vec::<f32>().unwrap();
    let model_prefix = model.tuner.prefix.val().into_data().to_vec::<f32>().unwrap();
    let config = quiet(TrainConfig {
        epochs: 3,
        batch_size: 2,
        learning_rate: 1e-2,
        rational_lr: 0.0,
        weight_decay: 0.5,
        patience: None,
        grad_accumulation: 2,
        ..Default::default()
    });
    let data = examples(4, 0);
    let trained = train(&config, model, dataset(data.clone()), dataset(data), &dir).unwrap();
    let gains_after = trained.model.tuner.gains.val().into_data().to_vec::<f32>().unwrap();
    assert_eq!(gains_after, gains_before, "rational_lr 0 and no decay: the small group never moves");
    let prefix_moved = trained.model.tuner.prefix.val().into_data().to_vec::<f32>().unwrap();
    assert_ne!(prefix_moved, model_prefix, "the main group does move");
    assert_eq!(trained.report.total_steps, 6, "the schedule counts batches; 3 optimiser steps of 2 accumulated batches");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let config = quiet(TrainConfig {
        epochs: 4,
        batch_size: 2,
        learning_rate: 5e-3,
        keep_last: 10,
        restore_best: false,
        patience: None,
        grad_accumulation: 1,
        ..Default::default()
    });
    let train_set = examples(4, 0);
    let dev_set = examples(2, 5);
    let base = model(4);

    let full_dir = run_dir("resume-full");
    let full = train(&config, base.clone(), dataset(train_set.clone()), dataset(dev_set.clone()), &full_dir).unwrap();

    // The same run, "crashed" after epoch 2: its later checkpoints never made it to disk.
    let split_dir = run_dir("resume-split");
    train(&config, base.clone(), dataset(train_set.clone()), dataset(dev_set.clone()), &split_dir).unwrap();
    for epoch in [3, 4] {
        for part in ["model", "optim", "scheduler"] {
            std::fs::remove_file(split_dir.join("checkpoint").join(format!("{part}-{epoch}.mpk"))).unwrap();
        }
    }
    // What the crashed session logged after its last checkpoint must not survive the resume: a
    // metric only it wrote (the resumed session rewrites the ones it logs itself).
    let stale = split_dir.join("valid/epoch-3/Stale.log");
    std::fs::write(&stale, "from the killed session\n").unwrap();
    // A fresh process builds the model again: same pretrained backbone, a different tuner init
    // (replaced by the checkpoint).
    let resumed = train(&config, model_with(4, 99), dataset(train_set), dataset(dev_set), &split_dir).unwrap();
    assert!(!stale.exists(), "a log from after the resumed checkpoint survived");
    for epoch in 1..=4 {
        for split in ["train", "valid"] {
            let log = split_dir.join(format!("{split}/epoch-{epoch}/Loss.log"));
            let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            // 4 training examples and 2 dev examples in batches of 2.
            assert_eq!(text.lines().count(), if split == "train" { 2 } else { 1 }, "{}", log.display());
            // Training is deterministic, so each epoch's log, whichever session wrote it, is the
            // uninterrupted run's.
            let uninterrupted = std::fs::read_to_string(full_dir.join(format!("{split}/epoch-{epoch}/Loss.log"))).unwrap();
            assert_eq!(text, uninterrupted, "{}", log.display());
        }
    }

    assert_eq!(resumed.report.resumed_from_epoch, Some(2));
    let tail = &full.report.batch_losses[4..];
    assert_eq!(resumed.report.batch_losses.len(), tail.len());
    for (a, b) in resumed.report.batch_losses.iter().zip(tail) {
        assert!((a - b).abs() < 1e-6, "resumed {:?} vs uninterrupted {tail:?}", resumed.report.batch_losses);
    }
    let epochs = |r: &iapt_train::TrainReport| r.epochs.iter().map(|e| (e.epoch, e.dev_loss.unwrap())).collect::<Vec<_>>();
    assert_eq!(epochs(&resumed.report).len(), 4, "history restored for epochs 1-2");
    for ((ea, a), (eb, b)) in epochs(&resumed.report).into_iter().zip(epochs(&full.report)) {
        assert_eq!(ea, eb);
        assert!((a - b).abs() < 1e-6, "epoch {ea}: {a} vs {b}");
    }
    let difference = max_difference(&values(&resumed.model.tuner), &values(&full.model.tuner));
    eprintln!("resume: batch losses {:?} vs {tail:?}; max tuner difference {difference}", resumed.report.batch_losses);
    assert!(difference < 1e-6, "final tuners differ by {difference}");

    // Running it again finds every epoch done: nothing is trained, the last checkpoint is returned.
    let again = train(&config, model_with(4, 7), dataset(examples(4, 0)), dataset(examples(2, 5)), &split_dir).unwrap();
    assert_eq!(again.report.resumed_from_epoch, Some(4));
    assert!(again.report.batch_losses.is_empty());
    assert_eq!(again.report.stop, StopReason::Completed);
    assert!(max_difference(&values(&again.model.tuner), &values(&full.model.tuner)) < 1e-6);

    // Changing a trajectory setting is refused rather than silently mixing runs.
    let changed = TrainConfig { learning_rate: 1e-3, ..config.clone() };
    let err = train(&changed, model(4), dataset(examples(4, 0)), dataset(examples(2, 5)), &split_dir).err().unwrap();
    assert!(matches!(err, TrainError::ConfigMismatch { .. }), "{err}");
    // With resume off, a directory holding checkpoints is refused, naming it.
    let fresh = TrainConfig { resume: false, ..config.clone() };
    let err = train(&fresh, model(4), dataset(examples(4, 0)), dataset(examples(2, 5)), &split_dir).err().unwrap();
    assert!(matches!(&err, TrainError::RunDirInUse(dir) if dir == &split_dir), "{err}");
    assert!(err.to_string().contains("resume"), "{err}");
    std::fs::remove_dir_all(full_dir).unwrap();
    std::fs::remove_dir_all(split_dir).unwrap();
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let dir = run_dir("nan");
    let mut model = model(5);
    // Forward passes: epoch 1 = 2 training batches + 1 dev batch; the 4th (epoch 2) is poisoned.
    model.tuner.poison.after = Some(4);
    let config = quiet(TrainConfig { epochs: 3, batch_size: 2, patience: None, ..Default::default() });
    let err = train(&config, model, dataset(examples(4, 0)), dataset(examples(2, 5)), &dir).err().unwrap();
    match &err {
        TrainError::NonFinite { message, last_checkpoint, report } => {
            assert!(message.contains("NaN"), "{message}");
            assert_eq!(*last_checkpoint, Some(1));
            assert_eq!(report.epochs.len(), 1);
        }
        other => panic!("expected a non-finite stop, got {other}"),
    }
    assert!(err.to_string().contains("last good checkpoint"));
    let names = files(&dir.join("checkpoint"));
    assert!(names.contains(&"model-1.mpk".to_string()));
    assert!(!names.iter().any(|n| n.contains("-2")), "{names:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn early_stopping_on_dev_loss() {
    let dir = run_dir("early");
    // Dev answers contradict the training answers: fitting one makes the other worse.
    let train_set = examples(4, 0);
    let dev_set: Vec<LmExample> = train_set.iter().map(|e| LmExample::new(vec![e.ids[0], e.ids[1], e.ids[2], 95, 96, 2], 3).unwrap()).collect();
    let config = quiet(TrainConfig { epochs: 40, batch_size: 4, learning_rate: 1e-2, patience: Some(2), ..Default::default() });
    let trained = train(&config, model(6), dataset(train_set), dataset(dev_set), &dir).unwrap();
    let report = trained.report;
    eprintln!("early stopping: {:?}, dev {:?}", report.stop, report.epochs.iter().map(|e| e.dev_loss.unwrap()).collect::<Vec<_>>());
    let StopReason::EarlyStopped { epoch } = report.stop else { panic!("{:?}", report.stop) };
    assert!(epoch < 40);
    assert_eq!(report.best_epoch.unwrap() + 2, epoch);
    assert_eq!(report.returned_epoch, report.best_epoch, "restore_best returns the best epoch's tuner");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn data_parallel_on_two_cpu_devices() {
    for sharded in [false, true] {
        let dir = run_dir(if sharded { "ddp-sharded" } else { "ddp-main" });
        let model = model(7);
        let model_copy = model.clone();
        let backbone_before = values(&model.backbone);
        let config = quiet(TrainConfig {
            epochs: 4,
            batch_size: 2,
            learning_rate: 1e-2,
            patience: None,
            shuffle: false,
            restore_best: false,
            sharded_optimizer: sharded,
            ..Default::default()
        });
        let devices = vec![Default::default(), Default::default()];
        let data = examples(8, 0);
        let trained = train_on_devices(&config, model, dataset(data.clone()), dataset(data.clone()), &dir, devices).unwrap();
        let report = trained.report;
        assert_eq!(report.steps_per_epoch, 2, "8 examples, 2 devices, batch 2: 2 rounds");
        assert_eq!(report.batch_losses.len(), 4 * 4, "every device's batches ran");
        let first = report.epochs[0].train_loss.unwrap();
        let last = report.epochs.last().unwrap().train_loss.unwrap();
        eprintln!("data parallel (sharded {sharded}): train loss per epoch {:?}", report.epochs.iter().map(|e| e.train_loss.unwrap()).collect::<Vec<_>>());
        assert!(last < first, "loss {first} -> {last}");
        assert_eq!(values(&trained.model.backbone), backbone_before);

        // Each round is one step over both devices' batches: the same update as one device
        // on the combined batch. burn-train gives each device a contiguous half of the epoch
        // (examples 0-3 and 4-7), so round r combines examples 2r, 2r+1, 4+2r and 5+2r; every
        // example has 3 response tokens, so the mean of the two devices' mean losses is the
        // combined batch's mean loss.
        let combined: Vec<LmExample> = [0, 1, 4, 5, 2, 3, 6, 7].iter().map(|&i| data[i].clone()).collect();
        let single_dir = run_dir(if sharded { "ddp-sharded-one" } else { "ddp-main-one" });
        let one = train(&TrainConfig { batch_size: 4, ..config }, model_copy, dataset(combined.clone()), dataset(combined), &single_dir).unwrap();
        assert_eq!(one.report.steps_per_epoch, report.steps_per_epoch);
        // Step by step, the mean of the two devices' losses is the combined batch's loss: the
        // whole trajectory is the same.
        for (round, (pair, single)) in report.batch_losses.chunks(2).zip(&one.report.batch_losses).enumerate() {
            let mean = (pair[0] + pair[1]) / 2.0;
            assert!((mean - single).abs() < 1e-5 * single.abs(), "round {round}: devices' mean loss {mean}, combined batch {single}");
        }
        // The tuners agree to a tenth of one Adam step (each step moves an entry by up to
        // ~lr = 1e-2; a wrong update over 16 steps shows as ~1e-2): the devices' gradients are
        // summed in another order than one batch's, and Adam's g / (sqrt(v) + eps) magnifies
        // those last-bit differences in entries whose gradient is near zero (seen: 1e-5-2e-4,
        // depending on which device's gradients arrive first).
        let difference = max_difference(&values(&trained.model.tuner), &values(&one.model.tuner));
        eprintln!("data parallel (sharded {sharded}): largest tuner difference to one device {difference}");
        assert!(difference < 0.1 * 1e-2, "two devices and one device on the combined batches differ by {difference}");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(single_dir).unwrap();
    }
}

#[test]
fn invalid_inputs_are_reported_before_training() {
    let dir = run_dir("invalid");
    let bad = vec![LmExample { ids: vec![1, 2], instruction_len: 2, class: None }];
    let err = train(&quiet(TrainConfig::default()), model(8), dataset(bad), dataset(examples(1, 0)), &dir).err().unwrap();
    assert!(matches!(err, TrainError::Data { split: "training", .. }), "{err}");
    let config = TrainConfig { batch_size: 0, ..TrainConfig::default() };
    let err = train(&config, model(8), dataset(examples(1, 0)), dataset(examples(1, 0)), &dir).err().unwrap();
    assert!(matches!(err, TrainError::Config(_)));
    let _ = std::fs::remove_dir_all(dir);
}
