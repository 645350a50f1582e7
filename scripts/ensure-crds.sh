#!/usr/bin/env bash
# Fetches the CustomResourceDefinitions of the third-party kinds workerfleet emits, from their
# projects' own Go modules (the Go toolchain's module download, no build), into the workerfleet
# cache keyed by version:
#   KEDA                 github.com/kedacore/keda/v2  config/crd/bases/ (ScaledObject,
#                        TriggerAuthentication, ...)  -> $CACHE/crds/keda-<version>/
#   prometheus-operator  github.com/prometheus-operator/prometheus-operator
#                        example/prometheus-operator-crd/ (PodMonitor, ServiceMonitor,
#                        PrometheusRule)               -> $CACHE/crds/prometheus-operator-<version>/
# The e2e tests install them on the real control plane (tests/e2e/test_third_party_crds_on_kube.py)
# and apply every object keda mode and the chart's monitoring values emit.
# Called by scripts/ensure-deps.sh (make deps / e2e / test). Idempotent: a version already
# copied is left alone; the module download cache lives in $CACHE/gomod, outside the repo.
set -euo pipefail

CACHE="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}"
KEDA_VERSION="v2.21.0"
# The newest prometheus-operator root module the module proxy serves here (v0.95.2 is refused).
PROMETHEUS_OPERATOR_VERSION="v0.86.1"

say() { printf 'crds: %s\n' "$*" >&2; }

# fetch_crds MODULE VERSION SUBDIR DEST FILE...: copy FILEs of MODULE@VERSION/SUBDIR into DEST.
fetch_crds() {
  local module=$1 version=$2 subdir=$3 dest=$4
  shift 4
  if [ -f "$dest/.complete" ]; then return 0; fi
  command -v go >/dev/null || { say "the Go toolchain is needed to fetch $module"; exit 1; }
  say "fetching $module@$version (Go module download, one time)"
  local dir
  dir=$(GOMODCACHE="$CACHE/gomod" GOFLAGS=-mod=mod go mod download -json "$module@$version" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if "Error" in d else print(d["Dir"])')
  rm -rf "$dest"
  mkdir -p "$dest"
  for file in "$@"; do
    cp "$dir/$subdir/$file" "$dest/$file"
  done
  chmod u+w "$dest"/*.yaml
  touch "$dest/.complete"
}

fetch_crds github.com/kedacore/keda/v2 "$KEDA_VERSION" config/crd/bases \
  "$CACHE/crds/keda-$KEDA_VERSION" \
  keda.sh_scaledobjects.yaml keda.sh_triggerauthentications.yaml \
  keda.sh_clustertriggerauthentications.yaml keda.sh_scaledjobs.yaml
fetch_crds github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
  example/prometheus-operator-crd "$CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION" \
  monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_servicemonitors.yaml \
  monitoring.coreos.com_prometheusrules.yaml
say "ok: $CACHE/crds/keda-$KEDA_VERSION $CACHE/crds/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
