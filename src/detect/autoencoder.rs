//! Training and scoring the byte autoencoder.

use super::batching::{HostBatch, chunk_line};
use super::model::{AutoencoderConfig, ByteAutoencoder, Objective};
use crate::Result;
use crate::data::batching::bucket_by_length;
use crate::data::split::split_train_val;
use crate::dropout::DropoutMasks;
use crate::train::{Batch, Metrics, OptimConfig, RunDir, RunSpec, Task, TrainState, fit};
use burn::tensor::{Device, Tensor};
use rand::distr::weighted::WeightedIndex;
use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

/// How training batches are drawn from the unlabeled stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// A unique line seen `count` times is drawn with probability proportional to
    /// `count ^ count_power`: 1 follows the raw stream (frequent lines dominate), 0 treats
    /// every unique line alike; 0.5 keeps frequent lines typical without drowning the rest.
    pub count_power: f64,
    /// Lines drawn per epoch (0 = as many as there are unique training lines).
    pub lines_per_epoch: usize,
    /// Share of unique lines held out for the validation loss.
    pub val_fraction: f64,
    /// Upper bounds on one batch: lines, and padded byte positions.
    pub max_batch: usize,
    pub batch_tokens: usize,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            count_power: 0.5,
            lines_per_epoch: 0,
            val_fraction: 0.05,
            max_batch: 128,
            batch_tokens: 8192,
        }
    }
}

/// Pick a random mask of roughly `p` of the positions, at least one.
fn random_mask(len: usize, p: f64, rng: &mut StdRng) -> Vec<bool> {
    let mut m: Vec<bool> = (0..len).map(|_| rng.random_bool(p)).collect();
    if !m.iter().any(|&x| x) && len > 0 {
        m[rng.random_range(0..len)] = true;
    }
    m
}

/// Build host batches from (line, window) pieces with the objective's corruption.
fn make_batches(
    cfg: &AutoencoderConfig,
    sampling: &SamplingConfig,
    lines: &[Vec<u8>],
    pieces: &[(usize, usize, usize)],
    rng: &mut StdRng,
) -> Vec<HostBatch> {
    let lens: Vec<usize> = pieces.iter().map(|p| p.2 - p.1).collect();
    let groups = bucket_by_length(&lens, sampling.max_batch, sampling.batch_tokens);
    groups
        .into_iter()
        .map(|group| {
            let mut hb = HostBatch::for_group(&group, &lens);
            for (row, &i) in group.iter().enumerate() {
                let (line, start, end) = pieces[i];
                let bytes = &lines[line][start..end];
                match cfg.objective {
                    Objective::Masked => {
                        let mask = random_mask(bytes.len(), cfg.mask_prob, rng);
                        hb.set_row(row, bytes, |k| mask[k], |k| mask[k]);
                    }
                    Objective::Bottleneck => hb.set_row(row, bytes, |_| false, |_| true),
                }
            }
            hb
        })
        .collect()
}

/// A random context-sized window of a line (the whole line when it fits).
fn window_of(len: usize, max_len: usize, rng: &mut StdRng) -> (usize, usize) {
    if len <= max_len {
        (0, len)
    } else {
        let start = rng.random_range(0..=len - max_len);
        (start, start + max_len)
    }
}

/// Mean loss over the weighted positions of a batch; `dropout` only in a training step.
/// `step_weight`: the total weight of the step this batch is a shard of (`None`: the batch's
/// own), so that the losses of a step's shards sum to the step's.
fn batch_loss(
    model: &ByteAutoencoder,
    hb: &HostBatch,
    device: &Device,
    dropout: Option<&mut DropoutMasks>,
    step_weight: Option<f64>,
) -> Tensor<1> {
    let b = hb.to_device(device);
    let nll = model.byte_nll(b.inputs, b.pad, b.targets, dropout);
    let weighted = (nll * b.weight.clone()).sum();
    match step_weight {
        Some(total) => weighted.div_scalar(total.max(1.0)),
        None => weighted / b.weight.sum().clamp_min(1.0),
    }
}

/// Everything `train` needs besides the data.
pub struct TrainSetup<'a> {
    pub model: &'a AutoencoderConfig,
    pub optim: &'a OptimConfig,
    pub sampling: &'a SamplingConfig,
    pub run: &'a RunDir,
    pub device: &'a Device,
    pub seed: u64,
    pub resume: bool,
}

