#!/usr/bin/env bash
# Detector throughput benchmark: training lines/s (1 epoch) and scoring lines/s of the
# default detector config (configs/detector.toml) on Burn flex, on Burn wgpu forced onto the
# CPU (Mesa lavapipe), and on the PyTorch reference (scripts/torch_reference.py: the same
# network and procedure), on the same input and the same cores, in one run. Prints a table
# with the ratio Burn / PyTorch. docs/benchmarks.md ("Detector throughput") records a run.
#
#   scripts/bench_detector.sh [INPUT] [WORKDIR]
#     INPUT    a .jsonl/.parquet/.txt file or a directory of *.jsonl to sample from
#              (default ../shared/data/cmdlines, i.e. $CORPUS)
#     WORKDIR  default /tmp/longtail-bench-detector
#   Environment:
#     LINES=20000        unique lines sampled (seed 42) into WORKDIR/input.parquet
#     THREADS=$(nproc)   cores for every implementation (RAYON_NUM_THREADS for flex,
#                        LP_NUM_THREADS for lavapipe, torch.set_num_threads for PyTorch)
#     CONFIG=configs/detector.toml
#     STEP_TIMEOUT=3600  seconds allowed to each training or scoring step
#     WGPU_CPU_LINES=2000  lavapipe trains and scores only the first WGPU_CPU_LINES lines of
#                        the input (it runs at ~10 lines/s on 2 cores; same length mix)
#     SKIP_WGPU_CPU=1    skip the lavapipe rows;  SKIP_TORCH=1 skip the PyTorch row
#     ONE_THREAD=1       add flex and PyTorch rows on 1 thread (scaling; shared machines)
#     EXTRA_FLEX_CONFIGS="name=path.toml ..."  more flex rows with other configs (tuning)
#
# Timing definitions (identical on both sides): training lines/s = lines drawn in the epoch /
# time of the optimisation loop (the Rust run records it as lines_per_sec in
# OUT/checkpoint/state.json); scoring lines/s = input lines / time to score and summarise
# them (`longtail score` prints it; reading and writing files excluded). Only the
# autoencoder is trained and scored (--detector autoencoder). Nothing asserts: this is a
# benchmark, not a test. Other processes on the machine distort every figure: the script
# prints the load average before each step and, in the table, before and after each row;
# run it on an idle machine. WORKDIR/results.tsv holds the rows (scripts/bench_all.sh reads
# it): name, train lines/s, score lines/s, wall s train, score, threads, load before, after.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SRC="${1:-${CORPUS:-$ROOT/../shared/data/cmdlines}}"
WORK="${2:-/tmp/longtail-bench-detector}"
LINES="${LINES:-20000}"
THREADS="${THREADS:-$(nproc)}"
CONFIG="${CONFIG:-$ROOT/configs/detector.toml}"
STEP_TIMEOUT="${STEP_TIMEOUT:-3600}"
SEED=42
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$WORK"

# --- dependencies -------------------------------------------------------------------------
if ! python3 -c 'import torch, numpy, pyarrow' 2>/dev/null; then
  echo "installing torch (CPU), numpy, pyarrow" >&2
  python3 -m pip install -q numpy pyarrow
  python3 -c 'import torch' 2>/dev/null ||
    python3 -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu ||
    python3 -m pip install -q torch
fi

echo "building longtail (release, $CARGO_TARGET_DIR)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin longtail)
LONGTAIL="$CARGO_TARGET_DIR/release/longtail"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' + uncommitted changes in src/')"
MODEL_CFG="$(python3 -c 'import tomllib,sys; m=tomllib.load(open(sys.argv[1],"rb")).get("model",{}); print(m.get("objective","masked"))' "$CONFIG" 2>/dev/null || echo '?')"

# --- input --------------------------------------------------------------------------------
INPUT="$WORK/input.parquet"
python3 - "$SRC" "$LINES" "$SEED" "$INPUT" <<'EOF'
import glob, json, os, random, sys
import pyarrow as pa, pyarrow.parquet as pq
src, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stamp = out + ".src"
key = f"{os.path.abspath(src)} {n} {seed}"
if os.path.exists(out) and os.path.exists(stamp) and open(stamp).read() == key:
    sys.exit(0)
