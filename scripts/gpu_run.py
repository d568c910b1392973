#!/usr/bin/env python3
"""The one-command GPU check on a lent machine (driver 580 / CUDA 13.0, no Rust, no network).

Runs what scripts/gpu-pack.sh built here and carried in .gpu-carry/ (binaries, GPU test
binaries, precompiled kernels), in the order that puts the most valuable evidence first,
under one global deadline:

  environment -> probe -> kernel tests -> engine tests -> generate GPU vs CPU
  -> bench-gpu parts (ceilings, decode attention, prefill attention, batch-1 decode,
     short offline throughput) -> graph and sampling tests -> training tests -> training bench

Every step is recorded whatever happened before it: passed, failed, timeout,
skipped-for-time (it no longer fits the deadline) or not-run (the probe failed). GPU tests run
under ASYNCTHINK_REQUIRE_GPU=1, so a test that cannot reach the GPU fails instead of skipping.
Writes two files into $OUT: gpu-summary.json (per step: status, seconds, counts, figures;
device, driver, the libraries really loaded) and gpu-logs.tar.gz (every log and report).
Exit status 0 only when every step passed.

    scripts/gpu-run.sh            # OUT=dir to choose the output folder (default gpu-run-out)
    GPU_CHECK_DEADLINE_S=480      # the global deadline of the steps, in seconds

Rehearsed end to end on the PTX emulator (scripts/test-gpu-emulated.sh), which runs each step
far slower than a GPU: there GPU_CHECK_CAP_SCALE multiplies every step's cap, and
GPU_CHECK_BENCH_ARGS (e.g. "--quick") replaces the size flags of every bench step.

Standard library only: the lent machine's python3 is whatever its image has.
"""

import datetime
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARRY = os.path.join(REPO, ".gpu-carry")
OUT = os.path.abspath(os.environ.get("OUT") or os.path.join(REPO, "gpu-run-out"))
DEADLINE_S = float(os.environ.get("GPU_CHECK_DEADLINE_S", "480"))
CAP_SCALE = float(os.environ.get("GPU_CHECK_CAP_SCALE", "1"))
BENCH_ARGS = os.environ.get("GPU_CHECK_BENCH_ARGS")

# The libraries cudarc opens (by the names it tries) and what they need in turn.
LIBRARIES = {
    "libcuda": ["libcuda.so.1", "libcuda.so"],
    "libcublas": ["libcublas.so.13", "libcublas.so"],
    "libcublasLt": ["libcublasLt.so.13", "libcublasLt.so"],
    "libnvrtc": ["libnvrtc.so.13", "libnvrtc.so"],
    "libnvrtc-builtins": ["libnvrtc-builtins.so.13.0", "libnvrtc-builtins.so"],
}


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def real_library(path):
    """A loadable library file that is not a toolkit stub."""
    return os.path.isfile(path) and "/stubs/" not in os.path.realpath(path) and "/stubs/" not in path


def find_libraries(log):
    """Picks one real file per library: ldconfig's entries first (the driver's libcuda.so.1),
    then the usual install roots and Python wheels. Stubs never qualify."""
    candidates = {k: [] for k in LIBRARIES}
    try:
        ld = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        ld = ""
    for line in ld.splitlines():
        m = re.match(r"\s*(\S+) .*=> (\S+)$", line)
        if m:
            for key, names in LIBRARIES.items():
                if m.group(1) in names:
                    candidates[key].append(m.group(2))
    # The path the machine came with is searched too, but a stub found there is rejected.
    roots = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    roots += ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu",
             "/usr/lib64", "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
    roots += glob.glob("/usr/local/cuda-*/lib64")
    for site in sys.path:
        roots += glob.glob(os.path.join(site, "nvidia", "*", "lib"))
        roots += glob.glob(os.path.join(site, "nvidia", "*", "lib64"))
    roots += glob.glob("/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib")
    for root in roots:
        for key, names in LIBRARIES.items():
            for name in names:
                candidates[key].append(os.path.join(root, name))
    chosen = {}
    for key, paths in candidates.items():
        for p in paths:
            if real_library(p):
                chosen[key] = p
                break
    rejected = sorted({p for ps in candidates.values() for p in ps if os.path.exists(p) and not real_library(p)})
    log(f"libraries chosen: {json.dumps(chosen, indent=1)}")
    if rejected:
        log(f"rejected (stubs): {rejected}")
    return chosen, rejected


def link_libraries(chosen, work):
    """One folder of links, first on LD_LIBRARY_PATH, naming exactly the chosen files under
    every name cudarc tries; the chosen files' own folders go after the existing path, so
    their dependencies resolve and nothing found earlier is shadowed by a stub."""
    linkdir = os.path.join(work, "lib")
    os.makedirs(linkdir, exist_ok=True)
    for key, path in chosen.items():
        for name in LIBRARIES[key]:
            dst = os.path.join(linkdir, name)
            if not os.path.lexists(dst):
                os.symlink(path, dst)
    old = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d and "/stubs" not in d]
    dirs = [linkdir] + old
    for path in chosen.values():
        d = os.path.dirname(path)
        if d not in dirs:
            dirs.append(d)
    return ":".join(dirs)


