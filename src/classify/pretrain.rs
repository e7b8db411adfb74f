//! Self-supervised pretraining of the classifier's encoder on unlabeled telemetry: masked
//! token prediction with the classifier's own embedding and parallel convolutions
//! ([`CnnEncoder`], built from the same [`CnnConfig`]), so that supervised training can start
//! from them (`ClassifierConfig::pretrained`, `train-classifier --pretrained DIR`).
//!
//! The objective: of each line's real tokens, `mask_rate` (at least one) are chosen; 80 % of
//! them are replaced by a learned mask vector (in place of their embedding), 10 % by a random
//! token and 10 % left as they are (BERT's recipe: the classifier never sees a mask, so the
//! encoder must not rely on one). At every position, each convolution contributes the maximum
//! of its ReLU outputs over the windows that cover the position (so a width-`k` filter sees
//! `k - 1` tokens either side, the same windows the classifier max-pools over); a linear head
//! maps these concatenated features to the token's logits, and the loss is the cross-entropy
//! on the chosen positions only. The line is framed by `max(widths) - 1` padding tokens on
//! each side, so every window covering a real position exists (the classifier's own
//! convolutions are unpadded: the weights are the same, only the framing differs).
//!
//! The stream: any format `ingest` reads, deduplicated; a line's stream count (`count`
//! column, 1 a row otherwise) weighs how often it is drawn: `count ^ count_power`, as the
//! detector samples (0.5 by default; 0 = every unique line alike).
//!
//! A pretraining directory holds `config.json` ([`PretrainBundle`]), `encoder.safetensors`
//! (embedding and convolutions under the classifier's parameter names), `model.safetensors`
//! (the whole masked-token model of the best epoch, head included), `tokenizer.json` for BPE
//! tokens (learnt on the stream) and `checkpoint/` (resume).

use super::model::{CnnConfig, CnnEncoder, ConvInput};
use super::tokens::{TokenKind, Tokens};
use crate::Globals;
use crate::data::{bucket_by_length, split_train_val};
use crate::error::{Context, Error, Result};
use crate::train::{Batch, Metrics, OptimConfig, RunDir, RunSpec, Task, TrainState, fit};
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::distr::weighted::WeightedIndex;
use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `format` of a pretraining directory's `config.json`.
pub const FORMAT: &str = "longtail-cnn-pretrain/1";

/// The encoder's weights in a pretraining directory (classifier parameter names).
pub const ENCODER_FILE: &str = "encoder.safetensors";

/// How pretraining samples, masks and optimises; `configs/pretrain.toml`, saved in
/// `config.json` beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    /// Share of a line's real tokens that are predicted (at least one per line): 80 % of them
    /// masked, 10 % replaced by a random token, 10 % kept.
    pub mask_rate: f64,
    /// A unique line seen `count` times is drawn with probability proportional to
    /// `count ^ count_power` (1: as the raw stream; 0: every unique line alike).
    pub count_power: f64,
    /// Lines drawn per epoch (0 = as many as there are unique training lines).
    pub lines_per_epoch: usize,
    /// Unique lines kept from the stream, a seeded uniform sample (0 = all).
    pub max_lines: usize,
    /// Share of unique lines held out (by a hash of the text) for the validation loss.
    pub val_fraction: f64,
    /// Upper bounds on one batch: lines, and padded token positions.
    pub max_batch: usize,
    pub batch_tokens: usize,
    pub optim: OptimConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            mask_rate: 0.15,
            count_power: 0.5,
            lines_per_epoch: 0,
            max_lines: 0,
            val_fraction: 0.05,
            max_batch: 64,
            batch_tokens: 8192,
            optim: OptimConfig {
                epochs: 4,
                lr: 2e-3,
                ..OptimConfig::default()
            },
        }
    }
}

impl PretrainConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .input_ctx(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).input_ctx(|| format!("invalid pretraining config {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::input(format!("pretraining config: {m}")));
        if !(self.mask_rate > 0.0 && self.mask_rate < 1.0) {
            return bad("mask_rate must be in (0, 1), e.g. 0.15");
        }
        if !(self.count_power >= 0.0 && self.count_power.is_finite()) {
            return bad("count_power must be >= 0 (0 = uniform over unique lines)");
        }
        if !(self.val_fraction > 0.0 && self.val_fraction <= 0.5) {
            return bad("val_fraction must be in (0, 0.5]");
        }
        if self.max_batch == 0 || self.batch_tokens == 0 {
            return bad("max_batch and batch_tokens must be positive");
        }
        if self.optim.epochs == 0 {
            return bad("optim.epochs must be at least 1");
        }
        Ok(())
    }
}

