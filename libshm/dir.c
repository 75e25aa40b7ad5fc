/* libshm: walking a directory of records without trusting any of it. */
#include "shmetrics_reader.h"

#include <math.h>

#define REC_MIN ((uint64_t)sizeof(struct shmet_rec_family))

void shmet_dir_begin(struct shmet_dir_iter *it, const struct shmet_area *a)
{
	it->area = a;
	it->pos = sizeof(struct shmet_region_header);
	it->stopped = false;
}

/* A record's header, read once, with its size checked against the area. */
static int rec_at(const struct shmet_area *a, uint64_t off, struct shmet_rec_header *h, char *err)
{
	if (off % 8 || off < sizeof(struct shmet_region_header) || off > a->dir_end || a->dir_end - off < REC_MIN)
		return shmet__fail(err, SHMET_E_CORRUPT, "record offset %llu outside the directory (end %llu)",
				   (unsigned long long)off, (unsigned long long)a->dir_end);
	memcpy(h, a->base + off, sizeof *h);
	if (h->rec_size < REC_MIN || h->rec_size % 8 || h->rec_size > a->dir_end - off)
		return shmet__fail(err, SHMET_E_CORRUPT, "record at %llu has size %u past the directory end %llu",
				   (unsigned long long)off, h->rec_size, (unsigned long long)a->dir_end);
	return SHMET_OK;
}

/* Copy the record at off (header h, already checked by rec_at) into the
 * private buffer buf of cap bytes.  Everything after this reads the copy
 * only: a worker changing the segment's bytes now cannot change what was
 * validated.  The copy's header is the one whose size was checked. */
static int rec_copy(const struct shmet_area *a, uint64_t off, const struct shmet_rec_header *h, unsigned char *buf,
		    size_t cap, char *err)
{
	if (h->rec_size > cap)
		return shmet__fail(err, SHMET_E_CORRUPT, "record at %llu has size %u, more than any record (%zu)",
				   (unsigned long long)off, h->rec_size, cap);
	memcpy(buf, a->base + off, h->rec_size);
	memcpy(buf, h, sizeof *h);
	return SHMET_OK;
}

/* Read a u16-prefixed string at *p inside [.., end). */
static int take_str(const unsigned char **p, const unsigned char *end, const char **s, uint32_t *len)
{
	uint16_t l;
	if (end - *p < 2)
		return 0;
	memcpy(&l, *p, 2);
	*p += 2;
	if ((uint64_t)(end - *p) < l)
		return 0;
	*s = (const char *)*p;
	*len = l;
	*p += l;
	return 1;
}

/* The header fields of a view, before its buffer: what must be cleared. */
#define FAMILY_VIEW_FIELDS offsetof(struct shmet_family_view, rec)
#define SERIES_VIEW_FIELDS offsetof(struct shmet_series_view, rec)

