//! longtail: anomaly detection as a source of benign training data for command-line
//! classifiers.
//!
//! The pipeline, one module a stage: [`ingest`] (read telemetry, dedup) -> [`detect`]
//! (score anomalies) -> [`select`] (top-K after near-dup dedup) -> [`label`] (LLM verdicts)
//! -> classifier training and evaluation; [`experiment`] runs them all as one measured experiment. Shared plumbing: [`table`] (Parquet I/O),
//! [`device`] (Burn device choice), [`progress`], [`error`].

pub mod classify;
pub mod detect;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod ingest;
pub mod label;
pub mod progress;
pub mod select;
pub mod table;
pub mod train;

pub use error::{Error, Result};

/// Options every subcommand shares.
#[derive(Clone, Debug)]
pub struct Globals {
    pub device: device::DeviceChoice,
    pub seed: u64,
}
