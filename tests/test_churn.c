/* Churn: workers recycled continuously, some killed with -9 mid-write, while
 * the collector is scraped every 50 ms.  No counter or bucket ever goes
 * down; afterwards every total is exact, and it survives kill -9 of the
 * collector itself. */
#include "tsupport.h"
#include "shmetrics.h"

#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 8
#define PER_WORKER 5000
#define SECONDS 6

static const char *seg;
static struct tdaemon d;
static shmet_counter counted, noise, revenue;
/* fractional adds whose sum depends on the order of additions */
static const double money[] = {0.1, 0.7, 38.6, 49.2, 64.9};
static shmet_histogram lat;

static const char *const series[] = {
	"churn_counted_total",
	"churn_latency_seconds_bucket{le=\"0.01\"}",
	"churn_latency_seconds_bucket{le=\"0.1\"}",
	"churn_latency_seconds_bucket{le=\"1.0\"}",
	"churn_latency_seconds_bucket{le=\"+Inf\"}",
	"churn_latency_seconds_count",
	"churn_latency_seconds_sum",
	"churn_revenue_total",
};
#define NSERIES (sizeof series / sizeof *series)

static int scraping = 1; /* atomic: the main thread stops the scraper thread */
static int scrapes, violations, failed_scrapes;
static char violation[512];

static void *scraper(void *arg)
{
	(void)arg;
	double last[NSERIES];
	for (size_t i = 0; i < NSERIES; i++)
		last[i] = 0;
	while (__atomic_load_n(&scraping, __ATOMIC_RELAXED)) {
		char *body;
		if (tsupport_http_get(d.port, "/metrics", NULL, &body, NULL) != 200) {
			failed_scrapes++;
		} else {
			scrapes++;
			for (size_t i = 0; i < NSERIES; i++) {
				double v = tsupport_sample(body, series[i]);
				if (isnan(v))
					continue;
				if (v < last[i]) {
					if (!violations++)
						snprintf(violation, sizeof violation, "%s went from %.17g to %.17g", series[i], last[i], v);
				}
				last[i] = v;
			}
			free(body);
		}
		struct timespec t = {0, 50000000};
		nanosleep(&t, NULL);
	}
	return NULL;
}

static const double obs_values[] = {0.005, 0.05, 0.5, 5};

static void worker(int done_fd, int exit_after_noise)
{
	const double *obs = obs_values;
	if (shmet_region_index() < 0) {
		/* every region taken by dead workers not yet folded: this worker's
		 * writes would be dropped (and counted), so it does none */
		char none = 0;
		_exit(write(done_fd, &none, 1) == 1 ? 0 : 1);
	}
	for (int i = 0; i < PER_WORKER; i++) {
		shmet_counter_inc(counted);
		shmet_histogram_observe(lat, obs[i & 3]);
		shmet_counter_add(revenue, money[i % 5]);
	}
	char one = 1;
	if (write(done_fd, &one, 1) != 1)
		_exit(1);
	/* keep writing other series until killed, or exit on our own */
	for (long i = 0; exit_after_noise < 0 || i < exit_after_noise; i++)
		shmet_counter_inc(noise);
	_exit(0);
}

