#!/usr/bin/env python3
"""Where an augmented classifier loses on the easy test: compare its easy-test scores with the
baseline's, line by line (docs/results/ops.md, "Why the upper bound costs the easy test").

Reads the scores the experiment stores (`SEED/.../classifier/test_scores.json`, key `easy`,
in the order of `data/test_easy.parquet`), so nothing is retrained or rescored.

Usage:
  python3 scripts/easy_test_drop.py RUN [--compare NAME=RUN ...] [--arm oracle_all]
      [--seeds 1,2] [--show 8]
e.g. python3 scripts/easy_test_drop.py runs/ops --compare "weight 0.35=runs/ops-aw"
Prints, per seed: each model's easy AUC with the benign and malicious score quantiles; the
AUC when the augmented model keeps the baseline's malicious (or benign) scores, which says
which class moved; AUC per benign source x malicious source and per platform; AUC on the
lines without variables, without drive paths, and on attacks whose first two words begin a
benign stream line; the attack lines that lost most and the benign lines that rose most.
Needs numpy and pyarrow.
"""
import argparse
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# data::has_placeholder: $name, ${..}, $(..), %NAME%, {{ .. }}
PLACEHOLDER = re.compile(r"\$[A-Za-z_{(]|%[A-Za-z_][A-Za-z0-9_]*%|\{\{.*\}\}")
DRIVE_PATH = re.compile(r"[A-Za-z]:\\")
WINDOWS = re.compile(r"(?i)[a-z]:\\|\.exe\b|powershell|\bcmd\b|\breg |\\\\")


def auc(scores, malicious, keep=None):
    """ROC AUC (ties count half) of `scores` on the lines where `keep` holds."""
    if keep is not None:
        scores, malicious = scores[keep], malicious[keep]
    pos, neg = scores[malicious], scores[~malicious]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.concatenate([pos, neg])
    ranks = np.empty(len(order))
    sorted_idx = np.argsort(order, kind="mergesort")
    values = order[sorted_idx]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        ranks[sorted_idx[s:e]] = (s + e - 1) / 2
    return (ranks[: len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg))


def head(cmd):
    words = [w for w in re.findall(r"[A-Za-z0-9_.\-]+", cmd.lower()) if w not in ("sudo", "exec")]
    return tuple(words[:2])


def easy_scores(run, seed, arm):
    part = "baseline" if arm == "baseline" else f"oracle/{arm}"
    return np.array(json.loads((Path(run) / f"seed-{seed}/{part}/classifier/test_scores.json").read_text())["easy"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="experiment directory with a baseline and the arm")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=RUN",
                    help="the same arm from another run (e.g. another augment_weight)")
    ap.add_argument("--arm", default="oracle_all")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--show", type=int, default=8, help="lines listed per direction and seed")
    args = ap.parse_args()

    table = pq.read_table(Path(args.run) / "data/test_easy.parquet").to_pydict()
    cmd, source = table["cmd"], np.array(table["source"])
    malicious = np.array([label == "malicious" for label in table["label"]])
    variable = np.array([bool(PLACEHOLDER.search(c)) for c in cmd])
    drive = np.array([bool(DRIVE_PATH.search(c)) for c in cmd])
    platform = np.array(["windows" if WINDOWS.search(c) else "unix" for c in cmd])
    stream = pq.read_table(Path(args.run) / "data/stream_truth.parquet").to_pydict()
    benign_heads = {head(c) for c, label in zip(stream["cmd"], stream["label"]) if label == "benign"}
    shared_head = np.array([head(c) in benign_heads for c in cmd])
    print(f"easy test: {malicious.sum()} malicious ({(variable & malicious).sum()} with a variable), "
          f"{(~malicious).sum()} benign ({(variable & ~malicious).sum()} with a variable, "
          f"{(drive & ~malicious).sum()} with a drive path); {(shared_head & malicious).sum()} attacks "
          "begin like a benign stream line")

    models = {"baseline": (args.run, "baseline"), args.arm: (args.run, args.arm)}
    for item in args.compare:
        name, run = item.split("=", 1)
        models[name] = (run, args.arm)
    benign_sources = sorted(set(source[~malicious]))
    attack_sources = sorted(set(source[malicious]))
    for seed in [int(s) for s in args.seeds.split(",")]:
        scores = {name: easy_scores(run, seed, arm) for name, (run, arm) in models.items()}
        base = scores["baseline"]
        print(f"\n## seed {seed}\n")
        print("| model | AUC | benign median / p99 | malicious p10 / median | keeps baseline's malicious "
              "scores | keeps baseline's benign scores | no variables | benign without drive paths "
              "| attacks sharing a benign head | other attacks |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, s in scores.items():
            mixed_mal = np.where(malicious, base, s)
            mixed_ben = np.where(malicious, s, base)
            print(f"| {name} | {auc(s, malicious):.4f} | {np.median(s[~malicious]):.3f} / "
                  f"{np.quantile(s[~malicious], 0.99):.3f} | {np.quantile(s[malicious], 0.1):.3f} / "
                  f"{np.median(s[malicious]):.3f} | {auc(mixed_mal, malicious):.4f} | "
                  f"{auc(mixed_ben, malicious):.4f} | {auc(s, malicious, ~variable):.4f} | "
                  f"{auc(s, malicious, malicious | ~drive):.4f} | "
                  f"{auc(s, malicious, ~malicious | shared_head):.4f} | "
                  f"{auc(s, malicious, ~malicious | ~shared_head):.4f} |")
        print("\n| model | " + " | ".join(f"{b} vs {a}" for b in benign_sources for a in attack_sources)
              + " | windows | unix |")
        print("|---|" + "---|" * (len(benign_sources) * len(attack_sources) + 2))
        for name, s in scores.items():
            cells = [f"{auc(s, malicious, (source == b) | (source == a)):.3f}"
                     for b in benign_sources for a in attack_sources]
            cells += [f"{auc(s, malicious, platform == p):.3f}" for p in ("windows", "unix")]
            print(f"| {name} | " + " | ".join(cells) + " |")
        augmented = scores[args.arm]
        benign_base, benign_aug = np.sort(base[~malicious]), np.sort(augmented[~malicious])
        above_base = 1 - np.searchsorted(benign_base, base[malicious]) / len(benign_base)
        above_aug = 1 - np.searchsorted(benign_aug, augmented[malicious]) / len(benign_aug)
        attack_idx = np.flatnonzero(malicious)
        print(f"\nattacks that lost most (share of benign lines scoring above them, baseline -> {args.arm}):")
        for w in np.argsort(-(above_aug - above_base))[: args.show]:
            i = attack_idx[w]
            print(f"  {source[i]:16s} {above_base[w]:.3f} -> {above_aug[w]:.3f}  {cmd[i][:100]!r}")
        benign_idx = np.flatnonzero(~malicious)
        print(f"benign lines that rose most (score, baseline -> {args.arm}):")
        for w in np.argsort(-(augmented[~malicious] - base[~malicious]))[: args.show]:
            i = benign_idx[w]
            print(f"  {source[i]:16s} {base[i]:.3f} -> {augmented[i]:.3f}  {cmd[i][:100]!r}")


if __name__ == "__main__":
    main()
