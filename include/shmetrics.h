/* shmetrics.h — header-only Prometheus metrics writer for pre-forking servers.
 *
 * Counters, gauges, histograms and summaries (with labels) live in a shared
 * memory segment; each process writes only its own region, lock-free, and the
 * collector daemon (shmetricsd) aggregates and serves them.
 *
 *   #define SHMETRICS_IMPLEMENTATION   // in exactly ONE .c file
 *   #include "shmetrics.h"
 *
 *   shmet_family *reqs;
 *   const char *labels[] = {"method", "route", "status"};
 *   shmet_counter_register(&reqs, "http_requests_total", "HTTP requests.", 3, labels);
 *   shmet_counter ok = shmet_counter_labels(reqs, "GET", "/", "200");   // before fork()
 *   ... fork() ...
 *   shmet_counter_inc(ok);                                 // in any worker, any thread
 *
 * Options (compile time): SHMETRICS_EXPORT_WRITER gives the writer's symbols
 * default visibility (they are hidden otherwise: see SHMET__API below).
 * Environment: SHMETRICS_SEGMENT names the segment (default
 * /dev/shm/shmetrics); shmet_init() with options overrides.  SHMETRICS_QUIET=1
 * silences the one line the writer prints on stderr (once per process) when
 * its region is full or it has no region.
 * An existing segment owned by another user is refused (root included)
 * unless SHMETRICS_SEGMENT_OWNER=<uid> names that owner.
 *
 * Contract:
 *  - Registration and label lookup return an error code (0 or negative; see
 *    shmet_strerror, shmet_last_error) and never abort the host program.  On
 *    failure they still hand out a usable "fallback" handle whose writes are
 *    dropped and counted in the segment.
 *  - A process without a region (the segment was full when it claimed) drops
 *    every write, through any handle, and counts it in the segment header
 *    (sh_dropped_orphan); it claims again about once a second, at a write.
 *  - Hot path (inc/add/set/observe through a handle): no syscall, no lock, no
 *    allocation.  A counter, histogram or summary write is a relaxed load
 *    and a relaxed store of cells only the calling thread writes; a gauge
 *    write a relaxed store (CAS for add) on its process's one cell.
 *  - fork(): handles made before fork keep working in the child, which keeps
 *    its parent's directory (pthread_atfork) and claims a region of its own
 *    at its first write; a child that only exec()s claims none.
 *  - Threads: the first writing thread of a process writes its region; any
 *    other claims a region of its own at its first counter, histogram or
 *    summary write, and gives it back when it exits (the collector folds
 *    it, nothing is lost).  Size the segment for one region per writing
 *    thread.  Every call here is thread-safe.
 *  - ABI: handles are plain values holding offsets; the segment layout is
 *    versioned (shmetrics_layout.h) and a mismatch is refused, never guessed.
 */
#ifndef SHMETRICS_H
#define SHMETRICS_H

#include "shmetrics_layout.h"
#include "shmetrics_segment.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SHMET__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define SHMET__LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define SHMET__UNLIKELY(x) (x)
#define SHMET__LIKELY(x) (x)
#endif

/* The writer's process-wide symbols (its functions and shmet__base) have
 * hidden visibility: each executable or shared object that compiles the
 * implementation has a writer of its own, which a same-named writer in
 * another object (two modules of one server) can neither interpose nor be
 * mixed with, and a -fPIC hot path reads shmet__base without the GOT.
 * Define SHMETRICS_EXPORT_WRITER (in every file that includes this header)
 * to give them default visibility instead: for a shared library whose one
 * writer other objects of the process use through this header. */
#if defined(__GNUC__) && !defined(SHMETRICS_EXPORT_WRITER) && !defined(_WIN32)
#define SHMET__API __attribute__((visibility("hidden")))
#else
#define SHMET__API
#endif

typedef struct shmet_family shmet_family;

/* Set (to anything but "0") to silence the writer's notices on stderr. */
#define SHMET_ENV_QUIET "SHMETRICS_QUIET"

/* Handles: offsets into the process's region, valid in fork children too.
 * off == 0 is the fallback handle (writes dropped and counted). */
typedef struct { uint32_t off; uint32_t ex; } shmet_counter; /* ex: its exemplar slot, 0 none */
/* A gauge's stamp is its mode's stamp kind (SHMET__STAMP_*), resolved when
 * the handle is made; a handle built by hand must set it too. */
typedef struct { uint32_t off; uint32_t mode; uint32_t stamp; } shmet_gauge;
typedef struct {
	uint32_t off;
	uint32_t nbuckets;
	const double *bounds;
	const struct shmet__sketch_rt *sk;
	uint32_t ex; /* the first exemplar slot (one per bucket), 0 none */
} shmet_histogram;
/* A summary's sketch as its hot path needs it (shmet__sketch_slot). */
struct shmet__sketch_rt {
	int32_t schema, first;
	uint32_t count;
	double zero_threshold; /* native histograms */
	double edges[(1 << SHMET_SKETCH_MAX_SCHEMA) + 1]; /* schema > 0: 2^(k/2^schema), k = 0..2^schema */
	uint16_t lut[1024]; /* per top 10 mantissa bits: the first k whose edge is >= its start */
};
typedef struct { uint32_t off; const struct shmet__sketch_rt *sk; } shmet_summary;
typedef struct { uint64_t start_ns; } shmet_timer;

struct shmet_options {
	const char *path;        /* NULL: $SHMETRICS_SEGMENT, then /dev/shm/shmetrics */
	uint32_t regions;        /* capacity if this process creates the segment */
	uint64_t region_size;
	unsigned mode;           /* 0600 by default; 0660 shares with the group
				    (0: $SHMETRICS_SEGMENT_MODE, then 0600) */
	bool no_create;          /* attach only; fail when the segment is absent */
	const char *group;       /* group of a segment this process creates, a name or a gid
				    (NULL: $SHMETRICS_SEGMENT_GROUP, then the process's own) */
	uint32_t series_limit;   /* the default series limit of a segment this process creates
				    (0: $SHMETRICS_SERIES_LIMIT, then 2000; SHMET_SERIES_UNLIMITED: none) */
};

struct shmet_family_spec {
	enum shmet_type type;
	const char *name;               /* counters get "_total" appended when missing */
	const char *help;
	size_t nlabels;
	const char *const *label_names;
	enum shmet_gauge_mode gauge_mode;  /* gauges only */
	size_t nbuckets;                /* histograms: 0 means the default buckets */
	const double *buckets;          /* strictly increasing upper bounds; +Inf implied */
	/* Summaries: quantiles merged across processes from a log-bucket sketch
	 * (see shmet_summary_register_quantiles).  quantile_error 0: only _sum
	 * and _count.  Zeros elsewhere take the defaults. */
	double quantile_error;          /* relative error wanted, at least 0.00136 (schema 8) */
	double quantile_min, quantile_max; /* the range the error holds over: 1e-4 .. 100 */
	size_t nobjectives;             /* quantiles exposed: {0.5, 0.9, 0.99} */
	const double *objectives;
	double max_age;                 /* seconds the quantiles look back: 600 */
	uint32_t age_buckets;           /* steps the window moves by: 5 (every max_age / 5) */
	/* Histograms: also a native histogram (protobuf exposition) of this
	 * schema (-4..8) and zero threshold, over a fixed bucket window that
	 * covers [native_min, native_max] (0, 0: 1e-4 .. 100). */
	/* Counters and histograms: keep the latest exemplar per series
	 * (counter) or per bucket (histogram), for *_with_exemplar. */
	bool exemplars;
	bool native;
	int native_schema;
	double native_zero_threshold;
	double native_min, native_max;
	/* Series of this family one process may hold (SERIES LIMIT in
	 * shmetrics_layout.h); past it, new label sets share the overflow
	 * series, all of whose values are SHMET_OVERFLOW_VALUE.  0: the
	 * segment's default (2000 unless its creator said otherwise);
	 * SHMET_SERIES_UNLIMITED: no limit. */
	uint32_t series_limit;
};

/* Attach (creating the segment when absent) and claim this process's region.
 * Called implicitly by the first registration with NULL options; calling it
 * again after success returns 0. */
SHMET__API int shmet_init(const struct shmet_options *options);
/* The reason for this thread's last failed call, or "". */
SHMET__API const char *shmet_last_error(void);
/* Index of this process's region, or -1. */
SHMET__API int shmet_region_index(void);

SHMET__API int shmet_register(const struct shmet_family_spec *spec, shmet_family **out);
SHMET__API int shmet_counter_register(shmet_family **out, const char *name, const char *help, size_t nlabels,
				      const char *const *label_names);
SHMET__API int shmet_gauge_register(shmet_family **out, const char *name, const char *help,
				    enum shmet_gauge_mode mode, size_t nlabels, const char *const *label_names);
SHMET__API int shmet_histogram_register(shmet_family **out, const char *name, const char *help,
					const double *buckets, size_t nbuckets, size_t nlabels,
					const char *const *label_names);
SHMET__API int shmet_summary_register(shmet_family **out, const char *name, const char *help, size_t nlabels,
				      const char *const *label_names);
/* A summary with quantiles {0.5, 0.9, 0.99} over the last 10 minutes, merged
 * across every process: each exposed quantile is within the relative error
 * the schema chosen for rel_error gives (at most rel_error) of the exact
 * quantile of the window's observations in [min, max] (0, 0: 1e-4 .. 100).
 * The cells take 8 bytes per bucket: 320 for 2 % over 1e-4 .. 100; a sketch
 * of more than SHMET_MAX_SKETCH_BUCKETS, or too large for a region, is
 * refused.  Other objectives and windows: shmet_register with the spec. */
/* A histogram with classic buckets (text formats) that is also a native
 * histogram of this schema over 1e-4 .. 100, zero bucket [-zt, zt]. */
SHMET__API int shmet_histogram_register_native(shmet_family **out, const char *name, const char *help,
					       const double *buckets, size_t nbuckets, int schema, double zero_threshold,
					       size_t nlabels, const char *const *label_names);
SHMET__API int shmet_summary_register_quantiles(shmet_family **out, const char *name, const char *help,
						double rel_error, double min, double max, size_t nlabels,
						const char *const *label_names);

/* Series lookup by label values (an array of family's nlabels strings; NULL
 * for a family without labels).  Lock-free when the series exists. */
SHMET__API int shmet_series_lookup(shmet_family *f, const char *const *values, uint32_t *off);
/* REMOVAL (shmetrics_layout.h): the series of f with these label values,
 * or every series of f, leaves the exposition for good: in every process,
 * and after dead workers are folded.  The collector applies it at its next
 * scan; a write after that starts the series afresh from zero (as client
 * libraries do).  Handles stay valid.  Per-worker gauges cannot be removed
 * (they leave with their process).  Each call takes room in the segment's
 * family registry (SHMET_E_REGISTRY_FULL when there is none). */
SHMET__API int shmet_series_remove(shmet_family *f, const char *const *values);
SHMET__API int shmet_family_clear(shmet_family *f);
SHMET__API shmet_counter shmet_counter_get(shmet_family *f, const char *const *values);
SHMET__API shmet_gauge shmet_gauge_get(shmet_family *f, const char *const *values);
SHMET__API shmet_histogram shmet_histogram_get(shmet_family *f, const char *const *values);
SHMET__API shmet_summary shmet_summary_get(shmet_family *f, const char *const *values);
/* The same with the label values as arguments, exactly nlabels of them. */
SHMET__API shmet_counter shmet_counter_labels(shmet_family *f, ...);
SHMET__API shmet_gauge shmet_gauge_labels(shmet_family *f, ...);
SHMET__API shmet_histogram shmet_histogram_labels(shmet_family *f, ...);
SHMET__API shmet_summary shmet_summary_labels(shmet_family *f, ...);

/* Unlabelled shortcuts: register and return the one series. */
SHMET__API shmet_counter shmet_counter_new(const char *name, const char *help);
SHMET__API shmet_gauge shmet_gauge_new(const char *name, const char *help, enum shmet_gauge_mode mode);

/* shmetricsd only: like shmet_init, but make region `region` this process's
 * region, keeping its directory and values, instead of claiming a free one.
 * The caller holds the collector lock and, through a descriptor of its own
 * that stays open while the region is used, the region's liveness lock; it
 * checked that the retired totals do not include the region.  Families
 * registered afterwards get new records (the old ones stay and add up). */
SHMET__API int shmet__init_adopted(const struct shmet_options *options, uint32_t region);
/* After shmet__init_adopted: make the adopted region's family record at
 * rec_off, and its series with cells at cell_off, known as if this process
 * had registered them, writing nothing.  The caller validated the records
 * (libshm's directory walk) and that spec and values are what they hold. */
SHMET__API int shmet__adopt_family(const struct shmet_family_spec *spec, uint32_t rec_off, shmet_family **out);
SHMET__API int shmet__adopt_series(shmet_family *f, const char *const *values, uint32_t cell_off);
/* shmetricsd's push planner: the region bytes shmet_register(spec) would
 * take for its FAMILY record (0, with the reason in shmet_last_error, when
 * spec is invalid), and those a new series of (type, nbuckets) with these
 * nvalues label values would take (record and cells), by the writer's own
 * arithmetic, so that a plan checked against the free bytes is what the
 * registrations then write. */
SHMET__API size_t shmet__family_bytes(const struct shmet_family_spec *spec);
SHMET__API size_t shmet__series_bytes(unsigned type, uint32_t nbuckets, uint32_t nvalues, const char *const *values);

/* shmetricsd only: the calling thread writes its process's region (as
 * the thread that claimed it does) instead of claiming one of its own, so
 * that pushed values stay in the region a restarted collector adopts.
 * The caller serializes every counter, histogram and summary write of
 * every thread that does this, and of that first thread, with a lock of
 * its own: the lock orders them, and one writer at a time per cell is all
 * a relaxed load and store need. */
SHMET__API void shmet__share_process_region(void);

/* Called by the hot path for a dropped write (fallback handle, NaN, negative
 * counter add, an add_u64 past SHMET_COUNTER_ADD_MAX): counts it in the
 * segment. */
SHMET__API void shmet__drop(void);

/* A counter's whole-increments cell never wraps: an add that would take it
 * past SHMET_COUNTER_WHOLE_MAX (2^63, in shmetrics_layout.h: readers need
 * it too) leaves it there (saturates), so a counter never goes down.  The
 * largest increment shmet_counter_add_u64 takes is SHMET_COUNTER_ADD_MAX
 * (2^53, the integers a double holds exactly); a larger one, such as a
 * negative difference cast to uint64_t, is refused (dropped and counted). */

/* The hot path reads one process-global pointer: this process's region. */
extern SHMET__API unsigned char *shmet__base;

/* This thread's own cells (see WRITING THREADS in shmetrics_layout.h): the
 * region whose counter, histogram and summary cells only this thread
 * writes.  NULL until its first such write.  initial-exec: a fs-relative
 * load, no __tls_get_addr call, in a shared object too (glibc keeps static
 * TLS room for the few bytes a dlopen()ed object needs). */
#if defined(__GNUC__)
#define SHMET__TLS __thread __attribute__((tls_model("initial-exec")))
#else
#define SHMET__TLS _Thread_local
#endif
extern SHMET__TLS SHMET__API unsigned char *shmet__own_base;

