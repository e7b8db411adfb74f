//! The scored verdict: P(benign) read from the logprobs of the verdict token, whatever shape
//! the server gives them in.
//!
//! Shapes read (the first position with the most probability on the two labels counts):
//! - OpenAI, vLLM and current llama-server chat completions:
//!   `choices[0].logprobs.content[i] = {token, logprob, top_logprobs: [{token, logprob}]}`;
//! - llama-server's native `completion_probabilities[i]` (top level or in the choice) with
//!   `top_logprobs` (`logprob`), `top_probs` (`prob`, with `post_sampling_probs`) or, before
//!   2025, `probs: [{tok_str, prob}]`;
//! - legacy completions: `choices[0].logprobs.top_logprobs[i] = {token: logprob}`.
//!
//! A label is matched in its token variants: any case, after leading spaces, quotes or
//! markdown, and as a piece (`ben`, `Mal`: at least 3 letters of the word), or followed by
//! punctuation (`benign.`). `p_benign = P(benign) / (P(benign) + P(malicious))`.

use crate::vocab::Label;
use serde_json::Value;

/// Positions read from the start of the answer: the verdict is its first word.
const POSITIONS: usize = 4;
/// Shortest label piece that counts (`be`, `ma` start too many other words).
const MIN_PIECE: usize = 3;

/// What the logprobs of one verdict answer say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LogprobReading {
    /// The response has no logprobs (the server or the model does not give them).
    Absent,
    /// Logprobs, but no label among the top tokens: the model wanted to say something else.
    NoLabel,
    /// The score, and `mass` = P(benign) + P(malicious) at the position read.
    Scored { p_benign: f64, mass: f64 },
}

/// The label a token stands for at the start of the verdict, if any.
pub fn token_label(token: &str) -> Option<Label> {
    let t = token
        .trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '*' | '`' | '_' | '\u{2581}' | '\u{120}')
        })
        .to_lowercase();
    if t.is_empty() {
        return None;
    }
    [Label::Benign, Label::Malicious].into_iter().find(|l| {
        let word = l.as_str();
        (t.chars().count() >= MIN_PIECE && word.starts_with(&t))
            || t.strip_prefix(word)
                .is_some_and(|rest| !rest.chars().any(char::is_alphanumeric))
    })
}

/// The label of a verdict answer's text (`benign`, ` Malicious.`, `ben`), for voting when
/// there are no logprobs.
pub fn word_label(text: &str) -> Option<Label> {
    let word: String = text
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .chars()
        .take_while(|c| c.is_alphanumeric())
        .collect();
    token_label(&word)
}

/// Read the verdict's score from a parsed response body.
pub fn read_logprobs(response: &Value) -> LogprobReading {
    let positions = positions(response);
    if positions.is_empty() {
        return LogprobReading::Absent;
    }
    let mut best: Option<(f64, f64)> = None;
    for candidates in positions.iter().take(POSITIONS) {
        let (mut benign, mut malicious) = (0.0, 0.0);
        for (token, p) in candidates {
            match token_label(token) {
                Some(Label::Benign) => benign += p,
                Some(Label::Malicious) => malicious += p,
                None => {}
            }
        }
        if benign + malicious > best.map_or(0.0, |(b, m)| b + m) {
            best = Some((benign, malicious));
        }
    }
    match best {
        Some((b, m)) => LogprobReading::Scored {
            p_benign: (b / (b + m)).clamp(0.0, 1.0),
            mass: (b + m).min(1.0),
        },
        None => LogprobReading::NoLabel,
    }
}

/// Candidate tokens and their probabilities, position by position.
fn positions(response: &Value) -> Vec<Vec<(String, f64)>> {
    let choice = &response["choices"][0];
    if let Some(content) = choice["logprobs"]["content"].as_array() {
        return content.iter().map(position).collect();
    }
    // Legacy completions: one {token: logprob} map per position.
    if let Some(maps) = choice["logprobs"]["top_logprobs"].as_array() {
        return maps
            .iter()
            .filter_map(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(t, lp)| Some((t.clone(), from_logprob(lp)?)))
                    .collect()
            })
            .collect();
    }
    for holder in [response, choice] {
        if let Some(items) = holder["completion_probabilities"].as_array() {
            return items.iter().map(position).collect();
        }
    }
    Vec::new()
}

/// One position: its top candidates, plus the chosen token if the list lacks it.
fn position(item: &Value) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let lists = [
        ("top_logprobs", "token", true),
        ("top_probs", "token", false),
        ("probs", "tok_str", false),
    ];
    for (list, key, is_log) in lists {
        if let Some(entries) = item[list].as_array() {
            out.extend(entries.iter().filter_map(|e| {
                let token = e[key].as_str()?.to_string();
                let p = if is_log {
                    from_logprob(&e["logprob"])?
                } else {
                    from_prob(&e["prob"])?
                };
                Some((token, p))
            }));
        }
    }
    let own_token = item["token"].as_str().or(item["content"].as_str());
    let own_p = from_logprob(&item["logprob"]).or_else(|| from_prob(&item["prob"]));
    if let (Some(token), Some(p)) = (own_token, own_p)
        && !out.iter().any(|(t, _)| t == token)
    {
        out.push((token.to_string(), p));
    }
    out
}

