//! Building the experiment's datasets from labeled corpora (JSONL with `cmd`, `label`,
//! `source`, optional `technique`), with roles set in the config:
//!
//! - `common`: frequent, simple benign lines: the baseline's benign class, the easy test, and
//!   the head of the unlabeled stream (heavy-tailed counts);
//! - `tail`: rare, complex benign lines: the stream's long tail and the hard test's benign side;
//! - `attack`: malicious lines; some groups (techniques) are "seen" (baseline training and the
//!   easy test), the others "unseen" (the hard test, and a small share of the stream);
//! - `attack_unseen`: malicious sources the baseline never sees (hard test and stream only);
//! - `background`: lines without a known label (telemetry captured during attack
//!   simulations): stream only. Rows labeled `unknown` in any source are background too.
//!
//! Splits are by group so that nothing near-identical crosses train and test: lines are first
//! joined into near-duplicate clusters (MinHash, exact duplicates included), and clusters are
//! joined into coarse groups by a per-source key (the script a line came from, its ATT&CK
//! technique). "Easy" splits (baseline train vs easy test) go by cluster, "hard" splits (seen vs
//! unseen technique, stream vs hard test for rare benign scripts) by coarse group. A test line
//! whose cluster still holds a training or stream line (possible only across roles) is dropped.
//!
//! With `time_split = "YYYY-MM-DD"`, dated tail lines (the `date` a line first appeared in its
//! repository) of the groups that stay in the stream are cut by time, the source work's
//! setting: lines first seen before the date form the stream's tail, later ones the *time-split
//! test* (`test_time.parquet`, against the hard test's unseen attacks). The hard test stays
//! beside it as the harder "new environment" case. Lines that share a `shape` (the corpora's
//! normalised form) within a source are one near-duplicate cluster, so a version bump never
//! crosses the cut.

use crate::data::UnionFind;
use crate::data::minhash::{MinHashConfig, near_duplicate_clusters};
use crate::error::{Context, Error, Result};
use crate::io::read::{DEFAULT_COLUMNS, ReadOptions, for_each_record_ref};
use crate::io::table;
use crate::vocab::Label;
pub use crate::vocab::Role;
use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The key that keeps related lines of a source on one side of a "hard" split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Near-duplicate clusters only.
    #[default]
    Cluster,
    /// The record's `source` field (e.g. the script or documentation page it came from).
    Source,
    /// The record's `technique` field (ATT&CK id); rows without one fall back to `source`.
    Technique,
}

/// One input file and its role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// File name inside `data.dir` (JSONL, Parquet, CSV; compressed is fine).
    pub file: String,
    pub role: Role,
    #[serde(default)]
    pub group_by: GroupBy,
    /// Keep at most this many unique lines of the file (a seeded sample); for small configs.
    #[serde(default)]
    pub max_lines: Option<usize>,
}

