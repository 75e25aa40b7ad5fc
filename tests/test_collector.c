/* shmetricsd end to end: forked writers, the daemon on a private segment and
 * port, and its output judged by real parsers and a real Prometheus. */
#include "tsupport.h"
#include "shmetrics.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *seg;
static struct tdaemon d;
static char tmpdir[128];

#define CHILDREN 4

static int setup(void **state)
{
	(void)state;
	seg = tsupport_segment("collector");
	snprintf(tmpdir, sizeof tmpdir, "/tmp/shmet-test-collector-%d", (int)getpid());
	mkdir(tmpdir, 0700);
	struct shmet_options o = {seg, 16, 1 << 16, 0, false};
	if (shmet_init(&o) != SHMET_OK)
		return -1;
	shmet_family *req, *lat, *esc, *sz;
	const char *l[] = {"method", "code"};
	const char *p[] = {"path"};
	double b[] = {0.1, 1, 10};
	if (shmet_counter_register(&req, "test_requests_total", "Requests \\ with \"quotes\"\nand a new line.", 2, l) ||
	    shmet_histogram_register(&lat, "test_latency_seconds", "Latency.", b, 3, 0, NULL) ||
	    shmet_counter_register(&esc, "test_escapes_total", "Escaping.", 1, p) ||
	    shmet_summary_register(&sz, "test_payload_bytes", "Payloads.", 0, NULL))
		return -1;
	shmet_counter get = shmet_counter_labels(req, "get", "200");
	shmet_counter post = shmet_counter_labels(req, "post", "500");
	shmet_histogram h = shmet_histogram_get(lat, NULL);
	shmet_summary s = shmet_summary_get(sz, NULL);
	for (int c = 0; c < CHILDREN; c++) {
		pid_t pid = fork();
		if (pid == 0) {
			for (int i = 0; i < 1000; i++)
				shmet_counter_inc(get);
			shmet_counter_add(post, 0.5);
			double obs[] = {0.05, 0.5, 5, 50};
			for (int i = 0; i < 4; i++)
				shmet_histogram_observe(h, obs[i]);
			shmet_summary_observe(s, 100);
			_exit(0);
		}
		if (tsupport_wait(pid) != 0)
			return -1;
	}
	for (int i = 0; i < 7; i++)
		shmet_counter_inc(get); /* the live master's own share */
	shmet_counter_inc(shmet_counter_labels(esc, "C:\\dir\\file.txt"));
	shmet_counter_inc(shmet_counter_labels(esc, "say \"hi\""));
	shmet_counter_inc(shmet_counter_labels(esc, "line1\nline2"));
	shmet_counter_inc(shmet_counter_labels(esc, "tab\tü日本 a,b=c}{ # d"));
	shmet_counter_inc(shmet_counter_labels(esc, ""));
	return tsupport_daemon_start(&d, seg, NULL);
}

static int teardown(void **state)
{
	(void)state;
	tsupport_daemon_stop(&d, SIGTERM);
	char cmd[256];
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

static char *scrape(const char *headers, char **hdrs)
{
	char *body;
	int st = tsupport_http_get(d.port, "/metrics", headers, &body, hdrs);
	if (st != 200)
		fail_msg("GET /metrics: status %d", st);
	return body;
}

static void save(const char *name, const char *body)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(body, f);
	fclose(f);
}

static void test_collector_text_exact_and_promtool_clean(void **state)
{
	(void)state;
	char *hdrs;
	char *body = scrape(NULL, &hdrs);
	assert_non_null(strstr(hdrs, "Content-Type: text/plain; version=0.0.4; charset=utf-8"));
	assert_double_equal_exact(tsupport_sample(body, "test_requests_total{method=\"get\",code=\"200\"}"),
				  CHILDREN * 1000 + 7);
	assert_double_equal_exact(tsupport_sample(body, "test_requests_total{method=\"post\",code=\"500\"}"),
				  CHILDREN * 0.5);
	assert_double_equal_exact(tsupport_sample(body, "test_latency_seconds_bucket{le=\"0.1\"}"), CHILDREN);
	assert_double_equal_exact(tsupport_sample(body, "test_latency_seconds_bucket{le=\"1.0\"}"), 2 * CHILDREN);
	assert_double_equal_exact(tsupport_sample(body, "test_latency_seconds_bucket{le=\"10.0\"}"), 3 * CHILDREN);
	assert_double_equal_exact(tsupport_sample(body, "test_latency_seconds_bucket{le=\"+Inf\"}"), 4 * CHILDREN);
	assert_double_equal_exact(tsupport_sample(body, "test_latency_seconds_count"), 4 * CHILDREN);
	assert_double_equal_exact(tsupport_sample(body, "test_latency_seconds_sum"), CHILDREN * 55.55);
	assert_double_equal_exact(tsupport_sample(body, "test_payload_bytes_count"), CHILDREN);
	assert_non_null(strstr(body, "test_escapes_total{path=\"C:\\\\dir\\\\file.txt\"} 1\n"));
	assert_non_null(strstr(body, "test_escapes_total{path=\"say \\\"hi\\\"\"} 1\n"));
	assert_non_null(strstr(body, "test_escapes_total{path=\"line1\\nline2\"} 1\n"));
	assert_non_null(strstr(body, "test_escapes_total 1\n")); /* empty value: no label */
	assert_non_null(strstr(body, "# HELP test_requests_total Requests \\\\ with \"quotes\"\\nand a new line.\n"));
	save("text.prom", body);
	char cmd[512], *out;
	snprintf(cmd, sizeof cmd, "promtool check metrics < %s/text.prom", tmpdir);
	int rc = tsupport_run(cmd, &out);
	if (rc != 0 || out[0])
		fail_msg("promtool check metrics: exit %d: %s", rc, out);
	free(out);
	free(body);
	free(hdrs);
}

