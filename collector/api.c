/* The JSON API under /api/v1/metrics/: routing, the read-only endpoints
 * (health, summary) and the helpers the other api_*.c files share.
 * Push lives in api_push*.c (api_push_int.h), the dashboard and its
 * history in api_dash.c;
 * API.md documents every endpoint and schema. */
#include "api_int.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <urcu-bp.h>

/* ---- helpers ---- */

/* jansson writes reals with 17 significant digits (0.1 as
 * 0.10000000000000001).  Rewrite each real in the shortest form that reads
 * back as the same double (shmet_fmt_double_json, the exposition's digits).
 * Returns a new malloc'd string, or NULL. */
static char *tidy_numbers(const char *s, size_t *len)
{
	size_t n = strlen(s);
	char *out = malloc(n + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n;) {
		char ch = s[i];
		if (ch == '"') { /* copy a string, escapes included */
			*o++ = s[i++];
			while (i < n && s[i] != '"') {
				if (s[i] == '\\' && i + 1 < n)
					*o++ = s[i++];
				*o++ = s[i++];
			}
			if (i < n)
				*o++ = s[i++];
			continue;
		}
		if (ch != '-' && !(ch >= '0' && ch <= '9')) {
			*o++ = s[i++];
			continue;
		}
		size_t k = i;
		bool real = false;
		while (k < n && strchr("+-0123456789.eE", s[k])) {
			real |= s[k] == '.' || s[k] == 'e' || s[k] == 'E';
			k++;
		}
		char tok[64], best[SHMET_FMT_DOUBLE_MAX];
		if (!real || k - i >= sizeof tok) {
			memcpy(o, s + i, k - i);
			o += k - i;
			i = k;
			continue;
		}
		memcpy(tok, s + i, k - i);
		tok[k - i] = 0;
		size_t bl = shmet_fmt_double_json(best, strtod(tok, NULL));
		if (bl > k - i) { /* never longer in practice; keep jansson's if it were */
			memcpy(o, s + i, k - i);
			o += k - i;
		} else {
			memcpy(o, best, bl);
			o += bl;
		}
		i = k;
	}
	*o = 0;
	*len = (size_t)(o - out);
	return out;
}

