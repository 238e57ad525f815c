//! Serving many tenants from one frozen backbone.
//!
//! One scheduler thread owns the model and runs one batch: between decode steps it admits
//! waiting requests (each prefilled alone, with its own adapter, then joined to the batch's KV
//! cache) and lets finished or abandoned rows leave, so the batch never drains to take new work
//! (continuous batching). Every row has its own prompt, sampling, stop conditions and adapter:
//! prefix-style tuners (IAPT, prefix tuning, prompt tuning) act only at their row's prefill, and
//! LoRA-style deltas are computed at every step for all rows of one adapter at once
//! ([`mixed::MixedHook`]).
//!
//! [`Engine::start`] returns an [`EngineHandle`], which any thread may use to submit requests
//! and manage adapters; events come back through the request's [`Sink`].

mod adapters;
mod engine;
pub mod mixed;
mod request;
mod text;

pub use adapters::AdapterInfo;
pub use engine::{Engine, EngineHandle, EngineLoop, EngineOptions, EngineStats};
pub use request::{Event, FinishReason, Request, Sink, SubmitError, Usage};
pub use text::{Detokenizer, TextStream};
