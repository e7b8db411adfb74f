//! `longtail run`: dataset splits without leakage, a whole tiny experiment on the bundled
//! sample, stage reuse on rerun, resume of an unfinished stage, and config errors.

use crate::util::repo;
use longtail::experiment::datasets::{self, DataConfig, Role, Split};
use longtail::experiment::report::Results;
use longtail::experiment::{self, ExperimentConfig, RunRequest};
use longtail::{Globals, Label};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn sample_dir() -> PathBuf {
    repo().join("data/sample")
}

/// The demo config with the sample's absolute path, so tests run from any directory.
fn demo_config() -> ExperimentConfig {
    let path = repo().join("configs/demo.toml");
    let mut cfg = ExperimentConfig::from_toml_file(&path).expect("configs/demo.toml is valid");
    cfg.data.dir = sample_dir();
    cfg
}

fn globals() -> Globals {
    Globals::flex(0)
}

#[test]
fn shipped_configs_parse_and_validate() {
    for name in [
        "demo.toml",
        "full.toml",
        "demo-llm.toml",
        "ops.toml",
        "ops-llm.toml",
        "ops-steady.toml",
        "ops-llm-steady.toml",
    ] {
        let path = repo().join("configs").join(name);
        let cfg = ExperimentConfig::from_toml_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(cfg.arms.contains(&experiment::Arm::Baseline), "{name}");
    }
    // The steady variant differs from ops.toml only where its header says.
    let load = |name: &str| ExperimentConfig::from_toml_file(&repo().join("configs").join(name));
    let (ops, steady) = (load("ops.toml").unwrap(), load("ops-steady.toml").unwrap());
    assert_eq!(steady.classifier.ensemble, 3);
    assert!(steady.select.skip_placeholders && !ops.select.skip_placeholders);
    // The steady LLM run is ops-llm.toml with ops-steady's classifiers: so it can reuse both
    // runs' stages (the baselines of one, the LLM answers of the other).
    let (llm, llm_steady) = (
        load("ops-llm.toml").unwrap(),
        load("ops-llm-steady.toml").unwrap(),
    );
    let section = |cfg: &ExperimentConfig, name: &str| json!(cfg)[name].clone();
    for (what, ours, theirs, sections) in [
        ("ops-steady", &steady, &ops, &["data", "detector"][..]),
        (
            "ops-llm-steady vs ops-steady",
            &llm_steady,
            &steady,
            &["classifier"],
        ),
        (
            "ops-llm-steady",
            &llm_steady,
            &llm,
            &["data", "detector", "select", "label"],
        ),
    ] {
        for name in sections {
            let ours = section(ours, name);
            assert!(!ours.is_null(), "{what}: no [{name}] section");
            assert_eq!(ours, section(theirs, name), "{what} [{name}]");
        }
    }
}

#[test]
fn splits_keep_groups_apart_and_are_deterministic() {
    let cfg: DataConfig = demo_config().data;
    let built = datasets::build(&cfg).unwrap();
    let again = datasets::build(&cfg).unwrap();
    assert_eq!(built.lines, again.lines, "same seed, same datasets");

    let lines = &built.lines;
    let in_split = |s: Split| lines.iter().filter(move |l| l.split == s);
    // Every split the experiment needs is populated, with the classes it needs.
    for (split, label) in [
        (Split::BaselineTrain, Label::Benign),
        (Split::BaselineTrain, Label::Malicious),
        (Split::HardTest, Label::Benign),
        (Split::HardTest, Label::Malicious),
        (Split::EasyTest, Label::Benign),
        (Split::EasyTest, Label::Malicious),
    ] {
        assert!(
            in_split(split).any(|l| l.label == Some(label)),
            "{split:?} has no {label} line"
        );
    }
    // The hard test's benign side is rare benign (tail) only; its scripts never reach the stream.
    let hard_scripts: HashSet<&str> = in_split(Split::HardTest)
        .filter(|l| l.label == Some(Label::Benign))
        .map(|l| {
            assert_eq!(l.role, Role::Tail);
            l.origin.as_str()
        })
        .collect();
    let stream_scripts: HashSet<&str> = lines
        .iter()
        .filter(|l| l.count > 0 && l.role == Role::Tail)
        .map(|l| l.origin.as_str())
        .collect();
    assert!(!hard_scripts.is_empty() && !stream_scripts.is_empty());
    assert!(hard_scripts.is_disjoint(&stream_scripts));
    // Malicious hard-test lines come from techniques the baseline never saw (the sample has
    // no `technique` field, so the ATT&CK test file in `source` is the group key).
    let seen: HashSet<&str> = in_split(Split::BaselineTrain)
        .filter(|l| l.label == Some(Label::Malicious))
        .map(|l| l.origin.as_str())
        .collect();
    let unseen: Vec<&str> = in_split(Split::HardTest)
        .filter(|l| l.label == Some(Label::Malicious))
        .map(|l| l.origin.as_str())
        .collect();
    assert!(!seen.is_empty() && !unseen.is_empty());
    for origin in unseen {
        assert!(origin.contains("atomics/T"), "{origin}");
        assert!(
            !seen.contains(origin),
            "{origin} is in the baseline and the hard test"
        );
    }
    // No test line is near-identical to a line a model learns from (Jaccard of 5-byte
    // shingles, checked directly rather than through the MinHash estimate).
    let shingles =
        |s: &str| -> HashSet<Vec<u8>> { s.as_bytes().windows(5).map(<[u8]>::to_vec).collect() };
    let train: Vec<HashSet<Vec<u8>>> = lines
        .iter()
        .filter(|l| l.split == Split::BaselineTrain || l.count > 0)
        .map(|l| shingles(&l.cmd))
        .collect();
    let tests: Vec<&datasets::Line> = lines
        .iter()
        .filter(|l| matches!(l.split, Split::EasyTest | Split::HardTest))
        .step_by(7)
        .collect();
    let mut close = 0;
    for t in &tests {
        let a = shingles(&t.cmd);
        if a.len() < 10 {
            continue;
        }
        for b in &train {
            let inter = a.intersection(b).count() as f64;
            if inter / (a.len() + b.len()) as f64 * 2.0 > 0.95 {
                close += 1;
                break;
            }
        }
    }
    // MinHash is an estimate: allow a stray pair, not a pattern.
    assert!(
        close <= tests.len() / 100,
        "{close} of {} test lines are near-copies of training lines",
        tests.len()
    );
    // The stream's malicious share respects its cap; counts are heavy-tailed.
    let stream: Vec<&datasets::Line> = lines.iter().filter(|l| l.count > 0).collect();
    let malicious = stream
        .iter()
        .filter(|l| l.label == Some(Label::Malicious))
        .count() as f64;
    assert!(malicious / stream.len() as f64 <= cfg.stream_malicious_share + 1e-9);
    let max = stream.iter().map(|l| l.count).max().unwrap();
    assert_eq!(max, cfg.stream_max_count);
}

