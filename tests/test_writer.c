/* The writer in one process: registration rules and each type's arithmetic. */
#include "tsupport.h"
#include "shmetrics.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static const char *seg;

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("writer");
	/* the master, its children and the threads of one case, never folded */
	struct shmet_options o = {seg, 16, 1 << 20, 0, false};
	return shmet_init(&o);
}

static void test_writer_metric_names_validated(void **state)
{
	(void)state;
	shmet_family *f;
	const char *bad[] = {"", "1abc", "a-b", "a b", "é", "x\n"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		int rc = shmet_counter_register(&f, bad[i], "h", 0, NULL);
		if (rc != SHMET_E_INVALID_NAME)
			fail_msg("name \"%s\": expected %d, got %d (%s)", bad[i], SHMET_E_INVALID_NAME, rc, shmet_last_error());
		assert_null(f);
	}
	assert_int_equal(shmet_gauge_register(&f, "ok:name_1", "h", SHMET_GAUGE_SUM, 0, NULL), SHMET_OK);
	assert_int_equal(shmet_gauge_register(&f, "gauge_total", "h", SHMET_GAUGE_SUM, 0, NULL), SHMET_E_INVALID_NAME);
	assert_non_null(strstr(shmet_last_error(), "_total"));
}

static void test_writer_label_names_validated(void **state)
{
	(void)state;
	shmet_family *f;
	const char *reserved[] = {"__x"};
	assert_int_equal(shmet_counter_register(&f, "l1_total", "h", 1, reserved), SHMET_E_RESERVED_LABEL);
	const char *le[] = {"le"};
	assert_int_equal(shmet_histogram_register(&f, "l2_seconds", "h", NULL, 0, 1, le), SHMET_E_RESERVED_LABEL);
	assert_int_equal(shmet_counter_register(&f, "l3_total", "h", 1, le), SHMET_E_RESERVED_LABEL);
	const char *q[] = {"quantile"};
	assert_int_equal(shmet_summary_register(&f, "l4_seconds", "h", 1, q), SHMET_E_RESERVED_LABEL);
	const char *dup[] = {"a", "b", "a"};
	assert_int_equal(shmet_counter_register(&f, "l5_total", "h", 3, dup), SHMET_E_DUPLICATE_LABEL);
	const char *inval[] = {"a-b"};
	assert_int_equal(shmet_counter_register(&f, "l6_total", "h", 1, inval), SHMET_E_INVALID_LABEL);
	const char *digit[] = {"1a"};
	assert_int_equal(shmet_counter_register(&f, "l7_total", "h", 1, digit), SHMET_E_INVALID_LABEL);
	const char *worker[] = {"worker"};
	assert_int_equal(shmet_gauge_register(&f, "l8", "h", SHMET_GAUGE_PER_WORKER, 1, worker), SHMET_E_RESERVED_LABEL);
	assert_int_equal(shmet_gauge_register(&f, "l8", "h", SHMET_GAUGE_SUM, 1, worker), SHMET_OK);
}

static void test_writer_type_clash_refused(void **state)
{
	(void)state;
	shmet_family *a, *b;
	const char *l[] = {"x"};
	assert_int_equal(shmet_counter_register(&a, "clash_total", "h", 1, l), SHMET_OK);
	/* identical registration is idempotent (master and child may both register) */
	assert_int_equal(shmet_counter_register(&b, "clash_total", "h", 1, l), SHMET_OK);
	assert_ptr_equal(a, b);
	assert_int_equal(shmet_counter_register(&b, "clash", "h", 0, NULL), SHMET_E_TYPE_CLASH);
	assert_int_equal(shmet_gauge_register(&b, "clash", "h", SHMET_GAUGE_SUM, 0, NULL), SHMET_E_TYPE_CLASH);
	assert_int_equal(shmet_histogram_register(&b, "hclash", "h", NULL, 0, 0, NULL), SHMET_OK);
	assert_int_equal(shmet_gauge_register(&b, "hclash_count", "h", SHMET_GAUGE_SUM, 0, NULL), SHMET_E_TYPE_CLASH);
	assert_int_equal(shmet_summary_register(&b, "hclash", "h", 0, NULL), SHMET_E_TYPE_CLASH);
}

/* What shmet__family_bytes and shmet__series_bytes say a registration
 * takes is what it takes: the push API plans a request with them. */