/* A fork child claims its region at its first write (or registration),
 * not at fork: a child that only exec()s never takes one. */
SHMET__API unsigned char *shmet__claim_deferred(void);
/* The first counter, histogram or summary write of a thread: the cells it
 * will write from now on (its process's region for the process's first
 * writing thread, else a region of its own), or private memory when it has
 * none, in which case the write is counted as dropped. */
SHMET__API unsigned char *shmet__claim_own(void);

static inline uint64_t *shmet__cell(uint32_t off)
{
	/* relaxed: the base is set once per process (init, or the first write
	 * of a fork child, under the registration mutex); a thread that sees
	 * NULL takes the slow path, which reads it again under the mutex. */
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	if (SHMET__UNLIKELY(!b))
		b = shmet__claim_deferred();
	return (uint64_t *)(void *)(b + off);
}

/* A cell only this thread writes (a plain TLS read: only this thread, or
 * the fork handler running in it, ever sets it). */
static inline uint64_t *shmet__own(uint32_t off)
{
	unsigned char *b = shmet__own_base;
	if (SHMET__UNLIKELY(!b))
		b = shmet__claim_own();
	return (uint64_t *)(void *)(b + off);
}

/* Single-writer updates.  This thread is the only writer of the cell, so a
 * relaxed load and a relaxed store make an update that no other write can
 * interleave with: no read-modify-write, no lock prefix.  Both accesses
 * stay atomic so that a reader (another process, the collector) sees the
 * old or the new value, never a torn one, and so that the language sees
 * no data race. */
static inline uint64_t shmet__get(const uint64_t *cell) { return __atomic_load_n(cell, __ATOMIC_RELAXED); }
static inline void shmet__put(uint64_t *cell, uint64_t v) { __atomic_store_n(cell, v, __ATOMIC_RELAXED); }

/* Add n (at most SHMET_COUNTER_ADD_MAX) to a whole-increments cell of this
 * thread, saturating at SHMET_COUNTER_WHOLE_MAX: one writer never passes it. */
static inline void shmet__add_whole(uint64_t *cell, uint64_t n)
{
	uint64_t cur = shmet__get(cell);
	shmet__put(cell, SHMET__UNLIKELY(n > SHMET_COUNTER_WHOLE_MAX - cur) ? SHMET_COUNTER_WHOLE_MAX : cur + n);
}

/* Add v to a double cell of this thread. */
#if defined(__GNUC__)
/* The cell's bits as a double, loaded into and stored from a floating
 * register directly (may_alias: the cell is a uint64_t to everyone else). */
typedef double __attribute__((may_alias)) shmet__alias_double;
static inline void shmet__add_own_double(uint64_t *cell, double v)
{
	shmet__alias_double *d = (shmet__alias_double *)(void *)cell, cur;
	__atomic_load(d, &cur, __ATOMIC_RELAXED);
	cur += v;
	__atomic_store(d, &cur, __ATOMIC_RELAXED);
}
#else
static inline void shmet__add_own_double(uint64_t *cell, double v)
{
	shmet__put(cell, shmet__bits(shmet__double(shmet__get(cell)) + v));
}
#endif

/* Add v to a double cell that every thread of this process may write (a
 * gauge): relaxed CAS loop, since a gauge is one value per process. */
/* Add v to a gauge cell; a cell holding `unset` (SET MARK: a MAX or MIN
 * gauge never set; 0, the bits of 0.0, for the other modes) adds to 0. */
static inline void shmet__add_double(uint64_t *cell, double v, uint64_t unset)
{
	/* relaxed: readers need the value, not an order relative to other cells. */
	uint64_t old = __atomic_load_n(cell, __ATOMIC_RELAXED);
	while (!__atomic_compare_exchange_n(cell, &old, shmet__bits((old == unset ? 0.0 : shmet__double(old)) + v), 1,
					    __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
	}
}

/* Store an exemplar (label pairs name, value, ..., NULL) in the seqlock slot
 * at off; see exemplars in shmetrics_layout.h.  No wait: a busy slot drops it. */
static inline int shmet__exemplar_put(uint32_t off, double v, const char *const *pairs, double ts)
{
	uint64_t w[SHMET_EXEMPLAR_BYTES / 8];
	char *p = (char *)w;
	size_t len = 0, runes = 0;
	/* the readers' rule (shmet_exemplar_valid), in the one pass that copies */
	for (size_t i = 0; pairs && pairs[i]; i++) {
		const char *str = pairs[i];
		/* memchr and memcpy: the C library's vector loops, not a byte loop */
		const char *z = (const char *)memchr(str, 0, SHMET_EXEMPLAR_BYTES - len);
		size_t n = z ? (size_t)(z - str) : SHMET_EXEMPLAR_BYTES;
		if (SHMET__UNLIKELY(!z || len + n + 1 > SHMET_EXEMPLAR_BYTES || (i % 2 == 0 && !pairs[i + 1]))) {
			shmet__drop();
			return SHMET_E_TOO_LONG;
		}
		memcpy(p + len, str, n + 1);
		uint64_t high = 0; /* from the source: loads of bytes just stored would stall */
		for (size_t k = 0; k + 8 <= n; k += 8) {
			uint64_t x;
			memcpy(&x, str + k, 8);
			high |= x;
		}
		for (size_t k = n & ~(size_t)7; k < n; k++)
			high |= (unsigned char)str[k];
		high &= UINT64_C(0x8080808080808080);
		int ok = i % 2 == 0 ? shmet_valid_label_name(p + len, n) : !high || shmet_valid_utf8(p + len, n);
		if (!high)
			runes += n;
		else
			for (size_t k = 0; k < n; k++)
				runes += ((unsigned char)p[len + k] & 0xc0) != 0x80;
		if (SHMET__UNLIKELY(!ok)) {
			shmet__drop();
			return SHMET_E_INVALID_ARG;
		}
		len += n + 1;
	}
	if (SHMET__UNLIKELY(runes > SHMET_EXEMPLAR_RUNES || !(ts == 0 || (ts > 0 && ts < 1e11)))) {
		shmet__drop();
		return SHMET_E_INVALID_ARG;
	}
	uint64_t *slot = shmet__own(off);
	uint64_t s = shmet__get(&slot[0]);
	/* this thread is the slot's one writer: odd means a write of it that
	 * never finished (a signal handler's, or a thread that died there) */
	if (SHMET__UNLIKELY(s & 1)) {
		shmet__drop();
		return SHMET_E_BUSY;
	}
	shmet__put(&slot[0], s + 1);
	/* release stores (plain stores on x86): the odd seq is visible before
	 * any of the words below is (see shmet_exemplar_read) */
	__atomic_store_n(&slot[1], shmet__bits(v), __ATOMIC_RELEASE);
	__atomic_store_n(&slot[2], shmet__bits(ts), __ATOMIC_RELEASE);
	/* which process's exemplar is the latest: its timestamp, or the coarse
	 * clock (vDSO, a few ns; a tick of a few ms is fine to choose by) */
#ifdef CLOCK_REALTIME_COARSE
	uint64_t stamp = ts ? (uint64_t)(ts * 1e9) : shmet__now_ns(CLOCK_REALTIME_COARSE);
#else
	uint64_t stamp = ts ? (uint64_t)(ts * 1e9) : shmet__now_ns(CLOCK_REALTIME);
#endif
	__atomic_store_n(&slot[3], stamp, __ATOMIC_RELEASE);
	__atomic_store_n(&slot[4], (uint64_t)len, __ATOMIC_RELEASE);
	for (size_t i = 0; i < (len + 7) / 8; i++)
		__atomic_store_n(&slot[5 + i], w[i], __ATOMIC_RELEASE);
	/* release: the words before the even seq that lets readers keep them */
	__atomic_store_n(&slot[0], s + 2, __ATOMIC_RELEASE);
	return SHMET_OK;
}

static inline void shmet_counter_inc(shmet_counter c)
{
	if (SHMET__UNLIKELY(c.off == 0)) {
		shmet__drop();
		return;
	}
	uint64_t *cell = shmet__own(c.off);
	/* 2^63 increments of one are out of reach: no saturation test here */
	shmet__put(cell, shmet__get(cell) + 1);
}

/* n up to SHMET_COUNTER_ADD_MAX; more is refused (dropped and counted). */
static inline void shmet_counter_add_u64(shmet_counter c, uint64_t n)
{
	if (SHMET__UNLIKELY(c.off == 0 || n > SHMET_COUNTER_ADD_MAX)) {
		shmet__drop();
		return;
	}
	shmet__add_whole(shmet__own(c.off), n);
}

/* Negative and NaN increments are refused (dropped and counted). */
static inline void shmet_counter_add(shmet_counter c, double v)
{
	if (SHMET__UNLIKELY(c.off == 0 || !(v >= 0))) {
		shmet__drop();
		return;
	}
	if (v < 9007199254740992.0 && v == (double)(uint64_t)v)
		shmet__add_whole(shmet__own(c.off), (uint64_t)v);
	else
		shmet__add_own_double(shmet__own(c.off) + 1, v);
}

/* The stamp a gauge of this mode writes beside its value at a set or add
 * (see VALUE CELLS): decided once per handle, at _get, not at every set. */
#define SHMET__STAMP_NONE 0u /* sum, per worker */
#define SHMET__STAMP_ONE  1u /* max, min: "this process has set it" */
#define SHMET__STAMP_TIME 2u /* most recent: the set time */
static inline uint32_t shmet__stamp_kind(uint32_t mode)
{
	return mode == SHMET_GAUGE_MOSTRECENT ? SHMET__STAMP_TIME
	       : mode == SHMET_GAUGE_MAX || mode == SHMET_GAUGE_MIN ? SHMET__STAMP_ONE
								    : SHMET__STAMP_NONE;
}

static inline void shmet__gauge_stamp(uint64_t *cell, uint32_t stamp)
{
	/* relaxed: the stamp may be seen a moment apart from the value, which
	 * only shifts which process "wins" by that moment. */
	__atomic_store_n(cell + 1, stamp == SHMET__STAMP_TIME ? shmet__now_ns(CLOCK_REALTIME) : 1, __ATOMIC_RELAXED);
}

/* SET MARK (shmetrics_layout.h): the bits a MAX (MIN) gauge's cell holds
 * from its creation until the process sets it, -Inf (+Inf), which take no
 * part in a max (min); 0 for the other modes. */
static inline uint64_t shmet__gauge_unset_bits(uint32_t mode)
{
	return mode == SHMET_GAUGE_MAX ? UINT64_C(0xfff0000000000000)
	       : mode == SHMET_GAUGE_MIN ? UINT64_C(0x7ff0000000000000)
					 : 0;
}

/* Add v (as shmet_counter_add) and make it the series' exemplar; the
 * exemplar's rules are shmet_histogram_observe_with_exemplar's. */
static inline int shmet_counter_add_with_exemplar(shmet_counter c, double v, const char *const *pairs, double ts)
{
	shmet_counter_add(c, v);
	if (SHMET__UNLIKELY(c.off == 0 || !(v >= 0) || !c.ex)) {
		if (c.off && v >= 0)
			shmet__drop(); /* a family registered without exemplars */
		return SHMET_E_INVALID_ARG;
	}
	return shmet__exemplar_put(c.ex, v, pairs, ts);
}

static inline int shmet_counter_inc_with_exemplar(shmet_counter c, const char *const *pairs, double ts)
{
	return shmet_counter_add_with_exemplar(c, 1, pairs, ts);
}

static inline void shmet_gauge_set(shmet_gauge g, double v)
{
	if (SHMET__UNLIKELY(g.off == 0)) {
		shmet__drop();
		return;
	}
	/* relaxed: as in shmet__cell */
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	/* one test for the two rare cases: no region yet, or a set time to
	 * write.  A MAX or MIN cell was marked set when it was made (SET MARK
	 * in shmetrics_layout.h): its set is one store, as a sum gauge's. */
	if (SHMET__UNLIKELY(!b || g.stamp == SHMET__STAMP_TIME)) {
		uint64_t *cell = shmet__cell(g.off);
		__atomic_store_n(cell, shmet__bits(v), __ATOMIC_RELAXED);
		if (g.stamp == SHMET__STAMP_TIME)
			shmet__gauge_stamp(cell, g.stamp);
		return;
	}
	/* relaxed: a gauge is one value (see shmet__gauge_stamp for its stamp) */
	__atomic_store_n((uint64_t *)(void *)(b + g.off), shmet__bits(v), __ATOMIC_RELAXED);
}

static inline void shmet_gauge_add(shmet_gauge g, double v)
{
	if (SHMET__UNLIKELY(g.off == 0)) {
		shmet__drop();
		return;
	}
	uint64_t *cell = shmet__cell(g.off);
	shmet__add_double(cell, v, shmet__gauge_unset_bits(g.mode));
	if (SHMET__UNLIKELY(g.stamp == SHMET__STAMP_TIME))
		shmet__gauge_stamp(cell, g.stamp); /* a MAX or MIN cell was marked when it was made */
}

static inline void shmet_gauge_inc(shmet_gauge g) { shmet_gauge_add(g, 1.0); }
static inline void shmet_gauge_dec(shmet_gauge g) { shmet_gauge_add(g, -1.0); }

/* Seconds since the Unix epoch, as Prometheus' *_timestamp_seconds gauges. */
static inline void shmet_gauge_set_to_current_time(shmet_gauge g)
{
	shmet_gauge_set(g, (double)shmet__now_ns(CLOCK_REALTIME) / 1e9);
}

/* The bucket index of a positive normal v: ceil(log2(v) * 2^schema). */
static inline int32_t shmet__sketch_index(const struct shmet__sketch_rt *k, double v)
{
	uint64_t bits = shmet__bits(v);
	int32_t e = (int32_t)(bits >> 52) - 1023;
	uint64_t m = bits & UINT64_C(0xfffffffffffff);
	if (SHMET__UNLIKELY(k->schema <= 0)) {
		/* log2(v) in [e, e + 1): ceil(e / d) when v is 2^e, else floor(e / d) + 1 */
		int32_t d = 1 << -k->schema, fl = e >= 0 ? e / d : -((-e + d - 1) / d);
		return m == 0 ? (e >= 0 ? (e + d - 1) / d : -((-e) / d)) : fl + 1;
	}
	/* the mantissa's top bits name a cell holding at most one edge (edges
	 * are 2^(1/256) - 1 > 1/1024 apart): one compare finds the bucket */
	uint32_t j = k->lut[m >> 42];
	j += shmet__double(m | UINT64_C(0x3ff0000000000000)) > k->edges[j];
	return e * (1 << k->schema) + (int32_t)j;
}

/* Which count v goes to: 0 below the window, 1..count its buckets, count + 1 above. */
static inline uint32_t shmet__sketch_slot(const struct shmet__sketch_rt *k, double v)
{
	uint64_t ex = shmet__bits(v) >> 52; /* with the sign: positive normals are 1..0x7fe */
	if (SHMET__UNLIKELY(ex - 1 >= 0x7fe))
		return ex == 0x7ff ? k->count + 1 : 0; /* +Inf above; zero, subnormal, negative below */
	int32_t i = shmet__sketch_index(k, v) - k->first;
	return i < 0 ? 0 : (uint32_t)i >= k->count ? k->count + 1 : (uint32_t)i + 1;
}

/* Which native count v goes to: 0 the zero bucket, 1..count the window, count + 1 negatives. */
static inline uint32_t shmet__native_slot(const struct shmet__sketch_rt *k, double v)
{
	if (SHMET__UNLIKELY(!(v > k->zero_threshold)))
		return v >= -k->zero_threshold ? 0 : k->count + 1;
	if (SHMET__UNLIKELY(!(v <= 1.7976931348623157e308) || !(v >= 2.2250738585072014e-308)))
		return v > 1 ? k->count : 1; /* +Inf, or a subnormal above the threshold */
	int32_t i = shmet__sketch_index(k, v) - k->first;
	return i < 0 ? 1 : (uint32_t)i >= k->count ? k->count : (uint32_t)i + 1;
}

/* Observe v; returns its classic bucket, or UINT32_MAX when it was dropped. */
static inline uint32_t shmet__histogram_observe_at(shmet_histogram h, double v)
{
	if (SHMET__UNLIKELY(h.off == 0 || v != v)) {
		shmet__drop();
		return UINT32_MAX;
	}
	uint32_t i;
	/* The bucket is the number of bounds below v (the bounds increase):
	 * counted two at a time, without a branch on v.  Values spread over
	 * the buckets make any branch on v a coin toss, and a miss costs more
	 * than the whole observe. */
	i = 0;
#if defined(__GNUC__)
	typedef double shmet__v2d __attribute__((vector_size(16)));
	typedef long long shmet__v2i __attribute__((vector_size(16)));
	shmet__v2d vv = {v, v};
	shmet__v2i below = {0, 0};
	uint32_t k = 0;
#if !defined(__clang__)
#pragma GCC unroll 8
#endif
	for (; k + 2 <= h.nbuckets; k += 2) {
		shmet__v2d b;
		memcpy(&b, h.bounds + k, sizeof b);
		below += (shmet__v2i)(vv > b); /* -1 where the bound is below v */
	}
	i = (uint32_t)-(below[0] + below[1]);
	if (k < h.nbuckets)
		i += v > h.bounds[k];
#else
	for (uint32_t k = 0; k < h.nbuckets; k++)
		i += v > h.bounds[k];
#endif
	uint64_t *cells = shmet__own(h.off);
	shmet__put(&cells[i], shmet__get(&cells[i]) + 1);
	shmet__add_own_double(&cells[h.nbuckets + 1], v);
	if (h.sk) { /* native: zero bucket, the window (ends clamped), negatives */
		uint64_t *nb = &cells[h.nbuckets + 2 + shmet__native_slot(h.sk, v)];
		shmet__put(nb, shmet__get(nb) + 1);
	}
	return i;
}

static inline void shmet_histogram_observe(shmet_histogram h, double v)
{
	shmet__histogram_observe_at(h, v);
}

/* Observe v, and make it its bucket's exemplar: pairs is "name", "value",
 * ..., NULL (at most 128 UTF-8 characters in all), ts the time in seconds
 * since the epoch or 0 for none.  The observation always counts; the
 * exemplar is refused (SHMET_E_TOO_LONG, SHMET_E_INVALID_ARG) or dropped
 * when a write of the slot never finished (SHMET_E_BUSY), and counted. */
static inline int shmet_histogram_observe_with_exemplar(shmet_histogram h, double v, const char *const *pairs,
							double ts)
{
	uint32_t i = shmet__histogram_observe_at(h, v);
	if (SHMET__UNLIKELY(i == UINT32_MAX || !h.ex)) {
		if (i != UINT32_MAX)
			shmet__drop(); /* a family registered without exemplars */
		return SHMET_E_INVALID_ARG;
	}
	return shmet__exemplar_put(h.ex + i * 8 * SHMET_EXEMPLAR_WORDS, v, pairs, ts);
}

static inline void shmet_summary_observe(shmet_summary s, double v)
{
	if (SHMET__UNLIKELY(s.off == 0 || v != v)) {
		shmet__drop();
		return;
	}
	uint64_t *cells = shmet__own(s.off);
	/* one writer per cell (this thread): a relaxed load and store each.
	 * The count goes first, so a reader never sees more in the buckets
	 * than in _count. */
	shmet__put(&cells[0], shmet__get(&cells[0]) + 1);
	shmet__add_own_double(&cells[1], v);
	if (s.sk) {
		uint64_t *b = &cells[2 + shmet__sketch_slot(s.sk, v)];
		shmet__put(b, shmet__get(b) + 1);
	}
}

/* Durations on the monotonic clock (vDSO: no syscall). */
static inline shmet_timer shmet_timer_start(void)
{
	shmet_timer t = {shmet__now_ns(CLOCK_MONOTONIC)};
	return t;
}

static inline double shmet_timer_seconds(shmet_timer t)
{
	return (double)(shmet__now_ns(CLOCK_MONOTONIC) - t.start_ns) / 1e9;
}

static inline void shmet_histogram_observe_duration(shmet_histogram h, shmet_timer t)
{
	shmet_histogram_observe(h, shmet_timer_seconds(t));
}

static inline void shmet_summary_observe_duration(shmet_summary s, shmet_timer t)
{
	shmet_summary_observe(s, shmet_timer_seconds(t));
}

/* Bucket helpers: fill out[0..count) and return 0, or a negative code. */
static inline int shmet_buckets_linear(double *out, size_t count, double start, double width)
{
	if (count == 0 || count > SHMET_MAX_BUCKETS || !(width > 0) || !isfinite(start))
		return SHMET_E_BUCKETS;
	for (size_t i = 0; i < count; i++)
		out[i] = start + width * (double)i;
	return isfinite(out[count - 1]) ? SHMET_OK : SHMET_E_BUCKETS;
}

static inline int shmet_buckets_exponential(double *out, size_t count, double start, double factor)
{
	if (count == 0 || count > SHMET_MAX_BUCKETS || !(start > 0) || !(factor > 1) || !isfinite(start))
		return SHMET_E_BUCKETS;
	for (size_t i = 0; i < count; i++)
		out[i] = i ? out[i - 1] * factor : start;
	return isfinite(out[count - 1]) ? SHMET_OK : SHMET_E_BUCKETS;
}

#ifdef __cplusplus
}
#endif
#endif /* SHMETRICS_H */

