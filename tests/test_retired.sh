#!/usr/bin/env bash
# The retired totals when they fill up, and the collector's push region across
# restarts: --retired-size sizes the area; dead regions that do not fit stay,
# are counted (shmetricsd_fold_skipped_regions), logged once and reported by
# shmetrics-dump --check; a restarted collector takes its push region back
# (SIGTERM or kill -9, even kill -9 while it starts), so no dead region is
# left behind and pushed counters stay exact.
# TAP-style: one "ok - ..." / "not ok - ..." line per check; the exit status
# is non-zero when any failed.  Binaries come from ${BUILD_DIR:-build}/bin.
set -u
cd "$(dirname "$0")/.."
TEST_NAME=retired
SCAN_INTERVAL=0.05
. tests/lib/daemon.sh
need "$BIN/shmetricsd" "$BIN/shmetrics-dump" "$PY"

scrape() { curl -s -m 20 "$BASE/metrics" >"$TMP/metrics"; }
sample() { sed -n "s/^$1 //p" "$TMP/metrics" | head -n 1; }
health() { curl -s -m 20 "$BASE/api/v1/metrics/health" >"$TMP/health"; }
hget() { "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$TMP/health" "$1"; }
push() {
	curl -s -m 20 -o "$TMP/body" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
		-H 'Content-Type: application/json' --data-binary "$1" "$BASE/api/v1/metrics/batch"
}
sanitizer_clean() { ! grep -qE 'runtime error|AddressSanitizer|LeakSanitizer' "$1"; }

# ------------------------------------------- a dead region that cannot fold
cat >"$TMP/wide.c" <<'EOF'
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv)
{
	shmet_family *f;
	const char *l[] = {"k"};
	if (shmet_counter_register(&f, argv[1], "Wide.", 1, l) != 0) {
		fprintf(stderr, "%s\n", shmet_last_error());
		return 1;
	}
	for (int i = 0; i < atoi(argv[2]); i++) {
		char v[16];
		snprintf(v, sizeof v, "%04d", i);
		shmet_counter_inc(shmet_counter_labels(f, v));
	}
	return 0; /* its region is dead from here on */
}
EOF
if ! cc -std=c11 -D_GNU_SOURCE -Iinclude -o "$TMP/wide" "$TMP/wide.c" -pthread -lm 2>"$TMP/cc.log"; then
	not_ok "compile a writer"
	sed 's/^/#   /' "$TMP/cc.log" | head
	exit 1
fi

if start full "$SEG" --regions 4 --region-size 65536 --retired-size 8192; then
	ok "starts with --retired-size 8192"
else
	not_ok "starts with --retired-size 8192"
	sed 's/^/#   /' "$LOG" | head
	exit 1
fi
if grep -q 'retired totals 8192 bytes' "$LOG"; then ok "the segment was created with 8192 bytes of retired totals"; else
	not_ok "the segment was created with 8192 bytes of retired totals"
	sed 's/^/#   /' "$LOG" | head
fi
# 300 series of 48 bytes each: more than 8 KB
SHMETRICS_SEGMENT=$SEG "$TMP/wide" wide_total 300
SHMETRICS_SEGMENT=$SEG "$TMP/wide" narrow_total 3
sleep 1 # some 20 scans
scrape
if [ "$(sample shmetricsd_fold_skipped_regions)" = 1 ]; then ok "shmetricsd_fold_skipped_regions 1"; else
	not_ok "shmetricsd_fold_skipped_regions is $(sample shmetricsd_fold_skipped_regions), want 1"
fi
if [ "$(sample 'shmetricsd_regions{state="dead"}')" = 1 ] && [ "$(sample 'wide_total{k="0299"}')" = 1 ] &&
	[ "$(sample 'narrow_total{k="0002"}')" = 1 ]; then
	ok "the unfolded region still counts from where it is; the small one was folded"
else
	not_ok "the unfolded region still counts; the small one was folded"
	grep -E '^(shmetricsd_regions|wide_total\{k="0299"|narrow)' "$TMP/metrics" | sed 's/^/#   /'
