//! `longtail pretrain-classifier`.

use longtail::classify::ClassifierConfig;
use longtail::classify::pretrain::{self, PretrainConfig, PretrainRequest};
use longtail::{Globals, Result};
use std::path::PathBuf;

/// `longtail pretrain-classifier`
#[derive(clap::Args, Debug)]
#[command(
    after_help = "What it does: masked-token prediction on unlabeled lines. Of each line's
tokens, 15 % (mask_rate) are hidden or replaced and predicted from the windows of the
classifier's own convolutions around them; the embedding and convolutions learnt that way are
saved as DIR/encoder.safetensors under the classifier's parameter names. A classifier then
starts from them with `train-classifier --pretrained DIR` (or `pretrained = \"DIR\"` in its
config); every ensemble member starts from the same encoder, with a fresh head.

The architecture comes from --config's [model] (its other sections are ignored here) and must
be the one of the classifier trained later: tokenizer, embed_dim, filters, widths, max_len.
Lines are deduplicated; a line seen `count` times (its `count` column, else its rows) is drawn
count^0.5 as often (count_power in --pretrain-config; 0 = every unique line alike).

Examples:
  longtail pretrain-classifier --stream runs/demo/data/stream.parquet \\
      --config configs/classifier.toml --out runs/pretrained
  longtail train-classifier --train runs/demo/data/baseline.parquet \\
      --config configs/classifier.toml --pretrained runs/pretrained --out runs/baseline-pt

Writes DIR/config.json (architecture, pretraining config, stream summary, masked loss and
accuracy per epoch), encoder.safetensors, model.safetensors (with the prediction head),
tokenizer.json (BPE only, learnt on the stream) and checkpoint/ (--resume)."
)]
pub struct PretrainArgs {
    /// Unlabeled lines (Parquet, JSONL, CSV, text; gz/zstd), e.g. ingest's or the experiment's
    /// stream.parquet; labels are ignored. Several files form one stream.
    #[arg(long, required = true, num_args = 1..)]
    pub stream: Vec<PathBuf>,
    /// Classifier config (TOML, e.g. configs/classifier.toml) whose [model] is pretrained;
    /// defaults are built in.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Pretraining config (TOML, e.g. configs/pretrain.toml): mask_rate, sampling, [optim];
    /// defaults are built in.
    #[arg(long)]
    pub pretrain_config: Option<PathBuf>,
    /// Output directory.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Continue from the last finished epoch in OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override the pretraining config's number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the pretraining config's max_lines (unique lines kept, a seeded sample; 0 = all).
    #[arg(long)]
    pub max_lines: Option<usize>,
}

pub fn run(args: &PretrainArgs, globals: &Globals) -> Result<()> {
    let model = match &args.config {
        Some(p) => ClassifierConfig::from_toml_file(p)?.model,
        None => ClassifierConfig::default().model,
    };
    let mut config = match &args.pretrain_config {
        Some(p) => PretrainConfig::from_toml_file(p)?,
        None => PretrainConfig::default(),
    };
    if let Some(e) = args.epochs {
        config.optim.epochs = e;
    }
    if let Some(n) = args.max_lines {
        config.max_lines = n;
    }
    let bundle = pretrain::pretrain(
        &PretrainRequest {
            model: &model,
            config: &config,
            stream: &args.stream,
            out: &args.out,
            resume: args.resume,
        },
        globals,
    )?;
    let t = bundle.training.as_ref().expect("set by pretrain");
    let v = bundle.validation.clone().unwrap_or_default();
    let get = |k: &str| v.get(k).copied().unwrap_or(f64::NAN);
    let first = t.val_loss.first().copied().unwrap_or(f64::NAN);
    eprintln!(
        "pretrained {} epochs on {} unique lines in {:.1}s; validation masked loss {:.4} \
         (epoch 1: {first:.4}), accuracy {:.3}; encoder in {}",
        t.epochs_done,
        bundle.data.train_lines,
        bundle.seconds,
        get("loss"),
        get("accuracy"),
        args.out.join(pretrain::ENCODER_FILE).display()
    );
    Ok(())
}
