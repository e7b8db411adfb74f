#!/usr/bin/env python3
"""PyTorch reference of the longtail byte autoencoder, for throughput comparison only.

The same network, training procedure and scoring procedure as the Rust detector
(src/detect/model.rs, src/detect/autoencoder.rs, src/detect/batching.rs, src/train.rs),
read from the same TOML config (configs/detector.toml), on the same input lines:

- vocab 258 (bytes 0..255, PAD=256, MASK=257); learned byte and position embeddings
  (normal, std 0.02); a pre-LayerNorm transformer encoder (norm_first, GELU, dropout,
  LayerNorm eps 1e-5) with a key padding mask; final LayerNorm + Linear(d_model, 256).
  Burn's MultiHeadAttention has separate Q/K/V/O projections and PyTorch packs Q/K/V into
  one matrix: the same arithmetic. Burn fills masked keys with -1e4, PyTorch with -inf.
- masked objective: mask_prob of the bytes (at least one) replaced by MASK; loss = mean
  NLL (log_softmax + gather, as in Rust) over the masked positions of the batch.
  The "bottleneck" objective is implemented too (mean-pooled code, tanh, decoder).
- AdamW (betas 0.9/0.999, eps 1e-5 = Burn's default, the config's lr and weight decay),
  linear warmup + cosine decay to 5% of the peak (src/train.rs lr_at), gradient clipping
  by norm per parameter tensor (Burn clips each gradient tensor by its own norm).
- lines drawn with probability ~ count^count_power, one epoch = as many draws as unique
  training lines; a 5% validation split by a hash of the line (blake2b here, xxh3 in Rust:
  a different but equally sized split); lines longer than max_len: a random max_len window;
  batches bucketed by length (<= max_batch lines, <= batch_tokens padded positions, lengths
  rounded up to a multiple of 8), shuffled; the loss is read back every 10 steps.
- scoring: lines chunked to max_len with chunk_overlap, round(1/mask_prob) interleaved
  masking passes per chunk, bucketed with <= 4096 rows and <= batch_tokens padded positions,
  blocks of 16,384 lines, under torch.inference_mode(); per line the mean NLL, the worst
  window and the top 3 non-overlapping surprising windows (as `longtail score`).

Timing follows the Rust definitions: training lines/s = lines drawn in the epoch / time of
the optimisation loop (batches prepared beforehand, validation excluded, as in
TrainState.lines_per_sec); scoring lines/s = lines / time of scoring and summarising
(reading input and writing output excluded, as in `longtail score`).

--profile FILE runs the same training and scoring under torch.profiler and writes its per-op
tables to FILE (the rates of such a run include the profiler's overhead).

Usage:
  python3 scripts/torch_reference.py --input lines.parquet [--config configs/detector.toml]
      [--threads N] [--epochs 1] [--score-batch-tokens 16384] [--seed 42] [--profile FILE]
Input: Parquet with a `cmd` column (optional `count`), JSONL with `cmd`, or text (one line
per record). Prints one JSON object on stdout. Needs torch and numpy (pyarrow for Parquet).
"""

import argparse
import hashlib
import json
import math
import os
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

PAD = 256
MASK = 257
VOCAB = 258
DEVICE = torch.device("cpu")  # --device cuda moves everything to the GPU

DEFAULTS = {
    "model": {
        "objective": "masked", "d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 128,
        "max_len": 128, "chunk_overlap": 32, "dropout": 0.1, "mask_prob": 0.25,
        "bottleneck_dim": 32, "decoder_layers": 1, "window": 12,
    },
    "optim": {"epochs": 4, "lr": 2e-3, "weight_decay": 0.01, "warmup_fraction": 0.05,
              "grad_clip": 1.0, "patience": 0},
    "sampling": {"count_power": 0.5, "lines_per_epoch": 0, "val_fraction": 0.05,
                 "max_batch": 128, "batch_tokens": 8192},
}


