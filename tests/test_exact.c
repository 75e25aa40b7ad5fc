/* Exact float totals: a fold, a region's reuse or the order of processes
 * never changes an exposed counter value or _sum, bit for bit.  Floats whose
 * sum depends on the order of additions, real forked workers, kill -9 in a
 * random order, and a fold between every pair of reads. */
#include "tsupport.h"
#include "shmetrics.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *seg;
/* one series per case (label case="reported" / "random") */
struct handles {
	shmet_counter money;
	shmet_histogram lat;
	shmet_summary rpc;
	const char *label;
};
static struct handles reported = {{0}, {0, 0, NULL}, {0}, "reported"}, randomized = {{0}, {0, 0, NULL}, {0}, "random"};

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("exact");
	struct shmet_options o = {seg, 32, 1 << 16, 0, false};
	if (shmet_init(&o) != SHMET_OK)
		return -1;
	shmet_family *c, *h, *m;
	const char *l[] = {"case"};
	const double b[] = {1, 10, 100};
	if (shmet_counter_register(&c, "revenue_total", "Money taken.", 1, l) != SHMET_OK ||
	    shmet_histogram_register(&h, "latency_seconds", "", b, 3, 1, l) != SHMET_OK ||
	    shmet_summary_register(&m, "rpc_seconds", "", 1, l) != SHMET_OK)
		return -1;
	struct handles *all[] = {&reported, &randomized};
	for (int i = 0; i < 2; i++) {
		all[i]->money = shmet_counter_labels(c, all[i]->label);
		all[i]->lat = shmet_histogram_labels(h, all[i]->label);
		all[i]->rpc = shmet_summary_labels(m, all[i]->label);
		if (!all[i]->money.off || !all[i]->lat.off || !all[i]->rpc.off)
			return -1;
	}
	return 0;
}

static uint64_t bits(double d)
{
	uint64_t b;
	memcpy(&b, &d, sizeof b);
	return b;
}