/// A dev hard split takes whole held-out groups (scripts, techniques) away from the hard test:
/// dev and test share no group, the other splits stay as they were, and without a dev share
/// nothing changes at all.
#[test]
fn the_dev_hard_split_is_disjoint_from_the_hard_test_by_group() {
    let cfg: DataConfig = demo_config().data;
    let plain = datasets::build(&cfg).unwrap();
    assert!(plain.lines.iter().all(|l| l.split != Split::HardDev));
    let with_dev = datasets::build(&DataConfig {
        hard_dev_fraction: 0.5,
        ..cfg.clone()
    })
    .unwrap();
    let mut moved = 0;
    for (a, b) in plain.lines.iter().zip(&with_dev.lines) {
        assert_eq!(a.cmd, b.cmd);
        if a.split != b.split {
            // Only hard-test lines move, and only to dev (leakage drops aside).
            assert_eq!(
                (a.split, b.split),
                (Split::HardTest, Split::HardDev),
                "{}",
                a.cmd
            );
            moved += 1;
        }
    }
    let in_split = |s: Split| with_dev.lines.iter().filter(move |l| l.split == s);
    for label in [Label::Benign, Label::Malicious] {
        assert!(
            in_split(Split::HardDev).any(|l| l.label == Some(label)),
            "dev has no {label}"
        );
        assert!(
            in_split(Split::HardTest).any(|l| l.label == Some(label)),
            "test has no {label}"
        );
    }
    let groups = |s: Split| -> HashSet<&str> { in_split(s).map(|l| l.origin.as_str()).collect() };
    assert!(groups(Split::HardDev).is_disjoint(&groups(Split::HardTest)));
    let hard = plain
        .lines
        .iter()
        .filter(|l| l.split == Split::HardTest)
        .count();
    assert!(
        moved > hard / 5 && moved < hard * 4 / 5,
        "{moved} of {hard} moved"
    );
}

/// The demo config shrunk to seconds: a tiny detector and classifier, one seed.
fn tiny_config(out: &Path) -> ExperimentConfig {
    let mut cfg = demo_config();
    cfg.out = out.to_path_buf();
    cfg.seeds = vec![3];
    cfg.data.stream_common_lines = 300;
    for s in &mut cfg.data.sources {
        s.max_lines = Some(500);
    }
    cfg.detector.model.d_model = 16;
    cfg.detector.model.n_heads = 2;
    cfg.detector.model.d_ff = 32;
    cfg.detector.model.n_layers = 1;
    cfg.detector.model.bottleneck_dim = 8;
    cfg.detector.model.max_len = 64;
    cfg.detector.model.chunk_overlap = 16;
    cfg.detector.optim.epochs = 1;
    cfg.detector.iforest.n_trees = 20;
    cfg.select.budget = 40;
    cfg.classifier.model.embed_dim = 8;
    cfg.classifier.model.filters = 8;
    cfg.classifier.model.widths = vec![3];
    cfg.classifier.model.max_len = 64;
    cfg.classifier.optim.epochs = 1;
    cfg
}

fn write_config(dir: &Path, cfg: &ExperimentConfig) -> PathBuf {
    let path = dir.join("experiment.toml");
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    path
}

fn stage_records(out: &Path) -> HashMap<PathBuf, serde_json::Value> {
    fn walk(dir: &Path, found: &mut HashMap<PathBuf, serde_json::Value>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, found);
            } else if p.file_name().is_some_and(|n| n == "stage.json") {
                let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                found.insert(p, v);
            }
        }
    }
    let mut found = HashMap::new();
    walk(out, &mut found);
    found
}

