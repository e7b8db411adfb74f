#!/usr/bin/env bash
# The four rates in one run: detector training and scoring, classifier training and
# classifying, each on Burn flex and on the PyTorch reference of the same network and
# procedure, on THREADS threads and on 1 thread, with the ratio Burn / PyTorch of the same
# thread count and the load average beside every row. It calls scripts/bench_detector.sh
# (default detector config, configs/detector.toml) and scripts/bench_classifier.sh (the
# classifier recipe of configs/full.toml, one network) without their wgpu rows, and reads
# their results.tsv. About 2 minutes a round on 2 idle cores with the default sizes.
# docs/benchmarks.md ("All four rates") records a run.
#
# Rounds: with REPEATS=N both benchmarks run N times in turn, and the table gives each ratio
# as the median of the N rounds' ratios (a round's flex and PyTorch rows run a minute apart)
# with their range. One round's ratio moves by 10-30 % on a shared 2-core machine (PyTorch's
# OpenMP threads more than flex's pool): the median of several rounds is the figure to quote.
#
#   scripts/bench_all.sh [WORKDIR]                (default /tmp/longtail-bench-all)
#   Environment:
#     DETECTOR_LINES=4000     unique lines the detector trains on (1 epoch) and scores
#     CLASSIFIER_LINES=10000  labeled lines the classifier trains on (1 epoch)
#     SCORE_LINES=20000       lines classified
#     THREADS=$(nproc)        the multi-threaded rows (1-thread rows are always added)
#     CORPUS=../shared/data/cmdlines   where both benchmarks sample their lines
#     DETECTOR_CONFIG, CLASSIFIER_CONFIG   passed on as CONFIG (defaults: see the scripts)
#     STEP_TIMEOUT=600        seconds allowed to each training or scoring step
#     REPEATS=1               rounds (above)
#     NETWORKS="detector classifier"   which benchmarks run (NETWORKS=classifier: an A/B of a
#                             classifier change in half the time)
# Other processes distort every figure: compare ratios within one run, on an idle machine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-/tmp/longtail-bench-all}"
CORPUS="${CORPUS:-$ROOT/../shared/data/cmdlines}"
THREADS="${THREADS:-$(nproc)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-600}"
REPEATS="${REPEATS:-1}"
NETWORKS="${NETWORKS:-detector classifier}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

[[ $REPEATS =~ ^[1-9][0-9]*$ ]] || {
  echo "error: REPEATS must be a positive whole number, got '$REPEATS'" >&2
  exit 2
}
for net in $NETWORKS; do
  [[ $net == detector || $net == classifier ]] || {
    echo "error: NETWORKS takes 'detector' and/or 'classifier', got '$net'" >&2
    exit 2
  }
done
mkdir -p "$WORK"

if ! python3 -c 'import torch, numpy, pyarrow' 2>/dev/null; then
  echo "installing torch (CPU), numpy, pyarrow" >&2
  python3 -m pip install -q numpy pyarrow
  python3 -c 'import torch' 2>/dev/null ||
    python3 -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu ||
    python3 -m pip install -q torch
fi
echo "building longtail (release, $CARGO_TARGET_DIR)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin longtail)

START=$(date -u +%Y-%m-%dT%H:%MZ)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
t0=$SECONDS
DET_ENV=(SKIP_WGPU_CPU=1 ONE_THREAD=1 THREADS="$THREADS" STEP_TIMEOUT="$STEP_TIMEOUT"
  LINES="${DETECTOR_LINES:-4000}")
[[ -n ${DETECTOR_CONFIG:-} ]] && DET_ENV+=(CONFIG="$DETECTOR_CONFIG")
CLS_ENV=(SKIP_WGPU_CPU=1 ONE_THREAD=1 THREADS="$THREADS" STEP_TIMEOUT="$STEP_TIMEOUT"
  DATA="$CORPUS" LINES="${CLASSIFIER_LINES:-10000}" SCORE_LINES="${SCORE_LINES:-20000}")
[[ -n ${CLASSIFIER_CONFIG:-} ]] && CLS_ENV+=(CONFIG="$CLASSIFIER_CONFIG")

