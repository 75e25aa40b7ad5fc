/* Threads of one process, each the one writer of its cells (WRITING
 * THREADS in shmetrics_layout.h): totals stay exact and never go down
 * while threads write, exit, give their regions to the fold, and while
 * the process forks; a thread's region is reused after its fold. */
#define SHMETRICS_IMPLEMENTATION
#include "shmetrics.h"

#include "tsupport.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REGIONS 24

/* ThreadSanitizer cannot start threads in the child of a threaded fork:
 * there the child writes from its one thread only. */
#if defined(__SANITIZE_THREAD__)
#define CHILD_THREAD_INCS 0
#else
#define CHILD_THREAD_INCS 3333
#endif

static const char *seg;
static shmet_counter hits, late;
static shmet_histogram lat;
static shmet_summary sizes;
static shmet_family *fam;
static shmet_gauge busy, depth;

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("threads");
	struct shmet_options o = {seg, REGIONS, 1 << 16, 0, false};
	if (shmet_init(&o) != SHMET_OK)
		return -1;
	shmet_family *fh, *fs;
	const double b[] = {1, 2, 4};
	const char *l[] = {"k"};
	if (shmet_counter_register(&fam, "thread_hits_total", "Increments.", 1, l) != SHMET_OK ||
	    shmet_histogram_register(&fh, "thread_latency_seconds", "Observations.", b, 3, 0, NULL) != SHMET_OK ||
	    shmet_summary_register(&fs, "thread_sizes_bytes", "Observations.", 0, NULL) != SHMET_OK)
		return -1;
	busy = shmet_gauge_new("thread_busy", "Per worker.", SHMET_GAUGE_PER_WORKER);
	depth = shmet_gauge_new("thread_depth", "Summed.", SHMET_GAUGE_SUM);
	hits = shmet_counter_labels(fam, "hits");
	lat = shmet_histogram_get(fh, NULL);
	sizes = shmet_summary_get(fs, NULL);
	return hits.off && lat.off && sizes.off ? 0 : -1;
}

static const char *const hits_v[] = {"hits", NULL};

/* Fold what is dead, then the hits total a case starts from. */
static double hits_after_fold(void)
{
	tsupport_fold(seg);
	return tsupport_value(seg, "thread_hits_total", hits_v);
}

static struct shmet_region_info region(uint32_t i)
{
	struct shmet_segment s;
	struct shmet_region_info info;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	shmet_region_info(&s, i, &info);
	shmet_segment_close(&s);
	return info;
}

static int live_regions(void)
{
	int n = 0;
	for (uint32_t i = 0; i < REGIONS; i++)
		n += region(i).state == SHMET_REGION_LIVE;
	return n;
}

/* ---- many threads, exiting mid-stream, while a collector scrapes and folds */

#define WAVES 6
#define PER_WAVE 4
#define INCS 200000

static void *incrementer(void *arg)
{
	long n = (long)(intptr_t)arg;
	for (long i = 0; i < n; i++) {
		shmet_counter_inc(hits);
		if (i % 4 == 0)
			shmet_histogram_observe(lat, (double)(i % 5)); /* 0,1,2,3,4: every bucket */
	}
	return NULL;
}

