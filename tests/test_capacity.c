/* Running out of capacity: a full region and a full segment are clear,
 * counted errors that hand out fallback handles, never a crash.
 *
 * One private segment of 2 regions of 8192 bytes (the minimum) for the whole
 * program: the master holds region 0, and children forked with a "holder"
 * take region 1 and keep it alive until their gate pipe closes.  Cases run
 * in order and share that state; every child is reaped by the teardown even
 * when an assertion fails, and has an alarm as a last resort. */
#include "tsupport.h"
#include "shmetrics.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define REGIONS 2
#define REGION_SIZE 8192
#define CHILD_ALARM 60 /* seconds: a child that outlives this is killed */

static const char *seg;
static int master_region;
/* Made in setup, before anything is full; inherited by every child. */
static shmet_family *kept_family, *late_gauge, *late_hist, *late_summary;
static shmet_counter kept[4];
static shmet_gauge gauge;
static shmet_histogram hist;
static shmet_summary summary;
static double kept_expected[4];

/* Children that hold a region until their gate closes. */
#define MAX_HOLDERS 4
static pid_t holders[MAX_HOLDERS];
static int gates[MAX_HOLDERS];
static int nholders;

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("capacity");
	struct shmet_options o = {seg, REGIONS, REGION_SIZE, 0, false};
	if (shmet_init(&o) != SHMET_OK) {
		fprintf(stderr, "shmet_init: %s\n", shmet_last_error());
		return -1;
	}
	master_region = shmet_region_index();
	shmet_family *f;
	const char *i[] = {"i"}, *x[] = {"x"};
	if (shmet_counter_register(&kept_family, "kept", "Series made before the region filled.", 1, i) != SHMET_OK ||
	    shmet_gauge_register(&late_gauge, "late_gauge", "h", SHMET_GAUGE_SUM, 1, x) != SHMET_OK ||
	    shmet_histogram_register(&late_hist, "late_seconds", "h", NULL, 0, 1, x) != SHMET_OK ||
	    shmet_summary_register(&late_summary, "late_bytes", "h", 1, x) != SHMET_OK)
		return -1;
	for (int k = 0; k < 4; k++) {
		char v[2] = {(char)('0' + k), 0};
		kept[k] = shmet_counter_labels(kept_family, v);
		if (!kept[k].off)
			return -1;
		for (int n = 0; n <= k; n++)
			shmet_counter_inc(kept[k]);
		shmet_counter_add(kept[k], 0.5);
		kept_expected[k] = k + 1.5;
	}
	gauge = shmet_gauge_new("inherited_gauge", "h", SHMET_GAUGE_SUM);
	double b[3] = {0.1, 1, 10};
	if (shmet_histogram_register(&f, "inherited_seconds", "h", b, 3, 0, NULL) != SHMET_OK)
		return -1;
	hist = shmet_histogram_get(f, NULL);
	if (shmet_summary_register(&f, "inherited_bytes", "h", 0, NULL) != SHMET_OK)
		return -1;
	summary = shmet_summary_get(f, NULL);
	if (!gauge.off || !hist.off || !summary.off)
		return -1;
	shmet_gauge_set(gauge, 1.25);
	shmet_histogram_observe(hist, 0.5);
	shmet_summary_observe(summary, 3);
	return master_region >= 0 ? 0 : -1;
}

/* Reap every holder: closing its gate lets it exit. */
static int teardown_holders(void **state)
{
	(void)state;
	for (int k = 0; k < nholders; k++) {
		if (gates[k] >= 0)
			close(gates[k]);
		gates[k] = -1;
	}
	for (int k = 0; k < nholders; k++)
		if (holders[k] > 0)
			tsupport_wait(holders[k]);
	nholders = 0;
	return 0;
}

/* A child that owns a region (claimed at fork by the writer's atfork
 * handler), adds `incs` to kept[0], reports its region index and blocks
 * until its gate closes.  Returns the region index. */
