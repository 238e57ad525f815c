//! Linear warm-up, then linear decay towards zero.
//!
//! burn's `LinearLrScheduler` cannot start from 0 (its initial rate must be > 0) and its
//! `ComposedLrScheduler` combines schedulers pointwise rather than one after another, so the
//! warm-up/decay shape is written here as a small [`LrScheduler`].

use burn::lr_scheduler::LrScheduler;
use burn::optim::LearningRate;
use burn::tensor::backend::Backend;

/// Step `s` (1-based, one per call to `step`; burn-train steps once per training batch, or once
/// per round of batches with several devices):
/// - warm-up, `s <= warmup`: `peak * s / warmup`;
/// - decay, `warmup < s <= total`: `peak * (total + 1 - s) / (total - warmup)`;
/// - afterwards: 0.
///
/// The first decay step is at the peak (so without warm-up the run starts at the peak), and the
/// line would reach 0 one step after the run: every step inside the run gets a positive rate
/// (the first `peak / warmup`, the last `peak / (total - warmup)`), none is wasted at 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupLinearDecay {
    peak: LearningRate,
    warmup: usize,
    total: usize,
    /// Steps taken so far (the record, so a resumed run continues the curve).
    taken: usize,
}

impl WarmupLinearDecay {
    /// `total` steps, the first `round(warmup_fraction * total)` of them warming up.
    pub fn new(peak: LearningRate, warmup_fraction: f64, total: usize) -> Self {
        let warmup = ((warmup_fraction * total as f64).round() as usize).min(total);
        Self { peak, warmup, total, taken: 0 }
    }

    /// The rate of step `s` (1-based).
    pub fn rate_at(&self, s: usize) -> LearningRate {
        if s == 0 || s > self.total {
            0.0
        } else if s <= self.warmup {
            self.peak * s as f64 / self.warmup as f64
        } else {
            self.peak * (self.total + 1 - s) as f64 / (self.total - self.warmup) as f64
        }
    }

    /// Steps of warm-up.
    pub fn warmup_steps(&self) -> usize {
        self.warmup
    }

    /// Steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.total
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.taken
    }
}

impl LrScheduler for WarmupLinearDecay {
    type Record<B: Backend> = usize;

    fn step(&mut self) -> LearningRate {
        self.taken += 1;
        self.rate_at(self.taken)
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.taken
    }

    fn load_record<B: Backend>(mut self, record: usize) -> Self {
        self.taken = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type TestBackend = burn::backend::NdArray;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-15
    }

    #[test]
    fn warms_up_then_decays() {
        // 100 steps, 6% warm-up: 6 steps up to 1e-3, then 94 steps down.
        let mut s = WarmupLinearDecay::new(1e-3, 0.06, 100);
        assert_eq!(s.warmup_steps(), 6);
        let rates: Vec<f64> = (0..102).map(|_| s.step()).collect();
        assert!(close(rates[0], 1e-3 / 6.0));
        assert!(close(rates[2], 0.5e-3));
        assert!(close(rates[5], 1e-3), "peak at the end of warm-up");
        assert!(close(rates[6], 1e-3), "and at the start of the decay");
        assert!(close(rates[7], 1e-3 * 93.0 / 94.0));
        assert!(close(rates[52], 1e-3 * 48.0 / 94.0), "step 53");
        assert!(close(rates[99], 1e-3 / 94.0), "last step still moves");
        assert_eq!((rates[100], rates[101]), (0.0, 0.0));
        assert!(rates[6..100].windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn no_warmup_starts_at_peak() {
        let mut s = WarmupLinearDecay::new(2e-4, 0.0, 4);
        let rates: Vec<f64> = (0..4).map(|_| s.step()).collect();
        assert!(close(rates[0], 2e-4));
        assert!(close(rates[1], 1.5e-4));
        assert!(close(rates[3], 0.5e-4));
    }

    #[test]
    fn a_restored_record_continues_the_curve() {
        let mut a = WarmupLinearDecay::new(1e-3, 0.1, 50);
        for _ in 0..17 {
            a.step();
        }
        let record = a.to_record::<TestBackend>();
        let mut b = WarmupLinearDecay::new(1e-3, 0.1, 50).load_record::<TestBackend>(record);
        for _ in 0..40 {
            assert_eq!(a.step(), b.step());
        }
    }
}
