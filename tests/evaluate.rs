//! Tests of `longtail::evaluate` against values computed by hand (and, where noted, by
//! scikit-learn 1.9.1 during development; the figures are pasted here so the tests need no
//! Python).

use longtail::Error;
use longtail::evaluate::metrics::{
    self, CiMethod, MetricsOptions, auc_ci_bootstrap, auc_ci_delong, average_precision,
    confusion_at, fpr_at_tpr, fpr_on_subset, roc_auc, roc_curve, threshold_for_fpr, tpr_at_fpr,
};
use longtail::evaluate::plot::{self, FprScale, Histogram, RocSeries};
use longtail::evaluate::{Report, ReportOptions};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {{
        let (a, b) = ($a, $b);
        assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
    }};
}

fn is_input_error<T: std::fmt::Debug>(r: longtail::Result<T>) -> String {
    match r {
        Err(e @ Error::Input { .. }) => e.to_string(),
        other => panic!("expected an input error, got {other:?}"),
    }
}

#[test]
fn perfect_separation_gives_auc_one() {
    let scores = [0.1, 0.2, 0.8, 0.9];
    let labels = [false, false, true, true];
    assert_close!(roc_auc(&scores, &labels).unwrap(), 1.0);
    assert_close!(average_precision(&scores, &labels).unwrap(), 1.0);
}

#[test]
fn reversed_ranking_gives_auc_zero() {
    let scores = [0.9, 0.8, 0.2, 0.1];
    let labels = [false, false, true, true];
    assert_close!(roc_auc(&scores, &labels).unwrap(), 0.0);
    // Positives at ranks 3 and 4: precision 1/3 then 2/4, each a recall step of 1/2.
    assert_close!(average_precision(&scores, &labels).unwrap(), 5.0 / 12.0);
}

#[test]
fn all_tied_gives_one_half_and_base_rate_precision() {
    let scores = [0.3; 5];
    let labels = [true, false, false, true, false];
    assert_close!(roc_auc(&scores, &labels).unwrap(), 0.5);
    assert_close!(average_precision(&scores, &labels).unwrap(), 2.0 / 5.0);
    let points = roc_curve(&scores, &labels).unwrap().points();
    assert_eq!(points.len(), 2, "one tie group: (0,0) and (1,1) only");
    assert_eq!((points[1].fpr, points[1].tpr), (1.0, 1.0));
}

#[test]
fn small_case_by_hand() {
    // Alternating ranks: positives at 0.9, 0.7, 0.5; negatives at 0.8, 0.6, 0.4.
    // Pairs won: 3 + 2 + 1 = 6 of 9.
    let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
    let labels = [true, false, true, false, true, false];
    assert_close!(roc_auc(&scores, &labels).unwrap(), 6.0 / 9.0);
    // Precision at each recall step: 1/1, 2/3, 3/5.
    assert_close!(
        average_precision(&scores, &labels).unwrap(),
        (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0
    );
    let pts = roc_curve(&scores, &labels).unwrap().points();
    let got: Vec<(f64, f64)> = pts.iter().map(|p| (p.fpr * 3.0, p.tpr * 3.0)).collect();
    let want = [
        (0., 0.),
        (0., 1.),
        (1., 1.),
        (1., 2.),
        (2., 2.),
        (2., 3.),
        (3., 3.),
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(close(g.0, w.0) && close(g.1, w.1), "{got:?}");
    }
    // Thresholds halfway between neighbouring scores; beyond the ends a margin of a thousandth
    // of the score range (0.5).
    let thresholds: Vec<f64> = pts.iter().map(|p| p.threshold).collect();
    let want = [0.9005, 0.85, 0.75, 0.65, 0.55, 0.45, 0.3995];
    for (g, w) in thresholds.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{thresholds:?}");
    }
    // Order of the input does not matter.
    let rev_s: Vec<f64> = scores.iter().rev().copied().collect();
    let rev_l: Vec<bool> = labels.iter().rev().copied().collect();
    assert_close!(roc_auc(&rev_s, &rev_l).unwrap(), 6.0 / 9.0);
}

