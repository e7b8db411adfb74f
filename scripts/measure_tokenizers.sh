#!/usr/bin/env bash
# Bytes vs BPE tokens for the classifier on the hard split (scripts/cmdline_splits.py hard):
# trains each tokenizer with 4 seeds (SEEDS) on flex with configs/classifier.toml (only [model].tokenizer
# differs) and evaluates all four on the held-out test set in one report.
# Usage: scripts/measure_tokenizers.sh [WORK_DIR]   (default /tmp/longtail-tokenizers)
# Finished runs (threshold.json present) are reused, so a rerun only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
WORK=${1:-/tmp/longtail-tokenizers}
DATA=${DATA:-$ROOT/../shared/data/cmdlines}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/longtail}
SEEDS=${SEEDS:-"1 2 3 4"}
mkdir -p "$WORK/runs"
python3 scripts/cmdline_splits.py hard --data "$DATA" --out "$WORK/hard"
sed 's/^tokenizer = "bytes"/tokenizer = "bpe"/' configs/classifier.toml > "$WORK/bpe.toml"
sed 's/^tokenizer = "bpe"/tokenizer = "bytes"/' configs/classifier.toml > "$WORK/bytes.toml"
grep -q '^tokenizer = "bpe"' "$WORK/bpe.toml" && grep -q '^tokenizer = "bytes"' "$WORK/bytes.toml"
models=()
for tok in bytes bpe; do
  for seed in $SEEDS; do
    run="$WORK/runs/$tok-s$seed"
    if [[ ! -f "$run/threshold.json" ]]; then
      /usr/bin/time -f "%e s wall, %U s user" "$BIN" --device flex --seed "$seed" train-classifier \
          --train "$WORK/hard/train.jsonl" --config "$WORK/$tok.toml" --out "$run" 2>&1 | tail -3
    fi
    models+=(--model "$tok-s$seed=$run")
  done
done
"$BIN" --device flex evaluate --test "$WORK/hard/test.jsonl" "${models[@]}" \
    --out "$WORK/eval" --title "hard split: unseen benign sources (runner_images, lookalikes) vs unseen ART techniques + gtfobins"
python3 - "$WORK/eval/report.json" <<'PY'
import json, sys
from collections import defaultdict
r = json.load(open(sys.argv[1]))
print("| model | ROC AUC [95 % CI] | PR AUC | TPR at FPR 1e-2 | TPR at FPR 1e-3 | held-out ART at 1e-3 | GTFOBins at 1e-3 |")
print("|---|---|---|---|---|---|---|")
means = defaultdict(lambda: defaultdict(list))
for m in r["models"]:
    x = m["metrics"]
    at = {round(a["target"], 6): a for a in x["tpr_at_fpr"]}
    src = {row["value"]: {round(a["target"], 6): a for a in row["tpr_at_fpr"]}
           for g in m["groups"] if g["column"] == "source" for row in g["rows"]}
    ci = x.get("roc_auc_ci")
    vals = {
        "auc": x["roc_auc"], "pr": x["pr_auc"], "t2": at[0.01]["tpr"], "t3": at[0.001]["tpr"],
        "art": src.get("redcanaryco/atomic-red-team", {}).get(0.001, {}).get("tpr", float("nan")),
        "gtfo": src.get("GTFOBins/GTFOBins.github.io", {}).get(0.001, {}).get("tpr", float("nan")),
    }
    for k, v in vals.items():
        means[m["name"].split("-s")[0]][k].append(v)
    cis = f" [{ci['lower']:.3f}, {ci['upper']:.3f}]" if ci else ""
    print(f"| {m['name']} | {vals['auc']:.4f}{cis} | {vals['pr']:.4f} | {vals['t2']:.3f} | {vals['t3']:.3f} | {vals['art']:.3f} | {vals['gtfo']:.3f} |")
for name, v in means.items():
    f = lambda k: sum(v[k]) / len(v[k])
    print(f"| **{name} mean of {len(v['auc'])}** | **{f('auc'):.4f}** | **{f('pr'):.4f}** | **{f('t2'):.3f}** | **{f('t3'):.3f}** | **{f('art'):.3f}** | **{f('gtfo'):.3f}** |")
PY
