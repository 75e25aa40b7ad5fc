/* The family registry: a family's shape is decided once, in the segment, and
 * no fold ever drops or frees what it did not fold.  Two processes that
 * disagree, every sample-name clash of the report, and the fold's error
 * paths with faults injected. */
#include "tsupport.h"
#include "collector.h"
#include "shmetrics.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *seg;

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("registry");
	struct shmet_options o = {seg, 32, 1 << 20, 0, false};
	return shmet_init(&o) == SHMET_OK ? 0 : -1;
}

static uint64_t refused(void)
{
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	uint64_t n = __atomic_load_n(&s.map.hdr->sh_registrations_refused, __ATOMIC_RELAXED);
	shmet_segment_close(&s);
	return n;
}

/* A child runs fn, writes its int result and message to the pipe, and
 * waits to be killed. */
struct child {
	pid_t pid;
	int rc;
	char msg[SHMET_ERRBUF];
};

static void run_child(struct child *ch, int (*fn)(char *msg))
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	ch->pid = fork();
	assert_true(ch->pid >= 0);
	if (ch->pid == 0) {
		char msg[SHMET_ERRBUF] = "";
		int rc = fn(msg);
		if (write(p[1], &rc, sizeof rc) != sizeof rc || write(p[1], msg, sizeof msg) != sizeof msg)
			_exit(3);
		for (;;)
			pause();
	}
	assert_int_equal(read(p[0], &ch->rc, sizeof ch->rc), (ssize_t)sizeof ch->rc);
	assert_int_equal(read(p[0], ch->msg, sizeof ch->msg), (ssize_t)sizeof ch->msg);
	close(p[0]);
	close(p[1]);
}

static void kill_child(struct child *ch)
{
	kill(ch->pid, SIGKILL);
	tsupport_wait(ch->pid);
}

static int worker_a(char *msg)
{
	shmet_family *f;
	const double b[] = {1};
	int rc = shmet_histogram_register(&f, "latency_seconds", "A's latency.", b, 1, 0, NULL);
	snprintf(msg, SHMET_ERRBUF, "%s", shmet_last_error());
	shmet_histogram h = shmet_histogram_get(f, NULL);
	for (int i = 0; i < 100; i++)
		shmet_histogram_observe(h, 0.5);
	return rc;
}

static int worker_b(char *msg)
{
	shmet_family *f;
	const double b[] = {2};
	int rc = shmet_histogram_register(&f, "latency_seconds", "B's latency.", b, 1, 0, NULL);
	snprintf(msg, SHMET_ERRBUF, "%s", shmet_last_error());
	shmet_histogram h = shmet_histogram_get(f, NULL); /* the fallback: writes dropped, counted */
	for (int i = 0; i < 5; i++)
		shmet_histogram_observe(h, 0.5);
	return rc;
}

/* The report: A registers buckets {1} and observes 100; B registers {2}
 * and observes 5; killing B took _count from 100 to 5, and A's exit lost
 * its 100.  Now B is refused, with A's shape in the reason. */
static void test_registry_second_shape_refused_nothing_lost(void **state)
{
	(void)state;
	uint64_t refused0 = refused();
	struct child a, b;
	run_child(&a, worker_a);
	assert_int_equal(a.rc, SHMET_OK);
	run_child(&b, worker_b);
	if (b.rc != SHMET_E_TYPE_CLASH || !strstr(b.msg, "histogram with labels {} and buckets {1}"))
		fail_msg("B: expected %d naming A's shape, got %d \"%s\"", SHMET_E_TYPE_CLASH, b.rc, b.msg);
	assert_int_equal(refused(), refused0 + 1);
	assert_int_equal(tsupport_count(seg, "latency_seconds", NULL), 100);
	kill_child(&b);
	tsupport_fold(seg);
	assert_int_equal(tsupport_count(seg, "latency_seconds", NULL), 100);
	kill_child(&a);
	tsupport_fold(seg);
	assert_int_equal(tsupport_count(seg, "latency_seconds", NULL), 100);
	assert_double_equal_exact(tsupport_value(seg, "latency_seconds", NULL), 50);
}

