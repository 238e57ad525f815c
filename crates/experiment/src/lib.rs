//! What iapt's commands do, as a library: a run's configuration ([`run_config`]), the task
//! prepared for a model ([`task`]), accuracy with or without a tuner ([`evaluate`]), training and
//! evaluation runs, their typed results and what they were made from ([`runs`], [`results`],
//! [`provenance`]), comparisons of several
//! tuners ([`compare`]) and benchmarks ([`bench`]); [`model_source`] resolves and loads models.
//! The `iapt` binary is argument parsing plus one call into here per command.

pub mod bench;
pub mod bootstrap;
pub mod compare;
pub mod evaluate;
pub mod model_source;
pub mod multitenant;
pub mod plot;
pub mod provenance;
pub mod results;
pub mod run_config;
pub mod runs;
pub mod task;
