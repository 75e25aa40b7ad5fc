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
