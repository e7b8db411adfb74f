//! Calibrating the benign threshold of the scored verdict on a labeled sample.
//!
//! The method relies on benign verdicts being nearly always right, so the threshold is chosen
//! for a lower confidence bound on benign precision, not for a point estimate:
//! - per threshold of a grid fixed in advance (never taken from the data): benign recall
//!   R = P(pass | benign) and malicious leak rate L = P(pass | malicious), where a line
//!   *passes* if its `p_benign` is at or above the threshold and it has no flag (what would
//!   feed augmentation), each with a Clopper-Pearson interval;
//! - precision at a stated malicious share s among the candidates:
//!   (1 - s) R / ((1 - s) R + s L), and its lower bound from R's lower and L's upper
//!   one-sided bounds at (1 - confidence) / 2 each (Bonferroni: both hold together with
//!   probability at least `confidence`; precision rises with R and falls with L);
//! - fixed-sequence testing: from the highest threshold down, each tested at the full level,
//!   stopping at the first whose bound is below the target; the threshold is the lowest one
//!   that passed. Testing starts at the highest threshold that at least `min_support` lines
//!   reach (a count of lines, not of labels, so the order stays fixed before the labels are
//!   looked at): above it no bound could reach the target and the sequence would stop at once.
//!
//! Lines without a score (unparsed) count in their class and never pass; lines without an
//! answer (error, skipped) are left out.

use super::engine::LabelResult;
use super::{LabelerInfo, Verdict};
use crate::error::{Context, Error, Result};
use crate::evaluate::plot::{Histogram, Marker, histogram_svg};
use crate::vocab::{Label, LabelProtocol};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The `format` of calibration files this version reads and writes.
pub const CALIBRATION_FORMAT: &str = "longtail-label-calibration/1";

/// Thresholds tested, highest first: fixed in advance, dense where LLM scores pile up, near 1
/// *and* near 0. A small model biased toward one word puts every score at one end (measured:
/// Qwen2.5-Coder-1.5B, direct protocol, gave every line p_benign under 0.2), yet its ranking
/// may still separate the classes; the low end lets such a model be calibrated at all.
const GRID: [f64; 32] = [
    0.99999, 0.9999, 0.9995, 0.999, 0.998, 0.995, 0.99, 0.98, 0.97, 0.95, 0.9, 0.85, 0.8, 0.75,
    0.7, 0.65, 0.6, 0.55, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005,
    0.0001, 0.00001,
];

/// Bin edges of the reliability table.
const RELIABILITY_EDGES: [f64; 11] = [0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999, 1.0];

/// What a threshold was fitted for: a threshold does not transfer to another model, prompt,
/// protocol or number of samples (their scores are distributed differently).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationScope {
    pub model: String,
    pub prompt_version: String,
    /// The prompt's hash for this protocol (see `Prompt::fingerprint_for`).
    pub prompt_fingerprint: String,
    pub protocol: LabelProtocol,
    /// Samples per line (`p_benign` is their mean).
    pub samples: u32,
}

impl CalibrationScope {
    pub fn of(info: &LabelerInfo, samples: u32) -> CalibrationScope {
        CalibrationScope {
            model: info.model.clone(),
            prompt_version: info.prompt_version.clone(),
            prompt_fingerprint: info.prompt_fingerprint.clone(),
            protocol: info.protocol,
            samples,
        }
    }

    fn describe(&self) -> String {
        format!(
            "model `{}`, prompt {} (hash {}), protocol {}, {} sample(s)",
            self.model,
            self.prompt_version,
            self.prompt_fingerprint
                .get(..8)
                .unwrap_or(&self.prompt_fingerprint),
            self.protocol,
            self.samples
        )
    }
}

/// How to fit the threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationRequest {
    /// Benign precision the threshold must reach (its lower bound must), in (0, 1).
    pub target_precision: f64,
    /// Confidence of the bounds, in (0, 1).
    pub confidence: f64,
    /// Share of malicious lines among the candidates the threshold will be used on; `None`:
    /// the sample's own share.
    pub malicious_share: Option<f64>,
    /// Lines (of any class) a threshold must pass before testing starts.
    pub min_support: usize,
}

