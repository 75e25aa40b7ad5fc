#!/usr/bin/env bash
# End to end in Python: shmetricsd + examples/saler-fastapi under gunicorn
# (4 uvicorn workers recycled every 150 requests) + exact request mixes from
# saler-traffic.  /metrics must count every answered request exactly, per
# method, route template and status, with the latency histogram agreeing;
# through recycling, a kill -9 of a worker, and a restart of the whole server
# without --preload on the same segment; and no counter or histogram sample
# may go down between any two of the scrapes taken meanwhile.
#
# Slow (a few gunicorn starts): plain pass only.  TAP lines on stdout.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
PY=/usr/bin/python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-python-gunicorn.XXXXXX")
SEG=/dev/shm/shmet-test-python-gunicorn-$$
. tests/lib/tap.sh

if [ -n "${SANITIZER:-}" ]; then
  ok "# skip gunicorn end to end under $SANITIZER (plain pass only; the module runs under ASan in test_python)"
  finish
fi
for f in "$BIN/shmetricsd" "$BIN/saler-traffic"; do
  [ -x "$f" ] || { not_ok "$f is built"; finish; }
done
command -v gunicorn >/dev/null || { not_ok "gunicorn is installed (make deps)"; finish; }
ls "$BUILD_DIR"/python/shmetrics/_shmetrics*.so >/dev/null 2>&1 || { not_ok "the Python module is built"; finish; }

"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 --scan-interval 0.2 2>"$TMP/shmetricsd.log" &
pids+=($!)
CPORT=$(port_from_log "$TMP/shmetricsd.log" "$!") || { not_ok "shmetricsd started"; diag <"$TMP/shmetricsd.log"; finish; }
ok "shmetricsd listens on 127.0.0.1:$CPORT"

scrape() { curl -sf --max-time 5 "http://127.0.0.1:$CPORT/metrics" >"$1"; }
sum() { awk -v p="$2" 'index($1, p) == 1 { s += $2 } END { printf "%.17g\n", s + 0 }' "$1"; }

WORKERS=4 MAXREQ=150
APORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
app=
start_app() { # start_app LOG [--preload]
  local log=$1
  shift
  (cd examples/saler-fastapi &&
    SHMETRICS_SEGMENT=$SEG PYTHONPATH=$PWD/../../$BUILD_DIR/python PYTHONDONTWRITEBYTECODE=1 \
    SALER_BIND=127.0.0.1:$APORT SALER_WORKERS=$WORKERS SALER_MAX_REQUESTS=$MAXREQ \
    SALER_RATE_LIMIT=0 SALER_FAIL_RATE=0 exec gunicorn -c gunicorn.conf.py "$@" app:app) 2>"$log" &
  app=$!
  pids+=($app)
  local i
  for i in $(seq 300); do # 30 s: the workers import FastAPI (no request here: it would be counted)
    [ "$(pgrep -c -P "$app")" = "$WORKERS" ] &&
      [ "$(grep -c 'Application startup complete' "$log")" -ge "$WORKERS" ] && return 0
    kill -0 "$app" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
stop_app() { # TERM and wait (20 s at most): workers finish and exit cleanly
  local i
  kill -TERM "$app" 2>/dev/null
  for i in $(seq 200); do kill -0 "$app" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$app" 2>/dev/null
  wait "$app" 2>/dev/null
}

# Scrapes taken in the background, every 0.3 s, for the never-decreases check.
scraper=
start_scraper() {
  (i=0; while :; do curl -sf --max-time 5 "http://127.0.0.1:$CPORT/metrics" >"$TMP/s.$(printf %05d $i)" || rm -f "$TMP/s.$(printf %05d $i)"; i=$((i + 1)); sleep 0.3; done) &
  scraper=$!
  pids+=($scraper)
}

# kind:count (saler-traffic --exact kinds; each its usual status when rate
# limiting and payment failures are off)
MIX="health=500,create=150,missing=80,badlogin=60,unknownuser=20,locked=20,boom=40,traversal=20,sqli=20,oversized=10,notfound=30,feature=40,nofeature=10,list=40"
declare -A want # "METHOD ROUTE STATUS" -> expected count, from what saler-traffic was answered
route_of() { # KIND -> METHOD ROUTE STATUS (its usual answer)
  case $1 in
    health) echo "GET /health 200" ;; create) echo "POST /leads 201" ;; oversized) echo "POST /leads 413" ;;
    list) echo "GET /leads 200" ;; sqli) echo "GET /leads 400" ;; missing) echo "GET /leads/{id} 404" ;;
    badlogin | unknownuser) echo "POST /login 401" ;; locked) echo "POST /login 403" ;;
    boom) echo "GET /boom 500" ;; traversal) echo "GET unmatched 400" ;; notfound) echo "GET unmatched 404" ;;
    feature) echo "GET /features/{name} 200" ;; nofeature) echo "GET /features/{name} 404" ;; *) echo "? ? ?" ;;
  esac
}
answered=0 transport=0
# traffic NAME: the mix, exactly; adds what was answered to want[].  A
# request can fail at the transport level when uvicorn, shutting a recycled
# worker down, closes a connection it accepted but has not read: never
# answered, so not expected in the counts (the exact check would see it if
# it had been counted).  Fails when an answer is not its kind's usual one.
traffic() {
  local name=$1 kind status count method route usual bad=0 lost=0
  timeout 180 "$BIN/saler-traffic" --url "http://127.0.0.1:$APORT" --rate 0 --concurrency 8 --quiet \
    --exact "$MIX" >"$TMP/$name.out" 2>"$TMP/$name.err"
  while read -r _ kind status count; do
    if [ "$status" = 0 ]; then lost=$((lost + count)); continue; fi
    read -r method route usual <<<"$(route_of "$kind")"
    [ "$status" = "$usual" ] || { echo "# $kind answered $status $count times (usual: $usual)"; bad=1; }
    want["$method $route $status"]=$((${want["$method $route $status"]:-0} + count))
    answered=$((answered + count))
  done < <(grep '^result ' "$TMP/$name.out")
  transport=$((transport + lost))
  if [ "$bad" = 0 ] && grep -q '^result ' "$TMP/$name.out"; then
    ok "$name: every answer is its kind's usual status ($lost requests lost at the transport level)"
  else
    not_ok "$name: answers"; diag <"$TMP/$name.err"
  fi
}

