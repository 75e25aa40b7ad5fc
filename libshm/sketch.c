/* libshm: reading log-bucket sketches (see SKETCH block in shmetrics_layout.h).
 *
 * A sketch's cells only grow, so the counts of every region and the retired
 * half add up to the counts of everything observed, and a fold (which moves
 * a dead region's counts into the retired half) changes no sum.  Quantiles
 * come from such sums, or from the difference of two of them (a window). */
#include "shmetrics_reader.h"

#include <math.h>

void shmet_sketch_load_add(uint64_t *acc, const uint64_t *cells, uint32_t n)
{
	/* relaxed: each count is one value; a scrape needs no order between them */
	for (uint32_t i = 0; i < n; i++)
		acc[i] = shmet_sat_add(acc[i], __atomic_load_n(&cells[i], __ATOMIC_RELAXED));
}

void shmet_sketch_window(const uint64_t *now, const uint64_t *start, uint64_t *out, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		out[i] = now[i] >= start[i] ? now[i] - start[i] : 0;
}

double shmet_sketch_quantile(const struct shmet_sketch *sk, const uint64_t *counts, double q)
{
	uint64_t n = 0;
	uint32_t slots = sk->count + 2;
	for (uint32_t i = 0; i < slots; i++)
		n = shmet_sat_add(n, counts[i]);
	if (n == 0 || !(q >= 0 && q <= 1))
		return NAN;
	/* the rank as an integer: q * (n - 1) rounded down, exactly enough for
	 * any n a double holds (2^53 observations) */
	uint64_t rank = (uint64_t)floor(q * (double)(n - 1)), cum = 0;
	uint32_t slot = 0;
	for (; slot < slots; slot++) {
		cum = shmet_sat_add(cum, counts[slot]);
		if (cum > rank)
			break;
	}
	if (slot == 0)
		return shmet_sketch_upper(sk->schema, (int64_t)sk->first - 1);
	if (slot >= sk->count + 1)
		return shmet_sketch_upper(sk->schema, (int64_t)sk->first + sk->count - 1);
	int64_t i = (int64_t)sk->first + slot - 1;
	double g = exp2(ldexp(1.0, -sk->schema));
	return 2 * shmet_sketch_upper(sk->schema, i) / (g + 1);
}

int shmet_exemplar_read(const uint64_t *slot, struct shmet_exemplar *e)
{
	uint64_t w[SHMET_EXEMPLAR_WORDS];
	for (int tries = 0; tries < 16; tries++) {
		/* acquire: pairs with the writer's release store of the even seq,
		 * so the words of that write are visible */
		uint64_t s1 = __atomic_load_n(&slot[0], __ATOMIC_ACQUIRE);
		if (s1 == 0)
			return 0; /* never written */
		if (s1 & 1)
			continue; /* a write in progress */
		/* acquire (a plain load on x86): a word a later writer stored (with
		 * release, after making seq odd) makes that odd seq visible to the
		 * second load below, so a mixed copy is always caught.  No fence:
		 * ThreadSanitizer does not model them. */
		for (uint32_t i = 1; i < SHMET_EXEMPLAR_WORDS; i++)
			w[i] = __atomic_load_n(&slot[i], __ATOMIC_ACQUIRE);
		if (__atomic_load_n(&slot[0], __ATOMIC_RELAXED) != s1)
			continue;
		e->value = shmet__double(w[1]);
		e->ts = shmet__double(w[2]);
		e->stamp_ns = w[3];
		if (w[4] > SHMET_EXEMPLAR_BYTES)
			return 0;
		e->len = (uint32_t)w[4];
		memcpy(e->pairs, &w[5], e->len);
		return shmet_exemplar_valid(e->pairs, e->len) && e->value == e->value && (e->ts == 0 || isfinite(e->ts));
	}
	return 0;
}
