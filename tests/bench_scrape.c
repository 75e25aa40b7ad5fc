/* Scrape benchmarks: rendering /metrics (text 0.0.4) from the view.  "RxS"
 * means R live worker processes that each hold the same S series (as the
 * workers of one server do), so a scrape aggregates R*S cells into S lines.
 * Prints: bench <name> <ms> ms series <n>  (best of several renders).
 *
 * Then GET /metrics over real HTTP (the collector's own server on
 * 127.0.0.1), each figure beside the render alone measured in the same run:
 *   scrape_get_vs_render   GET p50 / render p50, 100,000 series;
 *   scrape_100000_churn    GET p50 and p99 while a writer process adds a
 *                          series every 20 ms (one scrape every 25 ms, so
 *                          every scrape meets new series);
 *   scrape_10000_c16       16 keep-alive scrapers at once (wrk, with a Lua
 *                          script for the percentiles), 10,000 series. */
#include "collector.h"
#include "shmetrics.h"
#include "tsupport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu-bp.h>

/* In a writer process: `series` counters of one family (exits on failure). */
static shmet_family *fill_series(int series)
{
	shmet_family *f;
	const char *l[] = {"method", "route", "status"};
	if (shmet_counter_register(&f, "bench_requests_total", "Requests.", 3, l) != SHMET_OK)
		_exit(1);
	char route[32], status[8];
	for (int s = 0; s < series; s++) {
		snprintf(route, sizeof route, "/api/v1/item/%d", s / 5);
		snprintf(status, sizeof status, "%d", 200 + s % 5);
		shmet_counter c = shmet_counter_labels(f, "GET", route, status);
		if (!c.off)
			_exit(1);
		shmet_counter_add_u64(c, (uint64_t)s * 7 + 1);
	}
	return f;
}

/* Children that register `series` counters each and stay alive holding
 * their region until the pipe closes. */
static int spawn_holders(int n, int series, pid_t *pids)
{
	int gate[2], ready[2];
	if (pipe(gate) || pipe(ready))
		return -1;
	for (int i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			close(gate[1]);
			fill_series(series);
			char ok = 1;
			if (write(ready[1], &ok, 1) != 1)
				_exit(1);
			char b;
			while (read(gate[0], &b, 1) > 0) {
			}
			_exit(0);
		}
	}
	close(gate[0]);
	close(ready[1]);
	for (int i = 0; i < n; i++) {
		char ok;
		if (read(ready[0], &ok, 1) != 1)
			return -1;
	}
	close(ready[0]);
	return gate[1];
}

static void reap(int gate, int n, pid_t *pids)
{
	close(gate);
	for (int i = 0; i < n; i++)
		waitpid(pids[i], NULL, 0);
}

static double render_ms(struct collector *c, uint64_t *series)
{
	shmet_buf b;
	shmet_buf_init(&b);
	double best = 1e9;
	for (int rep = 0; rep < 7; rep++) {
		shmet_buf_reset(&b);
		uint64_t t0 = shmet__now_ns(CLOCK_MONOTONIC);
		const struct view *v = view_enter(c);
		render_metrics(c, v, &b, SHMET_EXPO_TEXT);
		*series = v->stats.series;
		view_leave(c);
		double ms = (double)(shmet__now_ns(CLOCK_MONOTONIC) - t0) / 1e6;
		if (ms < best)
			best = ms;
	}
	shmet_buf_free(&b);
	return best;
}

static struct collector coll;

