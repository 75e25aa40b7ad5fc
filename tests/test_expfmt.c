/* test_expfmt.c — exposition primitives against EXPOSITION.md §6 and Go.
 *
 * Row numbers refer to the conformance corpus in EXPOSITION.md §6.  Float
 * formatting is checked three ways: fixed strings from the reference, over
 * 100,000 vectors whose expected strings come from Python's repr() laid out
 * with Go's 'g' rule (tests/data/gen_float_vectors.py, run at test time), and
 * random bit patterns against an independent implementation of the
 * snprintf/strtod recipe in §1.3.
 *
 * One deliberate difference from Go's text writer: le/quantile values use the
 * OpenMetrics spelling in both formats (le="1.0", not le="1"), so a series
 * keeps its identity whichever format a scraper negotiates (§5).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "expfmt.h"

/* ---- Helpers ------------------------------------------------------------- */

/* C-escaped copy, so a failure shows trailing spaces, LF and NUL plainly. */
static char *show(const char *s, size_t n)
{
	char *out = malloc(4 * n + 1), *o = out;
	size_t i;

	if (!out)
		return NULL;
	for (i = 0; i < n; i++) {
		const unsigned char c = (unsigned char)s[i];

		if (c == '\n') {
			*o++ = '\\';
			*o++ = 'n';
		} else if (c < 0x20 || c == 0x7f) {
			o += sprintf(o, "\\x%02x", c);
		} else {
			*o++ = (char)c;
		}
	}
	*o = '\0';
	return out;
}

static void check_mem(const char *expected, const char *actual, size_t actual_len, const char *what,
		      const char *file, int line)
{
	const size_t elen = strlen(expected);
	char *e, *a;

	if (actual && elen == actual_len && memcmp(expected, actual, elen) == 0)
		return;
	e = show(expected, elen);
	a = actual ? show(actual, actual_len) : NULL;
	print_error("%s:%d: %s\n  expected: \"%s\"\n  actual:   \"%s\"\n", file, line, what, e ? e : "?",
		    a ? a : "(null)");
	free(e);
	free(a);
	_fail(file, line);
}

#define EXPECT_STR(exp, act) check_mem((exp), (act), strlen(act), #act, __FILE__, __LINE__)
#define EXPECT_BUF(exp, buf) check_mem((exp), (buf).data ? (buf).data : "", (buf).len, #buf, __FILE__, __LINE__)

static void expect_double(double v, const char *text, const char *om, const char *file, int line)
{
	char out[SHMET_FMT_DOUBLE_MAX];
	char what[64];
	size_t n;

	snprintf(what, sizeof what, "shmet_fmt_double(%.17g)", v);
	n = shmet_fmt_double(out, v);
	check_mem(text, out, n, what, file, line);
	if (strlen(out) != n)
		_fail(file, line);
	snprintf(what, sizeof what, "shmet_fmt_double_om(%.17g)", v);
	n = shmet_fmt_double_om(out, v);
	check_mem(om, out, n, what, file, line);
}
#define EXPECT_DOUBLE(v, text, om) expect_double((v), (text), (om), __FILE__, __LINE__)

static void expect_negotiate(const char *accept, enum shmet_expo_format want, const char *want_ct,
			     const char *file, int line)
{
	const char *ct = NULL;
	enum shmet_expo_format got = shmet_negotiate(accept, &ct);

	if (got != want || !ct || strcmp(ct, want_ct) != 0) {
		print_error("%s:%d: shmet_negotiate(\"%s\")\n  expected: %s \"%s\"\n  actual:   %s \"%s\"\n", file,
			    line, accept ? accept : "(null)", want == SHMET_EXPO_TEXT ? "TEXT" : "OPENMETRICS",
			    want_ct, got == SHMET_EXPO_TEXT ? "TEXT" : "OPENMETRICS", ct ? ct : "(null)");
		_fail(file, line);
	}
}
#define EXPECT_TEXT(accept) expect_negotiate((accept), SHMET_EXPO_TEXT, SHMET_CONTENT_TYPE_TEXT, __FILE__, __LINE__)
#define EXPECT_OM(accept) \
	expect_negotiate((accept), SHMET_EXPO_OPENMETRICS, SHMET_CONTENT_TYPE_OPENMETRICS, __FILE__, __LINE__)
#define EXPECT_OM001(accept) \
	expect_negotiate((accept), SHMET_EXPO_OPENMETRICS, SHMET_CONTENT_TYPE_OPENMETRICS_001, __FILE__, __LINE__)

static void expect_gzip(const char *ae, bool want, const char *file, int line)
{
	const bool got = shmet_accepts_gzip(ae);

	if (got != want) {
		print_error("%s:%d: shmet_accepts_gzip(\"%s\")\n  expected: %d\n  actual:   %d\n", file, line,
			    ae ? ae : "(null)", want, got);
		_fail(file, line);
	}
}
#define EXPECT_GZIP(ae, want) expect_gzip((ae), (want), __FILE__, __LINE__)

/* xorshift64: deterministic, so a failing value reproduces. */
static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static double from_bits(uint64_t b)
{
	double v;

	memcpy(&v, &b, sizeof v);
	return v;
}

/* The i-th of a run of random doubles' bits: half of them in the metric
 * range, 2^-60 .. 2^130, and every seventh with a short mantissa (short
 * decimals, powers of two). */
static uint64_t random_bits(uint64_t *s, long i)
{
	uint64_t b = rng_next(s);

	if (i & 1)
		b = (b & UINT64_C(0x800FFFFFFFFFFFFF)) | ((UINT64_C(963) + (b >> 40) % 190) << 52);
	if (i % 7 == 0)
		b &= ~UINT64_C(0xFFFFFFFFFF);
	return b;
}

#define L(n, v) SHMET_EXPO_LABEL(n, v)

/* ---- Buffer -------------------------------------------------------------- */

static void test_expfmt_buf_appends_nul_terminated_string(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	assert_null(b.data);
	shmet_buf_puts(&b, "abc");
	shmet_buf_putc(&b, ' ');
	shmet_buf_append(&b, "xyz123", 3);
	shmet_buf_put_u64(&b, 42);
	shmet_buf_puts(&b, NULL);
	shmet_buf_append(&b, NULL, 0);
	EXPECT_BUF("abc xyz42", b);
	assert_int_equal(b.data[b.len], '\0');
	assert_int_equal(b.oom, 0);
	shmet_buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
}

static void test_expfmt_buf_put_u64_edges_match_printf(void **state)
{
	uint64_t vals[64];
	size_t n = 0, i;
	uint64_t p = 1;
	char want[32];
	shmet_buf b;

	(void)state;
	vals[n++] = 0;
	vals[n++] = UINT64_MAX;
	vals[n++] = UINT64_C(1) << 63;
	for (i = 0; i < 19; i++, p *= 10) {
		vals[n++] = p;
		vals[n++] = p - 1;
		vals[n++] = p + 1;
	}
	vals[n++] = p; /* 10^19 */
	shmet_buf_init(&b);
	for (i = 0; i < n; i++) {
		shmet_buf_reset(&b);
		shmet_buf_put_u64(&b, vals[i]);
		snprintf(want, sizeof want, "%" PRIu64, vals[i]);
		EXPECT_BUF(want, b);
	}
	shmet_buf_free(&b);
}

