//! Helpers shared by the integration tests: the binary, the bundled sample, Parquet fixtures,
//! the SIGKILL-and-resume harness and the Python loader check.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `longtail` binary with a clean environment: no LLM endpoint, key or log filter
/// leaks in from the developer's shell.
pub fn longtail() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_longtail"));
    for var in [
        "OPENAI_API_KEY",
        "LONGTAIL_LLM_URL",
        "LONGTAIL_LLM_MODEL",
        "LONGTAIL_DEVICE",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c
}

/// Run `longtail --device flex -q ARGS` and insist that it succeeds.
pub fn longtail_ok(args: &[&str]) -> std::process::Output {
    let out = longtail()
        .args(["--device", "flex", "-q"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "longtail {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A file of the bundled sample (`data/sample/NAME`).
pub fn sample(name: &str) -> PathBuf {
    repo().join("data/sample").join(name)
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The CPU backend with a fixed seed.
pub fn globals() -> longtail::Globals {
    longtail::Globals::flex(7)
}

/// A training run's `checkpoint/state.json`, once it exists and parses.
pub fn read_state(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("checkpoint/state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The SIGKILL harness: `train(out, resume)` builds a training command. Trains `work/straight`
/// to the end, then starts `work/killed` and kills it after its first epoch. Returns both
/// folders; the caller resumes `killed` and compares.
pub fn straight_and_killed(
    work: &Path,
    train: impl Fn(&Path, bool) -> Command,
) -> (PathBuf, PathBuf) {
    let straight = work.join("straight");
    assert!(train(&straight, false).status().unwrap().success());
    let killed = work.join("killed");
    kill_after_first_epoch(train(&killed, false), &killed);
    (straight, killed)
}

/// Start a training command writing into `out` and SIGKILL it as soon as its checkpoint says
/// one epoch is done; fails if it ends first or has no checkpoint after five minutes.
pub fn kill_after_first_epoch(mut train: Command, out: &Path) {
    let mut child: Child = train.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while read_state(out).is_none_or(|s| s["epochs_done"] != 1) {
        assert!(Instant::now() < deadline, "no checkpoint after 300 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "training ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(read_state(out).unwrap()["epochs_done"], 1);
}

/// Write a Parquet file of `cmd` (and, if given, `label`) columns.
pub fn write_cmds(path: &Path, cmds: &[&str], labels: Option<&[&str]>) {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    let mut cols: Vec<(&str, ArrayRef)> =
        vec![("cmd", Arc::new(StringArray::from_iter_values(cmds)))];
    if let Some(l) = labels {
        cols.push(("label", Arc::new(StringArray::from_iter_values(l.iter()))));
    }
    longtail::io::table::write_parquet(path, &RecordBatch::try_from_iter(cols).unwrap()).unwrap();
}

/// A string column of a Parquet file.
pub fn column(path: &Path, name: &str) -> Vec<Option<String>> {
    longtail::io::table::read_parquet(path)
        .unwrap()
        .iter()
        .flat_map(|b| longtail::io::table::strings(b, name, path).unwrap())
        .collect()
}

/// The downstream contract: `scripts/load_classifier.py` (numpy + safetensors only)
/// reproduces the scores `longtail classify` wrote to `scores` (JSONL), all `lines` of them.
/// Without python3, numpy and safetensors it says SKIPPED, unless LONGTAIL_REQUIRE_PYTHON=1
/// (CI sets it where it installed them), which turns the skip into a failure.
pub fn python_loader_agrees(model: &Path, scores: &Path, lines: usize) {
    let python_ok = Command::new("python3")
        .args(["-c", "import numpy, safetensors.numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_ok {
        assert!(
            std::env::var("LONGTAIL_REQUIRE_PYTHON").is_err(),
            "the Python loader check needs python3 with numpy and safetensors"
        );
        eprintln!(
            "SKIPPED: the Python loader check needs python3 with numpy and safetensors \
             (pip install numpy safetensors)"
        );
        return;
    }
    let out = Command::new("python3")
        .arg(repo().join("scripts/load_classifier.py"))
        .arg(model)
        .arg("--check")
        .arg(scores)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains(&format!("OK: {lines} lines")),
        "{text}"
    );
}

/// A line's score does not depend on what else is in its batch (padding is masked): each
/// line scored alone matches its score in one mixed batch.
pub fn assert_batch_independent(clf: &longtail::classify::Classifier, lines: &[&str]) {
    let together = clf.score(lines, 32_768, |_| {});
    for (i, line) in lines.iter().enumerate() {
        let alone = clf.score(&[line], 32_768, |_| {})[0];
        assert!(
            (alone - together[i]).abs() < 1e-5,
            "{line:?}: {alone} alone vs {} in a batch",
            together[i]
        );
        assert!((0.0..=1.0).contains(&alone));
    }
}

/// Whether the wgpu CPU adapter (Mesa lavapipe) is there; says SKIPPED when not, and fails
/// instead under LONGTAIL_REQUIRE_WGPU (CI sets it after installing mesa-vulkan-drivers).
pub fn wgpu_cpu_available() -> bool {
    let has_cpu_adapter = longtail::device::wgpu_adapters()
        .iter()
        .any(longtail::device::Adapter::is_cpu);
    if !has_cpu_adapter {
        assert!(
            std::env::var("LONGTAIL_REQUIRE_WGPU").is_err(),
            "no wgpu CPU adapter: install mesa-vulkan-drivers (scripts/setup.sh)"
        );
        eprintln!("SKIPPED: no wgpu CPU adapter (apt-get install mesa-vulkan-drivers)");
    }
    has_cpu_adapter
}