/// How the datasets are drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder holding the source files; relative paths are taken from the current directory.
    pub dir: PathBuf,
    /// Sources in priority order: a command found in several files takes the role of the first.
    pub sources: Vec<SourceSpec>,
    /// Seed of every split and sample (fixed across the experiment's seeds, so that all arms
    /// and seeds are measured on the same test sets).
    pub seed: u64,
    /// Estimated Jaccard similarity above which two lines are one near-duplicate cluster.
    pub near_dup_threshold: f64,
    /// Share of common clusters, and of seen-attack clusters, held out as the easy test.
    pub easy_test_fraction: f64,
    /// Share of `attack` groups (techniques) that the baseline never sees.
    pub unseen_attack_fraction: f64,
    /// Share of unseen malicious clusters that go to the hard test (the rest may enter the stream).
    pub hard_attack_fraction: f64,
    /// Share of tail groups (scripts) held out as the hard test's benign side; the rest is the
    /// stream's long tail.
    pub hard_tail_fraction: f64,
    /// Share of the hard held-out groups (tail scripts, unseen techniques) that form the *dev*
    /// hard split instead of the hard test: a split of the same kind, disjoint by group, on
    /// which models, thresholds and configs are chosen so that the hard test is reported once.
    /// 0 = no dev split.
    #[serde(default)]
    pub hard_dev_fraction: f64,
    /// Unique common lines in the stream's head, drawn from the baseline's benign lines.
    pub stream_common_lines: usize,
    /// Count of the most frequent stream line; the k-th most frequent gets max / k^zipf.
    pub stream_max_count: u64,
    pub stream_zipf_exponent: f64,
    /// At most this share of the stream's unique lines is malicious.
    pub stream_malicious_share: f64,
    /// A day `YYYY-MM-DD`: dated tail lines of stream groups first seen on or after it leave
    /// the stream for the time-split test. None = no time split.
    #[serde(default)]
    pub time_split: Option<String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("data/sample"),
            sources: Vec::new(),
            seed: 7,
            near_dup_threshold: 0.8,
            easy_test_fraction: 0.15,
            unseen_attack_fraction: 0.3,
            hard_attack_fraction: 0.7,
            hard_tail_fraction: 0.5,
            hard_dev_fraction: 0.0,
            stream_common_lines: 2000,
            stream_max_count: 10_000,
            stream_zipf_exponent: 1.0,
            stream_malicious_share: 0.03,
            time_split: None,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::input(format!("[data] {m}")));
        if self.sources.is_empty() {
            return bad("no sources: add [[data.sources]] entries with `file` and `role`".into());
        }
        for (name, v) in [
            ("near_dup_threshold", self.near_dup_threshold),
            ("easy_test_fraction", self.easy_test_fraction),
            ("unseen_attack_fraction", self.unseen_attack_fraction),
            ("hard_attack_fraction", self.hard_attack_fraction),
            ("hard_tail_fraction", self.hard_tail_fraction),
            ("hard_dev_fraction", self.hard_dev_fraction),
            ("stream_malicious_share", self.stream_malicious_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if self.stream_max_count == 0
            || self.stream_zipf_exponent.is_nan()
            || self.stream_zipf_exponent < 0.0
        {
            return bad("stream_max_count must be >= 1 and stream_zipf_exponent >= 0".into());
        }
        if let Some(day) = &self.time_split
            && !is_day(day)
        {
            return bad(format!(
                "time_split must be a day written YYYY-MM-DD (e.g. \"2024-07-01\"), got {day:?}"
            ));
        }
        Ok(())
    }

    fn source_path(&self, spec: &SourceSpec) -> PathBuf {
        self.dir.join(&spec.file)
    }

    /// A digest of the source files' bytes: a stage key that changes when the data does.
    pub fn fingerprint(&self) -> Result<String> {
        let mut digest = Vec::new();
        for spec in &self.sources {
            let path = self.source_path(spec);
            let bytes = std::fs::read(&path).input_ctx(|| {
                format!(
                    "cannot read {} (data.dir is taken from the current directory; run from the \
                     repository root or give an absolute path)",
                    path.display()
                )
            })?;
            digest.push(format!(
                "{}:{:016x}",
                spec.file,
                xxh3_64_with_seed(&bytes, 0)
            ));
        }
        Ok(digest.join(","))
    }
}

/// `YYYY-MM-DD` with plausible month and day: compared as text, so the form must be exact.
fn is_day(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) {
        return false;
    }
    if !digits(8..10) {
        return false;
    }
    let month: u32 = s[5..7].parse().unwrap_or(0);
    let day: u32 = s[8..10].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// Where a line ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    BaselineTrain,
    EasyTest,
    HardTest,
    /// The dev twin of the hard test (other groups): for choices, never for reporting.
    HardDev,
    /// A tail line of a stream group first seen on or after `time_split`: the time-split
    /// test's benign side.
    TimeTest,
    Stream,
    /// Left out: over a cap, or a test line near-identical to a training line.
    Unused,
}

/// One unique line of the experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub cmd: String,
    /// `None`: unknown (background telemetry).
    pub label: Option<Label>,
    /// The file stem it came from (e.g. `runner_images`).
    pub source: String,
    /// The record's own `source` field (e.g. `actions/runner-images:images/...ps1`).
    pub origin: String,
    pub role: Role,
    pub split: Split,
    /// Occurrences in the unlabeled stream (0 outside it).
    pub count: u64,
    /// The day the line first appeared in its repository (`date`), when the source says.
    pub date: Option<String>,
    /// The record's `platform` (`windows`, `linux`, ...), when the source says: kept in the
    /// labeled tables so that training can weigh it (`[training] balance_platforms`).
    pub platform: Option<String>,
}