static void run(const char *name, int regions, uint64_t region_size, int per_region, int recycled)
{
	char path[128];
	snprintf(path, sizeof path, "/dev/shm/shmet-bench-scrape-%d", (int)getpid());
	unlink(path);
	struct collector_config cfg = {.segment = path, .listen_host = "127.0.0.1", .regions = (uint32_t)regions + 2,
				       .region_size = region_size, .scan_interval = 1};
	char err[256];
	if (collector_open(&coll, &cfg, err, sizeof err) != SHMET_OK) {
		fprintf(stderr, "bench %s: %s\n", name, err);
		exit(1);
	}
	struct shmet_options o = {path, 0, 0, 0, false};
	/* Recycled workers first: each claims a region, writes, dies, and is
	 * folded, as a long-running pre-forking server's workers are. */
	for (int done = 0; done < recycled;) {
		int batch = recycled - done < regions ? recycled - done : regions;
		pid_t *p = calloc((size_t)batch, sizeof *p);
		for (int i = 0; i < batch; i++) {
			p[i] = fork();
			if (p[i] == 0) {
				if (shmet_init(&o) != SHMET_OK)
					_exit(1);
				shmet_family *f;
				const char *l[] = {"method", "route", "status"};
				shmet_counter_register(&f, "bench_requests_total", "Requests.", 3, l);
				shmet_counter_inc(shmet_counter_labels(f, "GET", "/recycled", "200"));
				_exit(0);
			}
		}
		for (int i = 0; i < batch; i++)
			waitpid(p[i], NULL, 0);
		free(p);
		collector_scan(&coll);
		done += batch;
	}
	pid_t *pids = calloc((size_t)regions, sizeof *pids);
	pid_t me = fork();
	if (me == 0) {
		/* holders must not inherit a writer region from this process */
		if (shmet_init(&o) != SHMET_OK)
			_exit(1);
		int gate = spawn_holders(regions, per_region, pids);
		if (gate < 0)
			_exit(1);
		char b;
		while (read(0, &b, 1) > 0) {
		}
		reap(gate, regions, pids);
		_exit(0);
	}
	/* wait until every holder's series are visible */
	uint64_t series = 0;
	for (int i = 0; i < 600; i++) {
		collector_scan(&coll);
		/* every worker holds the same series: the scrape sums regions x series cells */
		if (coll.view->stats.regions_live >= (uint32_t)regions + 1 && coll.view->stats.series >= (uint64_t)per_region)
			break;
		struct timespec t = {0, 100000000};
		nanosleep(&t, NULL);
	}
	double ms = render_ms(&coll, &series);
	printf("bench %s %.2f ms series %llu\n", name, ms, (unsigned long long)series);
	fflush(stdout);
	kill(me, SIGKILL); /* its holders exit when their gate pipe closes */
	waitpid(me, NULL, 0);
	free(pids);
	collector_close(&coll);
	unlink(path);
}

/* ---- over HTTP ---- */

static int http_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		fprintf(stderr, "bench: connect: %s\n", strerror(errno));
		exit(1);
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

/* One keep-alive GET /metrics on fd; the time until the last body byte. */
static double http_get_ms(int fd, char **buf, size_t *cap)
{
	static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	uint64_t t0 = shmet__now_ns(CLOCK_MONOTONIC);
	if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
		fprintf(stderr, "bench: write: %s\n", strerror(errno));
		exit(1);
	}
	size_t len = 0, want = 0, head = 0;
	for (;;) {
		if (*cap - len < 65536) {
			*cap = *cap ? *cap * 2 : 1 << 20;
			*buf = realloc(*buf, *cap);
		}
		ssize_t n = read(fd, *buf + len, *cap - len - 1);
		if (n <= 0) {
			fprintf(stderr, "bench: the collector closed the connection\n");
			exit(1);
		}
		len += (size_t)n;
		(*buf)[len] = 0;
		if (!head) {
			char *e = strstr(*buf, "\r\n\r\n");
			if (!e)
				continue;
			head = (size_t)(e - *buf) + 4;
			char *cl = strcasestr(*buf, "\r\ncontent-length:");
			if (strncmp(*buf, "HTTP/1.1 200", 12) != 0 || !cl || cl > e) {
				fprintf(stderr, "bench: unexpected answer: %.200s\n", *buf);
				exit(1);
			}
			want = head + strtoull(cl + 17, NULL, 10);
		}
		if (len >= want)
			break;
	}
	return (double)(shmet__now_ns(CLOCK_MONOTONIC) - t0) / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The q-th quantile (0..1) of n samples, sorted in place (nearest rank). */
