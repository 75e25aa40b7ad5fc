/* Real forked processes: handles made in the master, exact totals, kill -9,
 * region reuse, and concurrent creation of one segment. */
#include "tsupport.h"
#include "shmetrics.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHILDREN 8
#define PER_THREAD 1000000

static const char *seg;
static shmet_counter counted, noise;

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("fork");
	struct shmet_options o = {seg, 32, 1 << 16, 0, false};
	if (shmet_init(&o) != SHMET_OK)
		return -1;
	shmet_family *f;
	const char *l[] = {"what"};
	if (shmet_counter_register(&f, "forked_increments_total", "Increments made by children.", 1, l) != SHMET_OK)
		return -1;
	counted = shmet_counter_labels(f, "counted");
	noise = shmet_counter_labels(f, "noise");
	return counted.off && noise.off ? 0 : -1;
}

static int live_regions(void)
{
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	int live = 0;
	for (uint32_t i = 0; i < s.regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(&s, i, &info);
		live += info.state == SHMET_REGION_LIVE;
	}
	shmet_segment_close(&s);
	return live;
}

static void *hammer(void *arg)
{
	(void)arg;
	for (int i = 0; i < PER_THREAD; i++)
		shmet_counter_inc(counted);
	return NULL;
}

static void test_fork_children_of_master_count_exactly(void **state)
{
	(void)state;
	int master_region = shmet_region_index();
	assert_true(master_region >= 0);
	pid_t pids[CHILDREN];
	for (int c = 0; c < CHILDREN; c++) {
		pids[c] = fork();
		assert_true(pids[c] >= 0);
		if (pids[c] == 0) {
			if (shmet_region_index() < 0 || shmet_region_index() == master_region)
				_exit(2);
			pthread_t t[2];
			for (int i = 0; i < 2; i++)
				if (pthread_create(&t[i], NULL, hammer, NULL) != 0)
					_exit(3);
			for (int i = 0; i < 2; i++)
				pthread_join(t[i], NULL);
			_exit(0);
		}
	}
	for (int c = 0; c < CHILDREN; c++)
		assert_int_equal(tsupport_wait(pids[c]), 0);
	const char *v[] = {"counted", NULL};
	assert_double_equal_exact(tsupport_value(seg, "forked_increments_total", v), 2.0 * CHILDREN * PER_THREAD);

	/* each child claimed its own region, forked from the master's (at
	 * shmet_region_index, so its main thread writes that region's counter
	 * cells), and each of its two writing threads a region of its own
	 * (whose parent is the child's region) */
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	uint64_t mine[64] = {0};
	uint32_t parent[64];
	int children_regions = 0, thread_regions = 0;
	assert_true(s.regions <= 64);
	for (uint32_t i = 0; i < 64; i++)
		parent[i] = SHMET_NO_PARENT;
	for (uint32_t i = 0; i < s.regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(&s, i, &info);
		if (info.state != SHMET_REGION_LIVE || (int)i == master_region)
			continue;
		assert_false(info.alive);
		parent[i] = info.parent;
		struct shmet_area a;
		assert_int_equal(shmet_region_area(&s, i, &a, err), SHMET_OK);
		struct shmet_dir_iter it;
		struct shmet_record r;
		shmet_dir_begin(&it, &a);
		while (shmet_dir_next(&it, &r, err) == 1)
			if (r.kind == SHMET_REC_SERIES && r.series.value_lens[0] == 7) {
				struct shmet_values val;
				shmet_read_cells(&a, &r.fam, &r.series, &val);
				mine[i] = val.whole;
			}
	}
	shmet_segment_close(&s);
	for (uint32_t i = 0; i < 64; i++) {
		if (parent[i] != (uint32_t)master_region)
			continue;
		uint64_t child = mine[i];
		for (uint32_t j = 0; j < 64; j++)
			if (parent[j] == i) {
				child += mine[j];
				thread_regions++;
			}
		assert_int_equal(child, 2 * PER_THREAD);
		children_regions++;
	}
	assert_int_equal(children_regions, CHILDREN);
	assert_int_equal(thread_regions, 2 * CHILDREN);

	/* folding the dead children keeps the total and frees their regions */
	tsupport_fold(seg);
	assert_double_equal_exact(tsupport_value(seg, "forked_increments_total", v), 2.0 * CHILDREN * PER_THREAD);
	assert_int_equal(live_regions(), 1); /* the master's */
}

