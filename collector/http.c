/* shmetricsd's HTTP endpoints: /metrics, health, the index page, and the
 * JSON API's entry point.  Every answer has a Content-Type and a reason. */
#include "http.h"
#include "listen.h"
#include "watch.h"
#include "webconfig.h"

#include "dashboard.h"
#include "stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_sent (glibc's lacks it) */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
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
	bool pb = protobuf_wanted(accept); /* protobuf.c: every family, native histograms too */
	if (pb)
		ctype = SHMET_CONTENT_TYPE_PROTOBUF;
	/* Series that workers created a moment ago are in the segment but not
	 * yet in the view: let the updater look once more (bounded), so a
	 * scrape counts everything written before it. */
	collector_fresh_scan(c, 1000);
	uint64_t t0 = shmet__now_ns(CLOCK_MONOTONIC);
	shmet_buf b;
	shmet_buf_init(&b);
	bool readable = pb ? collector_render_protobuf(c, &b) : collector_render(c, &b, fmt);
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
	char why[512];
	if (watch_problem(c, why, sizeof why)) {
		char *body = malloc(600);
		if (!body)
			return MHD_NO;
		int n = snprintf(body, 600, "shmetricsd is not ready: %s.\n", why);
		return http_respond(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", body,
				    n < 0 ? 0 : n >= 600 ? 599 : (size_t)n);
	}
	if (__atomic_load_n(&c->fold_blocked, __ATOMIC_RELAXED))
		return http_respond_static(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain; charset=utf-8",
					   "shmetricsd is not ready: folding stopped because the retired totals failed "
					   "validation; dead workers' values still count from their regions (see the log).\n");
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
	"<li><a href=\"/dashboard\">/dashboard</a>: live charts (fed by <a href=\"" STREAM_PATH "\">" STREAM_PATH "</a>)</li>\n"
	"</ul>\n</body></html>\n";

/* ---- connections: admission, deadlines, statuses libmicrohttpd does not send ----
 *
 * libmicrohttpd times a connection out only when it is idle, refuses a
 * connection over its limits by closing it, and closes without a status on
 * a request line it cannot parse.  So a client that sends a byte every few
 * seconds holds a connection for ever, and enough of them shut everyone
 * else out.  Here every connection has a slot (opened and closed by
 * libmicrohttpd's connection notifications) that records when its current
 * request began:
 *   - a whole-request deadline: the reaper thread cuts a connection whose
 *     request (from the first byte the server could read to the last byte
 *     of its answer) takes longer than --http-request-timeout;
 *   - admission: past --http-max-connections, or --http-max-per-client for
 *     one address, a request (its headers in) takes the place of the oldest
 *     connection (of that address) that has not sent its own, or when none
 *     has (all are busy) is answered 503 with Retry-After.  A connection
 *     opened past a limit that does not ask within HTTP_GRACE_NS is cut;
 *   - a body limit for every request but the pushes (which have their own);
 *   - a status instead of a silent close: 400 for a request line that could
 *     not be parsed, 408 for a request cut at its deadline, 503 for an
 *     evicted one.  cut() writes it when the request has not reached our
 *     handler; otherwise the CLOSED notification does, on the thread that
 *     owns the connection, once libmicrohttpd is done with the socket
 *     (MHD_USE_TURBO: it then does not shut the socket down for writing
 *     before closing it).
 * The fd stays valid while its slot is in use: libmicrohttpd closes it only
 * after the CLOSED notification, which frees the slot under the same mutex.
 * Every slot field is read and written under g->mu. */

#define HTTP_GRACE_NS 1000000000ull /* a connection opened past a limit gets this long to send its request */
#define HTTP_BODY_LIMIT ((size_t)64 << 10) /* bodies of every request but the pushes */
#define HTTP_DISCARD_MAX ((size_t)1 << 20) /* body bytes past the limit read and dropped before hanging up */
#define HTTP_HEADROOM 64u                  /* at least this many connections past the limits are taken in */
#define HTTP_RETRY_AFTER "1"

enum cut { CUT_NONE, CUT_DEADLINE, CUT_EVICTED, CUT_OVER };