#[test]
fn ties_across_classes_count_one_half() {
    // Positive 0.9 beats all 3 negatives; positive 0.5 beats 0.1 and ties two negatives:
    // U = 3 + 1 + 2 * 0.5 = 5 of 6 pairs.
    let scores = [0.9, 0.5, 0.5, 0.5, 0.1];
    let labels = [true, true, false, false, false];
    assert_close!(roc_auc(&scores, &labels).unwrap(), 5.0 / 6.0);
    // The tie is one step: precision 1 at recall 1/2, then 2/4 at recall 1.
    assert_close!(average_precision(&scores, &labels).unwrap(), 0.75);
    let pts = roc_curve(&scores, &labels).unwrap().points();
    let got: Vec<(f64, f64)> = pts.iter().map(|p| (p.fpr, p.tpr)).collect();
    assert_eq!(got.len(), 4);
    assert!(close(got[1].0, 0.0) && close(got[1].1, 0.5));
    assert!(
        close(got[2].0, 2.0 / 3.0) && close(got[2].1, 1.0),
        "the tie moves diagonally"
    );
}

/// 1000 negatives scored 0..999; 20 positives in five groups of four at 1000.5 (above all),
/// 998.5 (one negative above), 989.5 (ten above), 500 (tied with a negative) and -1 (below all).
fn constructed() -> (Vec<f64>, Vec<bool>) {
    let mut scores: Vec<f64> = (0..1000).map(f64::from).collect();
    let mut labels = vec![false; 1000];
    for s in [1000.5, 998.5, 989.5, 500.0, -1.0] {
        scores.extend([s; 4]);
        labels.extend([true; 4]);
    }
    (scores, labels)
}

#[test]
fn tpr_at_fpr_on_constructed_example() {
    let (s, l) = constructed();
    // FPR 1e-3 allows one false positive: flag >= 998.5 catches 8 of 20.
    let p = tpr_at_fpr(&s, &l, 1e-3).unwrap();
    assert_close!(p.tpr, 0.4);
    assert_close!(p.fpr, 0.001);
    assert_eq!((p.true_positives, p.false_positives), (8, 1));
    assert_eq!(
        p.threshold, 998.25,
        "halfway between the last flagged score and the next"
    );
    assert!(p.resolvable);
    // FPR 1e-2 allows ten: flag >= 989.5.
    let p = tpr_at_fpr(&s, &l, 1e-2).unwrap();
    assert_close!(p.tpr, 0.6);
    assert_eq!(p.threshold, 989.25);
    assert_eq!(p.false_positives, 10);
    // FPR 1e-4 allows 0.1 false positives: only zero, and 1000 negatives cannot resolve it.
    let p = tpr_at_fpr(&s, &l, 1e-4).unwrap();
    assert_close!(p.tpr, 0.2);
    assert_eq!(p.false_positives, 0);
    assert_eq!(p.threshold, 999.75);
    assert!(!p.resolvable, "1000 negatives cannot resolve FPR 1e-4");
    // Exactly 500 false positives allowed: the tie at 500 fits (500 negatives >= 500).
    let p = tpr_at_fpr(&s, &l, 0.5).unwrap();
    assert_close!(p.tpr, 0.8);
    assert_eq!(p.threshold, 499.5);
    // One fewer: the tie at 500 would cost 500 > 499.5, and ties are never split.
    let p = tpr_at_fpr(&s, &l, 0.4995).unwrap();
    assert_close!(p.tpr, 0.6);
    assert_eq!(p.false_positives, 499);
    assert_eq!(p.threshold, 500.5);
    assert_eq!(threshold_for_fpr(&s, &l, 1e-3).unwrap(), 998.25);
    // Zero budget still answers: the highest-scored positives above every negative.
    assert_close!(tpr_at_fpr(&s, &l, 0.0).unwrap().tpr, 0.2);
    assert_close!(tpr_at_fpr(&s, &l, 1.0).unwrap().tpr, 1.0);
}

#[test]
fn fpr_at_tpr_on_constructed_example() {
    let (s, l) = constructed();
    // 18 of 20 positives only once the bottom four are flagged, i.e. everything.
    let p = fpr_at_tpr(&s, &l, 0.9).unwrap();
    assert_close!(p.fpr, 1.0);
    // Below the lowest score by a thousandth of the score range (1001.5).
    assert!(
        (p.threshold - (-1.0 - 1.0015)).abs() < 1e-12,
        "{}",
        p.threshold
    );
    assert!(p.resolvable);
    let p = fpr_at_tpr(&s, &l, 0.8).unwrap();
    assert_close!(p.fpr, 0.5);
    assert_eq!(p.threshold, 499.5);
    // 10 positives needed, the first threshold reaching them (989.25) catches 12.
    let p = fpr_at_tpr(&s, &l, 0.5).unwrap();
    assert_close!(p.fpr, 0.01);
    assert_close!(p.tpr, 0.6);
    assert_eq!(p.threshold, 989.25);
    // 20 positives cannot resolve TPR 0.99 (no positive may be missed below 1/0.01 = 100).
    assert!(!fpr_at_tpr(&s, &l, 0.99).unwrap().resolvable);
    // AUC by hand: 4 * (1000 + 999 + 990 + 500.5 + 0) / (20 * 1000).
    assert_close!(roc_auc(&s, &l).unwrap(), 4.0 * 3489.5 / 20000.0);
}

