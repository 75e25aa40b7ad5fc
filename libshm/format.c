/* format.c — exposition text: the output buffer, float formatting, escaping,
 * HELP/TYPE and sample lines; see format.h for the contract.  The one place
 * numbers and names become exposition bytes: the collector's scrape, its JSON
 * API and shmetrics-dump all format through here.
 *
 * Reading order: the output buffer, float formatting (the only subtle part),
 * escaping, family/sample lines.
 */
#include "format.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* Output buffer                                                            */
/* ======================================================================== */

void shmet_buf_init(shmet_buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->oom = 0;
}

void shmet_buf_free(shmet_buf *b)
{
	free(b->data);
	shmet_buf_init(b);
}

void shmet_buf_reset(shmet_buf *b)
{
	b->len = 0;
	b->oom = 0;
	if (b->data)
		b->data[0] = '\0';
}

static int buf_grow(shmet_buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	/* +1: the NUL that keeps data[len] a string terminator. */
	if (extra > SIZE_MAX - 1 - b->len)
		goto oom;
	need = b->len + extra + 1;
	cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	p = realloc(b->data, cap);
	if (!p)
		goto oom;
	b->data = p;
	b->cap = cap;
	return 0;
oom:
	/* realloc failure leaves the old block intact: what was written stays
	 * readable, and the flag stops every later append. */
	b->oom = 1;
	return -ENOMEM;
}

int shmet_buf_reserve(shmet_buf *b, size_t extra)
{
	if (b->oom)
		return -ENOMEM;
	if (extra < b->cap - b->len)
		return 0;
	return buf_grow(b, extra);
}

/* Hot-path helpers: reserve once, write through a raw pointer, commit. */
static inline char *buf_span(shmet_buf *b, size_t n)
{
	if (b->oom || (n >= b->cap - b->len && buf_grow(b, n) != 0))
		return NULL;
	return b->data + b->len;
}

static inline void buf_commit(shmet_buf *b, char *end)
{
	b->len = (size_t)(end - b->data);
	b->data[b->len] = '\0';
}

void shmet_buf_append(shmet_buf *b, const void *p, size_t n)
{
	char *o = buf_span(b, n);

	if (!o)
		return;
	if (n)
		memcpy(o, p, n);
	buf_commit(b, o + n);
}

void shmet_buf_putc(shmet_buf *b, char c)
{
	char *o = buf_span(b, 1);

	if (!o)
		return;
	*o++ = c;
	buf_commit(b, o);
}

void shmet_buf_puts(shmet_buf *b, const char *s)
{
	if (s)
		shmet_buf_append(b, s, strlen(s));
}

static const char digit_pairs[201] =
	"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
	"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
	"8081828384858687888990919293949596979899";

/* Two digits per division: half the divisions of the naive loop, and no
 * printf, whose locale and format parsing cost more than the digits. */
static size_t u64_to_dec(char out[20], uint64_t v)
{
	char tmp[20];
	char *p = tmp + sizeof tmp;
	size_t n;

	while (v >= 100) {
		unsigned r = (unsigned)(v % 100);
		v /= 100;
		p -= 2;
		memcpy(p, digit_pairs + 2 * r, 2);
	}
	if (v >= 10) {
		p -= 2;
		memcpy(p, digit_pairs + 2 * v, 2);
	} else {
		*--p = (char)('0' + v);
	}
	n = (size_t)(tmp + sizeof tmp - p);
	memcpy(out, p, n);
	return n;
}

void shmet_buf_put_u64(shmet_buf *b, uint64_t v)
{
	char *o = buf_span(b, 20);

	if (!o)
		return;
	buf_commit(b, o + u64_to_dec(o, v));
}

/* ======================================================================== */
/* Float formatting: Go's strconv.FormatFloat(v, 'g', -1, 64)               */
/* ======================================================================== */

/* A positive decimal: `digits` (no trailing zeros, nd of them), the first
 * digit standing for 10^x. */
struct dec {
	uint64_t digits;
	int nd;
	int x;
};

