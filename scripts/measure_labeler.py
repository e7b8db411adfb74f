#!/usr/bin/env python3
"""Measure `longtail label` on labeled command lines (docs/labeler.md, "Measured").

  measure_labeler.py sample SHARED_DIR OUT.parquet [--seed N] [--max-chars N]
      A stratified sample of unique lines from ../shared/data/cmdlines with columns
      cmd, label, source (the file stem), stratum: 40 rare benign (runner_images) + 20 rare
      benign lookalikes (derived_benign_lookalikes), 20 common benign (10 tldr + 10 nl2bash),
      40 malicious (14 atomic_red_team + 13 lolbas + 13 gtfobins). Lines already in an earlier
      file's sample or in label_conflicts.jsonl (benign in one file, malicious in another) are
      left out; lines longer than --max-chars too.
  measure_labeler.py calibration SHARED_DIR OUT_DIR [--seed N] [--exclude FILE.parquet ...]
      Two labeled samples for `longtail label --calibrate` (docs/labeler.md, "Calibration"),
      disjoint by group (a script for benign lines, an ATT&CK technique for attacks), so that a
      threshold fitted on one is judged on lines of scripts and techniques it never saw:
      OUT_DIR/calibration.parquet (600 benign: 450 rare operational + 150 common; 300
      malicious) and OUT_DIR/heldout.parquet (half as many of each). Same columns as `sample`,
      plus `group`. Lines of the --exclude files (e.g. the 120-line sample) are left out.
  measure_labeler.py report LABELS.parquet [--misses]
      Benign- and malicious-verdict precision, benign recall on rare benign lines, unparsed
      rate, seconds per answer, and the confusion table by source.

Needs pyarrow (pip install pyarrow)."""
import argparse, bisect, collections, hashlib, json, pathlib, random, sys

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


def read_rows(shared, stem):
    path = shared / f"{stem}.jsonl"
    if not path.exists():
        sys.exit(f"error: {path} is missing; pass the cmdlines folder of shared/data")
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def read_conflicts(shared):
    """Lines labeled benign in one file and malicious in another: never sampled."""
    path = shared / "label_conflicts.jsonl"
    if not path.exists():
        return set()
    return {json.loads(l)["cmd"] for l in open(path, encoding="utf-8")}


def write_shuffled(columns, rng, path):
    """Shuffled, so that a run stopped part-way has labeled a mix of every stratum."""
    order = list(range(len(columns["cmd"])))
    rng.shuffle(order)
    table = pa.table({k: [v[i] for i in order] for k, v in columns.items()})
    pq.write_table(table, path)
    return table


def sample(args):
    shared = pathlib.Path(args.shared)
    rows_by_file = {stem: read_rows(shared, stem) for stem, _, _ in PLAN}
    conflicts = read_conflicts(shared)
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
    table = write_shuffled(out, rng, args.out)
    print(f"wrote {args.out}: {table.num_rows} lines (seed {args.seed}, <= {args.max_chars} chars)")


# (file stem, calibration rows, stratum); the held-out sample takes half as many of each.
CALIBRATION_PLAN = [
    ("ops_admin_powershell", 50, "rare_benign"),
    ("ops_chocolatey", 50, "rare_benign"),
    ("ops_scoop", 50, "rare_benign"),
    ("ops_conda", 50, "rare_benign"),
    ("ops_msys2", 50, "rare_benign"),
    ("ops_docker", 50, "rare_benign"),
    ("ops_runner_images", 50, "rare_benign"),
    ("docs_windows_powershell", 50, "rare_benign"),
    ("derived_benign_lookalikes", 50, "rare_benign"),
    ("tldr", 75, "common_benign"),
    ("nl2bash", 75, "common_benign"),
    ("atomic_red_team", 120, "malicious"),
    ("lolbas", 80, "malicious"),
    ("gtfobins", 80, "malicious"),
    ("stockpile", 20, "malicious"),
]


def group_of(row, stem):
    """The unit a near-duplicate stays inside: the attack technique, else the script (nl2bash's
    one file is a collection of unrelated one-liners: there each line is its own group)."""
    if row.get("label") == "malicious" and row.get("technique"):
        return f"technique:{row['technique']}"
    source = row.get("source") or ""
    if not source or source.endswith("nl2bash:data/bash/all.cm"):
        return f"line:{row['cmd']}"
    return f"script:{source}"


