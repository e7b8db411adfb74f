//! `longtail label`: the labeler's options, turned into a [`LabelerSpec`] and a
//! [`LabelFileRequest`].

use longtail::Globals;
use longtail::Result;
use longtail::label::{
    ApiKey, CachePlace, LabelConfig, LabelFileRequest, LabelerChoice, LabelerSpec, build_labeler,
    label_file,
};
use std::path::PathBuf;

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
    pub labeler: LabelerChoice,
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

impl LabelArgs {
    fn spec(&self) -> LabelerSpec {
        LabelerSpec {
            choice: self.labeler.clone(),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            prompt: self.prompt.clone(),
            samples: self.samples,
            temperature: self.temperature,
            max_answer_tokens: self.max_answer_tokens,
            timeout_s: self.timeout,
            retries: self.retries,
            backoff_ms: self.backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
            max_retry_after_s: self.max_retry_after,
            oracle_benign_precision: self.oracle_benign_precision,
            oracle_malicious_precision: self.oracle_malicious_precision,
        }
    }

    fn request(&self) -> LabelFileRequest {
        LabelFileRequest {
            input: self.input.clone(),
            out: self.out.clone(),
            augment: self.augment.clone(),
            review: self.review.clone(),
            column: self.column.clone(),
            cache: match (&self.cache, self.no_cache) {
                (_, true) => CachePlace::Off,
                (Some(p), false) => CachePlace::At(p.clone()),
                (None, false) => CachePlace::BesideOutput,
            },
            run: LabelConfig {
                samples: self.samples,
                concurrency: self.concurrency as usize,
                max_requests: self.max_requests,
                max_tokens: self.max_tokens,
                cache: None,
                max_command_chars: self.max_command_chars,
                max_consecutive_failures: Some(self.max_consecutive_failures.max(1)),
                progress: true,
            },
        }
    }
}

pub fn run(args: &LabelArgs, globals: &Globals, out: &mut super::Output) -> Result<()> {
    let request = args.request();
    // Paths are checked before the labeler is built: a clash is reported without a server.
    request.check_paths()?;
    let labeler = build_labeler(&args.spec(), globals.seed)?;
    let done = label_file(&request, labeler.as_ref())?;
    out.print(&done.summary)?;
    out.print(&format!(
        "wrote {} ({} rows), {} ({} rows for augmentation), {} ({} rows for review)\n",
        args.out.display(),
        done.rows,
        done.augment.display(),
        done.augment_rows,
        done.review.display(),
        done.review_rows
    ))?;
    let unfinished = done.unfinished();
    if unfinished > 0 {
        tracing::warn!(
            "{unfinished} row(s) have no verdict (error or skipped); rerun the same command to \
             ask only for those{}",
            done.cache.as_ref().map_or(String::new(), |c| format!(
                " (answers are cached in {})",
                c.display()
            ))
        );
    }
    Ok(())
}
