//! Labeling a file: Parquet candidates in; all rows, benign-for-augmentation rows and rows
//! for review out ([`label_file`]), and the labeler a [`LabelerSpec`] describes.

use super::engine::{LabelConfig, LabelResult, label_candidates};
use super::llm::{ApiKey, LlmConfig, LlmLabeler};
use super::oracle::{OracleConfig, OracleLabeler};
use super::prompt::Prompt;
use super::{Labeler, Verdict};
use crate::error::{Context, Error, Result};
use crate::io::table;
use crate::vocab::{Label, LabelProtocol, ServerApi};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Columns this stage adds; input columns of the same names are replaced.
pub const OUTPUT_COLUMNS: [&str; 11] = [
    "verdict",
    "p_benign",
    "explanation",
    "model",
    "prompt_version",
    "latency_ms",
    "tokens",
    "attempts",
    "error",
    "flag",
    "flag_reason",
];

/// Who answers.
#[derive(Clone, Debug, PartialEq)]
pub enum LabelerChoice {
    /// An OpenAI-compatible chat-completions endpoint.
    Llm,
    /// Known labels from a table with `cmd` and `label` (for experiments).
    Oracle(PathBuf),
}

impl std::str::FromStr for LabelerChoice {
    type Err = String;
    /// `llm` or `oracle:FILE`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if let Some(path) = text.strip_prefix("oracle:") {
            if path.is_empty() {
                return Err("oracle:FILE needs a file name after `oracle:`".into());
            }
            return Ok(LabelerChoice::Oracle(PathBuf::from(path)));
        }
        if text == "llm" {
            return Ok(LabelerChoice::Llm);
        }
        Err(format!("{text:?}: expected `llm` or `oracle:FILE`"))
    }
}

/// Everything needed to build a labeler (the `longtail label` options that are not about
/// files or the run).
#[derive(Clone, Debug)]
pub struct LabelerSpec {
    pub choice: LabelerChoice,
    pub base_url: String,
    /// Required for the LLM (llama-server accepts any name).
    pub model: Option<String>,
    pub api_key: Option<ApiKey>,
    /// A built-in prompt name (`v1`, `v2`, `v3`) or a prompt template file; `None`: the
    /// built-in default prompt.
    pub prompt: Option<PathBuf>,
    /// How the verdict is asked (`text`, `scored`, `direct`).
    pub protocol: LabelProtocol,
    /// The server, for the verdict token's constraint field.
    pub server: ServerApi,
    /// Top candidates asked per position of the verdict token.
    pub top_logprobs: u32,
    /// Self-consistency samples (the temperature defaults to 0.7 with several, else 0).
    pub samples: u32,
    pub temperature: Option<f32>,
    pub max_answer_tokens: u32,
    pub timeout_s: f64,
    pub retries: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub max_retry_after_s: f64,
    /// Oracle noise: target precision of its benign / malicious verdicts, in (0, 1].
    pub oracle_benign_precision: Option<f64>,
    pub oracle_malicious_precision: Option<f64>,
}

fn seconds(name: &str, value: f64) -> Result<Duration> {
    if value.is_finite() && value > 0.0 && value < 1e7 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Error::input(format!(
            "{name} must be a positive number of seconds, got {value}"
        )))
    }
}

