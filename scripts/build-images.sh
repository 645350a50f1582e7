#!/usr/bin/env bash
# Builds workerfleet's container images without a container engine, as OCI archives:
#   dist/workerfleet-operator.tar  the operator (operator/Dockerfile describes the same image)
#   dist/email-worker.tar          the example worker (examples/worker-image/Dockerfile)
# and, for the real-node e2e tests only, the CRI sandbox ("pause") image in the cache.
# Called by `make images` (operator + worker) and by the e2e harness (tests/e2e/kubenode.py).
#
# How: mmdebstrap makes a Debian rootfs holding Debian's python3; the project's wheel and its
# PyPI dependencies (a wheelhouse built with the project's own pip) are installed inside it into
# a virtualenv, with pip run from its own wheel so no pip is left in the image; umoci turns the
# rootfs into an OCI image layer and writes the config (numeric non-root user 10001, exec-form
# entrypoint, the same environment as the Dockerfiles). Each archive is cached outside the repo
# under a key hashed from every input (sources, this script, the Debian suite), so an unchanged
# tree rebuilds nothing; dist/ gets a copy and `<name>.digest` (the manifest digest).
#
# Usage: build-images.sh [operator|worker|pause|e2e-worker ...]   (default: operator worker)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}/images"
DIST="$ROOT/dist"
SUITE=bookworm
# Binary wheels must run on the suite's glibc (bookworm: 2.36). pip matches --platform tags
# literally, so every manylinux tag that glibc satisfies is listed.
WHEEL_PLATFORMS=()
for minor in $(seq 36 -1 5); do WHEEL_PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
WHEEL_PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
PY_BIN="${PYTHON_FOR_WHEELS:-$ROOT/.venv/bin/python}"
# Debian's own mirror list, whatever this machine's apt uses (no host name in this script).
SOURCES="${DEBIAN_SOURCES:-}"
if [ -z "$SOURCES" ]; then
  for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$f" ]; then SOURCES=$f; break; fi
  done
fi