#[test]
fn a_tiny_experiment_runs_reuses_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = tiny_config(&out);
    let config_path = write_config(tmp.path(), &cfg);
    let args = RunRequest {
        config: config_path.clone(),
        out: None,
        data_only: false,
        budget: None,
        seeds: None,
        arms: None,
        oracle_benign_precision: None,
        oracle_malicious_precision: None,
        ensemble: None,
        skip_placeholders: false,
        known_truth_only: false,
        propagate_to_family: false,
    };
    experiment::run(&args, &globals()).unwrap();

    // The report covers every arm, with sane figures.
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/results.json")).unwrap())
            .unwrap();
    assert_eq!(results.runs.len(), cfg.arms.len());
    for run in &results.runs {
        for auc in [run.hard.roc_auc, run.easy.roc_auc] {
            assert!((0.0..=1.0).contains(&auc), "{:?}: AUC {auc}", run.arm);
        }
        match run.arm {
            experiment::Arm::Baseline => assert!(run.labels.is_none()),
            experiment::Arm::OracleAll => {
                let l = run.labels.as_ref().unwrap();
                let stream =
                    datasets::Table::read(&out.join("data").join(datasets::TRUTH)).unwrap();
                assert_eq!(
                    l.spent,
                    stream.cmd.len(),
                    "the upper bound labels the whole stream"
                );
                assert_eq!(
                    l.augmented_truly_malicious, 0,
                    "an exact oracle adds no malicious line"
                );
            }
            _ => {
                let l = run.labels.as_ref().unwrap();
                assert_eq!(
                    l.spent, cfg.select.budget,
                    "{:?} spends the budget",
                    run.arm
                );
                assert_eq!(l.benign + l.malicious + l.no_verdict, l.spent);
                assert_eq!(l.augmented, l.benign);
            }
        }
    }
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(
        md.contains("| baseline |") && md.contains("random lines (control)"),
        "{md}"
    );
    assert!(out.join("report/hard/roc.svg").exists());

    // A rerun reuses every stage: nothing is retrained.
    let before = stage_records(&out);
    assert!(
        before.len() >= 2 + 2 * cfg.arms.len(),
        "{} stages",
        before.len()
    );
    assert!(before.values().all(|r| r["complete"] == true));
    let weights = out.join("seed-3/baseline/classifier/model.safetensors");
    let mtime = std::fs::metadata(&weights).unwrap().modified().unwrap();
    experiment::run(&args, &globals()).unwrap();
    assert_eq!(
        stage_records(&out),
        before,
        "a rerun with the same config redid a stage"
    );
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        mtime
    );

    // A stage left unfinished (as by a crash) is redone; the others are kept.
    let label_stage = out.join("seed-3/oracle/random/labels/stage.json");
    let mut record = before[&label_stage].clone();
    record["complete"] = serde_json::Value::Bool(false);
    std::fs::write(&label_stage, record.to_string()).unwrap();
    experiment::run(&args, &globals()).unwrap();
    let after = stage_records(&out);
    assert_eq!(after[&label_stage]["complete"], true);
    let detector = out.join("seed-3/detector/stage.json");
    assert_eq!(
        after[&detector], before[&detector],
        "the detector was retrained"
    );

    // Changing only the classifier retrains classifiers, not the detector or the labels.
    let mut changed = cfg.clone();
    changed.classifier.model.filters = 12;
    write_config(tmp.path(), &changed);
    experiment::run(&args, &globals()).unwrap();
    let after = stage_records(&out);
    assert_eq!(after[&detector], before[&detector]);
    let labels = out.join("seed-3/oracle/combined/labels/stage.json");
    assert_eq!(after[&labels], before[&labels]);
    let classifier = out.join("seed-3/baseline/classifier/stage.json");
    assert_ne!(after[&classifier]["key"], before[&classifier]["key"]);

    // Fewer arms, needing one detector kind: the detector trained for both kinds, and its
    // scores, serve them; nothing upstream of the arms is redone.
    let fewer = RunRequest {
        arms: Some(vec![
            experiment::Arm::Baseline,
            experiment::Arm::Autoencoder,
        ]),
        ..args.clone()
    };
    experiment::run(&fewer, &globals()).unwrap();
    let after_fewer = stage_records(&out);
    let scores = out.join("seed-3/scores/stage.json");
    assert_eq!(
        (&after_fewer[&detector], &after_fewer[&scores]),
        (&after[&detector], &after[&scores]),
        "fewer arms retrained the detector or rescored the stream"
    );
}

#[test]
fn config_errors_say_what_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let path = tmp.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        ExperimentConfig::from_toml_file(&path).expect_err("must be rejected")
    };
    let e = run("name = \"x\"\nbogus = 1\n");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("bogus"), "{e}");
    let e = run("arms = [\"combined\"]\n[[data.sources]]\nfile = \"a.jsonl\"\nrole = \"common\"\n");
    assert!(e.to_string().contains("baseline"), "{e}");
    let e = run("[data]\nsources = []\n");
    assert!(e.to_string().contains("sources"), "{e}");
    let e = run("[[data.sources]]\nfile = \"a.jsonl\"\nrole = \"rare\"\n");
    assert!(e.to_string().contains("rare"), "{e}");

    // A missing data file names the path and where it is looked up.
    let mut cfg = demo_config();
    cfg.data.dir = tmp.path().join("nowhere");
    let err = datasets::build(&cfg.data)
        .err()
        .expect("a missing folder is an error");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("nowhere"), "{err}");
}

