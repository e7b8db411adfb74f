#!/usr/bin/env python3
"""PyTorch reference of longtail's CNN classifier, for the throughput benchmark only
(scripts/bench_classifier.sh). The same network and procedure as src/classify:

  byte tokens (256 = padding) -> Embedding(257, E) -> Conv1d(E, F, k) for each width k ->
  ReLU -> max (pooling = "max_mean": max and mean) over the windows that start inside the
  line -> dropout -> [hidden > 0: Linear(features, hidden) -> ReLU -> dropout] ->
  Linear(., 1); weighted BCE on logits (malicious weight = benign lines / malicious lines), AdamW with
  warmup + cosine decay, gradient-norm clipping, batches bucketed by length (lengths rounded
  up to a multiple of 8, at most max_batch lines and batch_tokens padded positions).

Timing definitions match the Rust side: training lines/s = lines of one epoch / time of the
optimisation loop (no validation, no data loading); scoring lines/s = lines / time to
tokenize, batch and score them (batches of up to 1024 lines and 32768 positions).

The config is a classifier TOML ([model], [optim], [training], as configs/classifier.toml)
or an experiment TOML whose [classifier.model] etc. hold them (configs/full.toml); one
network is trained (an `ensemble` setting is ignored: its members are trained alike).

Usage: python3 scripts/torch_classifier_reference.py --train TRAIN.jsonl --score LINES.txt
           --config configs/classifier.toml [--threads N] [--epochs 1] [--profile FILE]
Prints one JSON object: train_lines_per_sec, score_lines_per_sec, lines, threads, the
epoch's train loss (mean of the losses read every 10 steps, as the Rust loop does) and the
validation loss (weighted, over the held-out lines: the Rust split when the xxhash module
is installed, else a random split of the same size). --profile FILE runs the same epoch and
scoring under torch.profiler and writes its per-op tables to FILE (the rates of a profiled
run include the profiler's overhead).
"""
import argparse
import json
import math
import random
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 256


class Cnn(nn.Module):
    def __init__(self, embed_dim, filters, widths, dropout, pooling="max", hidden=0):
        super().__init__()
        if pooling not in ("max", "max_mean"):
            raise SystemExit(f"unknown pooling {pooling!r} (max or max_mean)")
        self.embed = nn.Embedding(257, embed_dim)
        nn.init.normal_(self.embed.weight, 0.0, 0.1)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, filters, k) for k in widths)
        self.widths = widths
        self.mean = pooling == "max_mean"
        self.dropout = nn.Dropout(dropout)
        features = filters * len(widths) * (2 if self.mean else 1)
        self.hidden = nn.Linear(features, hidden) if hidden > 0 else None
        self.head = nn.Linear(hidden if hidden > 0 else features, 1)

    def forward(self, tokens, lens):
        b, length = tokens.shape
        x = self.embed(tokens).transpose(1, 2)  # [b, E, L]
        pooled = []
        for conv, k in zip(self.convs, self.widths):
            y = F.relu(conv(x))  # [b, F, L - k + 1]
            limit = (lens - (k - 1)).clamp(min=1).unsqueeze(1)
            keep = (torch.arange(length - k + 1, device=tokens.device).unsqueeze(0) < limit).to(y.dtype).unsqueeze(1)
            kept = y * keep
            pooled.append(kept.amax(dim=2))
            if self.mean:  # the mean over the real windows only (src/classify/model.rs)
                pooled.append(kept.sum(dim=2) / keep.sum(dim=2))
        h = self.dropout(torch.cat(pooled, 1))
        if self.hidden is not None:
            h = self.dropout(F.relu(self.hidden(h)))
        return self.head(h).squeeze(1)


def clip(data, max_len):
    if len(data) <= max_len:
        return data
    head = max_len // 2
    return data[:head] + data[len(data) - (max_len - head):]


def batch_len(n, widths):
    return max(max(n, 1) + (-max(n, 1)) % 8, max(widths))


