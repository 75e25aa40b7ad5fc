/* The hot path makes no system call, takes no lock and allocates nothing.
 *
 * This program has two modes.  `test_hotpath --probe SEGMENT` registers one
 * series of every type and then works in three windows, each opened and
 * closed by a getppid() call (a cheap, otherwise unused marker):
 *   0  control: one malloc/free, one mutex lock/unlock, one sched_yield —
 *      proves that each instrument below really sees what it looks for;
 *   1  hot path: 100,000 rounds of every inc/add/set/observe/timer call,
 *      including writes that are refused (dropped and counted);
 *   2  label lookup of existing series (shmet_counter_labels with 3 values)
 *      followed by an increment;
 *   3  the counter, histogram and summary hot path in a second thread,
 *      whose first writes (before the window) claimed a region of its own,
 *      while the main thread waits spinning on a flag (no call).
 * Without arguments it runs the probe under strace (system calls), ltrace
 * (calls to the allocator and to pthread mutexes) and an LD_PRELOAD
 * interposer built here with cc (the same calls, counted in-process), and
 * asserts that windows 1 and 2 are empty while window 0 is not.
 * clock_gettime through the vDSO is not a system call; if this machine's
 * clock source lacks a vDSO path, strace shows it and the test says so. */
#include "tsupport.h"
#include "shmetrics.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define OPS 100000
#define NWINDOWS 4
#define MARKER "getppid"

static const char *const window_name[NWINDOWS] = {"control", "hot path", "label lookup", "thread hot path"};

/* ---------------------------------------------------------------- probe */

static pthread_mutex_t control_mu = PTHREAD_MUTEX_INITIALIZER;

struct hot_thread {
	shmet_counter c;
	shmet_histogram h;
	shmet_summary s;
	shmet_gauge g;
	int done;
};