/* ===================================================================== */
#if defined(SHMETRICS_IMPLEMENTATION) && !defined(SHMETRICS_IMPLEMENTATION_DONE)
#define SHMETRICS_IMPLEMENTATION_DONE

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

unsigned char *shmet__base;
SHMET__TLS SHMET__API unsigned char *shmet__own_base;

struct shmet_family {
	struct shmet_family *next;
	uint32_t id;
	uint32_t rec_off; /* its FAMILY record in this process's region */
	unsigned char *rec; /* a private copy of that record: its shape, for clash checks */
	uint32_t rec_size;
	enum shmet_type type;
	enum shmet_gauge_mode mode;
	uint32_t nlabels;
	uint32_t nbuckets;
	double *bounds;
	char *name;
	char *help;
	char **label_names;
	struct shmet__sketch_rt *sk; /* summaries with quantiles, else NULL */
	unsigned exemplars;          /* counters, histograms: exemplar slots after the cells */
	/* SERIES LIMIT; only the registration mutex's holder reads or writes these */
	uint32_t limit;              /* series this process may hold */
	uint32_t nseries;            /* series it holds (the overflow series not counted) */
	uint32_t routed_off;         /* its SHMET_OVERFLOW_FAMILY series' cells, 0 until the first */
	unsigned internal;           /* SHMET_OVERFLOW_FAMILY itself: no limit, reserved name allowed */
	uint32_t reg_off;            /* its FAMILY record in the segment's registry (REMOVE records name it) */
};

/* A writing thread's cells: the process's own region (region == -1, the
 * home thread) or one claimed for the thread.  On the list owns while
 * claimed; only the registration mutex's holder reads or changes it. */
struct shmet__own {
	struct shmet__own *next;
	int region; /* -1: the home thread, which writes the process's region */
	unsigned char *base;
};

/* One series, found by (family, label values) without a lock: nodes are
 * immutable once published and never freed. */
struct shmet__node {
	struct shmet__node *next;
	uint64_t hash;
	const shmet_family *fam;
	uint32_t off;
	uint32_t nvalues;
	char *values[SHMET_MAX_LABELS];
	size_t lens[SHMET_MAX_LABELS];
};

static struct {
	pthread_mutex_t mu; /* registration, series creation, init, fork */
	int initialized;
	int atfork_done;
	struct shmet_seg_map map;
	int region; /* -1: none */
	uint64_t region_size;
	uint64_t dir_end;  /* this process's copy of rg_dir_end */
	uint64_t cell_low; /* this process's copy of rg_cell_low */
	uint64_t series;
	shmet_family *families;
	uint32_t next_family_id;
	struct shmet__node **table;
	size_t table_mask;
	uint32_t deferred_parent; /* region of the parent a fork child came from */
	void *sink; /* private memory: the writes of a process without a region, and the
		     * directory a fork child inherited until it claims one */
	int orphan;        /* 1: no region; every write is dropped and counted (atomic) */
	uint64_t retry_ns; /* an orphan claims again from this CLOCK_MONOTONIC time on (atomic) */
	int said_orphan, said_full; /* the stderr notices, once per process (atomic) */
	char path[4096];
	uint32_t adopt;     /* shmet__init_adopted: region + 1 to take instead of claiming */
	uint32_t adopt_rec; /* shmet__adopt_*: the record is at this offset already ... */
	unsigned char *adopt_buf; /* ... and is written here instead, then forgotten */
	/* WRITING THREADS (shmetrics_layout.h); the fields below are zero at start */
	int home_taken;    /* a thread writes the counter cells of this process's region */
	struct shmet__own *owns; /* the regions this process's other threads write */
	pthread_key_t own_key;   /* per thread: its struct shmet__own, for the exit destructor */
	int own_key_done;
	int said_own; /* the stderr notice of a thread without a region, once (atomic) */
	uint32_t series_limit;   /* the segment's default (sh_series_limit, copied once at attach) */
	shmet_family *overflow_family; /* SHMET_OVERFLOW_FAMILY, once a family overflowed */
	int said_overflow;       /* the stderr notice of the first overflow, once (atomic) */
} shmet__st = {PTHREAD_MUTEX_INITIALIZER, 0, 0, {-1, 0, 0, NULL, 0, NULL, 0, 0, 0, 0, 0, 0, 0, 0}, -1, 0, 0, 0, 0, NULL, 0,
	       NULL, 0, SHMET_NO_PARENT, NULL, 0, 0, 0, 0, {0}, 0, 0, NULL, 0, NULL, 0, 0, 0, 0, NULL, 0};

static __thread char shmet__errmsg[SHMET_ERRBUF];

#define SHMET__RETRY_NS UINT64_C(1000000000) /* how often an orphan claims again */
#define SHMET__NO_REGION                                                                             \
	"no region in %s (%s): this process's writes are dropped and counted in "                   \
	"shmetricsd_writes_dropped_total"

const char *shmet_last_error(void) { return shmet__errmsg; }

static int shmet__err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int shmet__err(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(shmet__errmsg, sizeof shmet__errmsg, fmt, ap);
	va_end(ap);
	return code;
}

static unsigned char *shmet__deferred(int writing);

int shmet_region_index(void)
{
	if (!__atomic_load_n(&shmet__base, __ATOMIC_RELAXED) && shmet__st.initialized)
		shmet__deferred(0);
	return __atomic_load_n(&shmet__st.region, __ATOMIC_RELAXED);
}

/* A write made without a region: counted in the segment's header. */
static void shmet__drop_orphan(void)
{
	/* relaxed: a statistic; the collector reads it whenever it scans.  The
	 * header stays mapped for the life of the process once attached. */
	if (shmet__st.map.hdr)
		__atomic_fetch_add(&shmet__st.map.hdr->sh_dropped_orphan, 1, __ATOMIC_RELAXED);
}

void shmet__drop(void)
{
	/* relaxed, as in shmet__cell: a region once set stays this process's. */
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	if (b) /* relaxed: a statistic, as above */
		__atomic_fetch_add(&((struct shmet_region_header *)(void *)b)->rg_dropped, 1, __ATOMIC_RELAXED);
	else
		shmet__drop_orphan();
}

/* SHMETRICS_QUIET set (and not "0") silences the writer's stderr notices. */
static void shmet__notice(int *said, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void shmet__notice(int *said, const char *fmt, ...)
{
	/* relaxed: only "once" matters, not what else this thread sees */
	if (__atomic_exchange_n(said, 1, __ATOMIC_RELAXED))
		return;
	const char *q = getenv(SHMET_ENV_QUIET);
	if (q && *q && strcmp(q, "0") != 0)
		return;
	char line[SHMET_ERRBUF + 512];
	int n = snprintf(line, sizeof line, "shmetrics: pid %d: ", (int)getpid());
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s (set " SHMET_ENV_QUIET "=1 to silence this)\n", line);
}

static void shmet__home_locked(void);

static void shmet__use_region(uint32_t idx)
{
	unsigned char *rg = shmet_seg_region(&shmet__st.map, idx);
	__atomic_store_n(&shmet__base, rg, __ATOMIC_RELAXED);
	__atomic_store_n(&shmet__st.region, (int)idx, __ATOMIC_RELAXED);
	/* relaxed: a thread that still sees 1 takes the locked path and finds the base */
	__atomic_store_n(&shmet__st.orphan, 0, __ATOMIC_RELAXED);
	shmet__home_locked();
}

/* Make the private sink (region_size bytes, of which only the pages written
 * cost memory).  0 when it exists. */
static int shmet__make_sink(void)
{
	if (!shmet__st.sink) {
		/* A private map of /dev/zero is anonymous memory without
		 * MAP_ANONYMOUS, which strict POSIX modes (-D_POSIX_C_SOURCE
		 * without _DEFAULT_SOURCE) do not declare. */
#ifdef MAP_NORESERVE
		const int noreserve = MAP_NORESERVE; /* no swap reserved for memory never touched */
#else
		const int noreserve = 0;
#endif
		int z = open("/dev/zero", O_RDWR | O_CLOEXEC);
		void *p = z < 0 ? MAP_FAILED
				: mmap(NULL, shmet__st.region_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | noreserve, z, 0);
		if (z >= 0)
			close(z);
		shmet__st.sink = p == MAP_FAILED ? NULL : p;
	}
	return shmet__st.sink ? 0 : -1;
}

/* This process has no region: from now on its hot path keeps finding
 * shmet__base NULL and calls shmet__deferred, which counts each write as
 * dropped, hands out the sink to write to, and claims again now and then. */
static void shmet__orphan_locked(void)
{
	if (shmet__make_sink() != 0)
		abort(); /* nowhere to write: cannot happen unless mmap of private memory failed */
	__atomic_store_n(&shmet__st.region, -1, __ATOMIC_RELAXED);
	/* relaxed: decides only when some thread claims again */
	__atomic_store_n(&shmet__st.retry_ns, shmet__now_ns(CLOCK_MONOTONIC) + SHMET__RETRY_NS, __ATOMIC_RELAXED);
	/* release: the sink made above before the flag that hands it out
	 * without the mutex (the acquire in shmet__deferred) */
	__atomic_store_n(&shmet__st.orphan, 1, __ATOMIC_RELEASE);
	shmet__notice(&shmet__st.said_orphan, SHMET__NO_REGION, shmet__st.path,
		      shmet__errmsg[0] ? shmet__errmsg : "no segment");
}

static int shmet__claim_locked(uint32_t parent)
{
	char why[SHMET_ERRBUF];
	uint32_t idx = 0;
	int rc = shmet_seg_claim(&shmet__st.map, shmet__st.map.fd, parent, &idx, why);
	if (rc != SHMET_OK) {
		shmet__err(rc, "%s: %s", shmet__st.path, why);
		shmet__notice(&shmet__st.said_orphan, SHMET__NO_REGION, shmet__st.path, why);
		return rc;
	}
	shmet__use_region(idx);
	shmet__st.dir_end = sizeof(struct shmet_region_header);
	shmet__st.cell_low = shmet__st.region_size;
	shmet__st.series = 0;
	return SHMET_OK;
}

/* shmet__init_adopted: take over region idx as it is.  Its header is
 * checked like any reader would, since any process could have written it. */
static int shmet__adopt_locked(uint32_t idx)
{
	const struct shmet_seg_map *m = &shmet__st.map;
	if (idx >= shmet_seg_regions(m))
		return shmet__err(SHMET_E_INVALID_ARG, "%s: no region %u", shmet__st.path, idx);
	struct shmet_region_slot *slot = shmet_seg_slot(m, idx);
	/* acquire: pairs with the claim that made it LIVE */
	if (shmet_state_of(__atomic_load_n(&slot->rs_state_gen, __ATOMIC_ACQUIRE)) != SHMET_REGION_LIVE ||
	    !shmet_seg_region_alive(m, idx))
		return shmet__err(SHMET_E_INVALID_ARG, "%s: region %u is not live and locked by the caller",
				  shmet__st.path, idx);
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)shmet_seg_region(m, idx);
	/* acquire: the records below the end; the owner that wrote them is dead */
	uint64_t end = __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE);
	uint64_t low = __atomic_load_n(&rg->rg_cell_low, __ATOMIC_RELAXED);
	uint64_t series = __atomic_load_n(&rg->rg_series, __ATOMIC_RELAXED);
	if (end < sizeof *rg || end > low || low > shmet__st.region_size || end % 8 || low % 8)
		return shmet__err(SHMET_E_CORRUPT, "%s: region %u: directory end %llu and cells at %llu are out of bounds",
				  shmet__st.path, idx, (unsigned long long)end, (unsigned long long)low);
	shmet__use_region(idx);
	shmet__st.dir_end = end;
	shmet__st.cell_low = low;
	shmet__st.series = series;
	__atomic_store_n(&slot->rs_pid, (uint32_t)getpid(), __ATOMIC_RELAXED); /* informational */
	return SHMET_OK;
}

