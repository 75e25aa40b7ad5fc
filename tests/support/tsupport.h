/* Helpers shared by the tests: private segment names, snapshots, children. */
#ifndef TSUPPORT_H
#define TSUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <sys/types.h>

#include "shmetrics_reader.h"

/* A segment path under /dev/shm unique to this test process and tag; the
 * file is removed now (stale) and at exit. */
const char *tsupport_segment(const char *tag);

/* Aggregated value of one series as the collector would expose it (counter
 * total, gauge value, histogram/summary sum), or NAN when absent.  values:
 * NULL-terminated label values. */
double tsupport_value(const char *path, const char *name, const char *const *values);
/* Histogram/summary count of one series, or UINT64_MAX when absent. */
uint64_t tsupport_count(const char *path, const char *name, const char *const *values);

/* Wait for a child; returns its exit status, or 128+signal. */
int tsupport_wait(pid_t pid);

#define assert_double_equal_exact(a, b)                                                              \
	do {                                                                                         \
		double a_ = (a), b_ = (b);                                                           \
		if (!(a_ == b_))                                                                     \
			fail_msg("expected %.17g, got %.17g", b_, a_);                               \
	} while (0)

#endif
