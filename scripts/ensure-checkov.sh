#!/usr/bin/env bash
# Installs checkov (the IaC security scanner the chart tests run) into its OWN virtualenv under
# the workerfleet cache, keyed by version, and links it as $WORKERFLEET_CACHE/bin/checkov.
# Called by scripts/ensure-deps.sh (so by `make deps`, `make test`, `make chart-check`).
#
# Why a separate venv and not a pyproject extra: checkov is ~290 MB and pins dozens of libraries
# (boto3, networkx, pydantic-free but strict ranges of jsonschema, packaging, ...) that would fight
# the project's own pins; it is a tool we run as a subprocess, never a library we import.
# Idempotent: returns at once when the pinned version is already there.
set -euo pipefail

CACHE="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}"
CHECKOV_VERSION="3.3.30"
VENV="$CACHE/tools/checkov-$CHECKOV_VERSION"
PY="${PYTHON:-python3}"

say() { printf 'checkov: %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/checkov" ] || [ ! -f "$VENV/.complete" ]; then
  say "installing checkov $CHECKOV_VERSION into $VENV (one time, ~290 MB)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION"
  touch "$VENV/.complete"
fi
mkdir -p "$CACHE/bin"
ln -sf "$VENV/bin/checkov" "$CACHE/bin/checkov"
"$CACHE/bin/checkov" --version >/dev/null
say "ok: checkov $("$CACHE/bin/checkov" --version)"
