//! Training hyper-parameters, serialised next to the checkpoints (`train_config.json`).

use crate::progress::Dashboard;
use serde::{Deserialize, Serialize};

/// Everything that shapes a training run. Every field has a default (see [`Default`]); the
/// defaults follow the method spec §5 (AdamW, 6% linear warm-up then linear decay, batch 16,
/// up to 10 epochs with early stopping on dev loss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training set. Default 10.
    pub epochs: usize,
    /// Examples per batch (per device with several devices). Default 16.
    pub batch_size: usize,
    /// Peak learning rate of the tuner's parameters. Default 3e-4: the geometric middle of the
    /// 1e-4..1e-3 range the method spec gives for these small modules.
    pub learning_rate: f64,
    /// Share of all optimiser steps spent warming up linearly from 0. Default 0.06.
    pub warmup_fraction: f64,
    /// AdamW decoupled weight decay of the main group. Default 0.01.
    pub weight_decay: f32,
    /// Peak learning rate of the parameters a tuner lists in `small_lr_params` (IAPT's
    /// rational-activation coefficients), which also get no weight decay; follows the same
    /// warm-up/decay curve. Default 1e-5 (30x below `learning_rate`: the coefficients shape
    /// every generator's activation and drift easily; the authors' related work used 1e-6).
    pub rational_lr: f64,
    /// Clip the global L2 norm of the (averaged) gradients to this. Default 1.0; `"off"` = no
    /// clipping.
    #[serde(with = "off_or")]
    pub max_grad_norm: Option<f32>,
    /// Batches whose gradients are averaged into one optimiser step. Default 1. A last group
    /// shorter than this at the end of an epoch is dropped (burn-train's behaviour).
    pub grad_accumulation: usize,
    /// Stop after this many epochs without a lower dev loss. Default 3; `"off"` = never.
    #[serde(with = "off_or")]
    pub patience: Option<usize>,
    /// Seed of the per-epoch shuffle. Default 42. (Parameter initialisation is the caller's:
    /// the model arrives built.)
    pub seed: u64,
    /// Shuffle the training set every epoch. Default true.
    pub shuffle: bool,
    /// When shuffling, batch examples of similar length together (windows of 16 batches of the
    /// shuffled order, sorted by length): far less padding, so faster steps. Default true.
    pub group_by_length: bool,
    /// When shuffling a classification task, spread its classes evenly over the batches, so
    /// each batch holds them in about their overall proportions. Default true.
    pub balance_classes: bool,
    /// Checkpoints to keep besides the best one. Default 2.
    pub keep_last: usize,
    /// Return the tuner of the best dev epoch rather than the last. Default true.
    pub restore_best: bool,
    /// Continue from the latest complete checkpoint in the run directory, if any. Default true.
    /// When false, a run directory that already holds checkpoints is an error.
    pub resume: bool,
    /// With several devices: shard the optimiser step across them (burn's `OptimSharded`)
    /// instead of running it on the first device. Default false.
    pub sharded_optimizer: bool,
    /// `auto` (TUI on a terminal, plain lines otherwise), `plain` or `off`. Default auto.
    pub dashboard: Dashboard,
    /// Plain-text progress: a line every this many batches. Default 50.
    pub log_every: usize,
    /// Id written into padding slots (its value never matters). Default 0.
    pub pad_id: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 16,
            learning_rate: 3e-4,
            warmup_fraction: 0.06,
            weight_decay: 0.01,
            rational_lr: 1e-5,
            max_grad_norm: Some(1.0),
            grad_accumulation: 1,
            patience: Some(3),
            seed: 42,
            shuffle: true,
            group_by_length: true,
            balance_classes: true,
            keep_last: 2,
            restore_best: true,
            resume: true,
            sharded_optimizer: false,
            dashboard: Dashboard::Auto,
            log_every: 50,
            pad_id: 0,
        }
    }
}

/// Fields that change only how a run is shown or kept, not its trajectory: a resumed run may
/// differ from the original in these.
pub const PRESENTATION_FIELDS: [&str; 7] = ["dashboard", "log_every", "resume", "restore_best", "keep_last", "patience", "sharded_optimizer"];

