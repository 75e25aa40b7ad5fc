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
}

void shmet_agg_finish(struct shmet_agg *acc, enum shmet_type type)
{
	if (type == SHMET_COUNTER) {
		/* four 32-bit pieces, each exact as a double */
		uint64_t hi = (uint64_t)(acc->whole_exact >> 64), lo = (uint64_t)acc->whole_exact;
		shmet_xsum_add(&acc->xs, ldexp((double)(hi >> 32), 96));
		shmet_xsum_add(&acc->xs, ldexp((double)(hi & 0xffffffffu), 64));
		shmet_xsum_add_u64(&acc->xs, lo);
	}
	if (type != SHMET_GAUGE)
		acc->value = shmet_xsum_round(&acc->xs);
}

void shmet_agg_add(struct shmet_agg *acc, enum shmet_type type, enum shmet_gauge_mode mode, uint32_t nbuckets,
		   const struct shmet_values *v, bool live)
{
	switch (type) {
	case SHMET_COUNTER:
		/* every whole part is summed exactly, and joins the float sum
		 * once, at shmet_agg_finish: no wrap, no saturation, one rounding */
		acc->whole_exact += v->whole;
		/* fall through */
	case SHMET_SUMMARY:
		acc->whole = shmet_sat_add(acc->whole, v->whole);
		shmet_xsum_add_nz(&acc->xs, v->value);
		shmet_xsum_add_nz(&acc->xs, v->value_lo[0]);
		shmet_xsum_add_nz(&acc->xs, v->value_lo[1]);
		acc->has = true;
		break;
	case SHMET_HISTOGRAM:
		for (uint32_t i = 0; i <= nbuckets; i++)
			acc->buckets[i] = shmet_sat_add(acc->buckets[i], v->buckets[i]);
		acc->whole = shmet_sat_add(acc->whole, v->whole);
		shmet_xsum_add_nz(&acc->xs, v->value);
		shmet_xsum_add_nz(&acc->xs, v->value_lo[0]);
		shmet_xsum_add_nz(&acc->xs, v->value_lo[1]);
		acc->has = true;
		break;
	case SHMET_GAUGE:
		if (mode == SHMET_GAUGE_MOSTRECENT) {
			if (!acc->has || shmet_most_recent_wins(v->stamp_ns, v->value, acc->stamp_ns, acc->value)) {
				acc->value = v->value;
				acc->stamp_ns = v->stamp_ns;
			}
			acc->has = true;
			break;
		}
		if (!live || ((mode == SHMET_GAUGE_MAX || mode == SHMET_GAUGE_MIN) && v->stamp_ns == 0))
			break; /* dead, or a process that never set this max/min gauge */
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
		break;
	}
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
	struct keymap *series; /* per family: label values -> index in its series */
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
		struct keymap *ns = realloc(ix->series, cap * sizeof *ns);
		if (!ns)
			return NULL;
		ix->series = ns;
	}
	struct shmet_snap_family *nf = s->families;
	struct shmet_snap_family *f = &nf[s->nfamilies];
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
	memset(&ix->series[s->nfamilies], 0, sizeof ix->series[0]);
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

static struct shmet_snap_series *get_series(struct shmet_snap_family *f, struct keymap *index, char *key,
					    char **values)
{
	size_t n = 0;
	for (uint32_t i = 0; i < f->nlabels; i++) {
		size_t l = strlen(values[i]);
		if (n + l + 1 > SNAP_KEY_CAP)
			return NULL;
		memcpy(key + n, values[i], l);
		n += l;
		key[n++] = '\xff'; /* never in UTF-8 */
	}
	struct kv *kv = keymap_find(index, key, n);
	if (kv)
		return &f->series[kv->val];
	if (full(f->nseries)) {
		struct shmet_snap_series *ns = realloc(f->series, (f->nseries ? 2 * f->nseries : 1) * sizeof *ns);
		if (!ns)
			return NULL;
		f->series = ns;
	}
	struct shmet_snap_series *r = &f->series[f->nseries];
	memset(r, 0, sizeof *r);
	r->values = calloc(f->nlabels + 1, sizeof(char *));
	if (!r->values)
		return NULL;
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (!(r->values[i] = strdup(values[i]))) {
			while (i--)
				free(r->values[i]);
			free(r->values);
			return NULL;
		}
	if (keymap_put(index, key, n, (uint32_t)f->nseries) != 0) {
		for (uint32_t i = 0; i < f->nlabels; i++)
			free(r->values[i]);
		free(r->values);
		return NULL;
	}
	f->nseries++;
	return r;
}

