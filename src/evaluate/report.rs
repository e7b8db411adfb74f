//! A comparison of several named models (score sets) on one test set: the standard metrics,
//! a breakdown by group columns (source, platform, ...) at the whole set's thresholds, and
//! writers for JSON, Markdown and SVG charts.
//!
//! ```no_run
//! # fn main() -> longtail::Result<()> {
//! use longtail::evaluate::{Report, ReportOptions};
//! let (scores, labels) = (vec![0.9, 0.2, 0.7], vec![true, false, false]);
//! let sources: Vec<String> = vec!["atomic".into(), "tldr".into(), "runner".into()];
//! let mut report = Report::new("hard test set", ReportOptions::default());
//! report.add("baseline", &scores, &labels, &[("source", &sources)])?;
//! report.write_all(std::path::Path::new("runs/x/eval"))?;
//! # Ok(()) }
//! ```

use super::metrics::{self, Interval, Metrics, MetricsOptions, RocCurve};
use super::plot::{self, FprScale, Histogram, Marker, RocSeries};
use crate::error::{Context, Error, Result};
use crate::io::table::write_atomic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a [`Report`] computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportOptions {
    #[serde(flatten)]
    pub metrics: MetricsOptions,
    /// Bins of the per-model score histograms.
    pub histogram_bins: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self {
            metrics: MetricsOptions::default(),
            histogram_bins: 50,
        }
    }
}

/// A group's rates at a threshold chosen on the whole test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRate {
    /// The whole set's target: an FPR for `tpr_at_fpr`, a TPR for `fpr_at_tpr`.
    pub target: f64,
    /// The whole set's threshold for that target.
    pub threshold: f64,
    /// The group's TPR there; `None` when the group has no positive line.
    pub tpr: Option<f64>,
    /// The group's FPR there; `None` when the group has no negative line.
    pub fpr: Option<f64>,
}

/// Metrics of one value of a group column (e.g. `source = runner_images`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupRow {
    pub value: String,
    pub count: u64,
    pub positives: u64,
    pub negatives: u64,
    /// `None` when the group holds a single class.
    pub roc_auc: Option<f64>,
    pub pr_auc: Option<f64>,
    /// The group's rates at each whole-set "TPR at FPR" threshold: e.g. how much of the FPR
    /// budget a benign group spends.
    pub tpr_at_fpr: Vec<GroupRate>,
    /// The group's rates at each whole-set "FPR at TPR" threshold: e.g. the FPR on rare benign
    /// lines when the model catches 90 % of all malicious lines.
    pub fpr_at_tpr: Vec<GroupRate>,
}

/// One group column's breakdown, largest groups first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupBreakdown {
    pub column: String,
    pub rows: Vec<GroupRow>,
}

/// One model's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    pub name: String,
    pub metrics: Metrics,
    pub groups: Vec<GroupBreakdown>,
    /// `[fpr, tpr]` points of the ROC curve, thinned for charts.
    pub roc: Vec<[f64; 2]>,
    pub histogram: Histogram,
}

/// Several models compared on one test set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Names the test set, e.g. "hard test set (rare benign + unseen malicious)".
    pub title: String,
    pub options: ReportOptions,
    pub models: Vec<ModelResult>,
}

/// Files written by [`Report::write_all`].
#[derive(Clone, Debug, Default)]
pub struct WrittenFiles {
    pub json: PathBuf,
    pub markdown: PathBuf,
    pub roc_log: PathBuf,
    pub roc_linear: PathBuf,
    pub histograms: Vec<PathBuf>,
}

impl Report {
    pub fn new(title: impl Into<String>, options: ReportOptions) -> Self {
        Self {
            title: title.into(),
            options,
            models: Vec::new(),
        }
    }