static int spawn_holder(int incs)
{
	int gate[2], ready[2];
	assert_true(nholders < MAX_HOLDERS);
	assert_int_equal(pipe(gate), 0);
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_ALARM);
		close(gate[1]);
		close(ready[0]);
		for (int k = 0; k < nholders; k++)
			if (gates[k] >= 0)
				close(gates[k]);
		for (int n = 0; n < incs; n++)
			shmet_counter_inc(kept[0]);
		signed char idx = (signed char)shmet_region_index();
		if (write(ready[1], &idx, 1) != 1)
			_exit(1);
		char b;
		while (read(gate[0], &b, 1) > 0) {
		}
		_exit(0);
	}
	close(gate[0]);
	close(ready[1]);
	holders[nholders] = pid;
	gates[nholders] = gate[1];
	nholders++;
	signed char idx = -2;
	ssize_t got = read(ready[0], &idx, 1);
	close(ready[0]);
	if (got != 1)
		fail_msg("holder %d: expected its region index, got nothing (status %d)", (int)pid, tsupport_wait(pid));
	return idx;
}

/* Close holder k's gate and reap it: its exit status. */
static int release_holder(int k)
{
	pid_t pid = holders[k];
	close(gates[k]);
	gates[k] = -1;
	holders[k] = -1;
	return tsupport_wait(pid);
}

/* Release the newest holder still running and check it exited 0. */
static void release_last_holder(void)
{
	int k = nholders - 1;
	while (k >= 0 && holders[k] <= 0)
		k--;
	assert_true(k >= 0);
	pid_t pid = holders[k];
	int st = release_holder(k);
	if (st != 0)
		fail_msg("holder %d: expected exit 0, got %d", (int)pid, st);
}

struct seg_stats {
	uint64_t claim_failures, dropped_orphan;
	struct shmet_region_info info[REGIONS];
};

static void read_stats(struct seg_stats *st)
{
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err) != SHMET_OK)
		fail_msg("open %s: %s", seg, err);
	assert_int_equal(s.regions, REGIONS);
	st->claim_failures = __atomic_load_n(&s.map.hdr->sh_claim_failures, __ATOMIC_RELAXED);
	st->dropped_orphan = __atomic_load_n(&s.map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	for (uint32_t i = 0; i < REGIONS; i++)
		shmet_region_info(&s, i, &st->info[i]);
	shmet_segment_close(&s);
}

/* The segment reads without a corrupt record, and every kept series has
 * its value plus `extra0` on kept[0]. */
static void check_kept(double extra0)
{
	struct shmet_segment s;
	struct shmet_snapshot snap;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	shmet_snapshot_take(&s, &snap);
	uint64_t corrupt = snap.corrupt, conflicts = snap.conflicts;
	char why[SHMET_ERRBUF];
	snprintf(why, sizeof why, "%s", snap.err);
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
	if (corrupt || conflicts)
		fail_msg("snapshot: expected 0 corrupt records and 0 conflicts, got %llu and %llu (%s)",
			 (unsigned long long)corrupt, (unsigned long long)conflicts, why);
	for (int k = 0; k < 4; k++) {
		const char *v[] = {(const char[]){(char)('0' + k), 0}, NULL};
		assert_double_equal_exact(tsupport_value(seg, "kept_total", v), kept_expected[k] + (k ? 0 : extra0));
	}
}

