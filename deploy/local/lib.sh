# shellcheck shell=bash disable=SC2034  # variables are used by the scripts sourcing this
# Shared by deploy/local/*.sh: paths of the local stack and process helpers.
# Sourced, not run. Script-only settings deliberately avoid the TANTO_ prefix:
# the binaries refuse TANTO_* variables they do not know.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL="$ROOT/.local"
RUN_DIR="$LOCAL/run"
LOG_DIR="$LOCAL/log"
KAFKA_DIR="$LOCAL/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
MAILDEV_DIR="$LOCAL/maildev"
MAILDEV_BIN="$MAILDEV_DIR/node_modules/.bin/maildev"

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# pid_of PIDFILE PATTERN: prints the pid recorded in PIDFILE if that process
# is alive and its command line contains PATTERN (a reused pid is not ours),
# and removes a stale pid file.
pid_of() {
  local file=$1 pattern=$2 pid
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  if [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] &&
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"; then
    printf '%s\n' "$pid"
    return 0
  fi
  rm -f "$file"
  return 1
}

# A zombie (a child not yet reaped) counts as gone.
alive() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# stop_pid NAME PID GRACE_SECONDS: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local name=$1 pid=$2 grace=$3 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < grace * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  warn "$name (pid $pid) did not stop within ${grace}s: killing it"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
}

# lock NAME: one run at a time of a script's mutating commands per checkout.
# The lock is held on descriptor 9: every daemon the scripts start must be
# given `9>&-`, or it would inherit the lock and hold it for its lifetime.
lock() {
  local file="$RUN_DIR/$1.lock"
  mkdir -p "$RUN_DIR"
  exec 9>"$file"
  flock -w 600 9 || die "another run holds $file"
}

# start_daemon LOGFILE PIDFILE DIR CMD...: runs CMD in DIR in its own session,
# detached from the caller's terminal, pipes and lock, and records its pid.
start_daemon() {
  local log=$1 pidfile=$2 dir=$3
  shift 3
  (cd "$dir" && exec setsid "$@" </dev/null >>"$log" 2>&1 9>&-) &
  printf '%s\n' "$!" >"$pidfile"
}

# tail_log FILE: the last 20 lines, for error messages.
tail_log() {
  warn "--- last lines of $1 ---"
  tail -n 20 "$1" >&2 2>/dev/null || true
  warn "---"
}

# pids_matching TEXT: pids of the processes whose command line contains TEXT
# (a path of this checkout, so nothing else matches).
pids_matching() {
  local regex
  # shellcheck disable=SC2016 # a sed expression, not a shell one
  regex=$(printf '%s' "$1" | sed 's/[][\\.*^$()+?{}|]/\\&/g')
  pgrep -f -- "$regex" || true
}