/// Counts of what was built, by split, role and label; `data/summary.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DataSummary {
    pub records_read: u64,
    pub unique_lines: usize,
    pub label_conflicts: usize,
    pub near_dup_clusters: usize,
    pub coarse_groups: usize,
    /// Test lines dropped because their near-duplicate cluster also has a training/stream line.
    pub test_lines_dropped_for_leakage: usize,
    /// `split -> "role/label" -> unique lines`.
    pub lines: BTreeMap<String, BTreeMap<String, usize>>,
    /// Sum of stream counts.
    pub stream_occurrences: u64,
}

/// The built datasets: every unique line with its split.
pub struct Datasets {
    pub lines: Vec<Line>,
    pub summary: DataSummary,
}

/// File names inside the data stage's directory.
pub const BASELINE: &str = "baseline.parquet";
pub const STREAM: &str = "stream.parquet";
pub const TRUTH: &str = "stream_truth.parquet";
pub const HARD_TEST: &str = "test_hard.parquet";
/// Written only when the config asks for a dev split (`hard_dev_fraction > 0`).
pub const HARD_DEV: &str = "dev_hard.parquet";
/// Written only with a time split: later tail lines vs the hard test's malicious lines.
pub const TIME_TEST: &str = "test_time.parquet";
pub const EASY_TEST: &str = "test_easy.parquet";

struct Raw {
    cmd: String,
    label: Option<Label>,
    source: String,
    origin: String,
    technique: Option<String>,
    date: Option<String>,
    shape: Option<String>,
    platform: Option<String>,
    role: Role,
    group_by: GroupBy,
}

