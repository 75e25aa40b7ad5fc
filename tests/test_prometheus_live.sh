#!/usr/bin/env bash
# Live check of the monitoring examples against a real Prometheus:
# shmetricsd + saler-demo (4 workers recycled every 300 requests) + ~30 s of
# realistic traffic from saler-traffic, scraped by a Prometheus whose config is
# examples/prometheus/prometheus.yml with the target, the intervals and the
# rule file paths adjusted (the real rule files are loaded).  Then every
# expression that examples/prometheus/list-exprs.py prints (recording rules,
# alerts, dashboard panels and variables) is run through /api/v1/query: none
# may fail, and those marked must_have_data must return at least one sample.
# Also: /api/v1/rules shows every group of the rule files, no rule with an
# error, and /api/v1/targets shows the shmetricsd target up.
#
# TAP lines on stdout; exit status non-zero on any failure.  Everything it
# starts is killed on exit; only 127.0.0.1 and free ports are used.  Runs in
# about 40 s.  Needs prometheus and promtool (Debian package prometheus) and
# /usr/bin/python3.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=${BUILD_DIR:-build}/bin
PROMDIR=$ROOT/examples/prometheus
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-prom.XXXXXX")
SEG=/dev/shm/shmetrics-test-prom-$$
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
TRAFFIC_SECONDS=${TRAFFIC_SECONDS:-30}
. tests/lib/tap.sh

# A port that is free on 127.0.0.1 right now (for Prometheus, which cannot
# report the port it got for :0).
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# tap_py DESCRIPTION ARGS... <SCRIPT: runs a python script that prints its own
# "ok - " / "not ok - " / "# " lines; they are counted here.  A crash, or a
# script that prints no TAP line, counts as a failure.
tap_py() {
  local desc=$1 out rc p f
  shift
  out=$("$PY" - "$@" 2>&1)
  rc=$?
  printf '%s\n' "$out" | grep -E '^(ok|not ok) - |^#'
  p=$(printf '%s\n' "$out" | grep -c '^ok - ')
  f=$(printf '%s\n' "$out" | grep -c '^not ok - ')
  n=$((n + p + f))
  failed=$((failed + f))
  if [ "$rc" -ne 0 ] || [ $((p + f)) -eq 0 ]; then
    not_ok "$desc (python exited $rc)"
    printf '%s\n' "$out" | grep -vE '^(ok|not ok) - |^#' | diag
  fi
}

# ---- prerequisites ------------------------------------------------------------
for b in shmetricsd saler-demo saler-traffic; do
  if [ ! -x "$BIN/$b" ]; then
    not_ok "$BIN/$b is built"
    finish
  fi
done
for t in prometheus promtool curl; do
  if ! command -v "$t" >/dev/null 2>&1; then
    not_ok "$t is installed (Debian packages prometheus, curl)"
    finish
  fi
done
ok "binaries are built; $(prometheus --version 2>&1 | head -n 1 | awk '{print $1, $3}') is installed"

# ---- collector and demo ---------------------------------------------------------
"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 --scan-interval 1 2>"$TMP/shmetricsd.log" &
pids+=($!); col=$!
if CPORT=$(port_from_log "$TMP/shmetricsd.log" "$col"); then
  ok "shmetricsd listens on 127.0.0.1:$CPORT"
else
  not_ok "shmetricsd started"; diag <"$TMP/shmetricsd.log"; finish
fi

"$BIN/saler-demo" --port 0 --workers 4 --max-requests 300 --segment "$SEG" 2>"$TMP/demo.log" &
pids+=($!); demo=$!
if DPORT=$(port_from_log "$TMP/demo.log" "$demo"); then
  ok "saler-demo (4 workers, recycled every 300 requests) listens on 127.0.0.1:$DPORT"
else
  not_ok "saler-demo started"; diag <"$TMP/demo.log"; finish
fi

# ---- Prometheus config: the example's, adjusted ---------------------------------
# Target -> the collector's port; every interval 1s (scrape_timeout must not
# exceed scrape_interval, so it goes to 1s too); rule_files -> absolute paths
# of the real rule files.  Each substitution must match exactly as often as
# expected, so that a change to prometheus.yml breaks this test loudly instead
# of silently testing something else.
if "$PY" - "$PROMDIR/prometheus.yml" "$TMP/prometheus.yml" "$CPORT" "$PROMDIR" >"$TMP/config.err" 2>&1 <<'EOF'
import re, sys
src, dst, port, promdir = sys.argv[1:]
text = open(src, encoding="utf-8").read()
def sub(pattern, repl, want):
    global text
    text, count = re.subn(pattern, repl, text, flags=re.M)
    if count != want:
        sys.exit("%r matched %d times, expected %d" % (pattern, count, want))
