/* collector.h — shmetricsd's state: the published view of the segment, the
 * updater that builds it, and the HTTP side that renders it.
 *
 * Threads and what they may touch:
 *   updater (one)     scans regions, folds dead ones, and keeps the index
 *                     (view.c): per region it reads only the directory
 *                     records appended since its last scan.  When what a
 *                     scrape would show changed, it publishes a new struct
 *                     view with a release store (view_publish) that shares
 *                     every unchanged family's series array with the old
 *                     one, lets waiting scrapes go (scans_published, under
 *                     wake_mu; when folded regions are to be freed, only
 *                     after they are, so the next worker finds them free),
 *                     waits a grace period (synchronize_rcu), then frees the
 *                     old view, what only it pointed to, and the folded
 *                     regions.
 *   HTTP threads      rcu_read_lock(); v = view_enter(c) (acquire load);
 *                     if view_current(c, v) (the region table still matches
 *                     the stamps v was built from: slot words, directory
 *                     ends, liveness), render from v at once, reading values
 *                     straight from the cells; otherwise ask the updater for
 *                     a scan and wait until its view is published, which
 *                     costs only the increment since.  So a scrape never
 *                     waits for a whole rescan, nor for another scrape's
 *                     render (the grace period comes after the wake-up).
 *                     Scrapes of one format that arrive while a render of it
 *                     begun less than SHMET_SHARE_WINDOW_NS ago runs wait
 *                     for that render and copy it (share_mu).  They never
 *                     write the segment.
 * RCU flavour: urcu-bp, because libmicrohttpd creates its threads without a
 * hook where they could register.  We call liburcu's functions rather than
 * its inline versions (no _LGPL_SOURCE): the inline read lock touches a
 * reader slot that urcu-bp places below the alignment its type declares,
 * which UBSan reports in our code.
 */
#ifndef SHMET_COLLECTOR_H
#define SHMET_COLLECTOR_H

#include "expfmt.h"
#include "keymap.h"
#include "log.h"
#include "shmetrics_reader.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

/* One process's cells for a series. */
struct view_ref {
	const uint64_t *cells;
	bool live;
	bool retired; /* cells of a retired half: the float total has three components */
	bool baseline; /* a removal's baseline (REMOVAL in shmetrics_layout.h): subtracted */
	int32_t region; /* whose cells: a region's index, or -1 for the retired totals */
};

struct view_series {
	const char *labels; /* pre-escaped `a="x",b="y"` (empty values left out), no braces */
	uint32_t labels_len;
	uint32_t nrefs;
	struct view_ref *refs;
	const char *const *values; /* raw label values, for the JSON API */
	const char *line;          /* `name{labels} `: a counter's or gauge's sample line up to its value */
	uint32_t line_len;
};

struct view_family {
	const char *name, *help;
	enum shmet_type type;
	enum shmet_gauge_mode mode;
	uint32_t nlabels; /* including "worker" for per-worker gauges */
	const char *const *label_names;
	uint32_t nbuckets;
	const double *bounds;
	const char *const *bound_text; /* le="..." values, OM canonical, +Inf last */
	uint32_t nseries;
	struct view_series *series; /* sorted by label values */
	const struct shmet_sketch *sketch; /* summaries with quantiles (sketchwin.c), else NULL */
	unsigned exemplars; /* counters, histograms: exemplar slots in live cells (exemplar.c) */
};

struct view_stats {
	uint32_t regions_live, regions_dead, regions_free;
	uint32_t regions_history; /* the collector's dashboard history (SHMET_SLOT_HISTORY), in none of the above */
	uint64_t series, bytes_used, bytes_total, dropped;
	uint64_t folds; /* regions folded into the retired totals, ever */
};

/* What the index had read of a region when a view was published: the slot
 * word (state and generation), the directory end, and liveness. */
struct view_stamp {
	uint64_t state_gen, dir_end, alive;
};

/* A view is one allocation (this, the families array, the stamps); the
 * series arrays, refs and strings it points to belong to the collector's
 * index, which shares them between views and frees them only after a
 * grace period in which no view points to them (view.c). */
