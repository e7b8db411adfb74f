//! The oracle labeler: answers from known labels, optionally with a controlled error rate, so
//! experiments can measure how labeler mistakes propagate into the classifier.
//!
//! The noise model is set by two precisions, the quantities the source work measured for its
//! LLM (100% for benign verdicts, 36% for malicious ones): `benign_precision` P = share of
//! benign verdicts that are truly benign, `malicious_precision` Q = share of malicious verdicts
//! that are truly malicious. Given the candidates' true counts (nb benign, nm malicious), the
//! oracle flips exactly enough labels to reach P and Q (up to rounding), choosing which ones
//! with a seeded shuffle, so a run is reproducible and independent of input order.
//!
//! Or, with [`OracleLabeler::with_rates`], by the two per-class rates a calibration measures
//! for a real labeler at its threshold (`longtail label --calibrate`): the share of benign lines
//! it accepts as benign (benign recall) and the share of malicious lines it lets through as
//! benign (malicious leak). The oracle then answers exactly round(recall x nb) of the benign
//! candidates benign and round(leak x nm) of the malicious ones benign; the other benign lines
//! are answered malicious, which stands for "not accepted" (a real labeler's `uncertain` or
//! `malicious`: either way to review, never to augmentation). Rates, unlike precisions, do not
//! depend on the selection's class mix, so one calibration emulates the labeler on any arm.

use super::{Answer, AskError, BoxFuture, Budget, Labeler, LabelerInfo};
use crate::error::{Context, Error, Result};
use crate::vocab::Label;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where the oracle's labels come from, and its noise.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OracleConfig {
    /// Parquet or JSONL with string columns/fields `cmd` and `label`.
    pub path: PathBuf,
    /// Target precision of benign verdicts, in (0, 1]; `None` = 1.
    pub benign_precision: Option<f64>,
    /// Target precision of malicious verdicts, in (0, 1]; `None` = 1.
    pub malicious_precision: Option<f64>,
    pub seed: u64,
}

/// Answers from known labels.
pub struct OracleLabeler {
    labels: HashMap<String, Label>,
    benign_precision: f64,
    malicious_precision: f64,
    seed: u64,
    /// `(benign recall, malicious leak)`: the rate noise model instead of the precisions.
    rates: Option<(f64, f64)>,
    flipped: Mutex<HashSet<String>>,
    info: LabelerInfo,
}

impl OracleLabeler {
    /// Load the labels file named in `cfg`.
    pub fn load(cfg: &OracleConfig) -> Result<OracleLabeler> {
        let labels = read_labels(&cfg.path)?;
        OracleLabeler::from_labels(
            labels,
            &cfg.path.display().to_string(),
            cfg.benign_precision,
            cfg.malicious_precision,
            cfg.seed,
        )
    }

    /// An oracle over labels already in memory; `source` names them in outputs.
    pub fn from_labels(
        labels: HashMap<String, Label>,
        source: &str,
        benign_precision: Option<f64>,
        malicious_precision: Option<f64>,
        seed: u64,
    ) -> Result<OracleLabeler> {
        let p = benign_precision.unwrap_or(1.0);
        let q = malicious_precision.unwrap_or(1.0);
        for (name, v) in [
            ("--oracle-benign-precision", p),
            ("--oracle-malicious-precision", q),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::input(format!("{name} must be in (0, 1], got {v}")));
            }
        }
        if p + q <= 1.0 {
            return Err(Error::input(format!(
                "precisions {p} (benign) and {q} (malicious) add up to at most 1: such a labeler \
                 is no better than chance; choose values whose sum exceeds 1"
            )));
        }
        let model = if p == 1.0 && q == 1.0 {
            "oracle".to_string()
        } else {
            format!("oracle(benign_precision={p},malicious_precision={q},seed={seed})")
        };
        let info = LabelerInfo {
            endpoint: format!("oracle:{source}"),
            model,
            prompt_version: "oracle".into(),
            prompt_fingerprint: String::new(),
            cacheable: false,
            max_answer_tokens: None,
            protocol: crate::vocab::LabelProtocol::Text,
        };
        Ok(OracleLabeler {
            labels,
            benign_precision: p,
            malicious_precision: q,
            seed,
            rates: None,
            flipped: Mutex::new(HashSet::new()),
            info,
        })
    }

    /// The rate noise model (module docs): accept `benign_recall` of the benign candidates
    /// and let `malicious_leak` of the malicious ones through as benign. Replaces the
    /// precisions, which must then be exact (1).
    pub fn with_rates(mut self, benign_recall: f64, malicious_leak: f64) -> Result<Self> {
        if self.benign_precision < 1.0 || self.malicious_precision < 1.0 {
            return Err(Error::input(
                "the oracle takes either precisions or rates (benign recall, malicious leak), \
                 not both: drop one of them",
            ));
        }
        let recall_ok = benign_recall > 0.0 && benign_recall <= 1.0;
        if !recall_ok || !(0.0..1.0).contains(&malicious_leak) {
            return Err(Error::input(format!(
                "oracle rates: benign recall must be in (0, 1] and malicious leak in [0, 1), got \
                 {benign_recall} and {malicious_leak}"
            )));
        }
        self.rates = Some((benign_recall, malicious_leak));
        self.info.model = format!(
            "oracle(benign_recall={benign_recall},malicious_leak={malicious_leak},seed={})",
            self.seed
        );
        Ok(self)
    }

    /// The true label of `cmd`, if the file has one.
    pub fn known(&self, cmd: &str) -> Option<Label> {
        self.labels.get(cmd).copied()
    }

    /// The verdict the oracle gives `cmd` after noise.
    pub fn answer_for(&self, cmd: &str) -> Option<Label> {
        let truth = self.known(cmd)?;
        Some(if self.flipped.lock().expect("oracle lock").contains(cmd) {
            truth.flipped()
        } else {
            truth
        })
    }
}