sub(r'^(\s*)scrape_interval:\s*\S+', r'\g<1>scrape_interval: 1s', 2)
sub(r'^(\s*)scrape_timeout:\s*\S+', r'\g<1>scrape_timeout: 1s', 2)
sub(r'^(\s*)evaluation_interval:\s*\S+', r'\g<1>evaluation_interval: 1s', 1)
sub(r'^(\s*-\s*targets:\s*\[)"[^"]*"(\])', r'\g<1>"127.0.0.1:%s"\g<2>' % port, 1)
sub(r'^(\s*-\s*)(recording-rules\.yml|alert-rules\.yml)\s*$',
    lambda m: m.group(1) + promdir + "/" + m.group(2), 2)
open(dst, "w", encoding="utf-8").write(text)
EOF
then
  ok "wrote a Prometheus config from examples/prometheus/prometheus.yml (target 127.0.0.1:$CPORT, intervals 1s)"
else
  not_ok "derive the Prometheus config from examples/prometheus/prometheus.yml"; diag <"$TMP/config.err"; finish
fi
if promtool check config "$TMP/prometheus.yml" >"$TMP/check.out" 2>&1; then
  ok "promtool check config accepts the derived config and its rule files"
else
  not_ok "promtool check config on the derived config"; diag <"$TMP/check.out"; finish
fi

# ---- Prometheus ---------------------------------------------------------------------
# The free port may be taken between free_port and the bind: try three ports.
prom="" PPORT="" ready=0
for _ in 1 2 3; do
  PPORT=$(free_port)
  rm -rf "$TMP/data"
  prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/data" \
    --web.listen-address="127.0.0.1:$PPORT" >"$TMP/prometheus.log" 2>&1 &
  prom=$!
  pids+=("$prom")
  ready=0
  for i in $(seq 150); do
    if curl -sf --max-time 2 "http://127.0.0.1:$PPORT/-/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$prom" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ready" = 1 ] && break
  kill -TERM "$prom" 2>/dev/null
  wait "$prom" 2>/dev/null
done
PURL=http://127.0.0.1:$PPORT
if [ "$ready" = 1 ]; then
  ok "prometheus is ready on 127.0.0.1:$PPORT"
else
  not_ok "prometheus started"; tail -n 30 "$TMP/prometheus.log" | diag; finish
fi

# Prometheus' discovery hands the target to the scrape loop ~5 s after start:
# wait (15 s at most) for the first successful scrape, so that the counters'
# first samples come before the traffic and every window below covers it.
up=
for i in $(seq 150); do
  up=$(curl -sf --max-time 2 "$PURL/api/v1/query" --data-urlencode 'query=up{job="shmetricsd"}' |
    "$PY" -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null)
  [ "$up" = 1 ] && break
  sleep 0.1
done
if [ "$up" = 1 ]; then
  ok "prometheus scrapes shmetricsd (up{job=\"shmetricsd\"} = 1 after $((i / 10)).$((i % 10)) s)"
else
  not_ok "prometheus scrapes shmetricsd within 15 s (up = '${up:-absent}')"; tail -n 30 "$TMP/prometheus.log" | diag
fi

# ---- traffic ----------------------------------------------------------------------
start=$(date +%s)
timeout $((TRAFFIC_SECONDS + 20)) "$BIN/saler-traffic" --url "http://127.0.0.1:$DPORT" --rate 150 \
  --duration "$TRAFFIC_SECONDS" --quiet >"$TMP/traffic.out" 2>"$TMP/traffic.err" &
pids+=($!); traffic=$!
wait "$traffic"
rc=$?
if [ "$rc" = 0 ]; then
  ok "saler-traffic sent ${TRAFFIC_SECONDS} s of the realistic mix at 150 req/s ($(($(date +%s) - start)) s)"
else
  not_ok "saler-traffic exited $rc"; diag <"$TMP/traffic.out"; diag <"$TMP/traffic.err"
fi
grep -iE 'total|rate' "$TMP/traffic.out" | head -n 3 | diag

# The recycles really happened (the point of --max-requests 300).
recycled=$(curl -sf --max-time 5 "http://127.0.0.1:$CPORT/metrics" |
  awk '$1 == "saler_worker_restarts_total{reason=\"recycled\"}" { print $2 }')
if [ "${recycled:-0}" -ge 1 ] 2>/dev/null; then
  ok "workers were recycled during the traffic (saler_worker_restarts_total{reason=\"recycled\"} = $recycled)"
else
  not_ok "workers were recycled during the traffic (got '${recycled:-absent}')"
fi

# ---- targets and rules --------------------------------------------------------------
curl -sf --max-time 5 "$PURL/api/v1/targets" >"$TMP/targets.json"
tap_py "/api/v1/targets" "$TMP/targets.json" "$CPORT" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
port = sys.argv[2]
targets = [t for t in doc["data"]["activeTargets"] if t["labels"].get("job") == "shmetricsd"]
if len(targets) != 1:
    print("not ok - /api/v1/targets lists one shmetricsd target (got %d)" % len(targets))
    sys.exit(0)
t = targets[0]
if t["health"] == "up" and not t.get("lastError") and t["labels"].get("instance") == "127.0.0.1:" + port:
    print("ok - /api/v1/targets: the shmetricsd target 127.0.0.1:%s is up" % port)