static int count_digits(uint64_t v)
{
	int n = 1;

	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

static void dec_set(struct dec *d, uint64_t digits, int exp10_of_last_digit)
{
	if (digits == 0) { /* callers never pass it; the loop below would spin */
		d->digits = 0;
		d->nd = 1;
		d->x = 0;
		return;
	}
	while (digits % 10 == 0) {
		digits /= 10;
		exp10_of_last_digit++;
	}
	d->digits = digits;
	d->nd = count_digits(digits);
	d->x = exp10_of_last_digit + d->nd - 1;
}

/*
 * Shortest round-trip digits, exactly, with 128-bit integers.
 *
 * Why not snprintf("%.*e") + strtod (EXPOSITION.md §1.3's recipe)?  It costs
 * about 0.8 us per non-integral value here, i.e. 80 ms for a 100k-sample
 * scrape, twice the whole budget.  The recipe is kept as the fallback for
 * the magnitudes this path cannot hold in 128 bits.
 *
 * v = m * 2^q.  The doubles that strtod maps to v are the reals within half
 * a gap of v: up to v + 2^q/2, and down to v - 2^q/2, or v - 2^q/4 when m is
 * a power of two (the gap below is then half as wide: the case behind
 * 7.120236347223045e-307).  The ends belong to v only when m is even
 * (strtod rounds ties to even).  Scaled by 10^t, where t puts v on a grid of
 * 17 or 18 significant digits, this interval always holds a grid point; the
 * shortest decimal is the coarsest grid (10^j points) still meeting it, and
 * among the at most two points of that grid around v the nearer wins.
 * v and the two half gaps are held as exact integers (w, dp, dm) in a unit
 * that makes all three whole, one grid step being `unit` of them, so no
 * rounding happens anywhere.  Go, Python's repr and the round-trip recipe
 * all give this same answer (there are no ties to break: v would have to
 * sit halfway between two shortest decimals, which needs a gap wider than
 * the power of two dividing v allows).
 *
 * Domain: w = m * 5^t * 4 < 2^128 holds for t <= 31 (v >= ~1e-15), and
 * w = m * 2^(q+2) for v < 2^126.  Outside it this returns false.
 */
__extension__ typedef unsigned __int128 u128;

static const uint64_t pow5_u64[28] = {
	1ull, 5ull, 25ull, 125ull, 625ull, 3125ull, 15625ull, 78125ull, 390625ull,
	1953125ull, 9765625ull, 48828125ull, 244140625ull, 1220703125ull,
	6103515625ull, 30517578125ull, 152587890625ull, 762939453125ull,
	3814697265625ull, 19073486328125ull, 95367431640625ull, 476837158203125ull,
	2384185791015625ull, 11920928955078125ull, 59604644775390625ull,
	298023223876953125ull, 1490116119384765625ull, 7450580596923828125ull,
};

static const uint64_t pow10_u64[20] = {
	1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull,
	100000000ull, 1000000000ull, 10000000000ull, 100000000000ull,
	1000000000000ull, 10000000000000ull, 100000000000000ull,
	1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
	1000000000000000000ull, 10000000000000000000ull,
};

static u128 pow5_128(int t)
{
	if (t <= 27)
		return pow5_u64[t];
	return (u128)pow5_u64[27] * pow5_u64[t - 27];
}

static u128 pow10_128(int r)
{
	if (r <= 19)
		return pow10_u64[r];
	return (u128)pow10_u64[19] * pow10_u64[r - 19];
}

/* floor(e * log10(2)): 78913 / 2^18 is close enough for |e| <= 1650, and
 * e * 78913 is never a multiple of 2^18 there, so floor is exact on both
 * sides of zero.  Written without >> on negatives (implementation-defined). */
static int floor_log10_pow2(int e)
{
	long p = (long)e * 78913;

	return (int)(p >= 0 ? p / 262144 : -((-p + 262143) / 262144));
}

/* x / d and x % d where d is often a power of two (then 2^dshift, and the
 * shift avoids a 128-bit division call). */
static uint64_t divmod(u128 x, u128 d, int dshift, u128 *rem)
{
	if (dshift >= 0) {
		*rem = x & (((u128)1 << dshift) - 1);
		return (uint64_t)(x >> dshift);
	}
	*rem = x % d;
	return (uint64_t)(x / d);
}

static bool shortest_exact(uint64_t m, int q, bool lower_gap_half, struct dec *d)
{
	const bool incl = (m & 1) == 0;
	const int t = 16 - floor_log10_pow2(q + 52); /* v * 10^t in [1e16, 1e18) */
	u128 w, dp, dm, unit, r_lo, r_hi, r_v, below, step;
	uint64_t low_n, high_n, vq, hq, lq, p10, fl, pick;
	int j, ushift = -1;

	if (t >= 0) {
		/* v * 10^t = m * 5^t * 2^(q+t); one grid step is 2^(2-q-t) units. */
		const int a = q + t;
		u128 f;

		if (t > 31)
			return false;
		f = pow5_128(t);
		w = (u128)m * f * 4;
		dp = f * 2;
		dm = lower_gap_half ? f : f * 2;
		if (a <= 2) {
			ushift = 2 - a;
		} else {
			w <<= a - 2;
			dp <<= a - 2;
			dm <<= a - 2;
			ushift = 0;
		}
		unit = (u128)1 << ushift;
	} else {
		/* Large integers (q >= 4): everything times 4 to share the code
		 * below; one grid step is then 4 * 10^-t. */
		if (t < -22 || q > 73)
			return false;
		w = (u128)m << (q + 2);
		dp = (u128)1 << (q + 1);
		dm = lower_gap_half ? (u128)1 << q : dp;
		unit = 4 * pow10_128(-t);
	}

	/* Grid points n with w - dm <= n*unit <= w + dp (strict unless incl). */
	high_n = divmod(w + dp, unit, ushift, &r_hi);
	if (!incl && r_hi == 0)
		high_n--;
	low_n = divmod(w - dm, unit, ushift, &r_lo);
	if (!incl || r_lo != 0)
		low_n++;
	vq = divmod(w, unit, ushift, &r_v);
	if (low_n > high_n || low_n == 0)
		return false; /* cannot happen; the caller falls back if it does */

	/* The coarsest grid (10^j steps) that still meets the interval: a
	 * multiple of 10^j lies in [low_n, high_n] iff
	 * floor(high_n / 10^j) > floor((low_n - 1) / 10^j). */
	hq = high_n / 10;
	lq = (low_n - 1) / 10;
	p10 = 1;
	j = 0;
	while (hq > lq) {
		hq /= 10;
		lq /= 10;
		p10 *= 10;
		j++;
	}

	/* The one or two points of that grid on either side of v: the nearer. */
	fl = vq / p10;
	below = (u128)(vq % p10) * unit + r_v; /* < p10 * unit <= w + dp: fits */
	step = (u128)p10 * unit;
	{
		const bool lo_ok = fl * p10 >= low_n;
		const bool hi_ok = (fl + 1) * p10 <= high_n;

		if (lo_ok && hi_ok) {
			const u128 above = step - below;

			pick = below < above ? fl : below > above ? fl + 1 : fl + (fl & 1);
		} else if (lo_ok) {
			pick = fl;
		} else if (hi_ok) {
			pick = fl + 1;
		} else {
			return false;
		}
	}
	dec_set(d, pick, j - t);
	return true;
}

/* EXPOSITION.md §1.3's recipe, for the magnitudes the exact path cannot hold
 * (below ~1e-15, subnormals included, and above 2^126).  For a normal v it
 * starts at 15 digits: 15-digit decimals are more than 4 gaps apart there,
 * so at most one lies in the interval, and if one does, it minus its
 * trailing zeros is the shortest form.  Failing that, 16 then 17 digits,
 * where the correctly rounded decimal is the nearest.  A subnormal's gap can
 * be wider than any of those grids (5e-324), so it tries every precision.
 * At a power of two the interval is wider above v, so the decimal one unit
 * above is tried as well. */
static bool try_decimal(double a, uint64_t dig, int x, int p)
{
	char s[48];

	snprintf(s, sizeof s, "%" PRIu64 "e%d", dig, x - (p - 1));
	return strtod(s, NULL) == a;
}

static void shortest_slow(double a, bool subnormal, bool pow2, struct dec *d)
{
	char s[48];
	uint64_t dig = 0;
	int p, x = 0;

	for (p = subnormal ? 1 : 15; p <= 17; p++) {
		const char *c;

		snprintf(s, sizeof s, "%.*e", p - 1, a);
		dig = 0;
		for (c = s; *c != 'e'; c++) /* skips the point, whatever LC_NUMERIC says */
			if (*c >= '0' && *c <= '9')
				dig = dig * 10 + (uint64_t)(*c - '0');
		x = (int)strtol(c + 1, NULL, 10);
		if (strtod(s, NULL) == a)
			break;
		if (pow2) {
			uint64_t up = dig + 1;
			int ux = x;

			if (up == pow10_u64[p]) {
				up /= 10;
				ux++;
			}
			if (try_decimal(a, up, ux, p)) {
				dig = up;
				x = ux;
				break;
			}
		}
	}
	/* p = 17 always round-trips, so the loop ends with a match. */
	dec_set(d, dig, x - (count_digits(dig) - 1));
}

/* The layout half of %g for the shortest digits: e form when X < -4 or
 * X >= eprec, exponent signed, >= 2 digits.  Go forces eprec to 6 for the
 * shortest form; C's %.Pg uses P. */
static size_t format_g(char *out, bool neg, const struct dec *d, int eprec)
{
	char ds[20];
	char *p = out;
	const int nd = d->nd;
	const int x = d->x;

	u64_to_dec(ds, d->digits);
	if (neg)
		*p++ = '-';
	if (x < -4 || x >= eprec) {
		int e = x < 0 ? -x : x;

		*p++ = ds[0];
		if (nd > 1) {
			*p++ = '.';
			memcpy(p, ds + 1, (size_t)nd - 1);
			p += nd - 1;
		}
		*p++ = 'e';
		*p++ = x < 0 ? '-' : '+';
		if (e >= 100) {
			*p++ = (char)('0' + e / 100);
			e %= 100;
		}
		memcpy(p, digit_pairs + 2 * e, 2);
		p += 2;
	} else if (x >= 0) {
		const int ip = x + 1;

		if (nd <= ip) {
			memcpy(p, ds, (size_t)nd);
			p += nd;
			memset(p, '0', (size_t)(ip - nd));
			p += ip - nd;
		} else {
			memcpy(p, ds, (size_t)ip);
			p += ip;
			*p++ = '.';
			memcpy(p, ds + ip, (size_t)(nd - ip));
			p += nd - ip;
		}
	} else {
		*p++ = '0';
		*p++ = '.';
		memset(p, '0', (size_t)(-x - 1));
		p += -x - 1;
		memcpy(p, ds, (size_t)nd);
		p += nd;
	}
	*p = '\0';
	return (size_t)(p - out);
}

static size_t format_go(char *out, bool neg, const struct dec *d)
{
	return format_g(out, neg, d, 6);
}

/* The shortest round-trip digits of a finite, non-zero a > 0. */
static void shortest(double a, struct dec *d)
{
	uint64_t bits, frac;
	unsigned bexp;

	/* Counters, counts and most gauges: an integer below 2^53 is exact, so its
	 * digits minus trailing zeros are the shortest round-trip form. */
	if (a < 9007199254740992.0) {
		const uint64_t n = (uint64_t)a;

		if ((double)n == a) {
			dec_set(d, n, 0);
			return;
		}
	}
	memcpy(&bits, &a, sizeof bits);
	bexp = (unsigned)(bits >> 52);
	frac = bits & ((UINT64_C(1) << 52) - 1);
	if (bexp == 0) {
		shortest_slow(a, true, false, d); /* far below the exact domain */
	} else {
		const bool pow2 = frac == 0 && bexp > 1;

		if (!shortest_exact(frac | (UINT64_C(1) << 52), (int)bexp - 1075, pow2, d))
			shortest_slow(a, false, pow2, d);
	}
}

size_t shmet_fmt_double(char out[SHMET_FMT_DOUBLE_MAX], double v)
{
	bool neg;
	double a;
	struct dec d;

	if (isnan(v)) {
		memcpy(out, "NaN", 4);
		return 3;
	}
	if (isinf(v)) {
		memcpy(out, v > 0 ? "+Inf" : "-Inf", 5);
		return 4;
	}
	if (v == 0) { /* -0 too, as Go's writeFloat */
		memcpy(out, "0", 2);
		return 1;
	}
	neg = v < 0;
	a = neg ? -v : v;
	shortest(a, &d);
	return format_go(out, neg, &d);
}

size_t shmet_fmt_double_json(char out[SHMET_FMT_DOUBLE_MAX], double v)
{
	struct dec d;
	size_t n;

	if (!isfinite(v))
		return shmet_fmt_double(out, v);
	if (v == 0) {
		n = signbit(v) ? 4 : 3;
		memcpy(out, signbit(v) ? "-0.0" : "0.0", n + 1);
		return n;
	}
	shortest(v < 0 ? -v : v, &d);
	/* %.15g when 15 digits round-trip (the shortest form then has at most
	 * 15), else %.16g or %.17g: the precision is max(15, digits). */
	n = format_g(out, v < 0, &d, d.nd > 15 ? d.nd : 15);
	if (!memchr(out, '.', n) && !memchr(out, 'e', n)) {
		memcpy(out + n, ".0", 3);
		n += 2;
	}
	return n;
}

size_t shmet_fmt_double_om(char out[SHMET_FMT_DOUBLE_MAX], double v)
{
	size_t n = shmet_fmt_double(out, v);

	/* OpenMetrics floats need '.' or 'e'; NaN and the infinities end in a
	 * letter (and go through this test unchanged: no '.' but 'N'/'f'). */
	if (out[n - 1] >= '0' && out[n - 1] <= '9' && !memchr(out, '.', n) && !memchr(out, 'e', n)) {
		memcpy(out + n, ".0", 3);
		n += 2;
	}
	return n;
}

size_t shmet_fmt_bound(char out[SHMET_FMT_DOUBLE_MAX], double v)
{
	return shmet_fmt_double_om(out, v);
}

/* ======================================================================== */
/* Escaping                                                                 */
/* ======================================================================== */

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs, no
 * surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
	const unsigned c = p[0];
	unsigned lo = 0x80, hi = 0xBF;

	if (c >= 0xC2 && c <= 0xDF)
		return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
	if (c >= 0xE0 && c <= 0xEF) {
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
		return avail >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
	}
	if (c >= 0xF0 && c <= 0xF4) {
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
		return avail >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 &&
				       (p[3] & 0xC0) == 0x80
			       ? 4
			       : 0;
	}
	return 0;
}

