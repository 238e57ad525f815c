//! The server over real HTTP on 127.0.0.1, on the real SmolLM2 checkpoint (fetched on first
//! use into `$IAPT_HOME`) with one random adapter of every kind: concurrent mixed-adapter
//! requests, streamed or not, answer exactly what each request generates alone; a dropped
//! stream stalls nobody; adapters come and go at run time; every error has OpenAI's shape and
//! status; stopping finishes what is in flight.

use burn::tensor::backend::Backend;
use iapt_engine::{Engine, EngineOptions};
use iapt_model::{generate, GenerationConfig, Llama, ModelHook, NoHook, Projection, SamplingConfig, Tokenizer};
use iapt_server::client;
use iapt_server::{Server, ServerState};
use iapt_tuners::{IaptConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TunerConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

type TB = burn::backend::NdArray;
const BASE: &str = "smollm2";

struct Fixture {
    addr: SocketAddr,
    model: Mutex<Llama<TB>>,
    tokenizer: Tokenizer,
    adapters: Vec<(String, PathBuf)>,
    _server: Mutex<Server>,
    _engine: Mutex<Engine>,
}

fn checkpoint() -> PathBuf {
    iapt_assets::fetch_asset(BASE).expect("fetching the SmolLM2 checkpoint")
}

/// Random adapters of every kind for the real model's shape, saved to disk. LoRA's factors are
/// moved off `B = 0` so that it changes the output.
fn make_adapters(model: &Llama<TB>, root: &Path) -> Vec<(String, PathBuf)> {
    let kinds = [
        ("iapt", TunerConfig::Iapt(IaptConfig::new(16))),
        ("lora", TunerConfig::Lora(LoraConfig::new().with_rank(8).with_targets(Projection::ALL.to_vec()))),
        ("prefix", TunerConfig::PrefixTuning(PrefixTuningConfig::new().with_num_tokens(4))),
        ("prompt", TunerConfig::PromptTuning(PromptTuningConfig::new().with_num_tokens(4))),
    ];
    TB::seed(&Default::default(), 11);
    kinds
        .into_iter()
        .map(|(name, config)| {
            let tuner = config.init_from_backbone::<TB>(model).unwrap();
            let tuner = tuner.jittered(1, 0.5, |name| name.ends_with("lora_b"));
            let dir = root.join(name);
            iapt_tuners::save_tuner(&dir, &tuner, BASE).unwrap();
            (name.to_string(), dir)
        })
        .collect()
}

fn start_server(model: &Llama<TB>, tokenizer: &Tokenizer, adapters: &[(String, PathBuf)], options: EngineOptions) -> (Engine, Server) {
    let engine = Engine::start(model.clone(), Box::new(tokenizer.clone()), tokenizer.pad_id(), options);
    for (name, dir) in adapters {
        engine.handle().register_adapter(name, dir.clone()).unwrap();
    }
    let state = ServerState { engine: engine.handle(), tokenizer: Arc::new(tokenizer.clone()), model_id: BASE.into() };
    let server = Server::start(state, "127.0.0.1:0", false).unwrap();
    (engine, server)
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = checkpoint();
        let tokenizer = iapt_model::load_tokenizer(&path).unwrap();
        let model = iapt_model::load_llama::<TB>(&path, &Default::default()).unwrap();
        let root = std::env::temp_dir().join(format!("iapt-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let adapters = make_adapters(&model, &root);
        let (engine, server) = start_server(&model, &tokenizer, &adapters, EngineOptions { max_batch: 16, ..Default::default() });
        Fixture { addr: server.addr(), model: Mutex::new(model), tokenizer, adapters, _server: Mutex::new(server), _engine: Mutex::new(engine) }
    })
}

/// What `prompt` (token ids) generates greedily alone with `adapter`, as the server reports it:
/// the text (EOS not included) and the finish reason.
fn alone(f: &Fixture, prompt: &[u32], adapter: &str, max_tokens: usize) -> (String, &'static str) {
    let model = f.model.lock().unwrap();
    let tuner = (adapter != BASE).then(|| {
        let dir = &f.adapters.iter().find(|(n, _)| n == adapter).unwrap().1;
        iapt_tuners::load_tuner::<TB>(dir, model.config(), &Default::default()).unwrap()
    });
    let hook: &dyn ModelHook<TB> = match &tuner {
        Some(t) => t,
        None => &NoHook,
    };
    let eos = f.tokenizer.eos_id();
    let config = GenerationConfig { max_new_tokens: max_tokens, sampling: SamplingConfig::default(), stop_tokens: vec![eos] };
    let mut tokens = generate(&model, &[prompt.to_vec()], f.tokenizer.pad_id(), &config, hook).tokens.remove(0);
    let reason = if tokens.last() == Some(&eos) {
        tokens.pop();
        "stop"
    } else {
        "length"
    };
    (f.tokenizer.decode(&tokens, true).unwrap(), reason)
}

fn chat_ids(f: &Fixture, question: &str) -> Vec<u32> {
    let text = f.tokenizer.apply_chat_template(&[iapt_model::ChatMessage::new("user", question)], true).unwrap();
    f.tokenizer.encode(&text).unwrap()
}

/// A streamed request: the text of its chunks, its finish reason, its usage chunk, and whether
/// it ended with `[DONE]`.
struct Streamed {
    text: String,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

fn stream(addr: SocketAddr, path: &str, body: &Value) -> Streamed {
    let mut out = Streamed { text: String::new(), finish: None, usage: None, done: false };
    let error = client::post_stream(addr, path, body, |data| {
        assert!(!out.done, "data after [DONE]: {data}");
        if data == "[DONE]" {
            out.done = true;
            return true;
        }
        let chunk: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {data}"));
        assert!(chunk.get("error").is_none(), "error chunk: {chunk}");
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            assert_eq!(chunk["choices"], json!([]), "the usage chunk has no choices");
            out.usage = Some(usage.clone());
        }
        for choice in chunk["choices"].as_array().unwrap() {
            let piece = choice["text"].as_str().or(choice["delta"]["content"].as_str()).unwrap_or("");
            out.text.push_str(piece);
            if let Some(reason) = choice["finish_reason"].as_str() {
                out.finish = Some(reason.to_string());
            }
        }
        true
    })
    .unwrap();
    assert!(error.is_none(), "not a stream: {error:?}");
    out
}

const PROMPTS: [&str; 4] = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):", "The three primary colors are"];