impl TrainConfig {
    /// Check the values are usable.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accumulation", self.grad_accumulation),
            ("keep_last", self.keep_last),
            ("log_every", self.log_every),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!("learning_rate must be positive, got {}", self.learning_rate));
        }
        if !(self.rational_lr >= 0.0 && self.rational_lr.is_finite()) {
            return Err(format!("rational_lr must be >= 0, got {}", self.rational_lr));
        }
        if !(0.0..=1.0).contains(&self.warmup_fraction) {
            return Err(format!("warmup_fraction must be in [0, 1], got {}", self.warmup_fraction));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(format!("weight_decay must be >= 0, got {}", self.weight_decay));
        }
        if self.max_grad_norm.is_some_and(|n| n.is_nan() || n <= 0.0) {
            return Err("max_grad_norm must be positive (or \"off\" for no clipping)".into());
        }
        if self.patience == Some(0) {
            return Err("patience must be at least 1 (or \"off\" for no early stopping)".into());
        }
        Ok(())
    }

    /// Names of the trajectory-shaping fields where `self` and `other` differ.
    pub fn trajectory_differences(&self, other: &TrainConfig) -> Vec<String> {
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (serde_json::to_value(self), serde_json::to_value(other)) else {
            return vec!["<unserialisable>".into()];
        };
        a.iter().filter(|(k, v)| !PRESENTATION_FIELDS.contains(&k.as_str()) && b.get(k.as_str()) != Some(v)).map(|(k, _)| k.clone()).collect()
    }
}

/// An optional number written as the number or as `"off"`: TOML (run configs, `--set`) has no
/// `null`, and a `None` left out of a file would read back as the default, not as off. `null`
/// is still read, from `train_config.json` files written before.
mod off_or {
    use serde::de::{self, Deserializer, Visitor};
    use serde::{Serialize, Serializer};
    use std::fmt;

    pub const OFF: &str = "off";

    /// The numbers that may be switched off.
    pub trait Number: Sized + Serialize {
        fn from_f64(v: f64) -> Result<Self, String>;
    }

    impl Number for usize {
        fn from_f64(v: f64) -> Result<Self, String> {
            match v >= 0.0 && v.fract() == 0.0 && v <= usize::MAX as f64 {
                true => Ok(v as usize),
                false => Err(format!("expected a whole number >= 0 or \"{OFF}\", found {v}")),
            }
        }
    }

    impl Number for f32 {
        fn from_f64(v: f64) -> Result<Self, String> {
            Ok(v as f32)
        }
    }

    pub fn serialize<T: Number, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => v.serialize(s),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, T: Number, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
        struct OffOr<T>(std::marker::PhantomData<T>);
        impl<T: Number> OffOr<T> {
            fn number<E: de::Error>(v: f64) -> Result<Option<T>, E> {
                T::from_f64(v).map(Some).map_err(E::custom)
            }
        }
        impl<'de, T: Number> Visitor<'de> for OffOr<T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a number, or \"{OFF}\" to switch it off")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Self::number(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Self::number(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Self::number(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    OFF => Ok(None),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(OffOr(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_partial_files_fill_in() {
        let config = TrainConfig::default();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), config);
        let partial: TrainConfig = serde_json::from_str(r#"{"epochs": 3, "max_grad_norm": null}"#).unwrap();
        assert_eq!((partial.epochs, partial.max_grad_norm, partial.batch_size), (3, None, 16));
        assert!(serde_json::from_str::<TrainConfig>(r#"{"epoch": 3}"#).is_err(), "typos are errors");
        config.validate().unwrap();
    }

    #[test]
    fn switched_off_numbers_are_written_as_off_and_read_back() {
        let off = TrainConfig { patience: None, max_grad_norm: None, ..TrainConfig::default() };
        let json = serde_json::to_value(&off).unwrap();
        assert_eq!((&json["patience"], &json["max_grad_norm"]), (&serde_json::json!("off"), &serde_json::json!("off")));
        assert_eq!(serde_json::from_value::<TrainConfig>(json).unwrap(), off);
        let on: TrainConfig = serde_json::from_str(r#"{"patience": 5, "max_grad_norm": 0.5}"#).unwrap();
        assert_eq!((on.patience, on.max_grad_norm), (Some(5), Some(0.5)));
        for bad in [r#"{"patience": "never"}"#, r#"{"patience": 2.5}"#, r#"{"patience": -1}"#, r#"{"max_grad_norm": true}"#] {
            let err = serde_json::from_str::<TrainConfig>(bad).unwrap_err().to_string();
            assert!(err.contains("\"off\""), "{bad}: {err}");
        }
    }

    #[test]
    fn only_trajectory_fields_block_a_resume() {
        let a = TrainConfig::default();
        let b = TrainConfig { dashboard: Dashboard::Off, patience: None, ..a.clone() };
        assert!(a.trajectory_differences(&b).is_empty());
        let c = TrainConfig { learning_rate: 1e-3, ..a.clone() };
        assert_eq!(a.trajectory_differences(&c), vec!["learning_rate".to_string()]);
        assert!(TrainConfig { warmup_fraction: 1.5, ..a }.validate().is_err());
    }
}