/// Issue 12's bad input: a budget larger than the stream, a source without the command
/// column, a source file that is not there. Each is refused with exit code 2 and a message
/// that says what to change, before any model trains.
#[test]
fn bad_experiment_input_is_refused_before_any_training() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = tiny_config(&out);
    cfg.select.budget = 1_000_000;
    let request = RunRequest {
        config: write_config(tmp.path(), &cfg),
        ..Default::default()
    };
    let err = experiment::run(&request, &globals()).expect_err("more labels than lines");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("exceeds the stream"), "{err}");
    assert!(!out.join("seed-3").exists(), "no seed stage ran: {err}");

    // A copy of the sample whose first source names its command field `command`.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for entry in std::fs::read_dir(sample_dir()).unwrap().flatten() {
        std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
    }
    let first = data.join(&cfg.data.sources[0].file);
    let renamed = std::fs::read_to_string(&first)
        .unwrap()
        .replace("\"cmd\":", "\"command\":");
    std::fs::write(&first, renamed).unwrap();
    let err = datasets::build(&DataConfig {
        dir: data,
        ..cfg.data.clone()
    })
    .err()
    .expect("a source without the cmd column");
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(
        text.contains(&cfg.data.sources[0].file) && text.contains("\"cmd\""),
        "names the file and the field it reads: {err}"
    );

    let mut missing = cfg.data.clone();
    missing.sources[1].file = "not_there.jsonl".into();
    let err = datasets::build(&missing)
        .err()
        .expect("a missing source file");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("not_there.jsonl"), "{err}");
}

#[test]
fn overrides_are_applied_and_reported_in_the_command() {
    let args = RunRequest {
        config: PathBuf::from("configs/full.toml"),
        out: Some(PathBuf::from("runs/b")),
        data_only: false,
        budget: Some(1500),
        seeds: Some(vec![1, 2]),
        arms: Some(vec![experiment::Arm::Baseline, experiment::Arm::Random]),
        oracle_benign_precision: Some(0.9),
        oracle_malicious_precision: None,
        ensemble: Some(3),
        skip_placeholders: true,
        known_truth_only: true,
        propagate_to_family: true,
    };
    assert_eq!(
        args.command(),
        "longtail run --config configs/full.toml --out runs/b --budget 1500 --seeds 1,2 \
         --arms baseline,random --oracle-benign-precision 0.9 --ensemble 3 --skip-placeholders \
         --known-truth-only --propagate-to-family"
    );
}

/// `known_truth_only` (the oracle's blind-spot analysis): no arm but the upper bound spends a
/// label on a line of unknown truth, every arm still spends its whole budget, and with an LLM
/// labeler the flag is refused before anything runs.
#[test]
fn known_truth_only_spends_every_label_on_a_line_the_oracle_can_judge() {
    use experiment::Arm::*;
    let tmp = tempfile::tempdir().unwrap();
    let (mut cfg, out, stream) = run_tiny_arms(
        tmp.path(),
        &[Baseline, Iforest, Random, NovelRandom, OracleAll],
        |cfg| cfg.select.known_truth_only = true,
    );
    let unknown: HashSet<&str> = stream
        .cmd
        .iter()
        .zip(&stream.label)
        .filter(|(_, truth)| truth.is_none())
        .map(|(c, _)| c.as_str())
        .collect();
    assert!(
        !unknown.is_empty(),
        "the sample's stream has lines of unknown truth: the check below means something"
    );
    for arm in ["iforest", "random", "novel_random", "oracle_all"] {
        let picked = sent_to_labeler(&out, arm);
        let blind = picked
            .iter()
            .filter(|c| unknown.contains(c.as_str()))
            .count();
        if arm == "oracle_all" {
            assert_eq!(
                blind,
                unknown.len(),
                "the upper bound still labels everything"
            );
        } else {
            assert_eq!(blind, 0, "{arm} spent labels the oracle cannot judge");
            assert_eq!(picked.len(), cfg.select.budget, "{arm} spends its budget");
        }
    }

    // More labels than lines of known truth (but fewer than the stream): refused up front.
    cfg.select.budget = stream.cmd.len() - unknown.len() + 1;
    let err = experiment::run(
        &RunRequest {
            config: write_config(tmp.path(), &cfg),
            ..Default::default()
        },
        &globals(),
    )
    .expect_err("more labels than selectable lines");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("known_truth_only"), "{err}");

    cfg.label.labelers = vec![experiment::LabelerKind::Llm];
    cfg.label.llm = Some(Default::default());
    let err = cfg.validate().expect_err("an LLM judges the background");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("known_truth_only"), "{err}");
}