static void test_threads_exit_midstream_while_folding_totals_exact(void **state)
{
	(void)state;
	const char *v[] = {"hits", NULL};
	double before = tsupport_value(seg, "thread_hits_total", v);
	uint64_t count_before = tsupport_count(seg, "thread_latency_seconds", NULL);
	double sum_before = tsupport_value(seg, "thread_latency_seconds", NULL);
	if (count_before == UINT64_MAX)
		count_before = 0, sum_before = 0;
	double prev = before, prev_sum = sum_before;
	uint64_t prev_count = count_before;
	long total = 0;
	int scrapes = 0;
	for (int w = 0; w < WAVES; w++) {
		pthread_t t[PER_WAVE];
		for (int i = 0; i < PER_WAVE; i++) {
			long n = INCS / (i + 1); /* they end at different moments */
			total += n;
			assert_int_equal(pthread_create(&t[i], NULL, incrementer, (void *)(intptr_t)n), 0);
		}
		/* scrape and fold while they run and as they exit */
		for (int k = 0; k < 20; k++, scrapes++) {
			double now = tsupport_value(seg, "thread_hits_total", v);
			uint64_t c = tsupport_count(seg, "thread_latency_seconds", NULL);
			double sum = tsupport_value(seg, "thread_latency_seconds", NULL);
			if (now < prev || c < prev_count || sum < prev_sum)
				fail_msg("scrape %d went down: total %.17g -> %.17g, count %llu -> %llu, sum %.17g -> %.17g",
					 scrapes, prev, now, (unsigned long long)prev_count, (unsigned long long)c, prev_sum,
					 sum);
			prev = now, prev_count = c, prev_sum = sum;
			tsupport_fold(seg);
		}
		for (int i = 0; i < PER_WAVE; i++)
			pthread_join(t[i], NULL);
		/* the wave's regions go back: folded, freed, free for the next */
		tsupport_fold(seg);
		assert_int_equal(live_regions(), 1);
	}
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), before + (double)total);
	/* each thread observed 0..4 in turn: n/4 rounded up observations */
	uint64_t obs = 0;
	double sum = 0;
	for (int w = 0; w < WAVES; w++)
		for (int i = 0; i < PER_WAVE; i++)
			for (long j = 0, n = INCS / (i + 1); j < n; j += 4)
				obs++, sum += (double)(j % 5);
	assert_int_equal(tsupport_count(seg, "thread_latency_seconds", NULL), count_before + obs);
	assert_double_equal_exact(tsupport_value(seg, "thread_latency_seconds", NULL), sum_before + sum);
}

/* ---- a thread's region: its own, given back at exit, folded, reused */

struct one {
	long n;
	int also_late;       /* increments the late series as often */
	int region;          /* the region it wrote, read from its slot */
	pthread_barrier_t *hold; /* when set, it waits here before it exits */
};

/* The region whose cells the calling thread writes. */
static int own_region(void)
{
	if (!shmet__own_base)
		return -1;
	unsigned char *r0 = shmet_seg_region(&shmet__st.map, 0);
	return (int)((uint64_t)(shmet__own_base - r0) / shmet__st.map.region_size);
}

static void *one_thread(void *arg)
{
	struct one *o = arg;
	for (long i = 0; i < o->n; i++) {
		shmet_counter_inc(hits);
		if (o->also_late)
			shmet_counter_inc(late);
	}
	o->region = own_region();
	if (o->hold) {
		pthread_barrier_wait(o->hold);
		pthread_barrier_wait(o->hold);
		/* a series made since this thread took its region */
		for (int i = 0; i < 1000; i++)
			shmet_counter_inc(late);
	}
	return NULL;
}

static void test_threads_region_own_given_back_folded_reused(void **state)
{
	(void)state;
	const char *const *v = hits_v;
	double before = hits_after_fold();
	shmet_counter_inc(hits); /* the main thread writes the process's region */
	int home = shmet_region_index();
	pthread_barrier_t hold;
	assert_int_equal(pthread_barrier_init(&hold, NULL, 2), 0);
	struct one a = {1000, 0, -1, &hold};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, one_thread, &a), 0);
	pthread_barrier_wait(&hold); /* it has written and holds its region */
	assert_true(a.region >= 0);
	assert_int_not_equal(a.region, home);
	struct shmet_region_info info = region((uint32_t)a.region);
	assert_int_equal(info.state, SHMET_REGION_LIVE);
	assert_true(info.alive);
	assert_int_equal(info.parent, (uint32_t)home);
	assert_int_equal(info.pid, (uint32_t)getpid());
	/* a series made now reaches the thread's region too, at the same
	 * offset: the thread's increments of it count */
	late = shmet_counter_labels(fam, "late");
	assert_int_not_equal(late.off, 0);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), before + 1001);
	pthread_barrier_wait(&hold); /* let it exit */
	pthread_join(t, NULL);
	pthread_barrier_destroy(&hold);

	/* exited: dead, counted, then folded without a change, then free */
	info = region((uint32_t)a.region);
	assert_int_equal(info.state, SHMET_REGION_LIVE);
	assert_false(info.alive);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), before + 1001);
	const char *lv[] = {"late", NULL};
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", lv), 1000);
	tsupport_fold(seg);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), before + 1001);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", lv), 1000);
	struct shmet_region_info freed = region((uint32_t)a.region);
	assert_int_equal(freed.state, SHMET_REGION_FREE);

	/* the next thread gets that region again, one generation later, with
	 * the whole directory: the late series counts there */
	struct one b = {500, 1, -1, NULL};
	assert_int_equal(pthread_create(&t, NULL, one_thread, &b), 0);
	pthread_join(t, NULL);
	assert_int_equal(b.region, a.region);
	struct shmet_region_info again = region((uint32_t)b.region);
	assert_int_equal(again.generation, info.generation + 1);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), before + 1501);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", lv), 1500);
	tsupport_fold(seg);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), before + 1501);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", lv), 1500);
}

