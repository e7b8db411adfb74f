#!/usr/bin/env bash
# The test command: install what the tests need, then run them all in the release profile
# (the same profile as the binary, so dependencies are built once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Mesa's Vulkan device-select layer asks for a Wayland display and prints XDG_RUNTIME_DIR
# errors on a headless machine; the binary turns it off itself, the test harness here.
export NODEVICE_SELECT=1
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  export LONGTAIL_REQUIRE_WGPU=1   # the wgpu-cpu tests must run, not skip
fi
if python3 -c 'import numpy, safetensors.numpy' 2>/dev/null; then
  export LONGTAIL_REQUIRE_PYTHON=1  # the Python loader must agree with classify, not skip
fi
cargo test --release --locked "$@"
