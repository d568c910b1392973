#!/usr/bin/env bash
# Runs asyncthink's CUDA kernels on the PTX emulator (emu/): NVRTC compiles kernels/ for sm_90
# and sm_80 through the binary's own run-time path, the emulator executes them against
# references with its bounds, race and cp.async checks, and nothing may skip. Then the
# mutation check proves the suite fails on six one-line kernel bugs.
#
#   scripts/test-gpu-emulated.sh [PTX_DIR]   # reuse a set `kernels compile` already wrote
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh
cargo build --locked --release --bin asyncthink
ptx="${1:-target/emu-ptx}"
if [[ -z "${1:-}" ]]; then
    for arch in sm_90 sm_80; do
        target/release/asyncthink kernels compile --arch "$arch" --out "$ptx/$arch" >/dev/null
    done
fi
ptx="$(realpath "$ptx")"  # the tests run in emu/, so the path must not be relative
echo "== emulator: its own checks, and every kernel test on NVRTC's PTX (nothing skips)"
ASYNCTHINK_EMU_PTX_DIR="$ptx" ASYNCTHINK_REQUIRE_GPU=1 \
    cargo test --locked --release -p asyncthink-emu
echo "== mutation check: one-line kernel bugs must make the emulated suite fail"
scripts/mutation-check.sh "$ptx"
