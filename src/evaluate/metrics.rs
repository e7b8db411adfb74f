//! Ranking metrics for a binary scorer: ROC curve and AUC, average precision, TPR at low FPR,
//! FPR at high TPR, thresholds, and confidence intervals for the AUC.
//!
//! Conventions, everywhere in this module:
//! - a higher score means "more malicious / more anomalous"; `true` labels are the positives;
//! - a line is flagged when `score >= threshold`. Reported thresholds lie halfway between the
//!   lowest flagged score and the next lower score (beyond the ends: a small margin), so numeric
//!   noise between evaluation and deployment (f32 vs f64 scores, a decimal round trip through
//!   JSON) does not move a line across the threshold;
//! - tied scores are never split: a threshold flags all lines of a tie or none of them, so every
//!   figure is reproducible from the scores alone (no interpolation between operating points,
//!   no random tie breaking). The ROC AUC counts a tied positive/negative pair as one half
//!   (Mann-Whitney), which equals the trapezoidal area under the tie-grouped ROC curve;
//! - NaN or infinite scores, mismatched lengths and missing classes are [`Error::Input`]
//!   errors that say what to fix, never panics.
//!
//! Each free function validates and sorts its input; when asking several questions of one score
//! set, build a [`RocCurve`] once with [`roc_curve`] and query it.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One point of the ROC curve: flagging `score >= threshold` gives these rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
}

/// The operating point chosen for a target rate (see [`RocCurve::tpr_at_fpr`] and
/// [`RocCurve::fpr_at_tpr`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// Flag lines with `score >= threshold`: halfway between the lowest flagged score and the
    /// next lower one (above the top score when nothing may be flagged).
    pub threshold: f64,
    pub tpr: f64,
    pub fpr: f64,
    pub true_positives: u64,
    pub false_positives: u64,
    /// Whether the test set is large enough for the target to mean anything: at least one
    /// error of the constrained kind fits under it. For TPR at FPR `f` that needs
    /// `negatives * f >= 1` (TPR at FPR 1e-4 needs 10,000 negatives); for FPR at TPR `t`,
    /// `positives * (1 - t) >= 1`. An unresolvable figure is still computed (it is then the
    /// rate at zero allowed errors) but should not be read as the target's.
    pub resolvable: bool,
}

/// Counts of a confusion matrix at one threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
}

impl Confusion {
    /// True positive rate; `None` when there are no positives.
    pub fn tpr(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }
    /// False positive rate; `None` when there are no negatives.
    pub fn fpr(&self) -> Option<f64> {
        ratio(
            self.false_positives,
            self.false_positives + self.true_negatives,
        )
    }
    /// Precision; `None` when nothing is flagged.
    pub fn precision(&self) -> Option<f64> {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// How a confidence interval for the ROC AUC is computed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum CiMethod {
    /// No interval.
    None,
    /// DeLong's asymptotic variance (deterministic, O(n log n)); needs two lines of each class.
    #[default]
    #[serde(rename = "delong")]
    DeLong,
    /// Stratified percentile bootstrap: positives and negatives resampled separately.
    Bootstrap { resamples: usize, seed: u64 },
}

/// A confidence interval around an estimate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
    #[serde(flatten)]
    pub method: CiMethod,
}

/// The ROC curve of one score set, grouped by distinct score: the object to query when
/// several metrics are wanted from the same scores.
#[derive(Clone, Debug)]
pub struct RocCurve {
    /// Distinct scores, descending.
    scores: Vec<f64>,
    /// Positives and negatives at each distinct score.
    pos: Vec<u64>,
    neg: Vec<u64>,
    /// Cumulative counts flagged at threshold `scores[k]`: `cum_tp[k + 1]`; index 0 is the
    /// "flag nothing" point.
    cum_tp: Vec<u64>,
    cum_fp: Vec<u64>,
    positives: u64,
    negatives: u64,
}

/// Build the ROC curve of `scores` against `labels`; needs at least one line of each class.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Result<RocCurve> {
    RocCurve::new(scores, labels)
}

/// Area under the ROC curve: the probability that a random positive outscores a random
/// negative, ties counting one half.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Result<f64> {
    Ok(roc_curve(scores, labels)?.auc())
}

/// Area under the precision-recall curve as average precision (step-wise, ties grouped; the
/// definition scikit-learn's `average_precision_score` uses).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Result<f64> {
    Ok(roc_curve(scores, labels)?.average_precision())
}

/// The highest TPR whose FPR does not exceed `target_fpr` (e.g. 1e-3).
pub fn tpr_at_fpr(scores: &[f64], labels: &[bool], target_fpr: f64) -> Result<OperatingPoint> {
    roc_curve(scores, labels)?.tpr_at_fpr(target_fpr)
}

/// The lowest FPR whose TPR is at least `target_tpr` (e.g. 0.9).
pub fn fpr_at_tpr(scores: &[f64], labels: &[bool], target_tpr: f64) -> Result<OperatingPoint> {
    roc_curve(scores, labels)?.fpr_at_tpr(target_tpr)
}