static uint64_t region_used(void)
{
	/* the directory grows up, the cells down: used bytes up to a constant */
	const struct shmet_region_header *rg = (const struct shmet_region_header *)(const void *)shmet__base;
	return __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE) - __atomic_load_n(&rg->rg_cell_low, __ATOMIC_RELAXED);
}

static void test_writer_planned_bytes_match_registration(void **state)
{
	(void)state;
	const char *names[] = {"method", "route"};
	const double bounds[] = {0.1, 0.5, 2.5};
	struct shmet_family_spec specs[] = {
		{.type = SHMET_COUNTER, .name = "plan_requests", .help = "Requests, \"quoted\".", .nlabels = 2, .label_names = names},
		{.type = SHMET_GAUGE, .name = "plan_temp", .help = "", .gauge_mode = SHMET_GAUGE_MOSTRECENT},
		{.type = SHMET_HISTOGRAM, .name = "plan_seconds", .help = "h", .nlabels = 1, .label_names = names,
		 .nbuckets = 3, .buckets = bounds},
		{.type = SHMET_SUMMARY, .name = "plan_bytes", .help = "s", .nlabels = 2, .label_names = names},
	};
	const char *values[] = {"GET", "/a/longer/route/é"};
	for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
		shmet_family *f;
		size_t want = shmet__family_bytes(&specs[i]);
		uint64_t before = region_used();
		assert_int_equal(shmet_register(&specs[i], &f), SHMET_OK);
		if (region_used() - before != want)
			fail_msg("%s: planned %zu bytes, the registration took %llu", specs[i].name, want,
				 (unsigned long long)(region_used() - before));
		uint32_t nb = specs[i].type == SHMET_HISTOGRAM ? 3 : 0, off;
		want = shmet__series_bytes(specs[i].type, nb, (uint32_t)specs[i].nlabels, values);
		before = region_used();
		assert_int_equal(shmet_series_lookup(f, values, &off), SHMET_OK);
		if (region_used() - before != want)
			fail_msg("%s: a series planned at %zu bytes took %llu", specs[i].name, want,
				 (unsigned long long)(region_used() - before));
	}
	struct shmet_family_spec bad = {.type = SHMET_GAUGE, .name = "bad-name"};
	assert_int_equal(shmet__family_bytes(&bad), 0);
	assert_non_null(strstr(shmet_last_error(), "bad-name"));
}

static void test_writer_counter_arithmetic_exact(void **state)
{
	(void)state;
	shmet_family *f;
	const char *l[] = {"kind"};
	assert_int_equal(shmet_counter_register(&f, "arith", "Counter arithmetic.", 1, l), SHMET_OK);
	shmet_counter c = shmet_counter_labels(f, "a");
	assert_int_not_equal(c.off, 0);
	for (int i = 0; i < 1000; i++)
		shmet_counter_inc(c);
	shmet_counter_add(c, 2.5);
	shmet_counter_add(c, 0.25);
	shmet_counter_add(c, 7);
	shmet_counter_add_u64(c, 3);
	const char *v[] = {"a", NULL};
	assert_double_equal_exact(tsupport_value(seg, "arith_total", v), 1012.75);
	/* refused on the hot path: dropped and counted, never written */
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	struct shmet_region_info before, after;
	shmet_region_info(&s, (uint32_t)shmet_region_index(), &before);
	shmet_counter_add(c, -1);
	shmet_counter_add(c, NAN);
	shmet_counter_inc((shmet_counter){0});
	shmet_region_info(&s, (uint32_t)shmet_region_index(), &after);
	assert_int_equal(after.dropped - before.dropped, 3);
	assert_true(after.alive);
	shmet_segment_close(&s);
	assert_double_equal_exact(tsupport_value(seg, "arith_total", v), 1012.75);
}

/* A counter never goes down: an add_u64 past 2^53 (a negative difference
 * cast to uint64_t, say) is refused and counted, and a cell that reaches
 * 2^63 stays there instead of wrapping.  Constants spelled out, so that
 * the case also builds against a writer that knows no limits. */
#define T_ADD_MAX (UINT64_C(1) << 53)
#define T_WHOLE_MAX (UINT64_C(1) << 63)

static uint64_t *own_cell(shmet_counter c)
{
	shmet_region_index(); /* the base is set */
	return (uint64_t *)(void *)(shmet__base + c.off);
}

static uint64_t clamped(const uint64_t *cell)
{
	uint64_t v = __atomic_load_n(cell, __ATOMIC_RELAXED);
	return v > T_WHOLE_MAX ? T_WHOLE_MAX : v;
}