static void test_churn_monotonic_then_exact_across_collector_kill(void **state)
{
	(void)state;
	seg = tsupport_segment("churn");
	struct shmet_options o = {seg, 24, 1 << 16, 0, false};
	assert_int_equal(shmet_init(&o), SHMET_OK);
	shmet_family *fc, *fh;
	const char *l[] = {"kind"};
	assert_int_equal(shmet_counter_register(&fc, "churn_noise_total", "Noise.", 1, l), SHMET_OK);
	noise = shmet_counter_labels(fc, "noise");
	counted = shmet_counter_new("churn_counted_total", "Counted increments.");
	revenue = shmet_counter_new("churn_revenue_total", "Fractional adds.");
	double b[] = {0.01, 0.1, 1};
	assert_int_equal(shmet_histogram_register(&fh, "churn_latency_seconds", "Latency.", b, 3, 0, NULL), SHMET_OK);
	lat = shmet_histogram_get(fh, NULL);
	assert_int_equal(tsupport_daemon_start(&d, seg, (const char *const[]){"--scan-interval", "0.05", NULL}), 0);

	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, scraper, NULL), 0);
	pid_t pids[WORKERS] = {0};
	int fds[WORKERS];
	int spawned = 0, killed = 0, exited = 0, without_region = 0;
	srand(42);
	time_t end = time(NULL) + SECONDS;
	while (time(NULL) < end) {
		for (int w = 0; w < WORKERS; w++) {
			if (pids[w])
				continue;
			int p[2];
			assert_int_equal(pipe(p), 0);
			int self_exit = rand() % 2 ? rand() % 200000 : -1;
			pid_t pid = fork();
			assert_true(pid >= 0);
			if (pid == 0) {
				close(p[0]);
				worker(p[1], self_exit);
			}
			close(p[1]);
			pids[w] = pid;
			fds[w] = p[0];
			spawned++;
		}
		for (int w = 0; w < WORKERS; w++) {
			char one;
			if (read(fds[w], &one, 1) != 1) /* the worker's known increments are done */
				fail_msg("worker %d died before finishing its increments", w);
			without_region += one == 0;
			close(fds[w]);
			if (rand() % 2) {
				kill(pids[w], SIGKILL);
				killed++;
			} else {
				kill(pids[w], SIGTERM);
				exited++;
			}
			tsupport_wait(pids[w]);
			pids[w] = 0;
		}
		struct timespec pace = {0, 20000000}; /* a busy server, not a fork bomb */
		nanosleep(&pace, NULL);
	}
	/* let the collector fold the last dead workers */
	struct timespec t = {0, 500000000};
	nanosleep(&t, NULL);
	__atomic_store_n(&scraping, 0, __ATOMIC_RELAXED);
	pthread_join(th, NULL);
	print_message("spawned %d workers (%d killed -9, %d terminated, %d found no free region), %d scrapes\n", spawned,
		      killed, exited, without_region, scrapes);
	if (violations)
		fail_msg("%d decreases seen; first: %s", violations, violation);
	assert_true(scrapes > 20);
	assert_int_equal(failed_scrapes, 0);
	assert_true(spawned - without_region > 100);
	double want = (double)(spawned - without_region) * PER_WORKER;
	char *body;
	assert_int_equal(tsupport_http_get(d.port, "/metrics", NULL, &body, NULL), 200);
	assert_double_equal_exact(tsupport_sample(body, "churn_counted_total"), want);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_count"), want);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_bucket{le=\"0.01\"}"), want / 4);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_bucket{le=\"1.0\"}"), want * 3 / 4);
	/* float sums bit for bit: every worker's cell holds the same sequential
	 * sum, and the exposed value is their exact sum rounded once, however
	 * many were folded and in whatever order */
	double cell_money = 0, cell_sum = 0;
	for (int i = 0; i < PER_WORKER; i++) {
		cell_money += money[i % 5];
		cell_sum += obs_values[i & 3];
	}
	struct shmet_xsum xm, xh;
	shmet_xsum_init(&xm);
	shmet_xsum_init(&xh);
	for (int k = 0; k < spawned - without_region; k++) {
		shmet_xsum_add(&xm, cell_money);
		shmet_xsum_add(&xh, cell_sum);
	}
	double want_money = shmet_xsum_round(&xm), want_sum = shmet_xsum_round(&xh);
	assert_double_equal_exact(tsupport_sample(body, "churn_revenue_total"), want_money);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_sum"), want_sum);
	double folds = tsupport_sample(body, "shmetricsd_folds_total");
	assert_true(folds >= spawned - without_region); /* a worker that found no region had nothing to fold */
	free(body);

	/* kill -9 the collector, start another: nothing changes */
	assert_int_equal(tsupport_daemon_stop(&d, SIGKILL), 128 + SIGKILL);
	assert_int_equal(tsupport_daemon_start(&d, seg, NULL), 0);
	assert_int_equal(tsupport_http_get(d.port, "/metrics", NULL, &body, NULL), 200);
	assert_double_equal_exact(tsupport_sample(body, "churn_counted_total"), want);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_count"), want);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_bucket{le=\"0.1\"}"), want / 2);
	assert_double_equal_exact(tsupport_sample(body, "churn_revenue_total"), want_money);
	assert_double_equal_exact(tsupport_sample(body, "churn_latency_seconds_sum"), want_sum);
	free(body);
	assert_int_equal(tsupport_daemon_stop(&d, SIGTERM), 0);
}

static int teardown(void **state)
{
	(void)state;
	if (d.pid > 0)
		tsupport_daemon_stop(&d, SIGKILL);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_churn_monotonic_then_exact_across_collector_kill),
	};
	return cmocka_run_group_tests(tests, NULL, teardown);
}
