//! The crate's shared vocabulary: the values that cross stage boundaries (in tables, configs
//! and reports) as one typed enum each, so that no stage matches them as strings.
//!
//! Each enum reads and writes the same lower-case names as before (`benign`, `attack_unseen`,
//! `validation_zero_fpr`, ...), so files written by earlier versions stay readable.

use serde::{Deserialize, Serialize};

/// Names, parsing and display for a fieldless enum whose variants have fixed text names.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The name used in files, configs and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// Every name, in declaration order (for help texts and error messages).
            pub fn names() -> Vec<&'static str> {
                Self::ALL.iter().map(|v| v.as_str()).collect()
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| {
                        format!(
                            "unknown value {text:?}; expected one of {}",
                            Self::names().join(", ")
                        )
                    })
            }
        }
    };
}
pub(crate) use named_enum;

/// A known class of a command line: the classifier's target and the oracle's truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Benign,
    Malicious,
}

named_enum!(Label { Benign => "benign", Malicious => "malicious" });

impl Label {
    /// A `label` cell: `benign` / `malicious` in any case and with surrounding space; anything
    /// else (`unknown`, empty, a typo) is no label.
    pub fn parse(text: &str) -> Option<Label> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("benign") {
            Some(Label::Benign)
        } else if text.eq_ignore_ascii_case("malicious") {
            Some(Label::Malicious)
        } else {
            None
        }
    }

    /// [`Label::parse`] of an optional cell.
    pub fn parse_opt(text: Option<&str>) -> Option<Label> {
        text.and_then(Label::parse)
    }

    pub fn is_malicious(self) -> bool {
        self == Label::Malicious
    }

    pub fn from_malicious(malicious: bool) -> Label {
        if malicious {
            Label::Malicious
        } else {
            Label::Benign
        }
    }

    /// The other class.
    pub fn flipped(self) -> Label {
        match self {
            Label::Benign => Label::Malicious,
            Label::Malicious => Label::Benign,
        }
    }

    /// The name of an optional label in tables: `unknown` when there is none.
    pub fn name_or_unknown(label: Option<Label>) -> &'static str {
        label.map_or(UNKNOWN, Label::as_str)
    }
}

/// The `label` text of a line whose class is not known (telemetry, background).
pub const UNKNOWN: &str = "unknown";

/// What a source contributes to the experiment (see `experiment::datasets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Frequent, simple benign lines: the baseline's benign class and the easy test.
    Common,
    /// Rare, complex benign lines: the stream's long tail and the hard test's benign side.
    Tail,
    /// Malicious lines, split by technique into seen (baseline) and unseen (hard test).
    Attack,
    /// Malicious sources the baseline never sees.
    AttackUnseen,
    /// Lines without a known label: stream only.
    Background,
}

named_enum!(Role {
    Common => "common",
    Tail => "tail",
    Attack => "attack",
    AttackUnseen => "attack_unseen",
    Background => "background",
});

/// How a classifier's stored threshold was chosen (`threshold.json`'s `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// The highest validation TPR at FPR <= the target.
    ValidationFpr,
    /// Just above the highest benign validation score: the target FPR was not resolvable.
    ValidationZeroFpr,
    /// 0.5, because validation has no benign line.
    Default,
}

named_enum!(ThresholdMethod {
    ValidationFpr => "validation_fpr",
    ValidationZeroFpr => "validation_zero_fpr",
    Default => "default",
});

/// Why a labeled line is kept out of augmentation whatever its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// The line looks like a prompt injection aimed at the labeler.
    Injection,
    /// Self-consistency samples disagreed.
    Disagreement,
}

named_enum!(Flag { Injection => "injection", Disagreement => "disagreement" });

impl Flag {
    /// The `flag` cell of the labeler's outputs: flags joined by commas, `None` for none.
    pub fn join(flags: &[Flag]) -> Option<String> {
        (!flags.is_empty()).then(|| {
            flags
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_labels_parse_loosely() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), *role);
            let json = serde_json::to_string(role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        for m in ThresholdMethod::ALL {
            let json = serde_json::to_string(m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
        }
        assert_eq!(Label::parse(" Malicious\n"), Some(Label::Malicious));
        assert_eq!(Label::parse("unknown"), None);
        assert_eq!("benign".parse::<Label>(), Ok(Label::Benign));
        let err = "evil".parse::<Label>().unwrap_err();
        assert!(err.contains("benign, malicious"), "{err}");
        assert_eq!(
            Flag::join(&[Flag::Injection, Flag::Disagreement]).as_deref(),
            Some("injection,disagreement")
        );
        assert_eq!(Flag::join(&[]), None);
    }
}

/// How the labeler asks for a verdict (written in calibration files and outputs' configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelProtocol {
    /// One answer: explanation and a verdict token in the text, parsed strictly.
    #[default]
    Text,
    /// The explanation, then the verdict asked as one constrained token whose probability
    /// (from the logprobs) is the score `p_benign`.
    Scored,
    /// The verdict token alone, without an explanation: the cheap scored mode.
    Direct,
}

named_enum!(LabelProtocol { Text => "text", Scored => "scored", Direct => "direct" });

impl LabelProtocol {
    /// Whether answers carry a score `p_benign` (the protocols with a verdict token turn).
    pub fn is_scored(self) -> bool {
        self != LabelProtocol::Text
    }
}

/// Which OpenAI-compatible server answers: it decides the field that constrains the verdict
/// token (`grammar` on llama-server, `structured_outputs` on vLLM, none on OpenAI, which
/// rejects unknown fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerApi {
    /// Ask `GET /v1/models` once (`owned_by`: `llamacpp`, `vllm`); anything else, and
    /// api.openai.com, gets no constraint field.
    #[default]
    Auto,
    Llama,
    Vllm,
    Openai,
}

named_enum!(ServerApi { Auto => "auto", Llama => "llama", Vllm => "vllm", Openai => "openai" });