# Round 1 writes WORK/detector and WORK/classifier, round i > 1 WORK/round-i/...
round_dir() { if (($1 == 1)); then echo "$WORK"; else echo "$WORK/round-$1"; fi; }
ROUND_DIRS=()
for ((round = 1; round <= REPEATS; round++)); do
  dir=$(round_dir "$round")
  ROUND_DIRS+=("$dir")
  mkdir -p "$dir"
  ((REPEATS == 1)) || echo "round $round of $REPEATS" >&2
  if [[ " $NETWORKS " == *" detector "* ]]; then
    env "${DET_ENV[@]}" "$HERE/bench_detector.sh" "$CORPUS" "$dir/detector" >"$dir/detector.md"
  fi
  if [[ " $NETWORKS " == *" classifier "* ]]; then
    env "${CLS_ENV[@]}" "$HERE/bench_classifier.sh" "$dir/classifier" >"$dir/classifier.md"
  fi
done

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/')"
echo
echo "All four rates: commit $COMMIT, started $START, $((SECONDS - t0)) s, $REPEATS round(s); $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
echo "load average (1, 5, 15 min) at the start: $LOAD0; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -f $WORK/detector.md ]]; then
  echo "detector: $(sed -n 's/^Detector throughput: //p' "$WORK/detector.md"); $(sed -n 's/^objective: //p' "$WORK/detector.md")"
fi
if [[ -f $WORK/classifier.md ]]; then
  echo "classifier: $(sed -n 's/^network: //p' "$WORK/classifier.md")"
fi
echo
python3 - "${ROUND_DIRS[@]}" <<'PY'
import os, statistics, sys

def num(x):
    try:
        return float(x)
    except ValueError:
        return None

# (network, task, threads) -> {"burn": [(rate, load), one per round], "torch": [...]}
rows = {}
def put(net, task, threads, side, rate, load):
    rows.setdefault((net, task, int(threads)), {}).setdefault(side, []).append((rate, load))

def tsv(path):
    return [l.rstrip("\n").split("\t") for l in open(path)] if os.path.exists(path) else []

for d in sys.argv[1:]:
    for r in tsv(f"{d}/detector/results.tsv"):
        if len(r) < 8:
            continue
        side = "torch" if r[0].startswith("pytorch") else "burn" if r[0].startswith("burn-flex") else None
        if side:
            load = f"{r[6]} / {r[7]}"
            put("detector", "train", r[5], side, r[1], load)
            put("detector", "score", r[5], side, r[2], load)
    for r in tsv(f"{d}/classifier/results.tsv"):
        if len(r) < 6 or r[0] not in ("burn flex", "pytorch"):
            continue
        side = "torch" if r[0] == "pytorch" else "burn"
        load = f"{r[4]} / {r[5]}"
        put("classifier", "train", r[1], side, r[2], load)
        put("classifier", "classify", r[1], side, r[3], load)

def rate(runs):
    rates = [num(r) for r, _ in runs if num(r)]
    if not rates:
        return runs[0][0] if runs else "-"
    value = statistics.median(rates)
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"

rounds = len(sys.argv) - 1
multi = rounds > 1
if multi:
    print(f"Rates: medians of {rounds} rounds. Burn / PyTorch: the median of the rounds' ratios,")
    print("with their range beside it.")
    print()
print("| network | rate (lines/s) | threads | Burn flex | PyTorch | Burn / PyTorch |"
      + (" range over rounds |" if multi else "") + " load: flex row | load: PyTorch row |")
print("|---|---|---|---:|---:|---:|" + ("---|" if multi else "") + "---|---|")
order = lambda kv: (kv[0][0] != "detector", -kv[0][2], kv[0][1] != "train")
for (net, task, threads), v in sorted(rows.items(), key=order):
    burn, torch = v.get("burn", []), v.get("torch", [])
    ratios = [num(b[0]) / num(t[0]) for b, t in zip(burn, torch) if num(b[0]) and num(t[0])]
    ratio = f"**{statistics.median(ratios):.2f}**" if ratios else "-"
    spread = f" {min(ratios):.2f}-{max(ratios):.2f} |" if ratios else " - |"
    loads = lambda runs: "; ".join(l for _, l in runs) or "-"
    print(f"| {net} | {task} | {threads} | {rate(burn)} | {rate(torch)} | {ratio} |"
          + (spread if multi else "") + f" {loads(burn)} | {loads(torch)} |")
PY
echo
echo "Load: before / after the step (a detector PyTorch row trains and scores in one process)."
echo "The two scripts' own tables (1-epoch losses, wall times): $WORK/detector.md, $WORK/classifier.md (round i > 1: $WORK/round-i/)"
if [[ -f $WORK/detector.md ]]; then grep -h '^note:' "$WORK/detector.md" || true; fi