#[test]
fn confusion_and_subset_fpr_on_constructed_example() {
    let (s, l) = constructed();
    let c = confusion_at(&s, &l, 990.0).unwrap();
    assert_eq!(
        (
            c.true_positives,
            c.false_positives,
            c.false_negatives,
            c.true_negatives
        ),
        (8, 10, 12, 990)
    );
    assert_close!(c.tpr().unwrap(), 0.4);
    assert_close!(c.fpr().unwrap(), 0.01);
    // "Rare benign lines": the 100 negatives scored 900 and up. At the TPR 0.5 threshold
    // (989.25) ten of them are flagged.
    let rare: Vec<bool> = s.iter().zip(&l).map(|(&x, &y)| !y && x >= 900.0).collect();
    let thr = fpr_at_tpr(&s, &l, 0.5).unwrap().threshold;
    assert_close!(fpr_on_subset(&s, &l, &rare, thr).unwrap(), 0.1);
    // A subset of positives only has no FPR.
    let positives_only: Vec<bool> = l.clone();
    let msg = is_input_error(fpr_on_subset(&s, &l, &positives_only, thr));
    assert!(msg.contains("no negative"), "{msg}");
    // A single class is fine for confusion counts.
    let c = confusion_at(&[0.5, 0.7], &[false, false], 0.6).unwrap();
    assert_eq!(c.fpr(), Some(0.5));
    assert_eq!(c.tpr(), None);
}

#[test]
fn degenerate_inputs_are_input_errors() {
    let msg = is_input_error(roc_auc(&[0.1, 0.2], &[false, false]));
    assert!(msg.contains("positive"), "{msg}");
    let msg = is_input_error(roc_auc(&[0.1, 0.2], &[true, true]));
    assert!(msg.contains("negative"), "{msg}");
    let msg = is_input_error(roc_auc(&[], &[]));
    assert!(msg.contains("empty"), "{msg}");
    let msg = is_input_error(roc_auc(&[0.1, f64::NAN, 0.3], &[true, false, false]));
    assert!(msg.contains("NaN") && msg.contains("line 1"), "{msg}");
    is_input_error(roc_auc(&[0.1, f64::INFINITY], &[true, false]));
    let msg = is_input_error(roc_auc(&[0.1, 0.2], &[true]));
    assert!(msg.contains("2 scores but 1 labels"), "{msg}");
    let (s, l) = ([0.1, 0.2, 0.3], [true, false, true]);
    for bad in [-0.1, 1.5, f64::NAN] {
        is_input_error(tpr_at_fpr(&s, &l, bad));
        is_input_error(fpr_at_tpr(&s, &l, bad));
    }
    is_input_error(confusion_at(&s, &l, f64::NAN));
    is_input_error(confusion_at(&[f64::NAN], &[true], 0.5));
    is_input_error(fpr_on_subset(&s, &l, &[true], 0.5));
    // DeLong needs two of each class; a bootstrap needs a sensible number of resamples.
    let msg = is_input_error(auc_ci_delong(&s, &l, 0.95));
    assert!(msg.contains("2 positives and 2 negatives"), "{msg}");
    is_input_error(auc_ci_delong(
        &[0.1, 0.2, 0.3, 0.4],
        &[true, false, true, false],
        1.5,
    ));
    is_input_error(auc_ci_bootstrap(&s, &l, 0.95, 3, 1));
    is_input_error(Histogram::new(&[0.1], &[true, false], 10));
}

/// The generator the development cross-check used in Python (see `lcg_data` there):
/// a 64-bit LCG, 30 % positives, scores on a 0.05 grid (many ties) shifted by 0.15 for
/// positives.
fn lcg_data(n: usize, seed: u64) -> (Vec<f64>, Vec<bool>) {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let (u, v) = (next(), next());
        let pos = u < 0.3;
        scores.push((v * 20.0).floor() / 20.0 + if pos { 0.15 } else { 0.0 });
        labels.push(pos);
    }
    (scores, labels)
}

