#!/usr/bin/env bash
# The JSON API of shmetricsd (/api/v1/metrics/...): health, summary,
# dashboard, and the push endpoints custom and batch with every refusal
# (bad JSON, wrong types, too big, too deep, too many, bad names, clashes,
# no or wrong token, push disabled, rate limit), all-or-nothing batches,
# exact exposition of pushed series in /metrics, and pushed totals that
# survive a collector restart (SIGTERM and kill -9).
# TAP-style: one "ok - ..." / "not ok - ..." line per check; the exit status
# is non-zero when any failed.  Binaries come from ${BUILD_DIR:-build}/bin.
set -u
cd "$(dirname "$0")/.."
TEST_NAME=api
. tests/lib/daemon.sh
need "$BIN/shmetricsd" "$PY"

AUTH="Authorization: Bearer $TOKEN"
JSON='Content-Type: application/json'

# http CURL-ARGS...: the status in CODE, the body in $TMP/body, headers in $TMP/hdr.
http() {
	CODE=$(curl -s -m 20 -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' "$@")
}
get() { http "$BASE/api/v1/metrics/$1"; }
# post ENDPOINT DATA [CURL-ARGS...]: with the token and a JSON Content-Type
post() {
	local ep=$1 data=$2
	shift 2
	http -H "$AUTH" -H "$JSON" --data-binary "$data" "$@" "$BASE/api/v1/metrics/$ep"
}

# jcheck DESCRIPTION WANT-CODE PYTHON-EXPRESSIONS...: the last answer had
# status WANT-CODE, a JSON Content-Type, and each expression holds with j
# the parsed body.
jcheck() {
	local desc=$1 want=$2 msg
	shift 2
	if [ "$CODE" != "$want" ]; then
		not_ok "$desc: status $CODE, expected $want"
		head -c 600 "$TMP/body" | sed 's/^/#   /'
		echo
		return
	fi
	if ! grep -qi '^content-type: application/json' "$TMP/hdr"; then
		not_ok "$desc: no JSON Content-Type"
		return
	fi
	if msg=$("$PY" - "$TMP/body" "$@" 2>&1 <<'EOF'
import json, math, sys
j = json.load(open(sys.argv[1]))
def close(a, b, rel=1e-9):
    return a is not None and b is not None and abs(a - b) <= rel * max(1.0, abs(a), abs(b))
def err(i=0):
    return j['errors'][i]
for expr in sys.argv[2:]:
    try:
        good = eval(expr)
    except Exception as e:
        good = False
        expr += '  (%s: %s)' % (type(e).__name__, e)
    if not good:
        print('failed: ' + expr)
        print(json.dumps(j)[:800])
        sys.exit(1)
EOF
	); then
		ok "$desc"
	else
		not_ok "$desc"
		printf '%s\n' "$msg" | sed 's/^/#   /'
	fi
}

scrape() { curl -s -m 20 "$BASE/metrics" >"$TMP/metrics"; }
# has_lines LINE...: /metrics shows these exact lines, waiting up to 10 s
# for the next scan to pick new series up.
has_lines() {
	local i l miss
	for i in $(seq 100); do
		scrape
		miss=
		for l in "$@"; do grep -qxF -- "$l" "$TMP/metrics" || { miss=$l; break; }; done
		[ -z "$miss" ] && return 0
		sleep 0.1
	done
	echo "#   missing in /metrics: $miss"
	grep -v '^#' "$TMP/metrics" | grep -v '^shmetricsd_' | head -n 40 | sed 's/^/#   /'
	return 1
}
expect_lines() {
	local desc=$1
	shift
	if has_lines "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
# pushed_lines: the sample lines of the test's families, for before/after comparisons
pushed_lines() { scrape; grep -E '^(t_|ext_|saler_)' "$TMP/metrics" | sort; }

sanitizer_clean() {
	! grep -qE 'runtime error|AddressSanitizer|LeakSanitizer|ThreadSanitizer' "$1"
}

# ---------------------------------------------------------------- refusals
printf '' >"$TMP/empty-token"
chmod 600 "$TMP/empty-token"
(umask 022 && printf '%s\n' "$TOKEN" >"$TMP/open-token")
chmod 644 "$TMP/open-token"
for c in "missing:$TMP/no-such-file:cannot read" "empty:$TMP/empty-token:is empty" \
	"world-readable:$TMP/open-token:chmod 600"; do
	what=${c%%:*} rest=${c#*:}
	file=${rest%%:*} words=${rest#*:}
	timeout 20 "$BIN/shmetricsd" --segment "$SEG-refuse" --listen 127.0.0.1:0 --push-token-file "$file" \
		2>"$TMP/refuse.log"
	rc=$?
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && grep -qF "$words" "$TMP/refuse.log"; then
		ok "refuses to start with a $what token file (exit $rc: $(grep -F "$words" "$TMP/refuse.log" | head -n 1 | sed 's/.*shmetricsd: //'))"
	else
		not_ok "refuses to start with a $what token file (exit $rc)"
		sed 's/^/#   /' "$TMP/refuse.log" | head -n 5
	fi
done

# ------------------------------------------------- daemon A: push enabled
if ! start a "$SEG" --push-token-file "$TMP/token" --push-max-batch 20 --push-series-limit 3 --push-rate 1000; then
	not_ok "shmetricsd starts with the push API on"
	sed 's/^/#   /' "$LOG"
	exit 1
fi
ok "shmetricsd starts with the push API on ($BASE)"
LOG_A=$LOG

get health
jcheck "health: healthy, segment, usage, regions, scan age, version, push on" 200 \
	"j['status'] == 'healthy'" "j['segment'] == '$SEG'" "j['segment_bytes']['used'] > 0" \
	"j['segment_bytes']['total'] >= j['segment_bytes']['used']" "j['regions']['live'] >= 1" \
	"'dead' in j['regions'] and 'free' in j['regions']" "0 <= j['last_scan_age_seconds'] < 10" \
	"len(j['version']) > 0" "j['push']['enabled'] is True" "j['push']['max_batch'] == 20"
if curl -sv -m 20 -o /dev/null -o /dev/null "$BASE/api/v1/metrics/health" "$BASE/api/v1/metrics/summary" 2>&1 |
	grep -q 'Re-using existing connection'; then
	ok "GET endpoints keep the connection alive"
else
	not_ok "GET endpoints keep the connection alive"
fi
http -I "$BASE/api/v1/metrics/summary"
if [ "$CODE" = 200 ] && grep -qi '^content-type: application/json' "$TMP/hdr"; then ok "HEAD answers like GET"; else
	not_ok "HEAD answers like GET (status $CODE)"; fi
http -X POST "$BASE/api/v1/metrics/health"
jcheck "health: POST is 405" 405 "'error' in j"
get nope
jcheck "an unknown /api/ path is a 404 JSON error" 404 "'no such endpoint' in j['error']"
get summary
jcheck "summary of an empty segment lists no family" 200 "j['families'] == []"
get 'summary?family=nope_total'
jcheck "summary?family= of an unknown family is a 404 naming the field" 404 "j['field'] == 'family'"
get 'dashboard?window=abc'
jcheck "dashboard?window=abc is a 400 naming the field" 400 "j['field'] == 'window'"

# The dashboard's rates divide by a baseline point taken before any push.
for i in $(seq 100); do
	get health
	[ "$CODE" = 200 ] && "$PY" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["history_points"] < 1)' \
		"$TMP/body" && break
	sleep 0.1
done
jcheck "the history has its first point" 200 "j['history_points'] >= 1"

# ---------------------------------------------------------------- dashboard
post batch '{"samples":[
 {"name":"saler_http_requests_total","type":"counter","labels":{"method":"GET","status":"200"},"inc":90},
 {"name":"saler_http_requests_total","type":"counter","labels":{"method":"GET","status":"404"},"inc":6},
 {"name":"saler_http_requests_total","type":"counter","labels":{"method":"GET","status":"500"},"inc":4},
 {"name":"saler_http_request_duration_seconds","type":"histogram","buckets":[0.1,0.25,0.5,1],"observe":0.05},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.05},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.07},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.02},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.2},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.15},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.2},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.4},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":0.3},
 {"name":"saler_http_request_duration_seconds","type":"histogram","observe":2},
 {"name":"saler_revenue_total","type":"counter","labels":{"currency":"USD"},"inc":100},
 {"name":"saler_revenue_total","type":"counter","labels":{"currency":"EUR"},"inc":50.5},
 {"name":"saler_leads_created","type":"counter","labels":{"source":"web"},"inc":10},
 {"name":"saler_leads_converted_total","type":"counter","labels":{"plan":"pro"},"inc":2},
 {"name":"saler_http_requests_in_flight","type":"gauge","value":3}]}'
