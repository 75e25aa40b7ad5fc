#!/usr/bin/env bash
# Series lifecycle (SERIES LIMIT, REMOVAL and RETENTION in the layout
# header), against a running shmetricsd and real worker processes:
#  - 50,000 user ids in one family: 2,000 series kept, the rest merged into
#    the overflow series, exactly; counted in shmetricsd_series_overflow_total,
#    said once by the worker and logged once by the collector; the dump,
#    --check and the summary API show it; a family's own limit and the
#    collector's --series-limit;
#  - removal and clear across 4 processes with folds in between, floats,
#    histograms and gauges included; kept across a collector's kill -9; the
#    same through the push API (DELETE);
#  - retention: --retired-ttl drops what only dead workers held, not what a
#    live one holds, and gives the space back;
#  - a scraper every 20 ms through all of it never sees a counter, a
#    histogram count or bucket go down, except a removed series after it
#    left the exposition.
# TAP-style lines; binaries from ${BUILD_DIR:-build}/bin.
set -u
cd "$(dirname "$0")/.."
TEST_NAME=lifecycle
SCAN_INTERVAL=0.05
. tests/lib/daemon.sh
need "$BIN/shmetricsd" "$BIN/shmetrics-dump" "$PY"

WORKER=$TMP/worker
if ! cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude -o "$WORKER" tests/data/lifecycle_worker.c \
	-pthread -lm 2>"$TMP/cc.log"; then
	not_ok "compile the worker"
	sed 's/^/#   /' "$TMP/cc.log" | head
	exit 1
fi

scrape() { curl -s -m 20 "$BASE/metrics" >"$TMP/metrics"; }
# val SAMPLE: its value in the last scrape, or "absent"
val() {
	local v
	v=$(awk -v s="$1" 'index($0, s " ") == 1 { print $2; exit }' "$TMP/metrics")
	echo "${v:-absent}"
}
# until_val SAMPLE WANT: scrape until SAMPLE reads WANT (10 s at most)
until_val() {
	local i
	for i in $(seq 200); do
		scrape
		[ "$(val "$1")" = "$2" ] && return 0
		sleep 0.05
	done
	return 1
}
check_val() { # check_val SAMPLE WANT WHAT
	if until_val "$1" "$2"; then ok "$3: $1 $2"; else not_ok "$3: $1 is $(val "$1"), want $2"; fi
}

# Workers on FIFOs: spawn I; say I LINE (waits for its "ok").
declare -A WIN WOUT WPID
spawn() {
	mkfifo "$TMP/in$1" "$TMP/out$1"
	SHMETRICS_SEGMENT=$SEG_NOW "$WORKER" <"$TMP/in$1" >"$TMP/out$1" 2>"$TMP/err$1" &
	WPID[$1]=$!
	PIDS+=("$!")
	exec {w}>"$TMP/in$1"
	exec {r}<"$TMP/out$1"
	WIN[$1]=$w
	WOUT[$1]=$r
}
say() {
	local reply=
	echo "$2" >&"${WIN[$1]}"
	read -t 30 -r reply <&"${WOUT[$1]}"
	[ "$reply" = ok ] || { echo "# worker $1: \"$2\": ${reply:-no answer}"; return 1; }
}
finish() { # the worker exits; its region is dead from then on
	local w=${WIN[$1]} r=${WOUT[$1]}
	echo quit >&"$w"
	exec {w}>&- {r}<&-
	wait "${WPID[$1]}" 2>/dev/null
}
# gone SAMPLE WHAT: absent, and long enough for the scraper to see it so
gone() { check_val "$1" absent "$2" && sleep 0.3; }

# ------------------------------------------------------------- series limit
SEG_NOW=$SEG
if ! start limit "$SEG_NOW"; then
	not_ok "starts"
	sed 's/^/#   /' "$LOG" | head
	exit 1
fi
spawn u
say u "users c_logins 50000 0" && say u "users c_small 100 10" || not_ok "the worker made its lookups"
notices=$(grep -c 'reached its limit of' "$TMP/erru")
if [ "$notices" -eq 1 ] && grep -q '"c_logins_total" reached its limit of 2000 series' "$TMP/erru"; then
	ok "the worker says once on stderr that c_logins_total reached its limit of 2000"
else
	not_ok "the worker's stderr notice ($notices lines)"
	sed 's/^/#   /' "$TMP/erru" | head -n 5