struct conn_slot {
	bool used;
	int fd;
	unsigned char addr[16]; /* IPv6, or IPv4 as IPv4-mapped IPv6 */
	uint64_t t0;            /* the current request began (accept, or the end of the previous one) */
	uint64_t rx0, tx0;      /* socket bytes received and sent at t0 */
	bool seen;              /* libmicrohttpd parsed the request line */
	bool called;            /* our handler saw the headers */
	bool answered;          /* an answer is queued */
	bool over;              /* opened past a limit: cut after HTTP_GRACE_NS unless it asks */
	bool too_big;           /* body past HTTP_BODY_LIMIT: gets 413 */
	size_t body;
	enum cut cut;
	uint64_t cut_ns; /* when it was cut */
	bool hard;       /* ... and shut down both ways */
	bool told;       /* our status went out */
	bool streaming;  /* a long-lived answer (the event stream): no whole-request deadline */
};

struct http_guard {
	pthread_mutex_t mu; /* guards everything below but the fixed limits */
	struct conn_slot *slots;
	uint32_t nslots, hint;
	uint32_t max_total, max_per_client; /* fixed after http_start */
	uint64_t deadline_ns, idle_ns;
	bool stop;
	pthread_cond_t wake; /* the reaper's sleep; signalled to stop it */
	pthread_t reaper;
	bool reaper_started;
};

static const char busy_text[] = "too many connections; retry after " HTTP_RETRY_AFTER " s\n";
/* A status written straight to the socket, once libmicrohttpd is done with it. */
static bool http_tls; /* set once before the daemons start: statuses written raw would break TLS */
static void write_status(int fd, unsigned code)
{
	if (http_tls)
		return; /* the connection just closes */
	const char *reason = code == 400 ? "Bad Request" : code == 408 ? "Request Timeout" : "Service Unavailable";
	const char *body = code == 400   ? "malformed HTTP request\n"
			   : code == 408 ? "the request took longer than allowed (--http-request-timeout)\n"
					 : busy_text;
	char msg[512];
	int n = snprintf(msg, sizeof msg,
			 "HTTP/1.1 %u %s\r\nConnection: close\r\n%sContent-Type: text/plain; charset=utf-8\r\n"
			 "Content-Length: %zu\r\n\r\n%s",
			 code, reason, code == 503 ? "Retry-After: " HTTP_RETRY_AFTER "\r\n" : "", strlen(body), body);
	if (n > 0 && (size_t)n < sizeof msg)
		(void)send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
}

static void tcp_bytes(int fd, uint64_t *rx, uint64_t *tx)
{
	struct tcp_info ti;
	socklen_t len = sizeof ti;
	memset(&ti, 0, sizeof ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
	    len < offsetof(struct tcp_info, tcpi_bytes_sent) + sizeof ti.tcpi_bytes_sent) {
		*rx = *tx = 0; /* unknown: no status of ours is written */
		return;
	}
	*rx = ti.tcpi_bytes_received;
	*tx = ti.tcpi_bytes_sent;
}

/* Caller holds g->mu.  A connection whose request has not reached our
 * handler is told why here and shut down both ways at once: libmicrohttpd
 * writes nothing on it in that state but its own answer to a malformed
 * request (a race we accept: that client then reads a jumble), and a peer
 * that keeps sending gets a reset.  One in our handler or waiting for its
 * body is only shut for reading (its answer, if any, still goes out); the
 * CLOSED notification tells it why, or the reaper shuts it both ways a
 * second later if libmicrohttpd has not closed it (it may have read a
 * byte that came after the end-of-file mark, and wait for the next). */
static void cut(struct conn_slot *s, enum cut why)
{
	s->cut = why;
	s->cut_ns = shmet__now_ns(CLOCK_MONOTONIC);
	if (!s->called && !s->answered) {
		uint64_t rx, tx;
		tcp_bytes(s->fd, &rx, &tx);
		if (why != CUT_DEADLINE)
			write_status(s->fd, 503);
		else if (rx > s->rx0)
			write_status(s->fd, 408);
		/* else an idle keep-alive connection: closing it says enough */
		s->told = true;
	}
	s->hard = s->answered || s->told;
	shutdown(s->fd, s->hard ? SHUT_RDWR : SHUT_RD);
}

/* Whether s would be past a limit.  Caller holds g->mu. */
static bool past_limits(const struct http_guard *g, const struct conn_slot *s, bool *client_full)
{
	uint32_t total = 0, mine = 0;
	for (uint32_t i = 0; i < g->nslots; i++) {
		const struct conn_slot *t = &g->slots[i];
		if (t == s || !t->used || t->cut)
			continue;
		total++;
		mine += memcmp(t->addr, s->addr, 16) == 0;
	}
	*client_full = mine >= g->max_per_client;
	return total >= g->max_total || *client_full;
}

