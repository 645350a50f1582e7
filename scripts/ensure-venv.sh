#!/usr/bin/env bash
# Creates or refreshes the project's virtualenv in .venv (editable install with every extra),
# at the versions in scripts/constraints.txt: a clean clone installs what the tests last passed
# with, not a release of a dependency from this morning (redis 8.2.0 made CI fail on three
# type-ignore comments it no longer needed). Re-installs only when pyproject.toml or the
# constraints changed (stamp file). Called by the Makefile.
# `ensure-venv.sh --check-python` only checks that the Python the venv is (or will be) made with
# is new enough; scripts/ensure-deps.sh runs it first, before it installs anything.
# The Python is $PYTHON, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
MIN_PYTHON=3.11 # pyproject.toml's requires-python
stamp=".venv/.stamp-$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi

say() { printf 'venv: %s\n' "$*" >&2; }

# A venv is usable when its python runs pip and is new enough. Debian's python3 without
# python3-venv fails `-m venv` half-way and leaves .venv/bin/python without pip: taken for a
# venv, every later run skipped creating it and failed at the first pip install.
venv_works() {
  [ -x .venv/bin/python ] && .venv/bin/python -m pip --version >/dev/null 2>&1 &&
    python_new_enough .venv/bin/python
}

python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

python_new_enough() {
  local version
  version=$(python_version "$1") || return 1
  [ "$(printf '%s\n%s\n' "$MIN_PYTHON" "$version" | sort -V | head -1)" = "$MIN_PYTHON" ]
}

# Checked before anything is installed: Ubuntu 22.04's python3 is 3.10, and pip would refuse the
# project only after the venv was made, with a message about requires-python.
check_python() {
  if venv_works || python_new_enough "$PY"; then return 0; fi
  if ! command -v "$PY" >/dev/null 2>&1; then
    say "no $PY found: workerfleet needs Python >= $MIN_PYTHON (Debian 12 and Ubuntu 24.04:" \
      "sudo apt-get install python3 python3-venv)"
    exit 1
  fi
  say "workerfleet needs Python >= $MIN_PYTHON; $PY is $(python_version "$PY" || echo unknown)." \
    "Install a newer one (Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv;" \
    "Debian 12 and Ubuntu 24.04 have one as python3) and run again with PYTHON=python3.11" \
    "(make demo PYTHON=python3.11)"
  exit 1
}

check_python
if [ "${1:-}" = "--check-python" ]; then exit 0; fi

say "installing the project into .venv"
if [ -e .venv ] && ! venv_works; then
  say "rebuilding .venv: its python has no working pip or is too old (made without python3-venv?)"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv; then
    # a half-made .venv must not be taken for a venv by the next run
    rm -rf .venv
    say "$PY -m venv failed: on Debian or Ubuntu install python$(python_version "$PY")-venv" \
      "(make demo-deps does)"
    exit 1
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# setuptools warns on every editable install of a project whose package lives in another
# folder (ours: operator/); a newcomer's first `make demo` would open with its "!!" banner.
PYTHONWARNINGS="ignore:Editable installation" \
  .venv/bin/python -m pip install -q -c scripts/constraints.txt -e ".[operator,demo,console,sqs,dev]"
# The operator package lives in the plain folder operator/ (a package named `operator` would
# shadow the stdlib); a .pth entry makes both import packages visible to mypy, import-linter
# and subprocesses exactly as in the source tree.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n%s\n' "$PWD" "$PWD/operator" > "$site/workerfleet-src.pth"
rm -f .venv/.stamp-*
touch "$stamp"
