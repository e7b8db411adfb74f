//! What the bootstrap intervals of "TPR at FPR" cost `longtail evaluate`, in one run: the
//! metrics alone (the reference), the top-down draw the report uses, and the plain
//! line-by-line draw of the same distribution, on synthetic score sets of growing size
//! (5 % positives, distinct scores). Run by `scripts/bench_evaluate.sh`.
//!
//! cargo run --release --example interval_cost -- [LINES ...]   (default 10000 100000 1000000)

use longtail::evaluate::metrics::{MetricsOptions, roc_curve, summarize};
use std::time::Instant;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a line count"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000, 1_000_000]
    } else {
        sizes
    };
    let options = MetricsOptions::default();
    let (targets, resamples) = (options.fpr_targets.clone(), options.tpr_ci_resamples);
    println!(
        "| lines | metrics alone | + TPR intervals, top-down ({resamples} resamples) | line by line | line by line / top-down |"
    );
    println!("|---|---|---|---|---|");
    for n in sizes {
        let labels: Vec<bool> = (0..n).map(|i| i % 20 == 0).collect();
        // A fixed, well-mixed score per line; positives shifted up (ROC AUC about 0.95).
        let scores: Vec<f64> = (0..n as u64)
            .map(|i| {
                let u = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
                u + if i % 20 == 0 { 0.7 } else { 0.0 }
            })
            .collect();
        let off = MetricsOptions {
            tpr_ci_resamples: 0,
            ..options.clone()
        };
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        };
        let alone = time(&mut || {
            summarize(&scores, &labels, &off).unwrap();
        });
        let top_down = time(&mut || {
            summarize(&scores, &labels, &options).unwrap();
        });
        let curve = roc_curve(&scores, &labels).unwrap();
        let line_by_line = time(&mut || {
            curve
                .tpr_at_fpr_ci_bootstrap_line_by_line(&targets, 0.95, resamples, 1)
                .unwrap();
        });
        println!(
            "| {n} | {alone:.3} s | {top_down:.3} s | {line_by_line:.3} s | {:.1}x |",
            line_by_line / (top_down - alone).max(1e-9)
        );
    }
}