/// A probability from a logprob; `null` (llama-server's -inf) and vLLM's -9999 give ~0.
fn from_logprob(v: &Value) -> Option<f64> {
    let lp = v.as_f64()?;
    (!lp.is_nan()).then(|| lp.min(0.0).exp())
}

fn from_prob(v: &Value) -> Option<f64> {
    let p = v.as_f64()?;
    (p.is_finite() && (0.0..=1.0).contains(&p)).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_token_variants() {
        for t in [
            "benign",
            " benign",
            "Benign",
            "BENIGN",
            "ben",
            " Ben",
            "benig",
            "benign.",
            "\"benign",
            "**Benign**",
            "\u{120}benign",
            "\u{2581}ben",
        ] {
            assert_eq!(token_label(t), Some(Label::Benign), "{t:?}");
        }
        for t in ["malicious", " Malicious", "mal", "MALI", "malicious\n"] {
            assert_eq!(token_label(t), Some(Label::Malicious), "{t:?}");
        }
        for t in [
            "", " ", "b", "be", "m", "ma", "benignly", "bend", "Based", "malware", "VERDICT", "**",
        ] {
            assert_eq!(token_label(t), None, "{t:?}");
        }
        assert_eq!(word_label("  Malicious."), Some(Label::Malicious));
        assert_eq!(word_label("ben"), Some(Label::Benign));
        assert_eq!(word_label("I think benign"), None);
        assert_eq!(word_label(""), None);
    }

    #[test]
    fn reads_every_shape() {
        let lp = |p: f64| p.ln();
        let openai = json!({"choices": [{"logprobs": {"content": [{"token": "benign",
            "logprob": lp(0.6), "top_logprobs": [
                {"token": "benign", "logprob": lp(0.6)}, {"token": " Benign", "logprob": lp(0.1)},
                {"token": "mal", "logprob": lp(0.2)}, {"token": "The", "logprob": lp(0.1)}]}]}}]});
        let LogprobReading::Scored { p_benign, mass } = read_logprobs(&openai) else {
            panic!("scored")
        };
        assert!((p_benign - 0.7 / 0.9).abs() < 1e-9 && (mass - 0.9).abs() < 1e-9);
        let native = json!({"completion_probabilities": [{"token": "mal", "logprob": null,
            "top_logprobs": [{"token": "Mal", "logprob": lp(0.75)},
                             {"token": "ben", "logprob": lp(0.25)}]}]});
        assert_eq!(
            read_logprobs(&native),
            LogprobReading::Scored {
                p_benign: 0.25,
                mass: 1.0
            }
        );
        let old = json!({"completion_probabilities": [{"content": "ben",
            "probs": [{"tok_str": "ben", "prob": 0.5}, {"tok_str": "mal", "prob": 0.5}]}]});
        assert_eq!(
            read_logprobs(&old),
            LogprobReading::Scored {
                p_benign: 0.5,
                mass: 1.0
            }
        );
        let legacy = json!({"choices": [{"logprobs": {"top_logprobs": [
            {" benign": lp(0.2), " malicious": -9999.0}]}}]});
        let LogprobReading::Scored { p_benign, .. } = read_logprobs(&legacy) else {
            panic!("scored")
        };
        assert!(p_benign > 0.999_999);
        // A first position without labels (markdown) loses to the second one.
        let later = json!({"choices": [{"logprobs": {"content": [
            {"token": "**", "logprob": lp(0.9),
             "top_logprobs": [{"token": "**", "logprob": lp(0.9)}]},
            {"token": "Mal", "logprob": lp(0.5),
             "top_logprobs": [{"token": "Mal", "logprob": lp(0.5)},
                {"token": "Ben", "logprob": lp(0.5)}]}]}}]});
        assert!(matches!(read_logprobs(&later),
                     LogprobReading::Scored { p_benign, .. } if (p_benign - 0.5).abs() < 1e-9));
    }

    #[test]
    fn absent_and_label_free_logprobs() {
        assert_eq!(
            read_logprobs(&json!({"choices": [{"message": {"content": "benign"}}]})),
            LogprobReading::Absent
        );
        assert_eq!(
            read_logprobs(&json!({"choices": [{"logprobs": null}]})),
            LogprobReading::Absent
        );
        let none = json!({"choices": [{"logprobs": {"content": [{"token": "I", "logprob": -0.1,
            "top_logprobs": [{"token": "I", "logprob": -0.1},
                             {"token": "As", "logprob": "x"}]}]}}]});
        assert_eq!(read_logprobs(&none), LogprobReading::NoLabel);
    }
}