size_t shmet_utf8_len(const char *s, size_t avail)
{
	if (!avail)
		return 0;
	return (unsigned char)s[0] < 0x80 ? 1 : utf8_len((const unsigned char *)s, avail);
}

static void escape(shmet_buf *b, const char *s, size_t n, bool quote)
{
	const unsigned char *p = (const unsigned char *)s;
	const unsigned char *end = p + n;
	char *o;

	/* Worst case: every byte an invalid one, replaced by 3-byte U+FFFD. */
	if (n > (SIZE_MAX - 1) / 3) {
		b->oom = 1;
		return;
	}
	o = buf_span(b, 3 * n);
	if (!o)
		return;
	while (p < end) {
		const unsigned char c = *p;

		if (c >= 0x80) {
			const size_t k = utf8_len(p, (size_t)(end - p));

			if (k) {
				memcpy(o, p, k);
				o += k;
				p += k;
			} else {
				memcpy(o, "\xEF\xBF\xBD", 3);
				o += 3;
				p++;
			}
			continue;
		}
		if (c == '\\') {
			*o++ = '\\';
			*o++ = '\\';
		} else if (c == '\n') {
			*o++ = '\\';
			*o++ = 'n';
		} else if (c == '"' && quote) {
			*o++ = '\\';
			*o++ = '"';
		} else {
			*o++ = (char)c;
		}
		p++;
	}
	buf_commit(b, o);
}