def buckets(lens, max_batch, batch_tokens):
    order = sorted(range(len(lens)), key=lambda i: (lens[i], i))
    out, cur = [], []
    for i in order:
        if cur and ((len(cur) + 1) * lens[i] > batch_tokens or len(cur) >= max_batch):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def make_batch(rows, widths):
    length = batch_len(max(len(r) for r in rows), widths)
    tokens = torch.full((len(rows), length), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
    return tokens, torch.tensor([len(r) for r in rows], dtype=torch.long)


def lr_at(peak, warmup_fraction, step, total):
    warmup = max(round(warmup_fraction * total), 1)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    floor = 0.05 * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="JSONL with cmd, label (benign/malicious)")
    ap.add_argument("--score", required=True, help="text file, one line to score per line")
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1, help="torch.manual_seed (initialisation, dropout)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: the GPU reference for scripts/bench_gpu.sh (timings synchronise the device)")
    ap.add_argument("--profile", metavar="FILE",
                    help="run under torch.profiler and write per-op tables to FILE")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    cfg = tomllib.load(open(args.config, "rb"))
    cfg = cfg.get("classifier", cfg)  # an experiment config: its [classifier.*] sections
    m, o, t = cfg.get("model", {}), cfg.get("optim", {}), cfg.get("training", {})
    if m.get("tokenizer", "bytes") != "bytes":
        raise SystemExit("the PyTorch reference implements byte tokens only")
    widths, max_len = m.get("widths", [2, 3, 4, 5]), m.get("max_len", 256)
    model = Cnn(m.get("embed_dim", 32), m.get("filters", 64), widths, m.get("dropout", 0.2),
                m.get("pooling", "max"), m.get("hidden", 0))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    model.to(device)

    def sync():  # CUDA runs asynchronously: a timer must wait for the queued work
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows, targets, texts = [], [], []
    with open(args.train, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("label") in ("benign", "malicious"):
                texts.append(r["cmd"].encode("utf-8"))
                rows.append(clip(texts[-1], max_len))
                targets.append(1.0 if r["label"] == "malicious" else 0.0)
    # The Rust split (src/data/split.rs): a line is held out when xxh3_64(text, seed 0x5eed) <
    # val_fraction * 2^64. Without the xxhash module: a random split of the same size.
    val_fraction = min(max(t.get("val_fraction", 0.1), 0.0), 0.5)
    try:
        import xxhash
        cut = int(val_fraction * 2.0**64)
        val_set = {i for i, r in enumerate(rows) if xxhash.xxh3_64_intdigest(texts[i], seed=0x5EED) < cut}
        idx = [i for i in range(len(rows)) if i not in val_set]
        val_idx = sorted(val_set)
    except ImportError:
        n_train = round(len(rows) * (1 - val_fraction))
        idx = list(range(len(rows)))
        random.Random(1).shuffle(idx)
        idx, val_idx = idx[:n_train], idx[n_train:]
    mal = sum(targets[i] for i in idx)
    pos_weight = (len(idx) - mal) / max(mal, 1)
    weights = [pos_weight if targets[i] else 1.0 for i in range(len(rows))]
    mean_w = sum(weights[i] for i in idx) / len(idx)
    max_batch, batch_tokens = t.get("max_batch", 64), t.get("batch_tokens", 8192)
    lens = [batch_len(len(rows[i]), widths) for i in idx]
    groups = [[idx[g] for g in grp] for grp in buckets(lens, max_batch, batch_tokens)]
    # Burn's AdamW: betas 0.9/0.999, eps 1e-5; its GradientClipping::Norm clips each
    # parameter tensor by its own norm.
    opt = torch.optim.AdamW(model.parameters(), lr=o.get("lr", 0.01), eps=1e-5,
                            weight_decay=o.get("weight_decay", 0.01))
    params = list(model.parameters())
    clip_norm = o.get("grad_clip", 1.0)
    total = len(groups) * args.epochs

    def batches_of(group_list):
        out = []
        for grp in group_list:
            tok, ln = make_batch([rows[i] for i in grp], widths)
            out.append((tok.to(device), ln.to(device), torch.tensor([targets[i] for i in grp], device=device),
                        torch.tensor([weights[i] for i in grp], device=device)))
        return out

    vlens = [batch_len(len(rows[i]), widths) for i in val_idx]
    val_batches = batches_of([[val_idx[g] for g in grp] for grp in buckets(vlens, max_batch, batch_tokens)])

    def train_epochs():
        step, lines, secs, losses = 0, 0, 0.0, []
        model.train()
        for epoch in range(args.epochs):
            random.Random(epoch).shuffle(groups)
            batches = batches_of(groups)
            start = time.perf_counter()
            for tok, ln, y, w in batches:
                for g in opt.param_groups:
                    g["lr"] = lr_at(o.get("lr", 0.01), o.get("warmup_fraction", 0.05), step, total)
                z = model(tok, ln)
                loss = (F.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum() / (len(y) * mean_w)
                opt.zero_grad()
                loss.backward()
                if step % 10 == 0:  # the Rust loop reads the loss every 10 steps
                    losses.append(loss.item())
                if clip_norm > 0:
                    for q in params:
                        if q.grad is not None:
                            nn.utils.clip_grad_norm_(q, clip_norm)
                opt.step()
                step += 1
                lines += len(y)
            sync()
            secs += time.perf_counter() - start
        return lines, secs, sum(losses) / max(len(losses), 1)

    def validate():
        model.eval()
        total_loss, total_w = 0.0, 0.0
        with torch.inference_mode():
            for tok, ln, y, w in val_batches:
                z = model(tok, ln)
                total_loss += float((F.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum())
                total_w += float(w.sum())
        return total_loss / max(total_w, 1e-12)

    score_lines = [l.rstrip("\n") for l in open(args.score, encoding="utf-8") if l.strip()]

    def score():
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            clipped = [clip(l.encode("utf-8"), max_len) for l in score_lines]
            slens = [batch_len(len(c), widths) for c in clipped]
            out = [0.0] * len(clipped)
            for grp in buckets(slens, 1024, 32768):
                tok, ln = make_batch([clipped[i] for i in grp], widths)
                s = torch.sigmoid(model(tok.to(device), ln.to(device))).tolist()
                for i, v in zip(grp, s):
                    out[i] = v
        return time.perf_counter() - start

    if args.profile:
        from torch.profiler import ProfilerActivity, profile, record_function
        with profile(activities=[ProfilerActivity.CPU]) as train_prof:
            with record_function("train_epoch"):
                lines, secs, train_loss = train_epochs()
        val_loss = validate()
        with profile(activities=[ProfilerActivity.CPU]) as score_prof:
            with record_function("classify"):
                score_secs = score()
        with open(args.profile, "w") as f:
            for name, prof in (("training", train_prof), ("classify", score_prof)):
                f.write(f"== {name} (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
                f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
                f.write("\n")
    else:
        lines, secs, train_loss = train_epochs()
        val_loss = validate()
        score_secs = score()
    print(json.dumps({
        "train_lines_per_sec": lines / secs,
        "score_lines_per_sec": len(score_lines) / score_secs,
        "lines": lines,
        "scored": len(score_lines),
        "threads": torch.get_num_threads(),
        "train_loss": round(train_loss, 4),
        "val_loss": round(val_loss, 4),
        "profiled": bool(args.profile),
    }))

if __name__ == "__main__":
    main()
