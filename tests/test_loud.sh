#!/usr/bin/env bash
# Loud failures and self metrics, against a real pre-forking writer
# (saler-demo):
#  - no writer after N scans: a warning; a writer that attaches later: said so;
#  - the segment's path removed, replaced, then given back (a hard link):
#    an error in the log, /-/ready 503 with the reason, shmetricsd_segment_detached;
#  - a second collector names the pid and the address of the first;
#  - a start that fails after creating the segment leaves none behind, one
#    that fails on a segment it did not create leaves it alone;
#  - process_* of the collector and shmetricsd_worker_* of each live worker
#    agree with /proc; host metrics only with --collector.host.
# TAP lines on stdout; only 127.0.0.1 and free ports; everything stopped on exit.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${BUILD_DIR:-build}/bin
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-loud.XXXXXX")
SEG=/dev/shm/shmet-test-loud-$$
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
. tests/lib/tap.sh
trap 'rm -f "$SEG" "$SEG.link" "$SEG.other" "$SEG-fail" "$SEG-kept"; cleanup' EXIT

wait_for() { # wait_for FILE PATTERN: 10 s at most
  local i
  for i in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
sample() { curl -s "http://127.0.0.1:$P/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }

"$BIN/shmetricsd" --segment "$SEG" -l 127.0.0.1:0 --scan-interval 0.1 --no-writer-warning 5 2>"$TMP/c.log" &
col=$!
pids+=("$col")
P=$(port_from_log "$TMP/c.log" "$col") || { not_ok "collector started"; diag <"$TMP/c.log"; finish; }
if wait_for "$TMP/c.log" "level=warn msg=\"no writer has attached to $SEG after 5 scans"; then
  ok "no writer after 5 scans: a warning"
else not_ok "no-writer warning"; diag <"$TMP/c.log"; fi
[ "$(grep -c 'no writer has attached' "$TMP/c.log")" = 1 ] && ok "... once" || not_ok "no-writer warning repeated"

"$BIN/saler-demo" --port 0 --workers 3 --segment "$SEG" 2>"$TMP/demo.log" &
demo=$!
pids+=("$demo")
port_from_log "$TMP/demo.log" "$demo" >/dev/null || { not_ok "saler-demo started"; diag <"$TMP/demo.log"; finish; }
wait_for "$TMP/c.log" "a writer attached to $SEG after" && ok "the writer that came later: logged" \
  || { not_ok "writer attached line"; diag <"$TMP/c.log"; }

# ---- a second collector names the first ----
out=$("$BIN/shmetricsd" --segment "$SEG" -l 127.0.0.1:0 2>&1)
rc=$?
if [ "$rc" = 1 ] && echo "$out" | grep -q "another shmetricsd (pid $col, listening on 127.0.0.1:$P) already serves $SEG"; then
  ok "a second collector names pid $col and 127.0.0.1:$P"
else not_ok "second collector (rc=$rc)"; echo "$out" | diag; fi

# ---- process_* and per-worker metrics against /proc ----
for i in $(seq 50); do [ -n "$(sample 'shmetricsd_worker_start_time_seconds{worker="2"}')" ] && break; sleep 0.1; done
body=$(curl -s "http://127.0.0.1:$P/metrics")
"$PY" - "$col" "$demo" "$body" <<'EOF' >"$TMP/py.out" 2>&1
import os, re, sys
col, demo, body = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hz, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
btime = int([l for l in open("/proc/stat") if l.startswith("btime")][0].split()[1])
def stat(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return {"cpu": (int(f[11]) + int(f[12])) / hz, "start": btime + int(f[19]) / hz, "rss": int(f[21]) * page}
def samples(name):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^%s(?:\{worker=\"(\d+)\"\})? (\S+)$" % re.escape(name), body, re.M)}
def check(cond, msg):
    print(("ok - " if cond else "not ok - ") + msg)
me = stat(col)
check(samples("process_start_time_seconds").get(None) == me["start"], "process_start_time_seconds is the collector's start time from /proc")
check(0 < samples("process_resident_memory_bytes").get(None, 0) < 1 << 32, "process_resident_memory_bytes is there")
# the scrape's own connection was open while it counted, and is not now
got, now = samples("process_open_fds").get(None, 0), len(os.listdir("/proc/%d/fd" % col))
check(abs(got - now) <= 2, "process_open_fds counts /proc/<pid>/fd (%g, now %d)" % (got, now))
import resource
check(samples("process_max_fds").get(None) is not None, "process_max_fds is there")
check(samples("process_cpu_seconds_total").get(None, -1) >= 0, "process_cpu_seconds_total is there")
kids = [int(p) for p in os.listdir("/proc") if p.isdigit() and os.path.exists("/proc/%s/stat" % p)
        and open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()[1] == str(demo)]
starts = sorted(stat(k)["start"] for k in kids)
w = samples("shmetricsd_worker_start_time_seconds")
check(len(kids) >= 3 and sorted(v for k, v in w.items() if k is not None) == sorted(starts + [stat(demo)["start"]]),
      "a start time for each worker and the master, by slot, equal to /proc's (%d series, %d children)" % (len(w), len(kids)))
rss = samples("shmetricsd_worker_resident_memory_bytes")
check(len(rss) == len(w) and all(v > 0 for v in rss.values()), "resident memory for each of them")
fds = samples("shmetricsd_worker_open_fds")
check(len(fds) == len(w) and all(v >= 3 for v in fds.values()), "open fds for each of them")
cpu = samples("shmetricsd_worker_cpu_seconds_total")
check(len(cpu) == len(w), "CPU seconds for each of them")
check("shmetricsd_host_" not in body, "no host metrics without --collector.host")
check(samples("shmetricsd_worker_proc_unreadable").get(None) == 0, "every worker's /proc was readable")
EOF
cat "$TMP/py.out" | grep -E '^(ok|not ok) - ' | while read -r l; do echo "$l"; done
n=$((n + $(grep -cE '^(ok|not ok) - ' "$TMP/py.out")))
failed=$((failed + $(grep -c '^not ok - ' "$TMP/py.out")))
grep -qE '^(ok|not ok) - ' "$TMP/py.out" || { not_ok "self metrics script ran"; diag <"$TMP/py.out"; }

# ---- the segment's path removed, replaced, given back ----
ln "$SEG" "$SEG.link"
rm -f "$SEG"
wait_for "$TMP/c.log" "level=error msg=\"the segment $SEG was removed" && ok "path removed: an error in the log" \
  || { not_ok "removed: log"; diag <"$TMP/c.log"; }
r=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$P/-/ready")
case $r in *"was removed"*" 503") ok "path removed: /-/ready 503 with the reason" ;; *) not_ok "removed: ready: $r" ;; esac
[ "$(sample shmetricsd_segment_detached)" = 1 ] && ok "shmetricsd_segment_detached 1" || not_ok "detached metric: $(sample shmetricsd_segment_detached)"
echo other >"$SEG.other" && mv "$SEG.other" "$SEG"
wait_for "$TMP/c.log" "the segment $SEG was replaced by another file" && ok "path replaced: said so" \
  || { not_ok "replaced: log"; diag <"$TMP/c.log"; }
r=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$P/-/ready")
case $r in *"replaced by another file"*" 503") ok "path replaced: /-/ready 503 with the reason" ;; *) not_ok "replaced: ready: $r" ;; esac
mv "$SEG.link" "$SEG"
wait_for "$TMP/c.log" "the segment $SEG is this collector's file again" && ok "the file given back: said so" \
  || { not_ok "given back: log"; diag <"$TMP/c.log"; }
