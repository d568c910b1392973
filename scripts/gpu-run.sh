#!/usr/bin/env bash
# The GPU check on a lent machine (driver 580 / CUDA 13.0, no Rust, no network), from what
# scripts/gpu-pack.sh built here and carried in .gpu-carry/: probe, GPU tests (under
# ASYNCTHINK_REQUIRE_GPU=1, so nothing skips), generate GPU vs CPU and bench-gpu in parts, in
# order of value under one deadline (GPU_CHECK_DEADLINE_S, default 480). Writes
# $OUT/gpu-summary.json and $OUT/gpu-logs.tar.gz; exits 0 only when every step passed.
# The steps and their order live in scripts/gpu_run.py; record the result in docs/gpu-runs.md.
#
#   scripts/gpu-run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_run.py "$@"
