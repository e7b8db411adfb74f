//! `longtail label`: Parquet candidates in; all rows, benign-for-augmentation rows and rows
//! for review out.

use super::engine::{LabelConfig, LabelResult, label_candidates};
use super::llm::{ApiKey, LlmConfig, LlmLabeler};
use super::oracle::{KnownLabel, OracleConfig, OracleLabeler};
use super::prompt::Prompt;
use super::{Labeler, Verdict};
use crate::error::{Context, Error, Result};
use crate::{Globals, table};
use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Columns this stage adds; input columns of the same names are replaced.
pub const OUTPUT_COLUMNS: [&str; 10] = [
    "verdict",
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

/// Label candidates benign or malicious with an LLM (any OpenAI-compatible endpoint) or an
/// oracle. Writes three Parquet files: OUT (every row), the augmentation file (benign verdicts
/// on unflagged lines: the only rows that may join training data) and the review file
/// (malicious, unparsed, or flagged as injection / disagreement).
///
/// Example against a local llama-server:
///   longtail label candidates.parquet -o labels.parquet
///   --base-url http://127.0.0.1:8080/v1 --model qwen2.5-coder-1.5b-instruct
/// (start that server with scripts/llm_server.sh qwen, after scripts/setup_llm.sh)
#[derive(clap::Args, Debug)]
pub struct LabelArgs {
    /// Labeling candidates: Parquet from `longtail select` with a command-line column; other
    /// columns (count, score, label...) are carried through to the outputs.
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// Output Parquet with every input row plus verdict, explanation, model, prompt_version,
    /// latency_ms, tokens, attempts, error, flag, flag_reason.
    #[arg(short, long, value_name = "OUT")]
    pub out: PathBuf,
    /// Benign rows for augmentation (benign verdict, no flag). Default: OUT with extension
    /// .benign.parquet.
    #[arg(long, value_name = "FILE")]
    pub augment: Option<PathBuf>,
    /// Rows for an analyst: malicious, unparsed, or flagged. Default: OUT with extension
    /// .review.parquet.
    #[arg(long, value_name = "FILE")]
    pub review: Option<PathBuf>,
    /// Name of the command-line column in INPUT.
    #[arg(long, default_value = "cmd")]
    pub column: String,
    /// Who answers: `llm` (an OpenAI-compatible chat-completions endpoint) or `oracle:FILE`
    /// (known labels from a Parquet or JSONL file with `cmd` and `label`, for experiments).
    #[arg(long, default_value = "llm", value_name = "llm|oracle:FILE")]
    pub labeler: String,
    /// Base URL of the OpenAI-compatible API (OpenAI, vLLM, Ollama's /v1, llama-server's /v1).
    #[arg(
        long,
        env = "LONGTAIL_LLM_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub base_url: String,
    /// Model name sent to the endpoint (llama-server accepts any name).
    #[arg(long, env = "LONGTAIL_LLM_MODEL")]
    pub model: Option<String>,
    /// API key, sent as a Bearer token; never logged or written. Prefer the environment
    /// variable: a command-line flag is visible to other users in `ps`.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<ApiKey>,
    /// Prompt template file (format: configs/prompts/v2.txt); its version, FILE-STEM@HASH, goes
    /// into the outputs and the cache key. Default: the built-in v2 prompt (configs/prompts/v1.txt
    /// is the earlier one).
    #[arg(long, value_name = "FILE")]
    pub prompt: Option<PathBuf>,
    /// Self-consistency: answers per command; a line is benign only if all of them say so.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub samples: u32,
    /// Sampling temperature. Default: 0 with one sample, 0.7 with several (they must differ).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Answer-length limit per request; a truncated answer is `unparsed`, never benign.
    #[arg(long, default_value_t = 1024)]
    pub max_answer_tokens: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,
    /// Time limit of one request, in seconds (a small local model on a busy CPU needs more).
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub timeout: f64,
    /// Retries per answer after a timeout, a 5xx, a 429 or a malformed response.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// First retry delay in milliseconds; doubles each retry, with jitter.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "MS")]
    pub max_backoff_ms: u64,
    /// Longest server-requested wait (429/503 Retry-After) honoured, in seconds.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub max_retry_after: f64,
    /// Stop asking after this many HTTP requests (retries count); the rest are `skipped`
    /// and a rerun with a larger budget picks them up from the cache.
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,
    /// Stop asking once this many tokens (prompt + answer) have been used.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Answer cache (append-only JSONL, one fsync'd line per answer), keyed by endpoint,
    /// model, prompt version and command: reruns and killed runs resume without asking again.
    /// Default: OUT with extension .cache.jsonl.
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    /// Do not read or write an answer cache.
    #[arg(long, conflicts_with = "cache")]
    pub no_cache: bool,
    /// Longer command lines are not sent (verdict `error`).
    #[arg(long, default_value_t = 20_000, value_name = "CHARS")]
    pub max_command_chars: usize,
    /// Stop the run when this many commands in a row got no answer (the server looks down).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub max_consecutive_failures: usize,
    /// Oracle noise: share of its benign verdicts that are truly benign, in (0, 1].
    #[arg(long, value_name = "P")]
    pub oracle_benign_precision: Option<f64>,
    /// Oracle noise: share of its malicious verdicts that are truly malicious, in (0, 1].
    #[arg(long, value_name = "Q")]
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

/// Build the labeler the arguments ask for.
pub fn build_labeler(args: &LabelArgs, globals: &Globals) -> Result<Box<dyn Labeler>> {
    if let Some(path) = args.labeler.strip_prefix("oracle:") {
        if path.is_empty() {
            return Err(Error::input(
                "--labeler oracle:FILE needs a file name after `oracle:`",
            ));
        }
        return Ok(Box::new(OracleLabeler::load(&OracleConfig {
            path: PathBuf::from(path),
            benign_precision: args.oracle_benign_precision,
            malicious_precision: args.oracle_malicious_precision,
            seed: globals.seed,
        })?));
    }
    if args.labeler != "llm" {
        return Err(Error::input(format!(
            "--labeler {:?}: expected `llm` or `oracle:FILE`",
            args.labeler
        )));
    }
    if args.oracle_benign_precision.is_some() || args.oracle_malicious_precision.is_some() {
        return Err(Error::input(
            "--oracle-*-precision only applies with --labeler oracle:FILE",
        ));
    }
    let model = args.model.clone().ok_or_else(|| {
        Error::input(
            "no model name: pass --model or set LONGTAIL_LLM_MODEL (llama-server accepts any name)",
        )
    })?;
    if let Some(t) = args.temperature
        && !(t.is_finite() && (0.0..=2.0).contains(&t))
    {
        return Err(Error::input(format!(
            "--temperature must be in [0, 2], got {t}"
        )));
    }
    let mut cfg = LlmConfig::new(&args.base_url, model);
    cfg.api_key = args.api_key.clone();
    cfg.prompt = match &args.prompt {
        Some(path) => Prompt::from_file(path)?,
        None => Prompt::default_prompt(),
    };
    cfg.timeout = seconds("--timeout", args.timeout)?;
    cfg.retries = args.retries;
    cfg.backoff_base = Duration::from_millis(args.backoff_ms);
    cfg.backoff_max = Duration::from_millis(args.max_backoff_ms.max(args.backoff_ms));
    cfg.max_retry_after = seconds("--max-retry-after", args.max_retry_after)?;
    cfg.temperature = Some(
        args.temperature
            .unwrap_or(if args.samples > 1 { 0.7 } else { 0.0 }),
    );
    cfg.max_answer_tokens = Some(args.max_answer_tokens);
    cfg.seed = Some(globals.seed);
    Ok(Box::new(LlmLabeler::new(cfg)?))
}

/// Where the three outputs and the cache go.
fn output_paths(args: &LabelArgs) -> Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    let augment = args
        .augment
        .clone()
        .unwrap_or_else(|| args.out.with_extension("benign.parquet"));
    let review = args
        .review
        .clone()
        .unwrap_or_else(|| args.out.with_extension("review.parquet"));
    let cache = (!args.no_cache).then(|| {
        args.cache
            .clone()
            .unwrap_or_else(|| args.out.with_extension("cache.jsonl"))
    });
    let mut all: Vec<(&str, &Path)> = vec![
        ("INPUT", &args.input),
        ("--out", &args.out),
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

/// The `longtail label` command.
pub fn run(args: &LabelArgs, globals: &Globals) -> Result<()> {
    let (augment_path, review_path, cache) = output_paths(args)?;
    let labeler = build_labeler(args, globals)?;
    let input = read_input(&args.input)?;
    let cmds: Vec<String> = table::strings(&input, &args.column, &args.input)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let cfg = LabelConfig {
        samples: args.samples,
        concurrency: args.concurrency as usize,
        max_requests: args.max_requests,
        max_tokens: args.max_tokens,
        cache,
        max_command_chars: args.max_command_chars,
        max_consecutive_failures: Some(args.max_consecutive_failures.max(1)),
        progress: true,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .runtime_ctx(|| "cannot start the async runtime")?;
    let results = runtime.block_on(label_candidates(&cmds, labeler.as_ref(), &cfg))?;

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
    table::write_parquet(&args.out, &batch)?;
    table::write_parquet(&augment_path, &augment)?;
    table::write_parquet(&review_path, &review)?;

    print_summary(&results, &input, &args.input);
    println!(
        "wrote {} ({} rows), {} ({} rows for augmentation), {} ({} rows for review)",
        args.out.display(),
        batch.num_rows(),
        augment_path.display(),
        augment.num_rows(),
        review_path.display(),
        review.num_rows()
    );
    let unfinished = results
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Error | Verdict::Skipped))
        .count();
    if unfinished > 0 {
        tracing::warn!(
            "{unfinished} row(s) have no verdict (error or skipped); rerun the same command to \
             ask only for those{}",
            cfg.cache.as_ref().map_or(String::new(), |c| format!(
                " (answers are cached in {})",
                c.display()
            ))
        );
    }
    Ok(())
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
        ("flag", DataType::Utf8, true, text(&|r| r.flag.as_deref())),
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

fn print_summary(results: &[LabelResult], input: &RecordBatch, input_path: &Path) {
    let mut by_verdict: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_flag: BTreeMap<&str, usize> = BTreeMap::new();
    for r in results {
        *by_verdict.entry(r.verdict.as_str()).or_default() += 1;
        for f in r.flag.iter().flat_map(|f| f.split(',')) {
            *by_flag.entry(f).or_default() += 1;
        }
    }
    let list = |m: &BTreeMap<&str, usize>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("rows: {}; verdicts: {}", results.len(), list(&by_verdict));
    if !by_flag.is_empty() {
        println!("flagged: {}", list(&by_flag));
    }
    // With ground truth in the input (a `label` column), measure the labeler.
    if !table::has_column(input, "label") {
        return;
    }
    let Ok(labels) = table::strings(input, "label", input_path) else {
        return;
    };
    let mut counts: BTreeMap<(Verdict, KnownLabel), usize> = BTreeMap::new();
    for (r, l) in results.iter().zip(&labels) {
        if let Some(truth) = l.as_deref().and_then(KnownLabel::parse) {
            *counts.entry((r.verdict, truth)).or_default() += 1;
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
        .zip(&labels)
        .filter(|(r, _)| r.feeds_augmentation())
        .fold((0, 0), |(good, all), (_, l)| {
            match l.as_deref().and_then(KnownLabel::parse) {
                Some(KnownLabel::Benign) => (good + 1, all + 1),
                Some(KnownLabel::Malicious) => (good, all + 1),
                None => (good, all),
            }
        });
    let b = |v| get(v, KnownLabel::Benign);
    let m = |v| get(v, KnownLabel::Malicious);
    println!(
        "against the input's `label` column: benign-verdict precision {}, malicious-verdict \
         precision {}, augmentation precision {}; unparsed on known labels: {}",
        ratio(b(Verdict::Benign), b(Verdict::Benign) + m(Verdict::Benign)),
        ratio(
            m(Verdict::Malicious),
            b(Verdict::Malicious) + m(Verdict::Malicious)
        ),
        ratio(aug_good, aug_all),
        b(Verdict::Unparsed) + m(Verdict::Unparsed)
    );
}