static void test_writer_counter_add_u64_never_wraps(void **state)
{
	(void)state;
	shmet_family *f;
	const char *l[] = {"case"};
	assert_int_equal(shmet_counter_register(&f, "wrap", "Counters near 2^64.", 1, l), SHMET_OK);
	shmet_counter c = shmet_counter_labels(f, "refused");
	assert_int_not_equal(c.off, 0);
	shmet_counter_add_u64(c, 10);
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	struct shmet_region_info before, after;
	shmet_region_info(&s, (uint32_t)shmet_region_index(), &before);
	shmet_counter_add_u64(c, (uint64_t)(int64_t)-1); /* "end - start" gone negative */
	shmet_counter_add_u64(c, T_ADD_MAX + 1);
	shmet_counter_add_u64(c, UINT64_C(1) << 63);
	shmet_region_info(&s, (uint32_t)shmet_region_index(), &after);
	shmet_segment_close(&s);
	const char *vr[] = {"refused", NULL};
	if (tsupport_value(seg, "wrap_total", vr) != 10)
		fail_msg("add_u64 past 2^53: expected refused (value 10), got %.17g", tsupport_value(seg, "wrap_total", vr));
	assert_int_equal(after.dropped - before.dropped, 3);
	shmet_counter_add_u64(c, T_ADD_MAX); /* the limit itself is taken */
	assert_double_equal_exact(tsupport_value(seg, "wrap_total", vr), 10.0 + (double)T_ADD_MAX);

	/* 2100 adds of 2^53 are 2^64 and more: the cell rises, then stays at 2^63 */
	shmet_counter sat = shmet_counter_labels(f, "saturated");
	uint64_t *cell = own_cell(sat), prev = 0;
	for (int i = 0; i < 2100; i++) {
		shmet_counter_add_u64(sat, T_ADD_MAX);
		uint64_t now = __atomic_load_n(cell, __ATOMIC_RELAXED);
		if (now < prev || now > T_WHOLE_MAX)
			fail_msg("add %d of 2^53: the cell went from %llu to %llu (at most 2^63, never down)", i + 1,
				 (unsigned long long)prev, (unsigned long long)now);
		prev = now;
	}
	assert_int_equal(prev, T_WHOLE_MAX);
	/* small adds and integral double adds at the top stay at the top */
	shmet_counter_add_u64(sat, 5);
	shmet_counter_add(sat, 3.0);
	assert_int_equal(__atomic_load_n(cell, __ATOMIC_RELAXED), T_WHOLE_MAX);
	const char *vs[] = {"saturated", NULL};
	assert_double_equal_exact(tsupport_value(seg, "wrap_total", vs), 9223372036854775808.0);
}

/* Threads adding just under 2^32 at a time, from just under the top, each
 * to cells of its own: what a reader sees of each (clamped at 2^63) only
 * rises and never passes 2^63, since one writer saturates exactly, and
 * the total is the sum of the four, exactly. */
#define WRAP_THREADS 4
static shmet_counter wrap_top;
static uint64_t *wrap_cells[WRAP_THREADS];

static void *wrap_adder(void *arg)
{
	uint64_t **mine = arg;
	for (int i = 0; i < 1023; i++)
		shmet_counter_add_u64(wrap_top, T_ADD_MAX);
	shmet_counter_add_u64(wrap_top, T_ADD_MAX - (UINT64_C(1) << 50)); /* 2^63 - 2^50 */
	/* the cell this thread writes (its region, at the handle's offset) */
	__atomic_store_n(mine, (uint64_t *)(void *)(shmet__own_base + wrap_top.off), __ATOMIC_RELEASE);
	for (int i = 0; i < 400000; i++)
		shmet_counter_add_u64(wrap_top, UINT32_MAX);
	return NULL;
}