fn unit(seed: u64, key: &str) -> f64 {
    (xxh3_64_with_seed(key.as_bytes(), seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// Read the sources and assign every unique line to a split: read -> group -> split ->
/// draw the stream -> drop test lines that leak -> count.
pub fn build(cfg: &DataConfig) -> Result<Datasets> {
    cfg.validate()?;
    let mut summary = DataSummary::default();
    // One generator, drawn from in this order (source samples, then the stream): the splits
    // are a function of the config alone.
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let raws = read_sources(cfg, &mut rng, &mut summary)?;
    let groups = Groups::of(cfg, &raws)?;
    summary.near_dup_clusters = distinct(&groups.fine_root);
    summary.coarse_groups = distinct(&groups.coarse_root);
    let mut lines = assign_splits(cfg, raws, &groups);
    draw_stream(cfg, &mut lines, &mut rng);
    summary.test_lines_dropped_for_leakage = drop_leaking_tests(&mut lines, &groups.fine_root);
    tally(&lines, &mut summary);
    check_usable(cfg, &lines)?;
    Ok(Datasets { lines, summary })
}

/// Every table the experiment trains or measures on must be usable, or it fails here, before
/// any training, with what to change.
fn check_usable(cfg: &DataConfig, lines: &[Line]) -> Result<()> {
    let has = |split: Split, label: Label| {
        lines
            .iter()
            .any(|l| l.split == split && l.label == Some(label))
    };
    let fix = "check [[data.sources]] roles and the [data] fractions";
    if !lines.iter().any(|l| l.count > 0) {
        return Err(Error::input(format!(
            "the unlabeled stream is empty after the split: {fix} (tail and background sources \
             feed it)"
        )));
    }
    for (split, name) in [
        (Split::BaselineTrain, "the baseline training set"),
        (Split::HardTest, "the hard test"),
        (Split::EasyTest, "the easy test"),
    ] {
        for label in [Label::Benign, Label::Malicious] {
            if !has(split, label) {
                return Err(Error::input(format!(
                    "{name} has no {label} line after the split: {fix}"
                )));
            }
        }
    }
    if let Some(cut) = &cfg.time_split
        && !has(Split::TimeTest, Label::Benign)
    {
        return Err(Error::input(format!(
            "time_split = {cut:?} leaves no tail line first seen on or after it (only sources \
             with a `date` field are cut, and lines near-identical to earlier stream lines are \
             dropped): choose an earlier day or add dated tail sources"
        )));
    }
    Ok(())
}

fn distinct(roots: &[usize]) -> usize {
    roots.iter().collect::<HashSet<_>>().len()
}

/// Every source's unique lines, in priority order: a command found in several sources takes
/// the first one's role; one labeled both ways by different sources is left out.
fn read_sources(cfg: &DataConfig, rng: &mut StdRng, summary: &mut DataSummary) -> Result<Vec<Raw>> {
    let mut raws: Vec<Raw> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut conflicted: Vec<bool> = Vec::new();
    for spec in &cfg.sources {
        let mut rows = read_source(cfg, spec, summary)?;
        if let Some(max) = spec.max_lines
            && rows.len() > max
        {
            rows.shuffle(rng);
            rows.truncate(max);
        }
        for row in rows {
            match index.get(&row.cmd) {
                // An earlier (higher-priority) source has it; a different known label is a
                // conflict and the line is left out.
                Some(&i) => {
                    if let (Some(a), Some(b)) = (raws[i].label, row.label)
                        && a != b
                    {
                        conflicted[i] = true;
                    }
                    // First seen anywhere: the earliest date of any source that has the line.
                    if let Some(d) = row.date
                        && raws[i].date.as_ref().is_none_or(|have| d < *have)
                    {
                        raws[i].date = Some(d);
                    }
                }
                None => {
                    index.insert(row.cmd.clone(), raws.len());
                    raws.push(row);
                    conflicted.push(false);
                }
            }
        }
    }
    summary.label_conflicts = conflicted.iter().filter(|&&c| c).count();
    let mut c = conflicted.iter();
    raws.retain(|_| !*c.next().expect("same length"));
    if raws.is_empty() {
        return Err(Error::input("the data sources hold no command lines"));
    }
    summary.unique_lines = raws.len();
    Ok(raws)
}

/// The unique lines of one source, in file order.
fn read_source(cfg: &DataConfig, spec: &SourceSpec, summary: &mut DataSummary) -> Result<Vec<Raw>> {
    let path = cfg.source_path(spec);
    if !path.exists() {
        return Err(Error::input(format!(
            "data source {} does not exist (data.dir = {:?}, taken from the current \
             directory; run from the repository root or fix [data] dir / [[data.sources]] file)",
            path.display(),
            cfg.dir
        )));
    }
    let stem = spec
        .file
        .split('.')
        .next()
        .unwrap_or(&spec.file)
        .to_string();
    let opts = ReadOptions {
        keep_extra: true,
        progress: false,
        ..Default::default()
    };
    let mut rows: Vec<Raw> = Vec::new();
    let mut seen_here: HashSet<String> = Default::default();
    let records_before = summary.records_read;
    for_each_record_ref(&[path.display().to_string()], &opts, |r| {
        summary.records_read += 1;
        if r.cmd.trim().is_empty() || !seen_here.insert(r.cmd.to_string()) {
            return Ok(());
        }
        let field = |name: &str| {
            r.extra
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let label = Label::parse_opt(r.label);
        rows.push(Raw {
            cmd: r.cmd.to_string(),
            origin: field("source").unwrap_or_else(|| stem.clone()),
            technique: field("technique"),
            date: field("date"),
            shape: field("shape"),
            platform: r.platform.map(str::to_owned),
            label,
            source: stem.clone(),
            // A line without a known label is background, whatever its source's role.
            role: if label.is_some() {
                spec.role
            } else {
                Role::Background
            },
            group_by: spec.group_by,
        });
        Ok(())
    })?;
    // The reader skips rows without a command field; a source where every row is skipped is
    // a wrong file or field name, and would surface later as a split with no lines.
    if rows.is_empty() {
        let records = summary.records_read - records_before;
        return Err(Error::input(format!(
            "data source {} holds no command line ({records} records with a command field): \
             each row needs a non-empty command in one of the fields {DEFAULT_COLUMNS:?}; fix \
             the file or remove it from [[data.sources]]",
            path.display()
        )));
    }
    Ok(rows)
}

/// Near-duplicate clusters (fine groups) and coarse groups by each source's key, with each
/// group's position in [0, 1) (from its root line's text: stable under reordering).
struct Groups {
    fine_root: Vec<usize>,
    coarse_root: Vec<usize>,
    u_fine: Vec<f64>,
    u_coarse: Vec<f64>,
    /// A second, independent position of each coarse group: dev or test among held-out groups.
    u_dev: Vec<f64>,
}

impl Groups {
    fn of(cfg: &DataConfig, raws: &[Raw]) -> Result<Groups> {
        let texts: Vec<&str> = raws.iter().map(|r| r.cmd.as_str()).collect();
        let cluster_ids = near_duplicate_clusters(
            &texts,
            &MinHashConfig {
                threshold: cfg.near_dup_threshold,
                seed: cfg.seed,
                ..Default::default()
            },
        )?;
        let n = raws.len();
        let mut fine = UnionFind::new(n);
        let mut coarse = UnionFind::new(n);
        let mut first_of_cluster: HashMap<u32, usize> = HashMap::new();
        for (i, &c) in cluster_ids.iter().enumerate() {
            let f = *first_of_cluster.entry(c).or_insert(i);
            fine.union(f as u32, i as u32);
            coarse.union(f as u32, i as u32);
        }
        // Lines of one normalised shape (versions, hashes, numbers masked) are near-duplicates
        // whatever MinHash says: a version bump must not cross a split.
        let mut first_of_shape: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, r) in raws.iter().enumerate() {
            if let Some(shape) = &r.shape {
                let f = *first_of_shape
                    .entry((r.source.as_str(), shape.as_str()))
                    .or_insert(i);
                fine.union(f as u32, i as u32);
                coarse.union(f as u32, i as u32);
            }
        }
        let mut first_of_key: HashMap<String, usize> = HashMap::new();
        for (i, r) in raws.iter().enumerate() {
            let key = match r.group_by {
                GroupBy::Cluster => continue,
                GroupBy::Source => format!("{}|{}", r.source, r.origin),
                GroupBy::Technique => match &r.technique {
                    Some(t) => format!("technique|{t}"),
                    None => format!("{}|{}", r.source, r.origin),
                },
            };
            let f = *first_of_key.entry(key).or_insert(i);
            coarse.union(f as u32, i as u32);
        }
        let fine_root: Vec<usize> = (0..n).map(|i| fine.find(i as u32) as usize).collect();
        let coarse_root: Vec<usize> = (0..n).map(|i| coarse.find(i as u32) as usize).collect();
        let u_fine = fine_root
            .iter()
            .map(|&r| unit(cfg.seed, &raws[r].cmd))
            .collect();
        let u_coarse = coarse_root
            .iter()
            .map(|&r| unit(cfg.seed ^ 0x9e37_79b9, &raws[r].cmd))
            .collect();
        let u_dev = coarse_root
            .iter()
            .map(|&r| unit(cfg.seed ^ 0xde5_1ec7, &raws[r].cmd))
            .collect();
        Ok(Groups {
            fine_root,
            coarse_root,
            u_fine,
            u_coarse,
            u_dev,
        })
    }
}

/// Each line's split from its role and its groups' positions.
fn assign_splits(cfg: &DataConfig, raws: Vec<Raw>, g: &Groups) -> Vec<Line> {
    raws.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let easy = g.u_fine[i] >= 1.0 - cfg.easy_test_fraction;
            // Held-out groups split again, by coarse group: dev or test, never both.
            let held_out = if g.u_dev[i] < cfg.hard_dev_fraction {
                Split::HardDev
            } else {
                Split::HardTest
            };
            let split = match r.role {
                Role::Common if easy => Split::EasyTest,
                Role::Common => Split::BaselineTrain,
                Role::Tail if g.u_coarse[i] < cfg.hard_tail_fraction => held_out,
                Role::Tail if first_seen_after_cut(cfg, r.date.as_deref()) => Split::TimeTest,
                Role::Tail => Split::Stream,
                Role::Attack if g.u_coarse[i] >= cfg.unseen_attack_fraction => {
                    if easy {
                        Split::EasyTest
                    } else {
                        Split::BaselineTrain
                    }
                }
                Role::Attack | Role::AttackUnseen => {
                    if g.u_fine[i] < cfg.hard_attack_fraction {
                        held_out
                    } else {
                        Split::Stream
                    }
                }
                Role::Background => Split::Stream,
            };
            Line {
                cmd: r.cmd,
                label: r.label,
                source: r.source,
                origin: r.origin,
                role: r.role,
                split,
                count: 0,
                date: r.date,
                platform: r.platform,
            }
        })
        .collect()
}

/// Whether a line dated `date` falls on the test side of the config's time split (undated
/// lines never do).
fn first_seen_after_cut(cfg: &DataConfig, date: Option<&str>) -> bool {
    match (&cfg.time_split, date) {
        // Both are YYYY-MM-DD (the config is validated; dates longer than a day compare by
        // their day prefix), so text order is time order.
        (Some(cut), Some(d)) => d.get(..10).unwrap_or(d) >= cut.as_str(),
        _ => false,
    }
}

/// The stream: a heavy-tailed head of common lines drawn from the baseline's benign lines (a
/// frequency-based labeling is how those got their label), the tail, the background and a
/// capped share of unseen malicious lines. Sets `count` (0 = not in the stream).
fn draw_stream(cfg: &DataConfig, lines: &mut [Line], rng: &mut StdRng) {
    let n = lines.len();
    let mut head: Vec<usize> = (0..n)
        .filter(|&i| lines[i].role == Role::Common && lines[i].split == Split::BaselineTrain)
        .collect();
    head.shuffle(rng);
    head.truncate(cfg.stream_common_lines);
    let mut stream_counts: HashMap<usize, u64> = HashMap::new();
    for (rank, &i) in head.iter().enumerate() {
        let c = (cfg.stream_max_count as f64 / ((rank + 1) as f64).powf(cfg.stream_zipf_exponent))
            .ceil()
            .max(1.0) as u64;
        stream_counts.insert(i, c);
    }
    let others: Vec<usize> = (0..n)
        .filter(|&i| lines[i].split == Split::Stream)
        .collect();
    let mut malicious: Vec<usize> = others
        .iter()
        .copied()
        .filter(|&i| lines[i].label == Some(Label::Malicious))
        .collect();
    let non_malicious = head.len() + others.len() - malicious.len();
    let share = cfg.stream_malicious_share;
    let cap = if share >= 1.0 {
        usize::MAX
    } else {
        ((share * non_malicious as f64) / (1.0 - share)).floor() as usize
    };
    malicious.shuffle(rng);
    for &i in malicious.iter().skip(cap) {
        lines[i].split = Split::Unused;
    }
    for &i in &others {
        if lines[i].split == Split::Stream {
            // Rare lines: seen once or twice.
            let c = 1 + (xxh3_64_with_seed(lines[i].cmd.as_bytes(), cfg.seed) % 2);
            stream_counts.insert(i, c);
        }
    }
    for (&i, &c) in &stream_counts {
        lines[i].count = c;
    }
}

/// No test line may share a near-duplicate cluster with a line a model learns from; returns
/// how many were dropped.
fn drop_leaking_tests(lines: &mut [Line], fine_root: &[usize]) -> usize {
    let trains_on: HashSet<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.split == Split::BaselineTrain || l.count > 0)
        .map(|(i, _)| fine_root[i])
        .collect();
    let mut dropped = 0;
    for (i, l) in lines.iter_mut().enumerate() {
        if matches!(
            l.split,
            Split::EasyTest | Split::HardTest | Split::HardDev | Split::TimeTest
        ) && trains_on.contains(&fine_root[i])
        {
            l.split = Split::Unused;
            dropped += 1;
        }
    }
    dropped
}