def load_config(path):
    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    if path:
        if tomllib is None:
            sys.exit("reading a TOML config needs Python >= 3.11 (tomllib)")
        with open(path, "rb") as f:
            user = tomllib.load(f)
        for section, values in user.items():
            if section in cfg:
                cfg[section].update(values)
    return cfg


def load_lines(path):
    """Unique lines (bytes) and their counts, in first-seen order, like detect::load_lines."""
    index, lines, counts = {}, [], []

    def add(cmd, c=1):
        if cmd is None:
            return
        i = index.get(cmd)
        if i is None:
            index[cmd] = len(lines)
            lines.append(cmd)
            counts.append(c)
        else:
            counts[i] += c

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        cmds = table.column("cmd").to_pylist()
        cnts = table.column("count").to_pylist() if "count" in table.column_names else [1] * len(cmds)
        for cmd, c in zip(cmds, cnts):
            add(cmd, int(c) if c and c >= 1 else 1)
    elif path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for row in f:
                if row.strip():
                    add(json.loads(row).get("cmd"))
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            for row in f:
                row = row.rstrip("\r\n")
                if row:
                    add(row)
    if not lines:
        sys.exit(f"{path} has no command lines")
    return [l.encode("utf-8") for l in lines], np.array(counts, dtype=np.float64)


# ---------------------------------------------------------------- batching (batching.rs)

def padded_len(n):
    return (max(n, 1) + 7) // 8 * 8


def bucket_by_length(lens, max_batch, batch_tokens):
    order = sorted(range(len(lens)), key=lambda i: (lens[i], i))
    batches, current = [], []
    for i in order:
        padded = padded_len(lens[i])
        if current and ((len(current) + 1) * padded > batch_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def chunk_line(line, n, max_len, overlap):
    """(line, start, end, own_from, own_to) chunks, exactly as batching::chunk_line."""
    if n <= max_len:
        return [(line, 0, n, 0, n)]
    stride, half = max_len - overlap, overlap // 2
    starts = [0]
    while starts[-1] + max_len < n:
        starts.append(starts[-1] + stride)
    out = []
    for k, s in enumerate(starts):
        own_from = 0 if k == 0 else s + half
        own_to = starts[k + 1] + half if k + 1 < len(starts) else n
        out.append((line, s, min(s + max_len, n), own_from, own_to))
    return out


class HostBatch:
    __slots__ = ("batch", "len", "inputs", "targets", "pad", "weight")

    def __init__(self, batch, length):
        self.batch, self.len = batch, length
        self.inputs = np.full((batch, length), PAD, dtype=np.int64)
        self.targets = np.zeros((batch, length), dtype=np.int64)
        self.pad = np.ones((batch, length), dtype=bool)
        self.weight = np.zeros((batch, length), dtype=np.float32)

    def set_row(self, row, data, masked, weighted):
        n = len(data)
        b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        self.inputs[row, :n] = np.where(masked, MASK, b)
        self.targets[row, :n] = b
        self.pad[row, :n] = False
        self.weight[row, :n] = weighted

    def to_torch(self):
        return tuple(torch.from_numpy(a).to(DEVICE, non_blocking=True)
                     for a in (self.inputs, self.pad, self.targets, self.weight))


# ---------------------------------------------------------------- model (model.rs)

class ByteAutoencoder(nn.Module):
    def __init__(self, m):
        super().__init__()
        d = m["d_model"]

        def encoder(n_layers):
            layer = nn.TransformerEncoderLayer(
                d, m["n_heads"], m["d_ff"], dropout=m["dropout"], activation="gelu",
                layer_norm_eps=1e-5, batch_first=True, norm_first=True)
            # Nested tensors are off for norm_first encoders anyway; say so to avoid a warning.
            return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)

        self.byte_embed = nn.Embedding(VOCAB, d)
        self.pos_embed = nn.Embedding(m["max_len"], d)
        nn.init.normal_(self.byte_embed.weight, 0.0, 0.02)
        nn.init.normal_(self.pos_embed.weight, 0.0, 0.02)
        self.encoder = encoder(m["n_layers"])
        self.bottleneck = m["objective"] == "bottleneck"
        if self.bottleneck:
            self.to_code = nn.Linear(d, m["bottleneck_dim"])
            self.from_code = nn.Linear(m["bottleneck_dim"], d)
            self.decoder = encoder(m["decoder_layers"])
        self.norm = nn.LayerNorm(d, eps=1e-5)
        self.head = nn.Linear(d, 256)

    def forward(self, inputs, pad):
        batch, length = inputs.shape
        positions = torch.arange(length, device=inputs.device).unsqueeze(0).expand(batch, length)
        pos = self.pos_embed(positions)
        x = self.byte_embed(inputs) + pos
        h = self.encoder(x, src_key_padding_mask=pad)
        if self.bottleneck:
            keep = (~pad).float().unsqueeze(-1)
            pooled = (h * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1.0)
            z = self.from_code(torch.tanh(self.to_code(pooled)))
            h = self.decoder(pos + z, src_key_padding_mask=pad)
        return self.head(self.norm(h))

    def byte_nll(self, inputs, pad, targets):
        logp = F.log_softmax(self.forward(inputs, pad), dim=2)
        return -logp.gather(2, targets.unsqueeze(-1)).squeeze(-1)