/* Every clash of the report, within one process, in both orders. */
static void test_registry_sample_name_clashes_refused(void **state)
{
	(void)state;
	static const struct {
		enum shmet_type t1;
		const char *n1;
		enum shmet_type t2;
		const char *n2;
	} pairs[] = {
		{SHMET_SUMMARY, "p1_s", SHMET_COUNTER, "p1_s_count"},
		{SHMET_HISTOGRAM, "p2_h", SHMET_COUNTER, "p2_h_bucket"},
		{SHMET_COUNTER, "p3_c", SHMET_GAUGE, "p3_c_created"},
		{SHMET_COUNTER, "p4_c", SHMET_GAUGE, "p4_c"},
		{SHMET_HISTOGRAM, "p5_x", SHMET_GAUGE, "p5_x_count"},
		{SHMET_SUMMARY, "p6_x", SHMET_GAUGE, "p6_x_created"},
		{SHMET_HISTOGRAM, "p7_x", SHMET_SUMMARY, "p7_x_bucket"},
		{SHMET_GAUGE, "p8_y_sum", SHMET_SUMMARY, "p8_y"},
	};
	for (int order = 0; order < 2; order++)
		for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
			struct shmet_family_spec a = {pairs[i].t1, pairs[i].n1, "", 0, NULL, SHMET_GAUGE_SUM, 0, NULL};
			struct shmet_family_spec b = {pairs[i].t2, pairs[i].n2, "", 0, NULL, SHMET_GAUGE_SUM, 0, NULL};
			char n1[64], n2[64];
			/* a fresh pair of names for the second order */
			snprintf(n1, sizeof n1, "o%d%s", order, pairs[i].n1);
			snprintf(n2, sizeof n2, "o%d%s", order, pairs[i].n2);
			a.name = order ? n2 : n1, a.type = order ? pairs[i].t2 : pairs[i].t1;
			b.name = order ? n1 : n2, b.type = order ? pairs[i].t1 : pairs[i].t2;
			shmet_family *fa, *fb;
			assert_int_equal(shmet_register(&a, &fa), SHMET_OK);
			int rc = shmet_register(&b, &fb);
			if (rc != SHMET_E_TYPE_CLASH || fb)
				fail_msg("%s %s after %s %s: expected a clash, got %d \"%s\"", shmet_type_name(b.type), b.name,
					 shmet_type_name(a.type), a.name, rc, shmet_last_error());
		}
	shmet_family *f;
	assert_int_equal(shmet_counter_register(&f, "shmetricsd_fake_total", "", 0, NULL), SHMET_E_INVALID_NAME);
	assert_non_null(strstr(shmet_last_error(), "shmetricsd_"));
}

static int reg_hist_x(char *msg)
{
	shmet_family *f;
	int rc = shmet_histogram_register(&f, "cross_x", "", NULL, 0, 0, NULL);
	snprintf(msg, SHMET_ERRBUF, "%s", shmet_last_error());
	return rc;
}

static int reg_gauge_x_count(char *msg)
{
	shmet_family *f;
	int rc = shmet_gauge_register(&f, "cross_x_count", "", SHMET_GAUGE_SUM, 0, NULL);
	snprintf(msg, SHMET_ERRBUF, "%s", shmet_last_error());
	shmet_gauge_set(shmet_gauge_get(f, NULL), 7);
	return rc;
}

/* A rolling deploy: the new version's process changes a family's type,
 * labels, gauge mode or buckets while the old one runs. */
static const char *const lab_a[] = {"route"};
static const char *const lab_b[] = {"path"};
static const double b1[] = {1, 2};

static int old_version(char *msg)
{
	shmet_family *f;
	int rc = shmet_counter_register(&f, "deploy_requests_total", "Old help.", 1, lab_a);
	rc |= shmet_gauge_register(&f, "deploy_inflight", "", SHMET_GAUGE_MAX, 0, NULL);
	rc |= shmet_histogram_register(&f, "deploy_seconds", "", b1, 2, 0, NULL);
	rc |= shmet_gauge_register(&f, "deploy_queue", "", SHMET_GAUGE_SUM, 0, NULL);
	shmet_family *c;
	shmet_counter_register(&c, "deploy_same_total", "First help.", 0, NULL);
	shmet_counter_add(shmet_counter_get(c, NULL), 2);
	snprintf(msg, SHMET_ERRBUF, "%s", shmet_last_error());
	return rc;
}