impl Labeler for OracleLabeler {
    fn info(&self) -> &LabelerInfo {
        &self.info
    }

    fn prepare(&self, cmds: &[String]) -> Result<()> {
        let mut benign: Vec<&String> = Vec::new();
        let mut malicious: Vec<&String> = Vec::new();
        for cmd in cmds.iter().collect::<HashSet<_>>() {
            match self.known(cmd) {
                Some(Label::Benign) => benign.push(cmd),
                Some(Label::Malicious) => malicious.push(cmd),
                None => {}
            }
        }
        benign.sort();
        malicious.sort();
        let (nb, nm) = (benign.len() as f64, malicious.len() as f64);
        let (kept_b, kept_m) = if let Some((recall, leak)) = self.rates {
            (
                (recall * nb).round() as usize,
                ((1.0 - leak) * nm).round() as usize,
            )
        } else {
            let rp = (1.0 - self.benign_precision) / self.benign_precision;
            let rq = (1.0 - self.malicious_precision) / self.malicious_precision;
            let det = 1.0 - rp * rq; // > 0 because p + q > 1
            // Solve: kept_b + rq * kept_m = nb and rp * kept_b + kept_m = nm, where kept_b /
            // kept_m are the true benign / malicious lines that keep their label.
            (
                ((nb - rq * nm) / det).round().clamp(0.0, nb) as usize,
                ((nm - rp * nb) / det).round().clamp(0.0, nm) as usize,
            )
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        benign.shuffle(&mut rng);
        malicious.shuffle(&mut rng);
        let mut flipped = self.flipped.lock().expect("oracle lock");
        flipped.clear();
        flipped.extend(benign[kept_b..].iter().map(|c| c.to_string()));
        flipped.extend(malicious[kept_m..].iter().map(|c| c.to_string()));
        let (fb, fm) = (benign.len() - kept_b, malicious.len() - kept_m);
        let precision = |good: usize, bad: usize| {
            if good + bad == 0 {
                f64::NAN
            } else {
                good as f64 / (good + bad) as f64
            }
        };
        if fb + fm > 0
            || self.rates.is_some()
            || self.benign_precision < 1.0
            || self.malicious_precision < 1.0
        {
            tracing::info!(
                "oracle noise: {} benign and {} malicious candidates with labels; {fm} malicious \
                 answered benign, {fb} benign answered malicious; benign-verdict precision \
                 {:.4} (target {}), malicious-verdict precision {:.4} (target {})",
                benign.len(),
                malicious.len(),
                precision(kept_b, fm),
                self.benign_precision,
                precision(kept_m, fb),
                self.malicious_precision
            );
        }
        Ok(())
    }

    fn ask<'a>(
        &'a self,
        cmd: &'a str,
        _sample: u32,
        _budget: &'a Budget,
    ) -> BoxFuture<'a, std::result::Result<Answer, AskError>> {
        let result = match (self.known(cmd), self.answer_for(cmd)) {
            (Some(truth), Some(given)) => {
                let token = match given {
                    Label::Benign => super::BENIGN_TOKEN,
                    Label::Malicious => super::MALICIOUS_TOKEN,
                };
                let noise = if truth != given {
                    " (flipped by the noise model)"
                } else {
                    ""
                };
                Ok(Answer::text(
                    format!(
                        "Oracle: the known label is {}{noise}.\n{token}",
                        truth.as_str()
                    ),
                    Some("stop".into()),
                ))
            }
            _ => Err(AskError::Failed {
                message: "the oracle file has no benign/malicious label for this command".into(),
                attempts: 0,
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

/// Read `cmd` -> label from any table [`crate::io::read_labeled`] reads (Parquet, JSONL,
/// CSV, ...). Commands labeled both ways are dropped (warned).
pub fn read_labels(path: &Path) -> Result<HashMap<String, Label>> {
    let pairs = crate::io::read_labeled(&[path.to_path_buf()], false)
        .input_ctx(|| format!("cannot read the oracle labels {}", path.display()))?
        .into_iter()
        .map(|row| {
            let label = row.label();
            (row.cmd, label)
        });
    let mut labels: HashMap<String, Label> = HashMap::new();
    let mut conflicts: HashSet<String> = HashSet::new();
    for (cmd, label) in pairs {
        let Some(label) = label else { continue };
        match labels.get(&cmd) {
            Some(&old) if old != label => {
                conflicts.insert(cmd);
            }
            _ => {
                labels.insert(cmd, label);
            }
        }
    }
    for cmd in &conflicts {
        labels.remove(cmd);
    }
    if !conflicts.is_empty() {
        tracing::warn!(
            "oracle labels {}: {} command(s) are labeled both benign and malicious; the oracle \
             treats them as unknown",
            path.display(),
            conflicts.len()
        );
    }
    if labels.is_empty() {
        return Err(Error::input(format!(
            "oracle labels {} hold no `benign` or `malicious` label",
            path.display()
        )));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oracle(nb: usize, nm: usize) -> (OracleLabeler, Vec<String>) {
        let mut labels = HashMap::new();
        let mut cmds = Vec::new();
        for i in 0..nb {
            labels.insert(format!("benign {i}"), Label::Benign);
            cmds.push(format!("benign {i}"));
        }
        for i in 0..nm {
            labels.insert(format!("malicious {i}"), Label::Malicious);
            cmds.push(format!("malicious {i}"));
        }
        (
            OracleLabeler::from_labels(labels, "test", None, None, 3).unwrap(),
            cmds,
        )
    }

    #[test]
    fn rates_accept_that_share_of_benign_lines_and_leak_that_share_of_malicious_ones() {
        let (o, cmds) = oracle(200, 50);
        let o = o.with_rates(0.6, 0.1).unwrap();
        o.prepare(&cmds).unwrap();
        let said_benign = |prefix: &str| {
            cmds.iter()
                .filter(|c| c.starts_with(prefix))
                .filter(|c| o.answer_for(c) == Some(Label::Benign))
                .count()
        };
        assert_eq!(said_benign("benign"), 120);
        assert_eq!(said_benign("malicious"), 5);
        assert!(o.info().model.contains("benign_recall=0.6"));
        // The same rates on a selection with another class mix: the same shares.
        let (o, cmds) = oracle(40, 160);
        let o = o.with_rates(0.6, 0.1).unwrap();
        o.prepare(&cmds).unwrap();
        let n = |p: &str| {
            cmds.iter()
                .filter(|c| c.starts_with(p) && o.answer_for(c) == Some(Label::Benign))
                .count()
        };
        assert_eq!((n("benign"), n("malicious")), (24, 16));
    }

    #[test]
    fn rates_are_checked_and_exclusive_with_precisions() {
        let (o, _) = oracle(1, 1);
        assert!(o.with_rates(0.0, 0.1).is_err());
        let (o, _) = oracle(1, 1);
        assert!(o.with_rates(0.5, 1.0).is_err());
        let noisy = OracleLabeler::from_labels(HashMap::new(), "t", Some(0.9), None, 1).unwrap();
        let err = noisy.with_rates(0.5, 0.1).err().unwrap().to_string();
        assert!(err.contains("not both"), "{err}");
    }
}
