//! The experiment (`longtail run --config configs/NAME.toml`): the whole method in one run
//! directory, with every arm and seed, so that its effect is measured against a baseline and
//! a random-selection control, not assumed.
//!
//! ```text
//! data ──> baseline.parquet ─────────────────────────────────────────────┐
//!      ├─> stream.parquet ──> detector ──> scores ──> select ──> label ──┤──> classifier ──> test scores ──> report
//!      └─> test_hard / test_easy ────────────────────────────────────────┘
//! ```
//!
//! Each box is a stage with its own directory and `stage.json` ([`stage`]): reused on rerun
//! when its inputs and config are unchanged, resumed after a crash.

pub mod datasets;
pub mod llm_server;
pub mod report;
pub mod stage;

use crate::Globals;
use crate::classify::{self, Classifier, ClassifierConfig};
use crate::detect::{self, DetectorConfig, DetectorKind, ScoreOptions};
use crate::error::{Context, Error, Result};
use crate::io::table;
use crate::label::{self, LabelConfig, LabelResult, Labeler, OracleLabeler};
use crate::vocab::{Label, LabelProtocol, ServerApi};
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datasets::{DataConfig, Table};
use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use stage::{Plan, Stage, key_of};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One way of building the classifier's training set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    /// The baseline labeled set alone.
    Baseline,
    /// + benign verdicts on the top-`budget` lines of the autoencoder's score.
    Autoencoder,
    /// + the same from the isolation forest.
    Iforest,
    /// + the same from the rank fusion of both.
    Combined,
    /// + the same number of stream lines chosen at random (control: does selection matter?).
    Random,
    /// + every stream line labeled by the oracle (an upper bound; costs |stream| labels).
    OracleAll,
    /// Adds the stream lines the *baseline classifier* scores most malicious: its would-be
    /// false positives, one per near-duplicate cluster (no detector needed).
    FpRisk,
    /// Adds the top of the product of the combined anomaly rank and the baseline classifier's
    /// rank: anomalous lines the classifier would also flag.
    AnomalyFp,
    /// Adds one line from each of as many coarse clusters (Jaccard 0.5) of the stream as the
    /// budget allows, the most anomalous of each, clusters in order of that score: coverage
    /// of the tail instead of the top of one score.
    Diversity,
    /// Adds one line from each of the *largest* coarse clusters (Jaccard 0.5) of the stream
    /// that hold no baseline line (its most anomalous line), largest first: the dense
    /// families of the tail that the baseline lacks, instead of its outliers. Built because
    /// on the operational stream random lines covered far more of the later tail than the
    /// anomaly arms did (docs/results/ops.md).
    Representative,
    /// The random control's draw restricted to lines of coarse clusters (Jaccard 0.5) that
    /// hold no baseline line: the same draw as `random`, minus the families the baseline
    /// already has. An ablation of `representative` (is it the novelty of its families, or
    /// taking the largest ones first, that helps?) and a control that needs no detector.
    NovelRandom,
}

crate::vocab::named_enum!(Arm {
    Baseline => "baseline",
    Autoencoder => "autoencoder",
    Iforest => "iforest",
    Combined => "combined",
    Random => "random",
    OracleAll => "oracle_all",
    FpRisk => "fp_risk",
    AnomalyFp => "anomaly_fp",
    Diversity => "diversity",
    Representative => "representative",
    NovelRandom => "novel_random",
});

impl Arm {
    /// The name in reports.
    pub fn title(self) -> &'static str {
        match self {
            Arm::Baseline => "baseline",
            Arm::Autoencoder => "+ autoencoder anomalies",
            Arm::Iforest => "+ iforest anomalies",
            Arm::Combined => "+ combined anomalies",
            Arm::Random => "+ random lines (control)",
            Arm::OracleAll => "+ whole stream (upper bound)",
            Arm::FpRisk => "+ baseline's would-be false positives",
            Arm::AnomalyFp => "+ anomalous and flagged (rank product)",
            Arm::Diversity => "+ anomalies across tail clusters",
            Arm::Representative => "+ largest tail families the baseline lacks",
            Arm::NovelRandom => "+ random lines of families the baseline lacks",
        }
    }

    /// The anomaly score the arm selects with, if any.
    fn detector(self) -> Option<DetectorKind> {
        match self {
            Arm::Autoencoder => Some(DetectorKind::Autoencoder),
            Arm::Iforest => Some(DetectorKind::Iforest),
            Arm::Combined | Arm::AnomalyFp | Arm::Diversity | Arm::Representative => {
                Some(DetectorKind::Combined)
            }
            _ => None,
        }
    }

    /// Whether the arm selects with the baseline classifier's scores of the stream.
    fn uses_baseline_scores(self) -> bool {
        matches!(self, Arm::FpRisk | Arm::AnomalyFp)
    }
}

/// Who labels the selected lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelerKind {
    /// The stream's known labels (optionally noisy): ground truth for the experiment.
    Oracle,
    /// The LLM of `[label.llm]`.
    Llm,
}

crate::vocab::named_enum!(LabelerKind { Oracle => "oracle", Llm => "llm" });

/// Candidate selection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectStage {
    /// Labels spent per arm: this many lines are sent to the labeler.
    pub budget: usize,
    /// One representative per near-duplicate cluster above this Jaccard similarity.
    pub near_dup_threshold: f64,
    /// Padded byte positions per scoring batch.
    pub score_batch_tokens: usize,
    /// Never select stream lines with unexpanded variables (`$dir`, `%PREFIX%`; see
    /// `data::has_placeholder`): process telemetry shows them expanded, so labeling them
    /// teaches the classifier "has a variable, so benign". Applies to every arm alike,
    /// the random control and the upper bound included.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_placeholders: bool,
    /// A sensitivity analysis of the oracle's blind spot, not a deployable setting: no arm
    /// selects a stream line whose truth is unknown (the real telemetry background), so
    /// every label an arm spends gets a verdict, as if the labeler judged every line but its
    /// verdicts on the background taught nothing. Oracle labelers only. The upper bound is
    /// unchanged: the oracle gives those lines no verdict anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub known_truth_only: bool,
    /// One label per family: a benign verdict also covers every other stream line of the
    /// labeled line's coarse family (estimated Jaccard >= 0.5, the families of the cluster
    /// arms) that the arm may select, added as benign without a label of its own. A family
    /// where any selected line was judged malicious or flagged gets nothing. Every arm but
    /// the upper bound alike, the random control included; the labels spent do not change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub propagate_to_family: bool,
}

impl SelectStage {
    /// Whether `arm` may send a stream line to the labeler under `skip_placeholders` and
    /// `known_truth_only`.
    fn may_select(&self, arm: Arm, cmd: &str, truth: Option<Label>) -> bool {
        let placeholder = self.skip_placeholders && crate::data::has_placeholder(cmd);
        let blind = self.known_truth_only && arm != Arm::OracleAll && truth.is_none();
        !placeholder && !blind
    }
}

impl Default for SelectStage {
    fn default() -> Self {
        SelectStage {
            budget: 200,
            near_dup_threshold: 0.8,
            score_batch_tokens: 16_384,
            skip_placeholders: false,
            known_truth_only: false,
            propagate_to_family: false,
        }
    }
}

