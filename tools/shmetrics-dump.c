/* shmetrics-dump — print or check a shmetrics segment, read-only.
 *
 * Opens the segment with SHMET_ATTACH_READONLY (a PROT_READ mapping: this
 * tool cannot write to it) and either
 *   - prints the header, the region table, every family and series with its
 *     value in each region and the aggregate the collector would expose
 *     (shmet_snapshot_take), as text or as JSON (--json); or
 *   - with --check, validates every structure and lists each problem.
 *
 * Nothing read from the segment is trusted.  libshm bounds every record; the
 * checks here add what a walk alone cannot see (references into the middle
 * of a record, cells that overlap, duplicates, conflicts between regions);
 * and everything printed is escaped, so a label value can neither break the
 * JSON nor drive the terminal.
 *
 * The reading and printing code is kept apart from main() so that the fuzz
 * target (tests/fuzz_reader.c) can include this file and run it on hostile
 * segments: under SHMET_FUZZING main() is renamed.
 *
 * Exit status: 0 done (or --check found nothing wrong), 1 --check found
 * problems, 2 the segment cannot be opened or the command line is wrong.
 */
#include "format.h"
#include "keymap.h"
#include "shmetrics_reader.h"

#include <errno.h>
#include <fnmatch.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef SHMET_VERSION_STRING
#define SHMET_VERSION_STRING "unknown"
#endif

#define DUMP_ALL (-2)        /* --region not given */
#define DUMP_RETIRED (-1)    /* area id of the active retired half */
#define DUMP_CHECK_ONLY (-3) /* an area walked for its problems, not shown */
#define DUMP_LIST_MAX 50  /* problems listed per area; the rest are counted */

#define DUMP_EXIT_OK 0
#define DUMP_EXIT_PROBLEMS 1
#define DUMP_EXIT_TROUBLE 2

struct dump_opts {
	const char *path;
	bool json, check;
	long region;        /* DUMP_ALL, DUMP_RETIRED or a region index */
	const char *family; /* fnmatch(3) pattern, or NULL for all */
	double watch;       /* seconds between refreshes; 0: print once */
	long count;         /* refreshes with --watch; 0: until interrupted */
	int wait_ms;        /* how long to wait for a segment being created */
	int allow_owner;    /* --segment-owner: also accept a segment owned by owner_uid */
	uid_t owner_uid;
};

/* ---- small containers ---- */

static int dump_grow(void *pp, size_t *cap, size_t need, size_t size)
{
	void **p = (void **)pp;
	if (need <= *cap)
		return 0;
	size_t c = *cap ? *cap : 8;
	while (c < need)
		c *= 2;
	void *q = realloc(*p, c * size);
	if (!q)
		return -1;
	*p = q;
	*cap = c;
	return 0;
}

/* Open-addressing map from a byte string (copied) to a pointer. */
/* The dump's maps are libshm's keymap holding pointers (or offsets). */
static void *dmap_get(const struct keymap *m, const char *k, size_t n)
{
	struct kv *kv = keymap_find(m, k, n);
	return kv ? (void *)kv->val : NULL;
}

/* Insert or replace; -1 when out of memory. */
static int dmap_put(struct keymap *m, const char *k, size_t n, void *val)
{
	struct kv *kv = keymap_find(m, k, n);
	if (kv) {
		kv->val = (uintptr_t)val;
		return 0;
	}
	return keymap_put(m, k, n, (uintptr_t)val);
}

/* A list of messages ("problem: ..." and "info: ..." lines). */
struct msgs {
	char **v;
	size_t n, cap;
};