/* Copy the directory bytes [lo, dir_end) of from into region to, at the
 * same offsets, and publish them there with this process's cell watermark
 * and series count: every handle and lookup node is an offset, so it means
 * the same series in both.  Cells are not copied (a fresh region's stay
 * zero). */
static void shmet__mirror(unsigned char *to, const unsigned char *from, uint64_t lo)
{
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)to;
	memcpy(to + lo, from + lo, shmet__st.dir_end - lo);
	__atomic_store_n(&rg->rg_cell_low, shmet__st.cell_low, __ATOMIC_RELAXED);
	__atomic_store_n(&rg->rg_series, shmet__st.series, __ATOMIC_RELAXED);
	/* release: the copied records before the end that exposes them */
	__atomic_store_n(&rg->rg_dir_end, shmet__st.dir_end, __ATOMIC_RELEASE);
}

/* Copy a directory (the parent's region, or the sink that kept it) into
 * the region just claimed and publish it. */
static void shmet__mark_unset(const shmet_family *f, uint32_t cell_off);

static void shmet__adopt_dir(const unsigned char *from, uint64_t dir_end, uint64_t cell_low, uint64_t series)
{
	shmet__st.dir_end = dir_end;
	shmet__st.cell_low = cell_low;
	shmet__st.series = series;
	/* the cells are fresh: mark the MAX and MIN ones as a creation does */
	for (size_t i = 0; shmet__st.table && i <= shmet__st.table_mask; i++)
		for (const struct shmet__node *n = shmet__st.table[i]; n; n = n->next)
			shmet__mark_unset(n->fam, n->off);
	shmet__mirror(shmet__base, from, sizeof(struct shmet_region_header));
}

/* ---- writing threads (WRITING THREADS in shmetrics_layout.h) ---- */

#define SHMET__NO_OWN_REGION                                                                          \
	"a thread of this process found no region of its own in %s (%s): its counter, histogram and "    \
	"summary writes are dropped and counted in shmetricsd_writes_dropped_total (give the segment "   \
	"more regions: one per writing thread)"

/* A thread with cells exits: the home thread gives the process's counter
 * cells to the next thread that writes; another gives its region back (its
 * liveness lock released, the collector folds it, as a dead process's).
 * Its writes happen before the unlock: the collector sees the region dead
 * through the kernel's lock, which orders them (as a process's death
 * does). */
static void shmet__own_exit(void *p)
{
	struct shmet__own *o = (struct shmet__own *)p;
	pthread_mutex_lock(&shmet__st.mu);
	shmet__own_base = NULL; /* a later write (another key's destructor) claims again */
	if (o->region < 0) {
		shmet__st.home_taken = 0;
	} else {
		struct shmet__own **pp = &shmet__st.owns;
		while (*pp && *pp != o)
			pp = &(*pp)->next;
		if (*pp) {
			*pp = o->next; /* no registration writes its directory any more ... */
			/* ... and only then may the collector fold and free it */
			shmet__ofd_lock(shmet__st.map.fd, shmet_seg_lock_off(&shmet__st.map, (uint32_t)o->region), F_UNLCK,
					F_OFD_SETLK);
		}
	}
	pthread_mutex_unlock(&shmet__st.mu);
	free(o);
}

/* Record that the calling thread writes the cells at base (its exit
 * destructor finds o) and make them its own.  NULL when it cannot. */
static struct shmet__own *shmet__own_set_locked(int region, unsigned char *base)
{
	if (!shmet__st.own_key_done) {
		if (pthread_key_create(&shmet__st.own_key, shmet__own_exit) != 0)
			return NULL;
		shmet__st.own_key_done = 1;
	}
	struct shmet__own *o = (struct shmet__own *)calloc(1, sizeof *o);
	if (!o)
		return NULL;
	o->region = region;
	o->base = base;
	if (pthread_setspecific(shmet__st.own_key, o) != 0) {
		free(o);
		return NULL;
	}
	if (region < 0)
		shmet__st.home_taken = 1;
	shmet__own_base = base;
	return o;
}

/* The thread that claims the process's region writes its counter cells
 * from the start: a single-threaded process takes no lock, and no region
 * more, at its first write. */
static void shmet__home_locked(void)
{
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	if (b && !shmet__st.home_taken)
		shmet__own_set_locked(-1, b);
}

/* Cells for the calling thread, which has none: the process's region when
 * no thread writes its counter cells (the home thread exited), else a
 * region claimed for the thread with the process's directory.  NULL when
 * there is none to have. */
static unsigned char *shmet__own_locked(void)
{
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	char why[SHMET_ERRBUF];
	if (!b)
		return NULL;
	if (!shmet__st.home_taken) {
		struct shmet__own *o = shmet__own_set_locked(-1, b);
		return o ? o->base : NULL;
	}
	uint32_t idx = 0;
	int rc = shmet_seg_claim(&shmet__st.map, shmet__st.map.fd, (uint32_t)shmet__st.region, &idx, why);
	if (rc != SHMET_OK) {
		shmet__notice(&shmet__st.said_own, SHMET__NO_OWN_REGION, shmet__st.path, why);
		return NULL;
	}
	unsigned char *rb = shmet_seg_region(&shmet__st.map, idx);
	/* relaxed: informational, like the rest of the slot the claimer fills */
	__atomic_fetch_or(&shmet_seg_slot(&shmet__st.map, idx)->rs_flags, SHMET_SLOT_THREAD, __ATOMIC_RELAXED);
	shmet__mirror(rb, b, sizeof(struct shmet_region_header));
	struct shmet__own *o = shmet__own_set_locked((int)idx, rb);
	if (!o) {
		/* the region goes back unwritten: the collector folds nothing */
		shmet__ofd_lock(shmet__st.map.fd, shmet_seg_lock_off(&shmet__st.map, idx), F_UNLCK, F_OFD_SETLK);
		return NULL;
	}
	o->next = shmet__st.owns;
	shmet__st.owns = o;
	return rb;
}

void shmet__share_process_region(void)
{
	/* relaxed: as in shmet__cell */
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	if (b)
		shmet__own_base = b;
}

unsigned char *shmet__claim_own(void)
{
	/* when a thread without a region of its own may claim again (only it
	 * reads or writes this) */
	static SHMET__TLS uint64_t retry_ns;
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	if (!b) {
		b = shmet__deferred(1); /* a fork child claims here; an orphan's write is counted */
		if (!__atomic_load_n(&shmet__base, __ATOMIC_RELAXED))
			return b;
		if (shmet__own_base) /* this thread claimed the process's region: its home */
			return shmet__own_base;
	}
	/* No lock until it is time to claim again: this thread made the sink
	 * (or saw it made) under the mutex when it set retry_ns, and the sink
	 * never changes after. */
	if (retry_ns && shmet__now_ns(CLOCK_MONOTONIC) < retry_ns) {
		shmet__drop();
		return (unsigned char *)shmet__st.sink;
	}
	pthread_mutex_lock(&shmet__st.mu);
	b = shmet__own_locked();
	if (!b && shmet__make_sink() != 0)
		abort(); /* nowhere to write: cannot happen unless mmap of private memory failed */
	pthread_mutex_unlock(&shmet__st.mu);
	if (b) {
		retry_ns = 0;
		return b;
	}
	retry_ns = shmet__now_ns(CLOCK_MONOTONIC) + SHMET__RETRY_NS;
	shmet__drop();
	/* relaxed atomics on the sink from many threads: lost updates there
	 * are of writes already counted as dropped */
	return (unsigned char *)shmet__st.sink;
}

static void shmet__atfork_prepare(void) { pthread_mutex_lock(&shmet__st.mu); }
static void shmet__atfork_parent(void) { pthread_mutex_unlock(&shmet__st.mu); }

/* The child gets a region of its own with the parent's directory, so every
 * handle (an offset) means the same series, and zeroed values. */