static void test_expfmt_buf_growth_keeps_content(void **state)
{
	shmet_buf b;
	size_t i;

	(void)state;
	shmet_buf_init(&b);
	for (i = 0; i < 100000; i++)
		shmet_buf_putc(&b, (char)('a' + i % 26));
	assert_int_equal(b.len, 100000);
	assert_true(b.cap > b.len);
	for (i = 0; i < 100000; i++)
		assert_int_equal(b.data[i], 'a' + i % 26);
	assert_int_equal(b.data[b.len], '\0');
	shmet_buf_free(&b);
}

static void test_expfmt_buf_size_overflow_sets_oom_and_stops(void **state)
{
	shmet_buf b;
	char c = 'x';

	(void)state;
	shmet_buf_init(&b);
	shmet_buf_puts(&b, "kept");
	assert_int_equal(shmet_buf_reserve(&b, SIZE_MAX), -ENOMEM);
	assert_int_equal(b.oom, 1);
	shmet_buf_append(&b, &c, 1);
	shmet_buf_puts(&b, "dropped");
	shmet_buf_put_u64(&b, 7);
	shmet_escape_label_value(&b, "v", 1);
	shmet_expo_eof(&b, SHMET_EXPO_OPENMETRICS);
	EXPECT_BUF("kept", b);
	/* reset clears the flag and reuses the memory */
	shmet_buf_reset(&b);
	assert_int_equal(b.oom, 0);
	shmet_buf_puts(&b, "again");
	EXPECT_BUF("again", b);
	shmet_buf_free(&b);
}

static void test_expfmt_buf_reset_keeps_memory(void **state)
{
	shmet_buf b;
	char *before;
	size_t cap;

	(void)state;
	shmet_buf_init(&b);
	shmet_buf_puts(&b, "some text that is long enough");
	before = b.data;
	cap = b.cap;
	shmet_buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_ptr_equal(b.data, before);
	assert_int_equal(b.cap, cap);
	EXPECT_BUF("", b);
	shmet_buf_free(&b);
}

/* ---- Floats -------------------------------------------------------------- */

static void test_expfmt_float_exposition_examples_match_go(void **state)
{
	(void)state;
	/* §1.3 examples */
	EXPECT_DOUBLE(1e6, "1e+06", "1e+06");
	EXPECT_DOUBLE(123456, "123456", "123456.0");
	EXPECT_DOUBLE(1234567, "1.234567e+06", "1.234567e+06");
	EXPECT_DOUBLE(100000, "100000", "100000.0");
	EXPECT_DOUBLE(123456.7, "123456.7", "123456.7");
	EXPECT_DOUBLE(0.0001, "0.0001", "0.0001");
	EXPECT_DOUBLE(0.00001, "1e-05", "1e-05");
	EXPECT_DOUBLE(0.1 + 0.2, "0.30000000000000004", "0.30000000000000004");
	EXPECT_DOUBLE(9007199254740993.0, "9.007199254740992e+15", "9.007199254740992e+15");
	EXPECT_DOUBLE(18446744073709551615.0, "1.8446744073709552e+19", "1.8446744073709552e+19");
	EXPECT_DOUBLE(DBL_MAX, "1.7976931348623157e+308", "1.7976931348623157e+308");
	EXPECT_DOUBLE(5e-324, "5e-324", "5e-324");
	EXPECT_DOUBLE(1.395066363e9, "1.395066363e+09", "1.395066363e+09");
	/* the power-of-two case: the gap below v is half the gap above */
	EXPECT_DOUBLE(7.120236347223045e-307, "7.120236347223045e-307", "7.120236347223045e-307");
	EXPECT_DOUBLE(ldexp(1.0, -1017), "7.120236347223045e-307", "7.120236347223045e-307");
	/* layout boundaries */
	EXPECT_DOUBLE(999999, "999999", "999999.0");
	EXPECT_DOUBLE(1e21, "1e+21", "1e+21");
	EXPECT_DOUBLE(0.00012345, "0.00012345", "0.00012345");
	EXPECT_DOUBLE(-0.000012345, "-1.2345e-05", "-1.2345e-05");
	EXPECT_DOUBLE(1e100, "1e+100", "1e+100");
	EXPECT_DOUBLE(1.5e-300, "1.5e-300", "1.5e-300");
	EXPECT_DOUBLE(DBL_MIN, "2.2250738585072014e-308", "2.2250738585072014e-308");
	EXPECT_DOUBLE(0.1, "0.1", "0.1");
	EXPECT_DOUBLE(12.345, "12.345", "12.345");
	EXPECT_DOUBLE(-1234567.0, "-1.234567e+06", "-1.234567e+06");
}

static void test_expfmt_float_rows_2_to_6_match_table(void **state)
{
	(void)state;
	/* row 2 */
	EXPECT_DOUBLE(0.0, "0", "0.0");
	EXPECT_DOUBLE(-0.0, "0", "0.0");
	EXPECT_DOUBLE(-1.0, "-1", "-1.0");
	EXPECT_DOUBLE(1.0, "1", "1.0");
	/* row 3 */
	EXPECT_DOUBLE(0.1, "0.1", "0.1");
	EXPECT_DOUBLE(1e6, "1e+06", "1e+06");
	EXPECT_DOUBLE(123456, "123456", "123456.0");
	EXPECT_DOUBLE(1234567, "1.234567e+06", "1.234567e+06");
	/* row 4 */
	EXPECT_DOUBLE(1e-5, "1e-05", "1e-05");
	EXPECT_DOUBLE(1e-4, "0.0001", "0.0001");
	EXPECT_DOUBLE(0.1 + 0.2, "0.30000000000000004", "0.30000000000000004");
	/* row 5 */
	EXPECT_DOUBLE((double)((UINT64_C(1) << 53) + 1), "9.007199254740992e+15", "9.007199254740992e+15");
	EXPECT_DOUBLE((double)UINT64_MAX, "1.8446744073709552e+19", "1.8446744073709552e+19");
	EXPECT_DOUBLE(DBL_MAX, "1.7976931348623157e+308", "1.7976931348623157e+308");
	EXPECT_DOUBLE(5e-324, "5e-324", "5e-324");
	/* row 6 */
	EXPECT_DOUBLE(INFINITY, "+Inf", "+Inf");
	EXPECT_DOUBLE(-INFINITY, "-Inf", "-Inf");
	EXPECT_DOUBLE(NAN, "NaN", "NaN");
	EXPECT_DOUBLE(-NAN, "NaN", "NaN");
}