static int new_version(char *msg)
{
	shmet_family *f;
	int clashes = 0;
	clashes += shmet_counter_register(&f, "deploy_requests_total", "", 1, lab_b) == SHMET_E_TYPE_CLASH;
	clashes += shmet_gauge_register(&f, "deploy_inflight", "", SHMET_GAUGE_MIN, 0, NULL) == SHMET_E_TYPE_CLASH;
	clashes += shmet_histogram_register(&f, "deploy_seconds", "", b1, 1, 0, NULL) == SHMET_E_TYPE_CLASH;
	clashes += shmet_summary_register(&f, "deploy_queue", "", 0, NULL) == SHMET_E_TYPE_CLASH;
	/* the same shape with another help is the same family */
	if (shmet_counter_register(&f, "deploy_same_total", "Second help.", 0, NULL) != SHMET_OK)
		return -1;
	shmet_counter_add(shmet_counter_get(f, NULL), 3);
	snprintf(msg, SHMET_ERRBUF, "%s", shmet_last_error());
	return clashes;
}

static void test_registry_refuses_across_processes(void **state)
{
	(void)state;
	struct child x, y, o, n;
	run_child(&x, reg_hist_x);
	assert_int_equal(x.rc, SHMET_OK);
	run_child(&y, reg_gauge_x_count);
	if (y.rc != SHMET_E_TYPE_CLASH || !strstr(y.msg, "cross_x"))
		fail_msg("gauge cross_x_count beside histogram cross_x: got %d \"%s\"", y.rc, y.msg);
	run_child(&o, old_version);
	assert_int_equal(o.rc, SHMET_OK);
	run_child(&n, new_version);
	assert_int_equal(n.rc, 4);
	assert_double_equal_exact(tsupport_value(seg, "deploy_same_total", NULL), 5);
	/* the registry's (first) help is the one shown */
	struct shmet_segment s;
	struct shmet_snapshot snap;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, SHMET_ATTACH_READONLY, NULL, &s, err), SHMET_OK);
	shmet_snapshot_take(&s, &snap);
	const struct shmet_snap_family *f = shmet_snapshot_family(&snap, "deploy_same_total");
	assert_non_null(f);
	assert_string_equal(f->help, "First help.");
	assert_null(shmet_snapshot_family(&snap, "cross_x_count"));
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
	struct child *all[] = {&x, &y, &o, &n};
	for (int i = 0; i < 4; i++)
		kill_child(all[i]);
	tsupport_fold(seg);
	assert_double_equal_exact(tsupport_value(seg, "deploy_same_total", NULL), 5);
}

/* ---- the fold's error paths ---- */

static shmet_family *fold_fam;

static int add_one_series(char *msg)
{
	(void)msg;
	shmet_counter_add(shmet_counter_labels(fold_fam, "x"), 1.25);
	return 0;
}

static double fold_total(void)
{
	const char *v[] = {"x", NULL};
	return tsupport_value(seg, "fold_paths_total", v);
}

/* A fold that fails part-way (here: at the second dead region's series)
 * must leave both regions to count from where they are: freeing the first
 * one, added only to a half that was never flipped, would lose it. */
static void test_registry_failed_fold_frees_nothing_unflipped(void **state)
{
	(void)state;
	const char *l[] = {"k"};
	assert_int_equal(shmet_counter_register(&fold_fam, "fold_paths_total", "", 1, l), SHMET_OK);
	tsupport_fold(seg); /* nothing dead from earlier cases */
	double base = fold_total();
	struct child c1, c2;
	run_child(&c1, add_one_series);
	run_child(&c2, add_one_series);
	kill_child(&c1);
	kill_child(&c2);
	double before = fold_total();
	assert_double_equal_exact(before, (isnan(base) ? 0 : base) + 2.5);
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	static struct shmet_fold_result res;
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s, err), SHMET_OK);
	assert_int_equal(shmet_segment_lock_collector(&s, NULL), SHMET_OK);
	unsigned active = shmet_retired_active(&s);
	shmet_test_fold_fail_at = 2;
	assert_int_not_equal(shmet_fold_dead(&s, &res), SHMET_OK);
	shmet_test_fold_fail_at = 0;
	assert_false(res.flipped);
	assert_int_equal(res.to_free, 0);
	assert_int_equal(shmet_retired_active(&s), active);
	shmet_free_folded(&s, &res); /* as the collector does after every fold */
	shmet_segment_close(&s);
	assert_double_equal_exact(fold_total(), before);
	tsupport_fold(seg);
	assert_double_equal_exact(fold_total(), before);
}

/* An active half that fails validation stops folding: the totals are not
 * started again from zero, nothing is freed, and once the half is repaired
 * every value is there. */
