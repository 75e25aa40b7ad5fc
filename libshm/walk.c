/* libshm: the one walk over what a segment holds now, for every reader.
 *
 * The collector's view, the snapshot (tools and tests) and shmetrics-dump
 * all count the same areas (the active retired half, then each live region
 * whose generation is not folded into it yet) and the same series in them
 * (those the family registry accepts, per-worker gauges only while their
 * process lives), under the same identity (shmet_series_key_worker).  They
 * differ only in what they keep of it, so the walk and the rules are here
 * once.
 */
#include "shmetrics_reader.h"

#include <stdio.h>

void shmet_scan_begin(struct shmet_scan *s, const struct shmet_segment *seg)
{
	memset(s, 0, sizeof *s);
	s->seg = seg;
	s->active = shmet_retired_active(seg);
	s->rh = shmet_retired_header(seg, s->active);
	s->next = -1;
}

int shmet_scan_next(struct shmet_scan *s, struct shmet_scan_area *out)
{
	const struct shmet_segment *seg = s->seg;
	if (s->next >= (int64_t)seg->regions)
		return 0;
	memset(&out->info, 0, sizeof out->info);
	out->err[0] = 0;
	out->folded = false;
	if (s->next < 0) {
		s->next = 0;
		out->region = -1;
		out->live = false;
		out->counts = true;
		out->rc = shmet_retired_area(seg, s->active, &out->area, out->err);
		return 1;
	}
	uint32_t i = (uint32_t)s->next++;
	out->region = (int)i;
	/* The folded generation before the slot: generations only grow, so a
	 * generation seen as folded is never newer than the slot read after it. */
	out->folded_gen = __atomic_load_n(&s->rh->rh_folded_gen[i], __ATOMIC_RELAXED);
	shmet_region_info(seg, i, &out->info);
	/* a thread's region holds no per-worker gauges of its own (WRITING
	 * THREADS in the layout header) */
	out->live = shmet_region_gauges_live(&out->info);
	out->folded = out->info.state == SHMET_REGION_LIVE && out->folded_gen == out->info.generation;
	out->counts = out->info.state == SHMET_REGION_LIVE && !out->folded;
	out->rc = SHMET_OK;
	memset(&out->area, 0, sizeof out->area);
	if (out->info.state == SHMET_REGION_LIVE)
		out->rc = shmet_region_area(seg, i, &out->area, out->err);
	return 1;
}

const struct shmet_family_view *shmet_series_family(const struct shmet_registry *reg, const struct shmet_record *r,
						    bool live, bool *counts)
{
	const struct shmet_family_view *f = shmet_registry_check(reg, &r->fam);
	/* a dead worker's own series (per-worker gauge) ends with it; its
	 * family stays known */
	*counts = f && !(f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER && !live);
	return f;
}

size_t shmet_series_key_worker(const struct shmet_record *r, int worker, char *buf, size_t cap)
{
	size_t n = shmet_series_key(r, buf, cap);
	if (!n || worker < 0)
		return n;
	int w = snprintf(buf + n, cap - n, "%d\xff", worker);
	return w > 0 && (size_t)w < cap - n ? n + (size_t)w : 0;
}
