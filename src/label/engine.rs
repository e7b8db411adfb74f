//! The labeling engine: unique commands, cache, bounded concurrency, budget, strict parsing,
//! self-consistency and injection flags. Independent of the CLI so other stages (the
//! experiment of issue 6) can call it directly.

use super::cache::{AnswerCache, CacheKey};
use super::injection::injection_reason;
use super::verdict::{BENIGN_TOKEN, MALICIOUS_TOKEN, Verdict, parse_answer};
use super::{Answer, AskError, Budget, Labeler, LabelerInfo};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

/// How a labeling run behaves (the labeler itself carries endpoint, model, prompt, retries).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabelConfig {
    /// Self-consistency samples per command; benign only if all of them say benign.
    pub samples: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Stop asking after this many HTTP requests (retries count).
    pub max_requests: Option<u64>,
    /// Stop asking once this many tokens have been used.
    pub max_tokens: Option<u64>,
    /// Append-only JSONL answer cache; `None` disables caching.
    pub cache: Option<PathBuf>,
    /// Longer command lines are not sent (verdict `error`).
    pub max_command_chars: usize,
    /// Stop the run (an error) after this many commands in a row got no answer despite
    /// retries: the server is down, and waiting out every retry of every line helps nobody.
    pub max_consecutive_failures: Option<usize>,
    /// Show a progress bar (hidden anyway with `-q`).
    pub progress: bool,
}

impl Default for LabelConfig {
    fn default() -> Self {
        LabelConfig {
            samples: 1,
            concurrency: 4,
            max_requests: None,
            max_tokens: None,
            cache: None,
            max_command_chars: 20_000,
            max_consecutive_failures: Some(10),
            progress: true,
        }
    }
}

/// The outcome for one input command line (one per input, in input order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelResult {
    pub cmd: String,
    pub verdict: Verdict,
    /// The model's answer text(s), kept for analysts.
    pub explanation: Option<String>,
    pub model: String,
    pub prompt_version: String,
    /// Sum over samples of the answering request's wall time.
    pub latency_ms: u64,
    /// Sum over samples of the tokens used.
    pub tokens: u64,
    /// HTTP requests made for this line, all samples and retries (cached answers count
    /// the requests they took when first asked).
    pub attempts: u32,
    /// Why there is no usable verdict, or notes on an unparsed answer.
    pub error: Option<String>,
    /// `injection` and/or `disagreement` (comma-separated); flagged lines never feed
    /// augmentation.
    pub flag: Option<String>,
    /// Why the line was flagged.
    pub flag_reason: Option<String>,
    /// How many of the samples came from the cache.
    pub cached: u32,
}

impl LabelResult {
    /// Whether this line may join the benign training data: a benign verdict and no flag.
    pub fn feeds_augmentation(&self) -> bool {
        self.verdict == Verdict::Benign && self.flag.is_none()
    }