/// The threshold of [`tpr_at_fpr`]'s operating point: the one to ship for that
/// false-positive budget.
pub fn threshold_for_fpr(scores: &[f64], labels: &[bool], target_fpr: f64) -> Result<f64> {
    Ok(tpr_at_fpr(scores, labels, target_fpr)?.threshold)
}

/// Confusion counts when flagging `score >= threshold`. Unlike the curve metrics this accepts
/// a single class (e.g. a benign-only slice).
pub fn confusion_at(scores: &[f64], labels: &[bool], threshold: f64) -> Result<Confusion> {
    check_lengths(scores, labels)?;
    check_scores(scores)?;
    if threshold.is_nan() {
        return Err(Error::input(
            "the threshold is NaN: pass a threshold from tpr_at_fpr/fpr_at_tpr or a number",
        ));
    }
    let mut c = Confusion::default();
    for (&s, &l) in scores.iter().zip(labels) {
        match (s >= threshold, l) {
            (true, true) => c.true_positives += 1,
            (true, false) => c.false_positives += 1,
            (false, true) => c.false_negatives += 1,
            (false, false) => c.true_negatives += 1,
        }
    }
    Ok(c)
}

/// FPR among the negatives selected by `subset` when flagging `score >= threshold`, e.g. the
/// FPR on rare benign lines at the threshold that gives TPR 0.9 on the whole test set.
pub fn fpr_on_subset(
    scores: &[f64],
    labels: &[bool],
    subset: &[bool],
    threshold: f64,
) -> Result<f64> {
    if subset.len() != scores.len() {
        return Err(Error::input(format!(
            "the subset mask has {} entries but there are {} scores: pass one flag per line",
            subset.len(),
            scores.len()
        )));
    }
    check_lengths(scores, labels)?;
    let (s, l): (Vec<f64>, Vec<bool>) = scores
        .iter()
        .zip(labels)
        .zip(subset)
        .filter(|&(_, &keep)| keep)
        .map(|((&s, &l), _)| (s, l))
        .unzip();
    confusion_at(&s, &l, threshold)?.fpr().ok_or_else(|| {
        Error::input(
            "the subset holds no negative (benign) line, so its FPR is undefined: \
             choose a subset that contains negatives",
        )
    })
}

/// Confidence interval for the ROC AUC by DeLong's method (normal approximation, clipped to
/// [0, 1]); needs at least two positives and two negatives.
pub fn auc_ci_delong(scores: &[f64], labels: &[bool], level: f64) -> Result<Interval> {
    roc_curve(scores, labels)?.auc_ci_delong(level)
}

/// Confidence interval for the ROC AUC by a stratified percentile bootstrap, reproducible for
/// a given `seed`.
pub fn auc_ci_bootstrap(
    scores: &[f64],
    labels: &[bool],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<Interval> {
    roc_curve(scores, labels)?.auc_ci_bootstrap(level, resamples, seed)
}

fn check_lengths(scores: &[f64], labels: &[bool]) -> Result<()> {
    if scores.len() != labels.len() {
        return Err(Error::input(format!(
            "{} scores but {} labels: pass exactly one label per score",
            scores.len(),
            labels.len()
        )));
    }
    Ok(())
}

fn check_scores(scores: &[f64]) -> Result<()> {
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        let bad = scores.iter().filter(|s| !s.is_finite()).count();
        return Err(Error::input(format!(
            "score {} (line {i} of {}) is not a finite number, and {bad} score(s) in all are \
             NaN or infinite: the model produced invalid scores; fix or drop those lines \
             before evaluating",
            scores[i],
            scores.len()
        )));
    }
    Ok(())
}

fn check_rate(name: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::input(format!(
            "{name} {value} is not a rate between 0 and 1: pass e.g. 1e-3 or 0.9"
        )));
    }
    Ok(())
}

fn check_level(level: f64) -> Result<()> {
    if !(level > 0.0 && level < 1.0) {
        return Err(Error::input(format!(
            "confidence level {level} must lie strictly between 0 and 1: pass e.g. 0.95"
        )));
    }
    Ok(())
}

/// Relative slack for comparing a count ratio with a target, so that 1 / 1000 counts as
/// "at most 1e-3" despite rounding.
const RATE_SLACK: f64 = 1e-12;

