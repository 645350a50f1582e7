#!/usr/bin/env bash
# `make bench-runtime`: the side-by-side runtime throughput benchmark.
# Prepares (idempotently, outside the repo) one venv per Python peer, keyed by a hash of its
# requirements file so the peers' redis-py pins never meet each other or the project's .venv,
# and a Node folder with BullMQ; then hands over to driver.py, which runs everything against one
# redis-server it starts on a free loopback port. Env: BENCH_JOBS, BENCH_SYSTEMS, BENCH_OUT,
# BENCH_PREPARE_ONLY=1 (install and stop).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}"
venvs="$cache/bench-venv"
node_dir="$cache/bench-node"
BULLMQ_VERSION="6.7.0"
# bullmq 6 takes its Redis client as an optional peer dependency: ioredis is the classic one.
IOREDIS_VERSION="5.9.3"
PY="${PYTHON:-python3}"

command -v redis-server >/dev/null || { echo "bench-runtime: redis-server missing (run: make deps)" >&2; exit 1; }
[ -x "$root/.venv/bin/python" ] || { echo "bench-runtime: .venv missing (run: make venv)" >&2; exit 1; }

mkdir -p "$venvs"
for req in "$here"/requirements/*.txt; do
  name="$(basename "$req" .txt)"
  key="$(sha256sum "$req" | cut -c1-12)"
  venv="$venvs/$name-$key"
  if [ ! -f "$venv/.ready" ]; then
    echo "bench-runtime: installing $name into $venv" >&2
    rm -rf "$venv"
    # A peer that cannot be installed is reported as unavailable in the table, not fatal.
    if ! { "$PY" -m venv "$venv" \
      && "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"; }; then
      echo "bench-runtime: could not install $name; it will be reported as unavailable" >&2
      continue
    fi
    touch "$venv/.ready"
  fi
  # driver.py finds each peer's interpreter through these variables.
  export "BENCH_VENV_$(echo "$name" | tr '[:lower:]' '[:upper:]')=$venv"
done

if ! command -v node >/dev/null; then
  echo "bench-runtime: node missing; BullMQ will be reported as unavailable" >&2
elif [ ! -f "$node_dir/node_modules/bullmq/package.json" ] \
  || [ ! -f "$node_dir/node_modules/ioredis/package.json" ] \
  || ! grep -q "\"version\": \"$BULLMQ_VERSION\"" "$node_dir/node_modules/bullmq/package.json"; then
  echo "bench-runtime: npm install bullmq@$BULLMQ_VERSION into $node_dir" >&2
  mkdir -p "$node_dir"
  [ -f "$node_dir/package.json" ] || printf '{"name":"workerfleet-bench","private":true}\n' > "$node_dir/package.json"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund \
    "bullmq@$BULLMQ_VERSION" "ioredis@$IOREDIS_VERSION") \
    || echo "bench-runtime: npm install failed; BullMQ will be reported as unavailable" >&2
fi
export BENCH_NODE_MODULES="$node_dir/node_modules"

if [ "${BENCH_PREPARE_ONLY:-0}" = 1 ]; then echo "bench-runtime: prepared"; exit 0; fi
exec "$root/.venv/bin/python" "$here/driver.py" "$@"