    /// Whether an analyst should look at it: malicious, unparsed, or flagged.
    pub fn needs_review(&self) -> bool {
        matches!(self.verdict, Verdict::Malicious | Verdict::Unparsed) || self.flag.is_some()
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Answer { answer: Answer, cached: bool },
    Failed { message: String, attempts: u32 },
    Skipped(String),
}

/// Label `cmds` (duplicates are asked once). Fails only when the run cannot succeed
/// (rejected key or request, unwritable cache); per-line failures become `error` rows.
pub async fn label_candidates(
    cmds: &[String],
    labeler: &dyn Labeler,
    cfg: &LabelConfig,
) -> Result<Vec<LabelResult>> {
    if cfg.samples == 0 {
        return Err(Error::input("samples must be at least 1"));
    }
    if cfg.concurrency == 0 {
        return Err(Error::input("concurrency must be at least 1"));
    }
    let info = labeler.info().clone();
    let samples = cfg.samples as usize;

    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<&str> = Vec::new();
    for cmd in cmds {
        position.entry(cmd.as_str()).or_insert_with(|| {
            unique.push(cmd.as_str());
            unique.len() - 1
        });
    }
    let pre_error: Vec<Option<String>> = unique
        .iter()
        .map(|cmd| {
            let chars = cmd.chars().count();
            if cmd.trim().is_empty() {
                Some("empty command line; not sent".to_string())
            } else if chars > cfg.max_command_chars {
                Some(format!(
                    "command line has {chars} characters, over --max-command-chars {}; not sent",
                    cfg.max_command_chars
                ))
            } else {
                None
            }
        })
        .collect();
    let askable: Vec<String> = unique
        .iter()
        .zip(&pre_error)
        .filter(|(_, e)| e.is_none())
        .map(|(c, _)| c.to_string())
        .collect();
    labeler.prepare(&askable)?;

    let cache = match (&cfg.cache, info.cacheable) {
        (Some(path), true) => {
            let (cache, load) = AnswerCache::open(path)?;
            tracing::info!(
                "label cache {}: {} answers on file",
                path.display(),
                load.answers
            );
            Some(cache)
        }
        _ => None,
    };

    let key = |u: usize, sample: usize| CacheKey {
        endpoint: info.endpoint.clone(),
        model: info.model.clone(),
        prompt_version: info.prompt_version.clone(),
        prompt_fingerprint: info.prompt_fingerprint.clone(),
        sample: sample as u32,
        cmd: unique[u].to_string(),
    };
    let mut slots: Vec<Option<Outcome>> = vec![None; unique.len() * samples];
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for u in (0..unique.len()).filter(|&u| pre_error[u].is_none()) {
        for s in 0..samples {
            match cache.as_ref().and_then(|c| c.get(&key(u, s))) {
                Some(answer) if !stale_truncation(&answer, &info) => {
                    slots[u * samples + s] = Some(Outcome::Answer {
                        answer,
                        cached: true,
                    });
                }
                _ => jobs.push((u, s)),
            }
        }
    }
    let total = (askable.len() * samples) as u64;
    let pb = if cfg.progress {
        crate::progress::bar(total, "label", "answers")
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.inc(total - jobs.len() as u64);
    tracing::info!(
        "labeling {} unique command lines ({} answers needed, {} cached) with {} at {} \
         (prompt {})",
        unique.len(),
        total,
        total - jobs.len() as u64,
        info.model,
        info.endpoint,
        info.prompt_version
    );

    let budget = Budget::new(cfg.max_requests, cfg.max_tokens);
    let slots = Mutex::new(slots);
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let consecutive_failures = AtomicUsize::new(0);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let stop = |e: Error| {
        abort.store(true, Ordering::SeqCst);
        fatal.lock().expect("fatal lock").get_or_insert(e);
    };
    // Workers share the state below by reference; each `async move` copies the references.
    let (slots_ref, next, abort, fatal_stop) = (&slots, &next, &abort, &stop);
    let (jobs, unique, cache, key, budget, pb) = (&jobs, &unique, &cache, &key, &budget, &pb);
    let consecutive_failures = &consecutive_failures;
    let worker = move || async move {
        loop {
            let j = next.fetch_add(1, Ordering::SeqCst);
            if j >= jobs.len() || abort.load(Ordering::SeqCst) {
                break;
            }
            let (u, s) = jobs[j];
            let outcome = match labeler.ask(unique[u], s as u32, budget).await {
                Ok(answer) => {
                    if let Some(cache) = &cache
                        && let Err(e) = cache.put(&key(u, s), &answer)
                    {
                        fatal_stop(e);
                        break;
                    }
                    consecutive_failures.store(0, Ordering::SeqCst);
                    Outcome::Answer {
                        answer,
                        cached: false,
                    }
                }
                Err(AskError::Fatal(message)) => {
                    fatal_stop(Error::runtime(message));
                    break;
                }
                Err(AskError::Failed { message, attempts }) => {
                    // No request was made (e.g. the oracle has no label for the line): expected,
                    // counted in the summary; a failed request is worth a warning each time.
                    if attempts == 0 {
                        tracing::debug!("no answer for {:?}: {message}", preview(unique[u]));
                    } else {
                        tracing::warn!("no answer for {:?}: {message}", preview(unique[u]));
                    }
                    let in_a_row = consecutive_failures.fetch_add(1, Ordering::SeqCst) + 1;
                    if attempts > 0 && cfg.max_consecutive_failures.is_some_and(|m| in_a_row >= m) {
                        fatal_stop(Error::runtime(format!(
                            "{in_a_row} command lines in a row got no answer; last error: \
                             {message}. The server looks down or overloaded: check it and \
                             rerun (answers received so far are cached)"
                        )));
                        break;
                    }
                    Outcome::Failed { message, attempts }
                }
                Err(AskError::Budget(message)) => Outcome::Skipped(message),
            };
            slots_ref.lock().expect("slots lock")[u * samples + s] = Some(outcome);
            pb.inc(1);
        }
    };
    join_all(
        (0..cfg.concurrency.min(jobs.len()))
            .map(|_| worker())
            .collect(),
    )
    .await;
    pb.finish_and_clear();
    if let Some(e) = fatal.into_inner().expect("fatal lock") {
        return Err(e);
    }
    if budget.requests_used() > 0 {
        tracing::info!(
            "{} requests sent, {} tokens used",
            budget.requests_used(),
            budget.tokens_used()
        );
    }

    let slots = slots.into_inner().expect("slots lock");
    let per_unique: Vec<LabelResult> = (0..unique.len())
        .map(|u| {
            let outcomes: Vec<Outcome> = match &pre_error[u] {
                Some(e) => vec![Outcome::Failed {
                    message: e.clone(),
                    attempts: 0,
                }],
                None => slots[u * samples..(u + 1) * samples]
                    .iter()
                    .map(|o| o.clone().unwrap_or(Outcome::Skipped("not asked".into())))
                    .collect(),
            };
            combine(unique[u], &outcomes, &info)
        })
        .collect();
    Ok(cmds
        .iter()
        .map(|c| per_unique[position[c.as_str()]].clone())
        .collect())
}

/// Blocking wrapper around [`label_candidates`] for callers without an async runtime.
pub fn label_candidates_blocking(
    cmds: &[String],
    labeler: &dyn Labeler,
    cfg: &LabelConfig,
) -> Result<Vec<LabelResult>> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::runtime(
            "label_candidates_blocking was called inside an async runtime; \
             await label_candidates instead",
        ));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::runtime(format!("cannot start the async runtime: {e}")))?
        .block_on(label_candidates(cmds, labeler, cfg))
}

