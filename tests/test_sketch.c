/* Summary quantiles merged across processes: the writer's bucket index, the
 * registration rules, accuracy against the exact quantiles of what 8
 * recycled (and killed) workers observed, and the collector's window. */
#include "tsupport.h"
#include "shmetrics.h"
#include "collector.h"

#include <math.h>
#include <sched.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }

static double rng_normal(uint64_t *s)
{
	double u = rng_unit(s), v = rng_unit(s);
	return sqrt(-2 * log(u > 0 ? u : 1e-300)) * cos(2 * M_PI * v);
}

/* The distributions: uniform on [1 ms, 1 s], log-normal around 50 ms, and
 * bimodal (10 ms and 2 s). */
enum { DIST_UNIFORM, DIST_LOGNORMAL, DIST_BIMODAL, NDIST };
static const char *const dist_name[NDIST] = {"sk_uniform_seconds", "sk_lognormal_seconds", "sk_bimodal_seconds"};

static double draw(int dist, uint64_t *s)
{
	switch (dist) {
	case DIST_UNIFORM:
		return 0.001 + rng_unit(s) * 0.999;
	case DIST_LOGNORMAL:
		return exp(log(0.05) + rng_normal(s));
	default:
		return rng_unit(s) < 0.7 ? fabs(0.01 + 0.001 * rng_normal(s)) : fabs(2 + 0.2 * rng_normal(s));
	}
}

/* ---- the writer's index is the readers' bucket definition ---- */

static void test_sketch_index_within_edges(void **state)
{
	(void)state;
	uint64_t seed = 42;
	struct shmet_options o = {tsupport_segment("sketch"), 8, 1 << 17, 0, false};
	assert_int_equal(shmet_init(&o), SHMET_OK);
	for (int schema = SHMET_SKETCH_MIN_SCHEMA; schema <= SHMET_SKETCH_MAX_SCHEMA; schema++) {
		/* the writer's tables for this schema, through a registration */
		char name[64];
		snprintf(name, sizeof name, "sk_index_%d", schema + 10);
		shmet_family *f;
		struct shmet_family_spec s = {.type = SHMET_SUMMARY, .name = name, .quantile_error =
						      shmet_sketch_rel_error(schema) * (1 + 1e-9),
					      .quantile_min = 0.1, .quantile_max = 10};
		assert_int_equal(shmet_register(&s, &f), SHMET_OK);
		const struct shmet__sketch_rt *k = shmet_summary_get(f, NULL).sk;
		assert_non_null(k);
		assert_int_equal(k->schema, schema);
		for (int n = 0; n < 20000; n++) {
			/* over many octaves, and exactly at edges */
			double v = n % 4 == 0 ? shmet_sketch_upper(schema, (int64_t)(rng_next(&seed) % 4000) - 2000)
					      : ldexp(1 + rng_unit(&seed), (int)(rng_next(&seed) % 200) - 100);
			if (!isnormal(v))
				continue; /* an edge past the doubles' range: not a positive normal */
			int32_t i = shmet__sketch_index(k, v);
			double lo = shmet_sketch_upper(schema, (int64_t)i - 1), hi = shmet_sketch_upper(schema, i);
			if (!(lo < v && v <= hi))
				fail_msg("schema %d: %.17g got bucket %d = (%.17g, %.17g]", schema, v, i, lo, hi);
		}
	}
}