int shmet_parse_family(const struct shmet_area *a, uint64_t off, struct shmet_family_view *f, char *err)
{
	struct shmet_rec_header h;
	memset(f, 0, FAMILY_VIEW_FIELDS);
	f->off = (uint32_t)off;
	int rc = rec_at(a, off, &h, err);
	if (rc != SHMET_OK)
		return rc;
	if (h.rec_kind != SHMET_REC_FAMILY)
		return shmet__fail(err, SHMET_E_CORRUPT, "record at %llu is not a family", (unsigned long long)off);
	rc = rec_copy(a, off, &h, f->rec, sizeof f->rec, err);
	if (rc != SHMET_OK)
		return rc;
	f->rec_size = h.rec_size;
	struct shmet_rec_family r;
	memcpy(&r, f->rec, sizeof r);
	if (r.fam_sketch_len > h.rec_size - sizeof r ||
	    !shmet_sketch_decode(f->rec + h.rec_size - r.fam_sketch_len, r.fam_sketch_len, r.fam_type, &f->sk))
		return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: bad sketch block", (unsigned long long)off);
	f->sketch_len = r.fam_sketch_len;
	/* the sketch block ends the record: the variable fields end before it */
	const unsigned char *p = f->rec + sizeof r, *end = f->rec + h.rec_size - r.fam_sketch_len;
	if (r.fam_type < SHMET_COUNTER || r.fam_type > SHMET_SUMMARY || r.fam_gauge_mode > SHMET_GAUGE_PER_WORKER ||
	    r.fam_nlabels > SHMET_MAX_LABELS || r.fam_nbuckets > SHMET_MAX_BUCKETS ||
	    (r.fam_nbuckets && r.fam_type != SHMET_HISTOGRAM))
		return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: bad type %u, mode %u, %u labels or %u buckets",
				   (unsigned long long)off, r.fam_type, r.fam_gauge_mode, r.fam_nlabels, r.fam_nbuckets);
	f->type = (enum shmet_type)r.fam_type;
	f->mode = r.fam_type == SHMET_GAUGE ? (enum shmet_gauge_mode)r.fam_gauge_mode : SHMET_GAUGE_SUM;
	if ((r.fam_type != SHMET_GAUGE && r.fam_gauge_mode > 1) || (r.fam_type == SHMET_SUMMARY && r.fam_gauge_mode))
		return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: bad exemplar flag", (unsigned long long)off);
	f->exemplars = r.fam_type != SHMET_GAUGE && r.fam_gauge_mode == 1;
	f->nlabels = r.fam_nlabels;
	f->nbuckets = r.fam_nbuckets;
	if ((uint64_t)(end - p) < 8ull * r.fam_nbuckets + r.fam_name_len + r.fam_help_len)
		return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: fields overrun the record", (unsigned long long)off);
	f->bounds = p;
	p += 8ull * r.fam_nbuckets;
	f->name = (const char *)p;
	f->name_len = r.fam_name_len;
	p += r.fam_name_len;
	f->help = (const char *)p;
	f->help_len = r.fam_help_len;
	p += r.fam_help_len;
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (!take_str(&p, end, &f->label_names[i], &f->label_lens[i]))
			return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: label names overrun the record",
					   (unsigned long long)off);
	if (!shmet_valid_metric_name(f->name, f->name_len)) {
		f->name_len = 0; /* not valid: an error message or a caller must not use it */
		return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: invalid metric name", (unsigned long long)off);
	}
	if (f->type == SHMET_COUNTER && !(f->name_len > 6 && memcmp(f->name + f->name_len - 6, "_total", 6) == 0))
		return shmet__fail(err, SHMET_E_CORRUPT, "family at %llu: counter name without _total",
				   (unsigned long long)off);
	if (f->help_len > SHMET_MAX_HELP_LEN || !shmet_valid_utf8(f->help, f->help_len))
		return shmet__fail(err, SHMET_E_CORRUPT, "family %.*s: help is not valid UTF-8", (int)f->name_len, f->name);
	/* The writer's strings are C strings: a NUL is damage, and would cut
	 * the text short wherever it is copied. */
	if (memchr(f->help, 0, f->help_len))
		return shmet__fail(err, SHMET_E_CORRUPT, "family %.*s: help holds a NUL byte", (int)f->name_len, f->name);
	for (uint32_t i = 0; i < f->nlabels; i++) {
		if (!shmet_valid_label_name(f->label_names[i], f->label_lens[i]) ||
		    (f->label_lens[i] == 2 && memcmp(f->label_names[i], "le", 2) == 0) ||
		    (f->label_lens[i] == 8 && memcmp(f->label_names[i], "quantile", 8) == 0) ||
		    (f->mode == SHMET_GAUGE_PER_WORKER && f->label_lens[i] == 6 &&
		     memcmp(f->label_names[i], "worker", 6) == 0)) /* the collector adds worker="<i>" */
			return shmet__fail(err, SHMET_E_CORRUPT, "family %.*s: invalid label name", (int)f->name_len,
					   f->name);
		for (uint32_t j = 0; j < i; j++)
			if (f->label_lens[i] == f->label_lens[j] &&
			    memcmp(f->label_names[i], f->label_names[j], f->label_lens[i]) == 0)
				return shmet__fail(err, SHMET_E_CORRUPT, "family %.*s: duplicate label name",
						   (int)f->name_len, f->name);
	}
	for (uint32_t i = 0; i < f->nbuckets; i++) {
		double b = shmet_bound(f, i);
		if (!isfinite(b) || (i && !(b > shmet_bound(f, i - 1))))
			return shmet__fail(err, SHMET_E_CORRUPT, "family %.*s: bucket bounds not finite and increasing",
					   (int)f->name_len, f->name);
	}
	return SHMET_OK;
}