/// Build the labeler `spec` describes; `seed` drives the oracle's noise and the LLM's sampling.
pub fn build_labeler(spec: &LabelerSpec, seed: u64) -> Result<Box<dyn Labeler>> {
    if let LabelerChoice::Oracle(path) = &spec.choice {
        if spec.protocol != LabelProtocol::Text {
            return Err(Error::input(format!(
                "--protocol {} needs an LLM: the oracle answers with known labels, which have \
                 no score",
                spec.protocol
            )));
        }
        return Ok(Box::new(OracleLabeler::load(&OracleConfig {
            path: path.clone(),
            benign_precision: spec.oracle_benign_precision,
            malicious_precision: spec.oracle_malicious_precision,
            seed,
        })?));
    }
    if spec.oracle_benign_precision.is_some() || spec.oracle_malicious_precision.is_some() {
        return Err(Error::input(
            "--oracle-*-precision only applies with --labeler oracle:FILE",
        ));
    }
    let model = spec.model.clone().ok_or_else(|| {
        Error::input(
            "no model name: pass --model or set LONGTAIL_LLM_MODEL (llama-server accepts any name)",
        )
    })?;
    if let Some(t) = spec.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(Error::input(format!(
            "--temperature must be in [0, 2], got {t}"
        )));
    }
    let mut cfg = LlmConfig::new(&spec.base_url, model);
    cfg.api_key = spec.api_key.clone();
    cfg.prompt = match &spec.prompt {
        Some(spec) => Prompt::load(spec)?,
        None => Prompt::default_prompt(),
    };
    cfg.protocol = spec.protocol;
    cfg.server = spec.server;
    cfg.top_logprobs = spec.top_logprobs;
    cfg.timeout = seconds("--timeout", spec.timeout_s)?;
    cfg.retries = spec.retries;
    cfg.backoff_base = Duration::from_millis(spec.backoff_ms);
    cfg.backoff_max = Duration::from_millis(spec.max_backoff_ms.max(spec.backoff_ms));
    cfg.max_retry_after = seconds("--max-retry-after", spec.max_retry_after_s)?;
    cfg.temperature = Some(
        spec.temperature
            .unwrap_or(if spec.samples > 1 { 0.7 } else { 0.0 }),
    );
    cfg.max_answer_tokens = Some(spec.max_answer_tokens);
    cfg.seed = Some(seed);
    Ok(Box::new(LlmLabeler::new(cfg)?))
}

/// Where the answer cache of [`label_file`] lives.
#[derive(Clone, Debug, PartialEq)]
pub enum CachePlace {
    /// OUT with extension `.cache.jsonl`.
    BesideOutput,
    At(PathBuf),
    /// No cache.
    Off,
}

/// What [`label_file`] reads and writes.
#[derive(Clone, Debug)]
pub struct LabelFileRequest {
    /// Parquet candidates (e.g. from `longtail select`); other columns are carried through.
    pub input: PathBuf,
    /// Every input row plus the label columns.
    pub out: PathBuf,
    /// Benign rows for augmentation; `None`: OUT with extension `.benign.parquet`.
    pub augment: Option<PathBuf>,
    /// Rows for an analyst; `None`: OUT with extension `.review.parquet`.
    pub review: Option<PathBuf>,
    /// The command-line column of INPUT.
    pub column: String,
    pub cache: CachePlace,
    /// The run's settings; its `cache` is set from [`LabelFileRequest::cache`].
    pub run: LabelConfig,
}

/// What [`label_file`] wrote.
#[derive(Clone, Debug)]
pub struct LabelFileOutcome {
    pub results: Vec<LabelResult>,
    /// The input's `label` column per row (empty without one): for the summary and
    /// calibration.
    pub truth: Vec<Option<Label>>,
    pub augment: PathBuf,
    pub review: PathBuf,
    pub cache: Option<PathBuf>,
    pub rows: usize,
    pub augment_rows: usize,
    pub review_rows: usize,
    /// Verdict and flag counts, and (with a `label` column in the input) the labeler's
    /// precision against it: the lines `longtail label` prints.
    pub summary: String,
}

impl LabelFileOutcome {
    /// Rows without a verdict (error or skipped): a rerun asks only for those.
    pub fn unfinished(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Error | Verdict::Skipped))
            .count()
    }
}

/// Where the three outputs and the cache go; two of them on one file is an input error.
fn output_paths(req: &LabelFileRequest) -> Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    let augment = req
        .augment
        .clone()
        .unwrap_or_else(|| req.out.with_extension("benign.parquet"));
    let review = req
        .review
        .clone()
        .unwrap_or_else(|| req.out.with_extension("review.parquet"));
    let cache = match &req.cache {
        CachePlace::BesideOutput => Some(req.out.with_extension("cache.jsonl")),
        CachePlace::At(p) => Some(p.clone()),
        CachePlace::Off => None,
    };
    let mut all: Vec<(&str, &Path)> = vec![
        ("INPUT", &req.input),
        ("--out", &req.out),
        ("--augment", &augment),
        ("--review", &review),
    ];
    if let Some(c) = &cache {
        all.push(("--cache", c));
    }
    for (i, (a, pa)) in all.iter().enumerate() {
        for (b, pb) in &all[i + 1..] {
            if pa == pb {
                return Err(Error::input(format!(
                    "{a} and {b} are the same file ({}); give them different names",
                    pa.display()
                )));
            }
        }
    }
    Ok((augment, review, cache))
}

