#!/usr/bin/env bash
# Runs every benchmark program; each prints its own "bench ..." lines.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
export BUILD_DIR
rc=0
for b in "$BUILD_DIR"/tests/bench_*; do
  [ -x "$b" ] || continue
  "$b" || { echo "benchmark $(basename "$b") failed" >&2; rc=1; }
done
for b in tests/bench_*.sh; do
  [ -f "$b" ] || continue
  bash "$b" || { echo "benchmark $(basename "$b") failed" >&2; rc=1; }
done
exit $rc
