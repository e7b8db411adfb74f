//! Evaluation of scorers (classifiers and anomaly detectors) on a labeled test set.
//!
//! - [`metrics`]: ROC curve and AUC with exact tie handling, average precision, TPR at low
//!   FPR, FPR at high TPR, thresholds, FPR on a subset, DeLong and bootstrap intervals;
//! - [`paired`]: bootstrap intervals over seeds and test lines: of the difference between two
//!   classifiers (AUC or TPR at low FPR), paired by seed, and of one classifier's mean;
//! - [`report`]: [`Report`], several models on one test set with group breakdowns, written as
//!   JSON, Markdown and SVG charts;
//! - [`plot`]: the dependency-free SVG charts (ROC with a log FPR axis, score histograms).
//!
//! Scores are "higher = more malicious/anomalous"; labels are `true` for malicious.

pub mod metrics;
pub mod paired;
pub mod plot;
pub mod report;

pub use metrics::{
    CiMethod, Confusion, Interval, Metrics, MetricsOptions, OperatingPoint, RocCurve,
    average_precision, roc_auc, roc_curve,
};
pub use paired::{Statistic, paired_auc_gain, paired_gain, seed_mean};
pub use report::{Report, ReportOptions};