impl RocCurve {
    /// See [`roc_curve`].
    pub fn new(scores: &[f64], labels: &[bool]) -> Result<Self> {
        check_lengths(scores, labels)?;
        if scores.is_empty() {
            return Err(Error::input(
                "no scores to evaluate: the test set is empty; check the test set's path and filters",
            ));
        }
        check_scores(scores)?;
        if scores.len() as u64 >= 1 << 32 {
            return Err(Error::input(format!(
                "{} lines exceed the 4-billion-line limit of exact AUC counting: evaluate a \
                 sample of the test set",
                scores.len()
            )));
        }
        let positives = labels.iter().filter(|&&l| l).count() as u64;
        let negatives = labels.len() as u64 - positives;
        if positives == 0 || negatives == 0 {
            let (have, missing) = if positives == 0 {
                ("negative (benign)", "positive (malicious)")
            } else {
                ("positive (malicious)", "negative (benign)")
            };
            return Err(Error::input(format!(
                "all {} lines are {have}: ROC and precision-recall metrics need at least one \
                 {missing} line; use a test set with both classes",
                labels.len()
            )));
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        // Scores are finite, so total_cmp is the numeric order (with -0.0 < 0.0, merged below).
        order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        let mut curve = RocCurve {
            scores: Vec::new(),
            pos: Vec::new(),
            neg: Vec::new(),
            cum_tp: vec![0],
            cum_fp: vec![0],
            positives,
            negatives,
        };
        let (mut tp, mut fp) = (0u64, 0u64);
        for &i in &order {
            let s = scores[i];
            // `==` merges -0.0 with 0.0, which total_cmp keeps apart.
            if curve.scores.last() != Some(&s) {
                curve.scores.push(s);
                curve.pos.push(0);
                curve.neg.push(0);
                curve.cum_tp.push(tp);
                curve.cum_fp.push(fp);
            }
            let k = curve.scores.len() - 1;
            if labels[i] {
                curve.pos[k] += 1;
                tp += 1;
            } else {
                curve.neg[k] += 1;
                fp += 1;
            }
            curve.cum_tp[k + 1] = tp;
            curve.cum_fp[k + 1] = fp;
        }
        Ok(curve)
    }

    /// Number of positive lines.
    pub fn positives(&self) -> u64 {
        self.positives
    }

    /// Number of negative lines.
    pub fn negatives(&self) -> u64 {
        self.negatives
    }

    /// Number of distinct scores.
    pub fn distinct_scores(&self) -> usize {
        self.scores.len()
    }

    /// The curve from (0, 0) to (1, 1), one point per distinct score (descending threshold).
    /// The first point flags nothing; its threshold lies above the top score.
    pub fn points(&self) -> Vec<RocPoint> {
        (0..self.cum_tp.len()).map(|k| self.point(k)).collect()
    }

    /// The threshold that flags the first `k` distinct scores: halfway to the next lower
    /// score; beyond the ends, a margin of a thousandth of the score range.
    fn threshold(&self, k: usize) -> f64 {
        let g = self.scores.len();
        let (top, bottom) = (self.scores[0], self.scores[g - 1]);
        let pad = ((top - bottom) * 1e-3)
            .max(top.abs().max(bottom.abs()) * 1e-6)
            .max(1e-12);
        if k == 0 {
            return top + pad;
        }
        if k == g {
            return bottom - pad;
        }
        let (flagged, below) = (self.scores[k - 1], self.scores[k]);
        let mid = flagged / 2.0 + below / 2.0;
        // Adjacent floats have no midpoint strictly between them: keep the flagged score.
        if mid > below && mid <= flagged {
            mid
        } else {
            flagged
        }
    }

    fn point(&self, k: usize) -> RocPoint {
        RocPoint {
            threshold: self.threshold(k),
            fpr: self.cum_fp[k] as f64 / self.negatives as f64,
            tpr: self.cum_tp[k] as f64 / self.positives as f64,
        }
    }

    fn operating_point(&self, k: usize, resolvable: bool) -> OperatingPoint {
        let p = self.point(k);
        OperatingPoint {
            threshold: p.threshold,
            tpr: p.tpr,
            fpr: p.fpr,
            true_positives: self.cum_tp[k],
            false_positives: self.cum_fp[k],
            resolvable,
        }
    }

    /// ROC AUC (Mann-Whitney U / (P N), ties one half), computed exactly in integers.
    pub fn auc(&self) -> f64 {
        self.weighted_auc(&self.pos, &self.neg)
    }

    /// AUC for per-group weights (the bootstrap's resampled counts): each negative counts the
    /// positives above it plus half of those tied with it.
    /// Exact in u64 while 2 P N < 2^64, i.e. for any test set under 4 billion lines.
    fn weighted_auc(&self, pos: &[u64], neg: &[u64]) -> f64 {
        let (mut above, mut twice_u, mut p, mut n) = (0u64, 0u64, 0u64, 0u64);
        for (&pk, &nk) in pos.iter().zip(neg) {
            twice_u += nk * (2 * above + pk);
            above += pk;
            p += pk;
            n += nk;
        }
        twice_u as f64 / (2 * p * n) as f64
    }

    /// [`RocCurve::tpr_at_fpr`]'s TPR for per-group weights (a resample drawn line by line).
    fn weighted_tpr_at_fpr(&self, pos: &[u64], neg: &[u64], target_fpr: f64) -> f64 {
        let (p, n) = (pos.iter().sum::<u64>(), neg.iter().sum::<u64>());
        let allowed = target_fpr * n as f64 * (1.0 + RATE_SLACK);
        let (mut tp, mut fp) = (0u64, 0u64);
        for (&pk, &nk) in pos.iter().zip(neg) {
            if (fp + nk) as f64 > allowed {
                break;
            }
            tp += pk;
            fp += nk;
        }
        tp as f64 / p as f64
    }

    /// Average precision: sum over thresholds of (recall step) x (precision there).
    pub fn average_precision(&self) -> f64 {
        let mut ap = 0.0;
        for k in 1..self.cum_tp.len() {
            let step = (self.cum_tp[k] - self.cum_tp[k - 1]) as f64;
            if step > 0.0 {
                let precision = self.cum_tp[k] as f64 / (self.cum_tp[k] + self.cum_fp[k]) as f64;
                ap += step * precision;
            }
        }
        ap / self.positives as f64
    }

    /// The highest TPR whose FPR does not exceed `target_fpr`.
    pub fn tpr_at_fpr(&self, target_fpr: f64) -> Result<OperatingPoint> {
        check_rate("target FPR", target_fpr)?;
        let allowed = target_fpr * self.negatives as f64 * (1.0 + RATE_SLACK);
        // cum_fp is non-decreasing: the last index within budget has the highest TPR.
        let k = self.cum_fp.partition_point(|&fp| fp as f64 <= allowed) - 1;
        Ok(self.operating_point(k, allowed >= 1.0))
    }

    /// The lowest FPR whose TPR reaches `target_tpr`.
    pub fn fpr_at_tpr(&self, target_tpr: f64) -> Result<OperatingPoint> {
        check_rate("target TPR", target_tpr)?;
        let needed = target_tpr * self.positives as f64 * (1.0 - RATE_SLACK);
        let k = self.cum_tp.partition_point(|&tp| (tp as f64) < needed);
        let may_miss = (1.0 - target_tpr) * self.positives as f64 * (1.0 + RATE_SLACK);
        Ok(self.operating_point(k.min(self.cum_tp.len() - 1), may_miss >= 1.0))
    }

    /// The threshold of [`RocCurve::tpr_at_fpr`]'s operating point.
    pub fn threshold_for_fpr(&self, target_fpr: f64) -> Result<f64> {
        Ok(self.tpr_at_fpr(target_fpr)?.threshold)
    }

    /// DeLong confidence interval for [`RocCurve::auc`].
    pub fn auc_ci_delong(&self, level: f64) -> Result<Interval> {
        check_level(level)?;
        if self.positives < 2 || self.negatives < 2 {
            return Err(Error::input(format!(
                "DeLong's interval needs at least 2 positives and 2 negatives, the test set has \
                 {} and {}: use a larger test set or no interval",
                self.positives, self.negatives
            )));
        }
        let auc = self.auc();
        let (p, n) = (self.positives as f64, self.negatives as f64);
        // Structural components: per positive, the share of negatives it outscores; per
        // negative, the share of positives that outscore it (ties one half each).
        let (mut s10, mut s01) = (0.0, 0.0);
        for k in 0..self.scores.len() {
            let (pk, nk) = (self.pos[k] as f64, self.neg[k] as f64);
            let negatives_below = (self.negatives - self.cum_fp[k + 1]) as f64;
            let v10 = (negatives_below + 0.5 * nk) / n;
            let v01 = (self.cum_tp[k] as f64 + 0.5 * pk) / p;
            s10 += pk * (v10 - auc).powi(2);
            s01 += nk * (v01 - auc).powi(2);
        }
        let variance = s10 / (p - 1.0) / p + s01 / (n - 1.0) / n;
        let half = normal_quantile(0.5 + level / 2.0) * variance.sqrt();
        Ok(Interval {
            estimate: auc,
            lower: (auc - half).max(0.0),
            upper: (auc + half).min(1.0),
            level,
            method: CiMethod::DeLong,
        })
    }

    /// Stratified percentile-bootstrap confidence interval for [`RocCurve::auc`].
    pub fn auc_ci_bootstrap(&self, level: f64, resamples: usize, seed: u64) -> Result<Interval> {
        let mut intervals =
            self.bootstrap(level, resamples, seed, &[self.auc()], |p, n, out| {
                out[0] = self.weighted_auc(p, n)
            })?;
        Ok(intervals.remove(0))
    }

    /// [`RocCurve::tpr_at_fpr`]'s TPR at each target.
    fn tprs_at_fprs(&self, targets: &[f64]) -> Result<Vec<f64>> {
        targets
            .iter()
            .map(|&t| Ok(self.tpr_at_fpr(t)?.tpr))
            .collect()
    }

    /// Stratified percentile-bootstrap intervals of [`RocCurve::tpr_at_fpr`] for each target
    /// FPR, from one set of resamples. At low FPR the few highest-scoring negatives set the
    /// figure, so its interval is much wider than the AUC's and often lopsided.
    pub fn tpr_at_fpr_ci_bootstrap(
        &self,
        targets: &[f64],
        level: f64,
        resamples: usize,
        seed: u64,
    ) -> Result<Vec<Interval>> {
        check_level(level)?;
        check_resamples(resamples)?;
        let estimates = self.tprs_at_fprs(targets)?;
        // Row r holds resample r's TPR at every target.
        let stats = targets.len();
        let mut values = vec![0.0; resamples * stats];
        values
            .par_chunks_mut(stats.max(1))
            .enumerate()
            .for_each(|(r, out)| {
                let mut rng = resample_rng(seed, r);
                self.resampled_tprs(&mut rng, targets, out);
            });
        Ok(percentile_intervals(
            &values,
            &estimates,
            level,
            CiMethod::Bootstrap { resamples, seed },
        ))
    }

    /// [`RocCurve::tpr_at_fpr_ci_bootstrap`] drawn the plain way, every line of every
    /// resample: the same distribution, at a cost proportional to the test set's size. The
    /// reference that the top-down draw is tested and benchmarked against
    /// (`scripts/bench_evaluate.sh`).
    pub fn tpr_at_fpr_ci_bootstrap_line_by_line(
        &self,
        targets: &[f64],
        level: f64,
        resamples: usize,
        seed: u64,
    ) -> Result<Vec<Interval>> {
        let estimates = self.tprs_at_fprs(targets)?;
        self.bootstrap(level, resamples, seed, &estimates, |p, n, out| {
            for (o, &t) in out.iter_mut().zip(targets) {
                *o = self.weighted_tpr_at_fpr(p, n, t);
            }
        })
    }

    /// One stratified resample's TPR at each target FPR, drawn top-down: the multinomial
    /// counts of the resample are drawn group by group as binomials of what is left (the
    /// same distribution as drawing every line), and only as far down the ranking as the
    /// largest target needs. At low FPR that is the top of the ranking, so a resample costs
    /// a few thousand draws where drawing every line of a million-line test would cost a
    /// million.
    fn resampled_tprs(&self, rng: &mut StdRng, targets: &[f64], out: &mut [f64]) {
        let (positives, negatives) = (self.positives, self.negatives);
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by(|&a, &b| targets[a].total_cmp(&targets[b]));
        let allowed: Vec<f64> = targets
            .iter()
            .map(|t| t * negatives as f64 * (1.0 + RATE_SLACK))
            .collect();
        // Draws left to place, and lines left to place them on, in each class.
        let (mut draws_n, mut lines_n, mut draws_p, mut lines_p) =
            (negatives, negatives, positives, positives);
        let (mut tp, mut fp, mut next) = (0u64, 0u64, 0usize);
        for (&pk, &nk) in self.pos.iter().zip(&self.neg) {
            let cn = share(rng, draws_n, nk, lines_n);
            (draws_n, lines_n) = (draws_n - cn, lines_n - nk);
            // A target whose budget this group's negatives would exceed stops above it.
            while next < order.len() && (fp + cn) as f64 > allowed[order[next]] {
                out[order[next]] = tp as f64 / positives as f64;
                next += 1;
            }
            if next == order.len() {
                return;
            }
            let cp = share(rng, draws_p, pk, lines_p);
            (draws_p, lines_p) = (draws_p - cp, lines_p - pk);
            tp += cp;
            fp += cn;
        }
        for &t in &order[next..] {
            out[t] = tp as f64 / positives as f64;
        }
    }

    /// Stratified percentile bootstrap of `estimates.len()` statistics at once: each resample
    /// draws the positives and the negatives with replacement, and `statistics` turns the
    /// resampled counts per distinct score into one value per statistic.
    fn bootstrap(
        &self,
        level: f64,
        resamples: usize,
        seed: u64,
        estimates: &[f64],
        statistics: impl Fn(&[u64], &[u64], &mut [f64]) + Sync,
    ) -> Result<Vec<Interval>> {
        check_level(level)?;
        check_resamples(resamples)?;
        // The distinct-score group of every positive and every negative line.
        let expand = |counts: &[u64]| -> Vec<u32> {
            let mut v = Vec::new();
            for (k, &c) in counts.iter().enumerate() {
                v.extend(std::iter::repeat_n(k as u32, c as usize));
            }
            v
        };
        let (pos_group, neg_group) = (expand(&self.pos), expand(&self.neg));
        let lines = pos_group.len() + neg_group.len();
        // Over about a second of work: show progress.
        let bar = (lines as u128 * resamples as u128 > 20_000_000)
            .then(|| crate::progress::bar(resamples as u64, "bootstrap", "resamples"));
        // Resample r draws from its own generator seeded by (seed, r), so the interval does not
        // depend on how many threads share the work.
        let stats = estimates.len();
        let one_resample =
            |r: usize, pos_w: &mut Vec<u64>, neg_w: &mut Vec<u64>, out: &mut [f64]| {
                let mut rng = resample_rng(seed, r);
                pos_w.fill(0);
                neg_w.fill(0);
                for _ in 0..pos_group.len() {
                    pos_w[pos_group[rng.random_range(0..pos_group.len())] as usize] += 1;
                }
                for _ in 0..neg_group.len() {
                    neg_w[neg_group[rng.random_range(0..neg_group.len())] as usize] += 1;
                }
                statistics(pos_w, neg_w, out);
            };
        let groups = self.scores.len();
        // Row r holds resample r's value of every statistic.
        let mut values = vec![0.0; resamples * stats];
        values
            .par_chunks_mut(stats.max(1))
            .enumerate()
            .for_each_init(
                || (vec![0u64; groups], vec![0u64; groups]),
                |(pos_w, neg_w), (r, out)| {
                    one_resample(r, pos_w, neg_w, out);
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                },
            );
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(percentile_intervals(
            &values,
            estimates,
            level,
            CiMethod::Bootstrap { resamples, seed },
        ))
    }

    /// Confidence interval by `method`; `Ok(None)` for [`CiMethod::None`].
    pub fn auc_ci(&self, method: CiMethod, level: f64) -> Result<Option<Interval>> {
        match method {
            CiMethod::None => Ok(None),
            CiMethod::DeLong => self.auc_ci_delong(level).map(Some),
            CiMethod::Bootstrap { resamples, seed } => {
                self.auc_ci_bootstrap(level, resamples, seed).map(Some)
            }
        }
    }
}

/// The generator of bootstrap resample `r`: seeded by (seed, r), so that an interval does not
/// depend on how many threads share the resamples.
pub(crate) fn resample_rng(seed: u64, r: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn check_resamples(resamples: usize) -> Result<()> {
    if resamples < 10 {
        return Err(Error::input(format!(
            "{resamples} bootstrap resamples are too few for an interval: use at least 10 \
             (1000 is usual)"
        )));
    }
    Ok(())
}

/// Percentile intervals at `level` of each statistic, from `values` holding one row of
/// `estimates.len()` values per resample.
fn percentile_intervals(
    values: &[f64],
    estimates: &[f64],
    level: f64,
    method: CiMethod,
) -> Vec<Interval> {
    let stats = estimates.len();
    let alpha = 1.0 - level;
    (0..stats)
        .map(|k| {
            let mut column: Vec<f64> = values.iter().skip(k).step_by(stats).copied().collect();
            column.sort_unstable_by(f64::total_cmp);
            Interval {
                estimate: estimates[k],
                lower: quantile_sorted(&column, alpha / 2.0),
                upper: quantile_sorted(&column, 1.0 - alpha / 2.0),
                level,
                method,
            }
        })
        .collect()
}

/// How many of `draws` uniform draws over `lines` lines land on a given `k` of them: the
/// binomial `B(draws, k / lines)`, drawn exactly.
fn share(rng: &mut StdRng, draws: u64, k: u64, lines: u64) -> u64 {
    if k == 0 || draws == 0 {
        0
    } else if k >= lines {
        draws
    } else {
        binomial(rng, draws, k as f64 / lines as f64)
    }
}

/// A draw of the binomial `B(trials, p)`: by inverting its distribution function from 0
/// (expected steps about the mean) while the mean is small, which is the case for the
/// bootstrap's groups of a few lines; by counting Bernoulli draws otherwise (large tie groups
/// only), which is exact and costs what drawing those lines one by one would.
fn binomial(rng: &mut StdRng, trials: u64, p: f64) -> u64 {
    if p > 0.5 {
        return trials - binomial(rng, trials, 1.0 - p);
    }
    let mean = trials as f64 * p;
    if mean > 64.0 {
        return (0..trials).filter(|_| rng.random::<f64>() < p).count() as u64;
    }
    // P(0) = (1 - p)^trials, then P(k + 1) = P(k) (trials - k) / (k + 1) p / (1 - p).
    let ratio = p / (1.0 - p);
    let mut pmf = (trials as f64 * (-p).ln_1p()).exp();
    let mut cdf = pmf;
    let u = rng.random::<f64>();
    let mut k = 0u64;
    while u > cdf && k < trials {
        pmf *= (trials - k) as f64 / (k + 1) as f64 * ratio;
        k += 1;
        cdf += pmf;
        // Rounding can leave the sum a hair under 1: past the mean by far, stop there.
        if pmf == 0.0 {
            break;
        }
    }
    k
}

/// Linear-interpolated quantile of sorted, non-empty values.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, relative error
/// below 1.2e-9), for `p` in (0, 1).
pub(crate) fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Which metrics [`summarize`] computes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsOptions {
    /// FPR budgets for "TPR at FPR" (default 1e-2, 1e-3, 1e-4).
    pub fpr_targets: Vec<f64>,
    /// Detection rates for "FPR at TPR" (default 0.90, 0.95).
    pub tpr_targets: Vec<f64>,
    /// Interval method for the ROC AUC (default DeLong).
    pub ci: CiMethod,
    /// Interval coverage (default 0.95).
    pub ci_level: f64,
    /// Bootstrap resamples of the intervals of every "TPR at FPR" (default 1000; 0 for none).
    /// The low-FPR figures move with a handful of negatives, so they get an interval whatever
    /// the AUC's method.
    #[serde(default = "default_tpr_ci_resamples")]
    pub tpr_ci_resamples: usize,
}

fn default_tpr_ci_resamples() -> usize {
    1000
}

/// Seed of the "TPR at FPR" intervals: fixed, so a report is reproducible.
const TPR_CI_SEED: u64 = 0x5eed;

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            fpr_targets: vec![1e-2, 1e-3, 1e-4],
            tpr_targets: vec![0.90, 0.95],
            ci: CiMethod::DeLong,
            ci_level: 0.95,
            tpr_ci_resamples: default_tpr_ci_resamples(),
        }
    }
}