/// The selection arms beyond the source work: `fp_risk` labels the stream lines the baseline
/// classifier scores most malicious, `anomaly_fp` ranks by anomaly x classifier, `diversity`
/// covers clusters; each spends the same budget as the random control.
#[test]
fn classifier_guided_and_diversity_arms_spend_the_budget_on_what_they_promise() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = tiny_config(&out);
    cfg.arms = vec![
        experiment::Arm::Baseline,
        experiment::Arm::FpRisk,
        experiment::Arm::AnomalyFp,
        experiment::Arm::Diversity,
        experiment::Arm::Random,
        experiment::Arm::NovelRandom,
    ];
    let config = write_config(tmp.path(), &cfg);
    let req = RunRequest {
        config,
        ..RunRequest::default()
    };
    experiment::run(&req, &globals()).unwrap();
    let labels = |arm: &str| out.join(format!("seed-3/oracle/{arm}/labels/labels.parquet"));
    let numbers = |path: &Path, col: &str| -> Vec<f64> {
        longtail::io::table::read_parquet(path)
            .unwrap()
            .iter()
            .flat_map(|b| longtail::io::table::numbers(b, col, path).unwrap())
            .collect()
    };
    for arm in ["fp_risk", "anomaly_fp", "diversity", "random"] {
        let n = crate::util::column(&labels(arm), "cmd").len();
        assert_eq!(n, cfg.select.budget, "{arm} spends the budget");
    }
    // novel_random is random's draw without the baseline's families: it takes no baseline
    // line, where random (on this stream, which repeats baseline lines) does.
    let texts = |arm: &str| -> Vec<String> {
        crate::util::column(&labels(arm), "cmd")
            .into_iter()
            .map(|c| c.unwrap())
            .collect()
    };
    let (novel, random) = (texts("novel_random"), texts("random"));
    assert!(!novel.is_empty() && novel.len() <= cfg.select.budget);
    let baseline: std::collections::HashSet<String> =
        crate::util::column(&out.join("data/baseline.parquet"), "cmd")
            .into_iter()
            .map(|c| c.unwrap())
            .collect();
    assert!(novel.iter().all(|c| !baseline.contains(c)), "{novel:?}");
    assert!(
        random.iter().any(|c| baseline.contains(c)),
        "the sample's stream repeats baseline lines, so random takes some"
    );
    assert_ne!(novel, random);
    // fp_risk's scores are the baseline classifier's own scores of those lines, and they sit
    // at the top of its scores of the whole stream.
    let model =
        longtail::classify::Classifier::load(&out.join("seed-3/baseline/classifier"), &globals())
            .unwrap();
    let stream = crate::util::column(&out.join("data/stream.parquet"), "cmd");
    let stream: Vec<&str> = stream.iter().map(|c| c.as_deref().unwrap()).collect();
    let all = model.score(&stream, 8192, |_| {});
    let picked = crate::util::column(&labels("fp_risk"), "cmd");
    let picked: Vec<&str> = picked.iter().map(|c| c.as_deref().unwrap()).collect();
    let scores = numbers(&labels("fp_risk"), "score");
    let direct = model.score(&picked, 8192, |_| {});
    for (a, b) in scores.iter().zip(&direct) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cut = sorted[(4 * cfg.select.budget).min(sorted.len() - 1)];
    assert!(
        scores.iter().all(|&s| s >= cut),
        "fp_risk picks below the top: {scores:?}"
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&scores) > mean(&all),
        "{} vs {}",
        mean(&scores),
        mean(&all)
    );
}

/// The bundled sample plus two generated, dated tail files shaped like the shared corpora's
/// `ops_*` files (`date`, `shape`, `source` = script): `ops_dated.jsonl` with lines from 2023
/// to 2025 in 12 scripts, and `ops_older.jsonl`, which holds some of the same lines dated
/// earlier. Per script: a "version bump" pair (one shape, dated before and after the cut) and
/// a line whose earliest date is in the older file.
fn dated_fixture(dir: &Path) -> DataConfig {
    for f in [
        "runner_images.jsonl",
        "nl2bash.jsonl",
        "atomic_red_team.jsonl",
        "otrf_security_datasets.jsonl",
    ] {
        std::fs::copy(sample_dir().join(f), dir.join(f)).unwrap();
    }
    let row = |cmd: &str, script: usize, date: &str, shape: &str| {
        serde_json::json!({
            "cmd": cmd, "label": "benign", "platform": "linux",
            "source": format!("fixture/ops:scripts/s{script}.sh"),
            "date": date, "shape": shape, "placeholder": false,
        })
        .to_string()
    };
    let (mut dated, mut older) = (Vec::new(), Vec::new());
    for k in 0..240usize {
        let script = k % 12;
        let date = format!("{}-{:02}-15", 2023 + k % 3, 1 + (k / 3) % 12);
        let cmd = format!(
            "tool{k} --opt{}q{k} /srv/area{}/item{k}.dat --level {}",
            k * 7,
            k % 5,
            k * 13 % 97
        );
        dated.push(row(&cmd, script, &date, &format!("shape{k}")));
    }
    for s in 0..12 {
        dated.push(row(
            &format!("pkgbuild-bump{s} --release 1.{s}.0 --target zone{s}"),
            s,
            "2023-03-01",
            &format!("bump{s}"),
        ));
        dated.push(row(
            &format!("pkgbuild-bump{s} --release 9.{s}.7 --target zone{s}"),
            s,
            "2025-03-01",
            &format!("bump{s}"),
        ));
        let moved = format!("relocated-step{s} --from old{s} --into new{s}");
        dated.push(row(&moved, s, "2025-02-01", &format!("moved{s}")));
        older.push(row(&moved, s, "2022-01-01", &format!("moved{s}")));
    }
    std::fs::write(dir.join("ops_dated.jsonl"), dated.join("\n")).unwrap();
    std::fs::write(dir.join("ops_older.jsonl"), older.join("\n")).unwrap();
    let mut cfg = demo_config().data;
    cfg.dir = dir.to_path_buf();
    let tail = |file: &str| datasets::SourceSpec {
        file: file.into(),
        role: Role::Tail,
        group_by: datasets::GroupBy::Source,
        max_lines: None,
    };
    cfg.sources.insert(0, tail("ops_dated.jsonl"));
    cfg.sources.push(tail("ops_older.jsonl"));
    cfg.hard_tail_fraction = 0.3;
    cfg.time_split = Some("2024-07-01".into());
    cfg
}

