#!/usr/bin/env bash
# The main job on the bundled sample (data/sample, MIT-licensed public command lines): set up,
# then run the whole experiment of configs/demo.toml: build the datasets -> train the detectors
# on the unlabeled stream -> score -> select the top anomalies -> label them -> train the
# baseline and the augmented classifiers (plus a random-selection control and an upper bound)
# -> evaluate on a hard and an easy test -> report.
# Labels come from the ORACLE labeler (the sample's known labels), so no LLM server is needed;
# configs/demo-llm.toml labels with a local LLM instead (run scripts/setup_llm.sh first).
# Everything lands in runs/demo/ (override with OUT=...); the report is runs/demo/report/report.md.
# About four minutes on 2 CPU cores after the first build; a rerun reuses finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bin=${CARGO_TARGET_DIR:-target}/release/longtail
out=${OUT:-runs/demo}
set -x
"$bin" run --config configs/demo.toml --out "$out"
set +x
echo "demo: done. Report: $out/report/report.md; benign anomalies per arm: $out/seed-*/oracle/*/labels/augment.parquet" >&2