def calibration(args):
    shared = pathlib.Path(args.shared)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    conflicts = read_conflicts(shared)
    excluded = set()
    for path in args.exclude:
        excluded |= set(pq.read_table(path, columns=["cmd"]).column("cmd").to_pylist())

    def side(group):  # a seeded hash: 2/3 of the groups calibrate, 1/3 are held out
        digest = hashlib.sha256(f"{args.seed}:{group}".encode()).digest()
        return "calibration" if digest[0] % 3 else "heldout"

    rng = random.Random(args.seed)
    outs = {"calibration": collections.defaultdict(list), "heldout": collections.defaultdict(list)}
    taken = set()
    for stem, n, stratum in CALIBRATION_PLAN:
        want = "malicious" if stratum == "malicious" else "benign"
        pools = {"calibration": {}, "heldout": {}}
        for r in read_rows(shared, stem):
            cmd = r.get("cmd") or ""
            if (r.get("label") != want or not 0 < len(cmd.strip()) <= args.max_chars
                    or cmd in conflicts or cmd in excluded or cmd in taken):
                continue
            g = group_of(r, stem)
            pools[side(g)].setdefault(cmd, g)
        for name, want_n in (("calibration", n), ("heldout", n // 2)):
            pool = sorted(pools[name].items())
            if len(pool) < want_n:
                sys.exit(f"error: only {len(pool)} usable {want} lines of {stem} for {name}, need {want_n}")
            for cmd, g in rng.sample(pool, want_n):
                taken.add(cmd)
                o = outs[name]
                o["cmd"].append(cmd)
                o["label"].append(want)
                o["source"].append(stem)
                o["stratum"].append(stratum)
                o["group"].append(g)
    for name, o in outs.items():
        path = out_dir / f"{name}.parquet"
        table = write_shuffled(o, rng, path)
        mal = sum(1 for l in o["label"] if l == "malicious")
        print(f"wrote {path}: {table.num_rows} lines ({table.num_rows - mal} benign, {mal} malicious), "
              f"{len(set(o['group']))} groups")
    shared_groups = set(outs["calibration"]["group"]) & set(outs["heldout"]["group"])
    assert not shared_groups, f"groups on both sides: {sorted(shared_groups)[:5]}"


def scored_summary(rows):
    """For the scored protocols: how well p_benign ranks the classes, and the most benign
    recall reachable at a benign precision of 0.95 and 0.98 on this sample (point estimates:
    the calibration report has the bounds)."""
    ben = sorted(r["p_benign"] for r in rows if r["label"] == "benign")
    mal = sorted(r["p_benign"] for r in rows if r["label"] == "malicious")
    out = [f"p_benign on {len(ben)} benign and {len(mal)} malicious scored lines:"]
    if not ben or not mal:
        return out + ["(one class only: no ranking figures)"]
    wins = sum(bisect.bisect_left(mal, b) + 0.5 * (bisect.bisect_right(mal, b) - bisect.bisect_left(mal, b))
               for b in ben)
    out.append(f"- AUROC (benign above malicious): {wins / (len(ben) * len(mal)):.3f}")
    q = lambda a, f: a[min(int(f * len(a)), len(a) - 1)]
    out.append("- quartiles, benign: " + " / ".join(f"{q(ben, f):.3f}" for f in (0.25, 0.5, 0.75))
               + "; malicious: " + " / ".join(f"{q(mal, f):.3f}" for f in (0.25, 0.5, 0.75)))
    for target in (0.95, 0.98):
        best = None
        for threshold in sorted(set(ben) | set(mal), reverse=True):
            b = len(ben) - bisect.bisect_left(ben, threshold)
            m = len(mal) - bisect.bisect_left(mal, threshold)
            if b and b / (b + m) >= target:
                best = (b, m, threshold)
        if best:
            b, m, threshold = best
            out.append(f"- benign recall at precision >= {target} (this sample's share): "
                       f"{b / len(ben):.3f} ({b}/{len(ben)}, {m} malicious pass, p_benign >= {threshold:.4g})")
        else:
            out.append(f"- benign recall at precision >= {target}: 0 (no threshold reaches it)")
    return out


def ratio(good, total):
    return f"{good / total:.3f} ({good}/{total})" if total else "n/a"


def report(args):
    t = pq.read_table(args.labels).to_pylist()
    if not t or "verdict" not in t[0]:
        sys.exit(f"error: {args.labels} has no `verdict` column: give the OUT of `longtail label`")
    verdicts = ["benign", "malicious", "uncertain", "unparsed", "error", "skipped"]
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
        f"| benign recall, rare benign (stratum rare_benign) | "
        f"{ratio(sum(r['verdict'] == 'benign' for r in rare), len(rare))} |",
        f"| benign recall, common benign (stratum common_benign) | "
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
    truth = {r.get("source", "?"): r["label"] for r in all_rows}
    for stem, c in by_source.items():
        if sum(c.values()):
            lines.append(f"| {stem} | {truth.get(stem, '?')} | "
                         + " | ".join(str(c[v]) for v in verdicts) + " |")
    scored = [r for r in t if r.get("p_benign") is not None]
    if scored:
        lines += ["", *scored_summary(scored)]
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
    c = sub.add_parser("calibration", help="write the calibration and held-out samples")
    c.add_argument("shared", help="the cmdlines folder (../shared/data/cmdlines)")
    c.add_argument("out_dir", help="folder for calibration.parquet and heldout.parquet")
    c.add_argument("--seed", type=int, default=20261130)
    c.add_argument("--max-chars", type=int, default=600)
    c.add_argument("--exclude", action="append", default=[], metavar="FILE.parquet",
                   help="leave out the lines of this Parquet file (repeatable)")
    r = sub.add_parser("report", help="measure a `longtail label` output with a label column")
    r.add_argument("labels")
    r.add_argument("--misses", action="store_true", help="also list the wrong verdicts")
    args = p.parse_args()
    {"sample": sample, "calibration": calibration, "report": report}[args.what](args)


if __name__ == "__main__":
    main()
