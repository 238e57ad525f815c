//! `iapt serve`: an OpenAI-compatible server for the base model and any number of adapters.

use crate::backend::BackendKind;
use crate::with_backend;
use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use clap::Args;
use iapt_engine::{AdapterInfo, Engine, EngineHandle, EngineLoop, EngineOptions};
use iapt_experiment::model_source::{resolve_model, LoadedModel};
use iapt_experiment::runs::adapter_dir;
use iapt_model::Tokenizer;
use iapt_server::{Server, ServerState};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The model and adapters `iapt serve` and `iapt bench serve` both run.
#[derive(Args)]
struct Served {
    /// A known model name (`smollm2`, fetched on first use) or a `.gguf` file / HF directory.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "ndarray")]
    backend: BackendKind,
    /// The type of the frozen backbone's matrices (half precision on the GPU backends).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: iapt_experiment::run_config::WeightDtype,
    /// An adapter to serve as `NAME=DIR` (an adapter directory or a run directory); clients
    /// select it with `"model": "NAME"`. Repeat for more; more can be loaded at run time.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<String>,
    /// Rows decoded together at most.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    served: Served,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Requests waiting for a row at most; beyond that, requests get 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Adapters kept loaded at most (least recently used idle ones are unloaded first).
    #[arg(long, default_value_t = 32)]
    max_resident_adapters: usize,
    /// The `model` id of the bare base model (default: the `--model` name, or the file name).
    #[arg(long)]
    served_model_name: Option<String>,
}

/// `NAME=DIR` pairs, checked.
fn adapter_args(args: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut pairs: Vec<(String, PathBuf)> = Vec::new();
    for arg in args {
        let Some((name, dir)) = arg.split_once('=').filter(|(n, d)| !n.is_empty() && !d.is_empty()) else {
            bail!("--adapter {arg}: expected NAME=DIR");
        };
        if pairs.iter().any(|(n, _)| n == name) {
            bail!("--adapter {arg}: the name `{name}` is given twice");
        }
        pairs.push((name.to_string(), PathBuf::from(dir)));
    }
    Ok(pairs)
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.served.max_batch == 0 {
        bail!("--max-batch must be at least 1");
    }
    let adapters = adapter_args(&args.served.adapters)?;
    let path = resolve_model(&args.served.model)?;
    let model_id = args.served_model_name.clone().unwrap_or_else(|| default_model_id(&args.served.model, &path));
    if let Some((name, _)) = adapters.iter().find(|(n, _)| *n == model_id) {
        bail!("--adapter {name}=...: `{name}` is the base model's id; choose another name");
    }
    with_backend!(args.served.backend, |B, device| serve::<B>(&args, &path, &device, model_id, adapters))
}

fn default_model_id(spec: &str, path: &Path) -> String {
    if Path::new(spec).exists() {
        path.file_stem().map_or_else(|| spec.to_string(), |s| s.to_string_lossy().into_owned())
    } else {
        spec.to_string()
    }
}

/// The engine loop runs on this (the main) thread, which the CPU kernels' thread pool counts as
/// a worker; the HTTP server runs on another.
fn serve<B: Backend>(args: &ServeArgs, path: &Path, device: &B::Device, model_id: String, adapters: Vec<(String, PathBuf)>) -> Result<()> {
    let options = EngineOptions { max_batch: args.served.max_batch, max_waiting: args.max_waiting, max_resident_adapters: args.max_resident_adapters };
    let (engine, engine_loop, tokenizer, registered) = prepare_engine::<B>(&args.served, path, device, &adapters, options)?;
    for info in &registered {
        eprintln!("adapter {}: {} from {}", info.name, info.kind, info.dir.display());
    }
    let state = ServerState { engine: engine.clone(), tokenizer, model_id: model_id.clone() };
    let server = Server::start(state, &format!("{}:{}", args.host, args.port), true)?;
    eprintln!("serving `{model_id}` and {} adapter(s) on http://{} (OpenAI API under /v1; Ctrl-C stops)", adapters.len(), server.addr());
    let front = std::thread::spawn(move || {
        let result = server.wait();
        engine.shutdown();
        result
    });
    engine_loop.run();
    front.join().map_err(|_| anyhow!("the HTTP server thread panicked"))??;
    Ok(())
}