static void test_sketch_registration_refuses_what_does_not_fit(void **state)
{
	(void)state;
	shmet_family *f;
	struct shmet_options o = {tsupport_segment("sketch"), 8, 1 << 17, 0, false};
	assert_int_equal(shmet_init(&o), SHMET_OK);
	assert_int_equal(shmet_summary_register_quantiles(&f, "sk_too_fine", "", 1e-4, 0, 0, 0, NULL),
			 SHMET_E_INVALID_ARG);
	assert_non_null(strstr(shmet_last_error(), "schema 8"));
	/* 0.2 % over 1e-300 .. 1e300: far more buckets than the limit */
	assert_int_equal(shmet_summary_register_quantiles(&f, "sk_too_wide", "", 0.002, 1e-300, 1e300, 0, NULL),
			 SHMET_E_INVALID_ARG);
	assert_non_null(strstr(shmet_last_error(), "buckets"));
	double bad[] = {0.9, 0.5};
	struct shmet_family_spec s = {.type = SHMET_SUMMARY, .name = "sk_bad_obj", .quantile_error = 0.02,
				      .nobjectives = 2, .objectives = bad};
	assert_int_equal(shmet_register(&s, &f), SHMET_E_INVALID_ARG);
	struct shmet_family_spec h = {.type = SHMET_HISTOGRAM, .name = "sk_hist", .quantile_error = 0.02};
	assert_int_equal(shmet_register(&h, &f), SHMET_E_INVALID_ARG);
	/* the sketch is part of the shape: a plain summary of that name clashes */
	assert_int_equal(shmet_summary_register_quantiles(&f, "sk_shape", "", 0.02, 0, 0, 0, NULL), SHMET_OK);
	assert_int_equal(shmet_summary_register(&f, "sk_shape", "", 0, NULL), SHMET_E_TYPE_CLASH);
	assert_non_null(strstr(shmet_last_error(), "quantiles {0.5,0.90000000000000002,0.98999999999999999}"));
	assert_int_equal(shmet_summary_register_quantiles(&f, "sk_shape", "", 0.01, 0, 0, 0, NULL), SHMET_E_TYPE_CLASH);
	/* 2 % over the default range: schema 4, 2.17 % */
	assert_int_equal(shmet_summary_register_quantiles(&f, "sk_default", "", 0.022, 0, 0, 0, NULL), SHMET_OK);
	assert_int_equal(shmet_summary_get(f, NULL).sk->schema, 4);
	assert_int_equal(shmet_summary_get(f, NULL).sk->count, 320);
}

/* ---- 8 recycled processes, quantiles against the exact ones ---- */

#define WORKERS 8
#define GENERATIONS 3
#define PER_WORKER 3000

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double worst_error[NDIST];

static void check_body(const char *body, double *const data[NDIST], size_t n, double alpha, const char *fmt)
{
	static const double qs[] = {0.5, 0.9, 0.99};
	static const char *const qtext[] = {"0.5", "0.9", "0.99"};
	for (int d = 0; d < NDIST; d++) {
		char line[128];
		snprintf(line, sizeof line, "%s_count", dist_name[d]);
		assert_double_equal_exact(tsupport_sample(body, line), (double)n);
		for (int q = 0; q < 3; q++) {
			snprintf(line, sizeof line, "%s{quantile=\"%s\"}", dist_name[d], qtext[q]);
			double got = tsupport_sample(body, line);
			double exact = data[d][(size_t)floor(qs[q] * (double)(n - 1))];
			double err = fabs(got - exact) / exact;
			if (!(err <= alpha * (1 + 1e-12)))
				fail_msg("%s %s: %.17g, exact %.17g: error %.4f%% > %.4f%%", fmt, line, got, exact,
					 100 * err, 100 * alpha);
			if (err > worst_error[d])
				worst_error[d] = err;
		}
	}
}

