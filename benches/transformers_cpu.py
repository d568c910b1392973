#!/usr/bin/env python3
"""CPU prefill/decode throughput of transformers, the baseline asyncthink's benches compare to.

    .venv-fixtures/bin/python benches/transformers_cpu.py --model bench-models/qwen3-0.6b-random \
        --threads 2 --prompt-len 128 --new-tokens 32 --dtype bf16 --out bench-results/tf-bf16.json

Prefill: one forward over a random prompt (seeded ids), timed; the median of --prefill-repeats
runs is reported. Decode: greedy, with the KV cache, timed per step in a manual loop that feeds
each argmax back through past_key_values (what generate(min_new_tokens=max_new_tokens) does,
minus its bookkeeping), so prefill time is excluded and a stop token cannot end the run early.
decode_tok_s = new_tokens / (sum of the new_tokens step times).

Environment: tests/fixtures/setup_venv.sh. Checkpoint: benches/make_qwen3_0p6b.py.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}
# CPU features that decide which kernels torch and a hand-written engine can use.
FLAGS_OF_NOTE = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]


def machine() -> dict:
    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu in ("unknown", "", "x86_64"):
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "cpu_flags": [f for f in FLAGS_OF_NOTE if f in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# transformers 5.x renamed forward's `past_key_values` argument (and output field) to `cache`.
CACHE_KW = "cache" if "cache" in inspect.signature(transformers.Qwen3ForCausalLM.forward).parameters else "past_key_values"


@torch.inference_mode()
def prefill(model, prompt, all_logits: bool):
    t0 = time.perf_counter()
    # generate() asks for the last position's logits only (logits_to_keep=1), as serving
    # engines do; --all-logits also pays for the 151936-wide head on every prompt position.
    out = model(prompt, use_cache=True, logits_to_keep=0 if all_logits else 1)
    return time.perf_counter() - t0, out


@torch.inference_mode()
def decode(model, prefill_out, steps: int) -> tuple[list[float], list[int]]:
    cache = getattr(prefill_out, CACHE_KW)
    nxt = prefill_out.logits[:, -1].argmax(-1, keepdim=True)
    times, ids = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = model(nxt, use_cache=True, **{CACHE_KW: cache})
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - t0)
        cache = getattr(out, CACHE_KW)
        ids.append(int(nxt))
    return times, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--prefill-repeats", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation (sdpa is its default and fastest on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all-logits", action="store_true", help="prefill computes logits for every prompt position")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype], attn_implementation=args.attn).eval()
    load_s = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=gen)

    # Warm-up: first calls pay for allocator growth and oneDNN kernel selection.
    _, out = prefill(model, prompt, args.all_logits)
    decode(model, out, 2)

    prefill_times = []
    for _ in range(args.prefill_repeats):
        dt, out = prefill(model, prompt, args.all_logits)
        prefill_times.append(dt)
    step_times, new_ids = decode(model, out, args.new_tokens)

    prefill_s = statistics.median(prefill_times)
    decode_s = sum(step_times)
    result = {
        "engine": "transformers",
        "version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": args.dtype,
        "threads": args.threads,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "prefill_tok_s": round(args.prompt_len / prefill_s, 2),
        "decode_tok_s": round(args.new_tokens / decode_s, 2),
        "machine": machine(),
        "model": str(args.model),
        "attn_implementation": args.attn,
        "prefill_logits": "all" if args.all_logits else "last",
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_s": round(load_s, 3),
        "prefill_s_runs": [round(t, 4) for t in prefill_times],
        "decode_step_ms": {
            "median": round(1e3 * statistics.median(step_times), 2),
            "min": round(1e3 * min(step_times), 2),
            "max": round(1e3 * max(step_times), 2),
        },
        "new_ids": new_ids,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"transformers {args.dtype} x{args.threads}: prefill {result['prefill_tok_s']} tok/s, decode {result['decode_tok_s']} tok/s -> {args.out}")


if __name__ == "__main__":
    main()
