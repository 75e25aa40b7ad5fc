/* Native histograms and the protobuf exposition: registration rules, every
 * family type through the encoder (decoded here with protobuf-c), and a
 * real Prometheus 2.42 with --enable-feature=native-histograms scraping it:
 * histogram_count, histogram_sum and histogram_quantile of the stored native
 * histogram against what the workers observed. */
#include "tsupport.h"
#include "shmetrics.h"
#include "collector.h"

#include "io/prometheus/client/metrics.pb-c.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 4
#define GENERATIONS 2
#define PER_WORKER 2000
#define SCHEMA 5

static const char *seg;
static struct tdaemon dm;
static double *data;
static size_t ndata;
static double data_sum;
static pid_t runner_pid;
static double ex_ts; /* the master's exemplar's timestamp: now, so a query over the last hour finds it */
static char ex_ts_text[64];

static uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

/* log-uniform over 1 ms .. 10 s, and every 50th a zero */
static double draw(uint64_t *s, int i)
{
	if (i % 50 == 0)
		return 0;
	return 0.001 * pow(10000, (double)(rng_next(s) >> 11) / 9007199254740992.0);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("native");
	ex_ts = (double)time(NULL) + 0.25;
	snprintf(ex_ts_text, sizeof ex_ts_text, "%.2f", ex_ts);
	pid_t runner = fork();
	if (runner == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		struct shmet_options o = {seg, 16, 1 << 17, 0, false};
		shmet_family *nh, *ctr, *g, *sm;
		double b[] = {0.01, 0.1, 1};
		if (shmet_init(&o) != SHMET_OK ||
		    shmet_histogram_register_native(&nh, "nh_latency_seconds", "Native.", b, 3, SCHEMA, 1e-9, 0, NULL) ||
		    shmet_counter_register(&ctr, "nh_requests_total", "Requests.", 0, NULL) ||
		    shmet_gauge_register(&g, "nh_temperature", "Gauge.", SHMET_GAUGE_MAX, 0, NULL) ||
		    shmet_summary_register_quantiles(&sm, "nh_size_bytes", "Summary.", 0.02, 1, 1e6, 0, NULL))
			_exit(10);
		double eb[] = {0.1, 1};
		struct shmet_family_spec hx = {.type = SHMET_HISTOGRAM, .name = "nh_ex_seconds", .help = "Exemplars.",
					       .nbuckets = 2, .buckets = eb, .exemplars = true};
		struct shmet_family_spec cx = {.type = SHMET_COUNTER, .name = "nh_ex_requests_total",
					       .help = "Exemplars.", .exemplars = true};
		shmet_family *fhx, *fcx;
		if (shmet_register(&hx, &fhx) || shmet_register(&cx, &fcx))
			_exit(10);
		shmet_histogram h = shmet_histogram_get(nh, NULL);
		shmet_counter c = shmet_counter_get(ctr, NULL);
		shmet_gauge gg = shmet_gauge_get(g, NULL);
		shmet_summary s = shmet_summary_get(sm, NULL);
		shmet_gauge_set(gg, 21.5);
		for (int gen = 0; gen < GENERATIONS; gen++) {
			pid_t kids[WORKERS];
			for (int w = 0; w < WORKERS; w++)
				if ((kids[w] = fork()) == 0) {
					uint64_t r = (uint64_t)(gen * 100 + w);
					for (int i = 0; i < PER_WORKER; i++) {
						shmet_histogram_observe(h, draw(&r, i));
						shmet_counter_inc(c);
						shmet_summary_observe(s, 100);
					}
					shmet_histogram_observe(h, -5); /* one negative each */
					if (gen == 0)
						raise(SIGKILL);
					_exit(0);
				}
			for (int w = 0; w < WORKERS; w++)
				tsupport_wait(kids[w]);
		}
		/* the master's exemplars: a live process keeps them (a fold drops a dead one's) */
		const char *p1[] = {"trace_id", "4bf92f3577b34da6a3ce929d0e0e4736", NULL};
		const char *p2[] = {"trace_id", "00f067aa0ba902b7", "span_id", "b7ad6b7169203331", NULL};
		if (shmet_histogram_observe_with_exemplar(shmet_histogram_get(fhx, NULL), 0.05, p1, ex_ts) ||
		    shmet_counter_add_with_exemplar(shmet_counter_get(fcx, NULL), 3, p2, 0))
			_exit(10);
		/* stay alive, keeping the gauge (a live setter) */
		pause();
		_exit(0);
	}
	ndata = (size_t)GENERATIONS * WORKERS * (PER_WORKER + 1);
	data = malloc(ndata * sizeof *data);
	size_t k = 0;
	for (int gen = 0; gen < GENERATIONS; gen++)
		for (int w = 0; w < WORKERS; w++) {
			uint64_t r = (uint64_t)(gen * 100 + w);
			for (int i = 0; i < PER_WORKER; i++)
				data[k++] = draw(&r, i);
			data[k++] = -5;
		}
	data_sum = 0; /* the collector's sum is exact; so is this one to the test's tolerance */
	for (size_t i = 0; i < ndata; i++)
		data_sum += data[i];
	qsort(data, ndata, sizeof *data, cmp_double);
	/* wait (bounded) for the writers: every observation is in before the daemon starts */
	for (int tries = 0; tries < 400 && tsupport_count(seg, "nh_latency_seconds", NULL) != ndata; tries++)
		usleep(25000);
	if (tsupport_count(seg, "nh_latency_seconds", NULL) != ndata) {
		runner_pid = runner;
		return -1;
	}
	runner_pid = runner;
	return tsupport_daemon_start(&dm, seg, NULL);
}