paths = sorted(glob.glob(os.path.join(src, "*.jsonl"))) if os.path.isdir(src) else [src]
seen, cmds = set(), []
def add(c):
    if c and c not in seen:
        seen.add(c)
        cmds.append(c)
for p in paths:
    if p.endswith(".parquet"):
        for c in pq.read_table(p, columns=["cmd"]).column("cmd").to_pylist():
            add(c)
    elif p.endswith(".jsonl"):
        for row in open(p, encoding="utf-8"):
            if row.strip():
                add(json.loads(row).get("cmd"))
    else:
        for row in open(p, encoding="utf-8", errors="replace"):
            add(row.rstrip("\r\n"))
if not cmds:
    sys.exit(f"no command lines in {src}")
rng = random.Random(seed)
# Unique lines, so that one epoch = LINES draws on both sides; with fewer unique lines than
# LINES, all of them (the run then reports the smaller count).
sample = rng.sample(cmds, min(n, len(cmds)))
pq.write_table(pa.table({"cmd": sample}), out + ".tmp")
os.replace(out + ".tmp", out)
open(stamp, "w").write(key)
lens = sorted(len(c.encode()) for c in sample)
print(f"input: {len(sample)} unique lines from {len(cmds)} in {src}; bytes median {lens[len(lens)//2]}, "
      f"mean {sum(lens)/len(lens):.1f}, > 128: {sum(l > 128 for l in lens)/len(lens):.1%}", file=sys.stderr)
EOF

# --- runs ---------------------------------------------------------------------------------
RESULTS="$WORK/results.tsv"
: > "$RESULTS"
NOTES=()
export RAYON_NUM_THREADS="$THREADS" LP_NUM_THREADS="$THREADS"

load() { cut -d' ' -f1-3 /proc/loadavg; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# run_burn NAME DEVICE CONFIG [INPUT]: train 1 epoch, then score the same lines; append a row.
run_burn() {
  local name="$1" device="$2" config="$3" input="${4:-$INPUT}"
  local out="$WORK/model-$name" log="$WORK/$name" l1
  rm -rf "$out"
  l1=$(load1)
  echo "[$name] training (load $(load))" >&2
  local t0=$SECONDS
  if ! timeout "$STEP_TIMEOUT" "$LONGTAIL" -q --device "$device" --seed "$SEED" train-detector \
      --input "$input" --out "$out" --config "$config" --epochs 1 --detector autoencoder \
      > "$log.train.log" 2>&1; then
    if grep -q "needs a CPU Vulkan driver" "$log.train.log"; then
      NOTES+=("$name skipped: no CPU Vulkan adapter ($(tail -1 "$log.train.log"))")
      return 0
    fi
    NOTES+=("$name training failed or timed out after ${STEP_TIMEOUT}s: $(tail -1 "$log.train.log")")
    return 0
  fi
  local train_wall=$((SECONDS - t0))
  local train_lps
  train_lps=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["lines_per_sec"][-1], 1))' \
    "$out/checkpoint/state.json")
  echo "[$name] scoring (load $(load))" >&2
  t0=$SECONDS
  local score_lps="-"
  if timeout "$STEP_TIMEOUT" "$LONGTAIL" -q --device "$device" score --model "$out" --input "$input" \
      --out "$WORK/scores-$name.parquet" --detector autoencoder > "$log.score.log" 2>&1; then
    score_lps=$(sed -n 's/.*(\([0-9.]*\) lines\/s).*/\1/p' "$log.score.log" | tail -1)
  else
    NOTES+=("$name scoring failed or timed out after ${STEP_TIMEOUT}s: $(tail -1 "$log.score.log")")
  fi
  local score_wall=$((SECONDS - t0))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$train_lps" "${score_lps:--}" "$train_wall" "$score_wall" \
    "${RAYON_NUM_THREADS}" "$l1" "$(load1)" >> "$RESULTS"
  echo "[$name] train $train_lps lines/s, score ${score_lps:--} lines/s" >&2
}

