#!/usr/bin/env bash
# Builds, here (x86-64, no GPU needed), everything the GPU check runs on a lent machine that
# has a driver but no Rust toolchain, no NVRTC headers and no network, into .gpu-carry/:
# - the release binary and the GPU test binaries (tests/cuda_*.rs, tests/cli.rs), stripped;
# - the kernels precompiled with the pinned CUDA 13.0 toolchain: PTX and cubins for sm_90 and
#   sm_80, with a manifest of source hashes (the backend loads them through
#   ASYNCTHINK_KERNEL_DIR and refuses a stale set), so no backend creation runs NVRTC there.
# Then pass `.gpu-carry` as the device tool's `carry` and run `scripts/gpu-run.sh` there.
#
#   scripts/gpu-pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry
rm -rf "$carry"
mkdir -p "$carry/tests" "$carry/kernels"

cargo build --locked --release --bin asyncthink
strip -o "$carry/asyncthink" target/release/asyncthink

source scripts/cuda-toolchain.sh
for arch in sm_90 sm_80; do
    "$carry/asyncthink" kernels compile --arch "$arch" --out "$carry/kernels/$arch" \
        --ptxas "$CUDA_BIN/ptxas" >/dev/null
done

# tests/cli_bench_gpu.rs is left out: it reruns bench-gpu --quick, which the check runs in parts.
tests=(cli)
for f in tests/cuda_*.rs; do tests+=("$(basename "$f" .rs)"); done
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
# cargo prints one JSON line per artifact; the test executables are the ones with "executable".
cargo test --locked --release --no-run "${args[@]}" --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], exe)
' | while read -r name exe; do strip -o "$carry/tests/$name" "$exe"; done

# Test binaries find the fixtures and the binary through paths fixed at compile time.
pwd >"$carry/manifest_dir"
# A pack built from uncommitted changes says so: its results belong to no commit.
echo "$(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src kernels tests Cargo.toml Cargo.lock || echo -dirty)" >"$carry/commit"
ls -la "$carry" "$carry/tests"
du -sh "$carry"
