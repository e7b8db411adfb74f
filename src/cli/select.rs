//! `longtail select`.

use longtail::Result;
use longtail::select::{Budget, SelectRequest, select_file};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  longtail select --input scores.parquet --top-k 500 --out candidates.parquet"
)]
pub struct SelectArgs {
    /// Scored lines from `longtail score` (needs `cmd` and `score`; other columns are kept).
    #[arg(long, short)]
    pub input: PathBuf,
    /// Output Parquet of candidates: the input's columns plus `rank` and `cluster_size`.
    #[arg(long, short)]
    pub out: PathBuf,
    /// How many candidates to keep.
    #[arg(long, conflicts_with = "top_fraction")]
    pub top_k: Option<usize>,
    /// Or keep this fraction of the unique input lines.
    #[arg(long)]
    pub top_fraction: Option<f64>,
    /// Lines whose estimated Jaccard similarity (character shingles) exceeds this are one cluster.
    #[arg(long, default_value_t = 0.8)]
    pub near_dup_threshold: f64,
    /// Column to rank by.
    #[arg(long, default_value = "score")]
    pub score_column: String,
}

pub fn run(args: &SelectArgs, globals: &longtail::Globals) -> Result<()> {
    let budget = match (args.top_k, args.top_fraction) {
        (Some(k), _) => Budget::TopK(k),
        (None, Some(f)) => Budget::Fraction(f),
        (None, None) => {
            return Err(longtail::Error::input(
                "say how many candidates to keep: --top-k N or --top-fraction F",
            ));
        }
    };
    let req = SelectRequest {
        input: args.input.clone(),
        out: args.out.clone(),
        budget,
        near_dup_threshold: args.near_dup_threshold,
        score_column: args.score_column.clone(),
    };
    let done = select_file(&req, globals.seed)?;
    eprintln!(
        "selected {} candidates from {} unique lines ({} rows) -> {}",
        done.candidates,
        done.unique_lines,
        done.rows,
        args.out.display()
    );
    Ok(())
}
