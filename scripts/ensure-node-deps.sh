#!/usr/bin/env bash
# Installs, idempotently, what `make images` and the real-node e2e tests need from Debian:
# mmdebstrap + umoci + skopeo build the OCI images without a container engine; containerd,
# runc and the CNI plugins run the real node's pods; busybox-static is the sandbox ("pause")
# image's only binary. Called by `make images` and `make e2e`. Exits non-zero when a tool
# cannot be had: the tests must fail, never skip.
set -euo pipefail

say() { printf 'node-deps: %s\n' "$*" >&2; }

# package -> a file that proves it is installed
declare -A probe=(
  [mmdebstrap]=/usr/bin/mmdebstrap
  [umoci]=/usr/bin/umoci
  [skopeo]=/usr/bin/skopeo
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [busybox-static]=/bin/busybox
  [iptables]=/usr/sbin/iptables
  [iproute2]=/usr/sbin/ip
  [uidmap]=/usr/bin/newuidmap
)
need=()
for pkg in "${!probe[@]}"; do
  [ -e "${probe[$pkg]}" ] || need+=("$pkg")
done
if ((${#need[@]})); then
  say "installing ${need[*]} from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Where an init system runs, Debian starts containerd on install; the tests start their own
  # instance with a private root, state directory and socket.
  $SUDO systemctl disable --now containerd >/dev/null 2>&1 || true
fi
say "ok: $(containerd --version | cut -d' ' -f3) runc $(runc --version | head -1 | cut -d' ' -f3) umoci $(umoci --version | cut -d' ' -f3)"
