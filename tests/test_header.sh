#!/usr/bin/env bash
# Every public header compiles alone, as strict C11 and as C++11, and a C++
# program can use the header-only writer (implementation in one translation
# unit, the hot path in another), link, and count into a private segment.
# TAP-style: one "ok"/"not ok" line per check; non-zero exit on any failure.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
CC_=${HEADER_CC:-cc}
CXX_=${HEADER_CXX:-c++}
CSTRICT=(-std=c11 -Wall -Wextra -Werror -pedantic -D_POSIX_C_SOURCE=200809L)
CXXSTRICT=(-std=c++11 -Wall -Wextra -Werror)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmet-header.XXXXXX")
seg=/dev/shm/shmet-test-header-$$
trap 'rm -rf "$tmp"; rm -f "$seg"' EXIT

failed=0
n=0
# check NAME COMMAND...: runs the command, prints its output on failure.
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

for tool in "$CC_" "$CXX_"; do
	if ! command -v "$tool" >/dev/null; then
		echo "not ok - $tool not found (install build-essential)"
		exit 1
	fi
done

printf '#include "shmetrics.h"\n' >"$tmp/only.c"
printf '#define SHMETRICS_IMPLEMENTATION\n#include "shmetrics.h"\n' >"$tmp/impl.c"

# (a), (b): the writer header as strict C11, without and with its implementation.
check "shmetrics.h alone as strict C11" \
	"$CC_" "${CSTRICT[@]}" -fsyntax-only -Iinclude "$tmp/only.c"
check "shmetrics.h with SHMETRICS_IMPLEMENTATION as strict C11" \
	"$CC_" "${CSTRICT[@]}" -fsyntax-only -Iinclude "$tmp/impl.c"

# Flow-sensitive warnings (-Wmaybe-uninitialized and friends) only fire when
# code is generated: compile the implementation to an object at -O2 too,
# both as a PIE application (the default) and as a shared object (-fPIC).
for pic in -fPIE -fPIC; do
	check "SHMETRICS_IMPLEMENTATION compiles warning-free at -O2 $pic as C11" \
		"$CC_" "${CSTRICT[@]}" -O2 "$pic" -c -Iinclude -o "$tmp/impl.o" "$tmp/impl.c"
	check "SHMETRICS_IMPLEMENTATION compiles warning-free at -O2 $pic as C++11" \
		"$CXX_" "${CXXSTRICT[@]}" -O2 "$pic" -c -Iinclude -o "$tmp/impl.o" -x c++ "$tmp/impl.c"
done

# The writer's symbols are hidden unless SHMETRICS_EXPORT_WRITER asks otherwise.
visibility_is() { # WANT [cc flags...]: shmet_init and shmet__base have visibility WANT
	local want=$1
	shift
	"$CC_" "${CSTRICT[@]}" -O2 -fPIC -c -Iinclude "$@" -o "$tmp/vis.o" "$tmp/impl.c" || return 1
	local got
	got=$(readelf -sW "$tmp/vis.o" | awk '$8 == "shmet_init" || $8 == "shmet__base" {print $8, $6}' | sort)
	[ "$got" = "shmet__base $want
shmet_init $want" ] || { echo "expected $want, got: $got"; return 1; }
}
check "the writer's symbols are hidden by default" visibility_is HIDDEN
check "SHMETRICS_EXPORT_WRITER gives them default visibility" visibility_is DEFAULT -DSHMETRICS_EXPORT_WRITER

# (c), (d): as C++, without and with the implementation.
check "shmetrics.h alone as C++11" \
	"$CXX_" "${CXXSTRICT[@]}" -fsyntax-only -Iinclude -x c++ include/shmetrics.h
check "shmetrics.h with SHMETRICS_IMPLEMENTATION as C++11" \
	"$CXX_" "${CXXSTRICT[@]}" -fsyntax-only -Iinclude -x c++ "$tmp/impl.c"

# (d): a real C++ program: implementation in impl.cpp, use in main.cpp.
cat >"$tmp/impl.cpp" <<'EOF'
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"
EOF
cat >"$tmp/main.cpp" <<'EOF'
#include "shmetrics.h"

#include <cstdio>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	shmet_options o = shmet_options();
	o.path = argv[1];
	o.regions = 2;
	o.region_size = 8192;
	if (shmet_init(&o) != SHMET_OK) {
		std::fprintf(stderr, "shmet_init: %s\n", shmet_last_error());
		return 1;
	}
	shmet_family *f = NULL;
	const char *labels[] = {"lang"};
	if (shmet_counter_register(&f, "cxx_calls_total", "Calls made from C++.", 1, labels) != SHMET_OK) {
		std::fprintf(stderr, "register: %s\n", shmet_last_error());
		return 1;
	}
	shmet_counter c = shmet_counter_labels(f, "c++");
	if (c.off == 0) {
		std::fprintf(stderr, "series: %s\n", shmet_last_error());
		return 1;
	}
	shmet_counter_inc(c);
	shmet_counter_add(c, 1.5);
	std::printf("region %d\n", shmet_region_index());
	return 0;
}
EOF
check "C++ program with the writer compiles and links" \
	"$CXX_" "${CXXSTRICT[@]}" -Iinclude -o "$tmp/cxxprog" "$tmp/main.cpp" "$tmp/impl.cpp" -pthread
