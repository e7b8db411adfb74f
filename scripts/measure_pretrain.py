#!/usr/bin/env python3
"""Does pretraining the classifier's encoder on the unlabeled stream help? Chosen on dev, the
test reported once.

Builds an experiment's datasets once (`longtail run --data-only`, with a dev hard split
`data.hard_dev_fraction`), then for every variant and seed: pretrains on the stream
(`longtail pretrain-classifier`, same seed), trains the baseline classifier on baseline.parquet
from that encoder (`train-classifier --pretrained`, same seed) and evaluates it on the dev
hard split. The variant `none` trains without pretraining: the same seeds give the same head
initialisation and the same batches, so the encoder is the only difference. Variants are
ranked by mean dev AUC; only then are the chosen variant and `none` evaluated on the hard and
easy tests, once.

Usage:
  python3 scripts/measure_pretrain.py [--config configs/demo.toml]
      [--classifier configs/classifier.toml] [--hidden 64] [--lr LR] [--seeds 1,2,3] [--dev 0.5]
      [--out runs/pretrain] [--only "NAME;NAME"] [--dev-only]
Prints Markdown tables (docs/classifier.md, "Pretraining", records a run). Needs only the
Python standard library and a built `longtail` ($LONGTAIL, or release/longtail under
$CARGO_TARGET_DIR or target/).
Finished trainings are reused on a rerun (delete --out to start over).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from search_classifier import dump_toml, set_path  # noqa: E402

# name -> (overrides of configs/pretrain.toml, stream files beyond stream.parquet).
VARIANTS = {
    "none": None,
    "4 epochs, lr 2e-3 (default)": ({}, []),
    "20 epochs, lr 5e-3": ({"optim.epochs": 20, "optim.lr": 0.005}, []),
    "20 epochs, lr 5e-3, mask 0.3": ({"optim.epochs": 20, "optim.lr": 0.005, "mask_rate": 0.3}, []),
    "20 epochs, lr 5e-3, uniform over unique lines": (
        {"optim.epochs": 20, "optim.lr": 0.005, "count_power": 0.0}, []),
    "20 epochs, lr 5e-3, stream + baseline lines": (
        {"optim.epochs": 20, "optim.lr": 0.005}, ["baseline.parquet"]),
}


def spread(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, digits=3):
    m, s = spread(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def sh(cmd):
    subprocess.run([str(c) for c in cmd], check=True)


def evaluate(longtail, test, models, out):
    """ROC AUC and TPR at FPR 1e-3 of each NAME=DIR on one test file."""
    cmd = [longtail, "-q", "--device", "flex", "evaluate", "--test", test, "--out", out]
    for name, d in models:
        cmd += ["--model", f"{name}={d}"]
    sh(cmd)
    report = json.loads((Path(out) / "report.json").read_text())
    result = {}
    for m in report["models"]:
        tpr = next(t for t in m["metrics"]["tpr_at_fpr"] if t["target"] == 0.001)
        result[m["name"]] = (m["metrics"]["roc_auc"], tpr["tpr"])
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.toml", help="experiment config (data)")
    ap.add_argument("--classifier", default="configs/classifier.toml")
    ap.add_argument("--pretrain", default="configs/pretrain.toml")
    ap.add_argument("--hidden", type=int, default=64, help="[model] hidden (0 = none)")
    ap.add_argument("--lr", type=float, default=None,
                    help="the classifier's [optim] lr (default: the config's)")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--dev", type=float, default=0.5, help="data.hard_dev_fraction")
    ap.add_argument("--out", default="runs/pretrain")
    ap.add_argument("--only", default=None, help="variant names, ';'-separated")
    ap.add_argument("--dev-only", action="store_true", help="rank on dev; do not look at the tests")
    args = ap.parse_args()
    longtail = os.environ.get("LONGTAIL") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/longtail")
    # Relative paths (the config's data dir, --out) are taken from the repository root.
    os.chdir(ROOT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]

    exp = tomllib.loads(Path(args.config).read_text())
    exp.setdefault("data", {})["hard_dev_fraction"] = args.dev
    (out / "experiment.toml").write_text(dump_toml(exp) + "\n")
    subprocess.run([str(c) for c in [longtail, "-q", "run", "--config", out / "experiment.toml",
                    "--out", out / "data-run", "--data-only"]], check=True,
                   stdout=subprocess.DEVNULL)
    data = out / "data-run" / "data"

    clf = tomllib.loads(Path(args.classifier).read_text())
    set_path(clf, "model.hidden", args.hidden)
    if args.lr is not None:
        set_path(clf, "optim.lr", args.lr)
    (out / "classifier.toml").write_text(dump_toml(clf) + "\n")
    base_pre = tomllib.loads(Path(args.pretrain).read_text())

    names = list(VARIANTS) if args.only is None else args.only.split(";")
    if "none" not in names:
        names.insert(0, "none")
    dev_rows, dirs, pre_secs = [], {}, {}
    for name in names:
        variant = VARIANTS[name]
        vdir = out / f"v{list(VARIANTS).index(name)}"
        for seed in seeds:
            sdir = vdir / f"s{seed}"
            pre = None
            if variant is not None:
                overrides, extra = variant
                doc = json.loads(json.dumps(base_pre))
                for k, v in overrides.items():
                    set_path(doc, k, v)
                sdir.mkdir(parents=True, exist_ok=True)
                (sdir / "pretrain.toml").write_text(dump_toml(doc) + "\n")
                pre = sdir / "pretrain"
                if not (pre / "encoder.safetensors").exists():
                    sh([longtail, "-q", "--device", "flex", "--seed", seed, "pretrain-classifier",
                        "--stream", data / "stream.parquet", *[data / e for e in extra],
                        "--config", out / "classifier.toml",
                        "--pretrain-config", sdir / "pretrain.toml", "--out", pre])
                bundle = json.loads((pre / "config.json").read_text())
                pre_secs.setdefault(name, []).append(bundle["seconds"])
            model = sdir / "classifier"
            if not (model / "threshold.json").exists():
                cmd = [longtail, "-q", "--device", "flex", "--seed", seed, "train-classifier",
                       "--train", data / "baseline.parquet", "--config", out / "classifier.toml",
                       "--out", model]
                if pre is not None:
                    cmd += ["--pretrained", pre]
                sh(cmd)
            dirs.setdefault(name, []).append((f"s{seed}", model))
        dev = evaluate(longtail, data / "dev_hard.parquet", dirs[name], vdir / "eval-dev")
        aucs = [dev[s][0] for s, _ in dirs[name]]
        dev_rows.append((name, aucs))
        print(f"{name}: dev AUC {fmt(aucs)}", file=sys.stderr)

    print(f"| pretraining | dev hard AUC (mean ± sd, seeds {args.seeds}) | pretraining time |")
    print("|---|---|---|")
    for name, aucs in sorted(dev_rows, key=lambda r: -statistics.mean(r[1])):
        secs = f"{statistics.mean(pre_secs[name]):.0f} s" if name in pre_secs else "-"
        print(f"| {name} | {fmt(aucs)} | {secs} |")
    if args.dev_only:
        return
    chosen = max((r for r in dev_rows if r[0] != "none"), key=lambda r: statistics.mean(r[1]))[0]
    print(f"\nChosen on dev: **{chosen}**. Tests, reported once:\n")
    print("| classifier | hard AUC (mean ± sd) | easy AUC | TPR at FPR 1e-3, hard | pretraining time |")
    print("|---|---|---|---|---|")
    for name in ["none", chosen]:
        tdir = out / "eval-test" / ("none" if name == "none" else "chosen")
        hard = evaluate(longtail, data / "test_hard.parquet", dirs[name], tdir / "hard")
        easy = evaluate(longtail, data / "test_easy.parquet", dirs[name], tdir / "easy")
        keys = [s for s, _ in dirs[name]]
        secs = f"{statistics.mean(pre_secs[name]):.0f} s" if name in pre_secs else "-"
        print(f"| {'no pretraining' if name == 'none' else 'pretrained: ' + name} "
              f"| {fmt([hard[k][0] for k in keys])} | {fmt([easy[k][0] for k in keys], 4)} "
              f"| {fmt([hard[k][1] for k in keys])} | {secs} |")
        print(f"  per seed, hard AUC: {[round(hard[k][0], 4) for k in keys]}", file=sys.stderr)


if __name__ == "__main__":
    main()