static void test_capacity_region_full_fallback_counted(void **state)
{
	(void)state;
	shmet_family *fill;
	const char *l[] = {"n"};
	assert_int_equal(shmet_counter_register(&fill, "fill", "Series until the region is full.", 1, l), SHMET_OK);

	/* series until the region is full */
	char v[32];
	const char *vals[] = {v};
	uint32_t off = 0;
	int rc = SHMET_OK, made = 0;
	for (; made < 100000; made++) {
		snprintf(v, sizeof v, "s%d", made);
		rc = shmet_series_lookup(fill, vals, &off);
		if (rc != SHMET_OK)
			break;
		shmet_counter c = {off};
		shmet_counter_add_u64(c, (uint64_t)made + 1);
	}
	if (rc != SHMET_E_REGION_FULL)
		fail_msg("series %d: expected %d (SHMET_E_REGION_FULL), got %d (%s)", made, SHMET_E_REGION_FULL, rc,
			 shmet_last_error());
	assert_int_equal(off, 0);
	assert_true(made > 20); /* an 8 KiB region holds dozens of small series */
	if (!strstr(shmet_last_error(), "no room") || !strstr(shmet_last_error(), "fill_total"))
		fail_msg("expected a message naming the family and the lack of room, got \"%s\"", shmet_last_error());
	assert_string_equal(shmet_strerror(rc), "the process's region is full");

	/* an existing series is still found: it needs no room */
	shmet_counter first = shmet_counter_labels(fill, "s0");
	assert_int_not_equal(first.off, 0);

	/* families until not even a small one fits */
	shmet_family *f = NULL;
	int fams = 0;
	char name[64];
	for (; fams < 1000; fams++) {
		snprintf(name, sizeof name, "tiny%d", fams);
		rc = shmet_gauge_register(&f, name, NULL, SHMET_GAUGE_SUM, 0, NULL);
		if (rc != SHMET_OK)
			break;
	}
	if (rc != SHMET_E_REGION_FULL)
		fail_msg("family %d: expected %d (SHMET_E_REGION_FULL), got %d (%s)", fams, SHMET_E_REGION_FULL, rc,
			 shmet_last_error());
	assert_null(f);
	if (!strstr(shmet_last_error(), "no room for family") || !strstr(shmet_last_error(), name))
		fail_msg("expected a message naming family \"%s\", got \"%s\"", name, shmet_last_error());

	/* every way to get a handle now gives the fallback */
	shmet_counter fc = shmet_counter_labels(fill, "overflow");
	assert_int_equal(fc.off, 0);
	shmet_gauge fg = shmet_gauge_labels(late_gauge, "a");
	shmet_histogram fh = shmet_histogram_labels(late_hist, "a");
	shmet_summary fs = shmet_summary_labels(late_summary, "a");
	shmet_counter fn = shmet_counter_new("never_registered", "h"); /* family fails too */
	shmet_gauge fgn = shmet_gauge_new("never_gauge", "h", SHMET_GAUGE_MOSTRECENT);
	assert_int_equal(fg.off, 0);
	assert_int_equal(fh.off, 0);
	assert_int_equal(fs.off, 0);
	assert_int_equal(fn.off, 0);
	assert_int_equal(fgn.off, 0);

	/* writes through them are dropped and counted in the region header */
	struct seg_stats before, after;
	read_stats(&before);
	shmet_counter_inc(fc);
	shmet_counter_add(fc, 1.5);
	shmet_counter_add_u64(fc, 3);
	shmet_counter_inc(fn);
	shmet_gauge_set(fg, 1);
	shmet_gauge_add(fg, 1);
	shmet_gauge_inc(fg);
	shmet_gauge_dec(fg);
	shmet_gauge_set_to_current_time(fgn);
	shmet_histogram_observe(fh, 0.2);
	shmet_histogram_observe_duration(fh, shmet_timer_start());
	shmet_summary_observe(fs, 5);
	shmet_summary_observe_duration(fs, shmet_timer_start());
	const uint64_t drops = 13;
	read_stats(&after);
	uint64_t got = after.info[master_region].dropped - before.info[master_region].dropped;
	if (got != drops)
		fail_msg("rg_dropped: expected +%llu, got +%llu", (unsigned long long)drops, (unsigned long long)got);
	assert_int_equal(after.dropped_orphan, before.dropped_orphan);
	assert_true(after.info[master_region].alive);

	/* earlier series keep their values and still count */
	shmet_counter_inc(first);
	const char *s0[] = {"s0", NULL};
	assert_double_equal_exact(tsupport_value(seg, "fill_total", s0), 2);
	snprintf(v, sizeof v, "s%d", made - 1);
	const char *last[] = {v, NULL};
	assert_double_equal_exact(tsupport_value(seg, "fill_total", last), made);
	const char *over[] = {"overflow", NULL};
	assert_true(isnan(tsupport_value(seg, "fill_total", over)));
	assert_double_equal_exact(tsupport_value(seg, "inherited_gauge", NULL), 1.25);
	check_kept(0);
}

