#!/usr/bin/env bash
# The whole GPU check on a machine that both builds and has the GPU: scripts/gpu-pack.sh, then
# scripts/gpu-run.sh (logs and bench JSON under $OUT). On the lent GPU machines, which have no
# Rust toolchain, run gpu-pack.sh here and gpu-run.sh there with `.gpu-carry` carried; see
# docs/gpu-runs.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gpu-pack.sh
scripts/gpu-run.sh "$@"
