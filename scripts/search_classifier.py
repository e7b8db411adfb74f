#!/usr/bin/env python3
"""Choose the classifier's recipe on the dev hard split, then report the hard test once.

For every variant (a set of overrides of an experiment config's [classifier] section) this
runs `longtail run --arms baseline` over the same seeds on a copy of the config that holds
out a dev hard split (`data.hard_dev_fraction`), and ranks the variants by their mean dev
AUC (`--rank-by auc`) or mean dev TPR at FPR 1e-3 (`--rank-by tpr`, ties broken by AUC):
declare which before the run. Only the chosen variant's hard-test figures are printed: the
test is not looked at while choosing. The datasets are built once and shared by every variant (same data config, same
stage key).

Usage:
  python3 scripts/search_classifier.py [--config configs/demo.toml] [--seeds 1,2,3,4,5]
      [--dev 0.5] [--ensemble 3] [--out runs/search] [--only "NAME;NAME"] [--rank-by auc|tpr]
Prints a Markdown table (docs/classifier.md records a run). Needs only the Python standard
library and a built `longtail` (target/release/longtail or $LONGTAIL).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> overrides of the [classifier] section ("section.key": value).
VARIANTS = {
    "default": {},
    "wide (embed 64, 128 filters)": {"model.embed_dim": 64, "model.filters": 128},
    "long kernels [2,3,4,5,7,9]": {"model.widths": [2, 3, 4, 5, 7, 9]},
    "max_len 512": {"model.max_len": 512},
    "dropout 0.4": {"model.dropout": 0.4},
    "lr 3e-3, 10 epochs, patience 3": {"optim.lr": 0.003, "optim.epochs": 10, "optim.patience": 3},
    "best epoch by validation AUC": {"optim.monitor": {"metric": "roc_auc", "direction": "higher"}},
    "no early stopping (6 epochs)": {"optim.patience": 0},
    "max + mean pooling": {"model.pooling": "max_mean"},
    "hidden layer of 64": {"model.hidden": 64},
    # Round 2: the best of round 1 combined.
    "long kernels + max/mean pooling": {"model.widths": [2, 3, 4, 5, 7, 9], "model.pooling": "max_mean"},
    "long kernels [2,3,5,7,9,13]": {"model.widths": [2, 3, 5, 7, 9, 13]},
    # Round 3, for configs/full.toml (whose base already has the hidden layer of 64).
    "128 filters": {"model.filters": 128},
    # Round 4, ranked by dev TPR at FPR 1e-3 (issue 11's second target): the schedule that
    # served augmentation on the operational data (docs/results/ops.md), alone and with the
    # pooling that had the best dev TPR in round 3; and a lighter malicious weight, since a
    # balanced loss (weight ~20) spends its effort on the attacks rather than on keeping the
    # highest benign scores down, which is what the low-FPR end measures.
    "12 epochs, kept by AUC": {
        "optim.epochs": 12, "optim.patience": 3,
        "optim.monitor": {"metric": "roc_auc", "direction": "higher"}},
    "12 epochs by AUC + max/mean pooling": {
        "optim.epochs": 12, "optim.patience": 3,
        "optim.monitor": {"metric": "roc_auc", "direction": "higher"}, "model.pooling": "max_mean"},
    "malicious weight 4": {"training.pos_weight": 4.0},
    # Round 6, ranked by dev AUC (issue 11's first target), declared before the run: label
    # smoothing, the one regulariser issue 11 names that was never tried. The hard test is
    # out of distribution by construction; a loss that stops pushing confident lines further
    # may rank unseen lines better.
    "label smoothing 0.1": {"training.label_smoothing": 0.1},
    "label smoothing 0.2": {"training.label_smoothing": 0.2},
    # Round 7, ranked by dev AUC, declared before the run; a variant is adopted only if its
    # dev TPR at FPR 1e-3 stays within 0.03 of the default's (round 6 bought AUC with it).
    # Word dropout: the hard test's lines are unseen scripts and techniques, the same commands
    # with other arguments; leaving words out in training asks the network to rank a line by
    # more than one of them. A stronger weight decay is the other regulariser not yet tried.
    "word dropout 0.1": {"training.word_dropout": 0.1},
    "word dropout 0.2": {"training.word_dropout": 0.2},
    "weight decay 0.1": {"optim.weight_decay": 0.1},
    # Round 8, the same rule, declared before it ran: round 7 ranked weight decay 0.1 first on
    # dev AUC (0.868) but it fell 0.036 below the default's dev TPR; word dropout 0.1 (0.862,
    # 0.027 below) passed. Both together, and each at half strength.
    "word dropout 0.1 + weight decay 0.1": {"training.word_dropout": 0.1, "optim.weight_decay": 0.1},
    "weight decay 0.05": {"optim.weight_decay": 0.05},
    "word dropout 0.05": {"training.word_dropout": 0.05},
    # Round 9, on top of word dropout 0.1 (the default now), ranked by dev TPR at FPR 1e-3
    # (`--rank-by tpr`), declared before it ran; adopted only if its dev AUC stays within
    # 0.005 of the default's. Focal loss weighs the lines the network gets wrong, such as
    # the attacker-looking admin lines that set the threshold at zero false positives.
    "focal loss 1": {"training.focal_gamma": 1.0},
    "focal loss 2": {"training.focal_gamma": 2.0},
    # Round 10 (session 16), on top of configs/full.toml (word dropout 0.1, focal loss 1),
    # ranked by dev TPR at FPR 1e-3 (`--rank-by tpr`), declared before it ran; adopted only if
    # its dev AUC stays within 0.005 of the default's. The baseline's benign lines are 3 %
    # Windows and its attacks 66 %, and the lines that set the hard test's low-FPR end are
    # Windows admin lines: weigh lines so that the label is independent of the platform.
    "platform balance 1": {"training.balance_platforms": 1.0},
    "platform balance 0.5": {"training.balance_platforms": 0.5},
}


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def dump_toml(doc, prefix=""):
    """A TOML writer for the experiment config's shapes: scalars, arrays, tables, arrays of
    tables."""
    out, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            out.append(f"{k} = {toml_value(v)}")
    for k, v in tables:
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, list):
            for item in v:
                out.append(f"\n[[{name}]]")
                out.append(dump_toml(item, name))
        else:
            out.append(f"\n[{name}]")
            out.append(dump_toml(v, name))
    return "\n".join(x for x in out if x != "")


def set_path(doc, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc.setdefault(p, {})
    doc[last] = value


def run(longtail, config, out, seeds, ensemble):
    cmd = [longtail, "-q", "run", "--config", str(config), "--out", str(out),
           "--arms", "baseline", "--seeds", seeds, "--ensemble", str(ensemble)]
    started = time.time()
    subprocess.run(cmd, check=True)
    return time.time() - started


def spread(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/demo.toml"))
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--dev", type=float, default=0.5, help="data.hard_dev_fraction")
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs/search"))
    ap.add_argument("--only", help="variant names to run, separated by semicolons")
    ap.add_argument("--rank-by", choices=["auc", "tpr"], default="auc",
                    help="the dev criterion that chooses: ROC AUC, or TPR at FPR 1e-3 (ties by AUC)")
    args = ap.parse_args()
    longtail = os.environ.get("LONGTAIL") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/longtail")
    base = tomllib.loads(Path(args.config).read_text())
    base.setdefault("data", {})["hard_dev_fraction"] = args.dev
    # Relative data paths are taken from the current directory: run from the repository root.
    os.chdir(ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(";") if args.only else list(VARIANTS)
    rows, shared_data = [], None
    for name in names:
        doc = json.loads(json.dumps(base))
        for key, value in VARIANTS[name].items():
            set_path(doc.setdefault("classifier", {}), key, value)
        slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
        run_dir = out / slug
        config = out / f"{slug}.toml"
        config.write_text(dump_toml(doc) + "\n")
        if shared_data and not (run_dir / "data").exists():
            shutil.copytree(shared_data, run_dir / "data")
        secs = run(longtail, config, run_dir, args.seeds, args.ensemble)
        shared_data = shared_data or run_dir / "data"
        results = json.loads((run_dir / "report/results.json").read_text())
        base_runs = [r for r in results["runs"] if r["arm"] == "baseline"]
        dev = [r["dev"]["roc_auc"] for r in base_runs]
        dev_tpr = [r["dev"]["tpr_at_fpr_1e3"] for r in base_runs]
        rows.append((name, spread(dev), secs, run_dir, base_runs, spread(dev_tpr)))
        print(f"{name}: dev AUC {spread(dev)[0]:.3f} ± {spread(dev)[1]:.3f} ({secs:.0f} s)", file=sys.stderr)
    if args.rank_by == "tpr":
        rows.sort(key=lambda r: (-round(r[5][0], 3), -r[1][0]))
    else:
        rows.sort(key=lambda r: -r[1][0])
    print(f"| variant | dev AUC (mean ± sd, seeds {args.seeds}, ensemble {args.ensemble}) "
          "| dev TPR at FPR 1e-3 | time |")
    print("|---|---|---|---|")
    for name, (m, s), secs, _, _, (tm, ts) in rows:
        print(f"| {name} | {m:.3f} ± {s:.3f} | {tm:.3f} ± {ts:.3f} | {secs:.0f} s |")
    name, _, _, run_dir, base_runs, _ = rows[0]
    hard = spread([r["hard"]["roc_auc"] for r in base_runs])
    easy = spread([r["easy"]["roc_auc"] for r in base_runs])
    tpr = spread([r["hard"]["tpr_at_fpr_1e3"] for r in base_runs])
    criterion = "TPR at FPR 1e-3" if args.rank_by == "tpr" else "AUC"
    print(f"\nChosen on dev {criterion}: **{name}**. Its hard test, reported once: AUC {hard[0]:.3f} ± {hard[1]:.3f}, "
          f"TPR at FPR 1e-3 {tpr[0]:.3f} ± {tpr[1]:.3f}; easy test AUC {easy[0]:.4f} ± {easy[1]:.4f} "
          f"({run_dir}/report/report.md).")


if __name__ == "__main__":
    main()
