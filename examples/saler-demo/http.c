/* http.c — request reading and response writing for saler-demo.  See http.h. */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

int64_t http_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Milliseconds left until deadline, for poll(); at least 1 while not due. */
static int ms_until(int64_t deadline)
{
	int64_t left = deadline - http_now_ns();
	if (left <= 0)
		return 0;
	if (left > (int64_t)INT32_MAX * 1000000)
		return INT32_MAX;
	return (int)((left + 999999) / 1000000);
}

/* Wait for fd to be ready for `events` until deadline.  1 ready, 0 timed
 * out, -1 error, -2 stop requested. */
static int wait_fd(int fd, short events, int64_t deadline, volatile sig_atomic_t *stop)
{
	for (;;) {
		if (stop && *stop)
			return -2;
		int ms = ms_until(deadline);
		if (ms == 0)
			return 0;
		struct pollfd p = {fd, events, 0};
		int n = poll(&p, 1, ms);
		if (n > 0)
			return 1;
		if (n == 0)
			continue; /* re-check the deadline (poll rounds) */
		if (errno != EINTR)
			return -1;
	}
}

const char *http_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 413: return "Content Too Large";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 503: return "Service Unavailable";
	default: return "Unknown";
	}
}

static bool is_tchar(int ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static enum saler_method method_id(const char *m)
{
	static const struct {
		const char *name;
		enum saler_method id;
	} t[] = {{"GET", METHOD_GET},	  {"HEAD", METHOD_HEAD},   {"POST", METHOD_POST},	{"PUT", METHOD_PUT},
		 {"DELETE", METHOD_DELETE}, {"PATCH", METHOD_PATCH}, {"OPTIONS", METHOD_OPTIONS}};
	for (size_t i = 0; i < sizeof t / sizeof *t; i++)
		if (strcmp(m, t[i].name) == 0)
			return t[i].id;
	return METHOD_OTHER;
}

/* Offset just past the blank line that ends the head, or 0 when absent.
 * Accepts CRLF and bare LF line ends. */
static size_t head_end(const char *b, size_t n)
{
	for (size_t i = 0; i + 1 < n; i++) {
		if (b[i] != '\n')
			continue;
		if (b[i + 1] == '\n')
			return i + 2;
		if (b[i + 1] == '\r' && i + 2 < n && b[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

static void trim(char **s, char **e)
{
	while (*s < *e && (**s == ' ' || **s == '\t'))
		(*s)++;
	while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r'))
		(*e)--;
}

static bool has_token(const char *v, const char *tok)
{
	size_t n = strlen(tok);
	const char *p = v;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		const char *s = p;
		while (*p && *p != ',')
			p++;
		const char *e = p;
		while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if ((size_t)(e - s) == n && strncasecmp(s, tok, n) == 0)
			return true;
	}
	return false;
}

/* Parse the head in c->buf[0..hlen) (NUL bytes already refused).  Fills req;
 * *content_length.  Writes NULs into the buffer to end the strings. */
static enum http_read_status parse_head(struct http_conn *c, size_t hlen, struct http_request *req,
					size_t *content_length)
{
	char *p = c->buf, *end = c->buf + hlen;
	/* Request line: method SP target SP HTTP/1.x */
	char *sp1 = memchr(p, ' ', (size_t)(end - p));
	if (!sp1 || sp1 == p)
		return HTTP_READ_MALFORMED;
	for (char *q = p; q < sp1; q++)
		if (!is_tchar((unsigned char)*q))
			return HTTP_READ_MALFORMED;
	size_t mlen = (size_t)(sp1 - p);
	snprintf(req->method, sizeof req->method, "%.*s", (int)mlen, p);
	req->method_id = mlen < sizeof req->method ? method_id(req->method) : METHOD_OTHER;
	char *target = sp1 + 1;
	char *sp2 = target;
	while (sp2 < end && *sp2 != ' ' && *sp2 != '\r' && *sp2 != '\n')
		sp2++;
	if (sp2 >= end || *sp2 != ' ' || sp2 == target)
		return HTTP_READ_MALFORMED;
	char *ver = sp2 + 1;
	char *eol = memchr(ver, '\n', (size_t)(end - ver));
	if (!eol)
		return HTTP_READ_MALFORMED;
	char *vend = eol;
	if (vend > ver && vend[-1] == '\r')
		vend--;
	if (vend - ver != 8 || memcmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1'))
		return HTTP_READ_MALFORMED;
	req->version_minor = ver[7] - '0';
	for (char *q = target; q < sp2; q++)
		if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
			return HTTP_READ_MALFORMED;
	if (*target != '/')
		return HTTP_READ_MALFORMED; /* only origin-form (no proxy forms, no "*") */
	*sp2 = '\0';
	req->path = target;
	char *qm = strchr(target, '?');
	if (qm) {
		*qm = '\0';
		req->query = qm + 1;
	}
	char *frag = strchr(qm ? qm + 1 : target, '#');
	if (frag)
		*frag = '\0';

	/* Headers. */
	bool keep = req->version_minor == 1, have_cl = false, have_host = false, close_tok = false;
	size_t cl = 0;
	p = eol + 1;
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			return HTTP_READ_MALFORMED;
		char *le = nl;
		if (le > p && le[-1] == '\r')
			le--;
		if (le == p)
			break; /* the blank line */
		if (*p == ' ' || *p == '\t')
			return HTTP_READ_MALFORMED; /* obsolete line folding */
		char *colon = memchr(p, ':', (size_t)(le - p));
		if (!colon || colon == p)
			return HTTP_READ_MALFORMED;
		for (char *q = p; q < colon; q++)
			if (!is_tchar((unsigned char)*q))
				return HTTP_READ_MALFORMED; /* also refuses "Name :" */
		char *vs = colon + 1, *ve = le;
		trim(&vs, &ve);
		for (char *q = vs; q < ve; q++)
			if ((unsigned char)*q < 0x20 && *q != '\t')
				return HTTP_READ_MALFORMED;
		size_t nlen = (size_t)(colon - p);
		*ve = '\0'; /* ve <= le < nl: never past this line */
#define HDR(lit) (nlen == sizeof(lit) - 1 && strncasecmp(p, lit, nlen) == 0)
		if (HDR("Content-Length")) {
			if (vs == ve || ve - vs > 9)
				return HTTP_READ_MALFORMED;
			size_t v = 0;
			for (char *q = vs; q < ve; q++) {
				if (*q < '0' || *q > '9')
					return HTTP_READ_MALFORMED;
				v = v * 10 + (size_t)(*q - '0');
			}
			if (have_cl && v != cl)
				return HTTP_READ_MALFORMED;
			have_cl = true;
			cl = v;
		} else if (HDR("Transfer-Encoding")) {
			return HTTP_READ_MALFORMED; /* no chunked bodies here (and no TE+CL smuggling) */
		} else if (HDR("Host")) {
			if (have_host)
				return HTTP_READ_MALFORMED;
			have_host = true;
		} else if (HDR("Connection")) {
			if (has_token(vs, "close"))
				close_tok = true;
			else if (has_token(vs, "keep-alive"))
				keep = true;
		} else if (HDR("X-Forwarded-For")) {
			/* Trusted because the demo only listens on loopback, as behind
			 * a local reverse proxy: the first address is the client. */
			char *comma = strchr(vs, ',');
			char *ae = comma ? comma : ve;
			char *as = vs;
			trim(&as, &ae);
			char addr[HTTP_ADDR_MAX];
			unsigned char bin[16];
			if (ae > as && (size_t)(ae - as) < sizeof addr) {
				memcpy(addr, as, (size_t)(ae - as));
				addr[ae - as] = '\0';
				if (inet_pton(AF_INET, addr, bin) == 1 || inet_pton(AF_INET6, addr, bin) == 1)
					snprintf(req->client, sizeof req->client, "%s", addr);
			}
		} else if (HDR("Cookie")) {
			for (char *q = vs; (q = strstr(q, "sid=")) != NULL; q += 4) {
				if (q != vs && q[-1] != ' ' && q[-1] != ';')
					continue;
				size_t n = strspn(q + 4, "0123456789abcdef");
				if (n == 32) {
					memcpy(req->sid, q + 4, 32);
					req->sid[32] = '\0';
				}
				break;
			}
		}
#undef HDR
		p = nl + 1;
	}
	if (req->version_minor == 1 && !have_host)
		return HTTP_READ_MALFORMED; /* RFC 9112 3.2: a 1.1 request without Host is a 400 */
	if (close_tok)
		keep = false;
	req->keep_alive = keep;
	req->has_head = true;
	*content_length = cl;
	return HTTP_READ_OK;
}

enum http_read_status http_read_request(struct http_conn *c, struct http_request *req, int64_t first_byte_deadline,
					 int64_t timeout_ns, volatile sig_atomic_t *stop)
{
	memset(req, 0, sizeof *req);
	req->method_id = METHOD_OTHER;
	snprintf(req->client, sizeof req->client, "%s", c->peer);
	/* Keep what the client pipelined after the previous request. */
	if (c->consumed) {
		memmove(c->buf, c->buf + c->consumed, c->len - c->consumed);
		c->len -= c->consumed;
		c->consumed = 0;
	}
	int64_t deadline = c->len ? http_now_ns() + timeout_ns : first_byte_deadline;
	size_t hlen = 0, cl = 0, need = 0;
	const size_t cap = sizeof c->buf - 1;
	for (;;) {
		if (!hlen) {
			hlen = head_end(c->buf, c->len);
			if (hlen > HTTP_HEAD_MAX) {
				c->unread = true;
				return HTTP_READ_HEAD_TOO_LARGE;
			}
			if (hlen) {
				if (memchr(c->buf, '\0', hlen)) {
					c->unread = true;
					return HTTP_READ_MALFORMED;
				}
				enum http_read_status st = parse_head(c, hlen, req, &cl);
				if (st != HTTP_READ_OK) {
					c->unread = true;
					return st;
				}
				if (cl > HTTP_BODY_MAX) {
					c->unread = true;
					return HTTP_READ_BODY_TOO_LARGE;
				}
				need = hlen + cl;
			} else if (c->len >= HTTP_HEAD_MAX) {
				c->unread = true;
				return HTTP_READ_HEAD_TOO_LARGE;
			}
		}
		if (hlen && c->len >= need)
			break;
		/* need more bytes */
		ssize_t n = recv(c->fd, c->buf + c->len, cap - c->len, 0);
		if (n > 0) {
			if (c->len == 0)
				deadline = http_now_ns() + timeout_ns; /* the request clock starts */
			c->len += (size_t)n;
			continue;
		}
		if (n == 0) /* EOF; after half a request the client may still read a 400 */
			return c->len ? HTTP_READ_MALFORMED : HTTP_READ_CLOSED;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return HTTP_READ_IO;
		int w = wait_fd(c->fd, POLLIN, deadline, stop);
		if (w == 1)
			continue;
		if (w == -2)
			return c->len ? HTTP_READ_IO : HTTP_READ_STOPPED;
		if (w == 0 && c->len) {
			c->unread = true;
			return HTTP_READ_TIMEOUT;
		}
		return w == 0 ? HTTP_READ_CLOSED : HTTP_READ_IO;
	}
	req->body = c->buf + hlen;
	req->body_len = cl;
	/* NUL-terminate the body for the form parser.  The buffer has one spare
	 * byte beyond cap for this. */
	if (c->len > need) {
		/* A pipelined request follows: shift it one byte so the body can end
		 * in a NUL without losing its first byte. */
		memmove(c->buf + need + 1, c->buf + need, c->len - need);
		c->len++;
		c->consumed = need + 1;
	} else {
		c->consumed = need;
	}
	c->buf[need] = '\0';
	return HTTP_READ_OK;
}

static int write_all(int fd, struct iovec *iov, int cnt, int64_t deadline)
{
	while (cnt > 0) {
		ssize_t n = writev(fd, iov, cnt);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return -1;
			if (wait_fd(fd, POLLOUT, deadline, NULL) != 1)
				return -1;
			continue;
		}
		size_t left = (size_t)n;
		while (cnt > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (char *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

int http_write_response(struct http_conn *c, const struct http_response *r, bool head_only, int64_t deadline)
{
	char head[1024];
	int n = snprintf(head, sizeof head,
			 "HTTP/1.1 %d %s\r\nServer: saler-demo\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: %s\r\n%.*s\r\n",
			 r->status, http_reason(r->status),
			 r->content_type ? r->content_type : "application/json", r->body_len,
			 r->close ? "close" : "keep-alive", (int)r->headers_len, r->headers);
	if (n < 0 || (size_t)n >= sizeof head)
		return -1;
	struct iovec iov[2] = {{head, (size_t)n}, {(void *)r->body, head_only ? 0 : r->body_len}};
	/* MSG_NOSIGNAL is not available to writev; SIGPIPE is ignored by the
	 * worker instead, so a vanished client is an EPIPE here. */
	return write_all(c->fd, iov, 2, deadline);
}

void http_close(struct http_conn *c)
{
	if (c->fd < 0)
		return;
	if (c->unread) {
		/* Lingering close: stop sending, then read and drop what the client
		 * is still sending, so its kernel does not get a reset before it has
		 * read our answer. */
		shutdown(c->fd, SHUT_WR);
		int64_t deadline = http_now_ns() + 1000000000;
		size_t drained = 0;
		char sink[4096];
		while (drained < (1u << 20)) {
			ssize_t n = recv(c->fd, sink, sizeof sink, 0);
			if (n > 0) {
				drained += (size_t)n;
				continue;
			}
			if (n == 0)
				break;
			if (errno == EINTR)
				continue;
			if ((errno != EAGAIN && errno != EWOULDBLOCK) || wait_fd(c->fd, POLLIN, deadline, NULL) != 1)
				break;
		}
	}
	close(c->fd);
	c->fd = -1;
}

void http_resp_init(struct http_response *r, int status)
{
	r->status = status;
	r->close = false;
	r->content_type = "application/json";
	r->headers_len = 0;
	r->headers[0] = '\0';
	r->body_len = 0;
	r->body[0] = '\0';
}

static void vappend(char *buf, size_t cap, size_t *len, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));
static void vappend(char *buf, size_t cap, size_t *len, const char *fmt, va_list ap)
{
	if (*len >= cap - 1)
		return;
	int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
	if (n < 0)
		return;
	*len += (size_t)n < cap - *len ? (size_t)n : cap - *len - 1;
}

void http_resp_body(struct http_response *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vappend(r->body, sizeof r->body, &r->body_len, fmt, ap);
	va_end(ap);
}

void http_resp_header(struct http_response *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vappend(r->headers, sizeof r->headers, &r->headers_len, fmt, ap);
	va_end(ap);
}

void http_resp_json_str(struct http_response *r, const char *s)
{
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			http_resp_body(r, "\\%c", ch);
		else if (ch < 0x20 || ch == 0x7f)
			http_resp_body(r, "\\u%04x", ch);
		else
			http_resp_body(r, "%c", ch);
	}
}

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = tolower(ch);
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

long http_pct_decode(const char *in, size_t n, char *out, size_t outsz, bool plus_is_space)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		int ch = (unsigned char)in[i];
		if (ch == '%') {
			if (i + 2 >= n)
				return -1;
			int hi = hexval((unsigned char)in[i + 1]), lo = hexval((unsigned char)in[i + 2]);
			if (hi < 0 || lo < 0)
				return -1;
			ch = hi * 16 + lo;
			i += 2;
		} else if (ch == '+' && plus_is_space) {
			ch = ' ';
		}
		if (o + 1 >= outsz)
			return -1;
		out[o++] = (char)ch;
	}
	if (outsz == 0)
		return -1;
	out[o] = '\0';
	return (long)o;
}

int http_form_get(const char *form, const char *name, char *out, size_t outsz)
{
	size_t nlen = strlen(name);
	const char *p = form;
	while (p && *p) {
		const char *amp = strchr(p, '&');
		size_t plen = amp ? (size_t)(amp - p) : strlen(p);
		if (plen > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=')
			return http_pct_decode(p + nlen + 1, plen - nlen - 1, out, outsz, true) < 0 ? -1 : 1;
		p = amp ? amp + 1 : NULL;
	}
	return 0;
}
