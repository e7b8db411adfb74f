#!/usr/bin/env bash
# Classifier throughput benchmark: training lines/s (1 epoch) and classify lines/s of the
# experiment's classifier recipe (configs/full.toml's [classifier] sections: one network of
# its ensemble) on Burn flex, on Burn wgpu forced onto
# the CPU (--device wgpu-cpu: Mesa lavapipe), and on the PyTorch reference of the same network
# and procedure (scripts/torch_classifier_reference.py), on the same input and cores, in one
# run. Prints a table with the ratio Burn / PyTorch. docs/benchmarks.md records a run.
#
#   scripts/bench_classifier.sh [WORKDIR]        (default /tmp/longtail-bench-classifier)
#   Environment:
#     DATA=../shared/data/cmdlines   corpora (scripts/cmdline_splits.py reads them)
#     LINES=10000        labeled training lines sampled (seed 42) from the hard split's train set
#     SCORE_LINES=20000  lines classified (the hard split's train + test lines, repeated if short)
#     WGPU_CPU_LINES=200   lavapipe trains and classifies only this many lines (it is slow:
#                        every new batch shape is autotuned)
#     STEP_TIMEOUT=300   seconds allowed to each training or classify step (a step that runs
#                        out is reported as such, not as a rate)
#     THREADS=$(nproc)   cores for every implementation (RAYON_NUM_THREADS for flex,
#                        LP_NUM_THREADS for lavapipe, torch.set_num_threads for PyTorch)
#     CONFIG=configs/full.toml  a classifier TOML ([model], [optim], [training]) or an
#                        experiment TOML whose [classifier.*] sections are taken (ensemble set
#                        to 1: the rates are those of one network); byte tokens only (the
#                        PyTorch reference implements bytes only)
#     SKIP_WGPU_CPU=1, SKIP_TORCH=1     leave those rows out
#     ONE_THREAD=1       also flex and PyTorch rows on 1 thread (default 1; 0 = off): on a
#                        loaded machine PyTorch's OpenMP threads lose badly to oversubscription
#   When lavapipe's training step runs out of time, its classify row scores with the flex
#   model instead (the same weights; lavapipe's scores match flex's to ~1e-7).
#
# Timing (identical on both sides): training lines/s = lines of the epoch / time of the
# optimisation loop (OUT/config.json training.lines_per_sec on the Rust side); classify
# lines/s = lines / time to tokenize and score them (`longtail classify` prints it; reading
# and writing files excluded). Other processes distort every figure: the load average is
# printed with each row. The table also shows each side's 1-epoch train / validation loss
# (different but equally sized validation splits): close values say both do the same work.
# WORKDIR/results.tsv holds the rows for scripts/bench_all.sh. Nothing asserts: this is a
# benchmark, not a test.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
WORK="${1:-/tmp/longtail-bench-classifier}"
DATA="${DATA:-$ROOT/../shared/data/cmdlines}"
LINES="${LINES:-10000}"
SCORE_LINES="${SCORE_LINES:-20000}"
WGPU_CPU_LINES="${WGPU_CPU_LINES:-200}"
ONE_THREAD="${ONE_THREAD:-1}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
THREADS="${THREADS:-$(nproc)}"
CONFIG="${CONFIG:-$ROOT/configs/full.toml}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

mkdir -p "$WORK"

# An experiment config: its [classifier] sections become a classifier config, one network.
python3 - "$CONFIG" "$WORK/classifier.toml" <<'EOF'
import json, sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
cfg = cfg.get("classifier", cfg)
def value(v):
    return str(v).lower() if isinstance(v, bool) else json.dumps(v)
def table(v):
    return "{ " + ", ".join(f"{a} = {value(b)}" for a, b in v.items()) + " }"
out = ["ensemble = 1"]
for section in ("model", "optim", "training"):
    if section in cfg:
        out.append(f"\n[{section}]")
        out += [f"{k} = {table(v) if isinstance(v, dict) else value(v)}" for k, v in cfg[section].items()]