fi
logged=$(grep -c 'retired area full' "$LOG")
if [ "$logged" -eq 1 ]; then ok "a full retired area is logged once, not at every scan"; else
	not_ok "a full retired area is logged $logged times"
fi
"$BIN/shmetrics-dump" --check "$SEG" >"$TMP/check" 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q 'problem: retired area full: 1 dead region cannot be folded' "$TMP/check"; then
	ok "shmetrics-dump --check: exit 1, says the retired area is full"
else
	not_ok "shmetrics-dump --check: exit $rc"
	sed 's/^/#   /' "$TMP/check" | head -n 20
fi
# the dump prices the region by the fold's own arithmetic: the bytes it says
# the region needs are the collector's (what is free moved on since it
# logged: the small region was folded after)
want=$(sed -n 's/.*retired area full: region \([0-9]*\) needs \([0-9]*\) more bytes.*/\1 \2/p' "$LOG" | head -n 1)
got=$(sed -n 's/.*cannot be folded (region \([0-9]*\) needs \([0-9]*\) bytes.*/\1 \2/p' "$TMP/check" | head -n 1)
if [ -n "$want" ] && [ "$want" = "$got" ]; then ok "shmetrics-dump --check and the collector agree on the room a region needs: $got"; else
	not_ok "shmetrics-dump --check says region, bytes needed = '$got'; the collector '$want'"
	grep 'retired area full' "$LOG" "$TMP/check" | sed 's/^/#   /'
fi
stop TERM
if sanitizer_clean "$LOG"; then ok "stops cleanly"; else not_ok "stops cleanly"; fi

"$BIN/shmetricsd" --retired-size 100 --segment "$SEG-bad" 2>"$TMP/bad.log"
rc=$?
if [ "$rc" -eq 2 ] && grep -q -- '--retired-size wants' "$TMP/bad.log"; then ok "--retired-size 100 is refused (exit 2)"; else
	not_ok "--retired-size 100: exit $rc"
fi

# ----------------------------- the push region across restarts, area full
S2=$SEG-push
ARGS=(--regions 8 --region-size 65536 --retired-size 8192 --push-token-file "$TMP/token" --push-rate 1000)
if ! start p0 "$S2" "${ARGS[@]}"; then
	not_ok "starts with push on"
	sed 's/^/#   /' "$LOG" | head
	exit 1
fi
# 200 series: more than the retired area could ever take
batch=$("$PY" -c '
import json
print(json.dumps({"samples": [{"name": "r_jobs", "type": "counter", "labels": {"s": "%04d" % i}, "inc": 1}
                              for i in range(200)]}))')
code=$(push "$batch")
if [ "$code" = 200 ]; then ok "200 series pushed"; else not_ok "200 series pushed: $code $(cat "$TMP/body")"; fi
health
region=$(hget "j['push']['region']")
want=1
for i in 1 2 3 4 5 6; do
	sig=TERM
	[ $((i % 2)) -eq 0 ] && sig=KILL
	stop $sig
	if ! start "p$i" "$S2" "${ARGS[@]}"; then
		not_ok "restart $i after SIG$sig"
		sed 's/^/#   /' "$LOG" | head
		break
	fi
	code=$(push '{"samples": [{"name": "r_jobs", "type": "counter", "labels": {"s": "0007"}, "inc": 1}]}')
	want=$((want + 1))
	health
	scrape
	r=$(hget "j['push']['region']") dead=$(hget "j['regions']['dead']") v=$(sample 'r_jobs_total{s="0007"}')
	created=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["series_created"])' "$TMP/body")
	if [ "$code" = 200 ] && [ "$r" = "$region" ] && [ "$dead" = 0 ] && [ "$v" = "$want" ] && [ "$created" = 0 ]; then
		ok "restart $i after SIG$sig: region $r taken back, no dead region, the counter is $v"
	else
		not_ok "restart $i after SIG$sig: push $code, region $r (was $region), $dead dead, counter $v (want $want), $created series made again"
	fi
