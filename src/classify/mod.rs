//! Stage 5: the CNN command-line classifier ([`model`]), trained through the shared loop
//! ([`fit`]) on a labeled baseline plus benign augmentation lines ([`data`]), used by
//! `classify` ([`score_io`]), compared by `evaluate` ([`compare`]) and packaged by `export`
//! ([`export`]).
//!
//! A classifier directory holds `config.json` ([`ClassifierBundle`]: architecture, training
//! settings, data summary, training history, validation metrics), `model.safetensors`,
//! `threshold.json` ([`Threshold`]), `tokenizer.json` for BPE models ([`tokens`]) and, while
//! training, `checkpoint/`.

pub mod compare;
pub mod data;
pub mod export;
pub mod fit;
pub mod model;
pub mod score_io;
pub mod tokens;

use crate::Globals;
use crate::error::{Context, Result};
use crate::train::{OptimConfig, TrainState};
use crate::vocab::ThresholdMethod;
use burn::module::Module;
use burn::tensor::Device;
use data::DataSummary;
use fit::TrainingConfig;
use model::{CnnClassifier, CnnConfig, sigmoid};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokens::{TokenKind, Tokens};

/// The `format` written into every `config.json`; bump when the forward pass changes.
pub const FORMAT: &str = "longtail-cnn-classifier/1";

/// Everything chosen before training; `configs/classifier.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    pub model: CnnConfig,
    pub optim: OptimConfig,
    pub training: TrainingConfig,
}

impl ClassifierConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .input_ctx(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).input_ctx(|| format!("invalid classifier config {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.training.validate()
    }
}

/// Validation results of the saved (best) model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationSummary {
    pub lines: usize,
    pub malicious: usize,
    pub benign: usize,
    /// `None` when the validation split holds a single class.
    pub roc_auc: Option<f64>,
    pub pr_auc: Option<f64>,
    /// ROC AUC after each epoch (a resumed run's earlier epochs included).
    pub roc_auc_per_epoch: Vec<Option<f64>>,
}

/// `config.json` beside the weights.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassifierBundle {
    pub format: String,
    /// `bytes`: token = byte value, 256 = padding; `bpe`: ids from `tokenizer.json`,
    /// `config.model.vocab_size` = padding (the same as `config.model.tokenizer`).
    pub tokenizer: String,
    pub config: ClassifierConfig,
    pub data: DataSummary,
    /// Malicious-line loss weight actually used.
    pub pos_weight: f64,
    pub train_lines: usize,
    /// The model directory whose weights training started from (`--init`).
    pub init_from: Option<String>,
    pub device: String,
    pub seed: u64,
    pub training: Option<TrainState>,
    pub validation: Option<ValidationSummary>,
}

/// `threshold.json`: flag a line as malicious when `score >= threshold`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub threshold: f64,
    /// How it was chosen:
    /// - `validation_fpr`: the highest validation TPR at FPR <= `target_fpr`;
    /// - `validation_zero_fpr`: validation has too few benign lines to resolve `target_fpr`
    ///   (fewer than 1/target_fpr), so the threshold lies just above the highest benign
    ///   validation score: the lowest FPR reachable on that split (0 of its benign lines);
    /// - `default`: 0.5, because validation has no benign line at all (see `note`).
    pub method: ThresholdMethod,
    pub target_fpr: f64,
    /// Rates on the validation split at this threshold (when it has both classes).
    pub validation_fpr: Option<f64>,
    pub validation_tpr: Option<f64>,
    pub note: String,
}

