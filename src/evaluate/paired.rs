//! Confidence intervals over seeds and test lines at once: for the *difference* between two
//! classifiers on one test set, paired by training seed (did arm A beat arm B beyond what the
//! test lines and the seeds could produce by chance?), and for one classifier's mean over
//! seeds (how far could a figure such as the TPR at FPR 1e-3 move on another draw of the test?).
//!
//! A percentile bootstrap over both sources of noise: each resample draws the seeds with
//! replacement, and the test lines with replacement within each class, and takes the mean over
//! the drawn seeds of the statistic (or of the pair's difference) on the drawn lines. The same
//! drawn lines serve both members of a pair, so what the pair shares (hard lines, easy lines)
//! cancels.

use super::metrics::{CiMethod, Interval, quantile_sorted, resample_rng};
use crate::error::{Error, Result};
use rand::prelude::*;
use rayon::prelude::*;

/// What an interval is of: a statistic of one classifier's scores on the test lines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Statistic {
    /// The ROC AUC (ties count one half).
    RocAuc,
    /// The highest TPR whose FPR does not exceed the target, flagging whole groups of tied
    /// scores, as [`super::RocCurve::tpr_at_fpr`] does. Below `1 / target` benign lines it is
    /// the TPR at zero false positives, and a single benign line can move it.
    TprAtFpr(f64),
}

/// Relative slack for "at most `target` x negatives" false positives, as in the ROC curve.
const RATE_SLACK: f64 = 1e-12;

/// One score set's lines in descending score order, with the ends of its tie groups: any
/// statistic under per-line weights is then one pass.
struct Ranked {
    order: Vec<u32>,
    /// Exclusive end (into `order`) of each group of equal scores.
    group_ends: Vec<u32>,
}

impl Ranked {
    fn new(scores: &[f64]) -> Ranked {
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
        let mut group_ends = Vec::new();
        for k in 1..order.len() {
            // `!=` merges -0.0 with 0.0, like the ROC curve does.
            if scores[order[k] as usize] != scores[order[k - 1] as usize] {
                group_ends.push(k as u32);
            }
        }
        group_ends.push(order.len() as u32);
        Ranked { order, group_ends }
    }

    /// The weighted positives and negatives of each tie group, highest scores first.
    fn groups<'a>(
        &'a self,
        labels: &'a [bool],
        weight: &'a [u32],
    ) -> impl Iterator<Item = (u64, u64)> + 'a {
        let starts = std::iter::once(0).chain(self.group_ends.iter().copied());
        starts.zip(&self.group_ends).map(move |(start, &end)| {
            let (mut pk, mut nk) = (0u64, 0u64);
            for &i in &self.order[start as usize..end as usize] {
                let w = weight[i as usize] as u64;
                if labels[i as usize] {
                    pk += w;
                } else {
                    nk += w;
                }
            }
            (pk, nk)
        })
    }

    /// `statistic` with line `i` counted `weight[i]` times; `positives`/`negatives` are the
    /// weight sums of each class.
    fn weighted(
        &self,
        statistic: Statistic,
        labels: &[bool],
        weight: &[u32],
        positives: u64,
        negatives: u64,
    ) -> f64 {
        match statistic {
            Statistic::RocAuc => {
                // Mann-Whitney: each negative counts the positives above it, ties one half.
                let (mut above, mut twice_u) = (0u64, 0u64);
                for (pk, nk) in self.groups(labels, weight) {
                    twice_u += nk * (2 * above + pk);
                    above += pk;
                }
                twice_u as f64 / (2 * positives * negatives) as f64
            }
            Statistic::TprAtFpr(target) => {
                let allowed = target * negatives as f64 * (1.0 + RATE_SLACK);
                let (mut tp, mut fp) = (0u64, 0u64);
                for (pk, nk) in self.groups(labels, weight) {
                    if (fp + nk) as f64 > allowed {
                        break;
                    }
                    tp += pk;
                    fp += nk;
                }
                tp as f64 / positives as f64
            }
        }
    }
}

