#!/usr/bin/env bash
# shmetrics-dump against real segments: made by a real writer (a master, a
# folded worker, a dead worker; `test_reader_hostile --make-segment`), then
# damaged in known ways.  Each check prints "ok - ..." or "not ok - ...";
# the exit status is non-zero when any failed.  Binaries come from
# ${BUILD_DIR:-build} (build/address etc. under a sanitizer).
set -u
cd "$(dirname "$0")/.." || exit 2
BUILD_DIR=${BUILD_DIR:-build}
DUMP=$BUILD_DIR/bin/shmetrics-dump
MAKER=$BUILD_DIR/tests/test_reader_hostile
# Sanitizers exit 1 by default, which is also a --check answer: move them away.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}exitcode=86
export UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}exitcode=87:print_stacktrace=1

failed=0 n=0
ok() { n=$((n + 1)); echo "ok - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok - $*"; }

for b in "$DUMP" "$MAKER"; do
  if [ ! -x "$b" ]; then
    echo "not ok - $b is built (run make first)"
    exit 1
  fi
done

# The dump reads segments through libshm alone: no collector code and none
# of the daemon's libraries (liburcu, libmicrohttpd, jansson, zlib) in it.
# The link line first: with --as-needed (a distribution default) an unused
# library leaves no trace in the binary, yet a change that starts to use one
# would link quietly.
link=$(make -s -n -B SANITIZER="${SANITIZER:-}" "$DUMP" 2>/dev/null | grep -F -- "-o $DUMP ")
if [ -z "$link" ]; then
  not_ok "make shows how shmetrics-dump is linked"
elif echo "$link" | grep -qE -- '-l(urcu|microhttpd|jansson|z)\b|libshmetricsd\.a'; then
  not_ok "shmetrics-dump is linked with libshm only"
  echo "$link" | sed 's/^/#   /'
else ok "shmetrics-dump is linked with libshm only"; fi
deps=$(ldd "$DUMP" 2>&1)
if echo "$deps" | grep -qE 'liburcu|libmicrohttpd|libjansson|libz\.'; then
  not_ok "shmetrics-dump links none of the collector's libraries"
  echo "$deps" | sed 's/^/#   /'
else ok "shmetrics-dump links none of the collector's libraries"; fi
syms=$(nm "$DUMP" | awk '$2 ~ /^[TtDdBbUu]$/ {print $NF}' |
  grep -E '^(collector_|view_|render_|api_|http_|json_|MHD_|urcu|cds_|rcu_|deflate|shmet_negotiate|shmet_gzip)' | sort -u)
if [ -n "$syms" ]; then
  not_ok "shmetrics-dump holds no collector, HTTP, JSON or RCU code"
  echo "$syms" | head -n 20 | sed 's/^/#   /'
else ok "shmetrics-dump holds no collector, HTTP, JSON or RCU code"; fi

