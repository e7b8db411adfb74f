#!/usr/bin/env python3
"""Build the bundled sample (data/sample/) from the MIT-licensed corpora in
../shared/data/cmdlines: nl2bash (common benign one-liners), runner_images (rare, complex
benign provisioning lines), atomic_red_team (malicious), otrf_security_datasets (unlabeled
telemetry). Deterministic: fixed seed. Usage: python3 scripts/make_sample.py [SHARED_DIR]"""
import json, random, sys, pathlib

shared = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cmdlines")
out = pathlib.Path(__file__).resolve().parent.parent / "data" / "sample"
plan = {  # file -> rows to keep
    "nl2bash.jsonl": 3000,
    "runner_images.jsonl": 600,
    "atomic_red_team.jsonl": 400,
    "otrf_security_datasets.jsonl": 300,
}
keep = ["cmd", "label", "platform", "source"]
rng = random.Random(20251129)
out.mkdir(parents=True, exist_ok=True)
for name, n in plan.items():
    rows = [json.loads(l) for l in open(shared / name, encoding="utf-8")]
    rows = [r for r in rows if 0 < len(r["cmd"]) <= 2000]
    picked = sorted(rng.sample(range(len(rows)), min(n, len(rows))))
    with open(out / name, "w", encoding="utf-8") as f:
        for i in picked:
            f.write(json.dumps({k: rows[i][k] for k in keep if k in rows[i]}, ensure_ascii=False) + "\n")
    print(f"{name}: {len(picked)} rows")
