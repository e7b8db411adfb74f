//! Training the classifier through the shared loop ([`crate::train::Trainer`]).

use super::data::Example;
use super::model::{CnnClassifier, CnnConfig, HostBatch, bce_with_logits, sigmoid};
use crate::Result;
use crate::detect::batching::bucket_by_length;
use crate::train::{Batch, OptimConfig, RunDir, TrainState, Trainer};
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// Data handling, loss weights and the decision threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Share of unique lines held out (by a hash of the text) for validation, early stopping
    /// and the threshold.
    pub val_fraction: f64,
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
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            val_fraction: 0.1,
            max_batch: 64,
            batch_tokens: 8192,
            pos_weight: 0.0,
            augment_weight: 1.0,
            threshold_fpr: 1e-3,
        }
    }
}

impl TrainingConfig {
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
}

/// What training produced besides the model.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    pub state: TrainState,
    pub pos_weight: f64,
    pub train_lines: usize,
    /// Validation lines and the best model's probabilities on them.
    pub val_labels: Vec<bool>,
    pub val_scores: Vec<f64>,
    /// Validation ROC AUC after each epoch of this process (NaN when one class is missing).
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
) -> Tensor<1> {
    let logits = model.forward(hb.tokens(device), hb.lens(device));
    let loss = bce_with_logits(logits, hb.targets(device)) * hb.weights(device);
    loss.sum().div_scalar(hb.batch as f64 * mean_weight)
}

/// Logits of already clipped token rows, bucketed by length, in the input order.
pub fn logits(
    model: &CnnClassifier,
    cfg: &CnnConfig,
    clipped: &[&[u32]],
    device: &Device,
    max_batch: usize,
    batch_tokens: usize,
    mut on_batch: impl FnMut(usize),
) -> Vec<f32> {
    let lens: Vec<usize> = clipped.iter().map(|l| cfg.batch_len(l.len())).collect();
    let mut out = vec![0f32; clipped.len()];
    for group in bucket_by_length(&lens, max_batch, batch_tokens) {
        let rows: Vec<&[u32]> = group.iter().map(|&i| clipped[i]).collect();
        let hb = HostBatch::new(cfg, &rows);
        let z = model
            .forward(hb.tokens(device), hb.lens(device))
            .into_data_as::<f32>();
        let z = z.as_slice::<f32>().expect("f32 data");
        for (r, &i) in group.iter().enumerate() {
            out[i] = z[r];
        }
        on_batch(group.len());
    }
    out
}