static void test_sketch_eight_recycled_processes_within_error(void **state)
{
	(void)state;
	const char *seg = tsupport_segment("sketch8");
	struct shmet_options o = {seg, 32, 1 << 17, 0, false};
	shmet_family *fam[NDIST];
	shmet_summary h[NDIST];
	/* the master: a child, so that this test process keeps no writer */
	pid_t runner = fork();
	if (runner == 0) {
		if (shmet_init(&o) != SHMET_OK)
			_exit(10);
		for (int d = 0; d < NDIST; d++) {
			if (shmet_summary_register_quantiles(&fam[d], dist_name[d], "Test.", 0.02, 1e-4, 100, 0, NULL))
				_exit(11);
			h[d] = shmet_summary_get(fam[d], NULL);
		}
		for (int g = 0; g < GENERATIONS; g++) {
			pid_t kids[WORKERS];
			for (int w = 0; w < WORKERS; w++) {
				kids[w] = fork();
				if (kids[w] == 0) {
					for (int d = 0; d < NDIST; d++) {
						uint64_t s = (uint64_t)(g * 1000 + w * 10 + d);
						for (int i = 0; i < PER_WORKER; i++)
							shmet_summary_observe(h[d], draw(d, &s));
					}
					if (g == 1)
						raise(SIGKILL); /* dead without a word: its counts must survive */
					_exit(0);
				}
			}
			for (int w = 0; w < WORKERS; w++)
				tsupport_wait(kids[w]);
		}
		_exit(0);
	}
	int st = tsupport_wait(runner);
	assert_int_equal(st, 0);
	/* every value observed, sorted */
	size_t n = (size_t)GENERATIONS * WORKERS * PER_WORKER;
	double *data[NDIST];
	for (int d = 0; d < NDIST; d++) {
		data[d] = malloc(n * sizeof *data[d]);
		assert_non_null(data[d]);
		size_t k = 0;
		for (int g = 0; g < GENERATIONS; g++)
			for (int w = 0; w < WORKERS; w++) {
				uint64_t s = (uint64_t)(g * 1000 + w * 10 + d);
				for (int i = 0; i < PER_WORKER; i++)
					data[d][k++] = draw(d, &s);
			}
		qsort(data[d], n, sizeof *data[d], cmp_double);
	}
	struct tdaemon dm;
	assert_int_equal(tsupport_daemon_start(&dm, seg, NULL), 0);
	char *body = NULL;
	/* wait (bounded) until every dead worker is folded: then the counts
	 * come from the retired half, which is what must keep them */
	for (int tries = 0; tries < 200; tries++) {
		free(body);
		assert_int_equal(tsupport_http_get(dm.port, "/metrics", NULL, &body, NULL), 200);
		if (tsupport_sample(body, "shmetricsd_folds_total") >= GENERATIONS * WORKERS)
			break;
		usleep(50000);
	}
	assert_true(tsupport_sample(body, "shmetricsd_folds_total") >= GENERATIONS * WORKERS);
	double alpha = shmet_sketch_rel_error(4);
	check_body(body, data, n, alpha, "text");
	free(body);
	assert_int_equal(tsupport_http_get(dm.port, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n",
					   &body, NULL),
			 200);
	check_body(body, data, n, alpha, "openmetrics");
	assert_non_null(strstr(body, "# TYPE sk_uniform_seconds summary\n"));
	free(body);
	assert_true(tsupport_daemon_log_clean(&dm)); /* no sanitizer report from the daemon */
	tsupport_daemon_stop(&dm, SIGTERM);
	print_message("measured worst relative error (bound %.4f%%): uniform %.4f%%, log-normal %.4f%%, bimodal %.4f%%\n",
		      100 * alpha, 100 * worst_error[0], 100 * worst_error[1], 100 * worst_error[2]);
	for (int d = 0; d < NDIST; d++)
		free(data[d]);
}

/* ---- the window: counts now minus the oldest snapshot kept ---- */

static void render(struct collector *c, shmet_buf *b)
{
	shmet_buf_reset(b);
	const struct view *v = view_enter(c);
	render_metrics(c, v, b, SHMET_EXPO_TEXT);
	view_leave(c);
}

