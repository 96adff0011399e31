#!/usr/bin/env bash
# The local stack: Postgres (Debian cluster), a single-node Kafka broker and
# MailDev.
#
#   deploy/local/stack.sh up       start what is not running (idempotent)
#   deploy/local/stack.sh down     stop all three
#   deploy/local/stack.sh status   one line per service; exit 1 if one is down
#
# Run deploy/local/install.sh first. State lives in .local/ (see
# docs/local-stack.md).
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_VERSION=${LOCAL_PG_VERSION:-15}
PG_CLUSTER=main
PG_PORT=5432
DATABASE_URL="postgres://tanto:tanto@127.0.0.1:$PG_PORT/tanto"

KAFKA_PORT=9092
KAFKA_CONF="$KAFKA_DIR/server.properties"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PID="$RUN_DIR/kafka.pid"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_MATCH="kafka.Kafka $KAFKA_CONF"
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}

MAILDEV_SMTP_PORT=1025
MAILDEV_WEB_PORT=1080
# MailDev 3 serves its REST API under /api (MailDev 2 had /email):
# GET /api/email lists the mails, DELETE /api/email/all clears them.
MAILDEV_API="http://127.0.0.1:$MAILDEV_WEB_PORT/api/email"
MAILDEV_PID="$RUN_DIR/maildev.pid"
MAILDEV_LOG="$LOG_DIR/maildev.log"
MAILDEV_MATCH="$MAILDEV_BIN --smtp"

STARTUP_TIMEOUT=${STACK_STARTUP_TIMEOUT:-60}

# --- Postgres ----------------------------------------------------------------

pg_status() {
  pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" \
    '$1 == v && $2 == c { print $4; found = 1 } END { exit !found }'
}

pg_psql() {
  runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 --port "$PG_PORT" "$@"
}

pg_answers() {
  pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2
}

pg_up() {
  if ! pg_status >/dev/null; then
    say "postgres: creating cluster $PG_VERSION/$PG_CLUSTER"
    pg_createcluster --port "$PG_PORT" --encoding UTF8 --locale C.UTF-8 \
      "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi

  # Integration tests spawn several binaries with a pool each, so allow more
  # connections than Debian's 100. Applied by a restart only when it changed.
  local conf="/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/tanto-local.conf"
  local wanted="max_connections = 300"
  local changed=false
  if [[ ! -f $conf || $(<"$conf") != "$wanted" ]]; then
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$wanted" >"$conf"
    changed=true
  fi

  local state
  state=$(pg_status)
  if [[ $state != online* ]]; then
    say "postgres: starting cluster $PG_VERSION/$PG_CLUSTER"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start 9>&-
  elif $changed; then
    say "postgres: restarting cluster $PG_VERSION/$PG_CLUSTER for $conf"
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" restart 9>&-
  fi

  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  until pg_answers || ((SECONDS >= deadline)); do sleep 0.5; done
  pg_answers || die "postgres does not answer on 127.0.0.1:$PG_PORT (see /var/log/postgresql/)"

  pg_psql -d postgres <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tanto') THEN
    CREATE ROLE tanto LOGIN CREATEDB PASSWORD 'tanto';
  ELSE
    ALTER ROLE tanto LOGIN CREATEDB PASSWORD 'tanto';
  END IF;
END
$$;
SELECT 'CREATE DATABASE tanto OWNER tanto ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'tanto')
\gexec
ALTER DATABASE tanto OWNER TO tanto;
SQL

  # The URL the code uses: password authentication over TCP.
  psql -X -q -At "$DATABASE_URL" -c 'SELECT 1' >/dev/null ||
    die "cannot log in with $DATABASE_URL (check pg_hba.conf allows scram-sha-256 for 127.0.0.1)"
  say "postgres: ready at $DATABASE_URL"
}

pg_down() {
  if [[ $(pg_status || true) == online* ]]; then
    pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" stop
  fi
  say "postgres: stopped"
}

pg_report() {
  local state
  state=$(pg_status || echo "missing")
  if [[ $state == online* ]] && pg_answers; then
    say "postgres  up    cluster $PG_VERSION/$PG_CLUSTER, $DATABASE_URL"
  else
    say "postgres  down  cluster $PG_VERSION/$PG_CLUSTER is $state"
    return 1
  fi
}