impl Default for CalibrationRequest {
    fn default() -> Self {
        CalibrationRequest {
            target_precision: 0.98,
            confidence: 0.95,
            malicious_share: None,
            min_support: 30,
        }
    }
}

/// What the fixed-sequence test said about one threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestOutcome {
    Passed,
    Failed,
    /// Fewer than `min_support` lines pass it: testing had not started.
    TooFewLines,
    /// A higher threshold failed: the sequence had stopped.
    AfterFailure,
}

impl TestOutcome {
    fn as_str(self) -> &'static str {
        match self {
            TestOutcome::Passed => "passed",
            TestOutcome::Failed => "**failed**: stop",
            TestOutcome::TooFewLines => "not tested (too few lines)",
            TestOutcome::AfterFailure => "not tested (stopped)",
        }
    }
}

/// One threshold of the grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRow {
    pub threshold: f64,
    /// Labeled lines that pass: score at or above the threshold, no flag.
    pub passing: usize,
    pub benign_passing: usize,
    pub malicious_passing: usize,
    pub benign_recall: f64,
    pub benign_recall_ci: [f64; 2],
    pub malicious_leak: f64,
    pub malicious_leak_ci: [f64; 2],
    /// Precision at the malicious share (`None`: nothing passes).
    pub precision: Option<f64>,
    /// Its lower bound (from the recall's lower and the leak's upper bound).
    pub precision_lower: f64,
    pub test: TestOutcome,
}

/// One bin of the reliability table: how often lines scored in it are truly benign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub lines: usize,
    pub mean_p_benign: Option<f64>,
    pub benign_share: Option<f64>,
    pub benign_share_ci: [f64; 2],
}

/// The lines the calibration used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleCounts {
    /// Rows of the sample.
    pub rows: usize,
    /// Labeled rows with an answer: the calibration set.
    pub benign: usize,
    pub malicious: usize,
    /// Of those, lines without a score (never benign).
    pub unscored: usize,
    /// Of those, flagged lines (never benign).
    pub flagged: usize,
    /// Labeled rows without an answer (error, skipped): left out.
    pub no_answer: usize,
    /// Rows without a benign/malicious label: left out.
    pub unlabeled: usize,
}

/// A fitted threshold, what it was fitted for and the evidence: the calibration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub format: String,
    /// The lowest grid threshold that passed; `None`: none did (nothing may be benign).
    pub benign_threshold: Option<f64>,
    pub fitted_for: CalibrationScope,
    pub target_precision: f64,
    pub confidence: f64,
    pub malicious_share: f64,
    /// Whether the share was stated (`--malicious-share`) or the sample's own.
    pub malicious_share_stated: bool,
    pub min_support: usize,
    pub sample: SampleCounts,
    /// AUROC of `p_benign` for benign against malicious, on the scored lines.
    pub auroc: Option<f64>,
    pub thresholds: Vec<ThresholdRow>,
    pub reliability: Vec<ReliabilityBin>,
    pub created_by: String,
    /// `(p_benign, malicious)` of the scored lines, for the chart (not in the file).
    #[serde(skip)]
    scores: Vec<(f64, bool)>,
}

/// A two-sided Clopper-Pearson interval for `x` successes in `n` at `confidence`.
pub fn clopper_pearson(x: usize, n: usize, confidence: f64) -> [f64; 2] {
    let tail = (1.0 - confidence) / 2.0;
    [cp_lower(x, n, tail), cp_upper(x, n, tail)]
}

/// One-sided lower bound: P(X >= x | p) = tail.
fn cp_lower(x: usize, n: usize, tail: f64) -> f64 {
    if x == 0 || n == 0 {
        0.0
    } else {
        beta_quantile(tail, x as f64, (n - x) as f64 + 1.0)
    }
}

/// One-sided upper bound: P(X <= x | p) = tail.
fn cp_upper(x: usize, n: usize, tail: f64) -> f64 {
    if x >= n {
        1.0
    } else {
        beta_quantile(1.0 - tail, x as f64 + 1.0, (n - x) as f64)
    }
}

/// Precision at malicious share `s` from recall `r` and leak rate `l`.
fn precision_at(share: f64, r: f64, l: f64) -> Option<f64> {
    let good = (1.0 - share) * r;
    let all = good + share * l;
    (all > 0.0).then(|| good / all)
}

