#!/usr/bin/env bash
# Benchmark of the bootstrap intervals `longtail evaluate` gives every TPR at FPR: the metrics
# alone (the reference), the top-down draw the report uses, and the plain line-by-line draw
# of the same distribution, in one run (examples/interval_cost.rs). Prints a Markdown table;
# docs/benchmarks.md records one run. A benchmark, not a test: nothing asserts. State the
# machine's load beside the figures (`uptime`): the ratio, measured in one run, is what to
# compare.
#
#   scripts/bench_evaluate.sh [LINES ...]     (default 10000 100000 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}
cargo build --release --quiet --example interval_cost
uptime
"$CARGO_TARGET_DIR/release/examples/interval_cost" "$@"