jcheck "batch of 18 samples over 6 new families is applied" 200 "j['applied'] == 18" \
	"j['families_created'] == 6" "j['series_created'] == 9"
# rates need a baseline at least a second old: wait for it, bounded
for i in $(seq 50); do
	get dashboard
	[ "$CODE" = 200 ] && "$PY" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1]))["windows"]["1m"] is None)' \
		"$TMP/body" && break
	sleep 0.1
done
# histogram_quantile over buckets (0.1, 0.25, 0.5, 1, +Inf) = cumulative 4, 7, 9, 9, 10
jcheck "dashboard: request rate, error ratios, latency quantiles, business totals" 200 \
	"j['http']['requests_total'] == 100" \
	"all(close(j['http']['rate'][w] * j['windows'][w], 100) for w in ('1m', '5m', '15m'))" \
	"close(j['http']['error_ratio']['5m'], 0.1)" "close(j['http']['client_error_ratio']['1m'], 0.06)" \
	"close(j['http']['server_error_ratio']['15m'], 0.04)" \
	"close(j['http']['latency_seconds']['p50'], 0.1 + 0.15 * (5 - 4) / 3)" \
	"close(j['http']['latency_seconds']['p95'], 1.0)" "close(j['http']['latency_seconds']['p99'], 1.0)" \
	"close(j['http']['latency_seconds']['mean'], 3.44 / 10)" \
	"j['http']['latency_seconds']['window_seconds'] == j['windows']['quantiles']" \
	"close(j['http']['in_flight'], 3)" \
	"j['business']['revenue_by_currency'] == {'USD': 100, 'EUR': 50.5}" \
	"j['business']['leads']['created']['total'] == 10" "j['business']['leads']['converted']['increase']['5m'] == 2" \
	"close(j['business']['conversion_ratio'], 0.2)"
