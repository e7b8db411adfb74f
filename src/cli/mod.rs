//! The command line: parsing (clap), one file a subcommand, each turning its arguments into
//! the library's typed request. Nothing outside `main.rs` and this module knows clap.

pub mod classify;
pub mod detect;
pub mod ingest;
pub mod label;
pub mod pretrain;
pub mod run;
pub mod select;

use clap::{Parser, Subcommand};
use longtail::device::DeviceChoice;
use longtail::{Globals, Result};
use std::io::{BufWriter, Stdout, Write};
use std::str::FromStr;

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
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Compute device: auto (a real GPU through wgpu if present, else flex), flex (Burn's
    /// CPU backend), wgpu (the default GPU adapter), wgpu-cpu (the wgpu code path on the CPU,
    /// through Mesa lavapipe).
    #[arg(
        long,
        global = true,
        default_value = "auto",
        env = "LONGTAIL_DEVICE",
        value_parser = parse_enum::<DeviceChoice>
    )]
    pub device: DeviceChoice,
    /// Seed for every random choice (sampling, initialisation, shuffling).
    #[arg(long, global = true, default_value_t = 42)]
    pub seed: u64,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors; no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Pretrain the classifier's embedding and convolutions on unlabeled lines (masked-token
    /// prediction), for `train-classifier --pretrained`.
    PretrainClassifier(pretrain::PretrainArgs),
    /// Compare classifiers on one labeled test set: AUC and TPR at low FPR with intervals,
    /// breakdowns, SVG plots.
    Evaluate(classify::EvaluateArgs),
    /// Score lines with a trained classifier: probability of malicious and a label.
    Classify(classify::ClassifyArgs),
    /// Export a classifier (weights, config, threshold, tokenizer for BPE, model card) for
    /// downstream use.
    Export(classify::ExportArgs),
    /// Run the whole experiment from one config: datasets -> detector -> select -> label ->
    /// baseline and augmented classifiers (with a random-selection control) -> report.
    Run(run::RunArgs),
}

impl Command {
    /// Whether the subcommand runs a model (and so needs `--device` resolved).
    pub fn uses_device(&self) -> bool {
        !matches!(
            self,
            Command::Ingest(_) | Command::Select(_) | Command::Label(_) | Command::Export(_)
        )
    }

    /// Run the subcommand; what it prints for other programs goes to `out`.
    pub fn run(&self, globals: &Globals, out: &mut Output) -> Result<()> {
        match self {
            Command::Ingest(a) => ingest::run(a, globals, out),
            Command::TrainDetector(a) => detect::train(a, globals),
            Command::Score(a) => detect::score(a, globals),
            Command::Select(a) => select::run(a, globals),
            Command::Label(a) => label::run(a, globals, out),
            Command::TrainClassifier(a) => classify::train(a, globals),
            Command::PretrainClassifier(a) => pretrain::run(a, globals),
            Command::Evaluate(a) => classify::evaluate(a, globals),
            Command::Classify(a) => classify::classify(a, globals, out),
            Command::Export(a) => classify::export(a),
            Command::Run(a) => run::run(a, globals, out),
        }
    }
}

/// Parse any of the library's named enums (`FromStr` + a list of names) as a clap value,
/// listing the accepted names in `--help` and in the error.
pub fn parse_enum<T: FromStr<Err = String>>(text: &str) -> std::result::Result<T, String> {
    text.parse()
}

/// Standard output, buffered; a reader that goes away (`| head -1`) surfaces as an error
/// whose source is a broken pipe, which `main` treats as a normal end.
pub struct Output {
    stdout: BufWriter<Stdout>,
}

impl Output {
    pub fn new() -> Output {
        Output {
            stdout: BufWriter::new(std::io::stdout()),
        }
    }

    pub fn print(&mut self, text: &str) -> Result<()> {
        self.stdout.write_all(text.as_bytes())?;
        Ok(())
    }

    pub fn stdout(&mut self) -> &mut impl Write {
        &mut self.stdout
    }

    pub fn flush(&mut self) -> Result<()> {
        self.stdout.flush()?;
        Ok(())
    }
}
