#!/usr/bin/env bash
# Proves the emulated GPU suite can fail: applies one-line bugs to copies of our own kernels,
# compiles each broken set through the binary's NVRTC path (`kernels compile --source`), and
# requires the emulator tests to fail on it — by a wrong result or an emulator check, never
# by a missing file. Needs the unmodified PTX set in $1 (as scripts/test-gpu-emulated.sh makes).
#
#   scripts/mutation-check.sh PTX_DIR
set -euo pipefail
base="$(realpath "${1:?usage: scripts/mutation-check.sh PTX_DIR}")"
cd "$(dirname "$0")/.."
bin=target/release/asyncthink
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# file | text replaced (its first occurrence must exist) | replacement | the bug it models
mutations=(
"swiglu.cu|if (i < n) {|if (i <= n) {|index off by one at the grid's end"
"attention_prefill.cu|const int kvh = head0 / (num_heads / num_kv_heads);|const int kvh = head0 % num_kv_heads;|wrong KV head for a query head under GQA"
"common.cuh|    if (lane == 0) scratch[warp] = v;
    __syncthreads();|    if (lane == 0) scratch[warp] = v;|a dropped barrier in block_sum"
"attention_prefill.cu|if (key > qpos_lo) s[n][0] = -INFINITY;|if (key >= qpos_lo) s[n][0] = -INFINITY;|causal mask off by one under chunked prefill"
"attention_decode.cu|denom += ml[2 * s + 1] * expf(ml[2 * s] - mx);|denom += ml[2 * s + 1];|a wrong split-KV merge weight"
"attention_prefill.cu|k_col = ((lane >> 3) & 1) * 8;|k_col = ((lane >> 3) & 1) * 8 + 8;|a wrong ldmatrix offset"
)

failed=0
for m in "${mutations[@]}"; do
    IFS='|' read -r -d '' file from to what <<<"$m" || true
    what="${what%$'\n'}"
    rm -rf "$work/src" "$work/ptx"
    cp -r kernels "$work/src"
    python3 - "$work/src/$file" "$from" "$to" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if old not in text:
    sys.exit(f"mutation-check: `{old}` not found in {path}: the kernel changed, update the mutation")
open(path, "w").write(text.replace(old, new, 1))
PY
    cp -r "$base" "$work/ptx"
    if ! "$bin" kernels compile --arch sm_90 --source "$work/src" --out "$work/ptx/sm_90" \
        >/dev/null 2>"$work/compile.log"; then
        echo "BROKEN RUN  $what ($file): the mutated kernel does not compile"; cat "$work/compile.log"
        failed=1; continue
    fi
    log="$work/test.log"
    if ASYNCTHINK_EMU_PTX_DIR="$work/ptx" ASYNCTHINK_REQUIRE_GPU=1 \
        cargo test --locked --release -q -p asyncthink-emu --test elementwise --test attention >"$log" 2>&1; then
        echo "NOT CAUGHT  $what ($file)"
        failed=1
    elif grep -q "No such file" "$log"; then
        echo "BROKEN RUN  $what ($file): the tests failed for a missing file"; failed=1
    else
        reason="$(grep -m1 -E "panicked at|^thread '.*' panicked" -A1 "$log" | tail -1 | cut -c1-150 || true)"
        echo "caught      $what ($file): $reason"
    fi
done
exit "$failed"