/// What reading the stream did; in `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamSummary {
    pub files: Vec<String>,
    /// Rows read (blank commands are skipped by the reader).
    pub rows: u64,
    /// Occurrences: the sum of the `count` column (1 a row without it).
    pub occurrences: u64,
    /// Unique lines in the stream, and how many were kept (`max_lines`).
    pub unique: usize,
    pub kept: usize,
    pub train_lines: usize,
    pub val_lines: usize,
}

/// `config.json` of a pretraining directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainBundle {
    pub format: String,
    /// The architecture pretrained: a classifier config's `[model]`. Supervised training from
    /// this directory needs the same tokenizer, vocab_size, embed_dim, filters, widths and
    /// max_len.
    pub model: CnnConfig,
    pub pretrain: PretrainConfig,
    pub data: StreamSummary,
    pub device: String,
    pub seed: u64,
    pub training: Option<TrainState>,
    /// Validation metrics of the saved (best) epoch: `loss` (mean cross-entropy per predicted
    /// token, nats) and `accuracy` (share of predicted tokens whose top logit is right).
    pub validation: Option<Metrics>,
    /// Wall time of this process's pretraining, loading included.
    pub seconds: f64,
}

/// Unique lines of the stream files and their occurrence counts, in first-seen order.
pub fn load_stream(paths: &[PathBuf]) -> Result<(Vec<String>, Vec<u64>, StreamSummary)> {
    let mut summary = StreamSummary {
        files: paths.iter().map(|p| p.display().to_string()).collect(),
        ..Default::default()
    };
    // `extras`: a JSONL stream's `count` field counts too.
    let (lines, counts, rows) = crate::io::unique_lines_with_counts(paths, true)?;
    summary.rows = rows;
    summary.occurrences = counts.iter().sum();
    if lines.is_empty() {
        return Err(Error::input(format!(
            "the stream ({}) has no command lines: pass files with a `cmd` column (Parquet, \
             JSONL, CSV) or one command a line (text)",
            summary.files.join(", ")
        )));
    }
    summary.unique = lines.len();
    Ok((lines, counts, summary))
}

/// How a predicted position is corrupted in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// Its embedding is replaced by the learned mask vector.
    Mask,
    /// Its token is replaced by this random token.
    Random(u32),
    /// Left as it is (still predicted).
    Keep,
}

/// The positions of a line of `len` tokens to predict (`round(rate * len)`, at least one, in
/// increasing order) and their corruption: 80 % mask, 10 % a random token below `vocab`, 10 %
/// kept.
pub fn choose_masks(
    len: usize,
    rate: f64,
    vocab: usize,
    rng: &mut impl Rng,
) -> Vec<(usize, Corruption)> {
    if len == 0 {
        return Vec::new();
    }
    let k = ((rate * len as f64).round() as usize).clamp(1, len);
    let mut positions = rand::seq::index::sample(rng, len, k).into_vec();
    positions.sort_unstable();
    positions
        .into_iter()
        .map(|p| {
            let u: f64 = rng.random();
            let c = if u < 0.8 {
                Corruption::Mask
            } else if u < 0.9 {
                Corruption::Random(rng.random_range(0..vocab as u32))
            } else {
                Corruption::Keep
            };
            (p, c)
        })
        .collect()
}

/// A batch of corrupted lines on the host. Row `r` holds `margin` padding tokens, the line,
/// then padding up to `margin + len + margin` tokens.
#[derive(Clone, Debug)]
pub struct MaskedBatch {
    pub batch: usize,
    /// Positions per row that may hold the line (a multiple of 8, at least the widest kernel).
    pub len: usize,
    /// Padding tokens before (and at least after) the line: `max(widths) - 1`.
    pub margin: usize,
    /// Input token ids `[batch, margin + len + margin]`, corrupted.
    pub tokens: Vec<i64>,
    /// 1 where the mask vector replaces the embedding, same shape.
    pub masked: Vec<f32>,
    /// Predicted positions as `row * len + position` (position within the line).
    pub positions: Vec<i64>,
    /// The original token at each predicted position.
    pub targets: Vec<i64>,
}

