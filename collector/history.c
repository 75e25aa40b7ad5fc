/* The dashboard's history in the segment (see history.h and DASHBOARD
 * HISTORY in shmetrics_layout.h). */
#include "history.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

struct history {
	struct collector *c;
	int region;
	int lock_fd;                 /* its own open file description: carries the region's liveness lock */
	unsigned char *base;         /* the history header, SHMET_HISTORY_OFF into the region */
	uint32_t slots;              /* from our own geometry, never from the segment */
	uint64_t next;               /* stream thread only: the slot written next */
	uint64_t written, dropped, rejected; /* relaxed atomics: the stream thread writes, scrapes read */
};

static struct shmet_region_slot *slot_of(const struct shmet_segment *seg, uint32_t i)
{
	return (struct shmet_region_slot *)(void *)(seg->map.base + seg->table_off + (uint64_t)i * SHMET_CACHELINE);
}

static unsigned char *region_of(const struct shmet_segment *seg, uint32_t i)
{
	return seg->map.base + seg->regions_off + (uint64_t)i * seg->region_size;
}

/* A region an earlier collector's history may be in: flagged, dead, not
 * folded yet, and with no directory (a worker's region that set the flag
 * would otherwise keep its series "live" for ever). */
static bool adoptable(const struct shmet_segment *seg, uint32_t i)
{
	const struct shmet_retired_header *rh = shmet_retired_header(seg, shmet_retired_active(seg));
	/* relaxed: the owner that set the flag is dead if it matters */
	if (!(__atomic_load_n(&slot_of(seg, i)->rs_flags, __ATOMIC_RELAXED) & SHMET_SLOT_HISTORY))
		return false;
	struct shmet_region_info info;
	shmet_region_info(seg, i, &info);
	if (info.state != SHMET_REGION_LIVE || info.alive ||
	    __atomic_load_n(&rh->rh_folded_gen[i], __ATOMIC_RELAXED) == info.generation)
		return false;
	const struct shmet_region_header *rg = (const void *)region_of(seg, i);
	return __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE) == sizeof *rg;
}

static int take_back(struct history *h, const struct shmet_segment *seg)
{
	for (uint32_t i = 0; i < seg->regions; i++) {
		if (!adoptable(seg, i))
			continue;
		uint64_t sg = __atomic_load_n(&slot_of(seg, i)->rs_state_gen, __ATOMIC_ACQUIRE);
		off_t off = (off_t)(seg->table_off + (uint64_t)i * SHMET_CACHELINE);
		if (shmet__ofd_lock(h->lock_fd, off, F_WRLCK, F_OFD_SETLK) != 0)
			continue;
		/* acquire: under our lock the slot must still be the dead owner's */
		if (__atomic_load_n(&slot_of(seg, i)->rs_state_gen, __ATOMIC_ACQUIRE) != sg ||
		    shmet_state_of(sg) != SHMET_REGION_LIVE) {
			shmet__ofd_lock(h->lock_fd, off, F_UNLCK, F_OFD_SETLK);
			continue;
		}
		__atomic_store_n(&slot_of(seg, i)->rs_pid, (uint32_t)getpid(), __ATOMIC_RELAXED);
		collector_log("dashboard: taking back the history in region %u", i);
		return (int)i;
	}
	return -1;
}

