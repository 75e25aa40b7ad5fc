/* The view: an immutable, sorted picture of the segment's families and
 * series, with pointers to every process's cells, published under RCU.
 * Values are not in it: a scrape reads the cells.
 *
 * The index behind it grows with the segment instead of being rebuilt.
 * Directories are append-only, so for each region the index remembers how
 * far it has read (and for which generation), and a scan reads only the
 * records appended since:
 *
 *   region claimed anew     (its generation changed, or it went FREE)
 *                           its refs leave every series; reading restarts at
 *                           the first record of the new directory
 *   records appended        parsed (copied, then validated, by shmet_dir_next)
 *                           once; a series met for the first time gets its
 *                           label text escaped once, for every later view
 *   owner died              its refs turn dead (per-worker gauges: removed)
 *   folded                  its refs leave; the retired half that holds its
 *                           values now is indexed again (a fold copies the
 *                           half, so its cells moved)
 *
 * A record already read is never read again: bytes a worker changes behind
 * it later cannot change what the index took from it.
 *
 * Publishing copies only what changed.  Each family keeps the series array
 * its last view showed and each series the refs array; a new view gets a new
 * array for a family only when a series of it came, went or changed its
 * refs, and reuses the rest.  What a new view no longer points to goes on a
 * garbage list, freed by the updater after the grace period that follows the
 * publication (no reader can still hold the view that pointed to it).
 *
 * Who touches what: the index (struct vindex and everything it owns) only
 * the updater thread; the published arrays and strings nobody writes after
 * publication (readers only read them, under rcu_read_lock).
 */
#include "collector.h"
#include "keymap.h"
#include "selfmetrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- the index ---- */

struct iseries {
	const char *const *values;   /* nlabels values (the last: worker for per-worker gauges) */
	const char *labels;          /* pre-escaped `a="x",b="y"` (empty values left out) */
	uint32_t labels_len;
	uint32_t line_len;
	const char *line;            /* `name{labels} `, made once: a render copies it whole */
	uint32_t nrefs, cap;         /* working refs, changed by scans */
	struct view_ref *refs;
	struct view_ref *pub;        /* the refs the last published view shows (immutable) */
	uint32_t npub;
	bool dirty;                  /* refs differ from pub: listed in its family's touched */
	bool fresh;                  /* listed in its family's fresh, not yet in sorted */
	bool pub_packed;             /* pub lies in its family's packed block, not a block of its own */
	struct ifamily *fam;
	/* one malloc: this struct, the value pointers, the strings */
};

struct ifamily {
	struct view_family out;      /* strings made once; nseries/series are the published ones */
	struct keymap index;         /* series key -> struct iseries * */
	struct iseries **sorted;     /* by label values; merged at publication */
	uint32_t nsorted, cap;
	struct iseries **fresh;      /* met since the last publication */
	uint32_t nfresh, fresh_cap;
	struct iseries **touched;    /* series whose refs changed since the last publication */
	uint32_t ntouched, touched_cap;
	bool dirty;                  /* a series came or changed its refs */
	void *block;                 /* out's strings and arrays */
	void *packed;                /* refs and line text of every shown series, in their order */
	uint32_t npatched;           /* entries patched in since the last packing */
	struct shmet_sketch sketch;  /* out.sketch points here when the family has one */
};

struct iregion {
	uint64_t gen;                /* 0: nothing read */
	struct view_stamp seen;      /* the slot word, directory end and liveness read last */
	uint64_t pos;                /* directory bytes read */
	bool alive, folded;
	struct iseries **held;       /* series with a ref of this region (repeats possible) */
	uint32_t nheld, cap;
};

struct vindex {
	struct collector *c;
	struct keymap fam_index;     /* family name -> struct ifamily * */
	struct ifamily **fams;       /* sorted by name */
	uint32_t nfams, cap;
	uint32_t nregions;
	struct iregion *regions;
	struct iregion retired;      /* the active retired half */
	unsigned retired_half;
	uint64_t retired_folds;
	bool retired_read;
	bool changed;                /* something a view shows changed since the last publication */
	void **garbage;              /* unreachable from the next view: free after its grace period */
	uint32_t ngarbage, garbage_cap;
	char *key;
	shmet_buf tmp;
	bool oom;
	struct view_stats stats;
};

static bool garbage(struct vindex *x, void *p)
{
	if (!p)
		return true;
	if (x->ngarbage == x->garbage_cap) {
		uint32_t cap = x->garbage_cap ? 2 * x->garbage_cap : 256;
		void **n = realloc(x->garbage, cap * sizeof *n);
		if (!n) {
			x->oom = true;
			return false;
		}
		x->garbage = n;
		x->garbage_cap = cap;
	}
	x->garbage[x->ngarbage++] = p;
	return true;
}

/* A published array's allocation, rounded up to eight steps per power of
 * two: one that grows by a series keeps its size class, so glibc serves it
 * from the heap again instead of mapping (and faulting in) fresh pages for
 * each publication once it passed the mmap threshold. */
static void *alloc_rounded(size_t n)
{
	size_t step = 64;
	while (step * 16 <= n)
		step *= 2;
	return malloc((n + step - 1) / step * step);
}

/* Room for n more garbage entries, so that the garbage() calls after it
 * cannot fail half way through a change. */
static bool garbage_reserve(struct vindex *x, uint32_t n)
{
	if (x->garbage_cap - x->ngarbage >= n)
		return true;
	uint32_t cap = x->garbage_cap ? x->garbage_cap : 256;
	while (cap - x->ngarbage < n)
		cap *= 2;
	void **g = realloc(x->garbage, cap * sizeof *g);
	if (!g)
		return false;
	x->garbage = g;
	x->garbage_cap = cap;
	return true;
}

