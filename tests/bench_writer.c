/* Writer benchmarks against an in-run baseline (DESIGN.md, "Performance
 * targets").  One line per benchmark:
 *
 *   bench <name> <ns/op> ns/op baseline <ns/op> ns/op ratio <x>
 *
 * The baseline is a relaxed __atomic_fetch_add (a relaxed store for
 * gauge_set) on a uint64_t cell of a MAP_SHARED mapping of a memfd, timed
 * in the same run with the same loop shape, CLOCK_MONOTONIC; subject and
 * baseline alternate for BENCH_REPS repetitions and the best of each is
 * kept.  Lines starting with '#' are context (targets, contention figures).
 * Misses are reported, never fatal: machines are noisy.
 *
 * Environment: BENCH_SCALE (default 1) multiplies the iteration counts. */
#include "shmetrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* Align every loop the same way: sub-nanosecond loops otherwise move by
 * 20% with where the linker happens to place them. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("align-loops=64")
#endif

#define BENCH_REPS 5
#define NOINLINE __attribute__((noinline))

static long scale = 1;
static char seg_path[128];
static unsigned char *shared; /* MAP_SHARED memfd pages for the baselines */
static size_t shared_size = 1 << 16;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void cleanup(void)
{
	if (seg_path[0])
		unlink(seg_path);
}

/* ------------------------------------------------------------ loops */

#define NVALUES 1024 /* a power of two */
static double values[NVALUES];

static NOINLINE void base_add(uint64_t *cell, long n)
{
	for (long i = 0; i < n; i++)
		__atomic_fetch_add(cell, 1, __ATOMIC_RELAXED);
}

static NOINLINE void base_store(uint64_t *cell, long n)
{
	for (long i = 0; i < n; i++)
		__atomic_store_n(cell, shmet__bits((double)i), __ATOMIC_RELAXED);
}

/* What every histogram observe does at least: add v to the sum, a double
 * cell with one writer (relaxed load, add, relaxed store).  Each add waits
 * for the previous one's store, so this is a latency chain (store-to-load
 * forwarding plus the add), the floor of observe for one series. */
static NOINLINE void base_sum(uint64_t *cell, long n)
{
	shmet__alias_double *d = (shmet__alias_double *)(void *)cell;
	for (long i = 0; i < n; i++) {
		double cur;
		__atomic_load(d, &cur, __ATOMIC_RELAXED);
		cur += values[i & (NVALUES - 1)];
		__atomic_store(d, &cur, __ATOMIC_RELAXED);
	}
}

static NOINLINE void subj_counter_inc(shmet_counter c, long n)
{
	for (long i = 0; i < n; i++)
		shmet_counter_inc(c);
}

static NOINLINE void subj_gauge_set(shmet_gauge g, long n)
{
	for (long i = 0; i < n; i++)
		shmet_gauge_set(g, (double)i);
}

static NOINLINE void subj_histogram_observe(shmet_histogram h, long n)
{
	for (long i = 0; i < n; i++)
		shmet_histogram_observe(h, values[i & (NVALUES - 1)]);
}

static NOINLINE void subj_summary_observe(shmet_summary q, long n)
{
	for (long i = 0; i < n; i++)
		shmet_summary_observe(q, values[i & (NVALUES - 1)]);
}

#define NCOMBOS 64
static char combo[NCOMBOS][3][24];

static NOINLINE void subj_label_lookup_inc(shmet_family *f, long n)
{
	for (long i = 0; i < n; i++) {
		const char(*k)[24] = combo[i & (NCOMBOS - 1)];
		shmet_counter_inc(shmet_counter_labels(f, k[0], k[1], k[2]));
	}
}

/* ------------------------------------------------- threads of one process */

/* N threads of this process increment one series (each its own cells);
 * each times its loop on its own CPU clock, so that 8 threads on fewer
 * cores still show what one increment costs a thread.  Scaling is linear
 * when that figure stays flat as N grows. */
struct thread_arg {
	long n;
	double ns; /* CPU ns per op */
	pthread_barrier_t *go;
};

static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static shmet_counter the_counter;

static void *thread_incs(void *p)
{
	struct thread_arg *a = p;
	subj_counter_inc(the_counter, a->n / 20 + 1); /* its own region is claimed here */
	pthread_barrier_wait(a->go);
	double best = 1e30;
	for (int rep = 0; rep < BENCH_REPS; rep++) {
		uint64_t t0 = thread_cpu_ns();
		subj_counter_inc(the_counter, a->n);
		double ns = (double)(thread_cpu_ns() - t0) / (double)a->n;
		if (ns < best)
			best = ns;
	}
	a->ns = best;
	return NULL;
}

