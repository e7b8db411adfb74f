//! Streaming readers for command-line telemetry: Parquet, JSONL, CSV/TSV and plain text, each
//! optionally gzip- or zstd-compressed (recognised by magic bytes, not by the file name).
//!
//! The entry points are [`for_each_record`] (owned [`Record`]s) and [`for_each_record_ref`]
//! (borrowed [`RecordRef`]s, no allocation per line: what `ingest` uses). Both stream: at most
//! one line (text, JSONL, CSV) or one batch (Parquet) is held at a time, and every line is
//! capped at [`ReadOptions::max_line_bytes`] while it is read, so memory does not grow with the
//! input.
//!
//! Text encoding, the same for every format: valid UTF-8 passes unchanged; each byte that is not
//! part of valid UTF-8, and each NUL, becomes the four characters `\xNN` (lower-case hex). The
//! escape is visible and loss-free for the invalid bytes themselves, but not reversible where
//! the input already held a literal `\xNN`. A UTF-8 byte-order mark at the start of a file is
//! dropped; a UTF-16 file is refused with a hint to convert it.
//!
//! Problems with one row (blank, null or missing command, too long, malformed JSON, short CSV
//! row) are counted skips, or errors with file and line under [`ReadOptions::strict`]. Problems
//! with a whole file (missing, unreadable, corrupt or truncated Parquet or compressed stream,
//! the command column absent) are input errors (exit code 2).

use crate::error::{Context, Error, Result};
use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::warn;

/// Column names tried, in order, when `--column` is not given.
pub const DEFAULT_COLUMNS: [&str; 4] =
    ["cmd", "command_line", "CommandLine", "process.command_line"];
/// Default cap on one command (and on one physical line of text input), in bytes.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
/// Extra room allowed on a JSONL line beyond `max_line_bytes`, for the fields besides `cmd`.
const JSONL_LINE_SLACK: usize = 64 * 1024;
/// Rows per Parquet batch.
const PARQUET_BATCH: usize = 8192;
/// How many skipped rows are reported one by one (file and line) before they are only counted.
const MAX_SKIP_WARNINGS: u64 = 10;
/// Name used for standard input.
pub const STDIN_NAME: &str = "<stdin>";

/// The input format; `Auto` decides from the extension, then from the content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Extension (.parquet, .jsonl/.ndjson/.json, .csv, .tsv, .txt/.log), else content sniffing.
    #[default]
    Auto,
    /// Apache Parquet (also gzip/zstd-compressed or piped: spooled to a temporary file).
    Parquet,
    /// One JSON object per line (the schema of the shared cmdlines corpora).
    Jsonl,
    /// Comma-separated with a header row (RFC 4180 quoting; multi-line fields allowed).
    Csv,
    /// Tab-separated with a header row.
    Tsv,
    /// One command per line (`\n` or `\r\n`).
    Text,
}

crate::vocab::named_enum!(InputFormat {
    Auto => "auto",
    Parquet => "parquet",
    Jsonl => "jsonl",
    Csv => "csv",
    Tsv => "tsv",
    Text => "text",
});

/// How to read inputs. `Default` gives the CLI's defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadOptions {
    pub format: InputFormat,
    /// Command column / JSON key (dotted names also look into nested JSON objects).
    /// `None`: the first present of [`DEFAULT_COLUMNS`].
    pub column: Option<String>,
    /// Label column / key; `None`: `label` where present.
    pub label_column: Option<String>,
    /// Platform column / key; `None`: `platform` where present.
    pub platform_column: Option<String>,
    /// Commands longer than this many bytes are skipped (0 = no limit, not advised: a
    /// newline-free multi-gigabyte file would then be held whole).
    pub max_line_bytes: usize,
    /// Turn every row-level skip into an error naming file and line.
    pub strict: bool,
    /// Keep the other JSONL fields in [`Record::extra`] (costs a full JSON parse per line).
    pub keep_extra: bool,
    /// CSV field delimiter; `None`: tab for `.tsv`/`--format tsv`, else comma.
    pub csv_delimiter: Option<u8>,
    /// Show a spinner with lines/s.
    pub progress: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            format: InputFormat::Auto,
            column: None,
            label_column: None,
            platform_column: None,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            strict: false,
            keep_extra: false,
            csv_delimiter: None,
            progress: true,
        }
    }
}

