//! The engine on a tiny random model: every row of a mixed batch generates exactly what it
//! generates alone with its adapter, whatever joins or leaves the batch; abandoned rows leave;
//! stop strings, sampling seeds, adapter eviction and every refusal.

use burn::tensor::backend::Backend;
use iapt_engine::{Detokenizer, Engine, EngineHandle, EngineOptions, Event, FinishReason, Request, SubmitError, Usage};
use iapt_model::{generate, GenerationConfig, Llama, LlamaConfig, ModelHook, NoHook, Projection, SamplingConfig};
use iapt_tuners::{IaptConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, Tuner, TunerConfig};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

type TB = burn::backend::NdArray;

/// Token i reads as letter `a + i % 26`.
struct Letters;
impl Detokenizer for Letters {
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| (b'a' + (i % 26) as u8) as char).collect()
    }
}

fn tiny() -> Llama<TB> {
    TB::seed(&Default::default(), 3);
    Llama::random(&LlamaConfig::tiny(), &Default::default())
}

/// The adapters under test, one of every kind, saved where the engine can load them. Every
/// parameter is moved off its init (LoRA's `B = 0` would make the check vacuous).
fn adapters(tag: &str) -> Vec<(String, PathBuf)> {
    let kinds = [
        ("iapt", TunerConfig::Iapt(IaptConfig::new(8))),
        ("lora", TunerConfig::Lora(LoraConfig::new().with_rank(2).with_targets(Projection::ALL.to_vec()))),
        ("lora-qv", TunerConfig::Lora(LoraConfig::new().with_rank(3))),
        ("prefix", TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(3))),
        ("prompt", TunerConfig::PromptTuning(PromptTuningConfig::new().with_num_tokens(2))),
    ];
    let root = std::env::temp_dir().join(format!("iapt-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, (name, config))| {
            let tuner = config.init::<TB>(&LlamaConfig::tiny(), &Default::default()).unwrap().jittered(i as u64 + 1, 0.5, |_| true);
            let dir = root.join(name);
            iapt_tuners::save_tuner(&dir, &tuner, "tiny").unwrap();
            (name.to_string(), dir)
        })
        .collect()
}

fn request(prompt: Vec<u32>, adapter: Option<&str>, max_tokens: usize) -> Request {
    Request { prompt, adapter: adapter.map(str::to_string), sampling: SamplingConfig::default(), max_tokens, stop_tokens: vec![], stop_strings: vec![] }
}

/// What one request produced: its tokens, final text and how it ended.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    failed: Option<String>,
}

fn submit(handle: &EngineHandle, request: Request) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    handle.submit(request, Box::new(move |event| tx.send(event).is_ok())).unwrap();
    rx
}

fn collect(rx: mpsc::Receiver<Event>) -> Outcome {
    let mut out = Outcome { tokens: vec![], text: String::new(), finish: None, usage: None, failed: None };
    for event in rx.iter() {
        match event {
            Event::Text { token, text } => {
                out.tokens.push(token);
                out.text.push_str(&text);
            }
            Event::Finished { reason, usage, text } => {
                out.text.push_str(&text);
                out.finish = Some(reason);
                out.usage = Some(usage);
                break;
            }
            Event::Failed(message) => {
                out.failed = Some(message);
                break;
            }
        }
    }
    out
}

/// The tokens `request` generates run alone through `generate`, with its adapter loaded from
/// its directory.
fn alone(model: &Llama<TB>, adapters: &[(String, PathBuf)], request: &Request) -> Vec<u32> {
    let tuner: Option<Tuner<TB>> = request.adapter.as_ref().map(|name| {
        let dir = &adapters.iter().find(|(n, _)| n == name).unwrap().1;
        iapt_tuners::load_tuner::<TB>(dir, model.config(), &Default::default()).unwrap()
    });
    let hook: &dyn ModelHook<TB> = match &tuner {
        Some(t) => t,
        None => &NoHook,
    };
    let config = GenerationConfig { max_new_tokens: request.max_tokens, sampling: request.sampling.clone(), stop_tokens: request.stop_tokens.clone() };
    generate(model, std::slice::from_ref(&request.prompt), 0, &config, hook).tokens.remove(0)
}

fn start(model: &Llama<TB>, adapters: &[(String, PathBuf)], options: EngineOptions) -> Engine {
    let engine = Engine::start(model.clone(), Box::new(Letters), 0, options);
    for (name, dir) in adapters {
        engine.handle().register_adapter(name, dir.clone()).unwrap();
    }
    engine
}

fn prompt(i: usize) -> Vec<u32> {
    (0..3 + (i * 5) % 9).map(|j| ((i * 31 + j * 17) % 96 + 1) as u32).collect()
}

