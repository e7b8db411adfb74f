#!/usr/bin/env bash
# The four rates in one run: detector training and scoring, classifier training and
# classifying, each on Burn flex and on the PyTorch reference of the same network and
# procedure, on THREADS threads and on 1 thread, with the ratio Burn / PyTorch of the same
# thread count and the load average beside every row. It calls scripts/bench_detector.sh
# (default detector config, configs/detector.toml) and scripts/bench_classifier.sh (the
# classifier recipe of configs/full.toml, one network) without their wgpu rows, and reads
# their results.tsv. About 10 minutes on 2 cores with the default sizes.
# docs/benchmarks.md ("All four rates") records a run.
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
# Other processes distort every figure: compare ratios within one run, on an idle machine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-/tmp/longtail-bench-all}"
CORPUS="${CORPUS:-$ROOT/../shared/data/cmdlines}"
THREADS="${THREADS:-$(nproc)}"
STEP_TIMEOUT="${STEP_TIMEOUT:-600}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
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
env "${DET_ENV[@]}" "$HERE/bench_detector.sh" "$CORPUS" "$WORK/detector" > "$WORK/detector.md"
CLS_ENV=(SKIP_WGPU_CPU=1 ONE_THREAD=1 THREADS="$THREADS" STEP_TIMEOUT="$STEP_TIMEOUT"
  DATA="$CORPUS" LINES="${CLASSIFIER_LINES:-10000}" SCORE_LINES="${SCORE_LINES:-20000}")
[[ -n ${CLASSIFIER_CONFIG:-} ]] && CLS_ENV+=(CONFIG="$CLASSIFIER_CONFIG")
env "${CLS_ENV[@]}" "$HERE/bench_classifier.sh" "$WORK/classifier" > "$WORK/classifier.md"

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/')"
echo
echo "All four rates: commit $COMMIT, started $START, $((SECONDS - t0)) s; $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
echo "load average (1, 5, 15 min) at the start: $LOAD0; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "detector: $(sed -n 's/^Detector throughput: //p' "$WORK/detector.md"); $(sed -n 's/^objective: //p' "$WORK/detector.md")"
echo "classifier: $(sed -n 's/^network: //p' "$WORK/classifier.md")"
echo
python3 - "$WORK/detector/results.tsv" "$WORK/classifier/results.tsv" <<'EOF'
import sys

def num(x):
    try:
        return float(x)
    except ValueError:
        return None

# (network, task, threads) -> {"burn": (rate, load), "torch": (rate, load)}
rows = {}
def put(net, task, threads, side, rate, load):
    rows.setdefault((net, task, int(threads)), {})[side] = (rate, load)

for line in open(sys.argv[1]):
    r = line.rstrip("\n").split("\t")
    if len(r) < 8:
        continue
    side = "torch" if r[0].startswith("pytorch") else "burn" if r[0].startswith("burn-flex") else None
    if side:
        load = f"{r[6]} / {r[7]}"
        put("detector", "train", r[5], side, r[1], load)
        put("detector", "score", r[5], side, r[2], load)
for line in open(sys.argv[2]):
    r = line.rstrip("\n").split("\t")
    if len(r) < 6 or r[0] not in ("burn flex", "pytorch"):
        continue
    side = "torch" if r[0] == "pytorch" else "burn"
    load = f"{r[4]} / {r[5]}"
    put("classifier", "train", r[1], side, r[2], load)
    put("classifier", "classify", r[1], side, r[3], load)

print("| network | rate (lines/s) | threads | Burn flex | PyTorch | Burn / PyTorch | load: flex row | load: PyTorch row |")
print("|---|---|---|---:|---:|---:|---|---|")
for (net, task, threads), v in sorted(rows.items(), key=lambda kv: (kv[0][0] != "detector", -kv[0][2], kv[0][1] not in ("train",))):
    b, t = v.get("burn", ("-", "-")), v.get("torch", ("-", "-"))
    ratio = f"**{num(b[0]) / num(t[0]):.2f}**" if num(b[0]) and num(t[0]) else "-"
    print(f"| {net} | {task} | {threads} | {b[0]} | {t[0]} | {ratio} | {b[1]} | {t[1]} |")
EOF
echo
echo "Load: before / after the step (a detector PyTorch row trains and scores in one process)."
echo "The two scripts' own tables (1-epoch losses, wall times): $WORK/detector.md, $WORK/classifier.md"
grep -h '^note:' "$WORK/detector.md" || true
