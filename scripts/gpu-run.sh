#!/usr/bin/env bash
# The GPU check on a lent machine (driver 580 / CUDA 13.0, no Rust, no network), from the
# binaries scripts/gpu-pack.sh built here and carried in .gpu-carry/. Records where the
# machine keeps libcuda, cuBLAS, NVRTC and cuda_bf16.h, runs every GPU test binary (each test
# against the CPU reference), generate on the GPU and on the CPU, then bench-gpu. Logs and
# the bench JSON go under $OUT (default ./gpu-run-out); record them in docs/gpu-runs.md.
#
#   scripts/gpu-run.sh [BENCH_GPU_FLAGS...]      # e.g. --quick
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
carry=.gpu-carry
out="${OUT:-gpu-run-out}"
mkdir -p "$out"
log="$out/gpu-run.log"
[ -x "$carry/asyncthink" ] || { echo "no $carry/asyncthink: run scripts/gpu-pack.sh here first"; exit 2; }

step() { echo; echo "== $*"; }
{
    step "$(date -u +%FT%TZ) commit $(cat $carry/commit)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    step "where the libraries are"
    ldconfig -p | grep -E 'libcuda\.so|libcublas|libnvrtc' || echo "(none in ldconfig)"
    libs=$(find / -xdev \( -name 'libcublas.so*' -o -name 'libcublasLt.so*' -o -name 'libnvrtc.so*' \
        -o -name 'libnvrtc-builtins.so*' \) 2>/dev/null | grep -v '^/proc' | sort)
    echo "$libs"
    include=/usr/local/cuda/include/cuda_bf16.h
    [ -f "$include" ] || include=$(find / -xdev -name cuda_bf16.h -path '*include*' 2>/dev/null | head -1)
    echo "cuda_bf16.h: ${include:-not found}"
    # NVRTC and cuBLAS may live only in pip wheels: put every directory holding them on the path.
    for d in $(echo "$libs" | xargs -r -n1 dirname | sort -u); do
        export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    [ -n "$include" ] && export ASYNCTHINK_CUDA_INCLUDE="$(dirname "$include")"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

    # The test binaries look for fixtures and the asyncthink binary under the directory they
    # were built in.
    built="$(cat $carry/manifest_dir)"
    if [ "$built" != "$repo" ]; then
        mkdir -p "$(dirname "$built")" && ln -sfn "$repo" "$built"
    fi
    mkdir -p target/release && cp "$carry/asyncthink" target/release/asyncthink

    step "GPU tests"
    for t in "$carry"/tests/*; do
        name=$(basename "$t")
        filter=()
        [ "$name" = cli ] && filter=(device_cuda)  # the rest of tests/cli.rs is CPU-only
        step "test $name"
        (cd "$built" && timeout 300 "$repo/$t" "${filter[@]}" --test-threads=1 --nocapture) 2>&1 |
            tee "$out/test-$name.log" | grep -E '^test |test result|skipped|panicked|error|relative error|max abs err' 
    done
    step "generate on the GPU and on the CPU (embedded tiny model, greedy)"
    timeout 120 "$carry/asyncthink" generate --device cuda --prompt "What is 3 + 4?" --max-new-tokens 16 --json
    timeout 120 "$carry/asyncthink" generate --prompt "What is 3 + 4?" --max-new-tokens 16 --json
    step "bench-gpu -> $out/bench-gpu.json"
    timeout 420 "$carry/asyncthink" bench-gpu --out "$out/bench-gpu.json" "$@"
    step "summary"
    grep -h "test result" "$out"/test-*.log
} 2>&1 | tee "$log"
