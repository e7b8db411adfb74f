//! Reading lines to classify and writing their scores (`classify`'s input and output).

use crate::error::{Context, Result};
use crate::io::read::{ReadOptions, for_each_record_ref};
use crate::vocab::Label;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Every command line of `inputs` (Parquet/JSONL/CSV with a `cmd` column, or text; `-` reads
/// standard input), in order.
pub fn read_lines(inputs: &[String]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for_each_record_ref(inputs, &ReadOptions::default(), |r| {
        lines.push(r.cmd.to_owned());
        Ok(())
    })?;
    Ok(lines)
}

/// JSONL rows `{"cmd", "score", "label"}`, one a line.
pub fn write_scores_jsonl(
    out: &mut impl Write,
    lines: &[String],
    scores: &[f64],
    labels: &[Label],
) -> Result<()> {
    for ((cmd, score), label) in lines.iter().zip(scores).zip(labels) {
        let row = serde_json::json!({"cmd": cmd, "score": score, "label": label.as_str()});
        let mut line = serde_json::to_vec(&row).expect("plain data serialises");
        line.push(b'\n');
        // A plain I/O error (not wrapped by serde_json), so a closed pipe stays recognisable.
        out.write_all(&line).runtime_ctx(|| "writing scores")?;
    }
    Ok(())
}

pub fn write_scores_parquet(
    path: &Path,
    lines: &[String],
    scores: &[f64],
    labels: &[Label],
) -> Result<u64> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("cmd", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(lines)),
        Arc::new(Float64Array::from(scores.to_vec())),
        Arc::new(StringArray::from_iter_values(
            labels.iter().map(|l| l.as_str()),
        )),
    ];
    let batch = RecordBatch::try_new(schema, columns).runtime_ctx(|| "building the score table")?;
    crate::io::table::write_parquet(path, &batch)
}