#[test]
fn matches_scikit_learn_and_pairwise_delong_on_tied_data() {
    let (s, l) = lcg_data(500, 7);
    assert_eq!(l.iter().filter(|&&x| x).count(), 159);
    // roc_auc_score and average_precision_score of scikit-learn 1.9.1 on the same data.
    assert!((roc_auc(&s, &l).unwrap() - 0.634_316_383_555_580_2).abs() < 1e-12);
    assert!((average_precision(&s, &l).unwrap() - 0.496_511_189_321_014_85).abs() < 1e-12);
    // DeLong's interval from an O(P N) pairwise implementation in numpy.
    let ci = auc_ci_delong(&s, &l, 0.95).unwrap();
    assert!((ci.lower - 0.583_472_473_382_471_8).abs() < 1e-9, "{ci:?}");
    assert!((ci.upper - 0.685_160_293_728_688_6).abs() < 1e-9, "{ci:?}");
    assert_eq!(ci.method, CiMethod::DeLong);
}

#[test]
fn delong_by_hand_on_small_case() {
    // Small case above: V10 = (1, 2/3, 1/3), V01 = (1/3, 2/3, 1); both sample variances 1/9,
    // so Var = 1/27 + 1/27 and the 95 % half-width is 1.959964 * sqrt(2/27).
    let scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4];
    let labels = [true, false, true, false, true, false];
    let ci = auc_ci_delong(&scores, &labels, 0.95).unwrap();
    let half = 1.959_963_984_540_054 * (2.0f64 / 27.0).sqrt();
    assert!((ci.lower - (2.0 / 3.0 - half)).abs() < 1e-8, "{ci:?}");
    assert_eq!(ci.upper, 1.0, "clipped to 1");
    // Perfect separation has no spread.
    let ci = auc_ci_delong(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true], 0.95).unwrap();
    assert_eq!((ci.lower, ci.estimate, ci.upper), (1.0, 1.0, 1.0));
}

#[test]
fn bootstrap_is_seeded_and_agrees_with_delong() {
    let (s, l) = lcg_data(4000, 99);
    let a = auc_ci_bootstrap(&s, &l, 0.95, 2000, 42).unwrap();
    let b = auc_ci_bootstrap(&s, &l, 0.95, 2000, 42).unwrap();
    assert_eq!(a, b, "same seed, same interval");
    let c = auc_ci_bootstrap(&s, &l, 0.95, 2000, 43).unwrap();
    assert_ne!(a.lower, c.lower, "another seed draws other resamples");
    let d = auc_ci_delong(&s, &l, 0.95).unwrap();
    assert!(a.lower < a.estimate && a.estimate < a.upper, "{a:?}");
    assert_eq!(a.estimate, d.estimate);
    // Both estimate the same sampling spread; at n = 4000 they agree closely.
    assert!((a.lower - d.lower).abs() < 0.006, "{a:?} vs {d:?}");
    assert!((a.upper - d.upper).abs() < 0.006, "{a:?} vs {d:?}");
    assert!(matches!(
        a.method,
        CiMethod::Bootstrap {
            resamples: 2000,
            seed: 42
        }
    ));
}

#[test]
fn summarize_reports_targets_and_resolvability() {
    let (s, l) = constructed();
    let m = metrics::summarize(&s, &l, &MetricsOptions::default()).unwrap();
    assert_eq!((m.count, m.positives, m.negatives), (1020, 20, 1000));
    let targets: Vec<f64> = m.tpr_at_fpr.iter().map(|a| a.target).collect();
    assert_eq!(targets, vec![1e-2, 1e-3, 1e-4]);
    let tprs: Vec<f64> = m.tpr_at_fpr.iter().map(|a| a.point.tpr).collect();
    assert_eq!(tprs, vec![0.6, 0.4, 0.2]);
    let resolvable: Vec<bool> = m.tpr_at_fpr.iter().map(|a| a.point.resolvable).collect();
    assert_eq!(resolvable, vec![true, true, false]);
    assert_close!(m.fpr_at_tpr[0].point.fpr, 1.0);
    assert!(m.roc_auc_ci.is_some());
    // Too few positives for DeLong: metrics still come, without an interval.
    let m = metrics::summarize(
        &[0.9, 0.1, 0.2],
        &[true, false, false],
        &MetricsOptions::default(),
    )
    .unwrap();
    assert!(m.roc_auc_ci.is_none());
    assert_close!(m.roc_auc, 1.0);
}

