//! Reading labeled and augmentation sets: any format `ingest` reads (Parquet, JSONL, CSV,
//! text; compressed too), with `label` in {benign, malicious}; other labels are skipped and
//! counted. Exact duplicates are merged; a line labeled both ways is dropped.

use crate::error::{Context, Error, Result};
use crate::ingest::read::{ReadOptions, for_each_record_ref};
use crate::table;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One line of a labeled file, with the columns the evaluation breaks results down by.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub cmd: String,
    /// The raw label text, if any.
    pub label: Option<String>,
    pub platform: Option<String>,
    /// The `source` field (`owner/repo:path` in the shared corpora).
    pub source: Option<String>,
}

/// `benign` -> Some(false), `malicious` -> Some(true), anything else -> None.
pub fn parse_label(label: Option<&str>) -> Option<bool> {
    match label.map(|l| l.trim().to_ascii_lowercase()) {
        Some(l) if l == "benign" => Some(false),
        Some(l) if l == "malicious" => Some(true),
        _ => None,
    }
}

/// Read every row of `paths` (`-` is stdin). Parquet is read by column so that `source` is
/// available; other formats go through the ingest readers (JSONL keeps `source`).
pub fn read_rows(paths: &[PathBuf], want_source: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for path in paths {
        if path.extension().is_some_and(|e| e == "parquet") {
            read_parquet_rows(path, &mut rows)?;
            continue;
        }
        let opts = ReadOptions {
            keep_extra: want_source,
            ..Default::default()
        };
        for_each_record_ref(&[path.display().to_string()], &opts, |r| {
            let source = r
                .extra
                .and_then(|e| e.get("source"))
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            rows.push(Row {
                cmd: r.cmd.to_owned(),
                label: r.label.map(str::to_owned),
                platform: r.platform.map(str::to_owned),
                source,
            });
            Ok(())
        })?;
    }
    Ok(rows)
}

fn read_parquet_rows(path: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let optional = |batch: &arrow::array::RecordBatch, name: &str| -> Result<Vec<Option<String>>> {
        if table::has_column(batch, name) {
            table::strings(batch, name, path)
        } else {
            Ok(vec![None; batch.num_rows()])
        }
    };
    for batch in table::read_parquet(path)? {
        let cmds = table::strings(&batch, "cmd", path)?;
        let labels = optional(&batch, "label")?;
        let platforms = optional(&batch, "platform")?;
        let sources = optional(&batch, "source")?;
        for (((cmd, label), platform), source) in
            cmds.into_iter().zip(labels).zip(platforms).zip(sources)
        {
            if let Some(cmd) = cmd.filter(|c| !c.trim().is_empty()) {
                rows.push(Row {
                    cmd,
                    label,
                    platform,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub cmd: String,
    pub malicious: bool,
    /// From an augmentation file (weighted by `augment_weight`).
    pub augment: bool,
}

/// What loading the training data did; recorded in `config.json` and the model card.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub train_files: Vec<String>,
    pub augment_files: Vec<String>,
    pub benign: usize,
    pub malicious: usize,
    /// Augmentation rows used as benign lines.
    pub augment: usize,
    /// Labeled rows whose label was neither benign nor malicious, by label (`(none)` if missing).
    pub skipped_labels: BTreeMap<String, u64>,
    /// Repeated rows merged into one example.
    pub duplicates: u64,
    /// Lines labeled both benign and malicious, dropped.
    pub conflicts: u64,
    /// Augmentation rows already present in the labeled set (the label there wins).
    pub augment_already_labeled: u64,
}

/// Read the labeled files and the benign augmentation files into unique examples.
pub fn load_training_set(
    train: &[PathBuf],
    augment: &[PathBuf],
) -> Result<(Vec<Example>, DataSummary)> {
    let mut summary = DataSummary {
        train_files: train.iter().map(|p| p.display().to_string()).collect(),
        augment_files: augment.iter().map(|p| p.display().to_string()).collect(),
        ..Default::default()
    };
    let mut examples: Vec<Example> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut conflicted = vec![];
    for row in read_rows(train, false)? {
        let Some(malicious) = parse_label(row.label.as_deref()) else {
            let key = row.label.unwrap_or_else(|| "(none)".into());
            *summary.skipped_labels.entry(key).or_default() += 1;
            continue;
        };
        match index.get(&row.cmd) {
            Some(&i) => {
                if examples[i].malicious == malicious {
                    summary.duplicates += 1;
                } else {
                    conflicted.push(i);
                }
            }
            None => {
                index.insert(row.cmd.clone(), examples.len());
                examples.push(Example {
                    cmd: row.cmd,
                    malicious,
                    augment: false,
                });
            }
        }
    }
    conflicted.sort_unstable();
    conflicted.dedup();
    summary.conflicts = conflicted.len() as u64;
    if !conflicted.is_empty() {
        tracing::warn!(
            "{} lines are labeled both benign and malicious; they are left out",
            conflicted.len()
        );
    }
    for row in read_rows(augment, false)? {
        match index.get(&row.cmd) {
            Some(&i) if examples[i].augment => summary.duplicates += 1,
            Some(_) => summary.augment_already_labeled += 1,
            None => {
                index.insert(row.cmd.clone(), examples.len());
                examples.push(Example {
                    cmd: row.cmd,
                    malicious: false,
                    augment: true,
                });
            }
        }
    }
    let mut keep = vec![true; examples.len()];
    for i in conflicted {
        keep[i] = false;
    }
    let mut k = keep.iter();
    examples.retain(|_| *k.next().expect("same length"));
    summary.malicious = examples.iter().filter(|e| e.malicious).count();
    summary.augment = examples.iter().filter(|e| e.augment).count();
    summary.benign = examples.len() - summary.malicious - summary.augment;
    if summary.malicious == 0 || summary.benign + summary.augment == 0 {
        let skipped: u64 = summary.skipped_labels.values().sum();
        return Err(Error::input(format!(
            "the training set needs both classes; it has {} benign and {} malicious lines \
             ({skipped} rows skipped for a label other than benign/malicious: {:?}). Pass files \
             whose `label` column says benign or malicious",
            summary.benign + summary.augment,
            summary.malicious,
            summary.skipped_labels
        )));
    }
    Ok((examples, summary))
}

/// The group of a `source` value: `owner/repo` of `owner/repo:path`, the whole value otherwise.
pub fn source_group(source: &str) -> String {
    source.split(':').next().unwrap_or(source).to_string()
}

/// Parse a `NAME=DIR` pair.
pub fn named_path(s: &str) -> Result<(String, PathBuf)> {
    let (name, dir) = s.split_once('=').ok_or_else(|| {
        Error::input(format!(
            "--model {s:?}: expected NAME=DIR, e.g. --model baseline=runs/x/baseline"
        ))
    })?;
    if name.is_empty() || dir.is_empty() {
        return Err(Error::input(format!(
            "--model {s:?}: both NAME and DIR must be non-empty (NAME=DIR)"
        )));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

/// Read a JSON file into `T` with an error that names the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .input_ctx(|| format!("cannot read {} ({what})", path.display()))?;
    serde_json::from_str(&text).input_ctx(|| format!("invalid {} ({what})", path.display()))
}
