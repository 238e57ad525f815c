//! A toy training run on a tiny random LLaMA with a prompt-tuning prefix, to see the progress
//! display: the TUI on a terminal, plain lines when piped.
//!
//! `cargo run -p iapt-train --example toy_run -- [epochs] [run_dir]`

use burn::data::dataset::InMemDataset;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use iapt_model::{Llama, LlamaConfig, ModelHook, TrainableTuner};
use iapt_train::{train, LmExample, TrainConfig, TunedLm};

type AD = burn::backend::Autodiff<burn::backend::NdArray>;

/// Learned input embeddings placed before every sequence (prompt tuning).
#[derive(Module, Debug)]
struct PromptPrefix<B: Backend> {
    tokens: Param<Tensor<B, 2>>,
}

impl<B: Backend> ModelHook<B> for PromptPrefix<B> {
    fn input_prefix(&self, batch: usize, _device: &B::Device) -> Option<Tensor<B, 3>> {
        Some(self.tokens.val().unsqueeze::<3>().repeat_dim(0, batch))
    }
}

impl<B: Backend> TrainableTuner for PromptPrefix<B> {}

fn main() {
    let mut args = std::env::args().skip(1);
    let epochs = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let run_dir = args.next().unwrap_or_else(|| std::env::temp_dir().join("iapt-toy-run").display().to_string());
    let _ = std::fs::remove_dir_all(&run_dir);

    let device = Default::default();
    let config = LlamaConfig::tiny();
    let backbone = Llama::<AD>::random(&config, &device);
    let tuner = PromptPrefix { tokens: Param::from_tensor(Tensor::random([8, config.hidden_size], Distribution::Normal(0.0, 0.5), &device)) };
    let examples: Vec<LmExample> = (0..64u32).map(|i| LmExample::new(vec![1, 3 + i % 40, 50 + i % 7, 60 + i % 5, 2], 2).unwrap()).collect();
    let (train_set, dev_set) = examples.split_at(48);
    let train_config = TrainConfig { epochs, batch_size: 4, learning_rate: 1e-2, log_every: 5, ..Default::default() };
    let trained = train(&train_config, TunedLm::new(backbone, tuner), InMemDataset::new(train_set.to_vec()), InMemDataset::new(dev_set.to_vec()), &run_dir)
        .expect("training");
    let report = trained.report;
    println!(
        "stopped: {:?}; best epoch {:?} (dev loss {:?}); checkpoints in {}",
        report.stop,
        report.best_epoch,
        report.best_dev_loss,
        report.checkpoint_dir.display()
    );
}