struct history *history_open(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	uint64_t room = seg->region_size > SHMET_HISTORY_SLOTS_OFF ? seg->region_size - SHMET_HISTORY_SLOTS_OFF : 0;
	if (room / SHMET_HISTORY_SLOT_SIZE == 0) {
		collector_log("dashboard: regions of %llu bytes hold no history; a restart starts it empty",
			      (unsigned long long)seg->region_size);
		return NULL;
	}
	struct history *h = calloc(1, sizeof *h);
	if (!h)
		return NULL;
	h->c = c;
	h->slots = (uint32_t)(room / SHMET_HISTORY_SLOT_SIZE);
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", seg->map.fd);
	/* A descriptor of its own: the segment's would not see its own lock,
	 * and the fold would think the region dead. */
	h->lock_fd = open(proc, O_RDWR | O_CLOEXEC);
	if (h->lock_fd < 0) {
		collector_log("dashboard: no history in the segment: cannot open it again: %s", strerror(errno));
		free(h);
		return NULL;
	}
	h->region = take_back(h, seg);
	bool fresh = h->region < 0;
	if (fresh) {
		uint32_t idx = 0;
		char err[SHMET_ERRBUF];
		if (shmet_seg_claim(&seg->map, h->lock_fd, SHMET_NO_PARENT, &idx, err) != SHMET_OK) {
			collector_log("dashboard: no history in the segment (a restart starts it empty): %s", err);
			close(h->lock_fd);
			free(h);
			return NULL;
		}
		h->region = (int)idx;
		/* relaxed: only a later collector reads it, once we are dead */
		__atomic_fetch_or(&slot_of(seg, idx)->rs_flags, SHMET_SLOT_HISTORY, __ATOMIC_RELAXED);
	}
	h->base = region_of(seg, (uint32_t)h->region) + SHMET_HISTORY_OFF;
	struct shmet_history_header hh;
	memcpy(&hh, h->base, sizeof hh);
	if (fresh || hh.hh_magic != SHMET_HISTORY_MAGIC || hh.hh_slot_size != SHMET_HISTORY_SLOT_SIZE ||
	    hh.hh_slots != h->slots) {
		/* a new region, or one that is not ours to read: start it over */
		for (uint32_t k = 0; k < h->slots; k++)
			__atomic_store_n((uint64_t *)(void *)(h->base + SHMET_HISTORY_SLOTS_OFF - SHMET_HISTORY_OFF +
							    (uint64_t)k * SHMET_HISTORY_SLOT_SIZE),
					 0, __ATOMIC_RELAXED);
		memset(&hh, 0, sizeof hh);
		hh.hh_slot_size = SHMET_HISTORY_SLOT_SIZE;
		hh.hh_slots = h->slots;
		memcpy(h->base, &hh, sizeof hh);
		/* release: the slots above are empty before the header says they are ours */
		__atomic_store_n((uint64_t *)(void *)h->base, SHMET_HISTORY_MAGIC, __ATOMIC_RELEASE);
	} else {
		h->next = hh.hh_next % h->slots;
	}
	collector_log("dashboard: history in region %u, %u frames %.0f s apart", h->region, h->slots, history_step(h));
	return h;
}

void history_close(struct history *h)
{
	if (!h)
		return;
	close(h->lock_fd); /* the region is dead now: the next collector takes it back */
	free(h);
}

double history_step(const struct history *h)
{
	double step = HISTORY_SPAN_S / (h->slots > 1 ? h->slots - 1 : 1);
	return step > HISTORY_STEP_S ? ceil(step) : HISTORY_STEP_S;
}

static unsigned char *slot_bytes(const struct history *h, uint32_t k)
{
	return h->base + (SHMET_HISTORY_SLOTS_OFF - SHMET_HISTORY_OFF) + (uint64_t)k * SHMET_HISTORY_SLOT_SIZE;
}

#define PAYLOAD_MAX (SHMET_HISTORY_SLOT_SIZE - sizeof(struct shmet_history_slot))

/* A frame without its per-family numbers: what is kept when the whole one
 * does not fit a slot. */
static char *without_families(const char *json, size_t len)
{
	json_t *j = json_loadb(json, len, 0, NULL);
	char *out = NULL;
	if (j && json_object_del(j, "fam") == 0)
		out = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	return out;
}

bool history_append(struct history *h, uint64_t id, double unix_s, const char *json, size_t len)
{
	if (!h || !id)
		return false;
	unsigned char out[PAYLOAD_MAX];
	uLongf clen = sizeof out;
	char *light = NULL;
	int zrc = len <= SHMET_HISTORY_RAW_MAX ? compress2(out, &clen, (const Bytef *)json, len, 6) : Z_BUF_ERROR;
	if (zrc != Z_OK && (light = without_families(json, len)) != NULL) {
		len = strlen(light);
		clen = sizeof out;
		zrc = compress2(out, &clen, (const Bytef *)light, len, 6);
	}
	free(light);
	if (zrc != Z_OK) {
		__atomic_fetch_add(&h->dropped, 1, __ATOMIC_RELAXED);
		return false;
	}
	unsigned char *p = slot_bytes(h, (uint32_t)h->next);
	struct shmet_history_slot hs = {
		.hs_id = 0,
		.hs_unix_ms = (uint64_t)(unix_s * 1000),
		.hs_len = (uint32_t)clen,
		.hs_raw_len = (uint32_t)len,
		.hs_crc = (uint32_t)crc32(0, out, (uInt)clen),
	};
	/* relaxed: a crash between here and the release below leaves an
	 * empty slot (or a stale one whose crc no longer matches) */
	__atomic_store_n((uint64_t *)(void *)p, 0, __ATOMIC_RELAXED);
	memcpy(p + 8, (const unsigned char *)&hs + 8, sizeof hs - 8);
	memcpy(p + sizeof hs, out, clen);
	__atomic_store_n((uint64_t *)(void *)p, id, __ATOMIC_RELEASE);
	h->next = (h->next + 1) % h->slots;
	struct shmet_history_header *hh = (void *)h->base;
	__atomic_store_n(&hh->hh_next, h->next, __ATOMIC_RELAXED);
	__atomic_fetch_add(&h->written, 1, __ATOMIC_RELAXED);
	return true;
}