/* With every region claimed, a further child gets none: it is told so,
 * and every write it makes, through inherited handles (which land in
 * private memory) and through fallback handles alike, is counted as an
 * orphan drop. */
static void test_capacity_segment_full_child_orphaned_counted(void **state)
{
	(void)state;
	int idx = spawn_holder(5);
	if (idx < 0 || idx == master_region)
		fail_msg("holder: expected a region other than %d, got %d", master_region, idx);
	struct seg_stats before, after;
	read_stats(&before);
	for (int i = 0; i < REGIONS; i++)
		if (before.info[i].state != SHMET_REGION_LIVE || !before.info[i].alive)
			fail_msg("region %d: expected live and owned, got state %u alive %d", i, before.info[i].state,
				 before.info[i].alive);

	/* 6 writes x 1000 through inherited handles, 1 more, 9 through fallbacks */
	const uint64_t orphan_drops = 6000 + 1 + 9;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_ALARM);
		for (int k = 0; k < nholders; k++)
			if (gates[k] >= 0)
				close(gates[k]);
		if (shmet_region_index() != -1)
			_exit(2);
		if (!strstr(shmet_last_error(), "regions are in use"))
			_exit(3);
		/* inherited handles: harmless private memory, each write counted */
		for (int n = 0; n < 1000; n++) {
			shmet_counter_inc(kept[0]);
			shmet_counter_add(kept[1], 0.25);
			shmet_gauge_set(gauge, 42);
			shmet_gauge_add(gauge, 1);
			shmet_histogram_observe(hist, 0.05 * n);
			shmet_summary_observe(summary, n);
		}
		/* fallback handles: counted as orphan drops (9 in all) */
		shmet_counter_inc((shmet_counter){0});
		shmet_counter_add((shmet_counter){0}, 2);
		shmet_gauge_set((shmet_gauge){0, 0}, 1);
		shmet_histogram_observe((shmet_histogram){0, 0, NULL}, 1);
		shmet_summary_observe((shmet_summary){0}, 1);
		shmet_counter_inc(kept[0]); /* still harmless (and counted) after the above */
		/* registration is refused: no region to write the family to */
		shmet_family *f = (shmet_family *)1;
		int rc = shmet_counter_register(&f, "orphan_total", "h", 0, NULL);
		if (rc != SHMET_E_SEGMENT_FULL || f != NULL)
			_exit(4);
		shmet_counter c = shmet_counter_get(f, NULL);
		shmet_counter_inc(c);
		shmet_counter_inc(c);
		/* a new series of an inherited family: refused too */
		shmet_counter s = shmet_counter_labels(kept_family, "orphan");
		if (s.off != 0)
			_exit(5);
		shmet_counter_inc(s);
		shmet_gauge g = shmet_gauge_labels(late_gauge, "orphan");
		if (g.off != 0)
			_exit(5);
		shmet_gauge_set(g, 3);
		_exit(0);
	}
	int st = tsupport_wait(pid);
	if (st != 0)
		fail_msg("orphan child: expected exit 0, got %d (2: got a region, 3: no reason given, "
			 "4: registration not refused with SHMET_E_SEGMENT_FULL, 5: got a series handle)",
			 st);

	read_stats(&after);
	if (after.claim_failures <= before.claim_failures)
		fail_msg("sh_claim_failures: expected more than %llu, got %llu", (unsigned long long)before.claim_failures,
			 (unsigned long long)after.claim_failures);
	uint64_t orphan = after.dropped_orphan - before.dropped_orphan;
	if (orphan != orphan_drops)
		fail_msg("sh_dropped_orphan: expected +%llu, got +%llu", (unsigned long long)orphan_drops,
			 (unsigned long long)orphan);
	for (int i = 0; i < REGIONS; i++) {
		/* nobody else's region saw the orphan's writes */
		assert_int_equal(after.info[i].dropped, before.info[i].dropped);
		assert_int_equal(after.info[i].generation, before.info[i].generation);
		assert_int_equal(after.info[i].dir_end, before.info[i].dir_end);
		assert_true(after.info[i].alive);
		assert_int_not_equal(after.info[i].pid, pid);
	}
	check_kept(5);
	assert_double_equal_exact(tsupport_value(seg, "inherited_gauge", NULL), 1.25);
	assert_double_equal_exact(tsupport_value(seg, "inherited_seconds", NULL), 0.5);
	assert_int_equal(tsupport_count(seg, "inherited_seconds", NULL), 1);
	assert_double_equal_exact(tsupport_value(seg, "inherited_bytes", NULL), 3);
	release_last_holder();
}