/// The model and its adapters, loaded into an engine whose loop is still to run: its handle, the
/// loop, the tokenizer, and the adapters as registered.
type Prepared<B> = (EngineHandle, EngineLoop<B>, Arc<Tokenizer>, Vec<AdapterInfo>);

fn prepare_engine<B: Backend>(served: &Served, path: &Path, device: &B::Device, adapters: &[(String, PathBuf)], options: EngineOptions) -> Result<Prepared<B>> {
    let loaded = LoadedModel::<B>::load(path, device, served.dtype).with_context(|| format!("loading {}", path.display()))?;
    let tokenizer = Arc::new(loaded.tokenizer.clone());
    let pad_id = loaded.tokenizer.pad_id();
    let (engine, mut engine_loop) = Engine::prepare(loaded.model, Box::new(loaded.tokenizer), pad_id, options);
    let mut registered = Vec::with_capacity(adapters.len());
    for (name, dir) in adapters {
        let dir = adapter_dir(dir)?;
        registered.push(engine_loop.register_adapter(name, dir.clone()).map_err(|e| anyhow!("--adapter {name}={}: {e}", dir.display()))?);
    }
    Ok((engine, engine_loop, tokenizer, registered))
}

#[derive(Args)]
pub struct LoadArgs {
    /// Requests go round-robin over the base model and the adapters.
    #[command(flatten)]
    served: Served,
    /// Concurrent streaming clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[arg(long, default_value = "Write a short story about a robot who learns to paint.")]
    prompt: String,
    /// No request starts after this many seconds.
    #[arg(long, default_value_t = 300)]
    time_limit_s: u64,
}

/// `iapt bench serve`: the server started on 127.0.0.1 (any free port), a bounded load run
/// against it over HTTP, its report as JSON, then a graceful stop.
pub fn load(args: LoadArgs) -> Result<()> {
    if args.clients == 0 || args.requests == 0 || args.max_tokens == 0 || args.served.max_batch == 0 {
        bail!("--clients, --requests, --max-tokens and --max-batch must be at least 1");
    }
    let adapters = adapter_args(&args.served.adapters)?;
    let path = resolve_model(&args.served.model)?;
    with_backend!(args.served.backend, |B, device| load_on::<B>(&args, &path, &device, adapters))
}

fn load_on<B: Backend>(args: &LoadArgs, path: &Path, device: &B::Device, adapters: Vec<(String, PathBuf)>) -> Result<()> {
    let options = EngineOptions { max_batch: args.served.max_batch, max_waiting: args.requests.max(1), max_resident_adapters: adapters.len().max(1) };
    let (engine, engine_loop, tokenizer, _) = prepare_engine::<B>(&args.served, path, device, &adapters, options)?;
    let model_id = args.served.model.clone();
    let models = std::iter::once(model_id.clone()).chain(adapters.iter().map(|(name, _)| name.clone())).collect();
    let server = Server::start(ServerState { engine: engine.clone(), tokenizer, model_id }, "127.0.0.1:0", false)?;
    let plan = iapt_server::load::LoadPlan {
        clients: args.clients,
        requests: args.requests,
        models,
        prompt: args.prompt.clone(),
        max_tokens: args.max_tokens,
        time_limit: std::time::Duration::from_secs(args.time_limit_s),
    };
    let addr = server.addr();
    let driver = std::thread::spawn(move || {
        let report = iapt_server::load::run(addr, &plan);
        let stopped = server.stop();
        engine.shutdown();
        stopped.map(|_| report)
    });
    engine_loop.run();
    let report = driver.join().map_err(|_| anyhow!("the load run panicked"))??;
    super::print_json(&report)?;
    if report.requests_failed > 0 {
        bail!("{} of {} requests failed; the first: {}", report.requests_failed, report.requests_sent, report.first_error.as_deref().unwrap_or("?"));
    }
    Ok(())
}