#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn the_chat_endpoint_answers_with_the_chat_template() {
    let f = fixture();
    let body = json!({ "model": BASE, "messages": [{ "role": "user", "content": "What is the capital of Germany?" }], "max_tokens": 16, "temperature": 0 });
    let response = client::post_json(f.addr, "/v1/chat/completions", &body).unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    let v = response.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"].as_str().unwrap().trim(), "The capital of Germany is Berlin.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let prompt_tokens = chat_ids(f, "What is the capital of Germany?").len() as u64;
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    let u = &v["usage"];
    assert_eq!(u["total_tokens"].as_u64(), Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()));
}

#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn models_lists_the_base_and_every_adapter_with_its_parent() {
    let f = fixture();
    let v = client::get(f.addr, "/v1/models").unwrap().json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], BASE);
    assert_eq!(data[0]["parent"], Value::Null);
    for (name, _) in &f.adapters {
        let entry = data.iter().find(|m| m["id"] == name.as_str()).unwrap_or_else(|| panic!("{name} not listed: {v}"));
        assert_eq!(entry["parent"], BASE);
        assert_eq!(entry["object"], "model");
    }
    assert_eq!(client::get(f.addr, "/v1/models/lora").unwrap().json()["tuner"], "lora");
    assert_eq!(client::get(f.addr, "/v1/models/nobody").unwrap().status, 404);
    assert_eq!(client::get(f.addr, "/health").unwrap().json()["status"], "ok");
}

