#!/usr/bin/env bash
# Builds the installable artifacts into ${DIST_DIR:-dist}/: the Python wheel and sdist, the Helm
# chart package, and SHA256SUMS over them. Called by `make dist` (after `make deps venv`).
# Leaves other files in dist/ alone (the OCI image archives of `make images` live there too).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DIST_DIR:-dist}"
CACHE="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}"
HELM="${HELM:-$CACHE/bin/helm}"
mkdir -p "$OUT"
rm -f "$OUT"/workerfleet-*.whl "$OUT"/workerfleet-*.tar.gz "$OUT"/workerfleet-*.tgz "$OUT"/SHA256SUMS
# an isolated build (setuptools from the pip cache), so the sdist is proven to build a wheel too
.venv/bin/python -m build --sdist --wheel --outdir "$OUT" . >"$OUT/.build.log" 2>&1 || {
  tail -30 "$OUT/.build.log" >&2; exit 1; }
rm -f "$OUT/.build.log"
"$HELM" package charts/workerfleet --destination "$OUT" >/dev/null
(cd "$OUT" && sha256sum workerfleet-*.whl workerfleet-*.tar.gz workerfleet-*.tgz > SHA256SUMS)
ls -1 "$OUT"/workerfleet-* "$OUT"/SHA256SUMS
