//! Starting a local LLM server (e.g. `scripts/llm_server.sh qwen 8080`, llama.cpp's
//! llama-server) for the duration of a run, so that `configs/demo-llm.toml` is one command too.
//! The child runs in the foreground of its own process; it is killed when the run ends, fails
//! or is interrupted with an error.

use crate::error::{Context, Error, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LlmServer {
    child: Child,
}

/// `host:port` of an `http://host:port/...` URL.
fn authority(base_url: &str) -> Result<String> {
    let rest = base_url.trim().strip_prefix("http://").ok_or_else(|| {
        Error::input(format!(
            "[label.llm] launch needs a plain http:// base_url on this machine, got {base_url:?}"
        ))
    })?;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    })
}

/// A small HTTP client for `GET /health`, on a runtime of its own (the experiment is not
/// async).
struct HealthCheck {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
}

impl HealthCheck {
    fn new(authority: &str) -> Result<HealthCheck> {
        Ok(HealthCheck {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .runtime_ctx(|| "cannot start the async runtime")?,
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .build()
                .runtime_ctx(|| "cannot build the HTTP client")?,
            url: format!("http://{authority}/health"),
        })
    }

    /// Whether `GET /health` answers `200`.
    fn healthy(&self) -> bool {
        self.runtime.block_on(async {
            self.client
                .get(&self.url)
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
        })
    }
}

impl LlmServer {
    /// Start `command` and wait until the server at `base_url` is healthy. The server's output
    /// goes to `log` (appended), not to the run's terminal.
    pub fn start(
        command: &[String],
        base_url: &str,
        timeout: Duration,
        log: &std::path::Path,
    ) -> Result<LlmServer> {
        let authority = authority(base_url)?;
        let health = HealthCheck::new(&authority)?;
        if health.healthy() {
            return Err(Error::input(format!(
                "an LLM server already answers at {authority}; stop it, or remove `launch` \
                 from [label.llm] to use it"
            )));
        }
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::input("[label.llm] launch is empty"))?;
        tracing::info!(
            "starting the LLM server: {} (its log: {})",
            command.join(" "),
            log.display()
        );
        crate::io::table::ensure_parent(log)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .runtime_ctx(|| format!("cannot open the LLM server log {}", log.display()))?;
        let log_err = log_file
            .try_clone()
            .runtime_ctx(|| format!("cannot open the LLM server log {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .input_ctx(|| {
                format!(
                    "cannot start the LLM server {program:?} (run from the repository root; \
                     did scripts/setup_llm.sh run?)"
                )
            })?;
        let started = Instant::now();
        let bar = crate::progress::spinner("waiting for the LLM server", "s");
        loop {
            if let Some(status) = child.try_wait().runtime_ctx(|| "checking the LLM server")? {
                bar.finish_and_clear();
                return Err(Error::runtime(format!(
                    "the LLM server exited ({status}) before it was ready; see {} or run `{}` \
                     by hand (scripts/setup_llm.sh must have run first)",
                    log.display(),
                    command.join(" ")
                )));
            }
            if health.healthy() {
                bar.finish_and_clear();
                tracing::info!(
                    "LLM server ready at {authority} after {:.0} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(LlmServer { child });
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bar.finish_and_clear();
                return Err(Error::runtime(format!(
                    "the LLM server did not answer {authority}/health within {} s; raise \
                     [label.llm] ready_timeout_s or check the server by hand",
                    timeout.as_secs()
                )));
            }
            bar.inc(1);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::info!("LLM server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_of_base_urls() {
        assert_eq!(
            authority("http://127.0.0.1:8080/v1").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(authority("http://localhost/v1").unwrap(), "localhost:80");
        assert!(authority("https://api.openai.com/v1").is_err());
    }

    #[test]
    fn a_server_that_exits_early_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let err = LlmServer::start(
            &["false".to_string()],
            "http://127.0.0.1:9/v1",
            Duration::from_secs(30),
            &dir.path().join("server.log"),
        )
        .err()
        .expect("`false` exits at once");
        assert!(err.to_string().contains("exited"), "{err}");
    }
}
