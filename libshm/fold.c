/* libshm: folding dead workers' values into the retired totals.
 *
 * The retired area has two halves.  A fold copies the active half into the
 * inactive one, adds every dead region to the copy, records each added
 * (region, generation) in the copy's rh_folded_gen, and flips
 * sh_retired_active with one release store.  Until that store nothing a
 * reader uses has changed; after it, readers see the new totals and skip the
 * folded regions.  A folder killed anywhere before the store leaves an
 * unused inactive half; killed after it, the next fold finds the regions
 * already recorded in the active half and only frees them.
 *
 * Float totals are added exactly (EXACT FLOAT TOTALS in shmetrics_layout.h)
 * and only series of a family with the registry's shape are folded: those
 * are the only ones any reader ever exposed.  A fold that cannot finish
 * frees nothing it did not flip, and an active half that fails validation
 * stops folding altogether rather than restarting the totals from zero.
 */
#include "shmetrics_reader.h"

#include "keymap.h"

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

#define KEY_CAP SHMET_SERIES_KEY_MAX

/* Test-only fault injection: the fold of the Nth series from now fails as
 * if its region changed under the folder.  0: never. */
unsigned long shmet_test_fold_fail_at;

/* The inactive half while a fold writes it. */
struct target {
	unsigned char *base;
	uint64_t size, dir_end, cell_low;
	struct keymap families; /* name -> family record offset */
	struct keymap series;   /* series key -> series record offset */
};

static bool keeps(const struct shmet_family_view *f)
{
	/* Dead workers' gauges are dropped, except where the last value set
	 * anywhere is the answer. */
	return f->type != SHMET_GAUGE || f->mode == SHMET_GAUGE_MOSTRECENT;
}

static uint64_t series_rec_size(const struct shmet_series_view *s)
{
	uint64_t n = sizeof(struct shmet_rec_series);
	for (uint32_t i = 0; i < s->nvalues; i++)
		n += 2 + s->value_lens[i];
	return shmet_align8(n);
}

/* A record's key in the retired half: a baseline's (REMOVAL) is its
 * series' key and 0xfe, which no UTF-8 key holds, so the two never meet. */
static size_t record_key(const struct shmet_record *r, char *key)
{
	size_t n = shmet_series_key(r, key, KEY_CAP - 1);
	if (n && (r->series.flags & SHMET_SER_BASELINE))
		key[n++] = '\xfe';
	return n;
}

/* ser_folded_s of the record at rec_off (RETENTION): plain store, the
 * half is the inactive one. */
static void stamp_folded(struct target *t, uint32_t rec_off, uint32_t now_s)
{
	memcpy(t->base + rec_off + offsetof(struct shmet_rec_series, ser_folded_s), &now_s, 4);
}

static unsigned char *append(struct target *t, uint64_t size)
{
	if (t->cell_low - t->dir_end < size)
		return NULL;
	unsigned char *p = t->base + t->dir_end;
	t->dir_end += size;
	return p;
}

/* c[k], c[k+1], c[k+2] := the exact sum of themselves and v.  0 when the
 * three components could not hold it. */
static int add_exact(uint64_t *c, uint32_t k, double v)
{
	struct shmet_xsum xs;
	shmet_xsum_init(&xs);
	for (int i = 0; i < 3; i++)
		shmet_xsum_add(&xs, shmet__double(c[k + i]));
	shmet_xsum_add(&xs, v);
	double out[3];
	int exact = shmet_xsum_split3(&xs, out);
	for (int i = 0; i < 3; i++)
		c[k + i] = shmet__bits(out[i]);
	return exact;
}

/* Append a SERIES record (n values, flags) with cells of cs bytes; the
 * cells' offset, or 0 when there is no room. */