fn groups_for(s: &[f64], l: &[bool]) -> Vec<String> {
    s.iter()
        .zip(l)
        .map(|(&x, &y)| match (y, x >= 900.0) {
            (true, _) => "atomic".to_string(),
            (false, true) => "runner_images".to_string(),
            (false, false) => "tldr".to_string(),
        })
        .collect()
}

/// JSON round trips may move a float by one unit in the last place (serde_json's default
/// parser), so compare reports number by number with a relative tolerance.
fn assert_same_report(a: &Report, b: &Report) {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
        use serde_json::Value::*;
        match (a, b) {
            (Number(x), Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-14 * x.abs().max(1.0),
                    "{path}: {x} vs {y}"
                );
            }
            (Array(x), Array(y)) => {
                assert_eq!(x.len(), y.len(), "{path}");
                for (i, (x, y)) in x.iter().zip(y).enumerate() {
                    walk(x, y, &format!("{path}[{i}]"));
                }
            }
            (Object(x), Object(y)) => {
                assert_eq!(
                    x.keys().collect::<Vec<_>>(),
                    y.keys().collect::<Vec<_>>(),
                    "{path}"
                );
                for (k, v) in x {
                    walk(v, &y[k], &format!("{path}.{k}"));
                }
            }
            _ => assert_eq!(a, b, "{path}"),
        }
    }
    walk(
        &serde_json::to_value(a).unwrap(),
        &serde_json::to_value(b).unwrap(),
        "report",
    );
}

#[test]
fn report_compares_models_with_group_breakdown() {
    let (s, l) = constructed();
    let sources = groups_for(&s, &l);
    // A second model that ranks perfectly.
    let perfect: Vec<f64> = l
        .iter()
        .zip(&s)
        .map(|(&y, &x)| if y { 2000.0 + x } else { x })
        .collect();
    let mut report = Report::new("constructed test set", ReportOptions::default());
    let r = report
        .add("baseline", &s, &l, &[("source", &sources)])
        .unwrap();
    assert_close!(r.metrics.roc_auc, 4.0 * 3489.5 / 20000.0);
    report
        .add("perfect", &perfect, &l, &[("source", &sources)])
        .unwrap();

    let base = report.model("baseline").unwrap();
    let by_source = &base.groups[0];
    assert_eq!(by_source.column, "source");
    let names: Vec<&str> = by_source.rows.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(
        names,
        vec!["tldr", "runner_images", "atomic"],
        "largest group first"
    );
    let rare = &by_source.rows[1];
    assert_eq!((rare.count, rare.positives, rare.negatives), (100, 0, 100));
    assert_eq!(rare.roc_auc, None, "a benign-only group has no AUC");
    // At the whole set's TPR 0.9 threshold (everything flagged) all rare lines are FPs; at the
    // FPR 1e-2 threshold (989.25) 10 of the 100 are, the whole budget; no positives, no TPR.
    assert_eq!(rare.fpr_at_tpr[0].target, 0.9);
    assert_eq!(rare.fpr_at_tpr[0].fpr, Some(1.0));
    assert_eq!(rare.tpr_at_fpr[0].tpr, None);
    assert_eq!(rare.tpr_at_fpr[0].fpr, Some(0.1));
    assert_eq!(
        by_source.rows[0].tpr_at_fpr[0].fpr,
        Some(0.0),
        "tldr lines all below 900"
    );
    let atomic = &by_source.rows[2];
    assert_eq!(
        atomic.tpr_at_fpr[1].tpr,
        Some(0.4),
        "8 of 20 at the FPR 1e-3 threshold"
    );
    assert_eq!(atomic.fpr_at_tpr[0].fpr, None);
    assert_eq!(atomic.fpr_at_tpr[0].tpr, Some(1.0));

    let perfect = report.model("perfect").unwrap();
    assert_close!(perfect.metrics.roc_auc, 1.0);
    assert_eq!(perfect.groups[0].rows[1].fpr_at_tpr[0].fpr, Some(0.0));

    // JSON round trip.
    let json = report.to_json().unwrap();
    let back = Report::from_json(&json).unwrap();
    assert_same_report(&back, &report);
    assert!(json.contains("\"roc_auc\""));
    is_input_error(Report::from_json("{\"title\": 3}"));

    // Markdown: the comparison table with the dagger on the unresolvable FPR 1e-4 column.
    let md = report.to_markdown();
    assert!(md.contains("| model | n (pos / neg) | ROC AUC | 95 % CI | PR AUC | TPR@FPR 1e-2 | TPR@FPR 1e-3 | TPR@FPR 1e-4 | FPR@TPR 0.90 | FPR@TPR 0.95 |"), "{md}");
    assert!(
        md.contains("| baseline | 1020 (20 / 1000) | 0.6979 |"),
        "{md}"
    );
    assert!(
        md.contains("| 0.6000 | 0.4000 | 0.2000 † | 1.0000 | 1.0000 |"),
        "{md}"
    );
    assert!(md.contains("† not resolvable"), "{md}");
    // The low-FPR figures again, with their bootstrap intervals.
    assert!(
        md.contains("### TPR at low FPR, with 95 % intervals"),
        "{md}"
    );
    assert!(md.contains("| baseline | 0.6000 ("), "{md}");
    let at3 = &report.model("baseline").unwrap().metrics.tpr_at_fpr[1];
    let ci = at3.ci.expect("an interval for TPR at FPR 1e-3");
    assert!(
        ci.lower <= at3.point.tpr && at3.point.tpr <= ci.upper,
        "{ci:?}"
    );
    assert!(md.contains("## By source"), "{md}");
    assert!(
        md.contains("| runner_images | baseline | 100 (0 / 100) | – | – / 0.1000 | – / 0.0100 | – / 0 | – / 1.0000 | – / 1.0000 |"),
        "{md}"
    );
}

