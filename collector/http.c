/* shmetricsd's HTTP endpoints: /metrics, health, the index page, and the
 * JSON API's entry point.  Every answer has a Content-Type and a reason. */
#include "http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <urcu-bp.h>

enum MHD_Result http_respond(struct MHD_Connection *conn, unsigned status, const char *content_type, char *body,
			     size_t len)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

enum MHD_Result http_respond_static(struct MHD_Connection *conn, unsigned status, const char *content_type,
				    const char *body)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(strlen(body), (void *)(uintptr_t)body, MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result serve_metrics(struct collector *c, struct MHD_Connection *conn)
{
	const char *accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	const char *enc = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT_ENCODING);
	const char *ctype;
	enum shmet_expo_format fmt = shmet_negotiate(accept, &ctype);
	/* Series that workers created a moment ago are in the segment but not
	 * yet in the view: let the updater look once more (bounded), so a
	 * scrape counts everything written before it. */
	collector_fresh_scan(c, 1000);
	uint64_t t0 = shmet__now_ns(CLOCK_MONOTONIC);
	shmet_buf b;
	shmet_buf_init(&b);
	bool readable = collector_render(c, &b, fmt);
	__atomic_store_n(&c->last_scrape_ns, shmet__now_ns(CLOCK_MONOTONIC) - t0, __ATOMIC_RELAXED);
	if (!readable) {
		shmet_buf_free(&b);
		return http_respond_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
					   "the segment shrank while it was read; try again\n");
	}
	if (b.oom) {
		shmet_buf_free(&b);
		return http_respond_static(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8",
					   "out of memory while rendering metrics\n");
	}
	bool gz = false;
	if (shmet_accepts_gzip(enc)) {
		shmet_buf z;
		shmet_buf_init(&z);
		if (shmet_gzip(b.data, b.len, &z, 1) == 0) {
			shmet_buf_free(&b);
			b = z;
			gz = true;
		} else {
			shmet_buf_free(&z);
		}
	}
	struct MHD_Response *r = MHD_create_response_from_buffer(b.len, b.data, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		shmet_buf_free(&b);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Accept, Accept-Encoding");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	if (gz)
		MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_ENCODING, "gzip");
	enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return rc;
}

static bool ready(struct collector *c)
{
	uint64_t last = __atomic_load_n(&c->last_scan_ns, __ATOMIC_RELAXED);
	uint64_t limit = (uint64_t)((5 * c->cfg.scan_interval + 5) * 1e9);
	return last && shmet__now_ns(CLOCK_MONOTONIC) - last < limit;
}

static enum MHD_Result serve_ready(struct collector *c, struct MHD_Connection *conn)
{
	uint64_t size = __atomic_load_n(&c->file_size, __ATOMIC_RELAXED);
	if (size && size < c->seg.map.size) {
		char *body = malloc(512);
		if (!body)
			return MHD_NO;
		int n = snprintf(body, 512,
				 "shmetricsd is not ready: the segment %s was truncated to %llu bytes (it needs %llu); "
				 "/metrics serves the last good view.\n",
				 c->seg.path, (unsigned long long)size, (unsigned long long)c->seg.map.size);
		return http_respond(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body,
				    n < 0 ? 0 : n >= 512 ? 511 : (size_t)n);
	}
	return ready(c) ? http_respond_static(conn, MHD_HTTP_OK, "text/plain; charset=utf-8", "shmetricsd is Ready.\n")
			: http_respond_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
					      "shmetricsd is not ready: the segment has not been scanned recently.\n");
}

