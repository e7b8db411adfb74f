//! Training the classifier through the shared loop: [`ClassifierTask`] is its
//! [`crate::train::Task`], trained by [`crate::train::fit`].

use super::data::Example;
use super::model::{CnnClassifier, CnnConfig, CnnEncoder, HostBatch, bce_with_logits, sigmoid};
use crate::Result;
use crate::data::{bucket_by_length, split_train_val};
use crate::train::{Batch, Metrics, OptimConfig, RunDir, RunSpec, Task, TrainState, fit};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Data handling, loss weights and the decision threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Share of unique lines held out (by a hash of the text, or of the source with
    /// `val_split = "source"`) for validation, early stopping and the threshold.
    pub val_fraction: f64,
    /// What the validation split holds out: `line` (each line by a hash of its text) or
    /// `source` (whole sources by a hash of the `source` column: every line of a script or of
    /// an ATT&CK technique's file falls on one side; lines without a source by their text).
    /// Lines of one script resemble each other, so a `line` split validates on near-copies
    /// of training lines; a `source` split measures lines of unseen scripts and techniques,
    /// as a held-out test and deployment do, and chooses the kept epoch and the threshold
    /// for them. `line` is left out of saved configs (earlier runs' stages stay valid).
    #[serde(default, skip_serializing_if = "ValSplit::is_line")]
    pub val_split: ValSplit,
    /// Upper bounds on one batch: lines, and padded byte positions.
    pub max_batch: usize,
    pub batch_tokens: usize,
    /// Loss weight of a malicious line; 0 = automatic: total benign weight / malicious lines,
    /// so both classes weigh the same.
    pub pos_weight: f64,
    /// Loss weight of an augmentation line relative to a baseline benign line (`--augment-weight`).
    pub augment_weight: f64,
    /// The stored threshold flags at most this false-positive rate on validation.
    pub threshold_fpr: f64,
    /// Which lines the validation split (early stopping, the kept epoch, the threshold) is
    /// drawn from: `all`, or `baseline`: the labeled files' lines only, every augmentation
    /// line training. With `baseline` an augmented model is validated on the same lines as
    /// its baseline, so the epoch and threshold are chosen for the distribution the baseline
    /// already served, not for the added lines (which can outnumber it several times).
    pub validate_on: ValidateOn,
    /// Label smoothing: training targets become `eps / 2` (benign) and `1 - eps / 2`
    /// (malicious), so the loss stops rewarding ever larger logits on lines already right.
    /// Validation keeps the hard labels. 0 = off (and left out of saved configs, so that
    /// earlier runs' cached stages stay valid).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_smoothing: f64,
    /// Word dropout: each epoch, every word of a training line after its first (words are
    /// separated by spaces) is left out with this probability, so the network cannot lean on
    /// one argument and sees shorter variants of long lines (an unseen script writes the same
    /// command with other arguments). Validation and scoring see whole lines. 0 = off (and
    /// left out of saved configs, like `label_smoothing`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub word_dropout: f64,
    /// Focal loss: each line's loss is scaled by `(1 - p)^gamma`, `p` the probability the
    /// network gives its label, so lines already ranked right count less and the few it gets
    /// wrong (an attacker-looking admin line, an attack written like an installer) count more.
    /// Validation keeps the plain loss. 0 = plain cross-entropy (and left out of saved configs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub focal_gamma: f64,
    /// Platform balance: each training line's loss weight is multiplied by
    /// `(N_p N_y / (N N_py))^s`, `N_py` the training lines of its platform (the `platform`
    /// column; lines without one form a group) and label, so that at `s = 1` the label is
    /// independent of the platform in the weighted data and each platform's classes weigh
    /// alike. Public attack corpora are mostly Windows and documentation mostly Linux, so the
    /// platform is a shortcut to the label. `s` in (0, 1) tempers the weights (rare
    /// platform/label pairs get large ones). 0 = off (and left out of saved configs). On the
    /// shared data it did not help: the Windows admin lines that score high do so for their
    /// content, not their platform (docs/classifier.md, round 10).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub balance_platforms: f64,
}

/// Each example's platform-balance factor `(N_p N_y / (N N_py))^strength`, counted over the
/// training lines `train` (validation lines get the factor of their group too, so that the
/// validation loss is weighed alike; a group absent from training gets 1).
pub fn platform_weights(examples: &[Example], train: &[usize], strength: f64) -> Vec<f64> {
    if strength == 0.0 {
        return vec![1.0; examples.len()];
    }
    fn group(e: &Example) -> &str {
        e.platform.as_deref().unwrap_or("")
    }
    let mut by_pair: HashMap<(&str, bool), f64> = HashMap::new();
    let mut by_platform: HashMap<&str, f64> = HashMap::new();
    let mut malicious = 0.0;
    for &i in train {
        let e = &examples[i];
        *by_pair.entry((group(e), e.malicious)).or_default() += 1.0;
        *by_platform.entry(group(e)).or_default() += 1.0;
        malicious += e.malicious as u8 as f64;
    }
    let n = train.len() as f64;
    examples
        .iter()
        .map(|e| {
            let label = if e.malicious {
                malicious
            } else {
                n - malicious
            };
            match (
                by_pair.get(&(group(e), e.malicious)),
                by_platform.get(group(e)),
            ) {
                (Some(&pair), Some(&platform)) => (platform * label / (n * pair)).powf(strength),
                _ => 1.0,
            }
        })
        .collect()
}

