//! Training plumbing shared by every model (the detector and the classifier): AdamW with
//! warmup + cosine decay and gradient clipping, a validation pass with named metrics, a
//! checkpoint after every epoch, `--resume` after a kill, the best epoch and early stopping
//! by a named metric with a direction ([`Monitor`]), a progress bar with loss and lines/s,
//! and determinism under a seed (each epoch's randomness derives from the seed and the epoch
//! number alone, so a resumed run continues exactly as an uninterrupted one).
//!
//! A model plugs in as a [`Task`] (its epoch batches, its loss, its validation metrics) and
//! is trained by [`fit`] under a [`RunSpec`]. The loop is hand-written rather than
//! burn-train's `Learner` because it needs weighted resampling with length buckets per epoch
//! and exact resume; its best-checkpoint and early-stopping rules follow burn-train's
//! `MetricEarlyStoppingStrategy` (a metric, a direction, epochs without improvement).

use crate::error::{Context, Error, Result};
use crate::io::table::write_atomic;
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::store::{BurnpackStore, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Optimisation settings; saved beside the weights with the model config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Warmup steps as a fraction of all steps.
    pub warmup_fraction: f64,
    /// Clip the gradient norm to this value (0 disables).
    pub grad_clip: f64,
    /// Stop when the monitored metric has not improved for this many epochs (0 = never).
    pub patience: usize,
    /// The validation metric that picks the saved (best) epoch and drives early stopping.
    pub monitor: Monitor,
}

/// Which way a metric improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Lower,
    Higher,
}

/// A validation metric to watch, by name (`loss` for every task; the classifier also reports
/// `roc_auc`), and which way is better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    pub metric: String,
    pub direction: Direction,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            metric: "loss".into(),
            direction: Direction::Lower,
        }
    }
}

impl Monitor {
    /// Whether `value` beats `best` (NaN never does; anything beats no best yet).
    pub fn improves(&self, value: f64, best: Option<f64>) -> bool {
        match best {
            None => true,
            Some(b) => match self.direction {
                Direction::Lower => value < b,
                Direction::Higher => value > b,
            },
        }
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            epochs: 4,
            lr: 2e-3,
            weight_decay: 0.01,
            warmup_fraction: 0.05,
            grad_clip: 1.0,
            patience: 0,
            monitor: Monitor::default(),
        }
    }
}

/// The random generator of one epoch: a function of (seed, epoch) alone, so a run resumed
/// after epoch `e` draws exactly what an uninterrupted one draws.
pub fn epoch_rng(seed: u64, epoch: usize) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    rand::rngs::StdRng::seed_from_u64(
        seed.wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch as u64 + 1)),
    )
}

/// Learning rate at `step` of `total`: linear warmup, then cosine decay to 5% of the peak.
pub fn lr_at(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    let total = total.max(1);
    let warmup = ((cfg.warmup_fraction * total as f64).round() as usize).max(1);
    if step < warmup {
        return cfg.lr * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    let floor = 0.05 * cfg.lr;
    floor + (cfg.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Validation results of one epoch, by metric name.
pub type Metrics = BTreeMap<String, f64>;

/// What a training run has done so far; `state.json` in the checkpoint directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TrainState {
    pub epochs_done: usize,
    pub step: usize,
    // JSON has no NaN (a run without validation lines has NaN losses): serde_json writes it as
    // null, and these read null back as NaN.
    #[serde(deserialize_with = "nan_for_null")]
    pub train_loss: Vec<f64>,
    #[serde(deserialize_with = "nan_for_null")]
    pub val_loss: Vec<f64>,
    /// Every validation metric, per epoch.
    #[serde(default, deserialize_with = "nan_for_null_metrics")]
    pub metrics: Vec<Metrics>,
    /// The monitored metric's name (older states: `loss`).
    #[serde(default = "loss_name")]
    pub monitor: String,
    /// The best value of the monitored metric, and its epoch (0-based).
    pub best_val: Option<f64>,
    pub best_epoch: Option<usize>,
    pub lines_per_sec: Vec<f64>,
}

fn loss_name() -> String {
    "loss".into()
}

fn nan_for_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    let values: Vec<Option<f64>> = Deserialize::deserialize(d)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

fn nan_for_null_metrics<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Metrics>, D::Error> {
    let epochs: Vec<BTreeMap<String, Option<f64>>> = Deserialize::deserialize(d)?;
    Ok(epochs
        .into_iter()
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
                .collect()
        })
        .collect())
}