# --- Kafka -------------------------------------------------------------------

kafka_java() {
  java -cp "$KAFKA_LIBS/*" "$@"
}

kafka_answers() {
  timeout 5 kcat -b "127.0.0.1:$KAFKA_PORT" -L -m 3 >/dev/null 2>&1
}

kafka_render_config() {
  local tmp="$KAFKA_CONF.tmp"
  sed "s|@LOG_DIRS@|$KAFKA_DATA|" "$ROOT/deploy/kafka/server.properties" >"$tmp"
  mv "$tmp" "$KAFKA_CONF"
}

kafka_format() {
  [[ -f $KAFKA_DATA/meta.properties ]] && return 0
  if [[ ! -s $KAFKA_DIR/cluster-id ]]; then
    kafka_java kafka.tools.StorageTool random-uuid >"$KAFKA_DIR/cluster-id.tmp"
    mv "$KAFKA_DIR/cluster-id.tmp" "$KAFKA_DIR/cluster-id"
  fi
  # A data directory without meta.properties is a half-done format: start over.
  rm -rf "$KAFKA_DATA"
  say "kafka: formatting $KAFKA_DATA"
  kafka_java kafka.tools.StorageTool format --standalone \
    -t "$(<"$KAFKA_DIR/cluster-id")" -c "$KAFKA_CONF" >>"$KAFKA_LOG" 2>&1 ||
    { tail_log "$KAFKA_LOG"; die "kafka: storage format failed"; }
}

# wait_for NAME PID CHECK LOG: waits until CHECK succeeds while PID lives.
wait_for() {
  local name=$1 pid=$2 check=$3 log=$4
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      tail_log "$log"
      die "$name exited during start-up"
    fi
    "$check" && return 0
    sleep 0.5
  done
  tail_log "$log"
  die "$name did not answer within ${STARTUP_TIMEOUT}s"
}

# A pid of ours that is alive but does not answer may be starting: give it the
# start-up time, then kill it so that a fresh one can be started.
revive_or_keep() {
  local name=$1 pidfile=$2 pattern=$3 check=$4 pid
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  pid=$(pid_of "$pidfile" "$pattern") || return 1
  while ((SECONDS < deadline)); do
    "$check" && return 0
    alive "$pid" || { rm -f "$pidfile"; return 1; }
    sleep 0.5
  done
  warn "$name: pid $pid is alive but does not answer: killing it"
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.1; done
  rm -f "$pidfile"
  return 1
}

# No (valid) pid file: adopt a process of this checkout that answers (its pid
# file was removed), kill one that does not, and use a service of another
# checkout that answers on the port.
adopt_or_clear() {
  local name=$1 pidfile=$2 pattern=$3 check=$4 pid
  for pid in $(pids_matching "$pattern"); do
    if "$check"; then
      printf '%s\n' "$pid" >"$pidfile"
      say "$name: adopted running pid $pid"
      return 0
    fi
    warn "$name: killing pid $pid of this checkout, which does not answer"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  done
  if "$check"; then
    say "$name: answering already, but not started from this checkout; using it"
    return 0
  fi
  return 1
}

kafka_up() {
  [[ -f $KAFKA_LIBS/.installed ]] || die "kafka jars missing: run deploy/local/install.sh"
  command -v kcat >/dev/null || die "kcat missing: run deploy/local/install.sh"

  if revive_or_keep kafka "$KAFKA_PID" "$KAFKA_MATCH" kafka_answers; then
    say "kafka: already running (pid $(<"$KAFKA_PID"))"
    return 0
  fi
  adopt_or_clear kafka "$KAFKA_PID" "$KAFKA_MATCH" kafka_answers && return 0

  # Keep one previous log; the current one grows while the broker runs.
  if [[ -f $KAFKA_LOG ]]; then mv -f "$KAFKA_LOG" "$KAFKA_LOG.1"; fi
  kafka_render_config
  kafka_format

  say "kafka: starting"
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several options
  start_daemon "$KAFKA_LOG" "$KAFKA_PID" "$KAFKA_DIR" \
    java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$ROOT/deploy/kafka/log4j2.xml" \
    "-Dkafka.root.log.level=${KAFKA_LOG_LEVEL:-WARN}" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_CONF"
  wait_for kafka "$(<"$KAFKA_PID")" kafka_answers "$KAFKA_LOG"
  say "kafka: ready at 127.0.0.1:$KAFKA_PORT (pid $(<"$KAFKA_PID"))"
}

