#!/usr/bin/env bash
# End to end: shmetricsd + saler-demo (4 workers recycled every 500 requests)
# + an exact request mix from saler-traffic.  The scraped /metrics must count
# every request exactly, per method, route and status, while workers are
# recycled, after a worker is killed with -9, and across a second demo master
# on the same segment; promtool must find nothing to say about saler_ families.
# Also: bad input never crashes a worker, and `make run` refuses a second run.
#
# TAP lines on stdout; exit status non-zero on any failure.  Everything it
# starts is killed on exit; only 127.0.0.1 and free ports are used.
set -u
cd "$(dirname "$0")/.."
BIN=${BUILD_DIR:-build}/bin
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-demo.XXXXXX")
SEG=/dev/shm/shmetrics-test-demo-$$
. tests/lib/tap.sh

scrape() { curl -sf --max-time 5 "http://127.0.0.1:$CPORT/metrics" >"$1"; }
# value FILE 'series{labels}' -> its value, or "absent"
value() { awk -v k="$2" '$1 == k { print $2; found = 1 } END { if (!found) print "absent" }' "$1"; }
# sum FILE PREFIX -> sum of every sample whose name{labels} starts with PREFIX
sum() { awk -v p="$2" 'index($1, p) == 1 { s += $2 } END { printf "%.17g\n", s + 0 }' "$1"; }
# expect_value FILE SERIES EXPECTED DESCRIPTION
expect_value() {
  local got
  got=$(value "$1" "$2")
  if [ "$got" != absent ] && awk -v a="$got" -v b="$3" 'BEGIN { exit !(a + 0 == b + 0) }'; then
    ok "$4"
  else
    not_ok "$4: $2 expected $3, got $got"
  fi
}

for b in shmetricsd saler-demo saler-traffic; do
  if [ ! -x "$BIN/$b" ]; then
    not_ok "$BIN/$b is built (missing$([ "$b" = shmetricsd ] && echo ': the collector has not landed yet'))"
    finish
  fi
done
ok "binaries are built"

# ---- collector and demo ------------------------------------------------------
"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 2>"$TMP/shmetricsd.log" &
pids+=($!); col=$!
if CPORT=$(port_from_log "$TMP/shmetricsd.log" "$col"); then
  ok "shmetricsd listens on 127.0.0.1:$CPORT"
else
  not_ok "shmetricsd started"; diag <"$TMP/shmetricsd.log"; finish
fi

WORKERS=4 MAXREQ=500
"$BIN/saler-demo" --port 0 --workers $WORKERS --max-requests $MAXREQ --rate-limit 0 --timeout 1 \
  --segment "$SEG" 2>"$TMP/demo.log" &
pids+=($!); demo=$!
if DPORT=$(port_from_log "$TMP/demo.log" "$demo"); then
  ok "saler-demo listens on 127.0.0.1:$DPORT"
else
  not_ok "saler-demo started"; diag <"$TMP/demo.log"; finish
fi

# ---- exactly K requests of known kinds --------------------------------------
# kind:count:method:route:status
MIX="health:3000:GET:/health:200
create:600:POST:/leads:201
missing:300:GET:/leads/{id}:404
badlogin:200:POST:/login:401
boom:100:GET:/boom:500
traversal:20:GET:unmatched:400
sqli:20:GET:/leads:400
oversized:10:POST:/leads:413"
spec= total=0
while IFS=: read -r kind count _; do
  spec=${spec:+$spec,}$kind=$count
  total=$((total + count))
done <<<"$MIX"
# Each worker exits after exactly MAXREQ requests, so at least this many
# recycles happened once all are answered.
min_recycled=$(((total - WORKERS * (MAXREQ - 1) + MAXREQ - 1) / MAXREQ))

if timeout 120 "$BIN/saler-traffic" --url "http://127.0.0.1:$DPORT" --rate 0 --concurrency 16 --quiet \
  --exact "$spec" >"$TMP/traffic.out" 2>"$TMP/traffic.err"; then
  ok "saler-traffic sent $total requests, each answered with its kind's status"
