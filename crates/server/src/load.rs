//! A bounded load run against a server: C concurrent streaming clients send N completion
//! requests in all (round-robin over the given models), each stopping after a time limit, and
//! the run reports throughput, time to first token and inter-token latency.

use crate::client;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub clients: usize,
    pub requests: usize,
    /// Each request's `model`, round-robin.
    pub models: Vec<String>,
    pub prompt: String,
    pub max_tokens: usize,
    /// No request starts after this long.
    pub time_limit: Duration,
}

/// Percentiles of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub clients: usize,
    pub requests_sent: usize,
    pub requests_completed: usize,
    /// Requests answered with an error or cut short, with the first error's text.
    pub requests_failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Generated tokens (the streams' `usage`) per second, over all clients.
    pub tokens_per_s: f64,
    pub completed_requests_per_s: f64,
    pub time_to_first_token: Option<Latency>,
    pub inter_token_latency: Option<Latency>,
}

/// Run `plan` against the server at `addr`.
pub fn run(addr: SocketAddr, plan: &LoadPlan) -> LoadReport {
    let next = AtomicUsize::new(0);
    let sent_count = AtomicUsize::new(0);
    let start = Instant::now();
    struct Totals {
        completed: usize,
        failed: usize,
        first_error: Option<String>,
        tokens: usize,
        ttft: Vec<f64>,
        itl: Vec<f64>,
    }
    let totals = Mutex::new(Totals { completed: 0, failed: 0, first_error: None, tokens: 0, ttft: Vec::new(), itl: Vec::new() });
    std::thread::scope(|scope| {
        for _ in 0..plan.clients.max(1) {
            scope.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= plan.requests || start.elapsed() > plan.time_limit {
                    return;
                }
                sent_count.fetch_add(1, Ordering::SeqCst);
                let model = &plan.models[n % plan.models.len().max(1)];
                let body = json!({ "model": model, "prompt": plan.prompt, "max_tokens": plan.max_tokens, "temperature": 0, "stream": true, "stream_options": { "include_usage": true } });
                let sent = Instant::now();
                let mut last: Option<Instant> = None;
                let (mut ttft, mut gaps, mut tokens, mut done) = (None, Vec::new(), 0, false);
                let outcome = client::post_stream(addr, "/v1/completions", &body, |data| {
                    if data == "[DONE]" {
                        done = true;
                        return true;
                    }
                    let chunk = serde_json::from_str::<serde_json::Value>(data).unwrap_or_default();
                    if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                        tokens = n as usize;
                    }
                    if chunk["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                        let now = Instant::now();
                        match last {
                            None => ttft = Some(now.duration_since(sent).as_secs_f64() * 1e3),
                            Some(prev) => gaps.push(now.duration_since(prev).as_secs_f64() * 1e3),
                        }
                        last = Some(now);
                    }
                    true
                });
                let mut t = totals.lock().unwrap();
                t.tokens += tokens;
                t.itl.extend(gaps);
                t.ttft.extend(ttft);
                match outcome {
                    Ok(None) if done => t.completed += 1,
                    other => {
                        t.failed += 1;
                        if t.first_error.is_none() {
                            t.first_error = Some(match other {
                                Ok(Some(r)) => format!("HTTP {}: {}", r.status, r.body),
                                Ok(None) => "the stream ended without [DONE]".into(),
                                Err(e) => e.to_string(),
                            });
                        }
                    }
                }
            });
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut t = totals.into_inner().unwrap();
    LoadReport {
        clients: plan.clients,
        requests_sent: sent_count.load(Ordering::SeqCst),
        requests_completed: t.completed,
        requests_failed: t.failed,
        first_error: t.first_error,
        seconds,
        tokens_per_s: t.tokens as f64 / seconds,
        completed_requests_per_s: t.completed as f64 / seconds,
        time_to_first_token: latency(&mut t.ttft),
        inter_token_latency: latency(&mut t.itl),
    }
}

fn latency(values: &mut [f64]) -> Option<Latency> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Latency { p50_ms: at(0.5), p99_ms: at(0.99), max_ms: values[values.len() - 1] })
}