static const char *prom_accept =
	"Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
	"text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";

static void test_collector_openmetrics_negotiated_and_parsed(void **state)
{
	(void)state;
	char *hdrs;
	char *body = scrape(prom_accept, &hdrs);
	assert_non_null(strstr(hdrs, "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"));
	size_t n = strlen(body);
	assert_true(n > 6 && strcmp(body + n - 6, "# EOF\n") == 0);
	assert_non_null(strstr(body, "# TYPE test_requests counter\n"));
	assert_non_null(strstr(body, "test_requests_total{method=\"get\",code=\"200\"} 4007.0\n"));
	assert_non_null(strstr(body, "test_latency_seconds_bucket{le=\"1.0\"} 8\n"));
	assert_non_null(strstr(body, "\\\"quotes\\\"")); /* OM escapes quotes in HELP */
	save("om.txt", body);
	char *text = scrape(NULL, NULL);
	save("text.prom", text);
	/* Debian's python3-prometheus-client: the strict OM parser and the text parser */
	const char *py =
		"/usr/bin/python3 -c '\n"
		"import sys\n"
		"from prometheus_client.parser import text_string_to_metric_families as t\n"
		"from prometheus_client.openmetrics.parser import text_string_to_metric_families as o\n"
		"d = sys.argv[1]\n"
		"for name, parse in ((\"text.prom\", t), (\"om.txt\", o)):\n"
		"    fams = list(parse(open(d + \"/\" + name, encoding=\"utf-8\").read()))\n"
		"    v = [s.value for f in fams for s in f.samples if s.name == \"test_requests_total\" and s.labels.get(\"method\") == \"get\"]\n"
		"    print(name, len(fams), v[0])\n"
		"' ";
	char cmd[2048], *out;
	snprintf(cmd, sizeof cmd, "%s%s", py, tmpdir);
	int rc = tsupport_run(cmd, &out);
	if (rc != 0 || !strstr(out, "text.prom") || !strstr(out, "om.txt"))
		fail_msg("python parsers: exit %d: %s", rc, out);
	if (!strstr(out, "4007.0\nom.txt") || strstr(out, "om.txt") == NULL || !strstr(strstr(out, "om.txt"), " 4007.0"))
		fail_msg("python parsers disagree on the value: %s", out);
	free(out);
	free(body);
	free(hdrs);
	free(text);
}

static void test_collector_gzip_when_asked(void **state)
{
	(void)state;
	char cmd[512], *out;
	snprintf(cmd, sizeof cmd,
		 "curl -sS --max-time 10 -H 'Accept-Encoding: gzip' -D %s/h.txt -o %s/b.gz http://127.0.0.1:%d/metrics && "
		 "grep -i '^Content-Encoding: gzip' %s/h.txt && gunzip -c %s/b.gz | grep -c '^test_requests_total'",
		 tmpdir, tmpdir, d.port, tmpdir, tmpdir);
	int rc = tsupport_run(cmd, &out);
	if (rc != 0 || !strstr(out, "\n2\n"))
		fail_msg("gzip: exit %d: %s", rc, out);
	free(out);
}

static void test_collector_health_index_and_errors(void **state)
{
	(void)state;
	char *body;
	assert_int_equal(tsupport_http_get(d.port, "/-/healthy", NULL, &body, NULL), 200);
	free(body);
	assert_int_equal(tsupport_http_get(d.port, "/-/ready", NULL, &body, NULL), 200);
	free(body);
	assert_int_equal(tsupport_http_get(d.port, "/", NULL, &body, NULL), 200);
	assert_non_null(strstr(body, "href=\"/metrics\""));
	free(body);
	assert_int_equal(tsupport_http_get(d.port, "/nope", NULL, &body, NULL), 404);
	free(body);
	char cmd[256], *out;
	snprintf(cmd, sizeof cmd, "curl -s -o /dev/null -w '%%{http_code}' -X POST http://127.0.0.1:%d/metrics", d.port);
	tsupport_run(cmd, &out);
	assert_string_equal(out, "405");
	free(out);
}