/// A local or remote LLM for the `llm` labeler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmStage {
    /// OpenAI-compatible base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    /// A command that starts the server in the foreground (e.g. `["scripts/llm_server.sh",
    /// "qwen", "8080"]`); started before the first LLM request, stopped at the end. Empty: the
    /// server is already running.
    pub launch: Vec<String>,
    /// How long to wait for `<base_url without /v1>/health` to answer 200 after launch.
    pub ready_timeout_s: u64,
    /// Prompt file, or `v1` / `v2` / `v3` (default: the built-in v2 prompt).
    pub prompt: Option<PathBuf>,
    pub concurrency: usize,
    /// Self-consistency samples (benign only if all agree).
    pub samples: u32,
    /// Per-request timeout.
    pub timeout_s: u64,
    pub max_answer_tokens: u32,
    /// How the verdict is asked: `text` (a token in the answer), `scored` (explanation, then
    /// one constrained verdict token with its probability), `direct` (the verdict token alone).
    pub protocol: LabelProtocol,
    /// The server's API dialect for the constraint field (`auto` asks `/v1/models`).
    pub server: ServerApi,
    /// Scored protocols: benign only at `p_benign` >= this; below it `uncertain` (review).
    pub benign_threshold: f64,
    /// A calibration file from `longtail label --calibrate` (its threshold; it must have been
    /// fitted for this model, prompt and protocol). Overrides `benign_threshold`.
    pub calibration: Option<PathBuf>,
}

impl Default for LlmStage {
    fn default() -> Self {
        LlmStage {
            base_url: "http://127.0.0.1:8080/v1".into(),
            model: "local".into(),
            launch: Vec::new(),
            ready_timeout_s: 300,
            prompt: None,
            concurrency: 1,
            samples: 1,
            timeout_s: 300,
            max_answer_tokens: 512,
            protocol: LabelProtocol::Text,
            server: ServerApi::Auto,
            benign_threshold: 0.5,
            calibration: None,
        }
    }
}

/// Labeling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabelStage {
    pub labelers: Vec<LabelerKind>,
    /// Oracle noise: precision of its benign / malicious verdicts (1 = exact).
    pub oracle_benign_precision: Option<f64>,
    pub oracle_malicious_precision: Option<f64>,
    /// Oracle noise as a real labeler's per-class rates (instead of the precisions): the
    /// share of benign lines it accepts and of malicious lines it lets through as benign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle_rates: Option<OracleRates>,
    /// The same rates read from a calibration file (`longtail label --calibrate`), at its
    /// fitted threshold: full-scale runs then emulate that labeler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle_rates_from: Option<PathBuf>,
    pub llm: Option<LlmStage>,
}

/// A labeler's measured acceptance rates, for the oracle's noise model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleRates {
    pub benign_recall: f64,
    pub malicious_leak: f64,
}

impl LabelStage {
    /// The oracle's rate noise model, from `oracle_rates` or the calibration file.
    fn oracle_rates(&self) -> Result<Option<OracleRates>> {
        match (&self.oracle_rates, &self.oracle_rates_from) {
            (Some(_), Some(_)) => Err(Error::input(
                "[label] has both oracle_rates and oracle_rates_from: keep one",
            )),
            (Some(r), None) => Ok(Some(*r)),
            (None, Some(path)) => {
                let cal = label::Calibration::load(path)?;
                let row = cal.benign_threshold.and_then(|t| {
                    cal.thresholds
                        .iter()
                        .find(|r| (r.threshold - t).abs() < 1e-12)
                });
                let Some(row) = row else {
                    return Err(Error::input(format!(
                        "calibration {} has no fitted threshold (no threshold reached its \
                         precision target): there are no rates to emulate",
                        path.display()
                    )));
                };
                Ok(Some(OracleRates {
                    benign_recall: row.benign_recall,
                    malicious_leak: row.malicious_leak,
                }))
            }
            (None, None) => Ok(None),
        }
    }
}

impl Default for LabelStage {
    fn default() -> Self {
        LabelStage {
            labelers: vec![LabelerKind::Oracle],
            oracle_benign_precision: None,
            oracle_malicious_precision: None,
            oracle_rates: None,
            oracle_rates_from: None,
            llm: None,
        }
    }
}

/// How the augmented classifiers are trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AugmentMode {
    /// From scratch on baseline + augmentation, with the baseline's seed (a clean comparison).
    #[default]
    Retrain,
    /// Fine-tune the same seed's baseline model on baseline + augmentation.
    Finetune,
}

/// `configs/NAME.toml`: the whole experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperimentConfig {
    pub name: String,
    /// Run directory (relative to the current directory); `--out` overrides.
    pub out: PathBuf,
    /// One full pipeline per seed (detector, selection, classifiers); data splits stay fixed.
    pub seeds: Vec<u64>,
    pub arms: Vec<Arm>,
    pub augment_mode: AugmentMode,
    pub data: DataConfig,
    pub detector: DetectorConfig,
    pub select: SelectStage,
    pub label: LabelStage,
    pub classifier: ClassifierConfig,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig {
            name: "experiment".into(),
            out: PathBuf::from("runs/experiment"),
            seeds: vec![1],
            arms: Arm::ALL.to_vec(),
            augment_mode: AugmentMode::Retrain,
            data: DataConfig::default(),
            detector: DetectorConfig::default(),
            select: SelectStage::default(),
            label: LabelStage::default(),
            classifier: ClassifierConfig::default(),
        }
    }
}

impl ExperimentConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .input_ctx(|| format!("cannot read the experiment config {}", path.display()))?;
        let cfg: ExperimentConfig = toml::from_str(&text)
            .input_ctx(|| format!("invalid experiment config {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        self.data.validate()?;
        self.classifier.validate()?;
        if self.seeds.is_empty() {
            return Err(Error::input(
                "seeds is empty: give at least one, e.g. seeds = [1]",
            ));
        }
        if !self.arms.contains(&Arm::Baseline) {
            return Err(Error::input(
                "arms must include \"baseline\": every other arm is measured against it",
            ));
        }
        if self.select.budget == 0 {
            return Err(Error::input("[select] budget must be at least 1"));
        }
        if let Some(r) = self.label.oracle_rates()? {
            // Checks the rates, and that no precision is set beside them.
            OracleLabeler::from_labels(
                Default::default(),
                "config",
                self.label.oracle_benign_precision,
                self.label.oracle_malicious_precision,
                0,
            )?
            .with_rates(r.benign_recall, r.malicious_leak)?;
        }
        if self.label.labelers.is_empty() {
            return Err(Error::input("[label] labelers is empty: use [\"oracle\"]"));
        }
        if self.select.known_truth_only && self.label.labelers.contains(&LabelerKind::Llm) {
            return Err(Error::input(
                "[select] known_truth_only measures the oracle's blind spot on lines of unknown \
                 truth; an LLM labels those lines, so drop \"llm\" from [label] labelers or \
                 the flag",
            ));
        }
        if self.label.labelers.contains(&LabelerKind::Llm) && self.label.llm.is_none() {
            return Err(Error::input(
                "[label] labelers has \"llm\" but there is no [label.llm] section with base_url and model",
            ));
        }
        Ok(())
    }
}

/// What `longtail run` asks for: the config and the command line's overrides of it.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    /// The experiment config (TOML).
    pub config: PathBuf,
    /// Run directory (default: the config's `out`).
    pub out: Option<PathBuf>,
    /// Only build the datasets and return their summary.
    pub data_only: bool,
    /// Override `[select] budget`.
    pub budget: Option<usize>,
    /// Override `seeds`.
    pub seeds: Option<Vec<u64>>,
    /// Override `arms` (must include baseline).
    pub arms: Option<Vec<Arm>>,
    /// Override `[label] oracle_benign_precision`.
    pub oracle_benign_precision: Option<f64>,
    /// Override `[label] oracle_malicious_precision`.
    pub oracle_malicious_precision: Option<f64>,
    /// Override `[classifier] ensemble` (members per classifier).
    pub ensemble: Option<usize>,
    /// Set `[select] skip_placeholders`.
    pub skip_placeholders: bool,
    /// Set `[select] known_truth_only`.
    pub known_truth_only: bool,
    /// Set `[select] propagate_to_family`.
    pub propagate_to_family: bool,
}

