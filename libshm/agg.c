/* libshm: how processes' values combine, and a whole-segment snapshot. */
#include "shmetrics_reader.h"

#include "keymap.h"

#include <math.h>
#include <stdlib.h>


void shmet_agg_init(struct shmet_agg *acc, uint32_t nbuckets)
{
	acc->whole = 0;
	acc->value = 0;
	acc->stamp_ns = 0;
	acc->has = false;
	acc->whole_exact = 0;
	shmet_xsum_init(&acc->xs);
	memset(acc->buckets, 0, ((size_t)nbuckets + 1) * sizeof acc->buckets[0]);
	acc->nbuckets = nbuckets;
	acc->based = acc->gone = false;
	acc->whole_neg = 0;
	acc->count_neg = 0;
	acc->base_value = 0;
	acc->base_stamp = 0;
	memset(acc->buckets_neg, 0, ((size_t)nbuckets + 1) * sizeof acc->buckets_neg[0]);
}

void shmet_agg_sub(struct shmet_agg *acc, enum shmet_type type, uint32_t nbuckets, const struct shmet_values *v)
{
	acc->based = true;
	if (type == SHMET_GAUGE) {
		acc->base_value = v->value;
		acc->base_stamp = v->stamp_ns;
		return;
	}
	if (type == SHMET_COUNTER)
		acc->whole_neg += v->whole;
	else
		acc->count_neg = shmet_sat_add(acc->count_neg, v->whole);
	for (uint32_t i = 0; type == SHMET_HISTOGRAM && i <= nbuckets; i++)
		acc->buckets_neg[i] = shmet_sat_add(acc->buckets_neg[i], v->buckets[i]);
	/* the expansion is exact: adding the negated components subtracts */
	shmet_xsum_add_nz(&acc->xs, -v->value);
	shmet_xsum_add_nz(&acc->xs, -v->value_lo[0]);
	shmet_xsum_add_nz(&acc->xs, -v->value_lo[1]);
}

static uint64_t sat_sub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

void shmet_agg_finish(struct shmet_agg *acc, enum shmet_type type)
{
	if (acc->based && type != SHMET_GAUGE) {
		/* every cell of the baseline is also in some cell summed here
		 * (or its fold), so only damaged cells could make these go below */
		acc->whole_exact = acc->whole_exact > acc->whole_neg ? acc->whole_exact - acc->whole_neg : 0;
		acc->whole = sat_sub(acc->whole, type == SHMET_COUNTER ? (uint64_t)acc->whole_neg : acc->count_neg);
		for (uint32_t i = 0; type == SHMET_HISTOGRAM && i <= acc->nbuckets && i <= SHMET_MAX_BUCKETS; i++)
			acc->buckets[i] = sat_sub(acc->buckets[i], acc->buckets_neg[i]);
	}
	if (type == SHMET_COUNTER) {
		/* four 32-bit pieces, each exact as a double */
		uint64_t hi = (uint64_t)(acc->whole_exact >> 64), lo = (uint64_t)acc->whole_exact;
		shmet_xsum_add(&acc->xs, ldexp((double)(hi >> 32), 96));
		shmet_xsum_add(&acc->xs, ldexp((double)(hi & 0xffffffffu), 64));
		shmet_xsum_add_u64(&acc->xs, lo);
	}
	if (type != SHMET_GAUGE)
		acc->value = shmet_xsum_round(&acc->xs);
	if (!acc->based)
		return;
	if (type == SHMET_COUNTER) {
		if (acc->value < 0)
			acc->value = 0; /* damaged cells: a counter is never below zero */
		acc->gone = acc->value == 0;
	} else if (type != SHMET_GAUGE) {
		acc->gone = acc->whole == 0;
	} else {
		/* set since: another value, or (most recent) a later set */
		acc->gone = acc->has && shmet__bits(acc->value) == shmet__bits(acc->base_value) &&
			    acc->stamp_ns <= acc->base_stamp;
	}
}