static void test_registry_damaged_retired_half_blocks_folding(void **state)
{
	(void)state;
	double before = fold_total();
	struct child c;
	run_child(&c, add_one_series);
	kill_child(&c);
	assert_double_equal_exact(fold_total(), before + 1.25);
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	static struct shmet_fold_result res;
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s, err), SHMET_OK);
	assert_int_equal(shmet_segment_lock_collector(&s, NULL), SHMET_OK);
	unsigned active = shmet_retired_active(&s);
	struct shmet_region_header *rg =
		(struct shmet_region_header *)(void *)((unsigned char *)shmet_retired_header(&s, active) + s.retired_hdr_size);
	uint64_t good = rg->rg_dir_end;
	rg->rg_dir_end = good + 4; /* not a multiple of 8: the half fails validation */
	assert_int_equal(shmet_fold_dead(&s, &res), SHMET_E_CORRUPT);
	assert_true(res.blocked);
	assert_false(res.flipped);
	assert_int_equal(res.to_free, 0);
	shmet_free_folded(&s, &res);
	assert_int_equal(shmet_retired_active(&s), active);
	rg->rg_dir_end = good; /* repaired */
	shmet_segment_close(&s);
	assert_double_equal_exact(fold_total(), before + 1.25);
	tsupport_fold(seg);
	assert_double_equal_exact(fold_total(), before + 1.25);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	static char buf[65536];
	size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
	buf[n] = 0;
	if (f)
		fclose(f);
	return buf;
}

/* What an operator sees of a stopped fold and of refused registrations: a
 * 503 on /-/ready with the reason, the metrics, and one log line each. */
static void test_registry_blocked_fold_and_refusals_are_loud(void **state)
{
	(void)state;
	struct child c;
	run_child(&c, add_one_series);
	kill_child(&c);
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s, err), SHMET_OK);
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)((unsigned char *)shmet_retired_header(
										 &s, shmet_retired_active(&s)) +
									 s.retired_hdr_size);
	uint64_t good = rg->rg_dir_end;
	rg->rg_dir_end = good + 4;
	uint64_t nrefused = refused();
	assert_true(nrefused > 0); /* earlier cases were refused */
	struct tdaemon d;
	assert_int_equal(tsupport_daemon_start(&d, seg, NULL), 0);
	char *body = NULL, *metrics = NULL;
	int ready = tsupport_http_get(d.port, "/-/ready", NULL, &body, NULL);
	int got = tsupport_http_get(d.port, "/metrics", NULL, &metrics, NULL);
	const char *log = slurp(d.log); /* before the stop removes it */
	tsupport_daemon_stop(&d, SIGTERM);
	rg->rg_dir_end = good; /* repaired */
	shmet_segment_close(&s);
	assert_int_equal(ready, 503);
	assert_non_null(strstr(body, "folding stopped"));
	assert_int_equal(got, 200);
	assert_double_equal_exact(tsupport_sample(metrics, "shmetricsd_fold_blocked"), 1);
	assert_double_equal_exact(tsupport_sample(metrics, "shmetricsd_registrations_refused_total"), (double)nrefused);
	if (!strstr(log, "fold stopped") || !strstr(log, "family registrations refused"))
		fail_msg("the log lacks the fold or the refusals:\n%s", log);
	free(body);
	free(metrics);
	tsupport_fold(seg); /* repaired: folds again */
}

/* After a flip, a view build that fails keeps the old view, which reads the
 * old half and the folded regions: a second fold then must not overwrite
 * that half (the old view would count the second region twice), nor may the
 * regions be freed, until a view of the new half is published. */