    /// Evaluate one model's `scores` (higher = more malicious) against `labels` (true =
    /// malicious), broken down by each `(column name, value per line)` in `groups`.
    pub fn add(
        &mut self,
        name: &str,
        scores: &[f64],
        labels: &[bool],
        groups: &[(&str, &[String])],
    ) -> Result<&ModelResult> {
        if self.models.iter().any(|m| m.name == name) {
            return Err(Error::input(format!(
                "model {name:?} is already in the report {:?}: give each score set its own name",
                self.title
            )));
        }
        let curve = metrics::roc_curve(scores, labels)
            .map_err(|e| Error::input(format!("model {name:?}: {e}")))?;
        let metrics = metrics::summarize_curve(&curve, &self.options.metrics)?;
        let mut breakdowns = Vec::with_capacity(groups.len());
        for (column, values) in groups {
            if values.len() != scores.len() {
                return Err(Error::input(format!(
                    "group column {column:?} has {} values but model {name:?} has {} scores: \
                     pass one group value per test line",
                    values.len(),
                    scores.len()
                )));
            }
            breakdowns.push(GroupBreakdown {
                column: column.to_string(),
                rows: group_rows(scores, labels, values, &metrics)?,
            });
        }
        let result = ModelResult {
            name: name.to_string(),
            roc: plot::roc_plot_points(&curve),
            histogram: Histogram::new(scores, labels, self.options.histogram_bins)?,
            metrics,
            groups: breakdowns,
        };
        tracing::info!(
            model = name,
            roc_auc = result.metrics.roc_auc,
            pr_auc = result.metrics.pr_auc,
            "evaluated"
        );
        self.models.push(result);
        Ok(self.models.last().expect("just pushed"))
    }