static struct vindex *vindex_new(struct collector *c)
{
	struct vindex *x = calloc(1, sizeof *x);
	if (!x)
		return NULL;
	x->c = c;
	x->nregions = c->seg.regions;
	x->regions = calloc(x->nregions + 1, sizeof *x->regions);
	x->key = malloc(SHMET_SERIES_KEY_MAX);
	shmet_buf_init(&x->tmp);
	if (!x->regions || !x->key) {
		free(x->regions);
		free(x->key);
		free(x);
		return NULL;
	}
	return x;
}

static void vindex_collect(struct vindex *x)
{
	for (uint32_t i = 0; i < x->ngarbage; i++)
		free(x->garbage[i]);
	x->ngarbage = 0;
}

static void vindex_free(struct vindex *x)
{
	if (!x)
		return;
	vindex_collect(x);
	for (uint32_t i = 0; i < x->nfams; i++) {
		struct ifamily *f = x->fams[i];
		for (uint32_t k = 0; k < f->nsorted; k++) {
			free(f->sorted[k]->refs);
			if (!f->sorted[k]->pub_packed)
				free(f->sorted[k]->pub);
			free(f->sorted[k]);
		}
		for (uint32_t k = 0; k < f->nfresh; k++) {
			free(f->fresh[k]->refs);
			if (!f->fresh[k]->pub_packed)
				free(f->fresh[k]->pub);
			free(f->fresh[k]);
		}
		free(f->sorted);
		free(f->fresh);
		free(f->touched);
		free(f->packed);
		free(f->out.series);
		keymap_free(&f->index);
		free(f->block);
		free(f);
	}
	free(x->fams);
	keymap_free(&x->fam_index);
	for (uint32_t i = 0; i <= x->nregions; i++)
		free(x->regions[i].held);
	free(x->retired.held);
	free(x->regions);
	free(x->garbage);
	free(x->key);
	shmet_buf_free(&x->tmp);
	free(x);
}

/* A family as the view shows it, made once from the registry's copy: its
 * strings live in one block with the struct. */
static struct ifamily *family_for(struct vindex *x, const struct shmet_family_view *r)
{
	struct kv *kv = keymap_find(&x->fam_index, r->name, r->name_len);
	if (kv)
		return (struct ifamily *)kv->val;
	if (x->nfams == x->cap) {
		uint32_t cap = x->cap ? x->cap * 2 : 64;
		struct ifamily **n = realloc(x->fams, cap * sizeof *n);
		if (!n)
			return NULL;
		x->fams = n;
		x->cap = cap;
	}
	bool per_worker = r->type == SHMET_GAUGE && r->mode == SHMET_GAUGE_PER_WORKER;
	uint32_t nlabels = r->nlabels + per_worker;
	char bt[SHMET_MAX_BUCKETS + 1][SHMET_FMT_DOUBLE_MAX];
	size_t btl[SHMET_MAX_BUCKETS + 1];
	double bounds[SHMET_MAX_BUCKETS + 1];
	size_t size = r->name_len + 1 + r->help_len + 1 + (r->nbuckets + 1) * (sizeof(double) + sizeof(char *)) +
		      (nlabels + 1) * sizeof(char *) + sizeof "worker";
	for (uint32_t i = 0; i < r->nlabels; i++)
		size += r->label_lens[i] + 1;
	for (uint32_t i = 0; i <= r->nbuckets; i++) {
		bounds[i] = i < r->nbuckets ? shmet_bound(r, i) : INFINITY;
		btl[i] = shmet_fmt_bound(bt[i], bounds[i]);
		size += btl[i] + 1;
	}
	struct ifamily *f = calloc(1, sizeof *f);
	char *blk = malloc(size); /* the pointer arrays first: aligned for them */
	if (!f || !blk) {
		free(f);
		free(blk);
		return NULL;
	}
	const char **names = (const char **)(void *)blk;
	const char **btext = names + nlabels + 1;
	double *bd = (double *)(void *)(btext + r->nbuckets + 1);
	char *p = (char *)(bd + r->nbuckets + 1);
#define TAKE(dst, s, n) (memcpy(p, (s), (n)), p[(n)] = 0, (dst) = p, p += (n) + 1)
	struct view_family *o = &f->out;
	f->block = blk;
	TAKE(o->name, r->name, r->name_len);
	TAKE(o->help, r->help, r->help_len);
	for (uint32_t i = 0; i < r->nlabels; i++)
		TAKE(names[i], r->label_names[i], r->label_lens[i]);
	if (per_worker)
		TAKE(names[r->nlabels], "worker", 6);
	for (uint32_t i = 0; i <= r->nbuckets; i++) {
		bd[i] = bounds[i];
		TAKE(btext[i], bt[i], btl[i]);
	}
#undef TAKE
	o->type = r->type;
	o->mode = r->mode;
	o->nlabels = nlabels;
	o->label_names = names;
	o->nbuckets = r->nbuckets;
	o->bounds = bd;
	o->bound_text = btext;
	o->exemplars = r->exemplars;
	if (r->sk.count) {
		f->sketch = r->sk;
		o->sketch = &f->sketch;
	}
	if (keymap_put(&x->fam_index, r->name, r->name_len, (uintptr_t)f) != 0) {
		free(blk);
		free(f);
		return NULL;
	}
	/* sorted by name: insert in place (families are few, and come once) */
	uint32_t at = x->nfams;
	while (at > 0 && strcmp(x->fams[at - 1]->out.name, o->name) > 0)
		at--;
	memmove(&x->fams[at + 1], &x->fams[at], (x->nfams - at) * sizeof *x->fams);
	x->fams[at] = f;
	x->nfams++;
	return f;
}

