//! Client for OpenAI-compatible chat-completions endpoints (OpenAI, vLLM, Ollama,
//! llama.cpp's `llama-server`), with retries, backoff and fail-fast on unrecoverable errors.

use super::prompt::{Prompt, RenderedPrompt};
use super::{Answer, AskError, BoxFuture, Budget, Labeler, LabelerInfo};
use crate::error::{Error, Result};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
}

impl LlmConfig {
    /// Defaults suited to a remote API: 120 s timeout, 5 retries from 1 s backoff, greedy.
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
        }
    }
}

/// The LLM labeler.
pub struct LlmLabeler {
    cfg: LlmConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    info: LabelerInfo,
}

impl LlmLabeler {
    pub fn new(cfg: LlmConfig) -> Result<LlmLabeler> {
        let mut url = reqwest::Url::parse(cfg.base_url.trim()).map_err(|e| {
            Error::input(format!(
                "--base-url {:?} is not a valid URL ({e}); pass e.g. http://127.0.0.1:8080/v1",
                redact_url_text(&cfg.base_url)
            ))
        })?;
        if !url
            .path()
            .trim_end_matches('/')
            .ends_with("/chat/completions")
        {
            let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
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
        if cfg.api_key.is_none() && url.host_str() == Some("api.openai.com") {
            return Err(Error::input(
                "api.openai.com needs an API key: set OPENAI_API_KEY (preferred) or --api-key",
            ));
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
            prompt_fingerprint: cfg.prompt.fingerprint.clone(),
            cacheable: true,
            max_answer_tokens: cfg.max_answer_tokens,
        };
        Ok(LlmLabeler {
            cfg,
            client,
            url,
            info,
        })
    }

    fn body(&self, prompt: &RenderedPrompt, sample: u32) -> serde_json::Value {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "stream": false,
        });
        // OpenAI's reasoning models reject `temperature` and `max_tokens`.
        let reasoning = is_reasoning_model(&self.cfg.model);
        if let Some(t) = self.cfg.temperature.filter(|_| !reasoning) {
            body["temperature"] = json!(t);
        }
        if let Some(n) = self.cfg.max_answer_tokens {
            let field = if reasoning {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            body[field] = json!(n);
        }
        if let Some(seed) = self.cfg.seed {
            body["seed"] = json!(seed.wrapping_add(sample as u64) & 0x7fff_ffff);
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

    async fn ask_with_retries(
        &self,
        cmd: &str,
        sample: u32,
        budget: &Budget,
    ) -> std::result::Result<Answer, AskError> {
        let max_attempts = self.cfg.retries + 1;
        let mut last_error = String::new();
        for attempt in 1..=max_attempts {
            budget.try_request().map_err(AskError::Budget)?;
            let prompt = self.cfg.prompt.render(cmd);
            let mut request = self
                .client
                .post(self.url.clone())
                .json(&self.body(&prompt, sample));
            if let Some(key) = &self.cfg.api_key {
                request = request.bearer_auth(key.expose());
            }
            let started = Instant::now();
            let mut server_wait = None;
            match request.send().await {
                Err(e) => last_error = self.describe(e),
                Ok(response) => {
                    let status = response.status();
                    server_wait = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after);
                    match response.text().await {
                        Err(e) => last_error = self.describe(e),
                        Ok(text) if status.is_success() => match parse_completion(&text) {
                            Ok(done) => {
                                let tokens = done.total_tokens.unwrap_or_else(|| {
                                    (prompt.system.len() + prompt.user.len() + done.content.len())
                                        as u64
                                        / 4
                                });
                                budget.add_tokens(tokens);
                                return Ok(Answer {
                                    text: done.content,
                                    finish_reason: done.finish_reason,
                                    tokens,
                                    latency_ms: started.elapsed().as_millis() as u64,
                                    attempts: attempt,
                                    max_answer_tokens: self.cfg.max_answer_tokens,
                                });
                            }
                            Err(why) => {
                                last_error = format!(
                                    "malformed response ({why}): {}",
                                    self.redact(&snippet(&text))
                                )
                            }
                        },
                        Ok(text) => {
                            let body = self.redact(&snippet(&text));
                            if is_context_overflow(status, &text) {
                                // This line alone is too long for the model: the others may
                                // still be answered, and asking again would not help.
                                return Err(AskError::Failed {
                                    message: format!(
                                        "the prompt for this line is longer than the model's context (HTTP \
                                         {status}: {body}); give the server a larger context \
                                         (llama-server -c, LLM_CTX for scripts/llm_server.sh) \
                                         or lower --max-command-chars"
                                    ),
                                    attempts: attempt,
                                });
                            }
                            if !is_retryable(status) {
                                return Err(AskError::Fatal(self.fatal_message(status, &body)));
                            }
                            last_error = format!("HTTP {status}: {body}");
                        }
                    }
                }
            }
            if attempt == max_attempts {
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
            message: format!("no answer after {max_attempts} attempts; last error: {last_error}"),
            attempts: max_attempts,
        })
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
        Box::pin(self.ask_with_retries(cmd, sample, budget))
    }
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
    let response: Response = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
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
    fn reasoning_models_get_their_parameters() {
        let labeler = LlmLabeler::new(LlmConfig::new("http://x/v1", "o3-mini")).unwrap();
        let body = labeler.body(&labeler.cfg.prompt.render("ls"), 0);
        assert!(body.get("temperature").is_none() && body.get("max_completion_tokens").is_some());
        let labeler = LlmLabeler::new(LlmConfig::new("http://x/v1", "qwen")).unwrap();
        let body = labeler.body(&labeler.cfg.prompt.render("ls"), 0);
        assert!(body.get("temperature").is_some() && body.get("max_tokens").is_some());
    }
}