struct view {
	uint32_t nfamilies;
	struct view_family *families; /* sorted by name */
	struct view_stats stats;
	uint64_t built_ns;
	uint32_t nstamps;
	struct view_stamp *stamps; /* per region */
	unsigned retired_half;     /* the retired half it reads, and its folds */
	uint64_t retired_folds;
	struct vindex *own; /* view_build's own index, freed with the view; NULL for the collector's */
};

struct collector_config {
	const char *segment;
	const char *listen_host;
	int listen_port;
	uint32_t regions;
	uint64_t region_size;
	uint64_t retired_size; /* bytes per retired half, if this process creates the segment; 0: default */
	uint32_t series_limit; /* sh_series_limit of a segment this process creates; 0: $SHMETRICS_SERIES_LIMIT, 2000 */
	double retired_ttl;    /* seconds; 0: retired-only series are kept for ever */
	double scan_interval;
	const char *push_token_file;
	uint32_t push_max_batch;
	uint32_t push_series_limit;
	size_t push_body_limit;
	double push_rate; /* requests per second per client */
	double push_burst;
	bool allow_owner; /* --segment-owner: also accept a segment owned by owner_uid */
	uid_t owner_uid;
	/* HTTP limits (http.c); 0 takes the default */
	uint32_t http_max_connections; /* admitted at once, all clients */
	uint32_t http_max_per_client;  /* admitted at once from one address */
	unsigned http_idle_timeout;    /* seconds without a byte either way */
	unsigned http_request_timeout; /* seconds for a whole request and its answer */
	/* the dashboard's stream (stream.c); 0 takes the default */
	double stream_interval;      /* seconds between frames */
	uint32_t stream_max_clients; /* streams served at once */
	/* exporter conventions (listen.c, webconfig.c); all optional */
	struct http_listener *listeners; /* bound by the caller; none: listen_host:listen_port */
	unsigned nlisteners;
	const char *telemetry_path;  /* NULL: /metrics */
	struct web_config *web;      /* --web.config.file, or NULL */
	unsigned no_writer_scans;    /* warn when no writer attached after this many scans; 0: never */
	bool host_metrics;           /* --collector.host */
	unsigned segment_mode;       /* --segment-mode: of a segment this process creates; 0: 0600 */
	bool set_group;              /* --segment-group: ... and its group */
	gid_t segment_group;
};

