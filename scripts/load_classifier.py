#!/usr/bin/env python3
"""Load an exported longtail classifier with numpy + safetensors only and score lines.

The downstream contract of `longtail export`: this file reimplements the forward pass
(byte tokens -> embedding -> Conv1d per width -> ReLU -> max over real windows -> linear ->
sigmoid) from config.json and model.safetensors, without Burn or PyTorch.

Usage:
  python3 scripts/load_classifier.py MODEL_DIR [LINES.txt]          # print score<TAB>label<TAB>cmd
  python3 scripts/load_classifier.py MODEL_DIR --check SCORES.jsonl  # compare with `longtail classify`
    (exits 1 when any |score difference| > --tol, default 1e-4)

Needs: pip install numpy safetensors
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

PAD = 256


class Classifier:
    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        bundle = json.loads((model_dir / "config.json").read_text())
        if bundle.get("format") != "longtail-cnn-classifier/1":
            raise SystemExit(f"{model_dir}: unsupported format {bundle.get('format')!r}")
        cfg = bundle["config"]["model"]
        self.max_len = cfg["max_len"]
        self.widths = cfg["widths"]
        self.threshold = json.loads((model_dir / "threshold.json").read_text())["threshold"]
        t = load_file(str(model_dir / "model.safetensors"))
        self.embed = t["embed.weight"].astype(np.float64)  # [257, E]
        # Burn's Conv1d: weight [F, E, k], bias [F]; Linear: weight [in, out], bias [out].
        self.convs = [
            (t[f"convs.{i}.weight"].astype(np.float64), t[f"convs.{i}.bias"].astype(np.float64))
            for i in range(len(self.widths))
        ]
        self.head_w = t["head.weight"].astype(np.float64)
        self.head_b = t["head.bias"].astype(np.float64)

    def clip(self, data: bytes) -> bytes:
        if len(data) <= self.max_len:
            return data
        head = self.max_len // 2
        tail = self.max_len - head
        return data[:head] + data[len(data) - tail:]

    def logit(self, line: str) -> float:
        data = self.clip(line.encode("utf-8"))
        n = len(data)
        width = max(self.widths)
        tokens = list(data) + [PAD] * max(0, width - n)  # lines shorter than a kernel see PAD
        x = self.embed[tokens]  # [L, E]
        pooled = []
        for (w, b), k in zip(self.convs, self.widths):
            windows = max(n - k + 1, 1)
            # out[t, f] = sum_{e, j} w[f, e, j] * x[t + j, e]
            out = np.zeros((windows, w.shape[0]))
            for j in range(k):
                out += x[j:j + windows] @ w[:, :, j].T
            out = np.maximum(out + b, 0.0)
            pooled.append(out.max(axis=0))
        h = np.concatenate(pooled)
        return float(h @ self.head_w[:, 0] + self.head_b[0])

    def score(self, line: str) -> float:
        return 1.0 / (1.0 + np.exp(-self.logit(line)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("lines", nargs="?", help="text file, one command a line (default: stdin)")
    ap.add_argument("--check", help="JSONL from `longtail classify` (cmd, score) to compare against")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    clf = Classifier(args.model_dir)
    if args.check:
        rows = [json.loads(l) for l in Path(args.check).read_text().splitlines() if l.strip()]
        worst = 0.0
        for r in rows:
            worst = max(worst, abs(clf.score(r["cmd"]) - r["score"]))
        ok = worst <= args.tol
        print(f"{'OK' if ok else 'MISMATCH'}: {len(rows)} lines, max |score difference| {worst:.3g} (tolerance {args.tol})")
        sys.exit(0 if ok else 1)
    src = open(args.lines, encoding="utf-8") if args.lines else sys.stdin
    for line in src:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        s = clf.score(line)
        print(f"{s:.6f}\t{'malicious' if s >= clf.threshold else 'benign'}\t{line}")


if __name__ == "__main__":
    main()
