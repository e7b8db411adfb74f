//! Client for OpenAI-compatible chat-completions endpoints (OpenAI, vLLM, Ollama,
//! llama.cpp's `llama-server`), with retries, backoff and fail-fast on unrecoverable errors.
//!
//! Three protocols: `text` (one answer whose verdict token is parsed), `scored` (the
//! explanation, then the verdict asked as one constrained token, scored by its logprobs) and
//! `direct` (the verdict token alone). The constraint field depends on the server: `grammar`
//! (llama-server), `structured_outputs` / `guided_choice` (vLLM), none (OpenAI rejects
//! unknown fields).

use super::logprobs::{LogprobReading, read_logprobs};
use super::prompt::{DIRECT_QUESTION, Prompt, RenderedPrompt, VERDICT_QUESTION};
use super::verdict::parse_answer;
use super::{Answer, AskError, BoxFuture, Budget, Labeler, LabelerInfo};
use crate::error::{Error, Result};
use crate::vocab::{LabelProtocol, ServerApi};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// An API key. Its `Debug` never shows the value, and nothing in this crate logs or writes it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::str::FromStr for ApiKey {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the API key is empty".into());
        }
        Ok(ApiKey(s.to_string()))
    }
}

/// Everything the LLM client needs.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// Base URL such as `http://127.0.0.1:8080/v1`; `/chat/completions` is appended unless
    /// already there.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<ApiKey>,
    pub prompt: Prompt,
    /// Limit for one HTTP request, connection to last byte.
    pub timeout: Duration,
    /// Retries after the first attempt (so `retries + 1` requests at most per answer).
    pub retries: u32,
    /// First backoff delay; doubles each retry, with jitter, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured; longer requests are cut to this.
    pub max_retry_after: Duration,
    /// Sampling temperature; `None` leaves the server's default (reasoning models refuse one).
    pub temperature: Option<f32>,
    /// Answer-length limit sent to the server.
    pub max_answer_tokens: Option<u32>,
    /// Sampling seed; sample `i` uses `seed + i`.
    pub seed: Option<u64>,
    /// How the verdict is asked: `text` (one answer, parsed), `scored` (explanation, then the
    /// verdict token with its logprobs) or `direct` (the verdict token alone).
    pub protocol: LabelProtocol,
    /// The server, which decides the field constraining the verdict token.
    pub server: ServerApi,
    /// Top candidates asked per position of the verdict token (OpenAI allows 1 to 20).
    pub top_logprobs: u32,
}

impl LlmConfig {
    /// Defaults suited to a remote API: 120 s timeout, 5 retries from 1 s backoff, greedy,
    /// the text protocol.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> LlmConfig {
        LlmConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            prompt: Prompt::default_prompt(),
            timeout: Duration::from_secs(120),
            retries: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
            temperature: Some(0.0),
            max_answer_tokens: Some(1024),
            seed: None,
            protocol: LabelProtocol::Text,
            server: ServerApi::Auto,
            top_logprobs: 20,
        }
    }
}

/// The GBNF grammar of the verdict token on llama-server (its logprobs are computed before
/// the grammar applies, so they stay the model's own).
const VERDICT_GRAMMAR: &str = r#"root ::= "benign" | "malicious""#;
const VERDICT_CHOICES: [&str; 2] = ["benign", "malicious"];

/// The LLM labeler.
pub struct LlmLabeler {
    cfg: LlmConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    /// `GET` here tells llama-server and vLLM apart (`--server auto`).
    models_url: reqwest::Url,
    info: LabelerInfo,
    /// The server `--server auto` found, asked once.
    server: OnceCell<ServerApi>,
    /// The server refused logprobs, or the model gives none: verdicts are asked without.
    no_logprobs: AtomicBool,
    /// A verdict came back without logprobs (warned once).
    warned_absent: AtomicBool,
}

/// One completed request (with its retries).
struct Exchange {
    content: String,
    finish_reason: Option<String>,
    tokens: u64,
    latency_ms: u64,
    attempts: u32,
    raw: serde_json::Value,
}

/// What one attempt came to.
enum Step {
    Done(Exchange),
    Stop(AskError),
    Retry {
        error: String,
        wait: Option<Duration>,
    },
    /// Ask again at once (the server refused logprobs; the next body has none).
    Again,
}

