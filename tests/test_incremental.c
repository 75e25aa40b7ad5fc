/* The collector's incremental index: each scan reads only what the segment
 * gained since the last one, and publishes a view that shares everything
 * unchanged with the previous one.  These cases try to make it keep what it
 * should drop, or miss what it should read. */
#include "collector.h"
#include "shmetrics.h"
#include "tsupport.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu-bp.h>

/* A writer process that does what it is told, one command at a time. */
struct writer {
	pid_t pid;
	int cmd, ack;
};

struct wcmd {
	char op;       /* c: counter series += n; m: n new series, +1 each; g: gauge series := n;
			  G: n gauge series label00.., := 1; q: exit */
	char label[31];
	uint32_t n;
};

static void writer_loop(const char *seg, int cmd, int ack)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	struct shmet_options o = {seg, 0, 0, 0, false};
	shmet_family *f, *g, *h;
	const char *l[] = {"path"};
	if (shmet_init(&o) != SHMET_OK ||
	    shmet_counter_register(&f, "inc_requests_total", "Requests.", 1, l) != SHMET_OK ||
	    shmet_gauge_register(&h, "inc_load", "Load.", SHMET_GAUGE_SUM, 1, l) != SHMET_OK ||
	    shmet_gauge_register(&g, "inc_temperature", "Temperature.", SHMET_GAUGE_MOSTRECENT, 0, NULL) != SHMET_OK)
		_exit(1);
	shmet_gauge_set(shmet_gauge_get(g, NULL), 21.5);
	struct wcmd w;
	while (read(cmd, &w, sizeof w) == (ssize_t)sizeof w) {
		char r = 1;
		if (w.op == 'q')
			_exit(0);
		if (w.op == 'c') {
			shmet_counter c = shmet_counter_labels(f, w.label);
			r = c.off != 0;
			shmet_counter_add_u64(c, w.n);
		} else if (w.op == 'g') {
			shmet_gauge gg = shmet_gauge_labels(h, w.label);
			r = gg.off != 0;
			shmet_gauge_set(gg, w.n);
		} else if (w.op == 'G') {
			for (uint32_t i = 0; i < w.n && r; i++) {
				char v[40];
				snprintf(v, sizeof v, "%s%02u", w.label, i);
				shmet_gauge gg = shmet_gauge_labels(h, v);
				r = gg.off != 0;
				shmet_gauge_set(gg, 1);
			}
		} else if (w.op == 'm') {
			for (uint32_t i = 0; i < w.n && r; i++) {
				char v[32];
				snprintf(v, sizeof v, "%s%u", w.label, i);
				shmet_counter c = shmet_counter_labels(f, v);
				r = c.off != 0;
				shmet_counter_inc(c);
			}
		}
		if (write(ack, &r, 1) != 1)
			_exit(1);
	}
	_exit(0);
}

static void writer_start(struct writer *w, const char *seg)
{
	int c[2], a[2];
	assert_int_equal(pipe(c), 0);
	assert_int_equal(pipe(a), 0);
	w->pid = fork();
	assert_true(w->pid >= 0);
	if (w->pid == 0) {
		close(c[1]);
		close(a[0]);
		writer_loop(seg, c[0], a[1]);
	}
	close(c[0]);
	close(a[1]);
	w->cmd = c[1];
	w->ack = a[0];
}

/* Send a command; wait for its answer unless told not to. */
static void writer_do(struct writer *w, char op, const char *label, uint32_t n, bool wait)
{
	struct wcmd m;
	memset(&m, 0, sizeof m);
	m.op = op;
	snprintf(m.label, sizeof m.label, "%s", label);
	m.n = n;
	assert_int_equal(write(w->cmd, &m, sizeof m), (ssize_t)sizeof m);
	if (wait) {
		char r = 0;
		assert_int_equal(read(w->ack, &r, 1), 1);
		assert_int_equal(r, 1);
	}
}

static void writer_wait_ack(struct writer *w)
{
	char r = 0;
	assert_int_equal(read(w->ack, &r, 1), 1);
	assert_int_equal(r, 1);
}

static void writer_kill(struct writer *w)
{
	kill(w->pid, SIGKILL);
	tsupport_wait(w->pid);
	close(w->cmd);
	close(w->ack);
}

static void open_collector(struct collector *c, const char *seg, uint32_t regions)
{
	struct collector_config cfg = {.segment = seg, .listen_host = "127.0.0.1", .listen_port = tsupport_free_port(),
				       .regions = regions, .region_size = 1u << 20, .scan_interval = 60};
	char err[256];
	if (collector_open(c, &cfg, err, sizeof err) != SHMET_OK)
		fail_msg("collector_open: %s", err);
}