void shmet_agg_add(struct shmet_agg *acc, enum shmet_type type, enum shmet_gauge_mode mode, uint32_t nbuckets,
		   const struct shmet_values *v, bool live)
{
	if (type != SHMET_GAUGE) {
		/* every whole part of a counter is summed exactly, and joins the
		 * float sum once, at shmet_agg_finish: no wrap, no saturation,
		 * one rounding */
		if (type == SHMET_COUNTER)
			acc->whole_exact += v->whole;
		for (uint32_t i = 0; type == SHMET_HISTOGRAM && i <= nbuckets; i++)
			acc->buckets[i] = shmet_sat_add(acc->buckets[i], v->buckets[i]);
		acc->whole = shmet_sat_add(acc->whole, v->whole);
		shmet_xsum_add_nz(&acc->xs, v->value);
		shmet_xsum_add_nz(&acc->xs, v->value_lo[0]);
		shmet_xsum_add_nz(&acc->xs, v->value_lo[1]);
		acc->has = true;
		return;
	}
	/* gauges */
	if (mode == SHMET_GAUGE_MOSTRECENT) {
		if (!acc->has || shmet_most_recent_wins(v->stamp_ns, v->value, acc->stamp_ns, acc->value)) {
			acc->value = v->value;
			acc->stamp_ns = v->stamp_ns;
		}
		acc->has = true;
		return;
	}
	/* dead, or a process that never set this max/min gauge: no mark, or
	 * the mark with the unset value, -Inf (+Inf), that a max (min) ignores
	 * anyway (SET MARK in shmetrics_layout.h) */
	if (!live || ((mode == SHMET_GAUGE_MAX || mode == SHMET_GAUGE_MIN) &&
		      (v->stamp_ns == 0 || v->value == (mode == SHMET_GAUGE_MAX ? -INFINITY : INFINITY))))
		return;
	if (mode == SHMET_GAUGE_MAX || mode == SHMET_GAUGE_MIN) {
		/* NaN takes part only when every setter holds NaN (as PromQL's
		 * max and min do), so the answer never depends on which
		 * process has the lower region index. */
		bool take = !acc->has || (isnan(acc->value) && !isnan(v->value)) ||
			    (mode == SHMET_GAUGE_MAX ? v->value > acc->value : v->value < acc->value);
		if (take)
			acc->value = v->value;
	} else {
		acc->value += v->value;
	}
	acc->has = true;
}

double shmet_agg_value(const struct shmet_agg *acc, enum shmet_type type)
{
	(void)type; /* every type's value is in value once finished */
	return acc->value;
}

/* ---- snapshot ---- */

static char *dupn(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = 0;
	}
	return d;
}

static int cmp_values(char *const *a, char *const *b, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		int c = strcmp(a[i], b[i]);
		if (c)
			return c;
	}
	return 0;
}

/* Indexes for one shmet_snapshot_take.  Without them each record was
 * compared with every series seen before it: quadratic, minutes for a
 * segment of 100,000 series. */
struct snap_index {
	struct shmet_registry reg; /* the shape of every family */
	struct keymap fams;    /* name -> index in families */
	struct keymap series;  /* shmet_series_key_worker -> family index << 32 | series index */
	char *key;             /* SNAP_KEY_CAP bytes */
};
#define SNAP_KEY_CAP (SHMET_SERIES_KEY_MAX + 16)

/* Arrays grow by doubling: realloc when n is 0 or a power of two. */
static bool full(size_t n)
{
	return (n & (n - 1)) == 0;
}

static struct shmet_snap_family *find_family(struct shmet_snapshot *s, struct snap_index *ix, const char *name,
					     size_t len)
{
	struct kv *kv = keymap_find(&ix->fams, name, len);
	return kv ? &s->families[kv->val] : NULL;
}

static struct shmet_snap_family *add_family(struct shmet_snapshot *s, struct snap_index *ix,
					    const struct shmet_family_view *v)
{
	size_t cap = s->nfamilies ? 2 * s->nfamilies : 1;
	if (full(s->nfamilies)) {
		struct shmet_snap_family *nf = realloc(s->families, cap * sizeof *nf);
		if (!nf)
			return NULL;
		s->families = nf;
	}
	struct shmet_snap_family *f = &s->families[s->nfamilies];
	memset(f, 0, sizeof *f);
	bool per_worker = v->type == SHMET_GAUGE && v->mode == SHMET_GAUGE_PER_WORKER;
	f->name = dupn(v->name, v->name_len);
	f->help = dupn(v->help, v->help_len);
	f->type = v->type;
	f->mode = v->mode;
	f->nlabels = v->nlabels + per_worker;
	f->label_names = calloc(f->nlabels + 1, sizeof(char *));
	f->nbuckets = v->nbuckets;
	for (uint32_t i = 0; i < v->nbuckets; i++)
		f->bounds[i] = shmet_bound(v, i);
	if (!f->name || !f->help || !f->label_names)
		goto oom;
	for (uint32_t i = 0; i < v->nlabels; i++)
		if (!(f->label_names[i] = dupn(v->label_names[i], v->label_lens[i])))
			goto oom;
	if (per_worker && !(f->label_names[v->nlabels] = dupn("worker", 6)))
		goto oom;
	if (keymap_put(&ix->fams, v->name, v->name_len, (uint32_t)s->nfamilies) != 0)
		goto oom;
	s->nfamilies++;
	return f;
oom:
	for (uint32_t i = 0; f->label_names && i < f->nlabels; i++)
		free(f->label_names[i]);
	free(f->label_names);
	free(f->name);
	free(f->help);
	return NULL;
}

