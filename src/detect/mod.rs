//! Stage 2: anomaly detection. (Being written.)
use crate::{Globals, Result};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {}
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {}

pub fn train_cli(_args: &TrainArgs, _globals: &Globals) -> Result<()> {
    Err(crate::Error::input("train-detector: being written"))
}
pub fn score_cli(_args: &ScoreArgs, _globals: &Globals) -> Result<()> {
    Err(crate::Error::input("score: being written"))
}
