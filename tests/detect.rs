//! The detector end to end on real command lines from the bundled sample: training on flex,
//! ranking, save/load, resume after a kill, and the wgpu code path on the CPU (lavapipe).

use crate::util::{longtail, read_state, sample, straight_and_killed};
use longtail::Globals;
use longtail::detect::model::Objective;
use longtail::detect::{self, DetectorConfig, DetectorKind, ScoreOptions, TrainRequest};
use longtail::device::DeviceChoice;
use longtail::evaluate::metrics::roc_auc;
use std::path::Path;

/// The command lines of a bundled sample file.
fn sample_lines(name: &str) -> Vec<String> {
    std::fs::read_to_string(sample(name))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cmd"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Entropy (nats per byte) of the byte frequencies of `lines`: what a model ignoring context scores.
fn unigram_entropy(lines: &[String]) -> f64 {
    let mut counts = [0f64; 256];
    for b in lines.iter().flat_map(|l| l.bytes()) {
        counts[b as usize] += 1.0;
    }
    let n: f64 = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0.0)
        .map(|&c| -(c / n) * (c / n).ln())
        .sum()
}

/// A model small enough to train in seconds on two cores.
fn tiny_config(epochs: usize) -> DetectorConfig {
    let mut c = DetectorConfig::default();
    c.model.d_model = 32;
    c.model.n_heads = 2;
    c.model.n_layers = 1;
    c.model.d_ff = 64;
    c.model.max_len = 64;
    c.model.chunk_overlap = 16;
    c.optim.epochs = epochs;
    c.optim.lr = 1e-2;
    c.sampling.max_batch = 16;
    c.iforest.n_trees = 100;
    c
}

fn globals(device: DeviceChoice) -> Globals {
    Globals::new(device, 7).unwrap()
}

fn train_into(
    dir: &Path,
    lines: &[String],
    cfg: &DetectorConfig,
    device: DeviceChoice,
) -> detect::DetectorBundle {
    let counts = vec![1u64; lines.len()];
    detect::train(
        &TrainRequest {
            config: cfg,
            lines,
            counts: &counts,
            out: dir,
            autoencoder: true,
            iforest: true,
            resume: false,
            trained_on: vec!["test".into()],
        },
        &globals(device),
    )
    .unwrap()
}

fn opts(kind: DetectorKind) -> ScoreOptions {
    ScoreOptions {
        kind,
        batch_tokens: 4096,
        top_surprises: 2,
    }
}

#[test]
fn flex_detector_ranks_attacks_above_unseen_benign_lines_and_round_trips() {
    for objective in [Objective::Bottleneck, Objective::Masked] {
        check_objective(objective);
    }
}