static void test_collector_own_metrics_present(void **state)
{
	(void)state;
	char *body = scrape(NULL, NULL);
	/* the master; the region that keeps the collector's dashboard history is no worker's */
	assert_double_equal_exact(tsupport_sample(body, "shmetricsd_regions{state=\"live\"}"), 1);
	assert_double_equal_exact(tsupport_sample(body, "shmetricsd_regions{state=\"history\"}"), 1);
	/* at least the children; popen() children of this test claim and fold too */
	assert_true(tsupport_sample(body, "shmetricsd_folds_total") >= CHILDREN);
	assert_false(isnan(tsupport_sample(body, "shmetricsd_series")));
	assert_false(isnan(tsupport_sample(body, "shmetricsd_segment_used_bytes")));
	assert_false(isnan(tsupport_sample(body, "shmetricsd_writes_dropped_total")));
	free(body);
}

static void test_collector_second_instance_and_bad_flags_refused(void **state)
{
	(void)state;
	char cmd[512], *out;
	snprintf(cmd, sizeof cmd, "%s --segment %s --listen 127.0.0.1:0", tsupport_bin("shmetricsd"), seg);
	int rc = tsupport_run(cmd, &out);
	if (rc == 0 || !strstr(out, "another shmetricsd"))
		fail_msg("second instance: exit %d: %s", rc, out);
	free(out);
	snprintf(cmd, sizeof cmd, "%s --listen nonsense", tsupport_bin("shmetricsd"));
	assert_int_equal(tsupport_run(cmd, &out), 2);
	assert_non_null(strstr(out, "HOST:PORT"));
	free(out);
	snprintf(cmd, sizeof cmd, "%s --segment /proc/nope/segment --listen 127.0.0.1:0", tsupport_bin("shmetricsd"));
	assert_int_equal(tsupport_run(cmd, &out), 1);
	assert_non_null(strstr(out, "cannot open segment"));
	free(out);
	snprintf(cmd, sizeof cmd, "%s --help && %s --version", tsupport_bin("shmetricsd"), tsupport_bin("shmetricsd"));
	assert_int_equal(tsupport_run(cmd, &out), 0);
	assert_non_null(strstr(out, "--scan-interval"));
	free(out);
}

/* A real Prometheus scrapes for a few seconds; its API must return exactly
 * what the writers wrote. */
static void test_collector_prometheus_server_stores_exact_values(void **state)
{
	(void)state;
	int pport = tsupport_free_port();
	char cfg[256], cmd[1024], *out;
	snprintf(cfg, sizeof cfg, "%s/prometheus.yml", tmpdir);
	FILE *f = fopen(cfg, "w");
	assert_non_null(f);
	fprintf(f, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: shmetricsd\n"
		   "    static_configs:\n      - targets: ['127.0.0.1:%d']\n", d.port);
	fclose(f);
	pid_t prom = fork();
	if (prom == 0) {
		char logp[256], data[256], listen[64];
		snprintf(logp, sizeof logp, "%s/prometheus.log", tmpdir);
		snprintf(data, sizeof data, "--storage.tsdb.path=%s/data", tmpdir);
		snprintf(listen, sizeof listen, "--web.listen-address=127.0.0.1:%d", pport);
		char cfgarg[300];
		snprintf(cfgarg, sizeof cfgarg, "--config.file=%s", cfg);
		int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(fd, 1);
		dup2(fd, 2);
		execlp("prometheus", "prometheus", cfgarg, data, listen, "--web.enable-lifecycle", (char *)NULL);
		_exit(127);
	}
	const char *q = "test_requests_total%7Bmethod%3D%22get%22%7D";
	bool got = false;
	for (int i = 0; i < 60 && !got; i++) { /* bounded: 30 s */
		struct timespec t = {0, 500000000};
		nanosleep(&t, NULL);
		snprintf(cmd, sizeof cmd, "curl -s --max-time 2 'http://127.0.0.1:%d/api/v1/query?query=%s'", pport, q);
		if (tsupport_run(cmd, &out) == 0 && strstr(out, "\"4007\""))
			got = true;
		free(out);
	}
	char *up = NULL, *le = NULL, *series = NULL;
	snprintf(cmd, sizeof cmd, "curl -s --max-time 2 'http://127.0.0.1:%d/api/v1/query?query=up'", pport);
	tsupport_run(cmd, &up);
	snprintf(cmd, sizeof cmd,
		 "curl -s --max-time 2 'http://127.0.0.1:%d/api/v1/query?query=test_latency_seconds_bucket%%7Ble%%3D%%221.0%%22%%7D'",
		 pport);
	tsupport_run(cmd, &le);
	snprintf(cmd, sizeof cmd,
		 "curl -s --max-time 2 'http://127.0.0.1:%d/api/v1/query?query=test_escapes_total%%7Bpath%%3D%%22say+%%5C%%22hi%%5C%%22%%22%%7D'",
		 pport);
	tsupport_run(cmd, &series);
	kill(prom, SIGTERM);
	tsupport_wait(prom);
	if (!got) {
		snprintf(cmd, sizeof cmd, "tail -20 %s/prometheus.log", tmpdir);
		tsupport_run(cmd, &out);
		fail_msg("Prometheus never stored 4007; up=%s\nlog:\n%s", up, out);
	}
	if (!strstr(up, "\"1\"]"))
		fail_msg("up is not 1: %s", up);
	if (!strstr(le, "\"8\"]"))
		fail_msg("le=\"1.0\" bucket: expected 8, got %s", le);
	if (!strstr(series, "\"1\"]"))
		fail_msg("escaped label value series: %s", series);
	free(up);
	free(le);
	free(series);
}

