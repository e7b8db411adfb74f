//! The experiment's report: the source work's table (AUC on the hard and the easy test) plus
//! what it left out (TPR at FPR 1e-3, FPR on rare benign lines, labels spent, the random
//! control), mean and spread over seeds, ROC plots, and a conclusion drawn from the numbers.

use super::datasets::Table;
use super::{Arm, ArmOutcome, DataOutputs, ExperimentConfig, LabelerKind};
use crate::data::has_placeholder;
use crate::error::Result;
use crate::evaluate::{
    Interval, Report, ReportOptions, RocCurve, Statistic, paired_gain, seed_mean,
};
use crate::io::table::write_atomic;
use crate::vocab::Label;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Metrics of one classifier on one test set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestMetrics {
    pub lines: usize,
    pub malicious: usize,
    pub roc_auc: f64,
    pub tpr_at_fpr_1e3: f64,
    /// Whether the set has the >= 1,000 benign lines that FPR 1e-3 needs to mean anything.
    pub tpr_at_fpr_1e3_resolvable: bool,
    pub tpr_at_fpr_1e4: f64,
    pub tpr_at_fpr_1e4_resolvable: bool,
    /// FPR on the set's benign lines at the threshold that catches 90% of its malicious lines.
    pub fpr_at_tpr_090: f64,
    /// Rates at the classifier's stored threshold (chosen on validation for a low FPR).
    pub fpr_at_stored_threshold: Option<f64>,
    pub tpr_at_stored_threshold: Option<f64>,
}

fn test_metrics(scores: &[f64], labels: &[bool], threshold: f64) -> Result<TestMetrics> {
    let curve = RocCurve::new(scores, labels)?;
    let at3 = curve.tpr_at_fpr(1e-3)?;
    let at4 = curve.tpr_at_fpr(1e-4)?;
    let fpr90 = curve.fpr_at_tpr(0.9)?;
    let at_threshold = crate::evaluate::metrics::confusion_at(scores, labels, threshold)?;
    Ok(TestMetrics {
        lines: scores.len(),
        malicious: curve.positives() as usize,
        roc_auc: curve.auc(),
        tpr_at_fpr_1e3: at3.tpr,
        tpr_at_fpr_1e3_resolvable: at3.resolvable,
        tpr_at_fpr_1e4: at4.tpr,
        tpr_at_fpr_1e4_resolvable: at4.resolvable,
        fpr_at_tpr_090: fpr90.fpr,
        fpr_at_stored_threshold: at_threshold.fpr(),
        tpr_at_stored_threshold: at_threshold.tpr(),
    })
}

/// One classifier's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub seed: u64,
    pub arm: Arm,
    pub labeler: Option<LabelerKind>,
    pub labels: Option<super::LabelSummary>,
    pub hard: TestMetrics,
    pub easy: TestMetrics,
    /// On the dev hard split, when the data has one.
    #[serde(default)]
    pub dev: Option<TestMetrics>,
    /// On the time-split test, when the data has one.
    #[serde(default)]
    pub time: Option<TestMetrics>,
    /// On the lines of the hard / time-split test without unexpanded variables (the same
    /// rule for every class: `data::has_placeholder`), when both classes remain.
    #[serde(default)]
    pub hard_plain: Option<TestMetrics>,
    #[serde(default)]
    pub time_plain: Option<TestMetrics>,
    pub classifier_dir: PathBuf,
}

/// Mean and sample standard deviation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub n: usize,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let sd = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Spread { mean, sd, n }
    }

    fn show(&self, digits: usize) -> String {
        if self.n > 1 && self.sd > 0.0 {
            format!("{:.d$} ± {:.d$}", self.mean, self.sd, d = digits)
        } else {
            format!("{:.d$}", self.mean, d = digits)
        }
    }
}

/// One row of the main table: an arm with one labeler, over seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmSummary {
    pub arm: Arm,
    pub labeler: Option<LabelerKind>,
    pub seeds: usize,
    pub labels_spent: Spread,
    pub augmented: Spread,
    pub augmented_new: Spread,
    pub auc_hard: Spread,
    pub auc_easy: Spread,
    /// Paired with the baseline of the same seed.
    pub auc_hard_gain: Spread,
    pub tpr_at_fpr_1e3_hard: Spread,
    pub tpr_at_fpr_1e3_easy: Spread,
    pub fpr_rare_benign_at_tpr_090: Spread,
    pub fpr_rare_benign_at_stored_threshold: Spread,
    /// AUC on the dev hard split, and its gain paired with the baseline (when there is one).
    #[serde(default)]
    pub auc_dev: Option<Spread>,
    #[serde(default)]
    pub auc_dev_gain: Option<Spread>,
    /// The time-split test (when the data has one): AUC, paired gain, TPR at FPR 1e-3.
    #[serde(default)]
    pub auc_time: Option<Spread>,
    #[serde(default)]
    pub auc_time_gain: Option<Spread>,
    #[serde(default)]
    pub tpr_at_fpr_1e3_time: Option<Spread>,
    /// AUC on the lines without unexpanded variables.
    #[serde(default)]
    pub auc_hard_plain: Option<Spread>,
    #[serde(default)]
    pub auc_time_plain: Option<Spread>,
    /// 95 % bootstrap intervals (test lines and seeds, paired by seed) of the AUC gain over
    /// the baseline and over the random control.
    #[serde(default)]
    pub gain_ci: GainIntervals,
    /// The same kind of intervals for the TPR at FPR 1e-3, which a few benign lines set: the
    /// arm's mean, and its gains over the baseline and the random control.
    #[serde(default)]
    pub tpr_ci: TprIntervals,
}