static void test_writer_counter_concurrent_adds_saturate(void **state)
{
	(void)state;
	shmet_family *f;
	assert_int_equal(shmet_counter_register(&f, "wrap_top", "Counters at 2^63.", 0, NULL), SHMET_OK);
	wrap_top = shmet_counter_get(f, NULL);
	assert_int_not_equal(wrap_top.off, 0);
	pthread_t t[WRAP_THREADS];
	for (int i = 0; i < WRAP_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, wrap_adder, &wrap_cells[i]), 0);
	uint64_t prev[WRAP_THREADS] = {0}, top = 0;
	for (int k = 0; k < 500000; k++) {
		int i = k % WRAP_THREADS;
		/* acquire: the thread's pointer, published once it has a region */
		uint64_t *cell = __atomic_load_n(&wrap_cells[i], __ATOMIC_ACQUIRE);
		if (!cell)
			continue;
		uint64_t raw = __atomic_load_n(cell, __ATOMIC_RELAXED), now = clamped(cell);
		if (raw > top)
			top = raw;
		if (now < prev[i])
			fail_msg("a reader saw thread %d's counter go down: %llu then %llu", i, (unsigned long long)prev[i],
				 (unsigned long long)now);
		prev[i] = now;
	}
	for (int i = 0; i < WRAP_THREADS; i++)
		pthread_join(t[i], NULL);
	/* 400000 x (2^32 - 1) is about 2^50.6, past the 2^50 left: saturated midway */
	for (int i = 0; i < WRAP_THREADS; i++)
		assert_int_equal(__atomic_load_n(wrap_cells[i], __ATOMIC_RELAXED), T_WHOLE_MAX);
	if (top > T_WHOLE_MAX)
		fail_msg("a cell passed 2^63 by %llu", (unsigned long long)(top - T_WHOLE_MAX));
	assert_double_equal_exact(tsupport_value(seg, "wrap_top_total", NULL), 4.0 * 9223372036854775808.0);
}

static void test_writer_gauge_special_values_kept(void **state)
{
	(void)state;
	shmet_gauge g = shmet_gauge_new("temperature_celsius", "A gauge.", SHMET_GAUGE_SUM);
	assert_int_not_equal(g.off, 0);
	shmet_gauge_set(g, -3.5);
	assert_double_equal_exact(tsupport_value(seg, "temperature_celsius", NULL), -3.5);
	shmet_gauge_inc(g);
	shmet_gauge_add(g, 0.25);
	shmet_gauge_dec(g);
	assert_double_equal_exact(tsupport_value(seg, "temperature_celsius", NULL), -3.25);
	shmet_gauge_set(g, INFINITY);
	assert_double_equal_exact(tsupport_value(seg, "temperature_celsius", NULL), INFINITY);
	shmet_gauge_set(g, -INFINITY);
	assert_double_equal_exact(tsupport_value(seg, "temperature_celsius", NULL), -INFINITY);
	shmet_gauge_set(g, NAN);
	assert_true(isnan(tsupport_value(seg, "temperature_celsius", NULL)));
	shmet_gauge t = shmet_gauge_new("last_run_timestamp_seconds", "When.", SHMET_GAUGE_MOSTRECENT);
	shmet_gauge_set_to_current_time(t);
	double now = (double)time(NULL);
	double got = tsupport_value(seg, "last_run_timestamp_seconds", NULL);
	assert_true(got > now - 5 && got < now + 5);
}

static void test_writer_histogram_buckets_and_sum(void **state)
{
	(void)state;
	shmet_family *f;
	double b[3] = {0.1, 1, 10};
	const char *l[] = {"op"};
	assert_int_equal(shmet_histogram_register(&f, "latency_seconds", "Latency.", b, 3, 1, l), SHMET_OK);
	shmet_histogram h = shmet_histogram_labels(f, "read");
	double obs[] = {0.05, 0.1, 0.5, 1, 5, 10, 11, 1e9};
	double sum = 0;
	for (size_t i = 0; i < sizeof obs / sizeof *obs; i++)
		shmet_histogram_observe(h, obs[i]), sum += obs[i];
	shmet_histogram_observe(h, NAN); /* refused */
	struct shmet_segment s;
	struct shmet_snapshot snap;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	shmet_snapshot_take(&s, &snap);
	const struct shmet_snap_family *sf = shmet_snapshot_family(&snap, "latency_seconds");
	assert_non_null(sf);
	const char *v[] = {"read"};
	const struct shmet_snap_series *ss = shmet_snapshot_series(sf, v);
	assert_non_null(ss);
	/* le semantics: v <= bound */
	assert_int_equal(ss->agg.buckets[0], 2);
	assert_int_equal(ss->agg.buckets[1], 2);
	assert_int_equal(ss->agg.buckets[2], 2);
	assert_int_equal(ss->agg.buckets[3], 2);
	assert_int_equal(ss->agg.whole, 8);
	assert_double_equal_exact(ss->agg.value, sum);
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
	/* default buckets, the helpers, and a timer */
	double lin[4], ex[4];
	assert_int_equal(shmet_buckets_linear(lin, 4, 1, 2), SHMET_OK);
	assert_double_equal_exact(lin[3], 7);
	assert_int_equal(shmet_buckets_exponential(ex, 4, 1, 10), SHMET_OK);
	assert_double_equal_exact(ex[3], 1000);
	assert_int_equal(shmet_buckets_exponential(ex, 4, 0, 10), SHMET_E_BUCKETS);
	assert_int_equal(shmet_buckets_linear(lin, 0, 1, 2), SHMET_E_BUCKETS);
	double bad[] = {1, 1};
	assert_int_equal(shmet_histogram_register(&f, "bad_buckets", "h", bad, 2, 0, NULL), SHMET_E_BUCKETS);
	assert_int_equal(shmet_histogram_register(&f, "timer_seconds", "h", ex, 4, 0, NULL), SHMET_OK);
	shmet_histogram th = shmet_histogram_get(f, NULL);
	shmet_timer t = shmet_timer_start();
	shmet_histogram_observe_duration(th, t);
	assert_int_equal(tsupport_count(seg, "timer_seconds", NULL), 1);
	double d = tsupport_value(seg, "timer_seconds", NULL);
	assert_true(d >= 0 && d < 1);
}

