#!/usr/bin/env bash
# Runs every test program (cmocka binaries in $BUILD_DIR/tests/test_*) and every
# shell test (tests/test_*.sh, TAP-style "ok"/"not ok" lines), counts the cases
# and ends with one line "N passed, N failed".  Exit status is non-zero on any
# failure.  TESTS="name ..." runs only those.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
export BUILD_DIR
export SHMET_TEST_ROOT=$PWD
passed=0 failed=0
failed_names=()
logdir=$BUILD_DIR/test-logs
mkdir -p "$logdir"

want() {
  [ -z "${TESTS:-}" ] && return 0
  local n
  for n in $TESTS; do [ "$n" = "$1" ] && return 0; done
  return 1
}

run_one() {
  local name=$1; shift
  want "$name" || return 0
  local log=$logdir/$name.log start end rc p f
  start=$(date +%s)
  timeout --kill-after=10 "${TEST_TIMEOUT:-900}" "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s)
  # cmocka: "[  PASSED  ] N test(s)." / "[  FAILED  ] N test(s)"; shell: TAP lines.
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
  p=$((p + $(grep -c '^ok ' "$log")))
  f=$((f + $(grep -c '^not ok ' "$log")))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$rc" -eq 0 ] && [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then f=1; echo "  (no test case ran)" >>"$log"; fi
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$f" -gt 0 ]; then
    failed_names+=("$name")
    printf 'FAIL %-32s %4d passed %3d failed  (%ds, rc=%d)\n' "$name" "$p" "$f" $((end - start)) "$rc"
    sed 's/^/    | /' "$log" | tail -n 60
  else
    printf 'ok   %-32s %4d passed  (%ds)\n' "$name" "$p" $((end - start))
  fi
}

for t in "$BUILD_DIR"/tests/test_*; do
  [ -x "$t" ] || continue
  case $t in *.d|*.o) continue ;; esac
  run_one "$(basename "$t")" "$t"
done
for t in tests/test_*.sh; do
  [ -f "$t" ] || continue
  run_one "$(basename "$t" .sh)" bash "$t"
done

[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
