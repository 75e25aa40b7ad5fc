/* format.h — Prometheus text 0.0.4 / OpenMetrics 1.0 exposition text.
 *
 * Everything needed to turn numbers and names into bytes a real scraper
 * accepts, and nothing about where the numbers come from or how they travel:
 * an output buffer, Go-identical float formatting, escaping, HELP/TYPE and
 * sample lines.  Part of libshm so that every reader formats alike: the
 * collector's scrape and JSON API (collector/expfmt.h adds HTTP negotiation
 * and gzip) and shmetrics-dump, which links nothing but libshm.  The rules
 * implemented here are the measured ones in EXPOSITION.md, the project's
 * exposition reference (the § numbers below refer to it).
 *
 *   shmet_buf b;
 *   shmet_buf_init(&b);
 *   shmet_expo_family(&b, f, SHMET_EXPO_COUNTER, "http_requests_total", "Requests.");
 *   struct shmet_expo_label l[] = { SHMET_EXPO_LABEL("code", "200") };
 *   shmet_expo_sample(&b, f, "http_requests_total", NULL, l, 1, NULL, 0, 1027, true);
 *   shmet_expo_eof(&b, f);
 *   if (b.oom) ... 500 ...; else serve b.data, b.len.
 *   shmet_buf_free(&b);
 *
 * Contract:
 *  - Nothing here aborts, prints or keeps global state; all functions are
 *    reentrant and may run on any thread (a shmet_buf is not shared).
 *  - Appenders never fail loudly: on allocation failure the buffer's oom flag
 *    is set and every later append is a no-op, so a renderer checks once at
 *    the end instead of after every line.
 *  - The caller owns validity of metric and label NAMES (they are written
 *    verbatim); label values and HELP text are escaped here, and any invalid
 *    UTF-8 in them is replaced by U+FFFD, because one bad byte fails the
 *    whole scrape (§1.2).
 */
#ifndef SHMET_FORMAT_H
#define SHMET_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Output buffer --------------------------------------------------------
 * Invariant: data is NULL (nothing appended yet) or data[len] == '\0', so a
 * finished text body can be handed to string functions; gzip output may hold
 * NULs, use len.  reset() keeps the memory so one buffer serves every scrape.
 */
typedef struct shmet_buf {
	char *data;
	size_t len, cap;
	int oom;                /* sticky: set on the first failed allocation */
} shmet_buf;

void shmet_buf_init(shmet_buf *b);
void shmet_buf_free(shmet_buf *b);
void shmet_buf_reset(shmet_buf *b);     /* len = 0, oom = 0, memory kept */
/* Make room for `extra` more bytes; 0, or -ENOMEM (and oom set). */
int shmet_buf_reserve(shmet_buf *b, size_t extra);
void shmet_buf_append(shmet_buf *b, const void *p, size_t n);
void shmet_buf_putc(shmet_buf *b, char c);
void shmet_buf_puts(shmet_buf *b, const char *s);
void shmet_buf_put_u64(shmet_buf *b, uint64_t v);

/* ---- Numbers --------------------------------------------------------------
 * shmet_fmt_double: Go's strconv.FormatFloat(v, 'g', -1, 64) as common/expfmt
 * writes sample values in text 0.0.4 (§1.3): shortest round-trip digits, the
 * e form when the decimal exponent X < -4 or X >= 6, NaN, +Inf, -Inf, and 0
 * for -0.  shmet_fmt_double_om adds ".0" when the result has neither '.' nor
 * 'e' (OpenMetrics floats, §2.2).  shmet_fmt_bound is the spelling of le and
 * quantile label values in BOTH formats: the OpenMetrics canonical one, which
 * Prometheus 3 also normalises to, so series identity never depends on the
 * negotiated format (§5).  All return the length and NUL-terminate `out`.
 */
