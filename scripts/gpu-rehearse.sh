#!/usr/bin/env bash
# Rehearses the one-command GPU check on a machine with no GPU (CI): packs it as for a lent
# machine, runs it with LD_LIBRARY_PATH unset and again with toolkit stubs on the path, and
# checks that each run ends within a minute, exits non-zero, names the missing driver, rejects
# the stubs, marks every step and writes its two files.
#
#   scripts/gpu-rehearse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/gpu-pack.sh >/dev/null
tmp=$(mktemp -d)
mkdir -p "$tmp/cuda/lib64/stubs"
# Stub libraries as a CUDA toolkit ships them: loadable names that must never be chosen.
for f in libcuda.so libcublas.so libnvrtc.so; do cp /bin/true "$tmp/cuda/lib64/stubs/$f"; done

for case in unset stubs; do
    out="$tmp/out-$case"
    start=$(date +%s)
    if [ "$case" = unset ]; then
        env -u LD_LIBRARY_PATH OUT="$out" scripts/gpu-run.sh >"$tmp/$case.log" 2>&1 && rc=0 || rc=$?
    else
        LD_LIBRARY_PATH="$tmp/cuda/lib64/stubs" OUT="$out" scripts/gpu-run.sh >"$tmp/$case.log" 2>&1 && rc=0 || rc=$?
    fi
    took=$(( $(date +%s) - start ))
    python3 - "$out" "$rc" "$took" "$case" "$tmp/cuda/lib64/stubs" <<'PY'
import json, os, sys, tarfile
out, rc, took, case, stubs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def fail(msg):
    sys.exit(f"GPU check rehearsal ({case}): {msg}")
if rc == 0:
    fail("exited 0 with no GPU")
if took > 60:
    fail(f"took {took} s (over a minute)")
if sorted(os.listdir(out)) != ["gpu-logs.tar.gz", "gpu-summary.json"]:
    fail(f"files written: {sorted(os.listdir(out))}")
s = json.load(open(os.path.join(out, "gpu-summary.json")))
steps = {x["name"]: x for x in s["steps"]}
probe = steps.get("probe") or fail("no probe step")
if probe["status"] != "failed" or "driver" not in (probe.get("reason") or ""):
    fail(f"the probe step does not name the missing driver: {probe}")
later = [x for x in s["steps"] if x["name"] not in ("environment", "probe")]
if len(later) < 10 or any(x["status"] != "not-run" for x in later):
    fail(f"every later step must be marked not-run: {[(x['name'], x['status']) for x in later]}")
if s["ok"]:
    fail("summary says ok")
if case == "stubs":
    rejected = s.get("libraries_rejected_stubs", [])
    if not any(p.startswith(stubs) for p in rejected):
        fail(f"stubs not rejected: {rejected}")
    if any("/stubs/" in p for p in s.get("libraries_chosen", {}).values()):
        fail(f"a stub was chosen: {s['libraries_chosen']}")
names = tarfile.open(os.path.join(out, "gpu-logs.tar.gz")).getnames()
if "logs/probe.log" not in names or "gpu-summary.json" not in names:
    fail(f"tarball lacks the probe log or the summary: {names}")
print(f"GPU check rehearsal ({case}): exit {rc} in {took} s; probe: {probe['reason']}")
PY
done
rm -rf "$tmp"