open(sys.argv[2], "w").write("\n".join(out) + "\n")
EOF
NET="$(python3 -c 'import tomllib,sys; m=tomllib.load(open(sys.argv[1],"rb")).get("model",{}); print("embed %s, filters %s, widths %s, pooling %s, hidden %s" % (m.get("embed_dim",32), m.get("filters",64), m.get("widths",[2,3,4,5]), m.get("pooling","max"), m.get("hidden",0)))' "$WORK/classifier.toml")"
CONFIG="$WORK/classifier.toml"

echo "building longtail (release, $CARGO_TARGET_DIR)" >&2
(cd "$ROOT" && cargo build --release --quiet --bin longtail)
LONGTAIL="$CARGO_TARGET_DIR/release/longtail"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes in src/')"

# --- input: a labeled training sample and lines to classify ------------------------------
python3 "$HERE/cmdline_splits.py" hard --data "$DATA" --out "$WORK/split" >/dev/null
python3 - "$WORK" "$LINES" "$SCORE_LINES" "$WGPU_CPU_LINES" <<'EOF'
import json, random, sys
work, n, n_score, n_wgpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
train = open(f"{work}/split/train.jsonl", encoding="utf-8").read().splitlines()
test = open(f"{work}/split/test.jsonl", encoding="utf-8").read().splitlines()
rng = random.Random(42)
sample = rng.sample(train, min(n, len(train)))
open(f"{work}/train.jsonl", "w").write("\n".join(sample) + "\n")
open(f"{work}/train-small.jsonl", "w").write("\n".join(sample[:n_wgpu]) + "\n")
cmds = [json.loads(l)["cmd"].replace("\n", " ").replace("\r", " ") for l in train + test]
rng.shuffle(cmds)
cmds = [c for c in cmds if c.strip()]
while len(cmds) < n_score:
    cmds += cmds
open(f"{work}/score.txt", "w").write("\n".join(cmds[:n_score]) + "\n")
open(f"{work}/score-small.txt", "w").write("\n".join(cmds[:n_wgpu]) + "\n")
EOF

load() { cut -d' ' -f1 /proc/loadavg; }
ROWS=()
RESULTS="$WORK/results.tsv"   # name, threads, train lines/s, classify lines/s, load before, after
: >"$RESULTS"

# One Burn row: train 1 epoch, classify, read both rates. $4: threads, $5: model to classify
# with when training runs out of time.
burn_row() {
  local device=$1 train=$2 score=$3 threads=$4 fallback=${5:-} out="$WORK/run-$1-$4t"
  rm -rf "$out"
  local l1; l1=$(load)
  local train_rate="timed out (${STEP_TIMEOUT} s)" score_rate="-" model="$out" note="" losses="-"
  if RAYON_NUM_THREADS=$threads LP_NUM_THREADS=$threads timeout "$STEP_TIMEOUT" "$LONGTAIL" -q \
      --device "$device" --seed 1 train-classifier --train "$train" --config "$CONFIG" --epochs 1 \
      --out "$out" >/dev/null 2>"$WORK/train-$device.log"; then
    read -r train_rate losses < <(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["training"]; print(round(t["lines_per_sec"][0]), "%.3f/%.3f" % (t["train_loss"][0], t["val_loss"][0]))' "$out/config.json")
  elif [[ -n $fallback ]]; then
    model=$fallback note=" (flex model)"
  else
    model=""
  fi
  if [[ -n $model ]]; then
    score_rate="timed out (${STEP_TIMEOUT} s)"
    if RAYON_NUM_THREADS=$threads LP_NUM_THREADS=$threads timeout "$STEP_TIMEOUT" "$LONGTAIL" -q \
        --device "$device" classify --model "$model" "$score" \
        -o "$WORK/scores-$device-$threads.jsonl" 2>"$WORK/classify-$device.log"; then
      score_rate=$(grep -o '([0-9]* lines/s)' "$WORK/classify-$device.log" | tr -dc 0-9)
    fi
  fi
  local l2; l2=$(load)
  ROWS+=("burn $device, $threads thread(s)|$(wc -l <"$train") lines|$train_rate|$(wc -l <"$score") lines$note|$score_rate|$losses|$l1 / $l2")
  printf 'burn %s\t%s\t%s\t%s\t%s\t%s\n' "$device" "$threads" "$train_rate" "$score_rate" "$l1" "$l2" >>"$RESULTS"
  echo "burn $device ($threads threads): train $train_rate lines/s, classify $score_rate lines/s" >&2
}

torch_row() {
  local threads=$1 l1; l1=$(load)
  json=$(python3 "$HERE/torch_classifier_reference.py" --train "$WORK/train.jsonl" \
      --score "$WORK/score.txt" --config "$CONFIG" --threads "$threads")
  read -r tr sr losses < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d["train_lines_per_sec"]), round(d["score_lines_per_sec"]), "%.3f/%.3f" % (d["train_loss"], d["val_loss"]))' "$json")
  local l2; l2=$(load)
  ROWS+=("pytorch $(python3 -c 'import torch; print(torch.__version__)') cpu, $threads thread(s)|$(wc -l <"$WORK/train.jsonl") lines|$tr|$(wc -l <"$WORK/score.txt") lines|$sr|$losses|$l1 / $l2")
  printf 'pytorch\t%s\t%s\t%s\t%s\t%s\n' "$threads" "$tr" "$sr" "$l1" "$l2" >>"$RESULTS"
  echo "pytorch ($threads threads): train $tr lines/s, classify $sr lines/s" >&2
}