static int teardown(void **state)
{
	(void)state;
	tsupport_daemon_stop(&dm, SIGTERM);
	if (runner_pid > 0) {
		kill(runner_pid, SIGKILL);
		tsupport_wait(runner_pid);
	}
	free(data);
	return 0;
}

static void test_native_registration_rules(void **state)
{
	(void)state;
	/* in a child: this process keeps no writer of its own */
	pid_t p = fork();
	if (p == 0) {
		const char *s2 = tsupport_segment("native-reg");
		struct shmet_options o = {s2, 4, 1 << 16, 0, false};
		shmet_family *f;
		double b[] = {1, 2};
		if (shmet_init(&o) != SHMET_OK)
			_exit(10);
		if (shmet_histogram_register_native(&f, "nr_a_seconds", "", b, 2, 9, 0, 0, NULL) != SHMET_E_INVALID_ARG)
			_exit(11); /* schema past 8 */
		if (shmet_histogram_register_native(&f, "nr_a_seconds", "", b, 2, 3, 0.5, 0, NULL) != SHMET_E_INVALID_ARG)
			_exit(12); /* zero threshold above the window's bottom */
		struct shmet_family_spec c = {.type = SHMET_COUNTER, .name = "nr_c_total", .native = true};
		if (shmet_register(&c, &f) != SHMET_E_INVALID_ARG)
			_exit(13);
		if (shmet_histogram_register_native(&f, "nr_b_seconds", "", b, 2, 3, 0, 0, NULL) != SHMET_OK)
			_exit(14);
		/* the native window is part of the shape */
		if (shmet_histogram_register(&f, "nr_b_seconds", "", b, 2, 0, NULL) != SHMET_E_TYPE_CLASH ||
		    !strstr(shmet_last_error(), "native schema 3, zero threshold 0, buckets -106..54") ||
		    shmet_histogram_register_native(&f, "nr_b_seconds", "", b, 2, 4, 0, 0, NULL) != SHMET_E_TYPE_CLASH)
			_exit(15);
		_exit(0);
	}
	assert_int_equal(tsupport_wait(p), 0);
}

/* Split a delimited body into MetricFamily messages. */
static size_t unpack_all(const unsigned char *p, size_t n, Io__Prometheus__Client__MetricFamily **out, size_t cap)
{
	size_t k = 0, pos = 0;
	while (pos < n && k < cap) {
		uint64_t len = 0;
		int shift = 0;
		while (pos < n) {
			unsigned char c = p[pos++];
			len |= (uint64_t)(c & 0x7f) << shift;
			shift += 7;
			if (!(c & 0x80))
				break;
		}
		assert_true(len <= n - pos);
		out[k] = io__prometheus__client__metric_family__unpack(NULL, len, p + pos);
		assert_non_null(out[k]);
		k++;
		pos += len;
	}
	assert_int_equal(pos, n);
	return k;
}

static const Io__Prometheus__Client__MetricFamily *family(Io__Prometheus__Client__MetricFamily **f, size_t n,
							   const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(f[i]->name, name) == 0)
			return f[i];
	fail_msg("family %s not in the protobuf body", name);
	return NULL;
}