static void snap_area(struct shmet_snapshot *s, struct snap_index *ix, const struct shmet_area *a, int worker,
		      bool live)
{
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
		const struct shmet_family_view *reg = shmet_registry_check(&ix->reg, &r.fam);
		if (!reg) {
			s->conflicts++; /* unregistered, or not the registered shape: never exposed */
			continue;
		}
		struct shmet_snap_family *f = find_family(s, ix, reg->name, reg->name_len);
		if (!f && !(f = add_family(s, ix, reg)))
			continue;
		bool per_worker = f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER;
		if (per_worker && !live)
			continue;
		char *values[SHMET_MAX_LABELS + 1];
		char wbuf[16];
		uint32_t k;
		for (k = 0; k < r.series.nvalues; k++)
			if (!(values[k] = dupn(r.series.values[k], r.series.value_lens[k])))
				break;
		if (k == r.series.nvalues) {
			if (per_worker) {
				snprintf(wbuf, sizeof wbuf, "%d", worker);
				values[k] = wbuf;
			}
			struct shmet_snap_series *ser = get_series(f, &ix->series[f - s->families], ix->key, values);
			if (ser) {
				struct shmet_values v;
				shmet_read_cells(a, &r.fam, &r.series, &v);
				shmet_agg_add(&ser->agg, f->type, f->mode, f->nbuckets, &v, live);
			}
		}
		while (k--)
			free(values[k]);
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
	unsigned active = shmet_retired_active(seg);
	const struct shmet_retired_header *rh = shmet_retired_header(seg, active);
	struct shmet_area a;
	if (shmet_retired_area(seg, active, &a, s->err) != SHMET_OK)
		s->corrupt++;
	snap_area(s, &ix, &a, -1, false);
	s->dropped = __atomic_load_n(&rh->rh_dropped, __ATOMIC_RELAXED) +
		     __atomic_load_n(&seg->map.hdr->sh_dropped_orphan, __ATOMIC_RELAXED);
	for (uint32_t i = 0; i < seg->regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(seg, i, &info);
		if (info.state != SHMET_REGION_LIVE ||
		    __atomic_load_n(&rh->rh_folded_gen[i], __ATOMIC_RELAXED) == info.generation)
			continue;
		char why[SHMET_ERRBUF];
		if (shmet_region_area(seg, i, &a, why) != SHMET_OK) {
			s->corrupt++;
			if (!s->err[0])
				snprintf(s->err, sizeof s->err, "region %u: %s", i, why);
		}
		s->dropped += info.dropped;
		snap_area(s, &ix, &a, (int)i, shmet_region_gauges_live(&info));
	}
	for (size_t i = 0; i < s->nfamilies; i++)
		keymap_free(&ix.series[i]);
	free(ix.series);
	keymap_free(&ix.fams);
	shmet_registry_free(&ix.reg);
	free(ix.key);
	for (size_t i = 0; i < s->nfamilies; i++)
		for (size_t j = 0; j < s->families[i].nseries; j++)
			shmet_agg_finish(&s->families[i].series[j].agg, s->families[i].type);
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
		for (size_t j = 0; j < f->nseries; j++) {
			for (uint32_t k = 0; k < f->nlabels; k++)
				free(f->series[j].values[k]);
			free(f->series[j].values);
		}
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