class Check:
    def __init__(self, work):
        self.work = work
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.start = time.monotonic()
        self.steps = []
        self.env = dict(os.environ)
        self.probe_ok = False
        self.main_log = open(os.path.join(self.logs, "gpu-run.log"), "a")

    def log(self, text):
        print(text, flush=True)
        self.main_log.write(text + "\n")
        self.main_log.flush()

    def left(self):
        return DEADLINE_S - (time.monotonic() - self.start)

    def record(self, name, status, **kw):
        step = {"name": name, "status": status, **kw}
        self.steps.append(step)
        extra = f" ({kw['reason']})" if kw.get("reason") else ""
        counts = f" {kw['counts']}" if kw.get("counts") else ""
        self.log(f"== {name}: {status} in {kw.get('seconds', 0):.1f} s{counts}{extra}")
        return step

    def run(self, name, argv, cap_s, min_s=10, cwd=None):
        """Runs one command under min(cap, what the deadline leaves); returns (step, text)."""
        if self.steps and not self.probe_ok and name != "probe":
            return self.record(name, "not-run", seconds=0, reason="the probe failed"), ""
        cap_s, min_s = cap_s * CAP_SCALE, min_s * CAP_SCALE
        budget = min(cap_s, self.left())
        if budget < min_s:
            return self.record(name, "skipped-for-time", seconds=0, cap_s=cap_s,
                               reason=f"{self.left():.0f} s left of the {DEADLINE_S:.0f} s deadline, "
                                      f"needs at least {min_s} s"), ""
        logfile = os.path.join(self.logs, f"{name}.log")
        self.log(f"== {name}: {' '.join(argv)} (up to {budget:.0f} s)")
        t0 = time.monotonic()
        status, reason = "passed", None
        with open(logfile, "w") as f:
            try:
                p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=cwd or REPO,
                                     env=self.env, start_new_session=True)
                try:
                    rc = p.wait(timeout=budget)
                    if rc != 0:
                        status, reason = "failed", f"exit status {rc}"
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                    status, reason = "timeout", f"killed after {budget:.0f} s"
            except OSError as e:
                status, reason = "failed", f"could not start: {e}"
        seconds = time.monotonic() - t0
        text = open(logfile, errors="replace").read()
        return self.record(name, status, seconds=round(seconds, 2), cap_s=cap_s, reason=reason,
                           log=f"logs/{name}.log"), text

    def test(self, name, binary, cap_s, filters=(), threads=4):
        exe = os.path.join(CARRY, "tests", binary)
        built = read(os.path.join(CARRY, "manifest_dir")) or REPO
        # Built here, with no driver, the GPU tests are marked ignored: run them all.
        argv = [exe, *filters, "--include-ignored", f"--test-threads={threads}"]
        step, text = self.run(name, argv, cap_s, cwd=built)
        if text:
            counts = {"passed": 0, "failed": 0, "ignored": 0}
            for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
                for k, v in zip(counts, m.groups()):
                    counts[k] += int(v)
            ran_ok = re.findall(r"^test (\S+) \.\.\. ok$", text, re.M)
            step["counts"] = counts if "test result" in text else {"passed_before_stop": len(ran_ok)}
            step["failed_tests"] = re.findall(r"^test (\S+) \.\.\. FAILED$", text, re.M)
            step["figures"] = sorted(set(re.findall(r"^.*(?:max abs err|relative error|rel err).*$", text, re.M)))[:40]
            if step["status"] == "passed" and counts["passed"] == 0:
                step["status"], step["reason"] = "failed", "no test ran"
        return step

    def bench(self, name, only, cap_s, extra=()):
        report = os.path.join(self.work, f"bench-{name}.json")
        if BENCH_ARGS is not None:
            extra = shlex.split(BENCH_ARGS)
        step, _ = self.run(name, [os.path.join(CARRY, "asyncthink"), "bench-gpu", "--only", only,
                                  "--out", report, *extra], cap_s, min_s=20)
        if os.path.isfile(report):
            try:
                step["figures"] = json.load(open(report))
            except ValueError as e:
                step["figures"] = {"error": f"unreadable report: {e}"}
        return step


