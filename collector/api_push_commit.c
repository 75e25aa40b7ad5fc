/* Phases 2 to 4 of a push, under push_mu: the request resolved against
 * what exists (the families and series this process pushed, those the
 * request is about to create, and the view of the segment), its new
 * families and series priced in region bytes by the writer's own
 * arithmetic (shmet__family_bytes, shmet__series_bytes) and checked
 * against what is free, name clashes decided by the layout's one rule
 * (shmet_names_clash), then the commit through the writer's API:
 * shmet_register, shmet_series_lookup and the hot-path writes.  And a push
 * region taken back after a restart (shmet__adopt_family/series). */
#include "api_push_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <urcu-bp.h>

/* The per-sample work area of a request, kept per thread between requests
 * (a 1,000-sample batch needs ~450 KB: malloc would map and fault it in
 * afresh for every request). */
static __thread struct item *scratch;
static __thread size_t scratch_cap;
static pthread_key_t scratch_key;

static void scratch_free(void *p) { free(p); }

int push_commit_init(char *err, size_t errlen)
{
	if (pthread_key_create(&scratch_key, scratch_free) != 0) {
		snprintf(err, errlen, "pthread_key_create failed");
		return SHMET_E_SYS;
	}
	return SHMET_OK;
}

void push_family_free(struct push_family *f)
{
	if (!f)
		return;
	free(f->name);
	free(f->help);
	for (uint32_t i = 0; i < f->nlabels; i++)
		free(f->label_names[i]);
	keymap_free(&f->series);
	free(f);
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);
	return d ? memcpy(d, s, n) : NULL;
}


/* Room in a->fams for one more family: 0, or -1 when out of memory. */
static int fams_room(struct api *a)
{
	if (a->nfams < a->fams_cap)
		return 0;
	uint32_t cap = a->fams_cap ? a->fams_cap * 2 : 16;
	struct push_family **n = realloc(a->fams, cap * sizeof *n);
	if (!n)
		return -1;
	a->fams = n;
	a->fams_cap = cap;
	return 0;
}

/* ---- a push region taken back from an earlier collector ----
 * Its families and series become this process's again (the writer's index
 * and ours), so pushes land in the same cells and no record is written
 * twice.  Only what a push could have made is taken: counters, histograms,
 * summaries and most-recent gauges, each family once; anything else in the
 * region stays as it is and keeps adding up in the view. */

/* The writer's registration of a pushed family: pushed gauges are
 * most-recent, so a restarted collector's value carries over. */
static void push_spec(const struct push_family *f, struct shmet_family_spec *spec)
{
	memset(spec, 0, sizeof *spec);
	spec->type = f->type;
	spec->name = f->name;
	spec->help = f->help;
	spec->nlabels = f->nlabels;
	spec->label_names = (const char *const *)f->label_names;
	spec->gauge_mode = SHMET_GAUGE_MOSTRECENT;
	spec->nbuckets = f->nbuckets;
	spec->buckets = f->bounds;
	spec->series_limit = SHMET_SERIES_UNLIMITED; /* the push API bounds its series itself */
}