impl Threshold {
    /// The threshold for `target_fpr` on validation scores. When validation holds fewer than
    /// 1/target_fpr benign lines the target cannot be resolved, and the threshold is set just
    /// above the highest benign score instead (FPR 0 on validation); 0.5 only when validation
    /// has no benign line.
    pub fn choose(scores: &[f64], labels: &[bool], target_fpr: f64) -> Self {
        let negatives = labels.iter().filter(|&&l| !l).count();
        let positives = labels.len() - negatives;
        let needed = (1.0 / target_fpr).ceil();
        let unresolved = format!(
            "validation has {negatives} benign lines; FPR {target_fpr} needs at least {needed:.0}"
        );
        let default = |note: String| Threshold {
            threshold: 0.5,
            method: ThresholdMethod::Default,
            target_fpr,
            validation_fpr: None,
            validation_tpr: None,
            note,
        };
        if negatives == 0 {
            return default(format!(
                "validation has no benign line ({positives} malicious), so no false-positive \
                 rate can be set; 0.5 is a guess: choose a threshold with `longtail evaluate`"
            ));
        }
        let max_benign = scores
            .iter()
            .zip(labels)
            .filter(|(_, l)| !**l)
            .map(|(&s, _)| s)
            .fold(f64::NEG_INFINITY, f64::max);
        if positives == 0 {
            // Just above the highest benign score: flags none of the validation lines.
            let threshold = next_above(max_benign);
            return Threshold {
                threshold,
                method: ThresholdMethod::ValidationZeroFpr,
                target_fpr,
                validation_fpr: Some(0.0),
                validation_tpr: None,
                note: format!(
                    "{}; validation has no malicious line, so the threshold is just above the \
                     highest benign validation score {max_benign:.6} (FPR 0 on validation)",
                    if negatives as f64 >= needed {
                        "target resolvable".to_string()
                    } else {
                        unresolved.clone()
                    }
                ),
            };
        }
        let curve = match crate::evaluate::roc_curve(scores, labels) {
            Ok(c) => c,
            Err(e) => return default(format!("no ROC curve on validation: {e}")),
        };
        match curve.tpr_at_fpr(target_fpr) {
            Ok(p) if p.resolvable => Threshold {
                threshold: p.threshold,
                method: ThresholdMethod::ValidationFpr,
                target_fpr,
                validation_fpr: Some(p.fpr),
                validation_tpr: Some(p.tpr),
                note: format!(
                    "highest validation TPR at FPR <= {target_fpr} over {negatives} benign lines"
                ),
            },
            // With no false positive allowed, the operating point flags exactly the lines
            // scored above every benign line: its threshold lies above the highest benign score.
            Ok(p) => Threshold {
                threshold: p.threshold,
                method: ThresholdMethod::ValidationZeroFpr,
                target_fpr,
                validation_fpr: Some(p.fpr),
                validation_tpr: Some(p.tpr),
                note: format!(
                    "{unresolved}, so the target could not be resolved; the threshold lies just \
                     above the highest benign validation score {max_benign:.6}: the lowest FPR \
                     reachable on this split (0 of {negatives}), at validation TPR {:.4}. The \
                     FPR on new data may well exceed {target_fpr}; check with `longtail evaluate`",
                    p.tpr
                ),
            },
            Err(e) => default(format!("no threshold on validation: {e}")),
        }
    }
}

/// The smallest threshold that flags nothing scored `x` or lower (scores are probabilities).
fn next_above(x: f64) -> f64 {
    x + (x.abs() * 1e-6).max(1e-12)
}

/// A trained classifier, loaded for scoring.
pub struct Classifier {
    pub bundle: ClassifierBundle,
    pub threshold: Threshold,
    pub model: CnnClassifier,
    /// Turns lines into the model's token ids (bytes, or the BPE of `tokenizer.json`).
    pub tokens: Tokens,
    pub device: Device,
}

impl Classifier {
    pub fn load(dir: &Path, globals: &Globals) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(crate::Error::input(format!(
                "{} is not a classifier directory (no config.json); train one with \
                 `longtail train-classifier` or pass an exported models/NAME folder",
                dir.display()
            )));
        }
        let bundle: ClassifierBundle = crate::io::read_json(&cfg_path, "classifier config")?;
        if bundle.format != FORMAT {
            return Err(crate::Error::input(format!(
                "{} has format {:?}; this longtail reads {FORMAT:?}: retrain or use a matching release",
                cfg_path.display(),
                bundle.format
            )));
        }
        bundle.config.model.validate()?;
        let model_cfg = &bundle.config.model;
        let tokens = Tokens::load(dir, model_cfg.tokenizer, model_cfg.vocab())?;
        let threshold: Threshold = crate::io::read_json(&dir.join("threshold.json"), "threshold")?;
        let chosen = globals.device.clone();
        let model = bundle.config.model.init(&chosen.device);
        let model = crate::train::load_weights(model, &dir.join("model.safetensors"))?.valid();
        Ok(Self {
            bundle,
            threshold,
            model,
            tokens,
            device: chosen.device,
        })
    }

    /// Probability of malicious for each line, in order. `on_batch` gets the lines done.
    pub fn score(
        &self,
        lines: &[&str],
        batch_tokens: usize,
        on_batch: impl FnMut(usize),
    ) -> Vec<f64> {
        let cfg = &self.bundle.config.model;
        let clipped: Vec<Vec<u32>> = self
            .tokens
            .encode_all(lines)
            .into_iter()
            .map(|t| cfg.clip(&t).into_owned())
            .collect();
        let rows: Vec<&[u32]> = clipped.iter().map(|c| c.as_slice()).collect();
        fit::logits(
            &self.model,
            cfg,
            &rows,
            &self.device,
            1024,
            batch_tokens,
            on_batch,
        )
        .into_iter()
        .map(sigmoid)
        .collect()
    }

    /// `score >= threshold`.
    pub fn is_malicious(&self, score: f64) -> bool {
        score >= self.threshold.threshold
    }
}