/* ---- processes that write a region by hand, on a segment of their own ----
 * The test process is a writer of `seg` already; a child writes another
 * segment through the reader-side API, record by record as the writer does,
 * then waits (alive, holding its region) until it is killed. */
struct rawrg {
	unsigned char *rg;
	uint64_t dir, low;
};

static uint32_t rr_family(struct rawrg *r, unsigned type, unsigned mode, const char *name, uint32_t nb,
			  const double *bounds)
{
	const char help[] = "Test.";
	struct shmet_rec_family fr;
	memset(&fr, 0, sizeof fr);
	size_t nl = strlen(name);
	fr.fam_rec.rec_size = (uint32_t)shmet_align8(sizeof fr + 8 * nb + nl + sizeof help - 1);
	fr.fam_rec.rec_kind = SHMET_REC_FAMILY;
	fr.fam_type = (uint8_t)type;
	fr.fam_gauge_mode = (uint8_t)mode;
	fr.fam_nbuckets = nb;
	fr.fam_name_len = (uint16_t)nl;
	fr.fam_help_len = sizeof help - 1;
	uint32_t off = (uint32_t)r->dir;
	unsigned char *p = r->rg + off;
	memcpy(p, &fr, sizeof fr);
	if (nb)
		memcpy(p + sizeof fr, bounds, 8 * nb);
	memcpy(p + sizeof fr + 8 * nb, name, nl);
	memcpy(p + sizeof fr + 8 * nb + nl, help, sizeof help - 1);
	r->dir += fr.fam_rec.rec_size;
	return off;
}

/* A series without labels; returns its cells. */
static uint64_t *rr_series(struct rawrg *r, uint32_t fam_off, uint32_t cell_size)
{
	r->low -= cell_size;
	struct shmet_rec_series sr;
	memset(&sr, 0, sizeof sr);
	sr.ser_rec.rec_size = sizeof sr;
	sr.ser_rec.rec_kind = SHMET_REC_SERIES;
	sr.ser_family_off = fam_off;
	sr.ser_cell_off = (uint32_t)r->low;
	memcpy(r->rg + r->dir, &sr, sizeof sr);
	r->dir += sizeof sr;
	return (uint64_t *)(void *)(r->rg + r->low);
}

static int raw_region; /* the region the last raw_writer claimed */

/* Fork a child that claims a region of segment path, lets fill write it,
 * publishes it and pauses.  Returns its pid once the region is visible. */