/// Unique lines by split and `role/label`, and the stream's occurrences.
fn tally(lines: &[Line], summary: &mut DataSummary) {
    for l in lines {
        let mut put = |split: &str| {
            *summary
                .lines
                .entry(split.to_string())
                .or_default()
                .entry(format!(
                    "{}/{}",
                    l.role.as_str(),
                    Label::name_or_unknown(l.label)
                ))
                .or_default() += 1;
        };
        if l.count > 0 {
            put("stream");
            summary.stream_occurrences += l.count;
        }
        match l.split {
            Split::BaselineTrain => put("baseline_train"),
            Split::EasyTest => put("easy_test"),
            Split::HardTest => put("hard_test"),
            Split::HardDev => put("hard_dev"),
            Split::TimeTest => put("time_test"),
            Split::Unused => put("unused"),
            Split::Stream => {}
        }
    }
}

fn write_table(path: &Path, rows: &[&Line], with_label: bool) -> Result<u64> {
    fn cmd(l: &Line) -> &str {
        &l.cmd
    }
    fn label(l: &Line) -> &str {
        Label::name_or_unknown(l.label)
    }
    fn source(l: &Line) -> &str {
        &l.source
    }
    fn origin(l: &Line) -> &str {
        &l.origin
    }
    fn role(l: &Line) -> &str {
        l.role.as_str()
    }
    type Column = fn(&Line) -> &str;
    let mut wanted: Vec<(&str, Column)> = vec![("cmd", cmd)];
    if with_label {
        wanted.extend([
            ("label", label as Column),
            ("source", source),
            ("origin", origin),
            ("role", role),
        ]);
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, f) in wanted {
        fields.push(Field::new(name, DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from_iter_values(
            rows.iter().map(|l| f(l)),
        )));
    }
    if with_label {
        // Nullable: most sources have a platform, some (telemetry) may not.
        fields.push(Field::new("platform", DataType::Utf8, true));
        columns.push(Arc::new(StringArray::from(
            rows.iter()
                .map(|l| l.platform.as_deref())
                .collect::<Vec<_>>(),
        )));
    }
    fields.push(Field::new("count", DataType::UInt64, false));
    columns.push(Arc::new(UInt64Array::from_iter_values(
        rows.iter().map(|l| l.count.max(1)),
    )));
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .runtime_ctx(|| format!("building {}", path.display()))?;
    table::write_parquet(path, &batch)
}

