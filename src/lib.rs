//! longtail: anomaly detection as a source of benign training data for command-line
//! classifiers.
//!
//! The stages, one module each, in pipeline order: [`ingest`] (read telemetry, dedup) ->
//! [`detect`] (score anomalies) -> [`select`] (top-K after near-dup dedup) -> [`label`] (LLM
//! verdicts) -> [`classify`] (train, score, export the classifier) -> [`evaluate`] (metrics,
//! reports); [`experiment`] runs them all as one measured experiment.
//!
//! The shared layers under them, which import no stage: [`data`] (batching, splits, ranks,
//! union-find), [`io`] (readers, Parquet tables, JSON files), [`train`] (the training loop),
//! [`vocab`] (labels, roles, flags), [`device`], [`progress`] and [`error`]. The command line
//! lives in the binary (`src/main.rs`, `src/cli/`); the library never sees a parser.
//! `docs/architecture.md` draws the layers.

pub mod classify;
pub mod data;
pub mod detect;
pub mod device;
pub mod dropout;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod ingest;
pub mod io;
pub mod label;
pub mod progress;
pub mod select;
mod simd;
pub mod train;
pub mod vocab;

pub use error::{Error, Result};
pub use vocab::Label;

/// What every stage shares: the device, resolved once, and the seed.
#[derive(Clone, Debug)]
pub struct Globals {
    pub device: device::ChosenDevice,
    pub seed: u64,
}

impl Globals {
    /// Resolve `choice` (probing the adapters for `auto`) and keep the seed.
    pub fn new(choice: device::DeviceChoice, seed: u64) -> Result<Globals> {
        Ok(Globals {
            device: device::resolve(choice)?,
            seed,
        })
    }

    /// The CPU backend; probes nothing (tests, and stages that need no device).
    pub fn flex(seed: u64) -> Globals {
        Globals {
            device: device::ChosenDevice::flex(),
            seed,
        }
    }

    /// The same device with another seed.
    pub fn with_seed(&self, seed: u64) -> Globals {
        Globals {
            device: self.device.clone(),
            seed,
        }
    }
}
