#!/usr/bin/env bash
# Build and README truths: the README's example, taken from the README, builds
# against an installed prefix with nothing but `pkg-config --cflags --libs
# shmetrics`, runs, checks its return codes, waits for its workers, and the
# segment holds exactly what they counted; the pkg-config file carries
# -D_GNU_SOURCE and no library the header-only writer does not use; `make run`
# installs its dependencies first; the generic Grafana dashboard has a $job
# variable, no hard-coded job, and every expression parses (promtool).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=$ROOT/${BUILD_DIR:-build}/bin
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-build.XXXXXX")
SEG=/dev/shm/shmet-test-build-$$
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
. tests/lib/tap.sh

if make -s -C "$ROOT" install PREFIX="$TMP/prefix" SANITIZER="${SANITIZER:-}" >"$TMP/install.log" 2>&1; then ok "make install PREFIX=..."
else not_ok "make install"; diag <"$TMP/install.log"; finish; fi
export PKG_CONFIG_PATH=$TMP/prefix/lib/pkgconfig
cflags=$(pkg-config --cflags shmetrics) libs=$(pkg-config --libs shmetrics)
case " $cflags " in *" -D_GNU_SOURCE "*) ok "pkg-config --cflags: $cflags" ;; *) not_ok "no -D_GNU_SOURCE in '$cflags'" ;; esac
# the writer needs libm (exp2 for sketch bucket bounds), not the reader library
case " $libs " in *-lshmetrics*|*-lurcu*|*-lmicrohttpd*|*-ljansson*) not_ok "pkg-config --libs links what the writer does not use: $libs" ;;
  *) ok "pkg-config --libs: $libs" ;; esac
rl=$(pkg-config --libs shmetrics-reader)
case " $rl " in *" -lshmetrics "*) ok "the reader library has its own file: $rl" ;; *) not_ok "shmetrics-reader: '$rl'" ;; esac

# the example, as the README shows it
"$PY" - README.md "$TMP/app.c" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"## Instrumenting a pre-forking server\n+```c\n(.*?)```", text, re.S)
open(sys.argv[2], "w").write(m.group(1) if m else "")
PYEOF
if [ -s "$TMP/app.c" ] && grep -q 'wait(' "$TMP/app.c" && grep -q 'shmet_last_error' "$TMP/app.c"; then
  ok "the README's example checks errors and waits for its workers"
else not_ok "README example: extracted, checks errors, waits"; fi
if cc -std=c11 -Wall -Wextra -Werror "$TMP/app.c" $cflags $libs -o "$TMP/app" 2>"$TMP/cc.log"; then
  ok "it builds with cc app.c \$(pkg-config --cflags --libs shmetrics) -Wall -Wextra -Werror"
else not_ok "README example builds"; diag <"$TMP/cc.log"; fi
if SHMETRICS_SEGMENT=$SEG timeout 60 "$TMP/app"; then ok "it runs and exits 0"; else not_ok "README example exit $?"; fi
"$BIN/shmetricsd" --segment "$SEG" -l 127.0.0.1:0 2>"$TMP/col.log" &
col=$!
pids+=("$col")
if P=$(port_from_log "$TMP/col.log" "$col"); then
  out=$(curl -s "http://127.0.0.1:$P/metrics")
  echo "$out" | grep -q '^http_requests_total{method="GET",route="/",status="200"} 4000$' \
    && ok "the collector serves the 4 x 1000 requests the dead workers counted" || { not_ok "example's counter"; echo "$out" | grep http_ | diag; }
  echo "$out" | grep -q '^http_request_duration_seconds_count 4000$' && ok "... and 4000 latency observations" \
    || { not_ok "histogram count"; echo "$out" | grep duration | diag; }
else not_ok "collector on the example's segment"; diag <"$TMP/col.log"; fi
kill -TERM "$col"; wait "$col" 2>/dev/null
rm -f "$SEG"

# make run: deps first
plan=$(make -n -C "$ROOT" run 2>/dev/null | grep -nE 'dpkg-query|examples/run.sh' | head -n 2)
case $plan in 1:*dpkg-query*examples/run.sh*|*dpkg-query*$'\n'*examples/run.sh*) ok "make run checks the Debian packages before it runs" ;;
  *) not_ok "make run: deps first"; echo "$plan" | diag ;; esac

# the generic dashboard
"$PY" - examples/grafana/shmetricsd-dashboard.json "$TMP/dash-rules.yml" >"$TMP/dash.out" 2>&1 <<'PYEOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
names = [v["name"] for v in d["templating"]["list"]]
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
def check(c, m): print(("ok - " if c else "not ok - ") + m)
check("job" in names, "the dashboard has a $job variable")
check(len(exprs) >= 10 and all('job=~"$job"' in e for e in exprs), "every one of its %d expressions selects job=~\"$job\"" % len(exprs))
check(not re.search(r'job="', json.dumps(d)), "no job name is written in it")
with open(sys.argv[2], "w") as f:
    f.write("groups:\n- name: dashboard\n  rules:\n")
    for i, e in enumerate(exprs):
        e = e.replace("$job", ".*").replace("$instance", ".*").replace("$__rate_interval", "1m")
        f.write("  - record: dashboard:expr%d\n    expr: %s\n" % (i, json.dumps(e)))
PYEOF
grep -E '^(ok|not ok) - ' "$TMP/dash.out"
n=$((n + $(grep -cE '^(ok|not ok) - ' "$TMP/dash.out"))); failed=$((failed + $(grep -c '^not ok - ' "$TMP/dash.out")))
grep -qE '^(ok|not ok) - ' "$TMP/dash.out" || { not_ok "dashboard check ran"; diag <"$TMP/dash.out"; }
if out=$(promtool check rules "$TMP/dash-rules.yml" 2>&1); then ok "promtool parses every dashboard expression"
else not_ok "dashboard expressions"; echo "$out" | diag; fi
finish
