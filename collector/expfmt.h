/* expfmt.h — what the collector's HTTP side adds to the exposition text of
 * libshm's format.h (buffer, numbers, escaping, lines): Accept /
 * Accept-Encoding negotiation and gzip.  The rules implemented here are the
 * measured ones in EXPOSITION.md (the § numbers below refer to it).
 *
 *   const char *ctype;
 *   enum shmet_expo_format f = shmet_negotiate(accept_header, &ctype);
 *   ... format the body with format.h ...
 *   serve it with Content-Type ctype, gzip'd by shmet_gzip when
 *   shmet_accepts_gzip(accept_encoding).
 *
 * Same contract as format.h: no global state, reentrant, untrusted input.
 */
#ifndef SHMET_EXPFMT_H
#define SHMET_EXPFMT_H

#include "format.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- HTTP negotiation ----------------------------------------------------- */
#define SHMET_CONTENT_TYPE_TEXT "text/plain; version=0.0.4; charset=utf-8"
#define SHMET_CONTENT_TYPE_OPENMETRICS "application/openmetrics-text; version=1.0.0; charset=utf-8"
#define SHMET_CONTENT_TYPE_OPENMETRICS_001 "application/openmetrics-text; version=0.0.1; charset=utf-8"

/* Pick the format for an Accept header (§2.1 recommended algorithm): q-values,
 * q=0 refuses; OpenMetrics for application/openmetrics-text without version,
 * 1.0.0, or 0.0.1; text for text/plain (no version, 0.0.4, 1.0.0) and the
 * text/any and any/any wildcards; the highest q wins, and a tie, NULL, empty
 * or garbage gives text.
 * Never fails (Go never answers 406 either).  *content_type, if not NULL, is
 * set to one of the SHMET_CONTENT_TYPE_* strings (static storage); the 0.0.1
 * one only when OpenMetrics 0.0.1 is the only OpenMetrics version asked for.
 * Input is untrusted: any bytes, any length, one linear pass, no allocation. */
enum shmet_expo_format shmet_negotiate(const char *accept, const char **content_type);

/* True when Accept-Encoding allows gzip: gzip or x-gzip listed with q > 0, or
 * neither listed and * with q > 0.  gzip;q=0 is respected (Go ignores it). */
bool shmet_accepts_gzip(const char *accept_encoding);

/* Append a gzip stream (RFC 1952) of in[0..len) to out.  level: -1 (zlib's
 * default, 6) or 0..9.  Returns 0; -EINVAL for a bad argument; -ENOMEM (and
 * out->oom set) when memory ran out; -EIO if zlib fails otherwise.  On error
 * out->len is restored, so a caller can fall back to the identity body. */
int shmet_gzip(const void *in, size_t len, shmet_buf *out, int level);

#ifdef __cplusplus
}
#endif

#endif /* SHMET_EXPFMT_H */
