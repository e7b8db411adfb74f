//! `longtail ingest`.

use longtail::data::MinHashConfig;
use longtail::ingest::{IngestConfig, InputFormat, ReadOptions, ingest};
use longtail::io::read::DEFAULT_MAX_LINE_BYTES;
use longtail::{Globals, Result};
use std::path::PathBuf;

/// `longtail ingest`: read command lines, dedup exactly and near-exactly, write Parquet.
///
/// Formats by extension (.parquet, .jsonl/.ndjson/.json, .csv, .tsv, .txt/.log), else by
/// content; gzip and zstd are recognised by their magic bytes. Rows that cannot be used
/// (blank, no command, too long, malformed JSON) are skipped and counted, or fail the run
/// with file and line under --strict. Invalid UTF-8 and NUL bytes are kept as `\xNN`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:\n  \
    longtail ingest ../shared/data/cmdlines/*.jsonl -o runs/ingest.parquet\n  \
    longtail ingest 'logs/**/*.csv.gz' --column CommandLine --normalized -o lines.parquet\n  \
    zcat day.txt.gz | longtail ingest - --near-dup-threshold 0.9 -o day.parquet\n\n\
    Output schema: cmd, count, first_seen_source, label, platform, cluster [, normalized]\n\
    (see src/ingest/SCHEMA.md).")]
pub struct IngestArgs {
    /// Input files, directories (read recursively) or quoted globs; `-` reads standard input.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// Output Parquet file (written atomically: it appears only when ingest succeeds).
    #[arg(short, long, value_name = "FILE", visible_alias = "out")]
    pub output: PathBuf,
    /// Input format; auto = by extension, then by content.
    #[arg(long, default_value = "auto", value_parser = super::parse_enum::<InputFormat>)]
    pub format: InputFormat,
    /// Column (Parquet, CSV) or key (JSONL; dotted keys reach into nested objects) holding
    /// the command line. Default: the first present of cmd, command_line, CommandLine,
    /// process.command_line.
    #[arg(long, value_name = "NAME")]
    pub column: Option<String>,
    /// Column or key with a label (benign/malicious/...). Default: `label` where present.
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// Column or key with the platform (windows/linux/macos). Default: `platform` where present.
    #[arg(long, value_name = "NAME")]
    pub platform_column: Option<String>,
    /// CSV field delimiter, one ASCII character (`\t` for tab). Default: tab for .tsv, else comma.
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// Jaccard similarity (over byte shingles) at or above which two lines join one
    /// near-duplicate cluster. The source work deduplicates at > 0.8.
    #[arg(long, default_value_t = 0.8, value_name = "T")]
    pub near_dup_threshold: f64,
    /// Skip near-duplicate clustering (then every row is its own cluster).
    #[arg(long)]
    pub no_near_dup: bool,
    /// Shingle width in bytes for MinHash.
    #[arg(long, default_value_t = 5, value_name = "BYTES")]
    pub shingle_bytes: usize,
    /// Number of MinHash functions.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub num_perm: usize,
    /// LSH bands. Default: chosen so that a pair at the threshold is found with
    /// probability >= 0.95 (18 bands of 7 rows for 0.8 and 128 hashes).
    #[arg(long, value_name = "N")]
    pub bands: Option<usize>,
    /// Add a `normalized` column: tokens of \w+|[^\w\s]+ joined by spaces, digits as `*`.
    #[arg(long)]
    pub normalized: bool,
    /// Skip commands longer than this many bytes (0 = no limit).
    #[arg(long, default_value_t = DEFAULT_MAX_LINE_BYTES, value_name = "BYTES")]
    pub max_line_bytes: usize,
    /// Fail on the first unusable row (with file and line) instead of skipping and counting it.
    #[arg(long)]
    pub strict: bool,
    /// Worker threads for near-duplicate clustering (0 = all cores).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

fn parse_delimiter(s: &str) -> std::result::Result<u8, String> {
    match s {
        "\\t" | "tab" | "\t" => Ok(b'\t'),
        _ if s.len() == 1 && s.is_ascii() => Ok(s.as_bytes()[0]),
        _ => Err(format!(
            "the delimiter must be one ASCII character or \\t, got {s:?}"
        )),
    }
}

impl IngestArgs {
    pub fn config(&self, globals: &Globals) -> IngestConfig {
        IngestConfig {
            read: ReadOptions {
                format: self.format,
                column: self.column.clone(),
                label_column: self.label_column.clone(),
                platform_column: self.platform_column.clone(),
                max_line_bytes: self.max_line_bytes,
                strict: self.strict,
                keep_extra: false,
                csv_delimiter: self.delimiter,
                progress: true,
            },
            near_dup: (!self.no_near_dup).then_some(MinHashConfig {
                threshold: self.near_dup_threshold,
                num_perm: self.num_perm,
                shingle_bytes: self.shingle_bytes,
                bands: self.bands,
                seed: globals.seed,
                threads: self.threads,
                progress: true,
            }),
            normalized: self.normalized,
        }
    }
}

/// Entry point of `longtail ingest`.
pub fn run(args: &IngestArgs, globals: &Globals, out: &mut super::Output) -> Result<()> {
    let cfg = args.config(globals);
    let summary = ingest(&args.inputs, &args.output, &cfg)?;
    if let Some(path) = &args.summary_json {
        longtail::io::write_json(path, &summary)?;
    }
    out.print(&summary.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delimiter_parsing() {
        assert_eq!(parse_delimiter("\\t"), Ok(b'\t'));
        assert_eq!(parse_delimiter(";"), Ok(b';'));
        assert!(parse_delimiter("ab").is_err());
    }
}
