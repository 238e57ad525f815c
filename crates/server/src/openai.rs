//! OpenAI's request bodies, checked and turned into engine requests.
//!
//! A body is parsed twice from the same JSON value: once for the fields every generation
//! request shares ([`Common`]) and once for the endpoint's own. Unknown fields are ignored (the
//! official clients send some), but a field this server cannot honour with a non-default value
//! (`n` > 1, penalties, `logprobs`, ...) is refused naming it rather than silently dropped.

use crate::error::ApiError;
use iapt_model::{ChatMessage, SamplingConfig, Tokenizer};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields of `/v1/completions` and `/v1/chat/completions` alike.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM's extension; -1 or 0 keeps every token.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany<String>>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
}

/// `/v1/completions`' own fields.
#[derive(Debug, Deserialize)]
pub struct CompletionFields {
    pub prompt: OneOrMany<PromptItem>,
    pub echo: Option<bool>,
    pub logprobs: Option<u32>,
    pub best_of: Option<u32>,
    pub suffix: Option<String>,
}

/// One prompt: text, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptItem {
    Text(String),
    Tokens(Vec<u32>),
    Token(u32),
}

/// `/v1/chat/completions`' own fields.
#[derive(Debug, Deserialize)]
pub struct ChatFields {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

/// The body as JSON, or a 400 saying why not.
pub fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok(value)
}

/// `T` from `body`, a failure naming the field (`stream_options.include_usage`).
pub fn parse<T: DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            // A missing field: serde names it in the message.
            let field = inner.split('`').nth(1).unwrap_or("body").to_string();
            ApiError::invalid(field, inner)
        } else {
            ApiError::invalid(path.clone(), format!("`{path}`: {inner}"))
        }
    })
}

/// Sampling, stop strings and streaming of a request, checked.
pub struct Settings {
    pub sampling: SamplingConfig,
    pub stop_strings: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens` or `max_tokens`, if given.
    pub max_tokens: Option<usize>,
}

impl Common {
    pub fn settings(&self) -> Result<Settings, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        for (name, value) in [("frequency_penalty", self.frequency_penalty), ("presence_penalty", self.presence_penalty)] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(name, format!("`{name}` is not supported (only 0)")));
            }
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(ApiError::invalid("logit_bias", "`logit_bias` is not supported"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
            return Err(ApiError::invalid("temperature", format!("temperature {temperature} is not in [0, 2]")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("top_p {top_p} is not in (0, 1]")));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(k) => return Err(ApiError::invalid("top_k", format!("top_k {k} must be -1 (all) or positive"))),
        };
        let seed = self.seed.map_or_else(fresh_seed, |s| s as u64);
        let max_tokens = self.max_completion_tokens.or(self.max_tokens).map(|m| m as usize);
        if max_tokens == Some(0) {
            return Err(ApiError::invalid(if self.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" }, "must be at least 1"));
        }
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.as_ref().is_some_and(|o| o.include_usage);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
        }
        let stop_strings = self.stop.as_ref().map(|s| match s {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        });
        Ok(Settings {
            sampling: SamplingConfig { temperature, top_k, top_p, seed },
            stop_strings: stop_strings.unwrap_or_default().into_iter().filter(|s| !s.is_empty()).collect(),
            stream,
            include_usage,
            max_tokens,
        })
    }
}

/// A seed for a request that gave none: different every time.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl CompletionFields {
    /// The prompt's token ids.
    pub fn prompt_ids(self, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "`echo` is not supported"));
        }
        if self.logprobs.is_some() {
            return Err(ApiError::invalid("logprobs", "`logprobs` is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid("best_of", "only best_of = 1 is supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
        }
        let items = self.prompt.into_vec();
        // `[1, 2, 3]` is one prompt of token ids; `["a"]` or `[[1, 2]]` one prompt in a list.
        let ids = if items.iter().all(|i| matches!(i, PromptItem::Token(_))) && !items.is_empty() {
            items.into_iter().map(|i| if let PromptItem::Token(t) = i { t } else { unreachable!() }).collect()
        } else if items.len() == 1 {
            match items.into_iter().next().expect("one item") {
                PromptItem::Text(text) => tokenizer.encode(&text).map_err(|e| ApiError::invalid("prompt", format!("tokenizing the prompt: {e}")))?,
                PromptItem::Tokens(ids) => ids,
                PromptItem::Token(t) => vec![t],
            }
        } else {
            return Err(ApiError::invalid("prompt", "send one prompt per request (a list of several prompts is not supported)"));
        };
        let vocab = tokenizer.vocab_size();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(ApiError::invalid("prompt", format!("token id {bad} is outside the vocabulary of {vocab} tokens")));
        }
        Ok(ids)
    }
}

impl ChatFields {
    /// The conversation rendered through the checkpoint's chat template, as token ids.
    pub fn prompt_ids(self, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
        if self.logprobs == Some(true) {
            return Err(ApiError::invalid("logprobs", "`logprobs` is not supported"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("tools", "tool calls are not supported"));
        }
        if let Some(format) = self.response_format.as_ref().filter(|f| f.kind != "text") {
            return Err(ApiError::invalid("response_format", format!("response_format `{}` is not supported (only `text`)", format.kind)));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "`messages` must not be empty"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, message) in self.messages.into_iter().enumerate() {
            let content = match message.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("content parts of type `{kind}` are not supported (only `text`)"),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            messages.push(ChatMessage::new(message.role, content));
        }
        let text = tokenizer.apply_chat_template(&messages, true).map_err(|e| ApiError::invalid("messages", format!("rendering the chat template: {e}")))?;
        tokenizer.encode(&text).map_err(|e| ApiError::invalid("messages", format!("tokenizing the conversation: {e}")))
    }
}
