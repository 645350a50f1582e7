#!/usr/bin/env bash
# Creates or refreshes the project's virtualenv in .venv (editable install with every extra),
# at the versions in scripts/constraints.txt: a clean clone installs what the tests last passed
# with, not a release of a dependency from this morning (redis 8.2.0 made CI fail on three
# type-ignore comments it no longer needed). Re-installs only when pyproject.toml or the
# constraints changed (stamp file). Called by the Makefile.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
stamp=".venv/.stamp-$(cat pyproject.toml scripts/constraints.txt | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
echo "venv: installing the project into .venv" >&2
[ -x .venv/bin/python ] || "$PY" -m venv .venv
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
