//! Verdicts and the strict parser of model answers.

use serde::{Deserialize, Serialize};

/// The answer token for a benign verdict.
pub const BENIGN_TOKEN: &str = "VERDICT_BENIGN";
/// The answer token for a malicious verdict.
pub const MALICIOUS_TOKEN: &str = "VERDICT_MALICIOUS";

/// Outcome for one command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Exactly one `VERDICT_BENIGN` (and, with several samples, all of them agree); with a
    /// score (protocols `scored`, `direct`), `p_benign` at or above the benign threshold.
    Benign,
    /// Exactly one `VERDICT_MALICIOUS` (in at least one sample); with a score, `p_benign`
    /// below both 0.5 and the threshold (the model leans malicious).
    Malicious,
    /// Scored protocols: `p_benign` at least 0.5 (the model leans benign) but below the benign
    /// threshold. Never benign: it goes to review, never to augmentation.
    Uncertain,
    /// An answer came back but without exactly one verdict token, or truncated. Never benign.
    Unparsed,
    /// No answer: the requests failed (see `error`); a rerun asks again.
    Error,
    /// Not asked: the request or token budget ran out; a rerun with more budget resumes.
    Skipped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Benign => "benign",
            Verdict::Malicious => "malicious",
            Verdict::Uncertain => "uncertain",
            Verdict::Unparsed => "unparsed",
            Verdict::Error => "error",
            Verdict::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict for a score: benign at or above `threshold`; below it, malicious if the model
/// leans malicious (`p_benign < 0.5`), else uncertain.
pub fn decide(p_benign: f64, threshold: f64) -> Verdict {
    if p_benign >= threshold {
        Verdict::Benign
    } else if p_benign < 0.5 {
        Verdict::Malicious
    } else {
        Verdict::Uncertain
    }
}

/// What the parser found in one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedAnswer {
    pub verdict: Verdict,
    pub benign_tokens: usize,
    pub malicious_tokens: usize,
}

/// Parse an answer strictly: exactly one verdict token in the whole text gives that verdict;
/// none, both, or one written twice give [`Verdict::Unparsed`]. Tokens match case-insensitively
/// but only as whole words (`VERDICT_BENIGNLY` is not a token).
pub fn parse_answer(text: &str) -> ParsedAnswer {
    let benign_tokens = count_token(text, BENIGN_TOKEN);
    let malicious_tokens = count_token(text, MALICIOUS_TOKEN);
    let verdict = match (benign_tokens, malicious_tokens) {
        (1, 0) => Verdict::Benign,
        (0, 1) => Verdict::Malicious,
        _ => Verdict::Unparsed,
    };
    ParsedAnswer {
        verdict,
        benign_tokens,
        malicious_tokens,
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn count_token(text: &str, token: &str) -> usize {
    let hay = text.as_bytes();
    let needle = token.as_bytes();
    if hay.len() < needle.len() {
        return 0;
    }
    (0..=hay.len() - needle.len())
        .filter(|&i| {
            hay[i..i + needle.len()].eq_ignore_ascii_case(needle)
                && (i == 0 || !is_word_byte(hay[i - 1]))
                && hay.get(i + needle.len()).is_none_or(|&b| !is_word_byte(b))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_decisions() {
        assert_eq!(decide(0.95, 0.9), Verdict::Benign);
        assert_eq!(decide(0.9, 0.9), Verdict::Benign);
        assert_eq!(decide(0.7, 0.9), Verdict::Uncertain);
        assert_eq!(decide(0.5, 0.9), Verdict::Uncertain);
        assert_eq!(decide(0.49, 0.9), Verdict::Malicious);
        // A threshold under 0.5 (a model that leans malicious too often): benign from it up.
        assert_eq!(decide(0.4, 0.3), Verdict::Benign);
        assert_eq!(decide(0.2, 0.3), Verdict::Malicious);
        assert_eq!(
            serde_json::to_string(&Verdict::Uncertain).unwrap(),
            "\"uncertain\""
        );
    }

    #[test]
    fn strict_parsing() {
        let v = |t: &str| parse_answer(t).verdict;
        assert_eq!(v("It lists files.\nVERDICT_BENIGN"), Verdict::Benign);
        assert_eq!(
            v("Dumps credentials.\n**VERDICT_MALICIOUS**"),
            Verdict::Malicious
        );
        assert_eq!(v("verdict_benign"), Verdict::Benign);
        assert_eq!(v("no verdict here"), Verdict::Unparsed);
        assert_eq!(v("VERDICT_BENIGN or VERDICT_MALICIOUS?"), Verdict::Unparsed);
        assert_eq!(v("VERDICT_BENIGN\nVERDICT_BENIGN"), Verdict::Unparsed);
        assert_eq!(v("VERDICT_BENIGNLY"), Verdict::Unparsed);
        assert_eq!(v("XVERDICT_BENIGN"), Verdict::Unparsed);
        assert_eq!(v("VERDICT: BENIGN"), Verdict::Unparsed);
        assert_eq!(v(""), Verdict::Unparsed);
        assert_eq!(v("é VERDICT_MALICIOUS é"), Verdict::Malicious);
    }
}
