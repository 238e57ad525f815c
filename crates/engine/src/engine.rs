//! The scheduler loop and the handle clients talk to it through.

use crate::adapters::{AdapterInfo, AdapterStore, Busy};
use crate::mixed::{LowRankStack, MixedHook};
use crate::request::{Event, FinishReason, Request, Sink, SubmitError, Usage};
use crate::text::{Detokenizer, TextStream};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use iapt_model::{HostDecoder, KvCache, Llama, ModelHook, NextLogits, NoHook, Padding, Sampler, TokenBatch};
use iapt_tuners::Tuner;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// How much the engine takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Rows decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for a row at most; more are refused ([`SubmitError::QueueFull`]).
    pub max_waiting: usize,
    /// Adapters kept loaded at most; the least recently used idle one makes room.
    pub max_resident_adapters: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_batch: 16, max_waiting: 256, max_resident_adapters: 32 }
    }
}

/// Counters for health checks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub finished_requests: u64,
    pub generated_tokens: u64,
    pub decode_steps: u64,
    /// Seconds spent in decode steps (every running row advanced by one token).
    pub decode_seconds: f64,
    /// Rows prefilled, and the seconds their prefills took.
    pub prefills: u64,
    pub prefill_seconds: f64,
}

enum Command {
    Submit(Request, Sink),
    Register {
        name: String,
        dir: PathBuf,
        reply: mpsc::Sender<Result<AdapterInfo, String>>,
    },
    Unregister {
        name: String,
        reply: mpsc::Sender<bool>,
    },
    List {
        reply: mpsc::Sender<Vec<AdapterInfo>>,
    },
    /// Finish what is queued and running, then end the loop.
    Stop,
}

/// State the handle reads without asking the scheduler.
#[derive(Default)]
struct Shared {
    adapter_names: Mutex<BTreeSet<String>>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    stopping: AtomicBool,
    finished_requests: AtomicU64,
    generated_tokens: AtomicU64,
    decode_steps: AtomicU64,
    decode_nanos: AtomicU64,
    prefills: AtomicU64,
    prefill_nanos: AtomicU64,
}

/// A cheap, cloneable way in to a running engine, usable from any thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    context: usize,
    max_waiting: usize,
}

impl EngineHandle {
    /// Queue `request`; its events go to `sink`. Refused at once when it can never run (or the
    /// queue is full), so the caller can answer with an error instead of a stream.
    pub fn submit(&self, request: Request, sink: Sink) -> Result<(), SubmitError> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            return Err(SubmitError::Stopped);
        }
        if request.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if request.max_tokens == 0 {
            return Err(SubmitError::NoTokens);
        }
        if request.prompt.len() + request.max_tokens > self.context {
            return Err(SubmitError::ContextExceeded { prompt: request.prompt.len(), max_tokens: request.max_tokens, context: self.context });
        }
        if let Some(name) = &request.adapter {
            if !self.has_adapter(name) {
                return Err(SubmitError::UnknownAdapter(name.clone()));
            }
        }
        let waiting = self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.max_waiting {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(waiting));
        }
        self.commands.send(Command::Submit(request, sink)).map_err(|_| {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            SubmitError::Stopped
        })
    }

    /// Register (or replace) adapter `name` from `dir`; it is loaded once to check it.
    pub fn register_adapter(&self, name: &str, dir: PathBuf) -> Result<AdapterInfo, String> {
        let (reply, answer) = mpsc::channel();
        self.commands.send(Command::Register { name: name.to_string(), dir, reply }).map_err(|_| "the engine has stopped".to_string())?;
        answer.recv().map_err(|_| "the engine has stopped".to_string())?
    }

    /// Forget adapter `name` (rows running with it finish with it); false if unknown.
    pub fn unregister_adapter(&self, name: &str) -> bool {
        let (reply, answer) = mpsc::channel();
        self.commands.send(Command::Unregister { name: name.to_string(), reply }).is_ok() && answer.recv().unwrap_or(false)
    }

    pub fn adapters(&self) -> Vec<AdapterInfo> {
        let (reply, answer) = mpsc::channel();
        if self.commands.send(Command::List { reply }).is_err() {
            return Vec::new();
        }
        answer.recv().unwrap_or_default()
    }

    pub fn has_adapter(&self, name: &str) -> bool {
        self.shared.adapter_names.lock().is_ok_and(|names| names.contains(name))
    }

    /// The model's context length, which `prompt + max_tokens` must fit.
    pub fn context_length(&self) -> usize {
        self.context
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        EngineStats {
            running: s.running.load(Ordering::SeqCst),
            waiting: s.waiting.load(Ordering::SeqCst),
            finished_requests: s.finished_requests.load(Ordering::SeqCst),
            generated_tokens: s.generated_tokens.load(Ordering::SeqCst),
            decode_steps: s.decode_steps.load(Ordering::SeqCst),
            decode_seconds: s.decode_nanos.load(Ordering::SeqCst) as f64 * 1e-9,
            prefills: s.prefills.load(Ordering::SeqCst),
            prefill_seconds: s.prefill_nanos.load(Ordering::SeqCst) as f64 * 1e-9,
        }
    }

    /// Refuse new requests from now on; queued and running ones still finish.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
    }

    /// [`stop`](Self::stop), and end the scheduler loop once the queued and running requests
    /// have finished.
    pub fn shutdown(&self) {
        self.stop();
        let _ = self.commands.send(Command::Stop);
    }
}

