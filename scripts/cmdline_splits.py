#!/usr/bin/env python3
"""Train/test splits of the public command-line corpora for the classifier (standard library only).

Two splits, both grouped so that no test line shares its group with a training line:

  hard     the measurement split of docs/classifier.md.
           train: tldr + nl2bash benign; atomic_red_team (ART) malicious of 75 % of the ATT&CK
                  techniques (grouped by parent technique, e.g. T1059) + lolbas
           test:  benign runner_images + derived_benign_lookalikes (CI provisioning lines and
                  attacker-looking benign lines: a source the model never saw);
                  malicious ART lines of the other 25 % of techniques + gtfobins
  shipped  the shipped model's data (MIT / Apache-2.0 / CC-BY-4.0 sources only, see
           models/cmdline-cnn/README.md).
           train: tldr (95 % of pages) + nl2bash (95 % of lines) + runner_images of 80 % of its
                  scripts (grouped by source file); ART malicious of 80 % of the techniques +
                  stockpile (same technique split)
           test:  the held-out tldr pages, nl2bash lines and runner_images scripts, plus the
                  derived_benign_lookalikes drawn from those scripts; ART + stockpile of the
                  held-out techniques
           test_gpl (evaluation only, never trained on): lolbas + gtfobins (GPL-3.0) malicious
                  against the same held-out benign lines
           With --ops-cap N (> 0), the permissive operational corpora join too (ops_* files:
           MIT, BSD, Apache-2.0, Unlicense; docs_windows_powershell: CC-BY-4.0): at most N
           lines of each file, drawn by script (80 % of scripts train, 20 % test), and
           test_ops: their held-out scripts against the held-out ART + stockpile techniques.
           A training line that shares its `shape` (the corpora's normalised form) with a test
           line is removed, like an exact duplicate.

A line present in a test file is removed from every training file (exact text), and a line
labeled both ways is dropped. Group assignment is a hash of the group name, so the split is
the same on every machine.

Usage: python3 scripts/cmdline_splits.py hard|shipped --data ../shared/data/cmdlines --out DIR [--ops-cap N]
Writes DIR/train.jsonl, DIR/test.jsonl (and DIR/test_gpl.jsonl for shipped) with
cmd, label, platform, source; prints the counts.
"""
import argparse
import hashlib
import json
import re
import sys
from pathlib import Path