#[test]
fn report_rejects_bad_additions() {
    let (s, l) = constructed();
    let mut report = Report::new("t", ReportOptions::default());
    report.add("a", &s, &l, &[]).unwrap();
    let msg = is_input_error(report.add("a", &s, &l, &[]).map(|_| ()));
    assert!(msg.contains("already"), "{msg}");
    let short = vec!["x".to_string(); 3];
    let msg = is_input_error(report.add("b", &s, &l, &[("source", &short)]).map(|_| ()));
    assert!(msg.contains("source"), "{msg}");
    let msg = is_input_error(report.add("c", &s, &vec![true; s.len()], &[]).map(|_| ()));
    assert!(msg.contains("\"c\""), "names the model: {msg}");
    assert_eq!(
        report.models.len(),
        1,
        "failed additions leave the report unchanged"
    );
}

#[test]
fn write_all_produces_files_and_svg_charts() {
    let (s, l) = constructed();
    let sources = groups_for(&s, &l);
    let noisy: Vec<f64> = s
        .iter()
        .enumerate()
        .map(|(i, &x)| x + ((i * 7919) % 1000) as f64)
        .collect();
    let mut report = Report::new("hard <test> & set", ReportOptions::default());
    report
        .add("baseline", &s, &l, &[("source", &sources)])
        .unwrap();
    report
        .add("noisy model", &noisy, &l, &[("source", &sources)])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let files = report.write_all(&out).unwrap();
    for p in [
        &files.json,
        &files.markdown,
        &files.roc_log,
        &files.roc_linear,
    ] {
        assert!(p.exists(), "{}", p.display());
    }
    assert_eq!(files.histograms.len(), 2);
    assert!(files.histograms[1].ends_with("hist-noisy_model.svg"));
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("![ROC, log FPR](roc.svg)"), "{md}");
    let svg = std::fs::read_to_string(&files.roc_log).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(
        svg.contains("hard &lt;test&gt; &amp; set"),
        "titles are escaped"
    );
    assert!(
        svg.contains("baseline (AUC 0.6979)"),
        "legend names the model and AUC"
    );
    assert!(svg.contains("False positive rate (log scale)"));
    // Lowest nonzero FPR is 1/1000, so the axis starts at 10^-3.
    assert!(
        svg.contains("10<tspan dy=\"-7\" font-size=\"10\">\u{2212}3</tspan>"),
        "{svg}"
    );
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "chance line + two models"
    );
    let back = Report::from_json(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_same_report(&back, &report);
    // Nothing but the outputs in the directory: no temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "hist-baseline.svg",
            "hist-noisy_model.svg",
            "report.json",
            "report.md",
            "roc-linear.svg",
            "roc.svg"
        ]
    );
}