impl RunRequest {
    /// The command line that reproduces this run (for the report).
    pub fn command(&self) -> String {
        let mut c = format!("longtail run --config {}", self.config.display());
        if let Some(out) = &self.out {
            c += &format!(" --out {}", out.display());
        }
        if let Some(b) = self.budget {
            c += &format!(" --budget {b}");
        }
        if let Some(seeds) = &self.seeds {
            let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
            c += &format!(" --seeds {}", list.join(","));
        }
        if let Some(arms) = &self.arms {
            let list: Vec<&str> = arms.iter().map(|a| a.as_str()).collect();
            c += &format!(" --arms {}", list.join(","));
        }
        if let Some(p) = self.oracle_benign_precision {
            c += &format!(" --oracle-benign-precision {p}");
        }
        if let Some(p) = self.oracle_malicious_precision {
            c += &format!(" --oracle-malicious-precision {p}");
        }
        if let Some(k) = self.ensemble {
            c += &format!(" --ensemble {k}");
        }
        if self.skip_placeholders {
            c += " --skip-placeholders";
        }
        if self.known_truth_only {
            c += " --known-truth-only";
        }
        if self.propagate_to_family {
            c += " --propagate-to-family";
        }
        c
    }

    /// The config file with the overrides applied, validated.
    pub fn resolved_config(&self) -> Result<ExperimentConfig> {
        let mut cfg = ExperimentConfig::from_toml_file(&self.config)?;
        if let Some(b) = self.budget {
            cfg.select.budget = b;
        }
        if let Some(seeds) = &self.seeds {
            cfg.seeds = seeds.clone();
        }
        if let Some(arms) = &self.arms {
            cfg.arms = arms.clone();
        }
        if self.oracle_benign_precision.is_some() {
            cfg.label.oracle_benign_precision = self.oracle_benign_precision;
        }
        if self.oracle_malicious_precision.is_some() {
            cfg.label.oracle_malicious_precision = self.oracle_malicious_precision;
        }
        if let Some(k) = self.ensemble {
            cfg.classifier.ensemble = k;
        }
        if self.skip_placeholders {
            cfg.select.skip_placeholders = true;
        }
        if self.known_truth_only {
            cfg.select.known_truth_only = true;
        }
        if self.propagate_to_family {
            cfg.select.propagate_to_family = true;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// What a run produced.
#[derive(Debug)]
pub enum RunOutcome {
    /// `data_only`: the datasets' summary.
    Data(datasets::DataSummary),
    /// The report's Markdown file.
    Report(PathBuf),
}

/// What one arm of one seed produced, for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmOutcome {
    pub seed: u64,
    pub arm: Arm,
    /// `None` for the baseline (no labels).
    pub labeler: Option<LabelerKind>,
    pub labels: Option<LabelSummary>,
    pub hard_scores: Vec<f64>,
    pub easy_scores: Vec<f64>,
    /// Scores on the dev hard split (empty without one).
    pub dev_scores: Vec<f64>,
    /// Scores on the time-split test (empty without one).
    pub time_scores: Vec<f64>,
    /// The classifier's stored threshold (validation FPR target).
    pub threshold: f64,
    pub classifier_dir: PathBuf,
}

/// Labels spent and what they bought.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSummary {
    /// Lines sent to the labeler.
    pub spent: usize,
    pub benign: usize,
    pub malicious: usize,
    /// Unparsed answers, errors and lines the labeler could not judge (unknown truth).
    pub no_verdict: usize,
    /// Scored verdicts below the benign threshold but leaning benign: sent to review.
    #[serde(default)]
    pub uncertain: usize,
    /// Lines flagged (injection, disagreement): never used.
    pub flagged: usize,
    /// Benign lines added to the training set.
    pub augmented: usize,
    /// Of those, lines not already in the baseline (the others change nothing).
    #[serde(default)]
    pub augmented_new: usize,
    /// Of the augmented lines, how many carry the verdict of another line of their family
    /// (`propagate_to_family`) instead of a label of their own.
    #[serde(default)]
    pub propagated: usize,
    /// Of the augmented lines, how many are truly benign / truly malicious / unknown.
    pub augmented_truly_benign: usize,
    pub augmented_truly_malicious: usize,
    /// Selected lines by their role in the stream (`common`, `tail`, ...).
    pub selected_by_role: std::collections::BTreeMap<String, usize>,
}

/// Run the experiment. `globals.device` is used for every stage; `globals.seed` is unused
/// (the config's seeds drive each run).
pub fn run(req: &RunRequest, globals: &Globals) -> Result<RunOutcome> {
    let cfg = req.resolved_config()?;
    let out = req.out.clone().unwrap_or_else(|| cfg.out.clone());
    std::fs::create_dir_all(&out)
        .runtime_ctx(|| format!("cannot create the run directory {}", out.display()))?;
    crate::io::write_json(&out.join("config.json"), &cfg)?;
    let mut ctx = Runner {
        cfg: &cfg,
        out: out.clone(),
        globals: globals.clone(),
        llm: None,
        baseline: Default::default(),
    };
    let data = ctx.data_stage()?;
    if req.data_only {
        return Ok(RunOutcome::Data(data.summary));
    }
    ctx.baseline = Table::read(&data.dir.join(datasets::BASELINE))?
        .cmd
        .into_iter()
        .collect();
    // Read once: every seed and arm uses the same stream and test sets.
    let tables = Tables {
        stream: Table::read(&data.dir.join(datasets::TRUTH))?,
        hard: Table::read(&data.dir.join(datasets::HARD_TEST))?,
        easy: Table::read(&data.dir.join(datasets::EASY_TEST))?,
        dev: Table::read_if_written(&data.dir.join(datasets::HARD_DEV))?,
        time: Table::read_if_written(&data.dir.join(datasets::TIME_TEST))?,
    };
    // More labels than stream lines: every arm would label the whole stream (the upper
    // bound's job); say so before any training.
    if cfg.select.budget > tables.stream.cmd.len() {
        return Err(Error::input(format!(
            "[select] budget = {} exceeds the stream's {} unique lines: lower the budget or \
             grow the stream ([data] stream_common_lines, tail sources)",
            cfg.select.budget,
            tables.stream.cmd.len()
        )));
    }
    // What every selecting arm may take (`Random` stands for any arm but the upper bound).
    let selectable = (tables.stream.cmd.iter().zip(&tables.stream.label))
        .filter(|(c, truth)| cfg.select.may_select(Arm::Random, c, **truth))
        .count();
    if cfg.select.budget > selectable {
        return Err(Error::input(format!(
            "[select] budget = {} exceeds the {selectable} stream lines an arm may select \
             under skip_placeholders / known_truth_only: lower the budget or drop a flag",
            cfg.select.budget,
        )));
    }
    let mut outcomes = Vec::new();
    let mut written = PathBuf::new();
    for (i, &seed) in cfg.seeds.iter().enumerate() {
        outcomes.extend(ctx.seed(seed, &data, &tables)?);
        // A report after every seed: a long run shows its first results early.
        written = report::write(
            &out.join("report"),
            &cfg,
            &req.command(),
            &data,
            &tables,
            &outcomes,
        )?;
        tracing::info!(
            "seed {seed} done ({}/{} seeds); report so far: {}",
            i + 1,
            cfg.seeds.len(),
            written.display()
        );
    }
    drop(ctx.llm.take());
    Ok(RunOutcome::Report(written))
}

/// The data stage's outputs.
pub struct DataOutputs {
    pub dir: PathBuf,
    pub key: String,
    pub summary: datasets::DataSummary,
}

struct Runner<'a> {
    cfg: &'a ExperimentConfig,
    out: PathBuf,
    globals: Globals,
    llm: Option<llm_server::LlmServer>,
    /// The baseline's lines: augmentation lines already there add nothing new.
    baseline: std::collections::HashSet<String>,
}