enum MHD_Result api_send(struct MHD_Connection *conn, unsigned status, json_t *j, const char *const *headers)
{
	char *raw = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
	json_decref(j);
	size_t n = 0;
	char *s = raw ? tidy_numbers(raw, &n) : NULL;
	free(raw);
	if (!s)
		return http_respond_static(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json",
					   "{\"error\":\"out of memory\"}");
	/* json_dumps' memory comes from jansson's allocator, which is malloc
	 * whenever no parse arena is active (api_push.c): free() is right. */
	struct MHD_Response *r = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(s);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	for (size_t i = 0; headers && headers[i]; i += 2)
		MHD_add_response_header(r, headers[i], headers[i + 1]);
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

enum MHD_Result api_error(struct MHD_Connection *conn, unsigned status, const char *field, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* A message may quote request bytes cut at any length: keep it valid
	 * UTF-8 for JSON by replacing what is not. */
	if (!shmet_valid_utf8(msg, strlen(msg)))
		for (char *p = msg; *p; p++)
			if ((unsigned char)*p >= 0x80)
				*p = '?';
	json_t *j = json_object();
	if (j) {
		json_object_set_new(j, "error", json_string(msg));
		if (field)
			json_object_set_new(j, "field", json_string(field));
	}
	return api_send(conn, status, j, NULL);
}

json_t *api_num(double v)
{
	if (isfinite(v))
		return json_real(v);
	return json_string(isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
}

json_t *api_num_or_null(double v)
{
	return isnan(v) ? json_null() : api_num(v);
}

const struct view_family *api_view_family(const struct view *v, const char *name)
{
	uint32_t lo = 0, hi = v->nfamilies;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = strcmp(v->families[mid].name, name);
		if (c == 0)
			return &v->families[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

void api_gauge_stats(json_t *obj, const struct view_family *f)
{
	double sum = 0, min = NAN, max = NAN;
	uint32_t n = 0;
	struct shmet_agg acc;
	for (uint32_t i = 0; i < f->nseries; i++) {
		view_series_agg(f, &f->series[i], &acc);
		if (!acc.has)
			continue; /* only dead processes held it, and this mode drops them */
		sum += acc.value;
		/* NaN only when every series is NaN, the rule a max or min gauge
		 * follows across processes: never an answer that depends on order */
		if (n == 0 || acc.value < min || (isnan(min) && !isnan(acc.value)))
			min = acc.value;
		if (n == 0 || acc.value > max || (isnan(max) && !isnan(acc.value)))
			max = acc.value;
		n++;
	}
	json_object_set_new(obj, "mode", json_string(shmet_gauge_mode_name(f->mode)));
	json_object_set_new(obj, "series_with_value", json_integer(n));
	json_object_set_new(obj, "sum", api_num(sum));
	json_object_set_new(obj, "min", api_num_or_null(min));
	json_object_set_new(obj, "max", api_num_or_null(max));
	if (f->nseries == 1)
		json_object_set_new(obj, "value", n ? api_num(sum) : json_null());
}

/* ---- lifecycle ---- */

int api_init(struct collector *c, char *err, size_t errlen)
{
	struct api *a = calloc(1, sizeof *a);
	if (!a) {
		snprintf(err, errlen, "out of memory");
		return SHMET_E_SYS;
	}
	a->c = c;
	a->region = -1;
	pthread_mutex_init(&a->push_mu, NULL);
	pthread_mutex_init(&a->rate_mu, NULL);
	pthread_mutex_init(&a->hist_mu, NULL);
	c->api = a;
	int rc = api_push_init(a, err, errlen);
	if (rc != SHMET_OK) {
		api_free(c);
		return rc;
	}
	return SHMET_OK;
}

void api_free(struct collector *c)
{
	struct api *a = c->api;
	if (!a)
		return;
	api_push_free(a);
	api_dash_free(a);
	pthread_mutex_destroy(&a->push_mu);
	pthread_mutex_destroy(&a->rate_mu);
	pthread_mutex_destroy(&a->hist_mu);
	free(a);
	c->api = NULL;
}

void api_tick(struct collector *c)
{
	if (!c->api)
		return;
	/* The updater is the thread that replaces and frees views, so the
	 * view it published last stays valid here without a read-side
	 * section. */
	const struct view *v = CMM_LOAD_SHARED(c->view);
	if (v)
		api_dash_tick(c->api, v);
}

/* *con_cls of a GET between its two calls (api_handle); not allocated. */
static struct api_req get_pending;

void api_completed(void *con_cls)
{
	struct api_req *r = con_cls;
	if (r == &get_pending)
		return;
	if (r)
		free(r->body);
	free(r);
}

/* ---- GET /api/v1/metrics/health ---- */

static enum MHD_Result health(struct collector *c, struct MHD_Connection *conn)
{
	uint64_t last = __atomic_load_n(&c->last_scan_ns, __ATOMIC_RELAXED);
	double age = last ? (double)(shmet__now_ns(CLOCK_MONOTONIC) - last) / 1e9 : -1;
	bool ok = last && age < 5 * c->cfg.scan_interval + 5;
	const struct view *v = view_enter(c);
	json_t *j = json_pack("{s:s, s:s, s:{s:I, s:I}, s:{s:I, s:I, s:I, s:I}, s:I, s:I, s:f, s:s}", "status",
			      ok ? "healthy" : "unhealthy", "segment", c->seg.path, "segment_bytes", "used",
			      (json_int_t)v->stats.bytes_used, "total", (json_int_t)v->stats.bytes_total, "regions", "live",
			      (json_int_t)v->stats.regions_live, "dead", (json_int_t)v->stats.regions_dead, "free",
			      (json_int_t)v->stats.regions_free, "history", (json_int_t)v->stats.regions_history, "families",
			      (json_int_t)v->nfamilies, "series",
			      (json_int_t)v->stats.series, "last_scan_age_seconds", age, "version", SHMET_VERSION_STRING);
	view_leave(c);
	if (j && c->api) {
		json_t *p = json_object();
		api_push_health(c->api, p);
		json_object_set_new(j, "push", p);
		json_object_set_new(j, "history_points", json_integer(api_dash_points(c->api)));
	}
	return api_send(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, j, NULL);
}

/* ---- GET /api/v1/metrics/summary[?family=NAME] ---- */

static json_t *family_summary(const struct view *v, const struct view_family *f)
{
	json_t *o = json_object();
	json_t *labels = json_array();
	if (!o || !labels) {
		json_decref(o);
		json_decref(labels);
		return NULL;
	}
	json_object_set_new(o, "name", json_string(f->name));
	json_object_set_new(o, "type", json_string(shmet_type_name(f->type)));
	json_object_set_new(o, "help", json_string(f->help));
	for (uint32_t i = 0; i < f->nlabels; i++)
		json_array_append_new(labels, json_string(f->label_names[i]));
	json_object_set_new(o, "labels", labels);
	json_object_set_new(o, "series", json_integer(f->nseries));
	/* SERIES LIMIT: what the family costs, and whether a process met its limit */
	json_object_set_new(o, "bytes", json_integer((json_int_t)view_family_bytes(f)));
	double routed = view_overflowed(v, f->name);
	json_object_set_new(o, "at_series_limit", json_boolean(routed >= 0));
	json_object_set_new(o, "overflowed_lookups", api_num(routed >= 0 ? routed : 0));
	struct shmet_agg acc;
	double total = 0, sum = 0;
	uint64_t count = 0;
	switch (f->type) {
	case SHMET_COUNTER:
		for (uint32_t i = 0; i < f->nseries; i++) {
			view_series_agg(f, &f->series[i], &acc);
			total += shmet_agg_value(&acc, f->type);
		}
		json_object_set_new(o, "total", api_num(total));
		break;
	case SHMET_GAUGE:
		api_gauge_stats(o, f);
		break;
	case SHMET_HISTOGRAM:
	case SHMET_SUMMARY:
		for (uint32_t i = 0; i < f->nseries; i++) {
			view_series_agg(f, &f->series[i], &acc);
			count += acc.whole;
			sum += acc.value;
		}
		json_object_set_new(o, "count", json_integer((json_int_t)count));
		json_object_set_new(o, "sum", api_num(sum));
		if (f->type == SHMET_HISTOGRAM) {
			json_t *b = json_array();
			for (uint32_t k = 0; b && k < f->nbuckets; k++)
				json_array_append_new(b, json_real(f->bounds[k]));
			json_object_set_new(o, "buckets", b ? b : json_null());
		}
		break;
	}
	return o;
}

static enum MHD_Result summary(struct collector *c, struct MHD_Connection *conn)
{
	const char *want = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "family");
	if (want && !*want)
		return api_error(conn, MHD_HTTP_BAD_REQUEST, "family", "family= needs a family name");
	json_t *fams = json_array();
	json_t *j = json_object();
	if (!fams || !j) {
		json_decref(fams);
		json_decref(j);
		return api_send(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL);
	}
	bool found = false;
	const struct view *v = view_enter(c);
	for (uint32_t i = 0; i < v->nfamilies; i++) {
		const struct view_family *f = &v->families[i];
		if (f->nseries == 0 || !view_family_exposed(f))
			continue; /* as /metrics: the collector's namespace is its own */
		if (want && strcmp(want, f->name) != 0)
			continue;
		json_t *o = family_summary(v, f);
		if (o)
			json_array_append_new(fams, o);
		found = true;
	}
	double built = (double)v->built_ns / 1e9;
	view_leave(c);
	if (want && !found) {
		json_decref(fams);
		json_decref(j);
		return api_error(conn, MHD_HTTP_NOT_FOUND, "family", "no family named \"%s\" in the segment", want);
	}
	json_object_set_new(j, "view_built_at", json_real(built));
	json_object_set_new(j, "families", fams);
	return api_send(conn, MHD_HTTP_OK, j, NULL);
}

/* ---- routing ---- */

static const char *const allow_get[] = {MHD_HTTP_HEADER_ALLOW, "GET, HEAD", NULL};
static const char *const allow_post[] = {MHD_HTTP_HEADER_ALLOW, "POST", NULL};
static const char *const allow_post_delete[] = {MHD_HTTP_HEADER_ALLOW, "POST, DELETE", NULL};

enum MHD_Result api_handle(struct collector *c, struct MHD_Connection *conn, const char *url, const char *method,
			   const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	static const char prefix[] = "/api/v1/metrics/";
	const char *ep = strncmp(url, prefix, sizeof prefix - 1) == 0 ? url + sizeof prefix - 1 : NULL;
	int push = !ep ? 0 : strcmp(ep, "custom") == 0 ? API_EP_CUSTOM : strcmp(ep, "batch") == 0 ? API_EP_BATCH : 0;
	if (push) {
		/* DELETE /api/v1/metrics/custom?name=...: REMOVAL of pushed series */
		bool del = push == API_EP_CUSTOM && strcmp(method, "DELETE") == 0;
		if (strcmp(method, "POST") != 0 && !del)
			return api_send(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
					json_pack("{s:s}", "error",
						  push == API_EP_CUSTOM ? "method not allowed: use POST or DELETE"
									: "method not allowed: use POST"),
					push == API_EP_CUSTOM ? allow_post_delete : allow_post);
		return api_push_handle(c->api, conn, push, method, upload_data, upload_data_size, con_cls);
	}
	bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
	if (ep && (strcmp(ep, "health") == 0 || strcmp(ep, "summary") == 0 || strcmp(ep, "dashboard") == 0)) {
		if (!get)
			return api_send(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
					json_pack("{s:s}", "error", "method not allowed: use GET"), allow_get);
		/* libmicrohttpd 0.9.75 closes the connection after a response
		 * queued on the first call (it cannot know the request is
		 * complete yet).  Answer on the second call: keep-alive works. */
		if (!*con_cls) {
			*con_cls = &get_pending;
			return MHD_YES;
		}
		if (*upload_data_size) { /* a GET with a body: ignore it */
			*upload_data_size = 0;
			return MHD_YES;
		}
		if (ep[0] == 'h')
			return health(c, conn);
		if (ep[0] == 's')
			return summary(c, conn);
		return api_dashboard(c->api, conn);
	}
	return api_error(conn, MHD_HTTP_NOT_FOUND, NULL,
			 "no such endpoint: %s (see /api/v1/metrics/{health,summary,dashboard,custom,batch})", url);
}
