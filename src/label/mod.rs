//! Stage 3: label the selected candidates with an LLM (or an oracle), benign or malicious.
//!
//! Only benign verdicts on lines that do not look like prompt injection feed augmentation;
//! everything else goes to a review file. The pieces:
//! - [`Labeler`]: the swappable source of answers, [`LlmLabeler`] (any OpenAI-compatible
//!   chat-completions endpoint) or [`OracleLabeler`] (known labels, optional noise).
//! - [`label_candidates`] / [`label_candidates_blocking`]: the engine (bounded concurrency,
//!   budget, persistent cache, self-consistency, strict parsing, injection flags), callable
//!   from other stages without the CLI.
//! - [`label_file`]: a Parquet file of candidates in, three Parquet files out (what
//!   `longtail label` runs), with the labeler a [`LabelerSpec`] describes.
//! - Scored verdicts (protocols `scored` and `direct`): the verdict asked as one constrained
//!   token whose logprobs give `p_benign` ([`read_logprobs`]); benign only at or above a
//!   threshold, else `uncertain` or `malicious`; the threshold fitted on a labeled sample by
//!   [`calibrate`] (fixed-sequence testing on Clopper-Pearson bounds).

mod cache;
mod calibrate;
mod engine;
mod file;
mod injection;
mod llm;
mod logprobs;
mod oracle;
mod prompt;
mod verdict;

pub use cache::{AnswerCache, CacheKey, CacheLoad};
pub use calibrate::{
    CALIBRATION_FORMAT, Calibration, CalibrationRequest, CalibrationScope, ThresholdRow, calibrate,
    clopper_pearson, require_label_column,
};
pub use engine::{LabelConfig, LabelResult, label_candidates, label_candidates_blocking};
pub use file::{
    CachePlace, LabelFileOutcome, LabelFileRequest, LabelerChoice, LabelerSpec, OUTPUT_COLUMNS,
    build_labeler, label_file, output_batch,
};
pub use injection::injection_reason;
pub use llm::{ApiKey, LlmConfig, LlmLabeler};
pub use logprobs::{LogprobReading, read_logprobs, token_label, word_label};
pub use oracle::{OracleConfig, OracleLabeler};
pub use prompt::{
    BUILTIN_PROMPTS, DEFAULT_PROMPT, DEFAULT_PROMPT_VERSION, DIRECT_QUESTION, Prompt,
    RenderedPrompt, VERDICT_QUESTION,
};
pub use verdict::{BENIGN_TOKEN, MALICIOUS_TOKEN, ParsedAnswer, Verdict, decide, parse_answer};

use crate::vocab::LabelProtocol;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

/// A boxed future, so [`Labeler`] stays usable as `&dyn Labeler`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One answer from a labeler, as received (and as cached). The fields of the scored
/// protocols are left out of the cache line when empty, so text-protocol lines are written as
/// before and lines written before them load unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The model's full text: explanation and verdict token (protocol `scored`: the
    /// explanation; `direct`: empty).
    pub text: String,
    /// `stop`, `length` (truncated), ... as the server said; `None` if it did not say.
    pub finish_reason: Option<String>,
    /// Total tokens of the exchange (the server's `usage`, else estimated as chars / 4).
    pub tokens: u64,
    /// Wall time of the request that produced this answer.
    pub latency_ms: u64,
    /// HTTP requests made for this answer (1 = no retry).
    pub attempts: u32,
    /// The answer-length limit it was asked under (a truncated answer is asked again when the
    /// limit has been raised since).
    #[serde(default)]
    pub max_answer_tokens: Option<u32>,
    /// Protocols `scored` / `direct`: what the verdict turn answered (`benign`, `ben`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict_text: Option<String>,
    /// P(benign) / (P(benign) + P(malicious)) from the verdict token's logprobs; `None` when
    /// the server gave no logprobs (the samples then vote) or no label among its top tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_benign: Option<f64>,
    /// P(benign) + P(malicious) where it was read: how much of the model's probability the
    /// two labels hold (`Some(0)`: logprobs without a label; `None`: no logprobs at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_mass: Option<f64>,
}