/// Paired-bootstrap intervals of an arm's AUC difference; `None` where it does not apply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GainIntervals {
    pub hard_vs_baseline: Option<Interval>,
    pub hard_vs_random: Option<Interval>,
    pub time_vs_baseline: Option<Interval>,
    pub time_vs_random: Option<Interval>,
}

/// Bootstrap intervals of the TPR at FPR 1e-3 on the hard and the time-split test: the arm's
/// mean and its paired gains; `None` where they do not apply.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TprIntervals {
    pub hard: Option<Interval>,
    pub hard_vs_baseline: Option<Interval>,
    pub hard_vs_random: Option<Interval>,
    pub time: Option<Interval>,
    pub time_vs_baseline: Option<Interval>,
    pub time_vs_random: Option<Interval>,
}

/// Resamples of every gain interval: enough for stable 2.5 % / 97.5 % quantiles, cheap
/// enough to recompute after every seed.
const GAIN_RESAMPLES: usize = 1000;

/// `report/results.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub name: String,
    pub command: String,
    pub config: ExperimentConfig,
    pub data: super::datasets::DataSummary,
    pub runs: Vec<RunResult>,
    pub arms: Vec<ArmSummary>,
    /// What each arm's added lines cover of the later tail (first seed).
    #[serde(default)]
    pub coverage: Vec<Coverage>,
}

/// How representative one arm's augmentation is of the test's rare benign lines: a selection
/// that beats random should cover more of them, and from the right sources.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Coverage {
    pub arm: Arm,
    pub labeler: Option<LabelerKind>,
    /// The test measured: `time` (the time-split test) or `hard`.
    pub test: String,
    /// Benign lines the arm added to training.
    pub added: usize,
    /// The test's benign lines, and how many share a near-duplicate cluster (Jaccard
    /// >= [`COVERAGE_JACCARD`] on byte shingles) with an added line.
    pub test_benign: usize,
    pub covered: usize,
    /// Added lines by stream source, most first.
    pub added_by_source: Vec<(String, usize)>,
}

/// The similarity at which an added line "covers" a test line: looser than deduplication
/// (0.8), so that a line of the same command family with other arguments counts.
pub const COVERAGE_JACCARD: f64 = 0.5;

