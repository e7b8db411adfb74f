//! The labeling engine: unique commands, cache, bounded concurrency, budget, strict parsing,
//! self-consistency, the benign threshold on scored verdicts and injection flags. Independent
//! of the CLI so other stages (the experiment of issue 6) can call it directly.

use super::cache::{AnswerCache, CacheKey};
use super::injection::injection_reason;
use super::logprobs::word_label;
use super::verdict::{BENIGN_TOKEN, MALICIOUS_TOKEN, Verdict, decide, parse_answer};
use super::{Answer, AskError, Budget, Labeler, LabelerInfo};
use crate::error::{Error, Result};
use crate::vocab::{Flag, Label, LabelProtocol};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
    /// Scored verdicts: benign only if `p_benign` (averaged over the samples) is at least
    /// this, in (0, 1); below it `uncertain` (or `malicious` under 0.5). 0.5 is the model's
    /// own choice, without abstention; fit one with `longtail label --calibrate`.
    #[serde(default = "default_threshold")]
    pub benign_threshold: f64,
}

fn default_threshold() -> f64 {
    0.5
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
            benign_threshold: default_threshold(),
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
    /// Why the line is kept out of augmentation whatever its verdict (injection,
    /// disagreement); flagged lines go to review.
    pub flags: Vec<Flag>,
    /// Why the line was flagged.
    pub flag_reason: Option<String>,
    /// How many of the samples came from the cache.
    pub cached: u32,
    /// Scored protocols: P(benign) from the verdict token's logprobs, averaged over the
    /// samples (or their share of benign answers when the server gave no logprobs).
    #[serde(default)]
    pub p_benign: Option<f64>,
}

impl LabelResult {
    /// Whether this line may join the benign training data: a benign verdict and no flag.
    pub fn feeds_augmentation(&self) -> bool {
        self.verdict == Verdict::Benign && self.flags.is_empty()
    }

    /// Whether an analyst should look at it: malicious, uncertain, unparsed, or flagged.
    pub fn needs_review(&self) -> bool {
        matches!(
            self.verdict,
            Verdict::Malicious | Verdict::Uncertain | Verdict::Unparsed
        ) || !self.flags.is_empty()
    }

    /// The `flag` cell of the outputs: the flags joined by commas, `None` for none.
    pub fn flag_text(&self) -> Option<String> {
        Flag::join(&self.flags)
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
    let t = cfg.benign_threshold;
    if !(t.is_finite() && t > 0.0 && t < 1.0) {
        return Err(Error::input(format!(
            "--benign-threshold must be in (0, 1) exclusive, got {t}: 0 would pass every line \
             as benign and 1 none; 0.5 is the model's own choice"
        )));
    }
    let info = labeler.info().clone();
    let (position, unique) = unique_commands(cmds);
    let pre_error = unsendable(&unique, cfg.max_command_chars);
    let askable: Vec<String> = unique
        .iter()
        .zip(&pre_error)
        .filter(|(_, e)| e.is_none())
        .map(|(c, _)| c.to_string())
        .collect();
    labeler.prepare(&askable)?;
    let cache = open_cache(cfg, &info)?;
    let run = Asking {
        labeler,
        cfg,
        info: &info,
        unique: &unique,
        cache: cache.as_ref(),
    };
    let (slots, jobs) = run.plan(&pre_error);
    let total = (askable.len() * cfg.samples as usize) as u64;
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
    let pb = if cfg.progress {
        crate::progress::bar(total, "label", "answers")
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.inc(total - jobs.len() as u64);
    let slots = run.ask_all(slots, &jobs, &pb).await?;
    pb.finish_and_clear();

    let samples = cfg.samples as usize;
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
            combine(unique[u], &outcomes, &info, cfg.benign_threshold)
        })
        .collect();
    Ok(cmds
        .iter()
        .map(|c| per_unique[position[c.as_str()]].clone())
        .collect())
}

/// The distinct commands in first-seen order, and where each input command's answer is.
fn unique_commands(cmds: &[String]) -> (HashMap<&str, usize>, Vec<&str>) {
    let mut position: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<&str> = Vec::new();
    for cmd in cmds {
        position.entry(cmd.as_str()).or_insert_with(|| {
            unique.push(cmd.as_str());
            unique.len() - 1
        });
    }
    (position, unique)
}

/// Why a command is not sent at all (empty, or too long), per unique command.
fn unsendable(unique: &[&str], max_chars: usize) -> Vec<Option<String>> {
    unique
        .iter()
        .map(|cmd| {
            let chars = cmd.chars().count();
            if cmd.trim().is_empty() {
                Some("empty command line; not sent".to_string())
            } else if chars > max_chars {
                Some(format!(
                    "command line has {chars} characters, over --max-command-chars {max_chars}; \
                     not sent"
                ))
            } else {
                None
            }
        })
        .collect()
}

