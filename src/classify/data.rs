//! Reading labeled and augmentation sets: any format `ingest` reads (Parquet, JSONL, CSV,
//! text; compressed too), with `label` in {benign, malicious}; other labels are skipped and
//! counted. Exact duplicates are merged; a line labeled both ways is dropped.

use crate::error::{Error, Result};
use crate::io::read_labeled;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// A training example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub cmd: String,
    pub malicious: bool,
    /// From an augmentation file (weighted by `augment_weight`).
    pub augment: bool,
    /// The row's `source` (the first one seen for a repeated line): the group that
    /// `val_split = "source"` holds out whole.
    pub source: Option<String>,
    /// The row's `platform` (the first one seen), which `balance_platforms` weighs by.
    pub platform: Option<String>,
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
    // `extras`: JSONL rows bring their `source` too (the validation split may group by it).
    for row in read_labeled(train, true)? {
        let Some(label) = row.label() else {
            let key = row.label_text.unwrap_or_else(|| "(none)".into());
            *summary.skipped_labels.entry(key).or_default() += 1;
            continue;
        };
        let malicious = label.is_malicious();
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
                    source: row.source,
                    platform: row.platform,
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
    for row in read_labeled(augment, true)? {
        match index.get(&row.cmd) {
            Some(&i) if examples[i].augment => summary.duplicates += 1,
            Some(_) => summary.augment_already_labeled += 1,
            None => {
                index.insert(row.cmd.clone(), examples.len());
                examples.push(Example {
                    cmd: row.cmd,
                    malicious: false,
                    augment: true,
                    source: row.source,
                    platform: row.platform,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_rows_bring_their_source_and_a_repeated_line_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train.jsonl");
        std::fs::write(
            &train,
            concat!(
                r#"{"cmd": "git status", "label": "benign", "source": "tldr:git.md"}"#,
                "\n",
                r#"{"cmd": "vssadmin delete shadows", "label": "malicious", "source": "art:T1490.yaml"}"#,
                "\n",
                r#"{"cmd": "git status", "label": "benign", "source": "tldr:git-status.md"}"#,
                "\n",
            ),
        )
        .unwrap();
        let augment = dir.path().join("added.jsonl");
        std::fs::write(&augment, "{\"cmd\": \"make install\"}\n").unwrap();
        let (examples, summary) = load_training_set(&[train], &[augment]).unwrap();
        let sources: Vec<Option<&str>> = examples.iter().map(|e| e.source.as_deref()).collect();
        assert_eq!(
            sources,
            [Some("tldr:git.md"), Some("art:T1490.yaml"), None],
            "{examples:?}"
        );
        assert_eq!(summary.duplicates, 1);
    }
}