static void series_free(struct shmet_snap_series *r, uint32_t nvalues)
{
	for (uint32_t i = 0; r->values && i < nvalues; i++)
		free(r->values[i]);
	free(r->values);
	free(r->key);
}

/* The series of record r (of family f, fi in the snapshot) under its
 * key, created when new; NULL when out of memory. */
static struct shmet_snap_series *get_series(struct shmet_snapshot *s, struct snap_index *ix, size_t fi,
					    const struct shmet_record *r, int worker)
{
	struct shmet_snap_family *f = &s->families[fi];
	size_t n = shmet_series_key_worker(r, worker, ix->key, SNAP_KEY_CAP);
	if (!n)
		return NULL;
	struct kv *kv = keymap_find(&ix->series, ix->key, n);
	if (kv)
		return &f->series[(uint32_t)kv->val];
	if (full(f->nseries)) {
		struct shmet_snap_series *ns = realloc(f->series, (f->nseries ? 2 * f->nseries : 1) * sizeof *ns);
		if (!ns)
			return NULL;
		f->series = ns;
	}
	struct shmet_snap_series *ser = &f->series[f->nseries];
	memset(ser, 0, sizeof *ser);
	shmet_agg_init(&ser->agg, f->nbuckets);
	ser->values = calloc(f->nlabels + 1, sizeof(char *));
	ser->key = dupn(ix->key, n);
	ser->key_len = n;
	bool ok = ser->values && ser->key;
	for (uint32_t i = 0; ok && i < r->series.nvalues; i++)
		ok = (ser->values[i] = dupn(r->series.values[i], r->series.value_lens[i])) != NULL;
	if (ok && worker >= 0) {
		char w[16];
		int wl = snprintf(w, sizeof w, "%d", worker);
		ok = (ser->values[r->series.nvalues] = dupn(w, (size_t)wl)) != NULL;
	}
	if (!ok || keymap_put(&ix->series, ix->key, n, (uint64_t)fi << 32 | f->nseries) != 0) {
		series_free(ser, f->nlabels);
		return NULL;
	}
	f->nseries++;
	return ser;
}

static void snap_area(struct shmet_snapshot *s, struct snap_index *ix, const struct shmet_scan_area *sa)
{
	const struct shmet_area *a = &sa->area;
	struct shmet_dir_iter it;
	struct shmet_record r;
	char why[SHMET_ERRBUF];
	int rc;
	shmet_dir_begin(&it, a);
	while ((rc = shmet_dir_next(&it, &r, why)) != 0) {
		if (rc < 0) {
			s->corrupt++;
			if (!s->err[0])
				snprintf(s->err, sizeof s->err, "%s", why);
			continue;
		}
		if (r.kind != SHMET_REC_SERIES)
			continue;
		bool counts;
		const struct shmet_family_view *reg = shmet_series_family(&ix->reg, &r, sa->live, &counts);
		if (!reg) {
			s->conflicts++;
			continue;
		}
		struct shmet_snap_family *f = find_family(s, ix, reg->name, reg->name_len);
		if ((!f && !(f = add_family(s, ix, reg))) || !counts)
			continue;
		bool per_worker = f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER;
		struct shmet_snap_series *ser = get_series(s, ix, (size_t)(f - s->families), &r, per_worker ? sa->region : -1);
		if (ser) {
			struct shmet_values v;
			shmet_read_cells(a, &r.fam, &r.series, &v);
			if (r.series.flags & SHMET_SER_BASELINE)
				shmet_agg_sub(&ser->agg, f->type, f->nbuckets, &v);
			else
				shmet_agg_add(&ser->agg, f->type, f->mode, f->nbuckets, &v, sa->live);
		}
	}
}