/* Render the current view (text) into a NUL-terminated string. */
static char *render(struct collector *c)
{
	shmet_buf b;
	shmet_buf_init(&b);
	assert_true(collector_render(c, &b, SHMET_EXPO_TEXT));
	shmet_buf_putc(&b, 0);
	assert_false(b.oom);
	return b.data;
}

static const struct view_family *family(const struct view *v, const char *name)
{
	for (uint32_t i = 0; i < v->nfamilies; i++)
		if (strcmp(v->families[i].name, name) == 0)
			return &v->families[i];
	return NULL;
}

/* A series a worker creates between two scrapes is in the second, served
 * over HTTP without the updater's periodic scan (60 s here); and the family
 * that did not change keeps the very array the first view showed. */
static void test_incremental_series_between_scrapes_shown_rest_shared(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-between");
	open_collector(&c, seg, 4);
	char err[256];
	assert_int_equal(collector_start(&c, err, sizeof err), SHMET_OK);
	struct writer w;
	writer_start(&w, seg);
	writer_do(&w, 'c', "/a", 1, true);
	char *body;
	assert_int_equal(tsupport_http_get(c.bound_port, "/metrics", NULL, &body, NULL), 200);
	assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"/a\"}"), 1);
	assert_double_equal_exact(tsupport_sample(body, "inc_temperature"), 21.5);
	free(body);
	const struct view *v = view_enter(&c);
	const struct view_series *temp1 = family(v, "inc_temperature")->series;
	const struct view_series *req1 = family(v, "inc_requests_total")->series;
	view_leave(&c);
	for (int i = 0; i < 20; i++) {
		char l[16];
		snprintf(l, sizeof l, "/b%d", i);
		writer_do(&w, 'c', l, (uint32_t)i + 2, true);
		assert_int_equal(tsupport_http_get(c.bound_port, "/metrics", NULL, &body, NULL), 200);
		char want[64];
		snprintf(want, sizeof want, "inc_requests_total{path=\"%s\"}", l);
		if (tsupport_sample(body, want) != i + 2)
			fail_msg("scrape %d after the series %s came: %s is %g, expected %d", i, l, want,
				 tsupport_sample(body, want), i + 2);
		assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"/a\"}"), 1);
		free(body);
	}
	v = view_enter(&c);
	assert_int_equal(family(v, "inc_requests_total")->nseries, 21);
	bool same_temp = family(v, "inc_temperature")->series == temp1;
	bool same_req = family(v, "inc_requests_total")->series == req1;
	view_leave(&c);
	if (!same_temp)
		fail_msg("a family without new series got a new array: the view was rebuilt whole");
	assert_false(same_req);
	writer_kill(&w);
	collector_stop(&c);
	collector_close(&c);
}

/* ---- a region dies and is folded while a scrape renders the view that
 * still reads its cells ---- */

struct reader_arg {
	struct collector *c;
	int entered[2], go[2];
	double seen;
};

static void *reader(void *p)
{
	struct reader_arg *a = p;
	rcu_register_thread();
	const struct view *v = view_enter(a->c);
	char one = 1;
	assert_int_equal(write(a->entered[1], &one, 1), 1);
	assert_int_equal(read(a->go[0], &one, 1), 1);
	shmet_buf b;
	shmet_buf_init(&b);
	render_metrics(a->c, v, &b, SHMET_EXPO_TEXT);
	shmet_buf_putc(&b, 0);
	a->seen = tsupport_sample(b.data, "inc_requests_total{path=\"/x\"}");
	shmet_buf_free(&b);
	view_leave(a->c);
	rcu_unregister_thread();
	return NULL;
}

static void *scanner(void *p)
{
	rcu_register_thread();
	collector_scan(p);
	rcu_unregister_thread();
	return NULL;
}