impl MaskedBatch {
    /// A batch of already clipped token rows, masked with `rng`.
    pub fn new(cfg: &CnnConfig, rows: &[&[u32]], mask_rate: f64, rng: &mut impl Rng) -> Self {
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let len = cfg.batch_len(longest);
        let margin = cfg.max_width() - 1;
        let width = len + 2 * margin;
        let mut b = MaskedBatch {
            batch: rows.len(),
            len,
            margin,
            tokens: vec![cfg.pad(); rows.len() * width],
            masked: vec![0.0; rows.len() * width],
            positions: Vec::new(),
            targets: Vec::new(),
        };
        for (r, ids) in rows.iter().enumerate() {
            let at = |p: usize| r * width + margin + p;
            for (p, &t) in ids.iter().enumerate() {
                b.tokens[at(p)] = t as i64;
            }
            for (p, c) in choose_masks(ids.len(), mask_rate, cfg.vocab(), rng) {
                match c {
                    Corruption::Mask => b.masked[at(p)] = 1.0,
                    Corruption::Random(t) => b.tokens[at(p)] = t as i64,
                    Corruption::Keep => {}
                }
                b.positions.push((r * len + p) as i64);
                b.targets.push(ids[p] as i64);
            }
        }
        b
    }

    fn width(&self) -> usize {
        self.len + 2 * self.margin
    }
}

/// The masked-token model: the classifier's encoder, a learned mask vector and a linear head
/// from each position's convolution features to the token logits.
#[derive(Module, Debug)]
pub struct MaskedTokenModel {
    pub encoder: CnnEncoder,
    mask: Param<Tensor<1>>,
    dropout: Dropout,
    head: Linear,
}

impl MaskedTokenModel {
    /// A fresh model: the encoder as [`CnnConfig::init`] draws it, then the mask and head.
    pub fn init(cfg: &CnnConfig, device: &Device) -> Self {
        let encoder = cfg.init_encoder(device);
        MaskedTokenModel {
            encoder,
            mask: burn::nn::Initializer::Normal {
                mean: 0.0,
                std: 0.1,
            }
            .init([cfg.embed_dim], device),
            dropout: DropoutConfig::new(cfg.dropout).init(),
            head: LinearConfig::new(cfg.filters * cfg.widths.len(), cfg.vocab()).init(device),
        }
    }

    /// Logits `[predicted positions, vocab]` of a batch, in `positions` order.
    pub fn forward(&self, b: &MaskedBatch, device: &Device) -> Tensor<2> {
        let (batch, len, margin, width) = (b.batch, b.len, b.margin, b.width());
        let tokens: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(b.tokens.clone(), [batch, width]), device);
        let masked: Tensor<3> =
            Tensor::from_data(TensorData::new(b.masked.clone(), [batch, width, 1]), device);
        let x = self.encoder.embed.forward(tokens); // [batch, width, embed]
        let [_, _, embed] = x.dims();
        let masked = masked.expand([batch, width, embed]);
        let mask = self
            .mask
            .val()
            .reshape([1, 1, embed])
            .expand([batch, width, embed]);
        let x = x * (masked.clone().neg().add_scalar(1.0)) + mask * masked;
        let x = ConvInput::new(&self.encoder.convs, x);
        let axis = x.axis();
        let features: Vec<Tensor<3>> = self
            .encoder
            .convs
            .iter()
            .map(|conv| {
                let y = x.relu_conv(conv);
                // Output t is the window over padded positions t..t+k; line position p is
                // padded position margin + p, covered by windows margin + p - j, j < k (all
                // of them real windows: they start before width + 1 - k).
                (0..conv.kernel_size)
                    .map(|j| y.clone().narrow(axis, margin - j, len))
                    .reduce(|a, b| a.max_pair(b))
                    .expect("k >= 1")
            })
            .collect();
        // [batch, len, filters * widths]
        let h = if axis == 1 {
            Tensor::cat(features, 2)
        } else {
            Tensor::cat(features, 1).swap_dims(1, 2)
        };
        let f = h.dims()[2];
        let h = h.reshape([batch * len, f]);
        let n = b.positions.len();
        let at: Tensor<1, Int> =
            Tensor::from_data(TensorData::new(b.positions.clone(), [n]), device);
        self.head.forward(self.dropout.forward(h.select(0, at)))
    }

    /// Cross-entropy per predicted position `[n]`.
    pub fn nll(&self, b: &MaskedBatch, device: &Device) -> (Tensor<1>, Tensor<2>) {
        let logits = self.forward(b, device);
        let n = b.targets.len();
        let targets: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(b.targets.clone(), [n, 1]), device);
        let nll = log_softmax(logits.clone(), 1)
            .gather(1, targets)
            .neg()
            .reshape([n]);
        (nll, logits)
    }
}