/// One log line per platform: its training lines by label and the factor each gets.
fn log_platform_weights(examples: &[Example], train: &[usize], factor: &[f64]) {
    let mut seen: BTreeMap<(&str, bool), (usize, f64)> = BTreeMap::new();
    for &i in train {
        let e = &examples[i];
        let key = (e.platform.as_deref().unwrap_or("(none)"), e.malicious);
        seen.entry(key).or_insert((0, factor[i])).0 += 1;
    }
    for ((platform, malicious), (lines, w)) in seen {
        let label = if malicious { "malicious" } else { "benign" };
        tracing::info!("platform balance: {platform} {label}: {lines} lines, weight x{w:.3}");
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Hard 0/1 targets moved `eps / 2` toward each other (label smoothing).
fn smoothed(targets: &[f32], eps: f64) -> Vec<f32> {
    let eps = eps as f32;
    targets
        .iter()
        .map(|&t| t * (1.0 - eps) + eps / 2.0)
        .collect()
}

/// `line` with each space-separated word after the first left out with probability `p`
/// (word dropout); the line itself when none is.
fn drop_words<'a>(line: &'a str, p: f64, rng: &mut impl Rng) -> std::borrow::Cow<'a, str> {
    let mut words = line.split(' ');
    let mut out = String::from(words.next().unwrap_or(""));
    let mut dropped = false;
    for word in words {
        if rng.random_bool(p) {
            dropped = true;
        } else {
            out.push(' ');
            out.push_str(word);
        }
    }
    if dropped { out.into() } else { line.into() }
}

/// What [`TrainingConfig::val_split`] holds out: single lines, or whole sources.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValSplit {
    #[default]
    Line,
    Source,
}

crate::vocab::named_enum!(ValSplit { Line => "line", Source => "source" });

impl ValSplit {
    fn is_line(&self) -> bool {
        *self == ValSplit::Line
    }
}

/// Where [`TrainingConfig::validate_on`] draws the validation split from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidateOn {
    #[default]
    All,
    Baseline,
}

crate::vocab::named_enum!(ValidateOn { All => "all", Baseline => "baseline" });

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            val_fraction: 0.1,
            val_split: ValSplit::Line,
            max_batch: 64,
            batch_tokens: 8192,
            pos_weight: 0.0,
            augment_weight: 1.0,
            threshold_fpr: 1e-3,
            validate_on: ValidateOn::All,
            label_smoothing: 0.0,
            word_dropout: 0.0,
            focal_gamma: 0.0,
            balance_platforms: 0.0,
        }
    }
}

impl TrainingConfig {
    /// Indices of the training and validation examples: `val_fraction` of the unique lines
    /// by a hash of the text, or of whole sources by a hash of the source (`val_split`; a
    /// line's side never depends on the other lines), then, with `validate_on = "baseline"`,
    /// the augmentation lines moved to training.
    pub fn split(&self, examples: &[Example]) -> (Vec<usize>, Vec<usize>) {
        let keys: Vec<&[u8]> = examples
            .iter()
            .map(|e| match (self.val_split, &e.source) {
                (ValSplit::Source, Some(source)) if !source.is_empty() => source.as_bytes(),
                _ => e.cmd.as_bytes(),
            })
            .collect();
        let (mut train, val) = split_train_val(&keys, self.val_fraction);
        if self.validate_on == ValidateOn::All {
            return (train, val);
        }
        let (added, val): (Vec<usize>, Vec<usize>) =
            val.into_iter().partition(|&i| examples[i].augment);
        train.extend(added);
        train.sort_unstable();
        (train, val)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| {
            Err(crate::Error::input(format!(
                "classifier training config: {m}"
            )))
        };
        if !(0.0..=0.5).contains(&self.val_fraction) {
            return bad("val_fraction must be in [0, 0.5]");
        }
        if self.max_batch == 0 || self.batch_tokens == 0 {
            return bad("max_batch and batch_tokens must be positive");
        }
        if !(self.pos_weight >= 0.0 && self.pos_weight.is_finite()) {
            return bad("pos_weight must be >= 0 (0 = automatic)");
        }
        if !(self.augment_weight > 0.0 && self.augment_weight.is_finite()) {
            return bad("augment_weight must be positive");
        }
        if !(self.threshold_fpr > 0.0 && self.threshold_fpr < 1.0) {
            return bad("threshold_fpr must be in (0, 1)");
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad("label_smoothing must be in [0, 0.5) (0 = off; 0.1 is usual)");
        }
        if !(0.0..1.0).contains(&self.word_dropout) {
            return bad("word_dropout must be in [0, 1) (0 = off; 0.1 leaves out one word in ten)");
        }
        // Below 1 the factor's gradient is infinite on lines already ranked perfectly.
        if !(self.focal_gamma == 0.0 || (1.0..=5.0).contains(&self.focal_gamma)) {
            return bad("focal_gamma must be 0 (plain cross-entropy) or in [1, 5] (2 is usual)");
        }
        if !(0.0..=1.0).contains(&self.balance_platforms) {
            return bad(
                "balance_platforms must be in [0, 1] (0 = off, 1 = label independent of platform)",
            );
        }
        Ok(())
    }
}