#[test]
fn the_time_split_tests_later_lines_of_known_sources_without_leaks() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = dated_fixture(tmp.path());
    let built = datasets::build(&cfg).unwrap();
    let lines = &built.lines;
    let cut = "2024-07-01";
    let time: Vec<&datasets::Line> = lines
        .iter()
        .filter(|l| l.split == Split::TimeTest)
        .collect();
    assert!(time.len() > 20, "{} time-split lines", time.len());
    for l in &time {
        assert_eq!(l.label, Some(Label::Benign));
        assert!(l.date.as_deref().unwrap() >= cut, "{l:?}");
    }
    for l in lines.iter().filter(|l| l.count > 0 && l.role == Role::Tail) {
        if let Some(d) = &l.date {
            assert!(d.as_str() < cut, "a later line in the stream: {l:?}");
        }
    }
    // Time-split lines come from scripts the stream also has; the hard test's scripts do not.
    let scripts = |s: Split| -> HashSet<&str> {
        lines
            .iter()
            .filter(|l| l.split == s && l.source == "ops_dated")
            .map(|l| l.origin.as_str())
            .collect()
    };
    let stream_scripts: HashSet<&str> = lines
        .iter()
        .filter(|l| l.count > 0 && l.source == "ops_dated")
        .map(|l| l.origin.as_str())
        .collect();
    assert!(scripts(Split::TimeTest).is_subset(&stream_scripts));
    assert!(!scripts(Split::HardTest).is_empty());
    assert!(scripts(Split::HardTest).is_disjoint(&stream_scripts));

    // A version bump (one shape) never crosses the cut: its later line is dropped, not tested.
    let bumped = |l: &&datasets::Line| l.cmd.contains("--release 9.");
    assert!(time.iter().all(|l| !bumped(l)));
    assert!(
        lines
            .iter()
            .filter(bumped)
            .any(|l| l.split == Split::Unused),
        "no bump pair fell in a stream script: the check above proved nothing"
    );
    // First seen = the earliest date of any source that has the line.
    let moved = |l: &&datasets::Line| l.cmd.starts_with("relocated-step");
    assert!(time.iter().all(|l| !moved(l)));
    assert!(lines.iter().filter(moved).any(|l| l.count > 0));
    assert!(
        lines
            .iter()
            .filter(moved)
            .all(|l| l.date.as_deref() == Some("2022-01-01"))
    );

    // The written test: the time-split benign lines against the hard test's malicious lines.
    built.write(tmp.path()).unwrap();
    let table = datasets::Table::read(&tmp.path().join(datasets::TIME_TEST)).unwrap();
    let hard = datasets::Table::read(&tmp.path().join(datasets::HARD_TEST)).unwrap();
    let malicious = |t: &datasets::Table| -> HashSet<String> {
        (0..t.cmd.len())
            .filter(|&i| t.label[i] == Some(Label::Malicious))
            .map(|i| t.cmd[i].clone())
            .collect()
    };
    assert_eq!(malicious(&table), malicious(&hard));
    assert!(!malicious(&table).is_empty());
    assert_eq!(table.cmd.len(), time.len() + malicious(&hard).len());

    // Without a cut, nothing is time-split and the later lines feed the stream.
    let plain = datasets::build(&DataConfig {
        time_split: None,
        ..cfg.clone()
    })
    .unwrap();
    assert!(plain.lines.iter().all(|l| l.split != Split::TimeTest));
    assert!(!tmp.path().join("none").exists());
}

#[test]
fn a_time_split_that_cannot_work_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = dated_fixture(tmp.path());
    let err = datasets::build(&DataConfig {
        time_split: Some("2024-7-1".into()),
        ..cfg.clone()
    })
    .err()
    .expect("a malformed day");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("YYYY-MM-DD"), "{err}");
    let err = datasets::build(&DataConfig {
        time_split: Some("2030-01-01".into()),
        ..cfg.clone()
    })
    .err()
    .expect("a cut after every line");
    assert!(err.to_string().contains("leaves no tail line"), "{err}");
    // A config whose hard test gets no benign line says which table and what to change.
    let err = datasets::build(&DataConfig {
        hard_tail_fraction: 0.0,
        ..cfg
    })
    .err()
    .expect("no held-out scripts");
    assert!(
        err.to_string().contains("hard test has no benign line"),
        "{err}"
    );
}