static int parse_series(const struct shmet_area *a, uint64_t off, const struct shmet_rec_header *h,
			struct shmet_record *rec, char *err)
{
	struct shmet_series_view *s = &rec->series;
	memset(s, 0, SERIES_VIEW_FIELDS);
	s->off = (uint32_t)off;
	int rc = rec_copy(a, off, h, s->rec, sizeof s->rec, err);
	if (rc != SHMET_OK) {
		memset(&rec->fam, 0, FAMILY_VIEW_FIELDS);
		return rc;
	}
	s->rec_size = h->rec_size;
	struct shmet_rec_series r;
	memcpy(&r, s->rec, sizeof r);
	if (r.ser_family_off >= off) {
		memset(&rec->fam, 0, FAMILY_VIEW_FIELDS);
		return shmet__fail(err, SHMET_E_CORRUPT, "series at %llu refers forward to %u", (unsigned long long)off,
				   r.ser_family_off);
	}
	rc = shmet_parse_family(a, r.ser_family_off, &rec->fam, err);
	if (rc != SHMET_OK)
		return rc;
	if (r.ser_nvalues != rec->fam.nlabels)
		return shmet__fail(err, SHMET_E_CORRUPT, "series at %llu of %.*s has %u values for %u labels",
				   (unsigned long long)off, (int)rec->fam.name_len, rec->fam.name, r.ser_nvalues,
				   rec->fam.nlabels);
	s->family_off = r.ser_family_off;
	s->nvalues = r.ser_nvalues;
	/* a baseline subtracts: only the folder writes one, into a retired
	 * half; the same bit in a worker's region means nothing */
	s->flags = a->retired ? r.ser_rec.rec_flags & (SHMET_SER_OVERFLOW | SHMET_SER_BASELINE)
			      : r.ser_rec.rec_flags & SHMET_SER_OVERFLOW;
	s->folded_s = a->retired ? r.ser_folded_s : 0;
	s->cell_off = r.ser_cell_off;
	s->cell_size = shmet_cell_size_ex(rec->fam.type, rec->fam.nbuckets, rec->fam.sk.count, rec->fam.exemplars, a->retired);
	if (s->cell_off % 8 || s->cell_off < a->dir_end || s->cell_off > a->size || a->size - s->cell_off < s->cell_size)
		return shmet__fail(err, SHMET_E_CORRUPT, "series at %llu of %.*s: cells at %u outside [%llu, %llu)",
				   (unsigned long long)off, (int)rec->fam.name_len, rec->fam.name, s->cell_off,
				   (unsigned long long)a->dir_end, (unsigned long long)a->size);
	const unsigned char *p = s->rec + sizeof r, *end = s->rec + h->rec_size;
	for (uint32_t i = 0; i < s->nvalues; i++) {
		if (!take_str(&p, end, &s->values[i], &s->value_lens[i]))
			return shmet__fail(err, SHMET_E_CORRUPT, "series at %llu: values overrun the record",
					   (unsigned long long)off);
		if (s->value_lens[i] > SHMET_MAX_VALUE_LEN || !shmet_valid_utf8(s->values[i], s->value_lens[i]))
			return shmet__fail(err, SHMET_E_CORRUPT, "series at %llu of %.*s: label value is not valid UTF-8",
					   (unsigned long long)off, (int)rec->fam.name_len, rec->fam.name);
		/* two values differing only after a NUL would be one series to
		 * everything that copies them as C strings */
		if (memchr(s->values[i], 0, s->value_lens[i]))
			return shmet__fail(err, SHMET_E_CORRUPT, "series at %llu of %.*s: a label value holds a NUL byte",
					   (unsigned long long)off, (int)rec->fam.name_len, rec->fam.name);
	}
	return SHMET_OK;
}

