//! `export`: a trained classifier folder made self-contained for downstream use, with a
//! model card.

use super::{Classifier, ClassifierBundle};
use crate::Globals;
use crate::error::{Context, Result};
use crate::io::write_atomic;
use std::path::Path;

/// Copy the weights, config, threshold (and BPE tokenizer) of `model` into `out` and write a
/// model card (`README.md`) named `name` (default: the destination folder's name).
pub fn export(model: &Path, out: &Path, name: Option<&str>) -> Result<()> {
    // Loading proves the folder is complete and the weights match the config; the CPU is
    // enough for that, so no GPU is probed.
    let classifier = Classifier::load(model, &Globals::flex(0))?;
    let name = name.map(str::to_owned).unwrap_or_else(|| {
        out.file_name()
            .map_or("classifier".into(), |n| n.to_string_lossy().into_owned())
    });
    let k = classifier.bundle.config.ensemble.max(1);
    let mut files: Vec<String> = (0..k)
        .map(|m| {
            let dir = super::member_dir(Path::new(""), k, m);
            dir.join("model.safetensors").display().to_string()
        })
        .collect();
    files.extend(["config.json".into(), "threshold.json".into()]);
    if classifier.tokens.kind() == super::tokens::TokenKind::Bpe {
        files.push(super::tokens::TOKENIZER_FILE.into());
    }
    for file in files.iter().filter(|f| *f != "config.json") {
        let from = model.join(file);
        let bytes = std::fs::read(&from).input_ctx(|| format!("cannot read {}", from.display()))?;
        write_atomic(&out.join(file), &bytes)?;
    }
    // The exported config names its training files without the folders of the machine that
    // trained it (temporary directories mean nothing to a downstream user).
    let mut bundle = classifier.bundle.clone();
    for f in bundle
        .data
        .train_files
        .iter_mut()
        .chain(bundle.data.augment_files.iter_mut())
        .chain(bundle.init_from.iter_mut())
    {
        *f = portable_path(f);
    }
    if let Some(p) = bundle.config.pretrained.as_mut() {
        *p = portable_path(&p.display().to_string()).into();
    }
    super::write_bundle(out, &bundle)?;
    let classifier = Classifier {
        bundle,
        ..classifier
    };
    let card = model_card(&name, &classifier);
    write_atomic(&out.join("README.md"), card.as_bytes())
}

/// A path as a downstream reader can use it: relative paths as they are, absolute ones (a
/// temporary or home directory of the training machine) by their file name.
pub fn portable_path(path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        p.file_name()
            .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned())
    } else {
        path.to_string()
    }
}

/// The pooled feature count in the card's shape notation: F*W, or F*W*2 with max + mean.
fn pooled_names(m: &crate::classify::model::CnnConfig) -> String {
    match m.pooling {
        crate::classify::model::Pooling::Max => "F*W".to_string(),
        crate::classify::model::Pooling::MaxMean => "F*W*2".to_string(),
    }
}

