#!/usr/bin/env bash
# A real shmetricsd against a segment file that someone truncates
# (`truncate -s 8192`, as any user who can write the file can): the daemon
# stays up, logs and counts it, /-/ready answers 503 with the reason, and
# /metrics keeps answering, well-formed, without the series it can no longer
# read; when the file has its size back, it is ready again.  Also: the
# daemon refuses a segment owned by another user unless --segment-owner
# names that uid (when run as root).
# TAP lines; binaries from ${BUILD_DIR:-build}.
set -u
cd "$(dirname "$0")/.." || exit 2
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
MAKER=$BUILD_DIR/tests/test_reader_hostile
SEG=/dev/shm/shmet-test-truncate-$$
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-truncate.XXXXXX")
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}exitcode=86
. tests/lib/tap.sh
trap 'cleanup; rm -f "$SEG".ready "$SEG"-owned' EXIT

for b in "$BIN/shmetricsd" "$MAKER"; do
  [ -x "$b" ] || { echo "not ok 1 - $b is built (run make first)"; exit 1; }
done

# http PATH: status in CODE, body in $TMP/body
http() { CODE=$(curl -s -m 10 -o "$TMP/body" -w '%{http_code}' "http://127.0.0.1:$PORT$1"); }
# push JSON: a push of one sample through the collector's own writer
push() {
  CODE=$(curl -s -m 10 -o "$TMP/body" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' --data-binary "$1" "http://127.0.0.1:$PORT/api/v1/metrics/custom")
}
alive() { kill -0 "$DPID" 2>/dev/null; }
# the body of /metrics is a valid exposition (promtool) and every line well formed
metrics_valid() {
  # exit 3 is a lint remark (a family without help); a parse error says "error"
  promtool check metrics <"$TMP/body" >"$TMP/promtool" 2>&1
  if grep -qi 'error' "$TMP/promtool"; then return 1; fi
  ! grep -vE '^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [^ ]+)$' "$TMP/body" | grep -q .
}

# ---- a live writer (its master stays alive) and the daemon ----
"$MAKER" --make-segment "$SEG" clean --stay >"$TMP/writer.log" 2>&1 &
WPID=$!
pids+=("$WPID")
for _ in $(seq 200); do [ -f "$SEG.ready" ] && break; sleep 0.05; done
[ -f "$SEG.ready" ] && ok "a writer made a live segment" || { not_ok "a writer made a live segment"; diag <"$TMP/writer.log"; finish; }
size=$(stat -c %s "$SEG")

LOG=$TMP/daemon.log
TOKEN=truncate-test-token-0123456789abcdef
(umask 077 && echo "$TOKEN" >"$TMP/token")
"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 --scan-interval 0.05 --push-token-file "$TMP/token" 2>"$LOG" &
DPID=$!
pids+=("$DPID")
PORT=$(port_from_log "$LOG" "$DPID") && ok "shmetricsd serves" || { not_ok "shmetricsd serves"; diag <"$LOG"; finish; }
http /metrics
if [ "$CODE" = 200 ] && grep -q '^requests_total{method="GET",code="200"} 15$' "$TMP/body"; then
  ok "before: /metrics has the writer's series"
else
  not_ok "before: /metrics has the writer's series (status $CODE)"; head -n 20 "$TMP/body" | diag
fi
http /-/ready
[ "$CODE" = 200 ] && ok "before: ready" || not_ok "before: ready (status $CODE)"

push '{"name":"t_pushed_total","type":"counter","help":"Pushed.","labels":{"k":"v"},"inc":1}'
[ "$CODE" = 200 ] && ok "before: a push is taken" || { not_ok "before: a push is taken (status $CODE)"; diag <"$TMP/body"; }

# ---- truncate it ----
truncate -s 8192 "$SEG"
sleep 0.5
alive && ok "shmetricsd survives truncate -s 8192" || { not_ok "shmetricsd survives truncate -s 8192"; diag <"$LOG"; wait "$DPID"; echo "# exit status $?"; finish; }
http /-/ready
if [ "$CODE" = 503 ] && grep -q "truncated to 8192 bytes" "$TMP/body"; then
  ok "/-/ready answers 503 and says the segment was truncated"
else
  not_ok "/-/ready answers 503 with the reason (status $CODE)"; diag <"$TMP/body"
fi
for i in 1 2 3; do
  http /metrics
  [ "$CODE" = 200 ] || break
done
if [ "$CODE" = 200 ] && metrics_valid; then
  ok "/metrics keeps answering with a valid body"
else
  not_ok "/metrics keeps answering with a valid body (status $CODE)"; diag <"$TMP/promtool"; head -n 20 "$TMP/body" | diag
fi
grep -q '^shmetricsd_segment_truncations_total 1$' "$TMP/body" && ok "the truncation is counted once" ||
  { not_ok "the truncation is counted once"; grep '^shmetricsd_segment' "$TMP/body" | diag; }
faults=$(sed -n 's/^shmetricsd_segment_bus_errors_total //p' "$TMP/body")
grep -q 'requests_total{' "$TMP/body" && not_ok "series past the end are left out, not shown as a reset" ||
  ok "series past the end are left out, not shown as a reset"
grep -q "was truncated to 8192 bytes" "$LOG" && ok "the log says what happened" || { not_ok "the log says what happened"; diag <"$LOG"; }
http /metrics
now=$(sed -n 's/^shmetricsd_segment_bus_errors_total //p' "$TMP/body")
[ -n "$faults" ] && [ "$faults" = "$now" ] && ok "renders read nothing past the end (bus errors stay at $now)" ||
  not_ok "renders read nothing past the end (bus errors $faults, then $now)"
push '{"name":"t_pushed_total","type":"counter","help":"Pushed.","labels":{"k":"v"},"inc":1}'
alive && ok "a push (the collector's own writer, its region past the end) does not kill it (status $CODE)" ||
  { not_ok "a push past the end kills it"; diag <"$LOG"; finish; }
http /api/v1/metrics/health
[ "$CODE" = 200 ] && ok "the JSON API still answers" || not_ok "the JSON API still answers (status $CODE)"
kill -0 "$WPID" 2>/dev/null && ok "the idle writer is still alive (it touched no page past the end)" ||
  not_ok "the idle writer is still alive"

# ---- its size back ----
truncate -s "$size" "$SEG"
sleep 0.5
http /-/ready
[ "$CODE" = 200 ] && ok "ready again once the file has its size back" || { not_ok "ready again (status $CODE)"; diag <"$TMP/body"; }
grep -q "has its size again" "$LOG" && ok "the log says the size came back" || not_ok "the log says the size came back"
http /metrics
[ "$CODE" = 200 ] && metrics_valid && ok "/metrics is valid after the restore" || not_ok "/metrics is valid after the restore"
kill -TERM "$DPID"
wait "$DPID"
rc=$?
[ "$rc" = 0 ] && ok "shmetricsd stops cleanly (exit 0)" || not_ok "shmetricsd stops cleanly (exit $rc)"

# ---- another user's segment ----
if [ "$(id -u)" -eq 0 ]; then
  OWNED=$SEG-owned
  "$MAKER" --make-segment "$OWNED" clean >"$TMP/make.log" 2>&1
  chown 65534:65534 "$OWNED"
  timeout 10 "$BIN/shmetricsd" --segment "$OWNED" --listen 127.0.0.1:0 2>"$TMP/owner.log"
  rc=$?
  [ "$rc" = 1 ] && grep -q "owned by uid 65534" "$TMP/owner.log" && ok "root's shmetricsd refuses a segment owned by uid 65534 (exit 1)" ||
    { not_ok "root's shmetricsd refuses a segment owned by uid 65534 (exit $rc)"; diag <"$TMP/owner.log"; }
  (umask 077 && echo "truncate-test-token-0123456789abcdef" >"$TMP/token")
  "$BIN/shmetricsd" --segment "$OWNED" --segment-owner 65534 --push-token-file "$TMP/token" \
    --listen 127.0.0.1:0 2>"$TMP/owner2.log" &
  OPID=$!
  pids+=("$OPID")
  if OPORT=$(port_from_log "$TMP/owner2.log" "$OPID"); then
    ok "--segment-owner 65534 allows it (the push API's writer too)"
    PORT=$OPORT http /metrics
    grep -q '^requests_total{method="GET",code="200"} 15$' "$TMP/body" && ok "and serves its series" || not_ok "and serves its series"
  else
    not_ok "--segment-owner 65534 allows it"; diag <"$TMP/owner2.log"
  fi
  "$BIN/shmetricsd" --segment-owner nobody >/dev/null 2>&1
  [ $? = 2 ] && ok "--segment-owner wants a numeric uid (exit 2)" || not_ok "--segment-owner wants a numeric uid"
else
  ok "# SKIP owner checks need root to chown"
fi
finish
