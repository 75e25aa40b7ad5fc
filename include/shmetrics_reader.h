/* shmetrics_reader.h — libshm: open, validate and read a segment; fold dead
 * workers.  Used by the collector, the dump tool and tests.
 *
 * Every byte of a segment is writable by every worker, so nothing read here
 * is trusted: each offset and length is checked against the area it lies in,
 * and a bad record is reported (SHMET_E_CORRUPT with a reason) instead of
 * being followed.  All functions are safe beside live writers.
 *
 * Concurrency contract:
 *   shmet_segment_open / close      any thread
 *   shmet_dir_* / shmet_read_cells  any thread, concurrently with writers
 *   shmet_fold_dead, shmet_free_folded
 *                                   only the holder of the collector lock
 *                                   (shmet_segment_lock_collector), from one
 *                                   thread; between the two calls every
 *                                   reader that may hold pointers into the
 *                                   folded regions or the previous retired
 *                                   half must have finished (RCU grace
 *                                   period in the collector).
 */
#ifndef SHMETRICS_READER_H
#define SHMETRICS_READER_H

#include "shmetrics_layout.h"
#include "shmetrics_segment.h"

#include <stdbool.h>

struct keymap;
struct shmet_registry;

#ifdef __cplusplus
extern "C" {
#endif

struct shmet_segment {
	struct shmet_seg_map map;
	/* Geometry validated at open; later reads use these copies, never the
	 * (writable) header again. */
	uint32_t regions;
	uint64_t region_size;
	uint64_t regions_off;
	uint64_t table_off;
	uint64_t retired_off;
	uint64_t retired_half_size;
	uint64_t retired_hdr_size;
	uint64_t registry_off;
	uint64_t registry_size;
	char path[4096];
};

int shmet_segment_open(const char *path, int flags, const struct shmet_seg_config *cfg,
		       struct shmet_segment *seg, char *err);
void shmet_segment_close(struct shmet_segment *seg);

/* Take the collector lock (one folder per segment).  SHMET_E_LOCKED when
 * another process holds it; *holder_pid says which, when known. */
int shmet_segment_lock_collector(struct shmet_segment *seg, int *holder_pid);

/* An area in region format: a region, or a retired half's totals. */
struct shmet_area {
	const unsigned char *base;
	uint64_t size;
	uint64_t dir_end;  /* acquired once per scan */
	uint64_t cell_low; /* read after dir_end */
	bool retired;      /* a retired half: cells of shmet_retired_cell_size */
};

struct shmet_region_info {
	uint32_t index;
	unsigned state; /* SHMET_REGION_FREE / LIVE */
	uint64_t generation;
	bool alive;     /* LIVE and its owner's lock is held */
	uint32_t pid, parent;
	uint64_t claimed_ns;
	uint64_t dir_end, cell_low, dropped, series;
	uint32_t flags; /* rs_flags: SHMET_SLOT_COLLECTOR, SHMET_SLOT_THREAD, SHMET_SLOT_HISTORY */
};

void shmet_region_info(const struct shmet_segment *seg, uint32_t i, struct shmet_region_info *info);
/* Whether the region's gauge cells take part as a live process's: a
 * thread's region holds none of its process's gauge values (they are set
 * in the process's region: WRITING THREADS in shmetrics_layout.h), so it
 * counts as dead for gauges and shows no per-worker series. */
static inline bool shmet_region_gauges_live(const struct shmet_region_info *info)
{
	return info->alive && !(info->flags & SHMET_SLOT_THREAD);
}
/* Snapshot a region (or retired half h's totals) for reading.  Fails with
 * SHMET_E_CORRUPT when its header is out of bounds. */
int shmet_region_area(const struct shmet_segment *seg, uint32_t i, struct shmet_area *a, char *err);
unsigned shmet_retired_active(const struct shmet_segment *seg);
int shmet_retired_area(const struct shmet_segment *seg, unsigned half, struct shmet_area *a, char *err);
const struct shmet_retired_header *shmet_retired_header(const struct shmet_segment *seg, unsigned half);
/* The family registry as an area (FAMILY records only). */
int shmet_registry_area(const struct shmet_segment *seg, struct shmet_area *a, char *err);

/* A parsed family record.  Every pointer points into rec, this view's own
 * copy of the record's bytes, which is what was validated: never into the
 * segment.  So a view must not be copied by value (its pointers would still
 * point into the original); pass it by pointer. */
struct shmet_family_view {
	uint32_t off;
	uint32_t rec_size; /* bytes of rec in use: the whole record, header included */
	enum shmet_type type;
	enum shmet_gauge_mode mode;
	uint32_t nlabels, nbuckets;
	const unsigned char *bounds; /* nbuckets doubles, unaligned-safe: read with shmet_bound() */
	const char *name, *help;
	uint32_t name_len, help_len;
	const char *label_names[SHMET_MAX_LABELS];
	uint32_t label_lens[SHMET_MAX_LABELS];
	struct shmet_sketch sk;  /* sk.count == 0: no sketch */
	uint32_t sketch_len;     /* bytes of the SKETCH block ending rec */
	unsigned exemplars;      /* counters, histograms: exemplar slots in live cells */
	unsigned char rec[SHMET_FAMILY_REC_MAX]; /* last: only rec_size bytes are written */
};

/* A parsed series record; values point into rec, as for a family. */
struct shmet_series_view {
	uint32_t off;
	uint32_t family_off;
	uint32_t cell_off, cell_size;
	uint32_t nvalues;
	uint32_t rec_size;
	uint32_t flags;     /* rec_flags: SHMET_SER_OVERFLOW; SHMET_SER_BASELINE in a retired half only */
	uint32_t folded_s;  /* retired halves: ser_folded_s (RETENTION); 0 elsewhere */
	const char *values[SHMET_MAX_LABELS];
	uint32_t value_lens[SHMET_MAX_LABELS];
	unsigned char rec[SHMET_SERIES_REC_MAX];
};

struct shmet_record {
	enum shmet_rec_kind kind;
	struct shmet_family_view fam;    /* kind FAMILY, or the family of a SERIES */
	struct shmet_series_view series; /* kind SERIES */
};

struct shmet_dir_iter {
	const struct shmet_area *area;
	uint64_t pos;
	bool stopped;
};

void shmet_dir_begin(struct shmet_dir_iter *it, const struct shmet_area *a);
/* 1: *rec filled; 0: end of directory; SHMET_E_CORRUPT: this record is bad
 * (err says why) and was skipped — call again for the next one, unless the
 * record's size itself was bad, in which case the iteration ends. */
int shmet_dir_next(struct shmet_dir_iter *it, struct shmet_record *rec, char *err);
/* Parse the family record at off (for series->family references). */
int shmet_parse_family(const struct shmet_area *a, uint64_t off, struct shmet_family_view *f, char *err);

static inline double shmet_bound(const struct shmet_family_view *f, uint32_t i)
{
	double d;
	memcpy(&d, f->bounds + 8ull * i, sizeof d);
	return d;
}

/* A series' values, read from its cells with relaxed loads. */
struct shmet_values {
	uint64_t whole;        /* counter: whole increments; histogram/summary: count */
	double value;          /* counter: fractional part; gauge: value; hist/summary: sum */
	uint64_t stamp_ns;     /* gauge (most-recent mode): when it was set */
	double value_lo[2];    /* retired halves: the lower components of value's exact total; else 0 */
	uint64_t buckets[SHMET_MAX_BUCKETS + 1]; /* histogram, non-cumulative */
};

void shmet_read_cells(const struct shmet_area *a, const struct shmet_family_view *f,
		      const struct shmet_series_view *s, struct shmet_values *v);

/* A series' identity as bytes: "name\xff value\xff ..." (0xff never occurs in
 * UTF-8).  Returns its length, or 0 when it does not fit in cap. */
#define SHMET_SERIES_KEY_MAX (SHMET_MAX_NAME_LEN + 1 + SHMET_MAX_LABELS * (SHMET_MAX_VALUE_LEN + 1) + 24)
size_t shmet_series_key(const struct shmet_record *r, char *buf, size_t cap);
/* The encoding itself: s and the 0xff after it appended to the n bytes of
 * a key in buf; the new length, or 0 when it would pass cap. */
size_t shmet_key_append(char *buf, size_t n, size_t cap, const char *s, size_t len);

/* Do two family records describe the same family (name, type, mode, label
 * names, buckets)? */
bool shmet_family_same(const struct shmet_family_view *a, const struct shmet_family_view *b);

struct shmet_fold_result {
	uint32_t folded;          /* regions newly added to the retired totals */
	uint32_t to_free;         /* regions ready for shmet_free_folded */
	uint32_t skipped;         /* dead regions left for later (retired area full) */
	bool flipped;             /* a new retired half became active */
	bool blocked;             /* the active half is damaged: folding stopped */
	uint64_t conflicts;       /* series never exposed: family unregistered or of another shape */
	uint64_t corrupt;         /* records skipped as corrupt */
	uint64_t inexact;         /* float totals that needed more than three components */
	uint32_t regions[SHMET_MAX_REGIONS];     /* the to_free regions */
	uint64_t generations[SHMET_MAX_REGIONS];
	char err[SHMET_ERRBUF];   /* first problem seen, if any */
};

/* Fold every dead region's values into the inactive retired half, then make
 * it active (one release store).  Crash-consistent: a folder killed at any
 * point neither loses nor double-counts, because a (region, generation)
 * already in the active half is never added again. */
int shmet_fold_dead(struct shmet_segment *seg, struct shmet_fold_result *res);
/* The same, trusting the registry reg the caller keeps up to date (the
 * collector's, so the fold and the view agree on every family's shape). */
int shmet_fold_dead_with(struct shmet_segment *seg, const struct shmet_registry *reg, struct shmet_fold_result *res);
/* REMOVAL and RETENTION (shmetrics_layout.h): write the inactive retired
 * half anew from the active one, applying the registry's REMOVE records
 * not applied yet and dropping retired-only series older than ttl_s (0:
 * none), then flip.  Does nothing (flipped false) when neither has work.
 * The caller is the folder, under the same rules as a fold: no flip while
 * readers may still read the inactive half. */
struct shmet_rewrite_result {
	bool flipped;
	uint32_t removals;        /* REMOVE records applied */
	uint64_t baselines;       /* baseline records written */
	uint64_t dropped_removed; /* retired series dropped by a removal */
	uint64_t expired;         /* retired-only series dropped by retention */
	uint64_t inexact;         /* baseline float totals rounded (as a fold's) */
	char err[SHMET_ERRBUF];
};
int shmet_retired_rewrite(struct shmet_segment *seg, const struct shmet_registry *reg, uint32_t ttl_s,
			  struct shmet_rewrite_result *res);
/* Zero and free the regions shmet_fold_dead listed (after the grace period). */
void shmet_free_folded(struct shmet_segment *seg, const struct shmet_fold_result *res);
/* What a fold would leave for want of room in the retired area, by the
 * fold's own arithmetic, without writing anything (shmetrics-dump --check). */
struct shmet_fold_room {
	uint32_t skipped;    /* dead, unfolded regions that do not fit now */
	uint32_t first;      /* the first of them, */
	uint64_t first_need; /* the bytes it needs */
	uint64_t free;       /* bytes the active half has free after the regions that fit */
};
int shmet_fold_room(const struct shmet_segment *seg, const struct shmet_registry *reg, struct shmet_fold_room *out);
/* Test-only: make the fold of the Nth series from now fail (0: never). */
extern unsigned long shmet_test_fold_fail_at;

/* ---- exact sums (see EXACT FLOAT TOTALS in shmetrics_layout.h) ---- */

#define SHMET_XSUM_PARTIALS 48
struct shmet_xsum {
	double p[SHMET_XSUM_PARTIALS]; /* non-overlapping, increasing magnitude */
	unsigned n;
	double special;  /* infinities and NaN, summed apart */
	double overflow; /* a finite sum past the range of doubles */
};

void shmet_xsum_init(struct shmet_xsum *s);
void shmet_xsum_add(struct shmet_xsum *s, double x);
/* The same, with the common case (a zero cell) inline. */
static inline void shmet_xsum_add_nz(struct shmet_xsum *s, double x)
{
	if (x != 0)
		shmet_xsum_add(s, x);
}
void shmet_xsum_add_u64(struct shmet_xsum *s, uint64_t v);
/* The exact sum rounded once to the nearest double (ties to even). */
double shmet_xsum_round(const struct shmet_xsum *s);
/* The exact sum as three non-overlapping doubles, out[0] largest; 1 when
 * they hold it exactly, 0 when a fourth component was rounded away. */
int shmet_xsum_split3(const struct shmet_xsum *s, double out[3]);

/* ---- aggregation across processes: one rule for collector, dump, tests ---- */

/* Counts add with saturation: a total that reached 2^64 - 1 stays there
 * rather than wrapping to a small number (a counter reset). */
static inline uint64_t shmet_sat_add(uint64_t a, uint64_t b)
{
	uint64_t r;
	return __builtin_add_overflow(a, b, &r) ? UINT64_MAX : r;
}

/* shmet_read_cells from the cells c of a series of this type (retired: cells of
 * a retired half), for readers that keep cell pointers (the collector's
 * view).  Inline: the scrape's inner loop. */
static inline void shmet_read_cell_values(const uint64_t *c, enum shmet_type type, uint32_t nbuckets, bool retired,
					  struct shmet_values *v)
{
	/* relaxed: each cell is one value; a scrape needs no order between them. */
	v->stamp_ns = 0;
	v->value_lo[0] = v->value_lo[1] = 0;
	if (retired && type != SHMET_GAUGE) {
		uint32_t k = shmet_float_cell(type, nbuckets) + 1;
		v->value_lo[0] = shmet__double(__atomic_load_n(&c[k], __ATOMIC_RELAXED));
		v->value_lo[1] = shmet__double(__atomic_load_n(&c[k + 1], __ATOMIC_RELAXED));
	}
	switch (type) {
	case SHMET_COUNTER:
	case SHMET_SUMMARY:
		v->whole = __atomic_load_n(&c[0], __ATOMIC_RELAXED);
		if (type == SHMET_COUNTER && !retired && v->whole > SHMET_COUNTER_WHOLE_MAX)
			v->whole = SHMET_COUNTER_WHOLE_MAX; /* a saturating writer passes it for a moment */
		v->value = shmet__double(__atomic_load_n(&c[1], __ATOMIC_RELAXED));
		break;
	case SHMET_GAUGE:
		v->whole = 0;
		v->value = shmet__double(__atomic_load_n(&c[0], __ATOMIC_RELAXED));
		v->stamp_ns = __atomic_load_n(&c[1], __ATOMIC_RELAXED);
		break;
	case SHMET_HISTOGRAM:
		v->whole = 0;
		for (uint32_t i = 0; i <= nbuckets; i++) {
			v->buckets[i] = __atomic_load_n(&c[i], __ATOMIC_RELAXED);
			v->whole = shmet_sat_add(v->whole, v->buckets[i]);
		}
		v->value = shmet__double(__atomic_load_n(&c[nbuckets + 1], __ATOMIC_RELAXED));
		break;
	}
}

struct shmet_agg {
	uint64_t whole;  /* counter whole part; histogram/summary count (saturating) */
	double value;    /* after shmet_agg_finish: the exposed value of a counter or gauge, the
			    sum of a histogram or summary */
	uint64_t stamp_ns;
	bool has;        /* a gauge got a value from some process */
	struct shmet_xsum xs; /* counter: fractional parts; histogram/summary: sum */
	__extension__ unsigned __int128 whole_exact; /* counter: every whole part, exactly
							 (4096 regions of 2^64 fit) */
	uint64_t buckets[SHMET_MAX_BUCKETS + 1];
	/* REMOVAL: a baseline took part (shmet_agg_sub); what it takes away */
	uint32_t nbuckets; /* as at shmet_agg_init */
	bool based;
	bool gone;       /* after shmet_agg_finish: removed, and nothing added since: not shown */
	__extension__ unsigned __int128 whole_neg;
	uint64_t count_neg;
	uint64_t buckets_neg[SHMET_MAX_BUCKETS + 1];
	double base_value; /* gauges: the value at removal, and its stamp (has, or most-recent time) */
	uint64_t base_stamp;
};

/* Take a removal's baseline (REMOVAL in shmetrics_layout.h) out of acc:
 * counters, histograms and summaries subtract exactly at shmet_agg_finish;
 * a gauge keeps the value it had, to tell whether it was set since. */
void shmet_agg_sub(struct shmet_agg *acc, enum shmet_type type, uint32_t nbuckets, const struct shmet_values *v);
/* Start an aggregate (nbuckets: the histogram's, else 0). */
void shmet_agg_init(struct shmet_agg *acc, uint32_t nbuckets);
/* Round the exact sums once: sets acc->value for counters, histograms and
 * summaries.  Call after the last shmet_agg_add. */
void shmet_agg_finish(struct shmet_agg *acc, enum shmet_type type);

/* Most-recent gauges: does (stamp, value) replace (have_stamp, have)?  The
 * later stamp wins; on equal stamps the larger bit pattern, so the answer
 * never depends on the order processes (or a fold) are met in. */
static inline bool shmet_most_recent_wins(uint64_t stamp, double value, uint64_t have_stamp, double have)
{
	return stamp > have_stamp || (stamp == have_stamp && shmet__bits(value) > shmet__bits(have));
}

/* Fold one process's values into acc.  live: the process is running (dead
 * workers' gauges count only in most-recent mode).  Max and min gauges take
 * only processes that set them, and NaN only while every one holds NaN, so
 * the result does not depend on the order of the calls.  acc->has stays
 * false for a gauge nobody gave a value: it is then absent, not 0. */
void shmet_agg_add(struct shmet_agg *acc, enum shmet_type type, enum shmet_gauge_mode mode, uint32_t nbuckets,
		   const struct shmet_values *v, bool live);
/* The exposed value of a counter or gauge; the sum of a histogram/summary
 * (after shmet_agg_finish). */
double shmet_agg_value(const struct shmet_agg *acc, enum shmet_type type);

/* ---- log-bucket sketches (libshm/sketch.c) ---- */

/* acc[i] += cells[i] for n counts (relaxed loads, saturating adds). */
void shmet_sketch_load_add(uint64_t *acc, const uint64_t *cells, uint32_t n);
/* out[i] = now[i] - start[i], or 0 where start is ahead (a window's start
 * can only be ahead after hostile writes). */
void shmet_sketch_window(const uint64_t *now, const uint64_t *start, uint64_t *out, uint32_t n);
/* The q-quantile of the sk->count + 2 counts (below, buckets, above): the
 * value of rank floor(q * (n - 1)) among the n counted, estimated as
 * 2g^i/(g+1) in its bucket i, so within shmet_sketch_rel_error(schema) of
 * it; the window's lower (upper) edge when that rank lies below (above) the
 * window; NaN when nothing was counted. */
double shmet_sketch_quantile(const struct shmet_sketch *sk, const uint64_t *counts, double q);

/* An exemplar read from its slot (see exemplars in shmetrics_layout.h). */
struct shmet_exemplar {
	double value, ts; /* ts: seconds since the epoch, 0 for none */
	uint64_t stamp_ns;
	uint32_t len;     /* bytes of pairs */
	char pairs[SHMET_EXEMPLAR_BYTES]; /* "name\0value\0"... */
};
/* Copy the slot (SHMET_EXEMPLAR_WORDS u64) without tearing: 1 when a whole,
 * valid exemplar was read; 0 when none was ever written, a write was in
 * progress through every retry, or the bytes are not a valid exemplar. */
int shmet_exemplar_read(const uint64_t *slot, struct shmet_exemplar *e);

/* ---- the family registry, as readers see it ---- */

struct shmet_registry_entry {
	struct shmet_family_view *fam; /* parsed (and copied) once; its own heap block */
	uint64_t off;                  /* its FAMILY record's offset in the registry */
};

/* A REMOVE record, validated (REMOVAL in shmetrics_layout.h): the series
 * key it names, or with whole the family's name and 0xff (a prefix of the
 * key of every series of the family). */
struct shmet_removal {
	const struct shmet_family_view *fam; /* the registry's entry */
	bool whole;
	uint64_t end;                        /* registry offset just past the record */
	char *key;
	size_t key_len;
};

struct shmet_registry {
	struct keymap *names;          /* family name -> entry (private; see registry.c) */
	struct keymap *samples;      /* every sample name of every entry */
	struct shmet_registry_entry *e;
	uint32_t n, cap;
	uint64_t end;                  /* registry bytes already read */
	struct shmet_removal *rm;      /* REMOVE records, in registry order */
	uint32_t nrm, caprm;
	bool stopped;                  /* a damaged record ended the reading */
	uint64_t corrupt;              /* records refused as damaged or clashing */
	char err[SHMET_ERRBUF];        /* the first of them */
};

/* Read the registry's records appended since the last call (it only grows). */
int shmet_registry_update(const struct shmet_segment *seg, struct shmet_registry *r);
void shmet_registry_free(struct shmet_registry *r);
/* The registered family of f's name when f has its shape (the only way a
 * region's series counts), else NULL. */
const struct shmet_family_view *shmet_registry_check(const struct shmet_registry *r, const struct shmet_family_view *f);
const struct shmet_family_view *shmet_registry_find(const struct shmet_registry *r, const char *name, size_t len);


/* ---- the one walk: what counts now (libshm/walk.c) ----
 * Every reader (the collector's view, the snapshot, shmetrics-dump) meets
 * the areas of a segment in this order and counts a series by these rules,
 * so that they agree on every value.
 *
 *   struct shmet_scan sc;
 *   struct shmet_scan_area a;
 *   shmet_scan_begin(&sc, seg);
 *   while (shmet_scan_next(&sc, &a))
 *           if (a.counts) ... walk a.area with shmet_dir_begin/next ...
 */
struct shmet_scan {
	const struct shmet_segment *seg;
	unsigned active;                        /* the retired half read first */
	const struct shmet_retired_header *rh;  /* its header */
	int64_t next;                           /* -1: that half; then region indexes */
};

struct shmet_scan_area {
	int region;                     /* -1: the active retired half; else a region index */
	struct shmet_region_info info;  /* regions: the slot and header, read once */
	uint64_t folded_gen;            /* regions: the generation the active half folded */
	bool folded;                    /* a live slot whose generation is folded already */
	bool counts;                    /* its records count now: the retired half, or a live, unfolded region */
	bool live;                      /* its owner runs and is not a thread region (gauges other than most-recent count) */
	int rc;                         /* SHMET_OK, or why area could not be read (err) */
	struct shmet_area area;         /* empty when rc is not SHMET_OK or the slot is free */
	char err[SHMET_ERRBUF];
};

/* Start at the active retired half; then every region in index order. */
void shmet_scan_begin(struct shmet_scan *s, const struct shmet_segment *seg);
/* 1: *out is the next area (free and folded regions too: see counts); 0: done. */
int shmet_scan_next(struct shmet_scan *s, struct shmet_scan_area *out);
/* The registered family of series record r, or NULL when the registry has
 * none of r's shape (a conflict: never exposed).  *counts: r's values count
 * (false for a per-worker gauge of a process that is not live). */
const struct shmet_family_view *shmet_series_family(const struct shmet_registry *reg, const struct shmet_record *r,
						    bool live, bool *counts);
/* The identity of r's series across areas: shmet_series_key, then for a
 * per-worker gauge (worker >= 0) "<worker>\xff".  0 when cap is too small. */
size_t shmet_series_key_worker(const struct shmet_record *r, int worker, char *buf, size_t cap);

struct shmet_snap_series {
	char **values;   /* nlabels values, then "worker" for per-worker gauges */
	struct shmet_agg agg;
	char *key;       /* its shmet_series_key_worker */
	size_t key_len;
};

struct shmet_snap_family {
	char *name, *help;
	enum shmet_type type;
	enum shmet_gauge_mode mode;
	uint32_t nlabels; /* including "worker" for per-worker gauges */
	char **label_names;
	uint32_t nbuckets;
	double bounds[SHMET_MAX_BUCKETS];
	size_t nseries;
	struct shmet_snap_series *series; /* sorted by label values */
};

struct shmet_snapshot {
	size_t nfamilies;
	struct shmet_snap_family *families; /* sorted by name */
	uint64_t corrupt, conflicts, dropped;
	char err[SHMET_ERRBUF]; /* first corrupt record seen */
};

/* Aggregate the whole segment now: every live and not-yet-folded dead
 * region, plus the active retired half.  Not incremental: for tools and
 * tests (the collector keeps an index instead). */
int shmet_snapshot_take(const struct shmet_segment *seg, struct shmet_snapshot *snap);
void shmet_snapshot_free(struct shmet_snapshot *snap);
const struct shmet_snap_family *shmet_snapshot_family(const struct shmet_snapshot *snap, const char *name);
/* values: the family's label values in order (NULL when it has none). */
const struct shmet_snap_series *shmet_snapshot_series(const struct shmet_snap_family *f, const char *const *values);

#ifdef __cplusplus
}
#endif
#endif /* SHMETRICS_READER_H */