tmp=$(mktemp -d /dev/shm/shmet-dump-test.XXXXXX)
stay_pid=
cleanup() {
  [ -n "$stay_pid" ] && kill "$stay_pid" 2>/dev/null && wait "$stay_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

out=$tmp/out err=$tmp/err
# run the dump; its exit status in $rc, stdout in $out, stderr in $err
dump() {
  "$DUMP" "$@" >"$out" 2>"$err"
  rc=$?
}
sanitizer_clean() {
  ! grep -qE 'runtime error|AddressSanitizer|LeakSanitizer' "$err"
}
# expect_rc WANT DESCRIPTION
expect_rc() {
  if [ "$rc" -eq "$1" ] && sanitizer_clean; then
    ok "$2 (exit $rc)"
  else
    not_ok "$2: expected exit $1, got $rc"
    sed 's/^/#   /' "$err" | head -n 20
    head -n 20 "$out" | sed 's/^/#   stdout: /'
  fi
}
# expect_in FILE TEXT DESCRIPTION (fixed string)
expect_in() {
  if grep -qF -- "$2" "$1"; then ok "$3"; else
    not_ok "$3: \"$2\" not found"
    head -n 30 "$1" | sed 's/^/#   /'
  fi
}
expect_not_in() {
  if grep -qF -- "$2" "$1"; then
    not_ok "$3: \"$2\" found"
    grep -F -- "$2" "$1" | head -n 5 | sed 's/^/#   /'
  else ok "$3"; fi
}
# json_ok DESCRIPTION PYTHON-ASSERTIONS: $out parsed as j; each line of the
# script must hold, else its text is reported
json_ok() {
  local desc=$1 script=$2 msg
  if msg=$(python3 - "$out" "$script" 2>&1 <<'EOF'
import json, sys
raw = open(sys.argv[1], 'rb').read()
text = raw.decode('utf-8')          # must be valid UTF-8
j = json.loads(text)                # must be valid JSON
fam = {f['name']: f for f in j.get('families', [])}
def series(name, **labels):
    for s in fam[name]['series']:
        if s['labels'] == labels:
            return s
    raise AssertionError('no series %s%s' % (name, labels))
def source(s, src, region=None):
    for v in s['values']:
        if v['source'] == src and (region is None or v.get('region') == region):
            return v
    raise AssertionError('no %s value' % src)
for line in sys.argv[2].strip().splitlines():
    line = line.strip()
    if line and not eval(line):
        raise AssertionError(line)
EOF
  ); then ok "$desc"; else
    not_ok "$desc"
    echo "$msg" | tail -n 3 | sed 's/^/#   /'
  fi
}

# ---- command line ----
dump --help
expect_rc 0 "--help"
expect_in "$out" "--check" "--help lists --check"
dump --version
expect_rc 0 "--version"
expect_in "$out" "shmetrics-dump " "--version names the tool"
dump --bogus
expect_rc 2 "an unknown option is refused"
dump --count 2 "$tmp/none"
expect_rc 2 "--count without --watch is refused"
dump "$tmp/does-not-exist"
expect_rc 2 "a missing segment cannot be opened"
expect_in "$err" "cannot open" "a missing segment: the reason is on stderr"

# ---- a live segment: the master alive, worker A folded, worker B dead ----
live=$tmp/live
"$MAKER" --make-segment "$live" clean --stay >"$tmp/stay.log" 2>&1 &
stay_pid=$!
for _ in $(seq 1 200); do [ -f "$live.ready" ] && break; sleep 0.05; done
if [ ! -f "$live.ready" ]; then
  not_ok "the writer made a live segment"
  cat "$tmp/stay.log"
  exit 1
fi
ok "the writer made a live segment"
sum_before=$(md5sum <"$live")

dump "$live"
expect_rc 0 "text dump of a live segment"
expect_in "$out" "layout 2.3" "the header is printed"
if grep -qE '^ +0 live +[0-9]+ alive' "$out"; then ok "region 0 is live, its owner alive"; else not_ok "region 0 is live, its owner alive"; fi
if grep -qE '^ +1 dead +[0-9]+ dead' "$out"; then ok "region 1 is listed dead"; else not_ok "region 1 is listed dead"; fi
expect_in "$out" 'requests_total{method="GET",code="200"}' "a labelled series is printed"
if awk '/requests_total\{method="GET",code="200"\}/ {s=1} s && /= aggregate/ {print; exit}' "$out" | grep -qE 'aggregate +15$'; then
  ok "the aggregate of GET/200 is 15 (5 alive + 3 folded + 7 dead)"
else
  not_ok "the aggregate of GET/200 is 15"
  grep -A5 'code="200"' "$out" | sed 's/^/#   /'
fi
expect_in "$out" "count 4 sum 3.05  le=0.1:1 le=0.5:2 le=1:3 le=+Inf:4" "the histogram aggregate is cumulative"
expect_in "$out" '= worker="0"' "a per-worker gauge is exposed per live worker"

dump --json "$live"
expect_rc 0 "--json dump of a live segment"
json_ok "--json: header, regions and aggregates" "
j['header']['region_count'] == 4 and j['header']['version_major'] == 2
j['header']['mode'] == '0600'
[r['state'] for r in j['regions']] == ['live', 'dead', 'free', 'free']
j['regions'][0]['alive'] and not j['regions'][1]['alive']
j['regions'][1]['parent'] == 0 and j['regions'][0]['parent'] is None
series('requests_total', method='GET', code='200')['aggregate']['value'] == 15
source(series('requests_total', method='GET', code='200'), 'region', 0)['value'] == 5
source(series('requests_total', method='GET', code='200'), 'retired')['value'] == 3
source(series('requests_total', method='GET', code='200'), 'region', 1)['value'] == 7
series('requests_total', method='POST', code='500')['aggregate']['whole'] == 1
series('bytes_total')['aggregate']['value'] == 3.75
series('temperature')['aggregate']['value'] == 10
series('queue_max')['aggregate']['value'] == 4
series('last_seen')['aggregate']['value'] == 200
series('busy')['aggregate']['workers'] == [{'worker': '0', 'value': 1}]
series('pool', thread='main')['aggregate']['workers'] == [{'worker': '0', 'value': 5}]
series('latency_seconds', route='/')['aggregate']['count'] == 4
[b['count'] for b in series('latency_seconds', route='/')['aggregate']['buckets']] == [1, 2, 3, 4]
[b['le'] for b in series('latency_seconds', route='/')['aggregate']['buckets']] == ['0.1', '0.5', '1', '+Inf']
fam['latency_seconds']['buckets'] == [0.1, 0.5, 1]
series('payload_bytes')['aggregate'] == {'count': 2, 'sum': 40}
fam['temperature']['gauge_mode'] == 'sum' and fam['busy']['gauge_mode'] == 'per_worker'
[p for p in j['problems'] if 'no collector is running' not in p] == [] and j['stats']['corrupt_records'] == 0
"

# no collector runs: nothing will fold the dead region, which is a problem
dump --check "$live"
expect_rc 1 "--check of a live segment with a dead region and no collector"
expect_in "$out" "1 problem" "--check finds that one problem"
expect_in "$out" "problem: region 1 (pid" "--check names the dead, unfolded region"
expect_in "$out" "not yet folded and no collector is running" "--check says why a dead region is a problem"

dump --check --json "$live"
expect_rc 1 "--check --json"
json_ok "--check --json is an object with ok, problems, info" "
j['ok'] is False and len(j['problems']) == 1 and j['info'] == []
"

dump --region 0 --json "$live"
expect_rc 0 "--region 0"
json_ok "--region 0 shows region 0 only" "
[r['index'] for r in j['regions']] == [0]
all(v.get('region') == 0 for f in j['families'] for s in f['series'] for v in s['values'])
series('requests_total', method='GET', code='200')['aggregate']['value'] == 15
"
dump --region retired --json "$live"
expect_rc 0 "--region retired"
json_ok "--region retired shows the retired totals only" "
all(v['source'] == 'retired' for f in j['families'] for s in f['series'] for v in s['values'])
source(series('requests_total', method='GET', code='200'), 'retired')['value'] == 3
"
dump --region 9 "$live"
expect_rc 2 "--region past the table is refused"
dump --family 'req*' --json "$live"
expect_rc 0 "--family"
json_ok "--family keeps the matching families" "
list(fam) == ['requests_total']
"
SHMETRICS_SEGMENT=$live "$DUMP" --json >"$out" 2>"$err"
rc=$?
expect_rc 0 "the segment from \$SHMETRICS_SEGMENT"
json_ok "\$SHMETRICS_SEGMENT names the segment" "j['segment'] == '$live'"
dump --segment "$live" --family temperature
expect_rc 0 "--segment PATH"

dump --watch 0.1 --count 3 "$live"
expect_rc 0 "--watch with --count"
frames=$(grep -o $'\033\\[H\033\\[2J' "$out" | wc -l)
if [ "$frames" -eq 3 ]; then ok "--watch --count 3 draws 3 frames in place"; else not_ok "--watch --count 3 drew $frames frames"; fi
"$DUMP" --watch 0.2 "$live" >"$out" 2>"$err" &
wpid=$!
sleep 0.7
kill -INT "$wpid"
for _ in $(seq 1 50); do kill -0 "$wpid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$wpid" 2>/dev/null; then
  kill -KILL "$wpid"
  not_ok "--watch stops on SIGINT"
else
  wait "$wpid"
  rc=$?
  expect_rc 0 "--watch stops on SIGINT"
fi
dump --watch 0.1 --count 2 --json "$live"
expect_rc 0 "--watch --json"
if [ "$(wc -l <"$out")" -eq 2 ] && ! grep -q $'\033' "$out"; then ok "--watch --json prints one document per line, no escapes"; else not_ok "--watch --json output"; fi

if [ "$(md5sum <"$live")" = "$sum_before" ]; then ok "the dump never wrote the segment"; else not_ok "the segment changed while only the dump read it"; fi
if grep -q "$(basename "$live")" /proc/"$stay_pid"/maps 2>/dev/null; then ok "the writer still maps its segment"; else ok "the writer's mapping (not visible here)"; fi

kill "$stay_pid"
wait "$stay_pid" 2>/dev/null
stay_pid=

# ---- the same segment once its master is gone: every region dead ----
dead=$tmp/dead
"$MAKER" --make-segment "$dead" clean >"$tmp/make.log" 2>&1 || { not_ok "make a dead segment"; cat "$tmp/make.log"; }
dump "$dead"
expect_rc 0 "text dump with every owner dead"
if grep -qE '^ +0 dead +[0-9]+ dead' "$out"; then ok "a dead master's region is listed dead"; else not_ok "a dead master's region is listed dead"; fi
expect_in "$out" "no value (only dead processes had it)" "a sum gauge of dead processes has no value"
dump --check "$dead"
expect_rc 1 "--check: dead regions no collector folds are problems"
expect_in "$out" "problem: region 0 (pid" "--check lists dead region 0"
expect_in "$out" "problem: region 1 (pid" "--check lists dead region 1"

# ---- damaged segments: --check exits 1 and names the problem ----
# kind | what --check says
while IFS='|' read -r kind words; do
  [ -z "$kind" ] && continue
  seg=$tmp/$kind
  if ! "$MAKER" --make-segment "$seg" "$kind" >"$tmp/make.log" 2>&1; then
    not_ok "make a $kind segment"
    cat "$tmp/make.log"
    continue
  fi
  dump --check "$seg"
  expect_rc 1 "$kind: --check finds a problem"
  expect_in "$out" "problem: " "$kind: --check lists it as a problem"
  expect_in "$out" "$words" "$kind: --check says \"$words\""
  dump "$seg"
  expect_rc 0 "$kind: the text dump still prints"
  dump --json "$seg"
  expect_rc 0 "$kind: the JSON dump still prints"
  json_ok "$kind: the JSON is valid UTF-8 and lists the problem" "
len(j['problems']) >= 1
"
done <<'EOF'
family-self|refers forward
family-forward|refers forward
family-at-series|is not a family
family-mid|not the start of a family record
rec-size-zero|has size 0 past the directory end
rec-size-huge|past the directory end
len-past-end|values overrun the record
cells-outside|outside [
cells-overlap|overlap
cells-in-gap|below the cell area
dir-end-past|area header out of bounds
bad-utf8-value|label value is not valid UTF-8
bad-utf8-help|help is not valid UTF-8
bad-name|invalid metric name
nul-value|a label value holds a NUL byte
worker-label|invalid label name
duplicate-series|duplicates the one at
conflict|region 1: family temperature is not in the family registry
retired-active|sh_retired_active is 5
bad-state|unknown state 7
folded-gen|generation 99 as folded
retired-garbage|area header out of bounds
EOF

# ---- segments that cannot be opened: exit 2, the reason on stderr ----
while IFS='|' read -r kind words; do
  [ -z "$kind" ] && continue
  seg=$tmp/$kind
  "$MAKER" --make-segment "$seg" "$kind" >"$tmp/make.log" 2>&1 || { not_ok "make a $kind segment"; continue; }
  dump --check "$seg"
  expect_rc 2 "$kind: cannot be opened"
  expect_in "$err" "$words" "$kind: stderr says \"$words\""
  if [ -s "$out" ]; then not_ok "$kind: nothing on stdout"; else ok "$kind: nothing on stdout"; fi
done <<'EOF'
bad-magic|not a shmetrics segment
bad-version|layout version 3.
truncated|file is truncated
tiny|no initialised segment
EOF

# ---- not a regular file: refused before it is opened, never waited on ----
mkfifo "$tmp/fifo"
mkdir "$tmp/dir"
while IFS='|' read -r path words; do
  [ -z "$path" ] && continue
  timeout 10 "$DUMP" --check "$path" >"$out" 2>"$err"
  rc=$?
  expect_rc 2 "$words: --check refuses it at once"
  expect_in "$err" "is $words, not a regular file" "$words: stderr says what it is"
done <<EOF
$tmp/fifo|a FIFO
$tmp/dir|a directory
/dev/null|a character device
EOF

# ---- another user's segment: refused unless --segment-owner names that uid ----
if [ "$(id -u)" -eq 0 ]; then
  owned=$tmp/owned
  "$MAKER" --make-segment "$owned" clean >"$tmp/make.log" 2>&1 || not_ok "make a clean segment to chown"
  chown 65534:65534 "$owned"
  dump --check "$owned"
  expect_rc 2 "a segment owned by uid 65534 is refused, even for root"
  expect_in "$err" "owned by uid 65534" "the refusal names the owner"
  dump --check --segment-owner 1234 "$owned"
  expect_rc 2 "--segment-owner of another uid does not allow it"
  dump --check --segment-owner 65534 "$owned"
  # opened and checked: exit 1 only for its dead, unfolded regions (no collector runs)
  expect_rc 1 "--segment-owner 65534 allows it"
  expect_not_in "$err" "owned by uid" "--segment-owner 65534: no refusal"
  dump --segment-owner nobody "$owned"
  expect_rc 2 "--segment-owner wants a numeric uid"
else
  ok "# SKIP owner checks need root to chown"
fi

echo "# $n checks, $failed failed"
[ "$failed" -eq 0 ]