impl Runner<'_> {
    fn data_stage(&mut self) -> Result<DataOutputs> {
        let key = key_of(&("data/1", &self.cfg.data, self.cfg.data.fingerprint()?));
        let mut stage = Stage::new("datasets", self.out.join("data"), key.clone());
        let summary = if stage.begin()? == Plan::Reuse {
            serde_json::from_value(stage.summary()).runtime_ctx(|| {
                format!(
                    "{}/stage.json has no data summary; delete the folder",
                    stage.dir.display()
                )
            })?
        } else {
            let built = datasets::build(&self.cfg.data)?;
            built.write(&stage.dir)?;
            let summary = built.summary;
            stage.finish(serde_json::to_value(&summary).expect("plain data"))?;
            summary
        };
        tracing::info!(
            "datasets: {} unique lines; {}",
            summary.unique_lines,
            summary
                .lines
                .iter()
                .map(|(k, v)| format!("{k} {}", v.values().sum::<usize>()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(DataOutputs {
            dir: stage.dir,
            key,
            summary,
        })
    }

    fn seed(&mut self, seed: u64, data: &DataOutputs, tables: &Tables) -> Result<Vec<ArmOutcome>> {
        let cfg = self.cfg;
        let globals = self.globals.with_seed(seed);
        let seed_dir = self.out.join(format!("seed-{seed}"));
        let mut outcomes = Vec::new();
        let baseline_dir = seed_dir.join("baseline");
        let baseline_key = key_of(&("classifier/1", &data.key, &cfg.classifier, seed));
        outcomes.push(self.classifier_stage(
            &baseline_dir,
            baseline_key.clone(),
            None,
            None,
            data,
            tables,
            &globals,
            (seed, Arm::Baseline, None, None),
        )?);

        let arms: Vec<Arm> = cfg
            .arms
            .iter()
            .copied()
            .filter(|&a| a != Arm::Baseline)
            .collect();
        let stream = &tables.stream;
        let scores = if arms.iter().any(|a| a.detector().is_some()) {
            Some(self.detector_stages(&seed_dir, data, stream, &globals)?)
        } else {
            None
        };
        // The baseline classifier's view of the stream, for the arms that select with it
        // (scoring a stream takes seconds: not a stage of its own).
        let baseline_scores = if arms.iter().any(|a| a.uses_baseline_scores()) {
            let model = Classifier::load(&baseline_dir.join("classifier"), &globals)?;
            let lines: Vec<&str> = stream.cmd.iter().map(String::as_str).collect();
            Some(BaselineScores {
                key: baseline_key.clone(),
                scores: model.score(&lines, cfg.classifier.training.batch_tokens, |_| {}),
            })
        } else {
            None
        };
        for &labeler in &cfg.label.labelers {
            for &arm in &arms {
                if arm == Arm::OracleAll && labeler != LabelerKind::Oracle {
                    continue; // labeling the whole stream is the oracle's upper bound only
                }
                let arm_dir = seed_dir.join(labeler.as_str()).join(arm.as_str());
                let (augment, labels, label_key) = self.label_stage(
                    &arm_dir,
                    arm,
                    labeler,
                    seed,
                    data,
                    stream,
                    Selectors {
                        anomaly: scores.as_ref(),
                        baseline: baseline_scores.as_ref(),
                    },
                )?;
                let key = key_of(&(
                    "classifier/1",
                    &data.key,
                    &cfg.classifier,
                    seed,
                    &label_key,
                    cfg.augment_mode,
                    (cfg.augment_mode == AugmentMode::Finetune).then_some(&baseline_key),
                ));
                let init = (cfg.augment_mode == AugmentMode::Finetune)
                    .then(|| baseline_dir.join("classifier"));
                outcomes.push(self.classifier_stage(
                    &arm_dir,
                    key,
                    Some(&augment),
                    init.as_deref(),
                    data,
                    tables,
                    &globals,
                    (seed, arm, Some(labeler), Some(labels)),
                )?);
            }
        }
        Ok(outcomes)
    }

    /// Train the detector on the stream and score the stream; returns per-kind scores.
    fn detector_stages(
        &mut self,
        seed_dir: &Path,
        data: &DataOutputs,
        stream: &Table,
        globals: &Globals,
    ) -> Result<StreamScores> {
        let cfg = self.cfg;
        let kinds: Vec<DetectorKind> = cfg.arms.iter().filter_map(|a| a.detector()).collect();
        let need_ae = kinds
            .iter()
            .any(|k| matches!(k, DetectorKind::Autoencoder | DetectorKind::Combined));
        let need_if = kinds
            .iter()
            .any(|k| matches!(k, DetectorKind::Iforest | DetectorKind::Combined));
        let detector_key = |autoencoder: bool, iforest: bool| {
            key_of(&(
                "detector/1",
                &data.key,
                &cfg.detector,
                globals.seed,
                autoencoder,
                iforest,
            ))
        };
        let dir = seed_dir.join("detector");
        let name = format!("seed {}: detector", globals.seed);
        // A finished detector trained for both kinds also serves arms that need one of them
        // (a follow-up run with fewer arms): reuse it, and its scores, instead of training again.
        let both = Stage::new(name.clone(), &dir, detector_key(true, true));
        let (need_ae, need_if) = if both.plan() == Plan::Reuse {
            (true, true)
        } else {
            (need_ae, need_if)
        };
        let key = detector_key(need_ae, need_if);
        let mut stage = Stage::new(name, &dir, key.clone());
        let plan = stage.begin()?;
        if plan != Plan::Reuse {
            detect::train(
                &detect::TrainRequest {
                    config: &cfg.detector,
                    lines: &stream.cmd,
                    counts: &stream.count,
                    out: &dir,
                    autoencoder: need_ae,
                    iforest: need_if,
                    resume: plan == Plan::Resume && dir.join("checkpoint").exists(),
                    trained_on: vec![data.dir.join(datasets::STREAM).display().to_string()],
                },
                globals,
            )?;
            stage.finish(serde_json::json!({ "lines": stream.cmd.len() }))?;
        }

        let score_dir = seed_dir.join("scores");
        let scores_key = key_of(&("scores/1", &key, cfg.select.score_batch_tokens));
        let mut stage = Stage::new(
            format!("seed {}: scores", globals.seed),
            &score_dir,
            scores_key.clone(),
        );
        let path = score_dir.join("scores.parquet");
        if stage.begin()? != Plan::Reuse {
            let detector = detect::Detector::load(&dir, globals)?;
            let kind = match (need_ae, need_if) {
                (true, true) => DetectorKind::Combined,
                (true, false) => DetectorKind::Autoencoder,
                _ => DetectorKind::Iforest,
            };
            let scores = detector.score(
                &stream.cmd,
                &ScoreOptions {
                    kind,
                    batch_tokens: cfg.select.score_batch_tokens,
                    top_surprises: 3,
                },
            )?;
            detect::write_scores(&path, &stream.cmd, &stream.count, &scores)?;
            stage.finish(serde_json::Value::Null)?;
        }
        StreamScores::read(&path, stream, scores_key)
    }

    /// Select the arm's lines, label them and write `labels/`: the labeled candidates
    /// (`labels.parquet`) and the benign lines that augment training (`augment.parquet`).
    #[allow(clippy::too_many_arguments)]
    fn label_stage(
        &mut self,
        dir: &Path,
        arm: Arm,
        labeler_kind: LabelerKind,
        seed: u64,
        data: &DataOutputs,
        stream: &Table,
        by: Selectors,
    ) -> Result<(PathBuf, LabelSummary, String)> {
        let cfg = self.cfg;
        let labeler_cfg = match labeler_kind {
            LabelerKind::Oracle => match cfg.label.oracle_rates()? {
                None => key_of(&(
                    cfg.label.oracle_benign_precision,
                    cfg.label.oracle_malicious_precision,
                )),
                Some(rates) => key_of(&(
                    cfg.label.oracle_benign_precision,
                    cfg.label.oracle_malicious_precision,
                    rates,
                )),
            },
            LabelerKind::Llm => key_of(&cfg.label.llm),
        };
        let selection_key = match (arm.detector(), arm.uses_baseline_scores()) {
            (Some(kind), false) if !matches!(arm, Arm::Diversity | Arm::Representative) => {
                key_of(&(
                    kind,
                    by.anomaly.map(|s| &s.key),
                    cfg.select.budget,
                    cfg.select.near_dup_threshold,
                ))
            }
            (None, false) => key_of(&(arm, cfg.select.budget, cfg.select.near_dup_threshold)),
            (kind, _) => key_of(&(
                arm,
                kind.and(by.anomaly.map(|s| &s.key)),
                arm.uses_baseline_scores()
                    .then(|| by.baseline.map(|b| &b.key)),
                cfg.select.budget,
                cfg.select.near_dup_threshold,
            )),
        };
        // Old runs' keys stay valid: a flag enters the key only when set (and in this order).
        // The upper bound labels every line whatever the last two say.
        let selection_key = [
            (cfg.select.skip_placeholders, "skip_placeholders"),
            (
                cfg.select.known_truth_only && arm != Arm::OracleAll,
                "known_truth_only",
            ),
            (
                cfg.select.propagate_to_family && arm != Arm::OracleAll,
                "propagate_to_family",
            ),
        ]
        .into_iter()
        .filter(|&(set, _)| set)
        .fold(selection_key, |key, (_, flag)| key_of(&(key, flag)));
        let key = key_of(&(
            "label/2",
            &data.key,
            seed,
            arm,
            labeler_kind,
            labeler_cfg,
            selection_key,
        ));
        let label_dir = dir.join("labels");
        let mut stage = Stage::new(
            format!(
                "seed {seed}: {} / {} labels",
                arm.as_str(),
                labeler_kind.as_str()
            ),
            &label_dir,
            key.clone(),
        );
        let augment = label_dir.join("augment.parquet");
        if stage.begin()? == Plan::Reuse {
            let summary = serde_json::from_value(stage.summary()).runtime_ctx(|| {
                format!(
                    "{}/stage.json has no label summary; delete it",
                    label_dir.display()
                )
            })?;
            return Ok((augment, summary, key));
        }
        let selection = self.select(arm, seed, stream, by)?;
        let cmds: Vec<String> = selection
            .iter()
            .map(|&(i, _)| stream.cmd[i].clone())
            .collect();
        let labeler = self.labeler(labeler_kind, seed, stream)?;
        let llm_cfg = cfg.label.llm.clone().unwrap_or_default();
        let label_cfg = LabelConfig {
            samples: if labeler_kind == LabelerKind::Llm {
                llm_cfg.samples
            } else {
                1
            },
            concurrency: if labeler_kind == LabelerKind::Llm {
                llm_cfg.concurrency
            } else {
                8
            },
            // The LLM's answers are shared by every arm and seed of the run: a line selected
            // twice is asked once, and a killed run loses no answer.
            cache: (labeler_kind == LabelerKind::Llm).then(|| self.out.join("llm-cache.jsonl")),
            benign_threshold: match (&llm_cfg.calibration, labeler_kind) {
                (Some(path), LabelerKind::Llm) => label::Calibration::load(path)?.threshold_for(
                    &label::CalibrationScope::of(labeler.info(), llm_cfg.samples),
                    path,
                )?,
                (None, LabelerKind::Llm) => llm_cfg.benign_threshold,
                (_, LabelerKind::Oracle) => 0.5,
            },
            ..LabelConfig::default()
        };
        let results = label::label_candidates_blocking(&cmds, labeler.as_ref(), &label_cfg)?;
        let propagated = if cfg.select.propagate_to_family && arm != Arm::OracleAll {
            let allowed = |i: usize| cfg.select.may_select(arm, &stream.cmd[i], stream.label[i]);
            family_members(&stream.cmd, &selection, &results, allowed, seed)?
        } else {
            Vec::new()
        };
        let summary = self.tally(&selection, stream, &results, &propagated);
        write_label_tables(&label_dir, &selection, stream, &results, &propagated)?;
        tracing::info!(
            "seed {seed}: {} / {}: {} labels spent, {} benign added ({} new, {} by family, {} \
             truly malicious)",
            arm.as_str(),
            labeler_kind.as_str(),
            summary.spent,
            summary.augmented,
            summary.augmented_new,
            summary.propagated,
            summary.augmented_truly_malicious
        );
        stage.finish(serde_json::to_value(&summary).expect("plain data"))?;
        Ok((augment, summary, key))
    }

    /// The stream lines an arm sends to the labeler, with the score that chose each: the
    /// top of a detector's score or of a seeded random draw, one per near-duplicate cluster;
    /// every line for the upper bound.
    fn select(
        &self,
        arm: Arm,
        seed: u64,
        stream: &Table,
        by: Selectors,
    ) -> Result<Vec<(usize, f64)>> {
        let cfg = self.cfg;
        let n = stream.cmd.len();
        let allowed: Vec<bool> = stream
            .cmd
            .iter()
            .zip(&stream.label)
            .map(|(c, truth)| cfg.select.may_select(arm, c, *truth))
            .collect();
        // The score of every line an arm may not take replaced by `fill`.
        let fill_excluded = |mut score: Vec<f64>, fill: f64| -> Vec<f64> {
            for (s, ok) in score.iter_mut().zip(&allowed) {
                if !ok {
                    *s = fill;
                }
            }
            score
        };
        // Lines an arm may not take rank last, and are dropped if the budget still reaches
        // them.
        let masked = |score: Vec<f64>| fill_excluded(score, f64::MIN);
        // The cluster-based arms skip lines without a finite score: not even a cluster of
        // excluded lines may take a place in the budget.
        let excluded = |score: Vec<f64>| fill_excluded(score, f64::NAN);
        let keep = |picks: Vec<(usize, f64)>| -> Vec<(usize, f64)> {
            picks.into_iter().filter(|&(i, _)| allowed[i]).collect()
        };
        let anomaly = || -> Result<Vec<f64>> {
            let kind = arm.detector().expect("an arm with a detector");
            Ok(by
                .anomaly
                .ok_or_else(|| Error::runtime("anomaly arm without detector scores"))?
                .of(kind))
        };
        let baseline = || -> Result<&[f64]> {
            Ok(&by
                .baseline
                .ok_or_else(|| Error::runtime("classifier arm without the baseline's scores"))?
                .scores)
        };
        let score = match arm {
            Arm::OracleAll => return Ok(keep((0..n).map(|i| (i, 0.0)).collect())),
            Arm::Random => random_draw(n, seed),
            Arm::NovelRandom => {
                // The random control's draw, so the two arms differ only by the filter.
                let novel = outside_baseline_families(&stream.cmd, &self.baseline, seed)?;
                let score = masked(
                    random_draw(n, seed)
                        .into_iter()
                        .zip(&novel)
                        .map(|(r, &new)| if new { r } else { f64::MIN })
                        .collect(),
                );
                let picks = crate::select::select_top(
                    &stream.cmd,
                    &score,
                    cfg.select.budget,
                    cfg.select.near_dup_threshold,
                    seed,
                )?;
                return Ok(keep(
                    picks
                        .into_iter()
                        .filter(|&(i, _)| novel[i])
                        .map(|(i, _)| (i, score[i]))
                        .collect(),
                ));
            }
            Arm::Baseline => return Err(Error::runtime("the baseline arm selects nothing")),
            Arm::FpRisk => baseline()?.to_vec(),
            // Both ranks in (0, 1]: the product is high only where both are.
            Arm::AnomalyFp => crate::data::normalized_ranks(&anomaly()?)
                .into_iter()
                .zip(crate::data::normalized_ranks(baseline()?))
                .map(|(a, b)| a * b)
                .collect(),
            Arm::Representative => {
                let picks = densest_families(
                    &stream.cmd,
                    &excluded(anomaly()?),
                    &self.baseline,
                    cfg.select.budget,
                    seed,
                )?;
                return Ok(keep(picks));
            }
            Arm::Diversity => {
                let picks =
                    diverse_top(&stream.cmd, &excluded(anomaly()?), cfg.select.budget, seed)?;
                return Ok(keep(picks));
            }
            Arm::Autoencoder | Arm::Iforest | Arm::Combined => anomaly()?,
        };
        let score = masked(score);
        Ok(keep(
            crate::select::select_top(
                &stream.cmd,
                &score,
                cfg.select.budget,
                cfg.select.near_dup_threshold,
                seed,
            )?
            .into_iter()
            .map(|(i, _)| (i, score[i]))
            .collect(),
        ))
    }

    /// The labeler of `kind`: the oracle over the stream's truth, or the configured LLM (its
    /// server started on first use).
    fn labeler(
        &mut self,
        kind: LabelerKind,
        seed: u64,
        stream: &Table,
    ) -> Result<Box<dyn Labeler>> {
        let cfg = self.cfg;
        Ok(match kind {
            LabelerKind::Oracle => {
                let known = stream
                    .cmd
                    .iter()
                    .zip(&stream.label)
                    .filter_map(|(c, l)| l.map(|k| (c.clone(), k)))
                    .collect();
                let oracle = OracleLabeler::from_labels(
                    known,
                    "stream_truth",
                    cfg.label.oracle_benign_precision,
                    cfg.label.oracle_malicious_precision,
                    seed,
                )?;
                Box::new(match cfg.label.oracle_rates()? {
                    Some(r) => oracle.with_rates(r.benign_recall, r.malicious_leak)?,
                    None => oracle,
                })
            }
            LabelerKind::Llm => {
                let llm = cfg.label.llm.as_ref().expect("validated");
                if self.llm.is_none() && !llm.launch.is_empty() {
                    self.llm = Some(llm_server::LlmServer::start(
                        &llm.launch,
                        &llm.base_url,
                        std::time::Duration::from_secs(llm.ready_timeout_s),
                        &self.out.join("llm-server.log"),
                    )?);
                }
                let mut c = label::LlmConfig::new(&llm.base_url, &llm.model);
                if let Some(p) = &llm.prompt {
                    c.prompt = label::Prompt::load(p)?;
                }
                c.protocol = llm.protocol;
                c.server = llm.server;
                c.timeout = std::time::Duration::from_secs(llm.timeout_s);
                c.temperature = Some(if llm.samples > 1 { 0.7 } else { 0.0 });
                c.max_answer_tokens = Some(llm.max_answer_tokens);
                c.seed = Some(seed);
                Box::new(label::LlmLabeler::new(c)?)
            }
        })
    }

    /// What the labels bought, counted against the stream's truth and the baseline.
    fn tally(
        &self,
        selection: &[(usize, f64)],
        stream: &Table,
        results: &[LabelResult],
        propagated: &[(usize, usize)],
    ) -> LabelSummary {
        let truth: HashMap<&str, Option<Label>> = stream
            .cmd
            .iter()
            .map(String::as_str)
            .zip(stream.label.iter().copied())
            .collect();
        let mut summary = LabelSummary {
            spent: selection.len(),
            ..Default::default()
        };
        for &(i, _) in selection {
            *summary
                .selected_by_role
                .entry(stream.role[i].as_str().to_string())
                .or_default() += 1;
        }
        for r in results {
            match r.verdict {
                label::Verdict::Benign => summary.benign += 1,
                label::Verdict::Malicious => summary.malicious += 1,
                label::Verdict::Uncertain => summary.uncertain += 1,
                _ => summary.no_verdict += 1,
            }
            if !r.flags.is_empty() {
                summary.flagged += 1;
            }
            if r.feeds_augmentation() {
                summary.augmented += 1;
                summary.augmented_new += !self.baseline.contains(&r.cmd) as usize;
                match truth.get(r.cmd.as_str()).copied().flatten() {
                    Some(Label::Benign) => summary.augmented_truly_benign += 1,
                    Some(Label::Malicious) => summary.augmented_truly_malicious += 1,
                    None => {}
                }
            }
        }
        for &(i, _) in propagated {
            summary.propagated += 1;
            summary.augmented += 1;
            summary.augmented_new += !self.baseline.contains(&stream.cmd[i]) as usize;
            match stream.label[i] {
                Some(Label::Benign) => summary.augmented_truly_benign += 1,
                Some(Label::Malicious) => summary.augmented_truly_malicious += 1,
                None => {}
            }
        }
        summary
    }

    #[allow(clippy::too_many_arguments)]
    fn classifier_stage(
        &mut self,
        dir: &Path,
        key: String,
        augment: Option<&Path>,
        init: Option<&Path>,
        data: &DataOutputs,
        tables: &Tables,
        globals: &Globals,
        (seed, arm, labeler, labels): (u64, Arm, Option<LabelerKind>, Option<LabelSummary>),
    ) -> Result<ArmOutcome> {
        let model_dir = dir.join("classifier");
        let mut stage = Stage::new(
            format!(
                "seed {seed}: {}{} classifier",
                arm.as_str(),
                labeler
                    .map(|l| format!(" / {}", l.as_str()))
                    .unwrap_or_default()
            ),
            &model_dir,
            key,
        );
        let scores_path = model_dir.join("test_scores.json");
        let plan = stage.begin()?;
        if plan != Plan::Reuse {
            let train = [data.dir.join(datasets::BASELINE)];
            let augment: Vec<PathBuf> = augment.map(Path::to_path_buf).into_iter().collect();
            classify::train(
                &classify::TrainRequest {
                    config: &self.cfg.classifier,
                    train: &train,
                    augment: &augment,
                    init,
                    out: &model_dir,
                    resume: plan == Plan::Resume && model_dir.join("checkpoint").exists(),
                },
                globals,
            )?;
            let model = Classifier::load(&model_dir, globals)?;
            let score = |t: &Table| -> Vec<f64> {
                let lines: Vec<&str> = t.cmd.iter().map(String::as_str).collect();
                model.score(&lines, self.cfg.classifier.training.batch_tokens, |_| {})
            };
            let scores = TestScores {
                hard: score(&tables.hard),
                easy: score(&tables.easy),
                dev: score(&tables.dev),
                time: score(&tables.time),
                threshold: model.threshold.threshold,
            };
            table::write_atomic(
                &scores_path,
                serde_json::to_vec(&scores).expect("plain data").as_slice(),
            )?;
            stage.finish(serde_json::Value::Null)?;
        }
        let scores: TestScores = crate::io::read_json(&scores_path, "test scores")?;
        Ok(ArmOutcome {
            seed,
            arm,
            labeler,
            labels,
            hard_scores: scores.hard,
            easy_scores: scores.easy,
            dev_scores: scores.dev,
            time_scores: scores.time,
            threshold: scores.threshold,
            classifier_dir: model_dir,
        })
    }
}

/// `labels.parquet` (the candidates with their scores, truth, role and verdicts, for
/// inspection) and `augment.parquet` (the benign lines that join training).
fn write_label_tables(
    label_dir: &Path,
    selection: &[(usize, f64)],
    stream: &Table,
    results: &[LabelResult],
    propagated: &[(usize, usize)],
) -> Result<()> {
    let candidates = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("cmd", DataType::Utf8, false),
            Field::new("score", DataType::Float64, false),
            Field::new("truth", DataType::Utf8, false),
            Field::new("role", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                selection.iter().map(|&(i, _)| stream.cmd[i].as_str()),
            )) as ArrayRef,
            Arc::new(Float64Array::from_iter_values(
                selection.iter().map(|s| s.1),
            )),
            Arc::new(StringArray::from_iter_values(
                selection
                    .iter()
                    .map(|&(i, _)| Label::name_or_unknown(stream.label[i])),
            )),
            Arc::new(StringArray::from_iter_values(
                selection.iter().map(|&(i, _)| stream.role[i].as_str()),
            )),
        ],
    )
    .runtime_ctx(|| "building the candidates table")?;
    table::write_parquet(
        &label_dir.join("labels.parquet"),
        &label::output_batch(&candidates, results)?,
    )?;
    // Each added line with the labeled line whose verdict it carries (itself, unless it came
    // in by `propagate_to_family`), so that every propagated verdict can be audited.
    let augment: Vec<(&str, &str)> = results
        .iter()
        .filter(|r| r.feeds_augmentation())
        .map(|r| (r.cmd.as_str(), r.cmd.as_str()))
        .chain(
            propagated
                .iter()
                .map(|&(i, e)| (stream.cmd[i].as_str(), stream.cmd[e].as_str())),
        )
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("cmd", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("verdict_of", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(augment.iter().map(|a| a.0))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(
                augment.iter().map(|_| Label::Benign.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(augment.iter().map(|a| a.1))),
        ],
    )
    .runtime_ctx(|| "building the augmentation table")?;
    table::write_parquet(&label_dir.join("augment.parquet"), &batch)?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TestScores {
    hard: Vec<f64>,
    easy: Vec<f64>,
    #[serde(default)]
    dev: Vec<f64>,
    #[serde(default)]
    time: Vec<f64>,
    threshold: f64,
}

/// The datasets every seed reads: the stream (with its truth) and the two test sets.
struct Tables {
    stream: Table,
    hard: Table,
    easy: Table,
    /// The dev hard split; empty when the config has none.
    dev: Table,
    /// The time-split test; empty when the config has none.
    time: Table,
}

/// What the arms select with: the detectors' scores of the stream and the baseline
/// classifier's, each when some arm needs it.
#[derive(Clone, Copy)]
struct Selectors<'a> {
    anomaly: Option<&'a StreamScores>,
    baseline: Option<&'a BaselineScores>,
}

