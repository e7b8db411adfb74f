#!/usr/bin/env bash
# The four throughputs on a real GPU through wgpu/Vulkan: one prepared script for whenever a
# GPU machine is at hand (NVIDIA with its Vulkan driver; AMD/Intel through Mesa work too).
# It checks the Vulkan adapter, builds the release binary, trains the default detector config
# with --device wgpu on a larger input and scores it, then trains the classifier (CLS_CONFIG,
# default configs/classifier.toml; the shipped model, configs/shipped.toml, is 3 such networks
# with max + mean pooling) on the labeled hard split of the corpus and classifies, and prints
# lines/s and the adapter name.
# Each step runs under a time limit, so a hung driver cannot eat the machine's time.
# With a CUDA build of torch present it also runs the PyTorch reference on CUDA.
#
#   scripts/bench_gpu.sh [WORKDIR]                 (default /tmp/longtail-bench-gpu)
#   Environment:
#     LINES=50000       lines in the input (unique: lines drawn beyond the corpus's unique
#                       lines get 1-3 random byte edits; seed 42)
#     EPOCHS=2          training epochs; epoch 1 includes shader compilation and autotuning,
#                       so the table reports the last epoch (steady state) and the first
#     STEP_TIMEOUT=300  seconds allowed to each step (build excluded: BUILD_TIMEOUT=3600)
#     CONFIG=configs/detector.toml   BATCH_TOKENS=262144 (scoring)  CLS_BATCH_TOKENS=524288 (classify)
#                       (a GPU wants batches far above the CPU defaults: docs/benchmarks.md, GPU)
#     DEVICE=wgpu       the longtail device; DEVICE=wgpu-cpu dry-runs this script on lavapipe
#     SKIP_TORCH=1      skip the PyTorch CUDA reference
#     CLS_CONFIG=configs/classifier.toml  CLS_EPOCHS=2  CLS_LINES=0 (0 = the whole hard
#                       split's training set, ~42k lines, and classify scores train + test
#                       lines; N = a seeded sample of N lines, classified themselves)
#     SKIP_CLASSIFIER=1 skip the classifier rows
#     LONGTAIL_BIN=PATH use this binary instead of building one (a machine without Rust)
#     OFFLINE=1         never try to install vulkan-tools (a machine without a package registry)
#     CORPUS=../shared/data/cmdlines   (a directory of *.jsonl, or one .jsonl/.parquet file)
# Exit status: 0 when training and scoring both ran; 1 when a step failed or timed out;
# 2 when no usable GPU adapter was found (nothing was run).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-/tmp/longtail-bench-gpu}"
LINES="${LINES:-50000}"
EPOCHS="${EPOCHS:-2}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-3600}"
CONFIG="${CONFIG:-$ROOT/configs/detector.toml}"
BATCH_TOKENS="${BATCH_TOKENS:-262144}"
CLS_BATCH_TOKENS="${CLS_BATCH_TOKENS:-524288}"
DEVICE="${DEVICE:-wgpu}"
CORPUS="${CORPUS:-$ROOT/../shared/data/cmdlines}"
SEED=42
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
mkdir -p "$WORK"
say() { echo "[bench_gpu] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# --- 1. the GPU and its Vulkan driver ---------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  say "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
  # Any one of these is enough (`ls a b` fails when either is missing, so test each).
  icd_found=0
  for icd in /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json \
      /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json; do
    [ -f "$icd" ] && icd_found=1
  done
  if [ "$icd_found" = 0 ]; then
    say "warning: no NVIDIA Vulkan ICD (nvidia_icd.json) found. In a container, start it with"
    say "  NVIDIA_DRIVER_CAPABILITIES=all (or compute,utility,graphics) so the driver's Vulkan"
    say "  library and ICD file are mounted; on a host, install the driver's Vulkan package."
  fi
fi
if ! command -v vulkaninfo >/dev/null && [ "${OFFLINE:-0}" != 1 ]; then
  say "installing vulkan-tools (vulkaninfo) and the Vulkan loader"
  timeout 120 as_root apt-get install -y -q vulkan-tools libvulkan1 >/dev/null 2>&1 ||
    { timeout 120 as_root apt-get update -q >/dev/null 2>&1 && timeout 120 as_root apt-get install -y -q vulkan-tools libvulkan1 >/dev/null 2>&1; } ||
    say "could not install vulkan-tools; continuing without vulkaninfo"
fi
ADAPTERS="$WORK/vulkaninfo.txt"
if command -v vulkaninfo >/dev/null; then
  timeout 60 vulkaninfo --summary > "$ADAPTERS" 2>&1 || true
  say "Vulkan devices (vulkaninfo --summary):"
  grep -E "deviceName|deviceType|driverName|apiVersion" "$ADAPTERS" | sed 's/^/    /' >&2 || true
  if [ "$DEVICE" = wgpu ] && ! grep -qE "PHYSICAL_DEVICE_TYPE_(DISCRETE|INTEGRATED)_GPU" "$ADAPTERS"; then
    say "error: Vulkan reports no discrete or integrated GPU (only: $(grep deviceName "$ADAPTERS" | sed 's/.*= //' | paste -sd, -))."
    say "Install the GPU's Vulkan driver (NVIDIA: the driver's libnvidia-gl / Vulkan ICD), or"
    say "run DEVICE=wgpu-cpu $0 to dry-run on lavapipe."
    exit 2
  fi
fi

# --- 2. build ---------------------------------------------------------------------------------
if [ -n "${LONGTAIL_BIN:-}" ]; then
  LONGTAIL="$LONGTAIL_BIN"
  say "using $LONGTAIL ($("$LONGTAIL" --version 2>&1))"
else
  say "building longtail (release, $CARGO_TARGET_DIR)"
  (cd "$ROOT" && timeout "$BUILD_TIMEOUT" cargo build --release --quiet --bin longtail)
  LONGTAIL="$CARGO_TARGET_DIR/release/longtail"
fi

# --- 3. input ---------------------------------------------------------------------------------
INPUT="$WORK/input.parquet"
if ! python3 -c 'import pyarrow' 2>/dev/null; then python3 -m pip install -q pyarrow; fi
python3 - "$CORPUS" "$LINES" "$SEED" "$INPUT" <<'EOF'
import glob, json, os, random, sys
import pyarrow as pa, pyarrow.parquet as pq
src, n, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
key = f"{os.path.abspath(src)} {n} {seed}"
if os.path.exists(out) and os.path.exists(out + ".src") and open(out + ".src").read() == key:
    sys.exit(0)
paths = sorted(glob.glob(os.path.join(src, "*.jsonl"))) if os.path.isdir(src) else [src]
seen, cmds = set(), []
for p in paths:
    rows = (pq.read_table(p, columns=["cmd"]).column("cmd").to_pylist() if p.endswith(".parquet")
            else [json.loads(r).get("cmd") for r in open(p, encoding="utf-8") if r.strip()])
    for c in rows:
        if c and c not in seen:
            seen.add(c)
            cmds.append(c)
if not cmds:
    sys.exit(f"no command lines in {src}")
rng = random.Random(seed)
sample = rng.sample(cmds, min(n, len(cmds)))
alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-_./"
while len(sample) < n:  # more lines than the corpus has: edited copies, kept unique
    c = list(rng.choice(cmds))
    for _ in range(rng.randint(1, 3)):
        c[rng.randrange(len(c))] = rng.choice(alphabet)
    c = "".join(c)
    if c not in seen:
        seen.add(c)
        sample.append(c)
pq.write_table(pa.table({"cmd": sample}), out + ".tmp")
os.replace(out + ".tmp", out)
open(out + ".src", "w").write(key)
print(f"input: {len(sample)} unique lines ({len(cmds)} in the corpus)", file=sys.stderr)
EOF

# --- 4. which adapter wgpu takes ------------------------------------------------------------
# `--device auto` logs the real GPU it finds ("device: wgpu: NAME (DiscreteGpu, Vulkan)");
# an isolation-forest-only run on a few lines is the cheapest command that resolves a device.
PROBE_IN="$WORK/probe.txt"
printf 'ls -la\ngit status\n' > "$PROBE_IN"
PROBE_DEVICE=auto
[ "$DEVICE" = wgpu-cpu ] && PROBE_DEVICE=wgpu-cpu
if ! timeout 120 "$LONGTAIL" --device "$PROBE_DEVICE" train-detector --input "$PROBE_IN" --out "$WORK/probe" \
    --detector iforest > "$WORK/probe.log" 2>&1; then
  say "error: the adapter probe failed:"; tail -5 "$WORK/probe.log" >&2; exit 1
fi
ADAPTER=$(sed -n 's/.*device: //p' "$WORK/probe.log" | head -1)
say "longtail device: $ADAPTER"
if [ "$DEVICE" = wgpu ] && [[ "$ADAPTER" != wgpu:* ]]; then
  say "error: wgpu found no GPU adapter (longtail would fall back to flex). Check the Vulkan driver above."
  exit 2
fi

# --- 5. train and score ---------------------------------------------------------------------
FAILED=0
OUT="$WORK/model"
rm -rf "$OUT"
say "training $EPOCHS epochs on $LINES lines with --device $DEVICE (limit ${STEP_TIMEOUT}s)"
T0=$SECONDS
if timeout "$STEP_TIMEOUT" "$LONGTAIL" -q --device "$DEVICE" --seed "$SEED" train-detector --input "$INPUT" \
    --out "$OUT" --config "$CONFIG" --epochs "$EPOCHS" --detector autoencoder > "$WORK/train.log" 2>&1; then
  TRAIN_WALL=$((SECONDS - T0))
  read -r TRAIN_FIRST TRAIN_LAST < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["lines_per_sec"]; print(round(v[0]), round(v[-1]))' "$OUT/checkpoint/state.json")
else
  rc=$?; FAILED=1; TRAIN_WALL=$((SECONDS - T0)); TRAIN_FIRST="-"; TRAIN_LAST="-"
  say "training failed (exit $rc$([ $rc = 124 ] && echo ': timed out')):"; tail -5 "$WORK/train.log" >&2
  # A timed-out run may still have finished epochs: report them.
  if [ -s "$OUT/checkpoint/state.json" ]; then
    read -r TRAIN_FIRST TRAIN_LAST < <(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["lines_per_sec"]; print(round(v[0]), round(v[-1]))' "$OUT/checkpoint/state.json")
  fi
fi

SCORES=()
if [ -s "$OUT/model.safetensors" ]; then
  # Twice: the first run compiles and autotunes kernels (cubecl caches them on disk).
  for run in 1 2; do
    say "scoring, run $run (limit ${STEP_TIMEOUT}s)"
    if timeout "$STEP_TIMEOUT" "$LONGTAIL" -q --device "$DEVICE" score --model "$OUT" --input "$INPUT" \
        --out "$WORK/scores.parquet" --detector autoencoder --batch-tokens "$BATCH_TOKENS" > "$WORK/score$run.log" 2>&1; then
      SCORES+=("$(sed -n 's/.*(\([0-9.]*\) lines\/s).*/\1/p' "$WORK/score$run.log" | tail -1)")
    else
      rc=$?; FAILED=1; SCORES+=("-")
      say "scoring failed (exit $rc$([ $rc = 124 ] && echo ': timed out')):"; tail -5 "$WORK/score$run.log" >&2
    fi
  done
else
  FAILED=1; SCORES=("-" "-")
fi

TORCH_ROW=""
if [ "${SKIP_TORCH:-0}" != 1 ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  say "PyTorch reference on CUDA (limit ${STEP_TIMEOUT}s)"
  if timeout "$STEP_TIMEOUT" python3 "$HERE/torch_reference.py" --device cuda --input "$INPUT" --config "$CONFIG" \
      --epochs "$EPOCHS" --score-batch-tokens "$BATCH_TOKENS" --seed "$SEED" > "$WORK/pytorch.json" 2> "$WORK/pytorch.log"; then
    TORCH_ROW=$(python3 - "$WORK/pytorch.json" <<'PYEOF'
import json, sys
d = json.load(open(sys.argv[1]))
e = d["epochs"]
print(f"| PyTorch {d['torch']} CUDA ({d['gpu']}) | {e[0]['lines_per_sec']:.0f} | {e[-1]['lines_per_sec']:.0f} "
      f"| {d['score_lines_per_sec']:.0f} | - |")
PYEOF
)
  else
    say "PyTorch CUDA run failed: $(tail -1 "$WORK/pytorch.log")"
  fi
fi

# --- 6. the classifier: train and classify ----------------------------------------------------
CLS_ROW=""
if [ "${SKIP_CLASSIFIER:-0}" != 1 ] && [ -d "$CORPUS" ]; then
  CLS_CONFIG="${CLS_CONFIG:-$ROOT/configs/classifier.toml}"
  CLS_EPOCHS="${CLS_EPOCHS:-2}"
  python3 "$HERE/cmdline_splits.py" hard --data "$CORPUS" --out "$WORK/split" >/dev/null
  CLS_TRAIN="$WORK/split/train.jsonl"
  if [ "${CLS_LINES:-0}" != 0 ]; then
    python3 -c 'import random,sys; r=open(sys.argv[1]).read().splitlines(); random.Random(42).shuffle(r); open(sys.argv[2],"w").write("\n".join(r[:int(sys.argv[3])])+"\n")' \
        "$WORK/split/train.jsonl" "$WORK/cls_train.jsonl" "$CLS_LINES"
    CLS_TRAIN="$WORK/cls_train.jsonl"
  fi
  if [ "${CLS_LINES:-0}" != 0 ]; then
    cp "$CLS_TRAIN" "$WORK/cls_score.jsonl"   # a small dry run classifies its own lines
  else
    cat "$CLS_TRAIN" "$WORK/split/test.jsonl" > "$WORK/cls_score.jsonl"
  fi
  CLS_OUT="$WORK/classifier"
  rm -rf "$CLS_OUT"
  say "classifier: training $CLS_EPOCHS epochs on $(wc -l < "$CLS_TRAIN") lines with --device $DEVICE (limit ${STEP_TIMEOUT}s)"
  CLS_TRAIN_RATE="-"; CLS_SCORE=("-" "-")
  if timeout "$STEP_TIMEOUT" "$LONGTAIL" -q --device "$DEVICE" --seed "$SEED" train-classifier --train "$CLS_TRAIN" \
      --config "$CLS_CONFIG" --epochs "$CLS_EPOCHS" --out "$CLS_OUT" > "$WORK/cls_train.log" 2>&1; then
    CLS_TRAIN_RATE=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["training"]["lines_per_sec"]; print(round(v[0]), "/", round(v[-1]))' "$CLS_OUT/config.json")
    for run in 1 2; do
      if timeout "$STEP_TIMEOUT" "$LONGTAIL" --device "$DEVICE" classify --model "$CLS_OUT" "$WORK/cls_score.jsonl" \
          --batch-tokens "$CLS_BATCH_TOKENS" -o "$WORK/cls_scores.jsonl" > "$WORK/cls_score$run.log" 2>&1; then
        CLS_SCORE[$((run - 1))]="$(sed -n 's/.*(\([0-9.]*\) lines\/s).*/\1/p' "$WORK/cls_score$run.log" | tail -1)"
      else
        FAILED=1; say "classify failed:"; tail -3 "$WORK/cls_score$run.log" >&2
      fi
    done
  else
    rc=$?; FAILED=1
    say "classifier training failed (exit $rc$([ $rc = 124 ] && echo ': timed out')):"; tail -5 "$WORK/cls_train.log" >&2
  fi
  CLS_ROW="| longtail --device $DEVICE, classifier ($(basename "$CLS_CONFIG")) | $CLS_TRAIN_RATE | ${CLS_SCORE[0]} | ${CLS_SCORE[1]} |"
  if [ "${SKIP_TORCH:-0}" != 1 ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    say "PyTorch classifier reference on CUDA (limit ${STEP_TIMEOUT}s)"
    python3 -c 'import json,sys; [print(json.loads(l)["cmd"].replace("\n"," ")) for l in open(sys.argv[1]) if l.strip()]' \
        "$WORK/cls_score.jsonl" > "$WORK/cls_score.txt"
    if timeout "$STEP_TIMEOUT" python3 "$HERE/torch_classifier_reference.py" --device cuda --train "$CLS_TRAIN" \
        --score "$WORK/cls_score.txt" --config "$CLS_CONFIG" --epochs "$CLS_EPOCHS" > "$WORK/cls_pytorch.json" 2> "$WORK/cls_pytorch.log"; then
      CLS_ROW="$CLS_ROW
$(python3 -c 'import json,sys,torch; d=json.load(open(sys.argv[1])); print("| PyTorch %s CUDA (%s), classifier | %.0f (mean of %s epochs) | %.0f | - |" % (torch.__version__, torch.cuda.get_device_name(), d["train_lines_per_sec"], sys.argv[2], d["score_lines_per_sec"]))' "$WORK/cls_pytorch.json" "$CLS_EPOCHS")"
    else
      say "PyTorch CUDA classifier run failed: $(tail -1 "$WORK/cls_pytorch.log")"
    fi
  fi
fi

# --- 7. report --------------------------------------------------------------------------------
echo
echo "GPU detector throughput: $(python3 -c 'import pyarrow.parquet as pq,sys; print(pq.read_metadata(sys.argv[1]).num_rows)' "$INPUT") lines, $(basename "$CONFIG"), $EPOCHS epochs, --device $DEVICE"
echo "adapter: $ADAPTER"
[ -s "$ADAPTERS" ] && echo "vulkan: $(grep -m1 deviceName "$ADAPTERS" | sed 's/.*= //'), driver $(grep -m1 driverInfo "$ADAPTERS" | sed 's/.*= //')"
echo "host: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
echo "| implementation | train lines/s, epoch 1 | train lines/s, epoch $EPOCHS | score lines/s (run 1) | score lines/s (run 2) |"
echo "|---|---|---|---|---|"
echo "| longtail --device $DEVICE | $TRAIN_FIRST | $TRAIN_LAST | ${SCORES[0]:--} | ${SCORES[1]:--} |"
[ -n "$TORCH_ROW" ] && echo "$TORCH_ROW"
echo "training wall ${TRAIN_WALL}s; logs in $WORK"
if [ -n "$CLS_ROW" ]; then
  echo
  echo "| classifier | train lines/s, epoch 1 / last | classify lines/s (run 1) | classify lines/s (run 2) |"
  echo "|---|---|---|---|"
  echo "$CLS_ROW"
fi
exit "$FAILED"
