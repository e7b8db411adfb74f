//! `evaluate`: several classifiers compared on one labeled test set.

use super::Classifier;
use super::data::source_group;
use crate::Globals;
use crate::error::{Error, Result};
use crate::evaluate::{Report, ReportOptions};
use crate::io::read_labeled;
use std::path::PathBuf;

/// What [`evaluate_classifiers`] compares.
#[derive(Clone, Debug)]
pub struct EvaluateRequest {
    /// Labeled test files (`cmd`, `label`; `source` and `platform` give breakdown tables).
    pub test: Vec<PathBuf>,
    /// `(name, classifier directory)`, in report order.
    pub models: Vec<(String, PathBuf)>,
    pub title: String,
    /// Padded token positions per scoring batch.
    pub batch_tokens: usize,
    /// Bootstrap resamples of each TPR-at-FPR interval (0: none).
    pub tpr_ci_resamples: usize,
}

/// Score the test set with every model and compare them in one report. `on_model` hears each
/// model's name and result as it is done.
pub fn evaluate_classifiers(
    req: &EvaluateRequest,
    globals: &Globals,
    mut on_model: impl FnMut(&crate::evaluate::report::ModelResult),
) -> Result<Report> {
    let rows = read_labeled(&req.test, true)?;
    let mut skipped = std::collections::BTreeMap::<String, u64>::new();
    let (mut cmds, mut labels, mut sources, mut platforms) = (vec![], vec![], vec![], vec![]);
    for row in rows {
        match row.label() {
            Some(l) => {
                labels.push(l.is_malicious());
                sources.push(row.source.as_deref().map_or("(none)".into(), source_group));
                platforms.push(row.platform.unwrap_or_else(|| "(none)".into()));
                cmds.push(row.cmd);
            }
            None => {
                *skipped
                    .entry(row.label_text.unwrap_or_else(|| "(none)".into()))
                    .or_default() += 1
            }
        }
    }
    if !skipped.is_empty() {
        tracing::info!("skipped test rows by label (not benign/malicious): {skipped:?}");
    }
    if cmds.is_empty() {
        return Err(Error::input(
            "the test set has no row labeled benign or malicious; pass files with a `label` column",
        ));
    }
    let mut groups: Vec<(&str, &[String])> = Vec::new();
    if sources.iter().any(|s| s != "(none)") {
        groups.push(("source", sources.as_slice()));
    }
    if platforms.iter().any(|p| p != "(none)") {
        groups.push(("platform", platforms.as_slice()));
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let mut options = ReportOptions::default();
    options.metrics.tpr_ci_resamples = req.tpr_ci_resamples;
    let mut report = Report::new(req.title.clone(), options);
    for (name, dir) in &req.models {
        let classifier = Classifier::load(dir, globals)?;
        let bar = crate::progress::bar(refs.len() as u64, name, "lines");
        let scores = classifier.score(&refs, req.batch_tokens, |n| bar.inc(n as u64));
        bar.finish_and_clear();
        on_model(report.add(name, &scores, &labels, &groups)?);
    }
    Ok(report)
}