static void test_incremental_fold_while_rendering_counts_once(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-fold");
	open_collector(&c, seg, 4);
	struct writer w;
	writer_start(&w, seg);
	writer_do(&w, 'c', "/x", 5, true);
	collector_scan(&c);
	const struct view *before = c.view;
	/* the writer's region (the collector may hold one of its own) */
	int wr = -1;
	struct shmet_region_info info;
	for (uint32_t i = 0; i < c.seg.regions; i++) {
		shmet_region_info(&c.seg, i, &info);
		if (info.state == SHMET_REGION_LIVE && info.pid == (uint32_t)w.pid)
			wr = (int)i;
	}
	assert_true(wr >= 0);
	struct reader_arg a = {.c = &c};
	assert_int_equal(pipe(a.entered), 0);
	assert_int_equal(pipe(a.go), 0);
	pthread_t rt, st;
	assert_int_equal(pthread_create(&rt, NULL, reader, &a), 0);
	char one;
	assert_int_equal(read(a.entered[0], &one, 1), 1); /* the reader holds the old view */
	writer_kill(&w);
	assert_int_equal(pthread_create(&st, NULL, scanner, &c), 0);
	/* the scan folds, flips, publishes; then it must wait for the reader */
	for (int i = 0; i < 500 && __atomic_load_n(&c.view, __ATOMIC_ACQUIRE) == before; i++)
		usleep(10000);
	bool published = __atomic_load_n(&c.view, __ATOMIC_ACQUIRE) != before;
	usleep(50000);
	shmet_region_info(&c.seg, (uint32_t)wr, &info);
	bool kept = info.state == SHMET_REGION_LIVE;
	/* let the reader go before any assertion: a failed one must not leave
	 * a read-side section open for the next test */
	assert_int_equal(write(a.go[1], &one, 1), 1);
	assert_int_equal(pthread_join(rt, NULL), 0);
	assert_int_equal(pthread_join(st, NULL), 0);
	assert_true(published);
	if (!kept)
		fail_msg("the folded region was freed while a reader still rendered from it");
	assert_double_equal_exact(a.seen, 5);
	char *body = render(&c);
	assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"/x\"}"), 5);
	assert_double_equal_exact(tsupport_sample(body, "inc_temperature"), 21.5); /* most recent: kept */
	free(body);
	collector_scan(&c); /* sees the freed region */
	shmet_region_info(&c.seg, (uint32_t)wr, &info);
	assert_int_equal(info.state, SHMET_REGION_FREE);
	body = render(&c);
	assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"/x\"}"), 5);
	free(body);
	for (int i = 0; i < 2; i++) {
		close(a.entered[i]);
		close(a.go[i]);
	}
	collector_close(&c);
}

/* A worker appends series while scans read its directory: every view holds
 * the series of the one before it, and the last holds every series once. */
static void test_incremental_appends_during_scans_none_lost(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-append");
	open_collector(&c, seg, 4);
	struct writer w;
	writer_start(&w, seg);
	enum { N = 4000 };
	writer_do(&w, 'm', "/m", N, false);
	uint32_t last = 0, views = 0;
	bool done = false;
	for (int i = 0; i < 100000 && !done; i++) {
		struct timeval tv = {0, 0};
		fd_set rd;
		FD_ZERO(&rd);
		FD_SET(w.ack, &rd);
		done = select(w.ack + 1, &rd, NULL, NULL, &tv) > 0;
		collector_scan(&c);
		const struct view_family *f = family(c.view, "inc_requests_total");
		uint32_t n = f ? f->nseries : 0;
		if (n < last)
			fail_msg("a view lost series: %u after %u", n, last);
		for (uint32_t k = 0; f && k < f->nseries; k++) {
			struct shmet_agg acc;
			view_series_agg(f, &f->series[k], &acc);
			double v = shmet_agg_value(&acc, SHMET_COUNTER);
			if (v != 0 && v != 1)
				fail_msg("series %s is %g", f->series[k].values[0], v);
		}
		views += n != last;
		last = n;
	}
	assert_true(done);
	writer_wait_ack(&w);
	collector_scan(&c);
	const struct view_family *f = family(c.view, "inc_requests_total");
	assert_non_null(f);
	assert_int_equal(f->nseries, N);
	for (uint32_t k = 0; k < f->nseries; k++) {
		struct shmet_agg acc;
		view_series_agg(f, &f->series[k], &acc);
		assert_double_equal_exact(shmet_agg_value(&acc, SHMET_COUNTER), 1);
		if (k && strcmp(f->series[k - 1].values[0], f->series[k].values[0]) >= 0)
			fail_msg("series out of order: %s before %s", f->series[k - 1].values[0], f->series[k].values[0]);
	}
	printf("# %u views grew while the worker appended\n", views);
	writer_kill(&w);
	collector_close(&c);
}

/* A region dies, is folded and freed behind the index's back, and a new
 * process claims it and writes a longer directory before the next scan: the
 * index must see the new generation and read the new directory from its
 * start, not carry on at the old position nor keep the old refs (whose
 * cells now belong to another series). */
