#!/usr/bin/env bash
# examples/scale-out on 127.0.0.1: two "hosts" (each a saler-demo, its
# shmetricsd and a Prometheus in agent mode remote-writing), a central
# Prometheus with the remote-write receiver and the fleet rules,
# VictoriaMetrics, and a global Prometheus federating the central one.
# Each host gets a known number of requests; the central stores must hold
# exactly the sums the hosts counted, the recording and alert rules must
# evaluate centrally, and the federated aggregate must arrive.
# Slow (about 30 s): skipped under sanitizers.  Everything it starts is
# stopped on exit; only 127.0.0.1 and free ports.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=$ROOT/${BUILD_DIR:-build}/bin
EX=$ROOT/examples/scale-out
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-scale.XXXXXX")
SEG=/dev/shm/shmet-test-scale-$$
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
. tests/lib/tap.sh
trap 'rm -f "$SEG"-h1 "$SEG"-h2; cleanup' EXIT

if [ -n "${SANITIZER:-}" ]; then ok "scale-out # skip slow live test, plain pass only"; finish; fi
for t in prometheus victoria-metrics curl; do
  command -v "$t" >/dev/null 2>&1 || { not_ok "$t is installed (Debian packages prometheus, victoria-metrics)"; finish; }
done
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
# q URL EXPR: the value of a one-sample instant query, or ""
q() {
  curl -s --get "$1/api/v1/query" --data-urlencode "query=$2" | "$PY" -c 'import json, sys
try:
    r = json.load(sys.stdin)["data"]["result"]
    print(r[0]["value"][1] if len(r) == 1 else "")
except Exception:
    print("")'
}
# until_eq URL EXPR WANT: poll (60 s at most) until the query gives WANT; prints the last value
until_eq() {
  local v="" i
  for i in $(seq 300); do
    v=$(q "$1" "$2")
    [ "$v" = "$3" ] && break
    sleep 0.2
  done
  echo "$v"
}

CP=$(free_port) VP=$(free_port) GP=$(free_port)
sed "s|@CENTRAL@|127.0.0.1:$CP|" "$EX/global.yml" >"$TMP/global.yml"
cp "$EX/central.yml" "$EX/rules.yml" "$TMP/"
if promtool check config "$TMP/central.yml" >"$TMP/check.log" 2>&1 && promtool check rules "$TMP/rules.yml" >>"$TMP/check.log" 2>&1; then
  ok "promtool accepts central.yml and rules.yml"
else not_ok "promtool check"; diag <"$TMP/check.log"; fi
prometheus --config.file="$TMP/central.yml" --storage.tsdb.path="$TMP/central" --web.listen-address="127.0.0.1:$CP" \
  --web.enable-remote-write-receiver >"$TMP/central.log" 2>&1 &
pids+=($!)
victoria-metrics -httpListenAddr="127.0.0.1:$VP" -storageDataPath="$TMP/vm" -retentionPeriod=1d \
  -search.latencyOffset=0s -search.disableCache >"$TMP/vm.log" 2>&1 &
pids+=($!)
prometheus --config.file="$TMP/global.yml" --storage.tsdb.path="$TMP/global" --web.listen-address="127.0.0.1:$GP" \
  >"$TMP/global.log" 2>&1 &
pids+=($!)

REQ_h1=37 REQ_h2=58
for h in h1 h2; do
  "$BIN/shmetricsd" --segment "$SEG-$h" -l 127.0.0.1:0 --scan-interval 0.2 2>"$TMP/$h-col.log" &
  col=$!
  pids+=("$col")
  "$BIN/saler-demo" --port 0 --workers 2 --rate-limit 0 --segment "$SEG-$h" 2>"$TMP/$h-demo.log" &
  demo=$!
  pids+=("$demo")
  cport=$(port_from_log "$TMP/$h-col.log" "$col") && dport=$(port_from_log "$TMP/$h-demo.log" "$demo") \
    || { not_ok "host $h started"; diag <"$TMP/$h-col.log"; diag <"$TMP/$h-demo.log"; finish; }
  eval "CPORT_$h=$cport"
  sed -e "s|@HOST@|$h|" -e "s|@COLLECTOR@|127.0.0.1:$cport|" -e "s|@CENTRAL@|127.0.0.1:$CP|" \
    -e "s|@VICTORIA@|127.0.0.1:$VP|" "$EX/agent.yml" >"$TMP/$h-agent.yml"
  prometheus --enable-feature=agent --config.file="$TMP/$h-agent.yml" --storage.agent.path="$TMP/$h-agent" \
    --web.listen-address="127.0.0.1:$(free_port)" >"$TMP/$h-agent.log" 2>&1 &
  pids+=($!)
  want=$(eval echo "\$REQ_$h")
  bad=0
  for i in $(seq "$want"); do
    c=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$dport/health")
    [ "$c" = 200 ] || bad=$((bad + 1))
  done
  [ "$bad" = 0 ] && ok "host $h: collector :$cport, demo :$dport, agent; $want requests answered 200" \
    || not_ok "host $h: $bad of $want requests failed"