static void shmet__atfork_child(void)
{
	if (!shmet__st.map.base) {
		pthread_mutex_unlock(&shmet__st.mu);
		return;
	}
	int parent = shmet__st.region;
	/* The parent's directory (in its region, or in its sink when it had
	 * none) goes to this child's private sink now, because the parent may
	 * be gone, and its region folded, by the time this child first writes. */
	const unsigned char *from = parent >= 0 ? shmet_seg_region(&shmet__st.map, (uint32_t)parent)
						 : (const unsigned char *)shmet__st.sink;
	uint64_t dir_end = shmet__st.dir_end;
	int has_dir = from && dir_end > sizeof(struct shmet_region_header);
	__atomic_store_n(&shmet__st.region, -1, __ATOMIC_RELAXED); /* one thread now: relaxed is enough */
	shmet__make_sink();
	if (has_dir && shmet__st.sink && from != shmet__st.sink)
		memcpy((unsigned char *)shmet__st.sink + sizeof(struct shmet_region_header),
		       from + sizeof(struct shmet_region_header), dir_end - sizeof(struct shmet_region_header));
	shmet__st.deferred_parent = parent >= 0 ? (uint32_t)parent : SHMET_NO_PARENT;
	/* A fresh open file description: the inherited one carries the parent's
	 * liveness lock, which this child must not keep alive.  The kernel
	 * drops an OFD lock with the last reference to its description, and
	 * the inherited MAP_SHARED mapping holds one as much as the inherited
	 * descriptor does: close the descriptor, and map the file again from
	 * the new description at the same address (MAP_FIXED replaces the old
	 * mapping in one step, so every pointer into it stays valid). */
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", shmet__st.map.fd);
	int fd = open(proc, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		fd = open(shmet__st.path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	close(shmet__st.map.fd);
	if (fd >= 0 && mmap(shmet__st.map.base, shmet__st.map.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
			    fd, 0) == MAP_FAILED) {
		close(fd);
		fd = -1;
	}
	if (fd < 0) {
		/* No description of its own: this child can neither own a region
		 * nor keep the parent's mapping, so it lets the segment go. */
		munmap(shmet__st.map.base, shmet__st.map.size);
		shmet__st.map.base = NULL;
		shmet__st.map.hdr = NULL;
	}
	shmet__st.map.fd = fd;
	/* A new process: it claims at its first write, and says once itself
	 * when it cannot.  (If it cannot open the segment or its directory was
	 * not kept, that first claim fails and it is an orphan.) */
	__atomic_store_n(&shmet__base, (unsigned char *)NULL, __ATOMIC_RELAXED);
	/* The parent's threads and their regions are not this child's: its one
	 * thread writes the child's region, once claimed. */
	shmet__own_base = NULL;
	if (shmet__st.own_key_done) {
		struct shmet__own *mine = (struct shmet__own *)pthread_getspecific(shmet__st.own_key);
		pthread_setspecific(shmet__st.own_key, NULL);
		if (mine && mine->region < 0)
			free(mine);
	}
	for (struct shmet__own *o = shmet__st.owns, *next; o; o = next) {
		next = o->next;
		free(o);
	}
	shmet__st.owns = NULL;
	shmet__st.home_taken = 0;
	__atomic_store_n(&shmet__st.said_own, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&shmet__st.orphan, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&shmet__st.said_orphan, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&shmet__st.said_full, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&shmet__st.mu);
}

static int shmet__init_locked(const struct shmet_options *o);

/* The hot path found no region.  A fork child claims one now (at its first
 * write); a process that has none (an orphan) counts the write as dropped,
 * without a lock, and gets the sink to write to: one relaxed add, and a
 * vDSO clock read that lets one thread claim again about once a second.
 * writing: 0 when asked by shmet_region_index, which drops nothing. */
static unsigned char *shmet__deferred(int writing)
{
	/* acquire: pairs with the release in shmet__orphan_locked, so the sink is visible */
	if (__atomic_load_n(&shmet__st.orphan, __ATOMIC_ACQUIRE)) {
		uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
		/* relaxed: the CAS only elects the thread that claims again; the
		 * claim itself runs under the mutex */
		uint64_t next = __atomic_load_n(&shmet__st.retry_ns, __ATOMIC_RELAXED);
		if (now < next || !__atomic_compare_exchange_n(&shmet__st.retry_ns, &next, now + SHMET__RETRY_NS, 0,
							       __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
			if (writing)
				shmet__drop_orphan();
			return (unsigned char *)shmet__st.sink;
		}
	}
	pthread_mutex_lock(&shmet__st.mu);
	unsigned char *b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
	if (!b) {
		if (shmet__init_locked(NULL) == SHMET_OK)
			b = __atomic_load_n(&shmet__base, __ATOMIC_RELAXED);
		else
			shmet__orphan_locked();
	}
	pthread_mutex_unlock(&shmet__st.mu);
	if (b)
		return b;
	if (writing)
		shmet__drop_orphan();
	return (unsigned char *)shmet__st.sink;
}

unsigned char *shmet__claim_deferred(void) { return shmet__deferred(1); }

static int shmet__init_locked(const struct shmet_options *o)
{
	if (shmet__st.initialized && o && o->path && strcmp(o->path, shmet__st.path) != 0)
		return shmet__err(SHMET_E_INVALID_ARG, "already attached to %s; call shmet_init before registering",
				  shmet__st.path);
	if (shmet__st.initialized) {
		if (shmet__st.region >= 0)
			return SHMET_OK;
		if (!shmet__st.map.base)
			return shmet__err(SHMET_E_SYS, "%s: this fork child could not open the segment again",
					  shmet__st.path);
		/* Retry: room may have freed.  Handles and nodes inherited at
		 * fork are offsets into the parent's directory, which the sink
		 * kept: the new region must start with it. */
		uint64_t dir_end = shmet__st.dir_end, cell_low = shmet__st.cell_low, series = shmet__st.series;
		int has_dir = dir_end > sizeof(struct shmet_region_header);
		if (has_dir && !shmet__st.sink)
			return shmet__err(SHMET_E_SYS, "%s: the inherited directory was not kept; not claiming a region",
					  shmet__st.path);
		int rc = shmet__claim_locked(shmet__st.deferred_parent);
		if (rc == SHMET_OK && has_dir)
			shmet__adopt_dir((const unsigned char *)shmet__st.sink, dir_end, cell_low, series);
		return rc;
	}
	const char *path = o && o->path ? o->path : shmet_default_path();
	if (strlen(path) >= sizeof shmet__st.path)
		return shmet__err(SHMET_E_TOO_LONG, "segment path too long");
	struct shmet_seg_config cfg;
	memset(&cfg, 0, sizeof cfg);
	if (o) {
		cfg.regions = o->regions;
		cfg.region_size = o->region_size;
		cfg.mode = o->mode;
		cfg.series_limit = o->series_limit;
	}
	if (!cfg.series_limit && shmet_env_series_limit(&cfg.series_limit) != 0)
		return shmet__err(SHMET_E_INVALID_ARG, "%s=\"%s\": want a number of series, 1 to %u", SHMET_ENV_SERIES_LIMIT,
				  getenv(SHMET_ENV_SERIES_LIMIT), UINT32_MAX);
	const char *env_mode = getenv(SHMET_ENV_SEGMENT_MODE);
	if (!cfg.mode && env_mode && *env_mode && shmet_parse_mode(env_mode, &cfg.mode) != 0)
		return shmet__err(SHMET_E_INVALID_ARG, "%s=\"%s\": want 0600, 0640 or 0660", SHMET_ENV_SEGMENT_MODE,
				  env_mode);
	const char *group = o && o->group ? o->group : getenv(SHMET_ENV_SEGMENT_GROUP);
	if (group && *group) {
		if (shmet_parse_group(group, &cfg.group) != 0)
			return shmet__err(SHMET_E_INVALID_ARG, "segment group \"%s\": no such group", group);
		cfg.set_group = 1;
	}
	const char *owner = getenv(SHMET_ENV_SEGMENT_OWNER);
	if (owner && *owner) {
		if (shmet_parse_uid(owner, &cfg.owner_uid) != 0)
			return shmet__err(SHMET_E_INVALID_ARG, "%s=\"%s\" is not a numeric uid", SHMET_ENV_SEGMENT_OWNER,
					  owner);
		cfg.allow_owner = 1;
	}
	char why[SHMET_ERRBUF];
	int rc = shmet_seg_attach(path, &cfg, o && o->no_create ? 0 : SHMET_ATTACH_CREATE, &shmet__st.map, why);
	if (rc != SHMET_OK)
		return shmet__err(rc, "%s", why);
	strcpy(shmet__st.path, path);
	shmet__st.region_size = shmet__st.map.region_size; /* validated at attach; never the live header */
	/* read once: only this process's routing depends on it, and any value is one */
	shmet__st.series_limit = __atomic_load_n(&shmet__st.map.hdr->sh_series_limit, __ATOMIC_RELAXED);
	if (!shmet__st.series_limit)
		shmet__st.series_limit = SHMET_SERIES_LIMIT_DEFAULT;
	/* Enough buckets for every series a region can hold, at ~64 bytes each. */
	size_t want = (size_t)(shmet__st.region_size / 64), n = 64;
	while (n < want && n < ((size_t)1 << 20))
		n <<= 1;
	shmet__st.table = (struct shmet__node **)calloc(n, sizeof *shmet__st.table);
	if (!shmet__st.table) {
		shmet_seg_detach(&shmet__st.map);
		return shmet__err(SHMET_E_SYS, "out of memory");
	}
	shmet__st.table_mask = n - 1;
	if (!shmet__st.atfork_done) {
		if (pthread_atfork(shmet__atfork_prepare, shmet__atfork_parent, shmet__atfork_child) != 0) {
			free(shmet__st.table);
			shmet__st.table = NULL;
			shmet_seg_detach(&shmet__st.map);
			return shmet__err(SHMET_E_SYS, "pthread_atfork failed");
		}
		shmet__st.atfork_done = 1;
	}
	shmet__st.initialized = 1;
	if (shmet__st.adopt)
		return shmet__adopt_locked(shmet__st.adopt - 1);
	return shmet__claim_locked(SHMET_NO_PARENT);
}

int shmet_init(const struct shmet_options *o)
{
	pthread_mutex_lock(&shmet__st.mu);
	int rc = shmet__init_locked(o);
	pthread_mutex_unlock(&shmet__st.mu);
	return rc;
}

static void shmet__notice_full(void)
{
	shmet__notice(&shmet__st.said_full,
		      "region %d of %s is full (%llu bytes): new families and series get fallback handles, whose "
		      "writes are dropped and counted (shmetricsd_writes_dropped_total)",
		      shmet__st.region, shmet__st.path, (unsigned long long)shmet__st.region_size);
}

int shmet__init_adopted(const struct shmet_options *o, uint32_t region)
{
	pthread_mutex_lock(&shmet__st.mu);
	int rc;
	if (shmet__st.initialized) {
		rc = shmet__err(SHMET_E_INVALID_ARG, "already initialised; adopt a region before anything else");
	} else {
		shmet__st.adopt = region + 1;
		rc = shmet__init_locked(o);
		shmet__st.adopt = 0;
	}
	pthread_mutex_unlock(&shmet__st.mu);
	return rc;
}

/* Reserve a directory record of size bytes and, when cells > 0, cells below
 * the cell watermark.  Nothing is published until shmet__publish. */
static unsigned char *shmet__reserve(size_t size, uint32_t cells, uint32_t *cell_off)
{
	uint64_t need = shmet_align8(size) + cells;
	if (shmet__st.adopt_rec) { /* shmet__adopt_*: the record and its cells exist */
		if (cells)
			*cell_off = shmet__st.adopt_rec;
		return shmet__st.adopt_buf;
	}
	if (shmet__st.region < 0)
		return NULL;
	if (shmet__st.cell_low < shmet__st.dir_end || shmet__st.cell_low - shmet__st.dir_end < need)
		return NULL;
	if (cells) {
		shmet__st.cell_low -= cells;
		*cell_off = (uint32_t)shmet__st.cell_low;
	}
	return shmet__base + shmet__st.dir_end;
}

static void shmet__publish(size_t size, int is_series)
{
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)shmet__base;
	if (shmet__st.adopt_rec)
		return; /* nothing was written to the region */
	uint64_t lo = shmet__st.dir_end;
	shmet__st.dir_end += shmet_align8(size);
	if (is_series)
		__atomic_store_n(&rg->rg_series, ++shmet__st.series, __ATOMIC_RELAXED);
	__atomic_store_n(&rg->rg_cell_low, shmet__st.cell_low, __ATOMIC_RELAXED);
	/* release: the record's bytes (and the cell watermark) before the end
	 * that makes them visible to the collector's acquire load. */
	__atomic_store_n(&rg->rg_dir_end, shmet__st.dir_end, __ATOMIC_RELEASE);
	/* every thread's region has the same directory, so a handle means the
	 * same series in all of them */
	for (struct shmet__own *o = shmet__st.owns; o; o = o->next)
		shmet__mirror(o->base, shmet__base, lo);
}

static unsigned char *shmet__put_str(unsigned char *p, const char *s, size_t n, int with_len)
{
	if (with_len) {
		uint16_t l = (uint16_t)n;
		memcpy(p, &l, 2);
		p += 2;
	}
	memcpy(p, s, n);
	return p + n;
}

static const double shmet__default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
						0.5,   1,    2.5,   5,    10};

/* strdup is POSIX, not C11: keep the header usable under -std=c11. */
static char *shmet__strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = (char *)malloc(n);
	return d ? (char *)memcpy(d, s, n) : NULL;
}

static void shmet__free_family(shmet_family *f)
{
	if (!f)
		return;
	if (f->label_names)
		for (uint32_t i = 0; i < f->nlabels; i++)
			free(f->label_names[i]);
	free(f->label_names);
	free(f->rec);
	free(f->sk);
	free(f->bounds);
	free(f->name);
	free(f->help);
	free(f);
}

/* 1 while this process registers SHMET_OVERFLOW_FAMILY (under the mutex) */
static int shmet__overflow_registering;

static int shmet__validate_spec(const struct shmet_family_spec *s, char *name, const double **bounds,
				size_t *nb)
{
	if (!s || !s->name || s->type < SHMET_COUNTER || s->type > SHMET_SUMMARY)
		return shmet__err(SHMET_E_INVALID_ARG, "missing name or unknown metric type");
	size_t n = strlen(s->name);
	if (n > SHMET_MAX_NAME_LEN - 6)
		return shmet__err(SHMET_E_TOO_LONG, "metric name longer than %u bytes", SHMET_MAX_NAME_LEN - 6);
	memcpy(name, s->name, n + 1);
	int valid = shmet_valid_metric_name(name, n);
	if (s->type == SHMET_COUNTER && !(n > 6 && strcmp(name + n - 6, "_total") == 0))
		memcpy(name + n, "_total", 7), n += 6;
	if (!valid || strcmp(name, "_total") == 0)
		return shmet__err(SHMET_E_INVALID_NAME, "metric name \"%s\" does not match [a-zA-Z_:][a-zA-Z0-9_:]*",
				  s->name);
	if (strncmp(name, SHMET_RESERVED_PREFIX, sizeof SHMET_RESERVED_PREFIX - 1) == 0 &&
	    !(s->type == SHMET_COUNTER && strcmp(name, SHMET_OVERFLOW_FAMILY) == 0 && shmet__overflow_registering))
		return shmet__err(SHMET_E_INVALID_NAME, "\"%s\": the prefix %s is the collector's own", name,
				  SHMET_RESERVED_PREFIX);
	if (s->type != SHMET_COUNTER && n >= 6 && strcmp(name + n - 6, "_total") == 0)
		return shmet__err(SHMET_E_INVALID_NAME, "\"%s\": only counters may end in _total", name);
	const char *help = s->help ? s->help : "";
	if (strlen(help) > SHMET_MAX_HELP_LEN)
		return shmet__err(SHMET_E_TOO_LONG, "help of \"%s\" longer than %u bytes", name, SHMET_MAX_HELP_LEN);
	if (!shmet_valid_utf8(help, strlen(help)))
		return shmet__err(SHMET_E_INVALID_UTF8, "help of \"%s\" is not valid UTF-8", name);
	if (s->nlabels > SHMET_MAX_LABELS || (s->nlabels && !s->label_names))
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": at most %u label names", name, SHMET_MAX_LABELS);
	for (size_t i = 0; i < s->nlabels; i++) {
		const char *l = s->label_names[i];
		if (!l || !shmet_valid_label_name(l, strlen(l)))
			return shmet__err(l && l[0] == '_' && l[1] == '_' ? SHMET_E_RESERVED_LABEL : SHMET_E_INVALID_LABEL,
					  "\"%s\": label name \"%s\" is invalid (must match [a-zA-Z_][a-zA-Z0-9_]*, not start with __)",
					  name, l ? l : "(null)");
		if (strcmp(l, "le") == 0 || strcmp(l, "quantile") == 0)
			return shmet__err(SHMET_E_RESERVED_LABEL,
					  "\"%s\": label \"%s\" is reserved for histogram buckets and summary quantiles",
					  name, l);
		if (s->type == SHMET_GAUGE && s->gauge_mode == SHMET_GAUGE_PER_WORKER && strcmp(l, "worker") == 0)
			return shmet__err(SHMET_E_RESERVED_LABEL, "\"%s\": label \"worker\" is added by per-worker mode",
					  name);
		for (size_t j = 0; j < i; j++)
			if (strcmp(l, s->label_names[j]) == 0)
				return shmet__err(SHMET_E_DUPLICATE_LABEL, "\"%s\": label name \"%s\" appears twice", name, l);
	}
	if (s->exemplars && s->type != SHMET_COUNTER && s->type != SHMET_HISTOGRAM)
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": only counters and histograms keep exemplars", name);
	if (s->type == SHMET_GAUGE && (unsigned)s->gauge_mode > SHMET_GAUGE_PER_WORKER)
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": unknown gauge mode", name);
	*bounds = NULL;
	*nb = 0;
	if (s->type == SHMET_HISTOGRAM) {
		*bounds = s->nbuckets ? s->buckets : shmet__default_buckets;
		*nb = s->nbuckets ? s->nbuckets : sizeof shmet__default_buckets / sizeof(double);
		if (!*bounds)
			return shmet__err(SHMET_E_BUCKETS, "\"%s\": no bucket array", name);
		if (*nb && isinf((*bounds)[*nb - 1]) && (*bounds)[*nb - 1] > 0)
			(*nb)--; /* +Inf is implied */
		if (*nb > SHMET_MAX_BUCKETS)
			return shmet__err(SHMET_E_BUCKETS, "\"%s\": more than %u buckets", name, SHMET_MAX_BUCKETS);
		for (size_t i = 0; i < *nb; i++)
			if (!isfinite((*bounds)[i]) || (i && !((*bounds)[i] > (*bounds)[i - 1])))
				return shmet__err(SHMET_E_BUCKETS, "\"%s\": bucket bounds must be finite and strictly increasing",
						  name);
	}
	return SHMET_OK;
}

/* The size of the FAMILY record of a validated spec (name: its canonical
 * name, nb: its bucket count). */
static size_t shmet__family_rec_size(const struct shmet_family_spec *s, const char *name, size_t nb)
{
	size_t size = sizeof(struct shmet_rec_family) + nb * 8 + strlen(name) + strlen(s->help ? s->help : "");
	for (size_t i = 0; i < s->nlabels; i++)
		size += 2 + strlen(s->label_names[i]);
	return (size_t)shmet_align8(size);
}

size_t shmet__family_bytes(const struct shmet_family_spec *spec)
{
	char name[SHMET_MAX_NAME_LEN + 8];
	const double *bounds = NULL;
	size_t nb = 0;
	return shmet__validate_spec(spec, name, &bounds, &nb) == SHMET_OK ? shmet__family_rec_size(spec, name, nb) : 0;
}