/// Files of a run directory: `checkpoint/` (the last epoch: model, optimizer, state) and
/// `model.safetensors` (the weights with the lowest validation loss).
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("checkpoint"))
            .runtime_ctx(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
    fn ckpt(&self, name: &str) -> PathBuf {
        self.dir.join("checkpoint").join(name)
    }
    pub fn best_weights(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    pub fn has_checkpoint(&self) -> bool {
        self.ckpt("state.json").exists()
    }
}

/// Save a module's weights as safetensors, atomically.
pub fn save_weights<M: Module>(model: &M, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .runtime_ctx(|| format!("serialising weights for {}", path.display()))?;
    let bytes = store.get_bytes().runtime_ctx(|| "serialising weights")?;
    write_atomic(path, &bytes)
}

/// Load safetensors weights into a freshly initialised module of the same config.
pub fn load_weights<M: Module>(mut model: M, path: &Path) -> Result<M> {
    let bytes = std::fs::read(path).input_ctx(|| {
        format!(
            "cannot read weights {} (train a model first, or pass the right --model dir)",
            path.display()
        )
    })?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = model.load_from(&mut store).input_ctx(|| {
        format!(
            "{} does not match the model config beside it",
            path.display()
        )
    })?;
    if !result.missing.is_empty() {
        return Err(Error::input(format!(
            "{} lacks tensors {:?}: it was saved from a different architecture",
            path.display(),
            result.missing
        )));
    }
    Ok(model)
}

/// Checkpoint weights keep Burn's parameter ids (burnpack), which the optimizer state is keyed
/// by: safetensors would load the values under fresh ids and silently reset Adam's moments.
fn save_checkpoint_weights<M: Module>(model: &M, path: &Path) -> Result<()> {
    let tmp = path.with_extension("bpk.tmp");
    let mut store = BurnpackStore::from_file(&tmp).overwrite(true);
    model
        .save_into(&mut store)
        .runtime_ctx(|| format!("writing checkpoint {}", tmp.display()))?;
    std::fs::rename(&tmp, path).runtime_ctx(|| format!("moving checkpoint into {}", path.display()))
}

fn load_checkpoint_weights<M: Module>(mut model: M, path: &Path) -> Result<M> {
    let mut store = BurnpackStore::from_file(path);
    model.load_from(&mut store).input_ctx(|| {
        format!(
            "cannot load checkpoint {}; delete the checkpoint to start over",
            path.display()
        )
    })?;
    Ok(model)
}

/// One step's worth of work, prepared by the caller.
pub struct Batch<T> {
    pub data: T,
    /// Lines (examples) in this batch, for the lines/s figure.
    pub lines: usize,
}

/// A model and its data, as the training loop sees them.
pub trait Task {
    /// The module trained (on the autodiff device) and validated (its `valid()` copy).
    type Model: Module + Clone;
    /// One step's data.
    type Batch;

    /// Label on the progress bar.
    fn name(&self) -> &str;
    /// Steps in one epoch (for the learning-rate schedule).
    fn steps_per_epoch(&self) -> usize;
    /// That epoch's batches; a function of (seed, epoch) alone, so a resumed run matches.
    fn epoch_batches(&self, epoch: usize) -> Vec<Batch<Self::Batch>>;
    /// The training loss of a batch (model in training mode, on the autodiff `device`).
    fn loss(&self, model: &Self::Model, batch: &Self::Batch, device: &Device) -> Tensor<1>;
    /// `batch` cut into at most `n` shards whose losses sum to the batch's loss, with the
    /// same dropout masks row for row, so that a step can run as concurrent shards on a CPU
    /// (see [`fit`]). Empty, the default: the task's steps run whole.
    fn shards(&self, _batch: &Self::Batch, _n: usize) -> Vec<Self::Batch> {
        Vec::new()
    }
    /// Validation metrics of a model in inference mode on `device`; must include `loss` (NaN
    /// when there is no validation data).
    fn validate(&self, model: &Self::Model, device: &Device) -> Result<Metrics>;
}

/// How one training run goes: optimisation settings, where it writes, the devices, the seed.
pub struct RunSpec<'a> {
    pub cfg: &'a OptimConfig,
    pub run: &'a RunDir,
    /// The inference device (validation runs here).
    pub device: Device,
    /// The same device with autodiff: the trained model lives here.
    pub train_device: Device,
    pub seed: u64,
    pub resume: bool,
}

