//! The HTTP endpoints.

use crate::error::ApiError;
use crate::openai::{json_body, parse, ChatFields, Common, CompletionFields, Settings};
use crate::ServerState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iapt_engine::{AdapterInfo, Event, FinishReason, Request, Usage};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

struct App {
    state: ServerState,
    /// Unix time the server started: every model's `created`.
    created: u64,
    next_id: AtomicU64,
}

type AppState = State<Arc<App>>;

pub fn router(state: ServerState) -> Router {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let app = Arc::new(App { state, created, next_id: AtomicU64::new(1) });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/load_lora_adapter", post(load_adapter))
        .route("/v1/unload_lora_adapter", post(unload_adapter))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(app)
}

async fn health(State(app): AppState) -> Json<Value> {
    let s = app.state.engine.stats();
    Json(json!({
        "status": "ok",
        "running": s.running,
        "waiting": s.waiting,
        "finished_requests": s.finished_requests,
        "generated_tokens": s.generated_tokens,
        "decode_steps": s.decode_steps,
    }))
}

impl App {
    fn base_object(&self) -> Value {
        json!({ "id": self.state.model_id, "object": "model", "created": self.created, "owned_by": "iapt", "root": self.state.model_id, "parent": null })
    }

    fn adapter_object(&self, adapter: &AdapterInfo) -> Value {
        json!({
            "id": adapter.name,
            "object": "model",
            "created": self.created,
            "owned_by": "iapt",
            "root": adapter.dir.display().to_string(),
            "parent": self.state.model_id,
            "tuner": adapter.kind,
            "resident": adapter.resident,
        })
    }

    /// Adapters, asked of the engine thread off the async workers.
    async fn adapters(self: &Arc<Self>) -> Vec<AdapterInfo> {
        let engine = self.state.engine.clone();
        tokio::task::spawn_blocking(move || engine.adapters()).await.unwrap_or_default()
    }

    /// The adapter `model` names (`None`: the base model), or 404.
    fn adapter_for(&self, model: &str) -> Result<Option<String>, ApiError> {
        if model == self.state.model_id {
            Ok(None)
        } else if self.state.engine.has_adapter(model) {
            Ok(Some(model.to_string()))
        } else {
            Err(ApiError::unknown_model(model))
        }
    }

    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

async fn models(State(app): AppState) -> Json<Value> {
    let mut data = vec![app.base_object()];
    data.extend(app.adapters().await.iter().map(|a| app.adapter_object(a)));
    Json(json!({ "object": "list", "data": data }))
}

async fn model(State(app): AppState, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id == app.state.model_id {
        return Ok(Json(app.base_object()));
    }
    let adapters = app.adapters().await;
    adapters.iter().find(|a| a.name == id).map(|a| Json(app.adapter_object(a))).ok_or_else(|| ApiError::unknown_model(&id))
}

#[derive(serde::Deserialize)]
struct LoadAdapter {
    lora_name: String,
    lora_path: String,
}

#[derive(serde::Deserialize)]
struct UnloadAdapter {
    lora_name: String,
}

async fn load_adapter(State(app): AppState, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: LoadAdapter = parse(&json_body(&body)?)?;
    if body.lora_name.is_empty() || body.lora_name == app.state.model_id {
        return Err(ApiError::invalid("lora_name", format!("`{}` cannot name an adapter", body.lora_name)));
    }
    let engine = app.state.engine.clone();
    let (name, dir) = (body.lora_name.clone(), std::path::PathBuf::from(&body.lora_path));
    let loaded = tokio::task::spawn_blocking(move || engine.register_adapter(&name, dir)).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let info = loaded.map_err(|e| ApiError::invalid("lora_path", format!("loading adapter `{}` from {}: {e}", body.lora_name, body.lora_path)))?;
    Ok(Json(app.adapter_object(&info)))
}

async fn unload_adapter(State(app): AppState, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: UnloadAdapter = parse(&json_body(&body)?)?;
    let engine = app.state.engine.clone();
    let name = body.lora_name.clone();
    let known = tokio::task::spawn_blocking(move || engine.unregister_adapter(&name)).await.map_err(|e| ApiError::internal(e.to_string()))?;
    if !known {
        return Err(ApiError { param: Some("lora_name".into()), ..ApiError::unknown_model(&body.lora_name) });
    }
    Ok(Json(json!({ "id": body.lora_name, "object": "model", "deleted": true })))
}

/// Which endpoint a generation is for: they differ only in the shapes of their answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    fn prompt_field(self) -> &'static str {
        match self {
            Self::Completions => "prompt",
            Self::Chat => "messages",
        }
    }

    fn choice(self, text: String, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        match self {
            Self::Completions => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }),
            Self::Chat => json!({ "index": 0, "message": { "role": "assistant", "content": text }, "logprobs": null, "finish_reason": finish }),
        }
    }

    fn delta(self, text: Option<String>, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        match self {
            Self::Completions => json!({ "index": 0, "text": text.unwrap_or_default(), "logprobs": null, "finish_reason": finish }),
            Self::Chat => {
                let delta = match text {
                    Some(content) => json!({ "content": content }),
                    None => json!({}),
                };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
        }
    }
}

