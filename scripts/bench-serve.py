#!/usr/bin/env python3
"""Serving benchmark: `asyncthink serve` under 1, 8 and 32 concurrent streaming clients, and
offline `asyncthink batch` on the same prompts in the same run.

The clients are the Rust load generator (examples/serve_load.rs, `cargo build --release
--example serve_load`): on a small machine they share the cores with the server, and
Python clients cost about 80 us of CPU per streamed token where it costs a few. `--client
python` keeps the standard-library clients. Offline capped at the top concurrency is
measured just before and just after that level, so a slow phase of a shared machine
touches both sides of the ratio alike.

Per concurrency: request throughput, output tok/s, time-to-first-token and inter-token
latency p50/p99; then the ratio of served output tok/s at the highest concurrency to
offline. Writes JSON (machine, commit, figures). Standard library only.

    python3 scripts/bench-serve.py --bin target/release/asyncthink --out benches/results/serve-DATE-runN.json
"""

import argparse
import http.client
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one_request(host, port, prompt, max_tokens):
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream": True, "return_token_ids": True})
    conn = http.client.HTTPConnection(host, port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    times, tokens = [], 0
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        n = sum(len(c.get("token_ids") or []) for c in chunk["choices"])
        if n:
            times.append(time.perf_counter())
            tokens += n
    conn.close()
    ttft = times[0] - start if times else None
    itl = [b - a for a, b in zip(times, times[1:])]
    return ttft, itl, tokens, time.perf_counter() - start


def cpu_seconds(pid=None):
    """User + system CPU seconds of this process (all its threads) or of process `pid`."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level_python(host, port, prompts, max_tokens, concurrency, server_pid):
    queue = list(prompts)
    lock = threading.Lock()
    ttfts, itls, tokens = [], [], [0]

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                p = queue.pop()
            ttft, itl, n, _ = one_request(host, port, p, max_tokens)
            with lock:
                ttfts.append(ttft)
                itls.extend(itl)
                tokens[0] += n

    began = time.perf_counter()
    client_cpu, server_cpu = cpu_seconds(), cpu_seconds(server_pid)
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - began
    client_cpu, server_cpu = cpu_seconds() - client_cpu, cpu_seconds(server_pid) - server_cpu
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "seconds": secs,
        "requests_per_second": len(prompts) / secs,
        "output_tokens_per_second": tokens[0] / secs,
        "ttft_p50_ms": 1e3 * pct(ttfts, 50),
        "ttft_p99_ms": 1e3 * pct(ttfts, 99),
        "itl_p50_ms": 1e3 * pct(itls, 50),
        "itl_p99_ms": 1e3 * pct(itls, 99),
        # On a small machine the clients share the cores with the server: these say how
        # much of the machine each side took (cores busy on average over the level).
        "client_cores_busy": client_cpu / secs,
        "server_cores_busy": server_cpu / secs,
    }


def simd_flags():
    """The vector extensions the CPU kernels pick from: machines of one kind differ here."""
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]


def run_level_rust(client_bin, host, port, prompts, max_tokens, concurrency, server_pid):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for p in prompts:
            f.write(json.dumps(p) + "\n")
        path = f.name
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = cpu_seconds(server_pid)
        began = time.perf_counter()
        out = subprocess.run([client_bin, "--addr", f"{host}:{port}", "--prompts", path, "--max-tokens",
                              str(max_tokens), "--concurrency", str(concurrency)],
                             check=True, capture_output=True, text=True).stdout
        secs = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = cpu_seconds(server_pid) - server_cpu
    finally:
        os.unlink(path)
    level = json.loads(out)
    level["client_cores_busy"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / secs
    level["server_cores_busy"] = server_cpu / secs
    return level


def offline(binary, prompts, max_tokens, kv_mb, max_num_seqs, model_args):
    with tempfile.TemporaryDirectory() as d:
        inp, out, summ = (os.path.join(d, f) for f in ("in.jsonl", "out.jsonl", "summary.json"))
        with open(inp, "w") as f:
            for p in prompts:
                f.write(json.dumps({"prompt_ids": p}) + "\n")
        subprocess.run([binary, "batch", "--input", inp, "--output", out, "--summary", summ,
                        "--max-new-tokens", str(max_tokens), "--ignore-eos", "--kv-cache-mb", str(kv_mb),
                        "--max-num-seqs", str(max_num_seqs)] + model_args,
                       check=True, stderr=subprocess.DEVNULL)
        with open(summ) as f:
            return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/asyncthink")
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--kv-cache-mb", type=int, default=64)
    ap.add_argument("--model", help="a checkpoint directory (default: the embedded model)")
    ap.add_argument("--client", choices=["rust", "python"], default="rust")
    ap.add_argument("--stream-interval", type=int, default=1, help="the server's --stream-interval")
    ap.add_argument("--client-bin", default="target/release/examples/serve_load")
    a = ap.parse_args()
    if a.client == "rust" and not os.path.exists(a.client_bin):
        sys.exit(f"{a.client_bin} is missing: cargo build --release --example serve_load (or --client python)")
    model_args = ["--model", a.model] if a.model else []
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(a.prompt_len)] for _ in range(a.requests)]

    server = subprocess.Popen([a.bin, "serve", "--port", "0", "--kv-cache-mb", str(a.kv_cache_mb),
                               "--stream-interval", str(a.stream_interval)] + model_args,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    host, port = line.strip().removeprefix("listening on http://").rsplit(":", 1)
    top = int(a.levels.split(",")[-1])

    def level(c):
        if a.client == "rust":
            return run_level_rust(a.client_bin, host, int(port), prompts, a.max_tokens, c, server.pid)
        return run_level_python(host, int(port), prompts, a.max_tokens, c, server.pid)

    try:
        one_request(host, int(port), prompts[0], 4)  # warm up
        levels = [level(int(c)) for c in a.levels.split(",")[:-1]]
        # Offline capped at the top concurrency (the batch width the server can reach there)
        # on both sides of the top level; the server idles meanwhile.
        capped_before = offline(a.bin, prompts, a.max_tokens, a.kv_cache_mb, top, model_args)
        levels.append(level(top))
        capped_after = offline(a.bin, prompts, a.max_tokens, a.kv_cache_mb, top, model_args)
    finally:
        server.terminate()
        server.wait(timeout=60)
    # Offline with the engine's default width (64 sequences).
    off = offline(a.bin, prompts, a.max_tokens, a.kv_cache_mb, 64, model_args)
    capped = [capped_before["output_tokens_per_second"], capped_after["output_tokens_per_second"]]
    capped_mean = sum(capped) / 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    result = {
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "simd": simd_flags()},
        "commit": commit,
        "model": a.model or "embedded:asyncthink-products",
        "workload": {"requests": a.requests, "prompt_tokens": a.prompt_len, "max_tokens": a.max_tokens},
        "served": levels,
        "offline_output_tokens_per_second": off["output_tokens_per_second"],
        "client": a.client,
        "stream_interval": a.stream_interval,
        "offline_capped_max_num_seqs": top,
        "offline_capped_output_tokens_per_second": capped_mean,
        "offline_capped_before_and_after": capped,
        "served_over_offline_at_max_concurrency": levels[-1]["output_tokens_per_second"] / off["output_tokens_per_second"],
        "served_over_offline_capped": levels[-1]["output_tokens_per_second"] / capped_mean,
    }
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