/* Mean over nthreads of each thread's best CPU ns/op; -1 on failure. */
static double threads_same_series(int nthreads, long n)
{
	pthread_t t[8];
	struct thread_arg a[8];
	pthread_barrier_t go;
	if (nthreads > 8 || pthread_barrier_init(&go, NULL, (unsigned)nthreads) != 0)
		return -1;
	for (int i = 0; i < nthreads; i++) {
		a[i] = (struct thread_arg){n, 0, &go};
		if (pthread_create(&t[i], NULL, thread_incs, &a[i]) != 0)
			return -1;
	}
	double sum = 0;
	for (int i = 0; i < nthreads; i++) {
		pthread_join(t[i], NULL);
		sum += a[i].ns;
	}
	pthread_barrier_destroy(&go);
	return sum / nthreads;
}

/* ------------------------------------------------------------ timing */

struct result {
	double subj, base; /* best ns/op */
};

typedef void (*loop_fn)(void *arg, long n);

struct loop {
	loop_fn fn;
	void *arg;
};

static double time_loop(struct loop l, long n)
{
	uint64_t t0 = now_ns();
	l.fn(l.arg, n);
	return (double)(now_ns() - t0) / (double)n;
}

/* Alternate subject and baseline, keep the best of each. */
static struct result measure(struct loop subj, struct loop base, long n)
{
	struct result r = {1e30, 1e30};
	subj.fn(subj.arg, n / 20 + 1); /* warm: page faults, caches, branch predictors */
	base.fn(base.arg, n / 20 + 1);
	for (int rep = 0; rep < BENCH_REPS; rep++) {
		double b = time_loop(base, n), s = time_loop(subj, n);
		if (b < r.base)
			r.base = b;
		if (s < r.subj)
			r.subj = s;
	}
	return r;
}

static void print_line(const char *name, struct result r)
{
	printf("bench %s %.3f ns/op baseline %.3f ns/op ratio %.2f\n", name, r.subj, r.base, r.subj / r.base);
	fflush(stdout);
}

static void print_target(const char *name, struct result r, double target)
{
	double ratio = r.subj / r.base;
	printf("# %s: target <= %.1fx, %s (%.2fx)\n", name, target, ratio <= target ? "met" : "MISSED", ratio);
	fflush(stdout);
}

/* Adapters from the loop type to the typed loops. */
static shmet_gauge the_gauge;
static shmet_histogram the_hist;
static shmet_family *the_family;

static void run_base_add(void *cell, long n) { base_add((uint64_t *)cell, n); }
static void run_base_store(void *cell, long n) { base_store((uint64_t *)cell, n); }
static void run_base_sum(void *cell, long n) { base_sum((uint64_t *)cell, n); }
static void run_counter_inc(void *arg, long n) { (void)arg, subj_counter_inc(the_counter, n); }
static void run_gauge_set(void *arg, long n) { (void)arg, subj_gauge_set(the_gauge, n); }
static void run_histogram(void *arg, long n) { (void)arg, subj_histogram_observe(the_hist, n); }
static shmet_summary the_summary; /* with quantiles: 2 % over 1e-4 .. 100 */
static shmet_histogram the_native; /* the 12 classic buckets, and native schema 3 */
static void run_native(void *arg, long n) { (void)arg, subj_histogram_observe(the_native, n); }
static shmet_histogram the_exemplar_hist; /* the 12 classic buckets with exemplars */
static NOINLINE void subj_observe_exemplar(shmet_histogram h, long n)
{
	const char *pairs[] = {"trace_id", "4bf92f3577b34da6a3ce929d0e0e4736", NULL};
	for (long i = 0; i < n; i++)
		shmet_histogram_observe_with_exemplar(h, values[i & (NVALUES - 1)], pairs, 0);
}
static void run_exemplar(void *arg, long n) { (void)arg, subj_observe_exemplar(the_exemplar_hist, n); }
static void run_summary(void *arg, long n) { (void)arg, subj_summary_observe(the_summary, n); }
static void run_label_lookup(void *arg, long n) { (void)arg, subj_label_lookup_inc(the_family, n); }

/* ------------------------------------------------- two processes at once */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* Fork two processes that run `l0` and `l1` n times each, BENCH_REPS times,
 * every repetition started in both at once (both report ready, then the
 * parent lets both go), so that they really overlap.  Returns each one's
 * best and median ns/op. */