/* The tables shmet__sketch_slot reads, for a schema, first bucket and count. */
static struct shmet__sketch_rt *shmet__sketch_rt_new(int32_t schema, int32_t first, uint32_t count)
{
	struct shmet__sketch_rt *k = (struct shmet__sketch_rt *)calloc(1, sizeof *k);
	if (!k)
		return NULL;
	k->schema = schema, k->first = first, k->count = count;
	if (schema > 0) {
		uint32_t per = 1u << schema;
		for (uint32_t j = 0; j <= per; j++) /* the readers' edges, shmet_sketch_upper */
			k->edges[j] = shmet_sketch_upper(schema, (int64_t)j);
		for (uint32_t t = 0, j = 0; t < 1024; t++) {
			double start = 1 + t / 1024.0;
			while (k->edges[j] < start)
				j++;
			k->lut[t] = (uint16_t)j;
		}
	}
	return k;
}

/* The SKETCH block of a summary spec asking for quantiles (*len 0 when it
 * asks for none), checked as readers will check it. */
static int shmet__sketch_spec(const struct shmet_family_spec *s, const char *name, unsigned char *blk, uint32_t *len)
{
	static const double defobj[] = {0.5, 0.9, 0.99};
	*len = 0;
	int native = s->native || s->native_schema || s->native_zero_threshold || s->native_min || s->native_max;
	if (s->quantile_error == 0 && s->quantile_min == 0 && s->quantile_max == 0 && s->nobjectives == 0 &&
	    s->max_age == 0 && s->age_buckets == 0 && !native)
		return SHMET_OK;
	if (native && (s->type != SHMET_HISTOGRAM || !s->native || s->quantile_error || s->nobjectives))
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": native options need a histogram with native set", name);
	if (!native && (s->type != SHMET_SUMMARY || !(s->quantile_error > 0)))
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": quantile options need a summary and a relative error > 0",
				  name);
	int32_t schema = SHMET_SKETCH_MIN_SCHEMA;
	while (!native && schema <= SHMET_SKETCH_MAX_SCHEMA && shmet_sketch_rel_error(schema) > s->quantile_error)
		schema++;
	if (native)
		schema = s->native_schema;
	if (schema > SHMET_SKETCH_MAX_SCHEMA || schema < SHMET_SKETCH_MIN_SCHEMA)
		return shmet__err(SHMET_E_INVALID_ARG,
				  "\"%s\": a relative error below %.3g%% needs more than schema %d (schemas are %d..%d)", name,
				  100 * shmet_sketch_rel_error(SHMET_SKETCH_MAX_SCHEMA), SHMET_SKETCH_MAX_SCHEMA,
				  SHMET_SKETCH_MIN_SCHEMA, SHMET_SKETCH_MAX_SCHEMA);
	double lo = s->quantile_min ? s->quantile_min : 1e-4, hi = s->quantile_max ? s->quantile_max : 100;
	if (native)
		lo = s->native_min ? s->native_min : 1e-4, hi = s->native_max ? s->native_max : 100;
	if (!(lo > 2.3e-308) || !(hi > lo) || !isfinite(hi))
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": the bucket range needs 0 < min < max, both finite", name);
	if (native && !(s->native_zero_threshold >= 0 && s->native_zero_threshold < lo))
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": the zero threshold must be in [0, min)", name);
	struct shmet__sketch_rt probe = {schema, 0, 0, 0, {0}, {0}};
	struct shmet__sketch_rt *t = schema > 0 ? shmet__sketch_rt_new(schema, 0, 0) : &probe;
	if (!t)
		return shmet__err(SHMET_E_SYS, "out of memory");
	int64_t first = shmet__sketch_index(t, lo), last = shmet__sketch_index(t, hi);
	if (t != &probe)
		free(t);
	if (last - first + 1 > (int64_t)SHMET_MAX_SKETCH_BUCKETS)
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": %lld buckets for %.3g%% over [%g, %g]; at most %u", name,
				  (long long)(last - first + 1), 100 * shmet_sketch_rel_error(schema), lo, hi,
				  SHMET_MAX_SKETCH_BUCKETS);
	/* the SKETCH block's fixed part, as shmet_sketch_decode reads it */
	struct shmet_rec_sketch_hdr {
		int32_t schema, first;
		uint32_t count;
		uint16_t nobj, age;
		uint64_t max_age_ns;
		double zero_threshold;
	};
	if (native) {
		struct shmet_rec_sketch_hdr nh = {schema, (int32_t)first, (uint32_t)(last - first + 1), 0, 0, 0,
						  s->native_zero_threshold};
		memcpy(blk, &nh, sizeof nh);
		*len = 32;
		return SHMET_OK;
	}
	const double *obj = s->nobjectives ? s->objectives : defobj;
	size_t nobj = s->nobjectives ? s->nobjectives : 3;
	double age = s->max_age ? s->max_age : 600;
	uint32_t ab = s->age_buckets ? s->age_buckets : 5;
	if (nobj > SHMET_MAX_OBJECTIVES || !obj)
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": at most %u objectives", name, SHMET_MAX_OBJECTIVES);
	if (!(age >= 1 && age <= 7 * 86400.0) || ab > SHMET_MAX_AGE_BUCKETS)
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": max age 1 s .. 7 days, at most %u age buckets", name,
				  SHMET_MAX_AGE_BUCKETS);
	struct shmet_rec_sketch_hdr h = {schema, (int32_t)first, (uint32_t)(last - first + 1), (uint16_t)nobj, (uint16_t)ab,
	       (uint64_t)(age * 1e9), 0};
	memcpy(blk, &h, sizeof h);
	for (size_t i = 0; i < nobj; i++)
		memcpy(blk + 32 + 8 * i, &obj[i], 8);
	*len = (uint32_t)(32 + 8 * nobj);
	struct shmet_sketch sk;
	if (!shmet_sketch_decode(blk, *len, SHMET_SUMMARY, &sk))
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": objectives must be strictly increasing, in (0, 1)", name);
	return SHMET_OK;
}

/* Encode the FAMILY record of a validated spec into a new private buffer. */
static unsigned char *shmet__encode_family(const struct shmet_family_spec *s, const char *name, const double *bounds,
					   size_t nb, const unsigned char *sketch, uint32_t sketch_len,
					   size_t *size_out)
{
	const char *help = s->help ? s->help : "";
	size_t nlen = strlen(name), hlen = strlen(help);
	size_t size = shmet__family_rec_size(s, name, nb) + sketch_len; /* the block ends the record */
	unsigned char *rec = (unsigned char *)calloc(1, size);
	if (!rec)
		return NULL;
	struct shmet_rec_family fr;
	memset(&fr, 0, sizeof fr);
	fr.fam_rec.rec_size = (uint32_t)size;
	fr.fam_rec.rec_kind = SHMET_REC_FAMILY;
	fr.fam_type = (uint8_t)s->type;
	/* a counter's or histogram's mode byte says whether it keeps exemplars */
	fr.fam_gauge_mode = (uint8_t)(s->type == SHMET_GAUGE ? s->gauge_mode : s->exemplars ? 1 : 0);
	fr.fam_nlabels = (uint16_t)s->nlabels;
	fr.fam_nbuckets = (uint32_t)nb;
	fr.fam_name_len = (uint16_t)nlen;
	fr.fam_help_len = (uint16_t)hlen;
	fr.fam_sketch_len = sketch_len;
	memcpy(rec, &fr, sizeof fr);
	if (sketch_len)
		memcpy(rec + size - sketch_len, sketch, sketch_len);
	unsigned char *p = rec + sizeof fr;
	if (nb)
		memcpy(p, bounds, nb * 8);
	p += nb * 8;
	p = shmet__put_str(p, name, nlen, 0);
	p = shmet__put_str(p, help, hlen, 0);
	for (size_t i = 0; i < s->nlabels; i++)
		p = shmet__put_str(p, s->label_names[i], strlen(s->label_names[i]), 1);
	*size_out = size;
	return rec;
}

/* Is the existing family (name, shape) compatible with the new one?  0, or
 * SHMET_E_TYPE_CLASH with a reason that names the recorded shape. */
static int shmet__shape_check(const struct shmet_shape *have, const struct shmet_shape *want, const char *where)
{
	char hd[512], wd[512];
	int same_name = have->name_len == want->name_len && memcmp(have->name, want->name, want->name_len) == 0;
	if (same_name && shmet_shape_same(have, want))
		return SHMET_OK;
	if (!same_name && !shmet_names_clash(have->name, have->name_len, have->type, want->name, want->name_len, want->type))
		return SHMET_OK;
	shmet_shape_describe(have, hd, sizeof hd);
	shmet_shape_describe(want, wd, sizeof wd);
	if (same_name)
		return shmet__err(SHMET_E_TYPE_CLASH, "\"%.*s\" is already registered %s as %s; refused as %s",
				  (int)want->name_len, want->name, where, hd, wd);
	return shmet__err(SHMET_E_TYPE_CLASH, "\"%.*s\" (%s) clashes with the sample names of \"%.*s\" (%s), registered %s",
			  (int)want->name_len, want->name, wd, (int)have->name_len, have->name, hd, where);
}

/* Check a new family against the segment's family registry and record it
 * there when it is new (see FAMILY REGISTRY in shmetrics_layout.h).  The
 * registry lock is an OFD lock: a holder that dies releases it, and a
 * holder that never lets go costs a bounded wait and an error, not a hang. */
