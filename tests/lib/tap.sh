# Shared by the shell tests that start processes: TAP output, cleanup of
# every pid in "pids" (and of $SEG and $TMP) on exit, and reading the port a
# server logged.  Source it after setting SEG and TMP.
pids=()
n=0 failed=0

ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
diag() { sed 's/^/# /'; }

cleanup() {
  local p i
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for i in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -f "$SEG"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

finish() {
  echo "1..$n"
  [ "$failed" -eq 0 ] || echo "# $failed of $n failed"
  exit $((failed > 0))
}

# wait_log FILE PATTERN PID: wait (10 s at most, while PID lives) until the
# sed pattern matches a line of FILE; print its \1.
wait_log() {
  local i v
  for i in $(seq 100); do
    v=$(sed -n "s|$2|\\1|p" "$1" 2>/dev/null | head -n 1)
    if [ -n "$v" ]; then echo "$v"; return 0; fi
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Wait (10 s at most) for "listening on http://127.0.0.1:PORT" in a log.
port_from_log() {
  wait_log "$1" '.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*' "$2"
}