/// The answer cache, when one is configured and the labeler's answers are worth keeping.
fn open_cache(cfg: &LabelConfig, info: &LabelerInfo) -> Result<Option<AnswerCache>> {
    match (&cfg.cache, info.cacheable) {
        (Some(path), true) => {
            let (cache, load) = AnswerCache::open(path)?;
            tracing::info!(
                "label cache {}: {} answers on file",
                path.display(),
                load.answers
            );
            Ok(Some(cache))
        }
        _ => Ok(None),
    }
}

/// One answer per (unique command, sample): `None` until asked.
type Slots = Vec<Option<Outcome>>;

/// What asking needs: the labeler, the settings, the commands and the cache.
struct Asking<'a> {
    labeler: &'a dyn Labeler,
    cfg: &'a LabelConfig,
    info: &'a LabelerInfo,
    unique: &'a [&'a str],
    cache: Option<&'a AnswerCache>,
}

impl Asking<'_> {
    fn key(&self, u: usize, sample: usize) -> CacheKey {
        CacheKey {
            endpoint: self.info.endpoint.clone(),
            model: self.info.model.clone(),
            prompt_version: self.info.prompt_version.clone(),
            prompt_fingerprint: self.info.prompt_fingerprint.clone(),
            sample: sample as u32,
            cmd: self.unique[u].to_string(),
        }
    }

    /// Fill the slots the cache answers; the rest are the jobs, `(unique command, sample)`.
    fn plan(&self, pre_error: &[Option<String>]) -> (Slots, Vec<(usize, usize)>) {
        let samples = self.cfg.samples as usize;
        let mut slots: Slots = vec![None; self.unique.len() * samples];
        let mut jobs = Vec::new();
        for u in (0..self.unique.len()).filter(|&u| pre_error[u].is_none()) {
            for s in 0..samples {
                match self.cache.and_then(|c| c.get(&self.key(u, s))) {
                    Some(answer) if !stale_truncation(&answer, self.info) => {
                        slots[u * samples + s] = Some(Outcome::Answer {
                            answer,
                            cached: true,
                        });
                    }
                    _ => jobs.push((u, s)),
                }
            }
        }
        (slots, jobs)
    }

    /// Ask every job, at most `concurrency` at once, in job order. A fatal error (or too many
    /// failures in a row) stops the jobs not yet started and is returned.
    async fn ask_all(
        &self,
        slots: Slots,
        jobs: &[(usize, usize)],
        pb: &indicatif::ProgressBar,
    ) -> Result<Slots> {
        let samples = self.cfg.samples as usize;
        let budget = Budget::new(self.cfg.max_requests, self.cfg.max_tokens);
        let slots = Mutex::new(slots);
        let abort = AtomicBool::new(false);
        let consecutive_failures = AtomicUsize::new(0);
        let fatal: Mutex<Option<Error>> = Mutex::new(None);
        let stop = |e: Error| {
            abort.store(true, Ordering::SeqCst);
            fatal.lock().expect("fatal lock").get_or_insert(e);
        };
        futures_util::stream::iter(jobs)
            .for_each_concurrent(self.cfg.concurrency, |&(u, s)| {
                let (slots, abort, stop, budget) = (&slots, &abort, &stop, &budget);
                let consecutive_failures = &consecutive_failures;
                async move {
                    if abort.load(Ordering::SeqCst) {
                        return;
                    }
                    let outcome = match self.ask(u, s, budget, consecutive_failures).await {
                        Ok(outcome) => outcome,
                        Err(e) => return stop(e),
                    };
                    slots.lock().expect("slots lock")[u * samples + s] = Some(outcome);
                    pb.inc(1);
                }
            })
            .await;
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
        Ok(slots.into_inner().expect("slots lock"))
    }

    /// One answer (cached as soon as it arrives), or why there is none; `Err` stops the run.
    async fn ask(
        &self,
        u: usize,
        s: usize,
        budget: &Budget,
        consecutive_failures: &AtomicUsize,
    ) -> Result<Outcome> {
        let cmd = self.unique[u];
        match self.labeler.ask(cmd, s as u32, budget).await {
            Ok(answer) => {
                if let Some(cache) = self.cache {
                    cache.put(&self.key(u, s), &answer)?;
                }
                consecutive_failures.store(0, Ordering::SeqCst);
                Ok(Outcome::Answer {
                    answer,
                    cached: false,
                })
            }
            Err(AskError::Fatal(message)) => Err(Error::runtime(message)),
            Err(AskError::Failed { message, attempts }) => {
                // No request was made (e.g. the oracle has no label for the line): expected,
                // counted in the summary; a failed request is worth a warning each time.
                if attempts == 0 {
                    tracing::debug!("no answer for {:?}: {message}", preview(cmd));
                } else {
                    tracing::warn!("no answer for {:?}: {message}", preview(cmd));
                }
                let in_a_row = consecutive_failures.fetch_add(1, Ordering::SeqCst) + 1;
                if attempts > 0
                    && self
                        .cfg
                        .max_consecutive_failures
                        .is_some_and(|m| in_a_row >= m)
                {
                    return Err(Error::runtime(format!(
                        "{in_a_row} command lines in a row got no answer; last error: \
                         {message}. The server looks down or overloaded: check it and \
                         rerun (answers received so far are cached)"
                    )));
                }
                Ok(Outcome::Failed { message, attempts })
            }
            Err(AskError::Budget(message)) => Ok(Outcome::Skipped(message)),
        }
    }
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