burn_row flex "$WORK/train.jsonl" "$WORK/score.txt" "$THREADS"
[[ $ONE_THREAD == 1 && $THREADS != 1 ]] && burn_row flex "$WORK/train.jsonl" "$WORK/score.txt" 1
if [[ -z "${SKIP_WGPU_CPU:-}" ]]; then
  burn_row wgpu-cpu "$WORK/train-small.jsonl" "$WORK/score-small.txt" "$THREADS" "$WORK/run-flex-${THREADS}t"
fi
if [[ -z "${SKIP_TORCH:-}" ]]; then
  torch_row "$THREADS"
  [[ $ONE_THREAD == 1 && $THREADS != 1 ]] && torch_row 1
fi

# --- table --------------------------------------------------------------------------------
echo
echo "classifier benchmark: commit $COMMIT, $(date -u +%Y-%m-%dT%H:%MZ), $THREADS threads, $(nproc) cores,"
echo "network: $NET (1 epoch); load average before / after each row"
echo
echo "| implementation | trained on | train lines/s | classified | classify lines/s | 1-epoch loss train/val | vs PyTorch, same threads (train, classify) | load |"
echo "|---|---|---|---|---|---|---|---|"
# Each Burn row is compared with the PyTorch row of the same thread count.
declare -A torch_tr torch_sr
for r in "${ROWS[@]}"; do
  IFS='|' read -r name _ tr _ sr _ _ <<<"$r"
  if [[ $name == pytorch* ]]; then
    n=${name##*, }; torch_tr[$n]=$tr; torch_sr[$n]=$sr
  fi
done
for r in "${ROWS[@]}"; do
  IFS='|' read -r name tl tr sl sr ls ld <<<"$r"
  ratio="-"
  n=${name##*, }
  if [[ -n ${torch_tr[$n]:-} && $name != pytorch* ]]; then
    ratio=$(python3 -c "import sys
f = lambda a, b: f'{float(a) / float(b):.2f}x' if a.isdigit() else '-'
print(f(sys.argv[1], sys.argv[2]) + ', ' + f(sys.argv[3], sys.argv[4]))" "$tr" "${torch_tr[$n]}" "$sr" "${torch_sr[$n]}")
  fi
  echo "| $name | $tl | $tr | $sl | $sr | $ls | $ratio | $ld |"
done