/// Masked batches of `items` (indices into `clipped`), bucketed by length.
fn make_batches(
    cfg: &CnnConfig,
    pre: &PretrainConfig,
    clipped: &[Vec<u32>],
    items: &[usize],
    rng: &mut StdRng,
) -> Vec<MaskedBatch> {
    let margin = 2 * (cfg.max_width() - 1);
    let lens: Vec<usize> = items
        .iter()
        .map(|&i| cfg.batch_len(clipped[i].len()) + margin)
        .collect();
    bucket_by_length(&lens, pre.max_batch, pre.batch_tokens)
        .into_iter()
        .map(|group| {
            let rows: Vec<&[u32]> = group
                .iter()
                .map(|&g| clipped[items[g]].as_slice())
                .collect();
            MaskedBatch::new(cfg, &rows, pre.mask_rate, rng)
        })
        .collect()
}

/// Pretraining as a [`Task`]: each epoch draws `per_epoch` training lines by stream count
/// and masks them afresh (a function of seed and epoch); validation uses fixed masks.
struct PretrainTask<'a> {
    cfg: &'a CnnConfig,
    pre: &'a PretrainConfig,
    clipped: &'a [Vec<u32>],
    train_idx: Vec<usize>,
    sampler: WeightedIndex<f64>,
    per_epoch: usize,
    seed: u64,
    val_batches: Vec<MaskedBatch>,
}

impl PretrainTask<'_> {
    fn draw(&self, rng: &mut StdRng) -> Vec<usize> {
        (0..self.per_epoch)
            .map(|_| self.train_idx[self.sampler.sample(rng)])
            .collect()
    }
}

impl Task for PretrainTask<'_> {
    type Model = MaskedTokenModel;
    type Batch = MaskedBatch;

    fn name(&self) -> &str {
        "pretrain"
    }

    fn steps_per_epoch(&self) -> usize {
        // Epochs draw different lines, so their step counts differ a little; the schedule
        // only needs the size, taken from epoch 0's draw.
        let items = self.draw(&mut crate::train::epoch_rng(self.seed, 0));
        let margin = 2 * (self.cfg.max_width() - 1);
        let lens: Vec<usize> = items
            .iter()
            .map(|&i| self.cfg.batch_len(self.clipped[i].len()) + margin)
            .collect();
        bucket_by_length(&lens, self.pre.max_batch, self.pre.batch_tokens).len()
    }

    fn epoch_batches(&self, epoch: usize) -> Vec<Batch<MaskedBatch>> {
        let mut rng = crate::train::epoch_rng(self.seed, epoch);
        let items = self.draw(&mut rng);
        let mut batches = make_batches(self.cfg, self.pre, self.clipped, &items, &mut rng);
        batches.shuffle(&mut rng);
        batches
            .into_iter()
            .map(|b| Batch {
                lines: b.batch,
                data: b,
            })
            .collect()
    }

    fn loss(&self, model: &MaskedTokenModel, batch: &MaskedBatch, device: &Device) -> Tensor<1> {
        model.nll(batch, device).0.mean()
    }

    fn validate(&self, model: &MaskedTokenModel, device: &Device) -> Result<Metrics> {
        let (mut sum, mut right, mut n) = (0.0f64, 0usize, 0usize);
        for b in &self.val_batches {
            let (nll, logits) = model.nll(b, device);
            sum += nll.sum().into_scalar::<f32>() as f64;
            let best = logits.argmax(1).into_data_as::<i64>();
            let best = best.as_slice::<i64>().expect("i64 data");
            right += best.iter().zip(&b.targets).filter(|(a, t)| a == t).count();
            n += b.targets.len();
        }
        let (loss, accuracy) = if n == 0 {
            (f64::NAN, f64::NAN)
        } else {
            (sum / n as f64, right as f64 / n as f64)
        };
        Ok(Metrics::from([
            ("loss".to_string(), loss),
            ("accuracy".to_string(), accuracy),
        ]))
    }
}