struct collector {
	struct collector_config cfg;
	struct shmet_segment seg;
	struct view *view; /* RCU-protected: see view_enter */
	char grace;        /* a TSan sync object for the grace period */
	pthread_t updater;
	volatile sig_atomic_t stop;
	pthread_mutex_t wake_mu; /* guards the four fields below */
	pthread_cond_t wake;     /* updater: scan now */
	pthread_cond_t scanned;  /* scrapers: a scan finished */
	uint64_t scans;          /* scans completed */
	bool scanning, wake_requested;
	/* statistics, relaxed atomics: written by one thread, read by scrapes */
	uint64_t corrupt_records; /* distinct bad records seen (each is re-met at every rebuild) */
	uint64_t conflicts;       /* distinct series skipped for a family clash */
	uint32_t fold_skipped;    /* dead regions the last fold left, the retired area being full */
	int push_region;          /* a dead push region of an earlier collector this one took over, or -1 */
	int push_lock_fd;         /* the descriptor holding push_region's liveness lock */
	struct keymap problems;   /* updater only: (kind, region, generation, offset) already counted */
	struct shmet_registry registry; /* updater only: the family registry read so far */
	bool flip_unpublished;    /* updater only: a fold flipped; its view is not published yet */
	bool fold_blocked;        /* relaxed: the active retired half is damaged, folding stopped */
	uint64_t folds_inexact;   /* relaxed: float totals a fold had to round */
	uint64_t removals_applied; /* relaxed: REMOVE records applied by this process's rewrites */
	uint64_t rewrite_next_ns;  /* updater only: the next retention check (CLOCK_MONOTONIC) */
	bool rewrite_failed;       /* updater only: the last rewrite's failure was logged */
	uint32_t removals_pending; /* relaxed: REMOVE records in the registry not applied yet (a
				      rewrite that cannot run leaves them here, shown as a gauge) */
	uint64_t writes_dropped;  /* relaxed: written by each scan, read by scrapes */
	uint64_t registry_corrupt_logged;
	struct vindex *building;  /* the index view_build is filling, for view_build_abandon */
	uint64_t last_scan_ns;
	uint64_t last_scrape_ns; /* duration of the last /metrics render */
	/* Truncation (see collector_check_size): the file's size at the last
	 * check, and how often it was found shorter than the mapping. */
	uint64_t file_size;   /* relaxed: written by the updater, read by /-/ready */
	uint64_t truncations; /* relaxed, updater only writes */
	bool truncated;       /* updater only */
	struct api *api;         /* push endpoints and dashboard history (api.c) */
	struct MHD_Daemon *httpd;
	struct http_guard *guard; /* http.c: connections, admission, deadlines */
	int bound_port;
	struct stream *stream;   /* stream.c: the dashboard's frames and their clients */
	struct history *history; /* history.c: the frames kept in the segment, or NULL */
	struct MHD_Daemon *httpds[8]; /* one per listener; httpd is httpds[0] */
	unsigned nhttpd;
	struct segment_watch *watch;  /* watch.c: the segment's path, its writers */
	struct sketchwin *sketchwin; /* summaries' quantile windows (sketchwin.c) */
	struct vindex *index;     /* updater only: what the segment holds, read incrementally (view.c) */
	uint64_t scan_no;         /* wake_mu: the scan running or last run */
	uint64_t scans_published; /* wake_mu: the last scan whose view readers can load */
	/* Renders shared by concurrent scrapes (collector_render), per format. */
	pthread_mutex_t share_mu; /* guards share[] */
	pthread_cond_t share_done;
	struct render_share {
		bool rendering;       /* a scrape is rendering this format now */
		uint64_t started_ns;  /* when it started (CLOCK_MONOTONIC) */
		uint64_t round;       /* renders finished */
		bool ok;              /* the last one could read the segment */
		bool shared;          /* body holds what it rendered */
		uint32_t waiters;     /* scrapes waiting for the render running now */
		size_t last_len;      /* bytes the last render wrote */
		shmet_buf body;
	} share[2];
};

/* ---- summary quantiles over a sliding window (sketchwin.c) ----
 * The updater snapshots each sketch's merged counts every max_age /
 * age_buckets and keeps the last age_buckets snapshots; a scrape's quantiles
 * describe the counts now minus the oldest snapshot kept.  A series first
 * seen starts from zero.  _count and _sum stay cumulative. */
int sketchwin_open(struct collector *c);
void sketchwin_close(struct collector *c);
/* Updater: take the snapshots due at now_ns (any clock, only differences count). */
void sketchwin_tick(struct collector *c, const struct view *v, uint64_t now_ns);
/* The quantiles (f->sketch->objectives) of series s over its window, into
 * out; false when some cells could not be read (truncated segment). */
bool sketchwin_quantiles(struct collector *c, const struct view_family *f, const struct view_series *s, double *out);
/* The merged sketch counts (f->sketch->count + 2) of series s; false when
 * some cells could not be read. */
bool sketch_series_counts(const struct view_family *f, const struct view_series *s, uint64_t *acc);

/* Test-only: the next N view builds fail as if memory ran out. */
extern unsigned collector_test_fail_view_builds;

/* Build a view of the segment as it is now, from a fresh index of its own
 * (for tests and tools: the collector's scans use the index below). */
struct view *view_build(struct collector *c);
/* Free what a build left when a SIGBUS ended it (siglongjmp). */
void view_build_abandon(struct collector *c);
void view_free(struct view *v);

/* The collector's incremental index (updater thread only).
 * view_index_update reads what the segment gained or lost since the last
 * call and says whether a new view would differ; view_index_publish makes
 * that view (NULL when out of memory); after the new view is published and
 * a grace period has passed, view_index_collect frees what only older views
 * pointed to. */