static int two_processes(struct loop l0, struct loop l1, long n, double best[2], double median[2])
{
	int ready[2], go[2], res[2][2];
	if (pipe(ready) != 0 || pipe(go) != 0 || pipe(res[0]) != 0 || pipe(res[1]) != 0)
		return -1;
	pid_t pid[2];
	for (int p = 0; p < 2; p++) {
		pid[p] = fork();
		if (pid[p] < 0)
			return -1;
		if (pid[p] == 0) {
			alarm(120);
			close(ready[0]);
			close(go[1]);
			close(res[p][0]);
			struct loop l = p ? l1 : l0;
			l.fn(l.arg, n / 20 + 1);
			double t[BENCH_REPS + 1];
			for (int rep = 0; rep < BENCH_REPS; rep++) {
				char c = 'r';
				if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
					_exit(1);
				t[rep] = time_loop(l, n);
			}
			qsort(t, BENCH_REPS, sizeof *t, cmp_double);
			t[BENCH_REPS] = t[BENCH_REPS / 2];
			double out[2] = {t[0], t[BENCH_REPS]};
			_exit(write(res[p][1], out, sizeof out) == (ssize_t)sizeof out ? 0 : 1);
		}
		close(res[p][1]);
	}
	close(ready[1]);
	close(go[0]);
	int rc = 0;
	for (int rep = 0; rep < BENCH_REPS && rc == 0; rep++) {
		char c[2];
		for (int got = 0; got < 2 && rc == 0;) {
			ssize_t r = read(ready[0], c + got, (size_t)(2 - got));
			if (r <= 0)
				rc = -1;
			else
				got += (int)r;
		}
		if (rc == 0 && write(go[1], "gg", 2) != 2)
			rc = -1;
	}
	close(ready[0]);
	close(go[1]);
	for (int p = 0; p < 2; p++) {
		double out[2];
		if (read(res[p][0], out, sizeof out) != (ssize_t)sizeof out)
			rc = -1;
		else
			best[p] = out[0], median[p] = out[1];
		close(res[p][0]);
		int st;
		while (waitpid(pid[p], &st, 0) < 0) {
		}
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			rc = -1;
	}
	return rc;
}

