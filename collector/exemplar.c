/* Exemplars: the latest one of a counter series or a histogram bucket
 * across the processes that hold it, and its OpenMetrics spelling.
 * Dead workers' exemplars go with their region at the fold (the retired
 * totals keep counts, not exemplars). */
#include "collector.h"

#include <math.h>

bool view_exemplar(const struct view_family *f, const struct view_series *s, uint32_t k, struct shmet_exemplar *out)
{
	uint32_t skc = f->sketch ? f->sketch->count : 0;
	uint32_t first = shmet_cell_size_sk(f->type, f->nbuckets, skc, 0) / 8;
	uint32_t size = shmet_cell_size_ex(f->type, f->nbuckets, skc, 1, 0);
	bool found = false;
	if (!f->exemplars || k >= shmet_exemplar_slots(f->type, f->nbuckets, 1))
		return false;
	for (uint32_t i = 0; i < s->nrefs; i++) {
		struct shmet_exemplar e;
		if (s->refs[i].retired || !collector_readable(s->refs[i].cells, size))
			continue;
		if (!shmet_exemplar_read(s->refs[i].cells + first + (size_t)k * SHMET_EXEMPLAR_WORDS, &e))
			continue;
		if (!found || e.stamp_ns > out->stamp_ns) {
			*out = e;
			found = true;
		}
	}
	return found;
}

void exemplar_append_om(shmet_buf *b, const struct shmet_exemplar *e)
{
	char t[SHMET_FMT_DOUBLE_MAX];
	if (b->len && b->data[b->len - 1] == '\n')
		b->len--; /* the sample line it belongs to */
	shmet_buf_append(b, " # {", 4);
	for (uint32_t p = 0, field = 0; p < e->len; field++) {
		size_t n = strlen(e->pairs + p); /* shmet_exemplar_read validated the NULs */
		if (field % 2 == 0) {
			if (field)
				shmet_buf_putc(b, ',');
			shmet_buf_append(b, e->pairs + p, n);
			shmet_buf_append(b, "=\"", 2);
		} else {
			shmet_escape_label_value(b, e->pairs + p, n);
			shmet_buf_putc(b, '"');
		}
		p += (uint32_t)n + 1;
	}
	shmet_buf_append(b, "} ", 2);
	shmet_buf_append(b, t, shmet_fmt_double_om(t, e->value));
	if (e->ts) {
		shmet_buf_putc(b, ' ');
		shmet_buf_append(b, t, shmet_fmt_double_om(t, e->ts));
	}
	shmet_buf_putc(b, '\n');
}
