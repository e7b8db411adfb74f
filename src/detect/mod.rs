//! Stage 2: anomaly detection. Two detectors and their fusion:
//! - a byte-level transformer autoencoder ([`model`], [`autoencoder`]) whose reconstruction
//!   error is the score, with the most surprising substrings as an explanation;
//! - an isolation forest over the source work's expert features ([`features`], [`iforest`]);
//! - `combined`: the mean of the two detectors' normalised ranks.
//!
//! A detector directory holds `config.json` (everything needed to rebuild the models),
//! `model.safetensors` (autoencoder weights), `iforest.json`, and `checkpoint/` while training.

pub mod autoencoder;
pub mod batching;
pub mod encoder;
pub mod features;
pub mod fused;
pub mod gelu;
pub mod iforest;
pub mod model;

use crate::Globals;
use crate::data::mean_rank_fusion;
use crate::error::{Context, Error, Result};
use crate::io::table;
use crate::train::{OptimConfig, RunDir, TrainState};
use arrow::array::{ArrayRef, Float32Array, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use autoencoder::{LineScore, SamplingConfig};
use burn::module::Module;
use iforest::{IForestConfig, IsolationForest};
use model::{AutoencoderConfig, ByteAutoencoder};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Everything about a detector that is chosen before training; `configs/detector.toml`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub model: AutoencoderConfig,
    pub optim: OptimConfig,
    pub sampling: SamplingConfig,
    pub iforest: IForestConfig,
}

impl DetectorConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .input_ctx(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).input_ctx(|| format!("invalid detector config {}", path.display()))
    }
}

/// What `config.json` beside the weights records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetectorBundle {
    pub config: DetectorConfig,
    pub has_autoencoder: bool,
    pub has_iforest: bool,
    pub trained_on: Vec<String>,
    pub unique_lines: usize,
    pub device: String,
    pub seed: u64,
    pub training: Option<TrainState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DetectorKind {
    Autoencoder,
    Iforest,
    /// Mean of the two detectors' normalised ranks.
    Combined,
}

crate::vocab::named_enum!(DetectorKind {
    Autoencoder => "autoencoder",
    Iforest => "iforest",
    Combined => "combined",
});

/// Unique lines and their stream counts. Parquet (e.g. `ingest` output) uses its `count`
/// column when present; any other format `ingest` reads (JSONL, CSV, text, compressed) counts
/// each row once. Lines seen twice are merged.
pub fn load_lines(inputs: &[PathBuf]) -> Result<(Vec<String>, Vec<u64>)> {
    let (lines, counts, _) = crate::io::unique_lines_with_counts(inputs, false)?;
    if lines.is_empty() {
        return Err(Error::input("the input has no command lines"));
    }
    Ok((lines, counts))
}

/// Train the requested detectors into `out`.
pub struct TrainRequest<'a> {
    pub config: &'a DetectorConfig,
    pub lines: &'a [String],
    pub counts: &'a [u64],
    pub out: &'a Path,
    pub autoencoder: bool,
    pub iforest: bool,
    pub resume: bool,
    pub trained_on: Vec<String>,
}

pub fn train(req: &TrainRequest, globals: &Globals) -> Result<DetectorBundle> {
    let run = RunDir::new(req.out)?;
    let chosen = globals.device.clone();
    let mut bundle = DetectorBundle {
        config: req.config.clone(),
        has_autoencoder: req.autoencoder,
        has_iforest: req.iforest,
        trained_on: req.trained_on.clone(),
        unique_lines: req.lines.len(),
        device: chosen.name.clone(),
        seed: globals.seed,
        training: None,
    };
    if req.iforest {
        let data: Vec<_> = req.lines.iter().map(|l| features::features(l)).collect();
        let weights: Vec<f64> = req
            .counts
            .iter()
            .map(|&c| (c.max(1) as f64).powf(req.config.sampling.count_power))
            .collect();
        let forest = IsolationForest::fit(&data, &weights, &req.config.iforest, globals.seed)?;
        table::write_atomic(
            &req.out.join("iforest.json"),
            &serde_json::to_vec(&forest).expect("plain data"),
        )?;
        tracing::info!(
            "isolation forest: {} trees over {} lines",
            forest.config.n_trees,
            data.len()
        );
    }
    if req.autoencoder {
        let bytes: Vec<Vec<u8>> = req.lines.iter().map(|l| l.as_bytes().to_vec()).collect();
        let setup = autoencoder::TrainSetup {
            model: &req.config.model,
            optim: &req.config.optim,
            sampling: &req.config.sampling,
            run: &run,
            device: &chosen.device,
            seed: globals.seed,
            resume: req.resume,
        };
        // Write the config first: a killed run can then be resumed and inspected.
        write_bundle(req.out, &bundle)?;
        let (_model, state) = autoencoder::train(&setup, &bytes, req.counts)?;
        bundle.training = Some(state);
    }
    write_bundle(req.out, &bundle)?;
    Ok(bundle)
}

fn write_bundle(dir: &Path, bundle: &DetectorBundle) -> Result<()> {
    crate::io::write_json(&dir.join("config.json"), bundle)
}

/// A trained detector, loaded for scoring.
pub struct Detector {
    pub bundle: DetectorBundle,
    pub autoencoder: Option<ByteAutoencoder>,
    pub iforest: Option<IsolationForest>,
    pub device: burn::tensor::Device,
}