else
  not_ok "saler-traffic --exact $spec"; diag <"$TMP/traffic.out"; diag <"$TMP/traffic.err"
fi

# Responses are sent after the request is counted, so the cells already hold
# every request; the collector shows a replacement worker's region from its
# next scan on (1 s), and the master counts a recycle once it has reaped the
# worker.  Poll (15 s at most) until the totals are complete.
complete=0
for i in $(seq 150); do
  if scrape "$TMP/m1" &&
    [ "$(sum "$TMP/m1" 'saler_http_requests_total{')" = "$total" ] &&
    awk -v r="$(value "$TMP/m1" 'saler_worker_restarts_total{reason="recycled"}')" -v m="$min_recycled" \
      'BEGIN { exit !(r + 0 >= m) }' &&
    [ "$(value "$TMP/m1" saler_http_requests_in_flight)" = 0 ]; then
    complete=1
    break
  fi
  sleep 0.1
done
if [ "$complete" = 1 ]; then
  ok "the scrape reaches all $total requests, no request in flight ($((i / 10)).$((i % 10)) s)"
else
  not_ok "the scrape reaches all $total requests: got $(sum "$TMP/m1" 'saler_http_requests_total{') requests," \
    "$(value "$TMP/m1" 'saler_worker_restarts_total{reason="recycled"}') recycles (want >= $min_recycled)," \
    "in flight $(value "$TMP/m1" saler_http_requests_in_flight)"
  grep '^saler_http_requests_total' "$TMP/m1" | grep -v ' 0$' | diag
fi

check_requests() { # FILE WHEN
  local f=$1 when=$2 bad=0 kind count method route status
  while IFS=: read -r kind count method route status; do
    local s="saler_http_requests_total{method=\"$method\",route=\"$route\",status=\"$status\"}"
    local got
    got=$(value "$f" "$s")
    if [ "$got" != "$count" ]; then
      echo "# $kind: $s = $got, expected $count"
      bad=1
    fi
  done <<<"$MIX"
  if [ "$bad" = 0 ] && [ "$(sum "$f" 'saler_http_requests_total{')" = "$total" ]; then
    ok "saler_http_requests_total is exact for every method, route and status ($when)"
  else
    not_ok "saler_http_requests_total is exact for every method, route and status ($when)"
    grep '^saler_http_requests_total' "$f" | grep -v ' 0$' | diag
  fi
}
check_requests "$TMP/m1" "after the traffic"

# _count of the duration histogram, per method and route, agrees.
bad=0
while read -r mr want; do
  got=$(value "$TMP/m1" "saler_http_request_duration_seconds_count{$mr}")
  if [ "$got" != "$want" ]; then echo "# duration count {$mr}: $got, expected $want"; bad=1; fi
  inf=$(value "$TMP/m1" "saler_http_request_duration_seconds_bucket{$mr,le=\"+Inf\"}")
  if [ "$inf" != "$want" ]; then echo "# +Inf bucket {$mr}: $inf, expected $want"; bad=1; fi
done < <(while IFS=: read -r _ count method route _; do echo "method=\"$method\",route=\"$route\" $count"; done <<<"$MIX" |
  awk '{ c[$1] += $2 } END { for (k in c) print k, c[k] }')
if [ "$bad" = 0 ]; then
  ok "saler_http_request_duration_seconds _count and +Inf bucket agree per method and route"
else
  not_ok "saler_http_request_duration_seconds _count and +Inf bucket agree per method and route"
fi

recycled=$(value "$TMP/m1" 'saler_worker_restarts_total{reason="recycled"}')
if awk -v r="$recycled" -v m="$min_recycled" 'BEGIN { exit !(r + 0 >= m) }'; then
  ok "saler_worker_restarts_total{reason=\"recycled\"} = $recycled >= $min_recycled"
else
  not_ok "saler_worker_restarts_total{reason=\"recycled\"} = $recycled, expected >= $min_recycled"