/* ---- fork from a process whose threads write */

struct forker {
	pthread_barrier_t *go;
	long n;
	pid_t child;
	/* every parent thread has claimed its region (its one allocation)
	 * before the fork: a child may not call malloc when another thread
	 * held an allocator lock at the fork, and ASan's allocator, unlike
	 * glibc's, does not reset its locks in the child */
	pthread_barrier_t *claimed;
};

static void *writer_thread(void *arg)
{
	struct forker *f = arg;
	for (long i = 0; i < f->n; i++) {
		shmet_counter_inc(hits);
		shmet_summary_observe(sizes, 2.0);
		if (i == 0 && f->claimed)
			pthread_barrier_wait(f->claimed);
	}
	pthread_barrier_wait(f->go);
	return NULL;
}

static void *forking_thread(void *arg)
{
	struct forker *f = arg;
	for (long i = 0; i < f->n; i++)
		shmet_counter_inc(hits); /* this thread has a region of its own */
	pthread_barrier_wait(f->claimed);
	int mine = own_region();
	pid_t pid = fork();
	if (pid == 0) {
		/* one thread now, the forking one: its writes go to a region of
		 * the child's, never to the parent's threads' regions */
		for (int i = 0; i < 7777; i++) {
			shmet_counter_inc(hits);
			shmet_summary_observe(sizes, 0.5);
		}
		if (own_region() == mine || own_region() != shmet_region_index())
			_exit(4);
		if (CHILD_THREAD_INCS) { /* and a thread of the child's, with a region of its own */
			pthread_t t;
			struct forker g = {NULL, CHILD_THREAD_INCS, 0};
			pthread_barrier_t go;
			pthread_barrier_init(&go, NULL, 2);
			g.go = &go;
			if (pthread_create(&t, NULL, writer_thread, &g) != 0)
				_exit(3);
			pthread_barrier_wait(&go);
			pthread_join(t, NULL);
		}
		_exit(shmet_region_index() >= 0 ? 0 : 2);
	}
	f->child = pid;
	pthread_barrier_wait(f->go);
	return NULL;
}

static void test_threads_fork_from_threaded_process_totals_exact(void **state)
{
	(void)state;
	const char *const *v = hits_v;
	double before = hits_after_fold();
	uint64_t sc = tsupport_count(seg, "thread_sizes_bytes", NULL);
	double ss = tsupport_value(seg, "thread_sizes_bytes", NULL);
	if (sc == UINT64_MAX)
		sc = 0, ss = 0;
	pthread_barrier_t go;
	pthread_barrier_t claimed;
	assert_int_equal(pthread_barrier_init(&go, NULL, 4), 0);
	assert_int_equal(pthread_barrier_init(&claimed, NULL, 3), 0);
	struct forker w[3] = {{&go, 100000, 0, &claimed}, {&go, 50000, 0, &claimed}, {&go, 20000, 0, &claimed}};
	pthread_t t[3];
	assert_int_equal(pthread_create(&t[0], NULL, writer_thread, &w[0]), 0);
	assert_int_equal(pthread_create(&t[1], NULL, writer_thread, &w[1]), 0);
	assert_int_equal(pthread_create(&t[2], NULL, forking_thread, &w[2]), 0);
	pthread_barrier_wait(&go); /* every thread has written, the child is forked */
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&go);
	pthread_barrier_destroy(&claimed);
	assert_int_equal(tsupport_wait(w[2].child), 0);
	double want = before + 100000 + 50000 + 20000 + 7777 + CHILD_THREAD_INCS;
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), want);
	assert_int_equal(tsupport_count(seg, "thread_sizes_bytes", NULL), sc + 150000 + 7777 + CHILD_THREAD_INCS);
	assert_double_equal_exact(tsupport_value(seg, "thread_sizes_bytes", NULL),
				  ss + 2.0 * 150000 + 0.5 * 7777 + 2.0 * CHILD_THREAD_INCS);
	tsupport_fold(seg);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", v), want);
	assert_int_equal(live_regions(), 1); /* the threads' and the child's regions were folded */
}

