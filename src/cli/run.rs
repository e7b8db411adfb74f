//! `longtail run`: the whole experiment from one config.

use longtail::experiment::{self, Arm, RunOutcome, RunRequest};
use longtail::{Globals, Result};
use std::path::PathBuf;

/// `longtail run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  longtail run --config configs/demo.toml                # the README's main job (CPU, minutes)
  longtail run --config configs/full.toml --device wgpu  # all the shared data, on a GPU
  longtail run --config configs/demo.toml --out runs/x   # another run directory

Stages already finished with the same inputs and config are reused, so a rerun after a crash
or after changing only the classifier's config redoes only what changed. The report is in
RUN_DIR/report/report.md.")]
pub struct RunArgs {
    /// The experiment config (TOML): data roles, detector, budget, labelers, classifier, seeds.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Run directory (default: the config's `out`).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Only build the datasets and print their summary (a quick check of a new config).
    #[arg(long)]
    pub data_only: bool,
    /// Override `[select] budget` (labels per arm), e.g. for a budget sweep: copy a finished
    /// run directory and rerun with another budget; detectors and baselines are reused.
    #[arg(long)]
    pub budget: Option<usize>,
    /// Override `seeds`, comma-separated (e.g. `--seeds 1,2,3`).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Override `arms`, comma-separated (must include baseline), e.g. `--arms baseline,autoencoder,random`.
    #[arg(long, value_delimiter = ',', value_parser = super::parse_enum::<Arm>)]
    pub arms: Option<Vec<Arm>>,
    /// Override `[label] oracle_benign_precision`: the oracle flips labels so that its benign
    /// verdicts on each arm's selection reach this precision (how labeling errors propagate).
    /// It is a precision within the selection, so it depends on the selection's class mix.
    #[arg(long)]
    pub oracle_benign_precision: Option<f64>,
    /// Override `[label] oracle_malicious_precision`.
    #[arg(long)]
    pub oracle_malicious_precision: Option<f64>,
    /// Override `[classifier] ensemble`: every classifier of the run (baseline and arms) is a
    /// seed ensemble of K networks.
    #[arg(long, value_name = "K")]
    pub ensemble: Option<usize>,
    /// Set `[select] skip_placeholders`: no arm selects a stream line with unexpanded
    /// variables (`$dir`, `%PREFIX%`, `{{ x }}`), which process telemetry would show expanded;
    /// measures the method without the "has a variable, so benign" shortcut. To reuse a
    /// finished run's data, detectors and baselines, copy those folders to the new --out.
    #[arg(long)]
    pub skip_placeholders: bool,
    /// Set `[select] known_truth_only`: no arm selects a stream line whose truth is unknown
    /// (the telemetry background), so every label gets an oracle verdict. A sensitivity
    /// analysis of the oracle's blind spot (what would the arms gain if the background cost
    /// no labels?), not a deployable setting; oracle labelers only.
    #[arg(long)]
    pub known_truth_only: bool,
    /// Set `[select] propagate_to_family`: one label per family. A benign verdict also adds
    /// every other stream line of the labeled line's coarse family (estimated Jaccard >= 0.5)
    /// as benign, for every arm alike; families with a malicious verdict get nothing.
    #[arg(long)]
    pub propagate_to_family: bool,
}

impl RunArgs {
    pub fn request(&self) -> RunRequest {
        RunRequest {
            config: self.config.clone(),
            out: self.out.clone(),
            data_only: self.data_only,
            budget: self.budget,
            seeds: self.seeds.clone(),
            arms: self.arms.clone(),
            oracle_benign_precision: self.oracle_benign_precision,
            oracle_malicious_precision: self.oracle_malicious_precision,
            ensemble: self.ensemble,
            skip_placeholders: self.skip_placeholders,
            known_truth_only: self.known_truth_only,
            propagate_to_family: self.propagate_to_family,
        }
    }
}

pub fn run(args: &RunArgs, globals: &Globals, out: &mut super::Output) -> Result<()> {
    match experiment::run(&args.request(), globals)? {
        RunOutcome::Data(summary) => out.print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&summary).expect("plain data")
        )),
        RunOutcome::Report(path) => {
            eprintln!("report: {}", path.display());
            Ok(())
        }
    }
}
