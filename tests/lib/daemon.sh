# Shared by the shell tests that run shmetricsd itself and talk to it over
# HTTP (test_api.sh, test_retired.sh): TAP lines without numbers ("ok - ..."),
# cleanup on exit of every daemon in PIDS and of $SEG, $SEG-* and $TMP, a
# push token in $TMP/token, and start/stop of a daemon on a free port.
# Source it from the top of the tree after setting TEST_NAME (and
# SCAN_INTERVAL to scan more often than every 0.2 s); it sets BUILD_DIR,
# BIN (binaries from ${BUILD_DIR:-build}/bin), PY, SEG and TMP.
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
PY=/usr/bin/python3
SEG=/dev/shm/shmet-test-$TEST_NAME-$$
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-$TEST_NAME.XXXXXX")
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}exitcode=86
export UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1

failed=0 n=0
ok() { n=$((n + 1)); echo "ok - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok - $*"; }

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	rm -f "$SEG" "$SEG"-*
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# need FILE...: each is an executable, or the test ends with one "not ok".
need() {
	local b
	for b in "$@"; do
		if [ ! -x "$b" ]; then
			echo "not ok - $b is there (run make first)"
			exit 1
		fi
	done
	command -v curl >/dev/null || { echo "not ok - curl is installed"; exit 1; }
}

TOKEN="test-token-$$-0123456789abcdef"
(umask 077 && printf '%s\n' "$TOKEN" >"$TMP/token")

# start NAME SEGMENT ARGS...: a daemon on a free port; sets PID, BASE, LOG.
start() {
	local name=$1 seg=$2 i port=
	shift 2
	LOG=$TMP/$name.log
	"$BIN/shmetricsd" --segment "$seg" --listen 127.0.0.1:0 --scan-interval "${SCAN_INTERVAL:-0.2}" "$@" 2>"$LOG" &
	PID=$!
	PIDS+=("$PID")
	for i in $(seq 100); do
		port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/metrics.*|\1|p' "$LOG")
		[ -n "$port" ] && break
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.1
	done
	BASE=http://127.0.0.1:$port
	[ -n "$port" ]
}

# stop SIGNAL: stop the daemon PID and wait for it, bounded; its status in RC.
stop() {
	local i
	# bash reports a child killed by SIGKILL on stderr; nobody needs its status
	[ "$1" = KILL ] && disown "$PID" 2>/dev/null
	kill "-$1" "$PID" 2>/dev/null
	for i in $(seq 100); do
		kill -0 "$PID" 2>/dev/null || break
		sleep 0.1
	done
	{ wait "$PID"; } 2>/dev/null
	RC=$?
}