impl Answer {
    /// A text answer without any of the scored protocols' fields.
    pub fn text(text: impl Into<String>, finish_reason: Option<String>) -> Answer {
        Answer {
            text: text.into(),
            finish_reason,
            tokens: 0,
            latency_ms: 0,
            attempts: 0,
            max_answer_tokens: None,
            verdict_text: None,
            p_benign: None,
            label_mass: None,
        }
    }

    /// Whether this answer comes from a verdict turn (protocols `scored` and `direct`).
    pub fn is_scored(&self) -> bool {
        self.verdict_text.is_some() || self.p_benign.is_some() || self.label_mass.is_some()
    }
}

/// Who answers: identifies answers in outputs and in the cache key.
#[derive(Clone, Debug)]
pub struct LabelerInfo {
    /// Endpoint URL without credentials (`oracle:<file>` for the oracle).
    pub endpoint: String,
    pub model: String,
    pub prompt_version: String,
    pub prompt_fingerprint: String,
    /// Whether answers are worth caching (remote, slow, paid).
    pub cacheable: bool,
    /// Answer-length limit sent with each request, if any.
    pub max_answer_tokens: Option<u32>,
    /// How the verdict is asked (`text` for the oracle).
    pub protocol: LabelProtocol,
}

/// Why a labeler gave no answer.
#[derive(Clone, Debug)]
pub enum AskError {
    /// The run cannot succeed (bad key, bad request, unknown model): stop everything.
    Fatal(String),
    /// This command got no answer after `attempts` requests; others may still succeed.
    Failed { message: String, attempts: u32 },
    /// The budget ran out before this request.
    Budget(String),
}

/// A source of verdicts: the LLM client, the oracle, or a test double.
pub trait Labeler: Send + Sync {
    fn info(&self) -> &LabelerInfo;

    /// Called once with every unique command before any [`Labeler::ask`] (the oracle's noise
    /// model needs the whole candidate set).
    fn prepare(&self, _cmds: &[String]) -> crate::Result<()> {
        Ok(())
    }

    /// One answer for `cmd`; `sample` numbers the self-consistency samples from 0.
    fn ask<'a>(
        &'a self,
        cmd: &'a str,
        sample: u32,
        budget: &'a Budget,
    ) -> BoxFuture<'a, Result<Answer, AskError>>;
}

/// Request and token budget shared by all concurrent requests of a run.
///
/// Checked before each HTTP request (retries included); requests already in flight finish,
/// so the token count can overshoot by at most `concurrency` answers.
#[derive(Debug, Default)]
pub struct Budget {
    max_requests: Option<u64>,
    max_tokens: Option<u64>,
    requests: AtomicU64,
    tokens: AtomicU64,
}

impl Budget {
    pub fn new(max_requests: Option<u64>, max_tokens: Option<u64>) -> Budget {
        Budget {
            max_requests,
            max_tokens,
            ..Budget::default()
        }
    }

    pub fn unlimited() -> Budget {
        Budget::default()
    }

    /// Take one request from the budget, or say why not.
    pub fn try_request(&self) -> Result<(), String> {
        if let Some(max) = self.max_tokens
            && self.tokens.load(Ordering::SeqCst) >= max
        {
            return Err(format!("token budget exhausted (--max-tokens {max})"));
        }
        if let Some(max) = self.max_requests {
            self.requests
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < max).then_some(n + 1)
                })
                .map_err(|_| format!("request budget exhausted (--max-requests {max})"))?;
        } else {
            self.requests.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    pub fn add_tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::SeqCst);
    }

    pub fn requests_used(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn tokens_used(&self) -> u64 {
        self.tokens.load(Ordering::SeqCst)
    }
}