/// Write `config.json` atomically.
pub fn write_bundle(dir: &Path, bundle: &ClassifierBundle) -> Result<()> {
    crate::io::write_json(&dir.join("config.json"), bundle)
}

/// What [`train`] is asked to do.
pub struct TrainRequest<'a> {
    pub config: &'a ClassifierConfig,
    pub train: &'a [std::path::PathBuf],
    pub augment: &'a [std::path::PathBuf],
    pub init: Option<&'a Path>,
    pub out: &'a Path,
    pub resume: bool,
}

/// Train a classifier into `req.out`: config.json, model.safetensors, threshold.json, and
/// tokenizer.json for BPE tokens (trained on the training split, or taken from `--init`).
pub fn train(req: &TrainRequest, globals: &Globals) -> Result<ClassifierBundle> {
    let mut config = req.config.clone();
    let chosen = globals.device.clone();
    let train_device = chosen.device.clone().autodiff();
    let mut init_tokens = None;
    let init = match req.init {
        Some(dir) => {
            let from = Classifier::load(dir, globals)?;
            init_tokens = Some(from.tokens.clone());
            if from.bundle.config.model != config.model {
                tracing::info!(
                    "--init: using the architecture of {} (the config's [model] is ignored)",
                    dir.display()
                );
                config.model = from.bundle.config.model.clone();
            }
            let model = config.model.init(&train_device);
            Some(crate::train::load_weights(
                model,
                &dir.join("model.safetensors"),
            )?)
        }
        None => None,
    };
    config.validate()?;
    let cfg_path = req.out.join("config.json");
    if req.resume && cfg_path.exists() {
        let previous: ClassifierBundle = crate::io::read_json(&cfg_path, "classifier config")?;
        if previous.config != config {
            return Err(crate::Error::input(format!(
                "--resume: {} was started with a different config; rerun without --resume \
                 (starts over) or with the same --config and options",
                cfg_path.display()
            )));
        }
    }
    let (examples, summary) = data::load_training_set(req.train, req.augment)?;
    tracing::info!(
        "training set: {} benign, {} malicious, {} augmentation (benign); skipped labels {:?}",
        summary.benign,
        summary.malicious,
        summary.augment,
        summary.skipped_labels
    );
    let run = crate::train::RunDir::new(req.out)?;
    let tokens = training_tokens(req, &config, &examples, init_tokens)?;
    tokens.save(req.out)?;
    let mut bundle = ClassifierBundle {
        format: FORMAT.into(),
        tokenizer: config.model.tokenizer.name().into(),
        config: config.clone(),
        data: summary,
        pos_weight: 0.0,
        train_lines: 0,
        init_from: req.init.map(|p| p.display().to_string()),
        device: chosen.name.clone(),
        seed: globals.seed,
        training: None,
        validation: None,
    };
    // Written first so that a killed run can be inspected and resumed.
    write_bundle(req.out, &bundle)?;
    let setup = fit::TrainSetup {
        model: &config.model,
        tokens: &tokens,
        optim: &config.optim,
        training: &config.training,
        run: &run,
        device: &chosen.device,
        seed: globals.seed,
        resume: req.resume,
        init,
    };
    let (_model, outcome) = fit::train(&setup, &examples)?;
    let malicious = outcome.val_labels.iter().filter(|&&l| l).count();
    let curve = crate::evaluate::roc_curve(&outcome.val_scores, &outcome.val_labels).ok();
    bundle.validation = Some(ValidationSummary {
        lines: outcome.val_labels.len(),
        malicious,
        benign: outcome.val_labels.len() - malicious,
        roc_auc: curve.as_ref().map(|c| c.auc()),
        pr_auc: curve.as_ref().map(|c| c.average_precision()),
        roc_auc_per_epoch: outcome
            .val_auc_per_epoch
            .iter()
            .map(|&a| a.is_finite().then_some(a))
            .collect(),
    });
    let threshold = Threshold::choose(
        &outcome.val_scores,
        &outcome.val_labels,
        config.training.threshold_fpr,
    );
    match threshold.method {
        ThresholdMethod::Default => tracing::warn!("threshold 0.5 (default): {}", threshold.note),
        ThresholdMethod::ValidationZeroFpr => tracing::warn!(
            "threshold {:.6} (above every benign validation score): {}",
            threshold.threshold,
            threshold.note
        ),
        ThresholdMethod::ValidationFpr => {}
    }
    bundle.pos_weight = outcome.pos_weight;
    bundle.train_lines = outcome.train_lines;
    bundle.training = Some(outcome.state);
    crate::io::write_json(&req.out.join("threshold.json"), &threshold)?;
    write_bundle(req.out, &bundle)?;
    Ok(bundle)
}