#define SHMET_FMT_DOUBLE_MAX 32
size_t shmet_fmt_double(char out[SHMET_FMT_DOUBLE_MAX], double v);
size_t shmet_fmt_double_om(char out[SHMET_FMT_DOUBLE_MAX], double v);
size_t shmet_fmt_bound(char out[SHMET_FMT_DOUBLE_MAX], double v);
/* A finite double as a JSON number for the collector's API: the same
 * shortest round-trip digits, laid out as C's %.15g (or %.16g, %.17g when
 * the digits need them) lays them out, with ".0" when that shows neither
 * '.' nor 'e', so a real stays a real to a reader that cares (2.0, -0.0).
 * NaN and the infinities are not JSON: written as shmet_fmt_double does. */
size_t shmet_fmt_double_json(char out[SHMET_FMT_DOUBLE_MAX], double v);

/* ---- Escaping ------------------------------------------------------------- */
/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF) within avail bytes, or 0. */
size_t shmet_utf8_len(const char *s, size_t avail);
/* Label value, both formats: \ -> \\, " -> \", LF -> \n; all else raw. */
void shmet_escape_label_value(shmet_buf *b, const char *s, size_t n);
/* HELP text.  0.0.4: \ -> \\, LF -> \n, and " stays raw (\" breaks promtool).
 * OpenMetrics: the same plus " -> \". */
void shmet_escape_help_text(shmet_buf *b, const char *s, size_t n);
void shmet_escape_help_om(shmet_buf *b, const char *s, size_t n);

/* ---- Families and samples -------------------------------------------------- */
enum shmet_expo_format { SHMET_EXPO_TEXT, SHMET_EXPO_OPENMETRICS };

enum shmet_expo_type {
	SHMET_EXPO_COUNTER,
	SHMET_EXPO_GAUGE,
	SHMET_EXPO_HISTOGRAM,
	SHMET_EXPO_SUMMARY,
	SHMET_EXPO_UNTYPED
};

/* Pointer + length, so values can be read straight out of the segment. */
struct shmet_expo_label {
	const char *name;
	size_t name_len;
	const char *value;
	size_t value_len;
};
#define SHMET_EXPO_LABEL(n, v) { (n), sizeof(n) - 1, (v), sizeof(v) - 1 }

/* The HELP and TYPE lines of one family.  Text: HELP then TYPE under `name`.
 * OpenMetrics: TYPE then HELP (the spec's order), counters under `name`
 * without "_total", untyped as "unknown".  An empty or NULL help writes no
 * HELP line (an empty OM HELP is a parse error in Prometheus, §2.2).
 * Counters are passed with their "_total" name; a counter name without it is
 * typed "unknown" in OpenMetrics, as Go does, because a counter family whose
 * sample has no _total suffix is rejected by strict parsers. */
void shmet_expo_family(shmet_buf *b, enum shmet_expo_format fmt, enum shmet_expo_type type,
		       const char *name, const char *help);

/* One sample line: name suffix{labels[,bound_name="bound"]} value\n.
 *  - suffix: "_bucket", "_sum", "_count" or NULL/"".
 *  - Labels with an empty value are left out (empty == absent, §1.1); with no
 *    label left and no bound the braces are left out too.
 *  - bound_name: "le", "quantile" or NULL; written last, via shmet_fmt_bound.
 *  - integral: the value is a count (bucket, _count).  OpenMetrics requires an
 *    integer there, so an integer value below 2^64 is written without ".0";
 *    text 0.0.4 always uses shmet_fmt_double, like Go (1234567 -> 1.234567e+06).
 */
void shmet_expo_sample(shmet_buf *b, enum shmet_expo_format fmt, const char *name, const char *suffix,
		       const struct shmet_expo_label *labels, size_t nlabels, const char *bound_name,
		       double bound, double value, bool integral);

/* "# EOF\n" for OpenMetrics; nothing for text (an empty registry is an empty
 * 0.0.4 body and a lone "# EOF\n" in OpenMetrics, §6 row 32). */
void shmet_expo_eof(shmet_buf *b, enum shmet_expo_format fmt);

#ifdef __cplusplus
}
#endif

#endif /* SHMET_FORMAT_H */
