/* Exemplars: the seqlock slot under several writer threads and a reader
 * (never a torn exemplar; busy writers drop and count), refusals, and
 * hostile slot bytes. */
#include "tsupport.h"
#include "shmetrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define WRITERS 4
#define ROUNDS 20000

static const char *seg_path;
static shmet_histogram hist;
static shmet_counter ctr;
static int stop_reader;
/* each writer thread's own slots (its cells: one writer per cell), published
 * for the reader once the thread has its region */
static const uint64_t *slot_of[WRITERS][2];

/* thread t, round i: trace_id of n = 1 + i % 60 letters 'a' + t, value
 * n * 1000 + t, timestamp n: any mix of two writes shows as a mismatch */
static void *writer(void *arg)
{
	int t = (int)(intptr_t)arg;
	char id[64];
	const char *first[] = {"trace_id", "a", NULL};
	shmet_counter_add_with_exemplar(ctr, 1000, first, 1); /* claims this thread's region */
	__atomic_store_n(&slot_of[t][0], (const uint64_t *)shmet__own(hist.ex) + 2 * SHMET_EXEMPLAR_WORDS,
			 __ATOMIC_RELEASE);
	__atomic_store_n(&slot_of[t][1], (const uint64_t *)shmet__own(ctr.ex), __ATOMIC_RELEASE);
	for (int i = 0; i < ROUNDS; i++) {
		int n = 1 + i % 60;
		memset(id, 'a' + t, (size_t)n);
		id[n] = 0;
		const char *pairs[] = {"trace_id", id, NULL};
		int rc = shmet_histogram_observe_with_exemplar(hist, n * 1000 + t, pairs, n);
		if (rc != SHMET_OK && rc != SHMET_E_BUSY)
			return (void *)1;
		rc = shmet_counter_add_with_exemplar(ctr, n * 1000 + t, pairs, n);
		if (rc != SHMET_OK && rc != SHMET_E_BUSY)
			return (void *)1;
	}
	return NULL;
}

static long whole_reads;

static int check(const struct shmet_exemplar *e)
{
	/* "trace_id\0<n letters>\0" */
	if (e->len < 11 || memcmp(e->pairs, "trace_id", 9) != 0)
		return 0;
	size_t n = strlen(e->pairs + 9);
	char c = e->pairs[9];
	for (size_t i = 0; i < n; i++)
		if (e->pairs[9 + i] != c)
			return 0;
	return e->len == 9 + n + 1 && e->value == (double)n * 1000 + (c - 'a') && e->ts == (double)n;
}

static void *reader(void *arg)
{
	(void)arg;
	/* all of the histogram's values land in its +Inf bucket (bounds 1, 2) */
	while (!__atomic_load_n(&stop_reader, __ATOMIC_RELAXED)) {
		for (int k = 0; k < 2 * WRITERS; k++) {
			struct shmet_exemplar e;
			const uint64_t *slot = __atomic_load_n(&slot_of[k / 2][k % 2], __ATOMIC_ACQUIRE);
			if (!slot || !shmet_exemplar_read(slot, &e))
				continue;
			if (!check(&e))
				return (void *)1;
			whole_reads++;
		}
	}
	return NULL;
}

static void test_exemplar_concurrent_writers_never_torn(void **state)
{
	(void)state;
	pthread_t w[WRITERS], r;
	assert_int_equal(pthread_create(&r, NULL, reader, NULL), 0);
	for (int t = 0; t < WRITERS; t++)
		assert_int_equal(pthread_create(&w[t], NULL, writer, (void *)(intptr_t)t), 0);
	void *res;
	for (int t = 0; t < WRITERS; t++) {
		assert_int_equal(pthread_join(w[t], &res), 0);
		assert_null(res);
	}
	__atomic_store_n(&stop_reader, 1, __ATOMIC_RELAXED);
	assert_int_equal(pthread_join(r, &res), 0);
	if (res)
		fail_msg("the reader saw a torn exemplar");
	assert_true(whole_reads > 0);
	/* every observation counted, exemplar or not */
	assert_int_equal(tsupport_count(seg_path, "ex_seconds", NULL), (uint64_t)WRITERS * ROUNDS);
}