/// The tokenizer to train with: bytes; the `--init` model's BPE; on `--resume`, the BPE saved
/// in the run directory; otherwise a BPE learnt from the training split (not validation).
fn training_tokens(
    req: &TrainRequest,
    config: &ClassifierConfig,
    examples: &[data::Example],
    init_tokens: Option<Tokens>,
) -> Result<Tokens> {
    let cfg = &config.model;
    if cfg.tokenizer == TokenKind::Bytes {
        return Ok(Tokens::Bytes);
    }
    if let Some(t) = init_tokens {
        return Ok(t);
    }
    if req.resume && req.out.join(tokens::TOKENIZER_FILE).exists() {
        return Tokens::load(req.out, cfg.tokenizer, cfg.vocab());
    }
    let texts: Vec<Vec<u8>> = examples.iter().map(|e| e.cmd.as_bytes().to_vec()).collect();
    let (train_idx, _) = crate::data::split_train_val(&texts, config.training.val_fraction);
    let spinner = crate::progress::spinner("training the BPE vocabulary", "lines");
    let start = std::time::Instant::now();
    let tokens = Tokens::train_bpe(
        train_idx.iter().map(|&i| examples[i].cmd.as_str()),
        cfg.vocab_size,
    )?;
    spinner.finish_and_clear();
    if let Tokens::Bpe(t) = &tokens {
        tracing::info!(
            "BPE vocabulary: {} tokens (asked {}) from {} lines in {:.1}s",
            t.get_vocab_size(true),
            cfg.vocab_size,
            train_idx.len(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(tokens)
}

/// Number of parameters of a model (for the model card).
pub fn parameter_count(model: &CnnClassifier) -> usize {
    model.num_params()
}

#[cfg(test)]
mod tests {
    use super::Threshold;
    use crate::vocab::ThresholdMethod;

    /// `n` evenly spaced scores in `[lo, hi]`.
    fn spread(n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
            .collect()
    }

    fn set(benign: &[f64], malicious: &[f64]) -> (Vec<f64>, Vec<bool>) {
        let scores = [benign, malicious].concat();
        let labels = (0..scores.len()).map(|i| i >= benign.len()).collect();
        (scores, labels)
    }

    #[test]
    fn too_few_benign_lines_put_the_threshold_just_above_the_highest_benign_score() {
        // 200 benign lines cannot resolve FPR 1e-3; the classes overlap in [0.4, 0.6].
        let (scores, labels) = set(&spread(200, 0.0, 0.6), &spread(50, 0.4, 1.0));
        let t = Threshold::choose(&scores, &labels, 1e-3);
        assert_eq!(t.method, ThresholdMethod::ValidationZeroFpr, "{t:?}");
        assert!(t.threshold > 0.6 && t.threshold < 0.62, "{t:?}");
        let flagged_benign = scores[..200].iter().filter(|&&s| s >= t.threshold).count();
        assert_eq!(flagged_benign, 0);
        let flagged = scores[200..].iter().filter(|&&s| s >= t.threshold).count();
        assert_eq!(t.validation_fpr, Some(0.0));
        assert_eq!(t.validation_tpr, Some(flagged as f64 / 50.0));
        assert!(flagged > 25 && flagged < 50, "{flagged}");
        assert!(
            t.note.contains("200 benign") && t.note.contains("could not be resolved"),
            "{}",
            t.note
        );
    }

    #[test]
    fn enough_benign_lines_resolve_the_target() {
        let (scores, labels) = set(&spread(2000, 0.0, 0.6), &spread(50, 0.4, 1.0));
        let t = Threshold::choose(&scores, &labels, 1e-3);
        assert_eq!(t.method, ThresholdMethod::ValidationFpr, "{t:?}");
        // Two benign lines may be flagged: the threshold lies between the 2nd and 3rd highest.
        let flagged_benign = scores[..2000].iter().filter(|&&s| s >= t.threshold).count();
        assert_eq!(flagged_benign, 2, "{t:?}");
        assert!(t.threshold < 0.6);
    }

    #[test]
    fn single_class_validation() {
        let (scores, labels) = set(&spread(30, 0.1, 0.7), &[]);
        let t = Threshold::choose(&scores, &labels, 1e-3);
        assert_eq!(t.method, ThresholdMethod::ValidationZeroFpr);
        assert!(t.threshold > 0.7 && t.threshold < 0.7001, "{t:?}");
        let (scores, labels) = set(&[], &spread(30, 0.1, 0.7));
        let t = Threshold::choose(&scores, &labels, 1e-3);
        assert_eq!((t.method, t.threshold), (ThresholdMethod::Default, 0.5));
        assert!(t.note.contains("no benign line"), "{}", t.note);
    }
}