/* Once the collector folds the dead holder, its region is claimable again. */
static void test_capacity_folded_region_reclaimed_by_next_child(void **state)
{
	(void)state;
	struct seg_stats st;
	read_stats(&st);
	int dead = -1;
	for (int i = 0; i < REGIONS; i++)
		if (i != master_region && st.info[i].state == SHMET_REGION_LIVE && !st.info[i].alive)
			dead = i;
	if (dead < 0)
		fail_msg("expected the last holder's region to be live and unowned; it is not");
	tsupport_fold(seg);
	int idx = spawn_holder(7);
	if (idx != dead)
		fail_msg("next child: expected region %d, got %d", dead, idx);
	check_kept(5 + 7);
	release_last_holder();
	tsupport_fold(seg);
	check_kept(5 + 7);
}

/* A child that found no region at fork and gets one later (shmet_init, or
 * any registration, retries the claim) must start that region with the
 * directory it inherited: its handles and lookup nodes are offsets into it.
 * Otherwise kept[0] would count into whatever the fresh region puts at that
 * offset, and kept_total would miss it. */
static void test_capacity_late_claim_keeps_inherited_handles(void **state)
{
	(void)state;
	int idx = spawn_holder(0), holder = nholders - 1;
	assert_true(idx >= 0 && idx != master_region);
	int go[2], ready[2];
	assert_int_equal(pipe(go), 0);
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_ALARM);
		for (int k = 0; k < nholders; k++)
			if (gates[k] >= 0)
				close(gates[k]);
		close(go[1]);
		close(ready[0]);
		char b = shmet_region_index() == -1 ? 'n' : 'y';
		if (write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(1);
		if (shmet_init(NULL) != SHMET_OK || shmet_region_index() < 0)
			_exit(2);
		for (int n = 0; n < 7; n++)
			shmet_counter_inc(kept[0]);
		shmet_counter again = shmet_counter_labels(kept_family, "1");
		if (again.off != kept[1].off)
			_exit(3);
		shmet_counter_inc(again);
		b = (char)shmet_region_index();
		if (write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) != 0)
			_exit(4);
		_exit(0);
	}
	close(go[0]);
	close(ready[1]);
	/* a holder too: the teardown reaps it if an assertion fails below */
	int self = nholders++;
	holders[self] = pid;
	gates[self] = go[1];
	char b = 0;
	int ok = read(ready[0], &b, 1) == 1 && b == 'n';
	if (ok) {
		/* free a region for it: the holder exits and is folded */
		int st = release_holder(holder);
		if (st != 0)
			fail_msg("holder: expected exit 0, got %d", st);
		tsupport_fold(seg);
		ok = write(go[1], "g", 1) == 1 && read(ready[0], &b, 1) == 1;
	}
	/* look while the child is alive and owns its late region */
	struct seg_stats st;
	if (ok)
		read_stats(&st);
	double kept0 = NAN, kept1 = NAN;
	if (ok) {
		const char *v0[] = {"0", NULL}, *v1[] = {"1", NULL};
		kept0 = tsupport_value(seg, "kept_total", v0);
		kept1 = tsupport_value(seg, "kept_total", v1);
	}
	close(ready[0]);
	int status = release_holder(self);
	if (!ok)
		fail_msg("late child: expected to start without a region and to report back, got '%c', status %d "
			 "(2: no region from shmet_init, 3: lookup of an existing series gave another handle)",
			 b, status);
	assert_int_equal(status, 0);
	int late = (int)(signed char)b;
	assert_true(late >= 0 && late < REGIONS && late != master_region);
	/* the late region starts with the master's directory */
	if (st.info[late].dir_end != st.info[master_region].dir_end ||
	    st.info[late].series != st.info[master_region].series)
		fail_msg("late region %d: expected the inherited directory (dir_end %llu, %llu series), got dir_end %llu, "
			 "%llu series",
			 late, (unsigned long long)st.info[master_region].dir_end,
			 (unsigned long long)st.info[master_region].series, (unsigned long long)st.info[late].dir_end,
			 (unsigned long long)st.info[late].series);
	assert_double_equal_exact(kept0, kept_expected[0] + 5 + 7 + 7);
	assert_double_equal_exact(kept1, kept_expected[1] + 1);
	kept_expected[1] += 1;
	check_kept(5 + 7 + 7);
}


