//! Shared input and output, used by every stage: streaming readers for telemetry in any
//! format ([`read`]), Parquet tables written atomically ([`table`]), one reader for tables of
//! labeled lines ([`labeled`]), and JSON files with errors that name the file.

pub mod labeled;
pub mod read;
pub mod table;

pub use labeled::{LabeledRow, read_labeled, unique_lines_with_counts};
pub use table::write_atomic;

use crate::error::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;

/// Read a JSON file into `T` with an error that names the file and what it should hold.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .input_ctx(|| format!("cannot read {} ({what})", path.display()))?;
    serde_json::from_str(&text).input_ctx(|| format!("invalid {} ({what})", path.display()))
}

/// Write `value` as pretty JSON, atomically (a crash leaves the old file or none).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain data serialises");
    write_atomic(path, text.as_bytes())
}
