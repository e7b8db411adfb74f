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
pub mod pretrain;
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
use std::path::{Path, PathBuf};
use tokens::{TokenKind, Tokens};

/// The `format` written into every `config.json`; bump when the forward pass changes.
pub const FORMAT: &str = "longtail-cnn-classifier/1";

/// Everything chosen before training; `configs/classifier.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Members of a seed ensemble: K networks trained alike on different seeds, whose logits
    /// are averaged (1 = a single network). Averaging cancels much of the seed-to-seed noise
    /// of one small CNN, at K times the training and scoring cost.
    pub ensemble: usize,
    pub model: CnnConfig,
    pub optim: OptimConfig,
    pub training: TrainingConfig,
    /// A pretraining directory (`longtail pretrain-classifier --out`): every network (each
    /// ensemble member) starts from its embedding and convolutions, the rest initialised
    /// fresh; its architecture must match `[model]`. None = a fresh start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            ensemble: 1,
            model: CnnConfig::default(),
            optim: OptimConfig::default(),
            training: TrainingConfig::default(),
            pretrained: None,
        }
    }
}

/// The most ensemble members a config may ask for.
pub const MAX_ENSEMBLE: usize = 32;

/// The seed of ensemble member `k` of a model trained with `seed`: member 0 keeps the seed
/// (so `ensemble = 1` is the single network), the others are spread by a hash so that the
/// members of two seeds' ensembles never coincide (`seed + k` would share members between
/// experiment seeds 1 and 2 and understate their spread).
pub fn member_seed(seed: u64, k: usize) -> u64 {
    if k == 0 {
        seed
    } else {
        xxhash_rust::xxh3::xxh3_64_with_seed(&(k as u64).to_le_bytes(), seed)
    }
}

/// Where ensemble member `k` of a classifier directory lives: the directory itself for a
/// single network, `members/K/` otherwise (each with `model.safetensors` and, while
/// training, `checkpoint/`).
pub fn member_dir(dir: &Path, ensemble: usize, k: usize) -> PathBuf {
    if ensemble <= 1 {
        dir.to_path_buf()
    } else {
        dir.join("members").join(k.to_string())
    }
}

impl ClassifierConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .input_ctx(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).input_ctx(|| format!("invalid classifier config {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_ENSEMBLE).contains(&self.ensemble) {
            return Err(crate::Error::input(format!(
                "classifier config: ensemble must be in 1..={MAX_ENSEMBLE} (members averaged), \
                 got {}",
                self.ensemble
            )));
        }
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
    /// Training of the single network, or of member 0 of an ensemble.
    pub training: Option<TrainState>,
    /// Validation of the model as used: the ensemble's averaged logits for an ensemble.
    pub validation: Option<ValidationSummary>,
    /// One entry per ensemble member (empty for a single network).
    #[serde(default)]
    pub members: Vec<MemberSummary>,
}