/* Run fn in a child with stderr sent to a file, while the segment is full
 * (a holder owns the master's other region).  Returns the child's exit
 * status; *text gets what it wrote to stderr (malloc'd). */
static int run_orphan(int (*fn)(void), int quiet, char **text)
{
	char path[] = "/tmp/shmet-capacity-stderr-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_ALARM);
		for (int k = 0; k < nholders; k++)
			if (gates[k] >= 0)
				close(gates[k]);
		if (quiet)
			setenv("SHMETRICS_QUIET", "1", 1);
		else
			unsetenv("SHMETRICS_QUIET");
		dup2(fd, 2);
		_exit(fn());
	}
	int st = tsupport_wait(pid);
	off_t size = lseek(fd, 0, SEEK_END);
	assert_true(size >= 0);
	*text = calloc(1, (size_t)size + 1);
	assert_non_null(*text);
	assert_int_equal(pread(fd, *text, (size_t)size, 0), size);
	close(fd);
	return st;
}

static int orphan_increments(void)
{
	for (int n = 0; n < 1000; n++)
		shmet_counter_inc(kept[0]);
	return shmet_region_index() == -1 ? 0 : 2;
}

#define ORPHAN_THREADS 4
#define ORPHAN_PER_THREAD 300000 /* with a pause every 200: over a second, so claims are retried meanwhile */

static void *orphan_thread(void *arg)
{
	(void)arg;
	for (int n = 0; n < ORPHAN_PER_THREAD; n++) {
		shmet_counter_inc(kept[1]);
		if (n % 200 == 0) {
			struct timespec ms = {0, 1000000};
			nanosleep(&ms, NULL);
		}
	}
	return NULL;
}

static int orphan_threads(void)
{
	pthread_t t[ORPHAN_THREADS];
	for (int i = 0; i < ORPHAN_THREADS; i++)
		if (pthread_create(&t[i], NULL, orphan_thread, NULL) != 0)
			return 3;
	for (int i = 0; i < ORPHAN_THREADS; i++)
		pthread_join(t[i], NULL);
	return shmet_region_index() == -1 ? 0 : 2;
}