wait_total() { # FILE: poll (20 s) until the scrape holds every answered request, none in flight
  local i
  for i in $(seq 100); do
    if scrape "$1" && [ "$(sum "$1" 'saler_http_requests_total{')" = "$answered" ] &&
      [ "$(sum "$1" 'saler_http_requests_in_flight{')" = 0 ]; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

check_exact() { # FILE WHEN
  if $PY - "$1" "$TMP/want" <<'EOF'; then ok "saler_http_requests_total is exact per method, route and status, and the latency histogram agrees ($2)"; else not_ok "exact counts ($2)"; fi
import sys
from prometheus_client.parser import text_string_to_metric_families
got, hist, inf = {}, {}, {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        l = s.labels
        if s.name == 'saler_http_requests_total' and s.value:
            got[(l['method'], l['route'], l['status'])] = s.value
        elif s.name == 'saler_http_request_duration_seconds_count':
            hist[(l['method'], l['route'])] = s.value
        elif s.name == 'saler_http_request_duration_seconds_bucket' and l['le'] == '+Inf':
            inf[(l['method'], l['route'])] = s.value
want = {}
for line in open(sys.argv[2]):
    m, r, st, c = line.rsplit(' ', 3)
    want[(m, r, st)] = float(c)
bad = 0
for k in sorted(set(got) | set(want)):
    if got.get(k) != want.get(k):
        print('# %s: got %s, want %s' % (k, got.get(k), want.get(k)))
        bad = 1
per_route = {}
for (m, r, _), c in want.items():
    per_route[(m, r)] = per_route.get((m, r), 0) + c
for k, c in per_route.items():
    if hist.get(k) != c or inf.get(k) != c:
        print('# histogram %s: _count %s, +Inf %s, want %s' % (k, hist.get(k), inf.get(k), c))
        bad = 1
for k in hist:
    if hist[k] and k not in per_route:
        print('# histogram %s counts %s requests nobody sent' % (k, hist[k]))
        bad = 1
sys.exit(bad)
EOF
}
write_want() { : >"$TMP/want"; local k; for k in "${!want[@]}"; do echo "$k ${want[$k]}" >>"$TMP/want"; done; }

# ---- phase 1: --preload (every family registered in the master before fork)
if start_app "$TMP/gunicorn1.log" --preload; then
  ok "gunicorn --preload with $WORKERS uvicorn workers answers on 127.0.0.1:$APORT"
else
  not_ok "gunicorn --preload started"; diag <"$TMP/gunicorn1.log"; finish
fi
start_scraper
workers_before=$(pgrep -P "$app" | sort | tr '\n' ' ')
traffic p1
write_want
if wait_total "$TMP/m1"; then ok "phase 1: the scrape reaches all $answered answered requests"; else not_ok "phase 1: scrape total $(sum "$TMP/m1" 'saler_http_requests_total{'), want $answered"; fi
check_exact "$TMP/m1" "--preload, workers recycled"
# a worker past max_requests leaves at uvicorn's next 0.1 s tick, which may
# come after the last answer: wait for it, bounded
for i in $(seq 50); do
  workers_after=$(pgrep -P "$app" | sort | tr '\n' ' ')
  [ "$workers_before" != "$workers_after" ] && break
  sleep 0.1
done
if [ "$workers_before" != "$workers_after" ]; then ok "workers were recycled (pids $workers_before-> $workers_after)"; else not_ok "workers were recycled"; fi

# ---- kill -9 of an idle worker: its counts stay (folded by the collector)
victim=$(pgrep -P "$app" | head -n 1)
kill -KILL "$victim"
for i in $(seq 150); do
  ! pgrep -P "$app" | grep -qx "$victim" && [ "$(pgrep -c -P "$app")" = "$WORKERS" ] && break
  sleep 0.1
done
if ! pgrep -P "$app" | grep -qx "$victim" && [ "$(pgrep -c -P "$app")" = "$WORKERS" ]; then
  ok "a worker killed with -9 (pid $victim) is replaced"
else
  not_ok "the killed worker $victim is replaced ($(pgrep -c -P "$app") workers)"
fi
sleep 1 # the collector notices the dead region and folds it
if wait_total "$TMP/m1k"; then ok "after kill -9: every request still counted"; else not_ok "after kill -9: total $(sum "$TMP/m1k" 'saler_http_requests_total{'), want $answered"; fi

traffic p2
write_want
wait_total "$TMP/m2"
check_exact "$TMP/m2" "after kill -9 and a second mix"
# Every worker that exited cleanly (uvicorn logs "Finished server process"
# just before gunicorn's worker_exit hook runs in it) counted itself as
# recycled; the killed one did not.  uvicorn checks max_requests on a 0.1 s
# tick, so a worker may serve a few more than MAXREQ: count the exits, not
# the requests.
for i in $(seq 100); do
  finished=$(grep -c 'Finished server process' "$TMP/gunicorn1.log")
  recycled=$(scrape "$TMP/m2r" && awk '$1 == "saler_worker_restarts_total{reason=\"recycled\"}" { print $2 }' "$TMP/m2r")
  [ "$finished" -gt 0 ] && [ "${recycled:-0}" = "$finished" ] && break
  sleep 0.1
done
if [ "$finished" -gt 0 ] && [ "${recycled:-0}" = "$finished" ]; then
  ok "saler_worker_restarts_total{reason=\"recycled\"} = $recycled: every clean worker exit, counted by the worker itself"
else
  not_ok "recycled = ${recycled:-absent}, want $finished (clean worker exits in the log)"
fi

# ---- phase 3: the whole server restarted without --preload, same segment
stop_app
if start_app "$TMP/gunicorn3.log"; then
  ok "gunicorn without --preload (each worker imports the app) on the same segment"
else
  not_ok "gunicorn without --preload started"; diag <"$TMP/gunicorn3.log"; finish
fi
traffic p3
write_want
wait_total "$TMP/m3"
check_exact "$TMP/m3" "after a restart without --preload"
stop_app
kill "$scraper" 2>/dev/null; wait "$scraper" 2>/dev/null
scrape "$TMP/s.99999"

if [ "$transport" -le $((answered / 20)) ]; then ok "$transport of $((answered + transport)) requests lost at the transport level (at most 5%)"; else
  not_ok "$transport of $((answered + transport)) requests lost at the transport level (more than 5%)"; fi

nscrapes=$(ls "$TMP"/s.* | wc -l)
if $PY - "$TMP"/s.* <<'EOF'; then ok "no counter or histogram sample decreased or vanished across $nscrapes scrapes"; else not_ok "monotonic across $nscrapes scrapes"; fi
import sys
from prometheus_client.parser import text_string_to_metric_families
prev, bad = {}, 0
for path in sys.argv[1:]:
    cur = {}
    for fam in text_string_to_metric_families(open(path).read()):
        if fam.type not in ('counter', 'histogram', 'summary'):
            continue
        # one worker process's own counters (CPU seconds) end with it
        if fam.name.startswith('shmetricsd_worker_'):
            continue
        for s in fam.samples:
            if s.name.endswith(('_total', '_bucket', '_count')) or (fam.type == 'counter' and s.name.endswith('_sum')):
                cur[(s.name, tuple(sorted(s.labels.items())))] = s.value
    for k, v in prev.items():
        if k not in cur or cur[k] < v:
            print('# %s: %s then %s (%s)' % (k, v, cur.get(k), path))
            bad += 1
            if bad > 20:
                sys.exit(1)
    prev = cur
sys.exit(bad > 0)
EOF
finish
