#!/usr/bin/env python3
"""Runs every command the README shows, as written, and checks that each gives the result it
implies (CI runs this; it also runs the README's main command, the demo).

Commands come from the README's ```sh blocks, in order, in one scratch directory, so later
commands see what earlier ones wrote (runs/demo, items.jsonl, runs/sft, ...). Substitutions:
`cargo run --release --` is the release binary built here; a model placeholder (`DIR`,
`~/models/Qwen3-0.6B`) is the committed tiny SFT fixture. Skipped, with the reason printed:
`cargo test` (CI runs it itself), GPU commands (`--device cuda`, `bench-gpu`, the scripts for
the lent GPU machines; tests/cli.rs checks each fails cleanly without a GPU).

    python3 scripts/readme_commands.py [--keep DIR]
"""

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "asyncthink")
FIXTURE = os.path.join(REPO, "tests", "fixtures", "models", "tiny-asyncthink-sft")


def blocks(readme):
    """The ```sh blocks as lists of commands (continuations joined, heredocs kept whole)."""
    out, lines, inside = [], [], False
    for line in open(readme):
        if line.startswith("```sh"):
            inside, lines = True, []
        elif line.startswith("```") and inside:
            inside = False
            out.append(commands(lines))
        elif inside:
            lines.append(line.rstrip("\n"))
    return out


def commands(lines):
    cmds, i = [], 0
    while i < len(lines):
        line = lines[i]
        m = re.search(r"<<'(\w+)'", line)
        if m:
            end = lines.index(m.group(1), i + 1)
            cmds.append("\n".join(lines[i:end + 1]))
            i = end + 1
            continue
        while i + 1 < len(lines) and (line.endswith("\\") or line.count("'") % 2 == 1):
            i += 1
            if line.endswith("\\"):
                line = line[:-1] + " " + lines[i].strip()
            else:
                # Inside a quoted argument that spans lines (a JSON body): keep the newline.
                line += "\n" + lines[i]
        if line.strip():
            cmds.append(line.strip())
        i += 1
    return cmds


def strip_comment(cmd):
    return re.sub(r"\s+#.*$", "", cmd)


def skip_reason(cmd):
    if cmd == "cargo test":
        return "CI runs the tests itself"
    if "--device cuda" in cmd or "bench-gpu" in cmd:
        return "needs a GPU (tests/cli.rs checks it fails cleanly without one)"
    if cmd.startswith("scripts/gpu-"):
        return "for the lent GPU machines (scripts/gpu-rehearse.sh rehearses it)"
    if re.search(r"-- experiment\b", cmd) and "--sft-steps" not in cmd:
        return "the ~35-minute experiment (tests/cli_experiment.rs runs every stage at smoke size)"
    return None


def args_of(cmd):
    """The subcommand and its flags for our binary; the words as they are for anything else."""
    words = shlex.split(cmd)
    if words[0] == "cargo" and "--" in words:
        return words[words.index("--") + 1:]
    return words[1:] if words[0] == "asyncthink" else words


def flag(words, name):
    return words[words.index(name) + 1] if name in words else None