static void test_expfmt_bound_uses_om_canonical_spelling(void **state)
{
	static const struct {
		double v;
		const char *want;
	} cases[] = {
		{0.0, "0.0"},   {-0.0, "0.0"},        {0.001, "0.001"}, {0.005, "0.005"}, {0.01, "0.01"},
		{0.1, "0.1"},   {0.95, "0.95"},       {1.0, "1.0"},     {1.7, "1.7"},     {2.5, "2.5"},
		{5.0, "5.0"},   {10.0, "10.0"},       {100000.0, "100000.0"},             {1e6, "1e+06"},
		{1e-5, "1e-05"}, {1e10, "1e+10"},     {INFINITY, "+Inf"}, {-INFINITY, "-Inf"}, {0.5, "0.5"},
		{0.99, "0.99"}, {-1.0, "-1.0"},
	};
	char out[SHMET_FMT_DOUBLE_MAX];
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		n = shmet_fmt_bound(out, cases[i].v);
		check_mem(cases[i].want, out, n, "shmet_fmt_bound", __FILE__, __LINE__);
	}
}

/* Locates tests/data/gen_float_vectors.py: tests/run.sh exports
 * SHMET_TEST_ROOT; by hand, the current directory or the checkout that
 * holds this binary (build[/<sanitizer>]/tests/test_expfmt). */
static FILE *open_vectors(void)
{
	static const char rel[] = "tests/data/gen_float_vectors.py";
	const char *root = getenv("SHMET_TEST_ROOT");
	const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
	char script[4096], cmd[4400], exe[4096];
	ssize_t n;

	snprintf(script, sizeof script, "%s/%s", root && *root ? root : ".", rel);
	if (!(root && *root) && access(script, R_OK) != 0) {
		n = readlink("/proc/self/exe", exe, sizeof exe - 1);
		if (n > 0) {
			char *cut = NULL, *at;

			exe[n] = '\0';
			for (at = strstr(exe, "/build/"); at; at = strstr(at + 1, "/build/"))
				cut = at; /* the last one: the checkout may itself sit under a build/ */
			if (cut) {
				*cut = '\0';
				snprintf(script, sizeof script, "%s/%s", exe, rel);
			}
		}
	}
	if (access(script, R_OK) != 0 || strchr(script, '\'')) {
		print_error("cannot read %s (run from the repository root or set SHMET_TEST_ROOT)\n", script);
		return NULL;
	}
	snprintf(cmd, sizeof cmd, "%s '%s'", python, script);
	return popen(cmd, "r");
}

static void test_expfmt_float_python_vectors_match_go(void **state)
{
	char line[256], out[SHMET_FMT_DOUBLE_MAX], om[SHMET_FMT_DOUBLE_MAX];
	long n = 0, bad = 0;
	FILE *f;
	int status;

	(void)state;
	f = open_vectors();
	assert_non_null(f);
	while (fgets(line, sizeof line, f)) {
		char *want, *end;
		uint64_t bits;
		double v;
		size_t k;
		bool om_ok;

		if (line[0] == '#')
			continue;
		bits = strtoull(line, &end, 16);
		if (end != line + 16 || *end != ' ') {
			print_error("malformed vector line: %s", line);
			bad++;
			continue;
		}
		want = end + 1;
		want[strcspn(want, "\n")] = '\0';
		v = from_bits(bits);
		n++;
		k = shmet_fmt_double(out, v);
		/* OpenMetrics: the same plus ".0" when it reads as an integer. */
		shmet_fmt_double_om(om, v);
		om_ok = strncmp(om, want, strlen(want)) == 0 &&
			strcmp(om + strlen(want),
			       strpbrk(want, ".eIN") ? "" : ".0") == 0;
		if (k != strlen(want) || strcmp(out, want) != 0 || !om_ok) {
			if (bad < 20)
				print_error("bits %016" PRIx64 ": expected \"%s\", actual \"%s\" (om \"%s\")\n", bits,
					    want, out, om);
			bad++;
		}
	}
	status = pclose(f);
	print_message("float vectors: %ld checked, %ld mismatches\n", n, bad);
	assert_int_equal(status, 0);
	assert_int_equal(bad, 0);
	assert_true(n >= 100000);
}

/* §1.3's recipe, written independently of libshm/format.c: the first %.*e that
 * strtod maps back, or at a power of two the decimal one unit above. */
static void recipe_go_g(char *out, double v)
{
	char s[64], ds[32], *o = out;
	uint64_t bits, dig = 0;
	int p, x = 0, nd, i;
	const double a = fabs(v);
	bool pow2;

	if (v == 0) {
		strcpy(out, "0");
		return;
	}
	memcpy(&bits, &a, sizeof bits);
	pow2 = (bits & ((UINT64_C(1) << 52) - 1)) == 0 && (bits >> 52) > 1;
	for (p = 1; p <= 17; p++) {
		char *c;

		snprintf(s, sizeof s, "%.*e", p - 1, a);
		dig = 0;
		for (c = s; *c != 'e'; c++)
			if (*c != '.')
				dig = dig * 10 + (uint64_t)(*c - '0');
		x = atoi(c + 1);
		if (strtod(s, NULL) == a)
			break;
		if (pow2) {
			uint64_t up = dig + 1, lim = 1;
			int ux = x;

			for (i = 0; i < p; i++)
				lim *= 10;
			if (up == lim) {
				up /= 10;
				ux++;
			}
			snprintf(s, sizeof s, "%" PRIu64 "e%d", up, ux - (p - 1));
			if (strtod(s, NULL) == a) {
				dig = up;
				x = ux;
				break;
			}
		}
	}
	nd = snprintf(ds, sizeof ds, "%" PRIu64, dig);
	while (nd > 1 && ds[nd - 1] == '0')
		ds[--nd] = '\0';
	if (v < 0)
		*o++ = '-';
	if (x < -4 || x >= 6) {
		*o++ = ds[0];
		if (nd > 1)
			o += sprintf(o, ".%s", ds + 1);
		sprintf(o, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
	} else if (x >= 0) {
		for (i = 0; i <= x; i++)
			*o++ = i < nd ? ds[i] : '0';
		if (nd > x + 1)
			o += sprintf(o, ".%s", ds + x + 1);
		*o = '\0';
	} else {
		o += sprintf(o, "0.");
		for (i = 0; i < -x - 1; i++)
			*o++ = '0';
		strcpy(o, ds);
	}
}

static void test_expfmt_float_random_bits_match_recipe(void **state)
{
	uint64_t s = UINT64_C(0x9E3779B97F4A7C15);
	char got[SHMET_FMT_DOUBLE_MAX], want[64];
	long i, n = 0, bad = 0;

	(void)state;
	for (i = 0; i < 200000; i++) {
		uint64_t b = random_bits(&s, i);
		double v = from_bits(b);

		if (!isfinite(v))
			continue;
		n++;
		shmet_fmt_double(got, v);
		recipe_go_g(want, v);
		if (strcmp(got, want) != 0 || strtod(got, NULL) != (v == 0 ? 0 : v)) {
			if (bad < 20)
				print_error("bits %016" PRIx64 ": expected \"%s\", actual \"%s\"\n", b, want, got);
			bad++;
		}
	}
	print_message("random doubles: %ld checked, %ld mismatches\n", n, bad);
	assert_int_equal(bad, 0);
}

/* The JSON API's spelling as it was before it shared the exposition's
 * digits: the first of %.15g, %.16g, %.17g that reads back, then ".0" when
 * that shows neither '.' nor 'e'.  shmet_fmt_double_json keeps its layout
 * byte for byte, with digits that are never longer. */
static void recipe_json(char *out, size_t cap, double v)
{
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(out, cap, "%.*g", prec, v);
		if (strtod(out, NULL) == v)
			break;
	}
	if (!strpbrk(out, ".eE"))
		strcat(out, ".0");
}