#[test]
fn every_row_of_a_mixed_batch_generates_what_it_generates_alone() {
    let model = tiny();
    let adapters = adapters("mixed");
    let names: Vec<Option<&str>> = std::iter::once(None).chain(adapters.iter().map(|(n, _)| Some(n.as_str()))).collect();
    let engine = start(&model, &adapters, EngineOptions { max_batch: 8, ..Default::default() });
    // Twelve requests over six kinds (bare included), of different lengths, so rows join and
    // leave while others run.
    let requests: Vec<Request> = (0..12).map(|i| request(prompt(i), names[i % names.len()], 4 + (i * 7) % 13)).collect();
    let pending: Vec<_> = requests.iter().map(|r| submit(&engine.handle(), r.clone())).collect();
    for (i, (rx, request)) in pending.into_iter().zip(&requests).enumerate() {
        let got = collect(rx);
        assert_eq!(got.failed, None);
        assert_eq!(got.finish, Some(FinishReason::Length));
        assert_eq!(got.tokens, alone(&model, &adapters, request), "request {i} ({:?}) differs from its run alone", request.adapter);
        assert_eq!(got.text, Letters.decode(&got.tokens));
        assert_eq!(got.usage, Some(Usage { prompt_tokens: request.prompt.len(), completion_tokens: request.max_tokens }));
    }
    let stats = engine.handle().stats();
    assert_eq!((stats.running, stats.waiting, stats.finished_requests), (0, 0, 12));
    assert!(stats.decode_steps < requests.iter().map(|r| r.max_tokens as u64).sum::<u64>(), "rows were never batched: {stats:?}");
}

#[test]
fn a_long_request_is_unaffected_by_rows_joining_and_leaving() {
    let model = tiny();
    let adapters = adapters("churn");
    let engine = start(&model, &adapters, EngineOptions { max_batch: 4, ..Default::default() });
    let long = request(prompt(1), Some("lora"), 60);
    let rx = submit(&engine.handle(), long.clone());
    // Wait until it is decoding, then send short requests in waves behind it.
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let mut short = Vec::new();
    for wave in 0..3 {
        let wave: Vec<_> =
            (0..5).map(|i| request(prompt(10 + wave * 5 + i), [Some("iapt"), None, Some("prefix"), Some("lora-qv"), Some("prompt")][i], 2 + i)).collect();
        let waiting: Vec<_> = wave.iter().map(|r| submit(&engine.handle(), r.clone())).collect();
        for (rx, r) in waiting.into_iter().zip(wave) {
            short.push((collect(rx), r));
        }
    }
    let Event::Text { token, .. } = first else { panic!("expected a token, got {first:?}") };
    let mut got = collect(rx);
    got.tokens.insert(0, token);
    assert_eq!(got.tokens, alone(&model, &adapters, &long));
    for (i, (out, r)) in short.iter().enumerate() {
        assert_eq!(out.tokens, alone(&model, &adapters, r), "short request {i}");
    }
}

#[test]
fn seeded_sampling_is_the_rows_own() {
    let model = tiny();
    let adapters = adapters("sampling");
    let engine = start(&model, &adapters, EngineOptions::default());
    let mut sampled = request(prompt(2), Some("iapt"), 20);
    sampled.sampling = SamplingConfig { temperature: 0.9, top_k: 20, top_p: 0.9, seed: 7 };
    let others: Vec<_> = (0..3).map(|i| submit(&engine.handle(), request(prompt(i + 5), None, 20))).collect();
    let got = collect(submit(&engine.handle(), sampled.clone()));
    others.into_iter().for_each(|rx| drop(collect(rx)));
    assert_eq!(got.tokens, alone(&model, &adapters, &sampled));
    let mut reseeded = sampled.clone();
    reseeded.sampling.seed = 8;
    assert_ne!(alone(&model, &adapters, &reseeded), got.tokens, "the seed had no effect");
}

#[test]
fn stop_strings_and_stop_tokens_end_a_row() {
    let model = tiny();
    let engine = start(&model, &[], EngineOptions::default());
    let free = request(prompt(3), None, 24);
    let tokens = alone(&model, &[], &free);
    let text = Letters.decode(&tokens);
    // A stop string taken from the middle of the free-running text: the output ends before its
    // first occurrence.
    let stop = text[6..8].to_string();
    let cut = text.find(&stop).unwrap();
    let mut stopped = free.clone();
    stopped.stop_strings = vec![stop.clone(), "no such text".into()];
    let got = collect(submit(&engine.handle(), stopped));
    assert_eq!(got.finish, Some(FinishReason::Stop));
    assert_eq!(got.text, text[..cut], "stop string {stop:?} in {text:?}");
    // A stop token: the row ends with it, and its text is not part of the output.
    let mut by_token = free.clone();
    by_token.stop_tokens = vec![tokens[5]];
    let first = tokens.iter().position(|&t| t == tokens[5]).unwrap();
    let got = collect(submit(&engine.handle(), by_token));
    assert_eq!(got.finish, Some(FinishReason::Stop));
    assert_eq!(got.text, Letters.decode(&tokens[..first]));
    assert_eq!(got.usage.map(|u| u.completion_tokens), Some(first + 1), "the stop token counts as generated");
}

