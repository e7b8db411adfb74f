//! The `longtail` command: a thin clap front over the library's stages.

use clap::{Parser, Subcommand};
use longtail::device::DeviceChoice;
use longtail::{Globals, classify, detect, experiment, ingest, label, select};
use std::process::ExitCode;

/// Turn anomaly detection into benign training data for command-line classifiers.
///
/// The pipeline: ingest telemetry (dedup) -> train-detector -> score -> select the most
/// anomalous lines -> label them with an LLM -> train a classifier on baseline + benign
/// anomalies -> evaluate. Each stage reads and writes Parquet, so any stage can be rerun
/// or inspected alone. Exit codes: 0 ok, 1 runtime failure, 2 usage or input error.
#[derive(Parser)]
#[command(
    name = "longtail",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device: auto = a real GPU through wgpu if present, else flex (CPU).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "LONGTAIL_DEVICE"
    )]
    device: DeviceChoice,
    /// Seed for every random choice (sampling, initialisation, shuffling).
    #[arg(long, global = true, default_value_t = 42)]
    seed: u64,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors; no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Read command lines (Parquet, JSONL, CSV, text; gz/zstd), dedup exactly and near-exactly,
    /// write a Parquet table of unique lines with counts and near-duplicate clusters.
    Ingest(ingest::IngestArgs),
    /// Train the byte-level transformer autoencoder on an unlabeled stream.
    TrainDetector(detect::TrainArgs),
    /// Score lines for anomaly (autoencoder, isolation forest, or both fused by rank).
    Score(detect::ScoreArgs),
    /// Pick the top-scoring lines, one per near-duplicate cluster, as labeling candidates.
    Select(select::SelectArgs),
    /// Ask an LLM for a benign/malicious verdict on each candidate.
    Label(label::LabelArgs),
    /// Train the CNN command-line classifier (byte or BPE tokens) on labeled lines plus benign
    /// augmentation lines.
    TrainClassifier(classify::TrainArgs),
    /// Compare classifiers on one labeled test set: AUC, TPR at low FPR, breakdowns, SVG plots.
    Evaluate(classify::EvaluateArgs),
    /// Score lines with a trained classifier: probability of malicious and a label.
    Classify(classify::ClassifyArgs),
    /// Export a classifier (weights, config, threshold, tokenizer for BPE, model card) for
    /// downstream use.
    Export(classify::ExportArgs),
    /// Run the whole experiment from one config: datasets -> detector -> select -> label ->
    /// baseline and augmented classifiers (with a random-selection control) -> report.
    Run(experiment::RunArgs),
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("longtail={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    longtail::progress::set_quiet(quiet);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let globals = Globals {
        device: cli.device,
        seed: cli.seed,
    };
    let result = match &cli.command {
        Command::Ingest(a) => ingest::run(a, &globals),
        Command::TrainDetector(a) => detect::train_cli(a, &globals),
        Command::Score(a) => detect::score_cli(a, &globals),
        Command::Select(a) => select::run(a, &globals),
        Command::Label(a) => label::run(a, &globals),
        Command::TrainClassifier(a) => classify::train_cli(a, &globals),
        Command::Evaluate(a) => classify::evaluate_cli(a, &globals),
        Command::Classify(a) => classify::classify_cli(a, &globals),
        Command::Export(a) => classify::export_cli(a, &globals),
        Command::Run(a) => experiment::run(a, &globals),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