static void test_sketch_window_moves_and_count_stays(void **state)
{
	(void)state;
	const char *seg = tsupport_segment("sketchwin");
	pid_t runner = fork();
	if (runner == 0) {
		struct shmet_options o = {seg, 8, 1 << 16, 0, false};
		shmet_family *f;
		struct shmet_family_spec s = {.type = SHMET_SUMMARY, .name = "sk_win_seconds", .quantile_error = 0.02,
					      .max_age = 10, .age_buckets = 2};
		if (shmet_init(&o) != SHMET_OK || shmet_register(&s, &f) != SHMET_OK)
			_exit(10);
		shmet_summary h = shmet_summary_get(f, NULL);
		struct collector c;
		struct collector_config cfg = {.segment = seg, .listen_host = "127.0.0.1", .scan_interval = 1};
		char err[256];
		for (int i = 0; i < 100; i++)
			shmet_summary_observe(h, 0.01); /* A */
		if (collector_open(&c, &cfg, err, sizeof err) != SHMET_OK)
			_exit(11);
		/* the scans of collector_open saw the series at the real time: from
		 * here the test's own clock, far later, moves the window */
		uint64_t t = shmet__now_ns(CLOCK_MONOTONIC) + UINT64_C(1000000) * 1000000000u, p = UINT64_C(5000000000);
		shmet_buf b;
		shmet_buf_init(&b);
		sketchwin_tick(&c, c.view, t); /* snapshots: 0, A */
		for (int i = 0; i < 100; i++)
			shmet_summary_observe(h, 1.0); /* B */
		render(&c, &b);
		double q5 = tsupport_sample(b.data, "sk_win_seconds{quantile=\"0.5\"}");
		if (!(fabs(q5 - 0.01) <= 0.01 * 0.022)) /* A and B: the median is the 99th value, in A */
			_exit(12);
		sketchwin_tick(&c, c.view, t + p); /* snapshots: A, A+B: the window is B */
		render(&c, &b);
		if (!(fabs(tsupport_sample(b.data, "sk_win_seconds{quantile=\"0.5\"}") - 1) <= 0.022) ||
		    !(fabs(tsupport_sample(b.data, "sk_win_seconds{quantile=\"0.99\"}") - 1) <= 0.022) ||
		    tsupport_sample(b.data, "sk_win_seconds_count") != 200)
			_exit(13);
		sketchwin_tick(&c, c.view, t + p / 2 * 3); /* not due yet: nothing moves */
		render(&c, &b);
		if (!(fabs(tsupport_sample(b.data, "sk_win_seconds{quantile=\"0.5\"}") - 1) <= 0.022))
			_exit(14);
		sketchwin_tick(&c, c.view, t + 2 * p); /* A+B, A+B: nothing in the window */
		render(&c, &b);
		if (!strstr(b.data, "sk_win_seconds{quantile=\"0.5\"} NaN\n") ||
		    tsupport_sample(b.data, "sk_win_seconds_count") != 200 ||
		    fabs(tsupport_sample(b.data, "sk_win_seconds_sum") - (100 * 0.01 + 100)) > 1e-9)
			_exit(15);
		shmet_buf_free(&b);
		collector_close(&c);
		_exit(0);
	}
	assert_int_equal(tsupport_wait(runner), 0);
}

/* ---- kill -9 mid-observe, recycled regions, hostile bytes ---- */

/* The series' count and sketch counts in an area (0 when absent there). */
static int area_counts(const struct shmet_area *a, const char *name, uint64_t *count, uint64_t *sk, uint32_t *nslots)
{
	struct shmet_dir_iter it;
	static struct shmet_record r;
	int rc, found = 0;
	shmet_dir_begin(&it, a);
	while ((rc = shmet_dir_next(&it, &r, NULL)) != 0) {
		if (rc < 0 || r.kind != SHMET_REC_SERIES || r.fam.name_len != strlen(name) ||
		    memcmp(r.fam.name, name, r.fam.name_len) || !r.fam.sk.count)
			continue;
		const uint64_t *c = (const uint64_t *)(const void *)(a->base + r.series.cell_off);
		*count = shmet_sat_add(*count, __atomic_load_n(&c[0], __ATOMIC_RELAXED));
		*nslots = r.fam.sk.count + 2;
		shmet_sketch_load_add(sk, c + shmet_sketch_cell(r.fam.type, r.fam.nbuckets, a->retired), *nslots);
		found = 1;
	}
	return found;
}

/* After a fold that freed every dead region, with no live writer: the
 * retired half holds everything. */
