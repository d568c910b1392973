#!/usr/bin/env bash
# Builds, here (x86-64, no GPU needed), everything the GPU check runs on a lent machine that
# has a driver but no Rust toolchain and no network: the release binary and the GPU test
# binaries (tests/cuda_*.rs, tests/cli.rs, tests/cli_bench_gpu.rs), stripped, into .gpu-carry/
# (about 20 MB). Then pass `.gpu-carry` as the device tool's `carry` and run
# `scripts/gpu-run.sh` there.
#
#   scripts/gpu-pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
carry=.gpu-carry
rm -rf "$carry"
mkdir -p "$carry/tests"

cargo build --locked --release --bin asyncthink
strip -o "$carry/asyncthink" target/release/asyncthink

tests=(cli cli_bench_gpu)
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
git rev-parse --short=12 HEAD >"$carry/commit"
ls -la "$carry" "$carry/tests"
du -sh "$carry"
