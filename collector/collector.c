/* shmetricsd's updater: fold dead workers, rebuild the view when the segment
 * changed, publish it under RCU, and free what no reader can still see. */
#include "http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <urcu-bp.h>

void collector_log(const char *fmt, ...)
{
	char line[1024];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ shmetricsd: ", ts.tv_nsec / 1000000);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof line - n, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s\n", line);
}

const struct view *view_enter(struct collector *c)
{
	rcu_read_lock();
	/* acquire: pairs with view_publish, so the view's contents are visible */
	return __atomic_load_n(&c->view, __ATOMIC_ACQUIRE);
}

void view_leave(struct collector *c)
{
	SHMET_TSAN_RELEASE(&c->grace);
	rcu_read_unlock();
}

void view_publish(struct collector *c, struct view *v)
{
	/* release: the view is complete before any reader can load it */
	__atomic_store_n(&c->view, v, __ATOMIC_RELEASE);
}

void view_grace_period(struct collector *c)
{
	synchronize_rcu();
	SHMET_TSAN_ACQUIRE(&c->grace);
}

/* Anything a view depends on: region states and generations, liveness,
 * directory ends, and the active retired half. */
static uint64_t fingerprint(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	uint64_t h = 0xcbf29ce484222325ull;
	unsigned active = shmet_retired_active(seg);
	struct shmet_area a;
	shmet_retired_area(seg, active, &a, NULL);
	uint64_t parts[2] = {active, a.dir_end};
	for (int k = 0; k < 2; k++)
		h = (h ^ parts[k]) * 0x100000001b3ull;
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		uint64_t p[3] = {info.state | info.generation << 8, info.alive, info.dir_end};
		for (int k = 0; k < 3; k++)
			h = (h ^ p[k]) * 0x100000001b3ull;
	}
	return h;
}

static struct shmet_fold_result fold_res;
static uint64_t last_fingerprint;

/* Lost writes and failed claims, logged when they rise: at the first scan
 * that sees them (a restarted collector too), then at most once a minute,
 * with the rise since the last line. */
#define LOSS_LOG_INTERVAL_NS (UINT64_C(60) * 1000000000u)
static uint64_t logged_dropped, logged_claims, loss_logged_ns;
static bool loss_logged;

static void log_losses(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	const struct shmet_retired_header *rh = shmet_retired_header(seg, shmet_retired_active(seg));
	/* relaxed: statistics; every writer adds with relaxed atomics.  Only
	 * this thread folds, so a region is counted either here or in rh_dropped. */
	uint64_t dropped = __atomic_load_n(&rh->rh_dropped, __ATOMIC_RELAXED) +
			   __atomic_load_n(&seg->map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		if (info.state == SHMET_REGION_LIVE &&
		    __atomic_load_n(&rh->rh_folded_gen[i], __ATOMIC_RELAXED) != info.generation)
			dropped += info.dropped;
	}
	uint64_t claims = __atomic_load_n(&seg->map.hdr->sh_claim_failures, __ATOMIC_RELAXED);
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	/* any worker can write these: a total below the last one logged is
	 * not a rise, and is not logged either */
	if ((dropped <= logged_dropped && claims <= logged_claims) ||
	    (loss_logged && now - loss_logged_ns < LOSS_LOG_INTERVAL_NS))
		return;
	collector_log("writes dropped: %llu (+%llu), region claims failed: %llu (+%llu); see "
		      "shmetricsd_writes_dropped_total and shmetricsd_region_claim_failures_total, and "
		      "shmetrics-dump --check",
		      (unsigned long long)dropped,
		      (unsigned long long)(dropped > logged_dropped ? dropped - logged_dropped : 0),
		      (unsigned long long)claims, (unsigned long long)(claims > logged_claims ? claims - logged_claims : 0));
	if (dropped > logged_dropped)
		logged_dropped = dropped;
	if (claims > logged_claims)
		logged_claims = claims;
	loss_logged_ns = now;
	loss_logged = true;
}

bool collector_scan(struct collector *c)
{
	int rc = shmet_fold_dead(&c->seg, &fold_res);
	if (rc != SHMET_OK || fold_res.err[0])
		collector_log("fold: %s", fold_res.err[0] ? fold_res.err : shmet_strerror(rc));
	log_losses(c);
	/* corrupt records the fold skipped were counted when the view met them */
	uint64_t fp = fingerprint(c);
	bool changed = false;
	if (fp != last_fingerprint || fold_res.to_free || !c->view) {
		struct view *nv = view_build(c);
		if (nv) {
			struct view *old = c->view;
			view_publish(c, nv);
			/* Readers of the old view may hold pointers into the regions we
			 * are about to free and into the retired half the next fold will
			 * overwrite: wait them out. */
			view_grace_period(c);
			view_free(old);
			last_fingerprint = fp;
			changed = true;
		}
	}
	if (fold_res.to_free && changed) {
		shmet_free_folded(&c->seg, &fold_res);
		last_fingerprint = 0; /* the freed regions change the counts: rebuild next scan */
	}
	__atomic_store_n(&c->last_scan_ns, shmet__now_ns(CLOCK_MONOTONIC), __ATOMIC_RELAXED);
	return changed;
}

