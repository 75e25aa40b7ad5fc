/* Loud failures around the segment (watch.h). */
#include "watch.h"

#include "collector.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct segment_watch {
	dev_t dev;
	ino_t ino;
	int detached;       /* relaxed: written by the updater, read by /-/ready and scrapes */
	pthread_mutex_t mu; /* guards why */
	char why[512];
	uint64_t scans_without_writer; /* updater only */
	bool writer_seen, warned;      /* updater only */
	bool published;
};

void watch_open(struct collector *c)
{
	struct segment_watch *w = calloc(1, sizeof *w);
	struct stat st;
	if (!w)
		return; /* no watch: the checks are off, nothing else is */
	pthread_mutex_init(&w->mu, NULL);
	if (fstat(c->seg.map.fd, &st) == 0) {
		w->dev = st.st_dev;
		w->ino = st.st_ino;
	}
	c->watch = w;
}

/* Has a writer (not a collector's push or history region) a region now? */
static bool writer_present(const struct shmet_segment *seg)
{
	for (uint32_t i = 0; i < seg->regions; i++) {
		const struct shmet_region_slot *slot =
			(const struct shmet_region_slot *)(const void *)(seg->map.base + seg->table_off +
									  (uint64_t)i * SHMET_CACHELINE);
		/* relaxed: a hint for a warning; a wrong answer delays it a scan */
		if (shmet_state_of(__atomic_load_n(&slot->rs_state_gen, __ATOMIC_RELAXED)) == SHMET_REGION_LIVE &&
		    !(__atomic_load_n(&slot->rs_flags, __ATOMIC_RELAXED) & (SHMET_SLOT_COLLECTOR | SHMET_SLOT_HISTORY)))
			return true;
	}
	return false;
}

void watch_scan(struct collector *c)
{
	struct segment_watch *w = c->watch;
	if (!w)
		return;
	struct stat st;
	char why[512] = "";
	if (lstat(c->seg.path, &st) != 0)
		snprintf(why, sizeof why, "the segment %s was removed (%s): writers that start now create a new one this "
			 "collector does not read; restart shmetricsd", c->seg.path, strerror(errno));
	else if (st.st_dev != w->dev || st.st_ino != w->ino)
		snprintf(why, sizeof why, "the segment %s was replaced by another file (inode %llu, ours is %llu): writers "
			 "that start now use that one, which this collector does not read; restart shmetricsd",
			 c->seg.path, (unsigned long long)st.st_ino, (unsigned long long)w->ino);
	int now = why[0] != 0, was = __atomic_load_n(&w->detached, __ATOMIC_RELAXED);
	if (now) {
		pthread_mutex_lock(&w->mu);
		bool changed = strcmp(w->why, why) != 0;
		memcpy(w->why, why, sizeof why);
		pthread_mutex_unlock(&w->mu);
		if (changed)
			collector_error("%s", why);
	} else if (was) {
		collector_log("the segment %s is this collector's file again", c->seg.path);
	}
	__atomic_store_n(&w->detached, now, __ATOMIC_RELAXED);
	if (!now) {
		pthread_mutex_lock(&w->mu);
		w->why[0] = 0;
		pthread_mutex_unlock(&w->mu);
	}

	unsigned limit = c->cfg.no_writer_scans;
	if (w->writer_seen || !limit || !collector_readable(c->seg.map.base, (size_t)c->seg.regions_off))
		return;
	if (writer_present(&c->seg)) {
		w->writer_seen = true;
		if (w->warned)
			collector_log("a writer attached to %s after %llu scans", c->seg.path,
				      (unsigned long long)w->scans_without_writer);
		return;
	}
	if (++w->scans_without_writer == limit) {
		w->warned = true;
		collector_warn("no writer has attached to %s after %u scans: is the application running, and does it use "
			       "this segment (SHMETRICS_SEGMENT=%s) as a user that may open it?",
			       c->seg.path, limit, c->seg.path);
	}
}

int watch_detached(const struct collector *c)
{
	return c->watch ? __atomic_load_n(&c->watch->detached, __ATOMIC_RELAXED) : 0;
}

const char *watch_problem(struct collector *c, char *buf, size_t cap)
{
	struct segment_watch *w = c->watch;
	if (!w || !__atomic_load_n(&w->detached, __ATOMIC_RELAXED))
		return NULL;
	pthread_mutex_lock(&w->mu);
	snprintf(buf, cap, "%s", w->why);
	pthread_mutex_unlock(&w->mu);
	return buf[0] ? buf : NULL;
}

void watch_publish(struct collector *c, const char *addrs)
{
	struct shmet_seg_header *h = c->seg.map.hdr;
	struct segment_watch *w = c->watch;
	if (!w || c->seg.map.readonly || !collector_readable(h, sizeof *h))
		return;
	/* relaxed, byte by byte: informational text another collector copies
	 * and sanitises; the pid goes last, so a reader that sees it sees the
	 * addresses of the same start, unless two starts race (then it is
	 * only a message) */
	size_t n = strlen(addrs);
	if (n >= sizeof h->sh_collector_addr)
		n = sizeof h->sh_collector_addr - 1;
	for (size_t i = 0; i < sizeof h->sh_collector_addr; i++)
		__atomic_store_n(&h->sh_collector_addr[i], i < n ? addrs[i] : 0, __ATOMIC_RELAXED);
	__atomic_store_n(&h->sh_collector_pid, (uint32_t)getpid(), __ATOMIC_RELEASE);
	w->published = true;
}

void watch_close(struct collector *c)
{
	struct segment_watch *w = c->watch;
	if (!w)
		return;
	struct shmet_seg_header *h = c->seg.map.hdr;
	if (w->published && collector_readable(h, sizeof *h) &&
	    __atomic_load_n(&h->sh_collector_pid, __ATOMIC_RELAXED) == (uint32_t)getpid()) {
		__atomic_store_n(&h->sh_collector_pid, 0, __ATOMIC_RELAXED);
		for (size_t i = 0; i < sizeof h->sh_collector_addr; i++)
			__atomic_store_n(&h->sh_collector_addr[i], 0, __ATOMIC_RELAXED);
	}
	pthread_mutex_destroy(&w->mu);
	free(w);
	c->watch = NULL;
}

void watch_holder(const struct shmet_segment *seg, int *pid, char *addr, size_t cap)
{
	const struct shmet_seg_header *h = seg->map.hdr;
	*pid = 0;
	if (cap)
		addr[0] = 0;
	if (!h || !cap)
		return;
	/* acquire: pairs with watch_publish's release of the pid */
	uint32_t p = __atomic_load_n(&h->sh_collector_pid, __ATOMIC_ACQUIRE);
	*pid = p > 0 && p <= 4194304 ? (int)p : 0; /* PID_MAX_LIMIT */
	size_t k = 0;
	for (size_t i = 0; i < sizeof h->sh_collector_addr && k + 1 < cap; i++) {
		char ch = __atomic_load_n(&h->sh_collector_addr[i], __ATOMIC_RELAXED);
		if (!ch)
			break;
		addr[k++] = ch >= 0x20 && ch < 0x7f ? ch : '?';
	}
	addr[k] = 0;
}