static void test_incremental_region_reused_read_from_start(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-reuse");
	open_collector(&c, seg, 2); /* the collector may hold one */
	struct writer w1, w2;
	writer_start(&w1, seg);
	writer_do(&w1, 'c', "/a", 5, true);
	collector_scan(&c);
	struct shmet_region_info info;
	uint32_t wr = 0;
	for (uint32_t i = 0; i < c.seg.regions; i++) {
		shmet_region_info(&c.seg, i, &info);
		if (info.state == SHMET_REGION_LIVE && info.pid == (uint32_t)w1.pid)
			wr = i;
	}
	shmet_region_info(&c.seg, wr, &info);
	uint64_t gen = info.generation;
	writer_kill(&w1);
	/* this process holds the collector lock: fold through a second handle */
	struct shmet_segment s2;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s2, err), SHMET_OK);
	static struct shmet_fold_result res;
	assert_int_equal(shmet_fold_dead(&s2, &res), SHMET_OK);
	assert_int_equal(res.folded, 1);
	shmet_free_folded(&s2, &res);
	shmet_segment_close(&s2);
	writer_start(&w2, seg);
	writer_do(&w2, 'c', "/x", 1, true);
	writer_do(&w2, 'c', "/y", 1, true);
	writer_do(&w2, 'c', "/a", 7, true);
	shmet_region_info(&c.seg, wr, &info);
	assert_true(info.generation > gen && info.pid == (uint32_t)w2.pid); /* the same region, reused */
	collector_scan(&c);
	char *body = render(&c);
	double a = tsupport_sample(body, "inc_requests_total{path=\"/a\"}");
	double x = tsupport_sample(body, "inc_requests_total{path=\"/x\"}");
	double y = tsupport_sample(body, "inc_requests_total{path=\"/y\"}");
	if (a != 12 || x != 1 || y != 1)
		fail_msg("after the region's reuse: /a %g (expected 12), /x %g, /y %g (expected 1)\n%s", a, x, y, body);
	free(body);
	writer_kill(&w2);
	collector_close(&c);
}

/* Bytes a worker changes in a record the index has already read are not
 * read again: the series keeps the label it had, nothing new appears under
 * the forged label, and records appended after it are still read. */
static void test_incremental_record_rewritten_after_read_not_trusted(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-rewrite");
	open_collector(&c, seg, 2);
	struct writer w;
	writer_start(&w, seg);
	writer_do(&w, 'c', "GET", 3, true);
	collector_scan(&c);
	char *body = render(&c);
	assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"GET\"}"), 3);
	free(body);
	/* find the series record and rewrite its value in place */
	bool found = false;
	for (uint32_t i = 0; i < c.seg.regions && !found; i++) {
		struct shmet_area a;
		if (shmet_region_area(&c.seg, i, &a, NULL) != SHMET_OK)
			continue;
		struct shmet_dir_iter it;
		static struct shmet_record r;
		shmet_dir_begin(&it, &a);
		while (shmet_dir_next(&it, &r, NULL) > 0)
			if (r.kind == SHMET_REC_SERIES && r.series.value_lens[0] == 3 &&
			    memcmp(r.series.values[0], "GET", 3) == 0) {
				unsigned char *rec = (unsigned char *)a.base + r.series.off;
				unsigned char *p = memmem(rec, r.series.rec_size, "GET", 3);
				assert_non_null(p);
				memcpy(p, "PUT", 3);
				found = true;
			}
	}
	assert_true(found);
	writer_do(&w, 'c', "/later", 1, true); /* the directory grows: the index reads again */
	collector_scan(&c);
	body = render(&c);
	assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"/later\"}"), 1);
	assert_double_equal_exact(tsupport_sample(body, "inc_requests_total{path=\"GET\"}"), 3);
	if (strstr(body, "PUT"))
		fail_msg("a record rewritten after it was read was read again:\n%s", body);
	free(body);
	writer_kill(&w);
	collector_close(&c);
}

/* In a large family, a series that goes (its only worker died and was
 * folded: a sum gauge keeps nothing) and comes back (another worker) is
 * patched into the published array at its place, the rest copied. */