#[test]
fn an_abandoned_row_leaves_and_the_others_finish() {
    let model = tiny();
    let engine = start(&model, &[], EngineOptions::default());
    let keep = request(prompt(4), None, 30);
    let kept = submit(&engine.handle(), keep.clone());
    let (tx, dropped) = mpsc::channel();
    engine.handle().submit(request(prompt(5), None, 200), Box::new(move |e| tx.send(e).is_ok())).unwrap();
    dropped.recv_timeout(Duration::from_secs(60)).unwrap();
    drop(dropped);
    assert_eq!(collect(kept).tokens, alone(&model, &[], &keep));
    // The abandoned row is gone well before its 200 tokens.
    for _ in 0..600 {
        if engine.handle().stats().running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = engine.handle().stats();
    assert_eq!(stats.running, 0, "{stats:?}");
    assert!(stats.generated_tokens < 200, "the abandoned row kept decoding: {stats:?}");
}

#[test]
fn adapters_beyond_the_resident_limit_are_evicted_and_reloaded() {
    let model = tiny();
    let adapters = adapters("evict");
    let engine = start(&model, &adapters, EngineOptions { max_resident_adapters: 2, max_batch: 3, ..Default::default() });
    let resident = engine.handle().adapters().iter().filter(|a| a.resident).count();
    assert_eq!(resident, 2);
    let requests: Vec<_> = (0..10).map(|i| request(prompt(i), Some(adapters[i % adapters.len()].0.as_str()), 3 + i % 4)).collect();
    let pending: Vec<_> = requests.iter().map(|r| submit(&engine.handle(), r.clone())).collect();
    for (rx, r) in pending.into_iter().zip(&requests) {
        assert_eq!(collect(rx).tokens, alone(&model, &adapters, r), "{:?}", r.adapter);
    }
    assert!(engine.handle().adapters().iter().filter(|a| a.resident).count() <= 2);
    // Unloaded adapters are refused; reloading brings them back.
    assert!(engine.handle().unregister_adapter("iapt"));
    assert!(!engine.handle().unregister_adapter("iapt"));
    let refused = engine.handle().submit(request(prompt(0), Some("iapt"), 2), Box::new(|_| true));
    assert_eq!(refused, Err(SubmitError::UnknownAdapter("iapt".into())));
    engine.handle().register_adapter("iapt", adapters[0].1.clone()).unwrap();
    let again = request(prompt(0), Some("iapt"), 4);
    assert_eq!(collect(submit(&engine.handle(), again.clone())).tokens, alone(&model, &adapters, &again));
    let missing = engine.handle().register_adapter("nowhere", PathBuf::from("/no/such/adapter"));
    assert!(missing.as_ref().is_err_and(|e| e.contains("/no/such/adapter")), "{missing:?}");
}

#[test]
fn requests_that_cannot_run_are_refused_with_the_reason() {
    let model = tiny();
    let engine = start(&model, &[], EngineOptions { max_batch: 1, max_waiting: 1, ..Default::default() });
    let handle = engine.handle();
    let context = LlamaConfig::tiny().max_position_embeddings;
    let refuse = |r: Request| handle.submit(r, Box::new(|_| true));
    assert_eq!(refuse(request(vec![], None, 4)), Err(SubmitError::EmptyPrompt));
    assert_eq!(refuse(request(vec![1], None, 0)), Err(SubmitError::NoTokens));
    assert_eq!(refuse(request(vec![1; 10], None, context)), Err(SubmitError::ContextExceeded { prompt: 10, max_tokens: context, context }));
    assert_eq!(refuse(request(vec![1], Some("nobody"), 4)), Err(SubmitError::UnknownAdapter("nobody".into())));
    // One row runs a long request, one waits; the third finds the queue full.
    let running = submit(&handle, request(prompt(1), None, 200));
    running.recv_timeout(Duration::from_secs(60)).unwrap();
    let _waiting = submit(&handle, request(prompt(2), None, 2));
    assert!(matches!(refuse(request(prompt(3), None, 2)), Err(SubmitError::QueueFull(1))));
    drop(running);
    // Shutting down finishes queued work and refuses new work.
    handle.stop();
    assert_eq!(refuse(request(prompt(3), None, 2)), Err(SubmitError::Stopped));
    engine.shutdown();
}