static void test_native_protobuf_every_type(void **state)
{
	(void)state;
	char *body, *hdrs;
	const char *accept = "Accept: application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
			     "encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,*/*;q=0.1\r\n";
	/* the body is binary: take its length from the headers */
	int st = tsupport_http_get(dm.port, "/metrics", accept, &body, &hdrs);
	assert_int_equal(st, 200);
	assert_non_null(strstr(hdrs, "Content-Type: " SHMET_CONTENT_TYPE_PROTOBUF "\r\n"));
	const char *cl = strstr(hdrs, "Content-Length: ");
	assert_non_null(cl);
	size_t n = strtoul(cl + 16, NULL, 10);
	Io__Prometheus__Client__MetricFamily *fams[128];
	size_t nf = unpack_all((const unsigned char *)body, n, fams, 128);
	for (size_t i = 1; i < nf; i++)
		assert_true(strcmp(fams[i - 1]->name, fams[i]->name) < 0); /* sorted, each once */
	const Io__Prometheus__Client__MetricFamily *c = family(fams, nf, "nh_requests_total");
	assert_int_equal(c->type, IO__PROMETHEUS__CLIENT__METRIC_TYPE__COUNTER);
	assert_double_equal_exact(c->metric[0]->counter->value, (double)GENERATIONS * WORKERS * PER_WORKER);
	const Io__Prometheus__Client__MetricFamily *g = family(fams, nf, "nh_temperature");
	assert_double_equal_exact(g->metric[0]->gauge->value, 21.5);
	const Io__Prometheus__Client__MetricFamily *s = family(fams, nf, "nh_size_bytes");
	assert_int_equal(s->metric[0]->summary->n_quantile, 3);
	assert_true(fabs(s->metric[0]->summary->quantile[2]->value - 100) <= 100 * 0.022);
	assert_int_equal(s->metric[0]->summary->sample_count, (uint64_t)GENERATIONS * WORKERS * PER_WORKER);
	const Io__Prometheus__Client__MetricFamily *own = family(fams, nf, "shmetricsd_series");
	assert_int_equal(own->type, IO__PROMETHEUS__CLIENT__METRIC_TYPE__GAUGE);
	const Io__Prometheus__Client__MetricFamily *h = family(fams, nf, "nh_latency_seconds");
	const Io__Prometheus__Client__Histogram *hh = h->metric[0]->histogram;
	assert_int_equal(hh->sample_count, ndata);
	assert_int_equal(hh->schema, SCHEMA);
	assert_int_equal(hh->n_bucket, 3); /* the classic ones too */
	/* the native buckets hold every observation, each in its bucket */
	uint64_t total = hh->zero_count, zeros = 0;
	for (size_t i = 0; i < ndata; i++)
		zeros += data[i] == 0;
	assert_int_equal(hh->zero_count, zeros);
	int64_t idx = 0, cnt = 0;
	size_t d = 0;
	for (size_t sp = 0; sp < hh->n_positive_span; sp++) {
		idx += hh->positive_span[sp]->offset + (sp ? 1 : 0);
		for (uint32_t k = 0; k < hh->positive_span[sp]->length; k++, d++) {
			cnt += hh->positive_delta[d];
			size_t exact = 0;
			double lo = shmet_sketch_upper(SCHEMA, idx - 1), hi = shmet_sketch_upper(SCHEMA, idx);
			for (size_t i = 0; i < ndata; i++)
				exact += data[i] > lo && data[i] <= hi;
			if ((uint64_t)cnt != exact)
				fail_msg("bucket %lld (%g, %g]: %lld, observed %zu", (long long)idx, lo, hi, (long long)cnt, exact);
			total += (uint64_t)cnt;
			if (k + 1 < hh->positive_span[sp]->length)
				idx++;
		}
	}
	assert_int_equal(hh->n_negative_span, 1);
	total += (uint64_t)hh->negative_delta[0];
	assert_int_equal(hh->negative_delta[0], GENERATIONS * WORKERS);
	assert_int_equal(total, ndata);
	const Io__Prometheus__Client__Bucket *eb = family(fams, nf, "nh_ex_seconds")->metric[0]->histogram->bucket[0];
	assert_non_null(eb->exemplar);
	assert_string_equal(eb->exemplar->label[0]->value, "4bf92f3577b34da6a3ce929d0e0e4736");
	assert_double_equal_exact(eb->exemplar->value, 0.05);
	assert_int_equal(eb->exemplar->timestamp->seconds, (int64_t)floor(ex_ts));
	assert_int_equal(eb->exemplar->timestamp->nanos, 250000000);
	const Io__Prometheus__Client__Exemplar *cx = family(fams, nf, "nh_ex_requests_total")->metric[0]->counter->exemplar;
	assert_non_null(cx);
	assert_int_equal(cx->n_label, 2);
	assert_string_equal(cx->label[1]->name, "span_id");
	/* the collector's process and build families come through too: one
	 * Accept serves the whole scrape */
	const Io__Prometheus__Client__MetricFamily *cpu = family(fams, nf, "process_cpu_seconds_total");
	assert_int_equal(cpu->type, IO__PROMETHEUS__CLIENT__METRIC_TYPE__COUNTER);
	assert_true(cpu->n_metric == 1 && cpu->metric[0]->counter->value >= 0);
	const Io__Prometheus__Client__MetricFamily *bi = family(fams, nf, "shmetricsd_build_info");
	assert_int_equal(bi->metric[0]->n_label, 3);
	assert_string_equal(bi->metric[0]->label[0]->name, "build_date");
	assert_double_equal_exact(bi->metric[0]->gauge->value, 1);
	char *text;
	assert_int_equal(tsupport_http_get(dm.port, "/metrics", NULL, &text, NULL), 200);
	for (const char *l = text; (l = strstr(l, "# TYPE ")) != NULL; l++) {
		char name[256];
		size_t k = 0;
		for (const char *q = l + 7; *q && *q != ' ' && k + 1 < sizeof name; q++)
			name[k++] = *q;
		name[k] = 0;
		size_t i = 0;
		while (i < nf && strcmp(fams[i]->name, name) != 0)
			i++;
		if (i == nf)
			fail_msg("%s is in the text scrape but not in the protobuf one", name);
	}
	free(text);
	for (size_t i = 0; i < nf; i++)
		io__prometheus__client__metric_family__free_unpacked(fams[i], NULL);
	free(body);
	free(hdrs);
	/* OpenMetrics: the exemplars on their lines; text 0.0.4 has none */
	assert_int_equal(tsupport_http_get(dm.port, "/metrics", "Accept: application/openmetrics-text; version=1.0.0\r\n",
					   &body, NULL),
			 200);
	char want[256], t[SHMET_FMT_DOUBLE_MAX];
	shmet_fmt_double_om(t, ex_ts);
	snprintf(want, sizeof want, "nh_ex_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.05 %s\n",
		 t);
	if (!strstr(body, want))
		fail_msg("no line %s in\n%s", want, body);
	assert_non_null(strstr(body, "nh_ex_requests_total 3.0 # {trace_id=\"00f067aa0ba902b7\",span_id=\"b7ad6b7169203331\"} "
				     "3.0\n"));
	free(body);
	/* text keeps the classic buckets */
	assert_int_equal(tsupport_http_get(dm.port, "/metrics", NULL, &body, NULL), 200);
	assert_double_equal_exact(tsupport_sample(body, "nh_latency_seconds_count"), (double)ndata);
	assert_non_null(strstr(body, "nh_latency_seconds_bucket{le=\"0.1\"}"));
	assert_null(strstr(body, " # {"));
	free(body);
}