static void test_registry_failed_view_after_flip_counts_once(void **state)
{
	(void)state;
	static struct collector c;
	struct collector_config cfg = {.segment = seg, .listen_host = "127.0.0.1", .scan_interval = 1};
	char err[256];
	assert_int_equal(collector_open(&c, &cfg, err, sizeof err), SHMET_OK);
	double total = fold_total();
	struct child c1, c2;
	run_child(&c1, add_one_series);
	collector_scan(&c);
	const struct view *v1 = c.view; /* holds c1's cells and the active half */
	kill_child(&c1);
	collector_test_fail_view_builds = 3;
	collector_scan(&c); /* folds c1 and flips; the view build fails */
	assert_true(c.flip_unpublished);
	run_child(&c2, add_one_series);
	kill_child(&c2);
	collector_scan(&c); /* must not fold c2 into the half v1 still reads */
	collector_scan(&c);
	assert_ptr_equal(c.view, v1);
	const struct view_family *vf = NULL;
	for (uint32_t i = 0; i < v1->nfamilies; i++)
		if (strcmp(v1->families[i].name, "fold_paths_total") == 0)
			vf = &v1->families[i];
	assert_non_null(vf);
	struct shmet_agg acc;
	view_series_agg(vf, &vf->series[0], &acc);
	/* the old half and c1's cells; c2 came after this view */
	assert_double_equal_exact(shmet_agg_value(&acc, SHMET_COUNTER), total + 1.25);
	assert_int_equal(collector_test_fail_view_builds, 0);
	collector_scan(&c); /* published; c1's region freed */
	assert_false(c.flip_unpublished);
	collector_scan(&c); /* folds c2 */
	collector_scan(&c);
	assert_int_equal(c.view->stats.regions_dead, 0);
	assert_double_equal_exact(fold_total(), total + 2.5);
	collector_close(&c);
}

/* A series at every limit at once (a 194-byte name, 16 values of 1024
 * bytes) is a series like any other: its key once did not fit the view's
 * buffer, and every view build after it failed. */
static void test_registry_largest_series_key_served(void **state)
{
	(void)state;
	char name[SHMET_MAX_NAME_LEN - 5], lnames[SHMET_MAX_LABELS][8];
	static char value[SHMET_MAX_VALUE_LEN + 1];
	memset(name, 'n', sizeof name - 1);
	name[sizeof name - 1] = 0;
	memset(value, 'v', SHMET_MAX_VALUE_LEN);
	const char *labels[SHMET_MAX_LABELS], *values[SHMET_MAX_LABELS];
	for (unsigned i = 0; i < SHMET_MAX_LABELS; i++) {
		snprintf(lnames[i], sizeof lnames[i], "l%u", i);
		labels[i] = lnames[i];
		values[i] = value;
	}
	shmet_family *f;
	assert_int_equal(shmet_counter_register(&f, name, "", SHMET_MAX_LABELS, labels), SHMET_OK);
	shmet_counter c1 = shmet_counter_get(f, values);
	assert_true(c1.off != 0);
	shmet_counter_add(c1, 3);
	static struct collector c;
	struct collector_config cfg = {.segment = seg, .listen_host = "127.0.0.1", .scan_interval = 1};
	char err[256];
	assert_int_equal(collector_open(&c, &cfg, err, sizeof err), SHMET_OK);
	bool found = false;
	for (uint32_t i = 0; i < c.view->nfamilies; i++)
		found |= strncmp(c.view->families[i].name, name, sizeof name - 1) == 0 && c.view->families[i].nseries == 1;
	collector_close(&c);
	assert_true(found);
}

/* The REMOVE record at index k (0: the first) of the registry, writable:
 * the test plays a worker that rewrites it after appending it. */
static unsigned char *removal_record(const struct shmet_segment *s, int k)
{
	struct shmet_area a;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_registry_area(s, &a, err), SHMET_OK);
	for (uint64_t off = sizeof(struct shmet_region_header); off < a.dir_end;) {
		uint32_t size;
		uint16_t kind;
		memcpy(&size, a.base + off, 4);
		memcpy(&kind, a.base + off + 4, 2);
		assert_true(size >= 8 && size % 8 == 0);
		if (kind == SHMET_REC_REMOVE && k-- == 0)
			return (unsigned char *)a.base + off;
		off += size;
	}
	fail_msg("no removal record %d", k);
	return NULL;
}

/* A worker can append any REMOVE record: each damaged one is refused and
 * counted, the ones around it still apply, and none reads outside its copy. */
