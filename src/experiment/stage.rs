//! Stage bookkeeping for `longtail run`: each stage owns a directory with a `stage.json` that
//! records the key of its inputs and config and whether it finished. A finished stage with the
//! same key is reused; an unfinished one with the same key is resumed (training stages pick up
//! their last checkpoint); a stage whose key changed starts over in an emptied directory.

use crate::error::{Context, Result};
use crate::io::table;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_128;

/// `stage.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub key: String,
    pub complete: bool,
    /// Wall time of the run that completed it (0 while unfinished).
    pub seconds: f64,
    /// What the stage reports about itself (counts, metrics).
    #[serde(default)]
    pub summary: serde_json::Value,
}

/// A hex digest of anything serialisable: the key of a stage's inputs and config.
pub fn key_of<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("plain data");
    format!("{:032x}", xxh3_128(&bytes))
}

pub struct Stage {
    pub name: String,
    pub dir: PathBuf,
    pub key: String,
    started: Option<Instant>,
}

/// What to do with a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Finished earlier with the same key: read its outputs.
    Reuse,
    /// Started earlier with the same key and not finished: continue from its checkpoint.
    Resume,
    /// Run from scratch.
    Fresh,
}

impl Stage {
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>, key: String) -> Stage {
        Stage {
            name: name.into(),
            dir: dir.into(),
            key,
            started: None,
        }
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("stage.json")
    }

    pub fn record(&self) -> Option<StageRecord> {
        let text = std::fs::read_to_string(self.record_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// What [`Stage::begin`] would do, without touching the directory.
    pub fn plan(&self) -> Plan {
        match self.record() {
            Some(r) if r.key == self.key && r.complete => Plan::Reuse,
            Some(r) if r.key == self.key => Plan::Resume,
            _ => Plan::Fresh,
        }
    }

    /// Decide, and prepare the directory: a stale one (other key, or no record) is emptied.
    pub fn begin(&mut self) -> Result<Plan> {
        let plan = self.plan();
        match plan {
            Plan::Reuse => {
                tracing::info!(
                    "{}: reusing {} (inputs unchanged)",
                    self.name,
                    self.dir.display()
                );
                return Ok(plan);
            }
            Plan::Resume => tracing::info!(
                "{}: resuming the unfinished stage in {}",
                self.name,
                self.dir.display()
            ),
            Plan::Fresh => {
                if self.dir.exists() {
                    std::fs::remove_dir_all(&self.dir).runtime_ctx(|| {
                        format!(
                            "cannot clear the stale stage directory {}",
                            self.dir.display()
                        )
                    })?;
                }
                tracing::info!("{}: running into {}", self.name, self.dir.display());
            }
        }
        std::fs::create_dir_all(&self.dir)
            .runtime_ctx(|| format!("cannot create {}", self.dir.display()))?;
        self.write(false, 0.0, serde_json::Value::Null)?;
        self.started = Some(Instant::now());
        Ok(plan)
    }

    /// Mark the stage finished, with its summary.
    pub fn finish(&self, summary: serde_json::Value) -> Result<()> {
        let seconds = self.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.write(true, seconds, summary)
    }

    fn write(&self, complete: bool, seconds: f64, summary: serde_json::Value) -> Result<()> {
        let record = StageRecord {
            stage: self.name.clone(),
            key: self.key.clone(),
            complete,
            seconds,
            summary,
        };
        table::write_atomic(
            &self.record_path(),
            serde_json::to_string_pretty(&record)
                .expect("plain data")
                .as_bytes(),
        )
    }

    /// The summary of a finished stage (after [`Plan::Reuse`]).
    pub fn summary(&self) -> serde_json::Value {
        self.record().map(|r| r.summary).unwrap_or_default()
    }
}
