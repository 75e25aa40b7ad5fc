/* GET /api/v1/metrics/dashboard and the short history behind it.
 *
 * Every API_STEP_NS (5 s) the updater's api_tick takes a point: for each
 * counter family its total (and, when it has a status or code label, the
 * totals by status class), for each histogram and summary family its count
 * and sum, and for histograms the bucket counts summed over the series.
 * The ring keeps 15 minutes.  A dashboard request takes a point of the
 * segment as it is now and divides by the baseline point of each window:
 * the latest point at least the window old, or the oldest one while the
 * history is shorter than the window; the seconds actually covered are in
 * the answer, and rates are (now - baseline) / those seconds.  A family
 * absent from the baseline started from zero; a total that went down (the
 * segment was recreated) counts from zero again, as Prometheus' rate().
 */
#include "api_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <urcu-bp.h>

struct hp_fam {
	const char *name;
	enum shmet_type type;
	uint32_t nb;     /* histogram: finite bounds */
	double total;    /* counter: total; histogram, summary: count */
	double sum;      /* histogram, summary */
	bool has_cls;
	double cls[6];   /* counter by status class 1xx..5xx, then anything else */
	double *bounds;  /* nb */
	double *cum;     /* nb + 1 cumulative counts, +Inf last */
};

struct hist_point {
	uint64_t t_ns;   /* CLOCK_MONOTONIC */
	uint32_t n;
	struct hp_fam *fams; /* sorted by name, like the view */
};

static bool sampled(const struct view_family *f)
{
	return f->nseries && f->type != SHMET_GAUGE && strncmp(f->name, "shmetricsd_", 11) != 0;
}

static int status_label(const struct view_family *f)
{
	if (f->type != SHMET_COUNTER)
		return -1;
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (strcmp(f->label_names[i], "status") == 0 || strcmp(f->label_names[i], "code") == 0)
			return (int)i;
	return -1;
}

/* One allocation holds the point, its families, names and buckets. */
static struct hist_point *point_build(const struct view *v, uint64_t now)
{
	size_t size = sizeof(struct hist_point), n = 0;
	for (uint32_t i = 0; i < v->nfamilies; i++) {
		const struct view_family *f = &v->families[i];
		if (!sampled(f))
			continue;
		n++;
		size += sizeof(struct hp_fam) + (f->type == SHMET_HISTOGRAM ? (2 * f->nbuckets + 1) * sizeof(double) : 0);
		size += strlen(f->name) + 1;
	}
	struct hist_point *p = malloc(size);
	if (!p)
		return NULL;
	p->t_ns = now;
	p->n = (uint32_t)n;
	p->fams = (struct hp_fam *)(p + 1);
	char *mem = (char *)(p->fams + n);
	double *dbl = (double *)(void *)mem; /* doubles first: aligned */
	for (uint32_t i = 0; i < v->nfamilies; i++)
		if (sampled(&v->families[i]) && v->families[i].type == SHMET_HISTOGRAM)
			mem += (2 * v->families[i].nbuckets + 1) * sizeof(double);
	struct shmet_agg acc;
	uint32_t k = 0;
	for (uint32_t i = 0; i < v->nfamilies; i++) {
		const struct view_family *f = &v->families[i];
		if (!sampled(f))
			continue;
		struct hp_fam *h = &p->fams[k++];
		memset(h, 0, sizeof *h);
		size_t nl = strlen(f->name) + 1;
		h->name = memcpy(mem, f->name, nl);
		mem += nl;
		h->type = f->type;
		int sl = status_label(f);
		h->has_cls = sl >= 0;
		if (f->type == SHMET_HISTOGRAM) {
			h->nb = f->nbuckets;
			h->bounds = dbl;
			h->cum = dbl + f->nbuckets;
			dbl += 2 * f->nbuckets + 1;
			memcpy(h->bounds, f->bounds, f->nbuckets * sizeof(double));
			memset(h->cum, 0, (f->nbuckets + 1) * sizeof(double));
		}
		for (uint32_t s = 0; s < f->nseries; s++) {
			view_series_agg(f, &f->series[s], &acc);
			if (f->type == SHMET_COUNTER) {
				double val = shmet_agg_value(&acc, f->type);
				h->total += val;
				if (sl >= 0) {
					const char *st = f->series[s].values[sl];
					bool three = st[0] >= '1' && st[0] <= '5' && st[1] >= '0' && st[1] <= '9' &&
						     st[2] >= '0' && st[2] <= '9' && st[3] == 0;
					h->cls[three ? st[0] - '1' : 5] += val;
				}
				continue;
			}
			h->total += (double)acc.whole;
			h->sum += acc.value;
			if (f->type == SHMET_HISTOGRAM) {
				uint64_t cum = 0;
				for (uint32_t b = 0; b <= f->nbuckets; b++) {
					cum += acc.buckets[b];
					h->cum[b] += (double)cum;
				}
			}
		}
	}
	return p;
}

