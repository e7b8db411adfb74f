#!/usr/bin/env bash
# Install what longtail needs on a fresh Debian/Ubuntu machine, then build it (release).
#   - a Rust toolchain (cargo) must already be on PATH (rustup);
#   - mesa-vulkan-drivers gives wgpu a CPU adapter (lavapipe), so `--device wgpu-cpu` and the
#     GPU-path tests run without a GPU;
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

echo "setup: building longtail (release; the first build takes a while)" >&2
cargo build --release --locked --bin longtail