def read(data, name, label):
    rows = []
    with open(data / f"{name}.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("label") == label and r["cmd"].strip():
                rows.append(r)
    return rows


def bucket(group: str, salt: str) -> float:
    """A stable number in [0, 1) for a group name."""
    h = hashlib.sha256(f"{salt}:{group}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def technique_group(r):
    t = r.get("technique") or r.get("source", "")
    return re.sub(r"\.\d+$", "", t)  # sub-techniques stay with their parent


def source_group(r):
    return r.get("source", "")


def slim(r, label):
    return {"cmd": r["cmd"], "label": label, "platform": r.get("platform", "unknown"),
            "source": r.get("source", "")}


def write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def dedupe(rows):
    """Unique lines; a line labeled both ways is dropped."""
    seen, out, both = {}, [], set()
    for r in rows:
        prev = seen.get(r["cmd"])
        if prev is None:
            seen[r["cmd"]] = r["label"]
            out.append(r)
        elif prev != r["label"]:
            both.add(r["cmd"])
    return [r for r in out if r["cmd"] not in both]


# Permissively licensed operational corpora (see the data README): the shipped model may train on them.
OPS_FILES = ["ops_runner_images", "ops_admin_powershell", "ops_scoop", "ops_chocolatey",
             "ops_docker", "ops_conda", "ops_msys2", "docs_windows_powershell"]


def ops_rows(data, cap):
    """(row, held_out) of each ops file: whole scripts, in a stable order by script hash,
    until the file's cap; a script is held out (test) by its own hash."""
    out = []
    for name in OPS_FILES:
        rows = read(data, name, "benign")
        by_script = {}
        for r in rows:
            by_script.setdefault(source_group(r), []).append(r)
        taken = 0
        for script in sorted(by_script, key=lambda s: bucket(s, "ops-order")):
            if taken >= cap:
                break
            held = bucket(script, "shipped") < 0.2
            for r in by_script[script]:
                out.append((r, held))
            taken += len(by_script[script])
    return out


def split(kind, data, ops_cap=0):
    benign = lambda n: [slim(r, "benign") for r in read(data, n, "benign")]
    if kind == "hard":
        art = read(data, "atomic_red_team", "malicious")
        held = lambda r: bucket(technique_group(r), "hard") < 0.25
        train = benign("tldr") + benign("nl2bash")
        train += [slim(r, "malicious") for r in art if not held(r)]
        train += [slim(r, "malicious") for r in read(data, "lolbas", "malicious")]
        test = benign("runner_images") + benign("derived_benign_lookalikes")
        test += [slim(r, "malicious") for r in art if held(r)]
        test += [slim(r, "malicious") for r in read(data, "gtfobins", "malicious")]
        extra = {}
    elif kind == "shipped":
        art = read(data, "atomic_red_team", "malicious")
        stock = read(data, "stockpile", "malicious")
        held_t = lambda r: bucket(technique_group(r), "shipped") < 0.2
        runner = read(data, "runner_images", "benign")
        held_s = lambda r: bucket(source_group(r), "shipped") < 0.2
        # tldr by page and nl2bash by line: 5 % held out, so the benign test is large enough
        # for TPR at FPR 1e-3.
        docs = [(r, bucket(source_group(r), "shipped") < 0.05) for r in read(data, "tldr", "benign")]
        docs += [(r, bucket(r["cmd"], "shipped") < 0.05) for r in read(data, "nl2bash", "benign")]
        train = [slim(r, "benign") for r, held in docs if not held]
        train += [slim(r, "benign") for r in runner if not held_s(r)]
        train += [slim(r, "malicious") for r in art + stock if not held_t(r)]
        held_benign = [slim(r, "benign") for r, held in docs if held]
        held_benign += [slim(r, "benign") for r in runner if held_s(r)]
        look = read(data, "derived_benign_lookalikes", "benign")
        held_benign += [slim(r, "benign") for r in look
                        if r.get("source", "").startswith("actions/runner-images") and held_s(r)]
        test = held_benign + [slim(r, "malicious") for r in art + stock if held_t(r)]
        gpl = held_benign + [slim(r, "malicious") for r in
                             read(data, "lolbas", "malicious") + read(data, "gtfobins", "malicious")]
        extra = {"test_gpl": gpl}
        if ops_cap > 0:
            ops = ops_rows(data, ops_cap)
            train += [slim(r, "benign") for r, held in ops if not held]
            held_art = [slim(r, "malicious") for r in art + stock if held_t(r)]
            extra["test_ops"] = [slim(r, "benign") for r, held in ops if held] + held_art
            # Near-duplicates by shape: a version bump of a test line is not a training line.
            test_shapes = {r["shape"] for r, held in ops if held}
            train_shape = {r["cmd"]: r["shape"] for r, held in ops if not held}
            train = [r for r in train if train_shape.get(r["cmd"]) not in test_shapes]
    else:
        sys.exit(f"unknown split {kind!r}: use hard or shipped")
    test = dedupe(test)
    extra = {k: dedupe(v) for k, v in extra.items()}
    in_test = {r["cmd"] for r in test}
    for v in extra.values():
        in_test |= {r["cmd"] for r in v}
    train = dedupe([r for r in train if r["cmd"] not in in_test])
    return train, test, extra


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["hard", "shipped"])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/cmdlines"), type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--ops-cap", type=int, default=0,
                    help="shipped only: lines per operational corpus to add (0 = none)")
    args = ap.parse_args()
    train, test, extra = split(args.kind, args.data, args.ops_cap)
    args.out.mkdir(parents=True, exist_ok=True)
    files = {"train": train, "test": test, **extra}
    for name, rows in files.items():
        write(args.out / f"{name}.jsonl", rows)
        mal = sum(r["label"] == "malicious" for r in rows)
        print(f"{name}: {len(rows)} lines, {len(rows) - mal} benign, {mal} malicious")


if __name__ == "__main__":
    main()
