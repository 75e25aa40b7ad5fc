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

/* Fold the segment's dead regions and free them, as the collector does. */
void tsupport_fold(const char *path);

/* Record in the segment's family registry the FAMILY records of a region
 * a test wrote by hand (rg, up to dir_end), as the writer would have, unless
 * a family of that name is there already. */
void tsupport_register_raw(const struct shmet_segment *s, const unsigned char *rg, uint64_t dir_end);

/* Wait for a child; returns its exit status, or 128+signal. */
int tsupport_wait(pid_t pid);

#define assert_double_equal_exact(a, b)                                                              \
	do {                                                                                         \
		double a_ = (a), b_ = (b);                                                           \
		if (!(a_ == b_))                                                                     \
			fail_msg("expected %.17g, got %.17g", b_, a_);                               \
	} while (0)

#endif

/* ---- processes and HTTP for integration tests (127.0.0.1 only) ---- */

struct tdaemon {
	pid_t pid;
	int port;
	char log[256];
};

/* Start build/bin/shmetricsd on segment with extra args (NULL-terminated),
 * listening on a free port; waits (bounded) until it serves.  0 on success. */
int tsupport_daemon_start(struct tdaemon *d, const char *segment, const char *const *extra);
/* 1 when the daemon's log so far holds no sanitizer report. */
int tsupport_daemon_log_clean(const struct tdaemon *d);
/* SIGTERM (or sig), then wait; returns the exit status as tsupport_wait. */
int tsupport_daemon_stop(struct tdaemon *d, int sig);

/* GET http://127.0.0.1:port/path with optional extra header lines ("A: b\r\n").
 * Returns the status code (or -1), fills *body (malloc'd, NUL-terminated) and
 * the raw header block in *headers when not NULL. */
int tsupport_http_get(int port, const char *path, const char *extra_headers, char **body, char **headers);

/* Value of the first sample line starting with `prefix ` in a text body
 * (exact line prefix up to the value), or NAN. */
double tsupport_sample(const char *body, const char *prefix);

/* Run a shell command, capture stdout+stderr (malloc'd) and return its exit status. */
int tsupport_run(const char *cmd, char **output);

/* A free TCP port on 127.0.0.1. */
int tsupport_free_port(void);

/* Path of a built binary: ${BUILD_DIR:-build}/bin/name. */
const char *tsupport_bin(const char *name);