/* A series met for the first time: its values and escaped label text,
 * made once, in one block. */
static struct iseries *series_new(struct vindex *x, const struct ifamily *f, const struct shmet_record *r,
				  int worker)
{
	const struct view_family *o = &f->out;
	char w[16] = "";
	size_t wl = worker >= 0 ? (size_t)snprintf(w, sizeof w, "%d", worker) : 0;
	shmet_buf *t = &x->tmp;
	shmet_buf_reset(t);
	for (uint32_t k = 0; k < o->nlabels; k++) {
		const char *v = k < r->series.nvalues ? r->series.values[k] : w;
		size_t vl = k < r->series.nvalues ? r->series.value_lens[k] : wl;
		if (!vl)
			continue; /* an empty value is no label (Prometheus data model) */
		if (t->len)
			shmet_buf_putc(t, ',');
		shmet_buf_puts(t, o->label_names[k]);
		shmet_buf_append(t, "=\"", 2);
		shmet_escape_label_value(t, v, vl);
		shmet_buf_putc(t, '"');
	}
	if (t->oom)
		return NULL;
	size_t name_len = strlen(o->name);
	size_t line_len = name_len + (t->len ? t->len + 2 : 0) + 1;
	size_t size = sizeof(struct iseries) + (o->nlabels + 1) * sizeof(char *) + t->len + 1 + line_len + 1;
	for (uint32_t k = 0; k < r->series.nvalues; k++)
		size += r->series.value_lens[k] + 1;
	size += wl + 1;
	struct iseries *s = malloc(size);
	if (!s)
		return NULL;
	memset(s, 0, sizeof *s);
	const char **vals = (const char **)(void *)(s + 1);
	char *p = (char *)(vals + o->nlabels + 1);
	for (uint32_t k = 0; k < o->nlabels; k++) {
		const char *v = k < r->series.nvalues ? r->series.values[k] : w;
		size_t vl = k < r->series.nvalues ? r->series.value_lens[k] : wl;
		memcpy(p, v, vl);
		p[vl] = 0;
		vals[k] = p;
		p += vl + 1;
	}
	vals[o->nlabels] = NULL;
	memcpy(p, t->data ? t->data : "", t->len);
	p[t->len] = 0;
	s->values = vals;
	s->labels = p;
	s->labels_len = (uint32_t)t->len;
	p += t->len + 1;
	s->line = p;
	s->line_len = (uint32_t)line_len;
	memcpy(p, o->name, name_len);
	p += name_len;
	if (t->len) {
		*p++ = '{';
		memcpy(p, s->labels, t->len);
		p += t->len;
		*p++ = '}';
	}
	*p++ = ' ';
	*p = 0;
	return s;
}

/* SERIES LIMIT: the writer-made counter of routed lookups has one series
 * per family that went past its limit somewhere; its first sighting is
 * the one log line about that family. */
static void note_overflow(const struct ifamily *f, const struct shmet_record *r)
{
	if (!view_family_is_overflow(&f->out) || r->series.nvalues != 1)
		return;
	collector_warn("family %.*s reached its series limit in a process: new label sets go to its overflow series "
		       "(values \"" SHMET_OVERFLOW_VALUE "\"), counted in " SHMET_OVERFLOW_FAMILY "{family=\"%.*s\"}",
		       (int)r->series.value_lens[0], r->series.values[0], (int)r->series.value_lens[0],
		       r->series.values[0]);
}

static struct iseries *series_for(struct vindex *x, struct ifamily *f, const struct shmet_record *r, int worker)
{
	size_t klen = shmet_series_key_worker(r, worker, x->key, SHMET_SERIES_KEY_MAX);
	if (!klen)
		return NULL;
	struct kv *kv = keymap_find(&f->index, x->key, klen);
	if (kv)
		return (struct iseries *)kv->val;
	if (f->nfresh == f->fresh_cap) {
		uint32_t cap = f->fresh_cap ? f->fresh_cap * 2 : 8;
		struct iseries **n = realloc(f->fresh, cap * sizeof *n);
		if (!n)
			return NULL;
		f->fresh = n;
		f->fresh_cap = cap;
	}
	struct iseries *s = series_new(x, f, r, worker);
	if (!s)
		return NULL;
	if (keymap_put(&f->index, x->key, klen, (uintptr_t)s) != 0) {
		free(s);
		return NULL;
	}
	s->fam = f;
	s->fresh = true;
	f->fresh[f->nfresh++] = s;
	f->dirty = true;
	note_overflow(f, r);
	return s;
}

/* Count and log a problem the first time this (kind, region, generation,
 * offset) is met (a bad region header is met at every scan). */
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

static struct iregion *region_of(struct vindex *x, int region)
{
	return region < 0 ? &x->retired : &x->regions[region];
}