jcheck "dashboard: generic counters, histograms and gauges" 200 \
	"close(j['counters']['saler_revenue_total']['rate']['1m'] * j['windows']['1m'], 150.5)" \
	"'error_ratio' in j['counters']['saler_http_requests_total']" \
	"j['histograms']['saler_http_request_duration_seconds']['count'] == 10" \
	"close(j['histograms']['saler_http_request_duration_seconds']['rate'] * j['windows']['quantiles'], 10)" \
	"j['gauges']['saler_http_requests_in_flight']['mode'] == 'most_recent'" \
	"j['gauges']['saler_http_requests_in_flight']['value'] == 3" \
	"j['history']['step_seconds'] == 5 and j['history']['capacity_seconds'] == 900"
get 'dashboard?window=30'
jcheck "dashboard?window=30 answers" 200 "j['windows']['quantiles'] is None or j['windows']['quantiles'] > 0"

# ----------------------------------------------------------- pushes, exact
post custom '{"name":"t_jobs","type":"counter","help":"Jobs done.","labels":{"queue":"a"},"inc":2}'
jcheck "custom: a new counter" 200 "j['applied'] == 1" "j['series_created'] == 1"
expect_lines "the pushed counter is in /metrics as t_jobs_total, with HELP and TYPE" \
	'# HELP t_jobs_total Jobs done.' '# TYPE t_jobs_total counter' 't_jobs_total{queue="a"} 2'
post custom '{"name":"t_jobs_total","type":"counter","labels":{"queue":"a"},"inc":0.5}'
jcheck "custom: a fractional increment of the same series" 200 "j['series_created'] == 0"
expect_lines "counter adds exactly (2 + 0.5)" 't_jobs_total{queue="a"} 2.5'
post custom '{"name":"t_temp","type":"gauge","labels":{"room":"x"},"value":42.5}'
jcheck "custom: a gauge set" 200 "j['applied'] == 1"
post custom '{"name":"t_temp","type":"gauge","labels":{"room":"x"},"inc":-2.5}'
jcheck "custom: a gauge inc" 200 "j['applied'] == 1"
expect_lines "gauge set then inc: 40" '# TYPE t_temp gauge' 't_temp{room="x"} 40'
post batch '{"samples":[{"name":"t_lat","type":"histogram","buckets":[0.1,0.5,1],"observe":0.2},
 {"name":"t_lat","type":"histogram","observe":0.7},{"name":"t_lat","type":"histogram","buckets":[0.1,0.5,1],"observe":3},
 {"name":"t_rpc_seconds","type":"summary","observe":1.5},{"name":"t_rpc_seconds","type":"summary","observe":2.5}]}'
jcheck "batch: histogram and summary observations" 200 "j['applied'] == 5" "j['families_created'] == 2"
expect_lines "histogram and summary exposed exactly" \
	't_lat_bucket{le="0.1"} 0' 't_lat_bucket{le="0.5"} 1' 't_lat_bucket{le="1.0"} 2' 't_lat_bucket{le="+Inf"} 3' \
	't_lat_sum 3.9' 't_lat_count 3' '# TYPE t_rpc_seconds summary' 't_rpc_seconds_sum 4' 't_rpc_seconds_count 2'