static void *updater(void *arg)
{
	struct collector *c = arg;
	rcu_register_thread();
	while (!c->stop) {
		pthread_mutex_lock(&c->wake_mu);
		c->scanning = true;
		c->wake_requested = false;
		pthread_mutex_unlock(&c->wake_mu);
		collector_scan(c);
		api_tick(c);
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		uint64_t ns = (uint64_t)(c->cfg.scan_interval * 1e9);
		until.tv_sec += (time_t)(ns / 1000000000u);
		until.tv_nsec += (long)(ns % 1000000000u);
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_mutex_lock(&c->wake_mu);
		c->scanning = false;
		c->scans++;
		pthread_cond_broadcast(&c->scanned);
		if (!c->stop && !c->wake_requested)
			pthread_cond_timedwait(&c->wake, &c->wake_mu, &until);
		pthread_mutex_unlock(&c->wake_mu);
	}
	rcu_unregister_thread();
	return NULL;
}

bool collector_fresh_scan(struct collector *c, int timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&c->wake_mu);
	/* a scan already running may have passed the regions we care about */
	uint64_t want = c->scans + (c->scanning ? 2 : 1);
	c->wake_requested = true;
	pthread_cond_signal(&c->wake);
	int rc = 0;
	while (c->scans < want && !c->stop && rc == 0)
		rc = pthread_cond_timedwait(&c->scanned, &c->wake_mu, &until);
	bool fresh = c->scans >= want;
	pthread_mutex_unlock(&c->wake_mu);
	return fresh;
}

int collector_open(struct collector *c, const struct collector_config *cfg, char *err, size_t errlen)
{
	memset(c, 0, sizeof *c);
	c->cfg = *cfg;
	pthread_mutex_init(&c->wake_mu, NULL);
	pthread_cond_init(&c->wake, NULL);
	pthread_cond_init(&c->scanned, NULL);
	struct shmet_seg_config sc = {cfg->regions, cfg->region_size, 0, 0, 0};
	char why[SHMET_ERRBUF];
	int rc = shmet_segment_open(cfg->segment, SHMET_ATTACH_CREATE, &sc, &c->seg, why);
	if (rc != SHMET_OK) {
		snprintf(err, errlen, "cannot open segment: %s", why);
		return rc;
	}
	int holder = 0;
	rc = shmet_segment_lock_collector(&c->seg, &holder);
	if (rc != SHMET_OK) {
		if (holder > 0)
			snprintf(err, errlen, "another shmetricsd (pid %d) already serves %s", holder, c->seg.path);
		else
			snprintf(err, errlen, "another shmetricsd already serves %s", c->seg.path);
		shmet_segment_close(&c->seg);
		return rc;
	}
	collector_log("segment %s: %s, %u regions of %llu bytes", c->seg.path,
		      c->seg.map.created ? "created" : "opened", c->seg.regions, (unsigned long long)c->seg.region_size);
	collector_scan(c);
	if (!c->view) {
		snprintf(err, errlen, "cannot build the first view (out of memory)");
		shmet_segment_close(&c->seg);
		return SHMET_E_SYS;
	}
	return SHMET_OK;
}

int collector_start(struct collector *c, char *err, size_t errlen)
{
	if (pthread_create(&c->updater, NULL, updater, c) != 0) {
		snprintf(err, errlen, "cannot start the updater thread");
		return SHMET_E_SYS;
	}
	int rc = http_start(c, err, errlen);
	if (rc != SHMET_OK) {
		collector_stop(c);
		return rc;
	}
	return SHMET_OK;
}

void collector_stop(struct collector *c)
{
	http_stop(c);
	pthread_mutex_lock(&c->wake_mu);
	c->stop = 1;
	pthread_cond_broadcast(&c->wake);
	pthread_mutex_unlock(&c->wake_mu);
	if (c->updater) {
		pthread_join(c->updater, NULL);
		c->updater = 0;
	}
}

void collector_close(struct collector *c)
{
	keymap_free(&c->problems);
	view_free(c->view);
	c->view = NULL;
	shmet_segment_close(&c->seg);
}