static double quantile(double *v, int n, double q)
{
	qsort(v, (size_t)n, sizeof *v, cmp_double);
	int k = (int)(q * n + 0.999999) - 1;
	return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

/* The render alone, as a scrape's HTTP thread does it: p50 of n renders. */
static double render_p50(struct collector *c, int n)
{
	double *t = calloc((size_t)n, sizeof *t);
	shmet_buf b;
	shmet_buf_init(&b);
	for (int i = 0; i < n; i++) {
		shmet_buf_reset(&b);
		uint64_t t0 = shmet__now_ns(CLOCK_MONOTONIC);
		collector_render(c, &b, SHMET_EXPO_TEXT);
		t[i] = (double)(shmet__now_ns(CLOCK_MONOTONIC) - t0) / 1e6;
	}
	shmet_buf_free(&b);
	double p = quantile(t, n, 0.5);
	free(t);
	return p;
}

/* A writer process: `series` counters, then (once `go` is readable) one
 * new series every 20 ms until `go` closes.  Writes 1 on `ready` when the
 * first series are all there. */
static pid_t spawn_churner(const char *path, int series, int *go_w, int *ready_r)
{
	int go[2], ready[2];
	if (pipe(go) || pipe(ready))
		exit(1);
	pid_t pid = fork();
	if (pid == 0) {
		close(go[1]);
		close(ready[0]);
		struct shmet_options o = {path, 0, 0, 0, false};
		if (shmet_init(&o) != SHMET_OK)
			_exit(1);
		shmet_family *f = fill_series(series);
		char route[32];
		char b = 1;
		if (write(ready[1], &b, 1) != 1 || read(go[0], &b, 1) != 1)
			_exit(1);
		/* churn: a series every 20 ms, with the next route past the others */
		for (int s = series;; s++) {
			struct timespec t = {0, 20000000};
			nanosleep(&t, NULL);
			snprintf(route, sizeof route, "/api/v1/new/%d", s);
			shmet_counter c = shmet_counter_labels(f, "POST", route, "201");
			if (!c.off)
				_exit(2);
			shmet_counter_inc(c);
			if (getppid() == 1)
				_exit(0);
			fd_set rd;
			FD_ZERO(&rd);
			FD_SET(go[0], &rd);
			struct timeval tv = {0, 0};
			if (select(go[0] + 1, &rd, NULL, NULL, &tv) > 0)
				_exit(0); /* closed */
		}
	}
	close(go[0]);
	close(ready[1]);
	*go_w = go[1];
	*ready_r = ready[0];
	return pid;
}

static void wait_series(struct collector *c, uint64_t n)
{
	for (int i = 0; i < 600; i++) {
		collector_scan(c);
		if (c->view->stats.series >= n)
			return;
		struct timespec t = {0, 50000000};
		nanosleep(&t, NULL);
	}
	fprintf(stderr, "bench: the series never all showed\n");
	exit(1);
}

static void open_served(struct collector *c, const char *name, const char *path, uint64_t region_size)
{
	unlink(path);
	struct collector_config cfg = {.segment = path, .listen_host = "127.0.0.1", .listen_port = tsupport_free_port(),
				       .regions = 8, .region_size = region_size, .scan_interval = 1};
	char err[256];
	if (collector_open(c, &cfg, err, sizeof err) != SHMET_OK || collector_start(c, err, sizeof err) != SHMET_OK) {
		fprintf(stderr, "bench %s: %s\n", name, err);
		exit(1);
	}
}

static void close_served(struct collector *c, const char *path)
{
	collector_stop(c);
	collector_close(c);
	unlink(path);
}

static void run_http_100000(void)
{
	char path[128];
	snprintf(path, sizeof path, "/dev/shm/shmet-bench-scrape-http-%d", (int)getpid());
	open_served(&coll, "scrape_100000_churn", path, 32u << 20);
	int go, ready;
	pid_t w = spawn_churner(path, 100000, &go, &ready);
	char b;
	if (read(ready, &b, 1) != 1) {
		fprintf(stderr, "bench: the writer failed\n");
		exit(1);
	}
	wait_series(&coll, 100000);
	int fd = http_connect(coll.bound_port);
	char *buf = NULL;
	size_t cap = 0;
	enum { N_GET = 60, N_CHURN = 300 };
	double get[N_GET], churn[N_CHURN];
	for (int i = 0; i < 5; i++)
		http_get_ms(fd, &buf, &cap); /* warm: pages, buffers */
	for (int i = 0; i < N_GET; i++)
		get[i] = http_get_ms(fd, &buf, &cap);
	double render = render_p50(&coll, N_GET);
	double get50 = quantile(get, N_GET, 0.5);
	printf("bench scrape_get_vs_render %.2f ms render %.2f ms ratio %.2f series 100000\n", get50, render,
	       get50 / render);
	printf("# scrape_get_vs_render: GET p50 / render p50, target <= 1.2, %s\n", get50 / render <= 1.2 ? "met" : "MISSED");
	fflush(stdout);
	/* churn: the writer adds a series every 20 ms; a scrape every 25 ms */
	if (write(go, &b, 1) != 1)
		exit(1);
	uint64_t first = coll.view->stats.series;
	uint64_t next = shmet__now_ns(CLOCK_MONOTONIC);
	for (int i = 0; i < N_CHURN; i++) {
		next += 25000000;
		churn[i] = http_get_ms(fd, &buf, &cap);
		uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
		if (now < next) {
			struct timespec t = {0, (long)(next - now)};
			nanosleep(&t, NULL);
		}
	}
	uint64_t grown = __atomic_load_n(&coll.view, __ATOMIC_ACQUIRE)->stats.series - first;
	double p50 = quantile(churn, N_CHURN, 0.5), p99 = quantile(churn, N_CHURN, 0.99);
	printf("bench scrape_100000_churn %.2f ms p99 %.2f ms series 100000 new %llu baseline %.2f ms (render alone) "
	       "ratio %.2f\n",
	       p50, p99, (unsigned long long)grown, render, p99 / render);
	printf("# scrape_100000_churn: %d scrapes, target p99 <= 15 ms, %s\n", N_CHURN, p99 <= 15 ? "met" : "MISSED");
	fflush(stdout);
	close(go);
	close(fd);
	free(buf);
	waitpid(w, NULL, 0);
	close(ready);
	close_served(&coll, path);
}

/* 16 concurrent keep-alive scrapers (wrk); p50 and p99 from its Lua done(). */
static void run_http_c16(void)
{
	char path[128], lua[128];
	snprintf(path, sizeof path, "/dev/shm/shmet-bench-scrape-c16-%d", (int)getpid());
	snprintf(lua, sizeof lua, "/tmp/shmet-bench-scrape-%d.lua", (int)getpid());
	if (system("command -v wrk >/dev/null 2>&1") != 0) {
		printf("# scrape_10000_c16: skipped, wrk is not installed (make deps)\n");
		return;
	}
	FILE *f = fopen(lua, "w");
	if (!f)
		exit(1);
	fputs("done = function(summary, latency, requests)\n"
	      "  local e = summary.errors\n"
	      "  io.write(string.format(\"wrk %.3f %.3f %d %d\\n\", latency:percentile(50) / 1000,\n"
	      "    latency:percentile(99) / 1000, summary.requests,\n"
	      "    e.connect + e.read + e.write + e.status + e.timeout))\n"
	      "end\n",
	      f);
	fclose(f);
	open_served(&coll, "scrape_10000_c16", path, 4u << 20);
	int go, ready;
	pid_t w = spawn_churner(path, 10000, &go, &ready);
	char b;
	if (read(ready, &b, 1) != 1)
		exit(1);
	wait_series(&coll, 10000);
	int fd = http_connect(coll.bound_port);
	char *buf = NULL;
	size_t cap = 0;
	enum { N = 60 };
	double one[N];
	for (int i = 0; i < N; i++)
		one[i] = http_get_ms(fd, &buf, &cap);
	close(fd);
	free(buf);
	double base = quantile(one, N, 0.5);
	char cmd[512];
	snprintf(cmd, sizeof cmd, "wrk -t2 -c16 -d5s -s %s http://127.0.0.1:%d/metrics 2>&1", lua, coll.bound_port);
	FILE *p = popen(cmd, "r");
	char line[512];
	double p50 = -1, p99 = -1;
	long reqs = 0, errs = 0;
	while (p && fgets(line, sizeof line, p))
		if (sscanf(line, "wrk %lf %lf %ld %ld", &p50, &p99, &reqs, &errs) == 4)
			break;
	while (p && fgets(line, sizeof line, p)) {
	}
	if (p)
		pclose(p);
	unlink(lua);
	if (p50 < 0) {
		fprintf(stderr, "bench scrape_10000_c16: no figures from wrk\n");
		exit(1);
	}
	printf("bench scrape_10000_c16 p50 %.2f ms p99 %.2f ms series 10000 requests %ld errors %ld baseline %.2f ms "
	       "(one scraper, p50) ratio %.2f\n",
	       p50, p99, reqs, errs, base, p99 / base);
	printf("# scrape_10000_c16: target p99 <= 10 ms, %s\n", p99 <= 10 && errs == 0 ? "met" : "MISSED");
	fflush(stdout);
	close(go);
	waitpid(w, NULL, 0);
	close(ready);
	close_served(&coll, path);
}

/* argv: "render", "http", "churn" or "c16" runs only those lines (default: all). */
int main(int argc, char **argv)
{
	/* 100,000 series in one family: no series limit (SERIES LIMIT) */
	setenv(SHMET_ENV_SERIES_LIMIT, "4294967295", 1);
	const char *only = argc < 2 ? NULL : argv[1];
	bool render = !only || strcmp(only, "render") == 0;
	bool churn = !only || strcmp(only, "http") == 0 || strcmp(only, "churn") == 0;
	bool c16 = !only || strcmp(only, "http") == 0 || strcmp(only, "c16") == 0;
	/* the holder tree reads stdin as its stop signal: give it a pipe */
	int p[2];
	if (pipe(p) == 0)
		dup2(p[0], 0);
	if (render) {
		run("scrape_1x100000", 1, 16u << 20, 100000, 0);
		run("scrape_64x10000", 64, 1u << 20, 10000, 0);
		run("scrape_100x1000", 100, 128u << 10, 1000, 0);
		run("scrape_100x1000_after_10000_recycled", 100, 128u << 10, 1000, 10000);
	}
	signal(SIGPIPE, SIG_IGN);
	if (churn)
		run_http_100000();
	if (c16)
		run_http_c16();
	return 0;
}
