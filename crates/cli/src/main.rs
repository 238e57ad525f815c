//! `iapt`: fetch models and data, run, score, benchmark, train and evaluate tuners.

mod backend;
mod bench;
mod compare;
mod data_cmd;
mod evaluate;
mod experiment;
mod model_source;
mod run_config;
mod text;

use anyhow::Result;
use backend::BackendKind;
use clap::{Args, Parser, Subcommand};
use iapt_model::SamplingConfig;

#[derive(Parser)]
#[command(name = "iapt", version, about = "Instruction-Aware Prompt Tuning on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every model-running command shares.
#[derive(Args, Clone)]
struct ModelArgs {
    /// A known model name (`smollm2`, fetched on first use) or a `.gguf` file / HF directory.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "ndarray")]
    backend: BackendKind,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Download, verify and cache a model or dataset.
    Fetch {
        #[command(subcommand)]
        what: FetchCommand,
    },
    /// Token ids of a text (special tokens in it are parsed).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text: String,
    },
    /// Mean next-token negative log-likelihood of a text.
    Score {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        text: String,
    },
    /// Generate a continuation (raw prompt, or `--chat` to use the chat template).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt text; repeat the flag to generate for several prompts in one batch.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// Render the prompt as a user turn with the checkpoint's chat template.
        #[arg(long)]
        chat: bool,
        /// System message for `--chat` (default: the template's own).
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// Pick the most likely token every step (the default unless --temperature > 0).
        #[arg(long, conflicts_with = "temperature")]
        greedy: bool,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// An adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
        #[arg(long)]
        adapter: Option<std::path::PathBuf>,
    },
    /// Train a tuner on a task (zero-shot accuracy first, tuned accuracy after), with
    /// burn-train's dashboard; everything lands in the run directory.
    Train {
        /// A run config (`configs/*.toml`); without one, every default.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Override a config key, e.g. `--set train.epochs=2` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run directory (overrides `run.dir`).
        #[arg(long)]
        run_dir: Option<std::path::PathBuf>,
        /// Compute backend (overrides `model.backend`).
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        /// Devices to train on in parallel (overrides `model.devices`).
        #[arg(long)]
        devices: Option<usize>,
    },
    /// Train and evaluate several tuners on one task with the same data, seeds and budget, and
    /// write one comparison table (markdown + JSON). Finished runs are reused when run again.
    Compare {
        /// A comparison file (`configs/compare-*.toml`).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Override a key of every method's run config, e.g. `--set train.epochs=1` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output directory (overrides `compare.out_dir`).
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
        /// Seeds (overrides `compare.seeds`), e.g. `--seeds 0,1,2`.
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<u64>>,
        /// Only print the planned runs' resolved tuners and parameter counts.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the resolved run config (defaults filled in, overrides applied) as TOML.
    Config {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Accuracy on a task split: the backbone alone, or with `--adapter` (a run or adapter dir).
    Eval {
        /// A run directory from `iapt train` (its config is reused) or an adapter directory.
        #[arg(long)]
        adapter: Option<std::path::PathBuf>,
        /// Task (default: the run's, else `multiemo`).
        #[arg(long)]
        task: Option<String>,
        #[arg(long, default_value = "test")]
        split: String,
        #[arg(long, value_enum)]
        method: Option<run_config::EvalMethod>,
        /// A run config to take model/data/eval settings from (default: the run's own).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Model (overrides `model.name`).
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum)]
        backend: Option<BackendKind>,
        #[arg(long)]
        json: bool,
    },
    /// Inspect task data.
    Data {
        #[command(subcommand)]
        what: DataCommand,
    },
    /// Benchmarks (JSON output).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum FetchCommand {
    /// Fetch a known model (`smollm2`).
    Model { name: String },
    /// Fetch a built-in task (`multiemo`, `strategyqa`, ...) or a source (`bigbench:<task>`, `gsm8k`).
    Data { name: String },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Encoded examples with instruction/response masks visible, split sizes and label counts.
    Show {
        name: String,
        #[arg(long, default_value = "train")]
        split: String,
        #[arg(long, default_value_t = 3)]
        n: usize,
        /// Model whose tokenizer and chat template encode the examples.
        #[arg(long, default_value = "smollm2")]
        model: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode tokens/s at several batch sizes.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        new_tokens: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batch: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Also measure with a freshly initialised IAPT generator of this bottleneck (default
        /// config otherwise) to report its prefill and decode overhead.
        #[arg(long, conflicts_with = "adapter")]
        iapt_bottleneck: Option<usize>,
        /// Also measure with this adapter (any tuner; an adapter or run directory).
        #[arg(long)]
        adapter: Option<std::path::PathBuf>,
        /// Split prefill and decode time by kind of work (projections, attention, norms/RoPE, LM head, sampling, other).
        #[arg(long)]
        profile: bool,
    },
    /// Data pipeline throughput: rendering, tokenizing and batching a task's examples.
    Data {
        /// A built-in task or a task file.
        name: String,
        /// Examples to encode (the task's examples, cycled).
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        /// Model whose tokenizer and chat template encode the examples.
        #[arg(long, default_value = "smollm2")]
        model: String,
    },
    /// A tuner's training throughput (forward, backward, optimiser) vs an inference-only forward.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 2)]
        response_tokens: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// The tuner: iapt | prompt_tuning | p_tuning_v2 | lora (its options: `--set tuner.KEY=VALUE`).
        #[arg(long, default_value = "iapt")]
        tuner: String,
        /// IAPT's bottleneck (shorthand for `--set tuner.bottleneck=M`).
        #[arg(long)]
        bottleneck: Option<usize>,
        /// Tuner options, e.g. `--set tuner.rank=16` (repeatable).
        #[arg(long = "set", value_name = "tuner.KEY=VALUE")]
        sets: Vec<String>,
        /// Split the forward pass by kind of work (projections, attention, norms/RoPE, LM head, other).
        #[arg(long)]
        profile: bool,
    },
}