/// The bounded load test: 64 requests from 16 concurrent clients over the base model and four
/// adapter kinds, half streamed, half chat; every answer equals the request run alone.
#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn concurrent_mixed_adapter_requests_equal_their_runs_alone() {
    let f = fixture();
    let models: Vec<String> = std::iter::once(BASE.to_string()).chain(f.adapters.iter().map(|(n, _)| n.clone())).collect();
    // 10 distinct (prompt, model, endpoint) cases, each sent several times.
    let cases: Vec<(usize, String, bool)> = (0..10).map(|i| (i % PROMPTS.len(), models[i % models.len()].clone(), i % 3 == 2)).collect();
    let max_tokens = 8;
    let expected: Vec<(String, &str)> = cases
        .iter()
        .map(|(p, model, chat)| {
            let ids = if *chat { chat_ids(f, PROMPTS[*p]) } else { f.tokenizer.encode(PROMPTS[*p]).unwrap() };
            alone(f, &ids, model, max_tokens)
        })
        .collect();
    let start = Instant::now();
    let results: Vec<(usize, String, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..16)
            .map(|client_id| {
                let cases = &cases;
                scope.spawn(move || {
                    (0..4)
                        .map(|k| {
                            let n = client_id * 4 + k;
                            let case = (n * 7) % cases.len();
                            let (p, model, chat) = &cases[case];
                            let streamed = n % 2 == 0;
                            let (path, mut body) = if *chat {
                                ("/v1/chat/completions", json!({ "model": model, "messages": [{ "role": "user", "content": PROMPTS[*p] }] }))
                            } else {
                                ("/v1/completions", json!({ "model": model, "prompt": PROMPTS[*p] }))
                            };
                            body["max_tokens"] = json!(max_tokens);
                            body["temperature"] = json!(0.0);
                            if streamed {
                                body["stream"] = json!(true);
                                let out = stream(f.addr, path, &body);
                                assert!(out.done, "stream without [DONE]");
                                (case, out.text, out.finish.unwrap_or_default())
                            } else {
                                let r = client::post_json(f.addr, path, &body).unwrap();
                                assert_eq!(r.status, 200, "{}", r.body);
                                let choice = &r.json()["choices"][0];
                                let text = choice["text"].as_str().or(choice["message"]["content"].as_str()).unwrap().to_string();
                                (case, text, choice["finish_reason"].as_str().unwrap().to_string())
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    eprintln!("64 requests from 16 clients in {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(results.len(), 64);
    for (case, text, finish) in &results {
        let (want_text, want_finish) = &expected[*case];
        assert_eq!((text.as_str(), finish.as_str()), (want_text.as_str(), *want_finish), "case {case} {:?}", cases[*case]);
    }
    // Every adapter changes the output of some prompt, or the check above would be vacuous.
    let ids: Vec<Vec<u32>> = PROMPTS.iter().map(|p| f.tokenizer.encode(p).unwrap()).collect();
    let bare: Vec<_> = ids.iter().map(|p| alone(f, p, BASE, max_tokens)).collect();
    for (name, _) in &f.adapters {
        let own: Vec<_> = ids.iter().map(|p| alone(f, p, name, max_tokens)).collect();
        assert_ne!(own, bare, "adapter {name} generates what the bare model does on every prompt");
    }
}

#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn a_stream_ends_with_done_and_usage_and_matches_the_whole_answer() {
    let f = fixture();
    let body =
        json!({ "model": "iapt", "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0, "stream": true, "stream_options": { "include_usage": true } });
    let out = stream(f.addr, "/v1/completions", &body);
    assert!(out.done);
    let whole =
        client::post_json(f.addr, "/v1/completions", &json!({ "model": "iapt", "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0 })).unwrap().json();
    assert_eq!(out.text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(out.finish.as_deref(), whole["choices"][0]["finish_reason"].as_str());
    assert_eq!(out.usage.as_ref(), Some(&whole["usage"]));
    // Seeded sampling repeats itself.
    let sampled = json!({ "model": "lora", "prompt": PROMPTS[2], "max_tokens": 10, "temperature": 0.8, "seed": 5 });
    let a = client::post_json(f.addr, "/v1/completions", &sampled).unwrap().json();
    let b = client::post_json(f.addr, "/v1/completions", &sampled).unwrap().json();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    // Stop strings cut the text before them.
    let free = whole["choices"][0]["text"].as_str().unwrap().to_string();
    if let Some(word) = free.split_whitespace().nth(2) {
        let cut = free.find(word).unwrap();
        let stopped =
            client::post_json(f.addr, "/v1/completions", &json!({ "model": "iapt", "prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0, "stop": [word] }))
                .unwrap()
                .json();
        assert_eq!(stopped["choices"][0]["text"].as_str().unwrap(), &free[..cut]);
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn a_dropped_stream_frees_its_row_and_stalls_nobody() {
    let f = fixture();
    let addr = f.addr;
    let hang_up = std::thread::spawn(move || {
        let mut seen = 0;
        let body = json!({ "model": "lora", "prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "stream": true });
        client::post_stream(addr, "/v1/completions", &body, |_| {
            seen += 1;
            seen < 3
        })
        .unwrap();
    });
    let other = client::post_json(addr, "/v1/completions", &json!({ "model": "prefix", "prompt": PROMPTS[3], "max_tokens": 20, "temperature": 0 })).unwrap();
    assert_eq!(other.status, 200);
    hang_up.join().unwrap();
    let start = Instant::now();
    loop {
        let health = client::get(addr, "/health").unwrap().json();
        if health["running"] == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the abandoned row still runs: {health}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn adapters_load_and_unload_at_run_time() {
    let f = fixture();
    let dir = f.adapters.iter().find(|(n, _)| n == "prefix").unwrap().1.display().to_string();
    let loaded = client::post_json(f.addr, "/v1/load_lora_adapter", &json!({ "lora_name": "tenant-7", "lora_path": dir })).unwrap();
    assert_eq!(loaded.status, 200, "{}", loaded.body);
    assert_eq!(loaded.json()["parent"], BASE);
    let listed = client::get(f.addr, "/v1/models").unwrap().json();
    assert!(listed["data"].as_array().unwrap().iter().any(|m| m["id"] == "tenant-7"));
    let body = json!({ "model": "tenant-7", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0 });
    let via_new = client::post_json(f.addr, "/v1/completions", &body).unwrap().json();
    let via_old =
        client::post_json(f.addr, "/v1/completions", &json!({ "model": "prefix", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0 })).unwrap().json();
    assert_eq!(via_new["choices"][0]["text"], via_old["choices"][0]["text"]);
    assert_eq!(client::post_json(f.addr, "/v1/unload_lora_adapter", &json!({ "lora_name": "tenant-7" })).unwrap().status, 200);
    let gone = client::post_json(f.addr, "/v1/completions", &body).unwrap();
    assert_eq!(gone.status, 404);
    assert_eq!(client::post_json(f.addr, "/v1/unload_lora_adapter", &json!({ "lora_name": "tenant-7" })).unwrap().status, 404);
    let bad = client::post_json(f.addr, "/v1/load_lora_adapter", &json!({ "lora_name": "x", "lora_path": "/no/such/dir" })).unwrap();
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().contains("/no/such/dir"), "{}", bad.body);
}

/// `(status, error.param, error.code)` of a request expected to fail, checking the shape.
fn failure(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Value, Value) {
    let r = client::post(addr, path, body).unwrap();
    let v = r.json();
    let error = &v["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "no error message: {}", r.body);
    assert!(error["type"].is_string(), "{}", r.body);
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{}", r.body);
    (r.status, error["param"].clone(), error["code"].clone())
}

#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn every_error_has_its_status_and_names_its_field() {
    let f = fixture();
    let a = f.addr;
    let ok = |extra: Value| {
        let mut body = json!({ "model": BASE, "prompt": "Hi", "max_tokens": 2 });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string().into_bytes()
    };
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "model": "nobody" }))), (404, json!("model"), json!("model_not_found")));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "max_tokens": "many" }))).0, 400);
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "max_tokens": "many" }))).1, json!("max_tokens"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "max_tokens": -1 }))).1, json!("max_tokens"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "temperature": 7 }))).1, json!("temperature"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "top_p": 0 }))).1, json!("top_p"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "n": 2 }))).1, json!("n"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "presence_penalty": 0.5 }))).1, json!("presence_penalty"));
    assert_eq!(
        failure(a, "/v1/completions", &ok(json!({ "stream": true, "stream_options": { "include_usage": "yes" } }))).1,
        json!("stream_options.include_usage")
    );
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "prompt": ["a", "b"] }))).1, json!("prompt"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "prompt": [999999] }))).1, json!("prompt"));
    assert_eq!(failure(a, "/v1/completions", &ok(json!({ "max_tokens": 100000 }))), (400, json!("prompt"), json!("context_length_exceeded")));
    assert_eq!(failure(a, "/v1/completions", br#"{"prompt": "Hi"}"#), (400, json!("model"), Value::Null));
    assert_eq!(failure(a, "/v1/completions", b"{not json").0, 400);
    assert_eq!(failure(a, "/v1/chat/completions", br#"{"model": "smollm2", "messages": []}"#).1, json!("messages"));
    assert_eq!(failure(a, "/v1/chat/completions", br#"{"model": "smollm2", "messages": [{"role": "user"}], "logprobs": true}"#).1, json!("logprobs"));
    assert_eq!(failure(a, "/v1/no/such/endpoint", b"{}").0, 404);
}

/// A server of its own with one row and one waiting place: the next request gets 429; stopping
/// the server lets the in-flight stream finish with `[DONE]`.
#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn a_full_queue_gets_429_and_stopping_finishes_in_flight_requests() {
    let f = fixture();
    let (engine, server) = {
        let model = f.model.lock().unwrap();
        start_server(&model, &f.tokenizer, &[], EngineOptions { max_batch: 1, max_waiting: 1, max_resident_adapters: 1 })
    };
    let addr = server.addr();
    let (first_data, first_seen) = std::sync::mpsc::channel();
    let long = std::thread::spawn(move || {
        let mut sent = false;
        let body = json!({ "model": BASE, "prompt": PROMPTS[1], "max_tokens": 40, "temperature": 0, "stream": true });
        let mut out = Streamed { text: String::new(), finish: None, usage: None, done: false };
        client::post_stream(addr, "/v1/completions", &body, |data| {
            if !sent {
                first_data.send(()).unwrap();
                sent = true;
            }
            out.done |= data == "[DONE]";
            if let Ok(chunk) = serde_json::from_str::<Value>(data) {
                out.finish = chunk["choices"][0]["finish_reason"].as_str().map(str::to_string).or(out.finish.take());
            }
            true
        })
        .unwrap();
        out
    });
    first_seen.recv_timeout(Duration::from_secs(120)).unwrap();
    let waiting = std::thread::spawn(move || client::post_json(addr, "/v1/completions", &json!({ "model": BASE, "prompt": "Hi", "max_tokens": 2 })).unwrap());
    // Wait until the second request holds the waiting place.
    let start = Instant::now();
    while client::get(addr, "/health").unwrap().json()["waiting"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(60), "the second request never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = failure(addr, "/v1/completions", json!({ "model": BASE, "prompt": "Hi", "max_tokens": 2 }).to_string().as_bytes());
    assert_eq!(refused.0, 429);
    server.stop().unwrap();
    let out = long.join().unwrap();
    assert!(out.done, "the in-flight stream was cut by the shutdown");
    assert_eq!(out.finish.as_deref(), Some("length"));
    assert_eq!(waiting.join().unwrap().status, 200);
    engine.shutdown();
}

/// The load run `iapt bench serve` reports: bounded in count, every request accounted for.
#[test]
#[ignore = "needs the real model (fetched on first use); scripts/test.sh runs it"]
fn a_bounded_load_run_accounts_for_every_request() {
    let f = fixture();
    let models = std::iter::once(BASE.to_string()).chain(f.adapters.iter().map(|(n, _)| n.clone())).collect();
    let plan = iapt_server::load::LoadPlan { clients: 4, requests: 10, models, prompt: PROMPTS[3].into(), max_tokens: 6, time_limit: Duration::from_secs(300) };
    let report = iapt_server::load::run(f.addr, &plan);
    assert_eq!((report.requests_sent, report.requests_completed, report.requests_failed), (10, 10, 0), "{report:?}");
    let ttft = report.time_to_first_token.expect("first tokens were timed");
    assert!(ttft.p50_ms > 0.0 && ttft.p50_ms <= ttft.p99_ms && ttft.p99_ms <= ttft.max_ms, "{report:?}");
    assert!(report.inter_token_latency.is_some() && report.tokens_per_s > 0.0, "{report:?}");
    // An unknown model is a failed request, reported with its error.
    let bad = iapt_server::load::LoadPlan { requests: 2, models: vec!["nobody".into()], ..plan };
    let report = iapt_server::load::run(f.addr, &bad);
    assert_eq!((report.requests_completed, report.requests_failed), (0, 2));
    assert!(report.first_error.as_deref().is_some_and(|e| e.contains("404")), "{report:?}");
}