fi
expect_value "$TMP/m1" 'saler_worker_restarts_total{reason="crashed"}' 0 "no worker crashed"
expect_value "$TMP/m1" saler_workers $WORKERS "saler_workers = $WORKERS"
expect_value "$TMP/m1" 'saler_http_request_errors_total{route="/boom",class="server"}' 100 "errors_total counts the 500s"
expect_value "$TMP/m1" 'saler_http_request_errors_total{route="/login",class="client"}' 200 "errors_total counts the 401s"
expect_value "$TMP/m1" 'saler_login_failures_total{reason="bad_password"}' 200 "login_failures_total{reason=bad_password}"
expect_value "$TMP/m1" 'saler_login_attempts_total{outcome="failure"}' 200 "login_attempts_total{outcome=failure}"
expect_value "$TMP/m1" 'saler_db_queries_total{operation="select",outcome="error"}' 100 "db_queries_total{select,error} counts /boom"
expect_value "$TMP/m1" 'saler_db_queries_total{operation="insert",outcome="ok"}' 600 "db_queries_total{insert,ok} counts the leads"
expect_value "$TMP/m1" 'saler_suspicious_requests_total{kind="path_traversal"}' 20 "suspicious_requests_total{path_traversal}"
expect_value "$TMP/m1" 'saler_suspicious_requests_total{kind="sql_injection"}' 20 "suspicious_requests_total{sql_injection}"
expect_value "$TMP/m1" 'saler_suspicious_requests_total{kind="oversized"}' 10 "suspicious_requests_total{oversized}"
created=$(sum "$TMP/m1" 'saler_leads_created_total{')
if [ "$created" = 600 ]; then ok "saler_leads_created_total sums to 600"; else not_ok "saler_leads_created_total sums to $created, expected 600"; fi

# Later scrapes (folds of the recycled workers in between) show the same.
sleep 2.5
scrape "$TMP/m2"
check_requests "$TMP/m2" "2.5 s later, after folds"

# ---- bad input: answered, never a crash -------------------------------------
raw() { # raw OUTFILE: stdin to the demo on one connection; the answer in OUTFILE
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$DPORT"' || exit 1; cat >&3; cat <&3' >"$1" 2>/dev/null
}
printf 'GARBAGE\r\n\r\n' | raw "$TMP/r1"
printf 'GET /health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n' "$(head -c 10000 /dev/zero | tr '\0' a)" | raw "$TMP/r2"
printf 'GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello' | raw "$TMP/r3"
(printf 'POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nuser='; sleep 2) | raw "$TMP/r4"
# A worker at its max-requests budget closes the connection after the first
# answer, before it reads the NUL bytes: then try again on another
# connection (each answer sent is a request the metrics count).
r5_answers=0
for attempt in 1 2 3 4 5; do
  printf 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n\0\0\0\r\n\r\n' | raw "$TMP/r5"
  r5_answers=$((r5_answers + $(grep -c '^HTTP/1.1 ' "$TMP/r5")))
  grep -q '^HTTP/1.1 400 ' "$TMP/r5" && break
  grep -qi '^connection: close' "$TMP/r5" || break # closed for another reason: a failure
done
printf 'DELETE /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' | raw "$TMP/r6"
for c in "r1 400 garbage request line" "r2 431 10 KB header" "r3 400 conflicting Content-Length" \
  "r4 408 body that never completes" "r6 405 wrong method"; do
  set -- $c
  f=$1 want=$2
  shift 2
  if head -n 1 "$TMP/$f" | grep -q "^HTTP/1.1 $want "; then
    ok "bad input ($*) gets $want"
  else
    not_ok "bad input ($*) gets $want; got: $(head -n 1 "$TMP/$f" | tr -d '\r')"
  fi
done
if head -n 1 "$TMP/r5" | grep -q '^HTTP/1.1 200 ' && grep -q '^HTTP/1.1 400 ' "$TMP/r5"; then
  ok "a request followed by NUL bytes on the same connection gets 200, then 400"
else
  not_ok "request then NUL bytes: got $(grep '^HTTP' "$TMP/r5" | tr -d '\r' | tr '\n' ' ')"