/// The baseline classifier's scores of the stream (probability of malicious).
struct BaselineScores {
    /// The baseline classifier stage's key, which names these scores in downstream keys.
    key: String,
    scores: Vec<f64>,
}

/// Coarse near-duplicate clusters (estimated Jaccard >= 0.5 on byte shingles): families of
/// one command with other arguments, looser than deduplication (0.8). The cluster arms select
/// by them and the report measures coverage with them.
pub(crate) fn coarse_clusters(texts: &[&str], seed: u64) -> Result<Vec<u32>> {
    crate::data::near_duplicate_clusters(
        texts,
        &crate::data::MinHashConfig {
            threshold: report::COVERAGE_JACCARD,
            seed,
            progress: false,
            ..Default::default()
        },
    )
}

/// The random control's draw: one uniform number per stream line, by seed.
fn random_draw(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0fc0_4701);
    (0..n).map(|_| rng.random::<f64>()).collect()
}

/// Which stream lines fall in a coarse cluster (estimated Jaccard >= 0.5) holding no line of
/// the baseline: the families of the stream that the baseline lacks.
fn outside_baseline_families(
    cmds: &[String],
    baseline: &std::collections::HashSet<String>,
    seed: u64,
) -> Result<Vec<bool>> {
    let texts: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let clusters = coarse_clusters(&texts, seed)?;
    let known: std::collections::HashSet<u32> = clusters
        .iter()
        .zip(cmds)
        .filter(|(_, c)| baseline.contains(*c))
        .map(|(&k, _)| k)
        .collect();
    Ok(clusters.iter().map(|k| !known.contains(k)).collect())
}