int push_adopt_index(struct api *a)
{
	struct collector *c = a->c;
	struct shmet_area area;
	char why[SHMET_ERRBUF];
	if (shmet_region_area(&c->seg, (uint32_t)a->region, &area, why) != SHMET_OK) {
		collector_log("push: region %d: %s", a->region, why);
		return -1;
	}
	struct keymap by_off = {0}; /* family record offset -> index in a->fams + 1 */
	struct shmet_dir_iter it;
	struct shmet_record r;
	char key[SHMET_SERIES_KEY_MAX];
	uint32_t nf = 0, ns = 0;
	int rc;
	shmet_dir_begin(&it, &area);
	while ((rc = shmet_dir_next(&it, &r, why)) != 0) {
		if (rc < 0)
			continue;
		const struct shmet_family_view *fv = &r.fam;
		uint32_t foff = fv->off;
		if (r.kind == SHMET_REC_FAMILY) {
			if ((fv->type == SHMET_GAUGE && fv->mode != SHMET_GAUGE_MOSTRECENT) ||
			    keymap_find(&a->fam_index, fv->name, fv->name_len))
				continue;
			struct push_family *f = calloc(1, sizeof *f);
			if (!f)
				goto oom;
			f->type = fv->type;
			f->nlabels = fv->nlabels;
			f->nbuckets = fv->nbuckets;
			for (uint32_t i = 0; i < fv->nbuckets; i++)
				f->bounds[i] = shmet_bound(fv, i);
			f->name = malloc(fv->name_len + 1);
			f->help = malloc(fv->help_len + 1);
			bool ok = f->name && f->help;
			for (uint32_t i = 0; ok && i < fv->nlabels; i++) {
				ok = (f->label_names[i] = malloc(fv->label_lens[i] + 1)) != NULL;
				if (ok) {
					memcpy(f->label_names[i], fv->label_names[i], fv->label_lens[i]);
					f->label_names[i][fv->label_lens[i]] = 0;
				}
			}
			if (!ok) {
				push_family_free(f);
				goto oom;
			}
			memcpy(f->name, fv->name, fv->name_len);
			f->name[fv->name_len] = 0;
			memcpy(f->help, fv->help, fv->help_len);
			f->help[fv->help_len] = 0;
			struct shmet_family_spec spec;
			push_spec(f, &spec);
			size_t nl = fv->name_len;
			if ((f->type == SHMET_HISTOGRAM && f->nbuckets == 0) ||
			    (f->type == SHMET_COUNTER && !(nl > 6 && memcmp(f->name + nl - 6, "_total", 6) == 0))) {
				/* the writer would register another shape (default
				 * buckets) or name (_total appended) than the record's */
				push_family_free(f);
				continue;
			}
			if (shmet__adopt_family(&spec, foff, &f->fam) != SHMET_OK) {
				collector_log("push: region %d: family %s not taken back: %s", a->region, f->name,
					      shmet_last_error());
				push_family_free(f);
				continue;
			}
			if (fams_room(a) != 0) {
				push_family_free(f);
				goto oom;
			}
			if (keymap_put(&a->fam_index, f->name, strlen(f->name), a->nfams) != 0 ||
			    keymap_put(&by_off, (const char *)&foff, sizeof foff, a->nfams + 1) != 0) {
				push_family_free(f);
				goto oom;
			}
			a->fams[a->nfams++] = f;
			nf++;
			continue;
		}
		struct kv *kv = keymap_find(&by_off, (const char *)&foff, sizeof foff);
		if (!kv)
			continue;
		struct push_family *f = a->fams[kv->val - 1];
		char vals[SHMET_MAX_LABELS][SHMET_MAX_VALUE_LEN + 1];
		const char *values[SHMET_MAX_LABELS];
		for (uint32_t i = 0; i < r.series.nvalues; i++) {
			memcpy(vals[i], r.series.values[i], r.series.value_lens[i]);
			vals[i][r.series.value_lens[i]] = 0;
			values[i] = vals[i];
		}
		size_t kl = push_series_key(key, values, f->nlabels);
		if (keymap_find(&f->series, key, kl) ||
		    shmet__adopt_series(f->fam, values, r.series.cell_off) != SHMET_OK)
			continue;
		if (keymap_put(&f->series, key, kl, r.series.cell_off) != 0)
			goto oom;
		ns++;
	}
	/* the same families' series elsewhere in the segment count toward the
	 * series limit, as for a family first pushed after a restart */
	const struct view *v = c->view;
	for (uint32_t k = 0; v && k < a->nfams; k++) {
		struct push_family *f = a->fams[k];
		const struct view_family *vf = api_view_family(v, f->name);
		for (uint32_t i = 0; vf && vf->nlabels == f->nlabels && i < vf->nseries; i++) {
			size_t kl = push_series_key(key, vf->series[i].values, vf->nlabels);
			if (!keymap_find(&f->series, key, kl) && keymap_put(&f->series, key, kl, 0) != 0)
				goto oom;
		}
	}
	keymap_free(&by_off);
	collector_log("push: region %d taken back with %u families and %u series", a->region, nf, ns);
	return 0;
oom:
	keymap_free(&by_off);
	collector_log("push: out of memory while taking back region %d", a->region);
	return -1;
}