/// The autoencoder as a [`Task`]: each epoch draws `per_epoch` windows of training lines,
/// weighted by stream count; validation is the masked (or bottleneck) loss on fixed windows.
struct AutoencoderTask<'a> {
    cfg: &'a AutoencoderConfig,
    sampling: &'a SamplingConfig,
    lines: &'a [Vec<u8>],
    train_idx: Vec<usize>,
    sampler: WeightedIndex<f64>,
    per_epoch: usize,
    seed: u64,
    val_batches: Vec<HostBatch>,
}

/// A training batch and the seed of its dropout masks (drawn with the epoch's batches, so a
/// resumed run repeats them); or a shard of one: rows `offset..` of a step of `step_rows`
/// rows and total weight `step_weight`.
struct TrainBatch {
    host: HostBatch,
    dropout_seed: u64,
    offset: usize,
    step_rows: usize,
    step_weight: Option<f64>,
}

impl Task for AutoencoderTask<'_> {
    type Model = ByteAutoencoder;
    type Batch = TrainBatch;

    fn name(&self) -> &str {
        "detector"
    }

    fn steps_per_epoch(&self) -> usize {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let lens: Vec<usize> = (0..self.per_epoch)
            .map(|_| {
                self.lines[self.train_idx[self.sampler.sample(&mut rng)]]
                    .len()
                    .min(self.cfg.max_len)
            })
            .collect();
        bucket_by_length(&lens, self.sampling.max_batch, self.sampling.batch_tokens).len()
    }

    fn epoch_batches(&self, epoch: usize) -> Vec<Batch<TrainBatch>> {
        let mut rng = crate::train::epoch_rng(self.seed, epoch);
        let pieces: Vec<_> = (0..self.per_epoch)
            .map(|_| {
                let i = self.train_idx[self.sampler.sample(&mut rng)];
                let (s, e) = window_of(self.lines[i].len(), self.cfg.max_len, &mut rng);
                (i, s, e)
            })
            .collect();
        let mut batches = make_batches(self.cfg, self.sampling, self.lines, &pieces, &mut rng);
        batches.shuffle(&mut rng);
        batches
            .into_iter()
            .map(|hb| Batch {
                lines: hb.batch,
                data: TrainBatch {
                    step_rows: hb.batch,
                    host: hb,
                    dropout_seed: rng.random(),
                    offset: 0,
                    step_weight: None,
                },
            })
            .collect()
    }

    fn loss(&self, model: &ByteAutoencoder, batch: &TrainBatch, device: &Device) -> Tensor<1> {
        let mut masks = DropoutMasks::for_rows(batch.dropout_seed, batch.offset, batch.step_rows);
        batch_loss(
            model,
            &batch.host,
            device,
            Some(&mut masks),
            batch.step_weight,
        )
    }

    fn shards(&self, batch: &TrainBatch, n: usize) -> Vec<TrainBatch> {
        let total: f64 = batch.host.weight.iter().map(|&w| w as f64).sum();
        crate::train::shard_ranges(batch.host.batch, n, crate::train::MIN_SHARD_ROWS)
            .into_iter()
            .map(|rows| TrainBatch {
                host: batch.host.rows(rows.start, rows.end),
                dropout_seed: batch.dropout_seed,
                offset: batch.offset + rows.start,
                step_rows: batch.step_rows,
                step_weight: Some(batch.step_weight.unwrap_or(total)),
            })
            .collect()
    }

    fn validate(&self, model: &ByteAutoencoder, device: &Device) -> Result<Metrics> {
        let (mut sum, mut w) = (0.0f64, 0.0f64);
        for hb in &self.val_batches {
            let weight: f64 = hb.weight.iter().map(|&x| x as f64).sum();
            let l: f32 = batch_loss(model, hb, device, None, None).into_scalar();
            sum += l as f64 * weight;
            w += weight;
        }
        let loss = if self.val_batches.is_empty() {
            f64::NAN
        } else {
            sum / w.max(1.0)
        };
        Ok(Metrics::from([("loss".to_string(), loss)]))
    }
}