impl Datasets {
    /// Write the tables into `dir`: the baseline and the tests (`cmd`, `label`, `source`,
    /// `origin`, `role`, `count`; the dev and time-split tests only when configured), the
    /// stream as `ingest` would give it (`cmd`, `count`: no labels), and the stream's truth
    /// for the oracle and the analysis.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let pick =
            |s: Split| -> Vec<&Line> { self.lines.iter().filter(|l| l.split == s).collect() };
        let stream: Vec<&Line> = self.lines.iter().filter(|l| l.count > 0).collect();
        write_table(&dir.join(BASELINE), &pick(Split::BaselineTrain), true)?;
        write_table(&dir.join(HARD_TEST), &pick(Split::HardTest), true)?;
        let dev = pick(Split::HardDev);
        if !dev.is_empty() {
            write_table(&dir.join(HARD_DEV), &dev, true)?;
        }
        write_table(&dir.join(EASY_TEST), &pick(Split::EasyTest), true)?;
        if self.lines.iter().any(|l| l.split == Split::TimeTest) {
            // Later benign lines of known environments against the same unseen attacks as
            // the hard test: only the benign side differs between the two tests.
            let mut time = pick(Split::TimeTest);
            time.extend(
                self.lines
                    .iter()
                    .filter(|l| l.split == Split::HardTest && l.label == Some(Label::Malicious)),
            );
            write_table(&dir.join(TIME_TEST), &time, true)?;
        }
        write_table(&dir.join(STREAM), &stream, false)?;
        write_table(&dir.join(TRUTH), &stream, true)?;
        table::write_atomic(
            &dir.join("summary.json"),
            serde_json::to_string_pretty(&self.summary)
                .expect("plain data")
                .as_bytes(),
        )
    }
}