def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu-check-")
    c = Check(work)
    summary = {"date": now(), "commit": read(os.path.join(CARRY, "commit")), "deadline_s": DEADLINE_S,
               "cap_scale": CAP_SCALE, "bench_args": BENCH_ARGS, "host": os.uname().nodename}
    c.log(f"== GPU check {summary['date']} commit {summary['commit']}; deadline {DEADLINE_S:.0f} s")

    # Environment: always recorded, never fatal by itself.
    t0 = time.monotonic()
    env_step = {"name": "environment", "status": "passed"}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        summary["nvidia_smi"] = (smi.stdout or smi.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        summary["nvidia_smi"] = f"unavailable: {e}"
    c.log(f"nvidia-smi: {summary['nvidia_smi']}")
    summary["driver_proc"] = (read("/proc/driver/nvidia/version") or "absent").splitlines()[0]
    chosen, rejected = find_libraries(c.log)
    summary["libraries_chosen"], summary["libraries_rejected_stubs"] = chosen, rejected
    c.env["LD_LIBRARY_PATH"] = link_libraries(chosen, work)
    c.env["ASYNCTHINK_REQUIRE_GPU"] = "1"
    kernels = os.path.join(CARRY, "kernels")
    if os.path.isdir(kernels):
        c.env["ASYNCTHINK_KERNEL_DIR"] = kernels
    c.log(f"LD_LIBRARY_PATH={c.env['LD_LIBRARY_PATH']}")
    c.log(f"ASYNCTHINK_KERNEL_DIR={c.env.get('ASYNCTHINK_KERNEL_DIR', '(unset: NVRTC)')}")
    if not os.access(os.path.join(CARRY, "asyncthink"), os.X_OK):
        env_step.update(status="failed", reason=f"no {CARRY}/asyncthink: run scripts/gpu-pack.sh first")
    if "libcuda" not in chosen:
        env_step.update(status="failed", reason="no driver libcuda.so.1 found (stubs excluded)")
    # Test binaries find fixtures and the asyncthink binary under the folder they were built in.
    built = read(os.path.join(CARRY, "manifest_dir"))
    try:
        if built and os.path.realpath(built) != REPO and not os.path.exists(built):
            os.makedirs(os.path.dirname(built), exist_ok=True)
            os.symlink(REPO, built)
        # The CLI test runs the binary where it was built; on the lent machine there is none
        # yet. Where one exists (a rehearsal here) it is the same build: leave cargo's alone.
        bin_path = os.path.join(REPO, "target", "release", "asyncthink")
        if not os.path.exists(bin_path):
            os.makedirs(os.path.dirname(bin_path), exist_ok=True)
            shutil.copy2(os.path.join(CARRY, "asyncthink"), bin_path)
    except OSError as e:
        env_step.update(status="failed", reason=f"setting up the build paths: {e}")
    env_step["seconds"] = round(time.monotonic() - t0, 2)
    c.steps.append(env_step)
    c.log(f"== environment: {env_step['status']}" + (f" ({env_step.get('reason')})" if env_step.get("reason") else ""))

    probe_json = os.path.join(work, "probe.json")
    step, _ = c.run("probe", [os.path.join(CARRY, "asyncthink"), "gpu-probe", "--out", probe_json], 90)
    if os.path.isfile(probe_json):
        probe = json.load(open(probe_json))
        summary["device"] = probe.get("device")
        summary["driver_cuda_version"] = probe.get("driver_cuda_version")
        summary["libraries_loaded"] = probe.get("libraries")
        summary["kernel_source"] = probe.get("kernel_source")
        step["figures"] = probe.get("stages")
        failed = [s for s in probe.get("stages", []) if not s.get("ok")]
        if failed:
            step["reason"] = f"{failed[0]['name']}: {failed[0]['detail']}"
    elif step["status"] != "passed":
        step.setdefault("reason", "no probe report written")
    c.probe_ok = step["status"] == "passed"

    # Most valuable evidence first.
    c.test("kernel-tests", "cuda_kernels", 150)
    c.test("engine-tests", "cuda_engine", 120)
    c.test("cli-device-cuda", "cli", 60, filters=["device_cuda"], threads=1)
    gen = [os.path.join(CARRY, "asyncthink"), "generate", "--prompt", "What is 3 + 4?", "--max-new-tokens", "16", "--json"]
    c.run("generate-gpu", gen + ["--device", "cuda"], 30)
    c.run("generate-cpu", gen, 30)
    c.bench("bench-ceilings", "gemm", 45)
    c.bench("bench-decode-attention", "decode-attention", 45)
    c.bench("bench-prefill-attention", "prefill-attention", 45)
    c.bench("bench-decode-batch1", "decode", 90)
    c.bench("bench-throughput", "throughput", 120, extra=["--throughput-seqs", "128", "--max-len", "512"])
    c.test("graph-tests", "cuda_graphs", 90)
    c.test("sampling-tests", "cuda_sampling", 60)
    c.test("training-tests", "cuda_train", 120)
    c.bench("bench-training", "gemm,training", 120, extra=["--gemm-size", "4096"])

    summary["elapsed_s"] = round(time.monotonic() - c.start, 1)
    summary["steps"] = c.steps
    summary["ok"] = all(s["status"] == "passed" for s in c.steps)
    c.log("\n== summary")
    for s in c.steps:
        counts = s.get("counts", "")
        c.log(f"{s['name']:<26} {s['status']:<17} {s.get('seconds', 0):>7.1f} s  {counts} {s.get('reason') or ''}")
    c.log(f"ok: {summary['ok']}; {summary['elapsed_s']} s; files in {OUT}")
    c.main_log.close()
    with open(os.path.join(OUT, "gpu-summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    shutil.copy2(os.path.join(OUT, "gpu-summary.json"), os.path.join(work, "gpu-summary.json"))
    with tarfile.open(os.path.join(OUT, "gpu-logs.tar.gz"), "w:gz") as t:
        for entry in sorted(os.listdir(work)):
            if entry != "lib":
                t.add(os.path.join(work, entry), arcname=entry)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