static void test_fork_sigkill_leaves_dead_region_then_reused(void **state)
{
	(void)state;
	const char *v[] = {"counted", NULL};
	double before = tsupport_value(seg, "forked_increments_total", v);
	int ready[2];
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		for (int i = 0; i < 12345; i++)
			shmet_counter_inc(counted);
		char idx = (char)shmet_region_index();
		if (write(ready[1], &idx, 1) != 1)
			_exit(1);
		for (;;)
			shmet_counter_inc(noise); /* still writing when the signal lands */
	}
	close(ready[1]);
	char idx;
	assert_int_equal(read(ready[0], &idx, 1), 1);
	close(ready[0]);
	kill(pid, SIGKILL);
	assert_int_equal(tsupport_wait(pid), 128 + SIGKILL);

	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	struct shmet_region_info info;
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	shmet_region_info(&s, (uint32_t)idx, &info);
	shmet_segment_close(&s);
	assert_int_equal(info.state, SHMET_REGION_LIVE);
	assert_false(info.alive);
	assert_int_equal(info.pid, pid);
	assert_double_equal_exact(tsupport_value(seg, "forked_increments_total", v), before + 12345);

	tsupport_fold(seg);
	assert_double_equal_exact(tsupport_value(seg, "forked_increments_total", v), before + 12345);

	/* the freed region goes to the next child, one generation later */
	int p2[2];
	assert_int_equal(pipe(p2), 0);
	pid_t pid2 = fork();
	if (pid2 == 0) {
		char i2 = (char)shmet_region_index();
		_exit(write(p2[1], &i2, 1) == 1 ? 0 : 1);
	}
	close(p2[1]);
	char idx2 = -1;
	assert_int_equal(read(p2[0], &idx2, 1), 1);
	close(p2[0]);
	assert_int_equal(tsupport_wait(pid2), 0);
	assert_int_equal(idx2, idx);
	struct shmet_region_info info2;
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	shmet_region_info(&s, (uint32_t)idx, &info2);
	shmet_segment_close(&s);
	assert_int_equal(info2.generation, info.generation + 1);
	assert_double_equal_exact(tsupport_value(seg, "forked_increments_total", v), before + 12345);
}

static void test_fork_concurrent_create_one_creator(void **state)
{
	(void)state;
	const char *path = tsupport_segment("race");
	int gate[2];
	assert_int_equal(pipe(gate), 0);
	pid_t pids[8];
	for (int c = 0; c < 8; c++) {
		pids[c] = fork();
		if (pids[c] == 0) {
			char b;
			close(gate[1]);
			if (read(gate[0], &b, 1) != 0) /* all start when the gate closes */
				_exit(3);
			struct shmet_segment s;
			char err[SHMET_ERRBUF];
			struct shmet_seg_config cfg = {8, 1 << 16, 0, 0, 0};
			if (shmet_segment_open(path, SHMET_ATTACH_CREATE, &cfg, &s, err) != SHMET_OK) {
				fprintf(stderr, "child: %s\n", err);
				_exit(1);
			}
			int created = s.map.created;
			shmet_segment_close(&s);
			_exit(created ? 10 : 0);
		}
	}
	close(gate[0]);
	close(gate[1]);
	int creators = 0;
	for (int c = 0; c < 8; c++) {
		int st = tsupport_wait(pids[c]);
		if (st != 0 && st != 10)
			fail_msg("child %d exited %d", c, st);
		creators += st == 10;
	}
	assert_int_equal(creators, 1);
}


/* fork()+exec() (popen, system) and children that never write claim no
 * region: a child claims at its first write. */
