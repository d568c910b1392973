#!/usr/bin/env bash
# Compiles every CUDA kernel through the binary's own run-time NVRTC path for sm_90 and sm_80
# (no GPU needed), checks the PTX ISA is <= 9.0, assembles it with ptxas -v, prints a resource
# table, and fails if an attention or norm kernel spills registers.
# Installs the pinned CUDA 13.0 wheels into .cuda-venv first (scripts/cuda-toolchain.sh).
#
#   scripts/check-kernels.sh [REPORT_DIR]     # reports default to target/kernels/
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh
out="${1:-target/kernels}"
mkdir -p "$out"

cargo build --locked --release --bin asyncthink
bin=target/release/asyncthink
for arch in sm_90 sm_80; do
    echo "== kernels for $arch"
    "$bin" kernels compile --arch "$arch" --out "$out/$arch" --ptxas "$CUDA_BIN/ptxas" \
        --report "$out/kernels-report-$arch.json"
done
echo "== reports in $out"