/// A short model card: what the model is, what it was trained on, how it scored.
pub fn model_card(name: &str, classifier: &Classifier) -> String {
    let b: &ClassifierBundle = &classifier.bundle;
    let m = &b.config.model;
    let t = &classifier.threshold;
    let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
    let tokens = match m.tokenizer {
        crate::classify::tokens::TokenKind::Bytes => "byte tokens".to_string(),
        crate::classify::tokens::TokenKind::Bpe => format!(
            "byte-level BPE tokens (vocabulary of {} ids, `tokenizer.json`, learnt on the \
             training lines)",
            m.vocab_size
        ),
    };
    let k = b.config.ensemble.max(1);
    let ensemble = if k > 1 {
        format!(
            "A seed ensemble of {k} such networks (seeds {}), whose logits are averaged: ",
            b.members
                .iter()
                .map(|m| m.seed.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    };
    let pooling = match m.pooling {
        crate::classify::model::Pooling::Max => "max-pool over time",
        crate::classify::model::Pooling::MaxMean => "max- and mean-pool over time",
    };
    let hidden = if m.hidden > 0 {
        format!(", a hidden ReLU layer of {}", m.hidden)
    } else {
        String::new()
    };
    let mut s = format!(
        "# {name}\n\n{ensemble}A CNN command-line classifier from `longtail` ({}): {tokens}, \
         embedding {}, {} filters of widths {:?}, ReLU, {pooling}, dropout {}{hidden}, one \
         logit; lines longer than {} tokens keep their first and last halves. {} parameters. \
         Score = sigmoid(logit) in [0, 1], higher for more likely malicious. Training weighs \
         the classes (`pos_weight`), so the score is not a calibrated probability: compare it \
         with the stored threshold, or with one chosen by `longtail evaluate` on your own \
         lines.\n\n",
        b.format,
        m.embed_dim,
        m.filters,
        m.widths,
        m.dropout,
        m.max_len,
        crate::classify::parameter_count(classifier)
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
    if let Some(p) = &b.config.pretrained {
        s += &format!(
            "- embedding and convolutions pretrained on unlabeled lines ({})\n",
            p.display()
        );
    }
    s += "\n## Training and validation\n\n";
    if let Some(tr) = &b.training {
        let rate = tr.lines_per_sec.iter().sum::<f64>() / tr.lines_per_sec.len().max(1) as f64;
        s += &format!(
            "- {} epochs (best {}), best validation {} {} (the monitored metric), {rate:.0} \
             training lines/s\n",
            tr.epochs_done,
            tr.best_epoch.map_or(0, |e| e + 1),
            tr.monitor,
            fmt(tr.best_val)
        );
    }
    // How the validation lines were held out, and what their figures can and cannot say.
    let (held_out, caveat) = match b.config.training.val_split {
        super::fit::ValSplit::Line => (
            "hash of the text",
            "Validation lines come from the training distribution: these figures are not a test \
             on unseen sources; use `longtail evaluate` on a held-out test set for that.\n\n",
        ),
        super::fit::ValSplit::Source => (
            "whole sources by a hash of the source",
            "Validation lines come from sources (scripts, technique files) the model did not \
             train on, but from the same corpora, and they chose the kept epoch and the \
             threshold: use `longtail evaluate` on a held-out test set for a test.\n\n",
        ),
    };
    if let Some(v) = &b.validation {
        let drawn_from = match b.config.training.validate_on {
            super::fit::ValidateOn::All => "",
            super::fit::ValidateOn::Baseline => {
                " of the labeled lines; every augmentation line trained"
            }
        };
        s += &format!(
            "- validation split ({held_out}, {:.0} %{drawn_from}): {} lines ({} malicious): \
             ROC AUC {}, PR AUC {}\n",
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
    s += caveat;
    let name_dir = format!("models/{name}");
    s += &format!(
        "## Use\n\n```sh\nlongtail classify --model {name_dir} lines.txt -o scores.parquet\n\
         python3 scripts/load_classifier.py {name_dir}   # numpy + safetensors only\n```\n\n\
         Files: {}`model.safetensors` (weights; tensor names follow the module paths: \
         `embed.weight` [V+1, E] (V = {} token ids, row V = padding), `convs.N.weight` \
         [F, E, k], `convs.N.bias`, {}`head.weight` [{}, 1], `head.bias`), `config.json` \
         (architecture, data, training history), `threshold.json`{}.\n",
        if k > 1 {
            format!("`members/0/` .. `members/{}/` each with its ", k - 1)
        } else {
            String::new()
        },
        m.vocab(),
        if m.hidden > 0 {
            format!(
                "`hidden.weight` [{}, {}], `hidden.bias`, ",
                pooled_names(m),
                m.hidden
            )
        } else {
            String::new()
        },
        if m.hidden > 0 {
            m.hidden.to_string()
        } else {
            pooled_names(m)
        },
        if m.tokenizer == crate::classify::tokens::TokenKind::Bpe {
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

#[cfg(test)]
mod tests {
    use super::portable_path;

    #[test]
    fn exported_paths_lose_the_training_machine_s_folders() {
        assert_eq!(
            portable_path("/tmp/cls/run/split/train.jsonl"),
            "train.jsonl"
        );
        assert_eq!(
            portable_path("data/sample/nl2bash.jsonl"),
            "data/sample/nl2bash.jsonl"
        );
    }
}
