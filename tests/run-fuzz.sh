#!/usr/bin/env bash
# Runs libFuzzer targets (build/fuzz/fuzz_*, built by `make fuzz`) for
# $FUZZ_SECONDS each and says, per target, how many inputs ran, how fast,
# the coverage reached and whether anything was found.  Exit status is
# non-zero when any target crashed, leaked, hung or could not run.
#
#   FUZZ_SECONDS=60 tests/run-fuzz.sh build/fuzz/fuzz_reader [...]
#
# Each target keeps a growing corpus in build/fuzz/corpus-<name> (kept
# between runs), seeded from:
#   - fuzz_reader: segments made by a real writer and then damaged in known
#     ways (`test_reader_hostile --make-seeds`, built here when missing);
#   - any target: files in tests/fuzz/<name>/ when that directory exists.
# Findings go to build/fuzz/<name>-crash-*, -leak-*, -timeout-*, -oom-*;
# replay one with `build/fuzz/<name> FILE`.  The full log of a run is
# build/fuzz/<name>.log.
set -u
cd "$(dirname "$0")/.." || exit 2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
BUILD_DIR=${BUILD_DIR:-build}
[ $# -gt 0 ] || { echo "usage: $0 build/fuzz/fuzz_<name>..." >&2; exit 2; }
# Halt on the first report: UBSan included (the build recovers otherwise).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}

seed_reader() {
  local dir=$1 gen=$BUILD_DIR/tests/test_reader_hostile
  if [ ! -x "$gen" ]; then
    make -s "$gen" >/dev/null 2>&1 || { echo "  (no seeds: cannot build $gen; starting from nothing)"; return 0; }
  fi
  "$gen" --make-seeds "$dir" | sed 's/^/  /' || echo "  (seed generation failed; starting from nothing)"
}

status=0
for bin in "$@"; do
  name=$(basename "$bin")
  if [ ! -x "$bin" ]; then
    echo "FAIL $name: $bin is not built"
    status=1
    continue
  fi
  corpus=build/fuzz/corpus-$name
  seeds=build/fuzz/seeds-$name
  log=build/fuzz/$name.log
  mkdir -p "$corpus" "$seeds"
  rm -f build/fuzz/"$name"-crash-* build/fuzz/"$name"-leak-* build/fuzz/"$name"-timeout-* build/fuzz/"$name"-oom-*
  extra=()
  case $name in
    fuzz_reader)
      seed_reader "$seeds"
      extra+=(-max_len=24576) # a region and a retired half fit in one input
      ;;
  esac
  dirs=("$corpus" "$seeds")
  [ -d "tests/fuzz/$name" ] && dirs+=("tests/fuzz/$name")
  echo "fuzzing $name for ${FUZZ_SECONDS}s (corpus $corpus: $(find "$corpus" -type f | wc -l) inputs)"
  "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build/fuzz/$name-" "${extra[@]}" "${dirs[@]}" >"$log" 2>&1
  rc=$?
  execs=$(LC_ALL=C sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(LC_ALL=C sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  last=$(grep -a -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  found=$(ls build/fuzz/"$name"-crash-* build/fuzz/"$name"-leak-* build/fuzz/"$name"-timeout-* \
    build/fuzz/"$name"-oom-* 2>/dev/null)
  printf '  %s: %s execs, %s execs/s, coverage %s edges, %s features, corpus %s\n' "$name" "${execs:-?}" \
    "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    status=1
    echo "FAIL $name: libFuzzer exited $rc; found: ${found:-nothing saved}"
    grep -a -E 'ERROR|runtime error|SUMMARY|deadly signal|Timeout' "$log" | head -n 20 | sed 's/^/    | /'
    echo "    (full log: $log)"
  else
    echo "ok   $name: no crash, leak or hang found"
  fi
done
exit $status