/// glibc serves allocations above a dynamic threshold (at most 32 MB) with fresh `mmap`s and
/// returns freed memory at the top of the heap to the kernel. The CPU backends allocate a new
/// output and operand copy for every op (burn-ndarray copies the whole 113 MB embedding table
/// for every LM-head product), so each decode step paid for zero-filling the same pages again;
/// with these limits the buffers are reused. ndarray decodes 1.3-1.5x faster this way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() {
    keep_freed_memory();
    iapt_kernels::use_this_thread_in_pool();
    if let Err(err) = run(Cli::parse()) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fetch { what: FetchCommand::Model { name } } => {
            let path = model_source::resolve_model(&name)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Fetch { what: FetchCommand::Data { name } } => data_cmd::fetch(&name),
        Command::Data { what: DataCommand::Show { name, split, n, model } } => {
            let tokenizer = iapt_model::tokenizer::load_tokenizer(&model_source::resolve_model(&model)?)?;
            data_cmd::show(&name, &tokenizer, &split, n)
        }
        Command::Train { config, sets, run_dir, backend, devices } => {
            let mut config = run_config::RunConfig::load(config.as_deref(), &sets)?;
            if let Some(dir) = run_dir {
                config.run.dir = dir;
            }
            if let Some(backend) = backend {
                config.model.backend = backend;
            }
            if let Some(devices) = devices {
                config.model.devices = devices;
            }
            config.validate()?;
            let path = model_source::resolve_model(&config.model.name)?;
            let n = config.model.devices;
            with_backend!(config.model.backend, |B, device| {
                let devices = if n > 1 { <B as backend::DeviceList>::device_list(n) } else { Vec::new() };
                experiment::train::<B>(&config, &path, device, devices)
            })
        }
        Command::Compare { config, sets, out_dir, seeds, dry_run } => {
            let (compare, runs) = compare::plan(&config, &sets, out_dir.as_deref(), seeds.as_deref())?;
            if dry_run {
                for run in &runs {
                    println!("{} seed {}: {} -> {}", run.method, run.seed, toml::to_string(&run.config.tuner)?.replace('\n', " "), run.config.run.dir.display());
                }
                return Ok(());
            }
            compare::run(&compare, &runs)
        }
        Command::Config { config, sets } => {
            print!("{}", run_config::RunConfig::load(config.as_deref(), &sets)?.to_toml());
            Ok(())
        }
        Command::Eval { adapter, task, split, method, config, sets, model, backend, json } => {
            let config_path = config.or_else(|| adapter.as_deref().and_then(experiment::run_config_of));
            let mut config = run_config::RunConfig::load(config_path.as_deref(), &sets)?;
            if let Some(model) = model {
                config.model.name = model;
            }
            if let Some(backend) = backend {
                config.model.backend = backend;
            }
            let split = split.parse().map_err(|e| anyhow::anyhow!("--split {split}: {e}"))?;
            let path = model_source::resolve_model(&config.model.name)?;
            let args = experiment::EvalArgs { adapter, task, split, method, json };
            with_backend!(config.model.backend, |B, device| experiment::eval::<B>(&config, &path, &args, device))
        }
        Command::Tokenize { model, text } => {
            let path = model_source::resolve_model(&model.model)?;
            let tokenizer = iapt_model::tokenizer::load_tokenizer(&path)?;
            text::tokenize(&tokenizer, &text, model.json)
        }
        Command::Score { model, text } => {
            let path = model_source::resolve_model(&model.model)?;
            with_backend!(model.backend, |B, device| {
                let loaded = text::load::<B>(&path, &device)?;
                text::score(&loaded, &text, model.json)
            })
        }
        Command::Generate { model, prompt, chat, system, max_new_tokens, greedy, temperature, top_k, top_p, seed, adapter } => {
            let path = model_source::resolve_model(&model.model)?;
            let temperature = if greedy { 0.0 } else { temperature };
            let sampling = SamplingConfig { temperature, top_k, top_p, seed };
            with_backend!(model.backend, |B, device| {
                let loaded = text::load::<B>(&path, &device)?;
                let opts = text::GenerateOptions {
                    prompts: &prompt,
                    chat,
                    system: system.as_deref(),
                    max_new_tokens,
                    sampling,
                    as_json: model.json,
                };
                match &adapter {
                    Some(dir) => text::run_generate(&loaded, opts, &text::load_adapter(&loaded, &experiment::adapter_dir(dir)?, &device)?),
                    None => text::run_generate(&loaded, opts, &iapt_model::NoHook),
                }
            })
        }
        Command::Bench { what: BenchCommand::Data { name, n, model } } => {
            let tokenizer = iapt_model::tokenizer::load_tokenizer(&model_source::resolve_model(&model)?)?;
            let spec = experiment::task_spec(&run_config::DataSection { task: name, ..Default::default() })?;
            let report = iapt_data::bench_encode::<backend::NdArray>(&spec, &tokenizer, n, &Default::default())?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Bench { what: BenchCommand::Train { model, batch, prompt_tokens, response_tokens, steps, tuner, bottleneck, mut sets, profile } } => {
            let path = model_source::resolve_model(&model.model)?;
            if let Some(m) = bottleneck {
                sets.push(format!("tuner.bottleneck={m}"));
            }
            if let Some(set) = sets.iter().find(|s| !s.starts_with("tuner.")) {
                anyhow::bail!("--set {set}: bench train takes only tuner.* options");
            }
            sets.insert(0, format!("tuner.kind={tuner}"));
            let config = run_config::RunConfig::load(None, &sets)?.tuner.config()?;
            with_backend!(model.backend, |B, device| {
                let report = bench::bench_train::<B>(&path, &device, &config, batch, prompt_tokens, response_tokens, steps, profile)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            })
        }
        Command::Bench { what: BenchCommand::Generate { model, prompt_tokens, new_tokens, batch, repeats, iapt_bottleneck, adapter, profile } } => {
            let path = model_source::resolve_model(&model.model)?;
            with_backend!(model.backend, |B, device| {
                let loaded = text::load::<B>(&path, &device)?;
                let tuner = match (&adapter, iapt_bottleneck) {
                    (Some(dir), _) => Some(text::load_adapter(&loaded, &experiment::adapter_dir(dir)?, &device)?),
                    (None, Some(m)) => Some(iapt_tuners::Tuner::Iapt(iapt_tuners::IaptConfig::new(m).init::<B>(loaded.model.config(), &device))),
                    (None, None) => None,
                };
                let tuned = tuner.as_ref().map(|t| (t.name(), t as &dyn iapt_model::ModelHook<B>));
                let report = bench::bench_generate(&loaded, prompt_tokens, new_tokens, &batch, repeats, tuned, profile)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            })
        }
    }
}