static void test_registry_damaged_removals_refused(void **state)
{
	(void)state;
	shmet_family *f, *pw;
	const char *l[] = {"k"};
	assert_int_equal(shmet_counter_register(&f, "rmh_total", "", 1, l), SHMET_OK);
	assert_int_equal(shmet_gauge_register(&pw, "rmh_pw", "", SHMET_GAUGE_PER_WORKER, 1, l), SHMET_OK);
	const char *va[] = {"aa"};
	enum { DAMAGED = 7 };
	for (int i = 0; i < DAMAGED + 2; i++)
		assert_int_equal(shmet_series_remove(f, va), SHMET_OK);
	/* the writer refuses to remove a per-worker gauge: forge one from a counter's */
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s, err), SHMET_OK);
	struct shmet_rec_remove rm;
	unsigned char *r[DAMAGED];
	for (int i = 0; i < DAMAGED; i++)
		r[i] = removal_record(&s, i + 1);
	memcpy(&rm, r[0], sizeof rm);
	uint32_t pw_off = 0;
	{
		struct shmet_registry reg;
		memset(&reg, 0, sizeof reg);
		assert_int_equal(shmet_registry_update(&s, &reg), SHMET_OK);
		for (uint32_t i = 0; i < reg.n; i++)
			if (reg.e[i].fam->name_len == 6 && memcmp(reg.e[i].fam->name, "rmh_pw", 6) == 0)
				pw_off = (uint32_t)reg.e[i].off;
		assert_int_equal(reg.nrm, DAMAGED + 2);
		shmet_registry_free(&reg);
	}
	assert_true(pw_off != 0);
	uint16_t flags = 0x40, two = 2, zero = 0, long_len = 60000;
	uint32_t nowhere = rm.rm_family_off + 8;
	memcpy(r[0] + offsetof(struct shmet_rec_remove, rm_rec.rec_flags), &flags, 2);
	memcpy(r[1] + offsetof(struct shmet_rec_remove, rm_family_off), &nowhere, 4);
	memcpy(r[2] + offsetof(struct shmet_rec_remove, rm_nvalues), &two, 2);
	memcpy(r[3] + sizeof rm, &long_len, 2);         /* a value past its record */
	memcpy(r[4] + sizeof rm + 2, "\xff", 1);        /* not UTF-8 */
	memcpy(r[5] + offsetof(struct shmet_rec_remove, rm_family_off), &pw_off, 4);
	memcpy(r[6] + offsetof(struct shmet_rec_remove, rm_nvalues), &zero, 2); /* a whole family's without its flag */
	struct shmet_registry reg;
	memset(&reg, 0, sizeof reg);
	assert_int_equal(shmet_registry_update(&s, &reg), SHMET_OK);
	assert_false(reg.stopped);
	assert_int_equal(reg.corrupt, DAMAGED);
	assert_int_equal(reg.nrm, 2); /* the first and the last */
	assert_non_null(strstr(reg.err, "removal at"));
	for (uint32_t i = 0; i < reg.nrm; i++) {
		assert_memory_equal(reg.rm[i].fam->name, "rmh_total", 9);
		assert_false(reg.rm[i].whole);
	}
	/* records after the damaged ones are still read */
	shmet_family *g;
	assert_int_equal(shmet_counter_register(&g, "rmh_after_total", "", 0, NULL), SHMET_OK);
	assert_int_equal(shmet_registry_update(&s, &reg), SHMET_OK);
	assert_non_null(shmet_registry_find(&reg, "rmh_after_total", strlen("rmh_after_total")));
	shmet_registry_free(&reg);
	shmet_segment_close(&s);
}

/* Last: it fills the registry. */
static void test_registry_full_refused_and_counted(void **state)
{
	(void)state;
	uint64_t refused0 = refused();
	int rc = SHMET_OK, n = 0;
	char name[64];
	shmet_family *f;
	while (rc == SHMET_OK && n < 100000) {
		snprintf(name, sizeof name, "filler_%06d_total", n++);
		rc = shmet_counter_register(&f, name, "", 0, NULL);
	}
	if (rc != SHMET_E_REGISTRY_FULL)
		fail_msg("after %d families: expected %d, got %d \"%s\"", n, SHMET_E_REGISTRY_FULL, rc, shmet_last_error());
	assert_int_equal(refused(), refused0 + 1);
	assert_null(f);
	/* families registered before still work */
	assert_int_equal(shmet_counter_register(&f, "filler_000000_total", "", 0, NULL), SHMET_OK);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_registry_second_shape_refused_nothing_lost),
		cmocka_unit_test(test_registry_sample_name_clashes_refused),
		cmocka_unit_test(test_registry_refuses_across_processes),
		cmocka_unit_test(test_registry_failed_fold_frees_nothing_unflipped),
		cmocka_unit_test(test_registry_damaged_retired_half_blocks_folding),
		cmocka_unit_test(test_registry_blocked_fold_and_refusals_are_loud),
		cmocka_unit_test(test_registry_failed_view_after_flip_counts_once),
		cmocka_unit_test(test_registry_largest_series_key_served),
		cmocka_unit_test(test_registry_damaged_removals_refused),
		cmocka_unit_test(test_registry_full_refused_and_counted),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