static void test_expfmt_float_json_random_bits_match_printf_recipe(void **state)
{
	uint64_t s = UINT64_C(0x2545F4914F6CDD1D);
	char got[SHMET_FMT_DOUBLE_MAX], want[64];
	long i, n = 0, bad = 0;
	static const double fixed[] = {0.0, -0.0, 1, -2, 0.1, 1e15, 1e16, 1e17, 123456789012345678.0, 1e21,
				       1e-5, 0.0001, 1234567.5, 5e-324, 1.7976931348623157e308};

	(void)state;
	for (i = 0; i < 200000 + (long)(sizeof fixed / sizeof *fixed); i++) {
		double v = i < (long)(sizeof fixed / sizeof *fixed) ? fixed[i] : from_bits(random_bits(&s, i));
		if (!isfinite(v))
			continue;
		n++;
		shmet_fmt_double_json(got, v);
		recipe_json(want, sizeof want, v);
		/* the same text, but where the recipe was not the shortest
		 * (subnormals; a power of two whose nearest 16 digits miss
		 * but whose shortest do not, 2^-24): shorter, and still v */
		bool shorter = strlen(got) < strlen(want) && strtod(got, NULL) == v;
		if (strcmp(got, want) != 0 && !shorter) {
			if (bad < 20)
				print_error("%.17g: expected \"%s\", actual \"%s\"\n", v, want, got);
			bad++;
		}
	}
	print_message("random doubles as JSON: %ld checked, %ld mismatches\n", n, bad);
	assert_int_equal(bad, 0);
}

/* ---- Families and samples ------------------------------------------------- */

static void test_expfmt_gauge_row1_text_and_om(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_GAUGE, "g", "A gauge.");
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "g", NULL, NULL, 0, NULL, 0, 1, false);
	shmet_expo_eof(&b, SHMET_EXPO_TEXT);
	EXPECT_BUF("# HELP g A gauge.\n# TYPE g gauge\ng 1\n", b);

	shmet_buf_reset(&b);
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_GAUGE, "g", "A gauge.");
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "g", "", NULL, 0, NULL, 0, 1, false);
	shmet_expo_eof(&b, SHMET_EXPO_OPENMETRICS);
	EXPECT_BUF("# TYPE g gauge\n# HELP g A gauge.\ng 1.0\n# EOF\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_counter_row7_total_per_format(void **state)
{
	const struct shmet_expo_label l[] = {L("code", "200"), L("method", "get")};
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_COUNTER, "http_requests_total", NULL);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "http_requests_total", NULL, l, 2, NULL, 0, 1027, false);
	EXPECT_BUF("# TYPE http_requests_total counter\n"
		   "http_requests_total{code=\"200\",method=\"get\"} 1027\n",
		   b);

	shmet_buf_reset(&b);
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_COUNTER, "http_requests_total", "Requests.");
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "http_requests_total", NULL, l, 2, NULL, 0, 1027, false);
	shmet_expo_eof(&b, SHMET_EXPO_OPENMETRICS);
	EXPECT_BUF("# TYPE http_requests counter\n"
		   "# HELP http_requests Requests.\n"
		   "http_requests_total{code=\"200\",method=\"get\"} 1027.0\n"
		   "# EOF\n",
		   b);

	/* text keeps the _total name on HELP too */
	shmet_buf_reset(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_COUNTER, "http_requests_total", "Requests.");
	EXPECT_BUF("# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_counter_without_total_is_unknown_in_om(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_COUNTER, "requests", NULL);
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_COUNTER, "_total", NULL);
	EXPECT_BUF("# TYPE requests unknown\n# TYPE _total unknown\n", b);
	shmet_buf_reset(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_COUNTER, "requests", NULL);
	EXPECT_BUF("# TYPE requests counter\n", b);
	shmet_buf_free(&b);
}

static const double def_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, INFINITY};

static void render_req_seconds(shmet_buf *b, enum shmet_expo_format f)
{
	static const double counts[] = {0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 6, 7};
	size_t i;

	shmet_expo_family(b, f, SHMET_EXPO_HISTOGRAM, "req_seconds", "Request latency.");
	for (i = 0; i < 12; i++)
		shmet_expo_sample(b, f, "req_seconds", "_bucket", NULL, 0, "le", def_buckets[i], counts[i], true);
	shmet_expo_sample(b, f, "req_seconds", "_sum", NULL, 0, NULL, 0, 12.345, false);
	shmet_expo_sample(b, f, "req_seconds", "_count", NULL, 0, NULL, 0, 7, true);
	shmet_expo_eof(b, f);
}

#define REQ_SECONDS_SAMPLES                          \
	"req_seconds_bucket{le=\"0.005\"} 0\n"       \
	"req_seconds_bucket{le=\"0.01\"} 0\n"        \
	"req_seconds_bucket{le=\"0.025\"} 1\n"       \
	"req_seconds_bucket{le=\"0.05\"} 1\n"        \
	"req_seconds_bucket{le=\"0.1\"} 2\n"         \
	"req_seconds_bucket{le=\"0.25\"} 3\n"        \
	"req_seconds_bucket{le=\"0.5\"} 4\n"         \
	"req_seconds_bucket{le=\"1.0\"} 5\n"         \
	"req_seconds_bucket{le=\"2.5\"} 5\n"         \
	"req_seconds_bucket{le=\"5.0\"} 6\n"         \
	"req_seconds_bucket{le=\"10.0\"} 6\n"        \
	"req_seconds_bucket{le=\"+Inf\"} 7\n"        \
	"req_seconds_sum 12.345\n"                   \
	"req_seconds_count 7\n"

static void test_expfmt_histogram_row10_lines_both_formats(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	render_req_seconds(&b, SHMET_EXPO_TEXT);
	EXPECT_BUF("# HELP req_seconds Request latency.\n"
		   "# TYPE req_seconds histogram\n" REQ_SECONDS_SAMPLES,
		   b);
	shmet_buf_reset(&b);
	render_req_seconds(&b, SHMET_EXPO_OPENMETRICS);
	EXPECT_BUF("# TYPE req_seconds histogram\n"
		   "# HELP req_seconds Request latency.\n" REQ_SECONDS_SAMPLES "# EOF\n",
		   b);
	shmet_buf_free(&b);
}

