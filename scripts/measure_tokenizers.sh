#!/usr/bin/env bash
# Bytes vs BPE tokens for the classifier on the hard split (scripts/cmdline_splits.py hard):
# trains each tokenizer with 2 seeds on flex with configs/classifier.toml (only [model].tokenizer
# differs) and evaluates all four on the held-out test set in one report.
# Usage: scripts/measure_tokenizers.sh [WORK_DIR]   (default /tmp/longtail-tokenizers)
# Finished runs (threshold.json present) are reused, so a rerun only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/longtail-tokenizers}
DATA=${DATA:-/work/shared/data/cmdlines}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/longtail}
SEEDS=${SEEDS:-"1 2"}
mkdir -p "$WORK/runs"
python3 scripts/cmdline_splits.py hard --data "$DATA" --out "$WORK/hard"
sed 's/^tokenizer = "bytes"/tokenizer = "bpe"/; s/^tokenizer = "bpe"/tokenizer = "bpe"/' \
    configs/classifier.toml > "$WORK/bpe.toml"
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
r = json.load(open(sys.argv[1]))
print("| model | ROC AUC | PR AUC | TPR at FPR 1e-3 | TPR at FPR 1e-2 |")
print("|---|---|---|---|---|")
for m in r["models"]:
    x = m["metrics"]
    at = {round(a["target"], 6): a for a in x.get("tpr_at_fpr", [])}
    def tpr(t):
        a = at.get(t)
        return "n/a" if a is None else f"{a['tpr']:.3f}" + ("" if a.get("resolvable", True) else " (unresolved)")
    print(f"| {m['name']} | {x['roc_auc']:.4f} | {x['pr_auc']:.4f} | {tpr(0.001)} | {tpr(0.01)} |")
PY
