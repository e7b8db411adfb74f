//! Detector quality on public data, in one run: autoencoder (masked and bottleneck
//! objectives) vs isolation forest vs combined.
//!
//! Builds a benign-heavy unlabeled "day of telemetry" from the shared corpora: frequent
//! documentation one-liners (tldr, nl2bash) with heavy-tailed counts, the long tail of rare
//! complex benign lines (runner_images, benign lookalikes) seen once or twice, and a small
//! share of malicious lines (atomic_red_team, lolbas, gtfobins). Trains every detector on it
//! unlabeled, scores it, and reports
//! - ROC AUC malicious vs benign (as an alert source),
//! - ROC AUC rare-complex-benign vs common benign (does it find the long tail?),
//! - the share of rare benign and of malicious lines among the top-K after near-dup dedup
//!   (what the method feeds the labeler).
//!
//! cargo run --release --example detector_quality -- ../shared/data/cmdlines [--device flex] [--epochs 3] [--common 20000]

use longtail::Globals;
use longtail::detect::model::Objective;
use longtail::detect::{self, DetectorConfig, DetectorKind, ScoreOptions, TrainRequest};
use longtail::device::DeviceChoice;
use longtail::evaluate::metrics::roc_auc;
use longtail::io::read::{ReadOptions, for_each_record_ref};
use rand::prelude::*;
use rand::rngs::StdRng;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Common,
    Rare,
    Malicious,
}

