#!/usr/bin/env bash
# Runs asyncthink's CUDA kernels on the PTX emulator (emu/): NVRTC compiles kernels/ for sm_90
# and sm_80 through the binary's own run-time path, the emulator executes them against
# references with its bounds, race and cp.async checks, and nothing may skip. Then the
# mutation check proves the suite fails on six one-line kernel bugs.
#
# Last, the unchanged GPU tests (tests/cuda_*.rs) run against the emulated libcuda/libcublas
# (emu/driver): the real CudaBackend, NVRTC at run time, graphs, cuBLAS products.
#
#   scripts/test-gpu-emulated.sh [PTX_DIR]   # reuse a set `kernels compile` already wrote
set -euo pipefail
arg_ptx="${1:+$(realpath "$1")}"
cd "$(dirname "$0")/.."
# The GPU test binaries, listed (and built, if the plain `cargo test` has not) before the
# toolchain changes LD_LIBRARY_PATH: build.rs watches it, so listing them later would rebuild
# them all. Only running them sees the emulator.
mapfile -t bins < <(cargo test --locked --no-run --message-format=json ${EMU_GPU_TESTS:---test cuda_kernels} 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
if [[ ${#bins[@]} -eq 0 ]]; then
    echo "test-gpu-emulated: no GPU test binary was built (cargo test --no-run failed?)" >&2
    exit 1
fi
source scripts/cuda-toolchain.sh
cargo build --locked --release --bin asyncthink
ptx="${arg_ptx:-target/emu-ptx}"
if [[ -z "$arg_ptx" ]]; then
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

# CI runs tests/cuda_kernels.rs (every forward kernel, a whole tiny model, cuBLAS, graphs:
# ~100 s); the other GPU test files run the same way but take longer than the CI budget at
# their full shapes: EMU_GPU_TESTS="--test cuda_sampling --test cuda_train ..." selects them.
echo "== the unchanged GPU tests on the emulated driver and cuBLAS (emu/driver)"
cargo build --locked --release -p asyncthink-emu-driver
lib="$PWD/target/emu-lib"
mkdir -p "$lib"
# One file under every name cudarc and NVRTC open, so the driver and cuBLAS share one device.
for name in libcuda.so libcuda.so.1 libcublas.so libcublas.so.13; do
    ln -sf ../release/libasyncthink_emu_driver.so "$lib/$name"
done
for bin in "${bins[@]}"; do
    echo "-- $(basename "$bin")"
    LD_LIBRARY_PATH="$lib:$LD_LIBRARY_PATH" ASYNCTHINK_REQUIRE_GPU=1 "$bin" --include-ignored ${EMU_GPU_SKIP:-}
done