/* s has sent its request: room for it, or false (then 503).  Past a
 * limit, the request takes the place of the oldest connection (of the same
 * address, when that address is what is full) that has not sent one: a
 * complete request beats one still trickling in, or an idle keep-alive.
 * Caller holds g->mu. */
static bool admit(struct http_guard *g, struct conn_slot *s)
{
	bool client_full;
	if (!past_limits(g, s, &client_full))
		return true;
	struct conn_slot *victim = NULL;
	for (uint32_t i = 0; i < g->nslots; i++) {
		struct conn_slot *t = &g->slots[i];
		if (t == s || !t->used || t->cut || t->called)
			continue;
		if (client_full && memcmp(t->addr, s->addr, 16) != 0)
			continue;
		if (!victim || t->t0 < victim->t0)
			victim = t;
	}
	if (!victim)
		return false;
	cut(victim, CUT_EVICTED);
	return true;
}

static void notify_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			      enum MHD_ConnectionNotificationCode code)
{
	struct http_guard *g = cls;
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *fi = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		const union MHD_ConnectionInfo *ai = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		if (!fi)
			return;
		unsigned char addr[16] = {0};
		const struct sockaddr *sa = ai ? ai->client_addr : NULL;
		if (sa && sa->sa_family == AF_INET) {
			addr[10] = addr[11] = 0xff;
			memcpy(addr + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
		} else if (sa && sa->sa_family == AF_INET6) {
			memcpy(addr, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
		}
		pthread_mutex_lock(&g->mu);
		struct conn_slot *s = NULL;
		for (uint32_t k = 0; k < g->nslots && !s; k++) {
			uint32_t i = (g->hint + k) % g->nslots;
			if (!g->slots[i].used) {
				s = &g->slots[i];
				g->hint = i + 1;
			}
		}
		if (s) { /* always: there are as many slots as libmicrohttpd takes connections */
			memset(s, 0, sizeof *s);
			s->used = true;
			s->fd = fi->connect_fd;
			memcpy(s->addr, addr, 16);
			s->t0 = now;
			bool client_full;
			s->over = past_limits(g, s, &client_full); /* cut soon unless its request wins a place */
		}
		pthread_mutex_unlock(&g->mu);
		*socket_context = s;
		return;
	}
	struct conn_slot *s = *socket_context;
	if (!s)
		return;
	unsigned status = 0;
	pthread_mutex_lock(&g->mu);
	uint64_t rx, tx;
	tcp_bytes(s->fd, &rx, &tx);
	bool began = rx > s->rx0;
	if (!s->answered && !s->told) {
		if (s->cut == CUT_DEADLINE)
			status = 408; /* in our handler or waiting for its body */
		else if (s->cut != CUT_NONE)
			status = 503;
		else if (!s->called && began && tx == s->tx0)
			/* libmicrohttpd gave up on the request without answering:
			 * its idle timeout, or a line it could not parse */
			status = s->seen || now - s->t0 >= g->idle_ns ? 408 : 400;
	}
	s->used = false;
	int fd = s->fd;
	pthread_mutex_unlock(&g->mu);
	*socket_context = NULL;
	if (status)
		write_status(fd, status);
}

static void *uri_logged(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct http_guard *g = cls;
	(void)uri;
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct conn_slot *s = ci ? ci->socket_context : NULL;
	if (s) {
		pthread_mutex_lock(&g->mu);
		s->seen = true;
		pthread_mutex_unlock(&g->mu);
	}
	return NULL; /* *con_cls stays NULL on the handler's first call */
}

static void *reaper(void *arg)
{
	struct http_guard *g = arg;
	pthread_mutex_lock(&g->mu);
	while (!g->stop) {
		uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
		for (uint32_t i = 0; i < g->nslots; i++) {
			struct conn_slot *s = &g->slots[i];
			if (!s->used)
				continue;
			if (s->cut) {
				/* still open a second after SHUT_RD: see cut() */
				if (!s->hard && now - s->cut_ns >= HTTP_GRACE_NS) {
					s->hard = true;
					shutdown(s->fd, SHUT_RDWR);
				}
				continue;
			}
			if (now - s->t0 >= g->deadline_ns && !s->streaming)
				cut(s, CUT_DEADLINE);
			else if (s->over && now - s->t0 >= HTTP_GRACE_NS)
				cut(s, CUT_OVER);
		}
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += 100 * 1000 * 1000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&g->wake, &g->mu, &until);
	}
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

static struct conn_slot *slot_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

void http_streaming(struct collector *c, struct MHD_Connection *conn)
{
	struct conn_slot *s = slot_of(conn);
	if (!s)
		return;
	pthread_mutex_lock(&c->guard->mu);
	s->streaming = true;
	pthread_mutex_unlock(&c->guard->mu);
}

static enum MHD_Result respond_close(struct MHD_Connection *conn, unsigned status, const char *body,
				     const char *retry_after)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(strlen(body), (void *)(uintptr_t)body, MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
	if (retry_after)
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

static bool is_push(const char *url)
{
	return strcmp(url, "/api/v1/metrics/custom") == 0 || strcmp(url, "/api/v1/metrics/batch") == 0;
}

static char headers_seen; /* *con_cls of a non-API request after its first call */

static enum MHD_Result route(struct collector *c, struct MHD_Connection *conn, const char *url, const char *method,
			     const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	if (strncmp(url, "/api/", 5) == 0 && strcmp(url, STREAM_PATH) != 0)
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
	if (strcmp(url, c->cfg.telemetry_path ? c->cfg.telemetry_path : "/metrics") == 0)
		return serve_metrics(c, conn);
	if (strcmp(url, "/-/healthy") == 0)
		return http_respond_static(conn, MHD_HTTP_OK, "text/plain; charset=utf-8", "shmetricsd is Healthy.\n");
	if (strcmp(url, "/-/ready") == 0)
		return serve_ready(c, conn);
	if (strcmp(url, "/") == 0)
		return http_respond_static(conn, MHD_HTTP_OK, "text/html; charset=utf-8", index_page);
	if (strcmp(url, STREAM_PATH) == 0)
		return stream_serve(c, conn);
	if (strcmp(url, "/dashboard") == 0 || strncmp(url, "/dashboard/", 11) == 0)
		return dashboard_serve(conn, url);
	return http_respond_static(conn, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
				   "not found; see / for the endpoints\n");
}


/* Every request: the limits above, then route(). */
static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
			       const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)version;
	struct collector *c = cls;
	struct http_guard *g = c->guard;
	struct conn_slot *s = slot_of(conn);
	if (!s) /* not reached: every connection has a slot */
		return route(c, conn, url, method, upload_data, upload_data_size, con_cls);
	pthread_mutex_lock(&g->mu);
	bool first = !s->called, limited = !is_push(url), room = true, too_big = s->too_big;
	if (first) {
		room = admit(g, s);
		s->over = false;
		s->called = true;
	}
	pthread_mutex_unlock(&g->mu);
	if (first) {
		if (!room)
			return respond_close(conn, MHD_HTTP_SERVICE_UNAVAILABLE, busy_text, HTTP_RETRY_AFTER);
		enum MHD_Result refused;
		if (!webconfig_admit(c->cfg.web, conn, &refused)) /* every route, the push API's too */
			return refused;
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (limited && cl && strtoull(cl, NULL, 10) > HTTP_BODY_LIMIT) /* libmicrohttpd checked the digits */
			return respond_close(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than 65536 bytes\n",
					     NULL);
	} else if (limited && *upload_data_size) {
		/* A body nobody wants: count it, drop it, answer 413 at its end
		 * when it was too long; hang up when it goes on and on. */
		pthread_mutex_lock(&g->mu);
		s->body += *upload_data_size;
		s->too_big |= s->body > HTTP_BODY_LIMIT;
		bool hang_up = s->body > HTTP_DISCARD_MAX;
		pthread_mutex_unlock(&g->mu);
		*upload_data_size = 0;
		return hang_up ? MHD_NO : MHD_YES;
	} else if (limited && too_big) {
		return respond_close(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body larger than 65536 bytes\n", NULL);
	}
	enum MHD_Result rc = route(c, conn, url, method, upload_data, upload_data_size, con_cls);
	if (MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS)) {
		pthread_mutex_lock(&g->mu);
		s->answered = true;
		pthread_mutex_unlock(&g->mu);
	}
	return rc;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct collector *c = cls;
	if (*con_cls && *con_cls != &headers_seen)
		api_completed(*con_cls);
	*con_cls = NULL;
	struct conn_slot *s = slot_of(conn);
	if (!s || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
		return; /* the connection is closing: the CLOSED notification decides */
	/* The answer is out: the next request's clock starts now. */
	uint64_t rx, tx;
	pthread_mutex_lock(&c->guard->mu);
	tcp_bytes(s->fd, &rx, &tx);
	s->t0 = shmet__now_ns(CLOCK_MONOTONIC);
	s->rx0 = rx;
	s->tx0 = tx;
	s->seen = s->called = s->answered = s->too_big = false;
	s->body = 0;
	pthread_mutex_unlock(&c->guard->mu);
}

/* libmicrohttpd logs a line for every connection a client breaks off:
 * clients must not be able to fill the log, so at most HTTP_LOG_PER_SECOND
 * lines a second, and then how many were left out. */
#define HTTP_LOG_PER_SECOND 10
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER; /* guards the three below */
static uint64_t log_second, log_lines, log_dropped;

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	uint64_t sec = shmet__now_ns(CLOCK_MONOTONIC) / 1000000000ull, dropped = 0;
	pthread_mutex_lock(&log_mu);
	if (sec != log_second) {
		dropped = log_dropped;
		log_second = sec;
		log_lines = log_dropped = 0;
	}
	bool show = log_lines < HTTP_LOG_PER_SECOND;
	log_lines += show;
	log_dropped += !show;
	pthread_mutex_unlock(&log_mu);
	if (dropped)
		collector_log("http: %llu more messages left out", (unsigned long long)dropped);
	if (!show)
		return;
	char line[512];
	vsnprintf(line, sizeof line, fmt, ap);
	size_t n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = 0;
	collector_warn("http: %s", line);
}