run_burn "burn-flex" flex "$CONFIG"
if [ "${SKIP_WGPU_CPU:-0}" != 1 ]; then
  WGPU_CPU_LINES="${WGPU_CPU_LINES:-2000}"
  WGPU_INPUT="$INPUT"
  if [ "$WGPU_CPU_LINES" -lt "$(python3 -c 'import pyarrow.parquet as pq,sys; print(pq.read_metadata(sys.argv[1]).num_rows)' "$INPUT")" ]; then
    WGPU_INPUT="$WORK/input-first$WGPU_CPU_LINES.parquet"
    python3 -c 'import pyarrow.parquet as pq,sys; pq.write_table(pq.read_table(sys.argv[1]).slice(0, int(sys.argv[3])), sys.argv[2])' \
      "$INPUT" "$WGPU_INPUT" "$WGPU_CPU_LINES"
    NOTES+=("burn-wgpu-cpu ran on the first $WGPU_CPU_LINES lines of the input (WGPU_CPU_LINES)")
  fi
  run_burn "burn-wgpu-cpu" wgpu-cpu "$CONFIG" "$WGPU_INPUT"
else
  NOTES+=("burn-wgpu-cpu skipped (SKIP_WGPU_CPU=1)")
fi
for extra in ${EXTRA_FLEX_CONFIGS:-}; do
  run_burn "flex-${extra%%=*}" flex "${extra#*=}"
done
if [ "${ONE_THREAD:-0}" = 1 ]; then
  RAYON_NUM_THREADS=1 run_burn "burn-flex-1thread" flex "$CONFIG"
fi

# run_torch NAME THREADS: the PyTorch reference, training then scoring; append a row.
run_torch() {
  local name="$1" threads="$2" l1
  l1=$(load1)
  echo "[$name] training + scoring (load $(load))" >&2
  local t0=$SECONDS
  if timeout "$((2 * STEP_TIMEOUT))" python3 "$HERE/torch_reference.py" --input "$INPUT" --config "$CONFIG" \
      --threads "$threads" --epochs 1 --seed "$SEED" > "$WORK/$name.json" 2> "$WORK/$name.log"; then
    python3 - "$WORK/$name.json" "$((SECONDS - t0))" "$name" "$threads" "$l1" "$(load1)" >> "$RESULTS" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
# Process wall time covers loading, training, validation and scoring together.
print(f"{sys.argv[3]} ({d['torch']})\t{d['train_lines_per_sec']}\t{d['score_lines_per_sec']}\t"
      f"{sys.argv[2]} (train+score)\t-\t{sys.argv[4]}\t{sys.argv[5]}\t{sys.argv[6]}")
EOF
    echo "[$name] $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("train %s lines/s, score %s lines/s" % (d["train_lines_per_sec"], d["score_lines_per_sec"]))' "$WORK/$name.json")" >&2
  else
    NOTES+=("$name failed or timed out: $(tail -1 "$WORK/$name.log")")
  fi
}

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  run_torch pytorch "$THREADS"
  if [ "${ONE_THREAD:-0}" = 1 ]; then run_torch pytorch-1thread 1; fi
fi

# --- report -------------------------------------------------------------------------------
echo
echo "Detector throughput: $(python3 -c 'import pyarrow.parquet as pq,sys; print(pq.read_metadata(sys.argv[1]).num_rows)' "$INPUT") lines, config $(basename "$CONFIG"), $THREADS threads"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; load after run $(load)"
echo "objective: $MODEL_CFG; commit built: $COMMIT"
python3 - "$RESULTS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
torch = next((r for r in rows if r[0].startswith("pytorch (")), None)
def num(x):
    try:
        return float(x)
    except ValueError:
        return None
def ratio(a, b):
    a, b = num(a), num(b)
    return f"{a / b:.2f}" if a and b else "-"
hdr = ["implementation", "train lines/s", "score lines/s", "train / PyTorch", "score / PyTorch", "process wall s: train", "score", "load before / after"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for r in rows:
    tr = ratio(r[1], torch[1]) if torch else "-"
    sc = ratio(r[2], torch[2]) if torch else "-"
    print(f"| {r[0]} | {r[1]} | {r[2]} | {tr} | {sc} | {r[3]} | {r[4]} | {r[6]} / {r[7]} |")
EOF
for n in "${NOTES[@]+"${NOTES[@]}"}"; do echo "note: $n"; done
echo "logs and outputs: $WORK"