/// What every answer to one request repeats.
struct Answer {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
}

impl Answer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    fn body(&self, chunk: bool, choices: Vec<Value>, usage: Option<Usage>) -> Value {
        let mut body = json!({ "id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": choices });
        if let Some(u) = usage {
            body["usage"] =
                json!({ "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens });
        }
        body
    }
}

async fn completions(State(app): AppState, body: Bytes) -> Response {
    generation(app, body, Endpoint::Completions).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(app): AppState, body: Bytes) -> Response {
    generation(app, body, Endpoint::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

async fn generation(app: Arc<App>, body: Bytes, endpoint: Endpoint) -> Result<Response, ApiError> {
    let body = json_body(&body)?;
    let common: Common = parse(&body)?;
    let settings = common.settings()?;
    let adapter = app.adapter_for(&common.model)?;
    let tokenizer = &app.state.tokenizer;
    let prompt = match endpoint {
        Endpoint::Completions => parse::<CompletionFields>(&body)?.prompt_ids(tokenizer)?,
        Endpoint::Chat => parse::<ChatFields>(&body)?.prompt_ids(tokenizer)?,
    };
    // OpenAI's defaults: 16 tokens for completions, the rest of the context for chat.
    let max_tokens = settings.max_tokens.unwrap_or(match endpoint {
        Endpoint::Completions => 16,
        Endpoint::Chat => app.state.engine.context_length().saturating_sub(prompt.len()).max(1),
    });
    let Settings { sampling, stop_strings, stream, include_usage, .. } = settings;
    let request = Request { prompt, adapter, sampling, max_tokens, stop_tokens: vec![tokenizer.eos_id()], stop_strings };
    let (events, received) = mpsc::unbounded_channel();
    app.state.engine.submit(request, Box::new(move |event| events.send(event).is_ok())).map_err(|e| ApiError::from_submit(e, endpoint.prompt_field()))?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let answer = Answer { endpoint, id: app.id(prefix), created, model: common.model };
    if stream {
        Ok(streamed(answer, received, include_usage).into_response())
    } else {
        whole(answer, received).await.map(|body| Json(body).into_response())
    }
}

/// Wait for the whole answer.
async fn whole(answer: Answer, mut events: mpsc::UnboundedReceiver<Event>) -> Result<Value, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text { text: delta, .. } => text.push_str(&delta),
            Event::Finished { reason, usage, text: rest } => {
                text.push_str(&rest);
                return Ok(answer.body(false, vec![answer.endpoint.choice(text, Some(reason))], Some(usage)));
            }
            Event::Failed(message) => return Err(ApiError::internal(message)),
        }
    }
    Err(ApiError::internal("the engine stopped before the request finished"))
}

/// Server-sent events: one chunk per piece of released text, a final chunk with the finish
/// reason, the usage chunk if asked for, then `data: [DONE]`. Dropping the stream (the client
/// went away) drops the receiver, and the engine frees the row at its next step.
fn streamed(
    answer: Answer,
    events: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let mut stream = Streaming { answer, events, include_usage, pending: VecDeque::new(), ended: false };
    if stream.answer.endpoint == Endpoint::Chat {
        let role = json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
        let first = data(stream.answer.body(true, vec![role], None));
        stream.pending.push_back(first);
    }
    Sse::new(futures_util::stream::unfold(stream, Streaming::next))
}

fn data(value: Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

struct Streaming {
    answer: Answer,
    events: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    /// Events ready to send, oldest first.
    pending: VecDeque<SseEvent>,
    /// `[DONE]` is queued: nothing follows.
    ended: bool,
}

impl Streaming {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended {
                return None;
            }
            match self.events.recv().await {
                Some(Event::Text { text, .. }) if !text.is_empty() => self.chunk(Some(text), None),
                Some(Event::Text { .. }) => {}
                Some(Event::Finished { reason, usage, text }) => {
                    if !text.is_empty() {
                        self.chunk(Some(text), None);
                    }
                    self.chunk(None, Some(reason));
                    if self.include_usage {
                        let usage = data(self.answer.body(true, vec![], Some(usage)));
                        self.pending.push_back(usage);
                    }
                    self.done();
                }
                Some(Event::Failed(message)) => self.fail(message),
                None => self.fail("the engine stopped before the request finished".into()),
            }
        }
    }

    fn chunk(&mut self, text: Option<String>, finish: Option<FinishReason>) {
        let chunk = data(self.answer.body(true, vec![self.answer.endpoint.delta(text, finish)], None));
        self.pending.push_back(chunk);
    }

    fn fail(&mut self, message: String) {
        self.pending.push_back(data(ApiError::internal(message).body()));
        self.done();
    }

    fn done(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.ended = true;
    }
}
