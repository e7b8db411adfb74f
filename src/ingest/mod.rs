//! Stage 1, `longtail ingest`: read command-line telemetry, deduplicate it exactly (with
//! counts) and group near-duplicates, and write one Parquet table of unique lines.
//!
//! Reading ([`read`]) streams Parquet, JSONL, CSV/TSV and text, plain or gzip/zstd. Exact
//! dedup hashes each line once (xxh3-64, collisions resolved by comparing the text) and keeps
//! each distinct text once in an arena, so memory grows with the number of unique lines, not
//! with the input. Near-duplicate clusters come from [`crate::data::minhash`]; the optional normalised view
//! from [`normalize()`].
//!
//! # Output schema (stable; version `ingest/1`, also in `src/ingest/SCHEMA.md`)
//!
//! One row per distinct command text, in order of first appearance in the inputs:
//!
//! | column | type | null | meaning |
//! |---|---|---|---|
//! | `cmd` | utf8 | no | the command text (invalid UTF-8 bytes and NULs escaped as `\xNN`) |
//! | `count` | uint64 | no | how many input rows had exactly this text |
//! | `first_seen_source` | utf8 | no | the input file of its first occurrence (`<stdin>` for `-`) |
//! | `label` | utf8 | yes | its label if any input gave one; on conflict `malicious` > `benign` > any other value, else the first seen |
//! | `platform` | utf8 | yes | its platform if given; the first seen, except that `unknown` yields to a known value |
//! | `cluster` | uint32 | no | near-duplicate cluster id, dense from 0 in order of first appearance; each row its own cluster under `--no-near-dup` |
//! | `normalized` | utf8 | no | only with `--normalized`: the token view of `cmd` |
//!
//! The file's key-value metadata records `longtail.schema = ingest/1` and the near-duplicate
//! parameters (`longtail.near_dup`, JSON).

pub mod normalize;

pub use crate::data::minhash::{MinHashConfig, near_duplicate_clusters};
pub use crate::io::read::{
    InputFormat, ReadOptions, ReadStats, Record, RecordRef, SkipReason, for_each_record,
    for_each_record_ref,
};
pub use normalize::normalize;

use crate::error::{Context, Error, Result};
use crate::io::table::ParquetSink;
use crate::progress;
use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hashbrown::HashTable;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// Version tag of the output schema, stored in the file's metadata.
pub const SCHEMA_VERSION: &str = "ingest/1";
/// Rows per written Parquet batch.
const WRITE_BATCH: usize = 65_536;

/// Everything `ingest` needs besides the inputs and the output path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestConfig {
    pub read: ReadOptions,
    /// `None`: no near-duplicate clustering.
    pub near_dup: Option<MinHashConfig>,
    /// Add the `normalized` column.
    pub normalized: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            read: ReadOptions::default(),
            near_dup: Some(MinHashConfig::default()),
            normalized: false,
        }
    }
}

/// Counts for one label or platform value.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ValueCount {
    /// The value; `(none)` when the input gave none.
    pub value: String,
    /// Input rows that carried it.
    pub rows: u64,
    /// Unique lines whose resolved value it is.
    pub unique: u64,
}