fn summarize(runs: &[RunResult]) -> Vec<ArmSummary> {
    let mut keys: Vec<(Arm, Option<LabelerKind>)> =
        runs.iter().map(|r| (r.arm, r.labeler)).collect();
    keys.sort();
    keys.dedup();
    let baseline: BTreeMap<u64, f64> = runs
        .iter()
        .filter(|r| r.arm == Arm::Baseline)
        .map(|r| (r.seed, r.hard.roc_auc))
        .collect();
    let baseline_dev: BTreeMap<u64, f64> = runs
        .iter()
        .filter(|r| r.arm == Arm::Baseline)
        .filter_map(|r| Some((r.seed, r.dev.as_ref()?.roc_auc)))
        .collect();
    let baseline_time: BTreeMap<u64, f64> = runs
        .iter()
        .filter(|r| r.arm == Arm::Baseline)
        .filter_map(|r| Some((r.seed, r.time.as_ref()?.roc_auc)))
        .collect();
    keys.into_iter()
        .map(|(arm, labeler)| {
            let rs: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.arm == arm && r.labeler == labeler)
                .collect();
            let s = |f: &dyn Fn(&RunResult) -> f64| {
                Spread::of(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            // A spread over an optional test: only when every run of the arm has it.
            let opt = |get: &dyn Fn(&RunResult) -> Option<f64>| {
                rs.iter()
                    .all(|r| get(r).is_some())
                    .then(|| s(&|r| get(r).unwrap_or(f64::NAN)))
            };
            ArmSummary {
                arm,
                labeler,
                seeds: rs.len(),
                labels_spent: s(&|r| r.labels.as_ref().map_or(0.0, |l| l.spent as f64)),
                augmented: s(&|r| r.labels.as_ref().map_or(0.0, |l| l.augmented as f64)),
                augmented_new: s(&|r| r.labels.as_ref().map_or(0.0, |l| l.augmented_new as f64)),
                auc_hard: s(&|r| r.hard.roc_auc),
                auc_easy: s(&|r| r.easy.roc_auc),
                auc_hard_gain: s(&|r| {
                    r.hard.roc_auc - baseline.get(&r.seed).copied().unwrap_or(f64::NAN)
                }),
                tpr_at_fpr_1e3_hard: s(&|r| r.hard.tpr_at_fpr_1e3),
                tpr_at_fpr_1e3_easy: s(&|r| r.easy.tpr_at_fpr_1e3),
                fpr_rare_benign_at_tpr_090: s(&|r| r.hard.fpr_at_tpr_090),
                fpr_rare_benign_at_stored_threshold: s(&|r| {
                    r.hard.fpr_at_stored_threshold.unwrap_or(f64::NAN)
                }),
                auc_dev: rs
                    .iter()
                    .all(|r| r.dev.is_some())
                    .then(|| s(&|r| r.dev.as_ref().map_or(f64::NAN, |d| d.roc_auc))),
                auc_dev_gain: rs.iter().all(|r| r.dev.is_some()).then(|| {
                    s(&|r| {
                        r.dev.as_ref().map_or(f64::NAN, |d| d.roc_auc)
                            - baseline_dev.get(&r.seed).copied().unwrap_or(f64::NAN)
                    })
                }),
                auc_time: opt(&|r| Some(r.time.as_ref()?.roc_auc)),
                auc_time_gain: opt(&|r| {
                    Some(r.time.as_ref()?.roc_auc - baseline_time.get(&r.seed)?)
                }),
                tpr_at_fpr_1e3_time: opt(&|r| Some(r.time.as_ref()?.tpr_at_fpr_1e3)),
                auc_hard_plain: opt(&|r| Some(r.hard_plain.as_ref()?.roc_auc)),
                auc_time_plain: opt(&|r| Some(r.time_plain.as_ref()?.roc_auc)),
                gain_ci: GainIntervals::default(),
                tpr_ci: TprIntervals::default(),
            }
        })
        .collect()
}

/// [`Coverage`] of every arm of seed `first`, on the time-split test when there is one, else
/// on the hard test.
fn coverage(outcomes: &[ArmOutcome], first: u64, tables: &super::Tables) -> Result<Vec<Coverage>> {
    let (test, name) = if tables.time.cmd.is_empty() {
        (&tables.hard, "hard")
    } else {
        (&tables.time, "time")
    };
    let benign: Vec<&str> = (0..test.cmd.len())
        .filter(|&i| test.label[i] == Some(Label::Benign))
        .map(|i| test.cmd[i].as_str())
        .collect();
    let source_of: std::collections::HashMap<&str, &str> = tables
        .stream
        .cmd
        .iter()
        .zip(&tables.stream.source)
        .map(|(c, s)| (c.as_str(), s.as_str()))
        .collect();
    let mut out = Vec::new();
    for o in outcomes
        .iter()
        .filter(|o| o.seed == first && o.arm != Arm::Baseline)
    {
        let Some(arm_dir) = o.classifier_dir.parent() else {
            continue;
        };
        let path = arm_dir.join("labels").join("augment.parquet");
        if !path.exists() {
            continue;
        }
        let added: Vec<String> = crate::io::read_labeled(&[path], false)?
            .into_iter()
            .map(|r| r.cmd)
            .collect();
        let mut texts: Vec<&str> = benign.clone();
        texts.extend(added.iter().map(String::as_str));
        let clusters = super::coarse_clusters(&texts, crate::data::MinHashConfig::default().seed)?;
        let reached: std::collections::HashSet<u32> =
            clusters[benign.len()..].iter().copied().collect();
        let covered = clusters[..benign.len()]
            .iter()
            .filter(|c| reached.contains(c))
            .count();
        let mut by_source: BTreeMap<String, usize> = BTreeMap::new();
        for cmd in &added {
            let source = source_of.get(cmd.as_str()).copied().unwrap_or("?");
            *by_source.entry(source.to_string()).or_default() += 1;
        }
        let mut added_by_source: Vec<(String, usize)> = by_source.into_iter().collect();
        added_by_source.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.push(Coverage {
            arm: o.arm,
            labeler: o.labeler,
            test: name.to_string(),
            added: added.len(),
            test_benign: benign.len(),
            covered,
            added_by_source,
        });
    }
    Ok(out)
}

/// The lines of a test set without unexpanded variables, when both classes remain.
struct PlainSubset {
    keep: Vec<usize>,
    labels: Vec<bool>,
}

impl PlainSubset {
    fn of(t: &Table) -> Option<PlainSubset> {
        let keep: Vec<usize> = (0..t.cmd.len())
            .filter(|&i| !has_placeholder(&t.cmd[i]))
            .collect();
        let labels: Vec<bool> = keep
            .iter()
            .map(|&i| t.label[i] == Some(Label::Malicious))
            .collect();
        (labels.contains(&true) && labels.contains(&false)).then_some(PlainSubset { keep, labels })
    }
}

trait SubsetMetrics {
    fn metrics(&self, scores: &[f64], threshold: f64) -> Result<Option<TestMetrics>>;
}

impl SubsetMetrics for Option<PlainSubset> {
    fn metrics(&self, scores: &[f64], threshold: f64) -> Result<Option<TestMetrics>> {
        let Some(sub) = self else { return Ok(None) };
        if sub.keep.last().is_some_and(|&i| i >= scores.len()) {
            return Ok(None); // scores of an older run, before this test existed
        }
        let picked: Vec<f64> = sub.keep.iter().map(|&i| scores[i]).collect();
        test_metrics(&picked, &sub.labels, threshold).map(Some)
    }
}

/// Each arm's paired-bootstrap intervals against the baseline and the random control, on the
/// hard and the time-split test, over the seeds both have (same labeler for the control); and
/// the intervals of the hard test's TPR at FPR 1e-3.
fn add_gain_intervals(
    arms: &mut [ArmSummary],
    outcomes: &[ArmOutcome],
    hard_labels: &[bool],
    time_labels: &[bool],
) -> Result<()> {
    let scores_of = |arm: Arm, labeler: Option<LabelerKind>| -> BTreeMap<u64, &ArmOutcome> {
        outcomes
            .iter()
            .filter(|o| o.arm == arm && (arm == Arm::Baseline || o.labeler == labeler))
            .map(|o| (o.seed, o))
            .collect()
    };
    let interval = |a: &BTreeMap<u64, &ArmOutcome>,
                    b: &BTreeMap<u64, &ArmOutcome>,
                    labels: &[bool],
                    pick: fn(&ArmOutcome) -> &[f64],
                    statistic: Statistic|
     -> Result<Option<Interval>> {
        let pairs: Vec<(&[f64], &[f64])> = a
            .iter()
            .filter_map(|(seed, x)| Some((pick(x), pick(b.get(seed)?))))
            .filter(|(x, y)| x.len() == labels.len() && y.len() == labels.len())
            .collect();
        if pairs.is_empty() || labels.is_empty() {
            return Ok(None);
        }
        paired_gain(&pairs, labels, statistic, 0.95, GAIN_RESAMPLES, 0x5eed).map(Some)
    };
    fn hard(o: &ArmOutcome) -> &[f64] {
        &o.hard_scores
    }
    fn time(o: &ArmOutcome) -> &[f64] {
        &o.time_scores
    }
    let (auc, tpr) = (Statistic::RocAuc, Statistic::TprAtFpr(1e-3));
    let base = scores_of(Arm::Baseline, None);
    for a in arms.iter_mut() {
        let mine = scores_of(a.arm, a.labeler);
        let mean = |labels: &[bool], pick: fn(&ArmOutcome) -> &[f64]| -> Result<Option<Interval>> {
            let runs: Vec<&[f64]> = mine
                .values()
                .map(|o| pick(o))
                .filter(|s| s.len() == labels.len())
                .collect();
            if runs.is_empty() || !labels.contains(&true) || !labels.contains(&false) {
                return Ok(None);
            }
            seed_mean(&runs, labels, tpr, 0.95, GAIN_RESAMPLES, 0x5eed).map(Some)
        };
        a.tpr_ci.hard = mean(hard_labels, hard)?;
        a.tpr_ci.time = mean(time_labels, time)?;
        if a.arm == Arm::Baseline {
            continue;
        }
        let random = scores_of(Arm::Random, a.labeler);
        a.gain_ci.hard_vs_baseline = interval(&mine, &base, hard_labels, hard, auc)?;
        a.gain_ci.time_vs_baseline = interval(&mine, &base, time_labels, time, auc)?;
        a.tpr_ci.hard_vs_baseline = interval(&mine, &base, hard_labels, hard, tpr)?;
        a.tpr_ci.time_vs_baseline = interval(&mine, &base, time_labels, time, tpr)?;
        if a.arm != Arm::Random {
            a.gain_ci.hard_vs_random = interval(&mine, &random, hard_labels, hard, auc)?;
            a.gain_ci.time_vs_random = interval(&mine, &random, time_labels, time, auc)?;
            a.tpr_ci.hard_vs_random = interval(&mine, &random, hard_labels, hard, tpr)?;
            a.tpr_ci.time_vs_random = interval(&mine, &random, time_labels, time, tpr)?;
        }
    }
    Ok(())
}

fn name_of(arm: Arm, labeler: Option<LabelerKind>) -> String {
    match labeler {
        Some(LabelerKind::Llm) => format!("{} (LLM labels)", arm.title()),
        _ => arm.title().to_string(),
    }
}

/// Write `results.json`, `report.md` and ROC plots into `dir`; returns the Markdown path.
pub(super) fn write(
    dir: &Path,
    cfg: &ExperimentConfig,
    command: &str,
    data: &DataOutputs,
    tables: &super::Tables,
    outcomes: &[ArmOutcome],
) -> Result<PathBuf> {
    let (hard, easy, dev, time) = (&tables.hard, &tables.easy, &tables.dev, &tables.time);
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::Error::runtime(format!("cannot create {}: {e}", dir.display())))?;
    let hard_labels = hard.malicious();
    let easy_labels = easy.malicious();
    let dev_labels = dev.malicious();
    let time_labels = time.malicious();
    let hard_plain = PlainSubset::of(hard);
    let time_plain = PlainSubset::of(time);
    // Metrics of an optional test: None when the data has none or the scores predate it.
    let optional = |scores: &[f64], labels: &[bool], threshold: f64| -> Result<_> {
        if labels.is_empty() || scores.len() != labels.len() {
            return Ok(None);
        }
        test_metrics(scores, labels, threshold).map(Some)
    };
    let mut runs = Vec::new();
    for o in outcomes {
        runs.push(RunResult {
            seed: o.seed,
            arm: o.arm,
            labeler: o.labeler,
            labels: o.labels.clone(),
            hard: test_metrics(&o.hard_scores, &hard_labels, o.threshold)?,
            easy: test_metrics(&o.easy_scores, &easy_labels, o.threshold)?,
            dev: optional(&o.dev_scores, &dev_labels, o.threshold)?,
            time: optional(&o.time_scores, &time_labels, o.threshold)?,
            hard_plain: hard_plain.metrics(&o.hard_scores, o.threshold)?,
            time_plain: time_plain.metrics(&o.time_scores, o.threshold)?,
            classifier_dir: o.classifier_dir.clone(),
        });
    }
    let mut arms = summarize(&runs);
    add_gain_intervals(&mut arms, outcomes, &hard_labels, &time_labels)?;

    // ROC plots and per-source breakdowns for the first seed, every arm on one chart.
    let first = cfg.seeds[0];
    let mut plots = Vec::new();
    type Pick = fn(&ArmOutcome) -> &Vec<f64>;
    let tests: [(&str, &str, &Table, &Vec<bool>, Pick); 3] = [
        (
            "hard test: rare benign lines vs malicious lines of unseen techniques",
            "hard",
            hard,
            &hard_labels,
            |o| &o.hard_scores,
        ),
        (
            "easy test: held out like the baseline",
            "easy",
            easy,
            &easy_labels,
            |o| &o.easy_scores,
        ),
        (
            "time-split test: later tail lines of the stream's sources vs unseen attacks",
            "time",
            time,
            &time_labels,
            |o| &o.time_scores,
        ),
    ];
    for (title, slug, table, labels, pick) in tests {
        if labels.is_empty() {
            continue; // no time-split test in this config
        }
        let mut report = Report::new(format!("{title} (seed {first})"), ReportOptions::default());
        for o in outcomes.iter().filter(|o| o.seed == first) {
            let scores = pick(o);
            if scores.len() != labels.len() {
                continue;
            }
            report.add(
                &name_of(o.arm, o.labeler),
                scores,
                labels,
                &[("source", &table.source)],
            )?;
        }
        let files = report.write_all(&dir.join(slug))?;
        plots.push((slug, files));
    }

    let coverage = coverage(outcomes, first, tables)?;
    let results = Results {
        name: cfg.name.clone(),
        command: command.to_string(),
        config: cfg.clone(),
        data: data.summary.clone(),
        runs,
        arms,
        coverage,
    };
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&results)
            .expect("plain data")
            .as_bytes(),
    )?;
    let md = markdown(&results, hard, easy);
    let path = dir.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn markdown(r: &Results, hard: &Table, easy: &Table) -> String {
    let mut m = String::new();
    let cfg = &r.config;
    let _ = writeln!(m, "# Experiment `{}`\n", r.name);
    let _ = writeln!(
        m,
        "Command: `{}` (seeds {:?}; labels per arm: {}; augmentation: {:?}). Every figure \
         below is recomputed from the run directory by rerunning the command.\n",
        r.command, cfg.seeds, cfg.select.budget, cfg.augment_mode
    );
    let count = |t: &Table, label: Label| t.label.iter().filter(|l| **l == Some(label)).count();
    let _ = writeln!(m, "## Data\n");
    let _ = writeln!(
        m,
        "- hard test: {} rare benign lines ({}) vs {} malicious lines of techniques/sources the baseline never saw",
        count(hard, Label::Benign),
        sources(hard, Label::Benign),
        count(hard, Label::Malicious)
    );
    if let Some(cut) = &cfg.data.time_split {
        let _ = writeln!(
            m,
            "- time-split test: tail lines of the stream's sources first seen on or after {cut} \
             (see its section below)"
        );
    }
    let _ = writeln!(
        m,
        "- easy test: {} benign, {} malicious, held out by near-duplicate cluster from the baseline's own sources",
        count(easy, Label::Benign),
        count(easy, Label::Malicious)
    );
    for (split, by) in &r.data.lines {
        let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(m, "- {split}: {}", parts.join(", "));
    }
    let _ = writeln!(
        m,
        "- stream occurrences (heavy-tailed counts): {}; test lines dropped as near-duplicates of training lines: {}\n",
        r.data.stream_occurrences, r.data.test_lines_dropped_for_leakage
    );

    let seeds = r
        .runs
        .iter()
        .map(|x| x.seed)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let _ = writeln!(
        m,
        "## Results (mean ± sd over {seeds} seed{})\n",
        if seeds > 1 { "s" } else { "" }
    );
    if seeds < 3 {
        let _ = writeln!(
            m,
            "The 95 % intervals resample test lines and seeds; with {seeds} seed{} they \
             carry the test lines' noise but hardly the training noise (a classifier retrained \
             with another seed moves by the spread in the per-seed table): more seeds, or \
             `--ensemble 3`, before trusting an interval that barely excludes zero.\n",
            if seeds > 1 { "s" } else { "" }
        );
    }
    let _ = writeln!(
        m,
        "| arm | labels spent | benign lines added (new) | AUC hard | Δ AUC hard (paired) [95 % CI] | AUC easy | TPR at FPR 1e-3, hard | TPR at FPR 1e-3, easy | FPR on rare benign at TPR 0.9 | FPR on rare benign at the stored threshold |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|");
    for a in &r.arms {
        let _ = writeln!(
            m,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} |",
            name_of(a.arm, a.labeler),
            a.labels_spent.show(0),
            a.augmented.show(0),
            a.augmented_new.show(0),
            a.auc_hard.show(3),
            if a.arm == Arm::Baseline {
                "".to_string()
            } else {
                format!(
                    "{}{}",
                    signed(&a.auc_hard_gain),
                    ci(a.gain_ci.hard_vs_baseline.as_ref())
                )
            },
            a.auc_easy.show(4),
            a.tpr_at_fpr_1e3_hard.show(3),
            a.tpr_at_fpr_1e3_easy.show(3),
            a.fpr_rare_benign_at_tpr_090.show(3),
            a.fpr_rare_benign_at_stored_threshold.show(3),
        );
    }
    if r.arms.iter().any(|a| a.auc_time.is_some()) {
        let time = r.runs.iter().find_map(|x| x.time.as_ref());
        let _ = writeln!(
            m,
            "\n### Time-split test\n\n{} lines ({} malicious): tail lines of the stream's own \
             sources first seen on or after {} (the stream holds only earlier lines), against \
             the hard test's unseen attacks. The source work's setting; the hard test above is \
             the harder \"new environment\" case.\n",
            time.map_or(0, |d| d.lines),
            time.map_or(0, |d| d.malicious),
            cfg.data.time_split.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            m,
            "| arm | AUC time | Δ vs baseline [95 % CI] | Δ vs random control [95 % CI] | gap closed | TPR at FPR 1e-3 |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|");
        let upper = r
            .arms
            .iter()
            .find(|a| a.arm == Arm::OracleAll)
            .and_then(|a| a.auc_time_gain);
        for a in &r.arms {
            let (Some(auc), Some(gain)) = (&a.auc_time, &a.auc_time_gain) else {
                continue;
            };
            let not_base = a.arm != Arm::Baseline;
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                name_of(a.arm, a.labeler),
                auc.show(3),
                if not_base {
                    format!(
                        "{}{}",
                        signed(gain),
                        ci(a.gain_ci.time_vs_baseline.as_ref())
                    )
                } else {
                    String::new()
                },
                with_ci(a.gain_ci.time_vs_random.as_ref()),
                gap_closed(not_base, gain, upper.as_ref()),
                a.tpr_at_fpr_1e3_time.map_or(String::new(), |t| t.show(3)),
            );
        }
    }
    if r.arms.iter().any(|a| a.gain_ci.hard_vs_random.is_some()) {
        let _ = writeln!(
            m,
            "\n### Against the random control (hard test)\n\nThe same label budget spent on \
             randomly chosen stream lines: an arm helps beyond \"more benign data\" only where \
             this interval lies above zero.\n"
        );
        let _ = writeln!(
            m,
            "| arm | Δ AUC hard vs random [95 % CI] | gap closed (hard) |"
        );
        let _ = writeln!(m, "|---|---|---|");
        let upper = r
            .arms
            .iter()
            .find(|a| a.arm == Arm::OracleAll)
            .map(|a| a.auc_hard_gain);
        for a in &r.arms {
            if let Some(iv) = &a.gain_ci.hard_vs_random {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} |",
                    name_of(a.arm, a.labeler),
                    with_ci(Some(iv)),
                    gap_closed(true, &a.auc_hard_gain, upper.as_ref())
                );
            }
        }
    }
    let benign_of = |test: fn(&RunResult) -> Option<&TestMetrics>| {
        r.runs
            .iter()
            .find_map(|x| test(x))
            .map_or(0, |t| t.lines - t.malicious)
    };
    type Pick = fn(&TprIntervals) -> [Option<&Interval>; 3];
    let tests: [(&str, usize, Pick); 2] = [
        ("hard test", benign_of(|x| Some(&x.hard)), |t| {
            [
                t.hard.as_ref(),
                t.hard_vs_baseline.as_ref(),
                t.hard_vs_random.as_ref(),
            ]
        }),
        ("time-split test", benign_of(|x| x.time.as_ref()), |t| {
            [
                t.time.as_ref(),
                t.time_vs_baseline.as_ref(),
                t.time_vs_random.as_ref(),
            ]
        }),
    ];
    for (test, benign, pick) in tests {
        if !r.arms.iter().any(|a| pick(&a.tpr_ci)[0].is_some()) {
            continue;
        }
        let allowed = match benign / 1000 {
            0 => "no false positive: the highest-scoring benign line sets this figure (the TPR \
                  at zero false positives)"
                .to_string(),
            1 => "one false positive: the two highest-scoring benign lines set this figure"
                .to_string(),
            n => format!(
                "{n} false positives: the {} highest-scoring benign lines set this figure",
                n + 1
            ),
        };
        let _ = writeln!(
            m,
            "\n### TPR at FPR 1e-3 on the {test}, with intervals\n\nThe {test} has {benign} \
             benign lines, so FPR 1e-3 allows {allowed}, and another draw of the test would \
             move it more than it moves the AUC. The 95 % intervals resample test lines (within \
             each class) and seeds; the differences are paired by seed.\n"
        );
        let _ = writeln!(
            m,
            "| arm | TPR at FPR 1e-3 [95 % CI] | Δ vs baseline [95 % CI] | Δ vs random control [95 % CI] |"
        );
        let _ = writeln!(m, "|---|---|---|---|");
        for a in &r.arms {
            let [Some(iv), vs_baseline, vs_random] = pick(&a.tpr_ci) else {
                continue;
            };
            let _ = writeln!(
                m,
                "| {} | {:.3} [{:.3}, {:.3}] | {} | {} |",
                name_of(a.arm, a.labeler),
                iv.estimate,
                iv.lower,
                iv.upper,
                with_ci(vs_baseline),
                with_ci(vs_random),
            );
        }
    }
    if r.arms
        .iter()
        .any(|a| a.auc_hard_plain.is_some() || a.auc_time_plain.is_some())
    {
        let show = |s: &Option<Spread>| s.map_or("-".to_string(), |s| s.show(3));
        let plain = |f: fn(&RunResult) -> Option<&TestMetrics>| {
            r.runs
                .iter()
                .find_map(|x| f(x))
                .map_or("-".to_string(), |t| {
                    format!("{} lines, {} malicious", t.lines, t.malicious)
                })
        };
        let _ = writeln!(
            m,
            "\n### Without unexpanded variables\n\nScripts carry `$dir`, `%PREFIX%`, \
             `{{{{ x }}}}`; telemetry shows them expanded, so a model could learn \"has a \
             variable, so benign\". The same tests restricted, in every class alike, to lines \
             without any (`data::has_placeholder`): hard {}; time-split {}.\n",
            plain(|x| x.hard_plain.as_ref()),
            plain(|x| x.time_plain.as_ref()),
        );
        let _ = writeln!(
            m,
            "| arm | AUC hard | AUC hard, no variables | AUC time | AUC time, no variables |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|");
        for a in &r.arms {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} |",
                name_of(a.arm, a.labeler),
                a.auc_hard.show(3),
                show(&a.auc_hard_plain),
                show(&a.auc_time),
                show(&a.auc_time_plain),
            );
        }
    }
    if r.arms.iter().any(|a| a.auc_dev.is_some()) {
        let dev_lines = r.runs.iter().find_map(|x| x.dev.as_ref());
        let _ = writeln!(
            m,
            "\n### Dev hard split (for choices, not for reporting)\n\n{} lines ({} malicious) of \
             held-out groups other than the hard test's: models, thresholds and configs are \
             chosen here, so the hard test above is reported once.\n",
            dev_lines.map_or(0, |d| d.lines),
            dev_lines.map_or(0, |d| d.malicious)
        );
        let _ = writeln!(m, "| arm | AUC dev | Δ AUC dev (paired) |");
        let _ = writeln!(m, "|---|---|---|");
        for a in &r.arms {
            if let (Some(auc), Some(gain)) = (&a.auc_dev, &a.auc_dev_gain) {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} |",
                    name_of(a.arm, a.labeler),
                    auc.show(3),
                    if a.arm == Arm::Baseline {
                        String::new()
                    } else {
                        signed(gain)
                    }
                );
            }
        }
    }
    let any = r.runs.first();
    if let Some(x) = any {
        let _ = writeln!(
            m,
            "\nTPR at FPR 1e-3 is {} on the hard test ({} benign lines) and {} on the easy test \
             ({} benign lines); at fewer than 1,000 benign lines it is the TPR at zero false positives.",
            if x.hard.tpr_at_fpr_1e3_resolvable {
                "resolvable"
            } else {
                "NOT resolvable"
            },
            x.hard.lines - x.hard.malicious,
            if x.easy.tpr_at_fpr_1e3_resolvable {
                "resolvable"
            } else {
                "NOT resolvable"
            },
            x.easy.lines - x.easy.malicious
        );
    }

    let _ = writeln!(m, "\n## What the labels bought (first seed)\n");
    // Under `propagate_to_family` an added line may carry another line's verdict.
    let by_family = r
        .runs
        .iter()
        .any(|x| x.labels.as_ref().is_some_and(|l| l.propagated > 0));
    if by_family {
        let _ = writeln!(
            m,
            "Added lines include the families of the benign verdicts (`propagate_to_family`): \
             stream lines of a labeled line's coarse family, added with its verdict.\n"
        );
    }
    let (family_head, family_rule) = if by_family {
        ("of them by family | ", "---|")
    } else {
        ("", "")
    };
    let _ = writeln!(
        m,
        "| arm | sent | benign verdicts | malicious verdicts (to review) | no verdict | added | {family_head}new to the training set | added but truly malicious | selected lines by stream role |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|{family_rule}");
    for run in r.runs.iter().filter(|x| x.seed == cfg.seeds[0]) {
        if let Some(l) = &run.labels {
            let roles: Vec<String> = l
                .selected_by_role
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {}{} | {} | {} |",
                name_of(run.arm, run.labeler),
                l.spent,
                l.benign,
                l.malicious,
                l.no_verdict,
                l.augmented,
                if by_family {
                    format!("{} | ", l.propagated)
                } else {
                    String::new()
                },
                l.augmented_new,
                l.augmented_truly_malicious,
                roles.join(", ")
            );
        }
    }

    if !r.coverage.is_empty() {
        let c0 = &r.coverage[0];
        let test_name = if c0.test == "time" {
            "time-split"
        } else {
            "hard"
        };
        let _ = writeln!(
            m,
            "\n## What the added lines cover (first seed)\n\nOf the {} benign lines of the \
             {test_name} test, how many share a near-duplicate cluster (Jaccard >= {}) with a \
             line the arm added; and where the added lines come from. A selection beats random \
             only by teaching what the later tail looks like.\n",
            c0.test_benign, COVERAGE_JACCARD
        );
        let _ = writeln!(
            m,
            "| arm | added | {test_name}-test benign lines covered | added lines by stream source |"
        );
        let _ = writeln!(m, "|---|---|---|---|");
        for c in &r.coverage {
            let total = c.added.max(1) as f64;
            let sources: Vec<String> = c
                .added_by_source
                .iter()
                .take(5)
                .map(|(s, n)| format!("{s} {:.0} %", 100.0 * *n as f64 / total))
                .collect();
            let _ = writeln!(
                m,
                "| {} | {} | {} ({:.1} %) | {} |",
                name_of(c.arm, c.labeler),
                c.added,
                c.covered,
                100.0 * c.covered as f64 / c.test_benign.max(1) as f64,
                sources.join(", ")
            );
        }
    }

    let _ = writeln!(m, "\n## Per seed\n");
    let _ = writeln!(
        m,
        "| seed | arm | AUC hard | AUC easy | TPR at FPR 1e-3, hard | FPR on rare benign at TPR 0.9 |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|");
    for run in &r.runs {
        let _ = writeln!(
            m,
            "| {} | {} | {:.4} | {:.4} | {:.3} | {:.3} |",
            run.seed,
            name_of(run.arm, run.labeler),
            run.hard.roc_auc,
            run.easy.roc_auc,
            run.hard.tpr_at_fpr_1e3,
            run.hard.fpr_at_tpr_090
        );
    }
    let _ = writeln!(
        m,
        "\nROC curves and per-source breakdowns of the first seed: [hard](hard/report.md) \
         ([ROC](hard/roc.svg)), [easy](easy/report.md) ([ROC](easy/roc.svg)){}.\n",
        if cfg.data.time_split.is_some() {
            ", [time-split](time/report.md) ([ROC](time/roc.svg))"
        } else {
            ""
        }
    );
    let _ = writeln!(m, "## Reading the numbers\n");
    for line in conclusions(r) {
        let _ = writeln!(m, "- {line}");
    }
    m
}