fn read(dir: &str, file: &str) -> Vec<String> {
    let mut out = Vec::new();
    let opts = ReadOptions {
        progress: false,
        ..Default::default()
    };
    for_each_record_ref(&[format!("{dir}/{file}")], &opts, |r| {
        out.push(r.cmd.to_string());
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{file}: {e}"));
    out
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or("../shared/data/cmdlines".into());
    let device = match arg(&args, "--device").as_deref() {
        Some("wgpu") => DeviceChoice::Wgpu,
        Some("wgpu-cpu") => DeviceChoice::WgpuCpu,
        _ => DeviceChoice::Flex,
    };
    let epochs: usize = arg(&args, "--epochs").map_or(3, |e| e.parse().unwrap());
    let n_common: usize = arg(&args, "--common").map_or(20_000, |e| e.parse().unwrap());
    let n_malicious: usize = arg(&args, "--malicious").map_or(300, |e| e.parse().unwrap());
    let seed = 13;
    let mut rng = StdRng::seed_from_u64(seed);

    let mut common: Vec<String> = read(&dir, "tldr.jsonl")
        .into_iter()
        .chain(read(&dir, "nl2bash.jsonl"))
        .collect();
    common.shuffle(&mut rng);
    common.truncate(n_common);
    let rare: Vec<String> = read(&dir, "runner_images.jsonl")
        .into_iter()
        .chain(read(&dir, "derived_benign_lookalikes.jsonl"))
        .collect();
    let mut malicious: Vec<String> = ["atomic_red_team.jsonl", "lolbas.jsonl", "gtfobins.jsonl"]
        .iter()
        .flat_map(|f| read(&dir, f))
        .collect();
    malicious.shuffle(&mut rng);
    malicious.truncate(n_malicious);

    // One entry per unique text; a text in two groups keeps the first (common < rare < malicious
    // would hide attacks behind documentation, so malicious wins ties).
    let mut kind_of: HashMap<String, Kind> = HashMap::new();
    for (group, kind) in [
        (&common, Kind::Common),
        (&rare, Kind::Rare),
        (&malicious, Kind::Malicious),
    ] {
        for l in group.iter() {
            kind_of.insert(l.clone(), kind);
        }
    }
    let mut lines: Vec<String> = kind_of.keys().cloned().collect();
    lines.sort();
    lines.shuffle(&mut rng);
    // Heavy-tailed counts for common lines (Zipf over a random rank), 1-2 for the tail.
    let counts: Vec<u64> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| match kind_of[l] {
            Kind::Common => (2000.0 / ((i % n_common.max(1)) as f64 + 1.0).powf(1.1)).ceil() as u64,
            _ => rng.random_range(1..=2),
        })
        .collect();
    let kinds: Vec<Kind> = lines.iter().map(|l| kind_of[l]).collect();
    let count_of = |k: Kind| kinds.iter().filter(|&&x| x == k).count();
    println!(
        "stream: {} unique lines ({} in the stream): {} common, {} rare benign, {} malicious\n",
        lines.len(),
        counts.iter().sum::<u64>(),
        count_of(Kind::Common),
        count_of(Kind::Rare),
        count_of(Kind::Malicious)
    );

    let globals = Globals::new(device, seed).expect("the device is available");
    let malicious_vs_benign: Vec<bool> = kinds.iter().map(|&k| k == Kind::Malicious).collect();
    let rare_idx: Vec<usize> = (0..lines.len())
        .filter(|&i| kinds[i] != Kind::Malicious)
        .collect();
    let rare_vs_common: Vec<bool> = rare_idx.iter().map(|&i| kinds[i] == Kind::Rare).collect();

    println!(
        "| detector | objective | train s | score lines/s | AUC mal vs benign | AUC rare vs common | top-100 rare / mal | top-500 rare / mal |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ae_scores: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut if_scores = None;
    for objective in [Objective::Masked, Objective::Bottleneck] {
        let mut cfg = DetectorConfig::default();
        cfg.model.objective = objective;
        cfg.optim.epochs = epochs;
        let out = tempfile::tempdir().unwrap();
        let t = Instant::now();
        detect::train(
            &TrainRequest {
                config: &cfg,
                lines: &lines,
                counts: &counts,
                out: out.path(),
                autoencoder: true,
                iforest: if_scores.is_none(),
                resume: false,
                trained_on: vec![dir.clone()],
            },
            &globals,
        )
        .unwrap();
        let train_secs = t.elapsed().as_secs_f64();
        let det = detect::Detector::load(out.path(), &globals).unwrap();
        let t = Instant::now();
        let kind = if if_scores.is_none() {
            DetectorKind::Combined
        } else {
            DetectorKind::Autoencoder
        };
        let s = det
            .score(
                &lines,
                &ScoreOptions {
                    kind,
                    batch_tokens: 16_384,
                    top_surprises: 1,
                },
            )
            .unwrap();
        let rate = lines.len() as f64 / t.elapsed().as_secs_f64();
        let name = match objective {
            Objective::Masked => "masked",
            Objective::Bottleneck => "bottleneck",
        };
        let ae: Vec<f64> = s
            .autoencoder
            .as_ref()
            .unwrap()
            .iter()
            .map(|x| x.mean_nll as f64)
            .collect();
        let win: Vec<f64> = s
            .autoencoder
            .as_ref()
            .unwrap()
            .iter()
            .map(|x| x.window_nll as f64)
            .collect();
        if let Some(f) = s.iforest.clone() {
            if_scores = Some(f);
        }
        report(
            "autoencoder (mean)",
            name,
            train_secs,
            rate,
            &ae,
            &lines,
            &kinds,
            &malicious_vs_benign,
            &rare_idx,
            &rare_vs_common,
        );
        report(
            "autoencoder (window)",
            name,
            train_secs,
            rate,
            &win,
            &lines,
            &kinds,
            &malicious_vs_benign,
            &rare_idx,
            &rare_vs_common,
        );
        let f = if_scores.as_ref().unwrap();
        let fused = longtail::data::mean_rank_fusion(&[&ae, f]);
        report(
            "combined",
            name,
            train_secs,
            rate,
            &fused,
            &lines,
            &kinds,
            &malicious_vs_benign,
            &rare_idx,
            &rare_vs_common,
        );
        ae_scores.insert(name, ae);
    }
    let f = if_scores.unwrap();
    report(
        "iforest",
        "-",
        f64::NAN,
        f64::NAN,
        &f,
        &lines,
        &kinds,
        &malicious_vs_benign,
        &rare_idx,
        &rare_vs_common,
    );
}

#[allow(clippy::too_many_arguments)]
fn report(
    name: &str,
    objective: &str,
    train_secs: f64,
    rate: f64,
    scores: &[f64],
    lines: &[String],
    kinds: &[Kind],
    mal: &[bool],
    rare_idx: &[usize],
    rare_vs_common: &[bool],
) {
    let auc_mal = roc_auc(scores, mal).unwrap();
    let rare_scores: Vec<f64> = rare_idx.iter().map(|&i| scores[i]).collect();
    let auc_rare = roc_auc(&rare_scores, rare_vs_common).unwrap();
    let top = |k: usize| {
        let chosen = longtail::select::select_top(lines, scores, k, 0.8, 1).unwrap();
        let n = chosen.len() as f64;
        let share =
            |kind: Kind| chosen.iter().filter(|&&(i, _)| kinds[i] == kind).count() as f64 / n;
        format!(
            "{:.0}% / {:.0}%",
            100.0 * share(Kind::Rare),
            100.0 * share(Kind::Malicious)
        )
    };
    println!(
        "| {name} | {objective} | {train_secs:.0} | {rate:.0} | {auc_mal:.3} | {auc_rare:.3} | {} | {} |",
        top(100),
        top(500)
    );
}