if [ -x "$BIN/promtool" ] || command -v promtool >/dev/null; then
	scrape
	if promtool check metrics <"$TMP/metrics" >"$TMP/promtool.out" 2>&1 ||
		! grep -qiE 'error|invalid' "$TMP/promtool.out"; then
		ok "promtool accepts /metrics with the pushed families"
	else
		not_ok "promtool accepts /metrics with the pushed families"
		sed 's/^/#   /' "$TMP/promtool.out" | head -n 10
	fi
fi

get 'summary?family=t_jobs_total'
jcheck "summary: counter total" 200 "len(j['families']) == 1" "j['families'][0]['type'] == 'counter'" \
	"j['families'][0]['total'] == 2.5" "j['families'][0]['series'] == 1" "j['families'][0]['labels'] == ['queue']" \
	"j['families'][0]['help'] == 'Jobs done.'"
get 'summary?family=t_lat'
jcheck "summary: histogram count, sum and buckets" 200 "j['families'][0]['count'] == 3" \
	"close(j['families'][0]['sum'], 3.9)" "j['families'][0]['buckets'] == [0.1, 0.5, 1]"
get 'summary?family=t_temp'
jcheck "summary: gauge values by mode" 200 "j['families'][0]['mode'] == 'most_recent'" \
	"j['families'][0]['value'] == 40" "j['families'][0]['sum'] == 40" "j['families'][0]['min'] == 40" \
	"j['families'][0]['max'] == 40"
get summary
jcheck "summary: every family, sorted, summary count and sum" 200 \
	"[f['name'] for f in j['families']] == sorted(f['name'] for f in j['families'])" \
	"[f for f in j['families'] if f['name'] == 't_rpc_seconds'][0]['count'] == 2" \
	"[f for f in j['families'] if f['name'] == 't_rpc_seconds'][0]['sum'] == 4"

# ------------------------------------------------------------ bad requests
post batch '{"samples":[1,2'
jcheck "bad JSON is a 400 naming the body" 400 "j['field'] == 'body'" "'invalid JSON' in j['error']"
post batch ''
jcheck "an empty body is a 400" 400 "j['field'] == 'body'"
post batch '[{"samples":[[[[[[[[1]]]]]]]]}]'
jcheck "nesting deeper than 8 is a 400" 400 "j['field'] == 'body'" "'nested deeper than 8' in j['error']"
post batch '{"samples":[{"labels":{"a":[[[[1]]]]}}]}'
jcheck "nesting of exactly 8 passes the depth check (then fails as a sample)" 422 "j['applied'] == 0"
post batch '[1]'
jcheck "a batch that is not an object is a 400" 400 "j['field'] == 'body'"
post batch '{"samples":[],"extra":1}'
jcheck "an unknown batch field is a 400 naming it" 400 "j['field'] == 'extra'"
post batch '{"samples":[]}'
jcheck "an empty samples array is a 400" 400 "j['field'] == 'samples'"
post batch '{"sample":[]}'
jcheck "a batch without samples is a 400" 400 "j['field'] == 'sample'"
many=$("$PY" -c 'import json; print(json.dumps({"samples":[{"name":"t_many","type":"counter","inc":1}]*21}))')
post batch "$many"
jcheck "21 samples with --push-max-batch 20 is a 400" 400 "j['field'] == 'samples'" "'at most 20' in j['error']"
post custom '{"name":"t_temp","type":"gauge","labels":{"room":"x"},"value":"12"}'
jcheck "a string value is a 422 naming value" 422 "err()['field'] == 'value'" "err()['code'] == 'wrong_type'" \
	"err()['index'] == 0" "j['applied'] == 0"