/// Everything `train` needs besides the data.
pub struct TrainSetup<'a> {
    pub model: &'a CnnConfig,
    /// Tokenizer matching `model.tokenizer` (already trained for BPE).
    pub tokens: &'a super::tokens::Tokens,
    pub optim: &'a OptimConfig,
    pub training: &'a TrainingConfig,
    pub run: &'a RunDir,
    pub device: &'a Device,
    pub seed: u64,
    pub resume: bool,
    /// Weights to start from (fine-tuning), already loaded on the training device.
    pub init: Option<CnnClassifier>,
    /// A pretrained embedding and convolutions (on the training device) that replace the
    /// fresh ones; the hidden layer and head are initialised from the seed as usual.
    pub encoder: Option<CnnEncoder>,
}

/// What training produced besides the model.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub pos_weight: f64,
    pub train_lines: usize,
    /// Validation lines and the best model's logits and probabilities on them.
    pub val_labels: Vec<bool>,
    pub val_logits: Vec<f32>,
    pub val_scores: Vec<f64>,
    /// Validation ROC AUC after each epoch, a resumed run's earlier epochs included (NaN when
    /// one class is missing).
    pub val_auc_per_epoch: Vec<f64>,
}

/// Batches of `items` (indices into `clipped`), bucketed by length.
fn make_batches(
    model: &CnnConfig,
    training: &TrainingConfig,
    clipped: &[Vec<u32>],
    targets: &[f32],
    weights: &[f32],
    items: &[usize],
) -> Vec<HostBatch> {
    let lens: Vec<usize> = items
        .iter()
        .map(|&i| model.batch_len(clipped[i].len()))
        .collect();
    bucket_by_length(&lens, training.max_batch, training.batch_tokens)
        .into_iter()
        .map(|group| {
            let rows: Vec<&[u32]> = group
                .iter()
                .map(|&g| clipped[items[g]].as_slice())
                .collect();
            let mut hb = HostBatch::new(model, &rows);
            for (r, &g) in group.iter().enumerate() {
                hb.targets[r] = targets[items[g]];
                hb.weights[r] = weights[items[g]];
            }
            hb
        })
        .collect()
}

/// Weighted loss of a batch, normalised by the training set's mean weight so that batches of
/// one class (length buckets are often one class) keep the global class balance.
fn batch_loss(
    model: &CnnClassifier,
    hb: &HostBatch,
    device: &Device,
    mean_weight: f64,
    focal_gamma: f64,
) -> Tensor<1> {
    let logits = model.forward_train(hb.tokens(device), hb.lens(device), &mut hb.dropout_masks());
    let loss = focal(bce_with_logits(logits, hb.targets(device)), focal_gamma) * hb.weights(device);
    // Over the step's lines, so that the losses of a step's shards sum to the step's loss.
    loss.sum().div_scalar(hb.step_lines as f64 * mean_weight)
}

/// Per-line cross-entropies `bce` scaled by `(1 - p)^gamma` (focal loss), where `p =
/// exp(-bce)` is the probability given to the line's label (its smoothed target under label
/// smoothing); `gamma = 0` returns `bce` unchanged.
fn focal(bce: Tensor<1>, gamma: f64) -> Tensor<1> {
    if gamma == 0.0 {
        return bce;
    }
    let missed = bce.clone().neg().exp().neg().add_scalar(1.0).clamp_min(0.0);
    bce * missed.powf_scalar(gamma)
}

/// Logits of already clipped token rows, bucketed by length, in the input order: the mean
/// of the members' logits for an ensemble (one member: its own logits, exactly).
pub fn logits(
    members: &[CnnClassifier],
    cfg: &CnnConfig,
    clipped: &[&[u32]],
    device: &Device,
    max_batch: usize,
    batch_tokens: usize,
    mut on_batch: impl FnMut(usize),
) -> Vec<f32> {
    let lens: Vec<usize> = clipped.iter().map(|l| cfg.batch_len(l.len())).collect();
    let mut out = vec![0f32; clipped.len()];
    let groups = bucket_by_length(&lens, max_batch, batch_tokens);
    let batch_logits = |group: &Vec<usize>| {
        let rows: Vec<&[u32]> = group.iter().map(|&i| clipped[i]).collect();
        let hb = HostBatch::new(cfg, &rows);
        let per_member: Vec<Vec<f32>> = members
            .iter()
            .map(|model| {
                let z = model
                    .forward(hb.tokens(device), hb.lens(device))
                    .into_data_as::<f32>();
                z.as_slice::<f32>().expect("f32 data").to_vec()
            })
            .collect();
        let refs: Vec<&[f32]> = per_member.iter().map(|v| v.as_slice()).collect();
        mean_logits(&refs)
    };
    crate::device::for_each_batch(device, groups, batch_logits, |group, mean| {
        for (r, &i) in group.iter().enumerate() {
            out[i] = mean[r];
        }
        on_batch(group.len());
    });
    out
}

/// The element-wise mean of the members' logits (f32, so one member's pass through exactly).
pub fn mean_logits(members: &[&[f32]]) -> Vec<f32> {
    let n = members.first().map_or(0, |m| m.len());
    let mut sum = vec![0f32; n];
    for m in members {
        for (s, &x) in sum.iter_mut().zip(m.iter()) {
            *s += x;
        }
    }
    let k = members.len().max(1) as f32;
    sum.into_iter().map(|s| s / k).collect()
}

/// The classifier as a [`Task`]: each epoch a fresh permutation decides which lines of equal
/// length share a batch; validation runs the model once over the validation batches for both
/// the weighted loss and the ROC AUC.
struct ClassifierTask<'a> {
    cfg: &'a CnnConfig,
    training: &'a TrainingConfig,
    /// The examples' text and tokenizer, for word dropout (which re-encodes each epoch).
    lines: &'a [&'a str],
    tokens: &'a super::tokens::Tokens,
    clipped: &'a [Vec<u32>],
    targets: &'a [f32],
    weights: &'a [f32],
    train_idx: &'a [usize],
    mean_weight: f64,
    seed: u64,
    val_batches: Vec<HostBatch>,
}