/// The mean over `pairs` (one per seed: scores of A, scores of B, both on the lines of
/// `labels`) of AUC(A) - AUC(B), with a percentile-bootstrap interval at `level` over seeds
/// and test lines (see the module docs). Reproducible for a given `seed`, whatever the
/// number of threads.
pub fn paired_auc_gain(
    pairs: &[(&[f64], &[f64])],
    labels: &[bool],
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<Interval> {
    paired_gain(pairs, labels, Statistic::RocAuc, level, resamples, seed)
}

/// [`paired_auc_gain`] for any [`Statistic`]: the mean over seeds of `statistic`(A) -
/// `statistic`(B), with its interval.
pub fn paired_gain(
    pairs: &[(&[f64], &[f64])],
    labels: &[bool],
    statistic: Statistic,
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<Interval> {
    let runs: Vec<&[f64]> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let boot = Bootstrap::new(&runs, labels, statistic, level, resamples)?;
    boot.interval(pairs.len(), seed, |pair, weight| {
        boot.value(2 * pair, weight) - boot.value(2 * pair + 1, weight)
    })
}

/// The mean over `runs` (one score set per seed, on the lines of `labels`) of `statistic`,
/// with a percentile-bootstrap interval at `level` over seeds and test lines: how far the
/// figure could move on another draw of the test set and of the seeds.
pub fn seed_mean(
    runs: &[&[f64]],
    labels: &[bool],
    statistic: Statistic,
    level: f64,
    resamples: usize,
    seed: u64,
) -> Result<Interval> {
    let boot = Bootstrap::new(runs, labels, statistic, level, resamples)?;
    boot.interval(runs.len(), seed, |run, weight| boot.value(run, weight))
}

/// Checked input of one bootstrap: the score sets ranked once, the lines of each class.
struct Bootstrap<'a> {
    ranked: Vec<Ranked>,
    labels: &'a [bool],
    pos: Vec<u32>,
    neg: Vec<u32>,
    statistic: Statistic,
    level: f64,
    resamples: usize,
}

impl<'a> Bootstrap<'a> {
    fn new(
        runs: &[&[f64]],
        labels: &'a [bool],
        statistic: Statistic,
        level: f64,
        resamples: usize,
    ) -> Result<Self> {
        if runs.is_empty() {
            return Err(Error::input("no runs to compare: score at least one seed"));
        }
        if !(level > 0.0 && level < 1.0) {
            return Err(Error::input(format!(
                "confidence level {level} must lie strictly between 0 and 1: pass e.g. 0.95"
            )));
        }
        if resamples < 10 {
            return Err(Error::input(format!(
                "{resamples} bootstrap resamples are too few for an interval: use at least 10"
            )));
        }
        if let Statistic::TprAtFpr(target) = statistic
            && !(0.0..=1.0).contains(&target)
        {
            return Err(Error::input(format!(
                "target FPR {target} is not a rate between 0 and 1: pass e.g. 1e-3"
            )));
        }
        if let Some(run) = runs.iter().find(|r| r.len() != labels.len()) {
            return Err(Error::input(format!(
                "scores cover {} lines but the test set has {}: score every classifier on \
                 the same test set",
                run.len(),
                labels.len()
            )));
        }
        if runs.iter().any(|r| r.iter().any(|s| !s.is_finite())) {
            return Err(Error::input("a score is NaN or infinite: cannot rank it"));
        }
        let pos: Vec<u32> = (0..labels.len() as u32)
            .filter(|&i| labels[i as usize])
            .collect();
        let neg: Vec<u32> = (0..labels.len() as u32)
            .filter(|&i| !labels[i as usize])
            .collect();
        if pos.is_empty() || neg.is_empty() {
            return Err(Error::input(
                "a ROC statistic needs both benign and malicious test lines",
            ));
        }
        Ok(Bootstrap {
            ranked: runs.iter().map(|r| Ranked::new(r)).collect(),
            labels,
            pos,
            neg,
            statistic,
            level,
            resamples,
        })
    }

    /// The statistic of run `run` under per-line weights (resampling keeps each class's size).
    fn value(&self, run: usize, weight: &[u32]) -> f64 {
        let (p, n) = (self.pos.len() as u64, self.neg.len() as u64);
        self.ranked[run].weighted(self.statistic, self.labels, weight, p, n)
    }

    /// The mean of `of(unit, weights)` over `units` seeds, and its interval: each resample
    /// draws the lines within each class and the units, from its own generator seeded by
    /// (seed, resample), so the interval does not depend on how many threads share the work.
    fn interval(
        &self,
        units: usize,
        seed: u64,
        of: impl Fn(usize, &[u32]) -> f64 + Sync,
    ) -> Result<Interval> {
        let ones = vec![1u32; self.labels.len()];
        let estimate = (0..units).map(|u| of(u, &ones)).sum::<f64>() / units as f64;
        let mut means = vec![0.0; self.resamples];
        means.par_iter_mut().enumerate().for_each_init(
            || vec![0u32; self.labels.len()],
            |weight, (r, out)| {
                let mut rng = resample_rng(seed, r);
                weight.fill(0);
                for class in [&self.pos, &self.neg] {
                    for _ in 0..class.len() {
                        weight[class[rng.random_range(0..class.len())] as usize] += 1;
                    }
                }
                let mut sum = 0.0;
                for _ in 0..units {
                    sum += of(rng.random_range(0..units), weight);
                }
                *out = sum / units as f64;
            },
        );
        means.sort_unstable_by(f64::total_cmp);
        let alpha = 1.0 - self.level;
        Ok(Interval {
            estimate,
            lower: quantile_sorted(&means, alpha / 2.0),
            upper: quantile_sorted(&means, 1.0 - alpha / 2.0),
            level: self.level,
            method: CiMethod::Bootstrap {
                resamples: self.resamples,
                seed,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::roc_auc;
    use rand::rngs::StdRng;

    fn noisy(labels: &[bool], signal: f64, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        labels
            .iter()
            .map(|&l| signal * l as u8 as f64 + rng.random::<f64>())
            .collect()
    }

    #[test]
    fn the_estimate_is_the_mean_paired_difference_of_exact_aucs() {
        let labels: Vec<bool> = (0..300).map(|i| i % 3 == 0).collect();
        let a1 = noisy(&labels, 0.8, 1);
        let b1 = noisy(&labels, 0.3, 2);
        let a2 = noisy(&labels, 0.7, 3);
        let b2 = noisy(&labels, 0.4, 4);
        let ci = paired_auc_gain(&[(&a1, &b1), (&a2, &b2)], &labels, 0.95, 200, 7).unwrap();
        let want = ((roc_auc(&a1, &labels).unwrap() - roc_auc(&b1, &labels).unwrap())
            + (roc_auc(&a2, &labels).unwrap() - roc_auc(&b2, &labels).unwrap()))
            / 2.0;
        assert!(
            (ci.estimate - want).abs() < 1e-12,
            "{} vs {want}",
            ci.estimate
        );
        assert!(ci.lower > 0.0 && ci.lower < ci.estimate && ci.estimate < ci.upper);
        // Reproducible for a seed.
        let again = paired_auc_gain(&[(&a1, &b1), (&a2, &b2)], &labels, 0.95, 200, 7).unwrap();
        assert_eq!(ci, again);
    }

    #[test]
    fn identical_classifiers_differ_by_nothing_and_equal_ones_straddle_zero() {
        let labels: Vec<bool> = (0..400).map(|i| i % 4 == 0).collect();
        let a = noisy(&labels, 0.5, 1);
        let same = paired_auc_gain(&[(&a, &a)], &labels, 0.95, 100, 1).unwrap();
        assert_eq!((same.estimate, same.lower, same.upper), (0.0, 0.0, 0.0));
        // Two draws of the same quality: the interval covers 0.
        let b = noisy(&labels, 0.5, 2);
        let ci = paired_auc_gain(&[(&a, &b)], &labels, 0.95, 300, 1).unwrap();
        assert!(ci.lower < 0.0 && ci.upper > 0.0, "{ci:?}");
    }

    #[test]
    fn the_tpr_at_fpr_is_the_roc_curves_and_its_interval_shows_how_few_lines_set_it() {
        // 2,000 benign lines and 500 attacks; ties at the top on purpose (scores rounded).
        let labels: Vec<bool> = (0..2500).map(|i| i % 5 == 0).collect();
        let runs: Vec<Vec<f64>> = (1..=3)
            .map(|s| {
                noisy(&labels, 0.6, s)
                    .into_iter()
                    .map(|x| (x * 200.0).round() / 200.0)
                    .collect()
            })
            .collect();
        let views: Vec<&[f64]> = runs.iter().map(|r| r.as_slice()).collect();
        let stat = Statistic::TprAtFpr(1e-3);
        let ci = seed_mean(&views, &labels, stat, 0.95, 300, 3).unwrap();
        let exact: f64 = runs
            .iter()
            .map(|r| {
                crate::evaluate::roc_curve(r, &labels)
                    .unwrap()
                    .tpr_at_fpr(1e-3)
                    .unwrap()
                    .tpr
            })
            .sum::<f64>()
            / 3.0;
        assert!(
            (ci.estimate - exact).abs() < 1e-12,
            "{} vs {exact}",
            ci.estimate
        );
        assert!(ci.lower <= ci.estimate && ci.estimate <= ci.upper, "{ci:?}");
        // Two false positives allowed: the interval is wide, unlike the AUC's.
        let auc = seed_mean(&views, &labels, Statistic::RocAuc, 0.95, 300, 3).unwrap();
        assert!(
            ci.upper - ci.lower > 3.0 * (auc.upper - auc.lower),
            "{ci:?} {auc:?}"
        );
        // One benign line scored above every attack: at zero false positives allowed (FPR
        // 1e-4 of 2,000 lines) the TPR is 0, and resamples that leave that line out recover.
        let mut one_bad = runs[0].clone();
        one_bad[1] = 10.0;
        let zero = seed_mean(
            &[&one_bad],
            &labels,
            Statistic::TprAtFpr(1e-4),
            0.95,
            300,
            3,
        )
        .unwrap();
        assert_eq!(zero.estimate, 0.0);
        assert!(zero.upper > 0.0, "{zero:?}");
        // Identical pairs differ by nothing; the AUC gain is the old function's.
        let same = paired_gain(&[(&runs[0], &runs[0])], &labels, stat, 0.95, 100, 1).unwrap();
        assert_eq!((same.estimate, same.lower, same.upper), (0.0, 0.0, 0.0));
        let pairs = [(views[0], views[1])];
        assert_eq!(
            paired_gain(&pairs, &labels, Statistic::RocAuc, 0.95, 100, 1).unwrap(),
            paired_auc_gain(&pairs, &labels, 0.95, 100, 1).unwrap()
        );
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        let labels = [true, false];
        let err = paired_auc_gain(&[(&[0.1][..], &[0.2, 0.3][..])], &labels, 0.95, 100, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("same test set"), "{err}");
        let one_class = [true, true];
        let err = paired_auc_gain(
            &[(&[0.1, 0.2][..], &[0.2, 0.3][..])],
            &one_class,
            0.95,
            100,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("both benign and malicious"), "{err}");
        assert!(paired_auc_gain(&[], &labels, 0.95, 100, 1).is_err());
        let err = seed_mean(
            &[&[0.1, 0.2][..]],
            &labels,
            Statistic::TprAtFpr(2.0),
            0.95,
            100,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a rate"), "{err}");
    }
}