#[test]
fn roc_plot_points_thin_large_curves_but_keep_ends() {
    let (s, l) = lcg_data(200_000, 5);
    let noisy: Vec<f64> = s
        .iter()
        .enumerate()
        .map(|(i, &x)| x + (i % 9973) as f64 * 1e-6)
        .collect();
    let curve = roc_curve(&noisy, &l).unwrap();
    assert!(curve.distinct_scores() > 50_000);
    let pts = plot::roc_plot_points(&curve);
    assert!(pts.len() < 6000, "{} points", pts.len());
    assert_eq!(pts[0], [0.0, 0.0]);
    assert_eq!(*pts.last().unwrap(), [1.0, 1.0]);
    let svg = plot::roc_svg(
        "t",
        &[RocSeries {
            name: "m",
            points: &pts,
            auc: None,
        }],
        FprScale::Linear,
    );
    assert!(svg.contains("False positive rate<"));
}

/// Development cross-check against scikit-learn on 300 random score sets (a third with heavy
/// ties, a third probabilities): ROC AUC, average precision, every ROC point, TPR at FPR and
/// FPR at TPR. Make the cases with the script below (numpy + scikit-learn), then
/// `LONGTAIL_SKLEARN_CASES=/tmp/sk_cases.json cargo test --release --test integration -- --ignored scikit`
///
/// ```python
/// # Dev-only: random score sets (with ties) and scikit-learn's metrics for them, to cross-check
/// # longtail::evaluate::metrics. Writes JSON to argv[1].
/// import json, sys
/// import numpy as np
/// from sklearn.metrics import roc_auc_score, average_precision_score, roc_curve
/// rng = np.random.default_rng(12345)
/// cases = []
/// for i in range(300):
///     n = int(rng.integers(2, 3000))
///     pos_rate = rng.uniform(0.01, 0.9)
///     labels = rng.random(n) < pos_rate
///     if labels.all() or (~labels).all():
///         labels[0] = not labels[0]
///     shift = rng.uniform(-1, 3)
///     scores = rng.normal(size=n) + shift * labels
///     kind = i % 3
///     if kind == 1:  # heavy ties
///         scores = np.floor(scores * rng.integers(1, 10)) / 10
///     elif kind == 2:  # probabilities
///         scores = 1 / (1 + np.exp(-scores))
///     fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
///     # Brute-force reference for TPR at FPR / FPR at TPR over distinct thresholds.
///     P, N = labels.sum(), (~labels).sum()
///     tp = np.round(tpr * P).astype(int); fp = np.round(fpr * N).astype(int)
///     ref = {}
///     for t in [1e-2, 1e-3, 0.1, 0.5]:
///         ok = fp <= t * N * (1 + 1e-12)
///         ref[f"tpr_at_fpr_{t}"] = float(tpr[ok].max())
///     for t in [0.9, 0.95, 0.5]:
///         ok = tp >= t * P * (1 - 1e-12)
///         ref[f"fpr_at_tpr_{t}"] = float(fpr[ok].min())
///     cases.append(dict(scores=scores.tolist(), labels=labels.tolist(),
///                       roc_auc=roc_auc_score(labels, scores),
///                       average_precision=average_precision_score(labels, scores),
///                       roc_fpr=fpr.tolist(), roc_tpr=tpr.tolist(), **ref))
/// json.dump(cases, open(sys.argv[1], "w"))
/// print(len(cases), "cases")
/// ```
#[test]
#[ignore = "needs a cases file made with scikit-learn"]
fn scikit_learn_cross_check() {
    let Ok(path) = std::env::var("LONGTAIL_SKLEARN_CASES") else {
        panic!("set LONGTAIL_SKLEARN_CASES to the JSON file of cases");
    };
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut worst = 0.0f64;
    for (i, c) in cases.iter().enumerate() {
        let s: Vec<f64> = c["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let l: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        let curve = roc_curve(&s, &l).unwrap();
        let f = |k: &str| c[k].as_f64().unwrap();
        let mut check = |name: &str, got: f64, want: f64| {
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() < 1e-9,
                "case {i} {name}: {got} vs {want}"
            );
        };
        check("roc_auc", curve.auc(), f("roc_auc"));
        check(
            "average_precision",
            curve.average_precision(),
            f("average_precision"),
        );
        let pts = curve.points();
        let fpr = c["roc_fpr"].as_array().unwrap();
        let tpr = c["roc_tpr"].as_array().unwrap();
        assert_eq!(pts.len(), fpr.len(), "case {i}: number of ROC points");
        for (p, (x, y)) in pts.iter().zip(fpr.iter().zip(tpr)) {
            check("roc fpr", p.fpr, x.as_f64().unwrap());
            check("roc tpr", p.tpr, y.as_f64().unwrap());
        }
        for t in [1e-2, 1e-3, 0.1, 0.5] {
            check(
                "tpr_at_fpr",
                curve.tpr_at_fpr(t).unwrap().tpr,
                f(&format!("tpr_at_fpr_{t}")),
            );
        }
        for t in [0.9, 0.95, 0.5] {
            check(
                "fpr_at_tpr",
                curve.fpr_at_tpr(t).unwrap().fpr,
                f(&format!("fpr_at_tpr_{t}")),
            );
        }
    }
    eprintln!("{} cases, largest difference {worst:e}", cases.len());
}

