//! One reader for every table of command lines a stage takes in: Parquet (by column) or any
//! format [`super::read`] reads (JSONL, CSV, text; compressed too), with a required `cmd` and
//! the optional columns `label`, `count`, `source`, `platform` and `role`.
//!
//! Blank commands are skipped in every format. A column that is absent reads as `None` on
//! every row; a column of the wrong type is an input error that names the file.

use super::read::{ReadOptions, for_each_record_ref};
use super::table;
use crate::error::Result;
use crate::vocab::{Label, Role};
use arrow::array::RecordBatch;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One row of a table of command lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabeledRow {
    pub cmd: String,
    /// The raw `label` text, if any ([`LabeledRow::label`] parses it).
    pub label_text: Option<String>,
    /// Occurrences of the line (`count`), if the table says.
    pub count: Option<u64>,
    /// The `source` field (`owner/repo:path` in the shared corpora).
    pub source: Option<String>,
    pub platform: Option<String>,
    /// The experiment's `role` column.
    pub role: Option<Role>,
}

impl LabeledRow {
    /// `benign` / `malicious`; `None` for any other text or none.
    pub fn label(&self) -> Option<Label> {
        Label::parse_opt(self.label_text.as_deref())
    }
}

/// Whether `path` is read column by column as Parquet (by its extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Every row of `paths`, in order (`-` is standard input). The optional columns of formats
/// other than Parquet come from JSONL fields; `extras` asks for them (a full JSON parse per
/// line), otherwise only `cmd`, `label` and `platform` are read there.
pub fn read_labeled(paths: &[PathBuf], extras: bool) -> Result<Vec<LabeledRow>> {
    let mut rows = Vec::new();
    for path in paths {
        if is_parquet(path) {
            for batch in table::read_parquet(path)? {
                parquet_rows(&batch, path, &mut rows)?;
            }
            continue;
        }
        let opts = ReadOptions {
            keep_extra: extras,
            ..Default::default()
        };
        for_each_record_ref(&[path.display().to_string()], &opts, |r| {
            let field = |name: &str| r.extra.and_then(|e| e.get(name));
            let text = |name: &str| field(name).and_then(Value::as_str).map(str::to_owned);
            rows.push(LabeledRow {
                cmd: r.cmd.to_owned(),
                label_text: r.label.map(str::to_owned),
                count: field("count").and_then(Value::as_u64),
                source: text("source"),
                platform: r.platform.map(str::to_owned),
                role: text("role").and_then(|t| t.parse().ok()),
            });
            Ok(())
        })?;
    }
    Ok(rows)
}

fn parquet_rows(batch: &RecordBatch, path: &Path, rows: &mut Vec<LabeledRow>) -> Result<()> {
    let optional = |name: &str| -> Result<Vec<Option<String>>> {
        if table::has_column(batch, name) {
            table::strings(batch, name, path)
        } else {
            Ok(vec![None; batch.num_rows()])
        }
    };
    let cmds = table::strings(batch, "cmd", path)?;
    let labels = optional("label")?;
    let sources = optional("source")?;
    let platforms = optional("platform")?;
    let roles = optional("role")?;
    let counts: Vec<Option<u64>> = if table::has_column(batch, "count") {
        table::numbers(batch, "count", path)?
            .into_iter()
            .map(|c| (c.is_finite() && c >= 0.0).then_some(c as u64))
            .collect()
    } else {
        vec![None; batch.num_rows()]
    };
    let mut columns = labels
        .into_iter()
        .zip(sources)
        .zip(platforms)
        .zip(roles)
        .zip(counts);
    for cmd in cmds {
        let ((((label_text, source), platform), role), count) = columns
            .next()
            .expect("columns of one batch have one length");
        let Some(cmd) = cmd.filter(|c| !c.trim().is_empty()) else {
            continue;
        };
        rows.push(LabeledRow {
            cmd,
            label_text,
            count,
            source,
            platform,
            role: role.and_then(|r| r.parse().ok()),
        });
    }
    Ok(())
}

/// Unique lines of `paths` in first-seen order with their occurrence counts (a row's `count`
/// column when at least 1, else 1; `extras` as for [`read_labeled`]), and the rows read.
pub fn unique_lines_with_counts(
    paths: &[PathBuf],
    extras: bool,
) -> Result<(Vec<String>, Vec<u64>, u64)> {
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    let (mut lines, mut counts, mut rows) = (Vec::new(), Vec::new(), 0u64);
    for row in read_labeled(paths, extras)? {
        let c = row.count.filter(|&c| c >= 1).unwrap_or(1);
        rows += 1;
        match index.get(&row.cmd) {
            Some(&i) => counts[i] += c,
            None => {
                index.insert(row.cmd.clone(), lines.len());
                lines.push(row.cmd);
                counts.push(c);
            }
        }
    }
    Ok((lines, counts, rows))
}
