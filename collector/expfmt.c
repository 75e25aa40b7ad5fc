/* expfmt.c — what only an HTTP server needs of the exposition format:
 * Accept / Accept-Encoding negotiation and gzip; see expfmt.h.  The text
 * itself (buffer, numbers, escaping, lines) is libshm's format.c.
 */
#define ZLIB_CONST
#include "expfmt.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ======================================================================== */
/* Accept / Accept-Encoding                                                 */
/* ======================================================================== */

/* One comma-separated element of an Accept-like header (RFC 7231 §5.3):
 * token[/token] *(OWS ";" OWS name[=value]).  Only what we decide on is
 * kept; anything unexpected makes the element unusable, never the header. */
struct hdr_elem {
	const char *tok;
	size_t tok_len;
	const char *version; /* NULL when absent */
	size_t version_len;
	int q;               /* per mille */
	bool ok;
};

static bool is_tchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
		return true;
	return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static const char *skip_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

static bool ieq(const char *s, size_t n, const char *lit)
{
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c - 'A' + 'a');
		if (lit[i] == '\0' || c != (unsigned char)lit[i])
			return false;
	}
	return lit[n] == '\0';
}

/* qvalue = "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]; digits past the third
 * are ignored.  -1 when malformed. */
static int parse_q(const char *v, size_t n)
{
	int q, scale = 100;
	size_t i = 1;

	if (!v || n == 0 || (v[0] != '0' && v[0] != '1'))
		return -1;
	q = (v[0] - '0') * 1000;
	if (i < n && v[i] == '.') {
		for (i++; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
			q += (v[i] - '0') * scale;
			scale /= 10;
		}
	}
	if (i != n || q > 1000)
		return -1;
	return q;
}

/* Parses the element at p; returns where it ended: at ',' or at the NUL. */
static const char *hdr_next(const char *p, struct hdr_elem *e)
{
	e->tok = NULL;
	e->tok_len = 0;
	e->version = NULL;
	e->version_len = 0;
	e->q = 1000;
	e->ok = true;

	p = skip_ows(p);
	e->tok = p;
	while (is_tchar((unsigned char)*p) || *p == '/')
		p++;
	e->tok_len = (size_t)(p - e->tok);
	if (e->tok_len == 0)
		e->ok = false;
	p = skip_ows(p);
	while (*p == ';') {
		const char *name, *val = NULL;
		size_t name_len, val_len = 0;

		p = skip_ows(p + 1);
		name = p;
		while (is_tchar((unsigned char)*p))
			p++;
		name_len = (size_t)(p - name);
		p = skip_ows(p);
		if (*p == '=') {
			p = skip_ows(p + 1);
			if (*p == '"') {
				val = ++p;
				while (*p && *p != '"')
					p += (*p == '\\' && p[1]) ? 2 : 1;
				val_len = (size_t)(p - val);
				if (*p == '"')
					p++;
				else
					e->ok = false;
			} else {
				val = p;
				while (is_tchar((unsigned char)*p))
					p++;
				val_len = (size_t)(p - val);
			}
			p = skip_ows(p);
		}
		if (name_len == 0) {
			e->ok = false;
		} else if (ieq(name, name_len, "q")) {
			e->q = parse_q(val, val_len);
			if (e->q < 0)
				e->ok = false;
		} else if (ieq(name, name_len, "version")) {
			e->version = val ? val : name + name_len;
			e->version_len = val_len;
		}
	}
	if (*p != ',' && *p != '\0') {
		/* Garbage inside the element: skip it, honouring quotes so that a
		 * quoted comma does not start a new element. */
		bool quoted = false;

		e->ok = false;
		while (*p && (quoted || *p != ',')) {
			if (quoted && *p == '\\' && p[1])
				p++;
			else if (*p == '"')
				quoted = !quoted;
			p++;
		}
	}
	return p;
}

static bool version_is(const struct hdr_elem *e, const char *v)
{
	return e->version && e->version_len == strlen(v) && memcmp(e->version, v, e->version_len) == 0;
}

enum shmet_expo_format shmet_negotiate(const char *accept, const char **content_type)
{
	int text_q = 0, om_q = 0, om1_q = 0;
	const char *p = accept;
	struct hdr_elem e;

