#!/usr/bin/env bash
# Installs Debian's rabbitmq-server (3.10, Erlang 25; management and prometheus plugins bundled),
# idempotently. Called by `make deps` and by `make demo-deps DEMO_ARGS="--broker rabbitmq"`
# (scripts/ensure-deps.sh). The project never uses the system service: the tests, `workerfleet
# run` and the demo start private nodes on loopback
# (operator/workerfleet_operator/local/embedded_rabbitmq.py) and stop them by PID. Exits
# non-zero when the broker cannot be had: tests fail, never skip.
set -euo pipefail
say() { printf 'deps: %s\n' "$*" >&2; }

if ! command -v rabbitmq-server >/dev/null 2>&1 || ! command -v rabbitmqctl >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "no apt-get here: this script installs rabbitmq-server with Debian's or Ubuntu's apt only."
    say "Install rabbitmq-server (with its management plugin, rabbitmqctl on PATH) yourself, then run it again."
    exit 1
  fi
  say "installing rabbitmq-server from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
  # Where an init system runs, Debian starts the system broker on install; the project only
  # wants the binaries (its own brokers run on loopback under their own node names).
  $SUDO systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
fi
# The wrapper drops to this user; the private brokers' directories must be owned by it.
id rabbitmq >/dev/null 2>&1 || { say "the rabbitmq user is missing (broken rabbitmq-server install)"; exit 1; }
ls /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins 2>/dev/null | grep -q '^rabbitmq_management-' \
  || { say "rabbitmq_management plugin not found"; exit 1; }
say "ok: rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')"