    /// Look a model up by name.
    pub fn model(&self, name: &str) -> Option<&ModelResult> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).runtime_ctx(|| "cannot serialise the report")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).input_ctx(|| "not a longtail evaluation report (JSON)")
    }

    /// The report as Markdown: the comparison table, then one table per group column.
    pub fn to_markdown(&self) -> String {
        self.markdown(None)
    }

    fn markdown(&self, files: Option<&WrittenFiles>) -> String {
        let opts = &self.options.metrics;
        let mut md = String::new();
        let _ = writeln!(md, "# {}\n", self.title);
        if let Some(m) = self.models.first() {
            let same = self.models.iter().all(|o| {
                o.metrics.positives == m.metrics.positives
                    && o.metrics.negatives == m.metrics.negatives
            });
            let sizes = if same {
                format!(
                    "{} lines: {} positive (malicious), {} negative (benign).",
                    m.metrics.count, m.metrics.positives, m.metrics.negatives
                )
            } else {
                "The models were scored on test sets of different sizes; see the n column.".into()
            };
            let _ = writeln!(md, "{sizes}\n");
        }

        // Main table.
        let mut header = vec![
            "model".to_string(),
            "n (pos / neg)".into(),
            "ROC AUC".into(),
        ];
        if opts.ci != metrics::CiMethod::None {
            header.push(format!("{:.0} % CI", opts.ci_level * 100.0));
        }
        header.push("PR AUC".into());
        header.extend(
            opts.fpr_targets
                .iter()
                .map(|t| format!("TPR@FPR {}", fmt_target(*t))),
        );
        header.extend(opts.tpr_targets.iter().map(|t| format!("FPR@TPR {t:.2}")));
        table_header(&mut md, &header);
        let mut any_unresolvable = false;
        for m in &self.models {
            let x = &m.metrics;
            let mut row = vec![
                escape_cell(&m.name),
                format!("{} ({} / {})", x.count, x.positives, x.negatives),
                format!("{:.4}", x.roc_auc),
            ];
            if opts.ci != metrics::CiMethod::None {
                row.push(match &x.roc_auc_ci {
                    Some(ci) => format!("{:.4} – {:.4}", ci.lower, ci.upper),
                    None => "–".into(),
                });
            }
            row.push(format!("{:.4}", x.pr_auc));
            let tprs = x.tpr_at_fpr.iter().map(|a| (a.point.tpr, a));
            let fprs = x.fpr_at_tpr.iter().map(|a| (a.point.fpr, a));
            for (v, at) in tprs.chain(fprs) {
                let mut cell = fmt_rate(v);
                if !at.point.resolvable {
                    cell.push_str(" †");
                    any_unresolvable = true;
                }
                row.push(cell);
            }
            table_row(&mut md, &row);
        }
        md.push('\n');
        if any_unresolvable {
            let _ = writeln!(
                md,
                "† not resolvable: the test set is too small for the target (TPR at FPR f needs \
                 at least 1/f negatives; FPR at TPR t needs at least 1/(1−t) positives). The \
                 figure shown is the rate at zero allowed errors.\n"
            );
        }
        let _ = writeln!(
            md,
            "Thresholds flag `score >= threshold`; tied scores are never split. PR AUC is \
             average precision.\n"
        );

        // The low-FPR figures with their intervals: they move with a handful of negatives.
        let with_ci = |m: &&ModelResult| m.metrics.tpr_at_fpr.iter().any(|a| a.ci.is_some());
        if let Some(first) = self.models.iter().find(with_ci) {
            let resamples = first.metrics.tpr_at_fpr.iter().find_map(|a| match a.ci {
                Some(Interval {
                    method: metrics::CiMethod::Bootstrap { resamples, .. },
                    ..
                }) => Some(resamples),
                _ => None,
            });
            let _ = writeln!(
                md,
                "### TPR at low FPR, with {:.0} % intervals\n\nA stratified percentile bootstrap \
                 ({} resamples of the test lines within each class). At FPR f only the top f of \
                 the negatives may be flagged, so a few high-scoring negatives set the figure: \
                 another draw of the test set moves it far more than it moves the AUC.\n",
                opts.ci_level * 100.0,
                resamples.unwrap_or(0)
            );
            let mut header = vec!["model".to_string()];
            header.extend(
                opts.fpr_targets
                    .iter()
                    .map(|t| format!("TPR@FPR {}", fmt_target(*t))),
            );
            table_header(&mut md, &header);
            for m in self.models.iter().filter(with_ci) {
                let mut row = vec![escape_cell(&m.name)];
                row.extend(m.metrics.tpr_at_fpr.iter().map(|a| match &a.ci {
                    Some(ci) => format!(
                        "{} ({} – {})",
                        fmt_rate(a.point.tpr),
                        fmt_rate(ci.lower),
                        fmt_rate(ci.upper)
                    ),
                    None => fmt_rate(a.point.tpr),
                }));
                table_row(&mut md, &row);
            }
            md.push('\n');
        }

        // Thresholds, so a reader can ship one.
        if !self.models.is_empty() {
            let _ = writeln!(md, "## Thresholds\n");
            let mut header = vec!["model".to_string()];
            header.extend(
                opts.fpr_targets
                    .iter()
                    .map(|t| format!("for FPR {}", fmt_target(*t))),
            );
            header.extend(opts.tpr_targets.iter().map(|t| format!("for TPR {t:.2}")));
            table_header(&mut md, &header);
            for m in &self.models {
                let mut row = vec![escape_cell(&m.name)];
                row.extend(
                    m.metrics
                        .tpr_at_fpr
                        .iter()
                        .chain(&m.metrics.fpr_at_tpr)
                        .map(|a| format!("{:.6}", a.point.threshold)),
                );
                table_row(&mut md, &row);
            }
            md.push('\n');
        }

        if let Some(files) = files {
            let _ = writeln!(md, "## ROC curves\n");
            let _ = writeln!(md, "![ROC, log FPR]({})\n", file_name(&files.roc_log));
            let _ = writeln!(md, "![ROC, linear FPR]({})\n", file_name(&files.roc_linear));
        }

        // Group breakdowns: one table per column, rows (group, model).
        let columns: Vec<&str> = {
            let mut seen = Vec::new();
            for m in &self.models {
                for g in &m.groups {
                    if !seen.contains(&g.column.as_str()) {
                        seen.push(g.column.as_str());
                    }
                }
            }
            seen
        };
        for column in columns {
            let _ = writeln!(md, "## By {column}\n");
            let _ = writeln!(
                md,
                "The group's TPR / FPR at the thresholds chosen on the whole test set (so a \
                 group's FPR is what it would suffer in deployment at that operating point); \
                 – where the group lacks the class.\n"
            );
            let mut header = vec![
                escape_cell(column),
                "model".into(),
                "n (pos / neg)".into(),
                "ROC AUC".into(),
            ];
            header.extend(
                opts.fpr_targets
                    .iter()
                    .map(|t| format!("at FPR {} thr.", fmt_target(*t))),
            );
            header.extend(
                opts.tpr_targets
                    .iter()
                    .map(|t| format!("at TPR {t:.2} thr.")),
            );
            table_header(&mut md, &header);
            // Group values in the order of the first model that has them (largest first).
            let mut values: Vec<&str> = Vec::new();
            let mut rows: BTreeMap<(&str, usize), &GroupRow> = BTreeMap::new();
            for (mi, m) in self.models.iter().enumerate() {
                for g in m.groups.iter().filter(|g| g.column == column) {
                    for r in &g.rows {
                        if !values.contains(&r.value.as_str()) {
                            values.push(&r.value);
                        }
                        rows.insert((r.value.as_str(), mi), r);
                    }
                }
            }
            for v in values {
                for (mi, m) in self.models.iter().enumerate() {
                    let Some(r) = rows.get(&(v, mi)) else {
                        continue;
                    };
                    let mut row = vec![
                        escape_cell(v),
                        escape_cell(&m.name),
                        format!("{} ({} / {})", r.count, r.positives, r.negatives),
                        r.roc_auc.map_or("–".into(), |a| format!("{a:.4}")),
                    ];
                    row.extend(r.tpr_at_fpr.iter().chain(&r.fpr_at_tpr).map(|g| {
                        let cell = |r: Option<f64>| r.map_or("–".into(), fmt_rate);
                        format!("{} / {}", cell(g.tpr), cell(g.fpr))
                    }));
                    table_row(&mut md, &row);
                }
            }
            md.push('\n');
        }

        if let Some(files) = files {
            let _ = writeln!(md, "## Score histograms\n");
            for h in &files.histograms {
                let _ = writeln!(md, "![scores]({})\n", file_name(h));
            }
        }
        md
    }

    /// ROC chart of all models (log or linear FPR axis) as SVG.
    pub fn roc_svg(&self, scale: FprScale) -> String {
        let series: Vec<RocSeries<'_>> = self
            .models
            .iter()
            .map(|m| RocSeries {
                name: &m.name,
                points: &m.roc,
                auc: Some(m.metrics.roc_auc),
            })
            .collect();
        let title = match scale {
            FprScale::Log => format!("ROC, {} (low-FPR view)", self.title),
            FprScale::Linear => format!("ROC, {}", self.title),
        };
        plot::roc_svg(&title, &series, scale)
    }

    /// Score histogram of one model, with its thresholds for the FPR targets marked.
    pub fn histogram_svg(&self, model: &ModelResult) -> String {
        let markers: Vec<Marker> = model
            .metrics
            .tpr_at_fpr
            .iter()
            .map(|a| Marker {
                label: format!("FPR {}", fmt_target(a.target)),
                score: a.point.threshold,
            })
            .chain(model.metrics.fpr_at_tpr.iter().map(|a| Marker {
                label: format!("TPR {:.2}", a.target),
                score: a.point.threshold,
            }))
            .collect();
        plot::histogram_svg(
            &format!("Scores of {}, {}", model.name, self.title),
            &model.histogram,
            &markers,
        )
    }

    /// Write `report.json`, `report.md`, `roc.svg` (log FPR), `roc-linear.svg` and one
    /// `hist-<model>.svg` per model into `dir`, each atomically.
    pub fn write_all(&self, dir: &Path) -> Result<WrittenFiles> {
        std::fs::create_dir_all(dir)
            .runtime_ctx(|| format!("cannot create the report directory {}", dir.display()))?;
        let mut files = WrittenFiles {
            json: dir.join("report.json"),
            markdown: dir.join("report.md"),
            roc_log: dir.join("roc.svg"),
            roc_linear: dir.join("roc-linear.svg"),
            histograms: Vec::new(),
        };
        write_atomic(&files.roc_log, self.roc_svg(FprScale::Log).as_bytes())?;
        write_atomic(&files.roc_linear, self.roc_svg(FprScale::Linear).as_bytes())?;
        let mut used = Vec::new();
        for m in &self.models {
            let mut slug = slug(&m.name);
            // Distinct names can share a slug ("a b" and "a_b"); number the later ones.
            let base = slug.clone();
            let mut i = 2;
            while used.contains(&slug) {
                slug = format!("{base}-{i}");
                i += 1;
            }
            used.push(slug.clone());
            let path = dir.join(format!("hist-{slug}.svg"));
            write_atomic(&path, self.histogram_svg(m).as_bytes())?;
            files.histograms.push(path);
        }
        write_atomic(&files.json, self.to_json()?.as_bytes())?;
        write_atomic(&files.markdown, self.markdown(Some(&files)).as_bytes())?;
        Ok(files)
    }
}