static void *hot_thread(void *arg)
{
	struct hot_thread *a = arg;
	/* first writes: this thread claims its region here, outside the window */
	shmet_counter_inc(a->c);
	shmet_histogram_observe(a->h, 1);
	shmet_summary_observe(a->s, 1);
	getppid();
	for (int i = 0; i < OPS; i++) {
		shmet_counter_inc(a->c);
		shmet_counter_add(a->c, 0.25);
		shmet_counter_add_u64(a->c, 3);
		shmet_gauge_set(a->g, i);
		shmet_histogram_observe(a->h, (double)(i % 7));
		shmet_summary_observe(a->s, i);
	}
	getppid();
	/* release: the window is closed before the main thread goes on */
	__atomic_store_n(&a->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

static int probe(const char *path)
{
	struct shmet_options o = {path, 2, 1 << 20, 0, false};
	if (shmet_init(&o) != SHMET_OK) {
		fprintf(stderr, "probe: shmet_init: %s\n", shmet_last_error());
		return 2;
	}
	shmet_family *req, *f;
	const char *labels[] = {"method", "route", "status"};
	double b12[12];
	if (shmet_counter_register(&req, "probe_requests_total", "Requests.", 3, labels) != SHMET_OK ||
	    shmet_buckets_exponential(b12, 12, 0.001, 2) != SHMET_OK ||
	    shmet_histogram_register(&f, "probe_latency_seconds", "Latency.", b12, 12, 0, NULL) != SHMET_OK) {
		fprintf(stderr, "probe: register: %s\n", shmet_last_error());
		return 2;
	}
	shmet_histogram h = shmet_histogram_get(f, NULL);
	if (shmet_summary_register(&f, "probe_size_bytes", "Sizes.", 0, NULL) != SHMET_OK) {
		fprintf(stderr, "probe: register: %s\n", shmet_last_error());
		return 2;
	}
	shmet_summary s = shmet_summary_get(f, NULL);
	/* quantile sketches at a fine and a coarse schema (the two index paths) */
	shmet_family *fq, *fc;
	struct shmet_family_spec coarse = {.type = SHMET_SUMMARY, .name = "probe_coarse_seconds", .quantile_error = 0.5};
	if (shmet_summary_register_quantiles(&fq, "probe_quantile_seconds", "Quantiles.", 0.01, 0, 0, 0, NULL) !=
		    SHMET_OK ||
	    shmet_register(&coarse, &fc) != SHMET_OK) {
		fprintf(stderr, "probe: register: %s\n", shmet_last_error());
		return 2;
	}
	shmet_summary sq = shmet_summary_get(fq, NULL), sc = shmet_summary_get(fc, NULL);
	shmet_family *fn;
	if (shmet_histogram_register_native(&fn, "probe_native_seconds", "Native.", b12, 12, 3, 1e-9, 0, NULL) != SHMET_OK) {
		fprintf(stderr, "probe: register: %s\n", shmet_last_error());
		return 2;
	}
	shmet_histogram hn = shmet_histogram_get(fn, NULL);
	shmet_family *fe, *ce;
	struct shmet_family_spec hes = {.type = SHMET_HISTOGRAM, .name = "probe_ex_seconds", .nbuckets = 12,
					.buckets = b12, .exemplars = true};
	struct shmet_family_spec ces = {.type = SHMET_COUNTER, .name = "probe_ex_total", .exemplars = true};
	if (shmet_register(&hes, &fe) != SHMET_OK || shmet_register(&ces, &ce) != SHMET_OK) {
		fprintf(stderr, "probe: register: %s\n", shmet_last_error());
		return 2;
	}
	shmet_histogram he = shmet_histogram_get(fe, NULL);
	shmet_counter cex = shmet_counter_get(ce, NULL);
	const char *trace[] = {"trace_id", "4bf92f3577b34da6a3ce929d0e0e4736", NULL};
	const char *too_long[] = {"trace_id", "4bf92f3577b34da6a3ce929d0e0e4736", "a", "4bf92f3577b34da6a3ce929d0e0e47364bf92f3577b34da6a3ce929d0e0e47364bf92f3577b34da6a3ce929d0e0e47364bf92f3577b34da6a3ce929d0e0e4736", NULL};
	if (!sq.sk || !sc.sk || sc.sk->schema > 0) {
		fprintf(stderr, "probe: quantile handles: %s\n", shmet_last_error());
		return 2;
	}
	shmet_counter c = shmet_counter_new("probe_plain_total", "Plain.");
	shmet_gauge gsum = shmet_gauge_new("probe_gauge", "Sum gauge.", SHMET_GAUGE_SUM);
	shmet_gauge grecent = shmet_gauge_new("probe_recent_seconds", "Most recent.", SHMET_GAUGE_MOSTRECENT);
	static const char *const combos[4][3] = {
		{"GET", "/index", "200"}, {"GET", "/api/items", "200"}, {"POST", "/api/items", "201"}, {"GET", "/", "404"}};
	shmet_counter lab[4];
	for (int i = 0; i < 4; i++)
		lab[i] = shmet_counter_labels(req, combos[i][0], combos[i][1], combos[i][2]);
	if (!h.off || !s.off || !c.off || !gsum.off || !grecent.off || !lab[0].off || !lab[3].off) {
		fprintf(stderr, "probe: handles: %s\n", shmet_last_error());
		return 2;
	}
	/* The lookups below use copies, so they compare bytes, not pointers. */
	char copy[4][3][16];
	for (int i = 0; i < 4; i++)
		for (int k = 0; k < 3; k++)
			snprintf(copy[i][k], sizeof copy[i][k], "%s", combos[i][k]);
	shmet_counter none = {0};

	/* window 0: the control */
	getppid();
	void *p = malloc(64);
	((volatile char *)p)[0] = 1;
	free(p);
	pthread_mutex_lock(&control_mu);
	pthread_mutex_unlock(&control_mu);
	sched_yield();
	getppid();

	/* window 1: the hot path */
	getppid();
	for (int i = 0; i < OPS; i++) {
		shmet_counter_inc(c);
		shmet_counter_add(c, 2);
		shmet_counter_add(c, 0.25);
		shmet_counter_add_u64(c, 3);
		shmet_gauge_set(gsum, i);
		shmet_gauge_add(gsum, 0.5);
		shmet_gauge_inc(gsum);
		shmet_gauge_dec(gsum);
		shmet_gauge_set(grecent, i);
		shmet_gauge_add(grecent, 1);
		shmet_gauge_set_to_current_time(grecent);
		shmet_histogram_observe(h, b12[i % 12] * 0.9);
		shmet_histogram_observe(h, 1e6); /* +Inf bucket */
		shmet_summary_observe(s, i);
		shmet_summary_observe(sq, b12[i % 12] * 0.9);
		shmet_summary_observe(sq, i % 3 ? 1e6 : -1); /* above, below the window */
		shmet_summary_observe(sc, b12[i % 12] * 0.9);
		shmet_summary_observe(sc, 0);
		shmet_histogram_observe(hn, b12[i % 12] * 0.9);
		shmet_histogram_observe(hn, i % 3 ? 1e6 : -1); /* clamped to the window's top; a negative */
		shmet_histogram_observe(hn, 0);
		shmet_histogram_observe_with_exemplar(he, b12[i % 12] * 0.9, trace, 1700000000.5);
		shmet_counter_inc_with_exemplar(cex, trace, 0);
		shmet_counter_add_with_exemplar(cex, 2, too_long, 0); /* refused: dropped and counted */
		shmet_timer t = shmet_timer_start();
		shmet_histogram_observe_duration(h, t);
		shmet_summary_observe_duration(s, t);
		/* refused writes: dropped and counted, also without a call out */
		shmet_counter_add(c, -1);
		shmet_counter_inc(none);
		shmet_histogram_observe(h, NAN);
	}
	getppid();

	/* window 2: label lookup of existing series + inc */
	int wrong = 0;
	getppid();
	for (int i = 0; i < OPS; i++) {
		const int k = i & 3;
		shmet_counter x = shmet_counter_labels(req, copy[k][0], copy[k][1], copy[k][2]);
		wrong += x.off != lab[k].off;
		shmet_counter_inc(x);
	}
	getppid();

	/* window 3: a second thread's hot path (the window is its own) */
	struct hot_thread ht = {c, h, s, gsum, 0};
	const struct shmet_region_header *rg = (const struct shmet_region_header *)(void *)shmet__base;
	uint64_t dropped = __atomic_load_n(&rg->rg_dropped, __ATOMIC_RELAXED);
	pthread_t th;
	if (pthread_create(&th, NULL, hot_thread, &ht) != 0) {
		fprintf(stderr, "probe: pthread_create failed\n");
		return 2;
	}
	while (!__atomic_load_n(&ht.done, __ATOMIC_ACQUIRE)) {
		/* spin: a wait that calls nothing, so the window holds only the thread's calls */
	}
	pthread_join(th, NULL);
	/* and its writes were written, not dropped for want of a region */
	if (__atomic_load_n(&rg->rg_dropped, __ATOMIC_RELAXED) != dropped) {
		fprintf(stderr, "probe: the thread's writes were dropped\n");
		return 2;
	}

	unlink(path);
	if (wrong) {
		fprintf(stderr, "probe: %d lookups returned another series\n", wrong);
		return 3;
	}
	return 0;
}

/* --------------------------------------------------------------- checks */

static char self[4096];
static char tmpdir[256];

static int setup(void **state)
{
	(void)state;
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n <= 0)
		return -1;
	self[n] = 0;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/shmet-hotpath-XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[512];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static int have_tool(const char *name)
{
	const char *path = getenv("PATH");
	char buf[4096];
	snprintf(buf, sizeof buf, "%s", path ? path : "/usr/bin:/bin");
	for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
		char full[4352];
		snprintf(full, sizeof full, "%s/%s", dir, name);
		if (access(full, X_OK) == 0)
			return 1;
	}
	return 0;
}

/* Run argv with stdout and stderr to `out`; exit status or 128+signal. */
static int run(const char *const argv[], const char *out)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		alarm(300);
		FILE *f = freopen(out, "w", stdout);
		if (!f || dup2(fileno(stdout), 2) < 0)
			_exit(126);
		/* LeakSanitizer cannot run under ptrace (strace, ltrace) */
		const char *asan = getenv("ASAN_OPTIONS");
		char opts[1024];
		snprintf(opts, sizeof opts, "%s%sdetect_leaks=0", asan ? asan : "", asan && *asan ? ":" : "");
		setenv("ASAN_OPTIONS", opts, 1);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	return tsupport_wait(pid);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	size_t n;
	while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 4096) {
			char *nb = realloc(buf, cap *= 2);
			if (!nb)
				free(buf);
			buf = nb;
		}
	}
	fclose(f);
	if (buf)
		buf[len] = 0;
	return buf;
}