impl ClassifierTask<'_> {
    /// Every line's clipped tokens for one epoch, the training lines with words dropped.
    /// Its own random stream (not the permutation's), so an epoch's batches stay a function
    /// of (seed, epoch) and a resumed run repeats them.
    fn with_words_dropped(&self, epoch: usize) -> Vec<Vec<u32>> {
        const WORD_DROPOUT_STREAM: u64 = 0x776f_7264_5f64_726f;
        let mut rng = crate::train::epoch_rng(self.seed ^ WORD_DROPOUT_STREAM, epoch);
        let mut clipped = self.clipped.to_vec();
        for &i in self.train_idx {
            if let std::borrow::Cow::Owned(line) =
                drop_words(self.lines[i], self.training.word_dropout, &mut rng)
            {
                clipped[i] = self.cfg.clip(&self.tokens.encode(&line)).into_owned();
            }
        }
        clipped
    }
}

impl Task for ClassifierTask<'_> {
    type Model = CnnClassifier;
    type Batch = HostBatch;

    fn name(&self) -> &str {
        "classifier"
    }

    fn steps_per_epoch(&self) -> usize {
        let lens: Vec<usize> = self
            .train_idx
            .iter()
            .map(|&i| self.cfg.batch_len(self.clipped[i].len()))
            .collect();
        bucket_by_length(&lens, self.training.max_batch, self.training.batch_tokens).len()
    }

    fn epoch_batches(&self, epoch: usize) -> Vec<Batch<HostBatch>> {
        let mut rng = crate::train::epoch_rng(self.seed, epoch);
        // A fresh permutation decides which lines of equal length share a batch.
        let mut items = self.train_idx.to_vec();
        items.shuffle(&mut rng);
        let dropped;
        let clipped = if self.training.word_dropout > 0.0 {
            dropped = self.with_words_dropped(epoch);
            &dropped
        } else {
            self.clipped
        };
        let mut batches = make_batches(
            self.cfg,
            self.training,
            clipped,
            self.targets,
            self.weights,
            &items,
        );
        batches.shuffle(&mut rng);
        batches
            .into_iter()
            .map(|mut hb| {
                hb.dropout_seed = rng.next_u64();
                Batch {
                    lines: hb.batch,
                    data: hb,
                }
            })
            .collect()
    }

    fn shards(&self, batch: &HostBatch, n: usize) -> Vec<HostBatch> {
        batch.shards(n, crate::train::MIN_SHARD_ROWS)
    }

    fn loss(&self, model: &CnnClassifier, batch: &HostBatch, device: &Device) -> Tensor<1> {
        batch_loss(
            model,
            batch,
            device,
            self.mean_weight,
            self.training.focal_gamma,
        )
    }

    fn validate(&self, model: &CnnClassifier, device: &Device) -> Result<Metrics> {
        if self.val_batches.is_empty() {
            return Ok(Metrics::from([
                ("loss".to_string(), f64::NAN),
                ("roc_auc".to_string(), f64::NAN),
            ]));
        }
        let (mut sum, mut w) = (0.0f64, 0.0f64);
        let (mut scores, mut labels) = (Vec::new(), Vec::new());
        for hb in &self.val_batches {
            let logits = model.forward(hb.tokens(device), hb.lens(device));
            let l = (bce_with_logits(logits.clone(), hb.targets(device)) * hb.weights(device))
                .sum()
                .into_scalar::<f32>();
            sum += l as f64;
            w += hb.weights.iter().map(|&x| x as f64).sum::<f64>();
            let z = logits.into_data_as::<f32>();
            let z = z.as_slice::<f32>().expect("f32 data");
            // The ROC AUC depends on the (score, label) pairs only, not on their order.
            scores.extend(z[..hb.batch].iter().map(|&x| sigmoid(x)));
            labels.extend(hb.targets[..hb.batch].iter().map(|&t| t > 0.5));
        }
        let auc = crate::evaluate::roc_auc(&scores, &labels).unwrap_or(f64::NAN);
        Ok(Metrics::from([
            ("loss".to_string(), sum / w.max(1e-12)),
            ("roc_auc".to_string(), auc),
        ]))
    }
}

