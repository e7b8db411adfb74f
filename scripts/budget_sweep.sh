#!/usr/bin/env bash
# Budget sweep of an experiment: the same arms at several label budgets, reusing one finished
# run's data, detectors and baselines (copied, never shared: the base run stays as it was), then
# one table of every arm's gain with its 95 % interval at each budget (scripts/sweep_table.py).
#
#   scripts/budget_sweep.sh CONFIG BASE_RUN [BUDGETS] [-- extra `longtail run` flags]
#   scripts/budget_sweep.sh configs/ops.toml runs/ops "250 1500 5000" -- --seeds 1 \
#       --arms baseline,autoencoder,iforest,random,diversity
#
# BASE_RUN is a finished `longtail run --config CONFIG` (its budget is one point of the sweep);
# each other budget N runs in BASE_RUN-bN. The table goes to BASE_RUN-sweep.md and stdout; the
# whole-stream upper bound (for "gap closed") comes from BASE_RUN when it has that arm.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
[[ $# -ge 2 ]] || { sed -n '2,12p' "$0"; exit 2; }
CONFIG=$1 BASE=$2
BUDGETS=${3:-"250 500 1500 5000"}
shift $(( $# >= 3 ? 3 : 2 ))
[[ ${1:-} == "--" ]] && shift
EXTRA=("$@")
[[ -f $BASE/report/results.json ]] || { echo "error: $BASE has no report/results.json: run \`longtail run --config $CONFIG --out $BASE\` first" >&2; exit 2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build --release --quiet --bin longtail
BIN=$CARGO_TARGET_DIR/release/longtail

RUNS=("$BASE")
for n in $BUDGETS; do
  out="$BASE-b$n"
  if [[ ! -d $out ]]; then
    # What every budget shares: the datasets and, per seed, the detector, its stream scores
    # and the baseline.
    mkdir -p "$out"
    cp -r "$BASE/data" "$out/"
    for seed_dir in "$BASE"/seed-*; do
      mkdir -p "$out/$(basename "$seed_dir")"
      for shared in detector scores baseline; do
        [[ -d $seed_dir/$shared ]] && cp -r "$seed_dir/$shared" "$out/$(basename "$seed_dir")/"
      done
    done
  fi
  echo "== budget $n: $out" >&2
  "$BIN" run --config "$CONFIG" --out "$out" --budget "$n" "${EXTRA[@]}"
  RUNS+=("$out")
done
python3 scripts/sweep_table.py "${RUNS[@]}" | tee "$BASE-sweep.md"