/// An operating point found for one target rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AtTarget {
    pub target: f64,
    #[serde(flatten)]
    pub point: OperatingPoint,
    /// Bootstrap interval of the rate (only for "TPR at FPR", when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<Interval>,
}

/// The standard metrics of one score set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub count: u64,
    pub positives: u64,
    pub negatives: u64,
    pub roc_auc: f64,
    /// `None` when no interval was asked for or the classes are too small for one.
    pub roc_auc_ci: Option<Interval>,
    /// Average precision.
    pub pr_auc: f64,
    pub tpr_at_fpr: Vec<AtTarget>,
    pub fpr_at_tpr: Vec<AtTarget>,
}

/// All of [`MetricsOptions`]' metrics for one score set, from one sort.
pub fn summarize(scores: &[f64], labels: &[bool], options: &MetricsOptions) -> Result<Metrics> {
    summarize_curve(&roc_curve(scores, labels)?, options)
}

/// [`summarize`] for an already built curve.
pub fn summarize_curve(curve: &RocCurve, options: &MetricsOptions) -> Result<Metrics> {
    let roc_auc_ci = match curve.auc_ci(options.ci, options.ci_level) {
        Ok(ci) => ci,
        // Too few lines of a class for an interval is no reason to withhold the metrics.
        Err(e) if curve.positives < 2 || curve.negatives < 2 => {
            tracing::warn!("no AUC confidence interval: {e}");
            None
        }
        Err(e) => return Err(e),
    };
    let tpr_cis = match options.tpr_ci_resamples {
        0 => vec![None; options.fpr_targets.len()],
        resamples => curve
            .tpr_at_fpr_ci_bootstrap(
                &options.fpr_targets,
                options.ci_level,
                resamples,
                TPR_CI_SEED,
            )?
            .into_iter()
            .map(Some)
            .collect(),
    };
    let tpr_at_fpr = options
        .fpr_targets
        .iter()
        .zip(tpr_cis)
        .map(|(&target, ci)| {
            Ok(AtTarget {
                target,
                point: curve.tpr_at_fpr(target)?,
                ci,
            })
        })
        .collect::<Result<_>>()?;
    let fpr_at_tpr = options
        .tpr_targets
        .iter()
        .map(|&target| {
            Ok(AtTarget {
                target,
                point: curve.fpr_at_tpr(target)?,
                ci: None,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Metrics {
        count: curve.positives + curve.negatives,
        positives: curve.positives,
        negatives: curve.negatives,
        roc_auc: curve.auc(),
        roc_auc_ci,
        pr_auc: curve.average_precision(),
        tpr_at_fpr,
        fpr_at_tpr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_matches_known_values() {
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-8);
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_quantile(0.01) + 2.326347874040841).abs() < 1e-8);
        assert!((normal_quantile(0.999) - 3.090232306167813).abs() < 1e-8);
    }

    #[test]
    fn quantile_interpolates() {
        let v = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(quantile_sorted(&v, 0.0), 0.0);
        assert_eq!(quantile_sorted(&v, 1.0), 3.0);
        assert!((quantile_sorted(&v, 0.5) - 1.5).abs() < 1e-12);
    }

    #[test]
    fn groups_merge_ties_and_negative_zero() {
        let c = RocCurve::new(&[0.0, -0.0, 1.0, 1.0], &[true, false, true, false]).unwrap();
        assert_eq!(c.distinct_scores(), 2);
        assert_eq!(c.cum_tp, vec![0, 1, 2]);
        assert_eq!(c.cum_fp, vec![0, 1, 2]);
        assert_eq!(c.auc(), 0.5);
    }

    #[test]
    fn thresholds_separate_neighbouring_scores() {
        // Adjacent floats: no midpoint between them, so the flagged score itself.
        let hi = 1.0f64;
        let lo = hi.next_down();
        let c = RocCurve::new(&[hi, lo], &[true, false]).unwrap();
        assert_eq!(c.threshold(1), hi);
        assert!(c.threshold(0) > hi && c.threshold(2) < lo);
        // A constant score still gets thresholds on both sides.
        let c = RocCurve::new(&[0.0, 0.0], &[true, false]).unwrap();
        assert!(c.threshold(0) > 0.0 && c.threshold(1) < 0.0);
    }

    #[test]
    fn weighted_auc_with_unit_weights_is_auc() {
        let c = RocCurve::new(
            &[0.9, 0.8, 0.8, 0.3, 0.1],
            &[true, false, true, false, true],
        )
        .unwrap();
        assert_eq!(c.weighted_auc(&c.pos, &c.neg), c.auc());
    }

    #[test]
    fn binomial_draws_have_the_binomials_mean_and_variance() {
        let mut rng = StdRng::seed_from_u64(3);
        // Small means (inversion), p above one half (mirrored), a large mean (counting).
        for (trials, p) in [
            (1000u64, 0.001),
            (50, 0.3),
            (10, 0.9),
            (1000, 0.2),
            (7, 1.0),
        ] {
            let draws: Vec<f64> = (0..20_000)
                .map(|_| binomial(&mut rng, trials, p) as f64)
                .collect();
            assert!(draws.iter().all(|&d| d <= trials as f64));
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            let (want_mean, want_var) = (trials as f64 * p, trials as f64 * p * (1.0 - p));
            assert!(
                (mean - want_mean).abs() < 0.03 * want_mean.max(1.0),
                "B({trials}, {p}): mean {mean} against {want_mean}"
            );
            assert!(
                (var - want_var).abs() < 0.06 * want_var.max(0.05) + 1e-9,
                "B({trials}, {p}): variance {var} against {want_var}"
            );
        }
        assert_eq!(share(&mut rng, 5, 3, 3), 5);
        assert_eq!(share(&mut rng, 5, 0, 3), 0);
    }

    #[test]
    fn tpr_intervals_are_the_curves_tpr_under_resampling() {
        // 1,000 negatives and 200 positives on 50 distinct scores: ties at every threshold.
        let labels: Vec<bool> = (0..1200).map(|i| i % 6 == 0).collect();
        let scores: Vec<f64> = (0..1200u64)
            .map(|i| ((i * 7919) % 50) as f64 + if i % 6 == 0 { 20.0 } else { 0.0 })
            .collect();
        let c = RocCurve::new(&scores, &labels).unwrap();
        let targets = [1e-1, 1e-2, 1e-3];
        for &t in &targets {
            let want = c.tpr_at_fpr(t).unwrap().tpr;
            assert_eq!(c.weighted_tpr_at_fpr(&c.pos, &c.neg, t), want, "at FPR {t}");
        }
        let cis = c.tpr_at_fpr_ci_bootstrap(&targets, 0.95, 300, 9).unwrap();
        for (ci, &t) in cis.iter().zip(&targets) {
            assert_eq!(ci.estimate, c.tpr_at_fpr(t).unwrap().tpr);
            assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
            assert!(
                ci.upper > ci.lower,
                "resampling moves the TPR at FPR {t}: {ci:?}"
            );
        }
        assert_eq!(
            cis,
            c.tpr_at_fpr_ci_bootstrap(&targets, 0.95, 300, 9).unwrap()
        );
        // The top-down draw has the distribution of drawing every line: its intervals match
        // the line-by-line bootstrap's to within resampling noise.
        // (FPR 0.5 walks half the ranking down, where the draws depend most on what is left.)
        let deep = [0.5, 1e-1, 1e-2];
        let fast = c.tpr_at_fpr_ci_bootstrap(&deep, 0.9, 4000, 5).unwrap();
        let slow = c
            .tpr_at_fpr_ci_bootstrap_line_by_line(&deep, 0.9, 4000, 6)
            .unwrap();
        for (f, s) in fast.iter().zip(&slow) {
            assert!(
                (f.lower - s.lower).abs() < 0.015 && (f.upper - s.upper).abs() < 0.015,
                "top-down {f:?} against line by line {s:?}"
            );
        }
        // The AUC's interval does not depend on being computed beside others.
        let auc = c.auc_ci_bootstrap(0.95, 300, 9).unwrap();
        assert!(
            auc.lower < auc.estimate && auc.estimate < auc.upper,
            "{auc:?}"
        );
        // summarize attaches them to "TPR at FPR" only; 0 resamples turns them off.
        let m = summarize(&scores, &labels, &MetricsOptions::default()).unwrap();
        assert!(m.tpr_at_fpr.iter().all(|a| a.ci.is_some()));
        assert!(m.fpr_at_tpr.iter().all(|a| a.ci.is_none()));
        let off = MetricsOptions {
            tpr_ci_resamples: 0,
            ..Default::default()
        };
        let m = summarize(&scores, &labels, &off).unwrap();
        assert!(m.tpr_at_fpr.iter().all(|a| a.ci.is_none()));
    }
}