static void test_exemplar_refused_and_hostile(void **state)
{
	(void)state;
	char big[200];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = 0; /* 199 characters: past 128 */
	const char *too_long[] = {"trace_id", big, NULL};
	assert_int_equal(shmet_counter_inc_with_exemplar(ctr, too_long, 0), SHMET_E_INVALID_ARG);
	const char *bad_name[] = {"0trace", "x", NULL};
	assert_int_equal(shmet_counter_inc_with_exemplar(ctr, bad_name, 0), SHMET_E_INVALID_ARG);
	const char *bad_utf8[] = {"trace_id", "\xff", NULL};
	assert_int_equal(shmet_counter_inc_with_exemplar(ctr, bad_utf8, 0), SHMET_E_INVALID_ARG);
	const char *ok[] = {"trace_id", "4bf92f3577b34da6a3ce929d0e0e4736", NULL};
	assert_int_equal(shmet_counter_inc_with_exemplar(ctr, ok, 1700000000.5), SHMET_OK);
	shmet_family *plain;
	assert_int_equal(shmet_counter_register(&plain, "ex_plain_total", "", 0, NULL), SHMET_OK);
	assert_int_equal(shmet_counter_inc_with_exemplar(shmet_counter_get(plain, NULL), ok, 0), SHMET_E_INVALID_ARG);
	/* hostile bytes in a slot: a length past the slot, then bytes that are
	 * no exemplar, then a writer that died mid-write (odd seq) */
	uint64_t *slot = shmet__own(ctr.ex); /* this thread's cells */
	struct shmet_exemplar e;
	assert_true(shmet_exemplar_read(slot, &e));
	/* the dump tool shows the slot */
	char cmd[512], *out;
	snprintf(cmd, sizeof cmd, "%s %s", tsupport_bin("shmetrics-dump"), seg_path);
	assert_int_equal(tsupport_run(cmd, &out), 0);
	if (!strstr(out, "exemplar {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 1 1.7000000005e+09") ||
	    !strstr(out, "exemplar le=+Inf {trace_id=\""))
		fail_msg("dump:\n%s", out);
	free(out);
	uint64_t keep = slot[4];
	slot[4] = 100000;
	assert_false(shmet_exemplar_read(slot, &e));
	slot[4] = keep;
	memcpy(&slot[5], "tr\xffid\0x\0", 8);
	assert_false(shmet_exemplar_read(slot, &e));
	slot[0] |= 1;
	assert_false(shmet_exemplar_read(slot, &e));
	assert_int_equal(shmet_counter_inc_with_exemplar(ctr, ok, 0), SHMET_E_BUSY); /* never waits */
}

int main(void)
{
	seg_path = tsupport_segment("exemplar");
	struct shmet_options o = {seg_path, 16, 1 << 17, 0, false}; /* a region per writing thread */
	shmet_family *h, *c;
	double b[] = {1, 2};
	struct shmet_family_spec hs = {.type = SHMET_HISTOGRAM, .name = "ex_seconds", .nbuckets = 2, .buckets = b,
				       .exemplars = true};
	struct shmet_family_spec cs = {.type = SHMET_COUNTER, .name = "ex_requests_total", .exemplars = true};
	if (shmet_init(&o) != SHMET_OK || shmet_register(&hs, &h) != SHMET_OK || shmet_register(&cs, &c) != SHMET_OK) {
		fprintf(stderr, "setup: %s\n", shmet_last_error());
		return 1;
	}
	hist = shmet_histogram_get(h, NULL);
	ctr = shmet_counter_get(c, NULL);
	if (!hist.ex || !ctr.ex)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exemplar_concurrent_writers_never_torn),
		cmocka_unit_test(test_exemplar_refused_and_hostile),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