static void render_rpc_seconds(shmet_buf *b, enum shmet_expo_format f)
{
	static const double bounds[] = {0.1, 1, INFINITY};
	const struct shmet_expo_label l[] = {L("method", "get")};
	size_t i;

	for (i = 0; i < 3; i++)
		shmet_expo_sample(b, f, "rpc_seconds", "_bucket", l, 1, "le", bounds[i], 0, true);
	shmet_expo_sample(b, f, "rpc_seconds", "_sum", l, 1, NULL, 0, 0, false);
	shmet_expo_sample(b, f, "rpc_seconds", "_count", l, 1, NULL, 0, 0, true);
}

static void test_expfmt_histogram_row11_labelled_zero_le_last(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	render_rpc_seconds(&b, SHMET_EXPO_TEXT);
	EXPECT_BUF("rpc_seconds_bucket{method=\"get\",le=\"0.1\"} 0\n"
		   "rpc_seconds_bucket{method=\"get\",le=\"1.0\"} 0\n"
		   "rpc_seconds_bucket{method=\"get\",le=\"+Inf\"} 0\n"
		   "rpc_seconds_sum{method=\"get\"} 0\n"
		   "rpc_seconds_count{method=\"get\"} 0\n",
		   b);
	shmet_buf_reset(&b);
	render_rpc_seconds(&b, SHMET_EXPO_OPENMETRICS);
	EXPECT_BUF("rpc_seconds_bucket{method=\"get\",le=\"0.1\"} 0\n"
		   "rpc_seconds_bucket{method=\"get\",le=\"1.0\"} 0\n"
		   "rpc_seconds_bucket{method=\"get\",le=\"+Inf\"} 0\n"
		   "rpc_seconds_sum{method=\"get\"} 0.0\n"
		   "rpc_seconds_count{method=\"get\"} 0\n",
		   b);
	shmet_buf_free(&b);
}

static void render_summary(shmet_buf *b, enum shmet_expo_format f, const char *name, const double *q,
			   const double *v, size_t n, double sum, double count)
{
	size_t i;

	for (i = 0; i < n; i++)
		shmet_expo_sample(b, f, name, NULL, NULL, 0, "quantile", q[i], v[i], false);
	shmet_expo_sample(b, f, name, "_sum", NULL, 0, NULL, 0, sum, false);
	shmet_expo_sample(b, f, name, "_count", NULL, 0, NULL, 0, count, true);
}

static void test_expfmt_summary_rows12_13_14_lines(void **state)
{
	static const double q[] = {0.5, 0.9, 0.99};
	static const double v[] = {0.012, 0.05, 0.1};
	static const double nan3[] = {NAN, NAN, NAN};
	static const double q01[] = {0, 1};
	static const double v01[] = {0.001, 2};
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	/* row 12: same in both formats, count an integer */
	render_summary(&b, SHMET_EXPO_TEXT, "rpc_duration_seconds", q, v, 3, 17.3, 1000);
	EXPECT_BUF("rpc_duration_seconds{quantile=\"0.5\"} 0.012\n"
		   "rpc_duration_seconds{quantile=\"0.9\"} 0.05\n"
		   "rpc_duration_seconds{quantile=\"0.99\"} 0.1\n"
		   "rpc_duration_seconds_sum 17.3\n"
		   "rpc_duration_seconds_count 1000\n",
		   b);
	shmet_buf_reset(&b);
	render_summary(&b, SHMET_EXPO_OPENMETRICS, "rpc_duration_seconds", q, v, 3, 17.3, 1000);
	EXPECT_BUF("rpc_duration_seconds{quantile=\"0.5\"} 0.012\n"
		   "rpc_duration_seconds{quantile=\"0.9\"} 0.05\n"
		   "rpc_duration_seconds{quantile=\"0.99\"} 0.1\n"
		   "rpc_duration_seconds_sum 17.3\n"
		   "rpc_duration_seconds_count 1000\n",
		   b);

	/* row 13: no observations */
	shmet_buf_reset(&b);
	render_summary(&b, SHMET_EXPO_TEXT, "idle_seconds", q, nan3, 1, 0, 0);
	EXPECT_BUF("idle_seconds{quantile=\"0.5\"} NaN\nidle_seconds_sum 0\nidle_seconds_count 0\n", b);
	shmet_buf_reset(&b);
	render_summary(&b, SHMET_EXPO_OPENMETRICS, "idle_seconds", q, nan3, 1, 0, 0);
	EXPECT_BUF("idle_seconds{quantile=\"0.5\"} NaN\nidle_seconds_sum 0.0\nidle_seconds_count 0\n", b);

	/* row 14: quantile 0 and 1, OpenMetrics spelling in both formats */
	shmet_buf_reset(&b);
	render_summary(&b, SHMET_EXPO_TEXT, "s", q01, v01, 2, 3, 2);
	EXPECT_BUF("s{quantile=\"0.0\"} 0.001\ns{quantile=\"1.0\"} 2\ns_sum 3\ns_count 2\n", b);
	shmet_buf_reset(&b);
	render_summary(&b, SHMET_EXPO_OPENMETRICS, "s", q01, v01, 2, 3, 2);
	EXPECT_BUF("s{quantile=\"0.0\"} 0.001\ns{quantile=\"1.0\"} 2.0\ns_sum 3.0\ns_count 2\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_untyped_row15_unknown_in_om(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_UNTYPED, "legacy_thing", "");
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_UNTYPED, "legacy_thing", "");
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_SUMMARY, "s", NULL);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_SUMMARY, "s", NULL);
	EXPECT_BUF("# TYPE legacy_thing untyped\n# TYPE legacy_thing unknown\n"
		   "# TYPE s summary\n# TYPE s summary\n",
		   b);
	shmet_buf_free(&b);
}

static void esc_sample(shmet_buf *b, enum shmet_expo_format f, const char *value, double v)
{
	const struct shmet_expo_label l[] = {{"path", 4, value, strlen(value)}};

	shmet_expo_sample(b, f, "esc", NULL, l, 1, NULL, 0, v, false);
}