def batch_loss(model, hb):
    inputs, pad, targets, weight = hb.to_torch()
    nll = model.byte_nll(inputs, pad, targets)
    return (nll * weight).sum() / weight.sum().clamp_min(1.0)


# ---------------------------------------------------------------- training (autoencoder.rs, train.rs)

def lr_at(o, step, total):
    total = max(total, 1)
    warmup = max(int(round(o["warmup_fraction"] * total)), 1)
    if step < warmup:
        return o["lr"] * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    floor = 0.05 * o["lr"]
    return floor + (o["lr"] - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def split_train_val(lines, val_fraction):
    cut = int(min(max(val_fraction, 0.0), 0.5) * 2**64)
    train, val = [], []
    for i, l in enumerate(lines):
        h = int.from_bytes(hashlib.blake2b(l, digest_size=8).digest(), "little")
        (val if h < cut else train).append(i)
    if not train:
        train, val = val, train
    return train, val


def window_of(n, max_len, rng):
    if n <= max_len:
        return 0, n
    s = int(rng.integers(0, n - max_len + 1))
    return s, s + max_len


def make_batches(m, sampling, lines, pieces, rng):
    lens = [e - s for _, s, e in pieces]
    out = []
    for group in bucket_by_length(lens, sampling["max_batch"], sampling["batch_tokens"]):
        hb = HostBatch(len(group), max(padded_len(lens[i]) for i in group))
        for row, i in enumerate(group):
            line, s, e = pieces[i]
            data = lines[line][s:e]
            if m["objective"] == "masked":
                mask = rng.random(len(data)) < m["mask_prob"]
                if not mask.any() and len(data):
                    mask[rng.integers(0, len(data))] = True
                hb.set_row(row, data, mask, mask.astype(np.float32))
            else:
                hb.set_row(row, data, np.zeros(len(data), bool), np.ones(len(data), np.float32))
        out.append(hb)
    return out


def train(cfg, lines, counts, seed, epochs):
    m, o, sampling = cfg["model"], cfg["optim"], cfg["sampling"]
    torch.manual_seed(seed)
    model = ByteAutoencoder(m).to(DEVICE)
    train_idx, val_idx = split_train_val(lines, sampling["val_fraction"])
    w = counts[train_idx] ** sampling["count_power"]
    p = w / w.sum()
    per_epoch = sampling["lines_per_epoch"] or len(train_idx)
    val_rng = np.random.default_rng(seed ^ 0x76616C69)
    val_pieces = [(i, *window_of(len(lines[i]), m["max_len"], val_rng)) for i in val_idx]
    val_batches = make_batches(m, sampling, lines, val_pieces, val_rng)

    def epoch_batches(epoch):
        rng = np.random.default_rng([seed, epoch])
        drawn = rng.choice(len(train_idx), size=per_epoch, p=p)
        pieces = [(train_idx[j], *window_of(len(lines[train_idx[j]]), m["max_len"], rng)) for j in drawn]
        batches = make_batches(m, sampling, lines, pieces, rng)
        rng.shuffle(batches)
        return batches

    batches = epoch_batches(0)
    total_steps = len(batches) * epochs
    optim = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=(0.9, 0.999), eps=1e-5,
                              weight_decay=o["weight_decay"])
    params = [q for q in model.parameters()]
    history, step = [], 0
    for epoch in range(epochs):
        if epoch > 0:
            batches = epoch_batches(epoch)
        n_lines = sum(hb.batch for hb in batches)
        model.train()
        start = time.perf_counter()
        loss_sum, loss_n = 0.0, 0
        for hb in batches:
            for g in optim.param_groups:
                g["lr"] = lr_at(o, step, total_steps)
            loss = batch_loss(model, hb)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            if step % 10 == 0:  # the Rust loop reads the loss every 10 steps (a device sync)
                v = loss.item()
                if not math.isfinite(v):
                    sys.exit(f"training diverged (loss {v}) at step {step}")
                loss_sum, loss_n = loss_sum + v, loss_n + 1
            if o["grad_clip"] > 0:
                for q in params:  # per tensor, as Burn's GradientClipping::Norm
                    if q.grad is not None:
                        torch.nn.utils.clip_grad_norm_(q, o["grad_clip"])
            optim.step()
            step += 1
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - start
        model.eval()
        with torch.inference_mode():
            vs, vw = 0.0, 0.0
            for hb in val_batches:
                wsum = float(hb.weight.sum())
                vs += float(batch_loss(model, hb)) * wsum
                vw += wsum
        history.append({
            "epoch": epoch + 1, "lines": n_lines, "steps": len(batches), "secs": secs,
            "lines_per_sec": n_lines / max(secs, 1e-9),
            "train_loss": loss_sum / max(loss_n, 1), "val_loss": vs / max(vw, 1.0),
        })
    return model, history


