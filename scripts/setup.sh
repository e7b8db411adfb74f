#!/usr/bin/env bash
# Install what longtail needs on a fresh Debian/Ubuntu machine, then build it (release).
#   - a Rust toolchain (cargo) must already be on PATH (rustup);
#   - mesa-vulkan-drivers gives wgpu a CPU adapter (lavapipe), so `--device wgpu-cpu` and the
#     GPU-path tests run without a GPU;
#   - numpy + safetensors (pip) for scripts/load_classifier.py and its test;
#   - build: one release profile for the binary and the tests, so dependencies build once.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust from https://rustup.rs first" >&2
  exit 2
fi

have_lavapipe() { ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; }
if ! have_lavapipe; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing mesa-vulkan-drivers (wgpu on the CPU)" >&2
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "setup: warning: no lavapipe; run 'sudo apt-get install mesa-vulkan-drivers' for --device wgpu-cpu" >&2
  fi
fi

# numpy + safetensors: what scripts/load_classifier.py (the downstream loader) needs; the tests
# check it against `longtail classify`, and skip (saying so) where they cannot be installed.
if command -v python3 >/dev/null && ! python3 -c 'import numpy, safetensors.numpy' 2>/dev/null; then
  echo "setup: installing numpy and safetensors for scripts/load_classifier.py" >&2
  python3 -m pip install -q --disable-pip-version-check numpy safetensors >/dev/null 2>&1 \
    || echo "setup: warning: pip could not install numpy/safetensors; the Python loader check will skip" >&2
fi

echo "setup: building longtail (release; the first build takes a while)" >&2
cargo build --release --locked --bin longtail
