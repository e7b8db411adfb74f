#!/usr/bin/env python3
"""Measure `longtail label` on labeled command lines (docs/labeler.md, "Measured").

  measure_labeler.py sample SHARED_DIR OUT.parquet [--seed N] [--max-chars N]
      A stratified sample of unique lines from ../shared/data/cmdlines with columns
      cmd, label, source (the file stem), stratum: 40 rare benign (runner_images) + 20 rare
      benign lookalikes (derived_benign_lookalikes), 20 common benign (10 tldr + 10 nl2bash),
      40 malicious (14 atomic_red_team + 13 lolbas + 13 gtfobins). Lines already in an earlier
      file's sample or in label_conflicts.jsonl (benign in one file, malicious in another) are
      left out; lines longer than --max-chars too.
  measure_labeler.py report LABELS.parquet [--misses]
      Benign- and malicious-verdict precision, benign recall on rare benign lines, unparsed
      rate, seconds per answer, and the confusion table by source.

Needs pyarrow (pip install pyarrow)."""
import argparse, collections, json, pathlib, random, sys

import pyarrow as pa
import pyarrow.parquet as pq

PLAN = [  # (file stem, rows, stratum)
    ("runner_images", 40, "rare_benign"),
    ("derived_benign_lookalikes", 20, "rare_benign"),
    ("tldr", 10, "common_benign"),
    ("nl2bash", 10, "common_benign"),
    ("atomic_red_team", 14, "malicious"),
    ("lolbas", 13, "malicious"),
    ("gtfobins", 13, "malicious"),
]


def sample(args):
    shared = pathlib.Path(args.shared)
    rows_by_file = {}
    for stem, _, _ in PLAN:
        path = shared / f"{stem}.jsonl"
        if not path.exists():
            sys.exit(f"error: {path} is missing; pass the cmdlines folder of shared/data")
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        rows_by_file[stem] = rows
    conflicts = set()
    conflict_file = shared / "label_conflicts.jsonl"
    if conflict_file.exists():
        conflicts = {json.loads(l)["cmd"] for l in open(conflict_file, encoding="utf-8")}
    rng = random.Random(args.seed)
    out = collections.defaultdict(list)
    taken = set()  # lookalikes are rows of the other benign files: no line twice
    for stem, n, stratum in PLAN:
        want = "malicious" if stratum == "malicious" else "benign"
        pool = sorted(
            {
                r["cmd"]
                for r in rows_by_file[stem]
                if r.get("label") == want
                and 0 < len(r["cmd"].strip()) <= args.max_chars
                and r["cmd"] not in conflicts
                and r["cmd"] not in taken
            }
        )
        if len(pool) < n:
            sys.exit(f"error: only {len(pool)} usable {want} lines in {stem}, need {n}")
        for cmd in rng.sample(pool, n):
            taken.add(cmd)
            out["cmd"].append(cmd)
            out["label"].append(want)
            out["source"].append(stem)
            out["stratum"].append(stratum)
    # Shuffled, so that a run stopped part-way has labeled a mix of every stratum.
    order = list(range(len(out["cmd"])))
    rng.shuffle(order)
    table = pa.table({k: [v[i] for i in order] for k, v in out.items()})
    pq.write_table(table, args.out)
    print(f"wrote {args.out}: {table.num_rows} lines (seed {args.seed}, <= {args.max_chars} chars)")


def ratio(good, total):
    return f"{good / total:.3f} ({good}/{total})" if total else "n/a"


