#!/usr/bin/env bash
# examples/saler-fastapi/run.sh BUILD_DIR — what `make run-python` runs: the
# collector, the FastAPI saler backend under gunicorn (uvicorn workers) and
# the traffic generator, on a private segment.
#
#   shmetricsd     --segment /dev/shm/shmetrics-run-python-$USER on 127.0.0.1:9089
#                  (a free port when 9089 is taken)
#   gunicorn       4 uvicorn workers, each recycled after 3000 requests, on a free port
#   saler-traffic  200 requests/s of the realistic mix, for a day at most
#
# Ctrl-C stops all three and removes the segment.  One run per user at a time.
# Environment: SHMETRICS_RUN_SEGMENT, SHMETRICS_RUN_PORT (9089), SALER_RATE
# (200), SALER_DURATION (86400 s), SALER_WORKERS (4), SALER_MAX_REQUESTS (3000),
# SALER_PRELOAD (1: gunicorn --preload; 0: each worker imports the app).
set -euo pipefail

B=${1:-build}
cd "$(dirname "$0")/../.."
BIN=$PWD/$B/bin
PYPATH=$PWD/$B/python
user=${USER:-$(id -un)}
LOCK=/tmp/shmetrics-run-python-$user.lock
SEG=${SHMETRICS_RUN_SEGMENT:-/dev/shm/shmetrics-run-python-$user}
CPORT_WANTED=${SHMETRICS_RUN_PORT:-9089}
RATE=${SALER_RATE:-200}
DURATION=${SALER_DURATION:-86400}
PRELOAD=${SALER_PRELOAD:-1}

for b in "$BIN/shmetricsd" "$BIN/saler-traffic"; do
  [ -x "$b" ] || { echo "run.sh: $b is missing; build it first (make)" >&2; exit 1; }
done
ls "$PYPATH"/shmetrics/_shmetrics*.so >/dev/null 2>&1 || { echo "run.sh: the Python module is not built (make)" >&2; exit 1; }
command -v gunicorn >/dev/null || { echo "run.sh: gunicorn is missing (make deps)" >&2; exit 1; }

exec 9>>"$LOCK"
if ! flock -n 9; then
  echo "run.sh: another 'make run-python' is running (pid $(cat "$LOCK" 2>/dev/null || echo unknown), lock $LOCK)" >&2
  exit 1
fi
echo $$ >"$LOCK"

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/shmetrics-run-python.XXXXXX")
col_pid= app_pid= traffic_pid=
stop() { # stop PID: TERM, wait up to 15 s, then KILL
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop "$traffic_pid"
  stop "$app_pid" # the workers first, so that their last counts are folded
  stop "$col_pid"
  rm -f "$SEG"
  echo "run.sh: stopped; segment $SEG removed; logs kept in $LOGDIR" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_from_log() { # LOG PID: wait (15 s at most) for "listening on http://127.0.0.1:PORT"
  local i p
  for i in $(seq 150); do
    p=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$1" 2>/dev/null | head -n 1)
    [ -n "$p" ] && { echo "$p"; return 0; }
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

rm -f "$SEG" # a leftover of a run that was killed; we hold the lock, so it is ours
"$BIN/shmetricsd" --segment "$SEG" --listen "127.0.0.1:$CPORT_WANTED" 9>&- 2>>"$LOGDIR/shmetricsd.log" &
col_pid=$!
if ! CPORT=$(port_from_log "$LOGDIR/shmetricsd.log" "$col_pid"); then
  wait "$col_pid" 2>/dev/null || true
  "$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 9>&- 2>>"$LOGDIR/shmetricsd.log" &
  col_pid=$!
  CPORT=$(port_from_log "$LOGDIR/shmetricsd.log" "$col_pid") || { cat "$LOGDIR/shmetricsd.log" >&2; exit 1; }
fi

APORT=$(free_port)
preload=()
[ "$PRELOAD" = 1 ] && preload=(--preload)
(cd examples/saler-fastapi &&
  SHMETRICS_SEGMENT=$SEG PYTHONPATH=$PYPATH SALER_BIND=127.0.0.1:$APORT \
  SALER_WORKERS=${SALER_WORKERS:-4} SALER_MAX_REQUESTS=${SALER_MAX_REQUESTS:-3000} \
  exec gunicorn -c gunicorn.conf.py "${preload[@]}" app:app) 9>&- 2>>"$LOGDIR/gunicorn.log" &
app_pid=$!
port_from_log "$LOGDIR/gunicorn.log" "$app_pid" >/dev/null || { cat "$LOGDIR/gunicorn.log" >&2; exit 1; }

cat <<EOT
saler (FastAPI under gunicorn) is running (Ctrl-C stops it):

  metrics     http://127.0.0.1:$CPORT/metrics
  app         http://127.0.0.1:$APORT/health
  segment     $SEG
  logs        $LOGDIR

  curl -s http://127.0.0.1:$CPORT/metrics | grep '^saler_http_requests_total'

Traffic: $RATE requests/s (sent, ok, 4xx, 5xx, errors, achieved rate):
EOT
"$BIN/saler-traffic" --url "http://127.0.0.1:$APORT" --rate "$RATE" --duration "$DURATION" 9>&- \
  >"$LOGDIR/saler-traffic.out" &
traffic_pid=$!
set +e
wait -n "$col_pid" "$app_pid" "$traffic_pid"
echo "run.sh: one of the three exited; stopping the others (logs: $LOGDIR)" >&2
