//! Parquet in and out, shared by every stage.
//!
//! Writing is atomic: rows go to a temporary file beside the target, which is renamed into
//! place only by [`ParquetSink::finish`]. A crash or an error leaves the old file (or none),
//! never a half-written one.

use crate::error::{Context, Error, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::fs::File;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// Create the parent directory of `path` if it is missing.
pub fn ensure_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .runtime_ctx(|| format!("cannot create directory {}", dir.display()))?;
    }
    Ok(())
}

/// A temporary file in the target's directory, so the final rename stays on one filesystem.
pub fn temp_beside(path: &Path) -> Result<NamedTempFile> {
    ensure_parent(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::Builder::new()
        .prefix(".longtail-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .runtime_ctx(|| format!("cannot create a temporary file in {}", dir.display()))
}

/// Atomically replace `path` with a file made of `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes)
        .runtime_ctx(|| format!("writing {}", path.display()))?;
    persist(tmp, path)
}

fn persist(tmp: NamedTempFile, path: &Path) -> Result<()> {
    // Temporary files are created 0600; outputs are ordinary files others may read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .runtime_ctx(|| format!("setting permissions of {}", path.display()))?;
    }
    tmp.as_file()
        .sync_all()
        .runtime_ctx(|| format!("syncing {}", path.display()))?;
    tmp.persist(path).map_err(|e| {
        Error::runtime(format!(
            "cannot move output into {}: {}",
            path.display(),
            e.error
        ))
    })?;
    Ok(())
}

/// Streaming Parquet writer (zstd-compressed) that only appears at its path on `finish`.
pub struct ParquetSink {
    writer: ArrowWriter<NamedTempFile>,
    path: PathBuf,
    rows: u64,
}

impl ParquetSink {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self> {
        let tmp = temp_beside(path)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).expect("valid level"),
            ))
            .build();
        let writer = ArrowWriter::try_new(tmp, schema, Some(props))
            .runtime_ctx(|| format!("cannot start Parquet file {}", path.display()))?;
        Ok(Self {
            writer,
            path: path.to_path_buf(),
            rows: 0,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .runtime_ctx(|| format!("writing Parquet {}", self.path.display()))
    }

    /// Number of rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Close the file and move it into place; returns the number of rows written.
    pub fn finish(self) -> Result<u64> {
        let path = self.path;
        let tmp = self
            .writer
            .into_inner()
            .runtime_ctx(|| format!("finishing Parquet {}", path.display()))?;
        persist(tmp, &path)?;
        Ok(self.rows)
    }
}

/// Write one batch as a whole Parquet file, atomically.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let mut sink = ParquetSink::create(path, batch.schema())?;
    sink.write(batch)?;
    sink.finish()
}

/// Open a Parquet file for reading in batches; a truncated or corrupt file is an input error.
pub fn open_parquet(
    path: &Path,
    batch_size: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = File::open(path).input_ctx(|| format!("cannot open {}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .input_ctx(|| {
            format!(
                "{} is not a readable Parquet file (truncated or corrupt?)",
                path.display()
            )
        })?
        .with_batch_size(batch_size)
        .build()
        .input_ctx(|| format!("cannot read {}", path.display()))
}

/// Read every batch of a Parquet file into memory (for the small tables stages hand over).
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    open_parquet(path, 8192)?
        .map(|b| b.input_ctx(|| format!("corrupt data in {}", path.display())))
        .collect()
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Error::input(format!(
            "{} has no column `{name}` (columns: {}); pass the right file or column name",
            path.display(),
            have.join(", ")
        ))
    })
}

/// A string column (Utf8, LargeUtf8 or Utf8View) as owned optional strings.
pub fn strings(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<Option<String>>> {
    let col = column(batch, name, path)?;
    let out = match col.data_type() {
        DataType::Utf8 => col
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_owned))
            .collect(),
        DataType::LargeUtf8 => col
            .as_string::<i64>()
            .iter()
            .map(|s| s.map(str::to_owned))
            .collect(),
        DataType::Utf8View => col
            .as_string_view()
            .iter()
            .map(|s| s.map(str::to_owned))
            .collect(),
        other => {
            return Err(Error::input(format!(
                "column `{name}` of {} is {other}, expected a string column",
                path.display()
            )));
        }
    };
    Ok(out)
}

/// A numeric column (any integer, float or decimal type) cast to f64 (nulls become NaN).
pub fn numbers(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<f64>> {
    let col = column(batch, name, path)?;
    if !col.data_type().is_numeric() {
        return Err(Error::input(format!(
            "column `{name}` of {} is {}, expected a number column",
            path.display(),
            col.data_type()
        )));
    }
    let cast = arrow::compute::cast(col, &DataType::Float64)
        .input_ctx(|| format!("column `{name}` of {}", path.display()))?;
    Ok(cast
        .as_primitive::<arrow::datatypes::Float64Type>()
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// Whether a batch has a column of this name.
pub fn has_column(batch: &RecordBatch, name: &str) -> bool {
    batch
        .column_by_name(name)
        .is_some_and(|c| c.len() == batch.num_rows())
}