static uint32_t append_series(struct target *t, const char *const *values, const uint32_t *lens, uint32_t n,
			      uint32_t fam_off, uint16_t flags, uint32_t cs, uint32_t folded_s, uint32_t *rec_off)
{
	uint64_t rs = sizeof(struct shmet_rec_series);
	for (uint32_t i = 0; i < n; i++)
		rs += 2 + lens[i];
	rs = shmet_align8(rs);
	if (t->cell_low - t->dir_end < rs + cs)
		return 0;
	t->cell_low -= cs;
	uint32_t cell_off = (uint32_t)t->cell_low;
	unsigned char *p = append(t, rs);
	*rec_off = (uint32_t)(p - t->base);
	struct shmet_rec_series sr;
	memset(&sr, 0, sizeof sr);
	sr.ser_rec.rec_size = (uint32_t)rs;
	sr.ser_rec.rec_kind = SHMET_REC_SERIES;
	sr.ser_rec.rec_flags = flags;
	sr.ser_family_off = fam_off;
	sr.ser_cell_off = cell_off;
	sr.ser_nvalues = (uint16_t)n;
	sr.ser_folded_s = folded_s;
	memset(p, 0, rs);
	memcpy(p, &sr, sizeof sr);
	unsigned char *q = p + sizeof sr;
	for (uint32_t i = 0; i < n; i++) {
		uint16_t l = (uint16_t)lens[i];
		memcpy(q, &l, 2);
		memcpy(q + 2, values[i], l);
		q += 2 + l;
	}
	return cell_off;
}

/* The family record of rf in the target (appended when new); 0: no room. */
static uint32_t target_family(struct target *t, const struct shmet_family_view *rf)
{
	struct kv *kv = keymap_find(&t->families, rf->name, rf->name_len);
	if (kv)
		return (uint32_t)kv->val;
	unsigned char *p = append(t, rf->rec_size);
	if (!p)
		return 0;
	memcpy(p, rf->rec, rf->rec_size); /* the registry's validated private copy */
	uint32_t off = (uint32_t)(p - t->base);
	return keymap_put(&t->families, rf->name, rf->name_len, off) == 0 ? off : 0;
}

/* Add the cells of series r (in src) to retired-layout cells c, exactly. */
static void add_cells(uint64_t *c, const struct shmet_area *src, const struct shmet_record *r,
		      const struct shmet_family_view *rf, struct shmet_fold_result *res)
{
	struct shmet_values v;
	shmet_read_cells(src, &r->fam, &r->series, &v);
	/* Plain stores: nobody reads the inactive half until the flip. */
	uint32_t k = shmet_float_cell(rf->type, rf->nbuckets);
	switch (rf->type) {
	case SHMET_COUNTER: {
		/* whole parts past 2^64 go to the exact float total: readers add
		 * every whole part exactly, and so must the fold */
		uint64_t sum;
		int exact = 1;
		if (__builtin_add_overflow(c[0], v.whole, &sum)) {
			exact &= add_exact(c, k, (double)(v.whole >> 32) * 4294967296.0);
			exact &= add_exact(c, k, (double)(v.whole & 0xffffffffu));
		} else {
			c[0] = sum;
		}
		if (!add_exact(c, k, v.value) || !exact)
			res->inexact++;
		break;
	}
	case SHMET_SUMMARY:
		c[0] = shmet_sat_add(c[0], v.whole);
		if (!add_exact(c, k, v.value))
			res->inexact++;
		break;
	case SHMET_GAUGE:
		if (shmet_most_recent_wins(v.stamp_ns, v.value, c[1], shmet__double(c[0]))) {
			c[0] = shmet__bits(v.value);
			c[1] = v.stamp_ns;
		}
		break;
	case SHMET_HISTOGRAM:
		for (uint32_t i = 0; i <= rf->nbuckets; i++)
			c[i] = shmet_sat_add(c[i], v.buckets[i]);
		if (!add_exact(c, k, v.value))
			res->inexact++;
		break;
	}
	if (rf->sk.count) /* parse_series checked that the cells hold the sketch */
		shmet_sketch_load_add(c + shmet_sketch_cell(rf->type, rf->nbuckets, 1),
				      (const uint64_t *)(const void *)(src->base + r->series.cell_off) +
					      shmet_sketch_cell(rf->type, rf->nbuckets, src->retired),
				      rf->sk.count + 2);
}