/// Train on unique examples; returns the model of the best epoch by the monitored
/// validation metric (the loss by default).
pub fn train(setup: &TrainSetup, examples: &[Example]) -> Result<(CnnClassifier, TrainOutcome)> {
    let cfg = setup.model;
    cfg.validate()?;
    setup.training.validate()?;
    let (train_idx, val_idx) = setup.training.split(examples);
    let val_malicious = val_idx.iter().filter(|&&i| examples[i].malicious).count();
    if !val_idx.is_empty() && (val_malicious == 0 || val_malicious == val_idx.len()) {
        let missing = if val_malicious == 0 {
            "malicious"
        } else {
            "benign"
        };
        tracing::warn!(
            "the validation split ({} lines, val_split = {}) has no {missing} line: its ROC AUC \
             is undefined (early stopping by roc_auc keeps the first epoch) and the threshold \
             cannot be checked against it (threshold.json says how it was set); raise \
             val_fraction",
            val_idx.len(),
            setup.training.val_split
        );
    }
    let lines: Vec<&str> = examples.iter().map(|e| e.cmd.as_str()).collect();
    let clipped: Vec<Vec<u32>> = setup
        .tokens
        .encode_all(&lines)
        .into_iter()
        .map(|t| cfg.clip(&t).into_owned())
        .collect();
    let targets: Vec<f32> = examples.iter().map(|e| e.malicious as u8 as f32).collect();
    let balance = platform_weights(examples, &train_idx, setup.training.balance_platforms);
    if setup.training.balance_platforms > 0.0 {
        if examples.iter().all(|e| e.platform.is_none()) {
            tracing::warn!(
                "balance_platforms is set but no training line has a `platform`: it changes \
                 nothing (add the column; an experiment's data stage written before it has \
                 none: delete the run's data folder and rerun)"
            );
        } else {
            log_platform_weights(examples, &train_idx, &balance);
        }
    }
    let base_weight = |i: usize| {
        let e = &examples[i];
        balance[i]
            * if e.augment {
                setup.training.augment_weight
            } else {
                1.0
            }
    };
    let pos_weight = if setup.training.pos_weight > 0.0 {
        setup.training.pos_weight
    } else {
        let benign: f64 = train_idx
            .iter()
            .filter(|&&i| !examples[i].malicious)
            .map(|&i| base_weight(i))
            .sum();
        let malicious_lines = train_idx.iter().filter(|&&i| examples[i].malicious).count();
        if malicious_lines == 0 {
            return Err(crate::Error::input(
                "no malicious line is left for training after the validation split; \
                 add malicious lines, lower val_fraction, or (with val_split = \"source\") \
                 spread the malicious lines over more sources",
            ));
        }
        // The malicious lines' own weights, so that both classes weigh the same.
        let malicious: f64 = train_idx
            .iter()
            .filter(|&&i| examples[i].malicious)
            .map(|&i| base_weight(i))
            .sum();
        benign / malicious
    };
    let weights: Vec<f32> = (0..examples.len())
        .map(|i| {
            (base_weight(i)
                * if examples[i].malicious {
                    pos_weight
                } else {
                    1.0
                }) as f32
        })
        .collect();
    let mean_weight =
        train_idx.iter().map(|&i| weights[i] as f64).sum::<f64>() / train_idx.len().max(1) as f64;
    tracing::info!(
        "{} training lines, {} validation lines; malicious weight {:.3}",
        train_idx.len(),
        val_idx.len(),
        pos_weight
    );

    let spec = RunSpec::new(
        setup.optim,
        setup.run,
        setup.device,
        setup.seed,
        setup.resume,
    );
    let model = match (&setup.init, &setup.encoder) {
        (Some(m), _) => m.clone(),
        (None, Some(e)) => cfg.init(&spec.train_device).with_encoder(e.clone()),
        (None, None) => cfg.init(&spec.train_device),
    };
    let val_batches = make_batches(cfg, setup.training, &clipped, &targets, &weights, &val_idx);
    let train_targets = smoothed(&targets, setup.training.label_smoothing);
    let task = ClassifierTask {
        cfg,
        training: setup.training,
        lines: &lines,
        tokens: setup.tokens,
        clipped: &clipped,
        targets: &train_targets,
        weights: &weights,
        train_idx: &train_idx,
        mean_weight,
        seed: setup.seed,
        val_batches,
    };
    let (model, state) = fit(&spec, &task, model)?;
    let model = model.valid();
    let val_labels: Vec<bool> = val_idx.iter().map(|&i| examples[i].malicious).collect();
    let val_logits = val_logits(
        &model,
        cfg,
        &clipped,
        &val_idx,
        setup.device,
        setup.training,
    );
    warn_if_constant(&val_logits, cfg);
    let val_scores = val_logits.iter().map(|&z| sigmoid(z)).collect();
    // This process's epochs (a resumed run's earlier epochs are in `state.metrics` too).
    let val_auc_per_epoch = state
        .metrics
        .iter()
        .map(|m| m.get("roc_auc").copied().unwrap_or(f64::NAN))
        .collect();
    Ok((
        model,
        TrainOutcome {
            state,
            pos_weight,
            train_lines: train_idx.len(),
            val_labels,
            val_logits,
            val_scores,
            val_auc_per_epoch,
        },
    ))
}

/// A network whose output no longer depends on its input (every validation line gets the
/// same logit) ranks nothing: say so, with what to change. With a hidden ReLU layer at
/// lr 0.01 this happens for some seeds (every unit dead after the first updates).
fn warn_if_constant(val_logits: &[f32], cfg: &CnnConfig) {
    let (lo, hi) = val_logits
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &z| {
            (lo.min(z), hi.max(z))
        });
    if val_logits.len() >= 2 && hi - lo < 1e-6 {
        tracing::warn!(
            "every validation line gets the same logit ({lo:.4}): the network's output is \
             constant and ranks nothing{}; retrain with another seed or a lower [optim] lr, or \
             use an ensemble (`ensemble = 3`)",
            if cfg.hidden > 0 {
                " (its hidden ReLU layer died: every unit outputs 0)"
            } else {
                ""
            }
        );
    }
}

