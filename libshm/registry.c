/* libshm: the family registry as readers see it.
 *
 * Each record is copied into private memory once, validated there by the
 * same parser as a region's records, and trusted from then on: what a
 * worker writes into the registry later cannot change a shape a reader has
 * already adopted.  The registry only grows, so an update reads only the
 * bytes appended since the last one.
 */
#include "shmetrics_reader.h"

#include "keymap.h"

#include <stdlib.h>

static int add_entry(struct shmet_registry *r, const unsigned char *rec, uint32_t size, uint64_t off)
{
	const size_t hdr = sizeof(struct shmet_region_header);
	unsigned char *copy = malloc(hdr + size);
	struct shmet_family_view *fam = malloc(sizeof *fam);
	if (!copy || !fam) {
		free(copy);
		free(fam);
		return SHMET_E_SYS;
	}
	memset(copy, 0, hdr);
	memcpy(copy + hdr, rec, size);
	struct shmet_area a = {copy, hdr + size, hdr + size, hdr + size, false};
	char why[SHMET_ERRBUF];
	int prc = shmet_parse_family(&a, hdr, fam, why);
	free(copy); /* the view keeps its own copy of the record */
	if (prc != SHMET_OK) {
		free(fam);
		r->corrupt++;
		if (!r->err[0])
			snprintf(r->err, sizeof r->err, "family registry: %s", why);
		return SHMET_OK;
	}
	/* A name already registered, or any sample name in common with one:
	 * only a hostile writer gets such a record past the registry lock. */
	char names[5][SHMET__SAMPLE_NAME_MAX];
	size_t lens[5];
	int n = shmet__sample_names(fam->name, fam->name_len, fam->type, names, lens);
	for (int i = 0; i < n; i++)
		if (keymap_find(r->samples, names[i], lens[i])) {
			r->corrupt++;
			if (!r->err[0])
				snprintf(r->err, sizeof r->err, "family registry: %.*s clashes with an earlier family; ignored",
					 (int)fam->name_len, fam->name);
			free(fam);
			return SHMET_OK;
		}
	if (r->n == r->cap) {
		uint32_t cap = r->cap ? 2 * r->cap : 64;
		struct shmet_registry_entry *e = realloc(r->e, cap * sizeof *e);
		if (!e) {
			free(fam);
			return SHMET_E_SYS;
		}
		r->e = e;
		r->cap = cap;
	}
	for (int i = 0; i < n; i++)
		if (keymap_put(r->samples, names[i], lens[i], r->n) != 0) {
			free(fam);
			return SHMET_E_SYS;
		}
	if (keymap_put(r->names, fam->name, fam->name_len, r->n) != 0) {
		free(fam);
		return SHMET_E_SYS;
	}
	r->e[r->n].fam = fam;
	r->e[r->n].off = off;
	r->n++;
	return SHMET_OK;
}

static int refuse(struct shmet_registry *r, uint64_t off, const char *why)
{
	r->corrupt++;
	if (!r->err[0])
		snprintf(r->err, sizeof r->err, "family registry: removal at %llu %s; ignored", (unsigned long long)off, why);
	return SHMET_OK;
}