/// What [`pretrain`] is asked to do.
pub struct PretrainRequest<'a> {
    /// The architecture: a classifier config's `[model]`.
    pub model: &'a CnnConfig,
    pub config: &'a PretrainConfig,
    /// Unlabeled lines (any format `ingest` reads; `count` column optional).
    pub stream: &'a [PathBuf],
    pub out: &'a Path,
    pub resume: bool,
}

/// Pretrain the encoder of `req.model` on the stream into `req.out` (see the module docs).
pub fn pretrain(req: &PretrainRequest, globals: &Globals) -> Result<PretrainBundle> {
    let start = std::time::Instant::now();
    let cfg = req.model;
    cfg.validate()?;
    req.config.validate()?;
    let cfg_path = req.out.join("config.json");
    if req.resume && cfg_path.exists() {
        let previous: PretrainBundle = crate::io::read_json(&cfg_path, "pretraining config")?;
        if previous.model != *cfg || previous.pretrain != *req.config {
            return Err(Error::input(format!(
                "--resume: {} was started with a different config; rerun without --resume \
                 (starts over) or with the same --config and options",
                cfg_path.display()
            )));
        }
    }
    let (mut lines, mut counts, mut summary) = load_stream(req.stream)?;
    if req.config.max_lines > 0 && lines.len() > req.config.max_lines {
        let mut rng = StdRng::seed_from_u64(globals.seed ^ 0x6d61_785f_6c69_6e65);
        let mut keep =
            rand::seq::index::sample(&mut rng, lines.len(), req.config.max_lines).into_vec();
        keep.sort_unstable();
        lines = keep
            .iter()
            .map(|&i| std::mem::take(&mut lines[i]))
            .collect();
        counts = keep.iter().map(|&i| counts[i]).collect();
    }
    summary.kept = lines.len();
    let texts: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    let (train_idx, val_idx) = split_train_val(&texts, req.config.val_fraction);
    if train_idx.is_empty() || val_idx.is_empty() {
        return Err(Error::input(format!(
            "the stream has {} unique lines: too few to hold out validation lines \
             (val_fraction {}); pass a larger stream",
            lines.len(),
            req.config.val_fraction
        )));
    }
    summary.train_lines = train_idx.len();
    summary.val_lines = val_idx.len();
    tracing::info!(
        "stream: {} rows, {} occurrences, {} unique lines ({} kept): {} training, {} validation",
        summary.rows,
        summary.occurrences,
        summary.unique,
        summary.kept,
        summary.train_lines,
        summary.val_lines
    );
    std::fs::create_dir_all(req.out)
        .runtime_ctx(|| format!("cannot create {}", req.out.display()))?;
    let tokens = match cfg.tokenizer {
        TokenKind::Bytes => Tokens::Bytes,
        TokenKind::Bpe if req.resume && req.out.join(super::tokens::TOKENIZER_FILE).exists() => {
            Tokens::load(req.out, cfg.tokenizer, cfg.vocab())?
        }
        TokenKind::Bpe => {
            Tokens::train_bpe(train_idx.iter().map(|&i| lines[i].as_str()), cfg.vocab_size)?
        }
    };
    tokens.save(req.out)?;
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let clipped: Vec<Vec<u32>> = tokens
        .encode_all(&refs)
        .into_iter()
        .map(|t| cfg.clip(&t).into_owned())
        .collect();
    let chosen = globals.device.clone();
    let mut bundle = PretrainBundle {
        format: FORMAT.into(),
        model: cfg.clone(),
        pretrain: req.config.clone(),
        data: summary,
        device: chosen.name.clone(),
        seed: globals.seed,
        training: None,
        validation: None,
        seconds: 0.0,
    };
    // Written first so that a killed run can be inspected and resumed.
    crate::io::write_json(&cfg_path, &bundle)?;

    let weights: Vec<f64> = train_idx
        .iter()
        .map(|&i| (counts[i].max(1) as f64).powf(req.config.count_power))
        .collect();
    let sampler = WeightedIndex::new(&weights)
        .map_err(|e| Error::input(format!("bad stream counts: {e}")))?;
    let per_epoch = match req.config.lines_per_epoch {
        0 => train_idx.len(),
        n => n,
    };
    // Validation masks are fixed (seeded once) so that epochs are comparable.
    let mut val_rng = StdRng::seed_from_u64(globals.seed ^ 0x7661_6c69);
    let val_batches = make_batches(cfg, req.config, &clipped, &val_idx, &mut val_rng);
    let run = RunDir::new(req.out)?;
    let spec = RunSpec::new(
        &req.config.optim,
        &run,
        &chosen.device,
        globals.seed,
        req.resume,
    );
    let model = MaskedTokenModel::init(cfg, &spec.train_device);
    let task = PretrainTask {
        cfg,
        pre: req.config,
        clipped: &clipped,
        train_idx,
        sampler,
        per_epoch,
        seed: globals.seed,
        val_batches,
    };
    let (model, state) = fit(&spec, &task, model)?;
    crate::train::save_weights(&model.encoder, &req.out.join(ENCODER_FILE))?;
    bundle.validation = state.best_epoch.and_then(|e| state.metrics.get(e)).cloned();
    bundle.training = Some(state);
    bundle.seconds = start.elapsed().as_secs_f64();
    crate::io::write_json(&cfg_path, &bundle)?;
    Ok(bundle)
}

