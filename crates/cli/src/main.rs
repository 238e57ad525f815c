//! `iapt`: fetch models and data, run, score, benchmark, train and evaluate tuners. Each
//! command is argument parsing plus one call into the libraries (`commands/<command>.rs`).

mod backend;
mod commands;

use clap::{Parser, Subcommand};
use commands::{bench, compare, config, data, eval, export, fetch, serve, text, train};

#[derive(Parser)]
#[command(name = "iapt", version, about = "Instruction-Aware Prompt Tuning on burn")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download, verify and cache a model or dataset.
    Fetch(fetch::FetchArgs),
    /// Token ids of a text (special tokens in it are parsed).
    Tokenize(text::TokenizeArgs),
    /// Mean next-token negative log-likelihood of a text.
    Score(text::ScoreArgs),
    /// Generate a continuation (raw prompt, or `--chat` to use the chat template).
    Generate(text::GenerateArgs),
    /// Train a tuner on a task (zero-shot accuracy first, tuned accuracy after), with
    /// burn-train's dashboard; everything lands in the run directory.
    Train(train::TrainArgs),
    /// Train and evaluate several tuners on one task with the same data, seeds and budget, and
    /// write one comparison table (markdown + JSON). Finished runs are reused when run again.
    Compare(compare::CompareArgs),
    /// Print the resolved run config (defaults filled in, overrides applied) as TOML.
    Config(config::ConfigArgs),
    /// Accuracy on a task split: the backbone alone, or with `--adapter` (a run or adapter dir).
    Eval(eval::EvalArgs),
    /// Inspect task data.
    Data(data::DataArgs),
    /// Benchmarks (JSON output).
    Bench(bench::BenchArgs),
    /// Serve the model and adapters over an OpenAI-compatible HTTP API, every request with its
    /// own adapter, in one continuously batched decode.
    Serve(serve::ServeArgs),
    /// Write an adapter in Hugging Face PEFT's layout (LoRA, prompt tuning).
    Export(export::ExportArgs),
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
    let result = match Cli::parse().command {
        Command::Fetch(args) => fetch::run(args),
        Command::Tokenize(args) => text::tokenize(args),
        Command::Score(args) => text::score(args),
        Command::Generate(args) => text::generate_text(args),
        Command::Train(args) => train::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Config(args) => config::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Data(args) => data::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Export(args) => export::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