/// One member of a seed ensemble, in `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberSummary {
    /// Its folder, relative to the classifier directory (`members/K`).
    pub dir: String,
    pub seed: u64,
    pub epochs_done: usize,
    pub best_epoch: Option<usize>,
    /// Its own validation ROC AUC (the ensemble's is in `validation`).
    pub roc_auc: Option<f64>,
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
    /// The network, or the ensemble's members (their logits are averaged).
    pub members: Vec<CnnClassifier>,
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
        let device = globals.device.device.clone();
        let k = bundle.config.ensemble.max(1);
        let members = (0..k)
            .map(|m| {
                let weights = member_dir(dir, k, m).join("model.safetensors");
                if !weights.exists() {
                    return Err(crate::Error::input(format!(
                        "{} is missing ensemble member {m} of {k} ({}); export or train the \
                         classifier again",
                        dir.display(),
                        weights.display()
                    )));
                }
                let model = bundle.config.model.init(&device);
                Ok(crate::train::load_weights(model, &weights)?.valid())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            bundle,
            threshold,
            members,
            tokens,
            device,
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
            &self.members,
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

/// Train a classifier into `req.out`: config.json, model.safetensors (or one per ensemble
/// member, in `members/K/`), threshold.json, and tokenizer.json for BPE tokens (trained on
/// the training split, or taken from `--init`).
pub fn train(req: &TrainRequest, globals: &Globals) -> Result<ClassifierBundle> {
    let mut config = req.config.clone();
    let chosen = globals.device.clone();
    let train_device = chosen.device.clone().autodiff();
    let mut init_tokens = None;
    if let (Some(init), Some(pretrained)) = (req.init, &config.pretrained) {
        return Err(crate::Error::input(format!(
            "--init {} and pretrained {} both give the starting weights; pass one of them",
            init.display(),
            pretrained.display()
        )));
    }
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
            // Member k starts from the init model's member k (its only network when it has
            // one), so fine-tuning an ensemble keeps its members apart.
            let k = from.bundle.config.ensemble.max(1);
            (0..k)
                .map(|m| {
                    let model = config.model.init(&train_device);
                    crate::train::load_weights(
                        model,
                        &member_dir(dir, k, m).join("model.safetensors"),
                    )
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    config.validate()?;
    // Every member starts from the same pretrained encoder (its head fresh, from its seed).
    let encoder = match &config.pretrained {
        Some(dir) => {
            let (encoder, tokens) = pretrain::load_encoder(dir, &config.model, &train_device)?;
            tracing::info!("starting from the encoder pretrained in {}", dir.display());
            init_tokens = Some(tokens);
            Some(encoder)
        }
        None => None,
    };
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
    std::fs::create_dir_all(req.out)
        .runtime_ctx(|| format!("cannot create {}", req.out.display()))?;
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
        members: Vec::new(),
    };
    // Written first so that a killed run can be inspected and resumed.
    write_bundle(req.out, &bundle)?;
    let k = config.ensemble;
    let mut outcomes: Vec<fit::TrainOutcome> = Vec::with_capacity(k);
    for m in 0..k {
        if k > 1 {
            tracing::info!("ensemble member {}/{k}", m + 1);
        }
        let dir = member_dir(req.out, k, m);
        let run = crate::train::RunDir::new(&dir)?;
        let setup = fit::TrainSetup {
            model: &config.model,
            tokens: &tokens,
            optim: &config.optim,
            training: &config.training,
            run: &run,
            device: &chosen.device,
            seed: member_seed(globals.seed, m),
            // A finished member resumes to its best weights at once: a rerun after a kill
            // retrains only the members that had not finished.
            resume: req.resume,
            init: (!init.is_empty()).then(|| init[m % init.len()].clone()),
            encoder: encoder.clone(),
        };
        let (_model, outcome) = fit::train(&setup, &examples)?;
        if k > 1 {
            bundle.members.push(MemberSummary {
                dir: format!("members/{m}"),
                seed: setup.seed,
                epochs_done: outcome.state.epochs_done,
                best_epoch: outcome.state.best_epoch,
                roc_auc: crate::evaluate::roc_auc(&outcome.val_scores, &outcome.val_labels).ok(),
            });
            write_bundle(req.out, &bundle)?;
        }
        outcomes.push(outcome);
    }
    // The validation lines are the same for every member (a hash of the text): the ensemble's
    // scores on them are the sigmoid of the members' mean logit.
    let first = &outcomes[0];
    let val_labels = first.val_labels.clone();
    let member_logits: Vec<&[f32]> = outcomes.iter().map(|o| o.val_logits.as_slice()).collect();
    let val_scores: Vec<f64> = fit::mean_logits(&member_logits)
        .into_iter()
        .map(sigmoid)
        .collect();
    let malicious = val_labels.iter().filter(|&&l| l).count();
    let curve = crate::evaluate::roc_curve(&val_scores, &val_labels).ok();
    bundle.validation = Some(ValidationSummary {
        lines: val_labels.len(),
        malicious,
        benign: val_labels.len() - malicious,
        roc_auc: curve.as_ref().map(|c| c.auc()),
        pr_auc: curve.as_ref().map(|c| c.average_precision()),
        roc_auc_per_epoch: first
            .val_auc_per_epoch
            .iter()
            .map(|&a| a.is_finite().then_some(a))
            .collect(),
    });
    let threshold = Threshold::choose(&val_scores, &val_labels, config.training.threshold_fpr);
    match threshold.method {
        ThresholdMethod::Default => tracing::warn!("threshold 0.5 (default): {}", threshold.note),
        ThresholdMethod::ValidationZeroFpr => tracing::warn!(
            "threshold {:.6} (above every benign validation score): {}",
            threshold.threshold,
            threshold.note
        ),
        ThresholdMethod::ValidationFpr => {}
    }
    bundle.pos_weight = first.pos_weight;
    bundle.train_lines = first.train_lines;
    bundle.training = Some(first.state.clone());
    crate::io::write_json(&req.out.join("threshold.json"), &threshold)?;
    write_bundle(req.out, &bundle)?;
    Ok(bundle)
}

/// The tokenizer to train with: bytes; the `--init` model's BPE (or the pretraining's); on `--resume`, the BPE saved
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
    let (train_idx, _) = config.training.split(examples);
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

/// Number of parameters of a classifier, all ensemble members together (for the model card).
pub fn parameter_count(classifier: &Classifier) -> usize {
    classifier.members.iter().map(|m| m.num_params()).sum()
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
