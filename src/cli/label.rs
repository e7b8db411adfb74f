//! `longtail label`: the labeler's options, turned into a [`LabelerSpec`] and a
//! [`LabelFileRequest`].

use longtail::Globals;
use longtail::Result;
use longtail::label::{
    ApiKey, CachePlace, Calibration, CalibrationRequest, CalibrationScope, LabelConfig,
    LabelFileRequest, LabelerChoice, LabelerSpec, build_labeler, calibrate, label_file,
    require_label_column,
};
use longtail::vocab::{LabelProtocol, ServerApi};
use std::path::PathBuf;

/// Label candidates benign or malicious with an LLM (any OpenAI-compatible endpoint) or an
/// oracle. Writes three Parquet files: OUT (every row), the augmentation file (benign verdicts
/// on unflagged lines: the only rows that may join training data) and the review file
/// (malicious, uncertain, unparsed, or flagged as injection / disagreement).
///
/// With `--protocol scored` (or `direct`) the verdict is one constrained token scored by its
/// logprobs (`p_benign`): benign only at or above `--benign-threshold` (or the threshold of
/// `--calibration FILE`), else uncertain. `--calibrate FILE` fits that threshold on a labeled
/// sample.
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
    /// Output Parquet with every input row plus verdict, p_benign, explanation, model,
    /// prompt_version, latency_ms, tokens, attempts, error, flag, flag_reason.
    #[arg(short, long, value_name = "OUT")]
    pub out: PathBuf,
    /// Benign rows for augmentation (benign verdict, no flag). Default: OUT with extension
    /// .benign.parquet.
    #[arg(long, value_name = "FILE")]
    pub augment: Option<PathBuf>,
    /// Rows for an analyst: malicious, uncertain, unparsed, or flagged. Default: OUT with
    /// extension .review.parquet.
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
    /// The prompt, the scored verdict and its calibration (boxed: the flags are many).
    #[command(flatten)]
    pub ask: Box<AskArgs>,
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

/// `longtail label`'s options on how the model is asked (prompt, protocol, server) and how a
/// scored verdict is decided (threshold, calibration).
#[derive(clap::Args, Debug)]
pub struct AskArgs {
    /// A built-in prompt, `v1`, `v2` (the default) or `v3` (asks the verdict neutrally;
    /// unmeasured with a real model), or a prompt template file (format:
    /// configs/prompts/v2.txt) whose version, FILE-STEM@HASH, goes into the outputs and the
    /// cache key.
    #[arg(long, value_name = "v1|v2|v3|FILE")]
    pub prompt: Option<PathBuf>,
    /// How the verdict is asked: `text` (one answer ending in a verdict token, parsed
    /// strictly), `scored` (the explanation, then the verdict as one constrained token whose
    /// logprobs give p_benign) or `direct` (that token alone: ~50 prompt tokens + 1).
    #[arg(long, default_value = "text", value_parser = super::parse_enum::<LabelProtocol>)]
    pub protocol: LabelProtocol,
    /// The server, for the field constraining the verdict token: `llama` (grammar), `vllm`
    /// (structured_outputs / guided_choice), `openai` (none: OpenAI rejects unknown fields),
    /// `auto` (ask GET /v1/models once; api.openai.com is openai).
    #[arg(long, default_value = "auto", value_parser = super::parse_enum::<ServerApi>)]
    pub server: ServerApi,
    /// Top candidates asked per position of the verdict token (1 to 20).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top_logprobs: u32,
    /// Scored protocols: benign only if p_benign is at least T, in (0, 1); below it
    /// `uncertain` (`malicious` under 0.5). Default 0.5, the model's own choice (no
    /// abstention); prefer --calibration.
    #[arg(long, value_name = "T", conflicts_with = "calibration")]
    pub benign_threshold: Option<f64>,
    /// Take the benign threshold from a calibration file (`--calibrate`); refused unless it
    /// was fitted for the same model, prompt, protocol and --samples.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Fit the benign threshold on INPUT, which needs a `label` column: writes FILE (JSON, for
    /// --calibration), FILE.md (report) and FILE.svg (p_benign histogram). The outputs are
    /// written too, with --benign-threshold (default 0.5).
    #[arg(long, value_name = "FILE", conflicts_with = "calibration")]
    pub calibrate: Option<PathBuf>,
    /// --calibrate: the benign precision the threshold must reach (its lower bound must).
    #[arg(long, default_value_t = 0.98, value_name = "P", requires = "calibrate")]
    pub target_precision: f64,
    /// --calibrate: confidence of the bounds.
    #[arg(long, default_value_t = 0.95, value_name = "C", requires = "calibrate")]
    pub confidence: f64,
    /// --calibrate: share of malicious lines among the candidates the threshold will be used
    /// on. Default: the sample's own share.
    #[arg(long, value_name = "S", requires = "calibrate")]
    pub malicious_share: Option<f64>,
    /// --calibrate: lines a threshold must pass before testing starts.
    #[arg(long, default_value_t = 30, value_name = "N", requires = "calibrate")]
    pub min_support: usize,
}

impl LabelArgs {
    fn spec(&self) -> LabelerSpec {
        LabelerSpec {
            choice: self.labeler.clone(),
            base_url: self.base_url.clone(),
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            prompt: self.ask.prompt.clone(),
            protocol: self.ask.protocol,
            server: self.ask.server,
            top_logprobs: self.ask.top_logprobs,
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
                benign_threshold: self.ask.benign_threshold.unwrap_or(0.5),
            },
        }
    }
}

pub fn run(args: &LabelArgs, globals: &Globals, out: &mut super::Output) -> Result<()> {
    let mut request = args.request();
    // Paths are checked before the labeler is built: a clash is reported without a server.
    request.check_paths()?;
    let scored = args.ask.protocol.is_scored();
    if args.ask.calibrate.is_some() {
        if !scored {
            return Err(longtail::Error::input(
                "--calibrate needs a score: add --protocol scored (or direct)",
            ));
        }
        require_label_column(&args.input)?;
    }
    if !scored && (args.ask.benign_threshold.is_some() || args.ask.calibration.is_some()) {
        return Err(longtail::Error::input(
            "--benign-threshold and --calibration apply to scored verdicts: add --protocol \
             scored (or direct)",
        ));
    }
    let labeler = build_labeler(&args.spec(), globals.seed)?;
    let scope = CalibrationScope::of(labeler.info(), args.samples);
    if let Some(path) = &args.ask.calibration {
        request.run.benign_threshold = Calibration::load(path)?.threshold_for(&scope, path)?;
        tracing::info!(
            "benign threshold {} from {}",
            request.run.benign_threshold,
            path.display()
        );
    } else if scored && args.ask.benign_threshold.is_none() && args.ask.calibrate.is_none() {
        tracing::warn!(
            "no calibrated threshold: benign at p_benign >= 0.5 (the model's own choice, no \
             abstention); fit one with --calibrate on a labeled sample and pass --calibration"
        );
    }
    let done = label_file(&request, labeler.as_ref())?;
    out.print(&done.summary)?;
    if let Some(path) = &args.ask.calibrate {
        let req = CalibrationRequest {
            target_precision: args.ask.target_precision,
            confidence: args.ask.confidence,
            malicious_share: args.ask.malicious_share,
            min_support: args.ask.min_support,
        };
        let fitted = calibrate(&done.results, &done.truth, scope, &req)?;
        let written = fitted.write(path)?;
        out.print(&format!("{}\n", fitted.summary()))?;
        out.print(&format!(
            "wrote {}\n",
            written
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
    }
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