/// Check the input of a calibration run before asking anything: it needs a `label` column.
pub fn require_label_column(path: &Path) -> Result<()> {
    let reader = crate::io::table::open_parquet(path, 1)?;
    let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
    if schema.field_with_name("label").is_err() {
        return Err(Error::input(format!(
            "--calibrate needs a `label` column (benign/malicious) in {}: calibrate on a sample \
             labeled by hand or from a labeled corpus",
            path.display()
        )));
    }
    Ok(())
}

/// Fit the benign threshold on labeled `results` (`truth` in the same order).
pub fn calibrate(
    results: &[LabelResult],
    truth: &[Option<Label>],
    scope: CalibrationScope,
    req: &CalibrationRequest,
) -> Result<Calibration> {
    let open = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
    for (name, v) in [
        ("--target-precision", req.target_precision),
        ("--confidence", req.confidence),
    ] {
        if !open(v) {
            return Err(Error::input(format!("{name} must be in (0, 1), got {v}")));
        }
    }
    if let Some(s) = req.malicious_share.filter(|s| !open(*s)) {
        return Err(Error::input(format!(
            "--malicious-share must be in (0, 1), got {s}"
        )));
    }
    if req.min_support == 0 {
        return Err(Error::input("--min-support must be at least 1"));
    }
    if !scope.protocol.is_scored() {
        return Err(Error::input(
            "calibration needs a score: use --protocol scored or --protocol direct",
        ));
    }
    if truth.len() != results.len() {
        return Err(Error::input(
            "the calibration sample has no `label` column: calibrate on a labeled sample",
        ));
    }
    let mut sample = SampleCounts {
        rows: results.len(),
        ..SampleCounts::default()
    };
    // (passes-at score, malicious): `None` score = never passes.
    let mut lines: Vec<(Option<f64>, bool)> = Vec::new();
    let mut scores: Vec<(f64, bool)> = Vec::new();
    for (r, t) in results.iter().zip(truth) {
        let Some(label) = t else {
            sample.unlabeled += 1;
            continue;
        };
        if matches!(r.verdict, Verdict::Error | Verdict::Skipped) {
            sample.no_answer += 1;
            continue;
        }
        let malicious = label.is_malicious();
        if malicious {
            sample.malicious += 1;
        } else {
            sample.benign += 1;
        }
        if let Some(p) = r.p_benign {
            scores.push((p, malicious));
        } else {
            sample.unscored += 1;
        }
        if !r.flags.is_empty() {
            sample.flagged += 1;
        }
        lines.push((r.p_benign.filter(|_| r.flags.is_empty()), malicious));
    }
    let (nb, nm) = (sample.benign, sample.malicious);
    if nb == 0 || nm == 0 {
        return Err(Error::input(format!(
            "the calibration sample needs benign and malicious lines with an answer; it has \
             {nb} benign and {nm} malicious ({} without an answer, {} unlabeled)",
            sample.no_answer, sample.unlabeled
        )));
    }
    let share = req.malicious_share.unwrap_or(nm as f64 / (nb + nm) as f64);
    let tail = (1.0 - req.confidence) / 2.0;
    let mut thresholds = Vec::with_capacity(GRID.len());
    let mut started = false;
    let mut stopped = false;
    let mut chosen = None;
    for t in GRID {
        let passes = |malicious: bool| {
            lines
                .iter()
                .filter(|(p, m)| *m == malicious && p.is_some_and(|p| p >= t))
                .count()
        };
        let (b, m) = (passes(false), passes(true));
        let (r, l) = (b as f64 / nb as f64, m as f64 / nm as f64);
        let precision_lower =
            precision_at(share, cp_lower(b, nb, tail), cp_upper(m, nm, tail)).unwrap_or(0.0);
        started |= b + m >= req.min_support;
        let test = if !started {
            TestOutcome::TooFewLines
        } else if stopped {
            TestOutcome::AfterFailure
        } else if precision_lower >= req.target_precision {
            chosen = Some(t);
            TestOutcome::Passed
        } else {
            stopped = true;
            TestOutcome::Failed
        };
        thresholds.push(ThresholdRow {
            threshold: t,
            passing: b + m,
            benign_passing: b,
            malicious_passing: m,
            benign_recall: r,
            benign_recall_ci: [cp_lower(b, nb, tail), cp_upper(b, nb, tail)],
            malicious_leak: l,
            malicious_leak_ci: [cp_lower(m, nm, tail), cp_upper(m, nm, tail)],
            precision: precision_at(share, r, l),
            precision_lower,
            test,
        });
    }
    let auroc = {
        let benign_first: Vec<f64> = scores.iter().map(|(p, _)| 1.0 - p).collect();
        let malicious: Vec<bool> = scores.iter().map(|(_, m)| *m).collect();
        let both = malicious.iter().any(|m| *m) && malicious.iter().any(|m| !*m);
        both.then(|| crate::evaluate::roc_auc(&benign_first, &malicious).ok())
            .flatten()
    };
    Ok(Calibration {
        format: CALIBRATION_FORMAT.to_string(),
        benign_threshold: chosen,
        fitted_for: scope,
        target_precision: req.target_precision,
        confidence: req.confidence,
        malicious_share: share,
        malicious_share_stated: req.malicious_share.is_some(),
        min_support: req.min_support,
        sample,
        auroc,
        thresholds,
        reliability: reliability(&scores, req.confidence),
        created_by: concat!("longtail ", env!("CARGO_PKG_VERSION")).to_string(),
        scores,
    })
}