fi
curl -sf --max-time 5 "http://127.0.0.1:$DPORT/health" >/dev/null
extra=$((6 + r5_answers)) # r1..r4, r6, the curl, and the r5 answers
for i in $(seq 100); do
  scrape "$TMP/m3" && [ "$(sum "$TMP/m3" 'saler_http_requests_total{')" = $((total + extra)) ] && break
  sleep 0.1
done
if [ "$(sum "$TMP/m3" 'saler_http_requests_total{')" = $((total + extra)) ] &&
  [ "$(value "$TMP/m3" 'saler_worker_restarts_total{reason="crashed"}')" = 0 ] &&
  [ "$(value "$TMP/m3" saler_workers)" = $WORKERS ]; then
  ok "the bad requests are counted too, the demo still answers, and no worker crashed"
else
  not_ok "after the bad requests: $(sum "$TMP/m3" 'saler_http_requests_total{') requests (want $((total + extra))), $(value "$TMP/m3" 'saler_worker_restarts_total{reason="crashed"}') crashed"
  diag <"$TMP/demo.log"
fi

# ---- kill -9 a worker: counted as crashed, replaced, nothing lost -----------
before=$(sum "$TMP/m3" 'saler_http_requests_total{')
victim=$(ps -o pid= --ppid "$demo" | head -n 1 | tr -d ' ')
if [ -n "$victim" ] && kill -KILL "$victim"; then
  ok "killed worker $victim with SIGKILL"
else
  not_ok "found a worker to kill"
fi
for i in $(seq 100); do
  scrape "$TMP/m4" && [ "$(value "$TMP/m4" 'saler_worker_restarts_total{reason="crashed"}')" = 1 ] &&
    [ "$(value "$TMP/m4" saler_workers)" = $WORKERS ] &&
    [ "$(sum "$TMP/m4" 'saler_http_requests_total{')" = "$before" ] && break
  sleep 0.1
done
expect_value "$TMP/m4" 'saler_worker_restarts_total{reason="crashed"}' 1 "the killed worker counts as crashed"
expect_value "$TMP/m4" saler_workers $WORKERS "and is replaced"
after=$(sum "$TMP/m4" 'saler_http_requests_total{')
if [ "$after" = "$before" ]; then
  ok "no request count lost with the killed worker ($after)"
else
  not_ok "request counts across kill -9: $before before, $after after"
fi