/// Train on unique `lines` with their stream `counts`. Returns the best model by the
/// monitored validation metric (the loss by default).
pub fn train(
    setup: &TrainSetup,
    lines: &[Vec<u8>],
    counts: &[u64],
) -> Result<(ByteAutoencoder, TrainState)> {
    let cfg = setup.model;
    cfg.validate()?;
    if lines.is_empty() {
        return Err(crate::Error::input("no lines to train on"));
    }
    let spec = RunSpec::new(
        setup.optim,
        setup.run,
        setup.device,
        setup.seed,
        setup.resume,
    );
    let model = cfg.init(&spec.train_device);
    let (train_idx, val_idx) = split_train_val(lines, setup.sampling.val_fraction);
    let weights: Vec<f64> = train_idx
        .iter()
        .map(|&i| (counts[i].max(1) as f64).powf(setup.sampling.count_power))
        .collect();
    let sampler = WeightedIndex::new(&weights)
        .map_err(|e| crate::Error::input(format!("bad counts: {e}")))?;
    let per_epoch = match setup.sampling.lines_per_epoch {
        0 => train_idx.len(),
        n => n,
    };
    // Validation batches are fixed (seeded once) so epochs are comparable.
    let mut val_rng = StdRng::seed_from_u64(setup.seed ^ 0x7661_6c69);
    let val_pieces: Vec<_> = val_idx
        .iter()
        .map(|&i| {
            let (s, e) = window_of(lines[i].len(), cfg.max_len, &mut val_rng);
            (i, s, e)
        })
        .collect();
    let val_batches = make_batches(cfg, setup.sampling, lines, &val_pieces, &mut val_rng);
    let task = AutoencoderTask {
        cfg,
        sampling: setup.sampling,
        lines,
        train_idx,
        sampler,
        per_epoch,
        seed: setup.seed,
        val_batches,
    };
    fit(&spec, &task, model)
}

/// A line's anomaly evidence from the autoencoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineScore {
    /// Mean negative log-likelihood per byte (nats).
    pub mean_nll: f32,
    /// Highest mean NLL over any window of `window` bytes: one odd fragment in a long line.
    pub window_nll: f32,
    /// The most surprising non-overlapping windows, worst first.
    pub surprises: Vec<Surprise>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Surprise {
    pub offset: usize,
    pub len: usize,
    pub nll: f32,
    pub text: String,
}

/// Per-byte NLL of every line (chunked with overlap, bucketed by length).
pub fn byte_nlls(
    model: &ByteAutoencoder,
    cfg: &AutoencoderConfig,
    lines: &[&[u8]],
    device: &Device,
    batch_tokens: usize,
    mut on_batch: impl FnMut(usize),
) -> Vec<Vec<f32>> {
    let passes = cfg.score_passes();
    // Items: (chunk, pass). A pass hides positions i with i % passes == pass.
    let mut items = Vec::new();
    for (li, l) in lines.iter().enumerate() {
        for c in chunk_line(li, l.len(), cfg.max_len, cfg.chunk_overlap) {
            for p in 0..passes {
                items.push((c, p));
            }
        }
    }
    let lens: Vec<usize> = items.iter().map(|(c, _)| c.end - c.start).collect();
    let mut out: Vec<Vec<f32>> = lines.iter().map(|l| vec![0.0; l.len()]).collect();
    let groups = bucket_by_length(&lens, 4096, batch_tokens);
    let batch_nll = |group: &Vec<usize>| {
        let mut hb = HostBatch::for_group(group, &lens);
        for (row, &i) in group.iter().enumerate() {
            let (c, p) = items[i];
            let bytes = &lines[c.line][c.start..c.end];
            match cfg.objective {
                Objective::Masked => hb.set_row(row, bytes, |k| k % passes == p, |_| true),
                Objective::Bottleneck => hb.set_row(row, bytes, |_| false, |_| true),
            }
        }
        let b = hb.to_device(device);
        let nll = model
            .byte_nll(b.inputs, b.pad, b.targets, None)
            .into_data_as::<f32>();
        (hb.len, nll.try_into_vec::<f32>().expect("f32 data"))
    };
    crate::device::for_each_batch(device, groups, batch_nll, |group, (len, nll)| {
        for (row, &i) in group.iter().enumerate() {
            let (c, p) = items[i];
            for k in 0..(c.end - c.start) {
                let g = c.start + k;
                let scored_here = match cfg.objective {
                    Objective::Masked => k % passes == p,
                    Objective::Bottleneck => true,
                };
                if scored_here && g >= c.own_from && g < c.own_to {
                    out[c.line][g] = nll[row * len + k];
                }
            }
        }
        on_batch(group.len());
    });
    out
}