int main(void)
{
	const char *sc = getenv("BENCH_SCALE");
	if (sc && atol(sc) > 0)
		scale = atol(sc);
	setvbuf(stdout, NULL, _IOLBF, 0);

	int mfd = memfd_create("shmet-bench-baseline", MFD_CLOEXEC);
	if (mfd < 0 || ftruncate(mfd, (off_t)shared_size) != 0) {
		perror("bench_writer: memfd");
		return 1;
	}
	shared = mmap(NULL, shared_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (shared == MAP_FAILED) {
		perror("bench_writer: mmap");
		return 1;
	}
	close(mfd);
	memset(shared, 0, shared_size);
	uint64_t *cell = (uint64_t *)(void *)(shared + 4096);

	snprintf(seg_path, sizeof seg_path, "/dev/shm/shmet-bench-writer-%d", (int)getpid());
	unlink(seg_path);
	atexit(cleanup);
	/* every fork claims a region: room for the 4 x 2 children below */
	/* and for the threads' regions (1 + 2 + 8, never folded here) */
	struct shmet_options o = {seg_path, 64, 1 << 16, 0, false};
	if (shmet_init(&o) != SHMET_OK) {
		fprintf(stderr, "bench_writer: shmet_init: %s\n", shmet_last_error());
		return 1;
	}
	/* Nobody else needs the name: forks reopen the segment through
	 * /proc/self/fd, so a killed run leaves nothing behind. */
	unlink(seg_path);
	double b12[12];
	const char *lnames[] = {"method", "route", "status"};
	shmet_family *hf;
	the_counter = shmet_counter_new("bench_ops", "Benchmark counter.");
	shmet_gauge sum_gauge = shmet_gauge_new("bench_level", "Benchmark gauge.", SHMET_GAUGE_SUM);
	the_gauge = sum_gauge;
	if (shmet_buckets_exponential(b12, 12, 0.001, 2.5) != SHMET_OK ||
	    shmet_histogram_register(&hf, "bench_latency_seconds", "Benchmark histogram.", b12, 12, 0, NULL) !=
		    SHMET_OK ||
	    shmet_counter_register(&the_family, "bench_requests", "Benchmark labelled counter.", 3, lnames) !=
		    SHMET_OK) {
		fprintf(stderr, "bench_writer: register: %s\n", shmet_last_error());
		return 1;
	}
	the_hist = shmet_histogram_get(hf, NULL);
	shmet_family *qf;
	if (shmet_summary_register_quantiles(&qf, "bench_quantile_seconds", "Bench.", 0.02, 0, 0, 0, NULL) != SHMET_OK) {
		fprintf(stderr, "bench_writer: register: %s\n", shmet_last_error());
		return 1;
	}
	the_summary = shmet_summary_get(qf, NULL);
	if (shmet_histogram_register_native(&qf, "bench_native_seconds", "Bench.", b12, 12, 3, 1e-9, 0, NULL) != SHMET_OK) {
		fprintf(stderr, "bench_writer: register: %s\n", shmet_last_error());
		return 1;
	}
	the_native = shmet_histogram_get(qf, NULL);
	struct shmet_family_spec exs = {.type = SHMET_HISTOGRAM, .name = "bench_exemplar_seconds", .nbuckets = 12,
					.buckets = b12, .exemplars = true};
	if (shmet_register(&exs, &qf) != SHMET_OK) {
		fprintf(stderr, "bench_writer: register: %s\n", shmet_last_error());
		return 1;
	}
	the_exemplar_hist = shmet_histogram_get(qf, NULL);
	/* values spread over all 13 buckets, in a scrambled order */
	for (int i = 0; i < NVALUES; i++) {
		unsigned k = (unsigned)(i * 7919u) % 13u;
		double lo = k ? b12[k - 1] : 0, hi = k < 12 ? b12[k] : b12[11] * 4;
		values[i] = lo + (hi - lo) * (double)((i * 31u) % 97u + 1) / 98.0;
	}
	static const char *const methods[] = {"GET", "POST", "PUT", "DELETE"};
	static const char *const routes[] = {"/", "/api/v1/items", "/api/v1/users/{id}", "/static/{path}"};
	static const char *const statuses[] = {"200", "201", "404", "500"};
	for (int i = 0; i < NCOMBOS; i++) {
		snprintf(combo[i][0], sizeof combo[i][0], "%s", methods[i & 3]);
		snprintf(combo[i][1], sizeof combo[i][1], "%s", routes[(i >> 2) & 3]);
		snprintf(combo[i][2], sizeof combo[i][2], "%s", statuses[(i >> 4) & 3]);
		if (!shmet_counter_labels(the_family, combo[i][0], combo[i][1], combo[i][2]).off) {
			fprintf(stderr, "bench_writer: series: %s\n", shmet_last_error());
			return 1;
		}
	}
	if (!the_counter.off || !the_gauge.off || !the_hist.off) {
		fprintf(stderr, "bench_writer: handles: %s\n", shmet_last_error());
		return 1;
	}

	const long cheap = 20000000L * scale, lookup = 2000000L * scale;
#if defined(__PIE__)
	const char *model = "-fPIE (an application: shmet__base is read directly)";
#elif defined(__PIC__)
	const char *model = "-fPIC (a shared-object user: shmet__base is read through the GOT)";
#else
	const char *model = "non-PIC (shmet__base is read directly)";
#endif
	printf("# bench_writer: best of %d, %ld ops per run (%ld for lookups), CLOCK_MONOTONIC; built %s\n",
	       BENCH_REPS, cheap, lookup, model);
	struct loop badd = {run_base_add, cell}, bstore = {run_base_store, cell};
	struct result r;

	r = measure((struct loop){run_counter_inc, NULL}, badd, cheap);
	print_line("counter_inc", r);
	print_target("counter_inc", r, 0.3);

	/* every mode: the stamp a mode writes is decided at _get, not per set */
	static const char *const mode_names[] = {"sum", "max", "min", "most_recent", "per_worker"};
	for (unsigned m = SHMET_GAUGE_SUM; m <= SHMET_GAUGE_PER_WORKER; m++) {
		char name[64], line[64];
		snprintf(name, sizeof name, "bench_level_%s", mode_names[m]);
		the_gauge = m == SHMET_GAUGE_SUM ? sum_gauge : shmet_gauge_new(name, "Benchmark gauge.", m);
		if (!the_gauge.off) {
			fprintf(stderr, "bench_writer: gauge: %s\n", shmet_last_error());
			return 1;
		}
		r = measure((struct loop){run_gauge_set, NULL}, bstore, cheap);
		snprintf(line, sizeof line, m == SHMET_GAUGE_SUM ? "gauge_set" : "gauge_set_%s", mode_names[m]);
		print_line(line, r);
		/* most recent writes the set time (CLOCK_REALTIME, vDSO) at every
		 * set, which no relaxed store can match: shown, not a target */
		if (m != SHMET_GAUGE_MOSTRECENT)
			print_target(line, r, 1.2);
	}

	r = measure((struct loop){run_histogram, NULL}, badd, cheap / 2);
	print_line("histogram_observe_12", r);
	print_target("histogram_observe_12", r, 1);
	/* how much of that target the sum's chain alone takes on this machine */
	struct result floor = measure((struct loop){run_base_sum, shared + 4096 + 64}, badd, cheap / 2);
	printf("# histogram_observe_12: the sum's load, add and store alone: %.3f ns/op, %.2fx the lock add "
	       "(observe is %.2fx that floor)\n",
	       floor.subj, floor.subj / floor.base, r.subj / floor.subj);

	/* the histogram's values (over 1e-4 .. 100, every bucket) */
	r = measure((struct loop){run_summary, NULL}, badd, cheap / 2);
	print_line("summary_observe", r);
	print_target("summary_observe", r, 4);

	r = measure((struct loop){run_native, NULL}, badd, cheap / 2);
	print_line("native_histogram_observe", r);
	print_target("native_histogram_observe", r, 4);

	/* a 32-character trace id each time: label checks and the seqlock write */
	r = measure((struct loop){run_exemplar, NULL}, badd, cheap / 4);
	print_line("histogram_observe_with_exemplar", r);
	print_target("histogram_observe_with_exemplar", r, 15);

	r = measure((struct loop){run_label_lookup, NULL}, badd, lookup);
	print_line("label_lookup_inc_3", r);
	print_target("label_lookup_inc_3", r, 4);

	/* Two processes on one series (each in its own region) vs two
	 * processes on their own cache lines of one shared mapping; for
	 * contrast, the same cache line (adjacent cells) and the same cell. */
	double subj[2], own[2], line[2], same[2], subj_m[2], own_m[2], line_m[2], same_m[2];
	uint64_t *own0 = (uint64_t *)(void *)(shared + 8192), *own1 = (uint64_t *)(void *)(shared + 8192 + 4096);
	uint64_t *adj0 = (uint64_t *)(void *)(shared + 16384), *adj1 = adj0 + 1;
	struct loop sc_loop = {run_counter_inc, NULL};
	if (two_processes(sc_loop, sc_loop, cheap, subj, subj_m) != 0 ||
	    two_processes((struct loop){run_base_add, own0}, (struct loop){run_base_add, own1}, cheap, own, own_m) !=
		    0 ||
	    two_processes((struct loop){run_base_add, adj0}, (struct loop){run_base_add, adj1}, cheap, line, line_m) !=
		    0 ||
	    two_processes(badd, badd, cheap, same, same_m) != 0) {
		fprintf(stderr, "bench_writer: two processes: a child failed\n");
		return 1;
	}
	r.subj = (subj[0] + subj[1]) / 2;
	r.base = (own[0] + own[1]) / 2;
	print_line("two_process_same_series", r);
	printf("# two_process_same_series: per process %.3f and %.3f ns/op (median %.3f and %.3f); baseline, own "
	       "cache lines: %.3f and %.3f (median %.3f and %.3f)\n",
	       subj[0], subj[1], subj_m[0], subj_m[1], own[0], own[1], own_m[0], own_m[1]);
	printf("# two_process contrast (medians): same cache line, adjacent cells %.3f and %.3f ns/op; same cell "
	       "%.3f and %.3f ns/op (%.1fx and %.1fx the own-line median)\n",
	       line_m[0], line_m[1], same_m[0], same_m[1], (line_m[0] + line_m[1]) / (own_m[0] + own_m[1]),
	       (same_m[0] + same_m[1]) / (own_m[0] + own_m[1]));
	print_target("two_process_same_series", r, 1.2);

	double t1 = threads_same_series(1, cheap), t2 = threads_same_series(2, cheap), t8 = threads_same_series(8, cheap);
	if (t1 < 0 || t2 < 0 || t8 < 0) {
		fprintf(stderr, "bench_writer: threads: cannot start them\n");
		return 1;
	}
	printf("bench threads_same_series 1 %.3f 2 %.3f 8 %.3f ns/op per thread (its CPU time) ratio %.2f\n", t1, t2,
	       t8, t8 / t1);
	printf("# threads_same_series: 8 threads vs 1, per thread: target <= 1.2x (linear), %s (%.2fx)\n",
	       t8 / t1 <= 1.2 ? "met" : "MISSED", t8 / t1);
	return 0;
}