static void check_load(struct collector *c, uint32_t want, double odd)
{
	const struct view_family *f = family(c->view, "inc_load");
	assert_non_null(f);
	assert_int_equal(f->nseries, want);
	bool seen = false;
	for (uint32_t k = 0; k < f->nseries; k++) {
		if (k && strcmp(f->series[k - 1].values[0], f->series[k].values[0]) >= 0)
			fail_msg("out of order: %s before %s", f->series[k - 1].values[0], f->series[k].values[0]);
		struct shmet_agg acc;
		view_series_agg(f, &f->series[k], &acc);
		bool is_odd = strcmp(f->series[k].values[0], "/p31x") == 0;
		seen |= is_odd;
		assert_double_equal_exact(shmet_agg_value(&acc, SHMET_GAUGE), is_odd ? odd : 1);
		if (is_odd)
			assert_int_equal(k, 32);
	}
	assert_int_equal(seen, !isnan(odd));
}

static void test_incremental_series_gone_and_back_patched_in_place(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-patch");
	open_collector(&c, seg, 4);
	struct writer w1, w2, w3;
	writer_start(&w1, seg);
	writer_start(&w2, seg);
	writer_do(&w1, 'G', "/p", 64, true);
	collector_scan(&c);
	check_load(&c, 64, NAN);
	writer_do(&w2, 'g', "/p31x", 5, true);
	collector_scan(&c);
	check_load(&c, 65, 5);
	writer_kill(&w2);
	collector_scan(&c); /* folded: its gauge is gone */
	collector_scan(&c);
	check_load(&c, 64, NAN);
	writer_start(&w3, seg);
	writer_do(&w3, 'g', "/p31x", 7, true);
	collector_scan(&c);
	check_load(&c, 65, 7);
	char *body = render(&c);
	assert_double_equal_exact(tsupport_sample(body, "inc_load{path=\"/p31x\"}"), 7);
	assert_double_equal_exact(tsupport_sample(body, "inc_load{path=\"/p63\"}"), 1);
	free(body);
	writer_kill(&w1);
	writer_kill(&w3);
	collector_close(&c);
}

/* A worker registers a family and writes its series between the scan's
 * read of the registry and its read of the region: the series is not a
 * conflict, and since the record is read only once, it must count now. */
static void test_incremental_family_registered_during_scan_counted(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-latereg");
	open_collector(&c, seg, 2);
	struct writer w;
	writer_start(&w, seg);
	writer_do(&w, 'c', "/late", 2, true); /* after collector_open's scan read the registry */
	view_index_update(&c);                /* the region, with the registry as that scan left it */
	collector_scan(&c);
	char *body = render(&c);
	if (tsupport_sample(body, "inc_requests_total{path=\"/late\"}") != 2)
		fail_msg("a series whose family was registered during the scan is missing:\n%s", body);
	assert_double_equal_exact(tsupport_sample(body, "shmetricsd_family_conflicts_total"), 0);
	free(body);
	writer_kill(&w);
	collector_close(&c);
}

/* A scrape that finds the view current renders at once; one that finds a
 * region grown waits only for that increment. */
static void test_incremental_view_current_tracks_segment(void **state)
{
	(void)state;
	static struct collector c;
	const char *seg = tsupport_segment("inc-current");
	open_collector(&c, seg, 2);
	struct writer w;
	writer_start(&w, seg);
	writer_do(&w, 'c', "/a", 1, true);
	collector_scan(&c);
	assert_true(view_current(&c, c.view));
	writer_do(&w, 'c', "/a", 1, true);
	assert_true(view_current(&c, c.view));
	writer_do(&w, 'c', "/b", 1, true);
	assert_false(view_current(&c, c.view));
	collector_scan(&c);
	assert_true(view_current(&c, c.view));
	kill(w.pid, SIGKILL);
	tsupport_wait(w.pid);
	assert_false(view_current(&c, c.view)); /* a death: its gauges change */
	collector_scan(&c);
	collector_scan(&c);
	assert_true(view_current(&c, c.view));
	close(w.cmd);
	close(w.ack);
	collector_close(&c);
}

int main(void)
{
	/* tens of thousands of series in one family: no series limit */
	setenv(SHMET_ENV_SERIES_LIMIT, "4294967295", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_incremental_series_between_scrapes_shown_rest_shared),
		cmocka_unit_test(test_incremental_fold_while_rendering_counts_once),
		cmocka_unit_test(test_incremental_appends_during_scans_none_lost),
		cmocka_unit_test(test_incremental_region_reused_read_from_start),
		cmocka_unit_test(test_incremental_record_rewritten_after_read_not_trusted),
		cmocka_unit_test(test_incremental_series_gone_and_back_patched_in_place),
		cmocka_unit_test(test_incremental_family_registered_during_scan_counted),
		cmocka_unit_test(test_incremental_view_current_tracks_segment),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
