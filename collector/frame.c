/* The dashboard's frames: samples of the segment and the rates between
 * two of them (see frame.h). */
#include "frame.h"

#include "api_int.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fam_total {
	const char *name; /* points into the sample's own copy */
	enum shmet_type type;
	double v;   /* counter: total; histogram, summary: count; gauge: combined value (NaN: none) */
};

struct frame_sample {
	uint64_t ns;
	uint32_t nfam;
	struct fam_total *fam; /* sorted by name, like the view */
	/* requests: total by route, and by status class 1xx..5xx, other */
	bool has_req;
	uint32_t nroutes;
	const char **route;
	double *route_total;
	double req_total, cls[6];
	/* latency: cumulative bucket counts summed over the series, +Inf last */
	uint32_t nb;
	double *bounds, *cum;
	double in_flight, leads, conversions, revenue; /* NaN: no such family */
	struct view_stats stats;
	char *strings; /* every name above */
};

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int label_index(const struct view_family *f, const char *const *names)
{
	for (; *names; names++)
		for (uint32_t i = 0; i < f->nlabels; i++)
			if (strcmp(f->label_names[i], *names) == 0)
				return (int)i;
	return -1;
}

/* A gauge family's one value: the sum over its series (max or min for
 * those modes), NaN when no live process holds one. */
static double gauge_value(const struct view_family *f)
{
	double v = NAN;
	struct shmet_agg acc;
	for (uint32_t s = 0; s < f->nseries; s++) {
		view_series_agg(f, &f->series[s], &acc);
		if (!acc.has)
			continue;
		if (isnan(v))
			v = acc.value;
		else if (f->mode == SHMET_GAUGE_MAX)
			v = acc.value > v ? acc.value : v;
		else if (f->mode == SHMET_GAUGE_MIN)
			v = acc.value < v ? acc.value : v;
		else
			v += acc.value;
	}
	return v;
}

static void requests(struct frame_sample *p, const struct view_family *f, char **mem)
{
	static const char *const route_names[] = {"route", "handler", "path", NULL};
	static const char *const status_names[] = {"status", "code", NULL};
	int rl = label_index(f, route_names), sl = label_index(f, status_names);
	struct shmet_agg acc;
	p->has_req = true;
	for (uint32_t s = 0; s < f->nseries; s++) {
		view_series_agg(f, &f->series[s], &acc);
		double val = shmet_agg_value(&acc, f->type);
		p->req_total += val;
		if (sl >= 0) {
			const char *st = f->series[s].values[sl];
			bool three = st[0] >= '1' && st[0] <= '5' && st[1] >= '0' && st[1] <= '9' && st[2] >= '0' &&
				     st[2] <= '9' && st[3] == 0;
			p->cls[three ? st[0] - '1' : 5] += val;
		}
		const char *route = rl >= 0 ? f->series[s].values[rl] : "all";
		uint32_t r = 0;
		while (r < p->nroutes && strcmp(p->route[r], route) != 0)
			r++;
		if (r == p->nroutes) {
			if (p->nroutes == FRAME_MAX_ROUTES)
				continue; /* the total above still has it */
			size_t l = strlen(route) + 1;
			p->route[r] = memcpy(*mem, route, l);
			*mem += l;
			p->route_total[r] = 0;
			p->nroutes++;
		}
		p->route_total[r] += val;
	}
}

static void latency(struct frame_sample *p, const struct view_family *f)
{
	struct shmet_agg acc;
	p->nb = f->nbuckets;
	memcpy(p->bounds, f->bounds, f->nbuckets * sizeof(double));
	memset(p->cum, 0, (f->nbuckets + 1) * sizeof(double));
	for (uint32_t s = 0; s < f->nseries; s++) {
		view_series_agg(f, &f->series[s], &acc);
		uint64_t cum = 0;
		for (uint32_t b = 0; b <= f->nbuckets; b++) {
			cum += acc.buckets[b];
			p->cum[b] += (double)cum;
		}
	}
}

