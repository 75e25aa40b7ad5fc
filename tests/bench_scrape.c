/* Scrape benchmarks: rendering /metrics (text 0.0.4) from the view.  "RxS"
 * means R live worker processes that each hold the same S series (as the
 * workers of one server do), so a scrape aggregates R*S cells into S lines.
 * Prints: bench <name> <ms> ms series <n>  (best of several renders). */
#include "collector.h"
#include "shmetrics.h"
#include "tsupport.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <urcu-bp.h>

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
			shmet_family *f;
			const char *l[] = {"method", "route", "status"};
			shmet_counter_register(&f, "bench_requests_total", "Requests.", 3, l);
			char route[32], status[8];
			for (int s = 0; s < series; s++) {
				snprintf(route, sizeof route, "/api/v1/item/%d", s / 5);
				snprintf(status, sizeof status, "%d", 200 + s % 5);
				shmet_counter c = shmet_counter_labels(f, "GET", route, status);
				if (!c.off)
					_exit(1);
				shmet_counter_add_u64(c, (uint64_t)s * 7 + 1);
			}
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

int main(void)
{
	/* the holder tree reads stdin as its stop signal: give it a pipe */
	int p[2];
	if (pipe(p) == 0)
		dup2(p[0], 0);
	run("scrape_1x100000", 1, 16u << 20, 100000, 0);
	run("scrape_64x10000", 64, 1u << 20, 10000, 0);
	run("scrape_100x1000", 100, 128u << 10, 1000, 0);
	run("scrape_100x1000_after_10000_recycled", 100, 128u << 10, 1000, 10000);
	return 0;
}