post custom '{"name":"t_temp","type":"gauge","labels":["room"],"value":1}'
jcheck "labels as an array is a 422 naming labels" 422 "err()['field'] == 'labels'"
post custom '{"name":"t_temp","type":"gauge","labels":{"room":7},"value":1}'
jcheck "a number label value is a 422 naming the label" 422 "err()['field'] == 'labels.room'"
post custom '{"name":"t_x","type":"meter","value":1}'
jcheck "an unknown type is a 422 naming type" 422 "err()['field'] == 'type'"
post custom '{"type":"gauge","value":1}'
jcheck "a missing name is a 422 naming name" 422 "err()['field'] == 'name'" "err()['code'] == 'missing'"
post custom '{"name":"t_x","type":"gauge","vaule":1}'
jcheck "an unknown sample field is a 422 naming it" 422 "any(e['field'] == 'vaule' for e in j['errors'])"
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":-1}'
jcheck "a negative counter inc is a 422" 422 "err()['field'] == 'inc'" "err()['code'] == 'negative'"
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":9007199254740993}'
jcheck "a counter inc past 2^53 is a 422" 422 "err()['field'] == 'inc'" "err()['code'] == 'too_large'"
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":9223372036854775807}'
jcheck "a counter inc of 2^63-1 is a 422" 422 "err()['code'] == 'too_large'"
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":1e300}'
jcheck "a real counter inc past 2^53 is a 422" 422 "err()['code'] == 'too_large'"
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"value":5}'
jcheck "a counter value (not inc) is a 422" 422 "err()['field'] == 'value'"
post custom '{"name":"t_h2","type":"histogram","buckets":[1,1,2],"observe":1}'
jcheck "buckets that do not increase are a 422" 422 "err()['field'] == 'buckets'"
post custom '{"name":"t_x","type":"gauge","value":1e999}'
jcheck "a number JSON cannot hold is a 400" 400 "j['field'] == 'body'"
post custom '{"name":"1abc","type":"gauge","value":1}'
jcheck "a bad metric name is a 422" 422 "err()['field'] == 'name'" "err()['code'] == 'invalid_name'"
post custom '{"name":"shmetricsd_x","type":"gauge","value":1}'
jcheck "the shmetricsd_ prefix is refused" 422 "err()['code'] == 'reserved_name'"
post custom '{"name":"t_x_total","type":"gauge","value":1}'
jcheck "a gauge ending in _total is refused" 422 "err()['field'] == 'name'"
post custom '{"name":"t_x","type":"gauge","labels":{"__x":"1"},"value":1}'
jcheck "a reserved label name (__) is a 422 naming it" 422 "err()['field'] == 'labels.__x'" \
	"err()['code'] == 'invalid_label'"
post custom '{"name":"t_x","type":"histogram","labels":{"le":"1"},"observe":1}'
jcheck "label le is refused" 422 "err()['code'] == 'reserved_label'"
post custom '{"name":"t_x","type":"gauge","labels":{"a-b":"1"},"value":1}'
jcheck "a label name with a dash is a 422" 422 "err()['field'] == 'labels.a-b'"
post custom '{"name":"t_temp","type":"summary","observe":1}'
jcheck "type clash with a family pushed earlier" 422 "err()['code'] == 'type_clash'" "err()['field'] == 'type'"
post custom '{"name":"t_lat_count","type":"gauge","value":1}'
jcheck "a gauge named like a histogram's _count clashes" 422 "err()['code'] == 'name_clash'"
post custom '{"name":"t_jobs_created","type":"gauge","value":1}'
jcheck "a gauge named like a counter's _created clashes, by the writer's rule, before anything is registered" 422 \
	"err()['code'] == 'name_clash'" "'t_jobs_total' in err()['error']"
post custom '{"name":"t_jobs","type":"counter","labels":{"other":"a"},"inc":1}'
jcheck "other label names than the family's are a 422" 422 "err()['code'] == 'label_mismatch'" \
	"'queue' in err()['error']"
post custom '{"name":"t_lat","type":"histogram","buckets":[1,2],"observe":1}'
jcheck "other buckets than the family's are a 422" 422 "err()['code'] == 'buckets_mismatch'"
post batch '{"samples":[{"name":"t_fresh","type":"gauge","value":1},{"name":"t_fresh","type":"summary","observe":1}]}'
jcheck "a clash between two new samples of one batch" 422 "j['errors_total'] == 1" "err()['index'] == 1" \
	"err()['code'] == 'type_clash'"

# the series limit (3): queue a exists, b and c fit, d does not
post batch '{"samples":[{"name":"t_jobs","type":"counter","labels":{"queue":"b"},"inc":1},
 {"name":"t_jobs","type":"counter","labels":{"queue":"c"},"inc":1},{"name":"t_jobs","type":"counter","labels":{"queue":"b"},"inc":1}]}'
jcheck "series up to --push-series-limit are created (repeats count once)" 200 "j['series_created'] == 2"
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"d"},"inc":1}'
jcheck "one series past --push-series-limit is a 422" 422 "err()['code'] == 'series_limit'" \
	"err()['field'] == 'labels'"

# all or nothing
before=$(pushed_lines)
post batch '{"samples":[{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":1},
 {"name":"t_new","type":"gauge","value":1},{"name":"t_lat","type":"histogram","observe":0.3},
 {"name":"t_jobs","type":"counter","labels":{"queue":"b"},"inc":-3}]}'