/// A labeled table written by [`Datasets::write`], read back.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub cmd: Vec<String>,
    /// `None`: unknown.
    pub label: Vec<Option<Label>>,
    pub source: Vec<String>,
    pub role: Vec<Role>,
    pub count: Vec<u64>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table> {
        let mut t = Table::default();
        for row in crate::io::read_labeled(&[path.to_path_buf()], true)? {
            let role = row.role.ok_or_else(|| {
                Error::input(format!(
                    "{} has a row without a known `role`; it was not written by this \
                     version's data stage: delete its folder and rerun",
                    path.display()
                ))
            })?;
            t.label.push(row.label());
            t.cmd.push(row.cmd);
            t.source.push(row.source.unwrap_or_default());
            t.role.push(role);
            t.count.push(row.count.unwrap_or(1));
        }
        Ok(t)
    }

    /// [`Table::read`], or an empty table when the data stage did not write `path` (the
    /// optional dev and time-split tests).
    pub fn read_if_written(path: &Path) -> Result<Table> {
        if path.exists() {
            Table::read(path)
        } else {
            Ok(Table::default())
        }
    }

    pub fn malicious(&self) -> Vec<bool> {
        self.label
            .iter()
            .map(|l| *l == Some(Label::Malicious))
            .collect()
    }
}