void shmet_escape_label_value(shmet_buf *b, const char *s, size_t n)
{
	escape(b, s, n, true);
}

void shmet_escape_help_text(shmet_buf *b, const char *s, size_t n)
{
	escape(b, s, n, false);
}

void shmet_escape_help_om(shmet_buf *b, const char *s, size_t n)
{
	escape(b, s, n, true);
}

/* ======================================================================== */
/* Families and samples                                                     */
/* ======================================================================== */

#define BUF_LIT(b, lit) shmet_buf_append((b), (lit), sizeof(lit) - 1)

static const char *type_word(enum shmet_expo_format fmt, enum shmet_expo_type type)
{
	switch (type) {
	case SHMET_EXPO_COUNTER:
		return "counter";
	case SHMET_EXPO_GAUGE:
		return "gauge";
	case SHMET_EXPO_HISTOGRAM:
		return "histogram";
	case SHMET_EXPO_SUMMARY:
		return "summary";
	case SHMET_EXPO_UNTYPED:
		break;
	}
	return fmt == SHMET_EXPO_OPENMETRICS ? "unknown" : "untyped";
}

static void meta_line(shmet_buf *b, const char *kw, const char *name, size_t name_len, const char *word)
{
	shmet_buf_puts(b, kw);
	shmet_buf_append(b, name, name_len);
	shmet_buf_putc(b, ' ');
	shmet_buf_puts(b, word);
	shmet_buf_putc(b, '\n');
}

