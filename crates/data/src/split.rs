//! Seeded train/dev/test splits that are the same on every machine, and the manifest that records them.
//!
//! Method (stable by construction, no RNG involved):
//! 1. every example has an id: the first 16 hex digits of sha256 of its content key (its input
//!    text, or its conversation as JSON); duplicates are removed before splitting, so ids are unique;
//! 2. examples are sorted by `sha256("{seed}:{id}")` (bytes, ascending);
//! 3. the first `round(n * train)` go to train, up to `round(n * (train + dev))` to dev, the rest to
//!    test (`round` = half away from zero, in f64).
//!
//! The manifest records split sizes, label counts and, per split, the sha256 of its sorted ids
//! joined by `\n` (a membership hash that changes if any example moves).

use crate::error::DataError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// One of the three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "dev" | "validation" | "val" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split `{s}` (train, dev, test)")),
        }
    }
}

/// Split fractions and seed (defaults: 0.8 / 0.1 / 0.1, seed 42; missing keys take them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSpec {
    pub train: f64,
    pub dev: f64,
    pub test: f64,
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self { train: 0.8, dev: 0.1, test: 0.1, seed: 42 }
    }
}

impl SplitSpec {
    /// Fractions must be non-negative and sum to 1.
    pub fn validate(&self, task: &str) -> Result<(), DataError> {
        let f = [self.train, self.dev, self.test];
        if f.iter().any(|x| !x.is_finite() || *x < 0.0) || (f.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(DataError::spec(
                task,
                format!("split fractions must be >= 0 and sum to 1 (train {}, dev {}, test {})", self.train, self.dev, self.test),
            ));
        }
        Ok(())
    }

    /// Sizes of (train, dev, test) for `n` examples.
    pub fn sizes(&self, n: usize) -> [usize; 3] {
        let a = ((n as f64) * self.train).round() as usize;
        let b = (((n as f64) * (self.train + self.dev)).round() as usize).clamp(a, n);
        let a = a.min(n);
        [a, b - a, n - b]
    }
}

/// The content id of an example: first 16 hex digits of sha256(key).
pub fn content_id(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))[..16].to_string()
}

/// The sort key that decides an example's split: sha256("{seed}:{id}").
pub fn split_key(seed: u64, id: &str) -> [u8; 32] {
    Sha256::digest(format!("{seed}:{id}").as_bytes()).into()
}

/// Partition items (with unique ids) into (train, dev, test) by the documented method.
pub fn partition<T>(items: Vec<T>, id: impl Fn(&T) -> &str, spec: &SplitSpec) -> [Vec<T>; 3] {
    let mut keyed: Vec<([u8; 32], T)> = items.into_iter().map(|t| (split_key(spec.seed, id(&t)), t)).collect();
    keyed.sort_by_key(|k| k.0);
    let [a, b, _] = spec.sizes(keyed.len());
    let mut it = keyed.into_iter().map(|(_, t)| t);
    let train: Vec<T> = it.by_ref().take(a).collect();
    let dev: Vec<T> = it.by_ref().take(b).collect();
    let test: Vec<T> = it.collect();
    [train, dev, test]
}

/// sha256 of the sorted ids joined by `\n`: identifies split membership regardless of order.
pub fn membership_hash<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    hex(&Sha256::digest(ids.join("\n").as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many examples each preparation step kept or dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrepCounts {
    /// Examples read from the source.
    pub read: usize,
    /// Dropped by the task's `keep_labels` filter.
    pub filtered_by_label: usize,
    /// Exact repeats of an earlier example's input with the same answer (first copy kept).
    pub duplicates_dropped: usize,
    /// Every copy of an input that appears with different answers.
    pub conflicting_dropped: usize,
    /// Dropped by class balancing (downsampling to the minority class).
    pub balanced_away: usize,
    /// Examples split.
    pub kept: usize,
}

/// One split's record in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRecord {
    pub size: usize,
    /// [`membership_hash`] of the split's ids.
    pub ids_sha256: String,
    /// Examples per label (classification tasks; empty otherwise).
    pub labels: BTreeMap<String, usize>,
}

/// What a task's splits are and how they were made; written next to runs so results can be tied
/// to the exact examples used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub task: String,
    pub source: String,
    pub split: SplitSpec,
    pub method: String,
    pub counts: PrepCounts,
    pub splits: BTreeMap<Split, SplitRecord>,
}

/// The method string recorded in manifests.
pub const SPLIT_METHOD: &str = "id = sha256(content key)[..16 hex]; dedupe by id; sort by sha256(\"{seed}:{id}\"); \
cut at round(n*train), round(n*(train+dev))";

impl SplitManifest {
    /// Write as pretty JSON, atomically.
    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        let json = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::store::write_atomic(path, format!("{json}\n").as_bytes())
    }

    /// Read a manifest written by [`SplitManifest::write`].
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let text = crate::json::read_text(path)?;
        serde_json::from_str(&text).map_err(|e| crate::json::parse_error(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_and_cover() {
        let s = SplitSpec::default();
        assert_eq!(s.sizes(1000), [800, 100, 100]);
        assert_eq!(s.sizes(1319), [1055, 132, 132]);
        assert_eq!(s.sizes(0), [0, 0, 0]);
        assert_eq!(s.sizes(1), [1, 0, 0]);
        let odd = SplitSpec { train: 0.7, dev: 0.2, test: 0.1, seed: 0 };
        assert_eq!(odd.sizes(10), [7, 2, 1]);
        let all_test = SplitSpec { train: 0.0, dev: 0.0, test: 1.0, seed: 0 };
        assert_eq!(all_test.sizes(5), [0, 0, 5]);
        for n in 0..200 {
            assert_eq!(odd.sizes(n).iter().sum::<usize>(), n);
        }
        assert!(SplitSpec { train: 0.9, dev: 0.2, test: 0.0, seed: 0 }.validate("t").is_err());
        assert!(SplitSpec { train: -0.1, dev: 0.6, test: 0.5, seed: 0 }.validate("t").is_err());
        let msg = SplitSpec { train: 0.5, dev: 0.1, test: 0.1, seed: 0 }.validate("toy").unwrap_err().to_string();
        assert!(msg.contains("toy") && msg.contains("sum to 1"), "{msg}");
    }

    #[test]
    fn partition_is_a_seeded_stable_partition() {
        let ids: Vec<String> = (0..100).map(|i| content_id(&format!("example {i}"))).collect();
        let spec = SplitSpec::default();
        let [tr, dv, te] = partition(ids.clone(), |s| s.as_str(), &spec);
        assert_eq!((tr.len(), dv.len(), te.len()), (80, 10, 10));
        let mut all: Vec<&String> = tr.iter().chain(&dv).chain(&te).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 100);
        // Input order does not matter; the seed does.
        let mut rev = ids.clone();
        rev.reverse();
        let [tr2, _, _] = partition(rev, |s| s.as_str(), &spec);
        assert_eq!(tr, tr2);
        let [tr3, _, _] = partition(ids, |s| s.as_str(), &SplitSpec { seed: 7, ..spec });
        assert_ne!(membership_hash(tr.iter().map(|s| s.as_str())), membership_hash(tr3.iter().map(|s| s.as_str())));
        // Regression pins for the id and split-key functions.
        assert_eq!(content_id("hello"), "2cf24dba5fb0a30e");
        assert_eq!(hex(&split_key(42, "2cf24dba5fb0a30e"))[..16], hex(&Sha256::digest(b"42:2cf24dba5fb0a30e"))[..16]);
    }
}
