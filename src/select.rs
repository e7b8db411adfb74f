//! Stage: pick labeling candidates. The top-scoring lines, after exact and near-exact dedup:
//! one representative (the highest-scoring line) per near-duplicate cluster, so the labeling
//! budget is not spent on forty variants of one installer command.

use crate::data::minhash::{MinHashConfig, near_duplicate_clusters};
use crate::error::{Context, Error, Result};
use crate::io::table;
use arrow::array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, take_record_batch};
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// How many candidates to keep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// This many.
    TopK(usize),
    /// This fraction of the unique input lines, in [0, 1] (at least one).
    Fraction(f64),
}

/// What [`select_file`] does.
#[derive(Clone, Debug)]
pub struct SelectRequest {
    /// Scored lines (needs `cmd` and the score column; other columns are kept).
    pub input: PathBuf,
    /// Output Parquet: the input's columns plus `rank` and `cluster_size`.
    pub out: PathBuf,
    pub budget: Budget,
    /// Lines whose estimated Jaccard similarity exceeds this are one cluster.
    pub near_dup_threshold: f64,
    /// Column to rank by.
    pub score_column: String,
}

/// What [`select_file`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectOutcome {
    pub candidates: u64,
    pub unique_lines: usize,
    pub rows: usize,
}

/// Indices of the chosen rows, best first, with the size of each one's near-duplicate
/// cluster among the rows examined. `cmds` must be unique.
pub fn select_top(
    cmds: &[String],
    scores: &[f64],
    k: usize,
    threshold: f64,
    seed: u64,
) -> Result<Vec<(usize, u32)>> {
    let mut order: Vec<usize> = (0..cmds.len()).filter(|&i| scores[i].is_finite()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    // Cluster a pool a few times larger than k; grow it until k representatives are found.
    let mut pool = (4 * k).max(64).min(order.len());
    loop {
        let texts: Vec<&str> = order[..pool].iter().map(|&i| cmds[i].as_str()).collect();
        let cfg = MinHashConfig {
            threshold,
            seed,
            ..Default::default()
        };
        let clusters = near_duplicate_clusters(&texts, &cfg)?;
        let mut size: HashMap<u32, u32> = HashMap::new();
        for &c in &clusters {
            *size.entry(c).or_default() += 1;
        }
        let mut seen = std::collections::HashSet::new();
        let chosen: Vec<(usize, u32)> = (0..pool)
            .filter(|&j| seen.insert(clusters[j]))
            .take(k)
            .map(|j| (order[j], size[&clusters[j]]))
            .collect();
        if chosen.len() >= k || pool == order.len() {
            return Ok(chosen);
        }
        pool = (pool * 2).min(order.len());
    }
}

/// The top-scoring lines of `req.input`, one per near-duplicate cluster, written to `req.out`.
pub fn select_file(req: &SelectRequest, seed: u64) -> Result<SelectOutcome> {
    let batches = table::read_parquet(&req.input)?;
    let Some(first) = batches.first() else {
        return Err(Error::input(format!("{} has no rows", req.input.display())));
    };
    let all = concat_batches(&first.schema(), &batches).runtime_ctx(|| "joining input batches")?;
    let cmds: Vec<String> = table::strings(&all, "cmd", &req.input)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let scores = table::numbers(&all, &req.score_column, &req.input)?;
    // Exact dedup: the best-scoring copy of each text stands for it.
    let mut best: HashMap<&str, usize> = HashMap::new();
    for (i, c) in cmds.iter().enumerate() {
        let e = best.entry(c.as_str()).or_insert(i);
        if scores[i] > scores[*e] {
            *e = i;
        }
    }
    let mut keep: Vec<usize> = best.into_values().collect();
    keep.sort_unstable();
    let k = match req.budget {
        Budget::TopK(k) => k,
        Budget::Fraction(f) if (0.0..=1.0).contains(&f) => {
            ((f * keep.len() as f64).ceil() as usize).max(1)
        }
        Budget::Fraction(f) => {
            return Err(Error::input(format!(
                "--top-fraction {f} must be within [0, 1]"
            )));
        }
    };
    let unique_cmds: Vec<String> = keep.iter().map(|&i| cmds[i].clone()).collect();
    let unique_scores: Vec<f64> = keep.iter().map(|&i| scores[i]).collect();
    let chosen = select_top(
        &unique_cmds,
        &unique_scores,
        k,
        req.near_dup_threshold,
        seed,
    )?;
    let rows = UInt64Array::from_iter_values(chosen.iter().map(|&(j, _)| keep[j] as u64));
    let picked = take_record_batch(&all, &rows).runtime_ctx(|| "selecting rows")?;
    let mut fields: Vec<Field> = picked
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("rank", DataType::UInt32, false));
    fields.push(Field::new("cluster_size", DataType::UInt32, false));
    let mut columns: Vec<ArrayRef> = picked.columns().to_vec();
    columns.push(Arc::new(UInt32Array::from_iter_values(
        1..=chosen.len() as u32,
    )));
    columns.push(Arc::new(UInt32Array::from_iter_values(
        chosen.iter().map(|&(_, s)| s),
    )));
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .runtime_ctx(|| "building candidates")?;
    let candidates = table::write_parquet(&req.out, &out)?;
    Ok(SelectOutcome {
        candidates,
        unique_lines: keep.len(),
        rows: cmds.len(),
    })
}