static void test_expfmt_label_escapes_rows16_to_19_same_both(void **state)
{
	shmet_buf b;
	int f;

	(void)state;
	shmet_buf_init(&b);
	for (f = 0; f < 2; f++) {
		const enum shmet_expo_format fmt = f ? SHMET_EXPO_OPENMETRICS : SHMET_EXPO_TEXT;

		shmet_buf_reset(&b);
		esc_sample(&b, fmt, "C:\\dir\\file.txt", 1);
		esc_sample(&b, fmt, "say \"hi\"", 2);
		esc_sample(&b, fmt, "line1\nline2", 3);
		esc_sample(&b, fmt, "tab\there \xc3\xbc\xe6\x97\xa5\xe6\x9c\xac a,b=c}{ # d", 4);
		if (fmt == SHMET_EXPO_TEXT)
			EXPECT_BUF("esc{path=\"C:\\\\dir\\\\file.txt\"} 1\n"
				   "esc{path=\"say \\\"hi\\\"\"} 2\n"
				   "esc{path=\"line1\\nline2\"} 3\n"
				   "esc{path=\"tab\there \xc3\xbc\xe6\x97\xa5\xe6\x9c\xac a,b=c}{ # d\"} 4\n",
				   b);
		else
			EXPECT_BUF("esc{path=\"C:\\\\dir\\\\file.txt\"} 1.0\n"
				   "esc{path=\"say \\\"hi\\\"\"} 2.0\n"
				   "esc{path=\"line1\\nline2\"} 3.0\n"
				   "esc{path=\"tab\there \xc3\xbc\xe6\x97\xa5\xe6\x9c\xac a,b=c}{ # d\"} 4.0\n",
				   b);
	}
	shmet_buf_free(&b);
}

