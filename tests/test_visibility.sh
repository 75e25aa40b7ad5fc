#!/usr/bin/env bash
# Two shared objects that each embed the writer (two modules of one server,
# tests/data/vis_module.c built twice) loaded into one process with
# RTLD_GLOBAL: each keeps a writer of its own, so both counters are right in
# the segment, with each module's functions bound locally (-Bsymbolic-functions,
# as distributions link) or not, and with gcc or clang.  The modules export
# none of the writer's symbols, and libshmetrics.so exports only shmet_*.
# TAP-style: one "ok"/"not ok" line per check; non-zero exit on any failure.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
case ${SANITIZER:-} in
address) san=(-fsanitize=address) ;;
undefined) san=(-fsanitize=undefined) ;;
thread) san=(-fsanitize=thread) ;;
*) san=() ;;
esac
FLAGS=(-std=c11 -O2 -D_GNU_SOURCE -Wall -Wextra -Werror -Iinclude "${san[@]}")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmet-vis.XXXXXX")
seg=/dev/shm/shmet-test-visibility-$$
trap 'rm -rf "$tmp"; rm -f "$seg"' EXIT

failed=0
n=0
check() {
	local name=$1
	shift
	n=$((n + 1))
	if "$@" >"$tmp/out" 2>&1; then
		echo "ok $n - $name"
	else
		echo "not ok $n - $name"
		echo "# command: $*"
		sed 's/^/#   /' "$tmp/out" | head -n 40
		failed=$((failed + 1))
	fi
}

# no symbol of the writer (shmet_*, shmet__*) among what a .so exports
exports_no_writer() {
	local bad
	bad=$(nm -D --defined-only "$1" | awk '{print $NF}' | grep '^shmet')
	[ -z "$bad" ] || { echo "exported: $bad"; return 1; }
}

lib=$BUILD_DIR/lib/libshmetrics.a
if [ ! -f "$lib" ]; then
	echo "not ok 1 - $lib not built (make first)"
	exit 1
fi
check "the loader program builds" cc "${FLAGS[@]}" -o "$tmp/vis_main" tests/data/vis_main.c "$lib" -pthread -ldl

variants=("gcc|cc|" "gcc -Wl,-Bsymbolic-functions|cc|-Wl,-Bsymbolic-functions")
command -v clang >/dev/null && variants+=("clang|clang|")
for v in "${variants[@]}"; do
	IFS='|' read -r label compiler ldflag <<<"$v"
	for m in a b; do
		check "$label: module $m builds as a shared object" \
			"$compiler" "${FLAGS[@]}" -fPIC -shared -DMODULE=$m $ldflag -o "$tmp/libvis_$m.so" \
			tests/data/vis_module.c -pthread -lm # the writer registers sketches with exp2/ldexp
	done
	check "$label: the modules export none of the writer's symbols" \
		sh -c "$(declare -f exports_no_writer); exports_no_writer $tmp/libvis_a.so && exports_no_writer $tmp/libvis_b.so"
	rm -f "$seg"
	check "$label: both modules in one process count into their own counters" \
		sh -c "cd $tmp && ./vis_main $seg ./libvis_a.so ./libvis_b.so"
	rm -f "$seg"
done

so=$BUILD_DIR/lib/libshmetrics.so
if [ -f "$so" ]; then
	others=$(nm -D --defined-only "$so" | awk '{print $NF}' | grep -v '^shmet_' | grep -v '^$')
	n=$((n + 1))
	if [ -z "$others" ]; then
		echo "ok $n - libshmetrics.so exports only shmet_* symbols"
	else
		echo "not ok $n - libshmetrics.so exports symbols outside shmet_*:"
		echo "$others" | sed 's/^/#   /'
		failed=$((failed + 1))
	fi
fi

echo "1..$n"
[ "$failed" -eq 0 ]