/// The dense families of the stream the baseline lacks: coarse clusters (estimated Jaccard
/// at least 0.5) holding no `baseline` line, largest first (ties: the higher best score),
/// and of each its highest-scoring line, until `budget` lines.
fn densest_families(
    cmds: &[String],
    score: &[f64],
    baseline: &std::collections::HashSet<String>,
    budget: usize,
    seed: u64,
) -> Result<Vec<(usize, f64)>> {
    let texts: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let clusters = coarse_clusters(&texts, seed)?;
    // Per cluster: size, whether the baseline has a line of it, and its best line.
    let mut families: HashMap<u32, (usize, bool, Option<usize>)> = HashMap::new();
    for (i, &c) in clusters.iter().enumerate() {
        let f = families.entry(c).or_insert((0, false, None));
        f.0 += 1;
        f.1 |= baseline.contains(&cmds[i]);
        if score[i].is_finite() && f.2.is_none_or(|b| score[i] > score[b]) {
            f.2 = Some(i);
        }
    }
    let mut picks: Vec<(usize, usize)> = families
        .into_values()
        .filter(|f| !f.1)
        .filter_map(|(size, _, best)| Some((size, best?)))
        .collect();
    picks.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(score[b.1].total_cmp(&score[a.1]))
            .then(a.1.cmp(&b.1))
    });
    picks.truncate(budget);
    Ok(picks.into_iter().map(|(_, i)| (i, score[i])).collect())
}

