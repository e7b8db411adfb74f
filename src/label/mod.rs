//! Stage 3: LLM labeling. (Being written.)
use crate::{Globals, Result};

#[derive(clap::Args, Debug)]
pub struct LabelArgs {}

pub fn run(_args: &LabelArgs, _globals: &Globals) -> Result<()> {
    Err(crate::Error::input("label: being written"))
}