r=$(curl -s -w ' %{http_code}' "http://127.0.0.1:$P/-/ready")
case $r in *" 200") ok "... and /-/ready is 200 again" ;; *) not_ok "given back: ready: $r" ;; esac
[ "$(sample shmetricsd_segment_detached)" = 0 ] && ok "shmetricsd_segment_detached 0 again" || not_ok "detached metric not back to 0"

# ---- a failed start removes the segment it created, and only that ----
out=$("$BIN/shmetricsd" --segment "$SEG-fail" -l 127.0.0.1:0 --push-token-file "$TMP/no-such-token" 2>&1)
rc=$?
if [ "$rc" = 1 ] && [ ! -e "$SEG-fail" ] && echo "$out" | grep -q "removed the segment $SEG-fail"; then
  ok "a start that fails after creating its segment removes it"
else not_ok "failed start (rc=$rc, $( [ -e "$SEG-fail" ] && echo segment left))"; echo "$out" | diag; fi
"$BIN/shmetricsd" --segment "$SEG-kept" -l 127.0.0.1:0 >/dev/null 2>&1 &
k=$!
for i in $(seq 50); do [ -e "$SEG-kept" ] && break; sleep 0.1; done
kill -TERM "$k"; wait "$k" 2>/dev/null
out=$("$BIN/shmetricsd" --segment "$SEG-kept" -l 127.0.0.1:0 --push-token-file "$TMP/no-such-token" 2>&1)
[ -e "$SEG-kept" ] && ok "a failed start leaves a segment it did not create" || not_ok "an existing segment was removed"

# ---- host metrics behind the flag ----
"$BIN/shmetricsd" --segment "$SEG-kept" -l 127.0.0.1:0 --collector.host 2>"$TMP/h.log" &
h=$!
pids+=("$h")
if HP=$(port_from_log "$TMP/h.log" "$h"); then
  hb=$(curl -s "http://127.0.0.1:$HP/metrics")
  mt=$(awk '/^MemTotal:/ { printf "%.0f", $2 * 1024 }' /proc/meminfo)
  echo "$hb" | awk -v m="$mt" '$1 == "shmetricsd_host_memory_total_bytes" && $2 + 0 == m + 0 { f = 1 } END { exit !f }' \
    && ok "--collector.host: memory total equals /proc/meminfo's" || { not_ok "host memory"; echo "$hb" | grep host_ | diag; }
  echo "$hb" | grep -q '^shmetricsd_host_cpu_seconds_total{mode="idle"} ' && ok "--collector.host: CPU seconds by mode" || not_ok "host cpu"
  echo "$hb" | grep -q '^shmetricsd_host_filesystem_avail_bytes{path="/dev/shm"} ' && ok "--collector.host: the segment's file system" \
    || { not_ok "host fs"; echo "$hb" | grep host_ | diag; }
  echo "$hb" | promtool check metrics >"$TMP/promtool.out" 2>&1 && ok "promtool check metrics accepts it all" \
    || { not_ok "promtool check metrics"; diag <"$TMP/promtool.out"; }
else not_ok "host collector started"; diag <"$TMP/h.log"; fi
finish