/* ---- phase 2: resolve against what exists ---- */

/* Type of an existing or planned family with this name, 0 when none. */
static enum shmet_type known_type(struct req *r, const struct view *v, const char *name)
{
	struct kv *kv = keymap_find(&r->a->fam_index, name, strlen(name));
	if (kv)
		return r->a->fams[kv->val]->type;
	kv = keymap_find(&r->tindex, name, strlen(name));
	if (kv && r->t[kv->val].f)
		return r->t[kv->val].f->type;
	const struct view_family *vf = api_view_family(v, name);
	return vf ? vf->type : 0;
}

/* Would a family (name, type) share a sample name with another family,
 * pushed, planned or in the segment?  The layout's one rule decides
 * (shmet_names_clash, as the writer's registration does).  The names tried
 * are those a clashing family could have: each of our sample names as a
 * family's own name, with a sample suffix taken off, and either as a
 * counter's (with _total).  The family with the very same name is not a
 * clash here (it is checked for the same shape). */
static const char *name_clash(struct req *r, const struct view *v, const char *name, enum shmet_type type,
			      char *other, size_t cap)
{
	static const char *const sfx[] = {"", "_bucket", "_sum", "_count", "_created"};
	char own[5][SHMET__SAMPLE_NAME_MAX];
	size_t lens[5], n = strlen(name);
	int k = shmet__sample_names(name, n, type, own, lens);
	for (int i = 0; i < k; i++)
		for (size_t j = 0; j < sizeof sfx / sizeof *sfx; j++) {
			size_t sl = strlen(sfx[j]);
			if (lens[i] < sl || memcmp(own[i] + lens[i] - sl, sfx[j], sl) != 0)
				continue;
			for (int total = 0; total < 2; total++) {
				snprintf(other, cap, "%.*s%s", (int)(lens[i] - sl), own[i], total ? "_total" : "");
				size_t ol = strlen(other);
				enum shmet_type t;
				if ((ol == n && memcmp(other, name, n) == 0) || !(t = known_type(r, v, other)))
					continue;
				if (shmet_names_clash(name, n, type, other, ol, t))
					return shmet_type_name(t);
			}
		}
	return NULL;
}

static const uint32_t NO_T = UINT32_MAX;