rm -f "$seg"
check "C++ program registers, increments and exits 0" "$tmp/cxxprog" "$seg"
# Its value is in the segment, read back by a C++ program through libshm.
lib=$BUILD_DIR/lib/libshmetrics.a
case ${SANITIZER:-} in
address) san=(-fsanitize=address) ;;
undefined) san=(-fsanitize=undefined) ;;
thread) san=(-fsanitize=thread) ;;
*) san=() ;;
esac
cat >"$tmp/verify.cpp" <<'EOF'
#include "shmetrics_reader.h"

#include <cstdio>

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	shmet_segment seg;
	shmet_snapshot snap;
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(argv[1], SHMET_ATTACH_READONLY, NULL, &seg, err) != SHMET_OK) {
		std::fprintf(stderr, "open: %s\n", err);
		return 1;
	}
	shmet_snapshot_take(&seg, &snap);
	const shmet_snap_family *f = shmet_snapshot_family(&snap, "cxx_calls_total");
	const char *values[] = {"c++"};
	const shmet_snap_series *s = f ? shmet_snapshot_series(f, values) : NULL;
	double v = s ? shmet_agg_value(&s->agg, f->type) : -1;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&seg);
	if (v != 2.5) {
		std::fprintf(stderr, "cxx_calls_total{lang=\"c++\"}: expected 2.5, got %g\n", v);
		return 1;
	}
	return 0;
}
EOF
if [ -f "$lib" ]; then
	check "C++ program using the reader compiles and links with libshmetrics.a" \
		"$CXX_" "${CXXSTRICT[@]}" "${san[@]}" -Iinclude -o "$tmp/verify" "$tmp/verify.cpp" "$lib" -pthread
	check "C++ program's counter reads 2.5 from the segment" "$tmp/verify" "$seg"
else
	n=$((n + 1))
	echo "ok $n - # SKIP reading the C++ program's counter: $lib not built"
fi
rm -f "$seg"

# (e): every other public header alone, as C11 and as C++.
for h in shmetrics_layout.h shmetrics_segment.h shmetrics_reader.h; do
	check "$h alone as strict C11" "$CC_" "${CSTRICT[@]}" -fsyntax-only -Iinclude -x c "include/$h"
	check "$h alone as C++11" "$CXX_" "${CXXSTRICT[@]}" -fsyntax-only -Iinclude -x c++ "include/$h"
done

# The README's instrumenting example compiles and links as the README says.
sed -n '/^```c$/,/^```$/p' README.md | sed '1d;$d' >"$tmp/readme.c"
check "README's example compiles with the documented command" \
	"$CC_" -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror "${san[@]}" -Iinclude -o "$tmp/readme" "$tmp/readme.c" -pthread -lm

echo "1..$n"
[ "$failed" -eq 0 ]
