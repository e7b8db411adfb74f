//! Stage 1: read telemetry, dedup exactly and near-exactly. (Being written.)
use crate::{Globals, Result};

#[derive(clap::Args, Debug)]
pub struct IngestArgs {}

pub fn run(_args: &IngestArgs, _globals: &Globals) -> Result<()> {
    Err(crate::Error::input("ingest: being written"))
}
