//! What a client asks the engine for, and what comes back.

use iapt_model::SamplingConfig;

/// One generation request: a tokenized prompt and everything that is per row.
#[derive(Debug, Clone)]
pub struct Request {
    /// Prompt token ids (non-empty), already rendered through any chat template.
    pub prompt: Vec<u32>,
    /// The registered adapter this row runs with; `None` for the bare model.
    pub adapter: Option<String>,
    pub sampling: SamplingConfig,
    /// New tokens at most (at least 1).
    pub max_tokens: usize,
    /// The row stops after emitting one of these (the checkpoint's EOS belongs here).
    pub stop_tokens: Vec<u32>,
    /// The row stops when its text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
}

/// Why a row stopped, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Every token generated, a final stop token included.
    pub completion_tokens: usize,
}

/// What the engine reports about a request, in order: `Text` once per generated token (its
/// text may be empty while a possible stop string or an incomplete character is held back),
/// then exactly one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Text { token: u32, text: String },
    Finished { reason: FinishReason, usage: Usage, text: String },
    Failed(String),
}

/// Where a request's events go. Returns false once nobody is listening (the client went away):
/// the engine then frees the row at its next step.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// Why a request was refused before it was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("max_tokens must be at least 1")]
    NoTokens,
    #[error("no adapter named `{0}` is registered")]
    UnknownAdapter(String),
    #[error(
        "this model's maximum context length is {context} tokens; the prompt has {prompt} tokens and max_tokens asks for {max_tokens} more ({} in all)",
        prompt + max_tokens
    )]
    ContextExceeded { prompt: usize, max_tokens: usize, context: usize },
    #[error("the request queue is full ({0} waiting); retry later")]
    QueueFull(usize),
    #[error("the engine is shutting down")]
    Stopped,
}
