#!/usr/bin/env bash
# examples/run.sh BUILD_DIR — what `make run` runs: the collector, the
# pre-forking demo server and a traffic generator, on a private segment.
#
#   shmetricsd     --segment /dev/shm/shmetrics-run-$USER --listen 127.0.0.1:9089
#                  (a free port when 9089 is taken)
#   saler-demo     4 workers, each recycled after 3000 requests, on a free port
#   saler-traffic  200 requests/s of the realistic mix, for a day at most
#
# Ctrl-C stops all three and removes the segment.  One run per user at a time:
# a second one finds the lock held and says which process holds it.
#
# Environment (for tests and the curious):
#   SHMETRICS_RUN_LOCK     lock file     (default /tmp/shmetrics-run-$USER.lock)
#   SHMETRICS_RUN_SEGMENT  segment path  (default /dev/shm/shmetrics-run-$USER)
#   SHMETRICS_RUN_PORT     collector port to try first (default 9089)
#   SALER_RATE             traffic rate in requests/s (default 200)
#   SALER_DURATION         traffic duration in seconds (default 86400)
set -euo pipefail

B=${1:-build}
BIN=$B/bin
cd "$(dirname "$0")/.."

user=${USER:-$(id -un)}
LOCK=${SHMETRICS_RUN_LOCK:-/tmp/shmetrics-run-$user.lock}
SEG=${SHMETRICS_RUN_SEGMENT:-/dev/shm/shmetrics-run-$user}
CPORT_WANTED=${SHMETRICS_RUN_PORT:-9089}
RATE=${SALER_RATE:-200}
DURATION=${SALER_DURATION:-86400}

for b in shmetricsd saler-demo saler-traffic; do
  if [ ! -x "$BIN/$b" ]; then
    echo "run.sh: $BIN/$b is missing; build it first (make)" >&2
    exit 1
  fi
done

# One run at a time.  The lock is held through fd 9 for the life of this
# script (and only this script: the programs below get the fd closed).
exec 9>>"$LOCK"
if ! flock -n 9; then
  holder=$(cat "$LOCK" 2>/dev/null || true)
  echo "run.sh: another 'make run' is already running (pid ${holder:-unknown}, lock $LOCK)." >&2
  echo "run.sh: stop it first (Ctrl-C in its terminal, or: kill ${holder:-<pid>})." >&2
  exit 1
fi
echo $$ >"$LOCK"

LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/shmetrics-run.XXXXXX")
col_pid= demo_pid= traffic_pid=

stop() { # stop PID NAME: TERM, wait up to 10 s, then KILL
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "run.sh: $2 (pid $pid) did not stop; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop "$traffic_pid" saler-traffic
  stop "$demo_pid" saler-demo      # the workers first, so that their last counts are folded
  stop "$col_pid" shmetricsd
  rm -f "$SEG"
  echo "run.sh: stopped; segment $SEG removed; logs kept in $LOGDIR" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Wait (5 s at most) for "listening on http://127.0.0.1:PORT" in a log; print PORT.
port_from_log() {
  local log=$1 pid=$2 i p
  for i in $(seq 50); do
    p=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$log" 2>/dev/null | head -n 1)
    if [ -n "$p" ]; then
      echo "$p"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

rm -f "$SEG" # a leftover of a run that was killed; we hold the lock, so it is ours

start_collector() { # start_collector PORT
  "$BIN/shmetricsd" --segment "$SEG" --listen "127.0.0.1:$1" 9>&- 2>>"$LOGDIR/shmetricsd.log" &
  col_pid=$!
}
start_collector "$CPORT_WANTED"
if ! CPORT=$(port_from_log "$LOGDIR/shmetricsd.log" "$col_pid"); then
  wait "$col_pid" 2>/dev/null || true
  col_pid=
  echo "run.sh: port $CPORT_WANTED is taken; the collector takes a free port instead" >&2
  : >"$LOGDIR/shmetricsd.log"
  start_collector 0
  if ! CPORT=$(port_from_log "$LOGDIR/shmetricsd.log" "$col_pid"); then
    echo "run.sh: shmetricsd did not start:" >&2
    cat "$LOGDIR/shmetricsd.log" >&2
    exit 1
  fi
fi

"$BIN/saler-demo" --port 0 --workers 4 --max-requests 3000 --segment "$SEG" 9>&- 2>>"$LOGDIR/saler-demo.log" &
demo_pid=$!
if ! DPORT=$(port_from_log "$LOGDIR/saler-demo.log" "$demo_pid"); then
  echo "run.sh: saler-demo did not start:" >&2
  cat "$LOGDIR/saler-demo.log" >&2
  exit 1
fi

cat <<EOF
shmetrics demo is running (Ctrl-C stops it):

  metrics     http://127.0.0.1:$CPORT/metrics
  dashboard   http://127.0.0.1:$CPORT/dashboard
  demo        http://127.0.0.1:$DPORT/health
  segment     $SEG
  logs        $LOGDIR

  curl -s http://127.0.0.1:$CPORT/metrics | grep '^saler_http_requests_total'
  curl -s -d 'user=alice&password=wonderland' http://127.0.0.1:$DPORT/login
  curl -s -d 'source=web' http://127.0.0.1:$DPORT/leads

Traffic: $RATE requests/s (sent, ok, 4xx, 5xx, errors, achieved rate):
EOF

"$BIN/saler-traffic" --url "http://127.0.0.1:$DPORT" --rate "$RATE" --duration "$DURATION" 9>&- \
  >"$LOGDIR/saler-traffic.out" &
traffic_pid=$!

# Until Ctrl-C, or until one of the three stops by itself.
set +e
wait -n "$col_pid" "$demo_pid" "$traffic_pid"
set -e
for p in col_pid:shmetricsd demo_pid:saler-demo traffic_pid:saler-traffic; do
  var=${p%%:*}
  if ! kill -0 "${!var}" 2>/dev/null; then
    echo >&2
    echo "run.sh: ${p#*:} exited; stopping the others (its log: $LOGDIR)" >&2
  fi
done