static void test_fork_exec_child_claims_no_region(void **state)
{
	(void)state;
	tsupport_fold(seg);
	int before = live_regions();
	pid_t pid = fork();
	if (pid == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	assert_int_equal(tsupport_wait(pid), 0);
	FILE *p = popen("exit 0", "r");
	assert_non_null(p);
	assert_int_equal(pclose(p), 0);
	pid = fork();
	if (pid == 0)
		_exit(0); /* never writes */
	assert_int_equal(tsupport_wait(pid), 0);
	assert_int_equal(live_regions(), before);
	/* and one that writes does claim, with its parent's handles valid */
	const char *v[] = {"counted", NULL};
	double was = tsupport_value(seg, "forked_increments_total", v);
	pid = fork();
	if (pid == 0) {
		shmet_counter_inc(counted);
		_exit(shmet_region_index() >= 0 ? 0 : 1);
	}
	assert_int_equal(tsupport_wait(pid), 0);
	assert_int_equal(live_regions(), before + 1);
	assert_double_equal_exact(tsupport_value(seg, "forked_increments_total", v), was + 1);
}


/* The master role of the next test, in a process of its own (this program
 * run again with "--master"): a master that attached the segment itself,
 * whose mapping therefore comes from the description that holds its lock.
 * It counts, forks a child that sleeps (after one write, or none), which
 * reports the master's region and its own pid on fd 1; the master waits to
 * be killed.  The child
 * exits when fd 0 (the test's gate) reaches EOF, or at its alarm. */
static int master_role(const char *path, int child_writes)
{
	struct shmet_options o = {path, 32, 1 << 16, 0, true};
	if (shmet_init(&o) != SHMET_OK) {
		fprintf(stderr, "master: shmet_init: %s\n", shmet_last_error());
		return 1;
	}
	shmet_counter c = shmet_counter_new("master_kill_total", "Increments by a master killed with -9.");
	shmet_gauge g = shmet_gauge_new("master_kill_busy", "A gauge the dead master must stop adding to.",
					SHMET_GAUGE_SUM);
	if (!c.off || !g.off)
		return 1;
	shmet_counter_inc(c);
	shmet_gauge_set(g, 7);
	int report[2] = {shmet_region_index(), 0};
	pid_t child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		alarm(60);
		if (child_writes)
			shmet_counter_inc(c); /* claims a region of its own */
		report[1] = (int)getpid();
		if (write(1, report, sizeof report) != (ssize_t)sizeof report)
			_exit(1);
		char b;
		while (read(0, &b, 1) > 0) {
		}
		_exit(0);
	}
	for (;;)
		pause();
}

/* A master killed with -9 is dead at the next look even while a child it
 * forked is still running: the child keeps no reference to the master's
 * open file description (neither its descriptor nor its mapping), so the
 * kernel drops the master's liveness lock when the master dies, and its
 * gauges stop counting. */
static void test_fork_master_sigkill_dead_while_child_lives(void **state)
{
	(void)state;
	for (int writes = 0; writes < 2; writes++) {
		int gate[2], out[2];
		assert_int_equal(pipe(gate), 0);
		assert_int_equal(pipe(out), 0);
		pid_t master = fork();
		assert_true(master >= 0);
		if (master == 0) {
			dup2(gate[0], 0);
			dup2(out[1], 1);
			close(gate[0]), close(gate[1]), close(out[0]), close(out[1]);
			execl("/proc/self/exe", "test_fork", "--master", seg, writes ? "1" : "0", (char *)NULL);
			_exit(127);
		}
		close(gate[0]);
		close(out[1]);
		int report[2] = {-1, -1};
		ssize_t got = read(out[0], report, sizeof report);
		close(out[0]);
		if (got != (ssize_t)sizeof report) {
			close(gate[1]);
			kill(master, SIGKILL);
			fail_msg("master: expected its region and its child's pid, got %zd bytes (status %d)", got,
				 tsupport_wait(master));
		}
		int region = report[0];
		pid_t child = report[1];
		kill(master, SIGKILL);
		assert_int_equal(tsupport_wait(master), 128 + SIGKILL);
		int child_running = kill(child, 0) == 0;

		struct shmet_segment s;
		char err[SHMET_ERRBUF];
		struct shmet_region_info info;
		assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
		shmet_region_info(&s, (uint32_t)region, &info);
		shmet_segment_close(&s);
		double busy = tsupport_value(seg, "master_kill_busy", NULL);
		close(gate[1]); /* the child exits now */
		assert_true(region >= 0);
		if (!child_running)
			fail_msg("the master's child (pid %d) was expected to run still; it did not", (int)child);
		assert_int_equal(info.pid, master);
		assert_int_equal(info.state, SHMET_REGION_LIVE);
		if (info.alive)
			fail_msg("region %d of master %d (killed with -9, child %s): expected dead, the child keeps it "
				 "alive",
				 region, (int)master, writes ? "writing" : "sleeping");
		if (busy > 0) /* a dead process's sum-mode gauge takes no part */
			fail_msg("master_kill_busy: expected no value from the dead master, got %g", busy);
		tsupport_fold(seg);
		/* the dead master's increments stay: 1 each time, and 1 from the writing child */
		assert_double_equal_exact(tsupport_value(seg, "master_kill_total", NULL), writes ? 3.0 : 1.0);
	}
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "--master") == 0)
		return master_role(argv[2], argv[3][0] == '1');
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fork_children_of_master_count_exactly),
		cmocka_unit_test(test_fork_sigkill_leaves_dead_region_then_reused),
		cmocka_unit_test(test_fork_concurrent_create_one_creator),
		cmocka_unit_test(test_fork_exec_child_claims_no_region),
		cmocka_unit_test(test_fork_master_sigkill_dead_while_child_lives),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