static uint32_t touched_bad(struct req *r, uint32_t ti, const char *field, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static uint32_t touched_bad(struct req *r, uint32_t ti, const char *field, const char *code, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct touched *t = &r->t[ti];
	push_family_free(t->f);
	t->f = NULL;
	t->err_field = field;
	t->err_code = code;
	t->err = xstrdup(msg);
	return ti;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* The family an item names: pushed before, planned by an earlier item of
 * this request, adopted from the segment, or a new plan. */
static uint32_t touch(struct req *r, const struct view *v, const struct item *it, const char *name)
{
	struct api *a = r->a;
	if (r->nt == r->tcap) {
		uint32_t cap = r->tcap ? r->tcap * 2 : 16;
		struct touched *n = realloc(r->t, cap * sizeof *n);
		if (!n)
			return NO_T;
		r->t = n;
		r->tcap = cap;
	}
	uint32_t ti = r->nt;
	struct touched *t = &r->t[ti];
	memset(t, 0, sizeof *t);
	if (keymap_put(&r->tindex, name, strlen(name), ti) != 0)
		return NO_T;
	r->nt++;
	struct kv *kv = keymap_find(&a->fam_index, name, strlen(name));
	if (kv) {
		t->f = a->fams[kv->val];
		return ti;
	}
	char other[SHMET_MAX_NAME_LEN + 16];
	const char *otype = name_clash(r, v, name, it->type, other, sizeof other);
	if (otype)
		return touched_bad(r, ti, "name", "name_clash",
				   "%s \"%s\" would clash with the samples of the %s family \"%s\"", shmet_type_name(it->type),
				   name, otype, other);
	struct push_family *f = calloc(1, sizeof *f);
	if (!f || !(f->name = xstrdup(name))) {
		free(f);
		return NO_T;
	}
	t->f = f;
	t->is_new = true;
	f->type = it->type;
	const struct view_family *vf = api_view_family(v, name);
	if (vf) {
		/* Already in the segment (another process, or the retired totals of
		 * an earlier collector): push into it only if our registration
		 * would have the very same shape, or the view would drop one side. */
		if (vf->type != it->type)
			return touched_bad(r, ti, "type", "type_clash", "\"%s\" exists in the segment as a %s, not a %s",
					   name, shmet_type_name(vf->type), shmet_type_name(it->type));
		if (vf->type == SHMET_GAUGE && vf->mode != SHMET_GAUGE_MOSTRECENT)
			return touched_bad(r, ti, "type", "type_clash",
					   "gauge \"%s\" exists in the segment in %s mode; pushed gauges are most_recent",
					   name, shmet_gauge_mode_name(vf->mode));
		if (vf->nlabels > SHMET_MAX_LABELS || vf->nbuckets > SHMET_MAX_BUCKETS)
			return touched_bad(r, ti, "name", "type_clash", "\"%s\" in the segment has an unexpected shape",
					   name);
		t->adopted = true;
		f->nlabels = vf->nlabels;
		for (uint32_t i = 0; i < vf->nlabels; i++)
			if (!(f->label_names[i] = xstrdup(vf->label_names[i]))) {
				f->nlabels = i;
				return NO_T;
			}
		f->nbuckets = vf->nbuckets;
		memcpy(f->bounds, vf->bounds, vf->nbuckets * sizeof(double));
		f->help = xstrdup(it->help ? it->help : vf->help);
		/* Its series count toward the limit and need no new name. */
		char *key = malloc(SHMET_SERIES_KEY_MAX);
		if (!key || !f->help) {
			free(key);
			return NO_T;
		}
		for (uint32_t i = 0; i < vf->nseries; i++) {
			size_t kl = push_series_key(key, vf->series[i].values, vf->nlabels);
			if (!keymap_find(&f->series, key, kl) && keymap_put(&f->series, key, kl, 0) != 0) {
				free(key);
				return NO_T;
			}
		}
		free(key);
	} else {
		f->nlabels = it->nlabels;
		const char *sorted[SHMET_MAX_LABELS];
		memcpy(sorted, it->lnames, it->nlabels * sizeof *sorted);
		qsort(sorted, it->nlabels, sizeof *sorted, cmp_str);
		for (uint32_t i = 0; i < it->nlabels; i++)
			if (!(f->label_names[i] = xstrdup(sorted[i]))) {
				f->nlabels = i;
				return NO_T;
			}
		if (it->type == SHMET_HISTOGRAM) {
			static const double defaults[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
			if (it->buckets) {
				f->nbuckets = it->nbuckets;
				for (uint32_t k = 0; k < it->nbuckets; k++)
					f->bounds[k] = json_number_value(json_array_get(it->buckets, k));
			} else {
				f->nbuckets = sizeof defaults / sizeof *defaults;
				memcpy(f->bounds, defaults, sizeof defaults);
			}
		}
		if (!(f->help = xstrdup(it->help ? it->help : "")))
			return NO_T;
	}
	/* priced as the writer will write it */
	struct shmet_family_spec spec;
	push_spec(f, &spec);
	size_t bytes = shmet__family_bytes(&spec);
	if (!bytes)
		return touched_bad(r, ti, "name", "invalid_family", "\"%s\": %s", name, shmet_last_error());
	r->need += bytes;
	return ti;
}

static void label_list(const struct push_family *f, char *out, size_t cap)
{
	size_t n = 0;
	out[0] = 0;
	for (uint32_t i = 0; i < f->nlabels && n + 1 < cap; i++)
		n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? ", " : "", f->label_names[i]);
	if (f->nlabels == 0)
		snprintf(out, cap, "none");
}

/* Phase 2 for one item; false when it failed (errors added). */
static bool resolve_item(struct req *r, const struct view *v, uint32_t idx, struct item *it, char *key)
{
	struct api *a = r->a;
	char name[SHMET_MAX_NAME_LEN + 8];
	push_canonical(it, name);
	uint32_t ti;
	if (r->last_t != NO_T && strcmp(name, r->last_name) == 0) {
		ti = r->last_t;
	} else {
		struct kv *kv = keymap_find(&r->tindex, name, strlen(name));
		ti = kv ? kv->val : touch(r, v, it, name);
		if (ti == NO_T) {
			push_add_error(r, idx, "", "internal", "out of memory");
			return false;
		}
		r->last_t = ti;
		memcpy(r->last_name, name, strlen(name) + 1);
	}
	it->t = ti;
	struct touched *t = &r->t[ti];
	struct push_family *f = t->f;
	if (!f) {
		push_add_error(r, idx, t->err_field, t->err_code, "%s", t->err ? t->err : "out of memory");
		return false;
	}
	if (f->type != it->type) {
		push_add_error(r, idx, "type", "type_clash", "\"%s\" is a %s family, not a %s", name, shmet_type_name(f->type),
			  shmet_type_name(it->type));
		return false;
	}
	/* the family's label names, each given once (a JSON object has no
	 * duplicate keys: the parser refuses them) */
	bool match = it->nlabels == f->nlabels;
	for (uint32_t i = 0; match && i < f->nlabels; i++) {
		it->values[i] = NULL;
		for (uint32_t k = 0; k < it->nlabels; k++)
			if (strcmp(f->label_names[i], it->lnames[k]) == 0)
				it->values[i] = it->lvalues[k];
		match = it->values[i] != NULL;
	}
	if (!match) {
		char list[512];
		label_list(f, list, sizeof list);
		push_add_error(r, idx, "labels", "label_mismatch", "\"%s\" has the labels [%s]", name, list);
		return false;
	}
	if (it->buckets) {
		bool same = it->nbuckets == f->nbuckets;
		for (uint32_t k = 0; same && k < f->nbuckets; k++)
			same = json_number_value(json_array_get(it->buckets, k)) == f->bounds[k];
		if (!same) {
			push_add_error(r, idx, "buckets", "buckets_mismatch",
				  "\"%s\" exists with other buckets (leave buckets out to use its own)", name);
			return false;
		}
	}
	/* the series: ours, elsewhere in the segment, or new */
	memcpy(key, &ti, 4);
	size_t kl = push_series_key(key + 4, it->values, f->nlabels);
	struct kv *kv = keymap_find(&f->series, key + 4, kl);
	it->off = kv ? kv->val : 0;
	it->adopted = kv != NULL;
	if (it->off)
		return true;
	if (keymap_find(&r->pending, key, kl + 4))
		return true; /* an earlier item of this request creates it */
	if (!kv) {
		uint64_t have = f->series.used + t->new_series;
		if (have >= a->c->cfg.push_series_limit) {
			push_add_error(r, idx, "labels", "series_limit",
				  "\"%s\" already has %llu series: at most %u (--push-series-limit)", name,
				  (unsigned long long)have, a->c->cfg.push_series_limit);
			return false;
		}
		t->new_series++;
	}
	if (keymap_put(&r->pending, key, kl + 4, idx) != 0) {
		push_add_error(r, idx, "", "internal", "out of memory");
		return false;
	}
	r->need += shmet__series_bytes(f->type, f->nbuckets, f->nlabels, it->values);
	return true;
}

static uint64_t region_free(const struct api *a)
{
	const struct shmet_segment *seg = &a->c->seg;
	const struct shmet_region_header *rg =
		(const void *)(seg->map.base + seg->regions_off + (uint64_t)a->region * seg->region_size);
	uint64_t end = __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE);
	uint64_t low = __atomic_load_n(&rg->rg_cell_low, __ATOMIC_RELAXED);
	return low > end ? low - end : 0;
}

/* The current aggregate of a gauge series in the view, for a series that
 * moves into our region: an inc after a restart continues from it. */
static bool view_gauge_value(const struct view *v, const struct push_family *f, const char *const *values,
			     double *out)
{
	const struct view_family *vf = api_view_family(v, f->name);
	if (!vf || vf->nlabels != f->nlabels)
		return false;
	uint32_t lo = 0, hi = vf->nseries;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = 0;
		for (uint32_t i = 0; i < f->nlabels && !c; i++)
			c = strcmp(vf->series[mid].values[i], values[i]);
		if (c == 0) {
			struct shmet_agg acc;
			view_series_agg(vf, &vf->series[mid], &acc);
			*out = acc.value;
			return acc.has;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static void write_value(const struct push_family *f, const struct item *it)
{
	switch (f->type) {
	case SHMET_COUNTER: {
		shmet_counter h = {it->off};
		if (it->is_int)
			shmet_counter_add_u64(h, it->u);
		else
			shmet_counter_add(h, it->v);
		break;
	}
	case SHMET_GAUGE: {
		shmet_gauge h = {it->off, SHMET_GAUGE_MOSTRECENT, shmet__stamp_kind(SHMET_GAUGE_MOSTRECENT)};
		if (it->op == OP_SET)
			shmet_gauge_set(h, it->v);
		else
			shmet_gauge_add(h, it->v);
		break;
	}
	case SHMET_HISTOGRAM: {
		shmet_histogram h = {it->off, f->nbuckets, f->bounds};
		shmet_histogram_observe(h, it->v);
		break;
	}
	case SHMET_SUMMARY: {
		shmet_summary h = {it->off};
		shmet_summary_observe(h, it->v);
		break;
	}
	}
}

static void req_free(struct req *r)
{
	for (uint32_t i = 0; i < r->nt; i++) {
		if (r->t[i].is_new)
			push_family_free(r->t[i].f);
		free(r->t[i].err);
	}
	free(r->t);
	keymap_free(&r->tindex);
	keymap_free(&r->pending);
	json_decref(r->errors);
}

/* Phases 1 to 5 for samples[0..n). */
enum MHD_Result push_samples(struct api *a, struct MHD_Connection *conn, json_t *const *samples, uint32_t n)
{
	struct req r;
	memset(&r, 0, sizeof r);
	r.a = a;
	r.n = n;
	r.last_t = NO_T;
	r.errors = json_array();
	if (scratch_cap < n) {
		free(scratch);
		scratch = malloc(n * sizeof *scratch);
		scratch_cap = scratch ? n : 0;
		pthread_setspecific(scratch_key, scratch); /* freed when the thread exits */
	}
	r.items = scratch;
	char *key = malloc(SHMET_SERIES_KEY_MAX + 8);
	enum MHD_Result ret;
	if (!r.errors || !r.items || !key) {
		free(key);
		req_free(&r);
		return api_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
	}
	/* phase 1, no lock */
	for (uint32_t i = 0; i < n; i++)
		push_parse_item(&r, i, samples[i], &r.items[i]);
	uint32_t fams_created = 0, series_created = 0;
	if (r.nerrors)
		goto invalid;

	/* phase 2 */
	pthread_mutex_lock(&a->push_mu);
	const struct view *v = view_enter(a->c);
	for (uint32_t i = 0; i < n; i++)
		resolve_item(&r, v, i, &r.items[i], key);
	if (r.nerrors) {
		view_leave(a->c);
		pthread_mutex_unlock(&a->push_mu);
		goto invalid;
	}
	uint64_t avail = region_free(a);
	if (r.need > avail) {
		view_leave(a->c);
		pthread_mutex_unlock(&a->push_mu);
		ret = push_reject(a, conn, MHD_HTTP_INSUFFICIENT_STORAGE,
			     json_pack("{s:s, s:i, s:I, s:I}", "error",
				       "the push region is full: this request's new families and series do not fit; "
				       "nothing was applied",
				       "applied", 0, "bytes_needed", (json_int_t)r.need, "bytes_free", (json_int_t)avail));
		goto out;
	}

	/* phase 3: names */
	const char *fail = NULL;
	for (uint32_t i = 0; i < r.nt && !fail; i++) {
		struct touched *t = &r.t[i];
		if (!t->is_new)
			continue;
		struct push_family *f = t->f;
		struct shmet_family_spec spec;
		push_spec(f, &spec);
		if (fams_room(a) != 0) {
			fail = "out of memory";
			break;
		}
		if (shmet_register(&spec, &f->fam) != SHMET_OK) {
			fail = shmet_last_error();
			break;
		}
		if (keymap_put(&a->fam_index, f->name, strlen(f->name), a->nfams) != 0) {
			fail = "out of memory";
			break;
		}
		a->fams[a->nfams++] = f;
		t->is_new = false; /* a->fams owns it now */
		fams_created++;
	}
	for (uint32_t i = 0; i < n && !fail; i++) {
		struct item *it = &r.items[i];
		if (it->off)
			continue;
		struct push_family *f = r.t[it->t].f;
		size_t kl = push_series_key(key, it->values, f->nlabels);
		struct kv *kv = keymap_find(&f->series, key, kl);
		if (kv && kv->val) {
			it->off = kv->val; /* an earlier item created it */
			continue;
		}
		double init = 0;
		bool carry = f->type == SHMET_GAUGE && kv && view_gauge_value(v, f, it->values, &init);
		if (shmet_series_lookup(f->fam, it->values, &it->off) != SHMET_OK) {
			fail = shmet_last_error();
			break;
		}
		if (kv)
			kv->val = it->off;
		else if (keymap_put(&f->series, key, kl, it->off) != 0) {
			fail = "out of memory";
			break;
		}
		if (carry) {
			shmet_gauge h = {it->off, SHMET_GAUGE_MOSTRECENT, shmet__stamp_kind(SHMET_GAUGE_MOSTRECENT)};
			shmet_gauge_set(h, init);
		}
		series_created++;
	}
	view_leave(a->c);
	if (fail) {
		pthread_mutex_unlock(&a->push_mu);
		collector_log("push: registration failed after the capacity check: %s", fail);
		ret = push_reject(a, conn, MHD_HTTP_INSUFFICIENT_STORAGE,
			     json_pack("{s:s, s:i, s:i, s:i}", "error", fail, "applied", 0, "families_registered",
				       (int)fams_created, "series_registered", (int)series_created));
		goto out;
	}

	/* phase 4: values, into the push region (not one per HTTP thread):
	 * push_mu serializes every write to its cells */
	shmet__share_process_region();
	for (uint32_t i = 0; i < n; i++)
		write_value(r.t[r.items[i].t].f, &r.items[i]);
	pthread_mutex_unlock(&a->push_mu);
	__atomic_fetch_add(&a->st_samples, n, __ATOMIC_RELAXED);
	if (series_created) {
		__atomic_fetch_add(&a->st_series_created, series_created, __ATOMIC_RELAXED);
		/* new series show in /metrics after a scan: ask for one now */
		pthread_mutex_lock(&a->c->wake_mu);
		pthread_cond_signal(&a->c->wake);
		pthread_mutex_unlock(&a->c->wake_mu);
	}
	ret = api_send(conn, MHD_HTTP_OK,
		       json_pack("{s:s, s:i, s:i, s:i}", "status", "ok", "applied", (int)n, "families_created",
				 (int)fams_created, "series_created", (int)series_created),
		       NULL);
	goto out;

invalid: {
	char msg[160];
	snprintf(msg, sizeof msg, "%u error%s in %u sample%s; nothing was applied", r.nerrors, r.nerrors == 1 ? "" : "s",
		 n, n == 1 ? "" : "s");
	json_t *j = json_pack("{s:s, s:i, s:i, s:O}", "error", msg, "applied", 0, "errors_total", (int)r.nerrors,
			      "errors", r.errors);
	ret = push_reject(a, conn, MHD_HTTP_UNPROCESSABLE_CONTENT, j);
}
out:
	free(key);
	req_free(&r);
	return ret;
}


/* ---- DELETE: REMOVAL of pushed series ---- */

struct delete_args {
	const struct push_family *f;
	const char *unknown; /* a query key that is neither name nor a label */
	uint32_t nlabels;    /* label arguments given */
};

static enum MHD_Result delete_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	(void)kind;
	(void)value;
	struct delete_args *d = cls;
	if (strcmp(key, "name") == 0)
		return MHD_YES;
	for (uint32_t i = 0; i < d->f->nlabels; i++)
		if (strcmp(key, d->f->label_names[i]) == 0) {
			d->nlabels++;
			return MHD_YES;
		}
	if (!d->unknown)
		d->unknown = key;
	return MHD_YES;
}

enum MHD_Result push_delete(struct api *a, struct MHD_Connection *conn)
{
	const char *name = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "name");
	if (!name || !*name)
		return push_reject(a, conn, MHD_HTTP_BAD_REQUEST,
				   json_pack("{s:s, s:s}", "error", "DELETE needs ?name=FAMILY (and every label, or none)",
					     "field", "name"));
	char canon[SHMET_MAX_NAME_LEN + 8];
	int cl = snprintf(canon, sizeof canon, "%s_total", name);
	pthread_mutex_lock(&a->push_mu);
	struct kv *kv = strlen(name) <= SHMET_MAX_NAME_LEN ? keymap_find(&a->fam_index, name, strlen(name)) : NULL;
	if (!kv && cl > 0 && (size_t)cl < sizeof canon) /* a counter's family is named with _total */
		kv = keymap_find(&a->fam_index, canon, (size_t)cl);
	const struct push_family *f = kv ? a->fams[kv->val] : NULL;
	enum MHD_Result ret;
	if (!f || !f->fam) {
		pthread_mutex_unlock(&a->push_mu);
		return push_reject(a, conn, MHD_HTTP_NOT_FOUND,
				   json_pack("{s:s, s:s}", "error", "no family of that name was pushed to this collector",
					     "field", "name"));
	}
	struct delete_args d = {f, NULL, 0};
	MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, delete_arg, &d);
	if (d.unknown || (d.nlabels && d.nlabels != f->nlabels)) {
		char want[SHMET_MAX_LABELS * (SHMET_MAX_NAME_LEN + 2) + 8], msg[sizeof want + 200];
		label_list(f, want, sizeof want);
		snprintf(msg, sizeof msg, "give every label of %s (%s) to remove one series, or none to remove all", f->name,
			 want);
		pthread_mutex_unlock(&a->push_mu);
		return push_reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "labels"));
	}
	const char *values[SHMET_MAX_LABELS];
	for (uint32_t i = 0; i < d.nlabels; i++)
		values[i] = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, f->label_names[i]);
	int rc = d.nlabels ? shmet_series_remove(f->fam, values) : shmet_family_clear(f->fam);
	json_t *j = rc == SHMET_OK ? json_pack("{s:s, s:s}", "removed", f->name, "scope", d.nlabels ? "series" : "family")
				   : json_pack("{s:s}", "error", shmet_last_error());
	pthread_mutex_unlock(&a->push_mu);
	ret = rc == SHMET_OK ? api_send(conn, MHD_HTTP_OK, j, NULL)
			     : push_reject(a, conn, rc == SHMET_E_REGISTRY_FULL ? MHD_HTTP_INSUFFICIENT_STORAGE
										 : MHD_HTTP_BAD_REQUEST,
					   j);
	return ret;
}