static void test_expfmt_help_escapes_row20_differ_by_format(void **state)
{
	const char *help = "Back\\slash, new\nline, \"quotes\" and \xc3\xbc.";
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_GAUGE, "h", help);
	EXPECT_BUF("# HELP h Back\\\\slash, new\\nline, \"quotes\" and \xc3\xbc.\n# TYPE h gauge\n", b);
	shmet_buf_reset(&b);
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_GAUGE, "h", help);
	EXPECT_BUF("# TYPE h gauge\n# HELP h Back\\\\slash, new\\nline, \\\"quotes\\\" and \xc3\xbc.\n", b);

	/* the appenders on their own */
	shmet_buf_reset(&b);
	shmet_escape_help_text(&b, "a\"b\\c\n", 6);
	shmet_buf_putc(&b, '|');
	shmet_escape_help_om(&b, "a\"b\\c\n", 6);
	shmet_buf_putc(&b, '|');
	shmet_escape_label_value(&b, "a\"b\\c\n", 6);
	EXPECT_BUF("a\"b\\\\c\\n|a\\\"b\\\\c\\n|a\\\"b\\\\c\\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_empty_help_row21_omitted(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_GAUGE, "g", "");
	shmet_expo_family(&b, SHMET_EXPO_TEXT, SHMET_EXPO_GAUGE, "g", NULL);
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_GAUGE, "g", "");
	shmet_expo_family(&b, SHMET_EXPO_OPENMETRICS, SHMET_EXPO_GAUGE, "g", NULL);
	EXPECT_BUF("# TYPE g gauge\n# TYPE g gauge\n# TYPE g gauge\n# TYPE g gauge\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_empty_label_values_row24_omitted(void **state)
{
	const struct shmet_expo_label two[] = {L("a", ""), L("b", "x")};
	const struct shmet_expo_label none[] = {L("a", ""), L("b", "")};
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "el", NULL, two, 2, NULL, 0, 1, false);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "el", NULL, two, 2, NULL, 0, 1, false);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "el", NULL, none, 2, NULL, 0, 1, false);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "el", "_bucket", none, 2, "le", 1, 1, true);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "el", NULL, none, 0, NULL, 0, 1, false);
	EXPECT_BUF("el{b=\"x\"} 1\nel{b=\"x\"} 1.0\nel 1\nel_bucket{le=\"1.0\"} 1\nel 1\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_empty_registry_row32_om_eof_only(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_eof(&b, SHMET_EXPO_TEXT);
	assert_int_equal(b.len, 0);
	shmet_expo_eof(&b, SHMET_EXPO_OPENMETRICS);
	EXPECT_BUF("# EOF\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_labels_ptr_len_not_nul_terminated(void **state)
{
	/* Names and values sliced out of one string, as read from a segment. */
	const char raw[] = "methodGETroute/api/v1status";
	const struct shmet_expo_label l[] = {
		{raw, 6, raw + 6, 3},
		{raw + 9, 5, raw + 14, 7},
	};
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "r", "_total", l, 2, NULL, 0, 3, false);
	EXPECT_BUF("r_total{method=\"GET\",route=\"/api/v1\"} 3\n", b);
	shmet_buf_free(&b);
}

static void test_expfmt_invalid_utf8_replaced_valid_kept(void **state)
{
	static const struct {
		const char *in;
		const char *want;
	} cases[] = {
		{"ok \xf0\x9f\x98\x80 \xe2\x82\xac \xc2\xa9", "ok \xf0\x9f\x98\x80 \xe2\x82\xac \xc2\xa9"},
		{"\xff", "\xef\xbf\xbd"},
		{"a\x80z", "a\xef\xbf\xbdz"},
		{"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},             /* overlong NUL */
		{"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
		{"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
		{"end\xe2\x82", "end\xef\xbf\xbd\xef\xbf\xbd"},        /* truncated */
		{"\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"},              /* U+10FFFF itself */
	};
	shmet_buf b;
	size_t i;

	(void)state;
	shmet_buf_init(&b);
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		shmet_buf_reset(&b);
		shmet_escape_label_value(&b, cases[i].in, strlen(cases[i].in));
		EXPECT_BUF(cases[i].want, b);
		shmet_buf_reset(&b);
		shmet_escape_help_text(&b, cases[i].in, strlen(cases[i].in));
		EXPECT_BUF(cases[i].want, b);
	}
	/* NUL is a valid byte in a ptr+len value and goes out raw (§1.2) */
	shmet_buf_reset(&b);
	shmet_escape_label_value(&b, "a\0b", 3);
	assert_int_equal(b.len, 3);
	assert_memory_equal(b.data, "a\0b", 3);
	shmet_buf_free(&b);
}

static void test_expfmt_integral_values_integer_only_in_om(void **state)
{
	shmet_buf b;

	(void)state;
	shmet_buf_init(&b);
	shmet_expo_sample(&b, SHMET_EXPO_TEXT, "c", NULL, NULL, 0, NULL, 0, 1234567, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 1234567, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 1234567, false);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 9223372036854775808.0, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 18446744073709549568.0, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 18446744073709551616.0, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 2.5, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, NAN, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, INFINITY, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, -0.0, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, -3, true);
	shmet_expo_sample(&b, SHMET_EXPO_OPENMETRICS, "c", NULL, NULL, 0, NULL, 0, 1e300, true);
	EXPECT_BUF("c 1.234567e+06\n"
		   "c 1234567\n"
		   "c 1.234567e+06\n"
		   "c 9223372036854775808\n"
		   "c 18446744073709549568\n"
		   "c 1.8446744073709552e+19\n"
		   "c 2.5\n"
		   "c NaN\n"
		   "c +Inf\n"
		   "c 0\n"
		   "c -3\n"
		   "c 1e+300\n",
		   b);
	shmet_buf_free(&b);
}

/* ---- Negotiation ---------------------------------------------------------- */

static void test_expfmt_negotiate_prometheus_headers_pick_expected(void **state)
{
	(void)state;
	/* Prometheus 2.42, verbatim (§2.1) */
	EXPECT_OM("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
		  "text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
	/* Prometheus 3 defaults: OM 1.0.0 with escaping first */
	EXPECT_OM("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
		  "application/openmetrics-text;version=0.0.1;q=0.4,"
		  "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1");
	/* Prometheus 3 with protobuf first (which we do not serve) */
	EXPECT_OM("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,"
		  "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
		  "application/openmetrics-text;version=0.0.1;q=0.4,"
		  "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1");
	/* Prometheus 3 with scrape_protocols: [PrometheusText1.0.0, PrometheusText0.0.4] */
	EXPECT_TEXT("text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1");
	EXPECT_TEXT("text/plain;version=1.0.0;escaping=allow-utf-8");
	/* Older Prometheus / Go clients asking OM 0.0.1 only */
	EXPECT_OM001("application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
	/* curl, browsers */
	EXPECT_TEXT("*/*");
	EXPECT_TEXT("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8");
}

static void test_expfmt_negotiate_qvalues_and_versions_decide(void **state)
{
	(void)state;
	EXPECT_OM("application/openmetrics-text");
	EXPECT_OM("Application/OpenMetrics-Text; Version=\"1.0.0\"; charset=utf-8");
	EXPECT_OM("application/openmetrics-text;version=1.0.0;q=0.6, text/plain;q=0.5");
	/* both OM versions asked: 1.0.0 answered even if 0.0.1 has the higher q */
	EXPECT_OM("application/openmetrics-text;version=0.0.1;q=0.9,application/openmetrics-text;version=1.0.0;q=0.1,"
		  "text/plain;q=0.5");
	/* q=0 refuses */
	EXPECT_TEXT("application/openmetrics-text;q=0");
	EXPECT_TEXT("application/openmetrics-text;version=1.0.0;q=0.000,text/plain;q=0.1");
	EXPECT_OM001("application/openmetrics-text;version=1.0.0;q=0,application/openmetrics-text;version=0.0.1");
	/* ties go to text */
	EXPECT_TEXT("application/openmetrics-text;q=0.5,text/plain;q=0.5");
	EXPECT_TEXT("text/plain,application/openmetrics-text");
	EXPECT_TEXT("application/openmetrics-text, text/*");
	/* text/plain beats a lower OM, text/plain versions */
	EXPECT_TEXT("application/openmetrics-text;q=0.4,text/plain;version=0.0.4;q=0.5");
	EXPECT_OM("application/openmetrics-text;q=0.4,text/plain;version=9.9.9;q=0.5");
	EXPECT_TEXT("text/plain;version=0.0.4");
	/* unknown OM version: not acceptable */
	EXPECT_TEXT("application/openmetrics-text;version=2.0.0");
	EXPECT_TEXT("application/openmetrics-text;version=");
	EXPECT_TEXT("application/openmetrics-text;version");
	/* q forms */
	EXPECT_OM("application/openmetrics-text;q=1.000,text/plain;q=0.999");
	EXPECT_OM("application/openmetrics-text;q=1,text/plain;q=0.9999");
	EXPECT_OM("application/openmetrics-text ; q = 0.7 , text/plain ; q = 0.2");
	EXPECT_OM("application/openmetrics-text;Q=0.7,text/plain;q=0.2");
	/* a malformed q makes that element unusable, not the header */
	EXPECT_OM("text/plain;q=2,application/openmetrics-text");
	EXPECT_OM("text/plain;q=abc,application/openmetrics-text;q=0.1");
	EXPECT_OM("text/plain;q=1.5,application/openmetrics-text;q=0.1");
	EXPECT_OM("text/plain;q=,application/openmetrics-text;q=0.1");
	EXPECT_TEXT("application/openmetrics-text;q=-1");
	/* a quoted comma does not split an element */
	EXPECT_OM("application/openmetrics-text;x=\"a,text/plain\";q=0.5");
}

static void test_expfmt_negotiate_garbage_gives_text(void **state)
{
	static const char *const cases[] = {
		"",
		" ",
		",,,",
		";;;",
		"garbage",
		"application/json",
		"application/*",
		"application/openmetrics-text;version=1.0.0;q=0.5;\"unterminated",
		"application/openmetrics-textx",
		"xapplication/openmetrics-text",
		"application/openmetrics-text junk",
		"\"application/openmetrics-text\"",
		"application/openmetrics-text;x=\"unterminated, text/plain",
		"\xff\xfe\x80",
		"=;=,=",
	};
	size_t i;

	(void)state;
	EXPECT_TEXT(NULL);
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
		EXPECT_TEXT(cases[i]);
	/* content_type may be NULL */
	assert_int_equal(shmet_negotiate("application/openmetrics-text", NULL), SHMET_EXPO_OPENMETRICS);
}

static void test_expfmt_negotiate_huge_and_random_input_safe(void **state)
{
	static const char alphabet[] = "ab/*;=,\"\\ \t.01qQ-x\xff";
	const size_t big = 4u << 20;
	char *h = malloc(big + 64);
	uint64_t s = 12345;
	size_t i, k;
	const char *ct;

	(void)state;
	assert_non_null(h);
	/* 4 MiB of separators, then a real element at the end */
	memset(h, ',', big);
	strcpy(h + big, "application/openmetrics-text");
	EXPECT_OM(h);
	/* an unterminated quote swallowing everything after it */
	memset(h, 'a', big);
	memcpy(h, "text/plain;x=\"", 14);
	strcpy(h + big, ",application/openmetrics-text");
	EXPECT_TEXT(h);
	/* many parameters on one element */
	for (i = 0; i + 4 < big; i += 4)
		memcpy(h + i, ";a=b", 4);
	h[i] = '\0';
	EXPECT_TEXT(h);
	/* random bytes from a nasty alphabet: any result, but a valid one */
	for (k = 0; k < 20000; k++) {
		size_t n = rng_next(&s) % 64;

		for (i = 0; i < n; i++)
			h[i] = alphabet[rng_next(&s) % (sizeof alphabet - 1)];
		h[n] = '\0';
		ct = NULL;
		if (shmet_negotiate(h, &ct) == SHMET_EXPO_TEXT)
			assert_string_equal(ct, SHMET_CONTENT_TYPE_TEXT);
		else
			assert_true(strcmp(ct, SHMET_CONTENT_TYPE_OPENMETRICS) == 0 ||
				    strcmp(ct, SHMET_CONTENT_TYPE_OPENMETRICS_001) == 0);
		(void)shmet_accepts_gzip(h);
	}
	free(h);
}

static void test_expfmt_accepts_gzip_respects_q(void **state)
{
	(void)state;
	EXPECT_GZIP("gzip", true);
	EXPECT_GZIP("gzip, deflate, br", true);
	EXPECT_GZIP("deflate, gzip;q=1.0, *;q=0.5", true);
	EXPECT_GZIP("GZip", true);
	EXPECT_GZIP("x-gzip", true);
	EXPECT_GZIP("*", true);
	EXPECT_GZIP("gzip;q=0.001", true);
	EXPECT_GZIP(" gzip ; q=0.5 ", true);
	EXPECT_GZIP("gzip;q=0", false);
	EXPECT_GZIP("gzip;q=0.0, *", false); /* explicit refusal beats the wildcard */
	EXPECT_GZIP("*;q=0", false);
	EXPECT_GZIP("deflate", false);
	EXPECT_GZIP("identity", false);
	EXPECT_GZIP("gzipx", false);
	EXPECT_GZIP("br;q=1, identity;q=0.5", false);
	EXPECT_GZIP("gzip;q=abc", false);
	EXPECT_GZIP("", false);
	EXPECT_GZIP(NULL, false);
}

/* ---- gzip ------------------------------------------------------------------ */

static void gunzip_equals(const shmet_buf *z, size_t off, const void *want, size_t want_len)
{
	z_stream zs;
	unsigned char *out = malloc(want_len + 1);
	int rc;

	assert_non_null(out);
	memset(&zs, 0, sizeof zs);
	assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
	zs.next_in = (unsigned char *)z->data + off;
	zs.avail_in = (uInt)(z->len - off);
	zs.next_out = out;
	zs.avail_out = (uInt)want_len + 1;
	rc = inflate(&zs, Z_FINISH);
	assert_int_equal(rc, Z_STREAM_END);
	assert_int_equal(zs.total_out, want_len);
	assert_int_equal(zs.avail_in, 0);
	if (want_len)
		assert_memory_equal(out, want, want_len);
	inflateEnd(&zs);
	free(out);
}

static void test_expfmt_gzip_roundtrip_inflates_to_input(void **state)
{
	const size_t big = 1u << 20;
	unsigned char *rnd = malloc(big);
	uint64_t s = 777;
	shmet_buf body, z;
	size_t i;

	(void)state;
	assert_non_null(rnd);
	shmet_buf_init(&body);
	shmet_buf_init(&z);
	for (i = 0; i < 2000; i++)
		render_req_seconds(&body, SHMET_EXPO_OPENMETRICS);

	assert_int_equal(shmet_gzip(body.data, body.len, &z, -1), 0);
	assert_int_equal((unsigned char)z.data[0], 0x1f);
	assert_int_equal((unsigned char)z.data[1], 0x8b);
	assert_true(z.len < body.len / 10);
	gunzip_equals(&z, 0, body.data, body.len);

	/* appends after what the buffer already holds */
	shmet_buf_reset(&z);
	shmet_buf_puts(&z, "prefix");
	assert_int_equal(shmet_gzip("x", 1, &z, 9), 0);
	assert_memory_equal(z.data, "prefix", 6);
	gunzip_equals(&z, 6, "x", 1);

	/* empty input is still a valid stream */
	shmet_buf_reset(&z);
	assert_int_equal(shmet_gzip(NULL, 0, &z, 1), 0);
	gunzip_equals(&z, 0, "", 0);

	/* incompressible input, every level */
	for (i = 0; i < big; i++)
		rnd[i] = (unsigned char)rng_next(&s);
	for (i = 0; i <= 9; i += 3) {
		shmet_buf_reset(&z);
		assert_int_equal(shmet_gzip(rnd, big, &z, (int)i), 0);
		gunzip_equals(&z, 0, rnd, big);
	}
	free(rnd);
	shmet_buf_free(&body);
	shmet_buf_free(&z);
}

static void test_expfmt_gzip_bad_arguments_einval(void **state)
{
	shmet_buf z;

	(void)state;
	shmet_buf_init(&z);
	shmet_buf_puts(&z, "keep");
	assert_int_equal(shmet_gzip("x", 1, &z, 10), -EINVAL);
	assert_int_equal(shmet_gzip("x", 1, &z, -2), -EINVAL);
	assert_int_equal(shmet_gzip(NULL, 1, &z, 6), -EINVAL);
	assert_int_equal(shmet_gzip("x", 1, NULL, 6), -EINVAL);
	EXPECT_BUF("keep", z);
	z.oom = 1;
	assert_int_equal(shmet_gzip("x", 1, &z, 6), -ENOMEM);
	shmet_buf_free(&z);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_expfmt_buf_appends_nul_terminated_string),
		cmocka_unit_test(test_expfmt_buf_put_u64_edges_match_printf),
		cmocka_unit_test(test_expfmt_buf_growth_keeps_content),
		cmocka_unit_test(test_expfmt_buf_size_overflow_sets_oom_and_stops),
		cmocka_unit_test(test_expfmt_buf_reset_keeps_memory),
		cmocka_unit_test(test_expfmt_float_exposition_examples_match_go),
		cmocka_unit_test(test_expfmt_float_rows_2_to_6_match_table),
		cmocka_unit_test(test_expfmt_bound_uses_om_canonical_spelling),
		cmocka_unit_test(test_expfmt_float_python_vectors_match_go),
		cmocka_unit_test(test_expfmt_float_random_bits_match_recipe),
		cmocka_unit_test(test_expfmt_float_json_random_bits_match_printf_recipe),
		cmocka_unit_test(test_expfmt_gauge_row1_text_and_om),
		cmocka_unit_test(test_expfmt_counter_row7_total_per_format),
		cmocka_unit_test(test_expfmt_counter_without_total_is_unknown_in_om),
		cmocka_unit_test(test_expfmt_histogram_row10_lines_both_formats),
		cmocka_unit_test(test_expfmt_histogram_row11_labelled_zero_le_last),
		cmocka_unit_test(test_expfmt_summary_rows12_13_14_lines),
		cmocka_unit_test(test_expfmt_untyped_row15_unknown_in_om),
		cmocka_unit_test(test_expfmt_label_escapes_rows16_to_19_same_both),
		cmocka_unit_test(test_expfmt_help_escapes_row20_differ_by_format),
		cmocka_unit_test(test_expfmt_empty_help_row21_omitted),
		cmocka_unit_test(test_expfmt_empty_label_values_row24_omitted),
		cmocka_unit_test(test_expfmt_empty_registry_row32_om_eof_only),
		cmocka_unit_test(test_expfmt_labels_ptr_len_not_nul_terminated),
		cmocka_unit_test(test_expfmt_invalid_utf8_replaced_valid_kept),
		cmocka_unit_test(test_expfmt_integral_values_integer_only_in_om),
		cmocka_unit_test(test_expfmt_negotiate_prometheus_headers_pick_expected),
		cmocka_unit_test(test_expfmt_negotiate_qvalues_and_versions_decide),
		cmocka_unit_test(test_expfmt_negotiate_garbage_gives_text),
		cmocka_unit_test(test_expfmt_negotiate_huge_and_random_input_safe),
		cmocka_unit_test(test_expfmt_accepts_gzip_respects_q),
		cmocka_unit_test(test_expfmt_gzip_roundtrip_inflates_to_input),
		cmocka_unit_test(test_expfmt_gzip_bad_arguments_einval),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