/// Aggregate per-byte NLL into a line score with the `top` most surprising windows.
pub fn summarize(line: &[u8], nll: &[f32], window: usize, top: usize) -> LineScore {
    if nll.is_empty() {
        return LineScore {
            mean_nll: 0.0,
            window_nll: 0.0,
            surprises: vec![],
        };
    }
    let n = nll.len();
    let mean = nll.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let w = window.min(n);
    let mut prefix = vec![0.0f64; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + nll[i] as f64;
    }
    let win_mean = |s: usize| ((prefix[s + w] - prefix[s]) / w as f64) as f32;
    let mut starts: Vec<usize> = (0..=n - w).collect();
    starts.sort_by(|&a, &b| win_mean(b).total_cmp(&win_mean(a)).then(a.cmp(&b)));
    let window_nll = win_mean(starts[0]);
    let mut surprises: Vec<Surprise> = Vec::new();
    for s in starts {
        if surprises.len() >= top {
            break;
        }
        if surprises
            .iter()
            .all(|t| s + w <= t.offset || s >= t.offset + t.len)
        {
            surprises.push(Surprise {
                offset: s,
                len: w,
                nll: win_mean(s),
                text: String::from_utf8_lossy(&line[s..s + w]).into_owned(),
            });
        }
    }
    LineScore {
        mean_nll: mean as f32,
        window_nll,
        surprises,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_cut_into_shards_has_the_whole_steps_loss_and_gradients() {
        let cfg = AutoencoderConfig {
            d_model: 16,
            n_heads: 2,
            d_ff: 32,
            max_len: 64,
            bottleneck_dim: 8,
            dropout: 0.3,
            ..AutoencoderConfig::default()
        };
        let sampling = SamplingConfig::default();
        let lines: Vec<Vec<u8>> = (0..48)
            .map(|i| format!("powershell -c echo {i} {}", "y".repeat(i % 11)).into_bytes())
            .collect();
        let task = AutoencoderTask {
            cfg: &cfg,
            sampling: &sampling,
            lines: &lines,
            train_idx: (0..lines.len()).collect(),
            sampler: WeightedIndex::new(vec![1.0; lines.len()]).unwrap(),
            per_epoch: 48,
            seed: 5,
            val_batches: Vec::new(),
        };
        let batches = task.epoch_batches(0);
        let batch = &batches.iter().max_by_key(|b| b.lines).unwrap().data;
        assert!(
            batch.host.batch >= 32,
            "one batch of {} rows",
            batch.host.batch
        );
        assert!(batch.host.pad.iter().any(|&p| p), "the batch has padding");
        let device = Device::flex().autodiff();
        let model = cfg.init(&device);
        let step = |shards| {
            let (l, g) = crate::train::step_gradients(&task, &model, batch, &device, shards);
            (l.into_scalar::<f32>(), g)
        };
        let (whole_loss, whole) = step(1);
        let (shard_loss, sharded) = step(4);
        assert_eq!(task.shards(batch, 4).len(), 4);
        assert!(
            (whole_loss - shard_loss).abs() < 1e-5 * whole_loss,
            "{whole_loss} vs {shard_loss}"
        );
        let (gap, scale) = crate::train::gradient_gap(&model, &whole, &sharded);
        assert!(scale > 1e-3, "the gradients are not all zero");
        assert!(gap < 1e-4 * scale.max(1.0), "gradients differ by {gap}");
    }

    #[test]
    fn summarize_finds_the_odd_fragment() {
        let line = b"aaaaaaaaaaXYZaaaaaaaaaa";
        let mut nll = vec![0.1f32; line.len()];
        for v in &mut nll[10..13] {
            *v = 5.0;
        }
        let s = summarize(line, &nll, 3, 2);
        assert!((s.window_nll - 5.0).abs() < 1e-5);
        assert_eq!(s.surprises[0].offset, 10);
        assert_eq!(s.surprises[0].text, "XYZ");
        assert!(s.mean_nll < 1.0);
        // Windows never overlap.
        assert!(s.surprises[1].offset + 3 <= 10 || s.surprises[1].offset >= 13);
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let lines: Vec<Vec<u8>> = (0..1000).map(|i| format!("cmd {i}").into_bytes()).collect();
        let (t, v) = split_train_val(&lines, 0.1);
        assert_eq!(t.len() + v.len(), 1000);
        assert!(v.len() > 50 && v.len() < 150, "{}", v.len());
        assert_eq!(split_train_val(&lines, 0.1).1, v);
    }
}