fi
check_val 'c_logins_total{user="__overflow__"}' 48000 "50,000 user ids, 2,000 kept: the rest in the overflow series"
check_val 'shmetricsd_series_overflow_total{family="c_logins_total"}' 48000 "every routed lookup counted"
kept=$(grep -c '^c_logins_total{user="u' "$TMP/metrics")
sum=$(awk '/^c_logins_total\{/ { s += $2 } END { print s }' "$TMP/metrics")
if [ "$kept" -eq 2000 ] && [ "$sum" = 50000 ] && [ "$(val 'c_logins_total{user="u001999"}')" = 1 ] &&
	[ "$(val 'c_logins_total{user="u002000"}')" = absent ]; then
	ok "2000 series of 1 (the first 2000 ids) and the overflow: 50000 in all, nothing lost"
else
	not_ok "kept $kept series, sum $sum (want 2000 and 50000)"
fi
if [ "$(val 'c_small_total{user="__overflow__"}')" = 90 ] && [ "$(grep -c '^c_small_total{user="u' "$TMP/metrics")" -eq 10 ]; then
	ok "a family's own series_limit (10): 10 series and 90 in the overflow series"
else
	not_ok "c_small_total: $(grep -c '^c_small_total' "$TMP/metrics") series, overflow $(val 'c_small_total{user="__overflow__"}')"
fi
logged=$(grep -c 'family c_logins_total reached its series limit' "$LOG")
if [ "$logged" -eq 1 ]; then ok "the collector logs the overflow of c_logins_total once"; else
	not_ok "the collector logged it $logged times"
	grep 'series limit' "$LOG" | sed 's/^/#   /' | head -n 3
fi
if "$PY" - "$TMP/metrics" <<'EOF'; then ok "the scrape parses (prometheus_client) with the overflow family typed counter"; else not_ok "the scrape parses"; fi
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
f = fams["shmetricsd_series_overflow"]
assert f.type == "counter", f.type
assert {s.labels["family"] for s in f.samples if s.name.endswith("_total")} == {"c_logins_total", "c_small_total"}
EOF
# summary_bytes PER WHAT: the summary API's figures for c_logins_total, PER bytes a series
summary_bytes() {
	curl -s -m 20 "$BASE/api/v1/metrics/summary?family=c_logins_total" >"$TMP/summary"
	if "$PY" - "$TMP/summary" "$1" <<'EOF'; then ok "summary API $2: series 2001, at_series_limit, 48000 overflowed lookups, $1 bytes a series"; else not_ok "summary API $2"; sed 's/^/#   /' "$TMP/summary" | head -c 600; echo; fi
import json, sys
f = json.load(open(sys.argv[1]))["families"][0]
assert f["series"] == 2001 and f["at_series_limit"] is True and f["overflowed_lookups"] == 48000, f
print("# bytes per series: %.1f (%d bytes)" % (f["bytes"] / f["series"], f["bytes"]))
assert f["bytes"] == 2001 * int(sys.argv[2]), f["bytes"]
EOF
}
# one label value of 7 bytes: a 40-byte record, and 16 bytes of counter
# cells in a worker's region (whole count, fraction)
summary_bytes 56 "(live worker)"
"$BIN/shmetrics-dump" --check "$SEG_NOW" >"$TMP/check" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q 'info: family c_logins_total is at its series limit in a process: 48000 lookups' "$TMP/check"; then
	ok "shmetrics-dump --check notes the family at its limit (exit 0: a note, not a problem)"
else
	not_ok "shmetrics-dump --check: exit $rc"
	sed 's/^/#   /' "$TMP/check" | head
fi
"$BIN/shmetrics-dump" --family c_logins_total "$SEG_NOW" >"$TMP/dump" 2>&1
if grep -qE '^  2001 series, [0-9]+ bytes, at its series limit: 48000 lookups went to its overflow series' "$TMP/dump" &&
	grep -q 'series limit 2000 per family and process' "$TMP/dump"; then
	ok "shmetrics-dump shows series, bytes and overflow per family, and the segment's limit"
else
	not_ok "shmetrics-dump's family line"
	sed -n 1,12p "$TMP/dump" | sed 's/^/#   /'
fi
finish u
check_val shmetricsd_folds_total 1 "the worker exited and was folded"
if [ "$(val 'c_logins_total{user="__overflow__"}')" = 48000 ] &&
	[ "$(val 'shmetricsd_series_overflow_total{family="c_logins_total"}')" = 48000 ] &&
	[ "$(grep -c '^c_logins_total{user="u' "$TMP/metrics")" -eq 2000 ]; then
	ok "after the fold: the same 2000 series, 48000 in the overflow series and in the metric"
else
	not_ok "after the fold: overflow $(val 'c_logins_total{user="__overflow__"}')"
fi
# the retired totals keep a counter's value in three components (exact sums)
summary_bytes 72 "(retired totals)"
if "$BIN/shmetrics-dump" --check "$SEG_NOW" 2>&1 | grep -q 'info: family c_logins_total is at its series limit in a process: 48000'; then
	ok "--check still names the family once its process has exited"
else
	not_ok "--check after the fold"
fi
stop TERM

SEG_NOW=$SEG-lim5
if start lim5 "$SEG_NOW" --series-limit 5; then
	spawn v
	say v "users c_logins 8 0"
	finish v
	if until_val 'c_logins_total{user="__overflow__"}' 3 &&
		"$BIN/shmetrics-dump" "$SEG_NOW" | grep -q 'series limit 5 per family and process'; then
		ok "--series-limit 5: the segment's default, 5 series and 3 in the overflow series"
	else
		not_ok "--series-limit 5: overflow $(val 'c_logins_total{user="__overflow__"}')"
	fi
	stop TERM
else
	not_ok "starts with --series-limit 5"
fi
"$BIN/shmetricsd" --series-limit 0 --segment "$SEG-bad" 2>"$TMP/bad.log"
if [ $? -eq 2 ] && grep -q -- '--series-limit wants' "$TMP/bad.log"; then ok "--series-limit 0 is refused (exit 2)"; else
	not_ok "--series-limit 0 is refused"
fi

# ------------------------------------------------------------------ removal
SEG_NOW=$SEG-rm
start rm "$SEG_NOW" --push-token-file "$TMP/token" --push-rate 1000 || { not_ok "starts for removal"; exit 1; }
# the scraper: every 20 ms until told to stop, each scrape a block of lines
"$PY" - "$BASE/metrics" "$TMP/scrapes" "$TMP/stop" <<'EOF' &
import os, sys, time, urllib.request
url, out, stop = sys.argv[1:4]
deadline = time.time() + 120
with open(out, "w") as o:
    while not os.path.exists(stop) and time.time() < deadline:
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            continue
        o.write(body + "\n#SCRAPE\n")
        time.sleep(0.02)
EOF
SCRAPER=$!
PIDS+=("$SCRAPER")
for i in 1 2 3 4; do spawn "$i"; done
for i in 1 2 3 4; do
	say "$i" "inc c_jobs a 5" && say "$i" "add c_jobs b 0.1" && say "$i" "obs h_lat a 0.25" &&
		say "$i" "set g_q a $i" || not_ok "worker $i writes"
done
check_val 'c_jobs_total{k="a"}' 20 "4 workers"
finish 1
finish 2
check_val shmetricsd_folds_total 2 "two of them exited and were folded"
check_val 'c_jobs_total{k="b"}' 0.4 "the float total after the folds"
say 3 "remove c_jobs a" && say 3 "remove h_lat a" && say 3 "remove g_q a" || not_ok "worker 3 removes"
gone 'c_jobs_total{k="a"}' "removed by one worker: gone for all four"
if [ "$(val 'h_lat_count{k="a"}')" = absent ] && [ "$(val 'g_q{k="a"}')" = absent ] &&
	[ "$(val 'c_jobs_total{k="b"}')" = 0.4 ]; then
	ok "the histogram and the gauge went too; the other series stayed (0.4)"
else
	not_ok "after removal: h_lat_count $(val 'h_lat_count{k="a"}'), g_q $(val 'g_q{k="a"}'), b $(val 'c_jobs_total{k="b"}')"
fi
if [ "$(val shmetricsd_removals_applied_total)" = 3 ] && [ "$(val shmetricsd_removals_pending)" = 0 ]; then
	ok "shmetricsd_removals_applied_total 3, shmetricsd_removals_pending 0"
else
	not_ok "removals applied $(val shmetricsd_removals_applied_total), pending $(val shmetricsd_removals_pending)"
fi
if grep -q 'applied 3 series removals' "$LOG"; then ok "the collector logs the removals it applied"; else
	not_ok "no log line for the removals"
fi
say 4 "inc c_jobs a 3" && say 4 "obs h_lat a 2"
check_val 'c_jobs_total{k="a"}' 3 "a write after the removal starts the series afresh"
check_val 'h_lat_count{k="a"}' 1 "the histogram too"
if [ "$(val 'h_lat_bucket{k="a",le="0.25"}')" = 0 ] && [ "$(val 'h_lat_sum{k="a"}')" = 2 ]; then
	ok "its buckets and sum count only what came after"
else
	not_ok "h_lat after: le=0.25 $(val 'h_lat_bucket{k="a",le="0.25"}'), sum $(val 'h_lat_sum{k="a"}')"
fi
say 4 "set g_q a 9"
check_val 'g_q{k="a"}' 12 "a gauge set anew after its removal is shown (worker 3's 3 and worker 4's 9)"
finish 3 # its pre-removal counts fold into the retired totals: the baseline holds them
check_val shmetricsd_folds_total 3 "worker 3 exited and was folded"
if [ "$(val 'c_jobs_total{k="a"}')" = 3 ] && [ "$(val 'h_lat_count{k="a"}')" = 1 ]; then
	ok "a fold after the removal adds nothing back: 3 and 1"
else
	not_ok "after the fold: a $(val 'c_jobs_total{k="a"}'), h_lat_count $(val 'h_lat_count{k="a"}')"
fi
say 4 "clear c_jobs"
gone 'c_jobs_total{k="b"}' "clear: every series of the family goes"
gone 'c_jobs_total{k="a"}' "clear: a too"
spawn 5
say 5 "add c_jobs b 0.25" && say 4 "inc c_jobs a 1"
check_val 'c_jobs_total{k="b"}' 0.25 "after clear, b starts afresh from a new worker's 0.25, exactly"
check_val 'c_jobs_total{k="a"}' 1 "and a"
stop KILL
start rm2 "$SEG_NOW" --push-token-file "$TMP/token" --push-rate 1000 || { not_ok "restarts"; exit 1; }
check_val 'c_jobs_total{k="a"}' 1 "a restarted collector (kill -9) keeps every removal: a"
if [ "$(val 'c_jobs_total{k="b"}')" = 0.25 ] && [ "$(val 'h_lat_count{k="a"}')" = 1 ] && [ "$(val 'g_q{k="a"}')" = 9 ]; then
	ok "and b, the histogram, the gauge"
else
	not_ok "after restart: b $(val 'c_jobs_total{k="b"}'), h_lat $(val 'h_lat_count{k="a"}'), g_q $(val 'g_q{k="a"}')"
fi
finish 4
finish 5
check_val shmetricsd_folds_total 5 "the last workers exited and were folded"
check_val 'c_jobs_total{k="a"}' 1 "the totals after every worker is gone"
"$BIN/shmetrics-dump" --check "$SEG_NOW" >"$TMP/check" 2>&1
if [ $? -eq 0 ]; then ok "shmetrics-dump --check finds nothing wrong with baselines in the retired half"; else
	not_ok "shmetrics-dump --check after removals"
	sed 's/^/#   /' "$TMP/check" | head
fi
"$BIN/shmetrics-dump" --family c_jobs_total "$SEG_NOW" >"$TMP/dump"
if grep -q 'retired, removed (-)' "$TMP/dump" && grep -A3 'c_jobs_total{k="a"}' "$TMP/dump" | grep -q '= aggregate *1$'; then
	ok "shmetrics-dump shows the baseline and the same aggregate as the collector"
else
	not_ok "shmetrics-dump's view of a removed series"
	sed 's/^/#   /' "$TMP/dump" | head -n 20
fi

# the push API: DELETE ?name=...&label=...
push() {
	curl -s -m 20 -o "$TMP/body" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
		-H 'Content-Type: application/json' --data-binary "$1" "$BASE/api/v1/metrics/custom"
}
del() { curl -s -m 20 -o "$TMP/body" -w '%{http_code}' -X DELETE "${@:2}" "$BASE/api/v1/metrics/custom?$1"; }
AUTH=(-H "Authorization: Bearer $TOKEN")
code=$(push '{"name":"pushed_jobs","type":"counter","labels":{"queue":"x"},"inc":4}')
push '{"name":"pushed_jobs","type":"counter","labels":{"queue":"y"},"inc":6}' >/dev/null
check_val 'pushed_jobs_total{queue="x"}' 4 "pushed ($code)"
c1=$(del 'name=pushed_jobs&queue=x')
c2=$(del 'name=nope' "${AUTH[@]}")
c3=$(del 'name=pushed_jobs&other=x' "${AUTH[@]}")
c4=$(del 'name=pushed_jobs&queue=x' "${AUTH[@]}")
if [ "$c1" = 401 ] && [ "$c2" = 404 ] && [ "$c3" = 400 ] && [ "$c4" = 200 ] && grep -q '"scope":"series"' "$TMP/body"; then
	ok "DELETE: 401 without the token, 404 for a family never pushed, 400 for a wrong label, 200"
else
	not_ok "DELETE codes $c1 $c2 $c3 $c4 (want 401 404 400 200)"
fi
gone 'pushed_jobs_total{queue="x"}' "DELETE of one pushed series"
check_val 'pushed_jobs_total{queue="y"}' 6 "the other stays"
push '{"name":"pushed_jobs","type":"counter","labels":{"queue":"x"},"inc":2}' >/dev/null
check_val 'pushed_jobs_total{queue="x"}' 2 "pushed again: afresh"
c5=$(del 'name=pushed_jobs_total' "${AUTH[@]}")
check_val 'pushed_jobs_total{queue="y"}' absent "DELETE of the whole family ($c5)"
touch "$TMP/stop"
wait "$SCRAPER" 2>/dev/null
stop TERM
if "$PY" - "$TMP/scrapes" <<'EOF'; then ok "no counter, histogram count or bucket went down between two scrapes of it"; else not_ok "a value went down"; fi
import sys
from prometheus_client.parser import text_string_to_metric_families
blocks = [b for b in open(sys.argv[1]).read().split("\n#SCRAPE\n") if b.strip()]
last, seen, bad = {}, 0, []
for n, b in enumerate(blocks):
    now = {}
    for f in text_string_to_metric_families(b):
        if f.type not in ("counter", "histogram"):
            continue
        for s in f.samples:
            if s.name.endswith(("_total", "_count", "_bucket", "_sum")) and not s.name.endswith("_created"):
                if f.type == "histogram" and s.name.endswith("_sum"):
                    continue  # a sum may go down: observations may be negative
                now[(s.name, tuple(sorted(s.labels.items())))] = s.value
    for k, v in now.items():
        # a series that left the exposition (removed) may come back lower
        if k in last and v < last[k]:
            bad.append((n, k, last[k], v))
    last = now
    seen += 1
print("# %d scrapes checked" % seen)
for x in bad[:5]:
    print("# went down:", x)
assert seen > 50 and not bad
EOF

# ---------------------------------------------------------------- retention
SEG_NOW=$SEG-ttl
start ttl "$SEG_NOW" --retired-ttl 1 || { not_ok "starts with --retired-ttl 1"; exit 1; }
spawn t1
spawn t2
say t1 "inc c_old gone 3" && say t1 "inc c_old kept 4" && say t2 "inc c_old kept 1"
finish t1
check_val 'c_old_total{k="gone"}' 3 "a dead worker's series, folded"
used_before=$("$BIN/shmetrics-dump" "$SEG_NOW" | sed -n 's/.*(active):.* \([0-9]*\) of [0-9]* bytes used/\1/p')
check_val 'c_old_total{k="gone"}' absent "--retired-ttl 1: gone once only the retired totals held it for 1 s"
if [ "$(val 'c_old_total{k="kept"}')" = 5 ] && [ "$(val shmetricsd_retired_series_expired_total)" = 1 ]; then
	ok "the series a live worker holds stays (5); shmetricsd_retired_series_expired_total 1"
else
	not_ok "kept $(val 'c_old_total{k="kept"}'), expired $(val shmetricsd_retired_series_expired_total)"
fi
used_after=$("$BIN/shmetrics-dump" "$SEG_NOW" | sed -n 's/.*(active):.* \([0-9]*\) of [0-9]* bytes used/\1/p')
if [ -n "$used_before" ] && [ -n "$used_after" ] && [ "$used_after" -lt "$used_before" ]; then
	ok "its space is given back: the retired totals use $used_after bytes, $used_before before"
else
	not_ok "retired bytes used: before '$used_before', after '$used_after'"
fi
if grep -q 'retention: dropped 1 series' "$LOG"; then ok "the collector logs what retention dropped"; else
	not_ok "no retention log line"
fi
finish t2
check_val 'c_old_total{k="kept"}' absent "the last holder exits: after 1 s that series ends too"
stop TERM
if ! grep -qE 'runtime error|AddressSanitizer|LeakSanitizer' "$TMP"/*.log; then ok "no sanitizer report"; else
	not_ok "a sanitizer report"
	grep -hE -A5 'runtime error|AddressSanitizer|LeakSanitizer' "$TMP"/*.log | sed 's/^/#   /' | head -n 20
fi
echo "# $n checks, $failed failed"
[ "$failed" -eq 0 ]