impl LlmLabeler {
    pub fn new(cfg: LlmConfig) -> Result<LlmLabeler> {
        let mut url = reqwest::Url::parse(cfg.base_url.trim()).map_err(|e| {
            Error::input(format!(
                "--base-url {:?} is not a valid URL ({e}); pass e.g. http://127.0.0.1:8080/v1",
                redact_url_text(&cfg.base_url)
            ))
        })?;
        let base_path = url.path().trim_end_matches('/').to_string();
        let base_path = base_path
            .strip_suffix("/chat/completions")
            .unwrap_or(&base_path)
            .to_string();
        url.set_path(&format!("{base_path}/chat/completions"));
        let mut models_url = url.clone();
        models_url.set_path(&format!("{base_path}/models"));
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::input(format!(
                "--base-url must be an http:// or https:// URL, not {}:",
                url.scheme()
            )));
        }
        if cfg.model.trim().is_empty() {
            return Err(Error::input(
                "no model name: pass --model or set LONGTAIL_LLM_MODEL \
                 (any name works for llama-server)",
            ));
        }
        let openai = url.host_str() == Some("api.openai.com");
        if cfg.api_key.is_none() && openai {
            return Err(Error::input(
                "api.openai.com needs an API key: set OPENAI_API_KEY (preferred) or --api-key",
            ));
        }
        let reasoning = is_reasoning_model(&cfg.model);
        if cfg.protocol.is_scored() {
            if !(1..=20).contains(&cfg.top_logprobs) {
                return Err(Error::input(format!(
                    "--top-logprobs must be in 1..=20 (OpenAI's limit), got {}",
                    cfg.top_logprobs
                )));
            }
            if openai && matches!(cfg.server, ServerApi::Llama | ServerApi::Vllm) {
                return Err(Error::input(format!(
                    "--server {} sends a constraint field that api.openai.com rejects; pass \
                     --server openai (or auto)",
                    cfg.server
                )));
            }
            if reasoning {
                tracing::warn!(
                    "model {} is a reasoning model (o1/o3/o4/gpt-5 class), which returns no \
                     logprobs: p_benign is the share of benign answers over --samples (0 or 1 \
                     with one sample); use --samples 5 or more",
                    cfg.model
                );
            }
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("longtail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::runtime(format!("cannot build the HTTP client: {e}")))?;
        let info = LabelerInfo {
            endpoint: public_endpoint(&url),
            model: cfg.model.clone(),
            prompt_version: cfg.prompt.version.clone(),
            prompt_fingerprint: cfg.prompt.fingerprint_for(cfg.protocol),
            cacheable: true,
            max_answer_tokens: cfg.max_answer_tokens,
            protocol: cfg.protocol,
        };
        Ok(LlmLabeler {
            cfg,
            client,
            url,
            models_url,
            info,
            server: OnceCell::new(),
            no_logprobs: AtomicBool::new(reasoning),
            warned_absent: AtomicBool::new(false),
        })
    }

    /// The request body of a free answer (the text protocol, the explanation turn).
    fn body(&self, prompt: &RenderedPrompt, sample: u32) -> serde_json::Value {
        self.free_body(&messages(prompt), sample)
    }

    /// Model, messages, temperature and seed: what every request carries.
    fn base_body(&self, messages: &serde_json::Value, sample: u32) -> serde_json::Value {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "stream": false,
        });
        // OpenAI's reasoning models reject `temperature` and `max_tokens`.
        if let Some(t) = self.cfg.temperature.filter(|_| !self.reasoning()) {
            body["temperature"] = json!(t);
        }
        if let Some(seed) = self.cfg.seed {
            body["seed"] = json!(seed.wrapping_add(sample as u64) & 0x7fff_ffff);
        }
        body
    }

    fn reasoning(&self) -> bool {
        is_reasoning_model(&self.cfg.model)
    }

    fn free_body(&self, messages: &serde_json::Value, sample: u32) -> serde_json::Value {
        let mut body = self.base_body(messages, sample);
        if let Some(n) = self.cfg.max_answer_tokens {
            let field = if self.reasoning() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            body[field] = json!(n);
        }
        body
    }

    /// The verdict turn: one token (a few where nothing constrains it, in case the answer
    /// starts with a space or markdown), its logprobs, and the server's constraint field.
    fn verdict_body(
        &self,
        messages: &serde_json::Value,
        sample: u32,
        api: ServerApi,
    ) -> serde_json::Value {
        let mut body = self.base_body(messages, sample);
        let constrained = matches!(api, ServerApi::Llama | ServerApi::Vllm);
        if self.reasoning() {
            // It thinks before it answers: a one-token limit would leave it no answer.
            if let Some(n) = self.cfg.max_answer_tokens {
                body["max_completion_tokens"] = json!(n);
            }
        } else {
            body["max_tokens"] = json!(if constrained { 1 } else { 3 });
        }
        if !self.no_logprobs.load(Ordering::SeqCst) {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(self.cfg.top_logprobs);
        }
        match api {
            ServerApi::Llama => body["grammar"] = json!(VERDICT_GRAMMAR),
            ServerApi::Vllm => {
                // `structured_outputs` since vLLM 0.10.2, `guided_choice` before (removed in
                // 0.12); vLLM ignores the field it does not know.
                body["structured_outputs"] = json!({ "choice": VERDICT_CHOICES });
                body["guided_choice"] = json!(VERDICT_CHOICES);
            }
            ServerApi::Openai | ServerApi::Auto => {}
        }
        body
    }

    /// Remove the key from any text that came from outside (a server may echo headers).
    fn redact(&self, text: &str) -> String {
        match &self.cfg.api_key {
            Some(k) if !k.expose().is_empty() => text.replace(k.expose(), "<redacted>"),
            _ => text.to_string(),
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        let full = self
            .cfg
            .backoff_base
            .saturating_mul(factor)
            .min(self.cfg.backoff_max);
        // "Equal jitter": half fixed, half random, so concurrent workers spread out.
        full / 2 + (full / 2).mul_f64(rand::random::<f64>())
    }

    /// Which server answers: the configured one, OpenAI for api.openai.com, else what
    /// `GET /v1/models` says (asked once; a failed connection is asked again next time).
    async fn server_api(&self) -> std::result::Result<ServerApi, String> {
        match self.cfg.server {
            ServerApi::Auto if self.url.host_str() == Some("api.openai.com") => {
                Ok(ServerApi::Openai)
            }
            ServerApi::Auto => self
                .server
                .get_or_try_init(|| self.probe_server())
                .await
                .copied(),
            known => Ok(known),
        }
    }

    async fn probe_server(&self) -> std::result::Result<ServerApi, String> {
        let mut request = self.client.get(self.models_url.clone());
        if let Some(key) = &self.cfg.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request.send().await.map_err(|e| self.describe(e))?;
        let status = response.status();
        if is_retryable(status) {
            return Err(format!("GET /v1/models: HTTP {status}"));
        }
        let text = response.text().await.map_err(|e| self.describe(e))?;
        let owners: Vec<String> = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["owned_by"].as_str().map(str::to_ascii_lowercase))
            .collect();
        let found = if !status.is_success() {
            None
        } else if owners.iter().any(|o| o.contains("llamacpp")) {
            Some(ServerApi::Llama)
        } else if owners.iter().any(|o| o.contains("vllm")) {
            Some(ServerApi::Vllm)
        } else {
            None
        };
        match found {
            Some(api) => {
                tracing::info!(
                    "{} is {api} (GET /v1/models): the verdict token is constrained for it",
                    self.info.endpoint
                );
                Ok(api)
            }
            None => {
                tracing::warn!(
                    "cannot tell which server answers at {} (GET /v1/models: HTTP {status}, \
                     owned_by {owners:?}); the verdict token is asked without a constraint \
                     field (its score still comes from the logprobs). Pass --server llama or \
                     --server vllm to constrain it",
                    self.info.endpoint
                );
                Ok(ServerApi::Openai)
            }
        }
    }

    /// One request with its retries; `body` builds the request for the server found (called
    /// for each attempt). `verdict_turn` asks which server answers first.
    async fn exchange(
        &self,
        budget: &Budget,
        verdict_turn: bool,
        mut body: impl FnMut(ServerApi) -> (serde_json::Value, usize),
    ) -> std::result::Result<Exchange, AskError> {
        let mut max_attempts = self.cfg.retries + 1;
        let mut attempt = 0;
        let mut last_error = String::new();
        while attempt < max_attempts {
            attempt += 1;
            let (error, server_wait) =
                match self.attempt(budget, verdict_turn, &mut body, attempt).await {
                    Step::Done(done) => return Ok(done),
                    Step::Stop(e) => return Err(e),
                    Step::Again => {
                        max_attempts += 1;
                        continue;
                    }
                    Step::Retry { error, wait } => (error, wait),
                };
            last_error = error;
            if attempt >= max_attempts {
                break;
            }
            let delay = match server_wait {
                Some(wait) if wait > self.cfg.max_retry_after => {
                    tracing::warn!(
                        "server asked to wait {:.0} s (Retry-After); waiting {:.0} s \
                         (--max-retry-after)",
                        wait.as_secs_f64(),
                        self.cfg.max_retry_after.as_secs_f64()
                    );
                    self.cfg.max_retry_after
                }
                Some(wait) => wait,
                None => self.backoff(attempt),
            };
            tracing::debug!(
                "attempt {attempt}/{max_attempts} failed ({last_error}); retrying in {} ms",
                delay.as_millis()
            );
            tokio::time::sleep(delay).await;
        }
        Err(AskError::Failed {
            message: format!("no answer after {attempt} attempts; last error: {last_error}"),
            attempts: attempt,
        })
    }

    async fn attempt(
        &self,
        budget: &Budget,
        verdict_turn: bool,
        body: &mut impl FnMut(ServerApi) -> (serde_json::Value, usize),
        attempt: u32,
    ) -> Step {
        let api = if verdict_turn {
            match self.server_api().await {
                Ok(api) => api,
                Err(e) => {
                    return Step::Retry {
                        error: format!("cannot ask which server answers: {e}"),
                        wait: None,
                    };
                }
            }
        } else {
            ServerApi::Openai
        };
        if let Err(e) = budget.try_request() {
            return Step::Stop(AskError::Budget(e));
        }
        let (json_body, prompt_chars) = body(api);
        let asked_logprobs = json_body.get("logprobs").is_some();
        let mut request = self.client.post(self.url.clone()).json(&json_body);
        if let Some(key) = &self.cfg.api_key {
            request = request.bearer_auth(key.expose());
        }
        let started = Instant::now();
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Step::Retry {
                    error: self.describe(e),
                    wait: None,
                };
            }
        };
        let status = response.status();
        let wait = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                return Step::Retry {
                    error: self.describe(e),
                    wait,
                };
            }
        };
        if status.is_success() {
            return match parse_completion(&text) {
                Ok(done) => {
                    let tokens = done
                        .total_tokens
                        .unwrap_or((prompt_chars + done.content.len()) as u64 / 4);
                    budget.add_tokens(tokens);
                    Step::Done(Exchange {
                        content: done.content,
                        finish_reason: done.finish_reason,
                        tokens,
                        latency_ms: started.elapsed().as_millis() as u64,
                        attempts: attempt,
                        raw: done.raw,
                    })
                }
                Err(why) => Step::Retry {
                    error: format!(
                        "malformed response ({why}): {}",
                        self.redact(&snippet(&text))
                    ),
                    wait,
                },
            };
        }
        let body_text = self.redact(&snippet(&text));
        if asked_logprobs && is_logprob_refusal(status, &text) {
            if !self.no_logprobs.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "the server at {} refused logprobs (HTTP {status}: {body_text}); verdicts \
                     are asked without them from now on, and p_benign is the share of benign \
                     answers over --samples (0 or 1 with one sample): use --samples 5 or more, \
                     or a model and server that give logprobs",
                    self.info.endpoint
                );
            }
            return Step::Again;
        }
        if is_context_overflow(status, &text) {
            // This line alone is too long for the model: the others may still be answered,
            // and asking again would not help.
            return Step::Stop(AskError::Failed {
                message: format!(
                    "the prompt for this line is longer than the model's context (HTTP \
                     {status}: {body_text}); give the server a larger context \
                     (llama-server -c, LLM_CTX for scripts/llm_server.sh) \
                     or lower --max-command-chars"
                ),
                attempts: attempt,
            });
        }
        if !is_retryable(status) {
            return Step::Stop(AskError::Fatal(self.fatal_message(status, &body_text)));
        }
        Step::Retry {
            error: format!("HTTP {status}: {body_text}"),
            wait,
        }
    }

    /// One answer in the configured protocol.
    async fn answer(
        &self,
        cmd: &str,
        sample: u32,
        budget: &Budget,
    ) -> std::result::Result<Answer, AskError> {
        match self.cfg.protocol {
            LabelProtocol::Text => {
                // A fresh fence marker for every request, retries included.
                let done = self
                    .exchange(budget, false, |_| {
                        let prompt = self.cfg.prompt.render(cmd);
                        let chars = prompt.system.len() + prompt.user.len();
                        (self.body(&prompt, sample), chars)
                    })
                    .await?;
                Ok(Answer {
                    text: done.content,
                    finish_reason: done.finish_reason,
                    tokens: done.tokens,
                    latency_ms: done.latency_ms,
                    attempts: done.attempts,
                    max_answer_tokens: self.cfg.max_answer_tokens,
                    verdict_text: None,
                    p_benign: None,
                    label_mass: None,
                })
            }
            LabelProtocol::Scored => {
                // One marker for both turns: the second continues the first conversation.
                let prompt = self.cfg.prompt.render(cmd);
                let chars = prompt.system.len() + prompt.user.len();
                let first = messages(&prompt);
                let explained = self
                    .exchange(budget, false, |_| (self.free_body(&first, sample), chars))
                    .await?;
                // The explanation's own verdict line is left out, so the verdict token is the
                // model's judgement of its analysis, not a copy of a token it already wrote.
                let mut second = first.clone();
                if let Some(list) = second.as_array_mut() {
                    list.push(json!({"role": "assistant",
                                     "content": without_verdict_lines(&explained.content)}));
                    list.push(json!({"role": "user", "content": VERDICT_QUESTION}));
                }
                let chars = chars + explained.content.len() + VERDICT_QUESTION.len();
                let verdict = self
                    .exchange(budget, true, |api| {
                        (self.verdict_body(&second, sample, api), chars)
                    })
                    .await
                    .map_err(|e| with_attempts(e, explained.attempts))?;
                Ok(self.scored_answer(Some(explained), verdict))
            }
            LabelProtocol::Direct => {
                let prompt = self.cfg.prompt.render(cmd);
                let user = format!("{}\n\n{DIRECT_QUESTION}", prompt.user);
                let chars = prompt.system.len() + user.len();
                let list = json!([
                    {"role": "system", "content": prompt.system},
                    {"role": "user", "content": user},
                ]);
                let verdict = self
                    .exchange(budget, true, |api| {
                        (self.verdict_body(&list, sample, api), chars)
                    })
                    .await?;
                Ok(self.scored_answer(None, verdict))
            }
        }
    }

    /// An answer of the scored protocols: the explanation (if any) and the verdict turn's
    /// word and score.
    fn scored_answer(&self, explained: Option<Exchange>, verdict: Exchange) -> Answer {
        let (p_benign, label_mass) = match read_logprobs(&verdict.raw) {
            LogprobReading::Scored { p_benign, mass } => (Some(p_benign), Some(mass)),
            LogprobReading::NoLabel => (None, Some(0.0)),
            LogprobReading::Absent => {
                if !self.no_logprobs.load(Ordering::SeqCst)
                    && !self.warned_absent.swap(true, Ordering::SeqCst)
                {
                    tracing::warn!(
                        "the server at {} sent no logprobs with the verdict token (model {}); \
                         p_benign is the share of benign answers over --samples (0 or 1 with \
                         one sample): use --samples 5 or more, or a server that gives logprobs",
                        self.info.endpoint,
                        self.cfg.model
                    );
                }
                (None, None)
            }
        };
        let (text, finish_reason, tokens, latency_ms, attempts) = match explained {
            Some(e) => (
                e.content,
                e.finish_reason,
                e.tokens,
                e.latency_ms,
                e.attempts,
            ),
            None => (String::new(), verdict.finish_reason.clone(), 0, 0, 0),
        };
        Answer {
            text,
            finish_reason,
            tokens: tokens + verdict.tokens,
            latency_ms: latency_ms + verdict.latency_ms,
            attempts: attempts + verdict.attempts,
            max_answer_tokens: self.cfg.max_answer_tokens,
            verdict_text: Some(verdict.content.trim().to_string()),
            p_benign,
            label_mass,
        }
    }

    fn describe(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        if e.is_timeout() {
            return format!(
                "timed out after {:.1} s (--timeout)",
                self.cfg.timeout.as_secs_f64()
            );
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_connect() {
            text = format!("cannot connect to {} ({text})", self.info.endpoint);
        }
        self.redact(&text)
    }

    fn fatal_message(&self, status: StatusCode, body: &str) -> String {
        let endpoint = &self.info.endpoint;
        let lower = body.to_ascii_lowercase();
        if ["grammar", "structured_outputs", "guided_choice"]
            .iter()
            .any(|f| lower.contains(f))
        {
            return format!(
                "the server at {endpoint} rejected the field that constrains the verdict token \
                 (HTTP {status}): {body}. Pass the --server it is (llama, vllm; openai sends \
                 no such field)"
            );
        }
        match status.as_u16() {
            401 | 403 => format!(
                "the server at {endpoint} refused the credentials (HTTP {status}): {body}. \
                 Set OPENAI_API_KEY (or --api-key) to a valid key for this endpoint"
            ),
            404 => format!(
                "HTTP 404 from {endpoint}: {body}. Check --base-url (most servers want it to \
                 end in /v1) and --model"
            ),
            _ => format!(
                "the server at {endpoint} rejected the request (HTTP {status}): {body}. \
                 Check --model, --max-answer-tokens and the prompt; retrying would not help"
            ),
        }
    }
}

