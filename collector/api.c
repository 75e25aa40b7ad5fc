/* The JSON API under /api/v1/metrics/. */
#define _LGPL_SOURCE
#include "http.h"

#include <jansson.h>
#include <stdlib.h>
#include <urcu-bp.h>

struct api {
	int unused;
};

int api_init(struct collector *c, char *err, size_t errlen)
{
	(void)err, (void)errlen;
	c->api = calloc(1, sizeof *c->api);
	return c->api ? SHMET_OK : SHMET_E_SYS;
}

void api_free(struct collector *c)
{
	free(c->api);
	c->api = NULL;
}

void api_tick(struct collector *c)
{
	(void)c;
}

void api_completed(void *con_cls)
{
	free(con_cls);
}

static enum MHD_Result respond_json(struct MHD_Connection *conn, unsigned status, json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(j);
	if (!s)
		return http_respond_static(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json",
					   "{\"error\":\"out of memory\"}");
	return http_respond(conn, status, "application/json", s, strlen(s));
}

static enum MHD_Result health(struct collector *c, struct MHD_Connection *conn)
{
	uint64_t last = __atomic_load_n(&c->last_scan_ns, __ATOMIC_RELAXED);
	double age = last ? (double)(shmet__now_ns(CLOCK_MONOTONIC) - last) / 1e9 : -1;
	bool ok = last && age < 5 * c->cfg.scan_interval + 5;
	rcu_read_lock();
	const struct view *v = rcu_dereference(c->view);
	json_t *j = json_pack("{s:s, s:s, s:{s:I, s:I}, s:{s:I, s:I, s:I}, s:I, s:f, s:s}", "status",
			      ok ? "healthy" : "unhealthy", "segment", c->seg.path, "segment_bytes", "used",
			      (json_int_t)v->stats.bytes_used, "total", (json_int_t)v->stats.bytes_total, "regions", "live",
			      (json_int_t)v->stats.regions_live, "dead", (json_int_t)v->stats.regions_dead, "free",
			      (json_int_t)v->stats.regions_free, "series", (json_int_t)v->stats.series,
			      "last_scan_age_seconds", age, "version", SHMET_VERSION_STRING);
	rcu_read_unlock();
	return respond_json(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, j);
}

enum MHD_Result api_handle(struct collector *c, struct MHD_Connection *conn, const char *url, const char *method,
			   const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)upload_data, (void)upload_data_size, (void)con_cls;
	if (strcmp(url, "/api/v1/metrics/health") == 0) {
		if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
			return http_respond_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json",
						   "{\"error\":\"method not allowed\"}");
		return health(c, conn);
	}
	return http_respond_static(conn, MHD_HTTP_NOT_FOUND, "application/json", "{\"error\":\"no such endpoint\"}");
}
