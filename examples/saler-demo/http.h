/* http.h — the small HTTP/1.1 server side of saler-demo: read one request
 * from a connection (partial reads, size limits, deadlines), write one
 * response (partial writes, deadline), close politely.
 *
 * One connection is served by one single-threaded worker at a time, as in
 * gunicorn's sync workers.  Persistent connections are supported (a client
 * doing several steps of one flow stays on one worker) but bounded: a short
 * idle timeout and a request cap per connection, so an idle client cannot
 * hold a worker for long.  Nothing read from the socket is trusted: every
 * limit is checked before it is relied on, and bad input gives an error code
 * that the caller turns into a 4xx, never a crash.
 */
#ifndef SALER_HTTP_H
#define SALER_HTTP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

#define HTTP_HEAD_MAX 8192   /* request line + headers */
#define HTTP_BODY_MAX 16384  /* Content-Length */
#define HTTP_ADDR_MAX 64

struct http_request {
	char method[16];         /* as sent (truncated), for logs */
	enum saler_method method_id;
	char *path;              /* origin-form path, raw (not decoded), NUL-terminated */
	char *query;             /* after '?', raw, or NULL */
	int version_minor;       /* HTTP/1.x */
	bool keep_alive;
	bool has_head;           /* the request line and headers were parsed */
	char *body;              /* Content-Length bytes (NUL-terminated copy in place) */
	size_t body_len;
	char client[HTTP_ADDR_MAX]; /* X-Forwarded-For's first address, else the peer */
	char sid[40];            /* the "sid" cookie, or "" */
};

enum http_read_status {
	HTTP_READ_OK = 1,
	HTTP_READ_CLOSED = 0,      /* clean end before any byte of a request: no answer */
	HTTP_READ_IO = -1,         /* reset or other socket error: no answer possible */
	HTTP_READ_TIMEOUT = -2,    /* part of a request, then too slow: 408 */
	HTTP_READ_MALFORMED = -3,  /* 400 */
	HTTP_READ_HEAD_TOO_LARGE = -4, /* 431 */
	HTTP_READ_BODY_TOO_LARGE = -5, /* 413; the head was parsed */
	HTTP_READ_STOPPED = -6,    /* the worker was told to stop while waiting */
};

struct http_conn {
	int fd;
	char peer[HTTP_ADDR_MAX];
	size_t len;      /* bytes in buf */
	size_t consumed; /* bytes of buf that the previous request used */
	bool unread;     /* input may remain unread (close with a linger) */
	char buf[HTTP_HEAD_MAX + HTTP_BODY_MAX + 2];
};

struct http_response {
	int status;
	bool close;
	const char *content_type;
	size_t headers_len;
	char headers[512]; /* extra header lines, each ending in CRLF */
	size_t body_len;
	char body[8192];
};

/* Read the next request of the connection.  The first byte must arrive
 * before first_byte_deadline (CLOCK_MONOTONIC ns; the keep-alive idle limit,
 * or the request timeout for a new connection); the whole request within
 * timeout_ns of its first byte.  *stop set by a signal ends the wait. */
enum http_read_status http_read_request(struct http_conn *c, struct http_request *req,
					 int64_t first_byte_deadline, int64_t timeout_ns,
					 volatile sig_atomic_t *stop);

/* Write the response (status line, Content-Length, Connection, extra
 * headers, and the body unless head_only).  0, or -1 when the peer went away
 * or the deadline passed. */
int http_write_response(struct http_conn *c, const struct http_response *r, bool head_only, int64_t deadline);

/* Close, first draining (for up to a second) what the client may still be
 * sending when c->unread, so that it reads our answer instead of a reset. */
void http_close(struct http_conn *c);

/* Reason phrase of a status code. */
const char *http_reason(int status);

void http_resp_init(struct http_response *r, int status);
/* Append to the body / the extra headers; silently truncated at capacity
 * (the caller's text is small and bounded). */
void http_resp_body(struct http_response *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void http_resp_header(struct http_response *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* JSON-escape s into the body (without quotes). */
void http_resp_json_str(struct http_response *r, const char *s);

/* Decode application/x-www-form-urlencoded: find field `name` in the
 * &-separated pairs of `form`, and decode its value into out (NUL-terminated,
 * at most outsz-1 bytes).  1 found, 0 absent, -1 invalid encoding or too long. */
int http_form_get(const char *form, const char *name, char *out, size_t outsz);
/* Percent-decode (and '+' -> ' ' when plus_is_space) into out; -1 when the
 * input is invalid or out too small, else the decoded length. */
long http_pct_decode(const char *in, size_t n, char *out, size_t outsz, bool plus_is_space);

int64_t http_now_ns(void);

#endif