jcheck "a batch with one bad sample is refused whole, the error names it" 422 "j['applied'] == 0" \
	"j['errors_total'] == 1" "err()['index'] == 3" "err()['field'] == 'inc'"
post batch '{"samples":[{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":1},
 {"name":"t_fresh","type":"gauge","value":1},{"name":"t_temp","type":"counter","inc":1}]}'
jcheck "a batch whose last sample clashes is refused whole" 422 "j['applied'] == 0" "err()['index'] == 2"
sleep 0.5
after=$(pushed_lines)
if [ "$before" = "$after" ] && [ -n "$before" ]; then
	ok "refused batches changed nothing in /metrics ($(printf '%s\n' "$before" | wc -l) lines compared)"
else
	not_ok "refused batches changed nothing in /metrics"
	diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | head -n 10 | sed 's/^/#   /'
fi
get 'summary?family=t_new'
jcheck "the family of a refused batch does not exist" 404 "j['field'] == 'family'"

# --------------------------------------------------------- HTTP-level limits
http -H "$JSON" --data-binary '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":1}' \
	"$BASE/api/v1/metrics/custom"
jcheck "no token is a 401" 401 "j['field'] == 'Authorization'"
if grep -qi '^www-authenticate: Bearer' "$TMP/hdr"; then ok "401 carries WWW-Authenticate: Bearer"; else
	not_ok "401 carries WWW-Authenticate: Bearer"; fi
http -H "Authorization: Bearer wrong-$TOKEN" -H "$JSON" --data-binary '{}' "$BASE/api/v1/metrics/custom"
jcheck "a wrong token is a 401" 401 "j['error'] == 'invalid bearer token'"
http -H "Authorization: Bearer ${TOKEN%?}" -H "$JSON" --data-binary '{}' "$BASE/api/v1/metrics/custom"
jcheck "a token missing its last byte is a 401" 401 "j['error'] == 'invalid bearer token'"
http -u "user:$TOKEN" -H "$JSON" --data-binary '{}' "$BASE/api/v1/metrics/custom"
jcheck "Basic authentication is a 401" 401 "'Bearer' in j['error']"
http -H "authorization: bearer   $TOKEN" -H "$JSON" \
	--data-binary '{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":1}' "$BASE/api/v1/metrics/custom"
jcheck "the scheme is case-insensitive and spaces are allowed" 200 "j['applied'] == 1"
http -H "$AUTH" -H 'Content-Type: application/x-www-form-urlencoded' --data-binary '{}' \
	"$BASE/api/v1/metrics/custom"
jcheck "a form Content-Type is a 415" 415 "j['field'] == 'Content-Type'"
http "$BASE/api/v1/metrics/batch"
jcheck "GET on a push endpoint is a 405" 405 "'POST' in j['error']"
if grep -qi '^allow: POST' "$TMP/hdr"; then ok "405 says Allow: POST"; else not_ok "405 says Allow: POST"; fi
head -c 5000000 /dev/zero | tr '\0' ' ' >"$TMP/big.json"
post batch "@$TMP/big.json"
jcheck "a 5 MB body (Content-Length) is a 413" 413 "j['field'] == 'body'"
post batch "@$TMP/big.json" -H 'Transfer-Encoding: chunked'
jcheck "a 5 MB chunked body is a 413 once past the limit" 413 "j['field'] == 'body'"
get health
jcheck "still healthy; rejections and 401s are counted" 200 "j['status'] == 'healthy'" \
	"j['push']['rejected'] >= 30" "j['push']['unauthorized'] >= 4"