impl Detector {
    pub fn load(dir: &Path, globals: &Globals) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).input_ctx(|| {
            format!("{} is not a detector directory (no config.json); train one with `longtail train-detector`", dir.display())
        })?;
        let bundle: DetectorBundle =
            serde_json::from_str(&text).input_ctx(|| format!("invalid {}", cfg_path.display()))?;
        let chosen = globals.device.clone();
        let autoencoder = if bundle.has_autoencoder {
            let model = bundle.config.model.init(&chosen.device);
            Some(crate::train::load_weights(model, &dir.join("model.safetensors"))?.valid())
        } else {
            None
        };
        let iforest = if bundle.has_iforest {
            let p = dir.join("iforest.json");
            let text = std::fs::read(&p).input_ctx(|| format!("cannot read {}", p.display()))?;
            Some(serde_json::from_slice(&text).input_ctx(|| format!("invalid {}", p.display()))?)
        } else {
            None
        };
        Ok(Self {
            bundle,
            autoencoder,
            iforest,
            device: chosen.device,
        })
    }
}

/// Scores of a set of lines, one entry per line.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    pub score: Vec<f64>,
    pub autoencoder: Option<Vec<LineScore>>,
    pub iforest: Option<Vec<f64>>,
}

/// Options for scoring.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    pub kind: DetectorKind,
    pub batch_tokens: usize,
    pub top_surprises: usize,
}

impl Detector {
    pub fn score(&self, lines: &[String], opts: &ScoreOptions) -> Result<Scores> {
        let need_ae = opts.kind != DetectorKind::Iforest;
        let need_if = opts.kind != DetectorKind::Autoencoder;
        let missing = |what: &str| {
            Error::input(format!(
                "this detector has no {what}; retrain with `--detector both` or score with another --detector"
            ))
        };
        let mut out = Scores::default();
        if need_ae {
            let model = self
                .autoencoder
                .as_ref()
                .ok_or_else(|| missing("autoencoder"))?;
            let cfg = &self.bundle.config.model;
            let bar = crate::progress::bar(
                lines.len() as u64 * cfg.score_passes() as u64,
                "scoring",
                "chunks",
            );
            let mut all = Vec::with_capacity(lines.len());
            // Blocks bound the memory of per-byte buffers on large inputs.
            for block in lines.chunks(16_384) {
                let bytes: Vec<&[u8]> = block.iter().map(|l| l.as_bytes()).collect();
                let nll = autoencoder::byte_nlls(
                    model,
                    cfg,
                    &bytes,
                    &self.device,
                    opts.batch_tokens,
                    |n| bar.inc(n as u64),
                );
                all.extend(
                    bytes
                        .iter()
                        .zip(&nll)
                        .map(|(b, n)| autoencoder::summarize(b, n, cfg.window, opts.top_surprises)),
                );
            }
            bar.finish_and_clear();
            out.autoencoder = Some(all);
        }
        if need_if {
            let forest = self
                .iforest
                .as_ref()
                .ok_or_else(|| missing("isolation forest"))?;
            out.iforest = Some(lines.iter().map(|l| forest.score(l)).collect());
        }
        let ae: Option<Vec<f64>> = out
            .autoencoder
            .as_ref()
            .map(|v| v.iter().map(|s| s.mean_nll as f64).collect());
        out.score = match (opts.kind, ae, &out.iforest) {
            (DetectorKind::Autoencoder, Some(a), _) => a,
            (DetectorKind::Iforest, _, Some(f)) => f.clone(),
            (DetectorKind::Combined, Some(a), Some(f)) => mean_rank_fusion(&[&a, f]),
            _ => unreachable!("checked above"),
        };
        Ok(out)
    }
}

/// Write scores as Parquet: `cmd`, `count`, `score`, `score_window`, `ae_score`,
/// `iforest_score`, `surprises` (JSON list of {offset, len, nll, text}).
pub fn write_scores(path: &Path, lines: &[String], counts: &[u64], scores: &Scores) -> Result<u64> {
    let ae = scores.autoencoder.as_ref();
    let schema = Arc::new(Schema::new(vec![
        Field::new("cmd", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("score_window", DataType::Float32, true),
        Field::new("ae_score", DataType::Float32, true),
        Field::new("iforest_score", DataType::Float64, true),
        Field::new("surprises", DataType::Utf8, true),
    ]));
    let n = lines.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(lines)),
        Arc::new(UInt64Array::from(counts.to_vec())),
        Arc::new(Float64Array::from(scores.score.clone())),
        Arc::new(Float32Array::from_iter(
            (0..n).map(|i| ae.map(|a| a[i].window_nll)),
        )),
        Arc::new(Float32Array::from_iter(
            (0..n).map(|i| ae.map(|a| a[i].mean_nll)),
        )),
        Arc::new(Float64Array::from_iter(
            (0..n).map(|i| scores.iforest.as_ref().map(|f| f[i])),
        )),
        Arc::new(StringArray::from_iter((0..n).map(|i| {
            ae.map(|a| serde_json::to_string(&a[i].surprises).expect("plain data"))
        }))),
    ];
    let batch = RecordBatch::try_new(schema, columns).runtime_ctx(|| "building the score table")?;
    table::write_parquet(path, &batch)
}