bool view_index_update(struct collector *c);
struct view *view_index_publish(struct collector *c);
void view_index_collect(struct collector *c);
void view_index_free(struct collector *c);
/* Does v still hold everything the segment holds?  Reads only the region
 * table, the region headers and the liveness locks (any thread). */
bool view_current(const struct collector *c, const struct view *v);

/* Open the segment, take the collector lock, build the first view. */
int collector_open(struct collector *c, const struct collector_config *cfg, char *err, size_t errlen);
/* One updater step: fold, rebuild, publish, free.  Returns true if the view changed. */
bool collector_scan(struct collector *c);
int collector_start(struct collector *c, char *err, size_t errlen); /* updater + HTTP */
/* The push API could not use the region collector_open took back: let it be
 * folded like a dead worker's. */
void collector_release_push_region(struct collector *c);
void collector_stop(struct collector *c);
void collector_close(struct collector *c);

/* Wait (at most timeout_ms) for a scan that starts after this call, so
 * the view holds every series created before it.  False on timeout. */
bool collector_fresh_scan(struct collector *c, int timeout_ms);

/* The collector's own metrics, sorted by name (render.c). */
#define RENDER_OWN_VALUES 4 /* shmetricsd_regions: live, dead, free, history */
struct render_own {
	const char *name, *help;
	enum shmet_expo_type type;
	const char *label, *lvalue; /* at most one label per sample here */
	double values[RENDER_OWN_VALUES];
	const char *lvalues[RENDER_OWN_VALUES];
	int n; /* <= RENDER_OWN_VALUES */
};
#define RENDER_OWN_MAX 32
size_t render_own_metrics(struct collector *c, const struct view *v, struct render_own *out);

/* ---- exemplars (exemplar.c) ---- */
/* The latest exemplar of slot k (a counter's 0, a histogram's bucket) of
 * series s among its live regions; false when there is none. */
bool view_exemplar(const struct view_family *f, const struct view_series *s, uint32_t k, struct shmet_exemplar *out);
/* Replace the newline ending b by " # {labels} value [timestamp]\n". */
void exemplar_append_om(shmet_buf *b, const struct shmet_exemplar *e);

/* ---- protobuf exposition (protobuf.c) ---- */
#define SHMET_CONTENT_TYPE_PROTOBUF \
	"application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
/* Does Accept prefer delimited MetricFamily protobuf (q at least that of any
 * other range listed)?  Untrusted input: one pass, no allocation. */
bool protobuf_wanted(const char *accept);
/* Render every family (the collector's own too) as delimited MetricFamily
 * messages under a guard, as collector_render does for text. */
bool collector_render_protobuf(struct collector *c, shmet_buf *b);
/* Writes dropped so far, from the segment's counters now (any thread; the
 * result never goes below one returned before). */
uint64_t collector_writes_dropped(struct collector *c);

/* Render /metrics from the current view (caller holds rcu_read_lock). */
void render_metrics(struct collector *c, const struct view *v, shmet_buf *b, enum shmet_expo_format fmt);
/* Aggregate one series' refs.  False when some of its cells lie past the
 * end of a truncated segment and were left out (acc is then partial). */
/* The series' aggregate; false when it must not be shown: partly past a
 * truncated segment's end (a partial sum would read as a reset), or
 * removed with nothing added since (acc->gone; a gauge's has is false). */
bool view_series_agg(const struct view_family *f, const struct view_series *s, struct shmet_agg *acc);
/* Whether a segment family is exposed: not one of the collector's own
 * names, unless it is the writers' SHMET_OVERFLOW_FAMILY in its shape. */
bool view_family_exposed(const struct view_family *f);
bool view_family_is_overflow(const struct view_family *f);
/* SERIES LIMIT: SHMET_OVERFLOW_FAMILY{family=<family>} in v; -1: none. */
double view_overflowed(const struct view *v, const char *family);
/* Segment bytes the family's series take: records and cells, every copy. */
uint64_t view_family_bytes(const struct view_family *f);