/* Add one dead series into the target; 0 ok, -1 no room. */
static int fold_series(struct target *t, const struct shmet_area *src, const struct shmet_record *r,
		       const struct shmet_family_view *rf, char *key, size_t klen, uint32_t now_s,
		       struct shmet_fold_result *res)
{
	if (shmet_test_fold_fail_at && --shmet_test_fold_fail_at == 0)
		return -1;
	uint32_t fam_off = target_family(t, rf); /* index_target checked the shape of one already there */
	if (!fam_off)
		return -1;
	struct kv *ser = keymap_find(&t->series, key, klen);
	uint32_t cell_off, rec_off;
	uint64_t ser_val; /* record offset << 32 | cell offset */
	if (ser) {
		/* checked when indexed (or made here): the half is shared memory a
		 * worker can rewrite, so its records are never read again */
		ser_val = ser->val;
		cell_off = (uint32_t)ser_val;
	} else {
		uint32_t cs = shmet_cell_size_sk(rf->type, rf->nbuckets, rf->sk.count, 1);
		/* the overflow mark outlives its process: --check still names the family */
		cell_off = append_series(t, r->series.values, r->series.value_lens, r->series.nvalues, fam_off,
					 (uint16_t)(r->series.flags & SHMET_SER_OVERFLOW), cs, now_s, &rec_off);
		if (!cell_off)
			return -1;
		memset(t->base + cell_off, 0, cs);
		ser_val = (uint64_t)rec_off << 32 | cell_off;
		if (keymap_put(&t->series, key, klen, (uintptr_t)ser_val) != 0)
			return -1;
	}
	add_cells((uint64_t *)(void *)(t->base + cell_off), src, r, rf, res);
	stamp_folded(t, (uint32_t)(ser_val >> 32), now_s);
	return 0;
}

/* Bytes a dead region would add to the target (new families and series). */
static uint64_t room_needed(struct target *t, const struct shmet_area *src, const struct shmet_registry *reg,
			    char *key, struct keymap *seen)
{
	struct shmet_dir_iter it;
	struct shmet_record r;
	uint64_t need = 0;
	int rc;
	shmet_dir_begin(&it, src);
	while ((rc = shmet_dir_next(&it, &r, NULL)) != 0) {
		if (rc < 0 || r.kind != SHMET_REC_SERIES || !keeps(&r.fam))
			continue;
		const struct shmet_family_view *rf = shmet_registry_check(reg, &r.fam);
		if (!rf)
			continue;
		if (!keymap_find(&t->families, rf->name, rf->name_len) && !keymap_find(seen, rf->name, rf->name_len)) {
			need += rf->rec_size;
			keymap_put(seen, rf->name, rf->name_len, 0);
		}
		size_t klen = shmet_series_key(&r, key, KEY_CAP);
		if (klen && !keymap_find(&t->series, key, klen) && !keymap_find(seen, key, klen)) {
			need += series_rec_size(&r.series) + shmet_cell_size_sk(rf->type, rf->nbuckets, rf->sk.count, 1);
			keymap_put(seen, key, klen, 0);
		}
	}
	return need;
}

/* Index the copy of the active half.  It is the only record of what dead
 * workers counted: a damaged record or a family whose shape is not the
 * registry's stops the fold (1) rather than being dropped or worked around. */
static int index_target(struct target *t, const struct shmet_registry *reg, struct shmet_fold_result *res, char *key)
{
	struct shmet_area a = {t->base, t->size, t->dir_end, t->cell_low, true};
	struct shmet_dir_iter it;
	struct shmet_record r;
	char why[SHMET_ERRBUF];
	int rc;
	shmet_dir_begin(&it, &a);
	while ((rc = shmet_dir_next(&it, &r, why)) != 0) {
		if (rc < 0) {
			res->corrupt++;
			snprintf(res->err, sizeof res->err, "retired totals damaged: %s", why);
			return 1;
		}
		if (r.kind == SHMET_REC_FAMILY) {
			if (!shmet_registry_check(reg, &r.fam) || keymap_find(&t->families, r.fam.name, r.fam.name_len)) {
				res->corrupt++;
				snprintf(res->err, sizeof res->err,
					 "retired totals damaged: family %.*s is not the registered one", (int)r.fam.name_len,
					 r.fam.name);
				return 1;
			}
			if (keymap_put(&t->families, r.fam.name, r.fam.name_len, r.fam.off) != 0)
				return -1;
		} else {
			size_t klen = record_key(&r, key);
			struct kv *f = keymap_find(&t->families, r.fam.name, r.fam.name_len);
			if (!klen || !f || f->val != r.fam.off || keymap_find(&t->series, key, klen)) {
				res->corrupt++;
				snprintf(res->err, sizeof res->err, "retired totals damaged: series at %u", r.series.off);
				return 1;
			}
			/* the offsets parse_series validated, in the private copy */
			if (keymap_put(&t->series, key, klen, (uintptr_t)((uint64_t)r.series.off << 32 | r.series.cell_off)) != 0)
				return -1;
		}
	}
	return 0;
}