static void retired_counts(const char *path, const char *name, uint64_t *count, uint64_t *sk, uint32_t *nslots)
{
	struct shmet_segment seg;
	char err[SHMET_ERRBUF];
	struct shmet_area a;
	assert_int_equal(shmet_segment_open(path, SHMET_ATTACH_READONLY, NULL, &seg, err), SHMET_OK);
	assert_int_equal(shmet_retired_area(&seg, shmet_retired_active(&seg), &a, err), SHMET_OK);
	*count = 0;
	memset(sk, 0, SHMET_MAX_SKETCH_BUCKETS * 8 + 16);
	assert_true(area_counts(&a, name, count, sk, nslots));
	shmet_segment_close(&seg);
}

static void test_sketch_kill9_mid_observe_never_loses_or_tears(void **state)
{
	(void)state;
	const char *seg = tsupport_segment("sketchkill");
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t runner = fork();
	if (runner == 0) {
		/* the master: registers, then forks observers the test kills;
		 * each goes when its parent does, so a failing test leaks none */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(fds[0]);
		struct shmet_options o = {seg, 8, 1 << 16, 0, false};
		shmet_family *f;
		if (shmet_init(&o) != SHMET_OK ||
		    shmet_summary_register_quantiles(&f, "sk_kill_seconds", "", 0.02, 0, 0, 0, NULL) != SHMET_OK)
			_exit(10);
		shmet_summary h = shmet_summary_get(f, NULL);
		for (int round = 0; round < 3; round++) {
			pid_t kids[4];
			for (int k = 0; k < 4; k++) {
				if ((kids[k] = fork()) == 0) {
					prctl(PR_SET_PDEATHSIG, SIGKILL);
					uint64_t r = (uint64_t)(round * 10 + k);
					shmet_summary_observe(h, 0.5); /* the region is claimed before the pid is sent */
					for (;;)
						shmet_summary_observe(h, draw(DIST_LOGNORMAL, &r));
				}
			}
			if (write(fds[1], kids, sizeof kids) != (ssize_t)sizeof kids)
				_exit(11);
			for (int k = 0; k < 4; k++)
				tsupport_wait(kids[k]);
		}
		_exit(0);
	}
	close(fds[1]);
	static uint64_t prev[SHMET_MAX_SKETCH_BUCKETS + 2], now[SHMET_MAX_SKETCH_BUCKETS + 2];
	uint64_t prev_count = 0;
	uint32_t nslots = 0;
	for (int round = 0; round < 3; round++) {
		pid_t kids[4];
		assert_int_equal(read(fds[0], kids, sizeof kids), (ssize_t)sizeof kids);
		for (int spin = 0; spin < 50; spin++) /* let them observe a while, no clock */
			sched_yield();
		for (int k = 0; k < 4; k++)
			kill(kids[k], SIGKILL);
		/* the master reaps them; fold until every one of them is folded */
		for (int tries = 0; tries < 200; tries++) {
			usleep(10000);
			tsupport_fold(seg);
			uint64_t count;
			retired_counts(seg, "sk_kill_seconds", &count, now, &nslots);
			if (count >= prev_count + 4)
				break;
		}
		uint64_t count, in_buckets = 0;
		retired_counts(seg, "sk_kill_seconds", &count, now, &nslots);
		for (uint32_t i = 0; i < nslots; i++) {
			in_buckets += now[i];
			if (now[i] < prev[i])
				fail_msg("round %d: sketch count %u went down: %llu -> %llu", round, i,
					 (unsigned long long)prev[i], (unsigned long long)now[i]);
		}
		/* a worker killed between its count and its bucket leaves the
		 * count one ahead, never behind: at most 4 per round */
		if (!(count >= in_buckets && count - in_buckets <= 4u * (round + 1)) || count < prev_count + 4)
			fail_msg("round %d: count %llu, in buckets %llu, before %llu", round, (unsigned long long)count,
				 (unsigned long long)in_buckets, (unsigned long long)prev_count);
		memcpy(prev, now, sizeof prev);
		prev_count = count;
	}
	assert_int_equal(tsupport_wait(runner), 0);
	close(fds[0]);
}