def lines_of(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def check(words, out, cwd):
    """What the command implies, beyond exiting 0. Returns a list of problems."""
    problems = []
    sub = words[0]
    for f in ("--out", "--output", "--trace", "--svg"):
        p = flag(words, f)
        if p and sub not in ("sft", "grpo", "demo") and not os.path.getsize(os.path.join(cwd, p)):
            problems.append(f"{f} {p} is empty")
    if sub == "demo":
        d = os.path.join(cwd, flag(words, "--out") or "runs/demo")
        for f in ("table.md", "results.json", "timeline.svg", "sft/model.safetensors", "grpo/final/model.safetensors"):
            if not os.path.exists(os.path.join(d, f)):
                problems.append(f"demo wrote no {f}")
    elif sub == "generate":
        if "--json" in words:
            v = json.loads(out.stdout)
            if not v.get("token_ids"):
                problems.append("generate --json gave no token ids")
        elif not out.stdout.strip():
            problems.append("generate printed no text")
        want = products_answer(flag(words, "--prompt") or "")
        if products_model(words) and want and flag(words, "--temperature") == "0":
            if f"<RETURN>{want}</RETURN>" not in out.stdout:
                problems.append(f"generate did not return {want!r}: {out.stdout[-200:]!r}")
    elif sub == "think":
        if not re.search(r"critical path \d+ tokens", out.stdout):
            problems.append("think printed no critical path")
        if "answer:" not in out.stdout:
            problems.append("think printed no answer line")
        # The embedded (committed experiment) model, greedy, must get the products right.
        want = products_answer(flag(words, "--prompt") or "")
        if products_model(words) and want and flag(words, "--temperature") == "0":
            m = re.search(r"^answer: (.*)$", out.stdout, re.M)
            if not m or m.group(1).strip() != want:
                problems.append(f"think answered {m.group(1) if m else None!r}, expected {want!r}")
    elif sub == "data":
        n = int(flag(words, "--n") or 1000)
        got = len(lines_of(os.path.join(cwd, flag(words, "--out"))))
        if got < (1 if words[1] == "traces" else n):
            problems.append(f"data {words[1]} wrote {got} lines, expected {n}")
    elif sub == "eval":
        m = re.search(r"\d+ questions, accuracy (\d[.\d]*)", out.stderr + out.stdout)
        if not m:
            problems.append("eval printed no accuracy line")
        elif products_model(words) and flag(words, "--task") == "products" and float(m.group(1)) < 0.8:
            problems.append(f"the embedded model scored {m.group(1)} on products (below 0.8)")
    elif sub in ("grpo", "sft"):
        d = os.path.join(cwd, flag(words, "--out"))
        if not os.path.exists(os.path.join(d, "final", "model.safetensors")):
            problems.append(f"{sub} wrote no {d}/final")
        every = flag(words, "--checkpoint-every")
        steps = int(flag(words, "--steps") or 0)
        if every and steps > int(every) and not any(e.startswith("checkpoint-") for e in os.listdir(d)):
            problems.append(f"{sub} wrote no checkpoint-N")
        if "final" not in out.stderr + out.stdout:
            problems.append(f"{sub} did not say where it saved")
    elif sub in ("bench", "bench-executor"):
        v = json.load(open(os.path.join(cwd, flag(words, "--out"))))
        if "commit" not in v or "machine" not in v:
            problems.append(f"{sub} report lacks commit or machine")
    elif sub == "logits":
        v = json.loads(out.stdout)
        ids = [int(i) for i in flag(words, "--ids").split(",")]
        rows = v["logits"]
        if len(rows) != len(ids) or any(not isinstance(x, float) for row in rows for x in row):
            problems.append(f"logits: {len(rows)} rows for {len(ids)} ids, or a non-finite value")
    elif words[0] == "curl" or sub == "curl":
        if "data: [DONE]" not in out.stdout and '"choices"' not in out.stdout:
            problems.append(f"curl got no completion: {out.stdout[-300:]}")
        want = products_answer(" ".join(words))
        if '"asyncthink"' in " ".join(words) and want:
            answer = curl_content(out.stdout)
            if answer != want:
                problems.append(f"the AsyncThink request answered {answer!r}, expected {want!r}")
    elif sub == "batch":
        inp = lines_of(os.path.join(cwd, flag(words, "--input")))
        res = lines_of(os.path.join(cwd, flag(words, "--output")))
        if len(res) != len(inp) or any("error" in r or "text" not in r for r in res):
            problems.append(f"batch: {len(res)} outputs for {len(inp)} inputs, or an error line: {res}")
        for q, r in zip(inp, res):
            messages = q.get("messages") or [{}]
            want = products_answer(str(messages[-1].get("content", "")))
            greedy = q.get("sampling", {}).get("temperature") == 0
            if products_model(words) and want and greedy and f"<RETURN>{want}</RETURN>" not in r.get("text", ""):
                problems.append(f"batch {q.get('id')}: no <RETURN>{want}</RETURN> in {r.get('text')!r}")
    return problems


def products_model(words):
    """Whether the command runs the embedded default (the committed products model)."""
    return "models/asyncthink-products" in (flag(words, "--model") or "models/asyncthink-products")


def products_answer(text):
    """`a*b=c, …` for the products named in `text` (the products task's answer), or None."""
    pairs = re.findall(r"(\d+)\*(\d+)", text)
    return ", ".join(f"{a}*{b}={int(a) * int(b)}" for a, b in pairs) or None


def curl_content(stdout):
    """The first choice's answer of a chat response, whole or streamed."""
    try:
        if stdout.lstrip().startswith("{"):
            choices = json.loads(stdout).get("choices") or [{}]
            return (choices[0].get("message") or {}).get("content")
        content = ""
        for line in stdout.splitlines():
            if line.startswith("data: {"):
                for c in json.loads(line[6:]).get("choices") or []:
                    content += (c.get("delta") or {}).get("content") or ""
        return content
    except ValueError as e:  # not JSON: reported as the command's problem, not a crash
        return f"unreadable response ({e})"


def main():
    keep = sys.argv[sys.argv.index("--keep") + 1] if "--keep" in sys.argv else None
    cwd = keep or tempfile.mkdtemp(prefix="readme-")
    os.makedirs(cwd, exist_ok=True)
    if not os.access(BIN, os.X_OK):
        subprocess.run(["cargo", "build", "--locked", "--release", "--bin", "asyncthink"], cwd=REPO, check=True)
    # The README's server listens on 8000; here it gets a free port, so a busy 8000 cannot
    # answer in its place.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    failures, ran, skipped = [], 0, 0
    for block in blocks(os.path.join(REPO, "README.md")):
        servers, counts = [], {"ran": 0, "skipped": 0}
        try:
            run_block(block, cwd, port, servers, failures, counts)
        finally:
            stop_servers(servers, failures)
        ran += counts["ran"]
        skipped += counts["skipped"]
    print(f"README commands: {ran} run, {skipped} skipped, {len(failures)} failed (in {cwd})")
    return 1 if failures else 0


def stop_servers(servers, failures):
    for server in servers:
        # SIGTERM, as an operator stops it: the server must drain and exit 0.
        server.terminate()
        try:
            rc = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            rc = "killed after 60 s"
        status = "ok" if rc == 0 else "FAILED"
        print(f"-- {status}: background server stopped by SIGTERM, exit {rc}", flush=True)
        if rc != 0:
            failures.append(f"server exit {rc}")


def run_block(block, cwd, port, servers, failures, counts):
    """Runs one ```sh block's commands in order, checking each; servers it starts go to
    `servers` for the caller to stop."""
    for raw in block:
        cmd = strip_comment(raw) if "<<" not in raw else raw
        why = skip_reason(cmd)
        if why:
            print(f"-- skip: {cmd}  ({why})", flush=True)
            counts["skipped"] += 1
            continue
        shell = cmd.replace("cargo run --release --", shlex.quote(BIN))
        shell = shell.replace("~/models/Qwen3-0.6B", shlex.quote(FIXTURE))
        shell = re.sub(r"(?<=--model )DIR\b", shlex.quote(FIXTURE), shell)
        # The committed experiment model lives in the repository, not the scratch directory.
        shell = re.sub(r"(?<=--model )models/", shlex.quote(REPO) + "/models/", shell)
        shell = shell.replace("localhost:8000", f"localhost:{port}")
        shell = shell.replace("--port 8000", f"--port {port}")
        if shell.startswith("asyncthink "):
            shell = shlex.quote(BIN) + shell[len("asyncthink"):]
        if shell.endswith("&"):
            # A server started in the background, as the README shows it: it runs until
            # the end of its block, and the block's later commands talk to it.
            log = open(os.path.join(cwd, f"server-{len(servers)}.log"), "w")
            servers.append(subprocess.Popen(["bash", "-c", "exec " + shell[:-1]], cwd=cwd,
                                            stdout=log, stderr=subprocess.STDOUT))
            print(f"-- started in the background: {cmd}", flush=True)
            counts["ran"] += 1
            continue
        t0 = time.monotonic()
        try:
            # A wait loop for a server gets two minutes; anything else half an hour.
            limit = 120 if shell.startswith("until ") else 1800
            out = subprocess.run(["bash", "-c", shell], cwd=cwd, capture_output=True, text=True,
                                 timeout=limit)
        except subprocess.TimeoutExpired:
            out = subprocess.CompletedProcess(shell, 124, "", f"timed out after {limit} s")
        took = time.monotonic() - t0
        counts["ran"] += 1
        words = args_of(cmd) if "<<" not in cmd else ["heredoc"]
        problems = []
        if words[0] == "gpu-probe":
            # No GPU here: the probe must fail, exit 1, and name the missing driver.
            if out.returncode != 1 or "driver" not in out.stderr:
                problems.append(f"gpu-probe without a GPU: exit {out.returncode}, {out.stderr.strip()[-200:]}")
        elif out.returncode != 0:
            problems.append(f"exit status {out.returncode}: {out.stderr.strip()[-600:]}")
        elif words[0] != "heredoc":
            try:
                problems += check(words, out, cwd)
            except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                problems.append(f"checking its result: {e!r}")
        status = "ok" if not problems else "FAILED"
        print(f"-- {status} ({took:.1f} s): {cmd.splitlines()[0]}", flush=True)
        for p in problems:
            print(f"   {p}")
        if problems:
            failures.append(cmd.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
