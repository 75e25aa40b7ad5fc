/* libshm: exact sums of doubles, rounded once.
 *
 * A running sum is kept as a non-overlapping expansion: partials p[0..n)
 * of increasing magnitude whose exact sum is the sum of everything added
 * (Shewchuk, "Adaptive Precision Floating-Point Arithmetic and Fast Robust
 * Geometric Predicates", 1997; the algorithm of Python's math.fsum).  Every
 * step is an error-free transformation (two-sum), so the order of the
 * additions cannot change the result: the property the fold relies on.
 * Doubles span 2^-1074 .. 2^1024, so at most 40 non-overlapping partials
 * exist; SHMET_XSUM_PARTIALS leaves room.  Infinities and NaN are summed
 * apart (inf + -inf = NaN), as are partial sums that overflow.
 */
#include "shmetrics_reader.h"

#include <math.h>

void shmet_xsum_init(struct shmet_xsum *s)
{
	s->n = 0;
	s->special = 0;
	s->overflow = 0;
}

void shmet_xsum_add(struct shmet_xsum *s, double x)
{
	if (x == 0)
		return; /* changes no sum; most cells a scrape adds are zero */
	if (!isfinite(x)) {
		s->special += x;
		return;
	}
	unsigned i = 0;
	for (unsigned j = 0; j < s->n; j++) {
		double y = s->p[j];
		if (fabs(x) < fabs(y)) {
			double t = x;
			x = y;
			y = t;
		}
		double hi = x + y;
		double lo = y - (hi - x);
		if (lo != 0)
			s->p[i++] = lo;
		x = hi;
	}
	if (!isfinite(x)) {
		/* the exact sum left the range of doubles: it rounds to inf */
		s->overflow += x;
		s->n = 0;
		return;
	}
	if (i < SHMET_XSUM_PARTIALS)
		s->p[i++] = x;
	else /* cannot happen for doubles (see above); keep the largest exactly */
		s->p[i - 1] += x;
	s->n = i;
}

void shmet_xsum_add_u64(struct shmet_xsum *s, uint64_t v)
{
	/* two halves, each exact as a double */
	shmet_xsum_add(s, (double)(v >> 32) * 4294967296.0);
	shmet_xsum_add(s, (double)(v & 0xffffffffu));
}

double shmet_xsum_round(const struct shmet_xsum *s)
{
	if (s->special != 0 || s->special != s->special)
		return s->special + s->overflow;
	if (s->overflow != 0)
		return s->overflow;
	unsigned n = s->n;
	double hi = 0, lo = 0;
	if (n > 0) {
		hi = s->p[--n];
		/* add from the top until the sum stops being exact */
		while (n > 0) {
			double x = hi, y = s->p[--n];
			hi = x + y;
			double yr = hi - x;
			lo = y - yr;
			if (lo != 0)
				break;
		}
		/* round half-even correctly: when the rest has the same sign as
		 * lo, the true value is past the halfway point hi + lo suggests */
		if (n > 0 && ((lo < 0 && s->p[n - 1] < 0) || (lo > 0 && s->p[n - 1] > 0))) {
			double y = lo * 2, x = hi + y, yr = x - hi;
			if (y == yr)
				hi = x;
		}
	}
	return hi;
}

int shmet_xsum_split3(const struct shmet_xsum *s, double out[3])
{
	out[0] = out[1] = out[2] = 0;
	if (s->special != 0 || s->special != s->special || s->overflow != 0) {
		out[0] = shmet_xsum_round(s);
		return 1; /* an infinity or NaN is what it is: nothing is lost */
	}
	struct shmet_xsum r = *s;
	for (int k = 0; k < 3; k++) {
		out[k] = shmet_xsum_round(&r);
		shmet_xsum_add(&r, -out[k]);
	}
	/* exact when nothing is left: a non-zero exact rest would round to a
	 * non-zero double (every sum of doubles is a multiple of 2^-1074) */
	return shmet_xsum_round(&r) == 0;
}