static void test_sketch_hostile_block_and_counts_survived(void **state)
{
	(void)state;
	const char *seg = tsupport_segment("sketchhostile");
	pid_t runner = fork();
	if (runner == 0) {
		struct shmet_options o = {seg, 8, 1 << 16, 0, false};
		shmet_family *f, *g;
		if (shmet_init(&o) != SHMET_OK ||
		    shmet_summary_register_quantiles(&f, "sk_hostile_seconds", "", 0.02, 0, 0, 0, NULL) != SHMET_OK ||
		    shmet_summary_register_quantiles(&g, "sk_huge_seconds", "", 0.02, 0, 0, 0, NULL) != SHMET_OK)
			_exit(10);
		shmet_summary h = shmet_summary_get(f, NULL), hg = shmet_summary_get(g, NULL);
		for (int i = 0; i < 10; i++)
			shmet_summary_observe(h, 0.1), shmet_summary_observe(hg, 0.1);
		/* find the two records in this process's region, through libshm */
		struct shmet_segment rs;
		char err[SHMET_ERRBUF];
		struct shmet_area a;
		if (shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &rs, err) ||
		    shmet_region_area(&rs, (uint32_t)shmet_region_index(), &a, err))
			_exit(11);
		struct shmet_dir_iter it;
		static struct shmet_record r;
		uint32_t fam_end = 0, fam_sklen = 0, huge_cells = 0, huge_first = 0;
		shmet_dir_begin(&it, &a);
		while (shmet_dir_next(&it, &r, NULL) > 0) {
			if (r.kind == SHMET_REC_FAMILY && r.fam.name_len == 18 && !memcmp(r.fam.name, "sk_hostile_seconds", 18))
				fam_end = r.fam.off + r.fam.rec_size, fam_sklen = r.fam.sketch_len;
			if (r.kind == SHMET_REC_SERIES && r.fam.name_len == 15 && !memcmp(r.fam.name, "sk_huge_seconds", 15))
				huge_cells = r.series.cell_off, huge_first = shmet_sketch_cell(r.fam.type, r.fam.nbuckets, 0);
		}
		shmet_segment_close(&rs);
		if (!fam_end || !fam_sklen || !huge_cells)
			_exit(12);
		/* hostile bytes: a schema past 8 in the region's copy of the block,
		 * and counts near 2^64 in the other sketch */
		int32_t bad = 99;
		memcpy(shmet__base + fam_end - fam_sklen, &bad, 4);
		uint64_t *c = (uint64_t *)(void *)(shmet__base + huge_cells) + huge_first;
		for (uint32_t i = 0; i < 322; i++)
			__atomic_store_n(&c[i], UINT64_MAX - i, __ATOMIC_RELAXED);
		struct collector col;
		struct collector_config cfg = {.segment = seg, .listen_host = "127.0.0.1", .scan_interval = 1};
		if (collector_open(&col, &cfg, err, sizeof err) != SHMET_OK)
			_exit(13);
		shmet_buf b;
		shmet_buf_init(&b);
		render(&col, &b);
		/* the damaged record is refused and counted: its series is not shown */
		if (strstr(b.data, "sk_hostile_seconds") || !(tsupport_sample(b.data, "shmetricsd_corrupt_records_total") >= 1))
			_exit(14);
		/* saturated counts: finite quantiles inside the window, count untouched */
		double q = tsupport_sample(b.data, "sk_huge_seconds{quantile=\"0.99\"}");
		if (!(q > 0 && isfinite(q)) || tsupport_sample(b.data, "sk_huge_seconds_count") != 10)
			_exit(15);
		shmet_buf_free(&b);
		collector_close(&col);
		_exit(0);
	}
	assert_int_equal(tsupport_wait(runner), 0);
}

int main(void)
{
	/* the tests that fork writers of their own segment first: a child
	 * inherits its parent's writer once the parent has one */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sketch_eight_recycled_processes_within_error),
		cmocka_unit_test(test_sketch_window_moves_and_count_stays),
		cmocka_unit_test(test_sketch_kill9_mid_observe_never_loses_or_tears),
		cmocka_unit_test(test_sketch_hostile_block_and_counts_survived),
		cmocka_unit_test(test_sketch_index_within_edges),
		cmocka_unit_test(test_sketch_registration_refuses_what_does_not_fit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
