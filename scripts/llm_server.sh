#!/usr/bin/env bash
# Serve a local model for `longtail label`: llama.cpp's llama-server on 127.0.0.1, in the
# foreground (it `exec`s, so the parent that spawned this script can kill it by its pid).
#
#   scripts/llm_server.sh MODEL [PORT]        MODEL: qwen | smollm2; PORT default 8080
#
# Ready when `GET http://127.0.0.1:PORT/health` answers 200 (503 while the model loads).
# Then label with:  --base-url http://127.0.0.1:PORT/v1 --model MODEL-NAME, where MODEL-NAME is
#   qwen2.5-coder-1.5b-instruct   (MODEL=qwen)     or   smollm2-135m-instruct   (MODEL=smollm2)
# (the server answers with whatever model it loaded; the name is what GET /v1/models lists and
# what goes into the outputs and the cache key, so keep it per model).
#
# Environment:
#   LLM_THREADS        CPU threads for generation (default 1: the machine is shared)
#   LLM_CTX            context size in tokens (default 8192: system prompt ~330 tokens, a long
#                      command line up to ~5,000, the answer up to --max-answer-tokens 1024)
#   LLM_PARALLEL       parallel slots (default 1; each gets LLM_CTX / LLM_PARALLEL tokens)
#   LONGTAIL_LLM_CACHE where scripts/setup_llm.sh put bin/ and models/ (~/.cache/longtail/llm)
# Extra llama-server flags may follow after `--`:  scripts/llm_server.sh qwen 8080 -- --verbose
set -euo pipefail

CACHE="${LONGTAIL_LLM_CACHE:-$HOME/.cache/longtail/llm}"
die() { printf '[llm_server] error: %s\n' "$*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: scripts/llm_server.sh qwen|smollm2 [PORT] [-- llama-server flags]"
case "$1" in
  qwen)
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    name="qwen2.5-coder-1.5b-instruct"
    ;;
  smollm2)
    file="SmolLM2-135M-Instruct.Q4_1.gguf"
    name="smollm2-135m-instruct"
    ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  *) die "unknown model '$1' (expected qwen or smollm2)" ;;
esac
step="$1"
shift
port=8080
if [ $# -ge 1 ] && [ "$1" != "--" ]; then
  port="$1"
  shift
fi
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
  || die "PORT must be a number in 1..65535, got '$port'"
[ $# -eq 0 ] || { [ "$1" = "--" ] && shift; }

server="$CACHE/bin/llama-server"
model="$CACHE/models/$file"
[ -x "$server" ] || die "no llama-server at $server: run scripts/setup_llm.sh server (~10 min)"
[ -f "$model" ] || die "no model at $model: run scripts/setup_llm.sh $step"

threads="${LLM_THREADS:-1}"
ctx="${LLM_CTX:-8192}"
parallel="${LLM_PARALLEL:-1}"
for v in threads ctx parallel; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "LLM_${v^^} must be a positive integer, got '${!v}'"
done

printf '[llm_server] %s on http://127.0.0.1:%s/v1 as model "%s" (%s thread(s), context %s, %s slot(s))\n' \
  "$file" "$port" "$name" "$threads" "$ctx" "$parallel" >&2
exec "$server" -m "$model" --alias "$name" --host 127.0.0.1 --port "$port" \
  -t "$threads" -tb "$threads" -c "$ctx" -np "$parallel" --no-webui "$@"
