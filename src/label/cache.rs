//! Persistent answer cache: an append-only JSONL file, one fsync'd line per answer received.
//!
//! A rerun, or a run killed with SIGKILL mid-way, reads the file back and asks again only what
//! is missing. A line torn by a crash is skipped on load (and counted); the next append starts
//! on a fresh line. Only answers are cached, never failures, so errors are retried on rerun.
//! The API key never enters the file: the key identifies neither the endpoint nor the answer.

use super::Answer;
use crate::error::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What identifies an answer: the endpoint, the model, the prompt and the sample index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CacheKey {
    pub endpoint: String,
    pub model: String,
    pub prompt_version: String,
    pub prompt_fingerprint: String,
    pub sample: u32,
    pub cmd: String,
}

impl CacheKey {
    /// A short stable digest of the key, written on each line for quick inspection.
    pub fn digest(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [
            &self.endpoint,
            &self.model,
            &self.prompt_version,
            &self.prompt_fingerprint,
        ] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.update(&self.sample.to_le_bytes());
        h.update(self.cmd.as_bytes());
        format!("{:032x}", h.digest128())
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    digest: String,
    #[serde(flatten)]
    key: CacheKey,
    answer: Answer,
}

/// Counts from loading a cache file.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheLoad {
    pub answers: usize,
    pub torn_or_bad_lines: usize,
}

/// The cache: answers in memory, appended to the file as they arrive.
pub struct AnswerCache {
    path: PathBuf,
    entries: Mutex<HashMap<CacheKey, Answer>>,
    writer: Mutex<(File, bool)>,
}

impl AnswerCache {
    /// Open (or create) the cache file and load every complete line.
    pub fn open(path: &Path) -> Result<(AnswerCache, CacheLoad)> {
        crate::io::table::ensure_parent(path)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .runtime_ctx(|| format!("cannot open the label cache {}", path.display()))?;
        let mut load = CacheLoad::default();
        let mut entries = HashMap::new();
        for line in BufReader::new(&file).split(b'\n') {
            let line =
                line.runtime_ctx(|| format!("reading the label cache {}", path.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Line>(&line) {
                Ok(l) if l.digest == l.key.digest() => {
                    entries.insert(l.key, l.answer);
                    load.answers += 1;
                }
                _ => load.torn_or_bad_lines += 1,
            }
        }
        // A crash between two writes of one line leaves no newline at the end: start afresh.
        let len = file.metadata()?.len();
        let mut needs_newline = false;
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            needs_newline = last[0] != b'\n';
        }
        if load.torn_or_bad_lines > 0 {
            tracing::warn!(
                "label cache {}: skipped {} torn or unreadable line(s) (a killed run?); \
                 those commands will be asked again",
                path.display(),
                load.torn_or_bad_lines
            );
        }
        let cache = AnswerCache {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
            writer: Mutex::new((file, needs_newline)),
        };
        Ok((cache, load))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &CacheKey) -> Option<Answer> {
        self.entries.lock().expect("cache lock").get(key).cloned()
    }

    /// Append one answer and fsync it before returning, so it survives a SIGKILL right after.
    pub fn put(&self, key: &CacheKey, answer: &Answer) -> Result<()> {
        let line = Line {
            digest: key.digest(),
            key: key.clone(),
            answer: answer.clone(),
        };
        let mut text = serde_json::to_string(&line).runtime_ctx(|| "encoding a cache line")?;
        text.push('\n');
        {
            let mut guard = self.writer.lock().expect("cache writer lock");
            let (file, needs_newline) = &mut *guard;
            if *needs_newline {
                text.insert(0, '\n');
                *needs_newline = false;
            }
            file.write_all(text.as_bytes())
                .and_then(|_| file.sync_data())
                .runtime_ctx(|| format!("appending to the label cache {}", self.path.display()))?;
        }
        self.entries
            .lock()
            .expect("cache lock")
            .insert(key.clone(), answer.clone());
        Ok(())
    }
}