/// One command line with what is known about it, borrowed from the reader's buffers.
#[derive(Debug)]
pub struct RecordRef<'a> {
    pub cmd: &'a str,
    pub label: Option<&'a str>,
    pub platform: Option<&'a str>,
    /// The input file it came from (as given or matched by a glob; `<stdin>` for `-`).
    pub source: &'a Arc<str>,
    /// 1-based line (text, JSONL, CSV: the physical line where the record starts) or row
    /// (Parquet) in `source`.
    pub line: u64,
    /// The other JSONL fields, when [`ReadOptions::keep_extra`] is set; `None` otherwise.
    pub extra: Option<&'a Map<String, Value>>,
}

/// One command line with what is known about it, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub cmd: String,
    pub label: Option<String>,
    pub platform: Option<String>,
    /// The input file it came from.
    pub source: Arc<str>,
    /// 1-based line or row in `source`.
    pub line: u64,
    /// JSONL fields other than the command, label and platform (empty for other formats or
    /// without [`ReadOptions::keep_extra`]).
    pub extra: Map<String, Value>,
}

impl RecordRef<'_> {
    pub fn to_owned(&self) -> Record {
        Record {
            cmd: self.cmd.to_owned(),
            label: self.label.map(str::to_owned),
            platform: self.platform.map(str::to_owned),
            source: Arc::clone(self.source),
            line: self.line,
            extra: self.extra.cloned().unwrap_or_default(),
        }
    }
}

/// Why a row was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Empty or whitespace-only command.
    Blank,
    /// The command field is missing, null, or not text.
    NoCommand,
    /// Longer than `max_line_bytes`.
    TooLong,
    /// A JSONL line that is not a JSON object.
    MalformedJson,
    /// A CSV row with fewer fields than the command column needs.
    ShortCsvRow,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Blank,
        SkipReason::NoCommand,
        SkipReason::TooLong,
        SkipReason::MalformedJson,
        SkipReason::ShortCsvRow,
    ];
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::Blank => "blank command",
            SkipReason::NoCommand => "command missing, null or not text",
            SkipReason::TooLong => "longer than --max-line-bytes",
            SkipReason::MalformedJson => "malformed JSON line",
            SkipReason::ShortCsvRow => "CSV row without the command column",
        }
    }
}

/// What reading saw: files, rows delivered, rows skipped and why, escapes applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReadStats {
    /// Files (or stdin) opened.
    pub files: u64,
    /// Files with no content (after decompression); skipped with a warning.
    pub empty_files: u64,
    /// Rows (lines, JSON objects, CSV records, Parquet rows) looked at, skipped ones included.
    pub rows_seen: u64,
    /// Records handed to the callback.
    pub records: u64,
    /// Skipped rows by reason (only non-zero entries).
    pub skipped: std::collections::BTreeMap<SkipReason, u64>,
    /// Records in which invalid UTF-8 bytes were escaped as `\xNN`.
    pub escaped_invalid_utf8: u64,
    /// Records in which NUL characters were escaped as `\x00`.
    pub escaped_nul: u64,
    /// Bytes read after decompression (text, JSONL, CSV; Parquet counts its file size).
    pub bytes: u64,
}