else:
    print("not ok - /api/v1/targets: shmetricsd target health %r, instance %r, lastError %r"
          % (t["health"], t["labels"].get("instance"), t.get("lastError")))
EOF

curl -sf --max-time 5 "$PURL/api/v1/rules" >"$TMP/rules.json"
tap_py "/api/v1/rules" "$TMP/rules.json" "$PROMDIR/recording-rules.yml" "$PROMDIR/alert-rules.yml" <<'EOF'
import json, re, sys
doc = json.load(open(sys.argv[1]))
want = {}  # group name -> number of rules, from the rule files
for path in sys.argv[2:]:
    group = None
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^\s*-\s+name:\s*(\S+)\s*$", line)
        if m:
            group = m.group(1)
            want[group] = 0
        elif re.match(r"^\s*-\s+(record|alert):", line):
            want[group] += 1
groups = {g["name"]: g for g in doc["data"]["groups"]}
missing = sorted(set(want) - set(groups))
wrong = sorted(g for g in want if g in groups and len(groups[g]["rules"]) != want[g])
if missing or wrong:
    print("not ok - /api/v1/rules lists every group of the rule files with all its rules"
          " (missing %s, wrong rule count %s)" % (missing, wrong))
else:
    print("ok - /api/v1/rules lists all %d groups of the rule files (%d rules)"
          % (len(want), sum(want.values())))
for name in sorted(groups):
    g = groups[name]
    bad = [r for r in g["rules"] if r.get("lastError") or r.get("health") == "err"]
    unknown = [r["name"] for r in g["rules"] if r.get("health") == "unknown"]
    if bad:
        print("not ok - rule group %s is healthy" % name)
        for r in bad:
            print("#   %s: health %s: %s" % (r["name"], r.get("health"), r.get("lastError")))
    elif unknown and g.get("interval", 0) <= 5:
        # Groups at 1s have had ~30 evaluations by now.
        print("not ok - rule group %s has been evaluated (not yet: %s)" % (name, ", ".join(unknown)))
    elif unknown:
        # A group with its own longer interval (saler-business.rules: 1m) may
        # not have reached its first evaluation yet; no error either way.
        print("ok - rule group %s: no errors (interval %gs, not evaluated yet)" % (name, g["interval"]))
    else:
        print("ok - rule group %s is healthy (%d rules evaluated, no lastError)" % (name, len(g["rules"])))
EOF

# ---- every expression of the rules and the dashboard ----------------------------------
# --all-present: the demo creates every series of its families before it forks
# (exported as 0), so a selector on any saler_/shmetricsd_ metric has data.
if "$PY" "$PROMDIR/list-exprs.py" --all-present >"$TMP/exprs.jsonl" 2>"$TMP/exprs.err"; then
  ok "list-exprs.py --all-present lists $(wc -l <"$TMP/exprs.jsonl") expressions"
else
  not_ok "list-exprs.py --all-present"; diag <"$TMP/exprs.err"
fi
tap_py "queries of list-exprs.py" "$TMP/exprs.jsonl" "$PURL" <<'EOF'
import json, sys, urllib.error, urllib.parse, urllib.request
path, base = sys.argv[1:]
total = must = failed = 0
for line in open(path, encoding="utf-8"):
    item = json.loads(line)
    total += 1
    must += item["must_have_data"]
    what = "%s: %s" % (item["source"].split("/")[-1], item["name"])
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": item["expr"]})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            doc = json.load(e)
        except ValueError:
            doc = {"status": "error", "error": "HTTP %d" % e.code}
    except (OSError, ValueError) as e:
        doc = {"status": "error", "error": str(e)}
    expr1 = " ".join(item["expr"].split())
    if doc.get("status") != "success":
        failed += 1
        print("not ok - query %s fails: %s: %s" % (what, doc.get("errorType", ""), doc.get("error")))
        print("#   %s" % expr1)
        continue
    data = doc["data"]
    if data["resultType"] in ("vector", "matrix"):
        count = len(data["result"])
    else:  # scalar, string
        count = 1
    if item["must_have_data"] and count == 0:
        failed += 1
        print("not ok - query %s returns data (it must, but the result is empty)" % what)
        print("#   %s" % expr1)
        continue
    for w in doc.get("warnings") or []:
        print("#   %s: warning: %s" % (what, w))
    print("ok - query %s: %d series%s" % (what, count, "" if item["must_have_data"] else " (may be empty)"))
print("# %d expressions run, %d of them must have data, %d failed" % (total, must, failed))
EOF

ok_demo=1
kill -0 "$demo" 2>/dev/null || ok_demo=0
kill -0 "$col" 2>/dev/null || ok_demo=0
kill -0 "$prom" 2>/dev/null || ok_demo=0
if [ "$ok_demo" = 1 ]; then
  ok "shmetricsd, saler-demo and prometheus are still running ($(($(date +%s) - start)) s since the traffic started)"
else
  not_ok "shmetricsd, saler-demo and prometheus are still running"
  tail -n 20 "$TMP/prometheus.log" | diag
fi

finish