int shmet_fold_dead(struct shmet_segment *seg, struct shmet_fold_result *res)
{
	struct shmet_registry reg;
	memset(&reg, 0, sizeof reg);
	int rc = shmet_registry_update(seg, &reg);
	if (rc == SHMET_OK)
		rc = shmet_fold_dead_with(seg, &reg, res);
	else
		res->folded = res->to_free = 0;
	shmet_registry_free(&reg);
	return rc;
}

int shmet_fold_dead_with(struct shmet_segment *seg, const struct shmet_registry *regp, struct shmet_fold_result *res)
{
	const uint32_t now_s = (uint32_t)time(NULL);
	res->folded = res->to_free = res->skipped = 0;
	res->flipped = res->blocked = false;
	res->conflicts = res->corrupt = res->inexact = 0;
	res->err[0] = 0;
	if (seg->map.readonly)
		return shmet__fail(res->err, SHMET_E_INVALID_ARG, "segment opened read-only");
	unsigned active = shmet_retired_active(seg), inactive = active ^ 1;
	const struct shmet_retired_header *ra = shmet_retired_header(seg, active);
	struct shmet_retired_header *ri = (struct shmet_retired_header *)shmet_retired_header(seg, inactive);
	uint32_t dead[SHMET_MAX_REGIONS];
	uint64_t dead_gen[SHMET_MAX_REGIONS];
	uint32_t ndead = 0;
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		if (info.state != SHMET_REGION_LIVE || info.alive)
			continue;
		if (__atomic_load_n(&ra->rh_folded_gen[i], __ATOMIC_RELAXED) == info.generation) {
			res->regions[res->to_free] = i; /* folded by a collector that died before freeing */
			res->generations[res->to_free++] = info.generation;
		} else {
			dead[ndead] = i;
			dead_gen[ndead++] = info.generation;
		}
	}
	/* what may be freed whatever happens below: already in the active half */
	const uint32_t safe_to_free = res->to_free;
	if (ndead == 0)
		return SHMET_OK;

	struct shmet_area src;
	struct target t;
	memset(&t, 0, sizeof t);
	char *key = NULL;
	int rc = SHMET_OK;
	if (shmet_retired_area(seg, active, &src, res->err) != SHMET_OK) {
		/* never start the totals again from zero: stop until an operator looks */
		res->corrupt++;
		res->blocked = true;
		res->to_free = 0;
		return SHMET_E_CORRUPT;
	}
	if (!(key = malloc(KEY_CAP))) {
		rc = shmet__fail(res->err, SHMET_E_SYS, "out of memory while folding");
		goto fail;
	}
	t.size = src.size;
	t.dir_end = src.dir_end;
	t.cell_low = src.cell_low;
	t.base = (unsigned char *)ri + seg->retired_hdr_size;
	ri->rh_folds = ra->rh_folds;
	ri->rh_dropped = ra->rh_dropped;
	ri->rh_removals_end = ra->rh_removals_end;
	ri->rh_expired = ra->rh_expired;
	memcpy(ri->rh_folded_gen, ra->rh_folded_gen, 8ull * seg->regions);
	memcpy(t.base + sizeof(struct shmet_region_header), src.base + sizeof(struct shmet_region_header),
	       src.dir_end - sizeof(struct shmet_region_header));
	memcpy(t.base + src.cell_low, src.base + src.cell_low, src.size - src.cell_low);
	int ix = index_target(&t, regp, res, key);
	if (ix < 0) {
		rc = shmet__fail(res->err, SHMET_E_SYS, "out of memory while folding");
		goto fail;
	}
	if (ix > 0) {
		res->blocked = true;
		res->to_free = 0;
		rc = SHMET_E_CORRUPT;
		goto fail;
	}
	for (uint32_t k = 0; k < ndead; k++) {
		uint32_t d = dead[k];
		struct shmet_area da;
		char why[SHMET_ERRBUF];
		if (shmet_region_area(seg, d, &da, why) != SHMET_OK) {
			res->corrupt++;
			if (!res->err[0])
				snprintf(res->err, sizeof res->err, "region %u: %s", d, why);
		}
		struct keymap seen = {0};
		uint64_t need = room_needed(&t, &da, regp, key, &seen);
		keymap_free(&seen);
		if (need > t.cell_low - t.dir_end) {
			res->skipped++;
			if (!res->err[0])
				snprintf(res->err, sizeof res->err,
					 "retired area full: region %u needs %llu more bytes, %llu free", d,
					 (unsigned long long)need, (unsigned long long)(t.cell_low - t.dir_end));
			continue;
		}
		struct shmet_dir_iter it;
		struct shmet_record r;
		int n;
		shmet_dir_begin(&it, &da);
		while ((n = shmet_dir_next(&it, &r, why)) != 0) {
			if (n < 0) {
				res->corrupt++;
				if (!res->err[0])
					snprintf(res->err, sizeof res->err, "region %u: %s", d, why);
				continue;
			}
			if (r.kind != SHMET_REC_SERIES || !keeps(&r.fam))
				continue;
			const struct shmet_family_view *rf = shmet_registry_check(regp, &r.fam);
			size_t klen = rf ? shmet_series_key(&r, key, KEY_CAP) : 0;
			if (!klen) {
				res->conflicts++; /* never exposed by any reader: nothing to keep */
				continue;
			}
			if (fold_series(&t, &da, &r, rf, key, klen, now_s, res) < 0) {
				/* The room was counted beforehand, so only a region changed
				 * under us gets here: give up without flipping. */
				rc = shmet__fail(res->err, SHMET_E_REGION_FULL, "retired area full while folding region %u", d);
				goto fail;
			}
		}
		const struct shmet_region_header *rg = (const struct shmet_region_header *)da.base;
		ri->rh_dropped += __atomic_load_n(&rg->rg_dropped, __ATOMIC_RELAXED);
		ri->rh_folds++;
		ri->rh_folded_gen[d] = dead_gen[k];
		res->regions[res->to_free] = d;
		res->generations[res->to_free++] = dead_gen[k];
		res->folded++;
	}
	if (res->folded) {
		struct shmet_region_header *trg = (struct shmet_region_header *)t.base;
		trg->rg_cell_low = t.cell_low;
		trg->rg_dir_end = t.dir_end;
		/* release: the whole inactive half before the flip that makes it
		 * the one readers use. */
		__atomic_store_n(&seg->map.hdr->sh_retired_active, (uint64_t)inactive, __ATOMIC_RELEASE);
		res->flipped = true;
	}
	goto out;