/// ` [lower, upper]` of an interval, or nothing.
fn ci(iv: Option<&Interval>) -> String {
    iv.map_or(String::new(), |iv| {
        format!(" [{:+.3}, {:+.3}]", iv.lower, iv.upper)
    })
}

/// `estimate [lower, upper]`, or nothing.
fn with_ci(iv: Option<&Interval>) -> String {
    iv.map_or(String::new(), |iv| {
        format!("{:+.3}{}", iv.estimate, ci(Some(iv)))
    })
}

/// The share of the baseline-to-upper-bound gap an arm's mean gain closes.
fn gap_closed(applies: bool, gain: &Spread, upper: Option<&Spread>) -> String {
    match upper {
        Some(u) if applies && u.mean > 0.0 => format!("{:.0} %", 100.0 * gain.mean / u.mean),
        _ => String::new(),
    }
}

fn signed(s: &super::report::Spread) -> String {
    if s.n > 1 {
        format!("{:+.3} ± {:.3}", s.mean, s.sd)
    } else {
        format!("{:+.3}", s.mean)
    }
}

fn sources(t: &Table, label: Label) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for (s, l) in t.source.iter().zip(&t.label) {
        if *l == Some(label) {
            *by.entry(s).or_default() += 1;
        }
    }
    by.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Statements that follow from the table alone (no adjectives the numbers do not carry).