# ----------------------------------------- a family of another process
cat >"$TMP/ext.c" <<'EOF'
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"
#include <stdio.h>
#include <unistd.h>
int main(void)
{
	shmet_family *f;
	const char *l[] = {"code"};
	if (shmet_counter_register(&f, "ext_requests_total", "External requests.", 1, l) != 0) {
		fprintf(stderr, "%s\n", shmet_last_error());
		return 1;
	}
	shmet_counter_add_u64(shmet_counter_labels(f, "200"), 5);
	shmet_gauge_set(shmet_gauge_new("ext_level", "A level.", SHMET_GAUGE_SUM), 3);
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}
EOF
if cc -std=c11 -D_GNU_SOURCE -Iinclude -o "$TMP/ext" "$TMP/ext.c" -pthread -lm 2>"$TMP/cc.log"; then
	SHMETRICS_SEGMENT=$SEG "$TMP/ext" >"$TMP/ext.out" 2>&1 &
	EXT=$!
	PIDS+=("$EXT")
	for i in $(seq 100); do grep -q ready "$TMP/ext.out" && break; sleep 0.1; done
	expect_lines "a writer process's series are in /metrics" 'ext_requests_total{code="200"} 5' 'ext_level 3'
	post custom '{"name":"ext_level","type":"gauge","value":1}'
	jcheck "a gauge clashes with the segment's sum-mode gauge of that name" 422 "err()['code'] == 'type_clash'" \
		"'sum mode' in err()['error']"
	post custom '{"name":"ext_requests","type":"histogram","observe":1}'
	jcheck "a histogram clashes with the segment's counter ext_requests_total" 422 "err()['code'] == 'name_clash'"
	post custom '{"name":"ext_requests","type":"counter","labels":{"method":"GET"},"inc":1}'
	jcheck "other labels than the segment's family are a 422" 422 "err()['code'] == 'label_mismatch'"
	post custom '{"name":"ext_requests","type":"counter","labels":{"code":"200"},"inc":3}'
	jcheck "a push into the same shape as the writer's family is accepted" 200 "j['applied'] == 1"
	expect_lines "the writer's and the pushed counts add up (5 + 3)" 'ext_requests_total{code="200"} 8'
else
	not_ok "compile a writer process"
	sed 's/^/#   /' "$TMP/cc.log" | head -n 10
fi

# ------------------------------------------------------ survive a restart
post custom '{"name":"t_temp","type":"gauge","labels":{"room":"y"},"value":-7.25}'
jcheck "a second gauge series" 200 "j['applied'] == 1"
want=(
	't_jobs_total{queue="a"} 3.5' 't_jobs_total{queue="b"} 2' 't_jobs_total{queue="c"} 1'
	't_temp{room="x"} 40' 't_temp{room="y"} -7.25'
	't_lat_bucket{le="0.5"} 1' 't_lat_bucket{le="+Inf"} 3' 't_lat_sum 3.9' 't_lat_count 3'
	't_rpc_seconds_sum 4' 't_rpc_seconds_count 2' 'saler_revenue_total{currency="EUR"} 50.5'
	'ext_requests_total{code="200"} 8'
)
expect_lines "pushed values before the restart" "${want[@]}"
before=$(pushed_lines)
get health
region_before=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["push"]["region"])' "$TMP/body")
stop TERM
if [ "$RC" -eq 0 ] && sanitizer_clean "$LOG_A"; then ok "SIGTERM stops the daemon cleanly"; else
	not_ok "SIGTERM stops the daemon cleanly (exit $RC)"
	tail -n 20 "$LOG_A" | sed 's/^/#   /'
fi
if start a2 "$SEG" --push-token-file "$TMP/token" --push-max-batch 20 --push-series-limit 3 --push-rate 1000; then
	ok "restarts on the same segment"
else
	not_ok "restarts on the same segment"
	sed 's/^/#   /' "$LOG"
	exit 1
fi
expect_lines "after SIGTERM and a restart every pushed total is unchanged" "${want[@]}"
sleep 0.5
after=$(pushed_lines)
if [ "$before" = "$after" ]; then ok "/metrics shows the same pushed lines, nothing added or lost"; else
	not_ok "/metrics shows the same pushed lines, nothing added or lost"
	diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | head -n 10 | sed 's/^/#   /'
fi
post batch '{"samples":[{"name":"t_jobs","type":"counter","labels":{"queue":"a"},"inc":1},
 {"name":"t_temp","type":"gauge","labels":{"room":"x"},"inc":1},{"name":"t_lat","type":"histogram","observe":0.3}]}'
jcheck "pushes into the carried-over families after a restart: no family or series made again" 200 \
	"j['applied'] == 3" "j['families_created'] == 0" "j['series_created'] == 0"
get health
jcheck "the restarted collector took its push region back: no dead region left" 200 \
	"j['push']['region'] == $region_before" "j['regions']['dead'] == 0"
expect_lines "counters continue from their totals, a gauge inc from its value" 't_jobs_total{queue="a"} 4.5' \
	't_temp{room="x"} 41' 't_lat_bucket{le="0.5"} 2' 't_lat_count 4'
post custom '{"name":"t_jobs","type":"counter","labels":{"queue":"d"},"inc":1}'
jcheck "the series limit still counts the series from before the restart" 422 "err()['code'] == 'series_limit'"
post custom '{"name":"t_temp","type":"summary","observe":1}'
jcheck "type clash with a family carried over from before the restart" 422 "err()['code'] == 'type_clash'"

