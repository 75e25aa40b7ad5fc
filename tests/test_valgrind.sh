#!/usr/bin/env bash
# The writer, the reader and the daemon under valgrind: no invalid access, no
# use of uninitialised memory, no definite leak.  Sanitizer builds are not
# valgrind material, so there it runs nothing (and says so).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD_DIR:-build}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-valgrind.XXXXXX")
SEG=/dev/shm/shmet-test-valgrind-$$
. tests/lib/tap.sh

if [ -n "${SANITIZER:-}" ]; then
  ok "skipped under SANITIZER=$SANITIZER (valgrind runs on the plain build)"
  finish
fi
VG=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --track-origins=yes)

for t in test_writer test_segment test_reader_hostile test_capacity; do
  if timeout 600 "${VG[@]}" "$BUILD/tests/$t" >"$TMP/$t.log" 2>&1; then
    ok "$t is clean under valgrind"
  else
    not_ok "$t under valgrind (exit $?)"; grep -E '^==[0-9]+==' "$TMP/$t.log" | head -20 | diag
  fi
done

"${VG[@]}" --log-file="$TMP/daemon.vg" "$BUILD/bin/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 \
  --scan-interval 0.2 2>"$TMP/daemon.log" &
pids+=($!)
CPORT=
for try in 1 2 3; do # valgrind starts slowly: up to 30 s
  CPORT=$(port_from_log "$TMP/daemon.log" "${pids[0]}") && break
done
if [ -n "$CPORT" ]; then
  ok "shmetricsd starts under valgrind"
  good=1
  for path in /metrics /-/healthy /-/ready / /api/v1/metrics/health /api/v1/metrics/summary /api/v1/metrics/dashboard /nope; do
    code=$(curl -s --max-time 30 -o /dev/null -w "%{http_code}" "http://127.0.0.1:$CPORT$path") || { good=0; echo "$path: curl failed" | diag; }
    case $code in 2??|404) ;; *) good=0; echo "$path: HTTP $code" | diag ;; esac
  done
  curl -s --max-time 30 -o /dev/null -H 'Accept: application/openmetrics-text;version=1.0.0' \
    -H 'Accept-Encoding: gzip' "http://127.0.0.1:$CPORT/metrics" || good=0
  [ "$good" = 1 ] && ok "shmetricsd answers every endpoint under valgrind" || not_ok "a request failed under valgrind"
  kill -TERM "${pids[0]}"
  for i in $(seq 100); do kill -0 "${pids[0]}" 2>/dev/null || break; sleep 0.1; done
  wait "${pids[0]}"; rc=$?
  if [ "$rc" = 0 ] && ! grep -qE '^==[0-9]+== +(Invalid|Conditional|Use of uninit|[0-9,]+ bytes in [0-9,]+ blocks are definitely)' "$TMP/daemon.vg"; then
    ok "shmetricsd is clean under valgrind and stops with 0"
  else
    not_ok "shmetricsd under valgrind: exit $rc"; head -40 "$TMP/daemon.vg" | diag
  fi
else
  not_ok "shmetricsd did not start under valgrind"; diag <"$TMP/daemon.log"
fi
finish
