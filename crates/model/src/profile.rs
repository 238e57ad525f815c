//! Where a forward pass's time goes, by kind of work, for `iapt bench ... --profile`.
//!
//! Off unless [`enable`]d: then the model times each kind of work on the calling thread (the CPU
//! backends run ops eagerly, so wall time between two points is that work's time; GPU backends
//! queue work, and their parts are only where the queue was filled). Parts never nest: a
//! projection inside attention is counted as a projection.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Kinds of work a step is split into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The frozen linear layers (q, k, v, o, gate, up, down) and tuners' deltas on them.
    Projections,
    /// Scores, mask, softmax, weighted values.
    Attention,
    /// Writing new keys/values into the KV cache.
    KvCache,
    /// RMSNorms and rotary embeddings.
    NormsRope,
    /// Final hidden states to logits.
    LmHead,
    /// Logits to token ids (host copy, sampler).
    Sampling,
}

impl Part {
    pub const ALL: [Part; PARTS] = [Part::Projections, Part::Attention, Part::KvCache, Part::NormsRope, Part::LmHead, Part::Sampling];

    /// The key used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Part::Projections => "projections",
            Part::Attention => "attention",
            Part::KvCache => "kv_cache",
            Part::NormsRope => "norms_rope",
            Part::LmHead => "lm_head",
            Part::Sampling => "sampling",
        }
    }
}

/// How many kinds of work there are.
pub const PARTS: usize = 6;

static ENABLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static SECONDS: RefCell<[f64; PARTS]> = const { RefCell::new([0.0; PARTS]) };
}

/// Start (or stop) timing parts on every thread.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether parts are being timed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Run `f`, adding its wall time to `part` when profiling is on.
#[inline]
pub fn timed<T>(part: Part, f: impl FnOnce() -> T) -> T {
    if !ENABLED.load(Ordering::Relaxed) {
        return f();
    }
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    SECONDS.with(|s| s.borrow_mut()[part as usize] += seconds);
    out
}

/// Seconds spent in each part on this thread since the last call, and reset.
pub fn take() -> [(Part, f64); PARTS] {
    let seconds = SECONDS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    std::array::from_fn(|i| (Part::ALL[i], seconds[i]))
}
