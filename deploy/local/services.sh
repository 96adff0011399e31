#!/usr/bin/env bash
# The tanto daemons, run in the background from the built binaries in
# ${TANTO_BIN_DIR:-target/debug} against the local stack.
#
#   deploy/local/services.sh up       start those not running, wait for "ready"
#   deploy/local/services.sh down     SIGTERM, up to 20 s, then SIGKILL
#   deploy/local/services.sh status   one line per daemon; exit 1 if one is down
#
# The binaries read TANTO_* variables whose defaults match the local stack; the
# environment is passed through unchanged. They run from the repository root,
# where the default catalog and template paths (deploy/mail/...) resolve.
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DAEMONS=(order-notifier contract-notifier quote-notifier mailer)
BIN_DIR=${TANTO_BIN_DIR:-target/debug}
[[ $BIN_DIR == /* ]] || BIN_DIR="$ROOT/$BIN_DIR"
READY_TIMEOUT=${SERVICES_READY_TIMEOUT:-60}
STOP_GRACE=20

bin_of() { printf '%s/%s\n' "$BIN_DIR" "$1"; }
pidfile_of() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }
log_of() { printf '%s/%s.log\n' "$LOG_DIR" "$1"; }

# The running process of NAME, recognised by its binary's path.
running_pid() {
  pid_of "$(pidfile_of "$1")" "$(bin_of "$1")"
}

# Log lines may carry ANSI colours; the binaries say `ready` once subscribed.
log_says_ready() {
  sed 's/\x1b\[[0-9;]*m//g' "$(log_of "$1")" 2>/dev/null | grep -qw ready
}

start() {
  local name=$1 bin log
  bin=$(bin_of "$name")
  log=$(log_of "$name")
  [[ -x $bin ]] || die "$bin is missing: run make build"
  # Keep the previous run's log; the new one holds this run's `ready`.
  if [[ -f $log ]]; then mv -f "$log" "$log.1"; fi
  start_daemon "$log" "$(pidfile_of "$name")" "$ROOT" "$bin"
}

up() {
  local name pid started=()
  for name in "${DAEMONS[@]}"; do
    if pid=$(running_pid "$name"); then
      # A rebuilt binary replaces the running one, so `make up` after a code
      # change runs the new code.
      if [[ $(bin_of "$name") -nt $(pidfile_of "$name") ]]; then
        say "$name: binary changed, restarting"
        stop_pid "$name" "$pid" "$STOP_GRACE"
        rm -f "$(pidfile_of "$name")"
      else
        say "$name: already running (pid $pid)"
        continue
      fi
    fi
    start "$name"
    started+=("$name")
  done
  ((${#started[@]} > 0)) || return 0

  local deadline=$((SECONDS + READY_TIMEOUT)) waiting=("${started[@]}") still
  while ((${#waiting[@]} > 0)); do
    still=()
    for name in "${waiting[@]}"; do
      if ! running_pid "$name" >/dev/null; then
        tail_log "$(log_of "$name")"
        die "$name exited during start-up"
      elif log_says_ready "$name"; then
        say "$name: ready (pid $(<"$(pidfile_of "$name")"), log $(log_of "$name"))"
      else
        still+=("$name")
      fi
    done
    waiting=("${still[@]}")
    ((${#waiting[@]} > 0)) || break
    if ((SECONDS >= deadline)); then
      for name in "${waiting[@]}"; do tail_log "$(log_of "$name")"; done
      die "not ready within ${READY_TIMEOUT}s: ${waiting[*]}"
    fi
    sleep 0.5
  done
}

down() {
  local name pid pids=()
  for name in "${DAEMONS[@]}"; do
    if pid=$(running_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$(pidfile_of "$name")"
  done

  # All were told at once and share one grace period.
  local deadline=$((SECONDS + STOP_GRACE)) left=("${pids[@]}")
  while ((${#left[@]} > 0 && SECONDS < deadline)); do
    sleep 0.2
    pids=("${left[@]}")
    left=()
    for pid in "${pids[@]}"; do
      if alive "$pid"; then left+=("$pid"); fi
    done
  done
  for pid in "${left[@]}"; do
    warn "pid $pid did not stop within ${STOP_GRACE}s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  done
  say "services: stopped"
}

status() {
  local name pid failed=0
  for name in "${DAEMONS[@]}"; do
    if pid=$(running_pid "$name"); then
      printf '%-18s up    pid %s, log %s\n' "$name" "$pid" "$(log_of "$name")"
    else
      printf '%-18s down\n' "$name"
      failed=1
    fi
  done
  return "$failed"
}

main() {
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  case "${1:-}" in
    up) lock services; up ;;
    down) lock services; down ;;
    status) status ;;
    *) die "usage: $0 up|down|status" ;;
  esac
}

main "$@"