fn group_rows(
    scores: &[f64],
    labels: &[bool],
    values: &[String],
    whole: &Metrics,
) -> Result<Vec<GroupRow>> {
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        members.entry(v.as_str()).or_default().push(i);
    }
    let mut rows = Vec::with_capacity(members.len());
    for (value, idx) in members {
        let s: Vec<f64> = idx.iter().map(|&i| scores[i]).collect();
        let l: Vec<bool> = idx.iter().map(|&i| labels[i]).collect();
        let positives = l.iter().filter(|&&x| x).count() as u64;
        let negatives = l.len() as u64 - positives;
        let curve = (positives > 0 && negatives > 0)
            .then(|| RocCurve::new(&s, &l))
            .transpose()?;
        let at = |target: f64, threshold: f64| -> Result<GroupRate> {
            let c = metrics::confusion_at(&s, &l, threshold)?;
            Ok(GroupRate {
                target,
                threshold,
                tpr: c.tpr(),
                fpr: c.fpr(),
            })
        };
        rows.push(GroupRow {
            value: value.to_string(),
            count: l.len() as u64,
            positives,
            negatives,
            roc_auc: curve.as_ref().map(RocCurve::auc),
            pr_auc: curve.as_ref().map(RocCurve::average_precision),
            tpr_at_fpr: whole
                .tpr_at_fpr
                .iter()
                .map(|a| at(a.target, a.point.threshold))
                .collect::<Result<_>>()?,
            fpr_at_tpr: whole
                .fpr_at_tpr
                .iter()
                .map(|a| at(a.target, a.point.threshold))
                .collect::<Result<_>>()?,
        });
    }
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    Ok(rows)
}