want2=(
	't_jobs_total{queue="a"} 4.5' 't_jobs_total{queue="b"} 2' 't_jobs_total{queue="c"} 1'
	't_temp{room="x"} 41' 't_temp{room="y"} -7.25'
	't_lat_bucket{le="0.5"} 2' 't_lat_bucket{le="+Inf"} 4' 't_lat_count 4'
	't_rpc_seconds_sum 4' 't_rpc_seconds_count 2' 'saler_http_requests_total{method="GET",status="500"} 4'
	'ext_requests_total{code="200"} 8'
)
expect_lines "values before kill -9" "${want2[@]}"
stop KILL
if start a3 "$SEG" --push-token-file "$TMP/token" --push-rate 1000; then ok "restarts after kill -9"; else
	not_ok "restarts after kill -9"
	sed 's/^/#   /' "$LOG"
	exit 1
fi
expect_lines "after kill -9 and a restart every pushed total is unchanged" "${want2[@]}"
get health
jcheck "after kill -9 the push region is taken back, not left dead" 200 "j['regions']['dead'] == 0" \
	"j['regions']['live'] == 2" "j['push']['region'] == $region_before" "j['regions']['history'] == 1" # push, writer; the dashboard history apart
if [ -x "$BIN/shmetrics-dump" ]; then
	if "$BIN/shmetrics-dump" --check "$SEG" >"$TMP/check" 2>&1; then ok "shmetrics-dump --check: the taken-back region is clean"; else
		not_ok "shmetrics-dump --check: the taken-back region is clean"
		sed 's/^/#   /' "$TMP/check" | head -n 10
	fi
fi
stop TERM
if [ "$RC" -eq 0 ] && sanitizer_clean "$LOG"; then ok "the restarted daemon stops cleanly"; else
	not_ok "the restarted daemon stops cleanly (exit $RC)"
	tail -n 20 "$LOG" | sed 's/^/#   /'
fi

# --------------------------------------- daemon B: push disabled
if start b "$SEG-off"; then
	post custom '{"name":"t_jobs","type":"counter","inc":1}'
	jcheck "push disabled: a 403 that says how to enable it" 403 "'--push-token-file' in j['error']"
	get health
	jcheck "push disabled: health says so" 200 "j['push']['enabled'] is False"
	get summary
	jcheck "push disabled: summary still answers" 200 "j['families'] == []"
	stop TERM
else
	not_ok "starts without a token file"
fi

# ----------------- daemon C: a tiny region (507) and a low rate (429)
if start c "$SEG-small" --regions 4 --region-size 8192 --push-token-file "$TMP/token" --push-rate 1; then
	big=$("$PY" -c '
import json
print(json.dumps({"samples": [{"name": "t_wide", "type": "counter", "labels": {"k": "%04d" % i + "x" * 900}, "inc": 1}
                              for i in range(20)]}))')
	post batch "$big"
	jcheck "series that do not fit the push region: 507, nothing applied" 507 "j['applied'] == 0" \
		"j['bytes_needed'] > j['bytes_free']"
	post custom '{"name":"t_small","type":"counter","inc":1}'
	jcheck "a small push still fits (second of burst 2)" 200 "j['applied'] == 1"
	post custom '{"name":"t_small","type":"counter","inc":1}'
	jcheck "the third push within a second is rate limited: 429" 429 "j['retry_after_seconds'] >= 1"
	ra=$(sed -n 's/^[Rr]etry-[Aa]fter: *\([0-9]*\).*/\1/p' "$TMP/hdr")
	if [ -n "$ra" ] && [ "$ra" -ge 1 ]; then ok "429 carries Retry-After: $ra"; else not_ok "429 carries Retry-After"; fi
	expect_lines "the 507 batch left no trace, the small push is there" 't_small_total 1'
	if grep -q '^t_wide' "$TMP/metrics"; then not_ok "no t_wide series"; else ok "no t_wide series"; fi
	sleep 1.2
	post custom '{"name":"t_small","type":"counter","inc":1}'
	jcheck "after Retry-After the client may push again" 200 "j['applied'] == 1"
	stop TERM
	if sanitizer_clean "$LOG"; then ok "daemon C stops cleanly"; else
		not_ok "daemon C stops cleanly"
		tail -n 20 "$LOG" | sed 's/^/#   /'
	fi
else
	not_ok "starts with a tiny region"
	sed 's/^/#   /' "$LOG"
fi

echo "# $n checks, $failed failed"
[ "$failed" -eq 0 ]
