//! Paired bootstrap intervals: how sure a difference in accuracy between two methods is, given
//! the test examples both were scored on. Resampling the examples (not the seeds) answers "would
//! the gap hold on another test set drawn like this one"; pairing (the same examples for both
//! methods) removes the examples' own difficulty from the spread.

use serde::{Deserialize, Serialize};

/// The mean of `a - b` over paired values, with a percentile bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    /// The coverage asked for (0.95 for a 95% interval).
    pub level: f64,
    /// Paired values the interval is over.
    pub pairs: usize,
}

impl Interval {
    /// Whether the whole interval lies above 0 (`Some(true)`), below 0 (`Some(false)`), or it
    /// holds 0 (`None`: no difference shown at this level).
    pub fn sign(&self) -> Option<bool> {
        match (self.low > 0.0, self.high < 0.0) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// Resamples [`paired_difference`] draws for the tables (enough for stable 2.5/97.5 percentiles).
pub const RESAMPLES: usize = 10_000;

/// `mean(a - b)` over the pairs `(a[i], b[i])` and its `level` percentile bootstrap interval from
/// `resamples` draws of the pairs with replacement. The generator is seeded by `seed`, so a table
/// is reproducible. `None` without pairs.
pub fn paired_difference(a: &[f64], b: &[f64], level: f64, resamples: usize, seed: u64) -> Option<Interval> {
    assert_eq!(a.len(), b.len(), "paired values come in pairs");
    assert!(level > 0.0 && level < 1.0 && resamples > 0);
    let n = a.len();
    if n == 0 {
        return None;
    }
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = differences.iter().sum::<f64>() / n as f64;
    let mut state = seed;
    let mut means: Vec<f64> =
        (0..resamples).map(|_| (0..n).map(|_| differences[(splitmix64(&mut state) % n as u64) as usize]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let at = |q: f64| means[((q * resamples as f64).floor() as usize).min(resamples - 1)];
    Some(Interval { mean, low: at(tail), high: at(1.0 - tail), level, pairs: n })
}

/// SplitMix64: a small, well-mixed generator (no dependency, the same numbers everywhere).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_opposite_methods_give_degenerate_intervals() {
        let a = [1.0, 0.0, 1.0, 1.0, 0.0];
        let same = paired_difference(&a, &a, 0.95, 1000, 1).unwrap();
        assert_eq!((same.mean, same.low, same.high, same.sign()), (0.0, 0.0, 0.0, None));
        let all = paired_difference(&[1.0; 7], &[0.0; 7], 0.95, 1000, 1).unwrap();
        assert_eq!((all.mean, all.low, all.high, all.sign(), all.pairs), (1.0, 1.0, 1.0, Some(true), 7));
        assert!(paired_difference(&[], &[], 0.95, 10, 1).is_none());
    }

    /// 400 pairs where `a` wins 60, `b` wins 20 and 320 tie: the difference is +0.1 with
    /// per-pair variance 0.2 - 0.01 = 0.19, so the normal approximation of the 95% interval is
    /// 0.1 ± 1.96·sqrt(0.19/400) = [0.0573, 0.1427]; the bootstrap lands within a few 0.001.
    #[test]
    fn the_interval_matches_the_normal_approximation_on_a_hand_computed_case() {
        let mut a = vec![0.0; 400];
        let mut b = vec![0.0; 400];
        // Interleave the outcomes so no contiguous block decides anything.
        for i in 0..400 {
            match i % 20 {
                0..=2 => a[i] = 1.0,
                3 => b[i] = 1.0,
                _ => {}
            }
        }
        let interval = paired_difference(&a, &b, 0.95, RESAMPLES, 7).unwrap();
        assert!((interval.mean - 0.1).abs() < 1e-12);
        let half = 1.96 * (0.19f64 / 400.0).sqrt();
        assert!((interval.low - (0.1 - half)).abs() < 0.006, "{interval:?}");
        assert!((interval.high - (0.1 + half)).abs() < 0.006, "{interval:?}");
        assert_eq!(interval.sign(), Some(true));
        // The same seed gives the same interval, and the swapped pair the mirrored one (up to the
        // neighbouring order statistic: resampled means move in steps of 1/400).
        assert_eq!(paired_difference(&a, &b, 0.95, RESAMPLES, 7), Some(interval));
        let mirrored = paired_difference(&b, &a, 0.95, RESAMPLES, 7).unwrap();
        assert!((mirrored.low + interval.high).abs() <= 0.0025 + 1e-12 && (mirrored.high + interval.low).abs() <= 0.0025 + 1e-12, "{mirrored:?}");
    }
}