/// The differences between a pretraining's architecture and a classifier's, as
/// `name: pretrained X, config Y` (empty when supervised training can start from it).
pub fn architecture_mismatch(pretrained: &CnnConfig, model: &CnnConfig) -> Vec<String> {
    let mut diff = Vec::new();
    let mut check = |name: &str, a: String, b: String| {
        if a != b {
            diff.push(format!("{name}: pretrained {a}, config {b}"));
        }
    };
    check(
        "tokenizer",
        pretrained.tokenizer.name().into(),
        model.tokenizer.name().into(),
    );
    if model.tokenizer == TokenKind::Bpe {
        check(
            "vocab_size",
            pretrained.vocab_size.to_string(),
            model.vocab_size.to_string(),
        );
    }
    check(
        "embed_dim",
        pretrained.embed_dim.to_string(),
        model.embed_dim.to_string(),
    );
    check(
        "filters",
        pretrained.filters.to_string(),
        model.filters.to_string(),
    );
    check(
        "widths",
        format!("{:?}", pretrained.widths),
        format!("{:?}", model.widths),
    );
    check(
        "max_len",
        pretrained.max_len.to_string(),
        model.max_len.to_string(),
    );
    diff
}

/// The encoder of the pretraining directory `dir` on `device` and its tokenizer, after
/// checking that its architecture is `model`'s (an input error naming the differences
/// otherwise).
pub fn load_encoder(
    dir: &Path,
    model: &CnnConfig,
    device: &Device,
) -> Result<(CnnEncoder, Tokens)> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::input(format!(
            "{} is not a pretraining directory (no config.json); make one with \
             `longtail pretrain-classifier --stream FILE --out DIR`",
            dir.display()
        )));
    }
    // The format first: a classifier's config.json is valid JSON of another shape.
    let value: serde_json::Value = crate::io::read_json(&cfg_path, "pretraining config")?;
    let format = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
    if format != FORMAT {
        return Err(Error::input(format!(
            "{} has format {format:?}, not a pretraining run ({FORMAT:?}); pass the directory \
             that `longtail pretrain-classifier --out` wrote",
            cfg_path.display(),
        )));
    }
    let bundle: PretrainBundle = serde_json::from_value(value)
        .input_ctx(|| format!("invalid pretraining config {}", cfg_path.display()))?;
    let diff = architecture_mismatch(&bundle.model, model);
    if !diff.is_empty() {
        return Err(Error::input(format!(
            "{} was pretrained for another architecture ({}); pretrain again with this \
             classifier config (`pretrain-classifier --config`), or train with the \
             pretraining's [model] section",
            dir.display(),
            diff.join("; ")
        )));
    }
    let path = dir.join(ENCODER_FILE);
    if !path.exists() {
        return Err(Error::input(format!(
            "{} has no {ENCODER_FILE}: its pretraining did not finish; rerun it (with \
             --resume to continue)",
            dir.display()
        )));
    }
    let encoder = crate::train::load_weights(model.init_encoder(device), &path)?;
    let tokens = Tokens::load(dir, model.tokenizer, model.vocab())?;
    Ok((encoder, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_choose_the_rate_of_real_positions_at_least_one_and_split_80_10_10() {
        let mut rng = StdRng::seed_from_u64(1);
        assert!(choose_masks(0, 0.15, 256, &mut rng).is_empty());
        assert_eq!(choose_masks(3, 0.15, 256, &mut rng).len(), 1);
        let (mut mask, mut random, mut keep) = (0, 0, 0);
        for _ in 0..200 {
            let m = choose_masks(100, 0.15, 256, &mut rng);
            assert_eq!(m.len(), 15);
            assert!(m.windows(2).all(|w| w[0].0 < w[1].0), "sorted, distinct");
            assert!(m.iter().all(|&(p, _)| p < 100));
            for (_, c) in m {
                match c {
                    Corruption::Mask => mask += 1,
                    Corruption::Random(t) => {
                        assert!(t < 256);
                        random += 1
                    }
                    Corruption::Keep => keep += 1,
                }
            }
        }
        let total = (mask + random + keep) as f64;
        assert!((mask as f64 / total - 0.8).abs() < 0.03, "{mask}");
        assert!((random as f64 / total - 0.1).abs() < 0.02, "{random}");
        assert!((keep as f64 / total - 0.1).abs() < 0.02, "{keep}");
    }

    #[test]
    fn a_masked_batch_frames_lines_with_padding_and_predicts_only_real_positions() {
        let cfg = CnnConfig {
            widths: vec![2, 3],
            max_len: 16,
            ..CnnConfig::default()
        };
        let rows: Vec<&[u32]> = vec![&[10, 11, 12, 13, 14], &[20, 21]];
        let b = MaskedBatch::new(&cfg, &rows, 0.5, &mut StdRng::seed_from_u64(3));
        assert_eq!((b.batch, b.len, b.margin), (2, 8, 2));
        let width = 12;
        assert_eq!(b.tokens.len(), 2 * width);
        // Row 0: 2 pads, the line (some tokens maybe replaced), pads.
        assert_eq!(&b.tokens[..2], &[256, 256]);
        assert!(b.tokens[7..12].iter().all(|&t| t == 256));
        assert_eq!(&b.tokens[width..width + 2], &[256, 256]);
        // round(0.5 * 5) = 3 positions of row 0 (at most 4), 1 of row 1.
        assert_eq!(b.positions.len(), 3 + 1);
        for (&at, &t) in b.positions.iter().zip(&b.targets) {
            let (r, p) = (at as usize / b.len, at as usize % b.len);
            assert!(p < rows[r].len());
            assert_eq!(t, rows[r][p] as i64);
            // A masked position keeps its token id (the embedding is replaced instead).
            if b.masked[r * width + b.margin + p] == 1.0 {
                assert_eq!(b.tokens[r * width + b.margin + p], t);
            }
        }
        assert!(b.masked.iter().enumerate().all(|(i, &m)| m == 0.0
            || (i % width >= b.margin && i % width < b.margin + rows[i / width].len())));
    }

    #[test]
    fn the_per_position_features_see_only_the_windows_covering_the_position() {
        // A change at line position 6 can only move the logits of positions within
        // max(widths) - 1 of it: the framing and the window alignment are right.
        let cfg = CnnConfig {
            embed_dim: 4,
            // Enough filters that some maximum changes wherever a covering window changed.
            filters: 16,
            widths: vec![2, 3],
            dropout: 0.0,
            max_len: 32,
            ..CnnConfig::default()
        };
        let device = Device::flex();
        device.seed(1);
        let model = MaskedTokenModel::init(&cfg, &device);
        let line: Vec<u32> = (0..12).map(|i| 40 + i).collect();
        let mut other = line.clone();
        other[6] = 99;
        let all = |ids: &[u32]| {
            let mut b = MaskedBatch::new(&cfg, &[ids], 0.01, &mut StdRng::seed_from_u64(0));
            b.masked.iter_mut().for_each(|m| *m = 0.0);
            b.tokens = {
                let mut t = vec![cfg.pad(); b.tokens.len()];
                for (p, &x) in ids.iter().enumerate() {
                    t[b.margin + p] = x as i64;
                }
                t
            };
            b.positions = (0..ids.len() as i64).collect();
            b.targets = ids.iter().map(|&x| x as i64).collect();
            let z = model.forward(&b, &device).into_data_as::<f32>();
            z.as_slice::<f32>().unwrap().to_vec()
        };
        let (a, b) = (all(&line), all(&other));
        let v = cfg.vocab();
        for p in 0..12 {
            let moved = (0..v).any(|t| (a[p * v + t] - b[p * v + t]).abs() > 1e-6);
            assert_eq!(moved, (4..=8).contains(&p), "position {p}");
        }
    }
}