/// A truncated answer asked under a smaller answer-length limit than now: ask again. (The
/// `direct` protocol's one-token answer is always cut, by design.)
fn stale_truncation(answer: &Answer, info: &LabelerInfo) -> bool {
    info.protocol != LabelProtocol::Direct
        && answer.finish_reason.as_deref() == Some("length")
        && answer.max_answer_tokens.unwrap_or(0) < info.max_answer_tokens.unwrap_or(0)
}

fn preview(cmd: &str) -> String {
    let mut p: String = cmd.chars().take(80).collect();
    if p.len() < cmd.len() {
        p.push('…');
    }
    p
}

/// A scored answer's score (its `p_benign`, or its vote when the server gave no logprobs),
/// the line shown after its explanation, and why there is no score.
fn sample_score(answer: &Answer) -> (Option<f64>, String, Option<String>) {
    let said = answer.verdict_text.as_deref().unwrap_or_default();
    match (answer.p_benign, answer.label_mass) {
        (Some(p), mass) => (
            Some(p),
            format!(
                "[verdict turn: {said:?}, p_benign {p:.4}{}]",
                mass.map_or(String::new(), |m| format!(", label mass {m:.3}"))
            ),
            None,
        ),
        (None, Some(_)) => (
            None,
            format!("[verdict turn: {said:?}, no label among the top logprobs]"),
            Some(format!(
                "no benign/malicious token among the verdict token's top logprobs (it \
                 answered {said:?})"
            )),
        ),
        (None, None) => match word_label(said) {
            Some(label) => (
                Some(if label == Label::Benign { 1.0 } else { 0.0 }),
                format!("[verdict turn: {said:?}, no logprobs: counted as a vote]"),
                None,
            ),
            None => (
                None,
                format!("[verdict turn: {said:?}, no logprobs]"),
                Some(format!(
                    "the verdict turn answered {said:?}, neither benign nor malicious, and \
                     the server gave no logprobs"
                )),
            ),
        },
    }
}

fn combine(cmd: &str, outcomes: &[Outcome], info: &LabelerInfo, threshold: f64) -> LabelResult {
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
        flags: Vec::new(),
        flag_reason: None,
        cached: 0,
        p_benign: None,
    };
    let mut texts = Vec::new();
    let mut verdicts = Vec::new();
    // Scored answers: one score per sample (`None`: that sample has none).
    let mut scores: Vec<Option<f64>> = Vec::new();
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
                if answer.is_scored() {
                    let (score, shown, why) = sample_score(answer);
                    if let Some(why) = why {
                        notes.push(tag(i, &why));
                    }
                    if answer.finish_reason.as_deref() == Some("length")
                        && info.protocol != LabelProtocol::Direct
                    {
                        notes.push(tag(
                            i,
                            "explanation cut at the answer-token limit (finish_reason=length); \
                             the verdict was asked after it anyway",
                        ));
                    }
                    let text = answer.text.trim_end();
                    let shown = if text.is_empty() {
                        shown
                    } else {
                        format!("{text}\n\n{shown}")
                    };
                    texts.push(if many {
                        format!("--- sample {} ---\n{shown}", i + 1)
                    } else {
                        shown
                    });
                    scores.push(score);
                    continue;
                }
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
    } else if !scores.is_empty() {
        // The threshold decides; disagreeing samples already pull the mean down.
        match scores.iter().copied().collect::<Option<Vec<f64>>>() {
            Some(all) => {
                let p = all.iter().sum::<f64>() / all.len() as f64;
                result.p_benign = Some(p);
                decide(p, threshold)
            }
            None => Verdict::Unparsed,
        }
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
        flags.push(Flag::Injection);
        reasons.push(format!("possible prompt injection: {reason}"));
    }
    if verdicts.len() > 1 && verdicts.iter().any(|v| *v != verdicts[0]) {
        flags.push(Flag::Disagreement);
        let shown: Vec<&str> = verdicts.iter().map(|v| v.as_str()).collect();
        reasons.push(format!("samples disagree: {}", shown.join(", ")));
    }
    if !flags.is_empty() {
        result.flags = flags;
        result.flag_reason = Some(reasons.join("; "));
    }
    result
}