done
# kill -9 while it starts, at any point of the take-back
stop TERM
for i in 1 2 3 4 5 6 7 8; do
	"$BIN/shmetricsd" --segment "$S2" --listen 127.0.0.1:0 "${ARGS[@]}" 2>>"$TMP/killed.log" &
	k=$!
	[ $((i % 2)) -eq 0 ] && sleep "0.00$i" # none, 2, 4, 6, 8 ms: before, during and after the take-back
	kill -9 "$k" 2>/dev/null
	wait "$k" 2>/dev/null
done
if grep -q 'another shmetricsd' "$TMP/killed.log"; then not_ok "the killed collectors ran alone"; fi
echo "# of 8 collectors killed while starting, $(grep -c 'taking back' "$TMP/killed.log") took the region back," \
	"$(grep -c 'listening on' "$TMP/killed.log") got as far as serving"
if start p9 "$S2" "${ARGS[@]}"; then
	health
	scrape
	v=$(sample 'r_jobs_total{s="0007"}') other=$(sample 'r_jobs_total{s="0199"}')
	r=$(hget "j['push']['region']") dead=$(hget "j['regions']['dead']") live=$(hget "j['regions']['live']")
	if [ "$v" = "$want" ] && [ "$other" = 1 ] && [ "$r" = "$region" ] && [ "$dead" = 0 ] && [ "$live" = 1 ]; then # the push region (the dashboard history is counted apart)
		ok "after collectors killed while starting: counters exact ($v, $other), region $r, one live region, none dead"
	else
		not_ok "after collectors killed while starting: counter $v (want $want), $other (want 1), region $r, $live live, $dead dead"
	fi
	"$BIN/shmetrics-dump" --check "$S2" >"$TMP/check" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ]; then ok "shmetrics-dump --check is clean on the taken-back region"; else
		not_ok "shmetrics-dump --check: exit $rc"
		sed 's/^/#   /' "$TMP/check" | head -n 20
	fi
	stop TERM
	if sanitizer_clean "$LOG"; then ok "stops cleanly"; else not_ok "stops cleanly"; fi
else
	not_ok "starts after collectors were killed while starting"
	sed 's/^/#   /' "$LOG" | head
fi

# ------------- a worker's region flagged as a collector's is not taken back
cat >"$TMP/flagger.c" <<'EOF2'
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"
int main(void)
{
	shmet_gauge_set(shmet_gauge_new("w_level", "A worker's sum gauge.", SHMET_GAUGE_SUM), 3);
	struct shmet_seg_map m;
	char err[SHMET_ERRBUF];
	if (shmet_seg_attach(NULL, NULL, 0, &m, err) != 0)
		return 1;
	shmet_seg_slot(&m, (uint32_t)shmet_region_index())->rs_flags = SHMET_SLOT_COLLECTOR; /* a stray write */
	return 0;
}
EOF2
S3=$SEG-flag
if cc -std=c11 -D_GNU_SOURCE -Iinclude -o "$TMP/flagger" "$TMP/flagger.c" -pthread -lm 2>"$TMP/cc.log" &&
	SHMETRICS_SEGMENT=$S3 "$TMP/flagger" && start f0 "$S3" --push-token-file "$TMP/token"; then
	health
	scrape
	if grep -q 'holds the sum gauge w_level; not taken back' "$LOG" && [ "$(hget "j['regions']['dead']")" = 0 ] &&
		! grep -q '^w_level ' "$TMP/metrics"; then
		ok "a worker's region flagged as a collector's is folded (its sum gauge gone), not taken back"
	else
		not_ok "a worker's region flagged as a collector's: $(hget "j['regions']['dead']") dead, $(grep '^w_level ' "$TMP/metrics")"
		sed 's/^/#   /' "$LOG" | head
	fi
	stop TERM
else
	not_ok "set up a flagged worker region"
	sed 's/^/#   /' "$TMP/cc.log" | head
fi

echo "# $n checks, $failed failed"
[ "$failed" -eq 0 ]
