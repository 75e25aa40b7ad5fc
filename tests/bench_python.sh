#!/usr/bin/env bash
# Benchmark: the Python writer (build/python, module shmetrics) beside
# prometheus_client's multiprocess mode in the same run (tests/bench_python.py
# says how).  Needs /usr/bin/python3 and python3-prometheus-client.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
PY=/usr/bin/python3
seg=/dev/shm/shmet-bench-python-$$
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmet-bench-python.XXXXXX")
cleanup() { rm -f "$seg"; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
ls "$BUILD_DIR"/python/shmetrics/_shmetrics*.so >/dev/null 2>&1 || { echo "bench_python: module not built" >&2; exit 1; }
PYTHONPATH=$BUILD_DIR/python "$PY" tests/bench_python.py "$seg" "$tmp"