impl ReadStats {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// Expand inputs: `-` is standard input, a directory means every non-hidden file below it
/// (sorted), a pattern with `*?[` is a glob (sorted matches). A path given twice is read once.
/// Nothing matched, or a missing file, is an input error.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(Error::input(
            "no input given; pass files, directories or globs (e.g. 'data/*.jsonl.gz'), or - for stdin",
        ));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for input in inputs {
        let path = PathBuf::from(input);
        if input == "-" {
            out.push(path);
        } else if path.is_dir() {
            let before = out.len();
            walk_dir(&path, &mut out)?;
            out[before..].sort();
            if out.len() == before {
                return Err(Error::input(format!(
                    "directory {input} holds no files to read"
                )));
            }
        } else if path.exists() {
            out.push(path);
        } else if input.contains(['*', '?', '[']) {
            let paths = glob::glob(input).input_ctx(|| format!("bad glob pattern {input:?}"))?;
            let mut matched: Vec<PathBuf> = paths
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if matched.is_empty() {
                return Err(Error::input(format!(
                    "the pattern {input:?} matched no files"
                )));
            }
            matched.sort();
            out.extend(matched);
        } else {
            return Err(Error::input(format!(
                "input {input} does not exist; check the path"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).input_ctx(|| format!("cannot list directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.input_ctx(|| format!("cannot list directory {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Read every input in order and call `f` with each record, owned. See [`for_each_record_ref`].
pub fn for_each_record(
    inputs: &[String],
    opts: &ReadOptions,
    mut f: impl FnMut(Record) -> Result<()>,
) -> Result<ReadStats> {
    for_each_record_ref(inputs, opts, |r| f(r.to_owned()))
}

/// Read every input in order and call `f` with each record, borrowed (no allocation per
/// record). An error from `f` stops reading and is returned.
pub fn for_each_record_ref(
    inputs: &[String],
    opts: &ReadOptions,
    mut f: impl FnMut(&RecordRef<'_>) -> Result<()>,
) -> Result<ReadStats> {
    let paths = expand_inputs(inputs)?;
    let mut reader = Reader {
        opts,
        stats: ReadStats::default(),
        warnings: 0,
        spinner: opts
            .progress
            .then(|| crate::progress::spinner("reading", "lines")),
        since_tick: 0,
    };
    let result = paths.iter().try_for_each(|p| reader.read_path(p, &mut f));
    if let Some(pb) = &reader.spinner {
        pb.finish_and_clear();
    }
    result?;
    if reader.warnings > MAX_SKIP_WARNINGS {
        warn!(
            "{} more rows were skipped without a message; the summary counts them by reason",
            reader.warnings - MAX_SKIP_WARNINGS
        );
    }
    Ok(reader.stats)
}

/// The resolved format of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Parquet,
    Jsonl,
    Csv(u8),
    Text,
}

struct Reader<'o> {
    opts: &'o ReadOptions,
    stats: ReadStats,
    warnings: u64,
    spinner: Option<indicatif::ProgressBar>,
    since_tick: u64,
}

type Callback<'f> = dyn FnMut(&RecordRef<'_>) -> Result<()> + 'f;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

/// Peek at the first `n` bytes (fewer only at end of stream) without consuming them.
fn peek(reader: &mut BufReader<Box<dyn Read>>, n: usize) -> std::io::Result<Vec<u8>> {
    let buf = reader.fill_buf()?;
    if buf.len() >= n || buf.is_empty() {
        return Ok(buf[..buf.len().min(n)].to_vec());
    }
    // One read gave fewer than n bytes (a pipe, a tiny first block): read the rest of the
    // head and put it back in front of the stream.
    let mut head = buf.to_vec();
    let mut inner = std::mem::replace(reader, BufReader::new(Box::new(std::io::empty())));
    inner.consume(head.len());
    (&mut inner)
        .take((n - head.len()) as u64)
        .read_to_end(&mut head)?;
    let chained: Box<dyn Read> = Box::new(std::io::Cursor::new(head.clone()).chain(inner));
    *reader = BufReader::with_capacity(256 * 1024, chained);
    Ok(head)
}

fn is_compressed(head: &[u8]) -> bool {
    head.starts_with(&GZIP_MAGIC) || head.starts_with(&ZSTD_MAGIC)
}

/// Strip .gz/.zst, then map the extension to a format.
fn format_from_name(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let name = ["gz", "gzip", "zst", "zstd"]
        .iter()
        .find_map(|c| name.strip_suffix(&format!(".{c}")))
        .unwrap_or(&name);
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "parquet" | "pq" => Format::Parquet,
        "jsonl" | "ndjson" | "json" => Format::Jsonl,
        "csv" => Format::Csv(b','),
        "tsv" => Format::Csv(b'\t'),
        "txt" | "text" | "log" | "lst" => Format::Text,
        _ => return None,
    })
}

impl Reader<'_> {
    fn tick(&mut self) {
        self.since_tick += 1;
        if self.since_tick >= 4096 {
            if let Some(pb) = &self.spinner {
                pb.inc(self.since_tick);
            }
            self.since_tick = 0;
        }
    }

    /// Count a skipped row, or fail under --strict.
    fn skip(&mut self, reason: SkipReason, source: &str, line: u64, detail: &str) -> Result<()> {
        if self.opts.strict {
            return Err(Error::input(format!(
                "{source}:{line}: {}{detail} (--strict is set; drop it to skip and count such rows)",
                reason.describe()
            )));
        }
        *self.stats.skipped.entry(reason).or_default() += 1;
        self.warnings += 1;
        if self.warnings <= MAX_SKIP_WARNINGS {
            warn!("{source}:{line}: skipped: {}{detail}", reason.describe());
        }
        Ok(())
    }

    fn read_path(&mut self, path: &Path, f: &mut Callback<'_>) -> Result<()> {
        let is_stdin = path.as_os_str() == "-";
        let source: Arc<str> = if is_stdin {
            STDIN_NAME.into()
        } else {
            path.to_string_lossy().into()
        };
        let raw: Box<dyn Read> = if is_stdin {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(File::open(path).input_ctx(|| format!("cannot open {source}"))?)
        };
        self.stats.files += 1;
        let mut raw = BufReader::with_capacity(256 * 1024, raw);
        let head = peek(&mut raw, 4).input_ctx(|| format!("cannot read {source}"))?;
        let compressed = is_compressed(&head);

        // An uncompressed Parquet file on disk is read in place (it needs random access).
        if !compressed && !is_stdin && head.as_slice() == PARQUET_MAGIC {
            drop(raw);
            let file = File::open(path).input_ctx(|| format!("cannot open {source}"))?;
            return self.read_parquet(file, &source, f);
        }
        let mut data: BufReader<Box<dyn Read>> = if head.starts_with(&GZIP_MAGIC) {
            BufReader::with_capacity(256 * 1024, Box::new(flate2::read::MultiGzDecoder::new(raw)))
        } else if head.starts_with(&ZSTD_MAGIC) {
            let dec = zstd::stream::read::Decoder::with_buffer(raw)
                .input_ctx(|| format!("cannot start zstd decompression of {source}"))?;
            BufReader::with_capacity(256 * 1024, Box::new(dec))
        } else {
            raw
        };
        let head = peek(&mut data, 4)
            .input_ctx(|| format!("{source}: cannot decompress (truncated or corrupt?)"))?;
        if head.is_empty() {
            self.stats.empty_files += 1;
            warn!("{source} is empty; skipped");
            return Ok(());
        }
        if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
            return Err(Error::input(format!(
                "{source} is UTF-16 text; convert it to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8"
            )));
        }
        if head.starts_with(&[0xef, 0xbb, 0xbf]) {
            data.consume(3);
        }
        let format = if head.as_slice() == PARQUET_MAGIC {
            Format::Parquet
        } else {
            match self.opts.format {
                InputFormat::Parquet => Format::Parquet,
                InputFormat::Jsonl => Format::Jsonl,
                InputFormat::Csv => Format::Csv(self.opts.csv_delimiter.unwrap_or(b',')),
                InputFormat::Tsv => Format::Csv(self.opts.csv_delimiter.unwrap_or(b'\t')),
                InputFormat::Text => Format::Text,
                InputFormat::Auto => match format_from_name(path) {
                    Some(Format::Csv(d)) => Format::Csv(self.opts.csv_delimiter.unwrap_or(d)),
                    Some(fmt) => fmt,
                    None => sniff(&mut data),
                },
            }
        };
        match format {
            Format::Parquet => {
                // Compressed or piped Parquet: spool to a temporary file for random access.
                let mut tmp =
                    tempfile::tempfile().runtime_ctx(|| "cannot create a temporary file")?;
                std::io::copy(&mut data, &mut tmp)
                    .input_ctx(|| format!("{source}: cannot decompress (truncated or corrupt?)"))?;
                self.read_parquet(tmp, &source, f)
            }
            Format::Jsonl => self.read_jsonl(data, &source, f),
            Format::Csv(delim) => self.read_csv(data, delim, &source, f),
            Format::Text => self.read_text(data, &source, f),
        }
    }

    /// Read one line into `buf` (without the newline), keeping at most `cap` bytes. Returns
    /// `None` at end of input, else `(line_was_longer_than_cap)`.
    fn next_line(
        &mut self,
        data: &mut BufReader<Box<dyn Read>>,
        buf: &mut Vec<u8>,
        cap: usize,
        source: &str,
        line: u64,
    ) -> Result<Option<bool>> {
        buf.clear();
        let limit = if cap == 0 { u64::MAX } else { cap as u64 + 1 };
        let n = (&mut *data)
            .take(limit)
            .read_until(b'\n', buf)
            .input_ctx(|| {
                format!("{source}:{line}: read failed (truncated or corrupt compressed file?)")
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.stats.bytes += n as u64;
        let mut too_long = false;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if cap != 0 && buf.len() > cap {
            // The line goes on: drop the rest of it without holding it.
            too_long = true;
            let rest = data.skip_until(b'\n').input_ctx(|| {
                format!("{source}:{line}: read failed (truncated or corrupt compressed file?)")
            })?;
            self.stats.bytes += rest as u64;
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(Some(too_long))
    }

    fn too_long(&self, len: usize) -> bool {
        self.opts.max_line_bytes != 0 && len > self.opts.max_line_bytes
    }

    fn read_text(
        &mut self,
        mut data: BufReader<Box<dyn Read>>,
        source: &Arc<str>,
        f: &mut Callback<'_>,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(4096);
        let mut text = String::new();
        let mut line = 0u64;
        while let Some(too_long) = self.next_line(
            &mut data,
            &mut buf,
            self.opts.max_line_bytes,
            source,
            line + 1,
        )? {
            line += 1;
            self.stats.rows_seen += 1;
            self.tick();
            if too_long {
                self.skip(SkipReason::TooLong, source, line, "")?;
                continue;
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                self.skip(SkipReason::Blank, source, line, "")?;
                continue;
            }
            let cmd = self.decode(&buf, &mut text);
            self.stats.records += 1;
            f(&RecordRef {
                cmd,
                label: None,
                platform: None,
                source,
                line,
                extra: None,
            })?;
        }
        Ok(())
    }

    /// Bytes to text per the module's escaping rule, counting the escapes.
    fn decode<'a>(&mut self, bytes: &'a [u8], scratch: &'a mut String) -> &'a str {
        let (s, invalid, nul) = escape_bytes(bytes, scratch);
        self.stats.escaped_invalid_utf8 += invalid as u64;
        self.stats.escaped_nul += nul as u64;
        s
    }

    fn read_jsonl(
        &mut self,
        mut data: BufReader<Box<dyn Read>>,
        source: &Arc<str>,
        f: &mut Callback<'_>,
    ) -> Result<()> {
        let cap = if self.opts.max_line_bytes == 0 {
            0
        } else {
            self.opts.max_line_bytes + JSONL_LINE_SLACK
        };
        let fast = !self.opts.keep_extra
            && self.opts.column.as_deref().is_none_or(|c| c == "cmd")
            && self
                .opts
                .label_column
                .as_deref()
                .is_none_or(|c| c == "label")
            && self
                .opts
                .platform_column
                .as_deref()
                .is_none_or(|c| c == "platform");
        let mut buf = Vec::with_capacity(4096);
        let mut fixed = Vec::new();
        let mut nul_scratch = String::new();
        let mut line = 0u64;
        while let Some(too_long) = self.next_line(&mut data, &mut buf, cap, source, line + 1)? {
            line += 1;
            self.tick();
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines between JSON objects are not rows
            }
            self.stats.rows_seen += 1;
            if too_long {
                self.skip(SkipReason::TooLong, source, line, "")?;
                continue;
            }
            // Invalid UTF-8 can only sit inside JSON strings: escape it as `\\xNN`, which
            // JSON decodes to the documented `\xNN`.
            let json: &[u8] = if std::str::from_utf8(&buf).is_ok() {
                &buf
            } else {
                self.stats.escaped_invalid_utf8 += 1;
                json_escape_invalid(&buf, &mut fixed);
                &fixed
            };
            if fast
                && let Ok(FastRow {
                    cmd: Some(cmd),
                    label,
                    platform,
                }) = serde_json::from_slice::<FastRow<'_>>(json)
            {
                let (label, platform) = (label.as_deref(), platform.as_deref());
                self.deliver_json(
                    &cmd,
                    label,
                    platform,
                    source,
                    line,
                    None,
                    &mut nul_scratch,
                    f,
                )?;
                continue;
            }
            // General path: any column name, nested keys, non-string labels, extras, and the
            // precise reason a row is unusable.
            let mut obj = match serde_json::from_slice::<Value>(json) {
                Ok(Value::Object(obj)) => obj,
                Ok(other) => {
                    let kind = json_kind(&other);
                    self.skip(
                        SkipReason::MalformedJson,
                        source,
                        line,
                        &format!(": a JSON {kind}, not an object"),
                    )?;
                    continue;
                }
                Err(e) => {
                    self.skip(SkipReason::MalformedJson, source, line, &format!(": {e}"))?;
                    continue;
                }
            };
            let key = match &self.opts.column {
                Some(c) => Some(c.clone()),
                None => DEFAULT_COLUMNS
                    .iter()
                    .find(|c| lookup(&obj, c).is_some())
                    .map(|c| c.to_string()),
            };
            let cmd = match key.as_deref().map(|k| take(&mut obj, k)) {
                Some(Some(Value::String(s))) => s,
                Some(Some(Value::Null)) | Some(None) | None => {
                    let want = key.unwrap_or_else(|| DEFAULT_COLUMNS.join("/"));
                    self.skip(
                        SkipReason::NoCommand,
                        source,
                        line,
                        &format!(": no `{want}`"),
                    )?;
                    continue;
                }
                Some(Some(other)) => {
                    let kind = json_kind(&other);
                    self.skip(
                        SkipReason::NoCommand,
                        source,
                        line,
                        &format!(": the command is a JSON {kind}"),
                    )?;
                    continue;
                }
            };
            let label = take(
                &mut obj,
                self.opts.label_column.as_deref().unwrap_or("label"),
            )
            .and_then(scalar_text);
            let platform = take(
                &mut obj,
                self.opts.platform_column.as_deref().unwrap_or("platform"),
            )
            .and_then(scalar_text);
            let extra = self.opts.keep_extra.then_some(&obj);
            self.deliver_json(
                &cmd,
                label.as_deref(),
                platform.as_deref(),
                source,
                line,
                extra,
                &mut nul_scratch,
                f,
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver_json(
        &mut self,
        cmd: &str,
        label: Option<&str>,
        platform: Option<&str>,
        source: &Arc<str>,
        line: u64,
        extra: Option<&Map<String, Value>>,
        scratch: &mut String,
        f: &mut Callback<'_>,
    ) -> Result<()> {
        if self.too_long(cmd.len()) {
            return self.skip(SkipReason::TooLong, source, line, "");
        }
        if cmd.trim().is_empty() {
            return self.skip(SkipReason::Blank, source, line, "");
        }
        let cmd = if cmd.contains('\0') {
            self.stats.escaped_nul += 1;
            escape_nul(cmd, scratch)
        } else {
            cmd
        };
        self.stats.records += 1;
        f(&RecordRef {
            cmd,
            label,
            platform,
            source,
            line,
            extra,
        })
    }

    fn read_csv(
        &mut self,
        data: BufReader<Box<dyn Read>>,
        delimiter: u8,
        source: &Arc<str>,
        f: &mut Callback<'_>,
    ) -> Result<()> {
        let mut csv = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(256 * 1024)
            .from_reader(data);
        let headers = csv
            .byte_headers()
            .input_ctx(|| format!("{source}: cannot read the CSV header"))?
            .clone();
        let names: Vec<String> = headers
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_string())
            .collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        let cmd_idx = match &self.opts.column {
            Some(c) => find(c),
            None => DEFAULT_COLUMNS.iter().find_map(|c| find(c)),
        }
        .ok_or_else(|| missing_column(source, self.opts.column.as_deref(), &names))?;
        let label_idx =
            self.optional_column(&names, self.opts.label_column.as_deref(), "label", source)?;
        let platform_idx = self.optional_column(
            &names,
            self.opts.platform_column.as_deref(),
            "platform",
            source,
        )?;
        let mut record = csv::ByteRecord::new();
        let (mut cmd_s, mut label_s, mut platform_s) =
            (String::new(), String::new(), String::new());
        loop {
            let more = csv.read_byte_record(&mut record).input_ctx(|| {
                let line = csv.position().line();
                format!("{source}:{line}: cannot read CSV (truncated or corrupt compressed file?)")
            })?;
            if !more {
                break;
            }
            let line = record.position().map_or(0, |p| p.line());
            self.stats.rows_seen += 1;
            self.tick();
            let Some(cmd) = record.get(cmd_idx) else {
                let detail = format!(
                    ": {} fields, the command is field {}",
                    record.len(),
                    cmd_idx + 1
                );
                self.skip(SkipReason::ShortCsvRow, source, line, &detail)?;
                continue;
            };
            if self.too_long(cmd.len()) {
                self.skip(SkipReason::TooLong, source, line, "")?;
                continue;
            }
            if cmd.iter().all(u8::is_ascii_whitespace) {
                self.skip(SkipReason::Blank, source, line, "")?;
                continue;
            }
            let (cmd, invalid, nul) = escape_bytes(cmd, &mut cmd_s);
            self.stats.escaped_invalid_utf8 += invalid as u64;
            self.stats.escaped_nul += nul as u64;
            let field = |idx: Option<usize>, scratch: &mut String| -> Option<String> {
                let bytes = record.get(idx?)?;
                let (s, _, _) = escape_bytes(bytes, scratch);
                (!s.is_empty()).then(|| s.to_string())
            };
            // Labels and platforms are a handful of short values: owning them is cheap.
            let label = field(label_idx, &mut label_s);
            let platform = field(platform_idx, &mut platform_s);
            self.stats.records += 1;
            f(&RecordRef {
                cmd,
                label: label.as_deref(),
                platform: platform.as_deref(),
                source,
                line,
                extra: None,
            })?;
        }
        Ok(())
    }

    /// Index of an optional column: the one asked for (must exist) or the default if present.
    fn optional_column(
        &self,
        names: &[String],
        asked: Option<&str>,
        default: &str,
        source: &str,
    ) -> Result<Option<usize>> {
        match asked {
            Some(name) => names
                .iter()
                .position(|n| n == name)
                .map(Some)
                .ok_or_else(|| missing_column(source, Some(name), names)),
            None => Ok(names.iter().position(|n| n == default)),
        }
    }

    fn read_parquet(&mut self, file: File, source: &Arc<str>, f: &mut Callback<'_>) -> Result<()> {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            self.stats.empty_files += 1;
            warn!("{source} is empty; skipped");
            return Ok(());
        }
        self.stats.bytes += size;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).input_ctx(|| {
            format!("{source} is not a readable Parquet file (truncated or corrupt?)")
        })?;
        let names: Vec<String> = builder
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let find = |name: &str| names.iter().position(|n| n == name);
        let cmd_idx = match &self.opts.column {
            Some(c) => find(c),
            None => DEFAULT_COLUMNS.iter().find_map(|c| find(c)),
        }
        .ok_or_else(|| missing_column(source, self.opts.column.as_deref(), &names))?;
        let label_idx =
            self.optional_column(&names, self.opts.label_column.as_deref(), "label", source)?;
        let platform_idx = self.optional_column(
            &names,
            self.opts.platform_column.as_deref(),
            "platform",
            source,
        )?;
        let wanted: Vec<usize> = [Some(cmd_idx), label_idx, platform_idx]
            .into_iter()
            .flatten()
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
        let reader = builder
            .with_projection(mask)
            .with_batch_size(PARQUET_BATCH)
            .build()
            .input_ctx(|| format!("cannot read {source}"))?;
        let mut row = 0u64;
        let mut cmd_s = String::new();
        for batch in reader {
            let batch = batch.input_ctx(|| {
                format!("{source}: corrupt data after row {row} (truncated file?)")
            })?;
            let column = |idx: usize| -> Result<ArrayRef> {
                let name = &names[idx];
                let col = batch.column_by_name(name).ok_or_else(|| {
                    Error::input(format!("{source}: column `{name}` vanished while reading"))
                })?;
                text_array(col, name, source)
            };
            let cmds = column(cmd_idx)?;
            let labels = label_idx.map(column).transpose()?;
            let platforms = platform_idx.map(column).transpose()?;
            for i in 0..batch.num_rows() {
                row += 1;
                self.stats.rows_seen += 1;
                self.tick();
                let Some(raw) = array_bytes(&cmds, i) else {
                    self.skip(SkipReason::NoCommand, source, row, ": null")?;
                    continue;
                };
                if self.too_long(raw.len()) {
                    self.skip(SkipReason::TooLong, source, row, "")?;
                    continue;
                }
                if raw.iter().all(u8::is_ascii_whitespace) {
                    self.skip(SkipReason::Blank, source, row, "")?;
                    continue;
                }
                let (cmd, invalid, nul) = escape_bytes(raw, &mut cmd_s);
                self.stats.escaped_invalid_utf8 += invalid as u64;
                self.stats.escaped_nul += nul as u64;
                let label = labels
                    .as_ref()
                    .and_then(|a| array_bytes(a, i))
                    .map(|b| String::from_utf8_lossy(b));
                let platform = platforms
                    .as_ref()
                    .and_then(|a| array_bytes(a, i))
                    .map(|b| String::from_utf8_lossy(b));
                self.stats.records += 1;
                f(&RecordRef {
                    cmd,
                    label: label.as_deref().filter(|s| !s.is_empty()),
                    platform: platform.as_deref().filter(|s| !s.is_empty()),
                    source,
                    line: row,
                    extra: None,
                })?;
            }
        }
        Ok(())
    }
}

/// Guess the format of an unnamed input from its first bytes: `{` starts JSONL, else text.
fn sniff(data: &mut BufReader<Box<dyn Read>>) -> Format {
    match data.fill_buf() {
        Ok(buf) => match buf.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Jsonl,
            _ => Format::Text,
        },
        Err(_) => Format::Text,
    }
}

fn missing_column(source: &str, asked: Option<&str>, names: &[String]) -> Error {
    let want = match asked {
        Some(c) => format!("the column `{c}`"),
        None => format!(
            "any of the columns {}",
            DEFAULT_COLUMNS.map(|c| format!("`{c}`")).join(", ")
        ),
    };
    Error::input(format!(
        "{source} has no {want} (its columns: {}); name the command column with --column",
        names.join(", ")
    ))
}

/// A string-like Arrow column as is; anything else cast to Utf8 (dictionaries, numbers).
fn text_array(col: &ArrayRef, name: &str, source: &str) -> Result<ArrayRef> {
    match col.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => Ok(Arc::clone(col)),
        other => arrow::compute::cast(col, &DataType::Utf8).map_err(|_| {
            Error::input(format!(
                "{source}: column `{name}` is {other}, which cannot be read as text; pick another with --column"
            ))
        }),
    }
}

/// The bytes of row `i` of a string or binary array; `None` for null.
fn array_bytes(col: &ArrayRef, i: usize) -> Option<&[u8]> {
    if col.is_null(i) {
        return None;
    }
    Some(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).as_bytes(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).as_bytes(),
        DataType::Utf8View => col.as_string_view().value(i).as_bytes(),
        DataType::Binary => col.as_binary::<i32>().value(i),
        DataType::LargeBinary => col.as_binary::<i64>().value(i),
        DataType::BinaryView => col.as_binary_view().value(i),
        _ => return None,
    })
}