#[test]
fn a_time_split_experiment_reports_both_tests_with_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut cfg = tiny_config(&out);
    let max_lines = Some(500);
    cfg.data = DataConfig {
        stream_common_lines: 300,
        ..dated_fixture(tmp.path())
    };
    for s in &mut cfg.data.sources {
        s.max_lines = max_lines;
    }
    cfg.seeds = vec![1, 2];
    cfg.arms = vec![
        experiment::Arm::Baseline,
        experiment::Arm::Iforest,
        experiment::Arm::Random,
    ];
    let config = write_config(tmp.path(), &cfg);
    let request = RunRequest {
        config,
        ..Default::default()
    };
    experiment::run(&request, &globals()).unwrap();
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/results.json")).unwrap())
            .unwrap();
    for run in &results.runs {
        let time = run
            .time
            .as_ref()
            .expect("every run is measured on the time split");
        assert!((0.0..=1.0).contains(&time.roc_auc));
    }
    for arm in &results.arms {
        // The hard test's TPR at FPR 1e-3: its interval's estimate is the main table's mean,
        // and its gains are intervals like the AUC's.
        let tpr = arm.tpr_ci.hard.expect("a TPR interval on the hard test");
        assert!(
            (tpr.estimate - arm.tpr_at_fpr_1e3_hard.mean).abs() < 1e-9,
            "{tpr:?} vs {:?}",
            arm.tpr_at_fpr_1e3_hard
        );
        assert!(
            tpr.lower <= tpr.estimate && tpr.estimate <= tpr.upper,
            "{tpr:?}"
        );
        assert_eq!(
            arm.tpr_ci.hard_vs_baseline.is_some(),
            arm.arm != experiment::Arm::Baseline
        );
        assert_eq!(
            arm.tpr_ci.hard_vs_random.is_some(),
            !matches!(arm.arm, experiment::Arm::Baseline | experiment::Arm::Random)
        );
        let time_tpr = arm.tpr_ci.time.expect("a TPR interval on the time split");
        let time_mean = arm.tpr_at_fpr_1e3_time.unwrap().mean;
        assert!((time_tpr.estimate - time_mean).abs() < 1e-9, "{time_tpr:?}");
        assert_eq!(
            arm.tpr_ci.time_vs_baseline.is_some(),
            arm.arm != experiment::Arm::Baseline
        );
        let gain = arm.gain_ci.time_vs_baseline;
        if arm.arm == experiment::Arm::Baseline {
            assert!(gain.is_none());
            continue;
        }
        let gain = gain.expect("a gain interval on the time split");
        assert!(
            gain.lower <= gain.estimate && gain.estimate <= gain.upper,
            "{gain:?}"
        );
        let mean = arm.auc_time_gain.unwrap().mean;
        assert!((gain.estimate - mean).abs() < 1e-9, "{gain:?} vs {mean}");
        assert!(arm.gain_ci.hard_vs_baseline.is_some());
        assert_eq!(
            arm.gain_ci.hard_vs_random.is_some(),
            arm.arm != experiment::Arm::Random
        );
    }
    // Coverage of the later tail, per arm of the first seed, from the lines each arm added.
    assert_eq!(results.coverage.len(), cfg.arms.len() - 1);
    for c in &results.coverage {
        assert_eq!(c.test, "time");
        assert!(c.covered <= c.test_benign && c.test_benign > 0, "{c:?}");
        let run = results
            .runs
            .iter()
            .find(|r| r.seed == 1 && r.arm == c.arm)
            .unwrap();
        assert_eq!(c.added, run.labels.as_ref().unwrap().augmented, "{c:?}");
        assert_eq!(
            c.added_by_source.iter().map(|(_, n)| n).sum::<usize>(),
            c.added
        );
    }
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    for part in [
        "## What the added lines cover (first seed)",
        "### Time-split test",
        "Δ vs random control [95 % CI]",
        "### Against the random control (hard test)",
        "### TPR at FPR 1e-3 on the hard test, with intervals",
        "### TPR at FPR 1e-3 on the time-split test, with intervals",
        "### Without unexpanded variables",
        "time-split test: tail lines of the stream's sources first seen on or after 2024-07-01",
    ] {
        assert!(md.contains(part), "no {part:?} in\n{md}");
    }
    assert!(out.join("report/time/roc.svg").exists());
}

/// A tiny experiment with `arms` (after `adjust` of its config) run to the end: its config,
/// run directory and stream table.
fn run_tiny_arms(
    tmp: &Path,
    arms: &[experiment::Arm],
    adjust: impl FnOnce(&mut ExperimentConfig),
) -> (ExperimentConfig, PathBuf, datasets::Table) {
    let out = tmp.join("run");
    let mut cfg = tiny_config(&out);
    adjust(&mut cfg);
    cfg.arms = arms.to_vec();
    let config = write_config(tmp, &cfg);
    experiment::run(
        &RunRequest {
            config,
            ..Default::default()
        },
        &globals(),
    )
    .unwrap();
    let stream = datasets::Table::read(&out.join("data").join(datasets::TRUTH)).unwrap();
    (cfg, out, stream)
}