struct frame_sample *frame_sample(struct collector *c)
{
	struct frame_sample *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->in_flight = p->leads = p->conversions = p->revenue = NAN;
	const struct view *v = view_enter(c);
	size_t text = 0;
	uint32_t n = 0;
	for (uint32_t i = 0; i < v->nfamilies && n < FRAME_MAX_FAMILIES; i++)
		if (v->families[i].nseries && strncmp(v->families[i].name, SHMET_RESERVED_PREFIX, 11) != 0) {
			text += strlen(v->families[i].name) + 1;
			n++;
		}
	const struct view_family *req = NULL, *dur = NULL;
	for (uint32_t i = 0; i < v->nfamilies; i++) {
		const struct view_family *f = &v->families[i];
		if (!req && f->type == SHMET_COUNTER && ends_with(f->name, FRAME_SUFFIX_REQUESTS))
			req = f;
		if (!dur && f->type == SHMET_HISTOGRAM && ends_with(f->name, FRAME_SUFFIX_DURATION))
			dur = f;
	}
	if (req)
		for (uint32_t s = 0; s < req->nseries; s++)
			for (uint32_t l = 0; l < req->nlabels; l++)
				text += strlen(req->series[s].values[l]) + 1; /* more than the routes need */
	p->fam = calloc(n ? n : 1, sizeof *p->fam);
	p->strings = malloc(text + 4);
	p->route = calloc(FRAME_MAX_ROUTES, sizeof *p->route);
	p->route_total = calloc(FRAME_MAX_ROUTES, sizeof *p->route_total);
	p->bounds = calloc(SHMET_MAX_BUCKETS + 1, sizeof *p->bounds);
	p->cum = calloc(SHMET_MAX_BUCKETS + 1, sizeof *p->cum);
	if (!p->fam || !p->strings || !p->route || !p->route_total || !p->bounds || !p->cum) {
		view_leave(c);
		frame_sample_free(p);
		return NULL;
	}
	char *mem = p->strings;
	memcpy(mem, "all", 4); /* the route of a request family without a route label */
	mem += 4;
	struct shmet_agg acc;
	for (uint32_t i = 0; i < v->nfamilies && p->nfam < n; i++) {
		const struct view_family *f = &v->families[i];
		if (!f->nseries || strncmp(f->name, SHMET_RESERVED_PREFIX, 11) == 0)
			continue;
		struct fam_total *t = &p->fam[p->nfam++];
		size_t l = strlen(f->name) + 1;
		t->name = memcpy(mem, f->name, l);
		mem += l;
		t->type = f->type;
		if (f->type == SHMET_GAUGE) {
			t->v = gauge_value(f);
		} else {
			for (uint32_t s = 0; s < f->nseries; s++) {
				view_series_agg(f, &f->series[s], &acc);
				t->v += f->type == SHMET_COUNTER ? shmet_agg_value(&acc, f->type) : (double)acc.whole;
			}
		}
		if (f->type == SHMET_GAUGE && isnan(p->in_flight) && ends_with(f->name, FRAME_SUFFIX_IN_FLIGHT))
			p->in_flight = t->v;
		if (f->type == SHMET_COUNTER && isnan(p->leads) && ends_with(f->name, FRAME_SUFFIX_LEADS))
			p->leads = t->v;
		if (f->type == SHMET_COUNTER && isnan(p->conversions) && ends_with(f->name, FRAME_SUFFIX_CONVERSIONS))
			p->conversions = t->v;
		if (f->type == SHMET_COUNTER && isnan(p->revenue) && ends_with(f->name, FRAME_SUFFIX_REVENUE))
			p->revenue = t->v;
	}
	if (req)
		requests(p, req, &mem);
	if (dur)
		latency(p, dur);
	p->stats = v->stats;
	view_leave(c);
	p->ns = shmet__now_ns(CLOCK_MONOTONIC);
	return p;
}

void frame_sample_free(struct frame_sample *s)
{
	if (!s)
		return;
	free(s->fam);
	free(s->strings);
	free(s->route);
	free(s->route_total);
	free(s->bounds);
	free(s->cum);
	free(s);
}

uint64_t frame_sample_ns(const struct frame_sample *s)
{
	return s->ns;
}

/* ---- frames ---- */

/* Totals go out exactly (the page shows what /metrics says); rates,
 * ratios and quantiles with 6 significant digits, all a chart can use. */