/// What one ingest run did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IngestSummary {
    pub inputs: Vec<String>,
    pub output: String,
    pub read: ReadStats,
    /// Distinct command texts (= output rows).
    pub unique: u64,
    /// Near-duplicate clusters (`None` when clustering was off).
    pub clusters: Option<u64>,
    pub near_dup: Option<MinHashConfig>,
    /// Unique texts seen both as benign and as malicious (resolved to malicious).
    pub label_conflicts: u64,
    pub by_label: Vec<ValueCount>,
    pub by_platform: Vec<ValueCount>,
    pub seconds_read: f64,
    pub seconds_near_dup: f64,
    pub seconds_write: f64,
    pub seconds_total: f64,
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl IngestSummary {
    /// The human-readable summary table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let r = &self.read;
        let mut s = String::new();
        let rate = if self.seconds_total > 0.0 {
            r.rows_seen as f64 / self.seconds_total
        } else {
            0.0
        };
        let _ = writeln!(s, "ingest summary -> {}", self.output);
        let files = if r.empty_files > 0 {
            format!("{} ({} empty, skipped)", thousands(r.files), r.empty_files)
        } else {
            thousands(r.files)
        };
        let _ = writeln!(s, "  {:<38}{files:>12}", "files");
        let _ = writeln!(s, "  {:<38}{:>12}", "rows read", thousands(r.rows_seen));
        let _ = writeln!(s, "  {:<38}{:>12}", "rows kept", thousands(r.records));
        let _ = writeln!(s, "  {:<38}{:>12}", "unique lines", thousands(self.unique));
        match (self.clusters, &self.near_dup) {
            (Some(c), Some(cfg)) => {
                let (b, rows) = cfg.bands_rows();
                let _ = writeln!(
                    s,
                    "  {:<38}{:>12} (Jaccard >= {}, {}-byte shingles, {} hashes, {b}x{rows} LSH)",
                    "near-dup clusters",
                    thousands(c),
                    cfg.threshold,
                    cfg.shingle_bytes,
                    cfg.num_perm
                );
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  {:<38}{:>12} (--no-near-dup)",
                    "near-dup clusters", "off"
                );
            }
        }
        let _ = writeln!(
            s,
            "  {:<38}{:>12}",
            "rows skipped",
            thousands(r.skipped_total())
        );
        for (reason, n) in &r.skipped {
            let _ = writeln!(s, "    {:<36}{:>12}", reason.describe(), thousands(*n));
        }
        if r.escaped_invalid_utf8 + r.escaped_nul > 0 {
            let _ = writeln!(
                s,
                "  {:<38}{:>12} with invalid UTF-8, {} with NUL (as \\xNN)",
                "rows escaped",
                thousands(r.escaped_invalid_utf8),
                thousands(r.escaped_nul)
            );
        }
        for (title, counts) in [
            ("by label", &self.by_label),
            ("by platform", &self.by_platform),
        ] {
            let _ = writeln!(s, "  {title:<38}{:>12} {:>12}", "rows", "unique");
            for v in counts {
                let _ = writeln!(
                    s,
                    "    {:<36}{:>12} {:>12}",
                    v.value,
                    thousands(v.rows),
                    thousands(v.unique)
                );
            }
        }
        if self.label_conflicts > 0 {
            let _ = writeln!(
                s,
                "  {:<38}{:>12} lines labeled both benign and malicious (kept as malicious)",
                "label conflicts",
                thousands(self.label_conflicts)
            );
        }
        let _ = writeln!(
            s,
            "  {:<38}{:>10.2} s (read {:.2}, near-dup {:.2}, write {:.2}); {} lines/s",
            "time",
            self.seconds_total,
            self.seconds_read,
            self.seconds_near_dup,
            self.seconds_write,
            thousands(rate as u64)
        );
        s
    }
}

/// Read `inputs`, dedup, cluster, and write the table to `output` (atomically). Fails with an
/// input error, writing nothing, when no usable row was read.
pub fn ingest(inputs: &[String], output: &Path, cfg: &IngestConfig) -> Result<IngestSummary> {
    if let Some(nd) = &cfg.near_dup {
        nd.validate()?;
    }
    let started = Instant::now();
    let mut table = DedupTable::default();
    let stats = for_each_record_ref(inputs, &cfg.read, |r| table.insert(r))?;
    let seconds_read = started.elapsed().as_secs_f64();
    if table.is_empty() {
        let skipped: Vec<String> = stats
            .skipped
            .iter()
            .map(|(r, n)| format!("{n} {}", r.describe()))
            .collect();
        return Err(Error::input(format!(
            "no command lines were read from {} file(s){}; nothing written. Check the inputs and --column/--format",
            stats.files,
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" (skipped: {})", skipped.join(", "))
            }
        )));
    }
    info!(
        "read {} rows, {} unique lines in {seconds_read:.1} s",
        stats.rows_seen,
        table.len()
    );

    let t = Instant::now();
    let clusters = match &cfg.near_dup {
        Some(nd) => {
            let lines: Vec<&str> = (0..table.len()).map(|i| table.text(i)).collect();
            Some(near_duplicate_clusters(&lines, nd)?)
        }
        None => None,
    };
    let seconds_near_dup = t.elapsed().as_secs_f64();
    let n_clusters = clusters
        .as_ref()
        .map(|c| c.iter().max().map_or(0, |m| *m as u64 + 1));

    let t = Instant::now();
    write_table(&table, clusters.as_deref(), cfg, output)?;
    let seconds_write = t.elapsed().as_secs_f64();

    let (by_label, by_platform) = table.value_counts();
    Ok(IngestSummary {
        inputs: inputs.to_vec(),
        output: output.display().to_string(),
        read: stats,
        unique: table.len() as u64,
        clusters: n_clusters,
        near_dup: cfg.near_dup.clone(),
        label_conflicts: table.label_conflicts(),
        by_label,
        by_platform,
        seconds_read,
        seconds_near_dup,
        seconds_write,
        seconds_total: started.elapsed().as_secs_f64(),
    })
}

