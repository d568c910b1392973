#!/usr/bin/env bash
# The whole GPU check, for a machine with an NVIDIA GPU (driver 580 / CUDA 13.0 or newer):
# installs the pinned CUDA 13.0 wheels (headers + NVRTC), compiles the kernels for the device,
# runs the GPU kernel and whole-model tests, then a generate run on the GPU, then bench-gpu
# (every GPU figure, as JSON: $OUT/bench-gpu.json; BENCH_GPU_ARGS passes it flags, e.g.
# --quick), and writes one log under $OUT (default ./gpu-check-out). Record each run in
# docs/gpu-runs.md and the figures in docs/benchmarks.md.
#
# The GPU tests need libcublas too: the wheel nvidia-cublas (13.0.*) provides it when the
# machine has none; this script installs it into .cuda-venv.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check-out}"
mkdir -p "$out"
log="$out/gpu-check.log"
{
    echo "== $(date -u +%FT%TZ) commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    nvidia-smi || echo "nvidia-smi not available"
    source scripts/cuda-toolchain.sh
    .cuda-venv/bin/pip install --quiet "nvidia-cublas==13.0.*" || echo "cublas wheel not installed"
    for d in .cuda-venv/lib/python3*/site-packages/nvidia/cu13/lib; do export LD_LIBRARY_PATH="$d:$LD_LIBRARY_PATH"; done
    echo "== kernels compile (sm_90 and sm_80, resources)"
    scripts/check-kernels.sh "$out/kernels"
    echo "== GPU tests"
    cargo test --release --test cuda_kernels -- --nocapture --test-threads=1
    cargo test --release --test cuda_train -- --nocapture --test-threads=1
    cargo test --release --test cuda_graphs -- --nocapture --test-threads=1
    cargo test --release --test cli_bench_gpu -- --nocapture
    echo "== generate on the GPU (embedded tiny model)"
    cargo run --release -- generate --device cuda --prompt "What is 3 + 4?" --max-new-tokens 16 --json
    echo "== generate on the GPU without CUDA graphs (same tokens expected)"
    cargo run --release -- generate --device cuda --enforce-eager --prompt "What is 3 + 4?" --max-new-tokens 16 --json
    echo "== generate on the CPU, for comparison"
    cargo run --release -- generate --prompt "What is 3 + 4?" --max-new-tokens 16 --json
    echo "== bench-gpu (JSON: $out/bench-gpu.json)"
    # shellcheck disable=SC2086 # BENCH_GPU_ARGS is a list of flags
    cargo run --release -- bench-gpu --out "$out/bench-gpu.json" ${BENCH_GPU_ARGS:-}
} 2>&1 | tee "$log"
echo "log: $log"