#define assert_same_bits(a, b)                                                                        \
	do {                                                                                          \
		double a_ = (a), b_ = (b);                                                            \
		if (bits(a_) != bits(b_))                                                             \
			fail_msg("%s: expected %.17g, got %.17g", #a, b_, a_);                        \
	} while (0)

/* ---- the summation itself ---- */

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* A value of varied magnitude and decimal digits, as business and latency
 * figures are: 38.6, 0.000731, 1249.99, ... */
static double rng_value(uint64_t *s)
{
	static const double scale[] = {1, 10, 100, 1000, 1e4, 1e5, 1e6};
	double digits = (double)(rng_next(s) % 1000000);
	return digits / scale[rng_next(s) % 7];
}

static void test_exact_sum_is_order_free_and_correctly_rounded(void **state)
{
	(void)state;
	/* the three numbers of the report: their exact sum lies between 152.7
	 * and 152.70000000000002, nearer the latter (math.fsum agrees); added
	 * in another order they give 152.7 */
	const double three[] = {38.6, 49.2, 64.9};
	struct shmet_xsum xs;
	shmet_xsum_init(&xs);
	for (int i = 0; i < 3; i++)
		shmet_xsum_add(&xs, three[i]);
	assert_same_bits(shmet_xsum_round(&xs), 152.70000000000002);
	/* cancellation that naive summation gets entirely wrong */
	const double cancel[] = {1e100, 1.0, -1e100, 1e-100};
	shmet_xsum_init(&xs);
	for (int i = 0; i < 4; i++)
		shmet_xsum_add(&xs, cancel[i]);
	assert_same_bits(shmet_xsum_round(&xs), 1.0);
	/* a tie: 1 + 2^-53 is halfway, and rounds to even (1) unless the
	 * smaller rest pushes it up */
	shmet_xsum_init(&xs);
	shmet_xsum_add(&xs, 1.0);
	shmet_xsum_add(&xs, 0x1p-53);
	assert_same_bits(shmet_xsum_round(&xs), 1.0);
	shmet_xsum_add(&xs, 0x1p-106);
	assert_same_bits(shmet_xsum_round(&xs), 1.0 + 0x1p-52);

	/* random multisets in random orders: one answer, and it is the exact
	 * sum rounded once (checked against 113-bit arithmetic, exact here
	 * because these sums span fewer than 113 bits) */
	uint64_t s = 0x9e3779b97f4a7c15ull;
	for (int round = 0; round < 200; round++) {
		double v[300];
		int n = 1 + (int)(rng_next(&s) % 300);
		for (int i = 0; i < n; i++)
			v[i] = rng_value(&s);
		double first = 0;
		for (int order = 0; order < 5; order++) {
			for (int i = n - 1; i > 0; i--) {
				int j = (int)(rng_next(&s) % (uint64_t)(i + 1));
				double t = v[i];
				v[i] = v[j];
				v[j] = t;
			}
			shmet_xsum_init(&xs);
			for (int i = 0; i < n; i++)
				shmet_xsum_add(&xs, v[i]);
			double r = shmet_xsum_round(&xs);
			if (order == 0)
				first = r;
			assert_same_bits(r, first);
		}
#ifdef __SIZEOF_FLOAT128__
		__float128 q = 0;
		for (int i = 0; i < n; i++)
			q += v[i];
		assert_same_bits(first, (double)q);
#endif
		/* three components hold such a sum exactly */
		double c[3];
		assert_int_equal(shmet_xsum_split3(&xs, c), 1);
		struct shmet_xsum back;
		shmet_xsum_init(&back);
		for (int i = 0; i < 3; i++)
			shmet_xsum_add(&back, c[i]);
		assert_same_bits(shmet_xsum_round(&back), first);
	}
	/* infinities are summed apart; an integer past 2^53 joins exactly */
	shmet_xsum_init(&xs);
	shmet_xsum_add(&xs, INFINITY);
	shmet_xsum_add(&xs, 1.5);
	assert_true(isinf(shmet_xsum_round(&xs)));
	shmet_xsum_init(&xs);
	shmet_xsum_add_u64(&xs, UINT64_MAX);
	shmet_xsum_add_u64(&xs, UINT64_MAX);
	assert_same_bits(shmet_xsum_round(&xs), 2.0 * 18446744073709551616.0);
}

/* ---- across real processes ---- */

struct worker {
	pid_t pid;
	int ready[2];
};

/* A child that adds each of adds[] to the counter, observes it in the
 * histogram and summary, says so and waits to be killed. */
static void spawn(struct worker *w, const struct handles *hd, const double *adds, int n)
{
	assert_int_equal(pipe(w->ready), 0);
	w->pid = fork();
	assert_true(w->pid >= 0);
	if (w->pid == 0) {
		for (int i = 0; i < n; i++) {
			shmet_counter_add(hd->money, adds[i]);
			shmet_histogram_observe(hd->lat, adds[i]);
			shmet_summary_observe(hd->rpc, adds[i]);
		}
		char one = 1;
		if (write(w->ready[1], &one, 1) != 1)
			_exit(3);
		pause();
		_exit(0);
	}
	char one;
	assert_int_equal(read(w->ready[0], &one, 1), 1);
	close(w->ready[0]);
	close(w->ready[1]);
}

struct reading {
	double money, lat_sum, rpc_sum;
	uint64_t lat_count, rpc_count;
};

static struct reading read_all(const struct handles *hd)
{
	const char *v[] = {hd->label, NULL};
	struct reading r = {tsupport_value(seg, "revenue_total", v), tsupport_value(seg, "latency_seconds", v),
			    tsupport_value(seg, "rpc_seconds", v), tsupport_count(seg, "latency_seconds", v),
			    tsupport_count(seg, "rpc_seconds", v)};
	return r;
}

static void assert_same_reading(struct reading a, struct reading b)
{
	assert_same_bits(a.money, b.money);
	assert_same_bits(a.lat_sum, b.lat_sum);
	assert_same_bits(a.rpc_sum, b.rpc_sum);
	assert_int_equal(a.lat_count, b.lat_count);
	assert_int_equal(a.rpc_count, b.rpc_count);
}

/* The values a worker's cells hold after adds[]: the writer's own order,
 * replayed (whole adds to the integer cell, the rest to the double). */
static void replay(const double *adds, int n, struct shmet_xsum *money_xs, struct shmet_xsum *sum_xs)
{
	uint64_t whole = 0;
	double frac = 0, sum = 0;
	for (int i = 0; i < n; i++) {
		if (adds[i] < 9007199254740992.0 && adds[i] == (double)(uint64_t)adds[i])
			whole += (uint64_t)adds[i];
		else
			frac += adds[i];
		sum += adds[i];
	}
	shmet_xsum_add_u64(money_xs, whole);
	shmet_xsum_add(money_xs, frac);
	shmet_xsum_add(sum_xs, sum);
}

static void test_exact_fold_of_the_reported_case_changes_nothing(void **state)
{
	(void)state;
	const double v[3] = {38.6, 49.2, 64.9};
	struct worker w[3];
	for (int i = 0; i < 3; i++)
		spawn(&w[i], &reported, &v[i], 1);
	struct reading live = read_all(&reported);
	assert_same_bits(live.money, 152.70000000000002);
	assert_same_bits(live.lat_sum, 152.70000000000002);
	kill(w[2].pid, SIGKILL);
	tsupport_wait(w[2].pid);
	assert_same_reading(read_all(&reported), live);
	tsupport_fold(seg);
	assert_same_reading(read_all(&reported), live);
	for (int i = 0; i < 2; i++) {
		kill(w[i].pid, SIGKILL);
		tsupport_wait(w[i].pid);
		tsupport_fold(seg);
		assert_same_reading(read_all(&reported), live);
	}
}

/* Six workers add random fractional values; they are killed in a random
 * order, with a read before and after each kill and after each fold; then
 * new workers reuse the freed regions.  Every read equals the exact sum of
 * what the writers' cells held, rounded once. */
static void test_exact_random_kills_and_folds_keep_every_bit(void **state)
{
	(void)state;
	enum { WORKERS = 6, ADDS = 400 };
	uint64_t s = 0x2545f4914f6cdd1dull ^ (uint64_t)getpid();
	struct shmet_xsum money_xs, sum_xs;
	shmet_xsum_init(&money_xs);
	shmet_xsum_init(&sum_xs);
	for (int generation = 0; generation < 2; generation++) {
		struct worker w[WORKERS];
		static double adds[WORKERS][ADDS];
		for (int k = 0; k < WORKERS; k++) {
			for (int i = 0; i < ADDS; i++)
				adds[k][i] = rng_value(&s);
			spawn(&w[k], &randomized, adds[k], ADDS);
			replay(adds[k], ADDS, &money_xs, &sum_xs);
		}
		struct reading want = {shmet_xsum_round(&money_xs), shmet_xsum_round(&sum_xs), 0, 0, 0};
		uint64_t count = (uint64_t)(generation + 1) * WORKERS * ADDS;
		struct reading prev = read_all(&randomized);
		assert_same_bits(prev.money, want.money);
		assert_same_bits(prev.lat_sum, want.lat_sum);
		assert_same_bits(prev.rpc_sum, prev.lat_sum);
		assert_int_equal(prev.lat_count, count);
		int order[WORKERS];
		for (int k = 0; k < WORKERS; k++)
			order[k] = k;
		for (int k = WORKERS - 1; k > 0; k--) {
			int j = (int)(rng_next(&s) % (uint64_t)(k + 1)), t = order[k];
			order[k] = order[j];
			order[j] = t;
		}
		for (int k = 0; k < WORKERS; k++) {
			kill(w[order[k]].pid, SIGKILL);
			tsupport_wait(w[order[k]].pid);
			assert_same_reading(read_all(&randomized), prev);
			tsupport_fold(seg);
			assert_same_reading(read_all(&randomized), prev);
		}
	}
}

static shmet_counter big;

static int saturate_big(void)
{
	for (int i = 0; i < 1100; i++) /* past 2^63: the cell stays there */
		shmet_counter_add_u64(big, UINT64_C(1) << 53);
	return 0;
}

/* Whole parts past 2^64 in all: three dead workers at 2^63 each.  Readers
 * add whole parts exactly; so must the fold, or the counter would drop
 * from 3 * 2^63 to 2^64 - 1 when they are folded. */
static void test_exact_whole_parts_past_2_64_survive_the_fold(void **state)
{
	(void)state;
	shmet_family *f;
	assert_int_equal(shmet_counter_register(&f, "huge_total", "", 0, NULL), SHMET_OK);
	big = shmet_counter_get(f, NULL);
	struct worker w[3];
	for (int k = 0; k < 3; k++) {
		assert_int_equal(pipe(w[k].ready), 0);
		w[k].pid = fork();
		if (w[k].pid == 0) {
			saturate_big();
			char one = 1;
			if (write(w[k].ready[1], &one, 1) != 1)
				_exit(3);
			pause();
			_exit(0);
		}
		char one;
		assert_int_equal(read(w[k].ready[0], &one, 1), 1);
		close(w[k].ready[0]);
		close(w[k].ready[1]);
	}
	const double want = 3 * 9223372036854775808.0;
	assert_same_bits(tsupport_value(seg, "huge_total", NULL), want);
	for (int k = 0; k < 3; k++) {
		kill(w[k].pid, SIGKILL);
		tsupport_wait(w[k].pid);
		tsupport_fold(seg);
		assert_same_bits(tsupport_value(seg, "huge_total", NULL), want);
	}
}

static shmet_counter wide;
static double wide_add;

static int add_wide(void)
{
	shmet_counter_add(wide, wide_add);
	return 0;
}

/* The documented bound: three components hold 159 significant bits.  Four
 * dead workers whose adds span 1e-100 .. 1e200 need four; the fold keeps
 * the nearest and counts it, never silently. */
static void test_exact_fold_past_the_bound_is_counted(void **state)
{
	(void)state;
	shmet_family *f;
	assert_int_equal(shmet_counter_register(&f, "wide_total", "", 0, NULL), SHMET_OK);
	wide = shmet_counter_get(f, NULL);
	const double adds[] = {1e200, 1e100, 1.5, 1e-100};
	struct worker w[4];
	for (int k = 0; k < 4; k++) {
		wide_add = adds[k];
		assert_int_equal(pipe(w[k].ready), 0);
		w[k].pid = fork();
		if (w[k].pid == 0) {
			add_wide();
			char one = 1;
			if (write(w[k].ready[1], &one, 1) != 1)
				_exit(3);
			pause();
			_exit(0);
		}
		char one;
		assert_int_equal(read(w[k].ready[0], &one, 1), 1);
		close(w[k].ready[0]);
		close(w[k].ready[1]);
	}
	double before = tsupport_value(seg, "wide_total", NULL);
	for (int k = 0; k < 4; k++) {
		kill(w[k].pid, SIGKILL);
		tsupport_wait(w[k].pid);
	}
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	static struct shmet_fold_result res;
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s, err), SHMET_OK);
	assert_int_equal(shmet_segment_lock_collector(&s, NULL), SHMET_OK);
	assert_int_equal(shmet_fold_dead(&s, &res), SHMET_OK);
	shmet_free_folded(&s, &res);
	shmet_segment_close(&s);
	assert_true(res.inexact >= 1);
	/* the rounding lies far below what a double shows */
	assert_same_bits(tsupport_value(seg, "wide_total", NULL), before);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_sum_is_order_free_and_correctly_rounded),
		cmocka_unit_test(test_exact_fold_of_the_reported_case_changes_nothing),
		cmocka_unit_test(test_exact_random_kills_and_folds_keep_every_bit),
		cmocka_unit_test(test_exact_whole_parts_past_2_64_survive_the_fold),
		cmocka_unit_test(test_exact_fold_past_the_bound_is_counted),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