static int shmet__registry_lock(struct shmet_seg_map *m)
{
	for (int tries = 0; tries < 2000; tries++) {
		if (shmet__ofd_lock(m->fd, SHMET_REGISTRY_LOCK_OFF, F_WRLCK, F_OFD_SETLK) == 0)
			return SHMET_OK;
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
	return shmet__err(SHMET_E_TIMEOUT, "%s: the family registry stayed locked for 2 s", shmet__st.path);
}

static int shmet__registry_enter_locked(const unsigned char *rec, size_t size, const struct shmet_shape *want,
					uint32_t *reg_off)
{
	struct shmet_seg_map *m = &shmet__st.map;
	if (shmet__registry_lock(m) != SHMET_OK)
		return SHMET_E_TIMEOUT;
	unsigned char *base = m->base + shmet__st.map.registry_off;
	struct shmet_region_header *rh = (struct shmet_region_header *)(void *)base;
	/* acquire: pairs with the release below in whichever process appended
	 * last, so every record under the end is complete. */
	uint64_t end = __atomic_load_n(&rh->rg_dir_end, __ATOMIC_ACQUIRE), pos = sizeof *rh;
	int rc = SHMET_OK, found = 0;
	static unsigned char copy[SHMET_REGISTRY_REC_MAX]; /* under shmet__st.mu */
	if (end < sizeof *rh || end > shmet__st.map.registry_size || end % 8) {
		rc = shmet__err(SHMET_E_CORRUPT, "%s: the family registry is damaged (end %llu)", shmet__st.path,
				(unsigned long long)end);
		goto out;
	}
	while (pos < end && rc == SHMET_OK && !found) {
		uint32_t rs;
		memcpy(&rs, base + pos, 4);
		/* the readers' rule (registry.c): a size they cannot trust ends the
		 * walk for them, so it is damage here too, not a record to skip */
		if (rs < sizeof(struct shmet_rec_family) || rs % 8 || rs > end - pos || rs > sizeof copy) {
			rc = shmet__err(SHMET_E_CORRUPT, "%s: the family registry is damaged at %llu", shmet__st.path,
					(unsigned long long)pos);
			break;
		}
		struct shmet_shape have;
		/* a private copy: another process may change the bytes meanwhile */
		memcpy(copy, base + pos, rs);
		if (shmet_shape_decode(copy, rs, &have)) {
			rc = shmet__shape_check(&have, want, "in the segment");
			found = rc == SHMET_OK && have.name_len == want->name_len &&
				memcmp(have.name, want->name, want->name_len) == 0;
			if (found)
				*reg_off = (uint32_t)pos;
		}
		pos += rs;
	}
	if (rc == SHMET_OK && !found) {
		if (shmet__st.map.registry_size - end < size) {
			rc = shmet__err(SHMET_E_REGISTRY_FULL, "%s: no room for \"%.*s\" in the family registry (%llu bytes)",
					shmet__st.path, (int)want->name_len, want->name,
					(unsigned long long)shmet__st.map.registry_size);
		} else {
			memcpy(base + end, rec, size);
			*reg_off = (uint32_t)end;
			/* release: the record's bytes before the end that exposes them */
			__atomic_store_n(&rh->rg_dir_end, end + size, __ATOMIC_RELEASE);
		}
	}
out:
	shmet__ofd_lock(m->fd, SHMET_REGISTRY_LOCK_OFF, F_UNLCK, F_OFD_SETLK);
	if (rc != SHMET_OK)
		/* relaxed: a statistic the collector reports */
		__atomic_fetch_add(&m->hdr->sh_registrations_refused, 1, __ATOMIC_RELAXED);
	return rc;
}

static int shmet__register_locked(const struct shmet_family_spec *s, shmet_family **out)
{
	char name[SHMET_MAX_NAME_LEN + 8];
	const double *bounds = NULL;
	size_t nb = 0, size = 0;
	unsigned char sketch[SHMET_SKETCH_REC_MAX];
	uint32_t sketch_len = 0;
	int rc = shmet__validate_spec(s, name, &bounds, &nb);
	if (rc == SHMET_OK)
		rc = shmet__sketch_spec(s, name, sketch, &sketch_len);
	if (rc != SHMET_OK)
		return rc;
	unsigned char *rec = shmet__encode_family(s, name, bounds, nb, sketch, sketch_len, &size);
	struct shmet_shape want, have;
	if (!rec)
		return shmet__err(SHMET_E_SYS, "out of memory");
	if (size > SHMET_FAMILY_REC_MAX || !shmet_shape_decode(rec, size, &want)) {
		free(rec);
		return shmet__err(SHMET_E_TOO_LONG, "\"%s\": family record too large", name);
	}
	for (shmet_family *f = shmet__st.families; f; f = f->next) {
		if (!shmet_shape_decode(f->rec, f->rec_size, &have))
			continue;
		rc = shmet__shape_check(&have, &want, "in this process");
		if (rc == SHMET_OK && strcmp(f->name, name) == 0) {
			free(rec);
			*out = f;
			return SHMET_OK;
		}
		if (rc != SHMET_OK) {
			free(rec);
			if (shmet__st.map.hdr) /* relaxed: a statistic the collector reports */
				__atomic_fetch_add(&shmet__st.map.hdr->sh_registrations_refused, 1, __ATOMIC_RELAXED);
			return rc;
		}
	}
	rc = shmet__init_locked(NULL);
	struct shmet_sketch sk;
	shmet_sketch_decode(want.sketch, want.sketch_len, want.type, &sk); /* decoded once already */
	uint64_t cells = shmet_cell_size_ex(s->type, (uint32_t)nb, sk.count, want.exemplars, 0);
	/* a sketch or exemplars can be large: refuse a series that could never fit */
	if (rc == SHMET_OK && (sk.count || want.exemplars) && cells + size + sizeof(struct shmet_rec_series) + sizeof(struct shmet_region_header) > shmet__st.region_size)
		rc = shmet__err(SHMET_E_TOO_LONG, "\"%s\": a series needs %llu bytes of cells, more than a region (%llu) holds",
				name, (unsigned long long)cells, (unsigned long long)shmet__st.region_size);
	uint32_t reg_off = 0;
	if (rc == SHMET_OK)
		rc = shmet__registry_enter_locked(rec, size, &want, &reg_off);
	if (rc != SHMET_OK) {
		free(rec);
		return rc;
	}
	const char *help = s->help ? s->help : "";
	shmet_family *f = (shmet_family *)calloc(1, sizeof *f);
	if (!f || !(f->name = shmet__strdup(name)) || !(f->help = shmet__strdup(help)) ||
	    !(f->label_names = (char **)calloc(s->nlabels + 1, sizeof(char *))) ||
	    !(f->bounds = (double *)calloc(nb + 1, sizeof(double)))) {
		shmet__free_family(f);
		free(rec);
		return shmet__err(SHMET_E_SYS, "out of memory");
	}
	f->rec = rec;
	f->rec_size = (uint32_t)size;
	f->nlabels = (uint32_t)s->nlabels;
	for (size_t i = 0; i < s->nlabels; i++)
		if (!(f->label_names[i] = shmet__strdup(s->label_names[i]))) {
			shmet__free_family(f);
			return shmet__err(SHMET_E_SYS, "out of memory");
		}
	if (nb)
		memcpy(f->bounds, bounds, nb * sizeof(double));
	f->type = s->type;
	f->mode = s->type == SHMET_GAUGE ? s->gauge_mode : SHMET_GAUGE_SUM;
	f->nbuckets = (uint32_t)nb;
	if (sk.count && !(f->sk = shmet__sketch_rt_new(sk.schema, sk.first, sk.count))) {
		shmet__free_family(f);
		return shmet__err(SHMET_E_SYS, "out of memory");
	}
	if (f->sk)
		f->sk->zero_threshold = sk.zero_threshold;
	f->exemplars = want.exemplars;
	f->internal = (unsigned)shmet__overflow_registering;
	f->reg_off = reg_off;
	f->limit = f->internal ? SHMET_SERIES_UNLIMITED : s->series_limit ? s->series_limit : shmet__st.series_limit;
	unsigned char *dst = shmet__reserve(size, 0, NULL);
	if (!dst) {
		shmet__free_family(f);
		shmet__notice_full();
		return shmet__err(SHMET_E_REGION_FULL, "no room for family \"%s\" in region %d (%llu bytes)", name,
				  shmet__st.region, (unsigned long long)shmet__st.region_size);
	}
	memcpy(dst, rec, size);
	f->rec_off = shmet__st.adopt_rec ? shmet__st.adopt_rec : (uint32_t)(dst - shmet__base);
	shmet__publish(size, 0);
	f->id = ++shmet__st.next_family_id;
	f->next = shmet__st.families;
	shmet__st.families = f;
	*out = f;
	return SHMET_OK;
}

int shmet_register(const struct shmet_family_spec *spec, shmet_family **out)
{
	if (!out)
		return shmet__err(SHMET_E_INVALID_ARG, "no place for the family");
	*out = NULL;
	pthread_mutex_lock(&shmet__st.mu);
	int rc = shmet__register_locked(spec, out);
	pthread_mutex_unlock(&shmet__st.mu);
	return rc;
}

int shmet_counter_register(shmet_family **out, const char *name, const char *help, size_t nlabels,
			   const char *const *label_names)
{
	struct shmet_family_spec s;
	memset(&s, 0, sizeof s);
	s.type = SHMET_COUNTER, s.name = name, s.help = help, s.nlabels = nlabels, s.label_names = label_names;
	return shmet_register(&s, out);
}

int shmet_gauge_register(shmet_family **out, const char *name, const char *help, enum shmet_gauge_mode mode,
			 size_t nlabels, const char *const *label_names)
{
	struct shmet_family_spec s;
	memset(&s, 0, sizeof s);
	s.type = SHMET_GAUGE, s.name = name, s.help = help, s.nlabels = nlabels, s.label_names = label_names;
	s.gauge_mode = mode;
	return shmet_register(&s, out);
}

int shmet_histogram_register(shmet_family **out, const char *name, const char *help, const double *buckets,
			     size_t nbuckets, size_t nlabels, const char *const *label_names)
{
	struct shmet_family_spec s;
	memset(&s, 0, sizeof s);
	s.type = SHMET_HISTOGRAM, s.name = name, s.help = help, s.nlabels = nlabels, s.label_names = label_names;
	s.buckets = buckets, s.nbuckets = nbuckets;
	return shmet_register(&s, out);
}

int shmet_summary_register(shmet_family **out, const char *name, const char *help, size_t nlabels,
			   const char *const *label_names)
{
	struct shmet_family_spec s;
	memset(&s, 0, sizeof s);
	s.type = SHMET_SUMMARY, s.name = name, s.help = help, s.nlabels = nlabels, s.label_names = label_names;
	return shmet_register(&s, out);
}

int shmet_histogram_register_native(shmet_family **out, const char *name, const char *help, const double *buckets,
				    size_t nbuckets, int schema, double zero_threshold, size_t nlabels,
				    const char *const *label_names)
{
	struct shmet_family_spec s;
	memset(&s, 0, sizeof s);
	s.type = SHMET_HISTOGRAM, s.name = name, s.help = help, s.nlabels = nlabels, s.label_names = label_names;
	s.buckets = buckets, s.nbuckets = nbuckets;
	s.native = true, s.native_schema = schema, s.native_zero_threshold = zero_threshold;
	return shmet_register(&s, out);
}

int shmet_summary_register_quantiles(shmet_family **out, const char *name, const char *help, double rel_error,
				     double min, double max, size_t nlabels, const char *const *label_names)
{
	struct shmet_family_spec s;
	memset(&s, 0, sizeof s);
	s.type = SHMET_SUMMARY, s.name = name, s.help = help, s.nlabels = nlabels, s.label_names = label_names;
	s.quantile_error = rel_error, s.quantile_min = min, s.quantile_max = max;
	return shmet_register(&s, out);
}

static uint64_t shmet__hash(uint32_t fam_id, const char *const *values, size_t *lens, uint32_t n)
{
	uint64_t h = 0xcbf29ce484222325ull ^ fam_id;
	for (uint32_t i = 0; i < n; i++) {
		const unsigned char *s = (const unsigned char *)values[i];
		size_t k = 0;
		uint64_t x = 0;
		/* rotate-xor: a 2-cycle chain per byte where FNV's multiply
		 * took 4; one multiply per value mixes it into h.  Equal
		 * hashes are still compared byte for byte in shmet__find. */
		for (; s[k]; k++)
			x = (x << 7 | x >> 57) ^ s[k];
		lens[i] = k;
		/* the length keeps ("ab","c") and ("a","bc") apart */
		h = (h ^ x ^ ((uint64_t)k << 48)) * 0x9fb21c651e98df25ull;
		h ^= h >> 29;
	}
	return h;
}

static struct shmet__node *shmet__find(const shmet_family *f, uint64_t h, const char *const *values,
				       const size_t *lens)
{
	/* acquire: pairs with the release that published the node, so its
	 * fields are complete. */
	struct shmet__node *n = __atomic_load_n(&shmet__st.table[h & shmet__st.table_mask], __ATOMIC_ACQUIRE);
	for (; n; n = __atomic_load_n(&n->next, __ATOMIC_ACQUIRE)) {
		if (n->hash != h || n->fam != f)
			continue;
		uint32_t i = 0;
		while (i < n->nvalues && n->lens[i] == lens[i] && memcmp(n->values[i], values[i], lens[i]) == 0)
			i++;
		if (i == n->nvalues)
			return n;
	}
	return NULL;
}

/* A SERIES record's size before alignment: header, then each value with
 * its 2-byte length. */
static size_t shmet__series_rec_size(uint32_t nvalues, const size_t *lens)
{
	size_t size = sizeof(struct shmet_rec_series);
	for (uint32_t i = 0; i < nvalues; i++)
		size += 2 + lens[i];
	return size;
}

size_t shmet__series_bytes(unsigned type, uint32_t nbuckets, uint32_t nvalues, const char *const *values)
{
	size_t lens[SHMET_MAX_LABELS];
	for (uint32_t i = 0; i < nvalues && i < SHMET_MAX_LABELS; i++)
		lens[i] = strlen(values[i]);
	return (size_t)shmet_align8(shmet__series_rec_size(nvalues < SHMET_MAX_LABELS ? nvalues : SHMET_MAX_LABELS, lens)) +
	       shmet_cell_size(type, nbuckets);
}

/* Every value SHMET_OVERFLOW_VALUE: the family's overflow series. */
static int shmet__is_overflow(const shmet_family *f, const char *const *values, const size_t *lens)
{
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (lens[i] != sizeof SHMET_OVERFLOW_VALUE - 1 || memcmp(values[i], SHMET_OVERFLOW_VALUE, lens[i]) != 0)
			return 0;
	return f->nlabels > 0;
}

/* The label values a record will hold: each short enough and UTF-8. */
static int shmet__check_values(const shmet_family *f, const char *const *values, const size_t *lens, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		if (lens[i] > SHMET_MAX_VALUE_LEN)
			return shmet__err(SHMET_E_TOO_LONG, "\"%s\": label value longer than %u bytes", f->name,
					  SHMET_MAX_VALUE_LEN);
		if (!shmet_valid_utf8(values[i], lens[i]))
			return shmet__err(SHMET_E_INVALID_UTF8, "\"%s\": value of label \"%s\" is not valid UTF-8", f->name,
					  f->label_names[i]);
	}
	return SHMET_OK;
}

/* SET MARK (shmetrics_layout.h): a MAX or MIN gauge cell of the process's
 * region starts as set to its unset bits, before the record (or directory)
 * that names it is published. */
static void shmet__mark_unset(const shmet_family *f, uint32_t cell_off)
{
	if (shmet__st.adopt_rec || f->type != SHMET_GAUGE || (f->mode != SHMET_GAUGE_MAX && f->mode != SHMET_GAUGE_MIN))
		return; /* an adopted series' cells hold its values: adoption writes nothing */
	uint64_t *cell = (uint64_t *)(void *)(shmet__base + cell_off);
	/* relaxed: the publication (a release store of rg_dir_end) orders both */
	__atomic_store_n(cell, shmet__gauge_unset_bits((uint32_t)f->mode), __ATOMIC_RELAXED);
	__atomic_store_n(cell + 1, 1, __ATOMIC_RELAXED);
}

static int shmet__create_series_locked(shmet_family *f, uint64_t h, const char *const *values,
				       const size_t *lens, uint32_t *off);

/* SERIES LIMIT: a new label set of f past its limit.  *off := the overflow
 * series, and *routed := the cells of f's SHMET_OVERFLOW_FAMILY series (0
 * when it could not be made), which the caller counts once it has let the
 * mutex go (a counter cell is its thread's own: see WRITING THREADS). */
static int shmet__overflow_locked(shmet_family *f, uint32_t *off, uint32_t *routed)
{
	const char *ov[SHMET_MAX_LABELS];
	size_t ol[SHMET_MAX_LABELS];
	for (uint32_t i = 0; i < f->nlabels; i++)
		ov[i] = SHMET_OVERFLOW_VALUE;
	int rc = shmet__create_series_locked(f, shmet__hash(f->id, ov, ol, f->nlabels), ov, ol, off);
	if (rc != SHMET_OK)
		return rc;
	if (!f->routed_off) {
		if (!shmet__st.overflow_family) {
			static const char *const label[] = {"family"};
			struct shmet_family_spec spec;
			memset(&spec, 0, sizeof spec);
			spec.type = SHMET_COUNTER;
			spec.name = SHMET_OVERFLOW_FAMILY;
			spec.help = "Lookups of a new label set past the family's series limit, each routed to its overflow "
				    "series (all label values " SHMET_OVERFLOW_VALUE ").";
			spec.nlabels = 1;
			spec.label_names = label;
			shmet__overflow_registering = 1;
			shmet__register_locked(&spec, &shmet__st.overflow_family);
			shmet__overflow_registering = 0;
		}
		shmet_family *of = shmet__st.overflow_family;
		if (of) {
			const char *v[1] = {f->name};
			size_t l[1];
			shmet__create_series_locked(of, shmet__hash(of->id, v, l, 1), v, l, &f->routed_off);
		}
	}
	*routed = f->routed_off;
	shmet__notice(&shmet__st.said_overflow,
		      "\"%s\" reached its limit of %u series in this process: new label sets go to its overflow "
		      "series (values \"" SHMET_OVERFLOW_VALUE "\"), counted in " SHMET_OVERFLOW_FAMILY,
		      f->name, f->limit);
	return SHMET_OK;
}

static int shmet__create_series_locked(shmet_family *f, uint64_t h, const char *const *values,
				       const size_t *lens, uint32_t *off)
{
	struct shmet__node *n = shmet__find(f, h, values, lens);
	if (n) {
		*off = n->off;
		return SHMET_OK;
	}
	int overflow = shmet__is_overflow(f, values, lens);
	int rc = shmet__check_values(f, values, lens, f->nlabels);
	if (rc != SHMET_OK)
		return rc;
	size_t size = shmet__series_rec_size(f->nlabels, lens);
	if (shmet__st.region < 0 && shmet__init_locked(NULL) != SHMET_OK)
		return SHMET_E_SEGMENT_FULL;
	n = (struct shmet__node *)calloc(1, sizeof *n);
	if (!n)
		return shmet__err(SHMET_E_SYS, "out of memory");
	for (uint32_t i = 0; i < f->nlabels; i++) {
		n->values[i] = (char *)malloc(lens[i] + 1);
		if (!n->values[i]) {
			while (i--)
				free(n->values[i]);
			free(n);
			return shmet__err(SHMET_E_SYS, "out of memory");
		}
		memcpy(n->values[i], values[i], lens[i] + 1);
		n->lens[i] = lens[i];
	}
	uint32_t cell_off = 0;
	unsigned char *rec = shmet__reserve(
		size, shmet_cell_size_ex(f->type, f->nbuckets, f->sk ? f->sk->count : 0, f->exemplars, 0), &cell_off);
	if (!rec) {
		for (uint32_t i = 0; i < f->nlabels; i++)
			free(n->values[i]);
		free(n);
		shmet__notice_full();
		return shmet__err(SHMET_E_REGION_FULL, "no room for a series of \"%s\" in region %d (%llu bytes)",
				  f->name, shmet__st.region, (unsigned long long)shmet__st.region_size);
	}
	struct shmet_rec_series sr;
	memset(&sr, 0, sizeof sr);
	sr.ser_rec.rec_size = (uint32_t)shmet_align8(size);
	sr.ser_rec.rec_kind = SHMET_REC_SERIES;
	sr.ser_rec.rec_flags = overflow ? (uint16_t)SHMET_SER_OVERFLOW : (uint16_t)0;
	sr.ser_family_off = f->rec_off;
	sr.ser_cell_off = cell_off;
	sr.ser_nvalues = (uint16_t)f->nlabels;
	memcpy(rec, &sr, sizeof sr);
	unsigned char *p = rec + sizeof sr;
	for (uint32_t i = 0; i < f->nlabels; i++)
		p = shmet__put_str(p, values[i], lens[i], 1);
	shmet__mark_unset(f, cell_off);
	shmet__publish(size, 1);
	if (!overflow)
		f->nseries++;
	n->hash = h;
	n->fam = f;
	n->off = cell_off;
	n->nvalues = f->nlabels;
	struct shmet__node **head = &shmet__st.table[h & shmet__st.table_mask];
	n->next = *head;
	/* release: the node's fields before the pointer that publishes it. */
	__atomic_store_n(head, n, __ATOMIC_RELEASE);
	*off = cell_off;
	return SHMET_OK;
}