static void help_line(shmet_buf *b, enum shmet_expo_format fmt, const char *name, size_t name_len,
		      const char *help)
{
	BUF_LIT(b, "# HELP ");
	shmet_buf_append(b, name, name_len);
	shmet_buf_putc(b, ' ');
	escape(b, help, strlen(help), fmt == SHMET_EXPO_OPENMETRICS);
	shmet_buf_putc(b, '\n');
}

void shmet_expo_family(shmet_buf *b, enum shmet_expo_format fmt, enum shmet_expo_type type,
		       const char *name, const char *help)
{
	const bool has_help = help && *help;
	const char *word = type_word(fmt, type);
	size_t len = strlen(name);

	if (fmt != SHMET_EXPO_OPENMETRICS) {
		if (has_help)
			help_line(b, fmt, name, len, help);
		meta_line(b, "# TYPE ", name, len, word);
		return;
	}
	if (type == SHMET_EXPO_COUNTER) {
		if (len > 6 && memcmp(name + len - 6, "_total", 6) == 0)
			len -= 6;
		else
			word = "unknown";
	}
	meta_line(b, "# TYPE ", name, len, word);
	if (has_help)
		help_line(b, fmt, name, len, help);
}

/* OpenMetrics counts must be integers (§2.2); Go writes them with its uint
 * writer.  Anything else a caller marks integral (a fraction, >= 2^64, NaN)
 * falls back to the float form rather than being truncated. */