/// Two string columns of a Parquet file, row by row.
fn string_pairs(path: &Path, a: &str, b: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for batch in longtail::io::table::read_parquet(path).unwrap() {
        let first = longtail::io::table::strings(&batch, a, path).unwrap();
        let second = longtail::io::table::strings(&batch, b, path).unwrap();
        rows.extend(
            first
                .into_iter()
                .zip(second)
                .map(|(x, y)| (x.unwrap(), y.unwrap())),
        );
    }
    rows
}

/// The lines `arm` sent to the oracle in a tiny run (seed 3).
fn sent_to_labeler(out: &Path, arm: &str) -> Vec<String> {
    let labels = out.join(format!("seed-3/oracle/{arm}/labels/labels.parquet"));
    longtail::io::read_labeled(std::slice::from_ref(&labels), false)
        .unwrap()
        .into_iter()
        .map(|r| r.cmd)
        .collect()
}

/// `propagate_to_family` (one label per family): every added line either got a benign
/// verdict itself or carries one from a labeled line of its coarse family; the labels spent
/// do not change, families with a malicious verdict get nothing, and the tallies count it.
#[test]
fn propagate_to_family_adds_the_family_of_each_benign_verdict_and_nothing_else() {
    use experiment::Arm::*;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, out, stream) = run_tiny_arms(
        tmp.path(),
        &[Baseline, Representative, Random, OracleAll],
        |cfg| {
            cfg.select.propagate_to_family = true;
            cfg.select.skip_placeholders = true;
        },
    );
    let stream_lines: HashSet<&str> = stream.cmd.iter().map(String::as_str).collect();
    let results: Results =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/results.json")).unwrap())
            .unwrap();
    let mut propagated_somewhere = 0;
    for arm in ["representative", "random"] {
        let dir = out.join(format!("seed-3/oracle/{arm}/labels"));
        // The labeled lines and their verdicts.
        let verdict: HashMap<String, String> =
            string_pairs(&dir.join("labels.parquet"), "cmd", "verdict")
                .into_iter()
                .collect();
        assert_eq!(
            verdict.len(),
            cfg.select.budget,
            "{arm}: the labels spent do not change"
        );
        let (mut own, mut inherited) = (0, 0);
        for (c, of) in string_pairs(&dir.join("augment.parquet"), "cmd", "verdict_of") {
            assert_eq!(
                verdict.get(&of).map(String::as_str),
                Some("benign"),
                "{arm}: {c:?} carries the verdict of {of:?}, which was not judged benign"
            );
            assert!(
                stream_lines.contains(c.as_str()),
                "{arm}: {c:?} is not a stream line"
            );
            assert!(
                !longtail::data::has_placeholder(&c),
                "{arm}: {c:?} came in past skip_placeholders"
            );
            if c == of {
                own += 1;
            } else {
                assert!(!verdict.contains_key(&c), "{arm}: {c:?} was labeled itself");
                inherited += 1;
            }
        }
        let summary = results
            .runs
            .iter()
            .find(|r| r.arm.as_str() == arm)
            .and_then(|r| r.labels.as_ref())
            .unwrap();
        assert_eq!(summary.benign, own, "{arm}");
        assert_eq!(summary.propagated, inherited, "{arm}");
        assert_eq!(summary.augmented, own + inherited, "{arm}");
        propagated_somewhere += inherited;
    }
    assert!(
        propagated_somewhere > 0,
        "the sample's families are large enough for some verdict to propagate"
    );
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("| of them by family |"), "{md}");
    let upper = results.runs.iter().find(|r| r.arm == OracleAll).unwrap();
    assert_eq!(
        upper.labels.as_ref().unwrap().propagated,
        0,
        "the upper bound labels all"
    );
}

#[test]
fn skip_placeholders_keeps_unexpanded_variables_out_of_every_selection() {
    use experiment::Arm::*;
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, out, stream) = run_tiny_arms(
        tmp.path(),
        &[Baseline, Iforest, Random, Representative, OracleAll],
        |cfg| cfg.select.skip_placeholders = true,
    );
    let plain = stream
        .cmd
        .iter()
        .filter(|c| !longtail::data::has_placeholder(c))
        .count();
    assert!(
        plain < stream.cmd.len(),
        "the sample's stream has variables: the check below means something"
    );
    for arm in ["iforest", "random", "representative", "oracle_all"] {
        let picked = sent_to_labeler(&out, arm);
        assert!(!picked.is_empty(), "{arm}");
        assert!(
            picked.iter().all(|c| !longtail::data::has_placeholder(c)),
            "{arm} selected a line with a variable"
        );
        if arm == "oracle_all" {
            assert_eq!(
                picked.len(),
                plain,
                "the upper bound labels every plain line"
            );
        } else {
            assert_eq!(
                picked.len(),
                cfg.select.budget,
                "{arm} still spends its budget"
            );
        }
    }
}