/* Most lookups name a series with the very strings (pointers) an earlier
 * one used: label values are literals, or interned by the caller.  A slot
 * picked by (family, value pointers) remembers the node found then, and
 * the next lookup compares its values with the node's in full (strcmp)
 * before it trusts it: the pointers only pick, the bytes decide, so a
 * buffer reused for another value is never mistaken for the old one.
 * That skips the hash over every byte and the bucket walk.  Slots are
 * shared by all threads: a slot overwritten meanwhile costs a slow
 * lookup, never a wrong one (nodes are immutable and never freed). */
#define SHMET__PCACHE_BITS 12
static struct shmet__node *shmet__pcache[1u << SHMET__PCACHE_BITS];

static size_t shmet__pslot(const shmet_family *f, const char *const *values, uint32_t n)
{
	uint64_t h = (uint64_t)(uintptr_t)f * 0x9e3779b97f4a7c15ull;
	for (uint32_t i = 0; i < n; i++)
		h = (h ^ (uint64_t)(uintptr_t)values[i]) * 0x9fb21c651e98df25ull;
	return (size_t)(h >> (64 - SHMET__PCACHE_BITS));
}

int shmet_series_lookup(shmet_family *f, const char *const *values, uint32_t *off)
{
	*off = 0;
	if (!f)
		return shmet__err(SHMET_E_INVALID_ARG, "no family (its registration failed)");
	for (uint32_t i = 0; i < f->nlabels; i++)
		if (!values || !values[i])
			return shmet__err(SHMET_E_LABEL_COUNT, "\"%s\" needs %u label values", f->name, f->nlabels);
	size_t slot = shmet__pslot(f, values, f->nlabels);
	/* acquire: pairs with the release below, so the node's fields are complete */
	struct shmet__node *n = __atomic_load_n(&shmet__pcache[slot], __ATOMIC_ACQUIRE);
	if (n && n->fam == f) {
		uint32_t i = 0;
		while (i < f->nlabels && strcmp(n->values[i], values[i]) == 0)
			i++;
		if (i == f->nlabels) {
			*off = n->off;
			return SHMET_OK;
		}
	}
	size_t lens[SHMET_MAX_LABELS];
	uint64_t h = shmet__hash(f->id, values, lens, f->nlabels);
	n = shmet__find(f, h, values, lens);
	if (!n) {
		uint32_t routed = 0;
		int rc, over = 0;
		pthread_mutex_lock(&shmet__st.mu);
		/* past the limit only a label set not seen yet: its node is absent
		 * (checked again under the mutex, which orders the creators) */
		if (f->nseries >= f->limit && !shmet__st.adopt_rec && !shmet__find(f, h, values, lens) &&
		    !shmet__is_overflow(f, values, lens)) {
			over = 1;
			rc = shmet__overflow_locked(f, off, &routed);
		} else {
			rc = shmet__create_series_locked(f, h, values, lens, off);
		}
		pthread_mutex_unlock(&shmet__st.mu);
		if (rc != SHMET_OK)
			return rc;
		if (over) {
			/* not remembered in the pointer cache: every lookup of a label
			 * set past the limit is routed, and counted, anew */
			if (routed)
				shmet_counter_inc((shmet_counter){routed, 0});
			return SHMET_OK;
		}
		n = shmet__find(f, h, values, lens);
		if (!n)
			return SHMET_OK; /* an adopted series' scratch lookup: nothing to remember */
	}
	/* release: the node (published with release) before its pointer here */
	__atomic_store_n(&shmet__pcache[slot], n, __ATOMIC_RELEASE);
	*off = n->off;
	return SHMET_OK;
}

/* Append a REMOVE record to the registry (REMOVAL in shmetrics_layout.h). */
static int shmet__remove(shmet_family *f, const char *const *values, int whole)
{
	if (!f)
		return shmet__err(SHMET_E_INVALID_ARG, "no family (its registration failed)");
	if (f->type == SHMET_GAUGE && f->mode == SHMET_GAUGE_PER_WORKER)
		return shmet__err(SHMET_E_INVALID_ARG, "\"%s\": a per-worker gauge leaves with its process; it cannot be removed",
				  f->name);
	uint32_t nv = whole ? 0 : f->nlabels;
	size_t lens[SHMET_MAX_LABELS], size = sizeof(struct shmet_rec_remove);
	for (uint32_t i = 0; i < nv; i++) {
		if (!values || !values[i])
			return shmet__err(SHMET_E_LABEL_COUNT, "\"%s\" needs %u label values", f->name, f->nlabels);
		lens[i] = strlen(values[i]);
		size += 2 + lens[i];
	}
	int bad = shmet__check_values(f, values, lens, nv);
	if (bad != SHMET_OK)
		return bad;
	size = (size_t)shmet_align8(size);
	unsigned char *rec = (unsigned char *)calloc(1, size);
	if (!rec)
		return shmet__err(SHMET_E_SYS, "out of memory");
	struct shmet_rec_remove rm;
	memset(&rm, 0, sizeof rm);
	rm.rm_rec.rec_size = (uint32_t)size;
	rm.rm_rec.rec_kind = SHMET_REC_REMOVE;
	rm.rm_rec.rec_flags = whole ? (uint16_t)SHMET_REMOVE_FAMILY : (uint16_t)0;
	rm.rm_family_off = f->reg_off;
	rm.rm_nvalues = (uint16_t)nv;
	rm.rm_stamp_ns = shmet__now_ns(CLOCK_REALTIME);
	memcpy(rec, &rm, sizeof rm);
	unsigned char *p = rec + sizeof rm;
	for (uint32_t i = 0; i < nv; i++)
		p = shmet__put_str(p, values[i], lens[i], 1);
	pthread_mutex_lock(&shmet__st.mu);
	struct shmet_seg_map *m = &shmet__st.map;
	int rc = m->base ? shmet__registry_lock(m)
			 : shmet__err(SHMET_E_INVALID_ARG, "not attached to a segment (register a family first)");
	if (rc == SHMET_OK) {
		unsigned char *base = m->base + m->registry_off;
		struct shmet_region_header *rh = (struct shmet_region_header *)(void *)base;
		/* acquire: pairs with the release of whoever appended last */
		uint64_t end = __atomic_load_n(&rh->rg_dir_end, __ATOMIC_ACQUIRE);
		if (end < sizeof *rh || end > m->registry_size || end % 8) {
			rc = shmet__err(SHMET_E_CORRUPT, "%s: the family registry is damaged (end %llu)", shmet__st.path,
					(unsigned long long)end);
		} else if (m->registry_size - end < size) {
			rc = shmet__err(SHMET_E_REGISTRY_FULL, "%s: no room for a removal of \"%s\" in the family registry",
					shmet__st.path, f->name);
		} else {
			memcpy(base + end, rec, size);
			/* release: the record's bytes before the end that exposes them */
			__atomic_store_n(&rh->rg_dir_end, end + size, __ATOMIC_RELEASE);
		}
		shmet__ofd_lock(m->fd, SHMET_REGISTRY_LOCK_OFF, F_UNLCK, F_OFD_SETLK);
	}
	pthread_mutex_unlock(&shmet__st.mu);
	free(rec);
	return rc;
}

int shmet_series_remove(shmet_family *f, const char *const *values) { return shmet__remove(f, values, 0); }

int shmet_family_clear(shmet_family *f) { return shmet__remove(f, NULL, 1); }

static uint32_t shmet__typed_off(shmet_family *f, enum shmet_type t, const char *const *values)
{
	uint32_t off = 0;
	if (f && f->type != t) {
		shmet__err(SHMET_E_TYPE_CLASH, "\"%s\" is not of the requested type", f->name);
		return 0;
	}
	shmet_series_lookup(f, values, &off);
	return off;
}

shmet_counter shmet_counter_get(shmet_family *f, const char *const *values)
{
	shmet_counter c = {shmet__typed_off(f, SHMET_COUNTER, values), 0};
	if (c.off && f->exemplars)
		c.ex = c.off + shmet_cell_size(SHMET_COUNTER, 0);
	return c;
}

shmet_gauge shmet_gauge_get(shmet_family *f, const char *const *values)
{
	uint32_t mode = f ? (uint32_t)f->mode : 0u;
	shmet_gauge g = {shmet__typed_off(f, SHMET_GAUGE, values), mode, shmet__stamp_kind(mode)};
	return g;
}

shmet_histogram shmet_histogram_get(shmet_family *f, const char *const *values)
{
	shmet_histogram h = {shmet__typed_off(f, SHMET_HISTOGRAM, values), 0, NULL, NULL, 0};
	if (h.off) {
		h.nbuckets = f->nbuckets;
		h.bounds = f->bounds;
		h.sk = f->sk;
		if (f->exemplars)
			h.ex = h.off + shmet_cell_size_sk(SHMET_HISTOGRAM, f->nbuckets, f->sk ? f->sk->count : 0, 0);
	}
	return h;
}

shmet_summary shmet_summary_get(shmet_family *f, const char *const *values)
{
	shmet_summary s = {shmet__typed_off(f, SHMET_SUMMARY, values), NULL};
	if (s.off)
		s.sk = f->sk;
	return s;
}

/* off = the series of f (which must be of type t) named by f's nlabels
 * varargs.  A macro, not a helper taking a va_list: GCC does not inline
 * that, and the extra call is a tenth of a lookup. */
#define SHMET__LABELS_OFF(f, t, off)                                                                 \
	do {                                                                                         \
		if (SHMET__UNLIKELY(!(f) || (f)->type != (t))) {                                     \
			(off) = shmet__typed_off((f), (t), NULL); /* sets the reason */              \
		} else {                                                                             \
			const char *values_[SHMET_MAX_LABELS];                                       \
			va_list ap_;                                                                 \
			va_start(ap_, f);                                                            \
			for (uint32_t i_ = 0; i_ < (f)->nlabels; i_++)                               \
				values_[i_] = va_arg(ap_, const char *);                             \
			va_end(ap_);                                                                 \
			shmet_series_lookup((f), values_, &(off));                                   \
		}                                                                                    \
	} while (0)

shmet_counter shmet_counter_labels(shmet_family *f, ...)
{
	shmet_counter c = {0, 0};
	SHMET__LABELS_OFF(f, SHMET_COUNTER, c.off);
	if (c.off && f->exemplars)
		c.ex = c.off + shmet_cell_size(SHMET_COUNTER, 0);
	return c;
}

shmet_gauge shmet_gauge_labels(shmet_family *f, ...)
{
	uint32_t mode = f ? (uint32_t)f->mode : 0u;
	shmet_gauge g = {0, mode, shmet__stamp_kind(mode)};
	SHMET__LABELS_OFF(f, SHMET_GAUGE, g.off);
	return g;
}

shmet_histogram shmet_histogram_labels(shmet_family *f, ...)
{
	shmet_histogram h = {0, 0, NULL, NULL, 0};
	SHMET__LABELS_OFF(f, SHMET_HISTOGRAM, h.off);
	if (h.off) {
		h.nbuckets = f->nbuckets;
		h.bounds = f->bounds;
		h.sk = f->sk;
		if (f->exemplars)
			h.ex = h.off + shmet_cell_size_sk(SHMET_HISTOGRAM, f->nbuckets, f->sk ? f->sk->count : 0, 0);
	}
	return h;
}

shmet_summary shmet_summary_labels(shmet_family *f, ...)
{
	shmet_summary s = {0, NULL};
	SHMET__LABELS_OFF(f, SHMET_SUMMARY, s.off);
	if (s.off)
		s.sk = f->sk;
	return s;
}

/* The largest record a registration writes: a family with every limit
 * reached, or a series with every label value at its longest. */
#define SHMET__MAX_REC                                                                                  \
	(sizeof(struct shmet_rec_series) + SHMET_MAX_LABELS * (2 + SHMET_MAX_VALUE_LEN) +                \
	 sizeof(struct shmet_rec_family) + 8 * SHMET_MAX_BUCKETS + SHMET_MAX_NAME_LEN + SHMET_MAX_HELP_LEN + \
	 SHMET_MAX_LABELS * (2 + SHMET_MAX_NAME_LEN) + 8 + SHMET_SKETCH_REC_MAX)

/* Run a registration (family, or series of family f) that finds its record
 * at off already: it writes into a scratch buffer and publishes nothing. */
static int shmet__adopt_locked_call(uint32_t off, const struct shmet_family_spec *spec, shmet_family **out,
				    shmet_family *f, const char *const *values)
{
	if (shmet__st.region < 0)
		return shmet__err(SHMET_E_INVALID_ARG, "no adopted region");
	if (!shmet__st.adopt_buf && !(shmet__st.adopt_buf = (unsigned char *)malloc(SHMET__MAX_REC)))
		return shmet__err(SHMET_E_SYS, "out of memory");
	int rc;
	shmet__st.adopt_rec = off;
	if (spec) {
		rc = shmet__register_locked(spec, out);
	} else {
		size_t lens[SHMET_MAX_LABELS];
		uint32_t got = 0;
		uint64_t h = shmet__hash(f->id, values, lens, f->nlabels);
		rc = shmet__create_series_locked(f, h, values, lens, &got);
	}
	shmet__st.adopt_rec = 0;
	return rc;
}

int shmet__adopt_family(const struct shmet_family_spec *spec, uint32_t rec_off, shmet_family **out)
{
	if (!out || !spec || !rec_off)
		return shmet__err(SHMET_E_INVALID_ARG, "no family, place for it or record");
	*out = NULL;
	pthread_mutex_lock(&shmet__st.mu);
	int rc = shmet__adopt_locked_call(rec_off, spec, out, NULL, NULL);
	pthread_mutex_unlock(&shmet__st.mu);
	return rc;
}

int shmet__adopt_series(shmet_family *f, const char *const *values, uint32_t cell_off)
{
	if (!f || !cell_off || (f->nlabels && !values))
		return shmet__err(SHMET_E_INVALID_ARG, "no family, values or cells");
	pthread_mutex_lock(&shmet__st.mu);
	int rc = shmet__adopt_locked_call(cell_off, NULL, NULL, f, values);
	pthread_mutex_unlock(&shmet__st.mu);
	return rc;
}

shmet_counter shmet_counter_new(const char *name, const char *help)
{
	shmet_family *f = NULL;
	shmet_counter_register(&f, name, help, 0, NULL);
	return shmet_counter_get(f, NULL);
}

shmet_gauge shmet_gauge_new(const char *name, const char *help, enum shmet_gauge_mode mode)
{
	shmet_family *f = NULL;
	shmet_gauge_register(&f, name, help, mode, 0, NULL);
	return shmet_gauge_get(f, NULL);
}

#ifdef __cplusplus
}
#endif
#endif /* SHMETRICS_IMPLEMENTATION */
