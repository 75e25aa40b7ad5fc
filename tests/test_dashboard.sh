#!/usr/bin/env bash
# /dashboard in a real browser: Debian's chromium, driven by playwright-core
# (tests/browser/dashboard.js), against shmetricsd + saler-demo + traffic.
# The page loads without console errors, every chart gets points, the
# totals shown equal /metrics, the family picker charts what it picks, the
# page recovers after a collector restart and a new page gets the history
# from before it.  Screenshots (1280x800 and phone width, dark and light)
# go to $BUILD_DIR/screenshots/.  Plain pass only: a browser under a
# sanitizer build adds minutes and finds nothing in our C the other tests
# do not.
set -u
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-dashboard.XXXXXX")
SEG=/dev/shm/shmetrics-test-dashboard-$$
. tests/lib/tap.sh

if [ -n "${SANITIZER:-}" ]; then
  ok "browser tests # skip: plain pass only (SANITIZER=$SANITIZER)"
  finish
fi
NODE_MODULES=build/npm/node_modules
missing=
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v node >/dev/null || missing="$missing nodejs"
[ -d "$NODE_MODULES/playwright-core" ] || missing="$missing playwright-core(npm)"
if [ -n "$missing" ]; then
  not_ok "browser test prerequisites:$missing missing (run: make deps)"
  finish
fi

# Its own process group, so that everything it starts goes with it.
BIN=$B/bin SEG=$SEG SHOTS=$B/screenshots LOGS=$TMP NODE_PATH=$NODE_MODULES \
  setsid node tests/browser/dashboard.js &
node_pid=$!
pids+=("$node_pid")
wait "$node_pid"
rc=$?
kill -TERM -- "-$node_pid" 2>/dev/null # anything it left behind (it was killed)
if [ "$rc" -ne 0 ]; then
  for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "# --- $f"; tail -n 20 "$f" | diag; }; done
fi
exit "$rc"