fn conclusions(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let find = |arm: Arm| {
        r.arms
            .iter()
            .find(|a| a.arm == arm && a.labeler != Some(LabelerKind::Llm))
    };
    let Some(base) = find(Arm::Baseline) else {
        return out;
    };
    out.push(format!(
        "Baseline: AUC {} on the hard test, {} on the easy test (the source work: 0.61 and 0.998).",
        base.auc_hard.show(3),
        base.auc_easy.show(4)
    ));
    let random = find(Arm::Random);
    for arm in [Arm::Autoencoder, Arm::Iforest, Arm::Combined] {
        let Some(a) = find(arm) else { continue };
        let gain = &a.auc_hard_gain;
        let mut s = format!(
            "{}: hard-test AUC {} ({} vs baseline, paired over {} seed{})",
            arm.title(),
            a.auc_hard.show(3),
            signed(gain),
            gain.n,
            if gain.n > 1 { "s" } else { "" }
        );
        if let Some(rc) = random {
            let d = a.auc_hard.mean - rc.auc_hard.mean;
            let _ = write!(
                s,
                "; {:+.3} vs the random control at the same label budget",
                d
            );
        }
        let _ = write!(s, "; easy-test AUC {}.", a.auc_easy.show(4));
        out.push(s);
    }
    // The time-split test, where there is one: which arms' gains are beyond chance.
    if base.auc_time.is_some() {
        let mut beyond = Vec::new();
        let mut not = Vec::new();
        for a in r.arms.iter().filter(|a| {
            !matches!(a.arm, Arm::Baseline | Arm::OracleAll | Arm::Random)
                && a.labeler != Some(LabelerKind::Llm)
        }) {
            match &a.gain_ci.time_vs_random {
                Some(iv) if iv.lower > 0.0 => beyond.push(a.arm.title()),
                Some(_) => not.push(a.arm.title()),
                None => {}
            }
        }
        out.push(format!(
            "Time-split test: baseline AUC {}; arms above the random control beyond their 95 % \
             interval: {}; arms within or below it: {}.",
            base.auc_time.map_or(String::new(), |t| t.show(3)),
            if beyond.is_empty() {
                "none".to_string()
            } else {
                beyond.join(", ")
            },
            if not.is_empty() {
                "none".to_string()
            } else {
                not.join(", ")
            },
        ));
    }
    if let Some(rc) = random {
        out.push(format!(
            "Random control: hard-test AUC {} ({} vs baseline). An anomaly arm helps beyond \
             \"more benign data\" only where it beats this row by more than the spread.",
            rc.auc_hard.show(3),
            signed(&rc.auc_hard_gain)
        ));
    }
    if let Some(all) = find(Arm::OracleAll) {
        out.push(format!(
            "Upper bound (every stream line, oracle labels, {} labels): hard-test AUC {}.",
            all.labels_spent.show(0),
            all.auc_hard.show(3)
        ));
    }
    out
}