# ---------------------------------------------------------------- scoring (autoencoder.rs)

def byte_nlls(model, m, lines, batch_tokens):
    passes = max(int(round(1.0 / m["mask_prob"])), 1) if m["objective"] == "masked" else 1
    items = []
    for li, l in enumerate(lines):
        for c in chunk_line(li, len(l), m["max_len"], m["chunk_overlap"]):
            for p in range(passes):
                items.append((c, p))
    lens = [c[2] - c[1] for c, _ in items]
    out = [np.zeros(len(l), dtype=np.float32) for l in lines]
    for group in bucket_by_length(lens, 4096, batch_tokens):
        length = max(padded_len(lens[i]) for i in group)
        hb = HostBatch(len(group), length)
        for row, i in enumerate(group):
            (line, s, e, _, _), p = items[i]
            n = e - s
            masked = (np.arange(n) % passes == p) if m["objective"] == "masked" else np.zeros(n, bool)
            hb.set_row(row, lines[line][s:e], masked, np.ones(n, np.float32))
        inputs, pad, targets, _ = hb.to_torch()
        nll = model.byte_nll(inputs, pad, targets).cpu().numpy()
        for row, i in enumerate(group):
            (line, s, e, own_from, own_to), p = items[i]
            ks = np.arange(p if m["objective"] == "masked" else 0, e - s, passes)
            g = s + ks
            keep = (g >= own_from) & (g < own_to)
            out[line][g[keep]] = nll[row, ks[keep]]
    return out