/* Reading the view: view_enter/view_leave bracket a read-side critical
 * section; the pointer is loaded with acquire order (what rcu_dereference
 * promises).  The updater publishes with view_publish and frees an old view
 * only after view_grace_period.  Under ThreadSanitizer the grace period is
 * also told to TSan, which cannot see inside liburcu. */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define SHMET_TSAN_ACQUIRE(p) __tsan_acquire(p)
#define SHMET_TSAN_RELEASE(p) __tsan_release(p)
#else
#define SHMET_TSAN_ACQUIRE(p) ((void)(p))
#define SHMET_TSAN_RELEASE(p) ((void)(p))
#endif
const struct view *view_enter(struct collector *c);
void view_leave(struct collector *c);
void view_publish(struct collector *c, struct view *v);
void view_grace_period(struct collector *c);


/* ---- surviving a truncated segment ----
 *
 * Anyone who can write the segment file can also shrink it (truncate -s),
 * and touching a mapped page past the file's end raises SIGBUS.  The
 * collector survives it:
 *  - each scan fstat()s the file first; while it is shorter than the
 *    mapping, the scan touches nothing, keeps the last good view, logs and
 *    counts the event, and /-/ready answers 503 with the reason;
 *  - readers read only below collector_seg_end (the file's end, or the
 *    mapping's): cells past it are left out of /metrics and the API;
 *  - the sections that touch segment memory (the whole scan: fold, view
 *    build, free; the /metrics render) run under a guard: a SIGBUS there
 *    (the file shrank during the section) siglongjmp()s out of it, and the
 *    section is abandoned (the scan: nothing published; the view being
 *    built is freed, a fold's scratch, a key buffer and two hash maps, is
 *    not; the render: done again below the new end);
 *  - a SIGBUS on a segment page outside a guard (the API's reads, the push
 *    API's writer) gets a private zero page mapped over the faulting page,
 *    so the access completes; the file is mapped again over the whole
 *    segment once it has its size back.
 * Every SIGBUS caught is counted (shmetricsd_segment_bus_errors_total). */
extern uintptr_t collector_seg_end; /* relaxed loads; 0 before collector_open */
extern uint64_t collector_bus_errors;

/* May a reader touch [p, p + n) of the segment? */
static inline bool collector_readable(const void *p, size_t n)
{
	uintptr_t end = __atomic_load_n(&collector_seg_end, __ATOMIC_RELAXED);
	return end == 0 || ((uintptr_t)p <= end && end - (uintptr_t)p >= n);
}

/* Guard a section on this thread: a SIGBUS on segment memory inside it
 * returns from the sigsetjmp(jb, 1) that preceded collector_guard_enter
 * with 1.  Call collector_guard_leave on both paths.  Guards do not nest. */
void collector_guard_enter(sigjmp_buf *jb);
void collector_guard_leave(void);
/* The push API's writer maps the segment a second time (m: its mapping,
 * from shmetd_writer_map; NULL to forget it): cover that one too. */
void collector_guard_writer(const struct shmet_seg_map *m);
const struct shmet_seg_map *shmetd_writer_map(void); /* writer_impl.c */

/* fstat the segment: true when it is at least as large as the mapping.
 * Updates collector_seg_end; from the updater it also logs, counts, and maps
 * the file again after a zero page was patched in (updater = true). */
bool collector_check_size(struct collector *c, bool updater);

/* Render /metrics from the current view under a guard (HTTP threads).
 * False when the segment could not be read (the body is then empty).
 * A scrape that comes while another renders the same format, begun at
 * most SHMET_SHARE_WINDOW_NS before, waits for that render and takes a copy
 * of it: concurrent scrapes cost one render, and the values shown are at
 * most that much older than the scrape.  A scrape never takes a render
 * that had finished before it came, so a client that writes and then
 * scrapes always sees its writes. */
#define SHMET_SHARE_WINDOW_NS (UINT64_C(20) * 1000000u)
bool collector_render(struct collector *c, shmet_buf *b, enum shmet_expo_format fmt);

#endif
