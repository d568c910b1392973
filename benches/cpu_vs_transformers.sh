#!/usr/bin/env bash
# Side by side, in one run, same checkpoint, same machine, same thread count:
# asyncthink's CPU backend against transformers, prefill and batch-1 greedy decode.
#
#   bash benches/cpu_vs_transformers.sh [THREADS] [PROMPT_LEN]      (defaults 2, 128)
#
# asyncthink runs at both CPU precisions: --precision f32 (the reference) and bf16 (bf16
# products on the CPU's bf16 units, what transformers' bf16 run computes).
#
# Needs the Python env (tests/fixtures/setup_venv.sh) and makes the random Qwen3-0.6B-shaped
# checkpoint on first use (benches/make_qwen3_0p6b.py). Writes bench-results/cpu-vs-transformers-*.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
threads="${1:-2}"
prompt_len="${2:-128}"
py="${PYTHON:-$root/.venv-fixtures/bin/python}"
model="$root/bench-models/qwen3-0.6b-random"
out_dir="$root/bench-results"
mkdir -p "$out_dir"
[ -x "$py" ] || bash tests/fixtures/setup_venv.sh
[ -f "$model/config.json" ] || "$py" benches/make_qwen3_0p6b.py "$model"

cargo build --release --quiet
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
ours="$out_dir/asyncthink-$stamp.json"
ours_bf16="$out_dir/asyncthink-bf16-$stamp.json"
theirs_bf16="$out_dir/transformers-bf16-$stamp.json"
theirs_f32="$out_dir/transformers-f32-$stamp.json"

args=(--model "$model" --threads "$threads" --prompt-len "$prompt_len" --new-tokens 32)
./target/release/asyncthink bench "${args[@]}" --repeats 3 --precision f32 --out "$ours" >/dev/null
./target/release/asyncthink bench "${args[@]}" --repeats 3 --precision bf16 --out "$ours_bf16" >/dev/null
"$py" benches/transformers_cpu.py "${args[@]}" --dtype bf16 --out "$theirs_bf16" >/dev/null
"$py" benches/transformers_cpu.py "${args[@]}" --dtype f32 --out "$theirs_f32" >/dev/null

"$py" - "$ours" "$ours_bf16" "$theirs_bf16" "$theirs_f32" "$out_dir/cpu-vs-transformers-$stamp.json" <<'PY'
import json, sys
ours, ours_bf16, tb, tf, out = sys.argv[1:]
a, a16, b, f = (json.load(open(p)) for p in (ours, ours_bf16, tb, tf))
report = {
    "machine": a["machine"], "commit": a["commit"], "threads": a["threads"],
    "prompt_len": a["prompt_len"], "new_tokens": a["new_tokens"],
    "asyncthink": a, "asyncthink_bf16": a16, "transformers_bf16": b, "transformers_f32": f,
    "bf16_decode_ratio_vs_transformers_bf16": a16["decode_tok_s"] / b["decode_tok_s"],
    "bf16_prefill_ratio_vs_transformers_bf16": a16["prefill_tok_s"] / b["prefill_tok_s"],
    "decode_ratio_vs_transformers_bf16": a["decode_tok_s"] / b["decode_tok_s"],
    "prefill_ratio_vs_transformers_bf16": a["prefill_tok_s"] / b["prefill_tok_s"],
    "decode_ratio_vs_transformers_f32": a["decode_tok_s"] / f["decode_tok_s"],
    "prefill_ratio_vs_transformers_f32": a["prefill_tok_s"] / f["prefill_tok_s"],
}
json.dump(report, open(out, "w"), indent=2)
print(f"machine: {a['machine']}, threads {a['threads']}, commit {a['commit']}")
print(f"{'engine':28} {'prefill tok/s':>14} {'decode tok/s':>13}")
print(f"{'asyncthink --precision f32':28} {a['prefill_tok_s']:14.1f} {a['decode_tok_s']:13.2f}")
print(f"{'asyncthink --precision bf16':28} {a16['prefill_tok_s']:14.1f} {a16['decode_tok_s']:13.2f}")
print(f"{'transformers bf16':28} {b['prefill_tok_s']:14.1f} {b['decode_tok_s']:13.2f}")
print(f"{'transformers f32':28} {f['prefill_tok_s']:14.1f} {f['decode_tok_s']:13.2f}")
print(f"vs transformers bf16: f32 decode {report['decode_ratio_vs_transformers_bf16']:.2f}x, prefill {report['prefill_ratio_vs_transformers_bf16']:.2f}x; "
      f"bf16 decode {report['bf16_decode_ratio_vs_transformers_bf16']:.2f}x, prefill {report['bf16_prefill_ratio_vs_transformers_bf16']:.2f}x")
print(f"wrote {out}")
PY