/// The JSONL fields the fast path needs; everything else is skipped by serde.
#[derive(Deserialize)]
struct FastRow<'a> {
    #[serde(borrow, default)]
    cmd: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    label: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    platform: Option<Cow<'a, str>>,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A key, or a dotted path into nested objects (`process.command_line`).
fn lookup<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    if let Some(v) = obj.get(key) {
        return Some(v);
    }
    let (head, rest) = key.split_once('.')?;
    match obj.get(head)? {
        Value::Object(inner) => lookup(inner, rest),
        _ => None,
    }
}

/// Remove and return a key (or dotted path) from a JSON object.
fn take(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if let Some(v) = obj.remove(key) {
        return Some(v);
    }
    let (head, rest) = key.split_once('.')?;
    match obj.get_mut(head)? {
        Value::Object(inner) => take(inner, rest),
        _ => None,
    }
}

/// Label and platform values: strings as is, numbers and booleans as their JSON text.
fn scalar_text(v: Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Bytes to text: valid UTF-8 without NUL is borrowed as is; otherwise each invalid byte and
/// each NUL becomes `\xNN` in `scratch`. Returns the text and whether each escape happened.
pub fn escape_bytes<'a>(bytes: &'a [u8], scratch: &'a mut String) -> (&'a str, bool, bool) {
    let has_nul = bytes.contains(&0);
    match std::str::from_utf8(bytes) {
        Ok(s) if !has_nul => return (s, false, false),
        _ => {}
    }
    scratch.clear();
    let mut invalid = false;
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                push_nul_escaped(s, scratch);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                push_nul_escaped(std::str::from_utf8(good).unwrap_or_default(), scratch);
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    let _ = write!(scratch, "\\x{b:02x}");
                }
                invalid = true;
                rest = &bad[n..];
            }
        }
    }
    (scratch.as_str(), invalid, has_nul)
}