static int fam_cmp(const void *a, const void *b)
{
	return strcmp(((const struct shmet_snap_family *)a)->name, ((const struct shmet_snap_family *)b)->name);
}

static uint32_t series_sort_n;
static int ser_cmp(const void *a, const void *b)
{
	return cmp_values(((const struct shmet_snap_series *)a)->values, ((const struct shmet_snap_series *)b)->values,
			  series_sort_n);
}

int shmet_snapshot_take(const struct shmet_segment *seg, struct shmet_snapshot *s)
{
	memset(s, 0, sizeof *s);
	struct snap_index ix;
	memset(&ix, 0, sizeof ix);
	if (!(ix.key = malloc(SNAP_KEY_CAP)))
		return shmet__fail(s->err, SHMET_E_SYS, "out of memory");
	if (shmet_registry_update(seg, &ix.reg) != SHMET_OK) {
		shmet_registry_free(&ix.reg);
		free(ix.key);
		return shmet__fail(s->err, SHMET_E_SYS, "out of memory");
	}
	s->corrupt += ix.reg.corrupt;
	if (ix.reg.err[0])
		snprintf(s->err, sizeof s->err, "%s", ix.reg.err);
	struct shmet_scan sc;
	struct shmet_scan_area sa;
	shmet_scan_begin(&sc, seg);
	s->dropped = __atomic_load_n(&sc.rh->rh_dropped, __ATOMIC_RELAXED) +
		     __atomic_load_n(&seg->map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	while (shmet_scan_next(&sc, &sa)) {
		if (!sa.counts)
			continue;
		if (sa.rc != SHMET_OK) {
			s->corrupt++;
			if (!s->err[0]) {
				if (sa.region < 0)
					snprintf(s->err, sizeof s->err, "%s", sa.err);
				else
					snprintf(s->err, sizeof s->err, "region %d: %s", sa.region, sa.err);
			}
		}
		s->dropped += sa.info.dropped;
		snap_area(s, &ix, &sa);
	}
	keymap_free(&ix.series);
	keymap_free(&ix.fams);
	shmet_registry_free(&ix.reg);
	free(ix.key);
	for (size_t i = 0; i < s->nfamilies; i++) {
		struct shmet_snap_family *f = &s->families[i];
		size_t k = 0;
		for (size_t j = 0; j < f->nseries; j++) {
			shmet_agg_finish(&f->series[j].agg, f->type);
			if (f->series[j].agg.gone) /* removed, nothing since: readers do not show it */
				series_free(&f->series[j], f->nlabels);
			else
				f->series[k++] = f->series[j];
		}
		f->nseries = k;
	}
	/* qsort's array may not be NULL, even when empty (C11 7.22.5) */
	if (s->nfamilies)
		qsort(s->families, s->nfamilies, sizeof *s->families, fam_cmp);
	for (size_t i = 0; i < s->nfamilies; i++) {
		series_sort_n = s->families[i].nlabels; /* qsort has no context argument in C11 */
		if (s->families[i].nseries)
			qsort(s->families[i].series, s->families[i].nseries, sizeof(struct shmet_snap_series), ser_cmp);
	}
	return SHMET_OK;
}

void shmet_snapshot_free(struct shmet_snapshot *s)
{
	for (size_t i = 0; i < s->nfamilies; i++) {
		struct shmet_snap_family *f = &s->families[i];
		for (size_t j = 0; j < f->nseries; j++)
			series_free(&f->series[j], f->nlabels);
		for (uint32_t k = 0; k < f->nlabels; k++)
			free(f->label_names[k]);
		free(f->label_names);
		free(f->series);
		free(f->name);
		free(f->help);
	}
	free(s->families);
	memset(s, 0, sizeof *s);
}

const struct shmet_snap_family *shmet_snapshot_family(const struct shmet_snapshot *s, const char *name)
{
	for (size_t i = 0; i < s->nfamilies; i++)
		if (strcmp(s->families[i].name, name) == 0)
			return &s->families[i];
	return NULL;
}

const struct shmet_snap_series *shmet_snapshot_series(const struct shmet_snap_family *f, const char *const *values)
{
	for (size_t i = 0; f && i < f->nseries; i++) {
		uint32_t k = 0;
		while (k < f->nlabels && strcmp(f->series[i].values[k], values[k]) == 0)
			k++;
		if (k == f->nlabels)
			return &f->series[i];
	}
	return NULL;
}
