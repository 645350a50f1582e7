#!/usr/bin/env bash
# Fetches ElasticMQ (a standalone SQS-compatible server, Scala/JVM) from Maven once per version into
# $WORKERFLEET_CACHE/elasticmq/<version>/lib and checks that it starts. The SQS broker's tests,
# `workerfleet run` and `workerfleet demo --broker sqs` run it from there
# (operator/workerfleet_operator/local/embedded_elasticmq.py starts private instances on
# loopback). Called by scripts/ensure-deps.sh (so by `make deps`, and by
# `make demo-deps DEMO_ARGS="--broker sqs"`).
#
# Why a generated pom: `mvn dependency:get` of the server fails on a test-scoped artifact
# (elasticmq-common-test) that is not published; a pom depending on the server with that artifact
# excluded, then `dependency:copy-dependencies`, yields the runtime classpath (~39 jars, ~37 MB).
# Idempotent: returns at once when the version's jars are complete. Needs java >= 11 and mvn
# (Debian's default-jre-headless and maven are installed when missing).
# Exits non-zero when the server cannot be had: its tests must fail, never skip.
set -euo pipefail

CACHE="${WORKERFLEET_CACHE:-$HOME/.cache/workerfleet}"
ELASTICMQ_VERSION="${ELASTICMQ_VERSION:-1.6.11}"
SCALA_BINARY="2.13"
HOME_DIR="$CACHE/elasticmq/$ELASTICMQ_VERSION"

say() { printf 'elasticmq: %s\n' "$*" >&2; }

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if ((${#need_apt[@]})) && ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get here: this script installs Java and Maven with Debian's or Ubuntu's apt only."
  say "Install a Java runtime >= 11 (java) and Maven (mvn) yourself, then run it again."
  exit 1
fi
if ((${#need_apt[@]})); then
  say "installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -f "$HOME_DIR/.complete" ]; then
  say "fetching org.elasticmq:elasticmq-server_$SCALA_BINARY:$ELASTICMQ_VERSION (one time, ~37 MB)"
  rm -rf "$HOME_DIR"
  mkdir -p "$HOME_DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  cat >"$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>workerfleet.local</groupId>
  <artifactId>elasticmq-fetch</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.elasticmq</groupId>
      <artifactId>elasticmq-server_$SCALA_BINARY</artifactId>
      <version>$ELASTICMQ_VERSION</version>
      <exclusions>
        <exclusion>
          <groupId>org.elasticmq</groupId>
          <artifactId>elasticmq-common-test_$SCALA_BINARY</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
  </dependencies>
</project>
POM
  (cd "$tmp" && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$HOME_DIR/lib") >&2
  touch "$HOME_DIR/.complete"
fi

ls "$HOME_DIR"/lib/elasticmq-server_"$SCALA_BINARY"-"$ELASTICMQ_VERSION".jar >/dev/null
java -version >/dev/null 2>&1
say "ok: elasticmq $ELASTICMQ_VERSION ($(ls "$HOME_DIR/lib" | wc -l) jars in $HOME_DIR/lib)"
