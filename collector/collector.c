/* shmetricsd's updater: fold dead workers, rebuild the view when the segment
 * changed, publish it under RCU, and free what no reader can still see. */
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
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

bool collector_scan(struct collector *c)
{
	int rc = shmet_fold_dead(&c->seg, &fold_res);
	/* A full retired area leaves the same regions at every scan: say so
	 * when their number changes, not every time. */
	uint32_t was = __atomic_load_n(&c->fold_skipped, __ATOMIC_RELAXED);
	if (fold_res.skipped != was) {
		if (fold_res.skipped)
			collector_log("retired area full: %u dead region%s cannot be folded and stay allocated (%s); "
				      "create the segment with a larger --retired-size",
				      fold_res.skipped, fold_res.skipped == 1 ? "" : "s", fold_res.err);
		else
			collector_log("retired area: every dead region folded again");
	}
	/* relaxed: a statistic read by scrapes */
	__atomic_store_n(&c->fold_skipped, fold_res.skipped, __ATOMIC_RELAXED);
	if (rc != SHMET_OK || (fold_res.err[0] && fold_res.skipped == 0))
		collector_log("fold: %s", fold_res.err[0] ? fold_res.err : shmet_strerror(rc));
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

/* Could a collector's pushes have made every family in region i?  Any
 * process can set the flag; a worker's region it cannot be, or its gauges
 * would count as live while this collector runs. */
static bool push_shaped(const struct shmet_segment *seg, uint32_t i)
{
	struct shmet_area a;
	struct shmet_dir_iter it;
	struct shmet_record r;
	int rc;
	if (shmet_region_area(seg, i, &a, NULL) != SHMET_OK)
		return false;
	shmet_dir_begin(&it, &a);
	while ((rc = shmet_dir_next(&it, &r, NULL)) != 0)
		if (rc > 0 && r.kind == SHMET_REC_FAMILY && r.fam.type == SHMET_GAUGE &&
		    r.fam.mode != SHMET_GAUGE_MOSTRECENT) {
			collector_log("push: region %u is flagged as a collector's but holds the %s gauge %.*s; not taken back",
				      i, shmet_gauge_mode_name(r.fam.mode), (int)r.fam.name_len, r.fam.name);
			return false;
		}
	return true;
}

/* With push on, take back the push region an earlier collector of this
 * segment left when it stopped or died, so that restarts do not leave a
 * dead region each (and its directory and values carry on).  Runs holding
 * the collector lock and before this process's first fold, so nothing can
 * fold the region meanwhile; a region the active retired half already
 * includes (a fold that flipped but did not free) is left to be freed.  The
 * liveness lock goes on a descriptor of its own: the segment's descriptor
 * would not see its own lock, and the fold would think the region dead. */
static void adopt_push_region(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	c->push_region = -1;
	c->push_lock_fd = -1;
	if (!c->cfg.push_token_file)
		return;
	const struct shmet_retired_header *rh = shmet_retired_header(seg, shmet_retired_active(seg));
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_slot *slot =
			(struct shmet_region_slot *)(void *)(seg->map.base + seg->table_off + (uint64_t)i * SHMET_CACHELINE);
		/* relaxed: set by the region's owner, which is dead if it matters */
		if (!(__atomic_load_n(&slot->rs_flags, __ATOMIC_RELAXED) & SHMET_SLOT_COLLECTOR))
			continue;
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		if (info.state != SHMET_REGION_LIVE || info.alive ||
		    __atomic_load_n(&rh->rh_folded_gen[i], __ATOMIC_RELAXED) == info.generation || !push_shaped(seg, i))
			continue;
		if (c->push_lock_fd < 0) {
			char proc[64];
			snprintf(proc, sizeof proc, "/proc/self/fd/%d", seg->map.fd);
			c->push_lock_fd = open(proc, O_RDWR | O_CLOEXEC);
			if (c->push_lock_fd < 0) {
				collector_log("push: cannot take back region %u: %s", i, strerror(errno));
				return;
			}
		}
		off_t off = (off_t)(seg->table_off + (uint64_t)i * SHMET_CACHELINE);
		if (shmet__ofd_lock(c->push_lock_fd, off, F_WRLCK, F_OFD_SETLK) != 0)
			continue;
		/* acquire: under our lock the slot must still be that dead owner's */
		if (__atomic_load_n(&slot->rs_state_gen, __ATOMIC_ACQUIRE) !=
		    shmet_state_gen(info.generation, SHMET_REGION_LIVE)) {
			shmet__ofd_lock(c->push_lock_fd, off, F_UNLCK, F_OFD_SETLK);
			continue;
		}
		c->push_region = (int)i;
		collector_log("push: taking back region %u (generation %llu) of a collector that stopped", i,
			      (unsigned long long)info.generation);
		return;
	}
}

void collector_release_push_region(struct collector *c)
{
	if (c->push_region < 0)
		return;
	off_t off = (off_t)(c->seg.table_off + (uint64_t)c->push_region * SHMET_CACHELINE);
	shmet__ofd_lock(c->push_lock_fd, off, F_UNLCK, F_OFD_SETLK);
	c->push_region = -1;
}

int collector_open(struct collector *c, const struct collector_config *cfg, char *err, size_t errlen)
{
	memset(c, 0, sizeof *c);
	c->cfg = *cfg;
	c->push_region = -1;
	c->push_lock_fd = -1;
	pthread_mutex_init(&c->wake_mu, NULL);
	pthread_cond_init(&c->wake, NULL);
	pthread_cond_init(&c->scanned, NULL);
	struct shmet_seg_config sc = {cfg->regions, cfg->region_size, cfg->retired_size, 0, 0};
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
	collector_log("segment %s: %s, %u regions of %llu bytes, retired totals %llu bytes", c->seg.path,
		      c->seg.map.created ? "created" : "opened", c->seg.regions, (unsigned long long)c->seg.region_size,
		      (unsigned long long)(c->seg.retired_half_size - c->seg.retired_hdr_size));
	adopt_push_region(c);
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
	if (c->push_lock_fd >= 0)
		close(c->push_lock_fd); /* last: the region is dead once its pushes can no longer be served */
	c->push_lock_fd = -1;
}