int shmet_dir_next(struct shmet_dir_iter *it, struct shmet_record *rec, char *err)
{
	const struct shmet_area *a = it->area;
	if (it->stopped || it->pos >= a->dir_end)
		return 0;
	struct shmet_rec_header h;
	int rc = rec_at(a, it->pos, &h, err);
	if (rc != SHMET_OK) {
		it->stopped = true; /* without a trustworthy size there is no next record */
		return rc;
	}
	uint64_t off = it->pos;
	it->pos += h.rec_size;
	rec->kind = (enum shmet_rec_kind)h.rec_kind;
	if (h.rec_kind == SHMET_REC_FAMILY) {
		memset(&rec->series, 0, SERIES_VIEW_FIELDS);
		rc = shmet_parse_family(a, off, &rec->fam, err);
	} else if (h.rec_kind == SHMET_REC_SERIES) {
		rc = parse_series(a, off, &h, rec, err);
	} else {
		memset(&rec->fam, 0, FAMILY_VIEW_FIELDS);
		memset(&rec->series, 0, SERIES_VIEW_FIELDS);
		rc = shmet__fail(err, SHMET_E_CORRUPT, "record at %llu has unknown kind %u", (unsigned long long)off,
				 h.rec_kind);
	}
	return rc == SHMET_OK ? 1 : rc;
}

void shmet_read_cells(const struct shmet_area *a, const struct shmet_family_view *f,
		      const struct shmet_series_view *s, struct shmet_values *v)
{
	shmet_read_cell_values((const uint64_t *)(const void *)(a->base + s->cell_off), f->type, f->nbuckets, a->retired,
			       v);
}

/* The writer's rule (shmet_shape_same in shmetrics_layout.h), so that what
 * the registry accepted and what readers count can never differ. */
static void shape_of(const struct shmet_family_view *f, struct shmet_shape *s)
{
	memset(s, 0, sizeof *s);
	s->type = f->type;
	s->mode = f->mode;
	s->nlabels = f->nlabels;
	s->nbuckets = f->nbuckets;
	s->bounds = f->bounds;
	s->name = f->name;
	s->name_len = f->name_len;
	s->sketch = f->rec + f->rec_size - f->sketch_len;
	s->sketch_len = f->sketch_len;
	s->exemplars = f->exemplars;
	for (uint32_t i = 0; i < f->nlabels && i < SHMET_MAX_LABELS; i++) {
		s->label_names[i] = f->label_names[i];
		s->label_lens[i] = f->label_lens[i];
	}
}

bool shmet_family_same(const struct shmet_family_view *a, const struct shmet_family_view *b)
{
	struct shmet_shape x, y;
	if (a->name_len != b->name_len || memcmp(a->name, b->name, a->name_len) != 0)
		return false;
	shape_of(a, &x);
	shape_of(b, &y);
	return shmet_shape_same(&x, &y);
}

/* "name\xff value\xff value..." — 0xff never occurs in UTF-8. */
size_t shmet_key_append(char *buf, size_t n, size_t cap, const char *s, size_t len)
{
	if (n > cap || len + 1 > cap - n)
		return 0;
	memcpy(buf + n, s, len);
	buf[n + len] = '\xff';
	return n + len + 1;
}

size_t shmet_series_key(const struct shmet_record *r, char *buf, size_t cap)
{
	size_t n = shmet_key_append(buf, 0, cap, r->fam.name, r->fam.name_len);
	for (uint32_t i = 0; n && i < r->series.nvalues; i++)
		n = shmet_key_append(buf, n, cap, r->series.values[i], r->series.value_lens[i]);
	return n;
}