static const struct hp_fam *point_find(const struct hist_point *p, const char *name)
{
	if (!p)
		return NULL;
	uint32_t lo = 0, hi = p->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = strcmp(p->fams[mid].name, name);
		if (c == 0)
			return &p->fams[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

void api_dash_tick(struct api *a, const struct view *v)
{
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	/* hist_last_ns and hist_count: written by this (the updater) thread only */
	if (a->hist_count && now - a->hist_last_ns < API_STEP_NS)
		return;
	struct hist_point *p = point_build(v, now), *old = NULL;
	if (!p)
		return;
	pthread_mutex_lock(&a->hist_mu);
	if (a->hist_count == API_HISTORY_POINTS) {
		old = a->ring[a->hist_head];
		a->ring[a->hist_head] = p;
		a->hist_head = (a->hist_head + 1) % API_HISTORY_POINTS;
	} else {
		a->ring[(a->hist_head + a->hist_count++) % API_HISTORY_POINTS] = p;
	}
	a->hist_last_ns = now;
	pthread_mutex_unlock(&a->hist_mu);
	free(old);
}

void api_dash_free(struct api *a)
{
	for (uint32_t i = 0; i < a->hist_count; i++)
		free(a->ring[(a->hist_head + i) % API_HISTORY_POINTS]);
	a->hist_count = 0;
}

uint32_t api_dash_points(struct api *a)
{
	pthread_mutex_lock(&a->hist_mu);
	uint32_t n = a->hist_count;
	pthread_mutex_unlock(&a->hist_mu);
	return n;
}

/* ---- arithmetic ---- */

/* Prometheus' histogram_quantile: linear interpolation inside the bucket
 * that holds the rank; the lowest bucket starts at 0 (unless its bound is
 * <= 0); a rank in the +Inf bucket gives the highest finite bound. */
double api_bucket_quantile(double q, const double *bounds, const double *cum, uint32_t nb)
{
	if (nb == 0 || !(cum[nb] > 0))
		return NAN;
	if (q < 0)
		return -INFINITY;
	if (q > 1)
		return INFINITY;
	double rank = q * cum[nb];
	uint32_t b = 0;
	while (b < nb && cum[b] < rank)
		b++;
	if (b == nb)
		return bounds[nb - 1];
	if (b == 0 && bounds[0] <= 0)
		return bounds[0];
	double start = 0, end = bounds[b], count = cum[b];
	if (b > 0) {
		start = bounds[b - 1];
		count -= cum[b - 1];
		rank -= cum[b - 1];
	}
	return start + (end - start) * (rank / count);
}

static double increase(double now, double then)
{
	return now >= then ? now - then : now; /* went down: counted again from zero */
}

struct window {
	const char *label;
	double want;        /* seconds */
	const struct hist_point *base;
	double secs;        /* covered, NaN when no usable baseline */
};

static void pick_base(struct api *a, uint64_t now, struct window *w)
{
	w->base = NULL;
	w->secs = NAN;
	if (!a->hist_count)
		return;
	uint64_t span = (uint64_t)(w->want * 1e9);
	const struct hist_point *best = a->ring[a->hist_head]; /* oldest */
	for (uint32_t i = a->hist_count; i-- > 0;) {
		const struct hist_point *p = a->ring[(a->hist_head + i) % API_HISTORY_POINTS];
		if (p->t_ns <= now && now - p->t_ns >= span) {
			best = p;
			break;
		}
	}
	double secs = best->t_ns < now ? (double)(now - best->t_ns) / 1e9 : 0;
	if (secs >= 1) { /* anything shorter is noise, not a rate */
		w->base = best;
		w->secs = secs;
	}
}

#define NWIN 3
static const char *const win_labels[NWIN] = {"1m", "5m", "15m"};
static const double win_secs[NWIN] = {60, 300, 900};

/* {"1m": x, "5m": y, "15m": z}: f's total increase (or rate) per window. */
static json_t *per_window(const struct window *w, const struct hp_fam *cur, bool rate, int cls_mask)
{
	json_t *o = json_object();
	for (int i = 0; o && i < NWIN; i++) {
		double val = NAN;
		if (w[i].base) {
			const struct hp_fam *b = point_find(w[i].base, cur->name);
			double now = cur->total, then = b ? b->total : 0;
			if (cls_mask) {
				now = then = 0;
				for (int k = 0; k < 6; k++)
					if (cls_mask & (1 << k)) {
						now += cur->cls[k];
						then += b ? b->cls[k] : 0;
					}
			}
			val = increase(now, then);
			if (rate)
				val /= w[i].secs;
		}
		json_object_set_new(o, w[i].label, api_num_or_null(val));
	}
	return o;
}

/* Share of the requests in the classes of mask, per window; null when
 * there was no request in the window. */
static json_t *ratio_window(const struct window *w, const struct hp_fam *cur, int mask)
{
	json_t *o = json_object();
	for (int i = 0; o && i < NWIN; i++) {
		double val = NAN;
		if (w[i].base) {
			const struct hp_fam *b = point_find(w[i].base, cur->name);
			double all = increase(cur->total, b ? b->total : 0), part = 0, pn = 0, pt = 0;
			for (int k = 0; k < 6; k++)
				if (mask & (1 << k)) {
					pn += cur->cls[k];
					pt += b ? b->cls[k] : 0;
				}
			part = increase(pn, pt);
			if (all > 0)
				val = part / all;
		}
		json_object_set_new(o, w[i].label, api_num_or_null(val));
	}
	return o;
}

/* Histogram over one window: rate, mean and the three quantiles. */
static json_t *histogram_window(const struct window *w, const struct hp_fam *cur)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	json_object_set_new(o, "count", api_num(cur->total));
	json_object_set_new(o, "sum", api_num(cur->sum));
	double q50 = NAN, q95 = NAN, q99 = NAN, rate = NAN, mean = NAN;
	if (w->base) {
		const struct hp_fam *b = point_find(w->base, cur->name);
		bool same = b && b->nb == cur->nb && b->total <= cur->total;
		for (uint32_t k = 0; same && k < cur->nb; k++)
			same = b->bounds[k] == cur->bounds[k];
		double *d = malloc((cur->nb + 1) * sizeof *d);
		if (d) {
			for (uint32_t k = 0; k <= cur->nb; k++)
				d[k] = same ? cur->cum[k] - b->cum[k] : cur->cum[k];
			double n = d[cur->nb], s = same ? cur->sum - b->sum : cur->sum;
			rate = n / w->secs;
			mean = n > 0 ? s / n : NAN;
			q50 = api_bucket_quantile(0.5, cur->bounds, d, cur->nb);
			q95 = api_bucket_quantile(0.95, cur->bounds, d, cur->nb);
			q99 = api_bucket_quantile(0.99, cur->bounds, d, cur->nb);
			free(d);
		}
	}
	json_object_set_new(o, "rate", api_num_or_null(rate));
	json_object_set_new(o, "mean", api_num_or_null(mean));
	json_object_set_new(o, "p50", api_num_or_null(q50));
	json_object_set_new(o, "p95", api_num_or_null(q95));
	json_object_set_new(o, "p99", api_num_or_null(q99));
	return o;
}

static json_t *summary_window(const struct window *w, const struct hp_fam *cur)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	json_object_set_new(o, "count", api_num(cur->total));
	json_object_set_new(o, "sum", api_num(cur->sum));
	double rate = NAN, mean = NAN;
	if (w->base) {
		const struct hp_fam *b = point_find(w->base, cur->name);
		bool same = b && b->total <= cur->total;
		double n = same ? cur->total - b->total : cur->total, s = same ? cur->sum - b->sum : cur->sum;
		rate = n / w->secs;
		mean = n > 0 ? s / n : NAN;
	}
	json_object_set_new(o, "rate", api_num_or_null(rate));
	json_object_set_new(o, "mean", api_num_or_null(mean));
	return o;
}

