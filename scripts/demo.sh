#!/usr/bin/env bash
# The main job on the bundled sample (data/sample, MIT-licensed public command lines):
# set up, then ingest -> train the detectors -> score -> select labeling candidates.
# Everything lands in runs/demo/ (override with OUT=...). A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin=${CARGO_TARGET_DIR:-target}/release/longtail
out=${OUT:-runs/demo}
mkdir -p "$out"
set -x
"$bin" ingest data/sample/*.jsonl --out "$out/lines.parquet"
"$bin" train-detector --input "$out/lines.parquet" --config configs/detector.toml --epochs 2 --out "$out/detector"
"$bin" score --model "$out/detector" --input "$out/lines.parquet" --detector combined --out "$out/scores.parquet"
"$bin" select --input "$out/scores.parquet" --top-k 100 --out "$out/candidates.parquet"
set +x
echo "demo: labeling candidates in $out/candidates.parquet (next: longtail label, issue 4)" >&2
