#!/usr/bin/env bash
# The shmetrics Python module (build/python) against a live shmetricsd:
# values through /metrics, prometheus_client-style misuse raising, timers,
# os.fork children, threads, capacity.  tests/test_python_module.py prints
# the TAP lines.  Under SANITIZER=address the module is built with ASan, and
# /usr/bin/python3 (not built with it) runs with libasan preloaded; leak
# checking is off there, since the interpreter keeps what it allocates until
# exit.  ThreadSanitizer needs an instrumented interpreter: skipped.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
PY=/usr/bin/python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-python.XXXXXX")
SEG=/dev/shm/shmet-test-python-$$
SMALL=/dev/shm/shmet-test-python-small-$$
. tests/lib/tap.sh
trap 'cleanup; rm -f "$SMALL"' EXIT

if [ "${SANITIZER:-}" = thread ]; then
  ok "# skip the Python module under ThreadSanitizer (the interpreter is not instrumented)"
  finish
fi
if ! ls "$BUILD_DIR"/python/shmetrics/_shmetrics*.so >/dev/null 2>&1; then
  not_ok "the Python module is built in $BUILD_DIR/python"
  finish
fi
env_py=(env PYTHONPATH="$BUILD_DIR/python" PYTHONDONTWRITEBYTECODE=1)
if [ "${SANITIZER:-}" = address ]; then
  env_py+=(LD_PRELOAD="$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1)
fi

"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 --scan-interval 0.2 2>"$TMP/shmetricsd.log" &
pids+=($!)
if ! CPORT=$(port_from_log "$TMP/shmetricsd.log" "$!"); then
  not_ok "shmetricsd started"; diag <"$TMP/shmetricsd.log"; finish
fi

"${env_py[@]}" "$PY" tests/test_python_module.py "$SEG" "$CPORT" "$SMALL" >"$TMP/out" 2>"$TMP/err"
rc=$?
# Renumber the module's TAP lines into this script's sequence.
while IFS= read -r line; do
  case $line in
    "ok "*) ok "${line#ok * - }" ;;
    "not ok "*) not_ok "${line#not ok * - }" ;;
    "# "*) echo "$line" ;;
  esac
done <"$TMP/out"
if [ "$rc" -ne 0 ] && ! grep -q '^not ok' "$TMP/out"; then
  not_ok "tests/test_python_module.py exited $rc"
fi
if grep -q 'ERROR: AddressSanitizer\|runtime error:' "$TMP/err"; then
  not_ok "no sanitizer report"; diag <"$TMP/err"
elif [ -s "$TMP/err" ] && [ "$rc" -ne 0 ]; then
  diag <"$TMP/err"
fi

# The hot path through Python makes no system call: between two marker
# calls (getppid), 20,000 rounds of inc/set/observe on handles whose first
# write is done, in a fork child too (its region claimed at the first write,
# before the markers).  Plain pass only (strace under ASan is slow).
if [ -z "${SANITIZER:-}" ] && command -v strace >/dev/null; then
  cat >"$TMP/hot.py" <<'EOF'
import os, sys
import shmetrics
shmetrics.init(sys.argv[1])
c = shmetrics.Counter('py_hot', 'Hot.', ['a']).labels('x')
g = shmetrics.Gauge('py_hot_gauge', 'Hot.', multiprocess_mode='mostrecent')
h = shmetrics.Histogram('py_hot_seconds', 'Hot.', ['a']).labels('x')
s = shmetrics.Summary('py_hot_summary', 'Hot.')
def rounds():
    c.inc(); g.set(1); h.observe(0.1); s.observe(1)  # first writes (a fork child claims here)
    os.getppid()
    for _ in range(20000):
        c.inc(); c.inc(2); c.inc(0.5); g.set(3.5); g.inc(); g.dec(); g.set_to_current_time()
        h.observe(0.042); s.observe(7)
    os.getppid()
rounds()
pid = os.fork()
if pid == 0:
    rounds()
    os._exit(0)
os.waitpid(pid, 0)
EOF
  if strace -f -qq -o "$TMP/strace" "${env_py[@]}" "$PY" "$TMP/hot.py" "$SEG"; then
    # per pid: the system calls between its two getppid markers
    calls=$(awk '{ pid = $1 } $2 ~ /^getppid\(/ { inside[pid] = !inside[pid]; marks[pid]++; next }
      inside[pid] && !/^[0-9]+ +\+\+\+|resumed>/ { n++; print "# " $0 > "/dev/stderr" }
      END { for (p in marks) m += marks[p]; print (m == 4 ? n + 0 : "markers:" m) }' "$TMP/strace" 2>"$TMP/strace.extra")
    if [ "$calls" = 0 ]; then
      ok "no system call in 20,000 rounds of inc/set/observe from Python, in a process and its fork child"
    else
      not_ok "system calls in the Python hot path: $calls"; head -n 20 "$TMP/strace.extra"
    fi
  else
    not_ok "strace of the Python hot path ran"
  fi
fi
finish