static void mark(struct vindex *x, struct iseries *s)
{
	struct ifamily *f = s->fam;
	f->dirty = true;
	x->changed = true;
	if (s->dirty)
		return;
	if (f->ntouched == f->touched_cap) {
		uint32_t cap = f->touched_cap ? 2 * f->touched_cap : 64;
		struct iseries **n = realloc(f->touched, cap * sizeof *n);
		if (!n) {
			x->oom = true; /* publication then walks every series of the family */
			f->ntouched = UINT32_MAX;
			return;
		}
		f->touched = n;
		f->touched_cap = cap;
	}
	if (f->ntouched != UINT32_MAX)
		f->touched[f->ntouched++] = s;
	s->dirty = true;
}

static bool per_worker_family(const struct view_family *f)
{
	return f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER;
}

/* Take every ref of region out of the series it gave them to. */
static void region_forget(struct vindex *x, int region)
{
	struct iregion *g = region_of(x, region);
	for (uint32_t i = 0; i < g->nheld; i++) {
		struct iseries *s = g->held[i];
		uint32_t k = 0;
		for (uint32_t j = 0; j < s->nrefs; j++)
			if (s->refs[j].region != region)
				s->refs[k++] = s->refs[j];
			else
				mark(x, s);
		s->nrefs = k;
	}
	g->nheld = 0;
	g->pos = sizeof(struct shmet_region_header);
	g->alive = false;
	g->folded = false;
}

/* The owner died: its refs stop counting as live; a per-worker gauge's
 * series (one per worker) goes. */
static void region_died(struct vindex *x, int region)
{
	struct iregion *g = region_of(x, region);
	for (uint32_t i = 0; i < g->nheld; i++) {
		struct iseries *s = g->held[i];
		uint32_t k = 0;
		for (uint32_t j = 0; j < s->nrefs; j++) {
			struct view_ref *r = &s->refs[j];
			if (r->region == region && r->live) {
				mark(x, s);
				r->live = false;
				if (per_worker_family(&s->fam->out))
					continue;
			}
			s->refs[k++] = *r;
		}
		s->nrefs = k;
	}
	g->alive = false;
}

