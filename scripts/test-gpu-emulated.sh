#!/usr/bin/env bash
# Runs asyncthink's CUDA kernels on the PTX emulator (emu/): NVRTC compiles kernels/ for sm_90
# and sm_80 through the binary's own run-time path, the emulator executes them against
# references with its bounds, race and cp.async checks, and nothing may skip. Then the
# mutation check proves the suite fails on six one-line kernel bugs.
#
# Last, the one-command GPU check (scripts/gpu-run.sh) runs end to end against the emulated
# libcuda/libcublas (emu/driver), exactly as on a lent GPU: the unchanged CudaBackend and every
# GPU test binary (tests/cuda_*.rs, the CLI's --device cuda tests) under
# ASYNCTHINK_REQUIRE_GPU=1, generate on the device against the CPU, and every bench-gpu part at
# the quick sizes. Every step must pass, on a device that names itself the emulator.
#
#   scripts/test-gpu-emulated.sh [PTX_DIR]   # reuse a set `kernels compile` already wrote
set -euo pipefail
arg_ptx="${1:+$(realpath "$1")}"
cd "$(dirname "$0")/.."
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

echo "== the one-command GPU check on the emulated driver and cuBLAS (emu/driver)"
cargo build --locked --release -p asyncthink-emu-driver
lib="$PWD/target/emu-lib"
mkdir -p "$lib"
# One file under every name cudarc and NVRTC open, so the driver and cuBLAS share one device.
for name in libcuda.so libcuda.so.1 libcublas.so libcublas.so.13; do
    ln -sf ../release/libasyncthink_emu_driver.so "$lib/$name"
done
scripts/gpu-pack.sh >/dev/null
out=target/emu-gpu-check
rm -rf "$out"
# The emulator runs a step 10-100x slower than an H200: caps scale, benches run at quick
# sizes, and the whole check must still end inside its deadline.
# Every bench-gpu part, at sizes a CPU interprets in seconds: the code paths and the report,
# not the figures (which mean nothing here). A Qwen3-sized vocabulary would put 155 M
# embedding parameters through each emulated AdamW step.
EMU_BENCH_ARGS="--quick --repeats 1 --warmup 0 --copy-mib 4 --gemm-size 256 --decode-seqs 2
    --decode-context 200 --prefill-tokens 100 --layers 1 --vocab 4099 --prompt-len 8
    --decode-tokens 4 --throughput-seqs 3 --min-len 4 --max-len 12 --train-seq-len 16
    --train-seqs 1"
rc=0
LD_LIBRARY_PATH="$lib:$LD_LIBRARY_PATH" OUT="$out" GPU_CHECK_DEADLINE_S="${EMU_GPU_DEADLINE_S:-1080}" \
    GPU_CHECK_CAP_SCALE="${EMU_GPU_CAP_SCALE:-6}" GPU_CHECK_BENCH_ARGS="$EMU_BENCH_ARGS" \
    scripts/gpu-run.sh || rc=$?
python3 - "$out/gpu-summary.json" "$rc" <<'PY'
import json, os, sys
if not os.path.isfile(sys.argv[1]):
    sys.exit(f"GPU check on the emulator: exit {sys.argv[2]}, and it wrote no {sys.argv[1]}")
s, rc = json.load(open(sys.argv[1])), int(sys.argv[2])
device = s.get("device") or ""
bad = [(x["name"], x["status"], x.get("reason")) for x in s["steps"] if x["status"] != "passed"]
if "emulator" not in device:
    sys.exit(f"GPU check on the emulator: the device is {device!r}, not the emulator")
if rc != 0 or bad or not s["ok"]:
    sys.exit(f"GPU check on the emulator: exit {rc}; steps not passed: {bad}")
print(f"GPU check on the emulator: {len(s['steps'])} steps passed in {s['elapsed_s']} s on {device}")
for x in s["steps"]:
    print(f"  {x['name']:<26} {x.get('seconds', 0):>7.1f} s  {x.get('counts', '')}")
PY
