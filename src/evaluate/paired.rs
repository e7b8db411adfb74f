//! Confidence intervals for the *difference* between two classifiers' ROC AUC on one test
//! set, paired by training seed: did arm A beat arm B beyond what the test lines and the seeds
//! could produce by chance?
//!
//! A percentile bootstrap over both sources of noise at once: each resample draws the seeds
//! (pairs) with replacement, and the test lines with replacement within each class, and takes
//! the mean over the drawn pairs of AUC(A) - AUC(B) on the drawn lines. The same drawn lines
//! serve both members of a pair, so what the pair shares (hard lines, easy lines) cancels.

use super::metrics::{CiMethod, Interval, quantile_sorted};
use crate::error::{Error, Result};
use rand::prelude::*;
use rand::rngs::StdRng;
use rayon::prelude::*;

/// One score set's lines in descending score order, with the ends of its tie groups: the
/// AUC under any per-line weights is then one pass.
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

    /// Mann-Whitney AUC with line `i` counted `weight[i]` times (ties one half);
    /// `positives`/`negatives` are the weight sums of each class.
    fn weighted_auc(&self, labels: &[bool], weight: &[u32], positives: u64, negatives: u64) -> f64 {
        let (mut above, mut twice_u, mut start) = (0u64, 0u64, 0usize);
        for &end in &self.group_ends {
            let (mut pk, mut nk) = (0u64, 0u64);
            for &i in &self.order[start..end as usize] {
                let w = weight[i as usize] as u64;
                if labels[i as usize] {
                    pk += w;
                } else {
                    nk += w;
                }
            }
            twice_u += nk * (2 * above + pk);
            above += pk;
            start = end as usize;
        }
        twice_u as f64 / (2 * positives * negatives) as f64
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
    if pairs.is_empty() {
        return Err(Error::input("no paired runs to compare"));
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
    for (a, b) in pairs {
        if a.len() != labels.len() || b.len() != labels.len() {
            return Err(Error::input(format!(
                "paired scores cover {} and {} lines but the test set has {}: score both \
                 classifiers on the same test set",
                a.len(),
                b.len(),
                labels.len()
            )));
        }
        if a.iter().chain(b.iter()).any(|s| !s.is_finite()) {
            return Err(Error::input("a score is NaN or infinite: cannot rank it"));
        }
    }
    let pos: Vec<u32> = (0..labels.len() as u32)
        .filter(|&i| labels[i as usize])
        .collect();
    let neg: Vec<u32> = (0..labels.len() as u32)
        .filter(|&i| !labels[i as usize])
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return Err(Error::input(
            "an AUC difference needs both benign and malicious test lines",
        ));
    }
    let ranked: Vec<(Ranked, Ranked)> = pairs
        .iter()
        .map(|(a, b)| (Ranked::new(a), Ranked::new(b)))
        .collect();
    let (p, n) = (pos.len() as u64, neg.len() as u64);
    let ones = vec![1u32; labels.len()];
    let gain = |pair: &(Ranked, Ranked), w: &[u32]| {
        pair.0.weighted_auc(labels, w, p, n) - pair.1.weighted_auc(labels, w, p, n)
    };
    let estimate = ranked.iter().map(|r| gain(r, &ones)).sum::<f64>() / ranked.len() as f64;

    let mut gains = vec![0.0; resamples];
    gains.par_iter_mut().enumerate().for_each_init(
        || vec![0u32; labels.len()],
        |weight, (r, out)| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            weight.fill(0);
            for class in [&pos, &neg] {
                for _ in 0..class.len() {
                    weight[class[rng.random_range(0..class.len())] as usize] += 1;
                }
            }
            let k = ranked.len();
            let mut sum = 0.0;
            for _ in 0..k {
                sum += gain(&ranked[rng.random_range(0..k)], weight);
            }
            *out = sum / k as f64;
        },
    );
    gains.sort_unstable_by(f64::total_cmp);
    let alpha = 1.0 - level;
    Ok(Interval {
        estimate,
        lower: quantile_sorted(&gains, alpha / 2.0),
        upper: quantile_sorted(&gains, 1.0 - alpha / 2.0),
        level,
        method: CiMethod::Bootstrap { resamples, seed },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::roc_auc;

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
    }
}