def summarize(line, nll, window, top):
    n = len(nll)
    if n == 0:
        return 0.0, 0.0, []
    w = min(window, n)
    prefix = np.concatenate([[0.0], np.cumsum(nll, dtype=np.float64)])
    win = (prefix[w:] - prefix[:-w]) / w
    order = np.argsort(-win, kind="stable")
    picked = []
    for s in order:
        if len(picked) >= top:
            break
        s = int(s)
        if all(s + w <= t or s >= t + w for t, _ in picked):
            picked.append((s, float(win[s])))
    surprises = [{"offset": s, "len": w, "nll": v, "text": line[s:s + w].decode("utf-8", "replace")}
                 for s, v in picked]
    return float(prefix[-1] / n), float(win[order[0]]), surprises


def score(model, m, lines, batch_tokens, top=3):
    model.eval()
    results = []
    with torch.inference_mode():
        for b in range(0, len(lines), 16384):
            block = lines[b:b + 16384]
            nll = byte_nlls(model, m, block, batch_tokens)
            results.extend(summarize(l, n, m["window"], top) for l, n in zip(block, nll))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="Parquet (cmd[, count]), JSONL (cmd) or text")
    ap.add_argument("--config", help="detector TOML (configs/detector.toml); built-in defaults otherwise")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (default: the cores available to this process, "
                         "which is what Burn flex's rayon pool uses)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs to time (default 1)")
    ap.add_argument("--score-batch-tokens", type=int, default=16384,
                    help="padded positions per scoring batch (`longtail score --batch-tokens`)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cpu (the comparison with flex and lavapipe) or cuda (scripts/bench_gpu.sh)")
    ap.add_argument("--profile", metavar="FILE",
                    help="run under torch.profiler and write per-op tables to FILE")
    ap.add_argument("--no-fastpath", action="store_true",
                    help="disable PyTorch's fused inference kernels for the encoder layer")
    args = ap.parse_args()

    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: this torch build sees no CUDA GPU")
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    if args.no_fastpath:
        torch.backends.mha.set_fastpath_enabled(False)
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    lines, counts = load_lines(args.input)
    load_secs = time.perf_counter() - t0

    if args.profile:
        from torch.profiler import ProfilerActivity, profile, record_function
        with profile(activities=[ProfilerActivity.CPU]) as train_prof:
            with record_function("train"):
                model, history = train(cfg, lines, counts, args.seed, args.epochs)
        with profile(activities=[ProfilerActivity.CPU]) as score_prof:
            with record_function("score"):
                start = time.perf_counter()
                scores = score(model, cfg["model"], lines, args.score_batch_tokens)
                score_secs = time.perf_counter() - start
        with open(args.profile, "w") as f:
            for name, prof in (("training (incl. validation)", train_prof), ("scoring", score_prof)):
                f.write(f"== {name} (torch {torch.__version__}, {threads} threads)\n")
                f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
                f.write("\n")
    else:
        model, history = train(cfg, lines, counts, args.seed, args.epochs)
        start = time.perf_counter()
        scores = score(model, cfg["model"], lines, args.score_batch_tokens)
        score_secs = time.perf_counter() - start
    mean_nll = float(np.mean([s[0] for s in scores]))
    last = history[-1]
    print(json.dumps({
        "impl": "pytorch", "torch": torch.__version__, "device": args.device,
        "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else None, "threads": threads,
        "fastpath": torch.backends.mha.get_fastpath_enabled(),
        "unique_lines": len(lines), "load_secs": round(load_secs, 3),
        "train_lines": last["lines"], "train_steps": last["steps"], "train_secs": round(last["secs"], 3),
        "train_lines_per_sec": round(last["lines_per_sec"], 1),
        "train_loss": round(last["train_loss"], 4), "val_loss": round(last["val_loss"], 4),
        "score_lines": len(lines), "score_secs": round(score_secs, 3),
        "score_lines_per_sec": round(len(lines) / max(score_secs, 1e-9), 1),
        "score_mean_nll": round(mean_nll, 4),
        "epochs": history,
    }))


if __name__ == "__main__":
    main()