fn reliability(scores: &[(f64, bool)], confidence: f64) -> Vec<ReliabilityBin> {
    RELIABILITY_EDGES
        .windows(2)
        .enumerate()
        .map(|(i, edge)| {
            let (lo, hi) = (edge[0], edge[1]);
            let last = i + 2 == RELIABILITY_EDGES.len();
            let inside: Vec<&(f64, bool)> = scores
                .iter()
                .filter(|(p, _)| *p >= lo && (*p < hi || (last && *p <= hi)))
                .collect();
            let n = inside.len();
            let benign = inside.iter().filter(|(_, m)| !*m).count();
            ReliabilityBin {
                lo,
                hi,
                lines: n,
                mean_p_benign: (n > 0)
                    .then(|| inside.iter().map(|(p, _)| p).sum::<f64>() / n as f64),
                benign_share: (n > 0).then(|| benign as f64 / n as f64),
                benign_share_ci: clopper_pearson(benign, n, confidence),
            }
        })
        .collect()
}

impl Calibration {
    /// Read a calibration file (`--calibration FILE`).
    pub fn load(path: &Path) -> Result<Calibration> {
        let cal: Calibration = crate::io::read_json(
            path,
            "a calibration written by `longtail label --calibrate`",
        )?;
        if cal.format != CALIBRATION_FORMAT {
            return Err(Error::input(format!(
                "{} is a calibration of format {:?}, this version reads {CALIBRATION_FORMAT:?}: \
                 calibrate again with this version",
                path.display(),
                cal.format
            )));
        }
        if let Some(t) = cal.benign_threshold
            && !(t.is_finite() && t > 0.0 && t < 1.0)
        {
            return Err(Error::input(format!(
                "{}: benign_threshold must be in (0, 1), got {t}",
                path.display()
            )));
        }
        Ok(cal)
    }

    /// The threshold to use for a run of `scope`, or why not (another setup, no threshold).
    pub fn threshold_for(&self, scope: &CalibrationScope, path: &Path) -> Result<f64> {
        if &self.fitted_for != scope {
            return Err(Error::input(format!(
                "calibration {} was fitted for {}; this run uses {}. A threshold does not \
                 transfer between models, prompts, protocols or sample counts: fit one for this \
                 setup with `longtail label SAMPLE -o OUT --calibrate FILE` on a labeled sample, \
                 or pass --benign-threshold",
                path.display(),
                self.fitted_for.describe(),
                scope.describe()
            )));
        }
        self.benign_threshold.ok_or_else(|| {
            Error::input(format!(
                "calibration {} found no threshold whose {:.0}% lower bound on benign precision \
                 reaches {} at a malicious share of {}: with this setup nothing may be labeled \
                 benign at that target. Calibrate on a larger sample (the bounds tighten), \
                 lower --target-precision, or try a better model or prompt",
                path.display(),
                self.confidence * 100.0,
                self.target_precision,
                self.malicious_share
            ))
        })
    }