/// Train on unique examples; returns the model with the lowest validation loss.
pub fn train(setup: &TrainSetup, examples: &[Example]) -> Result<(CnnClassifier, TrainOutcome)> {
    let cfg = setup.model;
    cfg.validate()?;
    setup.training.validate()?;
    let texts: Vec<Vec<u8>> = examples.iter().map(|e| e.cmd.as_bytes().to_vec()).collect();
    let (train_idx, val_idx) =
        crate::detect::autoencoder::split_train_val(&texts, setup.training.val_fraction);
    let lines: Vec<&str> = examples.iter().map(|e| e.cmd.as_str()).collect();
    let clipped: Vec<Vec<u32>> = setup
        .tokens
        .encode_all(&lines)
        .into_iter()
        .map(|t| cfg.clip(&t).into_owned())
        .collect();
    let targets: Vec<f32> = examples.iter().map(|e| e.malicious as u8 as f32).collect();
    let base_weight = |e: &Example| {
        if e.augment {
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
            .map(|&i| base_weight(&examples[i]))
            .sum();
        let malicious = train_idx.iter().filter(|&&i| examples[i].malicious).count();
        if malicious == 0 {
            return Err(crate::Error::input(
                "no malicious line is left for training after the validation split; \
                 add malicious lines or lower val_fraction",
            ));
        }
        benign / malicious as f64
    };
    let weights: Vec<f32> = examples
        .iter()
        .map(|e| (base_weight(e) * if e.malicious { pos_weight } else { 1.0 }) as f32)
        .collect();
    let mean_weight =
        train_idx.iter().map(|&i| weights[i] as f64).sum::<f64>() / train_idx.len().max(1) as f64;
    tracing::info!(
        "{} training lines, {} validation lines; malicious weight {:.3}",
        train_idx.len(),
        val_idx.len(),
        pos_weight
    );

    let train_device = setup.device.clone().autodiff();
    setup.device.seed(setup.seed);
    train_device.seed(setup.seed);
    let model = match &setup.init {
        Some(m) => m.clone(),
        None => cfg.init(&train_device),
    };
    let val_batches = make_batches(cfg, setup.training, &clipped, &targets, &weights, &val_idx);
    let steps_per_epoch = {
        let lens: Vec<usize> = train_idx
            .iter()
            .map(|&i| cfg.batch_len(clipped[i].len()))
            .collect();
        bucket_by_length(&lens, setup.training.max_batch, setup.training.batch_tokens).len()
    };
    let seed = setup.seed;
    let epoch_batches = |epoch: usize| {
        let mut rng = StdRng::seed_from_u64(
            seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)),
        );
        // A fresh permutation decides which lines of equal length share a batch.
        let mut items = train_idx.clone();
        items.shuffle(&mut rng);
        let mut batches = make_batches(cfg, setup.training, &clipped, &targets, &weights, &items);
        batches.shuffle(&mut rng);
        batches
            .into_iter()
            .map(|hb| Batch {
                lines: hb.batch,
                data: hb,
            })
            .collect()
    };
    let val_labels: Vec<bool> = val_idx.iter().map(|&i| examples[i].malicious).collect();
    let val_aucs = RefCell::new(Vec::new());
    let trainer = Trainer {
        cfg: setup.optim,
        run: setup.run,
        device: &train_device,
        seed: setup.seed,
        resume: setup.resume,
        what: "classifier",
    };
    let device = train_device.clone();
    let infer_device = setup.device.clone();
    let (model, state) = trainer.fit(
        model,
        steps_per_epoch,
        epoch_batches,
        |m, hb| batch_loss(m, hb, &device, mean_weight),
        |m| {
            if val_batches.is_empty() {
                return Ok(f64::NAN);
            }
            let (mut sum, mut w) = (0.0f64, 0.0f64);
            for hb in &val_batches {
                let logits = m.forward(hb.tokens(&infer_device), hb.lens(&infer_device));
                let l = (bce_with_logits(logits, hb.targets(&infer_device))
                    * hb.weights(&infer_device))
                .sum()
                .into_scalar::<f32>();
                sum += l as f64;
                w += hb.weights.iter().map(|&x| x as f64).sum::<f64>();
            }
            let auc = val_auc(
                m,
                cfg,
                &clipped,
                &val_idx,
                &val_labels,
                &infer_device,
                setup.training,
            );
            tracing::info!("validation ROC AUC {auc:.4}");
            val_aucs.borrow_mut().push(auc);
            Ok(sum / w.max(1e-12))
        },
    )?;
    let model = model.valid();
    let val_scores = score_indices(
        &model,
        cfg,
        &clipped,
        &val_idx,
        setup.device,
        setup.training,
    );
    Ok((
        model,
        TrainOutcome {
            state,
            pos_weight,
            train_lines: train_idx.len(),
            val_labels,
            val_scores,
            val_auc_per_epoch: val_aucs.into_inner(),
        },
    ))
}

fn score_indices(
    model: &CnnClassifier,
    cfg: &CnnConfig,
    clipped: &[Vec<u32>],
    idx: &[usize],
    device: &Device,
    training: &TrainingConfig,
) -> Vec<f64> {
    let rows: Vec<&[u32]> = idx.iter().map(|&i| clipped[i].as_slice()).collect();
    logits(
        model,
        cfg,
        &rows,
        device,
        training.max_batch.max(256),
        training.batch_tokens,
        |_| {},
    )
    .into_iter()
    .map(sigmoid)
    .collect()
}

fn val_auc(
    model: &CnnClassifier,
    cfg: &CnnConfig,
    clipped: &[Vec<u32>],
    idx: &[usize],
    labels: &[bool],
    device: &Device,
    training: &TrainingConfig,
) -> f64 {
    let scores = score_indices(model, cfg, clipped, idx, device, training);
    crate::evaluate::roc_auc(&scores, labels).unwrap_or(f64::NAN)
}
