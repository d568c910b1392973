#!/usr/bin/env bash
# The real `openai` Python client (PyPI, in a venv) against `asyncthink serve` on the
# embedded model: starts the server on a free port, runs scripts/openai_client_check.py,
# stops the server with SIGTERM and requires exit 0 with every KV block free.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-openai
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "openai>=1.40,<4"

cargo build --locked --release --quiet
work=$(mktemp -d)
target/release/asyncthink serve --port 0 --api-key test-key --served-model-name tiny \
    --kv-cache-mb 16 --shutdown-grace 5 >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' EXIT

for _ in $(seq 1 600); do
    grep -q '^listening on ' "$work/out" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/err"; echo "server died"; exit 1; }
    sleep 0.1
done
addr=$(sed -n 's/^listening on //p' "$work/out")
[ -n "$addr" ] || { cat "$work/err"; echo "server never listened"; exit 1; }
echo "server at $addr"

status=0
"$VENV/bin/python" scripts/openai_client_check.py "$addr" test-key || status=$?

kill -TERM "$pid"
server_status=0
wait "$pid" || server_status=$?
trap - EXIT
cat "$work/err"
if [ "$server_status" -ne 0 ]; then echo "server exited $server_status after SIGTERM"; exit 1; fi
grep -q 'KV blocks free' "$work/err" || { echo "no shutdown report"; exit 1; }
exit "$status"