    /// The row of the chosen threshold.
    pub fn chosen(&self) -> Option<&ThresholdRow> {
        let t = self.benign_threshold?;
        self.thresholds.iter().find(|r| r.threshold == t)
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let auroc = self.auroc.map_or("n/a".to_string(), |a| format!("{a:.3}"));
        match self.chosen() {
            Some(row) => format!(
                "calibration: benign threshold {} (benign recall {:.3}, malicious leak {:.4}, \
                 benign precision >= {:.4} at {:.0}% confidence, malicious share {}); AUROC \
                 {auroc}",
                row.threshold,
                row.benign_recall,
                row.malicious_leak,
                row.precision_lower,
                self.confidence * 100.0,
                fmt_share(self.malicious_share)
            ),
            None => format!(
                "calibration: no threshold reaches benign precision {} at {:.0}% confidence \
                 (malicious share {}); AUROC {auroc}",
                self.target_precision,
                self.confidence * 100.0,
                fmt_share(self.malicious_share)
            ),
        }
    }

    /// The Markdown report.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let pct = self.confidence * 100.0;
        let share_source = if self.malicious_share_stated {
            "stated"
        } else {
            "the sample's own; state the candidates' share with --malicious-share"
        };
        let s = &self.sample;
        let _ = writeln!(md, "# Labeler calibration\n");
        let _ = writeln!(md, "Fitted for {}.\n", self.fitted_for.describe());
        let _ = writeln!(
            md,
            "Sample: {} labeled lines with an answer ({} benign, {} malicious); {} without a \
             score and {} flagged (they never pass); {} without an answer and {} unlabeled \
             left out.\n",
            s.benign + s.malicious,
            s.benign,
            s.malicious,
            s.unscored,
            s.flagged,
            s.no_answer,
            s.unlabeled
        );
        let _ = writeln!(
            md,
            "AUROC of p_benign (benign against malicious, scored lines): {}.\n",
            self.auroc.map_or("n/a".into(), |a| format!("{a:.4}"))
        );
        match self.chosen() {
            Some(row) => {
                let _ = writeln!(
                    md,
                    "**Benign threshold: {}.** The lowest threshold whose {pct:.0}% lower bound \
                     on benign precision stays at or above {} at a malicious share of {} ({}), \
                     testing from the highest threshold down and stopping at the first failure \
                     (fixed-sequence testing). There: benign recall {:.3} [{:.3}, {:.3}], \
                     malicious leak rate {:.4} [{:.4}, {:.4}], precision {} (lower bound {:.4}).\n",
                    row.threshold,
                    self.target_precision,
                    fmt_share(self.malicious_share),
                    share_source,
                    row.benign_recall,
                    row.benign_recall_ci[0],
                    row.benign_recall_ci[1],
                    row.malicious_leak,
                    row.malicious_leak_ci[0],
                    row.malicious_leak_ci[1],
                    row.precision.map_or("n/a".into(), |p| format!("{p:.4}")),
                    row.precision_lower
                );
                let _ = writeln!(
                    md,
                    "Use it with `longtail label ... --calibration FILE` (same model, prompt, \
                     protocol and --samples; anything else is refused).\n"
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "**No threshold qualifies:** no tested threshold has a {pct:.0}% lower bound \
                     on benign precision of at least {} at a malicious share of {} ({}). A \
                     labeler with this setup may not feed augmentation at that target; a \
                     larger sample tightens the bounds.\n",
                    self.target_precision,
                    fmt_share(self.malicious_share),
                    share_source
                );
            }
        }
        let _ = writeln!(md, "## Per threshold\n");
        let _ = writeln!(
            md,
            "A line passes a threshold if its p_benign is at or above it and it has no flag. \
             Intervals are Clopper-Pearson at {pct:.0}% (two-sided); the precision bound \
             combines the recall's lower and the leak's upper end. Testing starts at the first \
             threshold at least {} lines pass.\n",
            self.min_support
        );
        let _ = writeln!(
            md,
            "| threshold | lines passing | benign | malicious | benign recall [{pct:.0}% CI] \
             | malicious leak [{pct:.0}% CI] | precision at share {} | lower bound | test |",
            fmt_share(self.malicious_share)
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---|---|---:|---:|---|");
        for r in &self.thresholds {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} [{:.3}, {:.3}] | {:.4} [{:.4}, {:.4}] | {} | {:.4} \
                 | {} |",
                r.threshold,
                r.passing,
                r.benign_passing,
                r.malicious_passing,
                r.benign_recall,
                r.benign_recall_ci[0],
                r.benign_recall_ci[1],
                r.malicious_leak,
                r.malicious_leak_ci[0],
                r.malicious_leak_ci[1],
                r.precision.map_or("n/a".into(), |p| format!("{p:.4}")),
                r.precision_lower,
                r.test.as_str()
            );
        }
        let _ = writeln!(md, "\n## Reliability\n");
        let _ = writeln!(
            md,
            "How often lines scored in each range are truly benign (the sample's mix; a \
             calibrated score has a benign share close to its mean p_benign).\n"
        );
        let _ = writeln!(
            md,
            "| p_benign | lines | mean p_benign | benign share [{pct:.0}% CI] |"
        );
        let _ = writeln!(md, "|---|---:|---:|---|");
        for b in &self.reliability {
            let close = if b.hi >= 1.0 { "]" } else { ")" };
            let _ = writeln!(
                md,
                "| [{}, {}{close} | {} | {} | {} |",
                b.lo,
                b.hi,
                b.lines,
                b.mean_p_benign.map_or("".into(), |p| format!("{p:.4}")),
                b.benign_share.map_or("".into(), |p| format!(
                    "{p:.3} [{:.3}, {:.3}]",
                    b.benign_share_ci[0], b.benign_share_ci[1]
                ))
            );
        }
        md
    }

    /// Histogram of p_benign per class with the threshold, when there are scores.
    pub fn svg(&self) -> Option<String> {
        if self.scores.is_empty() {
            return None;
        }
        let p: Vec<f64> = self.scores.iter().map(|(p, _)| *p).collect();
        let m: Vec<bool> = self.scores.iter().map(|(_, m)| *m).collect();
        let hist = Histogram::new(&p, &m, 20).ok()?;
        let markers: Vec<Marker> = self
            .benign_threshold
            .map(|t| Marker {
                label: format!("benign threshold {t}"),
                score: t,
            })
            .into_iter()
            .collect();
        Some(histogram_svg(
            &format!("p_benign by class ({})", self.fitted_for.model),
            &hist,
            &markers,
        ))
    }

    /// Write the calibration (`path`, JSON), the report (`.md` beside it) and the chart
    /// (`.svg`, when there are scores); the paths written.
    pub fn write(&self, path: &Path) -> Result<Vec<PathBuf>> {
        if path.extension().is_some_and(|e| e == "md" || e == "svg") {
            return Err(Error::input(format!(
                "--calibrate {}: give the JSON file a .json name; the report and chart go \
                 beside it as .md and .svg",
                path.display()
            )));
        }
        crate::io::write_json(path, self)?;
        let mut written = vec![path.to_path_buf()];
        let md = path.with_extension("md");
        crate::io::write_atomic(&md, self.to_markdown().as_bytes())
            .runtime_ctx(|| format!("writing the calibration report {}", md.display()))?;
        written.push(md);
        if let Some(svg) = self.svg() {
            let svg_path = path.with_extension("svg");
            crate::io::write_atomic(&svg_path, svg.as_bytes())?;
            written.push(svg_path);
        }
        Ok(written)
    }
}