static pid_t raw_writer(const char *path, void (*fill)(struct rawrg *, const void *), const void *arg)
{
	int ready[2];
	if (pipe(ready) != 0)
		return -1;
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		struct shmet_segment s;
		char err[SHMET_ERRBUF];
		if (shmet_segment_open(path, 0, NULL, &s, err) != SHMET_OK)
			_exit(1);
		uint32_t idx = 0;
		if (shmet_seg_claim(&s.map, s.map.fd, SHMET_NO_PARENT, &idx, err) != SHMET_OK)
			_exit(2);
		struct rawrg r = {shmet_seg_region(&s.map, idx), 64, s.region_size};
		fill(&r, arg);
		tsupport_register_raw(&s, r.rg, r.dir);
		struct shmet_region_header *h = (struct shmet_region_header *)(void *)r.rg;
		__atomic_store_n(&h->rg_cell_low, r.low, __ATOMIC_RELAXED);
		__atomic_store_n(&h->rg_dir_end, r.dir, __ATOMIC_RELEASE);
		char one = (char)idx;
		if (write(ready[1], &one, 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	close(ready[1]);
	char one;
	bool ok = pid > 0 && read(ready[0], &one, 1) == 1;
	raw_region = ok ? (unsigned char)one : -1;
	close(ready[0]);
	if (!ok && pid > 0) {
		kill(pid, SIGKILL);
		tsupport_wait(pid);
	}
	return ok ? pid : -1;
}

struct gauge_arg {
	double value;
	bool set; /* stamp 1: this process set its max/min gauge */
};

/* queue_max (max mode) and queue_min (min mode), one series each */
static void fill_gauges(struct rawrg *r, const void *arg)
{
	const struct gauge_arg *g = arg;
	const char *names[] = {"queue_max", "queue_min"};
	for (int i = 0; i < 2; i++) {
		uint64_t *c = rr_series(r, rr_family(r, SHMET_GAUGE, i ? SHMET_GAUGE_MIN : SHMET_GAUGE_MAX, names[i], 0, NULL), 16);
		c[0] = shmet__bits(g->value);
		c[1] = g->set;
	}
}

static char *scrape_port(int port, const char *headers)
{
	char *body = NULL;
	if (tsupport_http_get(port, "/metrics", headers, &body, NULL) != 200) {
		free(body);
		return NULL;
	}
	return body;
}

/* Debian's Python parsers (text and the strict OpenMetrics one) and promtool
 * accept these bodies; tag names the files. */
static void check_parsers(const char *tag, const char *text, const char *om)
{
	char name[64];
	snprintf(name, sizeof name, "%s.prom", tag);
	save(name, text);
	snprintf(name, sizeof name, "%s.om", tag);
	save(name, om);
	const char *py =
		"/usr/bin/python3 -c '\n"
		"import sys\n"
		"from prometheus_client.parser import text_string_to_metric_families as t\n"
		"from prometheus_client.openmetrics.parser import text_string_to_metric_families as o\n"
		"d, tag = sys.argv[1], sys.argv[2]\n"
		"for name, parse in ((tag + \".prom\", t), (tag + \".om\", o)):\n"
		"    fams = list(parse(open(d + \"/\" + name, encoding=\"utf-8\").read()))\n"
		"    print(name, len(fams))\n"
		"' ";
	char cmd[2048], *out;
	snprintf(cmd, sizeof cmd, "%s%s %s && promtool check metrics < %s/%s.prom", py, tmpdir, tag, tmpdir, tag);
	int rc = tsupport_run(cmd, &out);
	if (rc != 0)
		fail_msg("python parsers / promtool: exit %d: %s\nOpenMetrics body:\n%s", rc, out, om);
	free(out);
}

static void kill_all(pid_t *p, int n)
{
	for (int i = 0; i < n; i++)
		if (p[i] > 0) {
			kill(p[i], SIGKILL);
			tsupport_wait(p[i]);
			p[i] = 0;
		}
}

/* A max or min gauge whose only setter died, while a live process holds the
 * series without setting it, has no value: /metrics leaves it out, as the
 * JSON API says null. */
static void test_collector_gauge_without_live_setter_absent(void **state)
{
	(void)state;
	const char *s3 = tsupport_segment("nosetter");
	struct tdaemon d3;
	assert_int_equal(tsupport_daemon_start(&d3, s3, NULL), 0);
	pid_t p[2];
	p[0] = raw_writer(s3, fill_gauges, &(struct gauge_arg){7, true});
	p[1] = raw_writer(s3, fill_gauges, &(struct gauge_arg){0, false});
	char *before = scrape_port(d3.port, NULL);
	kill_all(p, 1); /* the setter dies; the holder lives on */
	char *text = scrape_port(d3.port, NULL), *om = scrape_port(d3.port, prom_accept), *api = NULL;
	int st = tsupport_http_get(d3.port, "/api/v1/metrics/summary?family=queue_max", NULL, &api, NULL);
	kill_all(p, 2);
	tsupport_daemon_stop(&d3, SIGTERM);
	assert_true(p[0] == 0 && before && text && om);
	assert_double_equal_exact(tsupport_sample(before, "queue_max"), 7);
	if (strstr(text, "\nqueue_max ") || strstr(text, "\nqueue_min ") || strstr(om, "\nqueue_max ") ||
	    strstr(om, "\nqueue_min "))
		fail_msg("a gauge without a live setter is exposed:\n%s\n%s", text, om);
	if (strstr(text, "# TYPE queue_max") || strstr(om, "# TYPE queue_max"))
		fail_msg("a family without samples keeps its TYPE line:\n%s", text);
	check_parsers("nosetter", text, om);
	assert_int_equal(st, 200);
	if (!strstr(api, "\"value\":null"))
		fail_msg("the API has a value for it: %s", api);
	free(before);
	free(text);
	free(om);
	free(api);
}

/* max and min of NaN and 5 held by two live processes: NaN is left out
 * unless every setter holds NaN, whichever process has the lower region. */
static void test_collector_gauge_nan_ignored_in_both_region_orders(void **state)
{
	(void)state;
	const char *s3 = tsupport_segment("nanorder");
	struct tdaemon d3;
	assert_int_equal(tsupport_daemon_start(&d3, s3, NULL), 0);
	const struct gauge_arg nan_g = {NAN, true}, five = {5, true};
	const struct gauge_arg *orders[3][2] = {{&nan_g, &five}, {&five, &nan_g}, {&nan_g, &nan_g}};
	double got[3][2];
	int regions[3][2];
	char *api[3] = {NULL, NULL, NULL}, *bodies[3][2] = {{NULL, NULL}, {NULL, NULL}, {NULL, NULL}};
	for (int o = 0; o < 3; o++) {
		pid_t p[2];
		p[0] = raw_writer(s3, fill_gauges, orders[o][0]);
		regions[o][0] = raw_region;
		p[1] = raw_writer(s3, fill_gauges, orders[o][1]);
		regions[o][1] = raw_region;
		char *b = scrape_port(d3.port, NULL);
		got[o][0] = b ? tsupport_sample(b, "queue_max") : -1;
		got[o][1] = b ? tsupport_sample(b, "queue_min") : -1;
		bodies[o][0] = b;
		bodies[o][1] = scrape_port(d3.port, prom_accept);
		tsupport_http_get(d3.port, "/api/v1/metrics/summary?family=queue_max", NULL, &api[o], NULL);
		kill_all(p, 2);
		if (o < 2) { /* wait until both regions are folded and free again */
			b = scrape_port(d3.port, NULL);
			free(b);
		}
	}
	tsupport_daemon_stop(&d3, SIGTERM);
	for (int o = 0; o < 2; o++) {
		/* the lowest free ones; the collector's dashboard history holds one below them */
		if (regions[o][0] >= regions[o][1])
			fail_msg("order %d: the writers got regions %d and %d, want the first below the second", o,
				 regions[o][0], regions[o][1]);
		if (got[o][0] != 5 || got[o][1] != 5)
			fail_msg("order %d (region 0 holds %g): max %g, min %g; want 5 and 5", o, orders[o][0]->value,
				 got[o][0], got[o][1]);
		if (!api[o] || !strstr(api[o], "\"max\":5.0,"))
			fail_msg("order %d: API %s", o, api[o] ? api[o] : "(none)");
	}
	assert_true(isnan(got[2][0]) && isnan(got[2][1]));
	for (int o = 0; o < 3; o++) {
		char tag[16];
		snprintf(tag, sizeof tag, "nan%d", o);
		assert_true(bodies[o][0] && bodies[o][1]);
		check_parsers(tag, bodies[o][0], bodies[o][1]);
		free(bodies[o][0]);
		free(bodies[o][1]);
		free(api[o]);
	}
}

/* Sums strict OpenMetrics parsers refuse: a histogram with a negative
 * bucket bound, a summary and a histogram that observed a negative value,
 * a histogram whose sum is NaN (+Inf and -Inf observed). */
static void fill_sums(struct rawrg *r, const void *arg)
{
	(void)arg;
	const double nb[] = {-1, 0, 1}, one[] = {1}, pos[] = {1, 2};
	uint64_t *c = rr_series(r, rr_family(r, SHMET_HISTOGRAM, 0, "test_neg_bounds", 3, nb), 5 * 8);
	c[0] = 1, c[2] = 1, c[4] = shmet__bits(-0.5);
	c = rr_series(r, rr_family(r, SHMET_SUMMARY, 0, "test_neg_observed_seconds", 0, NULL), 16);
	c[0] = 2, c[1] = shmet__bits(-3);
	c = rr_series(r, rr_family(r, SHMET_HISTOGRAM, 0, "test_nan_sum", 1, one), 3 * 8);
	c[0] = 1, c[1] = 1, c[2] = shmet__bits(NAN);
	c = rr_series(r, rr_family(r, SHMET_HISTOGRAM, 0, "test_neg_sum", 2, pos), 4 * 8);
	c[0] = 1, c[3] = shmet__bits(-2);
	c = rr_series(r, rr_family(r, SHMET_COUNTER, 0, "test_fine_total", 0, NULL), 16);
	c[0] = 3;
}

static void test_collector_strict_parsers_accept_negative_and_nan_sums(void **state)
{
	(void)state;
	const char *s3 = tsupport_segment("sums");
	struct tdaemon d3;
	assert_int_equal(tsupport_daemon_start(&d3, s3, NULL), 0);
	pid_t p[1] = {raw_writer(s3, fill_sums, NULL)};
	char *text = scrape_port(d3.port, NULL), *om = scrape_port(d3.port, prom_accept);
	kill_all(p, 1);
	tsupport_daemon_stop(&d3, SIGTERM);
	assert_true(text && om);
	/* text 0.0.4 has no rule against them: everything is shown */
	const char *in_text[] = {"test_neg_bounds_sum -0.5\n", "test_neg_bounds_count 2\n",
				 "test_neg_observed_seconds_sum -3\n", "test_neg_observed_seconds_count 2\n", "test_nan_sum_sum NaN\n",
				 "test_nan_sum_count 2\n", "test_neg_sum_sum -2\n", "test_fine_total 3\n"};
	for (size_t i = 0; i < sizeof in_text / sizeof *in_text; i++)
		if (!strstr(text, in_text[i]))
			fail_msg("text lacks %s:\n%s", in_text[i], text);
	/* OpenMetrics: what the spec forbids is left out, the rest stays */
	const char *not_om[] = {"test_neg_bounds_sum", "test_neg_bounds_count", "test_neg_observed_seconds_sum",
				"test_nan_sum_sum", "test_nan_sum_count", "test_neg_sum_sum", "test_neg_sum_count"};
	for (size_t i = 0; i < sizeof not_om / sizeof *not_om; i++)
		if (strstr(om, not_om[i]))
			fail_msg("OpenMetrics body has %s:\n%s", not_om[i], om);
	const char *in_om[] = {"test_neg_bounds_bucket{le=\"-1.0\"} 1\n", "test_neg_bounds_bucket{le=\"+Inf\"} 2\n",
			       "test_neg_observed_seconds_count 2\n", "test_nan_sum_bucket{le=\"+Inf\"} 2\n",
			       "test_fine_total 3.0\n"};
	for (size_t i = 0; i < sizeof in_om / sizeof *in_om; i++)
		if (!strstr(om, in_om[i]))
			fail_msg("OpenMetrics body lacks %s:\n%s", in_om[i], om);
	check_parsers("sums", text, om);
	free(text);
	free(om);
}

/* A corrupt record is skipped, logged and counted once, however often the
 * view is rebuilt while it stays in the segment. */
static void test_collector_corrupt_record_counted_once(void **state)
{
	(void)state;
	char *body;
	assert_int_equal(tsupport_http_get(d.port, "/metrics", NULL, &body, NULL), 200);
	double before = tsupport_sample(body, "shmetricsd_corrupt_records_total");
	free(body);
	int ready[2];
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	if (pid == 0) {
		shmet_family *f;
		if (shmet_counter_register(&f, "doomed_total", "Soon corrupt.", 0, NULL) != SHMET_OK)
			_exit(1);
		shmet_counter_inc(shmet_counter_get(f, NULL)); /* claims this child's region */
		/* a stray write: the family record's name loses its validity */
		unsigned char *rg = shmet__base;
		struct shmet_region_header *h = (struct shmet_region_header *)(void *)rg;
		for (uint64_t o = 64; o + 8 < h->rg_dir_end; o++)
			if (memcmp(rg + o, "doomed_total", 12) == 0) {
				rg[o] = '-';
				break;
			}
		char one = 1;
		if (write(ready[1], &one, 1) != 1)
			_exit(2);
		pause();
		_exit(0);
	}
	/* nothing below may fail before the paused child is killed */
	char one;
	bool ready_ok = read(ready[0], &one, 1) == 1;
	int st = tsupport_http_get(d.port, "/metrics", NULL, &body, NULL);
	double first = st == 200 ? tsupport_sample(body, "shmetricsd_corrupt_records_total") : NAN;
	bool exposed = st == 200 && strstr(body, "doomed_total") != NULL;
	free(body);
	/* more series elsewhere: the view is rebuilt, the bad records met again */
	shmet_family *more;
	const char *l[] = {"n"};
	int reg = shmet_counter_register(&more, "rebuild_total", "Forces rebuilds.", 1, l);
	double later[5];
	for (int i = 0; i < 5; i++) {
		char v[8];
		snprintf(v, sizeof v, "%d", i);
		shmet_counter_inc(shmet_counter_labels(more, v));
		later[i] = NAN;
		if (tsupport_http_get(d.port, "/metrics", NULL, &body, NULL) == 200)
			later[i] = tsupport_sample(body, "shmetricsd_corrupt_records_total");
		free(body);
	}
	kill(pid, SIGKILL);
	tsupport_wait(pid);
	assert_true(ready_ok);
	assert_int_equal(st, 200);
	assert_false(exposed);
	assert_int_equal(reg, SHMET_OK);
	for (int i = 0; i < 5; i++)
		assert_double_equal_exact(later[i], first);
	assert_true(first > before); /* the family record and the series that points at it */
}

/* A scrape right after a new worker created a series counts it, even when
 * the collector's periodic scan is a minute away. */
static void test_collector_scrape_sees_series_created_just_before(void **state)
{
	(void)state;
	const char *seg2 = tsupport_segment("fresh");
	struct tdaemon d2;
	assert_int_equal(tsupport_daemon_start(&d2, seg2, (const char *const[]){"--scan-interval", "60", NULL}), 0);
	int ready[2];
	assert_int_equal(pipe(ready), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* a separate writer on the second segment: exec-free, so use the
		 * reader-side API to claim and write like a fresh process would */
		struct shmet_segment s;
		char err[SHMET_ERRBUF];
		if (shmet_segment_open(seg2, 0, NULL, &s, err) != SHMET_OK)
			_exit(1);
		uint32_t idx = 0;
		if (shmet_seg_claim(&s.map, s.map.fd, SHMET_NO_PARENT, &idx, err) != SHMET_OK)
			_exit(2);
		/* one family record and one series record, written as the writer does */
		unsigned char *rg = shmet_seg_region(&s.map, idx);
		struct shmet_rec_family fr;
		memset(&fr, 0, sizeof fr);
		const char name[] = "fresh_events_total";
		fr.fam_rec.rec_size = (uint32_t)shmet_align8(sizeof fr + sizeof name - 1);
		fr.fam_rec.rec_kind = SHMET_REC_FAMILY;
		fr.fam_type = SHMET_COUNTER;
		fr.fam_name_len = sizeof name - 1;
		memcpy(rg + 64, &fr, sizeof fr);
		memcpy(rg + 64 + sizeof fr, name, sizeof name - 1);
		/* and in the family registry, as the writer records it first */
		unsigned char *reg = s.map.base + s.registry_off;
		memcpy(reg + 64, rg + 64, fr.fam_rec.rec_size);
		__atomic_store_n(&((struct shmet_region_header *)(void *)reg)->rg_dir_end, (uint64_t)(64 + fr.fam_rec.rec_size),
				 __ATOMIC_RELEASE);
		uint32_t soff = 64 + fr.fam_rec.rec_size, cell = (uint32_t)s.region_size - 16;
		struct shmet_rec_series sr;
		memset(&sr, 0, sizeof sr);
		sr.ser_rec.rec_size = sizeof sr;
		sr.ser_rec.rec_kind = SHMET_REC_SERIES;
		sr.ser_family_off = 64;
		sr.ser_cell_off = cell;
		memcpy(rg + soff, &sr, sizeof sr);
		uint64_t n = 42;
		memcpy(rg + cell, &n, 8);
		struct shmet_region_header *h = (struct shmet_region_header *)(void *)rg;
		__atomic_store_n(&h->rg_cell_low, (uint64_t)cell, __ATOMIC_RELAXED);
		__atomic_store_n(&h->rg_dir_end, (uint64_t)(soff + sizeof sr), __ATOMIC_RELEASE);
		char one = 1;
		if (write(ready[1], &one, 1) != 1)
			_exit(3);
		pause();
		_exit(0);
	}
	char one;
	assert_int_equal(read(ready[0], &one, 1), 1);
	char *body;
	assert_int_equal(tsupport_http_get(d2.port, "/metrics", NULL, &body, NULL), 200);
	kill(pid, SIGKILL);
	tsupport_wait(pid);
	tsupport_daemon_stop(&d2, SIGTERM);
	assert_double_equal_exact(tsupport_sample(body, "fresh_events_total"), 42);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_collector_text_exact_and_promtool_clean),
		cmocka_unit_test(test_collector_openmetrics_negotiated_and_parsed),
		cmocka_unit_test(test_collector_gzip_when_asked),
		cmocka_unit_test(test_collector_health_index_and_errors),
		cmocka_unit_test(test_collector_own_metrics_present),
		cmocka_unit_test(test_collector_second_instance_and_bad_flags_refused),
		cmocka_unit_test(test_collector_prometheus_server_stores_exact_values),
		cmocka_unit_test(test_collector_scrape_sees_series_created_just_before),
		cmocka_unit_test(test_collector_corrupt_record_counted_once),
		cmocka_unit_test(test_collector_gauge_without_live_setter_absent),
		cmocka_unit_test(test_collector_gauge_nan_ignored_in_both_region_orders),
		cmocka_unit_test(test_collector_strict_parsers_accept_negative_and_nan_sums),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