say() { printf 'images: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { say "must run as root (mmdebstrap, chroot and umoci unpack need it)"; exit 1; }
for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || { say "$tool missing: run scripts/ensure-node-deps.sh"; exit 1; }
done
mkdir -p "$CACHE" "$DIST"
# Work directories of builds in progress, removed however the script ends.
WORKDIRS=()
cleanup() { ((${#WORKDIRS[@]})) && rm -rf "${WORKDIRS[@]}"; return 0; }
trap cleanup EXIT
# new_workdir NAME: sets $WORK to a fresh build directory (no subshell, so WORKDIRS keeps it)
new_workdir() { WORK=$(mktemp -d "$CACHE/build-$1.XXXX"); WORKDIRS+=("$WORK"); }

# hash_inputs FILE... -> one sha256 over the listed files' paths and contents (plus this script)
hash_inputs() {
  { sha256sum "$ROOT/scripts/build-images.sh" | cut -d' ' -f1; echo "$SUITE"
    find -L "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum; } |
    sha256sum | cut -c1-16
}

# The Debian part of every Python image: essential packages + python3, no docs/manpages/locales.
# Cached under a key from this function's own text (suite, packages, options).
build_python_rootfs() {
  local key out
  key=$({ echo "$SUITE"; declare -f build_python_rootfs; } | sha256sum | cut -c1-16)
  out="$CACHE/python-rootfs-$key.tar"
  if [ ! -s "$out" ]; then
    say "debian $SUITE rootfs with python3 (mmdebstrap)"
    rm -f "$CACHE"/python-rootfs-*.tar
    rm -rf "$out.partial.tar"
    mmdebstrap --quiet --format=tar --variant=essential --include=python3,ca-certificates \
      --aptopt='Acquire::Check-Valid-Until "false"' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
      "$SUITE" "$out.partial.tar" "$SOURCES" >&2
    mv "$out.partial.tar" "$out"
  fi
  printf '%s' "$out"
}

# build_project_wheels DIR: the project's wheel, built from a copy of the sources (so no build/
# or egg-info lands in the tree), and pip's own wheel, which runs pip inside the rootfs.
build_project_wheels() {
  local dir=$1 src
  src=$(dirname "$dir")/src
  mkdir -p "$dir" "$src/operator"
  cp -r pyproject.toml README.md worker_runtime "$src/"
  # -L: operator/workerfleet_operator/data/ holds links to files elsewhere in the repo (the
  # demo's tasks and pool, the fast alert rules) that the wheel carries as package data.
  cp -rL operator/workerfleet_operator "$src/operator/"
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  local pip=("$PY_BIN" -m pip --quiet --disable-pip-version-check)
  "${pip[@]}" wheel --no-deps --wheel-dir "$dir" "$src" >&2
  "${pip[@]}" download --no-deps --dest "$dir" pip >&2
}

# build_python_image NAME KEY VENV EXTRA REQUIREMENTS APP_DIR -- umoci config args...
# (VENV: where the virtualenv goes, the same path as in the image's Dockerfile)
build_python_image() {
  local name=$1 key=$2 venv=$3 extra=$4 requirements=$5 app_dir=$6
  shift 7
  local out="$CACHE/$name-$key.tar"
  if [ -s "$out" ]; then publish "$name" "$out" cached; return; fi
  local started work base
  started=$(date +%s)
  base=$(build_python_rootfs)
  new_workdir "$name"
  work=$WORK
  mkdir -p "$work/rootfs"
  tar -xf "$base" -C "$work/rootfs"
  say "$name: installing workerfleet$extra into $venv (pip inside the rootfs)"
  build_project_wheels "$work/rootfs/tmp/wheels"
  if [ -n "$requirements" ]; then cp "$requirements" "$work/rootfs/tmp/wheels/requirements.txt"; fi
  # The dependencies are resolved by the image's own python3 (its version decides markers such
  # as redis' `python_full_version < "3.11.3"`), from the package index this machine uses: pip
  # runs with this machine's resolver and CA bundle, and nothing else from its environment.
  cp /etc/resolv.conf "$work/rootfs/etc/resolv.conf"
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$work/rootfs/tmp/wheels/index-ca.crt"
  local pip_whl pip_env=(env -i PATH=/usr/bin:/bin HOME=/tmp "PIP_CERT=/tmp/wheels/index-ca.crt")
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT https_proxy HTTPS_PROXY http_proxy HTTP_PROXY no_proxy NO_PROXY; do
    if [ -n "${!var:-}" ]; then pip_env+=("$var=${!var}"); fi
  done
  pip_whl=$(cd "$work/rootfs/tmp/wheels" && ls pip-*.whl)
  chroot "$work/rootfs" /usr/bin/python3 -m venv --without-pip "$venv"
  # --compile: the .pyc files are written now, since the root filesystem is read-only at run time.
  chroot "$work/rootfs" "${pip_env[@]}" "$venv/bin/python" "/tmp/wheels/$pip_whl/pip" \
    --quiet --disable-pip-version-check --no-cache-dir install --compile \
    --find-links /tmp/wheels "workerfleet$extra" ${requirements:+-r /tmp/wheels/requirements.txt}
  # The kubelet (or a container engine) provides these at run time; keep no build-time copy.
  : >"$work/rootfs/etc/resolv.conf"
  # The image runs as 10001; a passwd entry names it (kopf derives its identity from
  # getpass.getuser(), which raises for a uid without one).
  echo "workerfleet:x:10001:10001:workerfleet:/tmp:/usr/sbin/nologin" >>"$work/rootfs/etc/passwd"
  echo "workerfleet:x:10001:" >>"$work/rootfs/etc/group"
  rm -rf "$work/rootfs/tmp/wheels"
  if [ -n "$app_dir" ]; then
    mkdir -p "$work/rootfs/app"
    cp -r "$ROOT/$app_dir" "$work/rootfs/app/"
    chroot "$work/rootfs" /usr/bin/python3 -m compileall -q /app
  fi
  assemble_image "$name" "$work" "$out" "$@"
  publish "$name" "$out" "built in $(($(date +%s) - started))s"
}

# assemble_image NAME WORKDIR OUT umoci-config-args...: $WORKDIR/rootfs -> OCI archive OUT
assemble_image() {
  local name=$1 work=$2 out=$3
  shift 3
  local layout="$work/oci" ref=$VERSION
  umoci init --layout "$layout"
  umoci new --image "$layout:$ref"
  umoci unpack --image "$layout:$ref" "$work/bundle" >/dev/null
  rm -rf "$work/bundle/rootfs"
  mv "$work/rootfs" "$work/bundle/rootfs"
  umoci repack --refresh-bundle --history.created_by="scripts/build-images.sh $name" --image "$layout:$ref" "$work/bundle"
  umoci config --no-history --image "$layout:$ref" --os linux --architecture amd64 "$@"
  write_archive "$name" "$layout" "$out"
}

# write_archive NAME LAYOUT OUT: the OCI layout as one tar, named for containerd's import
write_archive() {
  local name=$1 layout=$2 out=$3
  umoci gc --layout "$layout"
  # containerd names an imported image after this annotation (`ctr images import`).
  "$PY_BIN" - "$layout/index.json" "docker.io/workerfleet/$name:$VERSION" <<'EOF'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"))
EOF
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out.tmp" .
  # One archive per image in the cache: the one for the current inputs.
  rm -f "$CACHE/$name"-*.tar
  mv "$out.tmp" "$out"
}

# publish NAME ARCHIVE HOW: copy to dist/ (test-only images stay in the cache), print size
# and digest; $PUBLISHED is the archive.
publish() {
  local name=$1 archive=$2 how=$3 digest size
  digest=$(tar -xOf "$archive" ./index.json | "$PY_BIN" -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
  size=$(du -m "$archive" | cut -f1)
  PUBLISHED=$archive
  if [ "$name" != pause ] && [ "$name" != e2e-worker ]; then
    cp -f "$archive" "$DIST/$name.tar"
    printf '%s\n' "$digest" >"$DIST/$name.digest"
  fi
  say "$name ($how): docker.io/workerfleet/$name:$VERSION ${size} MB $digest"
  printf 'image %s docker.io/workerfleet/%s:%s %s %s\n' "$name" "$name" "$VERSION" "$digest" "$archive"
}

# What both Dockerfiles' final stages set (PATH is prefixed with the image's venv below).
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PY_ENV=(--config.env=PYTHONDONTWRITEBYTECODE=1 --config.env=PYTHONUNBUFFERED=1 --config.env=HOME=/tmp
  --config.user=10001:10001)

build_operator() {
  local key
  key=$(hash_inputs pyproject.toml README.md worker_runtime operator/workerfleet_operator)
  # The console extra too: the chart's opt-in console Deployment runs this image.
  build_python_image workerfleet-operator "$key" /opt/workerfleet "[operator,console]" "" "" -- \
    "${PY_ENV[@]}" --config.env=PATH=/opt/workerfleet/bin:$SYSTEM_PATH \
    --config.exposedports=8080/tcp --config.exposedports=9090/tcp \
    --config.entrypoint=workerfleet --config.cmd=operator
}

build_worker() {
  local key
  key=$(hash_inputs pyproject.toml README.md worker_runtime operator/workerfleet_operator examples/worker-image)
  build_python_image email-worker "$key" /opt/venv "" examples/worker-image/requirements.txt \
    examples/worker-image/emails -- "${PY_ENV[@]}" --config.env=PATH=/opt/venv/bin:$SYSTEM_PATH \
    --config.env=PYTHONPATH=/app \
    --config.workingdir=/app --config.exposedports=9100/tcp \
    --config.entrypoint=workerfleet --config.entrypoint=worker
}

# The CRI sandbox image: one static busybox sleeping as PID 1 (containerd kills it with SIGKILL).
build_pause() {
  local key out work
  key=$(printf '%s %s' "$(sha256sum /bin/busybox | cut -c1-16)" "$(sha256sum "$ROOT/scripts/build-images.sh" | cut -c1-16)" | sha256sum | cut -c1-16)
  out="$CACHE/pause-$key.tar"
  if [ -s "$out" ]; then publish pause "$out" cached; return; fi
  new_workdir pause
  work=$WORK
  mkdir -p "$work/rootfs/bin"
  cp /bin/busybox "$work/rootfs/bin/busybox"
  assemble_image pause "$work" "$out" --config.user=65535:65535 \
    --config.entrypoint=/bin/busybox --config.entrypoint=sleep --config.entrypoint=2147483647
  publish pause "$out" built
}

# The e2e tests' worker (tests/e2e/test_real_node.py): the email-worker image plus one layer
# holding tests/e2e/node_tasks.py, the tasks those tests enqueue.
build_e2e_worker() {
  build_worker >/dev/null
  local base=$PUBLISHED key out
  key=$({ basename "$base"; sha256sum "$ROOT/tests/e2e/node_tasks.py"; } | sha256sum | cut -c1-16)
  out="$CACHE/e2e-worker-$key.tar"
  if [ -s "$out" ]; then publish e2e-worker "$out" cached; return; fi
  new_workdir e2e-worker
  mkdir "$WORK/oci"
  tar -xf "$base" -C "$WORK/oci"
  umoci insert --history.created_by="scripts/build-images.sh e2e-worker" \
    --image "$WORK/oci:$VERSION" "$ROOT/tests/e2e/node_tasks.py" /app/node_tasks.py
  write_archive e2e-worker "$WORK/oci" "$out"
  publish e2e-worker "$out" built
}

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(operator worker)
for target in "${targets[@]}"; do
  case "$target" in
    operator) build_operator ;;
    worker) build_worker ;;
    pause) build_pause ;;
    e2e-worker) build_e2e_worker ;;
    *) say "unknown image: $target"; exit 2 ;;
  esac
done