fn fmt_share(s: f64) -> String {
    let text = format!("{s:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------- the Beta distribution

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9: ~15 digits).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return pi.ln() - (pi * x).sin().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = C
        .iter()
        .enumerate()
        .skip(1)
        .fold(C[0], |a, (i, c)| a + c / (x + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete Beta function I_x(a, b).
fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of I_x(a, b) (modified Lentz).
fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + aa * d);
        c = clamp(1.0 + aa / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The `q` quantile of Beta(a, b), by bisection (I_x is increasing in x).
fn beta_quantile(q: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if inc_beta(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-15 {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Flag;

    #[test]
    fn clopper_pearson_matches_reference_values() {
        let close = |a: f64, b: f64| (a - b).abs() < 5e-5;
        // R: binom.test(5, 10)$conf.int = 0.1870860 0.8129140
        let [lo, hi] = clopper_pearson(5, 10, 0.95);
        assert!(close(lo, 0.187086) && close(hi, 0.812914), "{lo} {hi}");
        // x = 0 and x = n have closed forms.
        let [lo, hi] = clopper_pearson(0, 10, 0.95);
        assert!(lo == 0.0 && close(hi, 1.0 - 0.025f64.powf(0.1)), "{hi}");
        let [lo, hi] = clopper_pearson(10, 10, 0.95);
        assert!(close(lo, 0.025f64.powf(0.1)) && hi == 1.0, "{lo}");
        // Beta quantiles by bisection on mpmath's betainc (30 digits).
        let [lo, hi] = clopper_pearson(37, 400, 0.95);
        assert!(close(lo, 0.0659659) && close(hi, 0.1252433), "{lo} {hi}");
        assert_eq!(clopper_pearson(0, 0, 0.95), [0.0, 1.0]);
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-10);
    }

    fn result(p: Option<f64>, flagged: bool) -> LabelResult {
        LabelResult {
            cmd: String::new(),
            verdict: if p.is_some() {
                Verdict::Benign
            } else {
                Verdict::Unparsed
            },
            explanation: None,
            model: "m".into(),
            prompt_version: "v".into(),
            latency_ms: 0,
            tokens: 0,
            attempts: 1,
            error: None,
            flags: if flagged {
                vec![Flag::Injection]
            } else {
                vec![]
            },
            flag_reason: None,
            cached: 0,
            p_benign: p,
        }
    }

    fn scope() -> CalibrationScope {
        CalibrationScope {
            model: "m".into(),
            prompt_version: "v2".into(),
            prompt_fingerprint: "0123456789abcdef".into(),
            protocol: LabelProtocol::Scored,
            samples: 1,
        }
    }

    /// Scored, unflagged lines: `(score, how many)` groups of benign, then of malicious lines.
    fn scored_sample(
        benign: &[(f64, usize)],
        malicious: &[(f64, usize)],
    ) -> (Vec<LabelResult>, Vec<Option<Label>>) {
        let mut results = Vec::new();
        let mut truth = Vec::new();
        for (groups, label) in [(benign, Label::Benign), (malicious, Label::Malicious)] {
            for &(score, n) in groups {
                results.extend((0..n).map(|_| result(Some(score), false)));
                truth.extend((0..n).map(|_| Some(label)));
            }
        }
        (results, truth)
    }

    /// 400 benign lines scored 0.9995 (300) or 0.9 (100); 400 malicious scored 0.95 (two) or
    /// 0.1 (the rest).
    fn separable() -> (Vec<LabelResult>, Vec<Option<Label>>) {
        scored_sample(&[(0.9995, 300), (0.9, 100)], &[(0.95, 2), (0.1, 398)])
    }

    #[test]
    fn fixed_sequence_picks_the_lowest_passing_threshold() {
        let (results, truth) = separable();
        // The sample's own malicious share: 0.5.
        let cal = calibrate(&results, &truth, scope(), &CalibrationRequest::default()).unwrap();
        assert!(!cal.malicious_share_stated && cal.malicious_share == 0.5);
        // 0.99999 and 0.9999 pass nothing (too few lines); from 0.9995 down, 300 benign and no
        // malicious pass until 0.95, where the two malicious lines start passing.
        let row = |t: f64| cal.thresholds.iter().find(|r| r.threshold == t).unwrap();
        assert_eq!(row(0.9999).test, TestOutcome::TooFewLines);
        assert_eq!(row(0.9995).test, TestOutcome::Passed);
        assert_eq!(
            (row(0.9995).benign_passing, row(0.9995).malicious_passing),
            (300, 0)
        );
        // Precision bound at 0.9995: recall >= cp_lower(300, 400), leak <= 1 - 0.025^(1/400).
        let r_lo = cp_lower(300, 400, 0.025);
        let l_hi = 1.0 - 0.025f64.powf(1.0 / 400.0);
        let expect = r_lo / (r_lo + l_hi);
        assert!((row(0.9995).precision_lower - expect).abs() < 1e-6);
        assert_eq!(row(0.95).test, TestOutcome::Failed, "{:?}", row(0.95));
        assert_eq!(row(0.9).test, TestOutcome::AfterFailure);
        assert_eq!(cal.benign_threshold, Some(0.97));
        assert!(cal.auroc.unwrap() > 0.99);
        assert_eq!((cal.sample.benign, cal.sample.malicious), (400, 400));
        let md = cal.to_markdown();
        assert!(md.contains("**Benign threshold: 0.97.**"), "{md}");
        assert!(md.contains("| 0.95 |") && md.contains("failed"));
        assert!(cal.svg().unwrap().starts_with("<svg"));
        // The file round-trips and refuses another setup.
        let back: Calibration =
            serde_json::from_str(&serde_json::to_string(&cal).unwrap()).unwrap();
        assert_eq!(
            back.threshold_for(&scope(), Path::new("c.json")).unwrap(),
            0.97
        );
        let other = CalibrationScope {
            samples: 3,
            ..scope()
        };
        let err = back.threshold_for(&other, Path::new("c.json")).unwrap_err();
        assert!(err.to_string().contains("3 sample(s)") && err.exit_code() == 2);
    }

    #[test]
    fn a_model_that_scores_everything_near_zero_is_still_calibrated_by_its_ranking() {
        // Every score under 0.1, as a small model biased toward `malicious` gives; the benign
        // lines rank above the malicious ones all the same.
        let (results, truth) = scored_sample(&[(0.03, 200), (0.004, 200)], &[(0.0015, 400)]);
        let cal = calibrate(&results, &truth, scope(), &CalibrationRequest::default()).unwrap();
        // From 0.02 to 0.005 the 200 benign lines at 0.03 pass; 0.002 passes every benign
        // line and still no malicious one; 0.001 lets the malicious ones in.
        let row = |t: f64| cal.thresholds.iter().find(|r| r.threshold == t).unwrap();
        assert_eq!(
            (row(0.02).benign_passing, row(0.02).malicious_passing),
            (200, 0)
        );
        assert_eq!(row(0.001).test, TestOutcome::Failed);
        assert_eq!(cal.benign_threshold, Some(0.002));
        assert!(cal.to_markdown().contains("**Benign threshold: 0.002.**"));
    }

    #[test]
    fn a_higher_malicious_share_needs_a_stricter_threshold_or_none() {
        let (results, truth) = separable();
        let req = |share| CalibrationRequest {
            malicious_share: Some(share),
            ..CalibrationRequest::default()
        };
        // At a share of 0.9, even zero leaks out of 400 bound the precision too loosely.
        let cal = calibrate(&results, &truth, scope(), &req(0.9)).unwrap();
        assert_eq!(cal.benign_threshold, None);
        let err = cal
            .threshold_for(&scope(), Path::new("c.json"))
            .unwrap_err();
        assert!(err.to_string().contains("no threshold"), "{err}");
        assert!(cal.to_markdown().contains("No threshold qualifies"));
    }

    #[test]
    fn unscored_and_flagged_lines_never_pass_and_bad_requests_are_refused() {
        let (mut results, truth) = separable();
        // The two leaking malicious lines lose their score / get flagged: nothing leaks.
        results[400] = result(None, false);
        results[401] = result(Some(0.95), true);
        let req = CalibrationRequest {
            malicious_share: Some(0.1),
            ..CalibrationRequest::default()
        };
        let cal = calibrate(&results, &truth, scope(), &req).unwrap();
        assert_eq!((cal.sample.unscored, cal.sample.flagged), (1, 1));
        assert!(
            cal.thresholds
                .iter()
                .all(|r| r.malicious_passing == if r.threshold > 0.1 { 0 } else { 398 })
        );
        // Now only the 398 malicious lines at 0.1 ever pass: every threshold above 0.1 does.
        assert_eq!(cal.benign_threshold, Some(0.2));
        for bad in [
            CalibrationRequest {
                target_precision: 1.0,
                ..req.clone()
            },
            CalibrationRequest {
                malicious_share: Some(0.0),
                ..req.clone()
            },
            CalibrationRequest {
                min_support: 0,
                ..req.clone()
            },
        ] {
            assert!(calibrate(&results, &truth, scope(), &bad).is_err());
        }
        let text = CalibrationScope {
            protocol: LabelProtocol::Text,
            ..scope()
        };
        assert!(calibrate(&results, &truth, text, &req).is_err());
        let only_benign = vec![Some(Label::Benign); results.len()];
        let err = calibrate(&results, &only_benign, scope(), &req).unwrap_err();
        assert!(err.to_string().contains("benign and malicious"), "{err}");
    }
}