static void guard_free(struct collector *c)
{
	struct http_guard *g = c->guard;
	if (!g)
		return;
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->wake);
	free(g->slots);
	free(g);
	c->guard = NULL;
}

int http_start(struct collector *c, char *err, size_t errlen)
{
	const struct collector_config *cfg = &c->cfg;
	struct http_listener own, *ls = cfg->listeners;
	unsigned nl = cfg->nlisteners;
	if (nl == 0) { /* no --web.listen-address bound by the caller: listen_host:listen_port */
		char spec[300];
		bool v6 = strchr(cfg->listen_host, ':') != NULL;
		snprintf(spec, sizeof spec, "%s%s%s:%d", v6 ? "[" : "", cfg->listen_host, v6 ? "]" : "", cfg->listen_port);
		if (http_listen_bind(spec, &own, err, errlen) != 0)
			return SHMET_E_SYS;
		ls = &own;
		nl = 1;
	}
	if (nl > HTTP_MAX_LISTEN)
		nl = HTTP_MAX_LISTEN; /* main refuses more */
	struct http_guard *g = calloc(1, sizeof *g);
	if (!g) {
		http_listen_close(ls, nl);
		snprintf(err, errlen, "out of memory");
		return SHMET_E_SYS;
	}
	g->max_total = cfg->http_max_connections ? cfg->http_max_connections : HTTP_DEFAULT_MAX_CONNECTIONS;
	g->max_per_client = cfg->http_max_per_client ? cfg->http_max_per_client : HTTP_DEFAULT_MAX_PER_CLIENT;
	unsigned idle = cfg->http_idle_timeout ? cfg->http_idle_timeout : HTTP_DEFAULT_IDLE_TIMEOUT;
	unsigned whole = cfg->http_request_timeout ? cfg->http_request_timeout : HTTP_DEFAULT_REQUEST_TIMEOUT;
	g->deadline_ns = (uint64_t)whole * 1000000000ull;
	g->idle_ns = (uint64_t)idle * 1000000000ull;
	/* Room past the limit for the connections that will be cut, evicted
	 * or answered 503: past it libmicrohttpd leaves them in the backlog.
	 * Each listener's daemon may take that many; they share the slots. */
	uint32_t per_daemon = g->max_total + (g->max_total > HTTP_HEADROOM ? g->max_total : HTTP_HEADROOM);
	g->nslots = per_daemon * nl;
	g->slots = calloc(g->nslots, sizeof *g->slots);
	if (!g->slots) {
		free(g);
		http_listen_close(ls, nl);
		snprintf(err, errlen, "out of memory");
		return SHMET_E_SYS;
	}
	pthread_mutex_init(&g->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g->wake, &ca);
	pthread_condattr_destroy(&ca);
	c->guard = g;
	/* MHD_USE_TURBO: besides reading and writing without asking epoll
	 * first, libmicrohttpd then leaves the socket open for writing until it
	 * closes it, so that the CLOSED notification can still send a status. */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_EPOLL | MHD_USE_TURBO |
			 MHD_ALLOW_SUSPEND_RESUME; /* the event streams wait suspended (stream.c) */
	struct MHD_OptionItem tls[5] = {{MHD_OPTION_END, 0, NULL}};
	http_tls = webconfig_tls(cfg->web);
	if (http_tls) {
		const char *cert, *key, *cafile, *prio;
		webconfig_tls_options(cfg->web, &cert, &key, &cafile, &prio);
		int k = 0;
		tls[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)(uintptr_t)cert};
		tls[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)(uintptr_t)key};
		tls[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)(uintptr_t)prio};
		if (cafile)
			tls[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0, (void *)(uintptr_t)cafile};
		tls[k] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
		flags |= MHD_USE_TLS;
	}
	for (unsigned i = 0; i < nl; i++) {
		/* No per-address limit in libmicrohttpd (it would close the
		 * connection without a word): admit() applies ours. */
		struct MHD_Daemon *d = MHD_start_daemon(
			flags, 0, NULL, NULL, handler, c, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, c, MHD_OPTION_LISTEN_SOCKET,
			ls[i].fd, MHD_OPTION_ARRAY, tls, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)2, MHD_OPTION_CONNECTION_TIMEOUT,
			idle, MHD_OPTION_CONNECTION_LIMIT, per_daemon, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
			MHD_OPTION_NOTIFY_COMPLETED, completed, c, MHD_OPTION_NOTIFY_CONNECTION, notify_connection, g,
			MHD_OPTION_URI_LOG_CALLBACK, uri_logged, g, MHD_OPTION_END);
		if (!d) {
			snprintf(err, errlen, "cannot serve %s on %s (libmicrohttpd refused to start; see above)",
				 http_tls ? "HTTPS" : "HTTP", ls[i].addr);
			http_listen_close(ls + i, nl - i);
			http_stop(c);
			return SHMET_E_SYS;
		}
		ls[i].fd = -1; /* the daemon closes it when it stops */
		c->httpds[c->nhttpd++] = d;
	}
	c->httpd = c->httpds[0];
	if (pthread_create(&g->reaper, NULL, reaper, g) != 0) {
		snprintf(err, errlen, "cannot start the HTTP reaper thread");
		http_stop(c);
		return SHMET_E_SYS;
	}
	g->reaper_started = true;
	if (stream_start(c, err, errlen) != SHMET_OK) {
		http_stop(c);
		return SHMET_E_SYS;
	}
	c->bound_port = ls[0].port;
	const char *path = cfg->telemetry_path ? cfg->telemetry_path : "/metrics";
	bool open_to_others = false;
	char addrs[128] = "";
	for (unsigned i = 0; i < nl; i++) {
		collector_log("listening on %s://%s%s", http_tls ? "https" : "http", ls[i].addr, path);
		open_to_others |= !ls[i].loopback;
		size_t n = strlen(addrs);
		snprintf(addrs + n, sizeof addrs - n, "%s%s", n ? " " : "", ls[i].addr);
	}
	watch_publish(c, addrs); /* a second collector names us */
	if (open_to_others && !webconfig_authenticates(cfg->web))
		collector_warn("listening beyond loopback without authentication: anyone who can reach the port reads the "
			       "metrics%s; set basic_auth_users (and TLS) in --web.config.file",
			       cfg->push_token_file ? " (the push API still wants its token)" : "");
	return SHMET_OK;
}

void http_stop(struct collector *c)
{
	struct http_guard *g = c->guard;
	if (g && g->reaper_started) {
		pthread_mutex_lock(&g->mu);
		g->stop = true;
		pthread_cond_signal(&g->wake);
		pthread_mutex_unlock(&g->mu);
		pthread_join(g->reaper, NULL);
		g->reaper_started = false;
	}
	stream_stop(c); /* libmicrohttpd may not stop with streams suspended */
	for (unsigned i = 0; i < c->nhttpd; i++)
		MHD_stop_daemon(c->httpds[i]); /* their CLOSED notifications still use the guard */
	c->nhttpd = 0;
	c->httpd = NULL;
	stream_free(c);
	guard_free(c);
}
