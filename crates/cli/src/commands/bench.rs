//! `iapt bench generate|train|data|multitenant|serve`: benchmarks, printed as JSON.

use super::{print_json, ModelArgs};
use crate::with_backend;
use anyhow::Result;
use clap::{Args, Subcommand};
use iapt_experiment::bench::{bench_generate, bench_train, TrainShape};
use iapt_experiment::model_source::{load_bench_backbone, resolve_model, LoadedModel};
use iapt_experiment::run_config::{DataSection, RunConfig};
use iapt_experiment::runs::adapter_dir;
use iapt_tuners::{IaptConfig, Tuner, TunerKind};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prefill and decode tokens/s at several batch sizes.
    Generate(GenerateArgs),
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
    Train(TrainArgs),
    /// Decode tokens/s of one batch whose rows have different adapters, against the number of
    /// distinct adapters: IAPT, unmerged LoRA (IAPT's parameter count; r8 on all 7
    /// projections) and the bare model.
    Multitenant(MultitenantArgs),
    /// A bounded load run over HTTP against `iapt serve`'s server, started on 127.0.0.1:
    /// throughput, time to first token and inter-token latency (p50/p99).
    Serve(super::serve::LoadArgs),
}

#[derive(Args)]
struct MultitenantArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    batch: Vec<usize>,
    /// Distinct adapters per batch.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    distinct: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// IAPT options, e.g. `--set tuner.bottleneck=32` (repeatable); LoRA is sized to match.
    #[arg(long = "set", value_name = "tuner.KEY=VALUE")]
    sets: Vec<String>,
    /// Methods to measure (default: all of bare, iapt, lora_same_params, lora_r8_all7).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Also draw the results as a PNG: decode tokens/s against distinct adapters, one line per
    /// method, one panel per batch size, the bare model dashed.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Measure nothing: read the JSON an earlier run printed (then `--plot` draws it).
    #[arg(long, value_name = "FILE.json", requires = "plot")]
    from: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
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
    adapter: Option<PathBuf>,
    /// Split prefill and decode time by kind of work (projections, attention, norms/RoPE, LM head, sampling, other).
    #[arg(long)]
    profile: bool,
}

#[derive(Args)]
struct TrainArgs {
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
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        BenchCommand::Generate(args) => generate(args),
        BenchCommand::Train(args) => train(args),
        BenchCommand::Multitenant(args) => multitenant(args),
        BenchCommand::Serve(args) => super::serve::load(args),
        BenchCommand::Data { name, n, model } => {
            let tokenizer = iapt_model::load_tokenizer(&resolve_model(&model)?)?;
            let spec = iapt_experiment::task::task_spec(&DataSection { task: name, ..Default::default() })?;
            print_json(&iapt_experiment::bench::bench_data::<crate::backend::NdArray>(&spec, &tokenizer, n, &Default::default())?)
        }
    }
}

fn generate(args: GenerateArgs) -> Result<()> {
    with_backend!(args.model.backend, |B, device| {
        let model = load_bench_backbone::<B>(&args.model.model, &device, args.model.dtype)?;
        let tuner: Option<Tuner<B>> = match (&args.adapter, args.iapt_bottleneck) {
            (Some(dir), _) => Some(iapt_tuners::load_tuner::<B>(&adapter_dir(dir)?, model.config(), &device)?),
            (None, Some(m)) => Some(Tuner::Iapt(IaptConfig::new(m).init::<B>(model.config(), &device).map_err(anyhow::Error::msg)?)),
            (None, None) => None,
        };
        let tuned = tuner.as_ref().map(|t| (t.name(), t as &dyn iapt_model::ModelHook<B>));
        print_json(&bench_generate(&model, args.prompt_tokens, args.new_tokens, &args.batch, args.repeats, tuned, args.profile)?)
    })
}

fn train(mut args: TrainArgs) -> Result<()> {
    if let Some(m) = args.bottleneck {
        args.sets.push(format!("tuner.bottleneck={m}"));
    }
    if let Some(set) = args.sets.iter().find(|s| !s.starts_with("tuner.")) {
        anyhow::bail!("--set {set}: bench train takes only tuner.* options");
    }
    args.sets.insert(0, format!("tuner.kind={}", args.tuner));
    let config = RunConfig::load(None, &args.sets)?.tuner;
    let shape = TrainShape { batch: args.batch, prompt_len: args.prompt_tokens, response_len: args.response_tokens, steps: args.steps, profile: args.profile };
    with_backend!(args.model.backend, |B, device| {
        let backbone = load_bench_backbone::<burn::backend::Autodiff<B>>(&args.model.model, &device, args.model.dtype)?;
        print_json(&bench_train::<B>(backbone, &config, &shape)?)
    })
}

fn multitenant(mut args: MultitenantArgs) -> Result<()> {
    use iapt_experiment::multitenant::{bench_multitenant, default_methods, MultitenantBench, MultitenantShape};
    let plot = |bench: &MultitenantBench, path: &Path| -> Result<()> {
        bench.chart().write_png(path)?;
        eprintln!("plot written to {}", path.display());
        Ok(())
    };
    if let (Some(from), Some(to)) = (&args.from, &args.plot) {
        return plot(&super::read_json(from, "`iapt bench multitenant --json`")?, to);
    }
    let path = resolve_model(&args.model.model)?;
    if let Some(set) = args.sets.iter().find(|s| !s.starts_with("tuner.") || s.starts_with("tuner.kind")) {
        anyhow::bail!("--set {set}: bench multitenant takes only IAPT's tuner.* options");
    }
    args.sets.insert(0, "tuner.kind=iapt".into());
    let iapt_tuners::TunerConfig::Iapt(iapt) = RunConfig::load(None, &args.sets)?.tuner else { unreachable!("tuner.kind=iapt") };
    if args.batch.contains(&0) || args.new_tokens < 2 || args.prompt_tokens == 0 {
        anyhow::bail!("--batch sizes must be positive, --new-tokens at least 2 (one prefill token, then decode steps) and --prompt-tokens positive");
    }
    let shape = MultitenantShape {
        prompt_tokens: args.prompt_tokens,
        new_tokens: args.new_tokens,
        batches: args.batch,
        distinct: args.distinct,
        repeats: args.repeats,
    };
    with_backend!(args.model.backend, |B, device| {
        let loaded = LoadedModel::<B>::load(&path, &device, args.model.dtype)?;
        let mut methods = default_methods(loaded.model.config(), iapt);
        if !args.methods.is_empty() {
            if let Some(unknown) = args.methods.iter().find(|m| !methods.iter().any(|(name, _)| name == *m)) {
                anyhow::bail!("--methods {unknown}: not one of {}", methods.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "));
            }
            // The bare model is always measured: every row is reported relative to it.
            methods.retain(|(name, _)| name == "bare" || args.methods.contains(name));
        }
        let bench = bench_multitenant(&loaded, &shape, &methods)?;
        if let Some(to) = &args.plot {
            plot(&bench, to)?;
        }
        print_json(&bench)
    })
}