static void msgs_vadd(struct msgs *m, const char *prefix, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
static void msgs_vadd(struct msgs *m, const char *prefix, const char *fmt, va_list ap)
{
	char body[1024];
	vsnprintf(body, sizeof body, fmt, ap);
	size_t n = strlen(prefix) + strlen(body) + 1;
	char *s = malloc(n);
	if (!s || dump_grow(&m->v, &m->cap, m->n + 1, sizeof *m->v) != 0) {
		free(s);
		return;
	}
	snprintf(s, n, "%s%s", prefix, body);
	m->v[m->n++] = s;
}

static void msgs_add(struct msgs *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void msgs_add(struct msgs *m, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	msgs_vadd(m, "", fmt, ap);
	va_end(ap);
}

/* Forget the messages added since there were n. */
static void msgs_truncate(struct msgs *m, size_t n)
{
	while (m->n > n)
		free(m->v[--m->n]);
}

static void msgs_free(struct msgs *m)
{
	for (size_t i = 0; i < m->n; i++)
		free(m->v[i]);
	free(m->v);
	memset(m, 0, sizeof *m);
}

/* ---- formatting ---- */

/* Numbers are spelled by libshm's format.c, as the collector spells them:
 * shmet_fmt_double (the shortest text that reads back as the same double,
 * as Go writes it). */

static void fmt_time(char *buf, size_t cap, uint64_t ns)
{
	time_t t = (time_t)(ns / 1000000000u);
	struct tm tm;
	if (ns == 0 || !gmtime_r(&t, &tm) || strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, cap, "-");
}

/* Bytes from the segment on a terminal or in JSON: each well-formed UTF-8
 * character as it is, everything else escaped, so that no byte can break
 * the JSON or drive the terminal.
 *   ESC_TEXT  Prometheus escapes (\\, \", \n), \xNN for every other control
 *             byte and every byte that is not valid UTF-8;
 *   ESC_LINE  a message on one terminal line: only \xNN (quotes stay);
 *   ESC_JSON  a JSON string's contents: \\, \", \n, \t, \u00XX for the
 *             other control bytes, U+FFFD for invalid UTF-8. */
enum esc { ESC_TEXT, ESC_LINE, ESC_JSON };

static void put_escaped(FILE *o, const char *s, size_t n, enum esc mode)
{
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		size_t len = shmet_utf8_len(s + i, n - i);
		if (mode != ESC_LINE && (c == '\\' || c == '"'))
			fprintf(o, "\\%c", c);
		else if (mode != ESC_LINE && c == '\n')
			fputs("\\n", o);
		else if (mode == ESC_JSON && c == '\t')
			fputs("\\t", o);
		else if (mode == ESC_JSON && (c < 0x20 || c == 0x7f))
			fprintf(o, "\\u%04x", c);
		else if (mode == ESC_JSON && len == 0)
			fputs("\\ufffd", o);
		else if (len == 0 || c < 0x20 || c == 0x7f)
			fprintf(o, "\\x%02x", c);
		else
			fwrite(s + i, 1, len, o);
		i += len ? len : 1;
	}
}

static void t_str(FILE *o, const char *s, size_t n) { put_escaped(o, s, n, ESC_TEXT); }

/* A message (built from segment bytes) on a terminal line. */
static void t_line(FILE *o, const char *s)
{
	put_escaped(o, s, strlen(s), ESC_LINE);
	fputc('\n', o);
}

static void j_str(FILE *o, const char *s, size_t n)
{
	fputc('"', o);
	put_escaped(o, s, n, ESC_JSON);
	fputc('"', o);
}

static void j_cstr(FILE *o, const char *s) { j_str(o, s, strlen(s)); }

/* A double as a JSON number; NaN and infinities (not JSON) as strings. */
static void j_double(FILE *o, double v)
{
	char b[40];
	shmet_fmt_double(b, v);
	if (isfinite(v))
		fputs(b, o);
	else
		fprintf(o, "\"%s\"", b);
}

/* ---- what the segment holds, indexed across areas ---- */

/* One series' cells as read from one area. */
struct d_value {
	int32_t area; /* region index or DUMP_RETIRED */
	bool alive, folded;
	bool baseline; /* a removal's baseline (REMOVAL): readers subtract it */
	uint64_t whole, stamp_ns;
	double value;
	uint64_t *buckets; /* histograms: nbuckets + 1, non-cumulative */
	const struct shmet_snap_series *agg; /* per-worker gauges: this region's exposed series */
	uint64_t *sketch;  /* summaries with quantiles: sk.count + 2 counts */
	struct shmet_exemplar *ex; /* live cells of a family with exemplars: one per slot */
	bool *has_ex;
};

struct d_series {
	char *key; /* family name 0xff value 0xff ... (0xff never occurs in UTF-8) */
	size_t key_len;
	uint32_t nvalues;
	const char *values[SHMET_MAX_LABELS]; /* point into key */
	uint32_t lens[SHMET_MAX_LABELS];
	struct d_value *v;
	size_t nv, capv;
	const struct shmet_snap_series *agg; /* the exposed aggregate (not per-worker), or NULL */
};

struct d_family {
	char *name, *help; /* NUL-terminated copies; a valid name holds no NUL */
	uint32_t name_len, help_len;
	enum shmet_type type;
	enum shmet_gauge_mode mode;
	uint32_t nlabels, nbuckets;
	char *label_names[SHMET_MAX_LABELS];
	uint32_t label_lens[SHMET_MAX_LABELS];
	double bounds[SHMET_MAX_BUCKETS];
	struct shmet_sketch sk; /* sk.count 0: none */
	unsigned exemplars;
	int32_t first_area, conflict_area;
	struct d_series **series;
	size_t nseries, cap;
	/* what the family costs (SERIES LIMIT): records and cells in every
	 * area, and whether a process met its limit (an overflow series) */
	uint64_t bytes;
	bool overflowed;
};

struct dump {
	const struct shmet_segment *seg;
	const struct dump_opts *o;
	struct shmet_region_info *ri; /* per region */
	bool *folded;                 /* per region: its generation is in the active half */
	unsigned active;
	struct d_family **fams;
	size_t nfams, capf;
	struct keymap fam_by_name, series_by_key;
	struct shmet_snapshot snap;
	struct keymap snap_by_key; /* shmet_series_key_worker -> snap series */
	char *key;                 /* SERIES_KEY_CAP bytes, for snap_by_key lookups */
	struct msgs problems, info;
	struct shmet_registry reg; /* the shape of every family */
	uint64_t corrupt, conflicts;
	bool oom;
};

static void d_series_free(struct d_series *s)
{
	for (size_t i = 0; i < s->nv; i++)
		free(s->v[i].buckets), free(s->v[i].sketch), free(s->v[i].ex), free(s->v[i].has_ex);
	free(s->v);
	free(s->key);
	free(s);
}

static void d_family_free(struct d_family *f)
{
	for (size_t i = 0; i < f->nseries; i++)
		d_series_free(f->series[i]);
	free(f->series);
	for (uint32_t i = 0; i < f->nlabels; i++)
		free(f->label_names[i]);
	free(f->name);
	free(f->help);
	free(f);
}

static void dump_free(struct dump *d)
{
	for (size_t i = 0; i < d->nfams; i++)
		d_family_free(d->fams[i]);
	free(d->fams);
	keymap_free(&d->fam_by_name);
	keymap_free(&d->series_by_key);
	keymap_free(&d->snap_by_key);
	shmet_snapshot_free(&d->snap);
	shmet_registry_free(&d->reg);
	msgs_free(&d->problems);
	msgs_free(&d->info);
	free(d->ri);
	free(d->folded);
	free(d->key);
	memset(d, 0, sizeof *d);
}

static char *dup_bytes(const char *s, size_t n)
{
	char *p = malloc(n + 1);
	if (p) {
		memcpy(p, s, n);
		p[n] = 0;
	}
	return p;
}

static const char *area_name(int32_t area, char *buf, size_t cap)
{
	if (area == DUMP_RETIRED)
		snprintf(buf, cap, "the retired totals");
	else
		snprintf(buf, cap, "region %d", (int)area);
	return buf;
}

/* The family of this name, created from the registry's record when new;
 * NULL when v does not have the registered shape (reported once per area)
 * or out of memory. */
static struct d_family *index_family(struct dump *d, const struct shmet_family_view *v, int32_t area)
{
	struct d_family *f = dmap_get(&d->fam_by_name, v->name, v->name_len);
	const struct shmet_family_view *reg = shmet_registry_check(&d->reg, v);
	if (!reg) {
		d->conflicts++;
		if (!f || f->conflict_area != area) {
			char a1[32];
			if (f)
				f->conflict_area = area;
			msgs_add(&d->problems,
				 "%s: family %.*s is not in the family registry with this type, gauge mode, labels and "
				 "buckets; the collector drops its series",
				 area_name(area, a1, sizeof a1), (int)v->name_len, v->name);
		}
		return NULL;
	}
	if (f)
		return f;
	v = reg;
	if (dump_grow(&d->fams, &d->capf, d->nfams + 1, sizeof *d->fams) != 0 || !(f = calloc(1, sizeof *f)))
		goto oom;
	d->fams[d->nfams++] = f;
	f->name = dup_bytes(v->name, v->name_len);
	f->help = dup_bytes(v->help, v->help_len);
	f->name_len = v->name_len;
	f->help_len = v->help_len;
	f->type = v->type;
	f->mode = v->mode;
	f->nbuckets = v->nbuckets;
	f->sk = v->sk;
	f->exemplars = v->exemplars;
	for (uint32_t i = 0; i < v->nbuckets; i++)
		f->bounds[i] = shmet_bound(v, i);
	f->first_area = area;
	f->conflict_area = INT32_MIN;
	for (uint32_t i = 0; i < v->nlabels; i++, f->nlabels++) {
		if (!(f->label_names[i] = dup_bytes(v->label_names[i], v->label_lens[i])))
			goto oom;
		f->label_lens[i] = v->label_lens[i];
	}
	if (!f->name || !f->help || dmap_put(&d->fam_by_name, v->name, v->name_len, f) != 0)
		goto oom;
	return f;
oom:
	d->oom = true;
	return NULL;
}

/* Room for any shmet_series_key_worker. */
#define SERIES_KEY_CAP (SHMET_SERIES_KEY_MAX + 16)

static bool per_worker(const struct d_family *f)
{
	return f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER;
}

/* The snapshot's series of record r as met in area: the aggregate the
 * collector exposes for it (per-worker gauges: the one of that region). */
static const struct shmet_snap_series *snap_of(const struct dump *d, const struct d_family *f,
					       const struct shmet_record *r, int32_t area)
{
	if (!d->key || (per_worker(f) && area < 0))
		return NULL; /* out of memory; a per-worker gauge is never folded */
	size_t n = shmet_series_key_worker(r, per_worker(f) ? area : -1, d->key, SERIES_KEY_CAP);
	return n ? dmap_get(&d->snap_by_key, d->key, n) : NULL;
}

static void index_value(struct dump *d, struct d_family *f, const struct shmet_area *a, const struct shmet_record *r,
			const char *key, size_t klen, int32_t area)
{
	struct d_series *s = dmap_get(&d->series_by_key, key, klen);
	if (!s) {
		if (dump_grow(&f->series, &f->cap, f->nseries + 1, sizeof *f->series) != 0 || !(s = calloc(1, sizeof *s)))
			goto oom;
		if (!(s->key = dup_bytes(key, klen))) {
			free(s);
			goto oom;
		}
		s->key_len = klen;
		s->nvalues = r->series.nvalues;
		const char *p = s->key + r->fam.name_len + 1;
		for (uint32_t i = 0; i < s->nvalues; i++) {
			s->values[i] = p;
			s->lens[i] = r->series.value_lens[i];
			p += s->lens[i] + 1;
		}
		f->series[f->nseries++] = s;
		if (dmap_put(&d->series_by_key, key, klen, s) != 0)
			goto oom;
		if (!per_worker(f))
			s->agg = snap_of(d, f, r, area);
	}
	if (dump_grow(&s->v, &s->capv, s->nv + 1, sizeof *s->v) != 0)
		goto oom;
	struct shmet_values v;
	shmet_read_cells(a, &r->fam, &r->series, &v);
	struct d_value *dv = &s->v[s->nv];
	memset(dv, 0, sizeof *dv);
	dv->area = area;
	dv->baseline = (r->series.flags & SHMET_SER_BASELINE) != 0;
	if (area >= 0) {
		dv->alive = d->ri[area].alive;
		dv->folded = d->folded[area];
	}
	if (per_worker(f) && area >= 0)
		dv->agg = snap_of(d, f, r, area);
	dv->whole = v.whole;
	dv->value = v.value;
	dv->stamp_ns = v.stamp_ns;
	if (f->type == SHMET_HISTOGRAM) {
		if (!(dv->buckets = malloc(8ull * (f->nbuckets + 1))))
			goto oom;
		memcpy(dv->buckets, v.buckets, 8ull * (f->nbuckets + 1));
	}
	if (f->sk.count) { /* libshm checked that the series' cells hold them */
		if (!(dv->sketch = calloc(f->sk.count + 2, 8)))
			goto oom;
		shmet_sketch_load_add(dv->sketch, (const uint64_t *)(const void *)(a->base + r->series.cell_off) +
							  shmet_sketch_cell(f->type, f->nbuckets, a->retired),
				      f->sk.count + 2);
	}
	uint32_t nex = a->retired ? 0 : shmet_exemplar_slots(f->type, f->nbuckets, f->exemplars);
	if (nex) { /* libshm checked that the live cells hold the slots */
		if (!(dv->ex = calloc(nex, sizeof *dv->ex)) || !(dv->has_ex = calloc(nex, sizeof *dv->has_ex)))
			goto oom;
		const uint64_t *slot = (const uint64_t *)(const void *)(a->base + r->series.cell_off) +
				       shmet_cell_size_sk(f->type, f->nbuckets, f->sk.count, 0) / 8;
		for (uint32_t k = 0; k < nex; k++)
			dv->has_ex[k] = shmet_exemplar_read(slot + (size_t)k * SHMET_EXEMPLAR_WORDS, &dv->ex[k]);
	}
	s->nv++;
	return;
oom:
	d->oom = true;
}

/* ---- walking one area: every record checked, values indexed ---- */

struct walk_cell {
	uint32_t off, size, rec;
};

struct walk {
	struct dump *d;
	const struct shmet_area *a;
	int32_t area;      /* region index, DUMP_RETIRED or DUMP_CHECK_ONLY */
	const char *what;  /* "region 3", "retired half 1 (active)" */
	struct msgs *sink; /* where its problems go: problems, or info */
	size_t listed, unlisted;
	uint32_t *fam_offs; /* FAMILY records seen, in increasing offset order */
	size_t nfam_offs, capfo;
	struct walk_cell *cells;
	size_t ncells, capc;
	struct keymap seen_fams, seen_series;
	uint64_t series;
	char *key;
};

static void walk_problem(struct walk *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void walk_problem(struct walk *w, const char *fmt, ...)
{
	if (w->listed >= DUMP_LIST_MAX) {
		w->unlisted++;
		return;
	}
	char prefix[64];
	snprintf(prefix, sizeof prefix, "%s: ", w->what);
	va_list ap;
	va_start(ap, fmt);
	msgs_vadd(w->sink, prefix, fmt, ap);
	va_end(ap);
	w->listed++;
}

static bool has_family_at(const struct walk *w, uint32_t off)
{
	size_t lo = 0, hi = w->nfam_offs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (w->fam_offs[mid] == off)
			return true;
		if (w->fam_offs[mid] < off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static int cell_cmp(const void *a, const void *b)
{
	const struct walk_cell *x = a, *y = b;
	return x->off < y->off ? -1 : x->off > y->off;
}

/* Filters narrow what is shown; --check always looks at everything. */
static bool wanted_family(const struct dump *d, const char *name, size_t len)
{
	if (!d->o->family || d->o->check)
		return true;
	char buf[SHMET_MAX_NAME_LEN + 1];
	if (len > SHMET_MAX_NAME_LEN)
		return false;
	memcpy(buf, name, len);
	buf[len] = 0;
	return fnmatch(d->o->family, buf, 0) == 0;
}

static void walk_family(struct walk *w, const struct shmet_record *r)
{
	struct shmet_rec_family raw;
	memcpy(&raw, r->fam.rec, sizeof raw); /* the copy libshm validated */
	if (raw.fam_rec.rec_flags != 0) /* fam_sketch_len: libshm checked the block */
		walk_problem(w, "family %.*s at %u: reserved fields are not zero", (int)r->fam.name_len, r->fam.name,
			     r->fam.off);
	if (w->nfam_offs == 0 || w->fam_offs[w->nfam_offs - 1] < r->fam.off) {
		if (dump_grow(&w->fam_offs, &w->capfo, w->nfam_offs + 1, sizeof *w->fam_offs) == 0)
			w->fam_offs[w->nfam_offs++] = r->fam.off;
	}
	void *first = dmap_get(&w->seen_fams, r->fam.name, r->fam.name_len);
	if (first)
		walk_problem(w, "family %.*s is defined twice (records at %u and %u)", (int)r->fam.name_len, r->fam.name,
			     (uint32_t)(uintptr_t)first, r->fam.off);
	else if (dmap_put(&w->seen_fams, r->fam.name, r->fam.name_len, (void *)(uintptr_t)r->fam.off) != 0)
		w->d->oom = true;
	if (w->area != DUMP_CHECK_ONLY && wanted_family(w->d, r->fam.name, r->fam.name_len))
		index_family(w->d, &r->fam, w->area);
}

static void walk_series(struct walk *w, const struct shmet_record *r)
{
	const struct shmet_area *a = w->a;
	const struct shmet_series_view *s = &r->series;
	struct shmet_rec_series raw;
	memcpy(&raw, s->rec, sizeof raw);
	int name_len = (int)r->fam.name_len;
	const char *name = r->fam.name;
	bool ok = true;
	w->series++;
	uint16_t allowed = a->retired ? SHMET_SER_OVERFLOW | SHMET_SER_BASELINE : SHMET_SER_OVERFLOW;
	if ((raw.ser_rec.rec_flags & ~allowed) != 0 || raw.ser_zero16 != 0 || (!a->retired && raw.ser_folded_s != 0))
		walk_problem(w, "series at %u of %.*s: reserved fields are not zero", s->off, name_len, name);
	if (!has_family_at(w, s->family_off)) {
		walk_problem(w, "series at %u refers to offset %u, which is not the start of a family record", s->off,
			     s->family_off);
		ok = false;
	}
	if (s->cell_off < a->cell_low) {
		walk_problem(w, "series at %u of %.*s: cells at %u lie below the cell area [%llu, %llu)", s->off, name_len,
			     name, s->cell_off, (unsigned long long)a->cell_low, (unsigned long long)a->size);
		ok = false;
	}
	if (dump_grow(&w->cells, &w->capc, w->ncells + 1, sizeof *w->cells) == 0)
		w->cells[w->ncells++] = (struct walk_cell){s->cell_off, s->cell_size, s->off};
	size_t klen = shmet_series_key(r, w->key, SERIES_KEY_CAP - 1);
	/* a removal's baseline shares its series' label values, not its identity */
	size_t dlen = klen && (s->flags & SHMET_SER_BASELINE) ? (w->key[klen] = '\xfe', klen + 1) : klen;
	void *first = dmap_get(&w->seen_series, w->key, dlen);
	if (first) {
		walk_problem(w, "series at %u of %.*s duplicates the one at %u (same label values)", s->off, name_len,
			     name, (uint32_t)(uintptr_t)first);
		ok = false;
	} else if (dmap_put(&w->seen_series, w->key, dlen, (void *)(uintptr_t)s->off) != 0) {
		w->d->oom = true;
	}
	if (!ok || w->area == DUMP_CHECK_ONLY || !wanted_family(w->d, name, r->fam.name_len))
		return;
	struct d_family *f = index_family(w->d, &r->fam, w->area);
	if (!f)
		return;
	f->bytes += s->rec_size + s->cell_size;
	f->overflowed |= (raw.ser_rec.rec_flags & SHMET_SER_OVERFLOW) != 0;
	index_value(w->d, f, a, r, w->key, klen, w->area);
}

/* Walk area a: check every record, index values unless DUMP_CHECK_ONLY.
 * Returns the number of series records seen. */
static uint64_t walk_area(struct dump *d, const struct shmet_area *a, int32_t area, const char *what,
			  struct msgs *sink)
{
	struct walk w;
	memset(&w, 0, sizeof w);
	w.d = d;
	w.a = a;
	w.area = area;
	w.what = what;
	w.sink = sink;
	if (!(w.key = malloc(SERIES_KEY_CAP))) {
		d->oom = true;
		return 0;
	}
	struct shmet_dir_iter it;
	struct shmet_record r;
	char err[SHMET_ERRBUF];
	int rc;
	shmet_dir_begin(&it, a);
	while ((rc = shmet_dir_next(&it, &r, err)) != 0) {
		if (rc < 0) {
			if (sink == &d->problems)
				d->corrupt++;
			walk_problem(&w, "%s", err);
		} else if (r.kind == SHMET_REC_FAMILY) {
			walk_family(&w, &r);
		} else {
			walk_series(&w, &r);
		}
	}
	if (w.ncells) /* qsort's array may not be NULL, even when empty */
		qsort(w.cells, w.ncells, sizeof *w.cells, cell_cmp);
	for (size_t i = 1; i < w.ncells; i++)
		if ((uint64_t)w.cells[i - 1].off + w.cells[i - 1].size > w.cells[i].off)
			walk_problem(&w, "cells of the series at %u and at %u overlap", w.cells[i - 1].rec, w.cells[i].rec);
	if (w.unlisted)
		msgs_add(sink, "%s: %zu more not listed", what, w.unlisted);
	free(w.key);
	free(w.fam_offs);
	free(w.cells);
	keymap_free(&w.seen_fams);
	keymap_free(&w.seen_series);
	return w.series;
}

static uint64_t bytes_used(const struct shmet_area *a)
{
	return (a->dir_end - sizeof(struct shmet_region_header)) + (a->size - a->cell_low);
}

static bool region_wanted(const struct dump *d, int32_t area)
{
	return d->o->region == DUMP_ALL || d->o->region == area || d->o->check;
}

/* Read the whole segment into d: snapshot, region table, walks, checks. */
static double overflowed(const struct dump *d, const struct d_family *f);

static void dump_read(struct dump *d, const struct shmet_segment *seg, const struct dump_opts *o)
{
	memset(d, 0, sizeof *d);
	d->seg = seg;
	d->o = o;
	const struct shmet_seg_header *h = seg->map.hdr;
	char err[SHMET_ERRBUF], what[64];

	/* The aggregate first, as the collector would compute it now. */
	shmet_snapshot_take(seg, &d->snap);
	if (shmet_registry_update(seg, &d->reg) != SHMET_OK)
		d->oom = true;
	if (d->reg.corrupt)
		msgs_add(&d->problems, "%llu family registry records are damaged or clash (%s)",
			 (unsigned long long)d->reg.corrupt, d->reg.err);
	if (!(d->key = malloc(SERIES_KEY_CAP)))
		d->oom = true;
	for (size_t i = 0; i < d->snap.nfamilies; i++) {
		const struct shmet_snap_family *f = &d->snap.families[i];
		for (size_t j = 0; j < f->nseries; j++)
			if (dmap_put(&d->snap_by_key, f->series[j].key, f->series[j].key_len, (void *)&f->series[j]) != 0)
				d->oom = true;
	}

	/* The areas in the order every reader meets them (shmet_scan): the
	 * active retired half, then each region, its slot read once. */
	uint64_t raw_active = __atomic_load_n(&h->sh_retired_active, __ATOMIC_ACQUIRE);
	struct shmet_scan sc;
	struct shmet_scan_area sa;
	shmet_scan_begin(&sc, seg);
	d->active = sc.active;
	const struct shmet_retired_header *rh = sc.rh;
	d->ri = calloc(seg->regions, sizeof *d->ri);
	d->folded = calloc(seg->regions, sizeof *d->folded);
	if (!d->ri || !d->folded) {
		d->oom = true;
		return;
	}

	/* header */
	if (raw_active > 1)
		msgs_add(&d->problems, "header: sh_retired_active is %llu, not 0 or 1",
			 (unsigned long long)raw_active);
	if (h->sh_mode & 0007)
		msgs_add(&d->problems, "header: recorded mode %04o gives other users access", h->sh_mode & 07777u);
	if (h->sh_version_minor > SHMET_VERSION_MINOR) {
		msgs_add(&d->info, "header: layout version %u.%u is newer than this build's %u.%u; fields it added are not shown",
			 h->sh_version_major, h->sh_version_minor, SHMET_VERSION_MAJOR, SHMET_VERSION_MINOR);
	} else {
		static const unsigned char zero[SHMET_PAGE];
		if (memcmp(h->sh_reserved0, zero, sizeof h->sh_reserved0) != 0 ||
		    memcmp(h->sh_reserved1, zero, sizeof h->sh_reserved1) != 0)
			msgs_add(&d->problems, "header: reserved bytes are not zero");
	}

	/* the active retired half: what dead workers counted */
	/* A live segment changes while it is read: a collector may fold (and
	 * later rewrite the half read here) or free a dead region (its pages
	 * turn to zeros mid-walk).  What was found in an area that changed
	 * under the walk is dropped, and said so, rather than called damage. */
	struct shmet_area a;
	size_t mark = d->problems.n;
	uint64_t folds = __atomic_load_n(&rh->rh_folds, __ATOMIC_ACQUIRE);
	snprintf(what, sizeof what, "retired half %u (active)", d->active);
	shmet_scan_next(&sc, &sa); /* the active half comes first */
	if (sa.rc != SHMET_OK) {
		d->corrupt++;
		msgs_add(&d->problems, "%s: %s", what, sa.err);
	}
	walk_area(d, &sa.area, region_wanted(d, DUMP_RETIRED) ? DUMP_RETIRED : DUMP_CHECK_ONLY, what, &d->problems);
	if (d->problems.n > mark && (__atomic_load_n(&h->sh_retired_active, __ATOMIC_ACQUIRE) != raw_active ||
				     __atomic_load_n(&rh->rh_folds, __ATOMIC_ACQUIRE) != folds)) {
		msgs_truncate(&d->problems, mark);
		msgs_add(&d->info, "%s: a collector folded while it was read; run again to check it", what);
	}

	/* the inactive half is scratch space a folding collector may be writing
	 * right now: its problems are only notes while the collector lock is held */
	unsigned inactive = d->active ^ 1;
	bool folding = shmet_seg_byte_locked(&seg->map, SHMET_COLLECTOR_LOCK_OFF) == 1;
	struct msgs *isink = folding ? &d->info : &d->problems;
	snprintf(what, sizeof what, "retired half %u (inactive%s)", inactive,
		 folding ? ", a collector may be folding into it" : "");
	if (shmet_retired_area(seg, inactive, &a, err) != SHMET_OK)
		msgs_add(isink, "%s: %s", what, err);
	walk_area(d, &a, DUMP_CHECK_ONLY, what, isink);

	while (shmet_scan_next(&sc, &sa)) {
		uint32_t i = (uint32_t)sa.region;
		d->ri[i] = sa.info;
		d->folded[i] = sa.folded;
		const struct shmet_region_info *ri = &d->ri[i];
		snprintf(what, sizeof what, "region %u", i);
		if (sa.folded_gen > ri->generation)
			msgs_add(&d->problems, "retired half %u: records region %u generation %llu as folded, but the region is only at generation %llu",
				 d->active, i, (unsigned long long)sa.folded_gen, (unsigned long long)ri->generation);
		if (ri->state == SHMET_REGION_FREE) {
			if (ri->dir_end != 0 || ri->cell_low != 0)
				msgs_add(&d->info, "%s: free but its header is not empty (being claimed?)", what);
			continue;
		}
		if (ri->state != SHMET_REGION_LIVE) {
			msgs_add(&d->problems, "%s: unknown state %u in its table slot", what, ri->state);
			continue;
		}
		if (ri->generation == 0)
			msgs_add(&d->problems, "%s: live at generation 0 (a claim always starts generation 1)", what);
		if (ri->parent != SHMET_NO_PARENT && ri->parent >= seg->regions)
			msgs_add(&d->problems, "%s: parent region %u does not exist", what, ri->parent);
		mark = d->problems.n;
		if (sa.rc != SHMET_OK) {
			d->corrupt++;
			msgs_add(&d->problems, "%s: %s", what, sa.err);
		}
		uint64_t n = walk_area(d, &sa.area, region_wanted(d, (int32_t)i) ? (int32_t)i : DUMP_CHECK_ONLY, what,
				       &d->problems);
		struct shmet_region_info now;
		shmet_region_info(seg, i, &now);
		if (d->problems.n > mark && (now.state != ri->state || now.generation != ri->generation)) {
			msgs_truncate(&d->problems, mark);
			msgs_add(&d->info, "%s: freed or claimed again while it was read; run again to check it", what);
			continue;
		}
		uint64_t claimed = __atomic_load_n(&((const struct shmet_region_header *)(const void *)sa.area.base)->rg_series,
						   __ATOMIC_RELAXED);
		if (claimed < n)
			msgs_add(&d->problems, "%s: header counts %llu series, its directory holds %llu", what,
				 (unsigned long long)claimed, (unsigned long long)n);
		if (!ri->alive && d->folded[i])
			msgs_add(&d->info, "%s (pid %u) is dead and already folded into the retired totals; a collector will free it",
				 what, ri->pid);
		else if (!ri->alive)
			/* with no collector to fold it, it is never reused: workers
			 * that come later find the segment fuller and drop writes */
			msgs_add(folding ? &d->info : &d->problems,
				 "%s (pid %u) is dead and not yet folded%s: its %llu series still count from the region until a collector folds it",
				 what, ri->pid, folding ? "" : " and no collector is running", (unsigned long long)n);
		if (ri->dropped && !d->folded[i])
			msgs_add(&d->problems,
				 "%s (pid %u): %llu writes dropped (fallback handles of a full region or a failed registration, NaN, "
				 "negative counter adds)",
				 what, ri->pid, (unsigned long long)ri->dropped);
	}

	/* Writes that never reached a cell, and claims that found no region:
	 * the counters only grow, so once a write was lost this stays a problem. */
	uint64_t orphan = __atomic_load_n(&h->sh_dropped_orphan, __ATOMIC_RELAXED);
	uint64_t claims = __atomic_load_n(&h->sh_claim_failures, __ATOMIC_RELAXED);
	uint64_t retired_dropped = __atomic_load_n(&rh->rh_dropped, __ATOMIC_RELAXED);
	if (orphan)
		msgs_add(&d->problems, "header: %llu writes dropped by processes that had no region (sh_dropped_orphan)",
			 (unsigned long long)orphan);
	if (claims)
		msgs_add(&d->problems,
			 "header: %llu attempts to claim a region failed: the segment was full (sh_claim_failures)",
			 (unsigned long long)claims);
	if (retired_dropped)
		msgs_add(&d->problems, "retired half %u (active): %llu writes dropped by workers since folded (rh_dropped)",
			 d->active, (unsigned long long)retired_dropped);

	/* Dead regions a collector cannot fold now because the retired area is
	 * full (the fold's own arithmetic): they stay allocated, and count from
	 * their region, until room is found. */
	struct shmet_fold_room fr;
	int frc = shmet_fold_room(seg, &d->reg, &fr);
	if (frc == SHMET_E_SYS)
		d->oom = true;
	else if (frc == SHMET_OK && fr.skipped)
		msgs_add(&d->problems,
			 "retired area full: %u dead region%s cannot be folded (region %u needs %llu bytes, %llu are free); "
			 "they stay allocated until there is room: create the segment anew with a larger "
			 "shmetricsd --retired-size",
			 fr.skipped, fr.skipped == 1 ? "" : "s", fr.first, (unsigned long long)fr.first_need,
			 (unsigned long long)fr.free);
	for (size_t i = 0; i < d->nfams; i++)
		if (d->fams[i]->overflowed)
			msgs_add(&d->info,
				 "family %s is at its series limit in a process: %.17g lookups of new label sets went to its "
				 "overflow series (values \"" SHMET_OVERFLOW_VALUE "\"); raise its series_limit or drop the "
				 "label whose values grow",
				 d->fams[i]->name, overflowed(d, d->fams[i]));
	if (d->oom)
		msgs_add(&d->problems, "out of memory: the listing is incomplete");
}

/* ---- printing ---- */

/* SHMET_OVERFLOW_FAMILY{family=f}: the lookups that went to f's overflow
 * series, as the collector exposes it. */
/* The segment's default series limit, as a writer takes it (0: 2000). */
static uint32_t series_limit(const struct shmet_seg_header *h)
{
	uint32_t n = __atomic_load_n(&h->sh_series_limit, __ATOMIC_RELAXED);
	return n ? n : SHMET_SERIES_LIMIT_DEFAULT;
}

static double overflowed(const struct dump *d, const struct d_family *f)
{
	const struct shmet_snap_family *of = shmet_snapshot_family(&d->snap, SHMET_OVERFLOW_FAMILY);
	const char *v[1] = {f->name};
	const struct shmet_snap_series *s = of && of->nlabels == 1 ? shmet_snapshot_series(of, v) : NULL;
	return s ? shmet_agg_value(&s->agg, SHMET_COUNTER) : 0;
}

static int str_cmp(const char *a, size_t an, const char *b, size_t bn)
{
	int c = memcmp(a, b, an < bn ? an : bn);
	return c ? c : (an > bn) - (an < bn);
}

static int fam_cmp(const void *a, const void *b)
{
	const struct d_family *x = *(struct d_family *const *)a, *y = *(struct d_family *const *)b;
	return str_cmp(x->name, x->name_len, y->name, y->name_len);
}

static int series_cmp(const void *a, const void *b)
{
	const struct d_series *x = *(struct d_series *const *)a, *y = *(struct d_series *const *)b;
	for (uint32_t i = 0; i < x->nvalues && i < y->nvalues; i++) {
		int c = str_cmp(x->values[i], x->lens[i], y->values[i], y->lens[i]);
		if (c)
			return c;
	}
	return (x->nvalues > y->nvalues) - (x->nvalues < y->nvalues);
}

static void dump_sort(struct dump *d)
{
	if (d->nfams) /* qsort's array may not be NULL, even when empty */
		qsort(d->fams, d->nfams, sizeof *d->fams, fam_cmp);
	for (size_t i = 0; i < d->nfams; i++)
		if (d->fams[i]->nseries)
			qsort(d->fams[i]->series, d->fams[i]->nseries, sizeof *d->fams[i]->series, series_cmp);
}

/* Values in one shape for printing: a region's cells or an aggregate. */
struct pvals {
	uint64_t whole, stamp_ns;
	double value;
	const uint64_t *buckets;
	const uint64_t *sketch;
	const struct shmet_exemplar *ex;
	const bool *has_ex;
};

static struct pvals pv_of_value(const struct d_value *v)
{
	struct pvals p = {v->whole, v->stamp_ns, v->value, v->buckets, v->sketch, v->ex, v->has_ex};
	return p;
}

/* A region's exemplars: slot, labels, value, timestamp. */
static void t_exemplars(FILE *o, const struct d_family *f, const struct pvals *v)
{
	char b[40];
	for (uint32_t k = 0; v->ex && k < shmet_exemplar_slots(f->type, f->nbuckets, f->exemplars); k++) {
		if (!v->has_ex[k])
			continue;
		const struct shmet_exemplar *e = &v->ex[k];
		if (f->type == SHMET_HISTOGRAM) {
			if (k < f->nbuckets)
				shmet_fmt_double(b, f->bounds[k]);
			fprintf(o, "  exemplar le=%s {", k < f->nbuckets ? b : "+Inf");
		} else {
			fputs("  exemplar {", o);
		}
		for (uint32_t p = 0, field = 0; p < e->len; field++) {
			const char *t = e->pairs + p;
			if (field % 2)
				fprintf(o, "=\"%s\"", t);
			else
				fprintf(o, "%s%s", field ? "," : "", t);
			p += (uint32_t)strlen(t) + 1;
		}
		shmet_fmt_double(b, e->value);
		fprintf(o, "} %s", b);
		if (e->ts) {
			shmet_fmt_double(b, e->ts);
			fprintf(o, " %s", b);
		}
	}
}

/* A sketch's non-zero counts, by bucket upper edge, and its quantiles. */
static void t_sketch(FILE *o, const struct d_family *f, const uint64_t *c)
{
	char b[40];
	bool native = f->type == SHMET_HISTOGRAM;
	fprintf(o, "  %s schema %d:", native ? "native" : "sketch", f->sk.schema);
	if (c[0])
		fprintf(o, " %s:%llu", native ? "zero" : "below", (unsigned long long)c[0]);
	for (uint32_t i = 1; i <= f->sk.count; i++)
		if (c[i]) {
			shmet_fmt_double(b, shmet_sketch_upper(f->sk.schema, (int64_t)f->sk.first + i - 1));
			fprintf(o, " le=%s:%llu", b, (unsigned long long)c[i]);
		}
	if (c[f->sk.count + 1])
		fprintf(o, " %s:%llu", native ? "negative" : "above", (unsigned long long)c[f->sk.count + 1]);
	for (uint32_t q = 0; q < f->sk.nobjectives; q++) {
		shmet_fmt_double(b, shmet_sketch_quantile(&f->sk, c, f->sk.objectives[q]));
		fprintf(o, "%s q%g=%s", q ? "" : "  all time:", f->sk.objectives[q], b);
	}
}

/* An aggregate's counter value is one exact total, already rounded: shown
 * as the whole count when that is all it holds, else as the double. */
static struct pvals pv_of_agg(const struct shmet_agg *a, enum shmet_type type)
{
	struct pvals p = {a->whole, a->stamp_ns, a->value, a->buckets, NULL, NULL, NULL};
	if (type == SHMET_COUNTER) {
		if (a->value == (double)a->whole)
			p.value = 0;
		else
			p.whole = 0;
	}
	return p;
}

static void t_vals(FILE *o, const struct d_family *f, const struct pvals *v)
{
	char b[40], t[40];
	switch (f->type) {
	case SHMET_COUNTER:
		/* whole increments exactly (a double rounds past 2^53), and the
		 * two cells apart when both hold something */
		if (v->value == 0) {
			fprintf(o, "%llu", (unsigned long long)v->whole);
		} else if (v->whole == 0) {
			shmet_fmt_double(b, v->value);
			fputs(b, o);
		} else {
			shmet_fmt_double(b, (double)v->whole + v->value);
			shmet_fmt_double(t, v->value);
			fprintf(o, "%s (%llu + %s)", b, (unsigned long long)v->whole, t);
		}
		break;
	case SHMET_GAUGE:
		shmet_fmt_double(b, v->value);
		fputs(b, o);
		if (f->mode == SHMET_GAUGE_MOSTRECENT) {
			fmt_time(t, sizeof t, v->stamp_ns);
			fprintf(o, "  (set %s)", t);
		}
		break;
	case SHMET_HISTOGRAM: {
		shmet_fmt_double(b, v->value);
		fprintf(o, "count %llu sum %s  ", (unsigned long long)v->whole, b);
		uint64_t cum = 0;
		for (uint32_t i = 0; i <= f->nbuckets; i++) {
			cum += v->buckets ? v->buckets[i] : 0;
			if (i < f->nbuckets)
				shmet_fmt_double(b, f->bounds[i]);
			fprintf(o, "%sle=%s:%llu", i ? " " : "", i < f->nbuckets ? b : "+Inf", (unsigned long long)cum);
		}
		if (f->sk.count && v->sketch)
			t_sketch(o, f, v->sketch);
		break;
	}
	case SHMET_SUMMARY:
		shmet_fmt_double(b, v->value);
		fprintf(o, "count %llu sum %s", (unsigned long long)v->whole, b);
		if (f->sk.count && v->sketch)
			t_sketch(o, f, v->sketch);
		break;
	}
}

static void t_series_name(FILE *o, const struct d_family *f, const struct d_series *s)
{
	fputs(f->name, o);
	if (s->nvalues == 0)
		return;
	fputc('{', o);
	for (uint32_t i = 0; i < s->nvalues && i < f->nlabels; i++) {
		fprintf(o, "%s%s=\"", i ? "," : "", f->label_names[i]);
		t_str(o, s->values[i], s->lens[i]);
		fputc('"', o);
	}
	fputc('}', o);
}

static const char *region_state(const struct dump *d, uint32_t i)
{
	const struct shmet_region_info *ri = &d->ri[i];
	if (ri->state == SHMET_REGION_FREE)
		return "free";
	if (ri->state != SHMET_REGION_LIVE)
		return "bad";
	if (ri->alive)
		return "live";
	return d->folded[i] ? "folded" : "dead";
}

/* Bytes used by region i (false when its header is out of bounds). */
static bool region_used(const struct dump *d, uint32_t i, uint64_t *used)
{
	struct shmet_area a;
	*used = 0;
	if (d->ri[i].state != SHMET_REGION_LIVE)
		return true;
	if (shmet_region_area(d->seg, i, &a, NULL) != SHMET_OK)
		return false;
	*used = bytes_used(&a);
	return true;
}

static void print_text(FILE *o, const struct dump *d)
{
	const struct shmet_segment *seg = d->seg;
	const struct shmet_seg_header *h = seg->map.hdr;
	char t[40];
	fprintf(o, "segment %s\n", seg->path);
	fprintf(o, "  layout %u.%u (signature 0x%08x), %u regions of %llu bytes, %llu bytes in all\n",
		h->sh_version_major, h->sh_version_minor, h->sh_signature, seg->regions,
		(unsigned long long)seg->region_size, (unsigned long long)seg->map.size);
	fmt_time(t, sizeof t, h->sh_created_ns);
	fprintf(o, "  created %s by pid %u, mode %04o\n", t, h->sh_creator_pid, h->sh_mode & 07777u);
	fprintf(o, "  claim failures %llu, writes dropped without a region %llu, series limit %u per family and process\n",
		(unsigned long long)h->sh_claim_failures, (unsigned long long)h->sh_dropped_orphan, series_limit(h));
	for (unsigned half = 0; half < 2; half++) {
		const struct shmet_retired_header *rh = shmet_retired_header(seg, half);
		struct shmet_area a;
		bool ok = shmet_retired_area(seg, half, &a, NULL) == SHMET_OK;
		fprintf(o, "  retired half %u%s: %llu folds, %llu dropped writes, ", half,
			half == d->active ? " (active)" : "", (unsigned long long)rh->rh_folds,
			(unsigned long long)rh->rh_dropped);
		if (ok)
			fprintf(o, "%llu of %llu bytes used\n", (unsigned long long)bytes_used(&a), (unsigned long long)a.size);
		else
			fprintf(o, "header out of bounds\n");
	}

	uint32_t in_use = 0;
	for (uint32_t i = 0; i < seg->regions; i++)
		in_use += d->ri[i].state != SHMET_REGION_FREE;
	fprintf(o, "\nregions (%u of %u in use):\n", in_use, seg->regions);
	fprintf(o, "  %6s %-6s %8s %-5s %6s %6s %8s %10s %8s\n", "REGION", "STATE", "PID", "OWNER", "GEN", "PARENT",
		"SERIES", "BYTES-USED", "DROPPED");
	uint32_t nfree = 0;
	for (uint32_t i = 0; i < seg->regions; i++) {
		const struct shmet_region_info *ri = &d->ri[i];
		if (!region_wanted(d, (int32_t)i))
			continue;
		if (ri->state == SHMET_REGION_FREE && d->o->region == DUMP_ALL) {
			nfree++;
			continue;
		}
		char parent[16] = "-", used[24] = "?", pid[16] = "-";
		uint64_t u;
		if (ri->parent != SHMET_NO_PARENT && ri->state == SHMET_REGION_LIVE)
			snprintf(parent, sizeof parent, "%u", ri->parent);
		if (region_used(d, i, &u))
			snprintf(used, sizeof used, "%llu", (unsigned long long)u);
		if (ri->state != SHMET_REGION_FREE)
			snprintf(pid, sizeof pid, "%u", ri->pid);
		fprintf(o, "  %6u %-6s %8s %-5s %6llu %6s %8llu %10s %8llu\n", i, region_state(d, i), pid,
			ri->state == SHMET_REGION_FREE ? "-" : ri->alive ? "alive" : "dead",
			(unsigned long long)ri->generation, parent, (unsigned long long)ri->series, used,
			(unsigned long long)ri->dropped);
	}
	if (nfree)
		fprintf(o, "  (%u free regions not shown)\n", nfree);

	fprintf(o, "\nfamilies (%zu):\n", d->nfams);
	for (size_t i = 0; i < d->nfams; i++) {
		const struct d_family *f = d->fams[i];
		fprintf(o, "\n%s %s", shmet_type_name(f->type), f->name);
		if (f->type == SHMET_GAUGE)
			fprintf(o, " (%s)", shmet_gauge_mode_name(f->mode));
		if (f->nlabels) {
			fputs("  labels:", o);
			for (uint32_t k = 0; k < f->nlabels; k++)
				fprintf(o, "%s%s", k ? ", " : " ", f->label_names[k]);
		}
		if (f->type == SHMET_HISTOGRAM) {
			fputs("  buckets:", o);
			for (uint32_t k = 0; k < f->nbuckets; k++) {
				shmet_fmt_double(t, f->bounds[k]);
				fprintf(o, " %s", t);
			}
			fputs(" +Inf", o);
		}
		fputc('\n', o);
		fprintf(o, "  %zu series, %llu bytes", f->nseries, (unsigned long long)f->bytes);
		if (f->overflowed)
			fprintf(o, ", at its series limit: %.17g lookups went to its overflow series", overflowed(d, f));
		fputc('\n', o);
		if (f->help_len) {
			fputs("  # ", o);
			t_str(o, f->help, f->help_len);
			fputc('\n', o);
		}
		for (size_t j = 0; j < f->nseries; j++) {
			const struct d_series *s = f->series[j];
			fputs("  ", o);
			t_series_name(o, f, s);
			fputc('\n', o);
			for (size_t k = 0; k < s->nv; k++) {
				const struct d_value *v = &s->v[k];
				char label[48];
				if (v->area == DUMP_RETIRED)
					snprintf(label, sizeof label, v->baseline ? "retired, removed (-)" : "retired");
				else
					snprintf(label, sizeof label, "region %d (%s)", (int)v->area,
						 v->folded ? "folded" : v->alive ? "alive" : "dead");
				fprintf(o, "    %-22s ", label);
				struct pvals p = pv_of_value(v);
				t_vals(o, f, &p);
				t_exemplars(o, f, &p);
				fputc('\n', o);
			}
			if (per_worker(f)) {
				bool any = false;
				for (size_t k = 0; k < s->nv; k++) {
					const struct shmet_snap_series *ss = s->v[k].agg;
					if (!ss || !ss->agg.has)
						continue;
					char label[48];
					snprintf(label, sizeof label, "= worker=\"%d\"", (int)s->v[k].area);
					fprintf(o, "    %-22s ", label);
					struct pvals p = pv_of_agg(&ss->agg, f->type);
					t_vals(o, f, &p);
					fputc('\n', o);
					any = true;
				}
				if (!any)
					fprintf(o, "    %-22s not exposed (no live worker has it)\n", "= aggregate");
				continue;
			}
			const struct shmet_snap_series *ss = s->agg;
			fprintf(o, "    %-22s ", "= aggregate");
			if (!ss)
				fputs("not exposed", o);
			else if (f->type == SHMET_GAUGE && !ss->agg.has)
				fputs("no value (only dead processes had it)", o);
			else {
				struct pvals p = pv_of_agg(&ss->agg, f->type);
				/* the merged sketch: what the aggregate counts (no folded region twice) */
				uint64_t *sk = f->sk.count ? calloc(f->sk.count + 2, 8) : NULL;
				for (size_t k = 0; sk && k < s->nv; k++)
					if (s->v[k].sketch && !s->v[k].folded)
						for (uint32_t x = 0; x < f->sk.count + 2; x++)
							sk[x] = shmet_sat_add(sk[x], s->v[k].sketch[x]);
				p.sketch = sk;
				t_vals(o, f, &p);
				free(sk);
			}
			fputc('\n', o);
		}
	}
	fprintf(o, "\ntotals: %llu records skipped as corrupt, %llu series dropped as conflicts, %llu writes dropped\n",
		(unsigned long long)(d->snap.corrupt > d->corrupt ? d->snap.corrupt : d->corrupt),
		(unsigned long long)(d->snap.conflicts > d->conflicts ? d->snap.conflicts : d->conflicts),
		(unsigned long long)d->snap.dropped);
	if (d->problems.n) {
		fprintf(o, "%zu problem%s (shmetrics-dump --check lists them all):\n", d->problems.n,
			d->problems.n == 1 ? "" : "s");
		for (size_t i = 0; i < d->problems.n && i < 10; i++) {
			fputs("  problem: ", o);
			t_line(o, d->problems.v[i]);
		}
		if (d->problems.n > 10)
			fprintf(o, "  ...\n");
	}
}

static void j_vals(FILE *o, const struct d_family *f, const struct pvals *v)
{
	char b[40];
	switch (f->type) {
	case SHMET_COUNTER:
		fputs("\"value\":", o);
		j_double(o, (double)v->whole + v->value);
		fprintf(o, ",\"whole\":%llu,\"fraction\":", (unsigned long long)v->whole);
		j_double(o, v->value);
		break;
	case SHMET_GAUGE:
		fputs("\"value\":", o);
		j_double(o, v->value);
		if (f->mode == SHMET_GAUGE_MOSTRECENT)
			fprintf(o, ",\"set_ns\":%llu", (unsigned long long)v->stamp_ns);
		break;
	case SHMET_HISTOGRAM: {
		fprintf(o, "\"count\":%llu,\"sum\":", (unsigned long long)v->whole);
		j_double(o, v->value);
		fputs(",\"buckets\":[", o);
		uint64_t cum = 0;
		for (uint32_t i = 0; i <= f->nbuckets; i++) {
			cum += v->buckets ? v->buckets[i] : 0;
			if (i < f->nbuckets)
				shmet_fmt_double(b, f->bounds[i]);
			fprintf(o, "%s{\"le\":\"%s\",\"count\":%llu}", i ? "," : "", i < f->nbuckets ? b : "+Inf",
				(unsigned long long)cum);
		}
		fputc(']', o);
		break;
	}
	case SHMET_SUMMARY:
		fprintf(o, "\"count\":%llu,\"sum\":", (unsigned long long)v->whole);
		j_double(o, v->value);
		break;
	}
}

static void j_msgs(FILE *o, const char *name, const struct msgs *m)
{
	fprintf(o, "\"%s\":[", name);
	for (size_t i = 0; i < m->n; i++) {
		if (i)
			fputc(',', o);
		j_cstr(o, m->v[i]);
	}
	fputc(']', o);
}

static void print_json(FILE *o, const struct dump *d)
{
	const struct shmet_segment *seg = d->seg;
	const struct shmet_seg_header *h = seg->map.hdr;
	fputs("{\"segment\":", o);
	j_cstr(o, seg->path);
	fprintf(o,
		",\"header\":{\"version_major\":%u,\"version_minor\":%u,\"signature\":%u,\"region_count\":%u,"
		"\"region_size\":%llu,\"region_table_off\":%llu,\"regions_off\":%llu,\"retired_off\":%llu,"
		"\"retired_half_size\":%llu,\"total_size\":%llu,\"created_ns\":%llu,\"creator_pid\":%u,\"mode\":\"%04o\","
		"\"claim_failures\":%llu,\"dropped_orphan\":%llu,\"retired_active\":%u,\"series_limit\":%u}",
		h->sh_version_major, h->sh_version_minor, h->sh_signature, seg->regions,
		(unsigned long long)seg->region_size, (unsigned long long)seg->table_off,
		(unsigned long long)seg->regions_off, (unsigned long long)seg->retired_off,
		(unsigned long long)seg->retired_half_size, (unsigned long long)seg->map.size,
		(unsigned long long)h->sh_created_ns, h->sh_creator_pid, h->sh_mode & 07777u,
		(unsigned long long)h->sh_claim_failures, (unsigned long long)h->sh_dropped_orphan, d->active,
		series_limit(h));
	fputs(",\"retired\":[", o);
	for (unsigned half = 0; half < 2; half++) {
		const struct shmet_retired_header *rh = shmet_retired_header(seg, half);
		struct shmet_area a;
		bool ok = shmet_retired_area(seg, half, &a, NULL) == SHMET_OK;
		fprintf(o, "%s{\"half\":%u,\"active\":%s,\"folds\":%llu,\"dropped\":%llu,\"size\":%llu,", half ? "," : "",
			half, half == d->active ? "true" : "false", (unsigned long long)rh->rh_folds,
			(unsigned long long)rh->rh_dropped, (unsigned long long)a.size);
		if (ok)
			fprintf(o, "\"bytes_used\":%llu}", (unsigned long long)bytes_used(&a));
		else
			fputs("\"bytes_used\":null}", o);
	}
	fputs("],\"regions\":[", o);
	bool first = true;
	for (uint32_t i = 0; i < seg->regions; i++) {
		const struct shmet_region_info *ri = &d->ri[i];
		if (!region_wanted(d, (int32_t)i))
			continue;
		uint64_t used;
		bool ok = region_used(d, i, &used);
		fprintf(o, "%s{\"index\":%u,\"state\":\"%s\",\"alive\":%s,\"folded\":%s,\"pid\":%u,\"generation\":%llu,",
			first ? "" : ",", i, region_state(d, i), ri->alive ? "true" : "false",
			d->folded[i] ? "true" : "false", ri->state == SHMET_REGION_FREE ? 0 : ri->pid,
			(unsigned long long)ri->generation);
		if (ri->parent != SHMET_NO_PARENT && ri->state == SHMET_REGION_LIVE)
			fprintf(o, "\"parent\":%u,", ri->parent);
		else
			fputs("\"parent\":null,", o);
		fprintf(o, "\"claimed_ns\":%llu,\"series\":%llu,\"dropped\":%llu,",
			(unsigned long long)ri->claimed_ns, (unsigned long long)ri->series, (unsigned long long)ri->dropped);
		if (ok)
			fprintf(o, "\"bytes_used\":%llu}", (unsigned long long)used);
		else
			fputs("\"bytes_used\":null}", o);
		first = false;
	}
	fputs("],\"families\":[", o);
	for (size_t i = 0; i < d->nfams; i++) {
		const struct d_family *f = d->fams[i];
		fprintf(o, "%s{\"name\":", i ? "," : "");
		j_str(o, f->name, f->name_len);
		fprintf(o, ",\"type\":\"%s\",", shmet_type_name(f->type));
		if (f->type == SHMET_GAUGE)
			fprintf(o, "\"gauge_mode\":\"%s\",", shmet_gauge_mode_name(f->mode));
		fputs("\"help\":", o);
		j_str(o, f->help, f->help_len);
		fputs(",\"labels\":[", o);
		for (uint32_t k = 0; k < f->nlabels; k++) {
			if (k)
				fputc(',', o);
			j_str(o, f->label_names[k], f->label_lens[k]);
		}
		fputc(']', o);
		if (f->type == SHMET_HISTOGRAM) {
			fputs(",\"buckets\":[", o);
			for (uint32_t k = 0; k < f->nbuckets; k++) {
				if (k)
					fputc(',', o);
				j_double(o, f->bounds[k]);
			}
			fputc(']', o);
		}
		fprintf(o, ",\"series_count\":%zu,\"bytes\":%llu,\"overflowed_lookups\":", f->nseries,
			(unsigned long long)f->bytes);
		j_double(o, f->overflowed ? overflowed(d, f) : 0);
		fputs(",\"series\":[", o);
		for (size_t j = 0; j < f->nseries; j++) {
			const struct d_series *s = f->series[j];
			fprintf(o, "%s{\"labels\":{", j ? "," : "");
			for (uint32_t k = 0; k < s->nvalues && k < f->nlabels; k++) {
				if (k)
					fputc(',', o);
				j_str(o, f->label_names[k], f->label_lens[k]);
				fputc(':', o);
				j_str(o, s->values[k], s->lens[k]);
			}
			fputs("},\"values\":[", o);
			for (size_t k = 0; k < s->nv; k++) {
				const struct d_value *v = &s->v[k];
				if (v->area == DUMP_RETIRED)
					fprintf(o, "%s{\"source\":\"%s\",", k ? "," : "", v->baseline ? "baseline" : "retired");
				else
					fprintf(o, "%s{\"source\":\"region\",\"region\":%d,\"alive\":%s,\"folded\":%s,",
						k ? "," : "", (int)v->area, v->alive ? "true" : "false",
						v->folded ? "true" : "false");
				struct pvals p = pv_of_value(v);
				j_vals(o, f, &p);
				fputc('}', o);
			}
			fputs("],\"aggregate\":", o);
			if (per_worker(f)) {
				fputs("{\"workers\":[", o);
				bool any = false;
				for (size_t k = 0; k < s->nv; k++) {
					const struct shmet_snap_series *ss = s->v[k].agg;
					if (!ss || !ss->agg.has)
						continue;
					fprintf(o, "%s{\"worker\":\"%d\",", any ? "," : "", (int)s->v[k].area);
					struct pvals p = pv_of_agg(&ss->agg, f->type);
					j_vals(o, f, &p);
					fputc('}', o);
					any = true;
				}
				fputs("]}}", o);
				continue;
			}
			const struct shmet_snap_series *ss = s->agg;
			if (!ss || (f->type == SHMET_GAUGE && !ss->agg.has)) {
				fputs("null}", o);
				continue;
			}
			fputc('{', o);
			struct pvals p = pv_of_agg(&ss->agg, f->type);
			j_vals(o, f, &p);
			fputs("}}", o);
		}
		fputs("]}", o);
	}
	fprintf(o, "],\"stats\":{\"corrupt_records\":%llu,\"conflicts\":%llu,\"dropped_writes\":%llu},",
		(unsigned long long)(d->snap.corrupt > d->corrupt ? d->snap.corrupt : d->corrupt),
		(unsigned long long)(d->snap.conflicts > d->conflicts ? d->snap.conflicts : d->conflicts),
		(unsigned long long)d->snap.dropped);
	j_msgs(o, "problems", &d->problems);
	fputc(',', o);
	j_msgs(o, "info", &d->info);
	fputs("}\n", o);
}

static void print_check(FILE *o, const struct dump *d, bool json)
{
	if (json) {
		fputs("{\"segment\":", o);
		j_cstr(o, d->seg->path);
		fprintf(o, ",\"ok\":%s,", d->problems.n ? "false" : "true");
		j_msgs(o, "problems", &d->problems);
		fputc(',', o);
		j_msgs(o, "info", &d->info);
		fputs("}\n", o);
		return;
	}
	for (size_t i = 0; i < d->problems.n; i++) {
		fputs("problem: ", o);
		t_line(o, d->problems.v[i]);
	}
	for (size_t i = 0; i < d->info.n; i++) {
		fputs("info: ", o);
		t_line(o, d->info.v[i]);
	}
	fprintf(o, "check: %s: ", d->seg->path);
	if (d->problems.n)
		fprintf(o, "%zu problem%s", d->problems.n, d->problems.n == 1 ? "" : "s");
	else
		fputs("clean", o);
	fprintf(o, ", %zu note%s\n", d->info.n, d->info.n == 1 ? "" : "s");
}

/* Print (or check) an open segment once.  Returns the exit status. */
static int dump_segment(const struct shmet_segment *seg, const struct dump_opts *o, FILE *out)
{
	struct dump d;
	dump_read(&d, seg, o);
	int rc = DUMP_EXIT_OK;
	if (o->check) {
		print_check(out, &d, o->json);
		rc = d.problems.n ? DUMP_EXIT_PROBLEMS : DUMP_EXIT_OK;
	} else {
		dump_sort(&d);
		if (o->json)
			print_json(out, &d);
		else
			print_text(out, &d);
	}
	dump_free(&d);
	return rc;
}

/* Open, print, close.  err gets the reason when the segment cannot be opened. */
static int dump_path(const struct dump_opts *o, FILE *out, char *err)
{
	struct shmet_segment seg;
	struct shmet_seg_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.wait_ms = o->wait_ms;
	cfg.allow_owner = o->allow_owner;
	cfg.owner_uid = o->owner_uid;
	int rc = shmet_segment_open(o->path, SHMET_ATTACH_READONLY, &cfg, &seg, err);
	if (rc != SHMET_OK)
		return DUMP_EXIT_TROUBLE;
	if (o->region >= 0 && (uint64_t)o->region >= seg.regions) {
		snprintf(err, SHMET_ERRBUF, "%s: no region %ld (the segment has %u)", seg.path, o->region, seg.regions);
		shmet_segment_close(&seg);
		return DUMP_EXIT_TROUBLE;
	}
	rc = dump_segment(&seg, o, out);
	shmet_segment_close(&seg);
	return rc;
}

/* ---- command line ---- */

#ifdef SHMET_FUZZING
#define main shmet_dump_main
int shmet_dump_main(int argc, char **argv);
#endif

static volatile sig_atomic_t dump_stop;

static void on_signal(int sig)
{
	(void)sig;
	dump_stop = 1;
}

static void usage(FILE *o)
{
	fprintf(o,
		"Usage: shmetrics-dump [OPTION]... [SEGMENT]\n"
		"Print or check a shmetrics shared-memory segment, read-only.\n"
		"\n"
		"  -s, --segment PATH   the segment (default: $SHMETRICS_SEGMENT, then %s)\n"
		"  -j, --json           print one JSON object (schema: shmetrics-dump(1))\n"
		"  -c, --check          validate every structure; list problems and notes\n"
		"  -r, --region N       show only region N (or \"retired\": the retired totals)\n"
		"  -f, --family NAME    show only families whose name matches NAME (a glob)\n"
		"  -w, --watch SECONDS  refresh every SECONDS until interrupted\n"
		"  -n, --count N        with --watch, stop after N refreshes\n"
		"      --segment-owner UID  also accept a segment owned by this uid\n"
		"  -h, --help           show this help and exit\n"
		"  -V, --version        show the version and exit\n"
		"\n"
		"Exit status: 0 done (--check: no problem), 1 --check found problems,\n"
		"2 the segment cannot be opened or the command line is wrong.\n",
		SHMET_DEFAULT_PATH);
}

static int parse_long(const char *s, long min, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min)
		return -1;
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"segment", required_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
		{"check", no_argument, NULL, 'c'},         {"region", required_argument, NULL, 'r'},
		{"family", required_argument, NULL, 'f'},  {"watch", required_argument, NULL, 'w'},
		{"count", required_argument, NULL, 'n'},   {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},       {"segment-owner", required_argument, NULL, 'O'},
		{NULL, 0, NULL, 0},
	};
	struct dump_opts o;
	memset(&o, 0, sizeof o);
	o.region = DUMP_ALL;
	o.wait_ms = 500;
	int c;
	char *end;
	while ((c = getopt_long(argc, argv, "s:jcr:f:w:n:hV", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			o.path = optarg;
			break;
		case 'j':
			o.json = true;
			break;
		case 'c':
			o.check = true;
			break;
		case 'r':
			if (strcmp(optarg, "retired") == 0)
				o.region = DUMP_RETIRED;
			else if (parse_long(optarg, 0, &o.region) != 0) {
				fprintf(stderr, "shmetrics-dump: --region: \"%s\" is not a region index or \"retired\"\n", optarg);
				return DUMP_EXIT_TROUBLE;
			}
			break;
		case 'f':
			o.family = optarg;
			break;
		case 'w':
			errno = 0;
			o.watch = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(o.watch > 0) || o.watch > 86400) {
				fprintf(stderr, "shmetrics-dump: --watch: \"%s\" is not a number of seconds (0 < s <= 86400)\n",
					optarg);
				return DUMP_EXIT_TROUBLE;
			}
			break;
		case 'n':
			if (parse_long(optarg, 1, &o.count) != 0) {
				fprintf(stderr, "shmetrics-dump: --count: \"%s\" is not a positive number\n", optarg);
				return DUMP_EXIT_TROUBLE;
			}
			break;
		case 'O':
			if (shmet_parse_uid(optarg, &o.owner_uid) != 0) {
				fprintf(stderr, "shmetrics-dump: --segment-owner: \"%s\" is not a numeric uid\n", optarg);
				return DUMP_EXIT_TROUBLE;
			}
			o.allow_owner = 1;
			break;
		case 'h':
			usage(stdout);
			return DUMP_EXIT_OK;
		case 'V':
			printf("shmetrics-dump %s (segment layout %u.%u)\n", SHMET_VERSION_STRING, SHMET_VERSION_MAJOR,
			       SHMET_VERSION_MINOR);
			return DUMP_EXIT_OK;
		default:
			usage(stderr);
			return DUMP_EXIT_TROUBLE;
		}
	}
	if (optind < argc) {
		if (o.path || optind + 1 < argc) {
			fprintf(stderr, "shmetrics-dump: one segment at a time\n");
			usage(stderr);
			return DUMP_EXIT_TROUBLE;
		}
		o.path = argv[optind];
	}
	if (!o.path)
		o.path = shmet_default_path();
	if (o.count && !(o.watch > 0)) {
		fprintf(stderr, "shmetrics-dump: --count needs --watch\n");
		return DUMP_EXIT_TROUBLE;
	}

	char err[SHMET_ERRBUF];
	if (!(o.watch > 0)) {
		int rc = dump_path(&o, stdout, err);
		if (rc == DUMP_EXIT_TROUBLE)
			fprintf(stderr, "shmetrics-dump: %s\n", err);
		return fflush(stdout) == 0 ? rc : DUMP_EXIT_TROUBLE;
	}

	/* --watch: render each frame into memory, then clear and draw it at once. */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal; /* no SA_RESTART: a signal cuts the sleep short */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	int rc = DUMP_EXIT_OK;
	for (long n = 0; !dump_stop && (o.count == 0 || n < o.count); n++) {
		char *frame = NULL;
		size_t len = 0;
		FILE *mem = open_memstream(&frame, &len);
		if (!mem) {
			perror("shmetrics-dump: open_memstream");
			return DUMP_EXIT_TROUBLE;
		}
		err[0] = 0;
		rc = dump_path(&o, mem, err);
		fclose(mem);
		if (!o.json)
			fputs("\033[H\033[2J", stdout);
		fwrite(frame, 1, len, stdout);
		free(frame);
		if (rc == DUMP_EXIT_TROUBLE) /* on the screen, but never inside a JSON stream */
			fprintf(o.json ? stderr : stdout, "shmetrics-dump: %s (retrying every %g s)\n", err, o.watch);
		fflush(stdout);
		if (o.count && n + 1 >= o.count)
			break;
		struct timespec ts;
		ts.tv_sec = (time_t)o.watch;
		ts.tv_nsec = (long)((o.watch - (double)ts.tv_sec) * 1e9);
		while (!dump_stop && nanosleep(&ts, &ts) != 0)
			;
	}
	return rc;
}