/* Read the records of area from where the index stopped to its end. */
static void region_read(struct vindex *x, const struct shmet_area *area, int region, uint64_t gen, bool live)
{
	struct collector *c = x->c;
	struct iregion *g = region_of(x, region);
	struct shmet_dir_iter it;
	struct shmet_record r;
	char why[SHMET_ERRBUF];
	int rc;
	shmet_dir_begin(&it, area);
	if (g->pos < it.pos || g->pos > area->dir_end)
		g->pos = it.pos;
	it.pos = g->pos;
	uint64_t at = it.pos;
	while ((rc = shmet_dir_next(&it, &r, why)) != 0) {
		uint64_t rec_at = at;
		at = it.pos;
		if (rc < 0) {
			if (first_sighting(c, 'c', region, gen, rec_at) &&
			    __atomic_fetch_add(&c->corrupt_records, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("skipping corrupt record at %llu in %s %d: %s", (unsigned long long)rec_at,
					      region < 0 ? "retired totals" : "region", region, why);
			if (!it.stopped)
				g->pos = it.pos;
			continue;
		}
		if (r.kind != SHMET_REC_SERIES) {
			g->pos = it.pos;
			continue;
		}
		/* the registry decides the shape; a record that disagrees was
		 * written past the registry (a hostile or damaged writer) */
		bool counts;
		const struct shmet_family_view *rf = shmet_series_family(&c->registry, &r, live, &counts);
		if (!rf && !shmet_registry_find(&c->registry, r.fam.name, r.fam.name_len) &&
		    shmet_registry_update(&c->seg, &c->registry) == SHMET_OK) {
			/* Registered after this scan read the registry: a record is
			 * read only once, so read the registry's new records now
			 * rather than take the series for a conflict for ever. */
			rf = shmet_series_family(&c->registry, &r, live, &counts);
		}
		if (!rf) {
			if (first_sighting(c, 'f', region, gen, r.fam.off) &&
			    __atomic_fetch_add(&c->conflicts, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("region %d: family %.*s is not registered with this shape; its series are skipped",
					      region, (int)r.fam.name_len, r.fam.name);
			g->pos = it.pos;
			continue;
		}
		if (!counts) { /* a per-worker gauge of a process that is not live */
			g->pos = it.pos;
			continue;
		}
		bool per_worker = rf->type == SHMET_GAUGE && rf->mode == SHMET_GAUGE_PER_WORKER;
		struct ifamily *f = family_for(x, rf);
		struct iseries *s = f ? series_for(x, f, &r, per_worker ? region : -1) : NULL;
		if (!s) {
			x->oom = true;
			return; /* the record is read again at the next scan */
		}
		if (s->nrefs == s->cap) {
			uint32_t cap = s->cap ? s->cap * 2 : 2;
			struct view_ref *n = realloc(s->refs, cap * sizeof *n);
			if (!n) {
				x->oom = true;
				return;
			}
			s->refs = n;
			s->cap = cap;
		}
		if (g->nheld == g->cap) {
			uint32_t cap = g->cap ? g->cap * 2 : 64;
			struct iseries **n = realloc(g->held, cap * sizeof *n);
			if (!n) {
				x->oom = true;
				return;
			}
			g->held = n;
			g->cap = cap;
		}
		g->held[g->nheld++] = s;
		s->refs[s->nrefs++] = (struct view_ref){
			.cells = (const uint64_t *)(const void *)(area->base + r.series.cell_off),
			.live = live,
			.retired = area->retired,
			.baseline = (r.series.flags & SHMET_SER_BASELINE) != 0, /* only ever set in a retired half */
			.region = region,
		};
		mark(x, s);
		g->pos = it.pos;
	}
}

/* Bring the index up to the segment as it is now (updater thread; under
 * the scan's SIGBUS guard).  Every segment read is a whole step between
 * private updates, so a fault leaves the index consistent: what was read
 * counts, the rest is read at the next scan. */
static void vindex_update(struct vindex *x)
{
	struct collector *c = x->c;
	struct shmet_segment *seg = &c->seg;
	struct view_stats *st = &x->stats;
	memset(st, 0, sizeof *st);
	x->oom = false;
	if (c->registry.corrupt > c->registry_corrupt_logged) {
		collector_warn("family registry: %llu damaged or clashing records ignored (%s)",
			      (unsigned long long)c->registry.corrupt, c->registry.err);
		__atomic_fetch_add(&c->corrupt_records, c->registry.corrupt - c->registry_corrupt_logged, __ATOMIC_RELAXED);
		c->registry_corrupt_logged = c->registry.corrupt;
	}
	struct shmet_scan sc;
	struct shmet_scan_area sa;
	shmet_scan_begin(&sc, seg);
	unsigned active = sc.active;
	const struct shmet_retired_header *rh = sc.rh;
	uint64_t folds = __atomic_load_n(&rh->rh_folds, __ATOMIC_RELAXED);
	st->dropped = __atomic_load_n(&rh->rh_dropped, __ATOMIC_RELAXED) +
		      __atomic_load_n(&seg->map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	st->folds = folds;
	st->bytes_total = seg->map.size;
	st->bytes_used = seg->regions_off + 2 * seg->retired_half_size;
	while (!x->oom && shmet_scan_next(&sc, &sa)) {
		if (sa.region < 0) { /* the active retired half */
			if (sa.rc != SHMET_OK)
				collector_warn("retired totals unreadable: %s", sa.err);
			/* it changes only by a fold (this process's), which copies
			 * it whole to the other half: read it again from its start */
			if (!x->retired_read || active != x->retired_half || folds != x->retired_folds ||
			    sa.area.dir_end != x->retired.seen.dir_end) {
				region_forget(x, -1);
				x->retired_half = active;
				x->retired_folds = folds;
				x->retired.seen.dir_end = sa.area.dir_end;
				x->retired_read = true;
				x->changed = true;
			}
			region_read(x, &sa.area, -1, folds << 1 | active, false);
			continue;
		}
		uint32_t i = (uint32_t)sa.region;
		if (i >= x->nregions)
			break;
		struct iregion *g = &x->regions[i];
		const struct shmet_region_info *info = &sa.info;
		struct view_stamp now = {shmet_state_gen(info->generation, info->state), info->dir_end, info->alive};
		if (memcmp(&now, &g->seen, sizeof now) != 0)
			x->changed = true; /* even when no series came: the view's stamp moves */
		g->seen = now;
		if (info->state != SHMET_REGION_LIVE) {
			st->regions_free++;
			if (g->gen) {
				region_forget(x, (int)i);
				g->gen = 0;
			}
			continue;
		}
		if (info->flags & SHMET_SLOT_HISTORY) {
			st->regions_history++; /* the collector's own: no worker, no series */
			if (g->gen) {
				region_forget(x, (int)i);
				g->gen = 0;
			}
			continue;
		}
		if (info->alive)
			st->regions_live++;
		else
			st->regions_dead++;
		if (info->generation != g->gen) {
			/* a new owner: its directory starts over */
			region_forget(x, (int)i);
			g->gen = info->generation;
			g->alive = sa.live;
		}
		if (sa.folded) {
			if (!g->folded) {
				region_forget(x, (int)i);
				g->folded = true;
			}
			continue; /* already in the retired totals */
		}
		/* live: its owner runs and is not a thread region (shmet_scan) */
		if (g->alive && !sa.live)
			region_died(x, (int)i);
		if (sa.rc != SHMET_OK) {
			if (first_sighting(c, 'h', (int)i, info->generation, 0) &&
			    __atomic_fetch_add(&c->corrupt_records, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("region %u: %s", i, sa.err);
			continue; /* what was read before stays: it was valid, and its cells are inside the region */
		}
		if (sa.area.dir_end < g->pos) {
			/* an append-only directory that shrank: not its owner's doing */
			if (first_sighting(c, 's', (int)i, info->generation, sa.area.dir_end) &&
			    __atomic_fetch_add(&c->corrupt_records, 1, __ATOMIC_RELAXED) < 100)
				collector_warn("region %u: its directory shrank from %llu to %llu bytes; read again", i,
					      (unsigned long long)g->pos, (unsigned long long)sa.area.dir_end);
			bool alive = g->alive;
			region_forget(x, (int)i);
			g->alive = alive;
		}
		st->bytes_used +=
			(sa.area.dir_end - sizeof(struct shmet_region_header)) + (sa.area.size - sa.area.cell_low);
		st->dropped += info->dropped;
		region_read(x, &sa.area, (int)i, info->generation, g->alive);
	}
}

/* ---- publication ---- */

static __thread uint32_t sort_nlabels;
static int series_cmp(const void *a, const void *b)
{
	const struct iseries *x = *(const struct iseries *const *)a, *y = *(const struct iseries *const *)b;
	for (uint32_t i = 0; i < sort_nlabels; i++) {
		int c = strcmp(x->values[i], y->values[i]);
		if (c)
			return c;
	}
	return 0;
}

static int values_cmp(const char *const *a, const char *const *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		int c = strcmp(a[i], b[i]);
		if (c)
			return c;
	}
	return 0;
}

/* The first position in a[0..n) whose values are not below v. */
static uint32_t vs_lower_bound(const struct view_series *a, uint32_t n, const char *const *v, uint32_t nl)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (values_cmp(a[mid].values, v, nl) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static uint32_t is_lower_bound(struct iseries *const *a, uint32_t n, const char *const *v, uint32_t nl)
{
	uint32_t lo = 0, hi = n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (values_cmp(a[mid]->values, v, nl) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct view_series series_entry(const struct iseries *s)
{
	return (struct view_series){
		.labels = s->labels,
		.labels_len = s->labels_len,
		.nrefs = s->npub,
		.refs = s->pub,
		.values = s->values,
		.line = s->line,
		.line_len = s->line_len,
	};
}

/* A touched series' refs as the next view shows them. */
static bool series_repub(struct vindex *x, struct iseries *s)
{
	struct view_ref *p = NULL;
	if (s->nrefs && !(p = malloc(s->nrefs * sizeof *p)))
		return false;
	if (s->nrefs)
		memcpy(p, s->refs, s->nrefs * sizeof *p);
	if (!s->pub_packed && !garbage(x, s->pub)) {
		free(p);
		return false;
	}
	s->pub_packed = false;
	s->pub = p;
	s->npub = s->nrefs;
	s->dirty = false;
	return true;
}

/* One change to the published array: at pos (of the old array), insert e
 * before it, or replace or drop the entry there. */
struct edit {
	uint32_t pos;
	char op; /* 'i' before 'r'/'d' at the same pos */
	struct view_series e;
};

static __thread uint32_t edit_nlabels;
static int edit_cmp(const void *a, const void *b)
{
	const struct edit *x = a, *y = b;
	if (x->pos != y->pos)
		return x->pos < y->pos ? -1 : 1;
	if (x->op != 'i' || y->op != 'i')
		return (x->op != 'i') - (y->op != 'i');
	return values_cmp(x->e.values, y->e.values, edit_nlabels); /* two new ones in one gap */
}

/* A few series came or changed in a large family: the new array is the old
 * one copied, with those edits, found by binary search.  O(n) copying and
 * O(k log n) comparisons, never a comparison per series of the family.
 * false: out of memory, nothing published changed. */
static bool family_patch(struct vindex *x, struct ifamily *f)
{
	uint32_t nl = f->out.nlabels, n = f->out.nseries, k = f->nfresh + f->ntouched;
	struct edit *ed = malloc((k + 1) * sizeof *ed);
	uint32_t ne = 0;
	if (!ed)
		return false;
	/* positions in the old array, by what the old view shows */
	for (uint32_t i = 0; i < f->ntouched; i++) {
		struct iseries *s = f->touched[i];
		if (s->dirty && !series_repub(x, s)) {
			free(ed);
			return false;
		}
		if (s->fresh)
			continue; /* placed below, with the new ones */
		/* whether the old view shows it: found there, not taken from
		 * npub (an earlier attempt that ran out of memory changed it) */
		uint32_t p = vs_lower_bound(f->out.series, n, s->values, nl);
		bool was = p < n && values_cmp(f->out.series[p].values, s->values, nl) == 0;
		if (was && s->npub)
			ed[ne++] = (struct edit){p, 'r', series_entry(s)};
		else if (was)
			ed[ne++] = (struct edit){p, 'd', {0}};
		else if (s->npub)
			ed[ne++] = (struct edit){p, 'i', series_entry(s)};
	}
	for (uint32_t i = 0; i < f->nfresh; i++)
		if (f->fresh[i]->npub)
			ed[ne++] = (struct edit){vs_lower_bound(f->out.series, n, f->fresh[i]->values, nl), 'i',
						 series_entry(f->fresh[i])};
	edit_nlabels = nl;
	qsort(ed, ne, sizeof *ed, edit_cmp);
	uint32_t shown = n;
	for (uint32_t i = 0; i < ne; i++)
		shown += ed[i].op == 'i' ? 1 : ed[i].op == 'd' ? (uint32_t)-1 : 0;
	struct view_series *vs = alloc_rounded((shown + 1) * sizeof *vs);
	/* the private sorted array, with the new series in place */
	struct iseries **m = f->nfresh ? alloc_rounded((f->nsorted + f->nfresh) * sizeof *m) : NULL;
	if (!vs || (f->nfresh && !m) || !garbage(x, f->out.series)) {
		free(vs);
		free(m);
		free(ed);
		return false;
	}
	uint32_t from = 0, out = 0;
	for (uint32_t i = 0; i < ne; i++) {
		memcpy(vs + out, f->out.series + from, (ed[i].pos - from) * sizeof *vs);
		out += ed[i].pos - from;
		from = ed[i].pos;
		if (ed[i].op == 'i') {
			vs[out++] = ed[i].e;
		} else {
			if (ed[i].op == 'r')
				vs[out++] = ed[i].e;
			from++;
		}
	}
	memcpy(vs + out, f->out.series + from, (n - from) * sizeof *vs);
	free(ed);
	if (m) {
		uint32_t at = 0, o = 0;
		for (uint32_t j = 0; j < f->nfresh; j++) {
			uint32_t p = is_lower_bound(f->sorted, f->nsorted, f->fresh[j]->values, nl);
			memcpy(m + o, f->sorted + at, (p - at) * sizeof *m);
			o += p - at;
			at = p;
			m[o++] = f->fresh[j];
			f->fresh[j]->fresh = false;
		}
		memcpy(m + o, f->sorted + at, (f->nsorted - at) * sizeof *m);
		free(f->sorted);
		f->sorted = m;
		f->nsorted = f->cap = f->nsorted + f->nfresh;
		f->nfresh = 0;
	}
	f->out.series = vs;
	f->out.nseries = shown;
	f->npatched += ne;
	return true;
}

/* Every series of the family walked: the first publication, or many changes. */
static bool family_rebuild(struct vindex *x, struct ifamily *f)
{
	if (f->nfresh) {
		/* the new series (sorted), merged: O(n + k log k) */
		uint32_t n = f->nsorted + f->nfresh;
		struct iseries **m = malloc(n * sizeof *m);
		if (!m)
			return false;
		uint32_t i = 0, j = 0, k = 0;
		while (i < f->nsorted || j < f->nfresh)
			m[k++] = j == f->nfresh || (i < f->nsorted && series_cmp(&f->sorted[i], &f->fresh[j]) <= 0)
					 ? f->sorted[i++]
					 : f->fresh[j++];
		for (j = 0; j < f->nfresh; j++)
			f->fresh[j]->fresh = false;
		free(f->sorted); /* the updater's own: no reader sees it */
		f->sorted = m;
		f->nsorted = f->cap = n;
		f->nfresh = 0;
	}
	/* Packed: the refs and line text of every shown series in one block, in
	 * the order a render walks them, as the cells' pointers are chased
	 * anyway: a render then reads memory in sequence, not one scattered
	 * block per series. */
	uint32_t shown = 0, loose = 0;
	size_t bytes = 0;
	for (uint32_t i = 0; i < f->nsorted; i++) {
		const struct iseries *s = f->sorted[i];
		uint32_t n = s->dirty ? s->nrefs : s->npub;
		loose += s->pub && !s->pub_packed;
		if (!n)
			continue;
		shown++;
		bytes += n * sizeof(struct view_ref) + shmet_align8((uint64_t)s->line_len + 1) +
			 shmet_align8((uint64_t)s->labels_len + 1);
	}
	unsigned char *blk = alloc_rounded(bytes ? bytes : 1);
	struct view_series *vs = alloc_rounded((shown + 1) * sizeof *vs);
	if (!blk || !vs || !garbage_reserve(x, loose + 2)) {
		free(blk);
		free(vs);
		return false;
	}
	garbage(x, f->out.series);
	garbage(x, f->packed);
	unsigned char *p = blk;
	uint32_t k = 0;
	for (uint32_t i = 0; i < f->nsorted; i++) {
		struct iseries *s = f->sorted[i];
		uint32_t n = s->dirty ? s->nrefs : s->npub;
		const struct view_ref *src = s->dirty ? s->refs : s->pub;
		struct view_ref *refs = NULL;
		if (n) {
			refs = (struct view_ref *)(void *)p;
			memcpy(refs, src, n * sizeof *refs);
			p += n * sizeof *refs;
			char *line = (char *)p;
			memcpy(line, s->line, (size_t)s->line_len + 1);
			p += shmet_align8((uint64_t)s->line_len + 1);
			char *labels = (char *)p;
			memcpy(labels, s->labels, (size_t)s->labels_len + 1);
			p += shmet_align8((uint64_t)s->labels_len + 1);
			vs[k++] = (struct view_series){
				.labels = labels,
				.labels_len = s->labels_len,
				.nrefs = n,
				.refs = refs,
				.values = s->values,
				.line = line,
				.line_len = s->line_len,
			};
		}
		if (s->pub && !s->pub_packed)
			garbage(x, s->pub);
		s->pub = refs;
		s->npub = n;
		s->pub_packed = n > 0;
		s->dirty = false;
	}
	f->packed = blk;
	f->npatched = 0;
	f->out.series = vs;
	f->out.nseries = shown;
	return true;
}

/* A changed family's new series array; the old one becomes garbage. */
static bool family_publish(struct vindex *x, struct ifamily *f)
{
	uint32_t nl = f->out.nlabels;
	sort_nlabels = nl;
	if (f->nfresh)
		qsort(f->fresh, f->nfresh, sizeof *f->fresh, series_cmp);
	bool ok;
	/* patched entries lie outside the packed block: pack again once they
	 * are more than a sixteenth */
	if (f->out.series && f->ntouched != UINT32_MAX &&
	    ((uint64_t)f->nfresh + f->ntouched + f->npatched) * 16 <= f->nsorted) {
		ok = family_patch(x, f);
	} else {
		ok = family_rebuild(x, f);
	}
	if (ok) {
		f->ntouched = 0;
		f->dirty = false;
	}
	return ok;
}

/* A view of the index as it is; NULL when memory ran out (the index stays
 * changed, and the next scan tries again).  Touches no segment memory. */
static struct view *vindex_publish(struct vindex *x)
{
	for (uint32_t i = 0; i < x->nfams; i++)
		if (x->fams[i]->dirty && !family_publish(x, x->fams[i]))
			return NULL;
	uint32_t nf = 0;
	for (uint32_t i = 0; i < x->nfams; i++)
		nf += x->fams[i]->out.nseries > 0;
	size_t size = sizeof(struct view) + (nf + 1) * sizeof(struct view_family) +
		      (x->nregions + 1) * sizeof(struct view_stamp);
	struct view *v = calloc(1, size);
	if (!v)
		return NULL;
	v->families = (struct view_family *)(void *)(v + 1);
	v->stamps = (struct view_stamp *)(void *)(v->families + nf + 1);
	v->stats = x->stats;
	for (uint32_t i = 0; i < x->nfams; i++)
		if (x->fams[i]->out.nseries) {
			v->families[v->nfamilies++] = x->fams[i]->out;
			v->stats.series += x->fams[i]->out.nseries;
		}
	v->nstamps = x->nregions;
	for (uint32_t i = 0; i < x->nregions; i++)
		v->stamps[i] = x->regions[i].seen;
	v->retired_half = x->retired_half;
	v->retired_folds = x->retired_folds;
	v->built_ns = shmet__now_ns(CLOCK_REALTIME);
	x->changed = false;
	return v;
}

/* ---- the collector's side ---- */

bool view_index_update(struct collector *c)
{
	if (!c->index && !(c->index = vindex_new(c))) {
		collector_error("out of memory while indexing the segment; keeping the previous view");
		return false;
	}
	vindex_update(c->index);
	if (c->index->oom)
		collector_error("out of memory while indexing the segment; the rest is read at the next scan");
	return c->index->changed;
}

struct view *view_index_publish(struct collector *c)
{
	struct view *v = c->index ? vindex_publish(c->index) : NULL;
	if (!v)
		collector_error("out of memory while building the view; keeping the previous one");
	return v;
}

void view_index_collect(struct collector *c)
{
	if (c->index)
		vindex_collect(c->index);
}

void view_index_free(struct collector *c)
{
	vindex_free(c->index);
	c->index = NULL;
}

struct view *view_build(struct collector *c)
{
	/* Known to the collector: a SIGBUS in the middle of a build leaves
	 * through siglongjmp, and view_build_abandon frees it. */
	struct vindex *x = vindex_new(c);
	struct view *v = NULL;
	c->building = x;
	if (x && shmet_registry_update(&c->seg, &c->registry) == SHMET_OK) {
		vindex_update(x);
		if (!x->oom)
			v = vindex_publish(x);
	}
	c->building = NULL;
	if (!v) {
		collector_error("out of memory while building the view; keeping the previous one");
		vindex_free(x);
		return NULL;
	}
	v->own = x;
	return v;
}

void view_build_abandon(struct collector *c)
{
	vindex_free(c->building);
	c->building = NULL;
}

void view_free(struct view *v)
{
	if (!v)
		return;
	vindex_free(v->own);
	free(v);
}

bool view_current(const struct collector *c, const struct view *v)
{
	const struct shmet_segment *seg = &c->seg;
	if (!v || v->nstamps != seg->regions || shmet_retired_active(seg) != v->retired_half ||
	    __atomic_load_n(&shmet_retired_header(seg, v->retired_half)->rh_folds, __ATOMIC_RELAXED) != v->retired_folds)
		return false;
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		struct view_stamp now = {shmet_state_gen(info.generation, info.state), info.dir_end, info.alive};
		if (memcmp(&now, &v->stamps[i], sizeof now) != 0)
			return false;
	}
	return true;
}
bool view_family_is_overflow(const struct view_family *f)
{
	return strcmp(f->name, SHMET_OVERFLOW_FAMILY) == 0 && f->type == SHMET_COUNTER && f->nlabels == 1 &&
	       strcmp(f->label_names[0], "family") == 0;
}

double view_overflowed(const struct view *v, const char *family)
{
	uint32_t lo = 0, hi = v->nfamilies;
	while (lo < hi) { /* families are sorted by name */
		uint32_t mid = lo + (hi - lo) / 2;
		if (strcmp(v->families[mid].name, SHMET_OVERFLOW_FAMILY) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == v->nfamilies || !view_family_is_overflow(&v->families[lo]))
		return -1;
	const struct view_family *f = &v->families[lo];
	const char *want[1] = {family};
	uint32_t p = vs_lower_bound(f->series, f->nseries, want, 1);
	if (p == f->nseries || strcmp(f->series[p].values[0], family) != 0)
		return -1;
	struct shmet_agg acc;
	view_series_agg(f, &f->series[p], &acc);
	return shmet_agg_value(&acc, SHMET_COUNTER);
}

uint64_t view_family_bytes(const struct view_family *f)
{
	uint64_t n = 0;
	for (uint32_t i = 0; i < f->nseries; i++) {
		const struct view_series *s = &f->series[i];
		uint64_t rec = sizeof(struct shmet_rec_series);
		for (uint32_t k = 0; k < f->nlabels - per_worker_family(f) && s->values[k]; k++)
			rec += 2 + strlen(s->values[k]);
		for (uint32_t r = 0; r < s->nrefs; r++)
			n += shmet_align8(rec) + shmet_cell_size_ex(f->type, f->nbuckets, f->sketch ? f->sketch->count : 0,
								   f->exemplars, s->refs[r].retired);
	}
	return n;
}

bool view_family_exposed(const struct view_family *f)
{
	/* the collector's own names, which a writer may not shadow, except the
	 * one family writers make themselves (SERIES LIMIT), in its one shape */
	if (strncmp(f->name, SHMET_RESERVED_PREFIX, sizeof SHMET_RESERVED_PREFIX - 1) == 0)
		return view_family_is_overflow(f);
	return !self_family_name(f->name);
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
		if (s->refs[i].baseline)
			shmet_agg_sub(acc, f->type, f->nbuckets, &v);
		else
			shmet_agg_add(acc, f->type, f->mode, f->nbuckets, &v, s->refs[i].live);
	}
	shmet_agg_finish(acc, f->type);
	if (acc->gone)
		acc->has = false; /* a gauge's "no value": every caller skips it */
	return whole && !acc->gone;
}