/* Totals of a counter family by one label's values (revenue by currency). */
static json_t *totals_by(const struct view_family *f, const char *label)
{
	json_t *o = json_object();
	int li = -1;
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (strcmp(f->label_names[i], label) == 0)
			li = (int)i;
	struct shmet_agg acc;
	for (uint32_t s = 0; o && s < f->nseries; s++) {
		view_series_agg(f, &f->series[s], &acc);
		const char *k = li >= 0 ? f->series[s].values[li] : "";
		json_t *prev = json_object_get(o, k);
		double val = shmet_agg_value(&acc, f->type) + (prev ? json_number_value(prev) : 0);
		json_object_set_new(o, k, api_num(val));
	}
	return o;
}

#define HTTP_REQUESTS "saler_http_requests_total"
#define HTTP_DURATION "saler_http_request_duration_seconds"
#define HTTP_IN_FLIGHT "saler_http_requests_in_flight"
#define REVENUE "saler_revenue_total"
#define CLS_4XX (1 << 3)
#define CLS_5XX (1 << 4)

enum MHD_Result api_dashboard(struct api *a, struct MHD_Connection *conn)
{
	double qwin = 300;
	const char *ws = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "window");
	if (ws) {
		char *end;
		qwin = strtod(ws, &end);
		if (end == ws || *end || !(qwin >= 1 && qwin <= 900))
			return api_error(conn, MHD_HTTP_BAD_REQUEST, "window",
					 "window= wants the seconds of the quantile window, 1 to 900");
	}
	json_t *j = json_object(), *counters = json_object(), *hists = json_object(), *sums = json_object(),
	       *gauges = json_object(), *http = NULL, *biz = NULL;
	if (!j || !counters || !hists || !sums || !gauges) {
		json_decref(j);
		json_decref(counters);
		json_decref(hists);
		json_decref(sums);
		json_decref(gauges);
		return api_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
	}
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	double unix_now = (double)shmet__now_ns(CLOCK_REALTIME) / 1e9;
	json_t *revenue = NULL, *in_flight = NULL;
	const struct view *v = view_enter(a->c);
	struct hist_point *cur = point_build(v, now);
	for (uint32_t i = 0; i < v->nfamilies; i++) {
		const struct view_family *f = &v->families[i];
		if (f->type != SHMET_GAUGE || !f->nseries || strncmp(f->name, "shmetricsd_", 11) == 0)
			continue;
		json_t *g = json_object();
		if (!g)
			continue;
		json_object_set_new(g, "series", json_integer(f->nseries));
		api_gauge_stats(g, f);
		if (strcmp(f->name, HTTP_IN_FLIGHT) == 0)
			in_flight = json_incref(json_object_get(g, "sum"));
		json_object_set_new(gauges, f->name, g);
	}
	const struct view_family *rf = api_view_family(v, REVENUE);
	if (rf && rf->type == SHMET_COUNTER)
		revenue = totals_by(rf, "currency");
	view_leave(a->c);
	if (!cur) {
		json_decref(j);
		json_decref(counters);
		json_decref(hists);
		json_decref(sums);
		json_decref(gauges);
		json_decref(revenue);
		json_decref(in_flight);
		return api_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
	}

	pthread_mutex_lock(&a->hist_mu);
	struct window w[NWIN], qw = {"quantile", qwin, NULL, NAN};
	for (int i = 0; i < NWIN; i++) {
		w[i].label = win_labels[i];
		w[i].want = win_secs[i];
		pick_base(a, now, &w[i]);
	}
	pick_base(a, now, &qw);
	const struct hist_point *oldest = a->hist_count ? a->ring[a->hist_head] : NULL;
	json_t *hist = json_pack("{s:f, s:f, s:i, s:o}", "step_seconds", (double)API_STEP_NS / 1e9, "capacity_seconds",
				 (double)API_STEP_NS / 1e9 * (API_HISTORY_POINTS - 2), "points", (int)a->hist_count,
				 "span_seconds", api_num_or_null(oldest ? (double)(now - oldest->t_ns) / 1e9 : NAN));
	json_t *wins = json_object();
	for (int i = 0; wins && i < NWIN; i++)
		json_object_set_new(wins, w[i].label, api_num_or_null(w[i].secs));
	json_object_set_new(wins, "quantiles", api_num_or_null(qw.secs));

	json_t *leads = json_object();
	double created = NAN, converted = NAN;
	for (uint32_t i = 0; i < cur->n; i++) {
		const struct hp_fam *f = &cur->fams[i];
		if (f->type == SHMET_COUNTER) {
			json_t *o = json_pack("{s:o, s:o, s:o}", "total", api_num(f->total), "rate",
					      per_window(w, f, true, 0), "increase", per_window(w, f, false, 0));
			if (o && f->has_cls)
				json_object_set_new(o, "error_ratio", ratio_window(w, f, CLS_4XX | CLS_5XX));
			if (o)
				json_object_set_new(counters, f->name, o);
			size_t nl = strlen(f->name);
			if (strncmp(f->name, "saler_leads_", 12) == 0 && nl > 18 &&
			    strcmp(f->name + nl - 6, "_total") == 0) {
				char stage[SHMET_MAX_NAME_LEN];
				snprintf(stage, sizeof stage, "%.*s", (int)(nl - 18), f->name + 12);
				json_object_set_new(leads, stage,
						    json_pack("{s:o, s:o}", "total", api_num(f->total), "increase",
							      per_window(w, f, false, 0)));
				if (strcmp(stage, "created") == 0)
					created = f->total;
				if (strcmp(stage, "converted") == 0)
					converted = f->total;
			}
			if (strcmp(f->name, HTTP_REQUESTS) == 0) {
				http = json_pack("{s:o, s:o, s:o, s:o, s:o}", "requests_total", api_num(f->total), "rate",
						 per_window(w, f, true, 0), "error_ratio",
						 ratio_window(w, f, CLS_4XX | CLS_5XX), "client_error_ratio",
						 ratio_window(w, f, CLS_4XX), "server_error_ratio", ratio_window(w, f, CLS_5XX));
			}
		} else if (f->type == SHMET_HISTOGRAM) {
			json_object_set_new(hists, f->name, histogram_window(&qw, f));
		} else {
			json_object_set_new(sums, f->name, summary_window(&qw, f));
		}
	}
	pthread_mutex_unlock(&a->hist_mu);

	if (http) {
		json_t *lat = json_object_get(hists, HTTP_DURATION);
		if (lat) {
			json_t *l = json_deep_copy(lat);
			json_object_set_new(l, "window_seconds", api_num_or_null(qw.secs));
			json_object_set_new(http, "latency_seconds", l);
		}
		if (in_flight)
			json_object_set(http, "in_flight", in_flight);
	}
	json_decref(in_flight);
	if (revenue || json_object_size(leads)) {
		biz = json_object();
		if (revenue)
			json_object_set_new(biz, "revenue_by_currency", revenue);
		if (json_object_size(leads))
			json_object_set_new(biz, "leads", json_incref(leads));
		if (created > 0 && !isnan(converted))
			json_object_set_new(biz, "conversion_ratio", json_real(converted / created));
	}
	json_decref(leads);
	free(cur);

	json_object_set_new(j, "time", json_real(unix_now));
	json_object_set_new(j, "history", hist);
	json_object_set_new(j, "windows", wins);
	if (http)
		json_object_set_new(j, "http", http);
	if (biz)
		json_object_set_new(j, "business", biz);
	json_object_set_new(j, "counters", counters);
	json_object_set_new(j, "histograms", hists);
	json_object_set_new(j, "summaries", sums);
	json_object_set_new(j, "gauges", gauges);
	return api_send(conn, MHD_HTTP_OK, j, NULL);
}