fail:
	/* nothing was flipped: the regions this pass added are in no half */
	if (!res->blocked)
		res->to_free = safe_to_free;
	res->folded = 0;
out:
	free(key);
	keymap_free(&t.families);
	keymap_free(&t.series);
	return rc;
}

void shmet_free_folded(struct shmet_segment *seg, const struct shmet_fold_result *res)
{
	for (uint32_t k = 0; k < res->to_free; k++) {
		uint32_t i = res->regions[k];
		if (i >= seg->regions)
			continue;
		off_t off = (off_t)(seg->regions_off + (uint64_t)i * seg->region_size);
		/* Give the pages back to tmpfs; they read as zero afterwards, which
		 * is how the next owner must find them. */
		if (fallocate(seg->map.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)seg->region_size) != 0)
			memset(seg->map.base + off, 0, seg->region_size);
		struct shmet_region_slot *slot = shmet_seg_slot(&seg->map, i);
		uint64_t expect = shmet_state_gen(res->generations[k], SHMET_REGION_LIVE);
		__atomic_store_n(&slot->rs_pid, 0, __ATOMIC_RELAXED);
		__atomic_store_n(&slot->rs_flags, 0u, __ATOMIC_RELAXED); /* the next owner is nobody's push region */
		/* release: the zeroed pages before the FREE state a claimer acquires. */
		__atomic_compare_exchange_n(&slot->rs_state_gen, &expect,
					    shmet_state_gen(res->generations[k], SHMET_REGION_FREE), 0, __ATOMIC_RELEASE,
					    __ATOMIC_RELAXED);
	}
}

/* The fold's own room arithmetic, read-only: what shmet_fold_dead_with would
 * skip now for want of room, for tools that report it (shmetrics-dump).  The
 * active half is indexed where it lies (only read), and each dead region
 * that fits adds its new families and series to the index, as a fold would. */