/// The model's logits on the validation rows `idx`, in that order.
fn val_logits(
    model: &CnnClassifier,
    cfg: &CnnConfig,
    clipped: &[Vec<u32>],
    idx: &[usize],
    device: &Device,
    training: &TrainingConfig,
) -> Vec<f32> {
    let rows: Vec<&[u32]> = idx.iter().map(|&i| clipped[i].as_slice()).collect();
    logits(
        std::slice::from_ref(model),
        cfg,
        &rows,
        device,
        training.max_batch.max(256),
        training.batch_tokens,
        |_| {},
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::model::Pooling;

    #[test]
    fn a_step_cut_into_shards_has_the_whole_steps_loss_and_gradients() {
        let cfg = CnnConfig {
            embed_dim: 8,
            filters: 6,
            widths: vec![2, 3],
            dropout: 0.3,
            pooling: Pooling::MaxMean,
            hidden: 5,
            ..CnnConfig::default()
        };
        let device = Device::flex().autodiff();
        let model = cfg.init(&device);
        let clipped: Vec<Vec<u32>> = (0..40)
            .map(|i| {
                format!("cmd /c echo {i} {}", "x".repeat(i % 9))
                    .bytes()
                    .map(u32::from)
                    .collect()
            })
            .collect();
        let rows: Vec<&[u32]> = clipped.iter().map(|v| v.as_slice()).collect();
        let mut batch = HostBatch::new(&cfg, &rows);
        batch.targets = (0..40).map(|i| (i % 3 == 0) as u8 as f32).collect();
        batch.weights = (0..40).map(|i| 1.0 + (i % 4) as f32).collect();
        batch.dropout_seed = 11;
        let training = TrainingConfig::default();
        let task = ClassifierTask {
            cfg: &cfg,
            training: &training,
            lines: &[],
            tokens: &super::super::tokens::Tokens::Bytes,
            clipped: &clipped,
            targets: &[],
            weights: &[],
            train_idx: &[],
            mean_weight: 1.7,
            seed: 1,
            val_batches: Vec::new(),
        };
        assert_eq!(task.shards(&batch, 4).len(), 4);
        assert_eq!(
            task.shards(&batch, 9).len(),
            40 / crate::train::MIN_SHARD_ROWS
        );
        let step = |batch: &HostBatch, shards| {
            let (l, g) = crate::train::step_gradients(&task, &model, batch, &device, shards);
            (l.into_scalar::<f32>(), g)
        };
        let (whole_loss, whole) = step(&batch, 1);
        let (shard_loss, sharded) = step(&batch, 4);
        assert!(
            (whole_loss - shard_loss).abs() < 1e-5 * whole_loss,
            "{whole_loss} vs {shard_loss}"
        );
        let (gap, scale) = crate::train::gradient_gap(&model, &whole, &sharded);
        assert!(scale > 1e-3, "the gradients are not all zero");
        assert!(gap < 1e-5 * scale.max(1.0), "gradients differ by {gap}");
        // The masks matter: another dropout seed gives another loss.
        batch.dropout_seed = 12;
        let (other_loss, _) = step(&batch, 4);
        assert!(
            (other_loss - whole_loss).abs() > 1e-4,
            "dropout changed nothing"
        );
    }

    /// Each of `values`, set by `set`, fails validation with an error that names `key`.
    fn assert_rejected(key: &str, values: &[f64], set: impl Fn(&mut TrainingConfig, f64)) {
        for &value in values {
            let mut cfg = TrainingConfig::default();
            set(&mut cfg, value);
            let err = cfg
                .validate()
                .expect_err(&format!("{key} = {value} is out of range"));
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn label_smoothing_moves_targets_inward_and_stays_out_of_saved_configs_when_off() {
        assert_eq!(smoothed(&[0.0, 1.0], 0.1), vec![0.05, 0.95]);
        assert_eq!(smoothed(&[0.0, 1.0], 0.0), vec![0.0, 1.0]);
        // Off, the field is not written: every earlier run's stage keys stay the same.
        let off = serde_json::to_string(&TrainingConfig::default()).unwrap();
        assert!(!off.contains("label_smoothing"), "{off}");
        let on = TrainingConfig {
            label_smoothing: 0.1,
            ..TrainingConfig::default()
        };
        assert!(
            serde_json::to_string(&on)
                .unwrap()
                .contains("\"label_smoothing\":0.1")
        );
        assert!(on.validate().is_ok());
        assert_rejected("label_smoothing", &[-0.1, 0.5, f64::NAN], |c, v| {
            c.label_smoothing = v
        });
    }

    #[test]
    fn focal_loss_scales_each_line_by_how_far_it_misses() {
        let device = Device::flex();
        let logits = [3.0f32, -1.0, 0.5, -4.0];
        let targets = [1.0f32, 1.0, 0.0, 0.0];
        let tensor = |v: &[f32]| Tensor::<1>::from_floats(v, &device);
        let bce = || bce_with_logits(tensor(&logits), tensor(&targets));
        let got = |gamma| {
            focal(bce(), gamma)
                .into_data_as::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let plain = got(0.0);
        let focal2 = got(2.0);
        for i in 0..4 {
            let p_label = if targets[i] > 0.5 {
                sigmoid(logits[i])
            } else {
                1.0 - sigmoid(logits[i])
            };
            let want = plain[i] as f64 * (1.0 - p_label).powi(2);
            assert!(
                (focal2[i] as f64 - want).abs() < 1e-5,
                "{i}: {} vs {want}",
                focal2[i]
            );
        }
        // A line ranked right (logit 3 for an attack) keeps 0.2 % of its loss; one ranked
        // wrong (logit 0.5 for a benign line) keeps 39 %.
        assert!(focal2[0] / plain[0] < 0.003 && focal2[2] / plain[2] > 0.35);
        assert!(
            !serde_json::to_string(&TrainingConfig::default())
                .unwrap()
                .contains("focal")
        );
        assert_rejected("focal_gamma", &[-1.0, 0.5, 6.0, f64::NAN], |c, v| {
            c.focal_gamma = v
        });
    }

    #[test]
    fn word_dropout_keeps_the_first_word_and_leaves_out_about_its_share() {
        let line = "msiexec /i pkg.msi /qn /norestart ALLUSERS=1 TARGETDIR=C:\\opt";
        let mut rng = crate::train::epoch_rng(3, 0);
        assert_eq!(drop_words(line, 0.0, &mut rng), line);
        assert_eq!(drop_words(line, 0.999_999, &mut rng), "msiexec");
        assert_eq!(drop_words("whoami", 0.5, &mut rng), "whoami");
        let (mut kept, mut total) = (0usize, 0usize);
        for _ in 0..2000 {
            let out = drop_words(line, 0.25, &mut rng);
            assert!(out.starts_with("msiexec"), "{out}");
            // Words stay whole and in order: the result is a subsequence of the line's words.
            let mut words = line.split(' ');
            assert!(out.split(' ').all(|w| words.any(|v| v == w)), "{out}");
            kept += out.split(' ').count() - 1;
            total += line.split(' ').count() - 1;
        }
        let share = 1.0 - kept as f64 / total as f64;
        assert!((share - 0.25).abs() < 0.02, "dropped {share}");
    }

    #[test]
    fn word_dropout_changes_training_batches_each_epoch_but_repeats_for_a_resumed_run() {
        let cfg = CnnConfig {
            widths: vec![2, 3],
            ..CnnConfig::default()
        };
        let texts: Vec<String> = (0..60)
            .map(|i| format!("tool{i} --flag value{i} --other {i} --last x"))
            .collect();
        let lines: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = super::super::tokens::Tokens::Bytes;
        let clipped: Vec<Vec<u32>> = lines.iter().map(|l| tokens.encode(l)).collect();
        let targets: Vec<f32> = (0..60).map(|i| (i % 2) as f32).collect();
        let weights = vec![1.0f32; 60];
        let train_idx: Vec<usize> = (0..50).collect();
        let training = |word_dropout| TrainingConfig {
            word_dropout,
            ..TrainingConfig::default()
        };
        let (off, on) = (training(0.0), training(0.3));
        let task = |training| ClassifierTask {
            cfg: &cfg,
            training,
            lines: &lines,
            tokens: &tokens,
            clipped: &clipped,
            targets: &targets,
            weights: &weights,
            train_idx: &train_idx,
            mean_weight: 1.0,
            seed: 5,
            val_batches: Vec::new(),
        };
        let rows = |task: &ClassifierTask, epoch| -> Vec<Vec<u32>> {
            let mut rows: Vec<Vec<u32>> = task
                .epoch_batches(epoch)
                .iter()
                .flat_map(|b| {
                    let hb = &b.data;
                    (0..hb.batch)
                        .map(|r| {
                            let row = &hb.tokens[r * hb.len..(r + 1) * hb.len];
                            row[..hb.lens[r] as usize]
                                .iter()
                                .map(|&t| t as u32)
                                .collect()
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            rows.sort();
            rows
        };
        let whole: Vec<Vec<u32>> = {
            let mut v: Vec<Vec<u32>> = train_idx.iter().map(|&i| clipped[i].clone()).collect();
            v.sort();
            v
        };
        assert_eq!(rows(&task(&off), 0), whole, "off: every line whole");
        let (e0, e1) = (rows(&task(&on), 0), rows(&task(&on), 1));
        assert_eq!(e0.len(), 50);
        assert_ne!(e0, whole, "some words dropped");
        assert_ne!(e0, e1, "another epoch, other words");
        assert_eq!(e0, rows(&task(&on), 0), "a function of (seed, epoch)");
        // Each dropped line is still its line's first word plus some of its other words.
        assert!(
            e0.iter()
                .all(|r| r.starts_with(b"tool".map(u32::from).as_slice()))
        );
        assert!(e0.iter().filter(|r| !whole.contains(r)).count() > 20);
        // Off, the field stays out of saved configs; out of range is an error that names it.
        assert!(
            !serde_json::to_string(&off)
                .unwrap()
                .contains("word_dropout")
        );
        assert!(
            serde_json::to_string(&on)
                .unwrap()
                .contains("\"word_dropout\":0.3")
        );
        assert_rejected("word_dropout", &[-0.1, 1.0, f64::NAN], |c, v| {
            c.word_dropout = v
        });
    }

    #[test]
    fn validating_on_the_baseline_moves_every_added_line_to_training() {
        let examples: Vec<Example> = (0..400)
            .map(|i| Example {
                cmd: format!("line {i}"),
                malicious: i % 7 == 0,
                augment: i >= 200,
                source: None,
                platform: None,
            })
            .collect();
        let all = TrainingConfig::default();
        let baseline = TrainingConfig {
            validate_on: ValidateOn::Baseline,
            ..all.clone()
        };
        let (all_train, all_val) = all.split(&examples);
        let (train, val) = baseline.split(&examples);
        assert!(
            all_val.iter().any(|&i| examples[i].augment),
            "the hash split takes some"
        );
        assert!(val.iter().all(|&i| !examples[i].augment));
        // The baseline lines keep their side: the same validation lines as an unaugmented model.
        let all_val_baseline: Vec<usize> = all_val
            .into_iter()
            .filter(|&i| !examples[i].augment)
            .collect();
        assert_eq!(val, all_val_baseline);
        assert_eq!(train.len() + val.len(), examples.len());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        assert!(all_train.len() < train.len());
        assert_eq!("baseline".parse::<ValidateOn>(), Ok(ValidateOn::Baseline));
    }

    #[test]
    fn platform_balance_makes_each_platforms_classes_weigh_alike() {
        // Windows: 30 benign, 60 malicious; linux: 300 benign, 10 malicious; no platform: 100
        // benign. Unweighted, "windows" alone predicts the label.
        let mut examples = Vec::new();
        for (platform, benign, malicious) in [
            (Some("windows"), 30, 60),
            (Some("linux"), 300, 10),
            (None, 100, 0),
        ] {
            for i in 0..benign + malicious {
                examples.push(Example {
                    cmd: format!("{platform:?} {i}"),
                    malicious: i >= benign,
                    augment: false,
                    source: None,
                    platform: platform.map(str::to_owned),
                });
            }
        }
        let all: Vec<usize> = (0..examples.len()).collect();
        assert!(
            platform_weights(&examples, &all, 0.0)
                .iter()
                .all(|&w| w == 1.0)
        );
        let w = platform_weights(&examples, &all, 1.0);
        let total = |platform: Option<&str>, malicious: bool| -> f64 {
            all.iter()
                .filter(|&&i| {
                    examples[i].platform.as_deref() == platform
                        && examples[i].malicious == malicious
                })
                .map(|&i| w[i])
                .sum()
        };
        // The weighted share of malicious lines is the same on every platform (the overall
        // one, 70 of 500), and each platform keeps its size.
        for platform in [Some("windows"), Some("linux")] {
            let (b, m) = (total(platform, false), total(platform, true));
            assert!(
                (m / (b + m) - 70.0 / 500.0).abs() < 1e-9,
                "{platform:?}: {b} {m}"
            );
        }
        assert!((total(Some("windows"), false) + total(Some("windows"), true) - 90.0).abs() < 1e-9);
        assert!((total(None, false) - 100.0 * 430.0 / 500.0).abs() < 1e-9);
        // Tempered: between the two.
        let half = platform_weights(&examples, &all, 0.5);
        let windows_benign = examples
            .iter()
            .position(|e| e.platform.as_deref() == Some("windows"));
        let i = windows_benign.unwrap();
        assert!(1.0 < half[i] && half[i] < w[i], "{} {}", half[i], w[i]);
        // Counted on the training lines only; a group training never saw gets 1.
        let train: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| examples[i].platform.is_some())
            .collect();
        assert_eq!(platform_weights(&examples, &train, 1.0)[all.len() - 1], 1.0);
        // Off by default and left out of saved configs; out of range is refused.
        let cfg = TrainingConfig::default();
        assert!(
            !serde_json::to_string(&cfg)
                .unwrap()
                .contains("balance_platforms")
        );
        let on = TrainingConfig {
            balance_platforms: 0.5,
            ..Default::default()
        };
        let back: TrainingConfig =
            serde_json::from_str(&serde_json::to_string(&on).unwrap()).unwrap();
        assert_eq!(back.balance_platforms, 0.5);
        let bad = TrainingConfig {
            balance_platforms: 1.5,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("balance_platforms")
        );
    }

    #[test]
    fn a_source_split_holds_out_whole_sources_and_lines_without_one_by_their_text() {
        // 60 scripts of 10 lines each, then 200 lines without a source.
        let examples: Vec<Example> = (0..800)
            .map(|i| Example {
                cmd: format!("line {i}"),
                malicious: i % 5 == 0,
                augment: false,
                source: (i < 600).then(|| format!("owner/repo:script{}.ps1", i / 10)),
                platform: None,
            })
            .collect();
        let by_line = TrainingConfig {
            val_fraction: 0.2,
            ..TrainingConfig::default()
        };
        let by_source = TrainingConfig {
            val_split: ValSplit::Source,
            ..by_line.clone()
        };
        let (train, val) = by_source.split(&examples);
        assert_eq!(train.len() + val.len(), examples.len());
        let side = |i: usize| val.contains(&i);
        for script in 0..60 {
            let first = side(script * 10);
            assert!(
                (script * 10..script * 10 + 10).all(|i| side(i) == first),
                "script {script} is split across training and validation"
            );
        }
        let held_scripts = (0..60).filter(|s| side(s * 10)).count();
        assert!(
            (4..=22).contains(&held_scripts),
            "{held_scripts} of 60 scripts held out"
        );
        // A line split cuts through scripts; lines without a source split the same either way.
        let (_, line_val) = by_line.split(&examples);
        assert!((0..60).any(|s| {
            let held = (s * 10..s * 10 + 10)
                .filter(|i| line_val.contains(i))
                .count();
            held > 0 && held < 10
        }));
        let no_source = |v: &[usize]| v.iter().copied().filter(|&i| i >= 600).collect::<Vec<_>>();
        assert_eq!(no_source(&val), no_source(&line_val));
        // The default is left out of saved configs; `source` is written and read back.
        assert!(
            !serde_json::to_string(&by_line)
                .unwrap()
                .contains("val_split")
        );
        let json = serde_json::to_string(&by_source).unwrap();
        assert!(json.contains("\"val_split\":\"source\""));
        assert_eq!(
            serde_json::from_str::<TrainingConfig>(&json).unwrap(),
            by_source
        );
        assert_eq!("source".parse::<ValSplit>(), Ok(ValSplit::Source));
    }
}