static const char index_page[] =
	"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>shmetricsd</title></head><body>\n"
	"<h1>shmetricsd</h1>\n<p>Prometheus metrics of pre-forking servers, aggregated from a shared-memory segment.</p>\n"
	"<ul>\n<li><a href=\"/metrics\">/metrics</a>: Prometheus text 0.0.4 or OpenMetrics 1.0 (by Accept)</li>\n"
	"<li><a href=\"/-/healthy\">/-/healthy</a></li>\n<li><a href=\"/-/ready\">/-/ready</a></li>\n"
	"<li><a href=\"/api/v1/metrics/health\">/api/v1/metrics/health</a></li>\n"
	"<li><a href=\"/api/v1/metrics/summary\">/api/v1/metrics/summary</a></li>\n"
	"<li><a href=\"/api/v1/metrics/dashboard\">/api/v1/metrics/dashboard</a></li>\n"
	"</ul>\n</body></html>\n";

static char headers_seen; /* *con_cls of a non-API request after its first call */

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			       const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)version;
	struct collector *c = cls;
	if (strncmp(url, "/api/", 5) == 0)
		return api_handle(c, conn, url, method, upload_data, upload_data_size, con_cls);
	/* Answer on the second call, once the request is fully read: answering
	 * on the first makes libmicrohttpd close the connection, and a scraper
	 * would reconnect every time. */
	if (*con_cls != &headers_seen) {
		*con_cls = &headers_seen;
		return MHD_YES;
	}
	if (*upload_data_size) {
		*upload_data_size = 0; /* a body is never wanted here; drop it and answer 405 below */
		return MHD_YES;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return http_respond_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
					   "method not allowed: use GET\n");
	if (strcmp(url, "/metrics") == 0)
		return serve_metrics(c, conn);
	if (strcmp(url, "/-/healthy") == 0)
		return http_respond_static(conn, MHD_HTTP_OK, "text/plain; charset=utf-8", "shmetricsd is Healthy.\n");
	if (strcmp(url, "/-/ready") == 0)
		return serve_ready(c, conn);
	if (strcmp(url, "/") == 0)
		return http_respond_static(conn, MHD_HTTP_OK, "text/html; charset=utf-8", index_page);
	return http_respond_static(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
				   "not found; see / for the endpoints\n");
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls, (void)conn, (void)toe;
	if (*con_cls && *con_cls != &headers_seen)
		api_completed(*con_cls);
	*con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char line[512];
	vsnprintf(line, sizeof line, fmt, ap);
	size_t n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = 0;
	collector_log("http: %s", line);
}

int http_start(struct collector *c, char *err, size_t errlen)
{
	struct addrinfo hints, *ai = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	hints.ai_socktype = SOCK_STREAM;
	char port[16];
	snprintf(port, sizeof port, "%d", c->cfg.listen_port);
	int gai = getaddrinfo(c->cfg.listen_host, port, &hints, &ai);
	if (gai != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s (give a numeric address)", c->cfg.listen_host,
			 gai_strerror(gai));
		return SHMET_E_INVALID_ARG;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_EPOLL;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	c->httpd = MHD_start_daemon(flags, 0, NULL, NULL, handler, c, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, c, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				    MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2, MHD_OPTION_CONNECTION_TIMEOUT,
				    (unsigned)15, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
				    MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
				    (size_t)(256 * 1024), MHD_OPTION_NOTIFY_COMPLETED, completed, c, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!c->httpd) {
		snprintf(err, errlen, "cannot listen on %s:%d (address in use or not permitted)", c->cfg.listen_host,
			 c->cfg.listen_port);
		return SHMET_E_SYS;
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(c->httpd, MHD_DAEMON_INFO_BIND_PORT);
	c->bound_port = info ? info->port : c->cfg.listen_port;
	bool v6 = strchr(c->cfg.listen_host, ':') != NULL;
	collector_log("listening on http://%s%s%s:%d/metrics", v6 ? "[" : "", c->cfg.listen_host, v6 ? "]" : "",
		      c->bound_port);
	return SHMET_OK;
}

void http_stop(struct collector *c)
{
	if (c->httpd) {
		MHD_stop_daemon(c->httpd);
		c->httpd = NULL;
	}
}