int shmet_fold_room(const struct shmet_segment *seg, const struct shmet_registry *reg, struct shmet_fold_room *out)
{
	memset(out, 0, sizeof *out);
	unsigned active = shmet_retired_active(seg);
	const struct shmet_retired_header *ra = shmet_retired_header(seg, active);
	struct shmet_area src;
	if (shmet_retired_area(seg, active, &src, NULL) != SHMET_OK)
		return SHMET_E_CORRUPT;
	struct target t;
	memset(&t, 0, sizeof t);
	t.base = (unsigned char *)(uintptr_t)src.base; /* index_target only reads it */
	t.size = src.size;
	t.dir_end = src.dir_end;
	t.cell_low = src.cell_low;
	struct shmet_fold_result scratch;
	memset(&scratch, 0, sizeof scratch);
	int rc = SHMET_OK;
	char *key = malloc(KEY_CAP);
	if (!key) {
		rc = SHMET_E_SYS;
		goto out;
	}
	int ix = index_target(&t, reg, &scratch, key);
	if (ix != 0) {
		rc = ix < 0 ? SHMET_E_SYS : SHMET_E_CORRUPT;
		goto out;
	}
	out->free = t.cell_low - t.dir_end;
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_info info;
		struct shmet_area da;
		shmet_region_info(seg, i, &info);
		if (info.state != SHMET_REGION_LIVE || info.alive ||
		    __atomic_load_n(&ra->rh_folded_gen[i], __ATOMIC_RELAXED) == info.generation ||
		    shmet_region_area(seg, i, &da, NULL) != SHMET_OK)
			continue;
		struct keymap seen = {0};
		uint64_t need = room_needed(&t, &da, reg, key, &seen);
		if (need > out->free) {
			if (out->skipped++ == 0) {
				out->first = i;
				out->first_need = need;
			}
		} else {
			out->free -= need;
			/* what the fold would add: series keys end in 0xff, names never do */
			for (size_t k = 0; seen.slots && k <= seen.mask && rc == SHMET_OK; k++) {
				const struct kv *kv = &seen.slots[k];
				if (!kv->key)
					continue;
				bool series = kv->len && kv->key[kv->len - 1] == '\xff';
				if (keymap_put(series ? &t.series : &t.families, kv->key, kv->len, 0) != 0)
					rc = SHMET_E_SYS;
			}
		}
		keymap_free(&seen);
		if (rc != SHMET_OK)
			break;
	}
out:
	free(key);
	keymap_free(&t.families);
	keymap_free(&t.series);
	return rc;
}

/* ---- the retired totals rewritten: REMOVAL and RETENTION ---- */

/* What a removal's baseline holds while it is summed: counters,
 * histograms and summaries in retired-layout cells (add_cells), gauges as
 * the aggregate a reader exposes. */
struct base {
	const struct shmet_family_view *rf;
	uint64_t *cells;
	struct shmet_agg gauge;
};

/* Does a pending removal name this series key (name 0xff values 0xff)? */
static bool removed(const struct keymap *keys, const struct keymap *families, const char *key, size_t klen,
		    size_t name_len)
{
	return keymap_find(keys, key, klen) || keymap_find(families, key, name_len + 1);
}

static void bases_free(struct keymap *m)
{
	for (size_t k = 0; m->slots && k <= m->mask; k++)
		if (m->slots[k].key) {
			struct base *b = (struct base *)m->slots[k].val;
			free(b->cells);
			free(b);
		}
	keymap_free(m);
}

int shmet_retired_rewrite(struct shmet_segment *seg, const struct shmet_registry *reg, uint32_t ttl_s,
			  struct shmet_rewrite_result *res)
{
	memset(res, 0, sizeof *res);
	if (seg->map.readonly)
		return shmet__fail(res->err, SHMET_E_INVALID_ARG, "segment opened read-only");
	const uint32_t now_s = (uint32_t)time(NULL);
	unsigned active = shmet_retired_active(seg), inactive = active ^ 1;
	const struct shmet_retired_header *ra = shmet_retired_header(seg, active);
	struct shmet_retired_header *ri = (struct shmet_retired_header *)shmet_retired_header(seg, inactive);
	uint64_t applied = __atomic_load_n(&ra->rh_removals_end, __ATOMIC_RELAXED);
	uint32_t first = 0;
	while (first < reg->nrm && reg->rm[first].end <= applied)
		first++;
	struct shmet_area src;
	if (shmet_retired_area(seg, active, &src, res->err) != SHMET_OK)
		return SHMET_E_CORRUPT; /* the fold reports it and stops; nothing to rewrite from */
	struct shmet_dir_iter it;
	struct shmet_record r;
	int rc;
	/* series that retention may drop: anything old enough? */
	uint64_t candidates = 0;
	if (ttl_s) {
		shmet_dir_begin(&it, &src);
		while ((rc = shmet_dir_next(&it, &r, NULL)) != 0)
			if (rc > 0 && r.kind == SHMET_REC_SERIES && !(r.series.flags & SHMET_SER_BASELINE) &&
			    r.series.folded_s && now_s - r.series.folded_s >= ttl_s && now_s >= r.series.folded_s)
				candidates++;
	}
	if (first == reg->nrm && candidates == 0)
		return SHMET_OK;