fn check_objective(objective: Objective) {
    eprintln!("objective {objective:?}");
    let benign = sample_lines("nl2bash.jsonl");
    let attacks = sample_lines("atomic_red_team.jsonl");
    let (train, held_out) = benign.split_at(2600);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(2);
    cfg.model.objective = objective;
    let bundle = train_into(dir.path(), train, &cfg, DeviceChoice::Flex);
    let state = bundle.training.unwrap();
    assert_eq!(state.epochs_done, 2);
    assert!(
        state.val_loss[1] < state.val_loss[0],
        "validation loss {:?}",
        state.val_loss
    );
    // The model must beat byte frequencies alone (about 3.6 nats a byte here): it has to use
    // the context of each byte, or the code of the line.
    let unigram = unigram_entropy(train);
    assert!(
        state.val_loss[1] < unigram - 0.05,
        "validation loss {:?} vs unigram entropy {unigram}",
        state.val_loss
    );

    let detector = detect::Detector::load(dir.path(), &globals(DeviceChoice::Flex)).unwrap();
    let test: Vec<String> = held_out.iter().chain(&attacks).cloned().collect();
    let labels: Vec<bool> = (0..test.len()).map(|i| i >= held_out.len()).collect();
    let scores = detector
        .score(&test, &opts(DetectorKind::Combined))
        .unwrap();
    let ae: Vec<f64> = scores
        .autoencoder
        .as_ref()
        .unwrap()
        .iter()
        .map(|s| s.mean_nll as f64)
        .collect();
    let iforest = scores.iforest.clone().unwrap();
    for (name, s) in [
        ("autoencoder", &ae),
        ("iforest", &iforest),
        ("combined", &scores.score),
    ] {
        let auc = roc_auc(s, &labels).unwrap();
        eprintln!("{name}: AUC {auc:.3}");
        assert!(auc > 0.6, "{name} AUC {auc}");
    }
    // Explanations point at real substrings of the line.
    let s = &scores.autoencoder.as_ref().unwrap()[held_out.len()];
    let line = &test[held_out.len()];
    for sp in &s.surprises {
        assert_eq!(
            sp.text,
            String::from_utf8_lossy(&line.as_bytes()[sp.offset..sp.offset + sp.len])
        );
    }
    assert!(s.window_nll >= s.mean_nll);

    // Loading the weights back gives the same scores as the files on disk say.
    let again = detect::Detector::load(dir.path(), &globals(DeviceChoice::Flex)).unwrap();
    let rescored = again
        .score(&test[..50], &opts(DetectorKind::Autoencoder))
        .unwrap();
    for (a, b) in rescored.score.iter().zip(&ae[..50]) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn long_lines_are_chunked_and_the_odd_fragment_is_found() {
    for objective in [Objective::Bottleneck, Objective::Masked] {
        check_odd_fragment(objective);
    }
}

fn check_odd_fragment(objective: Objective) {
    let benign = sample_lines("nl2bash.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(2);
    cfg.model.objective = objective;
    train_into(dir.path(), &benign[..1500], &cfg, DeviceChoice::Flex);
    let detector = detect::Detector::load(dir.path(), &globals(DeviceChoice::Flex)).unwrap();
    // A long ordinary line with a burst of random base64 in the middle, well past one context.
    let prefix = "find . -name '*.txt' -type f -exec grep -l hello {} \\; ".repeat(3);
    let odd = "JABzAD0ATgBlAHcALQBPAGIAagBlAGMAdAAgAEkATwAuAE0AZQBtAG8AcgB5AFMAdAByAGUAYQBtACgA";
    let line = format!("{prefix}{odd} {prefix}");
    assert!(line.len() > 3 * 64);
    let scores = detector
        .score(
            std::slice::from_ref(&line),
            &opts(DetectorKind::Autoencoder),
        )
        .unwrap();
    let s = &scores.autoencoder.unwrap()[0];
    let worst = &s.surprises[0];
    assert!(
        worst.offset + worst.len > prefix.len() && worst.offset < prefix.len() + odd.len(),
        "{objective:?}: worst window {worst:?} is outside the odd fragment at {}..{}",
        prefix.len(),
        prefix.len() + odd.len()
    );
    assert!(s.window_nll > s.mean_nll + 0.5);
}

/// A kill mid-training loses at most the epoch in progress, and `--resume` reaches the same
/// result as an uninterrupted run.
#[test]
fn resume_after_sigkill_matches_an_uninterrupted_run() {
    let work = tempfile::tempdir().unwrap();
    // Ingest output is the detector's input; write one with the library's Parquet writer.
    let lines: Vec<String> = sample_lines("nl2bash.jsonl")
        .into_iter()
        .take(1200)
        .collect();
    let input = work.path().join("lines.parquet");
    let counts = vec![1u64; lines.len()];
    let scores = detect::Scores {
        score: vec![0.0; lines.len()],
        ..Default::default()
    };
    detect::write_scores(&input, &lines, &counts, &scores).unwrap();
    let cfg = work.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nobjective='masked'\nd_model=32\nn_heads=2\nn_layers=1\nd_ff=64\nmax_len=64\nchunk_overlap=16\n\
         dropout=0.1\nmask_prob=0.25\nbottleneck_dim=16\ndecoder_layers=1\nwindow=8\n\
         [sampling]\nmax_batch=16\n[optim]\nepochs=3\nlr=0.01\nweight_decay=0.01\nwarmup_fraction=0.05\ngrad_clip=1.0\npatience=0\n",
    )
    .unwrap();
    let train = |out: &Path, resume: bool| {
        let mut c = longtail();
        c.args([
            "--device",
            "flex",
            "-q",
            "train-detector",
            "--detector",
            "autoencoder",
            "--input",
        ])
        .arg(&input)
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(out);
        if resume {
            c.arg("--resume");
        }
        c
    };
    let (straight, killed) = straight_and_killed(work.path(), train);
    assert!(train(&killed, true).status().unwrap().success());

    let a = read_state(&straight).unwrap();
    let b = read_state(&killed).unwrap();
    assert_eq!(b["epochs_done"], 3);
    assert_eq!(a["step"], b["step"]);
    let (va, vb) = (
        a["val_loss"][2].as_f64().unwrap(),
        b["val_loss"][2].as_f64().unwrap(),
    );
    assert!((va - vb).abs() < 1e-3, "uninterrupted {va} vs resumed {vb}");
}

/// The GPU code path (wgpu) on the CPU through Mesa lavapipe. CI sets LONGTAIL_REQUIRE_WGPU=1
/// after installing mesa-vulkan-drivers, so a missing driver fails there instead of skipping.
#[test]
fn wgpu_cpu_trains_and_scores_a_tiny_model() {
    if !crate::util::wgpu_cpu_available() {
        return;
    }
    // Short lines and one context size keep the number of distinct kernel shapes small:
    // wgpu autotunes each new shape, which is slow on a CPU adapter.
    let lines: Vec<String> = sample_lines("nl2bash.jsonl")
        .into_iter()
        .filter(|l| l.len() <= 32)
        .take(120)
        .collect();
    let mut cfg = tiny_config(1);
    cfg.model.d_model = 16;
    cfg.model.d_ff = 32;
    cfg.model.max_len = 32;
    cfg.model.chunk_overlap = 8;
    cfg.sampling.max_batch = 128;
    let dir = tempfile::tempdir().unwrap();
    let bundle = train_into(dir.path(), &lines, &cfg, DeviceChoice::WgpuCpu);
    let val = bundle.training.unwrap().val_loss[0];
    assert!(val.is_finite() && val < 5.6, "validation loss {val}");
    let detector = detect::Detector::load(dir.path(), &globals(DeviceChoice::WgpuCpu)).unwrap();
    let scores = detector
        .score(&lines[..20], &opts(DetectorKind::Combined))
        .unwrap();
    assert!(scores.score.iter().all(|s| s.is_finite()));
    // The same weights on flex give the same reconstruction error (backends agree).
    let on_flex = detect::Detector::load(dir.path(), &globals(DeviceChoice::Flex)).unwrap();
    let flex_scores = on_flex
        .score(&lines[..20], &opts(DetectorKind::Autoencoder))
        .unwrap();
    let gpu_ae = scores.autoencoder.unwrap();
    for (a, b) in gpu_ae.iter().zip(flex_scores.autoencoder.unwrap()) {
        assert!(
            (a.mean_nll - b.mean_nll).abs() < 1e-3,
            "{} vs {}",
            a.mean_nll,
            b.mean_nll
        );
    }
}