kafka_down() {
  local pid
  if pid=$(pid_of "$KAFKA_PID" "$KAFKA_MATCH"); then
    # A controlled shutdown takes a few seconds.
    stop_pid kafka "$pid" 30
    rm -f "$KAFKA_PID"
  fi
  say "kafka: stopped"
}

kafka_report() {
  local pid
  pid=$(pid_of "$KAFKA_PID" "$KAFKA_MATCH" || true)
  if kafka_answers; then
    say "kafka     up    127.0.0.1:$KAFKA_PORT, pid ${pid:-not ours}, log $KAFKA_LOG"
  elif [[ -n $pid ]]; then
    say "kafka     down  pid $pid is alive but does not answer on 127.0.0.1:$KAFKA_PORT"
    return 1
  else
    say "kafka     down"
    return 1
  fi
}

# --- MailDev -----------------------------------------------------------------

maildev_answers() {
  curl -sf -o /dev/null --max-time 2 "$MAILDEV_API"
}

maildev_up() {
  [[ -x $MAILDEV_BIN ]] || die "maildev missing: run deploy/local/install.sh"

  if revive_or_keep maildev "$MAILDEV_PID" "$MAILDEV_MATCH" maildev_answers; then
    say "maildev: already running (pid $(<"$MAILDEV_PID"))"
    return 0
  fi
  adopt_or_clear maildev "$MAILDEV_PID" "$MAILDEV_MATCH" maildev_answers && return 0

  if [[ -f $MAILDEV_LOG ]]; then mv -f "$MAILDEV_LOG" "$MAILDEV_LOG.1"; fi
  say "maildev: starting"
  # Started from .local/maildev so that no MailDev config file of a parent
  # directory is picked up. Mails are kept in memory only.
  start_daemon "$MAILDEV_LOG" "$MAILDEV_PID" "$MAILDEV_DIR" \
    "$MAILDEV_BIN" \
    --smtp "$MAILDEV_SMTP_PORT" --ip 127.0.0.1 \
    --web "$MAILDEV_WEB_PORT" --web-ip 127.0.0.1
  wait_for maildev "$(<"$MAILDEV_PID")" maildev_answers "$MAILDEV_LOG"
  say "maildev: ready, SMTP 127.0.0.1:$MAILDEV_SMTP_PORT, web http://127.0.0.1:$MAILDEV_WEB_PORT"
}

maildev_down() {
  local pid
  if pid=$(pid_of "$MAILDEV_PID" "$MAILDEV_MATCH"); then
    stop_pid maildev "$pid" 10
    rm -f "$MAILDEV_PID"
  fi
  say "maildev: stopped"
}

maildev_report() {
  local pid
  pid=$(pid_of "$MAILDEV_PID" "$MAILDEV_MATCH" || true)
  if maildev_answers; then
    say "maildev   up    SMTP 127.0.0.1:$MAILDEV_SMTP_PORT, $MAILDEV_API, pid ${pid:-not ours}"
  else
    say "maildev   down"
    return 1
  fi
}

# -----------------------------------------------------------------------------

main() {
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$KAFKA_DIR"
  case "${1:-}" in
    up)
      # One `up` at a time per checkout: two would both start a broker.
      lock stack
      pg_up
      kafka_up
      maildev_up
      ;;
    down)
      lock stack
      maildev_down
      kafka_down
      pg_down
      ;;
    status)
      local failed=0
      pg_report || failed=1
      kafka_report || failed=1
      maildev_report || failed=1
      return "$failed"
      ;;
    *)
      die "usage: $0 up|down|status"
      ;;
  esac
}

main "$@"