/// The Arrow schema of the output (see the module docs).
pub fn output_schema(normalized: bool, near_dup: Option<&MinHashConfig>) -> SchemaRef {
    let mut fields = vec![
        Field::new("cmd", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("first_seen_source", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, true),
        Field::new("platform", DataType::Utf8, true),
        Field::new("cluster", DataType::UInt32, false),
    ];
    if normalized {
        fields.push(Field::new("normalized", DataType::Utf8, false));
    }
    let mut meta = HashMap::new();
    meta.insert("longtail.schema".to_string(), SCHEMA_VERSION.to_string());
    meta.insert(
        "longtail.near_dup".to_string(),
        serde_json::to_string(&near_dup).unwrap_or_else(|_| "null".into()),
    );
    Arc::new(Schema::new_with_metadata(fields, meta))
}

fn write_table(
    table: &DedupTable,
    clusters: Option<&[u32]>,
    cfg: &IngestConfig,
    output: &Path,
) -> Result<()> {
    let schema = output_schema(cfg.normalized, cfg.near_dup.as_ref());
    let mut sink = ParquetSink::create(output, schema.clone())?;
    let bar = cfg
        .read
        .progress
        .then(|| progress::bar(table.len() as u64, "writing", "rows"));
    let mut norm = String::new();
    for start in (0..table.len()).step_by(WRITE_BATCH) {
        let end = (start + WRITE_BATCH).min(table.len());
        let bytes: usize = (start..end).map(|i| table.entries[i].len as usize).sum();
        let mut cmd = StringBuilder::with_capacity(end - start, bytes);
        let mut source = StringBuilder::new();
        let mut label = StringBuilder::new();
        let mut platform = StringBuilder::new();
        let mut normalized = cfg
            .normalized
            .then(|| StringBuilder::with_capacity(end - start, bytes + bytes / 4));
        let mut counts = Vec::with_capacity(end - start);
        for i in start..end {
            let e = &table.entries[i];
            cmd.append_value(table.text(i));
            counts.push(e.count);
            source.append_value(&table.sources[e.source as usize]);
            label.append_option(table.labels.get(e.label));
            platform.append_option(table.platforms.get(e.platform));
            if let Some(b) = normalized.as_mut() {
                normalize::normalize_into(table.text(i), &mut norm);
                b.append_value(&norm);
            }
        }
        let cluster = UInt32Array::from(match clusters {
            Some(c) => c[start..end].to_vec(),
            None => (start as u32..end as u32).collect::<Vec<u32>>(),
        });
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(cmd.finish()),
            Arc::new(UInt64Array::from(counts)),
            Arc::new(source.finish()),
            Arc::new(label.finish()),
            Arc::new(platform.finish()),
            Arc::new(cluster),
        ];
        if let Some(mut b) = normalized {
            columns.push(Arc::new(b.finish()));
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .runtime_ctx(|| "building an output batch")?;
        sink.write(&batch)?;
        if let Some(bar) = &bar {
            bar.inc((end - start) as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    sink.finish()?;
    Ok(())
}

/// Small set of distinct strings (labels, platforms) by 16-bit id; id 0 means "none".
#[derive(Default)]
struct Interner {
    values: Vec<String>,
    ids: HashMap<String, u16>,
    /// Input rows per id (index 0: rows without a value).
    rows: Vec<u64>,
}

impl Interner {
    fn id(&mut self, value: Option<&str>, what: &str) -> Result<u16> {
        let Some(v) = value else { return Ok(0) };
        if let Some(&id) = self.ids.get(v) {
            return Ok(id);
        }
        if self.values.len() >= u16::MAX as usize - 1 {
            return Err(Error::input(format!(
                "more than 65,000 distinct {what} values: is --{what}-column pointing at the right column?"
            )));
        }
        self.values.push(v.to_string());
        let id = self.values.len() as u16;
        self.ids.insert(v.to_string(), id);
        Ok(id)
    }
    fn get(&self, id: u16) -> Option<&str> {
        (id > 0).then(|| self.values[id as usize - 1].as_str())
    }
    fn count_row(&mut self, id: u16) {
        if self.rows.len() <= id as usize {
            self.rows.resize(id as usize + 1, 0);
        }
        self.rows[id as usize] += 1;
    }
}

const SEEN_BENIGN: u8 = 1;
const SEEN_MALICIOUS: u8 = 2;

#[derive(Clone, Copy)]
struct Entry {
    start: u64,
    len: u32,
    /// The text's 64-bit hash (the index's key; kept so the index can grow without
    /// rehashing every text).
    hash: u64,
    count: u64,
    source: u32,
    label: u16,
    platform: u16,
    flags: u8,
}

/// Label precedence on conflict: malicious > benign > any other value > none.
fn label_rank(label: Option<&str>) -> u8 {
    match label {
        None => 0,
        Some(l) if l.eq_ignore_ascii_case("malicious") => 3,
        Some(l) if l.eq_ignore_ascii_case("benign") => 2,
        Some(_) => 1,
    }
}

/// Exact dedup of command texts with counts, first source, and merged label and platform.
/// Each text is stored once in one arena; memory is about 40 bytes + the text per unique line.
#[derive(Default)]
pub struct DedupTable {
    /// Entry numbers by their text's hash; texts that share a hash (a collision) are told
    /// apart by comparing the text.
    index: HashTable<u32>,
    arena: String,
    entries: Vec<Entry>,
    sources: Vec<Arc<str>>,
    labels: Interner,
    platforms: Interner,
}

impl DedupTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Text of unique line `i` (in order of first appearance).
    pub fn text(&self, i: usize) -> &str {
        let e = &self.entries[i];
        &self.arena[e.start as usize..e.start as usize + e.len as usize]
    }

    /// Count of unique line `i`.
    pub fn count(&self, i: usize) -> u64 {
        self.entries[i].count
    }

    /// Resolved label of unique line `i`.
    pub fn label(&self, i: usize) -> Option<&str> {
        self.labels.get(self.entries[i].label)
    }

    /// Resolved platform of unique line `i`.
    pub fn platform(&self, i: usize) -> Option<&str> {
        self.platforms.get(self.entries[i].platform)
    }

    /// Source file of the first occurrence of unique line `i`.
    pub fn first_seen_source(&self, i: usize) -> &str {
        &self.sources[self.entries[i].source as usize]
    }

    /// Add one record. Fails only past 2^32-1 unique lines or 65,000 distinct labels.
    pub fn insert(&mut self, r: &RecordRef<'_>) -> Result<()> {
        self.insert_hashed(r, xxhash_rust::xxh3::xxh3_64(r.cmd.as_bytes()))
    }

    /// [`Self::insert`] with the text's hash given (tests force collisions through it).
    fn insert_hashed(&mut self, r: &RecordRef<'_>, hash: u64) -> Result<()> {
        let label = self.labels.id(r.label, "label")?;
        let platform = self.platforms.id(r.platform, "platform")?;
        self.labels.count_row(label);
        self.platforms.count_row(platform);
        let flags = match label_rank(r.label) {
            3 => SEEN_MALICIOUS,
            2 => SEEN_BENIGN,
            _ => 0,
        };
        let found = self
            .index
            .find(hash, |&i| self.text(i as usize) == r.cmd)
            .copied();
        if let Some(i) = found {
            self.merge(i as usize, r, label, platform, flags);
            return Ok(());
        }
        let new_index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != u32::MAX)
            .ok_or_else(|| Error::input("more than 2^32-1 unique lines; split the input"))?;
        let entries = &self.entries;
        self.index
            .insert_unique(hash, new_index, |&i| entries[i as usize].hash);
        let source = match self.sources.last() {
            Some(last) if Arc::ptr_eq(last, r.source) || **last == **r.source => {
                self.sources.len() as u32 - 1
            }
            _ => {
                self.sources.push(Arc::clone(r.source));
                self.sources.len() as u32 - 1
            }
        };
        let start = self.arena.len() as u64;
        self.arena.push_str(r.cmd);
        self.entries.push(Entry {
            start,
            len: r.cmd.len() as u32,
            hash,
            count: 1,
            source,
            label,
            platform,
            flags,
        });
        Ok(())
    }

    fn merge(&mut self, i: usize, r: &RecordRef<'_>, label: u16, platform: u16, flags: u8) {
        let current_label = self.labels.get(self.entries[i].label);
        let current_platform = self.platforms.get(self.entries[i].platform);
        let replace_label = label_rank(r.label) > label_rank(current_label);
        let replace_platform = match (current_platform, r.platform) {
            (None, Some(_)) => true,
            (Some(cur), Some(new)) => {
                cur.eq_ignore_ascii_case("unknown") && !new.eq_ignore_ascii_case("unknown")
            }
            _ => false,
        };
        let e = &mut self.entries[i];
        e.count += 1;
        e.flags |= flags;
        if replace_label {
            e.label = label;
        }
        if replace_platform {
            e.platform = platform;
        }
    }

    /// Unique lines seen with both a benign and a malicious label.
    pub fn label_conflicts(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.flags == SEEN_BENIGN | SEEN_MALICIOUS)
            .count() as u64
    }

    /// Rows and unique lines per label and per platform, most rows first.
    pub fn value_counts(&self) -> (Vec<ValueCount>, Vec<ValueCount>) {
        let counts = |interner: &Interner, pick: fn(&Entry) -> u16| {
            let mut unique = vec![0u64; interner.values.len() + 1];
            for e in &self.entries {
                unique[pick(e) as usize] += 1;
            }
            let mut out: Vec<ValueCount> = (0..=interner.values.len())
                .map(|id| ValueCount {
                    value: interner.get(id as u16).unwrap_or("(none)").to_string(),
                    rows: interner.rows.get(id).copied().unwrap_or(0),
                    unique: unique[id],
                })
                .filter(|v| v.rows > 0 || v.unique > 0)
                .collect();
            out.sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.value.cmp(&b.value)));
            out
        };
        (
            counts(&self.labels, |e| e.label),
            counts(&self.platforms, |e| e.platform),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(
        cmd: &'a str,
        label: Option<&'a str>,
        platform: Option<&'a str>,
        src: &'a Arc<str>,
    ) -> RecordRef<'a> {
        RecordRef {
            cmd,
            label,
            platform,
            source: src,
            line: 1,
            extra: None,
        }
    }

    #[test]
    fn dedup_counts_and_resolves_labels() {
        let a: Arc<str> = "a.jsonl".into();
        let b: Arc<str> = "b.jsonl".into();
        let mut t = DedupTable::default();
        t.insert(&rec("whoami", Some("benign"), Some("unknown"), &a))
            .unwrap();
        t.insert(&rec("ls", None, None, &a)).unwrap();
        t.insert(&rec("whoami", Some("malicious"), Some("windows"), &b))
            .unwrap();
        t.insert(&rec("whoami", Some("benign"), Some("linux"), &b))
            .unwrap();
        t.insert(&rec("ls", Some("unknown"), None, &b)).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t.text(0), t.count(0), t.label(0), t.platform(0)),
            ("whoami", 3, Some("malicious"), Some("windows"))
        );
        assert_eq!(t.first_seen_source(0), "a.jsonl");
        assert_eq!(
            (t.text(1), t.count(1), t.label(1), t.platform(1)),
            ("ls", 2, Some("unknown"), None)
        );
        assert_eq!(t.label_conflicts(), 1);
        let (labels, platforms) = t.value_counts();
        let benign = labels.iter().find(|v| v.value == "benign").unwrap();
        assert_eq!((benign.rows, benign.unique), (2, 0));
        let mal = labels.iter().find(|v| v.value == "malicious").unwrap();
        assert_eq!((mal.rows, mal.unique), (1, 1));
        assert!(
            platforms
                .iter()
                .any(|v| v.value == "(none)" && v.rows == 2 && v.unique == 1)
        );
    }

    #[test]
    fn hash_collisions_keep_texts_apart() {
        // Every text under one hash value: the collision chain must still tell them apart.
        let src: Arc<str> = "x".into();
        let mut t = DedupTable::default();
        for i in 0..1000 {
            t.insert_hashed(&rec(&format!("cmd {}", i % 100), None, None, &src), 7)
                .unwrap();
        }
        assert_eq!(t.len(), 100);
        assert!((0..100).all(|i| t.count(i) == 10));
    }
}