static size_t fmt_om_value(char out[SHMET_FMT_DOUBLE_MAX], double v, bool integral)
{
	if (integral && v > -18446744073709551616.0 && v < 18446744073709551616.0) {
		const double a = v < 0 ? -v : v;
		const uint64_t n = (uint64_t)a;

		if ((double)n == a) {
			size_t k = 0;

			if (v < 0 && n != 0)
				out[k++] = '-';
			k += u64_to_dec(out + k, n);
			out[k] = '\0';
			return k;
		}
	}
	return shmet_fmt_double_om(out, v);
}

void shmet_expo_sample(shmet_buf *b, enum shmet_expo_format fmt, const char *name, const char *suffix,
		       const struct shmet_expo_label *labels, size_t nlabels, const char *bound_name,
		       double bound, double value, bool integral)
{
	char num[SHMET_FMT_DOUBLE_MAX];
	bool open = false;
	size_t i, n;

	shmet_buf_puts(b, name);
	shmet_buf_puts(b, suffix);
	for (i = 0; labels && i < nlabels; i++) {
		if (labels[i].value_len == 0)
			continue;
		shmet_buf_putc(b, open ? ',' : '{');
		open = true;
		shmet_buf_append(b, labels[i].name, labels[i].name_len);
		BUF_LIT(b, "=\"");
		escape(b, labels[i].value, labels[i].value_len, true);
		shmet_buf_putc(b, '"');
	}
	if (bound_name) {
		shmet_buf_putc(b, open ? ',' : '{');
		open = true;
		shmet_buf_puts(b, bound_name);
		BUF_LIT(b, "=\"");
		n = shmet_fmt_bound(num, bound);
		shmet_buf_append(b, num, n);
		shmet_buf_putc(b, '"');
	}
	if (open)
		shmet_buf_putc(b, '}');
	shmet_buf_putc(b, ' ');
	if (fmt == SHMET_EXPO_OPENMETRICS)
		n = fmt_om_value(num, value, integral);
	else
		n = shmet_fmt_double(num, value);
	num[n++] = '\n';
	shmet_buf_append(b, num, n);
}

void shmet_expo_eof(shmet_buf *b, enum shmet_expo_format fmt)
{
	if (fmt == SHMET_EXPO_OPENMETRICS)
		BUF_LIT(b, "# EOF\n");
}