struct kept {
	uint64_t id;
	double t;
	char *json;
};

static int by_id(const void *a, const void *b)
{
	const struct kept *x = a, *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* One slot, copied then checked: NULL unless every check passes. */
static char *slot_read(const struct history *h, uint32_t k, double now_unix, uint64_t *id, double *t)
{
	unsigned char copy[SHMET_HISTORY_SLOT_SIZE];
	/* acquire: pairs with the writer's release of hs_id (a writer that is
	 * dead by now; a hostile one is what the checks below are for) */
	uint64_t first = __atomic_load_n((uint64_t *)(void *)slot_bytes(h, k), __ATOMIC_ACQUIRE);
	memcpy(copy, slot_bytes(h, k), sizeof copy);
	struct shmet_history_slot hs;
	memcpy(&hs, copy, sizeof hs);
	if (!hs.hs_id || hs.hs_id != first || hs.hs_len == 0 || hs.hs_len > PAYLOAD_MAX || hs.hs_raw_len == 0 ||
	    hs.hs_raw_len > SHMET_HISTORY_RAW_MAX || hs.hs_zero != 0)
		return NULL;
	double ts = (double)hs.hs_unix_ms / 1000;
	if (!(ts <= now_unix + 60 && now_unix - ts <= HISTORY_SPAN_S)) {
		*t = -1; /* too old to show (or from the future): not damage */
		return NULL;
	}
	if ((uint32_t)crc32(0, copy + sizeof hs, hs.hs_len) != hs.hs_crc)
		return NULL;
	char *raw = malloc(hs.hs_raw_len);
	uLongf rl = hs.hs_raw_len;
	json_t *j = NULL;
	if (raw && uncompress((Bytef *)raw, &rl, copy + sizeof hs, hs.hs_len) == Z_OK && rl == hs.hs_raw_len)
		j = json_loadb(raw, rl, JSON_REJECT_DUPLICATES, NULL);
	free(raw);
	json_t *jid = json_object_get(j, "id"), *jt = json_object_get(j, "t");
	char *out = NULL;
	if (json_is_object(j) && json_is_integer(jid) && (uint64_t)json_integer_value(jid) == hs.hs_id &&
	    json_is_number(jt) && fabs(json_number_value(jt) - ts) < 1) {
		out = json_dumps(j, JSON_COMPACT);
		*id = hs.hs_id;
		*t = json_number_value(jt);
	}
	json_decref(j);
	return out;
}

void history_load(struct history *h, double now_unix,
		  void (*fn)(void *arg, uint64_t id, double unix_s, const char *json, size_t len), void *arg)
{
	if (!h)
		return;
	struct kept *k = calloc(h->slots, sizeof *k);
	if (!k)
		return;
	uint32_t n = 0;
	for (uint32_t i = 0; i < h->slots; i++) {
		uint64_t first = __atomic_load_n((uint64_t *)(void *)slot_bytes(h, i), __ATOMIC_RELAXED);
		if (!first)
			continue;
		k[n].t = 0;
		k[n].json = slot_read(h, i, now_unix, &k[n].id, &k[n].t);
		if (k[n].json)
			n++;
		else if (k[n].t == 0)
			__atomic_fetch_add(&h->rejected, 1, __ATOMIC_RELAXED);
	}
	qsort(k, n, sizeof *k, by_id);
	for (uint32_t i = 0; i < n; i++) {
		if (i == 0 || k[i].id != k[i - 1].id)
			fn(arg, k[i].id, k[i].t, k[i].json, strlen(k[i].json));
		free(k[i].json);
	}
	if (h->rejected)
		collector_log("dashboard: %llu history records failed their checks and were left out",
			      (unsigned long long)h->rejected);
	free(k);
}

void history_stats(const struct history *h, struct history_stats *out)
{
	memset(out, 0, sizeof *out);
	out->region = -1;
	if (!h)
		return;
	out->region = h->region;
	out->slots = h->slots;
	out->written = __atomic_load_n(&h->written, __ATOMIC_RELAXED);
	out->dropped = __atomic_load_n(&h->dropped, __ATOMIC_RELAXED);
	out->rejected = __atomic_load_n(&h->rejected, __ATOMIC_RELAXED);
}