/* A REMOVE record (its private copy rec): checked, then listed. */
static int add_removal(struct shmet_registry *r, const unsigned char *rec, uint32_t size, uint64_t off)
{
	struct shmet_rec_remove rm;
	memcpy(&rm, rec, sizeof rm);
	bool whole = rm.rm_rec.rec_flags == SHMET_REMOVE_FAMILY;
	if ((rm.rm_rec.rec_flags & ~SHMET_REMOVE_FAMILY) || rm.rm_zero16)
		return refuse(r, off, "has unknown flags");
	/* the family it names: an earlier record (entries are in offset order) */
	uint32_t lo = 0, hi = r->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (r->e[mid].off < rm.rm_family_off)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == r->n || r->e[lo].off != rm.rm_family_off)
		return refuse(r, off, "names no registered family");
	const struct shmet_family_view *f = r->e[lo].fam;
	if (f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER)
		return refuse(r, off, "names a per-worker gauge");
	if (whole ? rm.rm_nvalues != 0 : rm.rm_nvalues != f->nlabels)
		return refuse(r, off, "has the wrong number of label values");
	char *key = malloc(SHMET_SERIES_KEY_MAX);
	if (!key)
		return SHMET_E_SYS;
	size_t n = shmet_key_append(key, 0, SHMET_SERIES_KEY_MAX, f->name, f->name_len);
	const unsigned char *p = rec + sizeof rm, *end = rec + size;
	for (uint32_t i = 0; i < rm.rm_nvalues && n; i++) {
		uint16_t l;
		if (end - p < 2 || (memcpy(&l, p, 2), (size_t)(end - p - 2) < l) || l > SHMET_MAX_VALUE_LEN ||
		    !shmet_valid_utf8((const char *)p + 2, l) || memchr(p + 2, 0, l)) {
			free(key);
			return refuse(r, off, "has a damaged label value");
		}
		n = shmet_key_append(key, n, SHMET_SERIES_KEY_MAX, (const char *)p + 2, l);
		p += 2 + l;
	}
	if (!n) {
		free(key);
		return refuse(r, off, "is too long");
	}
	if (r->nrm == r->caprm) {
		uint32_t cap = r->caprm ? 2 * r->caprm : 16;
		struct shmet_removal *m = realloc(r->rm, cap * sizeof *m);
		if (!m) {
			free(key);
			return SHMET_E_SYS;
		}
		r->rm = m;
		r->caprm = cap;
	}
	r->rm[r->nrm++] = (struct shmet_removal){f, whole, off + size, key, n};
	return SHMET_OK;
}

int shmet_registry_update(const struct shmet_segment *seg, struct shmet_registry *r)
{
	if (!r->names && !(r->names = calloc(1, sizeof *r->names)))
		return SHMET_E_SYS;
	if (!r->samples && !(r->samples = calloc(1, sizeof *r->samples)))
		return SHMET_E_SYS;
	if (r->end == 0)
		r->end = sizeof(struct shmet_region_header);
	if (r->stopped)
		return SHMET_OK;
	struct shmet_area a;
	char why[SHMET_ERRBUF];
	if (shmet_registry_area(seg, &a, why) != SHMET_OK) {
		r->corrupt++;
		if (!r->err[0])
			snprintf(r->err, sizeof r->err, "family registry: %s", why);
		return SHMET_OK; /* keep what was read: it cannot have changed */
	}
	/* records from r->end to the end acquired now; each bounded by it */
	static _Thread_local unsigned char rec[SHMET_REGISTRY_REC_MAX];
	while (r->end < a.dir_end) {
		uint32_t size;
		memcpy(&size, a.base + r->end, 4);
		if (size < sizeof(struct shmet_rec_family) || size % 8 || size > a.dir_end - r->end ||
		    size > sizeof rec) {
			r->stopped = true; /* no trustworthy size: nothing after it can be read */
			r->corrupt++;
			if (!r->err[0])
				snprintf(r->err, sizeof r->err, "family registry: record at %llu has size %u",
					 (unsigned long long)r->end, size);
			return SHMET_OK;
		}
		memcpy(rec, a.base + r->end, size);
		uint16_t kind;
		memcpy(&kind, rec + 4, 2);
		int rc = kind == SHMET_REC_REMOVE ? add_removal(r, rec, size, r->end) : add_entry(r, rec, size, r->end);
		if (rc != SHMET_OK)
			return rc;
		r->end += size;
	}
	return SHMET_OK;
}

void shmet_registry_free(struct shmet_registry *r)
{
	for (uint32_t i = 0; i < r->n; i++)
		free(r->e[i].fam);
	free(r->e);
	for (uint32_t i = 0; i < r->nrm; i++)
		free(r->rm[i].key);
	free(r->rm);
	if (r->names)
		keymap_free(r->names);
	if (r->samples)
		keymap_free(r->samples);
	free(r->names);
	free(r->samples);
	memset(r, 0, sizeof *r);
}

const struct shmet_family_view *shmet_registry_find(const struct shmet_registry *r, const char *name, size_t len)
{
	struct kv *kv = r->names ? keymap_find(r->names, name, len) : NULL;
	return kv ? r->e[kv->val].fam : NULL;
}

const struct shmet_family_view *shmet_registry_check(const struct shmet_registry *r, const struct shmet_family_view *f)
{
	const struct shmet_family_view *reg = shmet_registry_find(r, f->name, f->name_len);
	return reg && shmet_family_same(reg, f) ? reg : NULL;
}