/// The lines a benign verdict extends to under `propagate_to_family`, each with the stream
/// index of the labeled line whose verdict it carries: every line the arm may select
/// (`allowed`) of a coarse family (estimated Jaccard >= 0.5) in which some selected line fed
/// augmentation and none was judged malicious or flagged, minus the selected lines.
fn family_members(
    cmds: &[String],
    selection: &[(usize, f64)],
    results: &[LabelResult],
    allowed: impl Fn(usize) -> bool,
    seed: u64,
) -> Result<Vec<(usize, usize)>> {
    if selection.len() != results.len() {
        return Err(Error::runtime(format!(
            "{} verdicts for {} selected lines: delete the arm's labels folder and rerun",
            results.len(),
            selection.len()
        )));
    }
    let texts: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let clusters = coarse_clusters(&texts, seed)?;
    let mut exemplar: HashMap<u32, usize> = HashMap::new();
    let mut refused = std::collections::HashSet::new();
    for (&(i, _), r) in selection.iter().zip(results) {
        if r.feeds_augmentation() {
            exemplar.entry(clusters[i]).or_insert(i);
        } else if r.verdict == label::Verdict::Malicious || !r.flags.is_empty() {
            refused.insert(clusters[i]);
        }
    }
    let selected: std::collections::HashSet<usize> = selection.iter().map(|s| s.0).collect();
    Ok((0..cmds.len())
        .filter(|i| !selected.contains(i) && !refused.contains(&clusters[*i]) && allowed(*i))
        .filter_map(|i| Some((i, *exemplar.get(&clusters[i])?)))
        .collect())
}

/// Coverage instead of the top of one score: the stream's lines grouped into coarse clusters
/// (estimated Jaccard >= 0.5), the highest-scoring line of each cluster, clusters taken in
/// order of that score until `budget` lines.
fn diverse_top(
    cmds: &[String],
    score: &[f64],
    budget: usize,
    seed: u64,
) -> Result<Vec<(usize, f64)>> {
    let texts: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let clusters = coarse_clusters(&texts, seed)?;
    let mut best: HashMap<u32, usize> = HashMap::new();
    for (i, &c) in clusters.iter().enumerate() {
        if !score[i].is_finite() {
            continue;
        }
        let e = best.entry(c).or_insert(i);
        if score[i] > score[*e] {
            *e = i;
        }
    }
    let mut picks: Vec<usize> = best.into_values().collect();
    picks.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    picks.truncate(budget);
    Ok(picks.into_iter().map(|i| (i, score[i])).collect())
}

/// The stream's anomaly scores, aligned with the stream table.
pub struct StreamScores {
    key: String,
    autoencoder: Option<Vec<f64>>,
    iforest: Option<Vec<f64>>,
}