done

# what each host counted, from its own collector
total=0
for h in h1 h2; do
  cport=$(eval echo "\$CPORT_$h") want=$(eval echo "\$REQ_$h")
  got=$(curl -s "http://127.0.0.1:$cport/metrics" | awk '$1 ~ /^saler_http_requests_total\{/ { s += $2 } END { print s + 0 }')
  [ "$got" = "$want" ] && ok "host $h's collector counts $got requests" || not_ok "host $h's collector: $got, want $want"
  total=$((total + got))
done

C=http://127.0.0.1:$CP V=http://127.0.0.1:$VP G=http://127.0.0.1:$GP
for h in h1 h2; do
  want=$(eval echo "\$REQ_$h")
  v=$(until_eq "$C" "sum(saler_http_requests_total{job=\"shmetricsd\",host=\"$h\"})" "$want")
  [ "$v" = "$want" ] && ok "central Prometheus: host $h's sum is exactly $want (remote write from its agent)" \
    || { not_ok "central: host $h's sum '$v', want $want"; tail -n 5 "$TMP/$h-agent.log" | diag; }
  v=$(until_eq "$V" "sum(saler_http_requests_total{job=\"shmetricsd\",host=\"$h\"})" "$want")
  [ "$v" = "$want" ] && ok "VictoriaMetrics: host $h's sum is exactly $want" \
    || { not_ok "VictoriaMetrics: host $h's sum '$v', want $want"; tail -n 5 "$TMP/vm.log" | diag; }
done
v=$(until_eq "$C" 'fleet:saler_http_requests:sum' "$total")
[ "$v" = "$total" ] && ok "the central recording rule fleet:saler_http_requests:sum is $total" || not_ok "recording rule: '$v', want $total"
v=$(until_eq "$C" 'sum(host:saler_http_requests:sum)' "$total")
[ "$v" = "$total" ] && ok "host:saler_http_requests:sum adds up to $total over both hosts" || not_ok "per-host rule: '$v'"
v=$(until_eq "$C" 'fleet:shmetricsd_live_workers:sum' 6)
[ "$v" = 6 ] && ok "fleet:shmetricsd_live_workers:sum: 2 masters and 4 workers" || not_ok "live workers rule: '$v'"
state=""
for i in $(seq 100); do
  state=$(curl -s "$C/api/v1/alerts" | "$PY" -c 'import json, sys
a = [x for x in json.load(sys.stdin)["data"]["alerts"] if x["labels"]["alertname"] == "FleetServesRequests"]
print(a[0]["state"] + " " + a[0]["annotations"]["summary"] if a else "")')
  case $state in firing*) break ;; esac
  sleep 0.2
done
case $state in "firing the fleet served $total requests") ok "the alert rule fires centrally: $state" ;;
  *) not_ok "alert: '$state'" ;; esac
rules=$(curl -s "$C/api/v1/rules" | "$PY" -c 'import json, sys
g = json.load(sys.stdin)["data"]["groups"]
r = [x for grp in g for x in grp["rules"]]
print(len(r), sum(1 for x in r if x.get("health") != "ok"))')
[ "$rules" = "5 0" ] && ok "all 5 rules loaded centrally, none unhealthy" || not_ok "rules: '$rules'"
v=$(until_eq "$G" 'fleet:saler_http_requests:sum' "$total")
[ "$v" = "$total" ] && ok "federation: the global Prometheus has fleet:saler_http_requests:sum = $total from /federate" \
  || not_ok "federation: '$v'"
v=$(q "$G" 'count(saler_http_requests_total)')
[ -z "$v" ] && ok "federation pulled the aggregates only, not the raw series" || not_ok "federation copied raw series: $v"
finish
