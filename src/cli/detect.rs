//! `longtail train-detector` and `longtail score`.

use longtail::detect::model::Objective;
use longtail::detect::{self, Detector, DetectorConfig, DetectorKind, ScoreOptions, TrainRequest};
use longtail::{Globals, Result};
use std::path::PathBuf;

/// `longtail train-detector`
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  longtail train-detector --input lines.parquet --config configs/detector.toml --out models/detector"
)]
pub struct TrainArgs {
    /// Unlabeled lines: Parquet from `longtail ingest` (`cmd`, `count`), or JSONL/CSV/text.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output directory: config.json, model.safetensors, iforest.json, checkpoint/.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Detector config (TOML); defaults are built in.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Which detectors to train.
    #[arg(long, value_enum, default_value = "both")]
    pub detector: TrainWhich,
    /// Continue from the last finished epoch in OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override the config's number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the config's objective: masked (predict masked bytes) or bottleneck
    /// (reconstruct every byte).
    #[arg(long, value_parser = super::parse_enum::<Objective>)]
    pub objective: Option<Objective>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TrainWhich {
    Autoencoder,
    Iforest,
    Both,
}

pub fn train(args: &TrainArgs, globals: &Globals) -> Result<()> {
    let mut config = match &args.config {
        Some(p) => DetectorConfig::from_toml_file(p)?,
        None => DetectorConfig::default(),
    };
    if let Some(e) = args.epochs {
        config.optim.epochs = e;
    }
    if let Some(o) = args.objective {
        config.model.objective = o;
    }
    config.model.validate()?;
    let (lines, counts) = detect::load_lines(&args.input)?;
    tracing::info!(
        "training on {} unique lines ({} in the stream)",
        lines.len(),
        counts.iter().sum::<u64>()
    );
    let bundle = detect::train(
        &TrainRequest {
            config: &config,
            lines: &lines,
            counts: &counts,
            out: &args.out,
            autoencoder: args.detector != TrainWhich::Iforest,
            iforest: args.detector != TrainWhich::Autoencoder,
            resume: args.resume,
            trained_on: args.input.iter().map(|p| p.display().to_string()).collect(),
        },
        globals,
    )?;
    if let Some(t) = &bundle.training {
        eprintln!(
            "trained {} epochs; best validation loss {:.4} (epoch {}); weights in {}",
            t.epochs_done,
            t.best_val.unwrap_or(f64::NAN),
            t.best_epoch.map_or(0, |e| e + 1),
            args.out.join("model.safetensors").display()
        );
    }
    Ok(())
}

/// `longtail score`
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  longtail score --model models/detector --input lines.parquet --out scores.parquet --detector combined"
)]
pub struct ScoreArgs {
    /// Detector directory from `longtail train-detector`.
    #[arg(long, short)]
    pub model: PathBuf,
    /// Lines to score: Parquet with a `cmd` column (e.g. from `longtail ingest`), or JSONL/CSV/text.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Output Parquet: cmd, count, score, score_window, ae_score, iforest_score, surprises.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Which score to rank by: autoencoder, iforest, or combined (the mean of the two
    /// detectors' normalised ranks).
    #[arg(long, default_value = "combined", value_parser = super::parse_enum::<DetectorKind>)]
    pub detector: DetectorKind,
    /// Padded byte positions per batch (memory vs. speed).
    #[arg(long, default_value_t = 16_384)]
    pub batch_tokens: usize,
    /// Most surprising substrings kept per line.
    #[arg(long, default_value_t = 3)]
    pub top_surprises: usize,
}

pub fn score(args: &ScoreArgs, globals: &Globals) -> Result<()> {
    let detector = Detector::load(&args.model, globals)?;
    let (lines, counts) = detect::load_lines(&args.input)?;
    let start = std::time::Instant::now();
    let opts = ScoreOptions {
        kind: args.detector,
        batch_tokens: args.batch_tokens,
        top_surprises: args.top_surprises,
    };
    let scores = detector.score(&lines, &opts)?;
    let secs = start.elapsed().as_secs_f64();
    detect::write_scores(&args.out, &lines, &counts, &scores)?;
    eprintln!(
        "scored {} lines in {:.1}s ({:.0} lines/s) -> {}",
        lines.len(),
        secs,
        lines.len() as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(())
}