/// A running engine: the scheduler thread and a handle to it.
pub struct Engine {
    handle: EngineHandle,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// The engine's handle and its scheduler loop, to run on a thread of the caller's choice
    /// (`EngineLoop::run` returns once the engine is shut down and its work is done). The CLI
    /// runs it on the main thread, which the CPU kernels' thread pool counts as a worker.
    pub fn prepare<B: Backend>(model: Llama<B>, detokenizer: Box<dyn Detokenizer>, pad_id: u32, options: EngineOptions) -> (EngineHandle, EngineLoop<B>) {
        let (commands, inbox) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let context = model.config().max_position_embeddings;
        let handle = EngineHandle { commands, shared: shared.clone(), context, max_waiting: options.max_waiting };
        let store = AdapterStore::new(model.config().clone(), model.device(), options.max_resident_adapters);
        let decoder = HostDecoder::new(&model);
        let scheduler = Scheduler {
            model,
            decoder,
            detokenizer,
            pad_id,
            store,
            options,
            shared,
            waiting: VecDeque::new(),
            rows: Vec::new(),
            cache: None,
            stack: None,
            stack_stale: false,
            stopping: false,
        };
        (handle, EngineLoop { scheduler, inbox })
    }

    /// Start the scheduler on its own thread; it owns `model` from now on. `pad_id` pads
    /// prompts (it is never attended to).
    pub fn start<B: Backend>(model: Llama<B>, detokenizer: Box<dyn Detokenizer>, pad_id: u32, options: EngineOptions) -> Self {
        let (handle_out, handle_in) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("iapt-engine".into())
            .spawn(move || {
                let (handle, engine_loop) = Self::prepare(model, detokenizer, pad_id, options);
                let _ = handle_out.send(handle);
                engine_loop.run();
            })
            .expect("spawning the engine thread");
        let handle = handle_in.recv().expect("the engine thread hands back its handle");
        Self { handle, thread: Some(thread) }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Finish every queued and running request, then stop the scheduler.
    pub fn shutdown(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The scheduler loop before it runs: see [`Engine::prepare`]. Requests submitted through the
/// handle before [`run`](Self::run) wait in order and are admitted together.
pub struct EngineLoop<B: Backend> {
    scheduler: Scheduler<B>,
    inbox: mpsc::Receiver<Command>,
}

impl<B: Backend> EngineLoop<B> {
    /// Register adapter `name` from `dir` before the loop runs (what
    /// [`EngineHandle::register_adapter`] does while it runs).
    pub fn register_adapter(&mut self, name: &str, dir: PathBuf) -> Result<AdapterInfo, String> {
        let info = self.scheduler.store.register(name, dir)?;
        self.scheduler.publish_names();
        Ok(info)
    }

    /// Serve requests until the engine is shut down (and everything queued has finished).
    pub fn run(mut self) {
        self.scheduler.run(self.inbox);
    }
}

/// One running row.
struct Row<B: Backend> {
    adapter: Option<Rc<Tuner<B>>>,
    sampler: Sampler,
    /// The token the next decode step feeds.
    last: u32,
    generated: usize,
    prompt_tokens: usize,
    max_tokens: usize,
    stop_tokens: Vec<u32>,
    text: TextStream,
    sink: Sink,
}

impl<B: Backend> Row<B> {
    fn new(request: Request, adapter: Option<Rc<Tuner<B>>>, sink: Sink) -> Self {
        Self {
            adapter,
            sampler: Sampler::new(request.sampling),
            last: 0,
            generated: 0,
            prompt_tokens: request.prompt.len(),
            max_tokens: request.max_tokens,
            stop_tokens: request.stop_tokens,
            text: TextStream::new(request.stop_strings),
            sink,
        }
    }

    /// Take the row's next token and report it; false once the row is done (finished, or its
    /// client gone).
    fn accept(&mut self, token: u32, detokenizer: &dyn Detokenizer) -> bool {
        self.generated += 1;
        self.last = token;
        let mut finish = None;
        if self.stop_tokens.contains(&token) {
            finish = Some(FinishReason::Stop);
        } else {
            let step = self.text.push(token, detokenizer);
            if step.stopped {
                finish = Some(FinishReason::Stop);
            }
            if !(self.sink)(Event::Text { token, text: step.delta }) {
                return false;
            }
        }
        if finish.is_none() && self.generated >= self.max_tokens {
            finish = Some(FinishReason::Length);
        }
        let Some(reason) = finish else { return true };
        let text = if reason == FinishReason::Stop && !self.stop_tokens.contains(&token) { String::new() } else { self.text.finish(detokenizer) };
        let usage = Usage { prompt_tokens: self.prompt_tokens, completion_tokens: self.generated };
        (self.sink)(Event::Finished { reason, usage, text });
        false
    }

    fn hook(&self) -> Option<&dyn ModelHook<B>> {
        self.adapter.as_deref().map(|t| t as &dyn ModelHook<B>)
    }
}

struct Scheduler<B: Backend> {
    model: Llama<B>,
    /// `model`, with its weights gathered for decode steps on host memory (CPU inference backends).
    decoder: HostDecoder<B>,
    detokenizer: Box<dyn Detokenizer>,
    pad_id: u32,
    store: AdapterStore<B>,
    options: EngineOptions,
    shared: Arc<Shared>,
    waiting: VecDeque<(Request, Sink)>,
    rows: Vec<Row<B>>,
    /// The running rows' KV cache, row i of it being `rows[i]`; `None` while no row runs.
    cache: Option<KvCache<B>>,
    /// The running rows' stacked low-rank factors, and whether rows changed since it was built.
    stack: Option<LowRankStack<B>>,
    stack_stale: bool,
    /// Asked to stop (or every handle is gone): finish what is queued, then end.
    stopping: bool,
}

impl<B: Backend> Scheduler<B> {
    fn run(&mut self, inbox: mpsc::Receiver<Command>) {
        loop {
            if self.rows.is_empty() && self.waiting.is_empty() {
                if self.stopping {
                    break;
                }
                match inbox.recv() {
                    Ok(command) => self.command(command),
                    Err(_) => break,
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(command) => self.command(command),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.stopping = true;
                        break;
                    }
                }
            }
            self.admit();
            if !self.rows.is_empty() {
                self.step();
            }
            self.shared.running.store(self.rows.len(), Ordering::SeqCst);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit(request, sink) => self.waiting.push_back((request, sink)),
            Command::Register { name, dir, reply } => {
                let result = self.store.register(&name, dir);
                if result.is_ok() {
                    self.publish_names();
                }
                let _ = reply.send(result);
            }
            Command::Unregister { name, reply } => {
                let known = self.store.unregister(&name);
                self.publish_names();
                let _ = reply.send(known);
            }
            Command::List { reply } => {
                let _ = reply.send(self.store.list());
            }
            Command::Stop => self.stopping = true,
        }
    }

    fn publish_names(&self) {
        if let Ok(mut names) = self.shared.adapter_names.lock() {
            *names = self.store.list().into_iter().map(|a| a.name).collect();
        }
    }

    /// Move waiting requests into the batch, oldest first, while there is room. A request
    /// whose adapter cannot be loaded yet (every resident one busy) waits at the head, so no
    /// later request overtakes it.
    fn admit(&mut self) {
        while self.rows.len() < self.options.max_batch {
            let Some((request, _)) = self.waiting.front() else { break };
            let adapter = match &request.adapter {
                None => Ok(None),
                Some(name) => match self.store.acquire(name) {
                    Ok(Some(tuner)) => Ok(Some(tuner)),
                    Ok(None) => Err(format!("the adapter `{name}` was unloaded before this request ran")),
                    Err(Ok(Busy)) => break,
                    Err(Err(message)) => Err(format!("loading the adapter `{name}`: {message}")),
                },
            };
            let (request, mut sink) = self.waiting.pop_front().expect("front exists");
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            match adapter {
                Ok(adapter) => self.prefill(request, adapter, sink),
                Err(message) => {
                    sink(Event::Failed(message));
                }
            }
        }
    }

    /// Run a new row's prompt alone (its adapter's prefixes enter its cache here, once), take
    /// its first token, and join it to the batch.
    fn prefill(&mut self, request: Request, adapter: Option<Rc<Tuner<B>>>, sink: Sink) {
        let started = Instant::now();
        let device = self.model.device();
        let mut cache = KvCache::new(self.model.num_layers());
        let batch = TokenBatch::padded(std::slice::from_ref(&request.prompt), self.pad_id, Padding::Left, &device);
        let hook: &dyn ModelHook<B> = match &adapter {
            Some(tuner) => tuner.as_ref(),
            None => &NoHook,
        };
        let hidden = self.model.forward(batch, &mut cache, hook);
        let logits = NextLogits::of(&self.model, hidden);
        let mut row = Row::new(request, adapter, sink);
        let token = row.sampler.sample(logits.row(0));
        self.shared.prefills.fetch_add(1, Ordering::Relaxed);
        self.shared.prefill_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.shared.generated_tokens.fetch_add(1, Ordering::Relaxed);
        if row.accept(token, self.detokenizer.as_ref()) {
            self.cache = Some(match self.cache.take() {
                Some(batch) => batch.join(cache),
                None => cache,
            });
            self.rows.push(row);
            self.stack_stale = true;
        } else {
            self.shared.finished_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One token for every running row; finished rows leave the batch.
    fn step(&mut self) {
        let started = Instant::now();
        let device = self.model.device();
        let cache = self.cache.as_mut().expect("running rows have a cache");
        let ids: Vec<i64> = self.rows.iter().map(|r| r.last as i64).collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [self.rows.len(), 1]), &device);
        let logits = {
            let hooks: Vec<_> = self.rows.iter().map(Row::hook).collect();
            if self.stack_stale {
                self.stack = LowRankStack::build(&hooks, self.model.config(), &device);
                self.stack_stale = false;
            }
            let hook = MixedHook::new(&hooks, self.stack.as_ref(), &device);
            let hidden = self.decoder.forward(TokenBatch::dense(ids), cache, &hook);
            NextLogits::of(&self.model, hidden)
        };
        self.shared.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.shared.generated_tokens.fetch_add(self.rows.len() as u64, Ordering::Relaxed);
        let detokenizer = self.detokenizer.as_ref();
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| {
                let row = &mut self.rows[i];
                let token = row.sampler.sample(logits.row(i));
                row.accept(token, detokenizer)
            })
            .collect();
        self.shared.decode_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if keep.len() == self.rows.len() {
            return;
        }
        self.shared.finished_requests.fetch_add((self.rows.len() - keep.len()) as u64, Ordering::Relaxed);
        let mut index = 0;
        self.rows.retain(|_| {
            let kept = keep.binary_search(&index).is_ok();
            index += 1;
            kept
        });
        self.stack_stale = true;
        if keep.is_empty() {
            self.cache = None;
        } else {
            cache.retain_rows(&keep);
        }
    }
}