fn push_nul_escaped(s: &str, out: &mut String) {
    let mut parts = s.split('\0');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for part in parts {
        out.push_str("\\x00");
        out.push_str(part);
    }
}

fn escape_nul<'a>(s: &str, scratch: &'a mut String) -> &'a str {
    scratch.clear();
    push_nul_escaped(s, scratch);
    scratch
}

/// Copy a JSON line, writing each invalid UTF-8 byte as the JSON text `\\xNN`.
fn json_escape_invalid(bytes: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(_) => {
                out.extend_from_slice(rest);
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.extend_from_slice(good);
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    out.extend_from_slice(format!("\\\\x{b:02x}").as_bytes());
                }
                rest = &bad[n..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_invalid_bytes_and_nul() {
        let mut s = String::new();
        let (t, inv, nul) = escape_bytes(b"ok \xff\xfe x\x00y", &mut s);
        assert_eq!(t, "ok \\xff\\xfe x\\x00y");
        assert!(inv && nul);
        let (t, inv, nul) = escape_bytes("été".as_bytes(), &mut s);
        assert_eq!((t, inv, nul), ("été", false, false));
        // A truncated multi-byte sequence at the end.
        let (t, _, _) = escape_bytes(b"a\xc3", &mut s);
        assert_eq!(t, "a\\xc3");
    }

    #[test]
    fn json_escape_round_trips_to_the_documented_form() {
        let mut out = Vec::new();
        json_escape_invalid(b"{\"cmd\": \"a\xffb\"}", &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cmd"], "a\\xffb");
    }

    #[test]
    fn names_map_to_formats() {
        assert_eq!(
            format_from_name(Path::new("a/b.jsonl.gz")),
            Some(Format::Jsonl)
        );
        assert_eq!(
            format_from_name(Path::new("b.TSV.zst")),
            Some(Format::Csv(b'\t'))
        );
        assert_eq!(
            format_from_name(Path::new("x.parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(format_from_name(Path::new("noext")), None);
    }

    #[test]
    fn nested_lookup() {
        let v: Value = serde_json::from_str(r#"{"process": {"command_line": "ls"}}"#).unwrap();
        let Value::Object(mut obj) = v else {
            unreachable!()
        };
        assert_eq!(
            lookup(&obj, "process.command_line"),
            Some(&Value::from("ls"))
        );
        assert_eq!(
            take(&mut obj, "process.command_line"),
            Some(Value::from("ls"))
        );
    }
}