static void test_writer_summary_count_and_sum(void **state)
{
	(void)state;
	shmet_family *f;
	assert_int_equal(shmet_summary_register(&f, "payload_bytes", "Sizes.", 0, NULL), SHMET_OK);
	shmet_summary s = shmet_summary_get(f, NULL);
	shmet_summary_observe(s, 100);
	shmet_summary_observe(s, 0.5);
	assert_int_equal(tsupport_count(seg, "payload_bytes", NULL), 2);
	assert_double_equal_exact(tsupport_value(seg, "payload_bytes", NULL), 100.5);
}

static void test_writer_label_values_utf8(void **state)
{
	(void)state;
	shmet_family *f;
	const char *l[] = {"v"};
	assert_int_equal(shmet_counter_register(&f, "utf8_total", "h", 1, l), SHMET_OK);
	shmet_counter ok = shmet_counter_labels(f, "ü日本 \"q\" \\ \n{},=");
	assert_int_not_equal(ok.off, 0);
	shmet_counter_inc(ok);
	const char *bad[] = {"\xff", "\xc0\xaf", "\xed\xa0\x80", "a\xe2\x82"};
	for (size_t i = 0; i < 4; i++) {
		uint32_t off = 1;
		const char *v[] = {bad[i]};
		assert_int_equal(shmet_series_lookup(f, v, &off), SHMET_E_INVALID_UTF8);
		assert_int_equal(off, 0);
	}
	shmet_counter same = shmet_counter_labels(f, "ü日本 \"q\" \\ \n{},=");
	assert_int_equal(same.off, ok.off);
	/* wrong type of handle for the family */
	shmet_gauge g = shmet_gauge_get(f, NULL);
	assert_int_equal(g.off, 0);
	assert_int_equal(shmet_series_lookup(f, NULL, &ok.off), SHMET_E_LABEL_COUNT);
}

static void test_writer_counter_name_gets_total(void **state)
{
	(void)state;
	shmet_counter c = shmet_counter_new("jobs_done", "Jobs.");
	shmet_counter_inc(c);
	assert_double_equal_exact(tsupport_value(seg, "jobs_done_total", NULL), 1);
}

static void test_writer_unset_min_gauge_takes_no_part(void **state)
{
	(void)state;
	shmet_gauge lo = shmet_gauge_new("queue_oldest_seconds", "Min over workers.", SHMET_GAUGE_MIN);
	shmet_gauge hi = shmet_gauge_new("queue_depth_max", "Max over workers.", SHMET_GAUGE_MAX);
	assert_true(isnan(tsupport_value(seg, "queue_oldest_seconds", NULL)) ||
		    tsupport_value(seg, "queue_oldest_seconds", NULL) == 0);
	pid_t pid = fork();
	if (pid == 0) { /* a child that never sets them must not drag min to 0 */
		shmet_gauge_set(hi, -5);
		sleep(2);
		_exit(0);
	}
	shmet_gauge_set(lo, 42);
	struct timespec t = {0, 200000000};
	nanosleep(&t, NULL);
	assert_double_equal_exact(tsupport_value(seg, "queue_oldest_seconds", NULL), 42);
	assert_double_equal_exact(tsupport_value(seg, "queue_depth_max", NULL), -5);
	kill(pid, SIGKILL);
	tsupport_wait(pid);
}