impl LabelFileRequest {
    /// Two outputs (or an output and the input) on one file is an input error.
    pub fn check_paths(&self) -> Result<()> {
        output_paths(self).map(|_| ())
    }
}

/// Label every row of `req.input` with `labeler` and write the three outputs. Nothing is
/// written when no line got an answer because every request failed (a dead server).
pub fn label_file(req: &LabelFileRequest, labeler: &dyn Labeler) -> Result<LabelFileOutcome> {
    let (augment_path, review_path, cache) = output_paths(req)?;
    let input = read_input(&req.input)?;
    let cmds: Vec<String> = table::strings(&input, &req.column, &req.input)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let cfg = LabelConfig {
        cache: cache.clone(),
        ..req.run.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .runtime_ctx(|| "cannot start the async runtime")?;
    let results = runtime.block_on(label_candidates(&cmds, labeler, &cfg))?;

    let answered = results
        .iter()
        .filter(|r| !matches!(r.verdict, Verdict::Error | Verdict::Skipped));
    // Every request failed (not merely empty lines or an unknown oracle label): a dead server.
    let failed_requests = |r: &&LabelResult| r.verdict == Verdict::Error && r.attempts > 0;
    if answered.count() == 0 && results.iter().any(|r| failed_requests(&r)) {
        let first = results
            .iter()
            .filter(failed_requests)
            .find_map(|r| r.error.clone())
            .unwrap_or_default();
        return Err(Error::runtime(format!(
            "no command line got an answer (first error: {first}); nothing written. \
             Check that the server at --base-url is up"
        )));
    }

    let batch = output_batch(&input, &results)?;
    let augment_mask: BooleanArray = results
        .iter()
        .map(|r| Some(r.feeds_augmentation()))
        .collect();
    let review_mask: BooleanArray = results.iter().map(|r| Some(r.needs_review())).collect();
    let augment = arrow::compute::filter_record_batch(&batch, &augment_mask)
        .runtime_ctx(|| "selecting augmentation rows")?;
    let review = arrow::compute::filter_record_batch(&batch, &review_mask)
        .runtime_ctx(|| "selecting review rows")?;
    table::write_parquet(&req.out, &batch)?;
    table::write_parquet(&augment_path, &augment)?;
    table::write_parquet(&review_path, &review)?;
    let truth: Vec<Option<Label>> = if table::has_column(&input, "label") {
        table::strings(&input, "label", &req.input)?
            .iter()
            .map(|l| Label::parse_opt(l.as_deref()))
            .collect()
    } else {
        Vec::new()
    };
    let summary = summary(&results, &truth);
    Ok(LabelFileOutcome {
        results,
        truth,
        augment: augment_path,
        review: review_path,
        cache,
        rows: batch.num_rows(),
        augment_rows: augment.num_rows(),
        review_rows: review.num_rows(),
        summary,
    })
}

fn read_input(path: &Path) -> Result<RecordBatch> {
    let reader = table::open_parquet(path, 8192)?;
    let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
    let batches: Vec<RecordBatch> = reader
        .map(|b| b.input_ctx(|| format!("corrupt data in {}", path.display())))
        .collect::<Result<_>>()?;
    arrow::compute::concat_batches(&schema, &batches)
        .input_ctx(|| format!("cannot combine the batches of {}", path.display()))
}

/// The input's columns (minus any this stage writes) followed by the label columns.
pub fn output_batch(input: &RecordBatch, results: &[LabelResult]) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in input.schema().fields().iter().zip(input.columns()) {
        if OUTPUT_COLUMNS.contains(&field.name().as_str()) {
            tracing::warn!(
                "input column `{}` is replaced by this stage's",
                field.name()
            );
            continue;
        }
        fields.push(field.as_ref().clone());
        columns.push(column.clone());
    }
    let text = |f: &dyn Fn(&LabelResult) -> Option<&str>| -> ArrayRef {
        Arc::new(results.iter().map(f).collect::<StringArray>())
    };
    let added: Vec<(&str, DataType, bool, ArrayRef)> = vec![
        (
            "verdict",
            DataType::Utf8,
            false,
            text(&|r| Some(r.verdict.as_str())),
        ),
        (
            "p_benign",
            DataType::Float64,
            true,
            Arc::new(results.iter().map(|r| r.p_benign).collect::<Float64Array>()),
        ),
        (
            "explanation",
            DataType::Utf8,
            true,
            text(&|r| r.explanation.as_deref()),
        ),
        (
            "model",
            DataType::Utf8,
            false,
            text(&|r| Some(r.model.as_str())),
        ),
        (
            "prompt_version",
            DataType::Utf8,
            false,
            text(&|r| Some(r.prompt_version.as_str())),
        ),
        (
            "latency_ms",
            DataType::UInt64,
            false,
            Arc::new(
                results
                    .iter()
                    .map(|r| r.latency_ms)
                    .collect::<UInt64Array>(),
            ),
        ),
        (
            "tokens",
            DataType::UInt64,
            false,
            Arc::new(results.iter().map(|r| r.tokens).collect::<UInt64Array>()),
        ),
        (
            "attempts",
            DataType::UInt32,
            false,
            Arc::new(results.iter().map(|r| r.attempts).collect::<UInt32Array>()),
        ),
        ("error", DataType::Utf8, true, text(&|r| r.error.as_deref())),
        (
            "flag",
            DataType::Utf8,
            true,
            Arc::new(
                results
                    .iter()
                    .map(|r| r.flag_text())
                    .collect::<StringArray>(),
            ),
        ),
        (
            "flag_reason",
            DataType::Utf8,
            true,
            text(&|r| r.flag_reason.as_deref()),
        ),
    ];
    for (name, ty, nullable, column) in added {
        fields.push(Field::new(name, ty, nullable));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .runtime_ctx(|| "assembling the output table")
}

fn summary(results: &[LabelResult], truth: &[Option<Label>]) -> String {
    let mut out = String::new();
    let mut by_verdict: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_flag: BTreeMap<&str, usize> = BTreeMap::new();
    for r in results {
        *by_verdict.entry(r.verdict.as_str()).or_default() += 1;
        for f in &r.flags {
            *by_flag.entry(f.as_str()).or_default() += 1;
        }
    }
    let list = |m: &BTreeMap<&str, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "rows: {}; verdicts: {}",
        results.len(),
        list(&by_verdict)
    );
    if !by_flag.is_empty() {
        let _ = writeln!(out, "flagged: {}", list(&by_flag));
    }
    // With ground truth in the input (a `label` column), measure the labeler.
    if truth.is_empty() {
        return out;
    }
    let mut counts: BTreeMap<(Verdict, Label), usize> = BTreeMap::new();
    for (r, l) in results.iter().zip(truth) {
        if let Some(t) = l {
            *counts.entry((r.verdict, *t)).or_default() += 1;
        }
    }
    let get = |v, t| counts.get(&(v, t)).copied().unwrap_or(0);
    let ratio = |good: usize, all: usize| {
        if all == 0 {
            "n/a".to_string()
        } else {
            format!("{:.3} ({good}/{all})", good as f64 / all as f64)
        }
    };
    let (aug_good, aug_all) = results
        .iter()
        .zip(truth)
        .filter(|(r, _)| r.feeds_augmentation())
        .fold((0, 0), |(good, all), (_, l)| match l {
            Some(Label::Benign) => (good + 1, all + 1),
            Some(Label::Malicious) => (good, all + 1),
            None => (good, all),
        });
    let b = |v| get(v, Label::Benign);
    let m = |v| get(v, Label::Malicious);
    let _ = writeln!(
        out,
        "against the input's `label` column: benign-verdict precision {}, malicious-verdict \
         precision {}, augmentation precision {}; unparsed on known labels: {}; uncertain: {} \
         benign, {} malicious",
        ratio(b(Verdict::Benign), b(Verdict::Benign) + m(Verdict::Benign)),
        ratio(
            m(Verdict::Malicious),
            b(Verdict::Malicious) + m(Verdict::Malicious)
        ),
        ratio(aug_good, aug_all),
        b(Verdict::Unparsed) + m(Verdict::Unparsed),
        b(Verdict::Uncertain),
        m(Verdict::Uncertain)
    );
    out
}