	struct keymap rm_keys = {0}, rm_fams = {0}, held = {0}, bases = {0};
	struct target t;
	memset(&t, 0, sizeof t);
	struct shmet_fold_result scratch;
	memset(&scratch, 0, sizeof scratch);
	char *key = malloc(KEY_CAP);
	struct shmet_record *rp = malloc(sizeof *rp);
	uint32_t rec_off;
	rc = SHMET_OK;
	if (!key || !rp)
		goto oom;
	for (uint32_t i = first; i < reg->nrm; i++) {
		const struct shmet_removal *m = &reg->rm[i];
		struct keymap *into = m->whole ? &rm_fams : &rm_keys;
		if (!keymap_find(into, m->key, m->key_len) && keymap_put(into, m->key, m->key_len, 0) != 0)
			goto oom;
		res->removals++;
	}
	/* Every region that counts now: which series it holds (retention keeps
	 * those), and the baselines of the removed ones (the same walk and
	 * rules as every reader: shmet_scan, shmet_series_family). */
	struct shmet_scan sc;
	struct shmet_scan_area sa;
	shmet_scan_begin(&sc, seg);
	while (shmet_scan_next(&sc, &sa)) {
		if (sa.region < 0 || !sa.counts || sa.rc != SHMET_OK)
			continue;
		shmet_dir_begin(&it, &sa.area);
		while ((rc = shmet_dir_next(&it, rp, NULL)) != 0) {
			if (rc < 0 || rp->kind != SHMET_REC_SERIES)
				continue;
			bool counts;
			const struct shmet_family_view *rf = shmet_series_family(reg, rp, sa.live, &counts);
			size_t klen = rf && counts ? shmet_series_key(rp, key, KEY_CAP) : 0;
			if (!klen)
				continue;
			if (candidates && !keymap_find(&held, key, klen) && keymap_put(&held, key, klen, 0) != 0)
				goto oom;
			if (!removed(&rm_keys, &rm_fams, key, klen, rf->name_len))
				continue;
			struct kv *kv = keymap_find(&bases, key, klen);
			struct base *b = kv ? (struct base *)kv->val : NULL;
			if (!b) {
				if (!(b = calloc(1, sizeof *b)))
					goto oom;
				b->rf = rf;
				shmet_agg_init(&b->gauge, 0);
				uint32_t cs = shmet_cell_size_sk(rf->type, rf->nbuckets, rf->sk.count, 1);
				if (!(b->cells = calloc(1, cs)) || keymap_put(&bases, key, klen, (uintptr_t)b) != 0) {
					free(b->cells);
					free(b);
					goto oom;
				}
			}
			if (rf->type == SHMET_GAUGE) {
				struct shmet_values v;
				shmet_read_cells(&sa.area, &rp->fam, &rp->series, &v);
				shmet_agg_add(&b->gauge, rf->type, rf->mode, 0, &v, sa.live);
			} else {
				add_cells(b->cells, &sa.area, rp, rf, &scratch);
			}
		}
	}
	/* the active half, checked as a fold checks it (read only) */
	t.base = (unsigned char *)(uintptr_t)src.base;
	t.size = src.size;
	t.dir_end = src.dir_end;
	t.cell_low = src.cell_low;
	int ix = index_target(&t, reg, &scratch, key);
	keymap_free(&t.families);
	keymap_free(&t.series);
	if (ix != 0) {
		rc = ix < 0 ? SHMET_E_SYS : SHMET_E_CORRUPT;
		snprintf(res->err, sizeof res->err, "%s", scratch.err[0] ? scratch.err : "out of memory");
		goto out;
	}
	/* the new half: what stays, in the order it was, then the baselines */
	memset(&t, 0, sizeof t);
	t.base = (unsigned char *)ri + seg->retired_hdr_size;
	t.size = src.size;
	t.dir_end = sizeof(struct shmet_region_header);
	t.cell_low = t.size;
	shmet_dir_begin(&it, &src);
	while ((rc = shmet_dir_next(&it, rp, NULL)) != 0) {
		if (rc < 0)
			continue; /* index_target found none: only a worker racing us made one */
		if (rp->kind == SHMET_REC_FAMILY)
			continue; /* added with its first series that stays */
		const struct shmet_family_view *rf = shmet_registry_check(reg, &rp->fam);
		size_t klen = rf ? shmet_series_key(rp, key, KEY_CAP) : 0;
		if (!klen)
			continue;
		bool baseline = (rp->series.flags & SHMET_SER_BASELINE) != 0;
		if (removed(&rm_keys, &rm_fams, key, klen, rf->name_len)) {
			res->dropped_removed += !baseline;
			continue; /* its totals and an older baseline give way to the new one */
		}
		if (!baseline && candidates && rp->series.folded_s && now_s >= rp->series.folded_s &&
		    now_s - rp->series.folded_s >= ttl_s && !keymap_find(&held, key, klen)) {
			res->expired++;
			continue;
		}
		uint32_t fam_off = target_family(&t, rf);
		uint32_t cs = rp->series.cell_size;
		uint32_t cell_off = fam_off ? append_series(&t, rp->series.values, rp->series.value_lens,
							   rp->series.nvalues, fam_off, (uint16_t)rp->series.flags, cs,
							   rp->series.folded_s, &rec_off)
					    : 0;
		if (!cell_off) {
			rc = shmet__fail(res->err, SHMET_E_REGION_FULL, "retired area full while rewriting it");
			goto out;
		}
		memcpy(t.base + cell_off, src.base + rp->series.cell_off, cs);
	}
	rc = SHMET_OK;
	for (size_t k = 0; bases.slots && k <= bases.mask; k++) {
		if (!bases.slots[k].key)
			continue;
		struct base *b = (struct base *)bases.slots[k].val;
		const struct shmet_family_view *rf = b->rf;
		uint32_t cs = shmet_cell_size_sk(rf->type, rf->nbuckets, rf->sk.count, 1);
		if (rf->type == SHMET_GAUGE) {
			b->cells[0] = shmet__bits(b->gauge.value);
			b->cells[1] = rf->mode == SHMET_GAUGE_MOSTRECENT ? b->gauge.stamp_ns : (uint64_t)b->gauge.has;
		}
		/* the label values, from the key: name 0xff value 0xff ... */
		const char *values[SHMET_MAX_LABELS];
		uint32_t lens[SHMET_MAX_LABELS], n = 0;
		const char *p = bases.slots[k].key + rf->name_len + 1, *end = bases.slots[k].key + bases.slots[k].len;
		while (p < end && n < SHMET_MAX_LABELS) {
			const char *z = memchr(p, '\xff', (size_t)(end - p));
			if (!z)
				break;
			values[n] = p;
			lens[n++] = (uint32_t)(z - p);
			p = z + 1;
		}
		uint32_t fam_off = target_family(&t, rf);
		uint32_t cell_off =
			fam_off ? append_series(&t, values, lens, n, fam_off, SHMET_SER_BASELINE, cs, now_s, &rec_off) : 0;
		if (!cell_off) {
			rc = shmet__fail(res->err, SHMET_E_REGION_FULL, "retired area full: no room for removal baselines");
			goto out;
		}
		memcpy(t.base + cell_off, b->cells, cs);
		res->baselines++;
	}
	ri->rh_folds = ra->rh_folds;
	ri->rh_dropped = ra->rh_dropped;
	ri->rh_removals_end = first < reg->nrm ? reg->rm[reg->nrm - 1].end : applied;
	ri->rh_expired = ra->rh_expired + res->expired;
	memcpy(ri->rh_folded_gen, ra->rh_folded_gen, 8ull * seg->regions);
	struct shmet_region_header *trg = (struct shmet_region_header *)t.base;
	memset(trg, 0, sizeof *trg);
	trg->rg_cell_low = t.cell_low;
	trg->rg_dir_end = t.dir_end;
	res->inexact = scratch.inexact;
	/* release: the whole inactive half before the flip that makes it the
	 * one readers use (as a fold's) */
	__atomic_store_n(&seg->map.hdr->sh_retired_active, (uint64_t)inactive, __ATOMIC_RELEASE);
	res->flipped = true;
	goto out;
oom:
	rc = shmet__fail(res->err, SHMET_E_SYS, "out of memory while rewriting the retired totals");
out:
	free(key);
	free(rp);
	keymap_free(&t.families);
	keymap_free(&t.series);
	keymap_free(&rm_keys);
	keymap_free(&rm_fams);
	keymap_free(&held);
	bases_free(&bases);
	return rc;
}
