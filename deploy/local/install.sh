#!/usr/bin/env bash
# Installs what the local stack and the build need, skipping what is present:
#   - Debian packages (apt-get update runs only when one is missing);
#   - the Kafka broker's jars from Maven Central into .local/kafka/libs;
#   - MailDev 3 from npm into .local/maildev.
# Safe to run again: a machine that has everything is done in a second or so.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(
  postgresql kcat curl python3
  # rdkafka's cmake-build feature compiles librdkafka
  build-essential cmake pkg-config libcurl4-openssl-dev zlib1g-dev libssl-dev libsasl2-dev
)
# Maven fetches the broker and Java runs it; installed only when the command
# is missing, since a machine may bring its own JDK. promtool, which the
# tests run on deploy/prometheus/, comes with Debian's Prometheus server.
# Node.js (20 or newer, for MailDev 3) is not installed here: Debian 12's is
# too old.
declare -A APT_FOR_COMMAND=([java]=openjdk-17-jre-headless [mvn]=maven [promtool]=prometheus)
MAILDEV_VERSION=3

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

install_debian_packages() {
  local missing=() pkg cmd
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  for cmd in "${!APT_FOR_COMMAND[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${APT_FOR_COMMAND[$cmd]}")
  done
  if ((${#missing[@]} == 0)); then
    say "apt: all packages present"
    return 0
  fi
  say "apt: installing ${missing[*]}"
  local log="$LOG_DIR/install-apt.log"
  export DEBIAN_FRONTEND=noninteractive
  if ! { "${SUDO[@]}" apt-get update -q &&
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}"; } \
    >"$log" 2>&1; then
    tail_log "$log"
    die "apt-get failed (full output in $log)"
  fi
}

# The jars are re-copied when deploy/kafka/pom.xml changes.
install_kafka() {
  local pom="$ROOT/deploy/kafka/pom.xml" stamp="$KAFKA_LIBS/.installed" hash
  hash=$(sha256sum "$pom" | cut -d' ' -f1)
  if [[ -f $stamp && $(<"$stamp") == "$hash" ]]; then
    say "kafka: jars present in $KAFKA_LIBS"
    return 0
  fi
  say "kafka: copying the broker's jars from Maven Central into $KAFKA_LIBS"
  local tmp="$KAFKA_DIR/libs.tmp"
  rm -rf "$tmp"
  mkdir -p "$KAFKA_DIR"
  local log="$LOG_DIR/install-kafka.log"
  if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
    tail_log "$log"
    die "copying the Kafka jars failed (full output in $log)"
  fi
  printf '%s\n' "$hash" >"$tmp/.installed"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

install_maildev() {
  local manifest="$MAILDEV_DIR/node_modules/maildev/package.json" version=""
  command -v npm >/dev/null || die "npm is missing: install Node.js 20 or newer"
  if [[ -x $MAILDEV_BIN && -f $manifest ]]; then
    version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$manifest" | head -n 1)
  fi
  if [[ $version == "$MAILDEV_VERSION".* ]]; then
    say "maildev: $version present in $MAILDEV_DIR"
    return 0
  fi
  say "maildev: installing maildev@$MAILDEV_VERSION from npm into $MAILDEV_DIR"
  mkdir -p "$MAILDEV_DIR"
  # MailDev 3 asks for Node.js 20; two of its dependencies declare 22 but run
  # on 20, hence the engine warnings are silenced.
  npm install --prefix "$MAILDEV_DIR" --no-audit --no-fund --loglevel=error \
    "maildev@$MAILDEV_VERSION"
}

# `--bench` adds Postfix for its smtp-sink and smtp-source, the mailer
# benchmark's baseline. Postfix is installed unconfigured, so no mail
# server of its own starts.
install_bench_packages() {
  command -v smtp-sink >/dev/null && command -v smtp-source >/dev/null && return 0
  say "apt: installing postfix (smtp-sink, smtp-source)"
  echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
  local log="$LOG_DIR/install-apt.log"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    -o Dpkg::Use-Pty=0 postfix >"$log" 2>&1 || { tail_log "$log"; die "apt-get failed (full output in $log)"; }
}

main() {
  mkdir -p "$LOCAL" "$RUN_DIR" "$LOG_DIR"
  lock install
  install_debian_packages
  if [[ ${1:-} == --bench ]]; then install_bench_packages; fi
  command -v cargo >/dev/null || warn "cargo is missing: install the Rust toolchain (rustup)"
  install_kafka
  install_maildev
}

main "$@"