static json_t *num(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

static json_t *num6(double v)
{
	char s[32];
	if (!isfinite(v))
		return json_null();
	snprintf(s, sizeof s, "%.6g", v);
	return json_real(strtod(s, NULL));
}

static double grew(double now, double then)
{
	return now >= then ? now - then : now; /* went down (a new segment): counted again from zero */
}

/* What grew per second between base and cur; NaN without a base. */
static double rate(double now, double then, double secs)
{
	return secs > 0 && !isnan(now) ? grew(now, isnan(then) ? 0 : then) / secs : NAN;
}

static const struct fam_total *fam_find(const struct frame_sample *p, const char *name)
{
	uint32_t lo = 0, hi = p->nfam;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = strcmp(p->fam[mid].name, name);
		if (c == 0)
			return &p->fam[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static json_t *kpi(double now, double then, double secs)
{
	return json_pack("{s:o, s:o}", "total", num(now), "rate", num6(rate(now, then, secs)));
}

/* Error ratios (4xx and 5xx, and 5xx alone) over the window. */
static void errors(json_t *j, const struct frame_sample *cur, const struct frame_sample *base)
{
	double all = NAN, bad = NAN, server = NAN;
	if (base) { /* a base without the family: it started from zero since */
		all = grew(cur->req_total, base->req_total);
		bad = grew(cur->cls[3] + cur->cls[4], base->cls[3] + base->cls[4]);
		server = grew(cur->cls[4], base->cls[4]);
	}
	json_object_set_new(j, "err", json_pack("{s:o, s:o}", "ratio", num6(all > 0 ? bad / all : NAN), "server",
						 num6(all > 0 ? server / all : NAN)));
}

static void quantiles(json_t *j, const struct frame_sample *cur, const struct frame_sample *base)
{
	double q[3] = {NAN, NAN, NAN};
	if (cur->nb && base) {
		bool same = base->nb == cur->nb && base->cum[base->nb] <= cur->cum[cur->nb];
		for (uint32_t k = 0; same && k < cur->nb; k++)
			same = base->bounds[k] == cur->bounds[k];
		double d[SHMET_MAX_BUCKETS + 1];
		for (uint32_t k = 0; k <= cur->nb; k++)
			d[k] = same ? cur->cum[k] - base->cum[k] : cur->cum[k];
		static const double qs[3] = {0.5, 0.9, 0.99};
		for (int i = 0; i < 3; i++)
			q[i] = api_bucket_quantile(qs[i], cur->bounds, d, cur->nb);
	}
	json_object_set_new(j, "lat", json_pack("{s:o, s:o, s:o}", "p50", num6(q[0]), "p90", num6(q[1]), "p99", num6(q[2])));
}

char *frame_json(const struct frame_sample *cur, const struct frame_sample *base, uint64_t id, double unix_s,
		 size_t *len)
{
	double secs = base && cur->ns > base->ns ? (double)(cur->ns - base->ns) / 1e9 : 0;
	if (secs < 0.5)
		base = NULL, secs = 0; /* anything shorter is noise, not a rate */
	json_t *j = json_object();
	if (!j)
		return NULL;
	json_object_set_new(j, "id", json_integer((json_int_t)id));
	json_object_set_new(j, "t", json_real(unix_s));
	json_object_set_new(j, "window", num6(secs));
	if (cur->has_req) {
		json_t *routes = json_object();
		for (uint32_t r = 0; routes && r < cur->nroutes; r++) {
			double then = NAN;
			for (uint32_t k = 0; base && k < base->nroutes; k++)
				if (strcmp(base->route[k], cur->route[r]) == 0)
					then = base->route_total[k];
			json_object_set_new(routes, cur->route[r], num6(rate(cur->route_total[r], then, secs)));
		}
		json_object_set_new(j, "req",
				    json_pack("{s:o, s:o, s:o}", "total", num(cur->req_total), "rate",
					      num6(rate(cur->req_total, base && base->has_req ? base->req_total : NAN, secs)),
					      "routes", routes ? routes : json_object()));
		errors(j, cur, base);
	}
	if (cur->nb)
		quantiles(j, cur, base);
	json_object_set_new(j, "inflight", num(cur->in_flight));
	json_object_set_new(j, "kpi", json_pack("{s:o, s:o, s:o}", "leads", kpi(cur->leads, base ? base->leads : NAN, secs),
						 "conversions",
						 kpi(cur->conversions, base ? base->conversions : NAN, secs), "revenue",
						 kpi(cur->revenue, base ? base->revenue : NAN, secs)));
	/* Workers as the segment sees them: regions live (every process that
	 * writes, the collector's own included), dead but not yet folded, and
	 * folded (recycled) since the segment was created. */
	json_object_set_new(j, "workers", json_pack("{s:I, s:I, s:I}", "live", (json_int_t)cur->stats.regions_live, "dead",
						     (json_int_t)cur->stats.regions_dead, "recycled",
						     (json_int_t)cur->stats.folds));
	json_object_set_new(j, "regions_free", json_integer(cur->stats.regions_free));
	json_object_set_new(j, "series", json_integer((json_int_t)cur->stats.series));
	/* Every other family, one number each: counters as a rate, histograms
	 * and summaries as observations per second, gauges as their value. */
	json_t *fam = json_object();
	for (uint32_t i = 0; fam && i < cur->nfam; i++) {
		const struct fam_total *t = &cur->fam[i];
		const struct fam_total *b = base ? fam_find(base, t->name) : NULL;
		double v = t->type == SHMET_GAUGE ? t->v : rate(t->v, b ? b->v : 0, base ? secs : 0);
		static const char kind[] = "?cghs";
		char k[2] = {kind[t->type <= SHMET_SUMMARY ? t->type : 0], 0};
		json_object_set_new(fam, t->name, json_pack("[s, o]", k, t->type == SHMET_GAUGE ? num(v) : num6(v)));
	}
	if (fam)
		json_object_set_new(j, "fam", fam);
	char *out = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (out && len)
		*len = strlen(out);
	return out;
}