# ---- rate limit: a second master, one worker, burst 3 ------------------------
"$BIN/saler-demo" --port 0 --workers 1 --rate-limit 0.01 --burst 3 --segment "$SEG" 2>"$TMP/demo2.log" &
pids+=($!); demo2=$!
if D2PORT=$(port_from_log "$TMP/demo2.log" "$demo2"); then
  codes=$(for i in $(seq 10); do
    curl -s --max-time 5 -o /dev/null -w '%{http_code}\n' -H 'X-Forwarded-For: 192.0.2.7' \
      "http://127.0.0.1:$D2PORT/features/search"
  done | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')
  if [ "$codes" = "200:3 429:7 " ]; then
    ok "a client over its bucket gets 429 (3 x 200, 7 x 429)"
  else
    not_ok "rate limit: expected 200:3 429:7, got $codes"
  fi
  for i in $(seq 50); do
    scrape "$TMP/m5" && [ "$(value "$TMP/m5" 'saler_rate_limited_requests_total{route="/features/{name}"}')" = 7 ] && break
    sleep 0.1
  done
  expect_value "$TMP/m5" 'saler_rate_limited_requests_total{route="/features/{name}"}' 7 "saler_rate_limited_requests_total counts them"
  expect_value "$TMP/m5" 'saler_http_requests_total{method="GET",route="/features/{name}",status="429"}' 7 "requests_total{status=429}"
  expect_value "$TMP/m5" 'saler_http_requests_total{method="GET",route="/health",status="200"}' \
    "$(value "$TMP/m4" 'saler_http_requests_total{method="GET",route="/health",status="200"}')" \
    "the first master's counts are untouched by the second"
else
  not_ok "second saler-demo started"; diag <"$TMP/demo2.log"
fi

# ---- promtool: nothing to say about saler_ families ---------------------------
if command -v promtool >/dev/null; then
  scrape "$TMP/m6"
  promtool check metrics <"$TMP/m6" >"$TMP/promtool.out" 2>&1
  if grep '^saler_' "$TMP/promtool.out" >"$TMP/promtool.saler"; then
    not_ok "promtool check metrics reports nothing for saler_ families"; diag <"$TMP/promtool.saler"
  else
    ok "promtool check metrics reports nothing for saler_ families ($(grep -c '^# HELP saler_' "$TMP/m6") families)"
  fi
else
  not_ok "promtool is installed (Debian package prometheus)"
fi

# ---- SIGTERM: the master stops its workers and exits 0 ------------------------
kill -TERM "$demo2"
for i in $(seq 100); do kill -0 "$demo2" 2>/dev/null || break; sleep 0.1; done
if ! kill -0 "$demo2" 2>/dev/null && wait "$demo2"; then
  ok "SIGTERM stops the demo cleanly (exit 0)"
else
  not_ok "SIGTERM stops the demo cleanly"; diag <"$TMP/demo2.log"
fi
if [ -z "$(ps -o pid= --ppid "$demo2" 2>/dev/null)" ]; then ok "no worker outlives its master"; else not_ok "workers outlived the master"; fi

# ---- make run refuses a second run ----------------------------------------------
flock "$TMP/run.lock" sleep 30 &
pids+=($!)
sleep 0.2
SHMETRICS_RUN_LOCK=$TMP/run.lock SHMETRICS_RUN_SEGMENT=$TMP/unused timeout 10 examples/run.sh "${BUILD_DIR:-build}" \
  >"$TMP/run.out" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q 'already running' "$TMP/run.out"; then
  ok "examples/run.sh refuses to start while another run holds the lock"
else
  not_ok "examples/run.sh with the lock held: rc $rc"; diag <"$TMP/run.out"
fi

# ---- make run: starts the three, serves metrics, SIGTERM stops all and cleans up --
RUNSEG=/dev/shm/shmetrics-test-run-$$
SHMETRICS_RUN_LOCK=$TMP/run2.lock SHMETRICS_RUN_SEGMENT=$RUNSEG SHMETRICS_RUN_PORT=0 SALER_RATE=100 \
  examples/run.sh "${BUILD_DIR:-build}" >"$TMP/run2.out" 2>"$TMP/run2.err" &
run=$!
pids+=($run)
murl=
for i in $(seq 100); do
  murl=$(grep -o 'http://127\.0\.0\.1:[0-9]*/metrics' "$TMP/run2.out" | head -n 1)
  [ -n "$murl" ] && break
  kill -0 "$run" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$murl" ]; then
  got=0
  for i in $(seq 50); do
    got=$(curl -sf --max-time 5 "$murl" | awk 'index($1, "saler_http_requests_total{") == 1 { s += $2 } END { print s + 0 }')
    [ "$got" -gt 0 ] 2>/dev/null && break
    sleep 0.1
  done
  if [ "$got" -gt 0 ] 2>/dev/null; then ok "examples/run.sh serves metrics at $murl ($got requests so far)"; else not_ok "examples/run.sh: no requests counted at $murl"; fi
else
  not_ok "examples/run.sh printed the /metrics URL"; diag <"$TMP/run2.out"; diag <"$TMP/run2.err"
fi
children=$(ps -o pid= --ppid "$run" | tr '\n' ' ')
kill -TERM "$run"
for i in $(seq 150); do kill -0 "$run" 2>/dev/null || break; sleep 0.1; done
left=
for p in $children; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
if ! kill -0 "$run" 2>/dev/null && [ -z "$left" ] && [ ! -e "$RUNSEG" ]; then
  ok "SIGTERM stops run.sh, its three programs, and removes its segment"
else
  not_ok "run.sh after SIGTERM: still running:${left:- none}; segment $([ -e "$RUNSEG" ] && echo left || echo removed)"
  rm -f "$RUNSEG"
fi

finish