impl Labeler for LlmLabeler {
    fn info(&self) -> &LabelerInfo {
        &self.info
    }

    fn ask<'a>(
        &'a self,
        cmd: &'a str,
        sample: u32,
        budget: &'a Budget,
    ) -> BoxFuture<'a, std::result::Result<Answer, AskError>> {
        Box::pin(self.answer(cmd, sample, budget))
    }
}

/// The system and user messages of a rendered prompt.
fn messages(prompt: &RenderedPrompt) -> serde_json::Value {
    json!([
        {"role": "system", "content": prompt.system},
        {"role": "user", "content": prompt.user},
    ])
}

/// The explanation without lines that carry a verdict token.
fn without_verdict_lines(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let p = parse_answer(line);
            p.benign_tokens + p.malicious_tokens == 0
        })
        .collect();
    let kept = kept.join("\n").trim().to_string();
    if kept.is_empty() {
        "(no explanation)".to_string()
    } else {
        kept
    }
}

/// A failed second turn counts the first turn's requests too.
fn with_attempts(e: AskError, earlier: u32) -> AskError {
    match e {
        AskError::Failed { message, attempts } => AskError::Failed {
            message,
            attempts: attempts + earlier,
        },
        other => other,
    }
}

/// A 400/422 that rejects `logprobs` / `top_logprobs` (a reasoning model, a server that
/// does not give them, or more candidates than it allows).
fn is_logprob_refusal(status: StatusCode, body: &str) -> bool {
    matches!(status.as_u16(), 400 | 422) && body.to_ascii_lowercase().contains("logprob")
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 425 | 429) || status.is_server_error()
}