static size_t count_lines(const char *text, const char *needle)
{
	size_t n = 0;
	for (const char *p = text; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

/* A process without a region: 1000 increments through an inherited handle
 * raise the segment's orphan drop counter by exactly 1000, and the process
 * says so once on stderr, unless SHMETRICS_QUIET is set. */
static void test_capacity_orphan_writes_counted_and_said_once(void **state)
{
	(void)state;
	tsupport_fold(seg); /* the previous case's late child */
	int idx = spawn_holder(0);
	assert_true(idx >= 0 && idx != master_region);
	for (int quiet = 0; quiet < 2; quiet++) {
		struct seg_stats before, after;
		read_stats(&before);
		char *text = NULL;
		int st = run_orphan(orphan_increments, quiet, &text);
		read_stats(&after);
		if (st != 0)
			fail_msg("orphan child: expected exit 0, got %d (2: it got a region)", st);
		uint64_t got = after.dropped_orphan - before.dropped_orphan;
		if (got != 1000)
			fail_msg("sh_dropped_orphan (quiet=%d): expected +1000, got +%llu", quiet, (unsigned long long)got);
		size_t said = count_lines(text, "shmetrics: ");
		size_t no_region = count_lines(text, "no region in");
		if (said != (quiet ? 0u : 1u) || no_region != said || (!quiet && !strstr(text, "SHMETRICS_QUIET")))
			fail_msg("stderr (quiet=%d): expected %s, got \"%s\"", quiet,
				 quiet ? "nothing" : "one \"no region\" line naming SHMETRICS_QUIET", text);
		free(text);
	}
	/* threads of one orphan: every write counted once, none lost */
	struct seg_stats before, after;
	read_stats(&before);
	char *text = NULL;
	int st = run_orphan(orphan_threads, 0, &text);
	read_stats(&after);
	if (st != 0)
		fail_msg("threaded orphan child: expected exit 0, got %d (2: it got a region)", st);
	uint64_t got = after.dropped_orphan - before.dropped_orphan;
	if (got != (uint64_t)ORPHAN_THREADS * ORPHAN_PER_THREAD)
		fail_msg("sh_dropped_orphan (%d threads): expected +%llu, got +%llu", ORPHAN_THREADS,
			 (unsigned long long)ORPHAN_THREADS * ORPHAN_PER_THREAD, (unsigned long long)got);
	if (count_lines(text, "no region in") != 1)
		fail_msg("stderr (%d threads): expected one \"no region\" line, got \"%s\"", ORPHAN_THREADS, text);
	if (after.claim_failures - before.claim_failures < 2)
		fail_msg("sh_claim_failures: expected the first claim and at least one retry, got +%llu",
			 (unsigned long long)(after.claim_failures - before.claim_failures));
	free(text);
	check_kept(5 + 7 + 7);
}

/* An orphan keeps trying to claim, about once a second: when a region is
 * freed it gets it at a write, and its later writes count. */
static int orphan_until_claimed(void)
{
	int wrote = 0;
	if (shmet_region_index() != -1)
		return 2;
	if (write(3, "o", 1) != 1) /* orphaned: the parent frees a region now */
		return 3;
	uint64_t until = shmet__now_ns(CLOCK_MONOTONIC) + UINT64_C(10000000000);
	do {
		shmet_counter_inc(kept[0]);
		wrote++;
		if (__atomic_load_n(&shmet__base, __ATOMIC_RELAXED))
			break;
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	} while (shmet__now_ns(CLOCK_MONOTONIC) < until);
	if (!__atomic_load_n(&shmet__base, __ATOMIC_RELAXED))
		return 4;
	for (int n = 0; n < 10; n++)
		shmet_counter_inc(kept[0]);
	return write(3, &wrote, sizeof wrote) == (ssize_t)sizeof wrote ? 0 : 5;
}

static void test_capacity_orphan_claims_again_when_a_region_frees(void **state)
{
	(void)state;
	tsupport_fold(seg);
	int idx = spawn_holder(0), holder = nholders - 1;
	assert_true(idx >= 0 && idx != master_region);
	struct seg_stats before, after;
	read_stats(&before);
	int p[2];
	assert_int_equal(pipe(p), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		alarm(CHILD_ALARM);
		for (int k = 0; k < nholders; k++)
			if (gates[k] >= 0)
				close(gates[k]);
		close(p[0]);
		dup2(p[1], 3);
		setenv("SHMETRICS_QUIET", "1", 1);
		_exit(orphan_until_claimed());
	}
	close(p[1]);
	char o = 0;
	int wrote = -1;
	int ok = read(p[0], &o, 1) == 1;
	if (ok) {
		int st = release_holder(holder);
		if (st != 0)
			fail_msg("holder: expected exit 0, got %d", st);
		tsupport_fold(seg);
		ok = read(p[0], &wrote, sizeof wrote) == (ssize_t)sizeof wrote;
	}
	close(p[0]);
	int st = tsupport_wait(pid);
	if (!ok || st != 0)
		fail_msg("orphan: expected to claim a freed region within 10 s and exit 0, got status %d "
			 "(2: had a region, 4: never claimed)",
			 st);
	read_stats(&after);
	/* the write that claimed and the 10 after it count; the others dropped */
	uint64_t dropped = after.dropped_orphan - before.dropped_orphan;
	if (dropped != (uint64_t)wrote - 1)
		fail_msg("sh_dropped_orphan: expected +%d, got +%llu", wrote - 1, (unsigned long long)dropped);
	check_kept(5 + 7 + 7 + 11);
	tsupport_fold(seg);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char *buf = calloc(1, 65536);
	if (buf)
		buf[fread(buf, 1, 65535, f)] = 0;
	fclose(f);
	return buf;
}

/* Lost writes are not silent: shmetrics-dump --check lists the drop and
 * claim-failure counters and a dead region nothing folds as problems (exit
 * 1), and a collector started on the segment logs them at its first scan. */
static void test_capacity_losses_reported_by_check_and_collector(void **state)
{
	(void)state;
	tsupport_fold(seg);
	struct seg_stats st;
	read_stats(&st);
	assert_true(st.dropped_orphan > 0 && st.claim_failures > 0 && st.info[master_region].dropped > 0);
	spawn_holder(1);
	release_last_holder(); /* a dead region, and no collector to fold it */

	char cmd[512], *out = NULL;
	snprintf(cmd, sizeof cmd, "%s --check %s 2>&1", tsupport_bin("shmetrics-dump"), seg);
	int rc = tsupport_run(cmd, &out);
	char orphan[96], claims[96], region[96];
	snprintf(orphan, sizeof orphan, "problem: header: %llu writes dropped by processes that had no region",
		 (unsigned long long)st.dropped_orphan);
	snprintf(claims, sizeof claims, "problem: header: %llu attempts to claim a region failed",
		 (unsigned long long)st.claim_failures);
	snprintf(region, sizeof region, "problem: region %d (pid %u): %llu writes dropped", master_region,
		 st.info[master_region].pid, (unsigned long long)st.info[master_region].dropped);
	int found = strstr(out, orphan) && strstr(out, claims) && strstr(out, region) &&
		    strstr(out, "not yet folded and no collector is running");
	if (rc != 1 || !found)
		fail_msg("--check: expected exit 1 listing \"%s\", \"%s\", \"%s\" and the unfolded dead region; got exit %d:\n%s",
			 orphan, claims, region, rc, out);
	free(out);

	struct tdaemon d;
	assert_int_equal(tsupport_daemon_start(&d, seg, NULL), 0);
	char *log = slurp(d.log);
	int stopped = tsupport_daemon_stop(&d, 0);
	char *line = log ? strstr(log, "writes dropped: ") : NULL;
	if (!line || !strstr(line, "region claims failed: "))
		fail_msg("collector log: expected a line \"writes dropped: N (+N), region claims failed: M (+M)\", got:\n%s",
			 log ? log : "(no log)");
	assert_int_equal(stopped, 0);
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_capacity_region_full_fallback_counted, teardown_holders),
		cmocka_unit_test_teardown(test_capacity_segment_full_child_orphaned_counted, teardown_holders),
		cmocka_unit_test_teardown(test_capacity_folded_region_reclaimed_by_next_child, teardown_holders),
		cmocka_unit_test_teardown(test_capacity_late_claim_keeps_inherited_handles, teardown_holders),
		cmocka_unit_test_teardown(test_capacity_orphan_writes_counted_and_said_once, teardown_holders),
		cmocka_unit_test_teardown(test_capacity_orphan_claims_again_when_a_region_frees, teardown_holders),
		cmocka_unit_test_teardown(test_capacity_losses_reported_by_check_and_collector, teardown_holders),
	};
	return cmocka_run_group_tests(tests, setup, teardown_holders);
}
