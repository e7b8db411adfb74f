#!/usr/bin/env python3
"""Helper of scripts/bench_ingest.sh (run only by the benchmark).

  gen     build the benchmark input: N command lines resampled from the shared JSONL corpora
          with a heavy-tailed frequency and small random mutations (so near-duplicates exist),
          written as text (one line per record, newlines inside a command turned into spaces)
          and as JSONL with label/platform.
  pandas  the pandas equivalent of `longtail ingest --no-near-dup`: read lines, value_counts,
          write Parquet (cmd, count).
  pyarrow the same with pyarrow only (csv reader + group_by).
  minhash exact dedup with pandas, then near-duplicate clusters with datasketch MinHashLSH
          (5-byte shingles, 128 permutations, threshold 0.8, union-find over verified pairs):
          the Python equivalent of `longtail ingest`.

Each mode but gen prints one JSON line: {"rows": .., "unique": .., "clusters": ..}.
"""

import argparse
import glob
import json
import os
import random
import sys
from pathlib import Path


def gen(args):
    rng = random.Random(args.seed)
    cmds = []
    for path in sorted(glob.glob(os.path.join(args.corpus, "*.jsonl"))):
        if os.path.basename(path) == "label_conflicts.jsonl":
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                cmd = d.get("cmd")
                if isinstance(cmd, str) and cmd.strip():
                    cmds.append((cmd.replace("\r", " ").replace("\n", " "), d.get("label"), d.get("platform")))
    rng.shuffle(cmds)
    # Zipf-like popularity: a few lines very frequent, a long tail seen once or twice.
    weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(cmds))]
    picks = rng.choices(range(len(cmds)), weights=weights, k=args.lines)
    digits = "0123456789"
    letters = "abcdefghijklmnopqrstuvwxyz"
    n_mut = 0
    with open(args.out_text, "w", encoding="utf-8") as ft, open(args.out_jsonl, "w", encoding="utf-8") as fj:
        for i in picks:
            cmd, label, platform = cmds[i]
            if rng.random() < args.mutate:
                n_mut += 1
                chars = list(cmd)
                for _ in range(rng.randint(1, 3)):
                    kind = rng.random()
                    pos = rng.randrange(len(chars)) if chars else 0
                    if kind < 0.4:  # a changed digit or letter (ids, ports, names)
                        c = chars[pos] if chars else "a"
                        chars[pos:pos + 1] = [rng.choice(digits if c.isdigit() else letters)]
                    elif kind < 0.7:  # a short insertion
                        chars[pos:pos] = list(rng.choice(letters) + rng.choice(digits))
                    elif kind < 0.85:  # a numeric suffix (pid, temp file)
                        chars.extend(" " + str(rng.randrange(100000)))
                    else:  # a deletion
                        if len(chars) > 1:
                            del chars[pos]
                cmd = "".join(chars)
            ft.write(cmd + "\n")
            fj.write(json.dumps({"cmd": cmd, "label": label, "platform": platform}) + "\n")
    print(json.dumps({"lines": args.lines, "corpus_lines": len(cmds), "mutated": n_mut}))


def read_lines_pandas(path):
    import pandas as pd

    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return pd.Series(lines, dtype="string[pyarrow]")


def mode_pandas(args):
    import pandas as pd

    s = read_lines_pandas(args.input)
    counts = s.value_counts(sort=False)
    out = pd.DataFrame({"cmd": counts.index.astype(str), "count": counts.to_numpy(dtype="uint64")})
    out.to_parquet(args.output, index=False, compression="zstd")
    print(json.dumps({"rows": int(len(s)), "unique": int(len(out)), "clusters": None}))


def mode_pyarrow(args):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(
        args.input,
        read_options=pacsv.ReadOptions(column_names=["cmd"], block_size=64 << 20),
        parse_options=pacsv.ParseOptions(delimiter="\x01", quote_char=False, escape_char=False,
                                         newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={"cmd": pa.string()}, strings_can_be_null=False,
                                             quoted_strings_can_be_null=False),
    )
    counts = table.group_by("cmd").aggregate([("cmd", "count")]).rename_columns(["cmd", "count"])
    pq.write_table(counts, args.output, compression="zstd")
    print(json.dumps({"rows": table.num_rows, "unique": counts.num_rows, "clusters": None}))


def mode_minhash(args):
    import numpy as np
    import pandas as pd
    from datasketch import MinHash, MinHashLSH

    s = read_lines_pandas(args.input)
    counts = s.value_counts(sort=False)
    uniq = [str(x) for x in counts.index]
    lsh = MinHashLSH(threshold=args.threshold, num_perm=128)
    sigs = []
    parent = list(range(len(uniq)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, text in enumerate(uniq):
        b = text.encode("utf-8", "surrogateescape")
        sh = [b[j:j + 5] for j in range(max(1, len(b) - 4))]
        m = MinHash(num_perm=128, seed=1)
        m.update_batch(sh)
        sigs.append(m)
        for j in lsh.query(m):
            if m.jaccard(sigs[j]) >= args.threshold:
                ra, rb = find(i), find(j)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        lsh.insert(i, m, check_duplication=False)
    roots = np.array([find(i) for i in range(len(uniq))])
    _, cluster = np.unique(roots, return_inverse=True)
    out = pd.DataFrame({"cmd": uniq, "count": counts.to_numpy(dtype="uint64"), "cluster": cluster.astype("uint32")})
    out.to_parquet(args.output, index=False, compression="zstd")
    print(json.dumps({"rows": int(len(s)), "unique": len(uniq), "clusters": int(cluster.max() + 1)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--corpus", default=str(Path(__file__).resolve().parent.parent.parent / "shared/data/cmdlines"))
    g.add_argument("--lines", type=int, default=1_000_000)
    g.add_argument("--mutate", type=float, default=0.3, help="share of lines given 1-3 small edits")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--out-text", required=True)
    g.add_argument("--out-jsonl", required=True)
    for name in ("pandas", "pyarrow", "minhash"):
        m = sub.add_parser(name)
        m.add_argument("input")
        m.add_argument("output")
        m.add_argument("--threshold", type=float, default=0.8)
    args = p.parse_args()
    {"gen": gen, "pandas": mode_pandas, "pyarrow": mode_pyarrow, "minhash": mode_minhash}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
