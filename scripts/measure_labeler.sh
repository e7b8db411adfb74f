#!/usr/bin/env bash
# Measure `longtail label` with a real local model on labeled command lines (docs/labeler.md).
#
#   scripts/measure_labeler.sh MODEL [SHARED_DIR]       MODEL: qwen | smollm2
#
# 1. a stratified, seeded sample of 120 unique labeled lines (scripts/measure_labeler.py sample:
#    60 rare benign, 20 common benign, 40 malicious) from SHARED_DIR (../shared/data/cmdlines);
# 2. scripts/llm_server.sh MODEL on a free loopback port, timed until /health answers;
# 3. `longtail label` on the sample, with its answer cache: a killed run loses nothing, and
#    running this script again asks only what is missing;
# 4. scripts/measure_labeler.py report: precisions, recalls, unparsed rate, seconds per answer,
#    confusion by source.
#
# Environment: MEASURE_DIR (default ~/.cache/longtail/measure_labeler) for the sample, the
# outputs and the cache; LONGTAIL_BIN (default: cargo build --release); LLM_THREADS (default 1),
# PORT (default 18431); SEED (default 20261129); MAX_ANSWER_TOKENS (default 1024); PROMPT (a
# prompt file, default the built-in one); MAX_REQUESTS (stop after N requests: the rest are
# `skipped` and left out of the figures; the sample is shuffled, so the answered lines are a
# random subset; rerun with a larger budget to continue from the cache).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$here/.." && pwd)"
root="$(dirname "$here")"
model="${1:-}"
shared="${2:-$root/../shared/data/cmdlines}"
case "$model" in
  qwen) name="qwen2.5-coder-1.5b-instruct" ;;
  smollm2) name="smollm2-135m-instruct" ;;
  *) echo "usage: scripts/measure_labeler.sh qwen|smollm2 [SHARED_DIR]" >&2; exit 2 ;;
esac
dir="${MEASURE_DIR:-$HOME/.cache/longtail/measure_labeler}"
seed="${SEED:-20261129}"
mkdir -p "$dir"

if [ -z "${LONGTAIL_BIN:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  (cd "$root" && cargo build --release --quiet)
  LONGTAIL_BIN="$CARGO_TARGET_DIR/release/longtail"
fi

sample="$dir/sample-$seed.parquet"
[ -f "$sample" ] || python3 "$here/measure_labeler.py" sample "$shared" "$sample" --seed "$seed"

# A fixed port: the answer cache is keyed by endpoint, so a rerun must use the same URL.
port="${PORT:-18431}"
if curl -s "http://127.0.0.1:$port/" >/dev/null 2>&1; then
  echo "port $port is already in use; set PORT to a free one (the cache then starts afresh)" >&2
  exit 1
fi
log="$dir/server-$model.log"
"$here/llm_server.sh" "$model" "$port" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
started=$(date +%s.%N)
until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "llama-server exited; log above" >&2; exit 1; }
  sleep 0.2
done
python3 -c 'import sys; print(f"server ready in {float(sys.argv[1]) - float(sys.argv[2]):.1f} s \
(http://127.0.0.1:{sys.argv[3]}/v1, model {sys.argv[4]})")' "$(date +%s.%N)" "$started" "$port" "$name"

tag="$model-$seed${PROMPT:+-$(basename "$PROMPT" .txt)}"
out="$dir/labels-$tag.parquet"
cache="$dir/labels-$model-$seed.cache.jsonl"
started=$(date +%s)
extra=()
[ -z "${PROMPT:-}" ] || extra+=(--prompt "$PROMPT")
[ -z "${MAX_REQUESTS:-}" ] || extra+=(--max-requests "$MAX_REQUESTS")
"$LONGTAIL_BIN" label "$sample" -o "$out" --cache "$cache" "${extra[@]}" \
  --base-url "http://127.0.0.1:$port/v1" --model "$name" \
  --concurrency 1 --timeout 600 --max-answer-tokens "${MAX_ANSWER_TOKENS:-1024}" \
  --max-consecutive-failures 3
echo "labeling took $(($(date +%s) - started)) s (answers from the cache included)"
python3 "$here/measure_labeler.py" report "$out" | tee "$dir/report-$tag.md"
