/* The view: an immutable, sorted picture of the segment's families and
 * series, with pointers to every process's cells, built by the updater and
 * published under RCU.  Values are not in it: a scrape reads the cells. */
#include "collector.h"
#include "keymap.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Bump allocator: one view's memory, freed at once. */
struct arena {
	struct arena *next;
	size_t used, cap;
	_Alignas(16) unsigned char data[];
};

static void *arena_alloc(struct arena **a, size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (!*a || (*a)->cap - (*a)->used < n) {
		size_t cap = n > (1 << 20) ? n : (1 << 20);
		struct arena *b = malloc(sizeof *b + cap);
		if (!b)
			return NULL;
		b->next = *a;
		b->used = 0;
		b->cap = cap;
		*a = b;
	}
	void *p = (*a)->data + (*a)->used;
	(*a)->used += n;
	return p;
}

static char *arena_strn(struct arena **a, const char *s, size_t n)
{
	char *d = arena_alloc(a, n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}

static void arena_free(struct arena *a)
{
	while (a) {
		struct arena *n = a->next;
		free(a);
		a = n;
	}
}

/* ---- builder ---- */

struct bseries {
	char **values;
	struct view_ref *refs;
	uint32_t nrefs, cap;
};

struct bfamily {
	struct view_family out;
	struct keymap index; /* series key -> bseries */
	struct bseries *series;
	uint32_t nseries, cap;
};

struct builder {
	struct collector *c;
	struct view *v;
	struct keymap fam_index;
	struct bfamily *fams;
	uint32_t nfams, cap;
	char *key;
	shmet_buf tmp;
	bool oom;
};

/* Everything a builder holds but its view. */
static void builder_free(struct builder *b)
{
	for (uint32_t i = 0; i < b->nfams; i++) {
		for (uint32_t k = 0; k < b->fams[i].nseries; k++)
			free(b->fams[i].series[k].refs);
		free(b->fams[i].series);
		keymap_free(&b->fams[i].index);
	}
	free(b->fams);
	keymap_free(&b->fam_index);
	free(b->key);
	shmet_buf_free(&b->tmp);
}

static struct bfamily *family_for(struct builder *b, const struct shmet_family_view *r)
{
	struct kv *kv = keymap_find(&b->fam_index, r->name, r->name_len);
	if (kv)
		return &b->fams[kv->val];
	if (b->nfams == b->cap) {
		uint32_t cap = b->cap ? b->cap * 2 : 64;
		struct bfamily *n = realloc(b->fams, cap * sizeof *n);
		if (!n)
			return NULL;
		b->fams = n;
		b->cap = cap;
	}
	struct arena **a = &b->v->arena;
	struct bfamily *f = &b->fams[b->nfams];
	memset(f, 0, sizeof *f);
	struct view_family *o = &f->out;
	bool per_worker = r->type == SHMET_GAUGE && r->mode == SHMET_GAUGE_PER_WORKER;
	o->name = arena_strn(a, r->name, r->name_len);
	o->help = arena_strn(a, r->help, r->help_len);
	o->type = r->type;
	o->mode = r->mode;
	o->nlabels = r->nlabels + per_worker;
	const char **names = arena_alloc(a, (o->nlabels + 1) * sizeof *names);
	o->nbuckets = r->nbuckets;
	double *bounds = arena_alloc(a, (r->nbuckets + 1) * sizeof *bounds);
	const char **btext = arena_alloc(a, (r->nbuckets + 1) * sizeof *btext);
	if (!o->name || !o->help || !names || !bounds || !btext)
		return NULL;
	for (uint32_t i = 0; i < r->nlabels; i++)
		if (!(names[i] = arena_strn(a, r->label_names[i], r->label_lens[i])))
			return NULL;
	if (per_worker)
		names[r->nlabels] = "worker";
	for (uint32_t i = 0; i <= r->nbuckets; i++) {
		char t[SHMET_FMT_DOUBLE_MAX];
		bounds[i] = i < r->nbuckets ? shmet_bound(r, i) : INFINITY;
		size_t n = shmet_fmt_bound(t, bounds[i]);
		if (!(btext[i] = arena_strn(a, t, n)))
			return NULL;
	}
	o->label_names = names;
	o->bounds = bounds;
	o->bound_text = btext;
	o->exemplars = r->exemplars;
	if (r->sk.count) {
		struct shmet_sketch *sk = arena_alloc(a, sizeof *sk);
		if (!sk)
			return NULL;
		*sk = r->sk;
		o->sketch = sk;
	}
	if (keymap_put(&b->fam_index, r->name, r->name_len, b->nfams) != 0)
		return NULL;
	b->nfams++;
	return f;
}

static struct bseries *series_for(struct builder *b, struct bfamily *f, const struct shmet_record *r, int worker)
{
	size_t klen = shmet_series_key_worker(r, worker, b->key, SHMET_SERIES_KEY_MAX);
	if (!klen)
		return NULL;
	struct kv *kv = keymap_find(&f->index, b->key, klen);
	if (kv)
		return &f->series[kv->val];
	if (f->nseries == f->cap) {
		uint32_t cap = f->cap ? f->cap * 2 : 8;
		struct bseries *n = realloc(f->series, cap * sizeof *n);
		if (!n)
			return NULL;
		f->series = n;
		f->cap = cap;
	}
	struct arena **a = &b->v->arena;
	struct bseries *s = &f->series[f->nseries];
	memset(s, 0, sizeof *s);
	s->values = arena_alloc(a, (f->out.nlabels + 1) * sizeof(char *));
	if (!s->values)
		return NULL;
	for (uint32_t i = 0; i < r->series.nvalues; i++)
		if (!(s->values[i] = arena_strn(a, r->series.values[i], r->series.value_lens[i])))
			return NULL;
	if (worker >= 0) {
		char w[16];
		int n = snprintf(w, sizeof w, "%d", worker);
		if (!(s->values[r->series.nvalues] = arena_strn(a, w, (size_t)n)))
			return NULL;
	}
	if (keymap_put(&f->index, b->key, klen, f->nseries) != 0)
		return NULL;
	f->nseries++;
	return s;
}

/* Count and log a problem the first time this (kind, region, generation,
 * offset) is met: the view is rebuilt often, the bad record stays. */
static bool first_sighting(struct collector *c, char kind, int region, uint64_t gen, uint64_t off)
{
	struct {
		char kind;
		int region;
		uint64_t gen, off;
	} k;
	memset(&k, 0, sizeof k);
	k.kind = kind, k.region = region, k.gen = gen, k.off = off;
	if (keymap_find(&c->problems, (const char *)&k, sizeof k))
		return false;
	if (c->problems.used > 100000)
		keymap_free(&c->problems); /* bounded memory; at worst a problem is counted again */
	keymap_put(&c->problems, (const char *)&k, sizeof k, 0);
	return true;
}

static void add_area(struct builder *b, const struct shmet_area *area, int region, uint64_t gen, bool live)
{
	struct shmet_dir_iter it;
	struct shmet_record r;
	char why[SHMET_ERRBUF];
	int rc;
	shmet_dir_begin(&it, area);
	uint64_t at = it.pos;
	while ((rc = shmet_dir_next(&it, &r, why)) != 0) {
		uint64_t rec_at = at;
		at = it.pos;
		if (rc < 0) {
			if (first_sighting(b->c, 'c', region, gen, rec_at) &&
			    __atomic_fetch_add(&b->c->corrupt_records, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("skipping corrupt record at %llu in %s %d: %s", (unsigned long long)rec_at,
					      region < 0 ? "retired totals" : "region", region, why);
			continue;
		}
		if (r.kind != SHMET_REC_SERIES)
			continue;
		/* the registry decides the shape; a record that disagrees was
		 * written past the registry (a hostile or damaged writer) */
		bool counts;
		const struct shmet_family_view *rf = shmet_series_family(&b->c->registry, &r, live, &counts);
		if (!rf) {
			if (first_sighting(b->c, 'f', region, gen, r.fam.off) &&
			    __atomic_fetch_add(&b->c->conflicts, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("region %d: family %.*s is not registered with this shape; its series are skipped",
					      region, (int)r.fam.name_len, r.fam.name);
			continue;
		}
		struct bfamily *f = family_for(b, rf);
		if (!f) {
			b->oom = true;
			return;
		}
		if (!counts)
			continue;
		bool per_worker = rf->type == SHMET_GAUGE && rf->mode == SHMET_GAUGE_PER_WORKER;
		struct bseries *s = series_for(b, f, &r, per_worker ? region : -1);
		if (!s) {
			b->oom = true;
			return;
		}
		if (s->nrefs == s->cap) {
			uint32_t cap = s->cap ? s->cap * 2 : 4;
			struct view_ref *n = realloc(s->refs, cap * sizeof *n);
			if (!n) {
				b->oom = true;
				return;
			}
			s->refs = n;
			s->cap = cap;
		}
		s->refs[s->nrefs].cells = (const uint64_t *)(const void *)(area->base + r.series.cell_off);
		s->refs[s->nrefs].retired = area->retired;
		s->refs[s->nrefs++].live = live;
	}
}

static int fam_cmp(const void *a, const void *b)
{
	return strcmp(((const struct bfamily *)a)->out.name, ((const struct bfamily *)b)->out.name);
}

static __thread uint32_t sort_nlabels;
static int ser_cmp(const void *a, const void *b)
{
	const struct bseries *x = a, *y = b;
	for (uint32_t i = 0; i < sort_nlabels; i++) {
		int c = strcmp(x->values[i], y->values[i]);
		if (c)
			return c;
	}
	return 0;
}

static bool finish_family(struct builder *b, struct bfamily *bf, shmet_buf *tmp)
{
	struct view_family *o = &bf->out;
	struct arena **a = &b->v->arena;
	sort_nlabels = o->nlabels;
	if (bf->nseries) /* qsort's array may not be NULL, even when empty */
		qsort(bf->series, bf->nseries, sizeof *bf->series, ser_cmp);
	o->nseries = bf->nseries;
	o->series = arena_alloc(a, (bf->nseries + 1) * sizeof *o->series);
	if (!o->series)
		return false;
	for (uint32_t i = 0; i < bf->nseries; i++) {
		struct bseries *s = &bf->series[i];
		struct view_series *vs = &o->series[i];
		shmet_buf_reset(tmp);
		for (uint32_t k = 0; k < o->nlabels; k++) {
			if (!s->values[k][0])
				continue; /* an empty value is no label (Prometheus data model) */
			if (tmp->len)
				shmet_buf_putc(tmp, ',');
			shmet_buf_puts(tmp, o->label_names[k]);
			shmet_buf_append(tmp, "=\"", 2);
			shmet_escape_label_value(tmp, s->values[k], strlen(s->values[k]));
			shmet_buf_putc(tmp, '"');
		}
		if (tmp->oom)
			return false;
		vs->labels = arena_strn(a, tmp->data ? tmp->data : "", tmp->len);
		vs->labels_len = (uint32_t)tmp->len;
		vs->values = (const char *const *)s->values;
		vs->nrefs = s->nrefs;
		vs->refs = arena_alloc(a, (s->nrefs + 1) * sizeof *vs->refs);
		if (!vs->labels || !vs->refs)
			return false;
		memcpy(vs->refs, s->refs, s->nrefs * sizeof *vs->refs);
	}
	b->v->stats.series += bf->nseries;
	return true;
}

struct view *view_build(struct collector *c)
{
	struct shmet_segment *seg = &c->seg;
	/* On the heap and known to the collector: a SIGBUS in the middle of a
	 * build leaves through siglongjmp, and view_build_abandon frees it. */
	struct builder *b = calloc(1, sizeof *b);
	if (!b) {
		collector_error("out of memory while building the view; keeping the previous one");
		return NULL;
	}
	c->building = b;
	b->c = c;
	b->v = calloc(1, sizeof *b->v);
	b->key = malloc(SHMET_SERIES_KEY_MAX);
	shmet_buf_init(&b->tmp);
	if (!b->v || !b->key)
		goto fail;
	struct view_stats *st = &b->v->stats;
	if (shmet_registry_update(seg, &c->registry) != SHMET_OK)
		goto fail;
	if (c->registry.corrupt > c->registry_corrupt_logged) {
		collector_warn("family registry: %llu damaged or clashing records ignored (%s)",
			      (unsigned long long)c->registry.corrupt, c->registry.err);
		__atomic_fetch_add(&c->corrupt_records, c->registry.corrupt - c->registry_corrupt_logged, __ATOMIC_RELAXED);
		c->registry_corrupt_logged = c->registry.corrupt;
	}
	struct shmet_scan sc;
	struct shmet_scan_area sa;
	shmet_scan_begin(&sc, seg);
	const struct shmet_retired_header *rh = sc.rh;
	uint64_t folds = __atomic_load_n(&rh->rh_folds, __ATOMIC_RELAXED);
	st->dropped = __atomic_load_n(&rh->rh_dropped, __ATOMIC_RELAXED) +
		      __atomic_load_n(&seg->map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	st->folds = folds;
	st->bytes_total = seg->map.size;
	st->bytes_used = seg->regions_off + 2 * seg->retired_half_size;
	while (!b->oom && shmet_scan_next(&sc, &sa)) {
		const struct shmet_region_info *info = &sa.info;
		if (sa.region < 0) { /* the active retired half */
			if (sa.rc != SHMET_OK)
				collector_warn("retired totals unreadable: %s", sa.err);
			add_area(b, &sa.area, -1, folds << 1 | sc.active, false);
			continue;
		}
		if (info->state != SHMET_REGION_LIVE) {
			st->regions_free++;
			continue;
		}
		if (info->flags & SHMET_SLOT_HISTORY) {
			st->regions_history++; /* the collector's own: no worker, no series */
			continue;
		}
		if (info->alive)
			st->regions_live++;
		else
			st->regions_dead++;
		if (!sa.counts)
			continue; /* already in the retired totals */
		if (sa.rc != SHMET_OK) {
			if (first_sighting(c, 'h', sa.region, info->generation, 0) &&
			    __atomic_fetch_add(&c->corrupt_records, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("region %d: %s", sa.region, sa.err);
			continue;
		}
		st->bytes_used += (sa.area.dir_end - sizeof(struct shmet_region_header)) + (sa.area.size - sa.area.cell_low);
		st->dropped += info->dropped;
		add_area(b, &sa.area, sa.region, info->generation, sa.live);
	}
	if (b->oom)
		goto fail;
	if (b->nfams)
		qsort(b->fams, b->nfams, sizeof *b->fams, fam_cmp);
	b->v->families = arena_alloc(&b->v->arena, (b->nfams + 1) * sizeof *b->v->families);
	if (!b->v->families)
		goto fail;
	for (uint32_t i = 0; i < b->nfams; i++) {
		if (!finish_family(b, &b->fams[i], &b->tmp))
			goto fail;
		b->v->families[i] = b->fams[i].out;
	}
	b->v->nfamilies = b->nfams;
	b->v->built_ns = shmet__now_ns(CLOCK_REALTIME);
	goto out;
fail:
	collector_error("out of memory while building the view; keeping the previous one");
	view_free(b->v);
	b->v = NULL;
out:;
	struct view *v = b->v;
	builder_free(b);
	c->building = NULL;
	free(b);
	return v;
}

void view_build_abandon(struct collector *c)
{
	struct builder *b = c->building;
	if (!b)
		return;
	/* Left at a segment read, and no segment is read in the middle of an
	 * update of the builder: every field is whole. */
	view_free(b->v);
	builder_free(b);
	free(b);
	c->building = NULL;
}

void view_free(struct view *v)
{
	if (!v)
		return;
	arena_free(v->arena);
	free(v);
}

bool view_series_agg(const struct view_family *f, const struct view_series *s, struct shmet_agg *acc)
{
	shmet_agg_init(acc, f->type == SHMET_HISTOGRAM ? f->nbuckets : 0);
	bool whole = true;
	for (uint32_t i = 0; i < s->nrefs; i++) {
		const uint64_t *c = s->refs[i].cells;
		struct shmet_values v;
		uint32_t cell_size = s->refs[i].retired ? shmet_retired_cell_size(f->type, f->nbuckets)
						     : shmet_cell_size(f->type, f->nbuckets);
		if (!collector_readable(c, cell_size)) {
			whole = false; /* past the end of a truncated segment: never touched */
			continue;
		}
		shmet_read_cell_values(c, f->type, f->nbuckets, s->refs[i].retired, &v);
		shmet_agg_add(acc, f->type, f->mode, f->nbuckets, &v, s->refs[i].live);
	}
	shmet_agg_finish(acc, f->type);
	return whole;
}