/// A 400/413 that rejects one over-long prompt rather than the request's form: llama-server
/// (`exceed_context_size_error`), OpenAI (`context_length_exceeded`), vLLM ("maximum context
/// length").
fn is_context_overflow(status: StatusCode, body: &str) -> bool {
    if !matches!(status.as_u16(), 400 | 413) {
        return false;
    }
    let body = body.to_ascii_lowercase();
    [
        "exceed_context_size",
        "context_length_exceeded",
        "maximum context length",
        "exceeds the available context",
        "larger than the max context",
    ]
    .iter()
    .any(|sign| body.contains(sign))
}

fn is_reasoning_model(model: &str) -> bool {
    let name = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The endpoint as it may be shown and cached: no user, password, query or fragment.
fn public_endpoint(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

fn redact_url_text(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(u) => public_endpoint(&u),
        Err(_) => "<unparsable>".to_string(),
    }
}

fn snippet(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        format!("{}…", one_line.chars().take(300).collect::<String>())
    } else if one_line.is_empty() {
        "(empty body)".to_string()
    } else {
        one_line
    }
}

struct Completion {
    content: String,
    finish_reason: Option<String>,
    total_tokens: Option<u64>,
    /// The whole body, for the logprobs.
    raw: serde_json::Value,
}

fn parse_completion(text: &str) -> std::result::Result<Completion, String> {
    #[derive(Deserialize)]
    struct Response {
        #[serde(default)]
        choices: Vec<Choice>,
        usage: Option<Usage>,
    }
    #[derive(Deserialize)]
    struct Choice {
        message: Option<Message>,
        finish_reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        content: Option<String>,
    }
    #[derive(Deserialize)]
    struct Usage {
        total_tokens: Option<u64>,
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    let raw: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let response: Response =
        serde_json::from_value(raw.clone()).map_err(|e| format!("not a chat completion: {e}"))?;
    let choice = response
        .choices
        .into_iter()
        .next()
        .ok_or("no `choices` in the response")?;
    let total_tokens = response.usage.and_then(|u| {
        u.total_tokens
            .or(match (u.prompt_tokens, u.completion_tokens) {
                (Some(p), Some(c)) => Some(p + c),
                _ => None,
            })
    });
    let content = choice.message.and_then(|m| m.content).unwrap_or_default();
    if content.is_empty() && choice.finish_reason.as_deref() != Some("length") {
        return Err("empty message content".into());
    }
    Ok(Completion {
        content,
        finish_reason: choice.finish_reason,
        total_tokens,
        raw,
    })
}

/// `Retry-After` as delay-seconds (integer or decimal) or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = parse_http_date(value)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// An HTTP date (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, and the obsolete RFC 850 and
/// asctime forms) to Unix seconds.
fn parse_http_date(value: &str) -> Option<u64> {
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn key_is_redacted_everywhere() {
        let key: ApiKey = "sk-secret-123".parse().unwrap();
        assert!(!format!("{key:?}").contains("secret"));
        let mut cfg = LlmConfig::new("http://user:pw@127.0.0.1:9/v1?x=1", "m");
        cfg.api_key = Some(key);
        let labeler = LlmLabeler::new(cfg).unwrap();
        assert_eq!(
            labeler.info().endpoint,
            "http://127.0.0.1:9/v1/chat/completions"
        );
        assert!(!format!("{:?}", labeler.cfg).contains("secret"));
        assert_eq!(labeler.redact("echo sk-secret-123"), "echo <redacted>");
    }

    #[test]
    fn completion_parsing() {
        let ok = r#"{"choices":[{"message":{"content":"x VERDICT_BENIGN"},"finish_reason":"stop"}],
                     "usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let c = parse_completion(ok).unwrap();
        assert_eq!(
            (c.total_tokens, c.finish_reason.as_deref()),
            (Some(7), Some("stop"))
        );
        assert!(parse_completion("{\"choices\":[]}").is_err());
        assert!(parse_completion("{\"choices\":[{\"message\":{\"content\":\"").is_err());
        assert!(parse_completion(r#"{"error":{"message":"overloaded"}}"#).is_err());
        let cut = r#"{"choices":[{"message":{"content":null},"finish_reason":"length"}]}"#;
        assert_eq!(parse_completion(cut).unwrap().content, "");
    }

    #[test]
    fn context_overflow_is_told_apart_from_a_bad_request() {
        let llama = r#"{"error":{"code":400,"message":"request (9000 tokens) exceeds the available context size (8192 tokens), try increasing it","type":"exceed_context_size_error"}}"#;
        assert!(is_context_overflow(StatusCode::BAD_REQUEST, llama));
        let openai = r#"{"error":{"code":"context_length_exceeded","message":"..."}}"#;
        assert!(is_context_overflow(StatusCode::BAD_REQUEST, openai));
        let bad_model = r#"{"error":{"message":"model `x` not found"}}"#;
        assert!(!is_context_overflow(StatusCode::BAD_REQUEST, bad_model));
        assert!(!is_context_overflow(
            StatusCode::INTERNAL_SERVER_ERROR,
            llama
        ));
    }

    #[test]
    fn verdict_turn_carries_the_constraint_of_its_server() {
        let mut cfg = LlmConfig::new("http://x/v1", "qwen");
        cfg.protocol = LabelProtocol::Scored;
        cfg.top_logprobs = 7;
        let labeler = LlmLabeler::new(cfg).unwrap();
        let m = messages(&labeler.cfg.prompt.render("ls"));
        let llama = labeler.verdict_body(&m, 0, ServerApi::Llama);
        assert_eq!(llama["grammar"], VERDICT_GRAMMAR);
        assert_eq!(
            (llama["max_tokens"].as_u64(), llama["top_logprobs"].as_u64()),
            (Some(1), Some(7))
        );
        assert_eq!(llama["logprobs"], true);
        let vllm = labeler.verdict_body(&m, 0, ServerApi::Vllm);
        assert_eq!(
            vllm["structured_outputs"]["choice"],
            json!(["benign", "malicious"])
        );
        assert_eq!(vllm["guided_choice"], json!(["benign", "malicious"]));
        assert!(vllm.get("grammar").is_none());
        let openai = labeler.verdict_body(&m, 0, ServerApi::Openai);
        for field in ["grammar", "structured_outputs", "guided_choice"] {
            assert!(openai.get(field).is_none(), "{field} sent to OpenAI");
        }
        assert_eq!(openai["max_tokens"], 3);
        // Once logprobs are refused, they are no longer asked.
        labeler.no_logprobs.store(true, Ordering::SeqCst);
        let plain = labeler.verdict_body(&m, 0, ServerApi::Llama);
        assert!(plain.get("logprobs").is_none() && plain.get("top_logprobs").is_none());
    }

    #[test]
    fn scored_protocol_settings_are_checked() {
        let scored = |url: &str, model: &str, server, top| {
            let mut cfg = LlmConfig::new(url, model);
            cfg.protocol = LabelProtocol::Scored;
            cfg.server = server;
            cfg.top_logprobs = top;
            cfg.api_key = Some(ApiKey::new("k"));
            LlmLabeler::new(cfg)
        };
        assert!(scored("http://x/v1", "m", ServerApi::Auto, 0).is_err());
        assert!(scored("http://x/v1", "m", ServerApi::Auto, 21).is_err());
        let err = scored("https://api.openai.com/v1", "gpt-4o", ServerApi::Llama, 20)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--server openai") && err.exit_code() == 2);
        // A reasoning model: no logprobs asked, room to think before the verdict.
        let o3 = scored("https://api.openai.com/v1", "o3-mini", ServerApi::Auto, 20).unwrap();
        let body = o3.verdict_body(&json!([]), 0, ServerApi::Openai);
        assert!(body.get("logprobs").is_none() && body.get("max_tokens").is_none());
        assert_eq!(body["max_completion_tokens"], 1024);
        // The protocol is part of the prompt fingerprint (cache key, calibration).
        let text = LlmLabeler::new(LlmConfig::new("http://x/v1", "m")).unwrap();
        let s = scored("http://x/v1", "m", ServerApi::Auto, 20).unwrap();
        assert_eq!(
            text.info().prompt_fingerprint,
            Prompt::default_prompt().fingerprint
        );
        assert_ne!(s.info().prompt_fingerprint, text.info().prompt_fingerprint);
        assert_eq!(s.models_url.as_str(), "http://x/v1/models");
    }

    #[test]
    fn explanation_loses_its_verdict_line_and_refusals_are_recognised() {
        assert_eq!(
            without_verdict_lines("It lists files.\nBenign use: ops.\n**VERDICT_BENIGN**\n"),
            "It lists files.\nBenign use: ops."
        );
        assert_eq!(
            without_verdict_lines("VERDICT_MALICIOUS"),
            "(no explanation)"
        );
        let openai = r#"{"error":{"message":"logprobs is not supported with this model","type":"invalid_request_error"}}"#;
        assert!(is_logprob_refusal(StatusCode::BAD_REQUEST, openai));
        assert!(!is_logprob_refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            openai
        ));
        assert!(!is_logprob_refusal(
            StatusCode::BAD_REQUEST,
            r#"{"error":"bad model"}"#
        ));
    }

    #[test]
    fn reasoning_models_get_their_parameters() {
        let labeler = LlmLabeler::new(LlmConfig::new("http://x/v1", "o3-mini")).unwrap();
        let body = labeler.body(&labeler.cfg.prompt.render("ls"), 0);
        assert!(body.get("temperature").is_none() && body.get("max_completion_tokens").is_some());
        let labeler = LlmLabeler::new(LlmConfig::new("http://x/v1", "qwen")).unwrap();
        let body = labeler.body(&labeler.cfg.prompt.render("ls"), 0);
        assert!(body.get("temperature").is_some() && body.get("max_tokens").is_some());
    }
}