/// A truncated answer asked under a smaller answer-length limit than now: ask again.
fn stale_truncation(answer: &Answer, info: &LabelerInfo) -> bool {
    answer.finish_reason.as_deref() == Some("length")
        && answer.max_answer_tokens.unwrap_or(0) < info.max_answer_tokens.unwrap_or(0)
}

fn preview(cmd: &str) -> String {
    let mut p: String = cmd.chars().take(80).collect();
    if p.len() < cmd.len() {
        p.push('…');
    }
    p
}

fn combine(cmd: &str, outcomes: &[Outcome], info: &LabelerInfo) -> LabelResult {
    let many = outcomes.len() > 1;
    let tag = |i: usize, msg: &str| {
        if many {
            format!("sample {}: {msg}", i + 1)
        } else {
            msg.to_string()
        }
    };
    let mut result = LabelResult {
        cmd: cmd.to_string(),
        verdict: Verdict::Unparsed,
        explanation: None,
        model: info.model.clone(),
        prompt_version: info.prompt_version.clone(),
        latency_ms: 0,
        tokens: 0,
        attempts: 0,
        error: None,
        flag: None,
        flag_reason: None,
        cached: 0,
    };
    let mut texts = Vec::new();
    let mut verdicts = Vec::new();
    let mut failures = Vec::new();
    let mut skips = Vec::new();
    let mut notes = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Outcome::Answer { answer, cached } => {
                result.latency_ms += answer.latency_ms;
                result.tokens += answer.tokens;
                result.attempts += answer.attempts;
                result.cached += u32::from(*cached);
                let parsed = parse_answer(&answer.text);
                let verdict = if answer.finish_reason.as_deref() == Some("length") {
                    notes.push(tag(
                        i,
                        &format!(
                            "answer truncated at the answer-token limit (finish_reason=length, \
                             limit {}); raise --max-answer-tokens and rerun",
                            answer
                                .max_answer_tokens
                                .map_or("unknown".into(), |n| n.to_string())
                        ),
                    ));
                    Verdict::Unparsed
                } else {
                    if parsed.verdict == Verdict::Unparsed {
                        notes.push(tag(
                            i,
                            &format!(
                                "answer has no single verdict token ({BENIGN_TOKEN} x{}, \
                                 {MALICIOUS_TOKEN} x{})",
                                parsed.benign_tokens, parsed.malicious_tokens
                            ),
                        ));
                    }
                    parsed.verdict
                };
                texts.push(if many {
                    format!("--- sample {} ({verdict}) ---\n{}", i + 1, answer.text)
                } else {
                    answer.text.clone()
                });
                verdicts.push(verdict);
            }
            Outcome::Failed { message, attempts } => {
                result.attempts += attempts;
                failures.push(tag(i, message));
            }
            Outcome::Skipped(message) => skips.push(tag(i, message)),
        }
    }
    if !texts.is_empty() {
        result.explanation = Some(texts.join("\n\n"));
    }
    result.verdict = if !failures.is_empty() {
        notes = failures.into_iter().chain(notes).collect();
        Verdict::Error
    } else if !skips.is_empty() {
        notes = skips.into_iter().chain(notes).collect();
        Verdict::Skipped
    } else if verdicts.iter().all(|v| *v == Verdict::Benign) {
        Verdict::Benign
    } else if verdicts.contains(&Verdict::Malicious) {
        Verdict::Malicious
    } else {
        Verdict::Unparsed
    };
    if !notes.is_empty() {
        result.error = Some(notes.join("; "));
    }
    let mut flags = Vec::new();
    let mut reasons = Vec::new();
    if let Some(reason) = injection_reason(cmd) {
        flags.push("injection");
        reasons.push(format!("possible prompt injection: {reason}"));
    }
    if verdicts.len() > 1 && verdicts.iter().any(|v| *v != verdicts[0]) {
        flags.push("disagreement");
        let shown: Vec<&str> = verdicts.iter().map(|v| v.as_str()).collect();
        reasons.push(format!("samples disagree: {}", shown.join(", ")));
    }
    if !flags.is_empty() {
        result.flag = Some(flags.join(","));
        result.flag_reason = Some(reasons.join("; "));
    }
    result
}

/// Run futures concurrently on the current task until all finish (the workers borrow local
/// state, so they cannot be spawned as 'static tasks).
async fn join_all<F: Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for slot in futures.iter_mut() {
            if let Some(f) = slot {
                if f.as_mut().poll(cx).is_ready() {
                    *slot = None;
                } else {
                    pending = true;
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await
}