/* A set to exactly +0.0 leaves a max or min gauge's value word as a
 * never-set cell has it: it must still take part (above another process's
 * -5 for max, below its 3 for min), read back as 0, not -0, and an add
 * after it must work (SET MARK in shmetrics_layout.h: a max or min cell
 * starts at -Inf or +Inf, which a set overwrites with one store). */
static void test_writer_max_min_gauge_set_to_zero_takes_part(void **state)
{
	(void)state;
	shmet_gauge hi = shmet_gauge_new("zero_depth_max", "Max over workers.", SHMET_GAUGE_MAX);
	shmet_gauge lo = shmet_gauge_new("zero_depth_min", "Min over workers.", SHMET_GAUGE_MIN);
	shmet_gauge only = shmet_gauge_new("zero_only_max", "Max, one setter.", SHMET_GAUGE_MAX);
	shmet_gauge grow = shmet_gauge_new("zero_grow_max", "Max, set then added to.", SHMET_GAUGE_MAX);
	shmet_gauge added = shmet_gauge_new("zero_added_min", "Min, only added to.", SHMET_GAUGE_MIN);
	shmet_gauge unset = shmet_gauge_new("zero_unset_max", "Max, never set.", SHMET_GAUGE_MAX);
	int ready[2];
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	if (pid == 0) { /* below the parent's 0 for max, above it for min */
		shmet_gauge_set(hi, -5);
		shmet_gauge_set(lo, 3);
		char one = 1;
		if (write(ready[1], &one, 1) != 1)
			_exit(1);
		sleep(5);
		_exit(0);
	}
	char one;
	assert_int_equal(read(ready[0], &one, 1), 1);
	shmet_gauge_set(hi, 0.0);
	shmet_gauge_set(lo, 0.0);
	shmet_gauge_set(only, 0.0);
	shmet_gauge_set(grow, 0.0);
	shmet_gauge_add(grow, 2.5);
	shmet_gauge_add(added, -1.5); /* from the unset +Inf: an add starts at 0 */
	double max = tsupport_value(seg, "zero_depth_max", NULL), min = tsupport_value(seg, "zero_depth_min", NULL);
	double o = tsupport_value(seg, "zero_only_max", NULL);
	assert_double_equal_exact(max, 0);
	assert_false(signbit(max));
	assert_double_equal_exact(min, 0);
	assert_false(signbit(min));
	assert_false(isnan(o));
	assert_double_equal_exact(o, 0);
	assert_false(signbit(o));
	assert_double_equal_exact(tsupport_value(seg, "zero_grow_max", NULL), 2.5);
	assert_double_equal_exact(tsupport_value(seg, "zero_added_min", NULL), -1.5);
	(void)unset; /* made, never set: in no process */
	assert_true(isnan(tsupport_value(seg, "zero_unset_max", NULL)) || tsupport_value(seg, "zero_unset_max", NULL) == 0);
	kill(pid, SIGKILL);
	tsupport_wait(pid);
	close(ready[0]);
	close(ready[1]);
}

static void test_writer_second_segment_refused(void **state)
{
	(void)state;
	struct shmet_options same = {seg, 0, 0, 0, false}, other = {"/dev/shm/shmet-test-other", 0, 0, 0, false};
	assert_int_equal(shmet_init(&same), SHMET_OK);
	assert_int_equal(shmet_init(&other), SHMET_E_INVALID_ARG);
	assert_non_null(strstr(shmet_last_error(), "already attached"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_writer_metric_names_validated),
		cmocka_unit_test(test_writer_label_names_validated),
		cmocka_unit_test(test_writer_type_clash_refused),
		cmocka_unit_test(test_writer_planned_bytes_match_registration),
		cmocka_unit_test(test_writer_counter_arithmetic_exact),
		cmocka_unit_test(test_writer_counter_add_u64_never_wraps),
		cmocka_unit_test(test_writer_counter_concurrent_adds_saturate),
		cmocka_unit_test(test_writer_gauge_special_values_kept),
		cmocka_unit_test(test_writer_histogram_buckets_and_sum),
		cmocka_unit_test(test_writer_summary_count_and_sum),
		cmocka_unit_test(test_writer_label_values_utf8),
		cmocka_unit_test(test_writer_counter_name_gets_total),
		cmocka_unit_test(test_writer_unset_min_gauge_takes_no_part),
		cmocka_unit_test(test_writer_max_min_gauge_set_to_zero_takes_part),
		cmocka_unit_test(test_writer_second_segment_refused),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