/* value[1] of the first result of an instant query, or NAN */
static double query(int port, const char *expr_urlenc)
{
	char path[512], *body;
	snprintf(path, sizeof path, "/api/v1/query?query=%s", expr_urlenc);
	if (tsupport_http_get(port, path, NULL, &body, NULL) != 200)
		return NAN;
	json_error_t e;
	json_t *j = json_loads(body, 0, &e);
	free(body);
	double v = NAN;
	json_t *r = j ? json_object_get(json_object_get(j, "data"), "result") : NULL;
	if (r && json_array_size(r) > 0) {
		const char *s = json_string_value(json_array_get(json_object_get(json_array_get(r, 0), "value"), 1));
		if (s)
			v = strtod(s, NULL);
	}
	json_decref(j);
	return v;
}

static void test_native_prometheus_stores_it(void **state)
{
	(void)state;
	if (getenv("SANITIZER") && *getenv("SANITIZER")) {
		print_message("skipped under a sanitizer (slow live test)\n");
		skip();
	}
	char dir[128], cfg[256], cmd[128];
	snprintf(dir, sizeof dir, "/tmp/shmet-test-native-%d", (int)getpid());
	mkdir(dir, 0700);
	snprintf(cfg, sizeof cfg, "%s/prometheus.yml", dir);
	FILE *f = fopen(cfg, "w");
	assert_non_null(f);
	fprintf(f, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: shmetricsd\n"
		   "    static_configs:\n      - targets: [\"127.0.0.1:%d\"]\n", dm.port);
	fclose(f);
	int pport = tsupport_free_port();
	pid_t prom = fork();
	if (prom == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		char a1[300], a2[300], a3[64];
		snprintf(a1, sizeof a1, "--config.file=%s", cfg);
		snprintf(a2, sizeof a2, "--storage.tsdb.path=%s/data", dir);
		snprintf(a3, sizeof a3, "--web.listen-address=127.0.0.1:%d", pport);
		char logp[300];
		snprintf(logp, sizeof logp, "%s/prometheus.log", dir);
		if (!freopen(logp, "w", stderr))
			_exit(126);
		execlp("prometheus", "prometheus", a1, a2, a3, "--enable-feature=native-histograms,exemplar-storage",
		       (char *)NULL);
		_exit(127);
	}
	double count = NAN;
	for (int tries = 0; tries < 240 && !(count == (double)ndata); tries++) {
		usleep(250000);
		count = query(pport, "histogram_count(nh_latency_seconds)");
	}
	double sum = query(pport, "histogram_sum(nh_latency_seconds)");
	double q90 = query(pport, "histogram_quantile(0.9,nh_latency_seconds)");
	double q50 = query(pport, "histogram_quantile(0.5,nh_latency_seconds)");
	char *ex = NULL, path[256];
	for (int tries = 0; tries < 40; tries++) {
		free(ex);
		ex = NULL;
		snprintf(path, sizeof path, "/api/v1/query_exemplars?query=nh_ex_seconds_bucket&start=%ld&end=%ld",
			 (long)time(NULL) - 3600, (long)time(NULL) + 60);
		if (tsupport_http_get(pport, path, NULL, &ex, NULL) == 200 && strstr(ex, "4bf92f3577b34da6a3ce929d0e0e4736"))
			break;
		usleep(250000);
	}
	kill(prom, SIGTERM);
	tsupport_wait(prom);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		print_message("could not remove %s\n", dir);
	assert_double_equal_exact(count, (double)ndata);
	assert_true(fabs(sum - data_sum) <= 1e-9 * fabs(data_sum));
	/* the exemplar as written: labels, value and timestamp */
	if (!ex || !strstr(ex, "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"") || !strstr(ex, "\"value\":\"0.05\"") ||
	    !strstr(ex, ex_ts_text))
		fail_msg("query_exemplars: %s", ex ? ex : "(no answer)");
	free(ex);
	/* Prometheus interpolates inside the bucket it finds, and its rank may
	 * be one observation off ours: within two bucket widths */
	double g = exp2(ldexp(1.0, -SCHEMA)), bound = g * g - 1;
	double e90 = data[(size_t)floor(0.9 * (double)(ndata - 1))], e50 = data[(size_t)floor(0.5 * (double)(ndata - 1))];
	if (!(fabs(q90 - e90) <= bound * e90) || !(fabs(q50 - e50) <= bound * e50))
		fail_msg("quantiles 0.5 %.6g (exact %.6g), 0.9 %.6g (exact %.6g): bound %.2f%%", q50, e50, q90, e90,
			 100 * bound);
	print_message("Prometheus: histogram_count %.0f, histogram_sum %.9g (observed %.9g), quantile 0.5 %.6g "
		      "(exact %.6g, %.2f%%), 0.9 %.6g (exact %.6g, %.2f%%)\n",
		      count, sum, data_sum, q50, e50, 100 * fabs(q50 - e50) / e50, q90, e90, 100 * fabs(q90 - e90) / e90);
}

static void test_native_daemon_log_clean(void **state)
{
	(void)state;
	assert_true(tsupport_daemon_log_clean(&dm)); /* no sanitizer report from the daemon */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_native_registration_rules),
		cmocka_unit_test(test_native_protobuf_every_type),
		cmocka_unit_test(test_native_prometheus_stores_it),
		cmocka_unit_test(test_native_daemon_log_clean),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