impl<'a> RunSpec<'a> {
    /// A run on `device`, seeded: initialise the model on [`RunSpec::train_device`] after this,
    /// so its weights are a function of the seed.
    pub fn new(
        cfg: &'a OptimConfig,
        run: &'a RunDir,
        device: &Device,
        seed: u64,
        resume: bool,
    ) -> Self {
        let train_device = device.clone().autodiff();
        device.seed(seed);
        train_device.seed(seed);
        RunSpec {
            cfg,
            run,
            device: device.clone(),
            train_device,
            seed,
            resume,
        }
    }
}

/// Train `model` on `task`; returns the model of the best epoch by the monitored metric (the
/// last one when no epoch ran), and what was done.
pub fn fit<T>(spec: &RunSpec, task: &T, mut model: T::Model) -> Result<(T::Model, TrainState)>
where
    T: Task + Sync,
    T::Batch: Sync,
{
    let cfg = spec.cfg;
    let shards_per_step = crate::device::batches_in_flight(&spec.train_device);
    let mut optim_cfg = AdamWConfig::new().with_weight_decay(cfg.weight_decay as f32);
    if cfg.grad_clip > 0.0 {
        optim_cfg =
            optim_cfg.with_grad_clipping(Some(GradientClippingConfig::Norm(cfg.grad_clip as f32)));
    }
    let mut optim = optim_cfg.init();
    let mut state = TrainState {
        monitor: cfg.monitor.metric.clone(),
        ..TrainState::default()
    };
    if spec.resume && spec.run.has_checkpoint() {
        let text = std::fs::read_to_string(spec.run.ckpt("state.json"))?;
        state = serde_json::from_str(&text).input_ctx(
            || "checkpoint/state.json is corrupt; delete the checkpoint to start over",
        )?;
        if state.monitor != cfg.monitor.metric {
            return Err(Error::input(format!(
                "--resume: the checkpoint monitored `{}`, the config monitors `{}`; rerun \
                 without --resume (starts over) or with the same config",
                state.monitor, cfg.monitor.metric
            )));
        }
        model = load_checkpoint_weights(model, &spec.run.ckpt("model.bpk"))?;
        optim = optim
            .load(spec.run.ckpt("optim.bpk"))
            .input_ctx(|| "cannot load the optimizer checkpoint; delete it to start over")?;
        tracing::info!(
            "resuming after epoch {} (step {})",
            state.epochs_done,
            state.step
        );
    } else if spec.run.has_checkpoint() {
        tracing::info!("starting over (a checkpoint exists; pass --resume to continue it)");
    }
    let total_steps = task.steps_per_epoch() * cfg.epochs;
    let mut best_model = None;
    for epoch in state.epochs_done..cfg.epochs {
        if cfg.patience > 0
            && let Some(best) = state.best_epoch
            && epoch >= best + 1 + cfg.patience
        {
            tracing::info!(
                "early stop: no improvement of validation {} since epoch {}",
                cfg.monitor.metric,
                best + 1
            );
            break;
        }
        // Dropout and any device-side randomness: a function of (seed, epoch) only.
        spec.train_device
            .seed(spec.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let batches = task.epoch_batches(epoch);
        let lines: usize = batches.iter().map(|b| b.lines).sum();
        let bar = crate::progress::bar(lines as u64, task.name(), "lines");
        bar.set_message(format!("epoch {}/{}", epoch + 1, cfg.epochs));
        let start = Instant::now();
        let (mut sum, mut n) = (0.0, 0usize);
        for batch in &batches {
            let lr = lr_at(cfg, state.step, total_steps);
            let (l, grads) = step_gradients(
                task,
                &model,
                &batch.data,
                &spec.train_device,
                shards_per_step,
            );
            // Reading the loss every step syncs the device; every 10 steps keeps the bar honest.
            if state.step.is_multiple_of(10) {
                let v: f32 = l.into_scalar();
                if !v.is_finite() {
                    return Err(Error::runtime(format!(
                        "training diverged (loss {v}) at step {}: lower the learning rate",
                        state.step
                    )));
                }
                sum += v as f64;
                n += 1;
                bar.set_message(format!(
                    "epoch {}/{} loss {:.3}",
                    epoch + 1,
                    cfg.epochs,
                    sum / n as f64
                ));
            }
            model = optim.step(lr, model, grads);
            state.step += 1;
            bar.inc(batch.lines as u64);
        }
        bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        let metrics = task.validate(&model.valid(), &spec.device)?;
        let (Some(&val), Some(&watched)) = (metrics.get("loss"), metrics.get(&cfg.monitor.metric))
        else {
            return Err(Error::input(format!(
                "the monitored metric `{}` is not among the validation metrics of {} ({}); \
                 set [optim] monitor.metric to one of them",
                cfg.monitor.metric,
                task.name(),
                metrics.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        state
            .train_loss
            .push(if n > 0 { sum / n as f64 } else { f64::NAN });
        state.val_loss.push(val);
        state.lines_per_sec.push(lines as f64 / secs.max(1e-9));
        state.epochs_done = epoch + 1;
        if cfg.monitor.improves(watched, state.best_val) {
            state.best_val = Some(watched);
            state.best_epoch = Some(epoch);
            save_weights(&model, &spec.run.best_weights())?;
            best_model = Some(model.clone());
        }
        let shown: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        tracing::info!(
            "epoch {}/{}: train loss {:.4}, validation {}, {:.0} lines/s",
            epoch + 1,
            cfg.epochs,
            state.train_loss[epoch],
            shown.join(", "),
            state.lines_per_sec[epoch]
        );
        state.metrics.push(metrics);
        // Checkpoint: weights and optimizer first, state last, so state.json never points
        // at an epoch whose files are missing.
        save_checkpoint_weights(&model, &spec.run.ckpt("model.bpk"))?;
        let optim_bytes = optim
            .into_bytes()
            .runtime_ctx(|| "serialising the optimizer")?;
        write_atomic(&spec.run.ckpt("optim.bpk"), &optim_bytes)?;
        write_atomic(
            &spec.run.ckpt("state.json"),
            serde_json::to_string_pretty(&state)
                .expect("plain data")
                .as_bytes(),
        )?;
    }
    let model = match best_model {
        Some(m) => m,
        None if spec.run.best_weights().exists() => load_weights(model, &spec.run.best_weights())?,
        None => model,
    };
    Ok((model, state))
}

/// Fewest lines (rows) in a shard of a training step ([`Task::shards`]): below this the per-op
/// overhead of a shard outweighs what the other core gains.
pub const MIN_SHARD_ROWS: usize = 8;

/// Rows `0..rows` cut into at most `n` ranges of consecutive rows, as even as they come and each
/// at least `min_rows` long; empty when that leaves fewer than two (the step runs whole).
pub fn shard_ranges(rows: usize, n: usize, min_rows: usize) -> Vec<std::ops::Range<usize>> {
    let n = n.min(rows / min_rows.max(1));
    if n < 2 {
        return Vec::new();
    }
    (0..n).map(|k| k * rows / n..(k + 1) * rows / n).collect()
}

/// The loss of one step and its gradients. When the task cuts the batch into shards, each
/// runs on its own copy of the model (fresh autodiff leaves, the same parameter ids: shards
/// sharing leaves would share one locked autodiff graph) on rayon's pool, and the shards'
/// gradients are summed: the whole batch's gradient, up to the order of the sums.
pub(crate) fn step_gradients<T>(
    task: &T,
    model: &T::Model,
    batch: &T::Batch,
    device: &Device,
    shards: usize,
) -> (Tensor<1>, GradientsParams)
where
    T: Task + Sync,
    T::Batch: Sync,
{
    let shards = if shards > 1 {
        task.shards(batch, shards)
    } else {
        Vec::new()
    };
    if shards.len() < 2 {
        let l = task.loss(model, batch, device);
        let grads = GradientsParams::from_grads(l.backward(), model);
        return (l, grads);
    }
    use rayon::prelude::*;
    let replicas: Vec<T::Model> = shards.iter().map(|_| model.clone().fork(device)).collect();
    let mut parts: Vec<(Tensor<1>, GradientsParams)> = replicas
        .into_par_iter()
        .zip(shards.par_iter())
        .map(|(replica, shard)| {
            let l = task.loss(&replica, shard, device);
            let grads = GradientsParams::from_grads(l.backward(), &replica);
            (l.inner(), grads)
        })
        .collect();
    let (mut loss, mut grads) = parts.remove(0);
    for (l, mut g) in parts {
        loss = loss + l;
        model.visit(&mut AddGradients {
            into: &mut grads,
            from: &mut g,
        });
    }
    (loss, grads)
}

/// Adds the gradients of `from` into `into`, parameter by parameter.
struct AddGradients<'a> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
}

impl ModuleVisitor for AddGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.from.remove::<D>(param.id) {
            let sum = match self.into.remove::<D>(param.id) {
                Some(acc) => acc + g,
                None => g,
            };
            self.into.register(param.id, sum);
        }
    }
}

/// The largest difference between two sets of gradients of `model`'s parameters, and the
/// largest gradient in `a`, for tests; panics when a parameter lacks a gradient in either.
#[cfg(test)]
pub(crate) fn gradient_gap<M: Module>(
    model: &M,
    a: &GradientsParams,
    b: &GradientsParams,
) -> (f32, f32) {
    struct Gap<'a>(&'a GradientsParams, &'a GradientsParams, f32, f32);
    impl ModuleVisitor for Gap<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let a = self
                .0
                .get::<D>(param.id)
                .expect("a gradient in the first set");
            let b = self
                .1
                .get::<D>(param.id)
                .expect("a gradient in the second set");
            self.2 = self.2.max((a.clone() - b).abs().max().into_scalar::<f32>());
            self.3 = self.3.max(a.abs().max().into_scalar::<f32>());
        }
    }
    let mut gap = Gap(a, b, 0.0, 0.0);
    model.visit(&mut gap);
    (gap.2, gap.3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_cover_the_rows_evenly_or_not_at_all() {
        assert_eq!(shard_ranges(10, 3, 2), vec![0..3, 3..6, 6..10]);
        assert_eq!(shard_ranges(64, 2, 8), vec![0..32, 32..64]);
        // Never shorter than min_rows: fewer shards, or none.
        assert_eq!(shard_ranges(20, 4, 8), vec![0..10, 10..20]);
        assert!(shard_ranges(15, 4, 8).is_empty());
        assert!(shard_ranges(64, 1, 8).is_empty());
    }

    #[test]
    fn a_state_without_validation_round_trips_through_json() {
        let state = TrainState {
            epochs_done: 1,
            val_loss: vec![f64::NAN],
            train_loss: vec![0.5],
            metrics: vec![Metrics::from([("loss".to_string(), f64::NAN)])],
            ..TrainState::default()
        };
        let back: TrainState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert!(back.val_loss[0].is_nan() && back.metrics[0]["loss"].is_nan());
        assert_eq!(back.train_loss, vec![0.5]);
    }

    #[test]
    fn monitors_compare_by_direction_and_nan_never_improves() {
        let lower = Monitor::default();
        assert!(lower.improves(0.5, None) && lower.improves(0.4, Some(0.5)));
        assert!(!lower.improves(0.5, Some(0.5)) && !lower.improves(f64::NAN, Some(0.5)));
        let higher = Monitor {
            metric: "roc_auc".into(),
            direction: Direction::Higher,
        };
        assert!(higher.improves(0.9, Some(0.8)) && !higher.improves(0.7, Some(0.8)));
    }

    #[test]
    fn warmup_then_cosine_reaches_floor() {
        let cfg = OptimConfig {
            lr: 1.0,
            warmup_fraction: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&cfg, 0, 100) - 0.1).abs() < 1e-9);
        assert!((lr_at(&cfg, 9, 100) - 1.0).abs() < 1e-9);
        assert!(lr_at(&cfg, 50, 100) < 1.0 && lr_at(&cfg, 50, 100) > 0.05);
        assert!((lr_at(&cfg, 100, 100) - 0.05).abs() < 1e-9);
    }
}