	while (p && *p) {
		p = hdr_next(p, &e);
		if (*p == ',')
			p++;
		if (!e.ok || e.q == 0)
			continue;
		if (ieq(e.tok, e.tok_len, "application/openmetrics-text")) {
			if (!e.version || version_is(&e, "1.0.0")) {
				if (e.q > om1_q)
					om1_q = e.q;
			} else if (!version_is(&e, "0.0.1")) {
				continue;
			}
			if (e.q > om_q)
				om_q = e.q;
		} else if (ieq(e.tok, e.tok_len, "text/plain")) {
			if (e.version && !version_is(&e, "0.0.4") && !version_is(&e, "1.0.0"))
				continue;
			if (e.q > text_q)
				text_q = e.q;
		} else if (ieq(e.tok, e.tok_len, "text/*") || ieq(e.tok, e.tok_len, "*/*")) {
			if (e.q > text_q)
				text_q = e.q;
		}
	}
	if (om_q > text_q) {
		if (content_type)
			*content_type = om1_q > 0 ? SHMET_CONTENT_TYPE_OPENMETRICS : SHMET_CONTENT_TYPE_OPENMETRICS_001;
		return SHMET_EXPO_OPENMETRICS;
	}
	if (content_type)
		*content_type = SHMET_CONTENT_TYPE_TEXT;
	return SHMET_EXPO_TEXT;
}

bool shmet_accepts_gzip(const char *accept_encoding)
{
	int gzip_q = -1, star_q = -1;
	const char *p = accept_encoding;
	struct hdr_elem e;

	while (p && *p) {
		p = hdr_next(p, &e);
		if (*p == ',')
			p++;
		if (!e.ok)
			continue;
		if (ieq(e.tok, e.tok_len, "gzip") || ieq(e.tok, e.tok_len, "x-gzip")) {
			if (e.q > gzip_q)
				gzip_q = e.q;
		} else if (ieq(e.tok, e.tok_len, "*")) {
			if (e.q > star_q)
				star_q = e.q;
		}
	}
	/* "*" only speaks for codings not named (RFC 7231 §5.3.4). */
	return gzip_q >= 0 ? gzip_q > 0 : star_q > 0;
}

/* ======================================================================== */
/* gzip                                                                     */
/* ======================================================================== */

int shmet_gzip(const void *in, size_t len, shmet_buf *out, int level)
{
	const unsigned char *ip = in;
	size_t left = len, start;
	z_stream zs;
	int rc, ret = 0;

	if (!out || (!in && len) || level < -1 || level > 9)
		return -EINVAL;
	if (out->oom)
		return -ENOMEM;
	start = out->len;
	memset(&zs, 0, sizeof zs);
	/* windowBits 15 + 16: zlib writes the gzip header and trailer itself. */
	rc = deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
	if (rc != Z_OK) {
		if (rc == Z_MEM_ERROR)
			out->oom = 1;
		return rc == Z_MEM_ERROR ? -ENOMEM : -EIO;
	}
	/* One allocation in the common case: the bound holds any input. */
	if (shmet_buf_reserve(out, deflateBound(&zs, (uLong)len)) != 0) {
		ret = -ENOMEM;
		goto done;
	}
	for (;;) {
		size_t room;
		uInt avail;

		if (zs.avail_in == 0 && left) {
			/* avail_in is 32-bit: feed larger inputs in slices. */
			const size_t chunk = left > UINT_MAX ? UINT_MAX : left;

			zs.next_in = ip;
			zs.avail_in = (uInt)chunk;
			ip += chunk;
			left -= chunk;
		}
		room = out->cap - out->len - 1;
		if (room == 0) {
			if (shmet_buf_reserve(out, out->cap / 2 + 4096) != 0) {
				ret = -ENOMEM;
				goto done;
			}
			room = out->cap - out->len - 1;
		}
		avail = room > UINT_MAX ? UINT_MAX : (uInt)room;
		zs.next_out = (Bytef *)out->data + out->len;
		zs.avail_out = avail;
		rc = deflate(&zs, left ? Z_NO_FLUSH : Z_FINISH);
		out->len += avail - zs.avail_out;
		if (rc == Z_STREAM_END)
			break;
		if (rc != Z_OK && rc != Z_BUF_ERROR) {
			ret = -EIO;
			goto done;
		}
	}
done:
	deflateEnd(&zs);
	if (ret != 0)
		out->len = start;
	if (out->data)
		out->data[out->len] = '\0';
	return ret;
}
