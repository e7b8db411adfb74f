#!/usr/bin/env python3
"""Load an exported longtail classifier with numpy + safetensors only and score lines.

The downstream contract of `longtail export`: this file reimplements the forward pass
(tokens -> embedding -> Conv1d per width -> ReLU -> max over real windows -> linear ->
sigmoid) from config.json and model.safetensors, without Burn or PyTorch. A seed ensemble
(config `ensemble = K` > 1) keeps each member's weights in members/K/model.safetensors; its
score is the sigmoid of the members' mean logit.

Tokens are the line's UTF-8 bytes, or for BPE models (config `tokenizer = "bpe"`) the
byte-level BPE of tokenizer.json, reimplemented below in plain Python (the Hugging Face
`tokenizers` package is not needed): each byte becomes one of GPT-2's 256 byte symbols, the
whole line is one word, and the merges apply lowest rank first.

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

def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the `tokenizers` ByteLevel alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


class ByteLevelBpe:
    """Encode like the `tokenizers` tokenizer.json that `longtail train-classifier` writes:
    ByteLevel pre-tokenizer without regex splitting or prefix space, BPE model, no normalizer."""

    def __init__(self, path):
        spec = json.loads(Path(path).read_text())
        model = spec["model"]
        if model.get("type") != "BPE":
            raise SystemExit(f"{path}: expected a BPE model, got {model.get('type')!r}")
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("use_regex") or pre.get("add_prefix_space"):
            raise SystemExit(f"{path}: expected a ByteLevel pre-tokenizer without regex or prefix space")
        if spec.get("normalizer") or spec.get("added_tokens"):
            raise SystemExit(f"{path}: normalizers and added tokens are not supported")
        self.vocab = model["vocab"]
        self.ranks = {}
        for rank, m in enumerate(model["merges"]):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            self.ranks[(a, b)] = rank
        self.byte_char = bytes_to_unicode()
        self.cache = {}

    def encode(self, line: str):
        if line in self.cache:
            return self.cache[line]
        symbols = [self.byte_char[b] for b in line.encode("utf-8")]
        while len(symbols) > 1:
            # The lowest-ranked adjacent pair, merged wherever it occurs, left to right: pairs
            # a merge creates always rank higher, so this equals tokenizers' priority queue.
            ranked = [(self.ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in self.ranks]
            if not ranked:
                break
            _, i = min(ranked)
            a, b = symbols[i], symbols[i + 1]
            merged, i = symbols[:i], i
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.vocab[s] for s in symbols]
        if len(self.cache) < 100_000:
            self.cache[line] = ids
        return ids


class Classifier:
    def __init__(self, model_dir):
        model_dir = Path(model_dir)
        bundle = json.loads((model_dir / "config.json").read_text())
        if bundle.get("format") != "longtail-cnn-classifier/1":
            raise SystemExit(f"{model_dir}: unsupported format {bundle.get('format')!r}")
        cfg = bundle["config"]["model"]
        kind = cfg.get("tokenizer", "bytes")
        if kind == "bytes":
            self.vocab_size = 256
            self.tokens = lambda line: list(line.encode("utf-8"))
        elif kind == "bpe":
            self.vocab_size = cfg["vocab_size"]
            self.tokens = ByteLevelBpe(model_dir / "tokenizer.json").encode
        else:
            raise SystemExit(f"{model_dir}: unknown tokenizer {kind!r}")
        self.pad = self.vocab_size
        self.max_len = cfg["max_len"]
        self.widths = cfg["widths"]
        self.pooling = cfg.get("pooling", "max")
        if self.pooling not in ("max", "max_mean"):
            raise SystemExit(f"{model_dir}: unknown pooling {self.pooling!r}")
        self.threshold = json.loads((model_dir / "threshold.json").read_text())["threshold"]
        k = bundle["config"].get("ensemble", 1)
        files = [model_dir / "model.safetensors"] if k <= 1 else [
            model_dir / "members" / str(m) / "model.safetensors" for m in range(k)]
        self.members = [self.load_member(f) for f in files]

    def load_member(self, path):
        if not path.is_file():
            raise SystemExit(f"{path}: missing (an ensemble member); export the model again")
        t = load_file(str(path))
        embed = t["embed.weight"].astype(np.float64)  # [vocab + 1, E]; last row = padding
        if embed.shape[0] != self.vocab_size + 1:
            raise SystemExit(f"{path}: embedding has {embed.shape[0]} rows, expected {self.vocab_size + 1}")
        # Burn's Conv1d: weight [F, E, k], bias [F]; Linear: weight [in, out], bias [out].
        convs = [
            (t[f"convs.{i}.weight"].astype(np.float64), t[f"convs.{i}.bias"].astype(np.float64))
            for i in range(len(self.widths))
        ]
        hidden = None
        if "hidden.weight" in t:  # a hidden ReLU layer between the pooled features and the logit
            hidden = (t["hidden.weight"].astype(np.float64), t["hidden.bias"].astype(np.float64))
        return embed, convs, hidden, t["head.weight"].astype(np.float64), t["head.bias"].astype(np.float64)

    def clip(self, data):
        if len(data) <= self.max_len:
            return data
        head = self.max_len // 2
        tail = self.max_len - head
        return data[:head] + data[len(data) - tail:]

    def logit(self, line: str) -> float:
        data = self.clip(self.tokens(line))
        return float(np.mean([self.member_logit(m, data) for m in self.members]))

    def member_logit(self, member, data) -> float:
        embed, convs, hidden, head_w, head_b = member
        n = len(data)
        width = max(self.widths)
        tokens = list(data) + [self.pad] * max(0, width - n)  # lines shorter than a kernel see PAD
        x = embed[tokens]  # [L, E]
        pooled = []
        for (w, b), k in zip(convs, self.widths):
            windows = max(n - k + 1, 1)
            # out[t, f] = sum_{e, j} w[f, e, j] * x[t + j, e]
            out = np.zeros((windows, w.shape[0]))
            for j in range(k):
                out += x[j:j + windows] @ w[:, :, j].T
            out = np.maximum(out + b, 0.0)
            pooled.append(out.max(axis=0))
            if self.pooling == "max_mean":
                pooled.append(out.mean(axis=0))
        h = np.concatenate(pooled)
        if hidden is not None:
            h = np.maximum(h @ hidden[0] + hidden[1], 0.0)
        return float(h @ head_w[:, 0] + head_b[0])

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