/* A trace split into lines, and the lines of each window between markers. */
struct trace {
	char *text;
	char **line;
	size_t nlines;
	size_t marker[2 * NWINDOWS];
	size_t nmarkers;
};

static void trace_load(struct trace *t, const char *path, const char *marker)
{
	memset(t, 0, sizeof *t);
	t->text = slurp(path);
	if (!t->text)
		fail_msg("cannot read the trace %s", path);
	size_t cap = 1024;
	t->line = malloc(cap * sizeof *t->line);
	assert_non_null(t->line);
	for (char *save = NULL, *l = strtok_r(t->text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		if (t->nlines == cap) {
			t->line = realloc(t->line, (cap *= 2) * sizeof *t->line);
			assert_non_null(t->line);
		}
		if (strstr(l, marker) && t->nmarkers < 2 * NWINDOWS)
			t->marker[t->nmarkers++] = t->nlines;
		t->line[t->nlines++] = l;
	}
	if (t->nmarkers != 2 * NWINDOWS)
		fail_msg("%s: expected %d %s markers, got %zu", path, 2 * NWINDOWS, marker, t->nmarkers);
}

static void trace_free(struct trace *t)
{
	free(t->line);
	free(t->text);
}

/* Is trace line i from the thread that opened window w?  With -f, the
 * tools start each line with the thread's id; a window is what its own
 * thread did, not what another thread (a sanitizer's runtime, say) did
 * meanwhile.  A line without an id counts. */
static int window_thread(const struct trace *t, int w, size_t i)
{
	const char *a = t->line[t->marker[2 * w]], *b = t->line[i];
	size_t la = strspn(a, "0123456789"), lb = strspn(b, "0123456789");
	return !la || !lb || (la == lb && memcmp(a, b, la) == 0);
}

/* The window's lines joined (at most 8 of them), and how many there are. */
static size_t trace_window(const struct trace *t, int w, char *out, size_t outsz)
{
	size_t n = 0;
	out[0] = 0;
	for (size_t i = t->marker[2 * w] + 1; i < t->marker[2 * w + 1]; i++) {
		if (!window_thread(t, w, i))
			continue;
		if (n++ < 8) {
			size_t used = strlen(out);
			snprintf(out + used, outsz - used, "\n    %s", t->line[i]);
		}
	}
	return n;
}

static int window_has(const struct trace *t, int w, const char *what)
{
	for (size_t i = t->marker[2 * w] + 1; i < t->marker[2 * w + 1]; i++)
		if (window_thread(t, w, i) && strstr(t->line[i], what))
			return 1;
	return 0;
}

/* The probe must have run cleanly under the tool. */
static void expect_probe_ok(int status, const char *tool, const char *out)
{
	if (status == 127)
		fail_msg("%s could not be run (not installed? `make deps` installs it)", tool);
	if (status != 0) {
		char *o = slurp(out);
		fail_msg("the probe under %s: expected exit 0, got %d; output:\n%s", tool, status, o ? o : "");
	}
}

static void expect_windows_empty(const struct trace *t, const char *tool, const char *what)
{
	char buf[2048];
	for (int w = 1; w < NWINDOWS; w++) {
		size_t n = trace_window(t, w, buf, sizeof buf);
		if (n)
			fail_msg("%s, %s window: expected no %s, got %zu:%s", tool, window_name[w], what, n, buf);
	}
}

static void test_hotpath_strace_no_syscall(void **state)
{
	(void)state;
	if (!have_tool("strace"))
		fail_msg("strace is not installed: it is in the Makefile's DEBIAN_PACKAGES (`make deps`)");
	char log[512], out[512], seg[512];
	snprintf(log, sizeof log, "%s/strace.log", tmpdir);
	snprintf(out, sizeof out, "%s/strace.out", tmpdir);
	snprintf(seg, sizeof seg, "%s", tsupport_segment("hotpath-strace"));
	const char *argv[] = {"strace", "-f", "-o", log, "-e", "trace=all", self, "--probe", seg, NULL};
	expect_probe_ok(run(argv, out), "strace", out);
	struct trace t;
	trace_load(&t, log, MARKER "()");
	/* the control shows that strace sees a system call in a window */
	if (!window_has(&t, 0, "sched_yield"))
		fail_msg("strace: expected sched_yield in the control window; strace is not seeing calls");
	for (int w = 1; w < NWINDOWS; w++)
		if (window_has(&t, w, "clock_gettime"))
			fail_msg("strace, %s window: clock_gettime is a real system call on this machine (no vDSO "
				 "clock source: see /sys/devices/system/clocksource/clocksource0/current_clocksource)",
				 window_name[w]);
	expect_windows_empty(&t, "strace", "system call");
	trace_free(&t);
}

static void test_hotpath_ltrace_no_alloc_no_lock(void **state)
{
	(void)state;
	if (!have_tool("ltrace"))
		fail_msg("ltrace is not installed: it is in the Makefile's DEBIAN_PACKAGES (`make deps`)");
	char log[512], out[512], seg[512];
	snprintf(log, sizeof log, "%s/ltrace.log", tmpdir);
	snprintf(out, sizeof out, "%s/ltrace.out", tmpdir);
	snprintf(seg, sizeof seg, "%s", tsupport_segment("hotpath-ltrace"));
	const char *argv[] = {"ltrace", "-f", "-o", log, "-e",
			"malloc+calloc+realloc+free+posix_memalign+aligned_alloc+memalign+pthread_mutex_lock+"
			"pthread_mutex_trylock+pthread_mutex_unlock+pthread_rwlock_rdlock+pthread_rwlock_wrlock+"
			"pthread_spin_lock+sem_wait+getppid",
			self, "--probe", seg, NULL};
	expect_probe_ok(run(argv, out), "ltrace", out);
	struct trace t;
	trace_load(&t, log, MARKER "(");
	/* the control shows that ltrace sees these calls in this (PIE) binary */
	const char *control[] = {"malloc(", "free(", "pthread_mutex_lock(", "pthread_mutex_unlock("};
	for (size_t i = 0; i < sizeof control / sizeof *control; i++)
		if (!window_has(&t, 0, control[i]))
			fail_msg("ltrace: expected %s...) in the control window; ltrace is not seeing calls", control[i]);
	expect_windows_empty(&t, "ltrace", "allocation or lock call");
	trace_free(&t);
}

/* The interposer: counts calls per window; getppid() moves to the next. */
static const char interposer_src[] =
	"#define _GNU_SOURCE\n"
	"#include <pthread.h>\n"
	"#include <stdio.h>\n"
	"#include <stdlib.h>\n"
	"#include <string.h>\n"
	"#include <fcntl.h>\n"
	"#include <unistd.h>\n"
	"#include <sys/syscall.h>\n"
	"void *__libc_malloc(size_t); void *__libc_calloc(size_t, size_t);\n"
	"void *__libc_realloc(void *, size_t); void __libc_free(void *);\n"
	"void *__libc_memalign(size_t, size_t);\n"
	"int __pthread_mutex_lock(pthread_mutex_t *); int __pthread_mutex_unlock(pthread_mutex_t *);\n"
	"int __pthread_mutex_trylock(pthread_mutex_t *);\n"
	"enum { ALLOC, FREE, LOCK, UNLOCK, NKINDS };\n"
	"static unsigned long counts[16][NKINDS];\n"
	"static int markers;\n"
	"static void note(int k) { if (markers < 32 && (markers & 1)) __atomic_fetch_add(&counts[markers / 2][k], 1, "
	"__ATOMIC_RELAXED); }\n"
	"pid_t getppid(void) { markers++; return (pid_t)syscall(SYS_getppid); }\n"
	"void *malloc(size_t n) { note(ALLOC); return __libc_malloc(n); }\n"
	"void *calloc(size_t a, size_t b) { note(ALLOC); return __libc_calloc(a, b); }\n"
	"void *realloc(void *p, size_t n) { note(ALLOC); return __libc_realloc(p, n); }\n"
	"void free(void *p) { note(FREE); __libc_free(p); }\n"
	"void *memalign(size_t a, size_t n) { note(ALLOC); return __libc_memalign(a, n); }\n"
	"void *aligned_alloc(size_t a, size_t n) { note(ALLOC); return __libc_memalign(a, n); }\n"
	"int posix_memalign(void **r, size_t a, size_t n) { note(ALLOC); *r = __libc_memalign(a, n); return *r ? 0 : "
	"12; }\n"
	"int pthread_mutex_lock(pthread_mutex_t *m) { note(LOCK); return __pthread_mutex_lock(m); }\n"
	"int pthread_mutex_trylock(pthread_mutex_t *m) { note(LOCK); return __pthread_mutex_trylock(m); }\n"
	"int pthread_mutex_unlock(pthread_mutex_t *m) { note(UNLOCK); return __pthread_mutex_unlock(m); }\n"
	"__attribute__((destructor)) static void report(void) {\n"
	"  const char *path = getenv(\"SHMET_INTERPOSE_OUT\"); if (!path) return;\n"
	"  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600); if (fd < 0) return;\n"
	"  char line[128];\n"
	"  for (int w = 0; w < 16 && 2 * w < markers; w++) {\n"
	"    int n = snprintf(line, sizeof line, \"window %d alloc %lu free %lu lock %lu unlock %lu\\n\", w,\n"
	"        counts[w][ALLOC], counts[w][FREE], counts[w][LOCK], counts[w][UNLOCK]);\n"
	"    if (write(fd, line, (size_t)n) != n) break;\n"
	"  }\n"
	"  close(fd);\n"
	"}\n";

static void test_hotpath_interposer_no_alloc_no_lock(void **state)
{
	(void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
	/* The sanitizer runtime must come first and owns malloc: an
	 * interposer in front of it cannot forward to glibc.  ltrace above
	 * covers this build. */
	skip();
#endif
	char src[512], so[512], out[512], counts[512], seg[512], cc_out[512], env[600];
	snprintf(src, sizeof src, "%s/interpose.c", tmpdir);
	snprintf(so, sizeof so, "%s/interpose.so", tmpdir);
	snprintf(out, sizeof out, "%s/interpose.out", tmpdir);
	snprintf(cc_out, sizeof cc_out, "%s/interpose.cc", tmpdir);
	snprintf(counts, sizeof counts, "%s/interpose.counts", tmpdir);
	snprintf(seg, sizeof seg, "%s", tsupport_segment("hotpath-preload"));
	FILE *f = fopen(src, "w");
	assert_non_null(f);
	assert_int_equal(fputs(interposer_src, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
	if (!have_tool("cc"))
		fail_msg("cc is not installed (build-essential): needed to build the interposer");
	const char *cc[] = {"cc", "-shared", "-fPIC", "-O2", "-o", so, src, NULL};
	int st = run(cc, cc_out);
	if (st != 0) {
		char *o = slurp(cc_out);
		fail_msg("building the interposer: expected exit 0, got %d:\n%s", st, o ? o : "");
	}
	snprintf(env, sizeof env, "SHMET_INTERPOSE_OUT=%s", counts);
	char preload[600];
	snprintf(preload, sizeof preload, "LD_PRELOAD=%s", so);
	const char *argv[] = {"env", preload, env, self, "--probe", seg, NULL};
	expect_probe_ok(run(argv, out), "the interposer", out);
	char *text = slurp(counts);
	if (!text)
		fail_msg("the interposer wrote no counts (was it preloaded?)");
	unsigned long c[NWINDOWS][4];
	int got = 0;
	for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		int w;
		unsigned long a, fr, lk, ul;
		if (sscanf(l, "window %d alloc %lu free %lu lock %lu unlock %lu", &w, &a, &fr, &lk, &ul) == 5 && w >= 0 &&
		    w < NWINDOWS) {
			c[w][0] = a, c[w][1] = fr, c[w][2] = lk, c[w][3] = ul;
			got++;
		}
	}
	free(text);
	assert_int_equal(got, NWINDOWS);
	if (!c[0][0] || !c[0][1] || !c[0][2] || !c[0][3])
		fail_msg("interposer, control window: expected alloc, free, lock and unlock, got %lu %lu %lu %lu", c[0][0],
			 c[0][1], c[0][2], c[0][3]);
	for (int w = 1; w < NWINDOWS; w++)
		if (c[w][0] || c[w][1] || c[w][2] || c[w][3])
			fail_msg("interposer, %s window: expected no calls, got alloc %lu free %lu lock %lu unlock %lu",
				 window_name[w], c[w][0], c[w][1], c[w][2], c[w][3]);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--probe") == 0)
		return probe(argv[2]);
	if (argc != 1) {
		fprintf(stderr, "usage: %s [--probe SEGMENT]\n", argv[0]);
		return 2;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hotpath_strace_no_syscall),
		cmocka_unit_test(test_hotpath_ltrace_no_alloc_no_lock),
		cmocka_unit_test(test_hotpath_interposer_no_alloc_no_lock),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
