//! Stage: select labeling candidates. (Being written.)
use crate::{Globals, Result};

#[derive(clap::Args, Debug)]
pub struct SelectArgs {}

pub fn run(_args: &SelectArgs, _globals: &Globals) -> Result<()> {
    Err(crate::Error::input("select: being written"))
}
