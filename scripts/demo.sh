#!/usr/bin/env bash
# The main job on the bundled sample (data/sample, MIT-licensed public command lines):
# set up, then ingest -> train the detectors -> score -> select labeling candidates -> label them.
# Labels come from the ORACLE labeler (the sample's known labels), so no LLM server is needed;
# see docs/labeler.md to label with a local LLM instead. Everything lands in runs/demo/
# (override with OUT=...). About three minutes on 2 CPU cores after the first build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin=${CARGO_TARGET_DIR:-target}/release/longtail
out=${OUT:-runs/demo}
mkdir -p "$out"
set -x
"$bin" ingest data/sample/*.jsonl -o "$out/lines.parquet"
"$bin" train-detector --input "$out/lines.parquet" --config configs/detector.toml --epochs 2 --out "$out/detector"
"$bin" score --model "$out/detector" --input "$out/lines.parquet" --detector combined --out "$out/scores.parquet"
"$bin" select --input "$out/scores.parquet" --top-k 100 --out "$out/candidates.parquet"
"$bin" label "$out/candidates.parquet" --labeler "oracle:$out/lines.parquet" -o "$out/labels.parquet" 2>&1 \
  | { grep -v "the oracle file has no benign/malicious label" >&2 || true; }   # otrf lines are unlabeled
set +x
echo "demo: done. Benign anomalies for augmentation: $out/labels.benign.parquet; for review: $out/labels.review.parquet" >&2