def report(args):
    t = pq.read_table(args.labels).to_pylist()
    if not t or "verdict" not in t[0]:
        sys.exit(f"error: {args.labels} has no `verdict` column: give the OUT of `longtail label`")
    verdicts = ["benign", "malicious", "unparsed", "error", "skipped"]
    all_rows = t
    # Lines never asked (budget) or without an answer are left out of every figure.
    t = [r for r in t if r["verdict"] not in ("error", "skipped")]
    if not t:
        sys.exit("error: no line has an answer yet")
    by_source = collections.OrderedDict()
    for stem, _, _ in PLAN:
        by_source[stem] = collections.Counter()
    for r in all_rows:
        by_source.setdefault(r.get("source", "?"), collections.Counter())[r["verdict"]] += 1
    cnt = lambda pred: sum(1 for r in t if pred(r))
    ben_b = cnt(lambda r: r["verdict"] == "benign" and r["label"] == "benign")
    ben_all = cnt(lambda r: r["verdict"] == "benign")
    mal_m = cnt(lambda r: r["verdict"] == "malicious" and r["label"] == "malicious")
    mal_all = cnt(lambda r: r["verdict"] == "malicious")
    rare = [r for r in t if r.get("stratum") == "rare_benign"]
    common = [r for r in t if r.get("stratum") == "common_benign"]
    mal = [r for r in t if r["label"] == "malicious"]
    answered = [r for r in t if r["verdict"] not in ("error", "skipped")]
    aug = [r for r in t if r["verdict"] == "benign" and not r.get("flag")]
    lat = sorted(r["latency_ms"] / 1000 for r in answered if r["latency_ms"] > 0)
    tok = [r["tokens"] for r in answered]
    model = t[0].get("model", "?")
    lines = [
        f"model `{model}`, prompt `{t[0].get('prompt_version', '?')}`, {len(all_rows)} lines, "
        f"{len(answered)} answered (only these count below, except in the table)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| benign-verdict precision | {ratio(ben_b, ben_all)} |",
        f"| augmentation precision (benign, unflagged) | "
        f"{ratio(sum(r['label'] == 'benign' for r in aug), len(aug))} |",
        f"| malicious-verdict precision | {ratio(mal_m, mal_all)} |",
        f"| benign recall, rare benign (runner_images + lookalikes) | "
        f"{ratio(sum(r['verdict'] == 'benign' for r in rare), len(rare))} |",
        f"| benign recall, common benign (tldr + nl2bash) | "
        f"{ratio(sum(r['verdict'] == 'benign' for r in common), len(common))} |",
        f"| malicious recall | {ratio(sum(r['verdict'] == 'malicious' for r in mal), len(mal))} |",
        f"| unparsed rate | {ratio(cnt(lambda r: r['verdict'] == 'unparsed'), len(answered))} |",
        f"| flagged (injection / disagreement) | {cnt(lambda r: bool(r.get('flag')))} |",
    ]
    if lat:
        mean = sum(lat) / len(lat)
        lines.append(
            f"| seconds per answer: mean / median / p90 / max | {mean:.1f} / "
            f"{lat[len(lat) // 2]:.1f} / {lat[int(len(lat) * 0.9)]:.1f} / {lat[-1]:.1f} |"
        )
        lines.append(f"| tokens per exchange (prompt + answer), mean | {sum(tok) / len(tok):.0f} |")
    lines += ["", "| source | truth | " + " | ".join(verdicts) + " |",
              "|---|---|" + "---:|" * len(verdicts)]
    truth = {stem: ("malicious" if s == "malicious" else "benign") for stem, _, s in PLAN}
    for stem, c in by_source.items():
        if sum(c.values()):
            lines.append(f"| {stem} | {truth.get(stem, '?')} | "
                         + " | ".join(str(c[v]) for v in verdicts) + " |")
    print("\n".join(lines))
    if args.misses:
        print("\nwrong or unparsed verdicts:")
        for r in t:
            if r["verdict"] != r["label"]:
                print(f"- [{r['source']}/{r['label']} -> {r['verdict']}] {r['cmd'][:160]!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sample", help="write the stratified labeled sample")
    s.add_argument("shared", help="the cmdlines folder (../shared/data/cmdlines)")
    s.add_argument("out", help="output Parquet")
    s.add_argument("--seed", type=int, default=20261129)
    s.add_argument("--max-chars", type=int, default=600)
    r = sub.add_parser("report", help="measure a `longtail label` output with a label column")
    r.add_argument("labels")
    r.add_argument("--misses", action="store_true", help="also list the wrong verdicts")
    args = p.parse_args()
    sample(args) if args.what == "sample" else report(args)


if __name__ == "__main__":
    main()