/* A lookup through the same buffer, rewritten with another value, names
 * the other series: the pointers pick a remembered node, the bytes decide. */
static void test_threads_lookup_reused_buffer_other_series(void **state)
{
	(void)state;
	char buf[16];
	strcpy(buf, "reused-a");
	shmet_counter a = shmet_counter_labels(fam, buf);
	shmet_counter a2 = shmet_counter_labels(fam, buf);
	strcpy(buf, "reused-b");
	shmet_counter b = shmet_counter_labels(fam, buf);
	strcpy(buf, "reused-a");
	shmet_counter a3 = shmet_counter_labels(fam, buf);
	assert_int_not_equal(a.off, 0);
	assert_int_equal(a2.off, a.off);
	assert_int_not_equal(b.off, a.off);
	assert_int_equal(a3.off, a.off);
	strcpy(buf, "reused-ab"); /* a longer value, same prefix */
	shmet_counter ab = shmet_counter_labels(fam, buf);
	assert_int_not_equal(ab.off, a.off);
	assert_int_not_equal(ab.off, b.off);
	shmet_counter_inc(b);
	const char *vb[] = {"reused-b", NULL}, *va[] = {"reused-a", NULL};
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", vb), 1);
	assert_double_equal_exact(tsupport_value(seg, "thread_hits_total", va), 0);
}

/* Gauges are one value per process: a thread with a region of its own
 * sets them in its process's region, and its region shows no per-worker
 * series of its own. */
static void *gauge_thread(void *arg)
{
	pthread_barrier_t *hold = arg;
	shmet_counter_inc(hits); /* a region of its own */
	shmet_gauge_set(busy, 7);
	shmet_gauge_add(depth, 2);
	pthread_barrier_wait(hold); /* alive, region held, while the main thread looks */
	pthread_barrier_wait(hold);
	return NULL;
}

static void test_threads_gauges_one_per_process(void **state)
{
	(void)state;
	tsupport_fold(seg);
	shmet_gauge_set(busy, 1);
	shmet_gauge_set(depth, 1);
	pthread_t t;
	pthread_barrier_t hold;
	assert_int_equal(pthread_barrier_init(&hold, NULL, 2), 0);
	assert_int_equal(pthread_create(&t, NULL, gauge_thread, &hold), 0);
	pthread_barrier_wait(&hold);
	shmet_gauge_add(depth, 4);
	assert_double_equal_exact(tsupport_value(seg, "thread_depth", NULL), 7);
	struct shmet_segment s;
	struct shmet_snapshot snap;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	assert_int_equal(shmet_snapshot_take(&s, &snap), SHMET_OK);
	const struct shmet_snap_family *f = shmet_snapshot_family(&snap, "thread_busy");
	assert_non_null(f);
	size_t n = f->nseries;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
	char w[16];
	snprintf(w, sizeof w, "%d", shmet_region_index());
	const char *v[] = {w, NULL};
	double busy_v = tsupport_value(seg, "thread_busy", v);
	pthread_barrier_wait(&hold);
	pthread_join(t, NULL);
	pthread_barrier_destroy(&hold);
	if (n != 1)
		fail_msg("thread_busy: expected one worker series (the process's), got %zu", n);
	assert_double_equal_exact(busy_v, 7);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_threads_exit_midstream_while_folding_totals_exact),
		cmocka_unit_test(test_threads_region_own_given_back_folded_reused),
		cmocka_unit_test(test_threads_fork_from_threaded_process_totals_exact),
		cmocka_unit_test(test_threads_lookup_reused_buffer_other_series),
		cmocka_unit_test(test_threads_gauges_one_per_process),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