/// 1e-3 style for powers of ten, plain otherwise.
fn fmt_target(t: f64) -> String {
    let e = t.log10();
    if t > 0.0 && (e - e.round()).abs() < 1e-9 && e.round() <= -2.0 {
        format!("1e{}", e.round() as i32)
    } else {
        format!("{t}")
    }
}

/// Four decimals, or three significant digits in scientific notation below 0.001.
fn fmt_rate(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 1e-3 {
        format!("{v:.4}")
    } else {
        format!("{v:.2e}")
    }
}

fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn table_header(md: &mut String, header: &[String]) {
    table_row(md, header);
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
}

fn table_row(md: &mut String, cells: &[String]) {
    let _ = writeln!(md, "| {} |", cells.join(" | "));
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A file-name-safe form of a model name.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '_' || c == '.').to_string();
    if s.is_empty() { "model".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_target(1e-3), "1e-3");
        assert_eq!(fmt_target(1e-4), "1e-4");
        assert_eq!(fmt_target(0.05), "0.05");
        assert_eq!(fmt_rate(0.0), "0");
        assert_eq!(fmt_rate(0.91234), "0.9123");
        assert_eq!(fmt_rate(0.000123), "1.23e-4");
        assert_eq!(slug("CNN + iforest (seed 1)"), "cnn___iforest__seed_1");
        assert_eq!(slug("../.."), "model");
    }
}