/// Writes a realistic-looking report for eyeballing the charts:
/// `LONGTAIL_EVAL_DEMO_DIR=/tmp/x cargo test --release --test integration -- --ignored demo`
#[test]
#[ignore = "writes charts to LONGTAIL_EVAL_DEMO_DIR for a human to look at"]
fn demo_report_for_eyeballing() {
    let Ok(dir) = std::env::var("LONGTAIL_EVAL_DEMO_DIR") else {
        panic!("set LONGTAIL_EVAL_DEMO_DIR to an output directory");
    };
    // 30k benign, 600 malicious; three models of increasing separation, scores as
    // probabilities (logistic of a normal shift), a rare-benign group with shifted scores.
    let mut x = 11u64;
    let mut uniform = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = || {
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let n = 30_600;
    let (mut labels, mut source, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let malicious = i % 51 == 0;
        let rare = !malicious && i % 7 == 0;
        labels.push(malicious);
        source.push(
            if malicious {
                "atomic_red_team"
            } else if rare {
                "runner_images"
            } else {
                "tldr"
            }
            .to_string(),
        );
        base.push((malicious, rare, normal(), normal()));
    }
    let mut report = Report::new("demo test set", ReportOptions::default());
    for (name, shift, rare_shift) in [
        ("baseline", 2.0, 1.5),
        ("+ iforest anomalies", 3.0, 0.3),
        ("+ combined anomalies", 3.6, 0.0),
    ] {
        let scores: Vec<f64> = base
            .iter()
            .map(|&(m, r, a, b)| {
                let z = -3.0
                    + a
                    + if m { shift + 0.5 * b } else { 0.0 }
                    + if r { rare_shift } else { 0.0 };
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        report
            .add(name, &scores, &labels, &[("source", &source)])
            .unwrap();
    }
    let files = report.write_all(std::path::Path::new(&dir)).unwrap();
    eprintln!("{files:?}");
}

/// Timing on a million lines (prints figures; no bound, the machine is shared):
/// `cargo test --release --test integration -- --ignored --nocapture million`
#[test]
#[ignore = "timing figures for a human"]
fn million_lines_timing() {
    let (s, l) = lcg_data(1_000_000, 3);
    let noisy: Vec<f64> = s
        .iter()
        .enumerate()
        .map(|(i, &x)| x + (i % 99_991) as f64 * 1e-7)
        .collect();
    let t = std::time::Instant::now();
    let curve = roc_curve(&noisy, &l).unwrap();
    let sort = t.elapsed();
    let m = metrics::summarize_curve(&curve, &MetricsOptions::default()).unwrap();
    let all = t.elapsed();
    let t = std::time::Instant::now();
    let ci = curve.auc_ci_bootstrap(0.95, 200, 1).unwrap();
    let boot = t.elapsed();
    let t = std::time::Instant::now();
    let mut report = Report::new("million", ReportOptions::default());
    let groups: Vec<String> = (0..noisy.len()).map(|i| format!("g{}", i % 7)).collect();
    report.add("m", &noisy, &l, &[("group", &groups)]).unwrap();
    let add = t.elapsed();
    eprintln!(
        "1M lines, {} distinct scores: curve {sort:?}, summarize incl. DeLong {all:?} (AUC {:.4}), \
         bootstrap 200 resamples {boot:?} ({:.4}-{:.4}), Report::add with a 7-value group {add:?}, \
         {} plot points",
        curve.distinct_scores(),
        m.roc_auc,
        ci.lower,
        ci.upper,
        report.models[0].roc.len()
    );
}