impl StreamScores {
    /// `key`: the scores stage's key, which names these scores in downstream keys.
    fn read(path: &Path, stream: &Table, key: String) -> Result<Self> {
        let mut cmd = Vec::new();
        let (mut ae, mut forest) = (Vec::new(), Vec::new());
        for batch in table::read_parquet(path)? {
            cmd.extend(table::strings(&batch, "cmd", path)?);
            if table::has_column(&batch, "ae_score") {
                ae.extend(table::numbers(&batch, "ae_score", path)?);
            }
            if table::has_column(&batch, "iforest_score") {
                forest.extend(table::numbers(&batch, "iforest_score", path)?);
            }
        }
        if cmd.len() != stream.cmd.len()
            || cmd
                .iter()
                .zip(&stream.cmd)
                .any(|(a, b)| a.as_deref() != Some(b))
        {
            return Err(Error::runtime(format!(
                "{} does not match the stream; delete its folder and rerun",
                path.display()
            )));
        }
        let usable =
            |v: Vec<f64>| (v.len() == cmd.len() && v.iter().all(|x| x.is_finite())).then_some(v);
        Ok(StreamScores {
            key,
            autoencoder: usable(ae),
            iforest: usable(forest),
        })
    }

    /// Scores of one detector kind (combined = mean of normalised ranks).
    fn of(&self, kind: DetectorKind) -> Vec<f64> {
        match kind {
            DetectorKind::Autoencoder => self.autoencoder.clone().expect("trained for this arm"),
            DetectorKind::Iforest => self.iforest.clone().expect("trained for this arm"),
            DetectorKind::Combined => crate::data::mean_rank_fusion(&[
                self.autoencoder.as_deref().expect("trained"),
                self.iforest.as_deref().expect("trained"),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a family of `n` lines, `line(i)` scored `score(i)`.
    fn family(
        cmds: &mut Vec<String>,
        scores: &mut Vec<f64>,
        n: usize,
        line: impl Fn(usize) -> String,
        score: impl Fn(usize) -> f64,
    ) {
        cmds.extend((0..n).map(line));
        scores.extend((0..n).map(score));
    }

    fn choco(i: usize) -> String {
        format!("choco install googlechrome --version 120.0.{i} -y --no-progress")
    }

    fn docker(i: usize) -> String {
        format!("docker run --rm -v /srv/data:/data alpine:3.{i} tar -czf /data/b.tgz /etc")
    }

    #[test]
    fn diversity_takes_the_best_line_of_each_cluster_in_score_order() {
        let mut cmds = Vec::new();
        let mut score = Vec::new();
        // Two families of near-identical lines and two loners.
        family(&mut cmds, &mut score, 5, choco, |i| 0.9 - i as f64 * 0.01);
        family(&mut cmds, &mut score, 5, docker, |i| 0.5 + i as f64 * 0.01);
        cmds.push("Get-ChildItem -Recurse C:\\Windows\\Temp | Remove-Item -Force".into());
        score.push(0.7);
        cmds.push("ls".into());
        score.push(f64::NAN);
        let picked = diverse_top(&cmds, &score, 10, 1).unwrap();
        let idx: Vec<usize> = picked.iter().map(|p| p.0).collect();
        // One line per family (its best), the loner between them; the NaN line never.
        assert_eq!(idx, vec![0, 10, 9], "{picked:?}");
        assert_eq!(diverse_top(&cmds, &score, 2, 1).unwrap().len(), 2);
    }

    #[test]
    fn representative_takes_the_largest_families_the_baseline_lacks() {
        let mut cmds = Vec::new();
        let mut score = Vec::new();
        // Three families of 6, 4 and 3 near-identical lines, and a loner with the top score.
        let configure =
            |i| format!("./configure --prefix=/mingw64 --enable-shared --disable-static pkg-1.{i}");
        family(&mut cmds, &mut score, 6, configure, |i| {
            0.1 + i as f64 * 0.01
        });
        family(&mut cmds, &mut score, 4, choco, |_| 0.3);
        family(&mut cmds, &mut score, 3, docker, |i| 0.2 + i as f64 * 0.01);
        cmds.push("Get-ChildItem -Recurse C:\\Windows\\Temp | Remove-Item -Force".into());
        score.push(0.99);
        let none = std::collections::HashSet::new();
        let picked = densest_families(&cmds, &score, &none, 3, 1).unwrap();
        let idx: Vec<usize> = picked.iter().map(|p| p.0).collect();
        // Largest first, each family's best line; the loner does not make the budget.
        assert_eq!(idx, vec![5, 6, 12], "{picked:?}");
        // A family the baseline already has is skipped.
        let known: std::collections::HashSet<String> = [cmds[7].clone()].into();
        let idx: Vec<usize> = densest_families(&cmds, &score, &known, 3, 1)
            .unwrap()
            .iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(idx, vec![5, 12, 13]);
    }

    fn verdict(cmd: &str, verdict: label::Verdict) -> LabelResult {
        LabelResult {
            cmd: cmd.into(),
            verdict,
            explanation: None,
            model: "oracle".into(),
            prompt_version: "oracle".into(),
            latency_ms: 0,
            tokens: 0,
            attempts: 0,
            error: None,
            flags: vec![],
            flag_reason: None,
            cached: 0,
            p_benign: None,
        }
    }

    #[test]
    fn a_benign_verdict_covers_its_family_unless_a_line_of_it_was_judged_malicious() {
        use label::Verdict::*;
        let mut cmds = Vec::new();
        let mut score = Vec::new();
        family(&mut cmds, &mut score, 5, choco, |_| 0.0); // 0..5
        family(&mut cmds, &mut score, 4, docker, |_| 0.0); // 5..9
        let configure =
            |i| format!("./configure --prefix=/mingw64 --enable-shared --disable-static pkg-1.{i}");
        family(&mut cmds, &mut score, 3, configure, |_| 0.0); // 9..12
        cmds.push("Get-ChildItem -Recurse C:\\Windows\\Temp | Remove-Item -Force".into());
        // choco: one benign verdict, one line not allowed (skip_placeholders, say);
        // docker: benign and malicious verdicts, so nothing; configure: no verdict.
        let selection = [(1, 0.0), (5, 0.0), (6, 0.0), (10, 0.0), (12, 0.0)];
        let results: Vec<LabelResult> = [
            (1, Benign),
            (5, Benign),
            (6, Malicious),
            (10, Skipped),
            (12, Benign),
        ]
        .iter()
        .map(|&(i, v)| verdict(&cmds[i], v))
        .collect();
        let members = family_members(&cmds, &selection, &results, |i| i != 3, 1).unwrap();
        assert_eq!(members, vec![(0, 1), (2, 1), (4, 1)]);
        // A flagged benign verdict refuses its family too.
        let mut flagged = results.clone();
        flagged[0].flags = vec![crate::vocab::Flag::Injection];
        assert!(
            family_members(&cmds, &selection, &flagged, |_| true, 1)
                .unwrap()
                .is_empty()
        );
        // Verdicts out of step with the selection: an error, not a guess.
        assert!(family_members(&cmds, &selection, &results[..2], |_| true, 1).is_err());
    }

    #[test]
    fn novel_lines_are_those_of_families_without_a_baseline_line() {
        let mut cmds = Vec::new();
        let mut score = Vec::new();
        family(&mut cmds, &mut score, 5, choco, |_| 0.0);
        family(&mut cmds, &mut score, 5, docker, |_| 0.0);
        cmds.push("Get-ChildItem -Recurse C:\\Windows\\Temp | Remove-Item -Force".into());
        // The baseline holds one docker line: its whole family is known, the rest is new.
        let known: std::collections::HashSet<String> = [cmds[7].clone()].into();
        let novel = outside_baseline_families(&cmds, &known, 1).unwrap();
        let expected: Vec<bool> = (0..cmds.len()).map(|i| !(5..10).contains(&i)).collect();
        assert_eq!(novel, expected);
        let none = std::collections::HashSet::new();
        assert!(
            outside_baseline_families(&cmds, &none, 1)
                .unwrap()
                .iter()
                .all(|&n| n)
        );
    }
}
