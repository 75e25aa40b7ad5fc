/* The reader against hostile bytes: every bad offset, length, loop and text
 * in a real segment gives a clear error and a skipped record, never a crash,
 * a hang or a write outside where it belongs.
 *
 * Segments are made by a real writer (a forked master process, two forked
 * workers, one of them folded by a real fold) and then damaged in place.
 *
 * Besides the cmocka cases, this program makes segments for other tests:
 *   test_reader_hostile --make-segment PATH [KIND] [--region-size BYTES] [--stay]
 *       builds the segment described at build_segment(), damages it as KIND
 *       says (see the kinds[] table; default "clean") and exits, leaving every
 *       region dead; with --stay the master keeps its region alive, creates
 *       PATH.ready and waits for SIGTERM/SIGINT (tests/test_dump.sh).
 *   test_reader_hostile --make-seeds DIR
 *       writes the fuzz seed corpus for tests/fuzz_reader.c into DIR, one
 *       file per kind, in the chunk format that tests/fuzz_reader.c decodes.
 */
#include "tsupport.h"
#include "shmetrics.h"
#include "collector.h"

#include <errno.h>
#include <regex.h>
#include <sys/mman.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the segment every case starts from ---- */

#define HOSTILE_REGIONS 4
#define FUZZ_REGION_SIZE 8192 /* the geometry tests/fuzz_reader.c uses */

static const double latency_buckets[] = {0.1, 0.5, 1};

static void fold_and_free(const char *path)
{
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	static struct shmet_fold_result res;
	if (shmet_segment_open(path, 0, NULL, &s, err) != SHMET_OK) {
		fprintf(stderr, "fold: %s\n", err);
		_exit(20);
	}
	if (shmet_segment_lock_collector(&s, NULL) != SHMET_OK || shmet_fold_dead(&s, &res) != SHMET_OK) {
		fprintf(stderr, "fold: %s\n", res.err);
		_exit(21);
	}
	shmet_free_folded(&s, &res);
	shmet_segment_close(&s);
}

static void wait_ok(pid_t pid)
{
	if (pid < 0 || tsupport_wait(pid) != 0)
		_exit(22);
}

/* Runs in a fresh process (the writer keeps process-wide state).  Region 0
 * is this process's ("master"); worker A (forked) counts, dies and is folded
 * into the retired totals; worker B (forked) counts and dies, not folded.
 *
 * Aggregates: requests_total{GET,200} 15, {GET,404} 0, {POST,500} 1;
 * bytes_total 3.75; last_seen 200 (most recent, set by A); latency_seconds{/}
 * count 4 sum 3.05 (le 0.1:1 0.5:2 1:3 +Inf:4); payload_bytes count 2 sum 40;
 * while the master lives: temperature 10, queue_max 4, busy{worker="0"} 1,
 * pool{thread="main",worker="0"} 5. */
static void build_segment(const char *path, uint64_t region_size)
{
	struct shmet_options o = {path, HOSTILE_REGIONS, region_size, 0, false};
	if (shmet_init(&o) != SHMET_OK) {
		fprintf(stderr, "init %s: %s\n", path, shmet_last_error());
		_exit(23);
	}
	shmet_family *req, *bytes, *temp, *qmax, *seen, *busy, *pool, *lat, *pay, *pad, *tail;
	const char *rl[] = {"method", "code"}, *route[] = {"route"}, *vl[] = {"v"}, *tl[] = {"thread"};
	int rc = shmet_counter_register(&req, "requests_total", "Requests served.", 2, rl);
	rc |= shmet_counter_register(&bytes, "bytes_total", "Bytes sent.", 0, NULL);
	rc |= shmet_gauge_register(&temp, "temperature", "Degrees, summed over live workers.", SHMET_GAUGE_SUM, 0, NULL);
	rc |= shmet_gauge_register(&qmax, "queue_max", "Longest queue.", SHMET_GAUGE_MAX, 0, NULL);
	rc |= shmet_gauge_register(&seen, "last_seen", "Last thing seen.", SHMET_GAUGE_MOSTRECENT, 0, NULL);
	rc |= shmet_gauge_register(&busy, "busy", "Busy per worker.", SHMET_GAUGE_PER_WORKER, 0, NULL);
	rc |= shmet_gauge_register(&pool, "pool", "Pool size per worker and thread.", SHMET_GAUGE_PER_WORKER, 1, tl);
	rc |= shmet_histogram_register(&lat, "latency_seconds", "Latency.", latency_buckets, 3, 1, route);
	rc |= shmet_summary_register(&pay, "payload_bytes", "Payload sizes.", 0, NULL);
	rc |= shmet_counter_register(&pad, "pad_total", "", 1, vl);
	rc |= shmet_counter_register(&tail, "tail_total", "", 0, NULL);
	if (rc != SHMET_OK) {
		fprintf(stderr, "register: %s\n", shmet_last_error());
		_exit(24);
	}
	shmet_counter ok = shmet_counter_labels(req, "GET", "200");
	shmet_counter_labels(req, "GET", "404");
	shmet_counter b = shmet_counter_get(bytes, NULL);
	shmet_gauge t = shmet_gauge_get(temp, NULL), q = shmet_gauge_get(qmax, NULL);
	shmet_gauge s = shmet_gauge_get(seen, NULL), w = shmet_gauge_get(busy, NULL);
	shmet_histogram h = shmet_histogram_labels(lat, "/");
	shmet_summary p = shmet_summary_get(pay, NULL);
	char x120[121];
	memset(x120, 'x', 120);
	x120[120] = 0;
	shmet_counter_inc(shmet_counter_labels(pad, x120));
	shmet_counter_inc(shmet_counter_get(tail, NULL));

	shmet_counter_add_u64(ok, 5);
	shmet_counter_add(b, 1.5);
	shmet_gauge_set(t, 10);
	shmet_gauge_set(q, 4);
	shmet_gauge_set(s, 100);
	shmet_gauge_set(w, 1);
	shmet_gauge_set(shmet_gauge_labels(pool, "main"), 5);
	shmet_histogram_observe(h, 0.05);
	shmet_summary_observe(p, 10);

	struct timespec ms = {0, 2000000};
	nanosleep(&ms, NULL); /* A's last_seen is set strictly later */
	pid_t a = fork();
	if (a == 0) {
		shmet_counter_add_u64(ok, 3);
		shmet_counter_add(b, 2.25);
		shmet_gauge_set(t, 20);
		shmet_gauge_set(q, 9);
		shmet_gauge_set(s, 200);
		shmet_gauge_set(w, 2);
		shmet_histogram_observe(h, 0.3);
		shmet_histogram_observe(h, 2);
		shmet_summary_observe(p, 30);
		_exit(0);
	}
	wait_ok(a);
	fold_and_free(path);
	pid_t bpid = fork();
	if (bpid == 0) {
		shmet_counter_add_u64(ok, 7);
		shmet_counter_inc(shmet_counter_labels(req, "POST", "500"));
		shmet_gauge_set(t, 30);
		shmet_gauge_set(w, 3);
		shmet_histogram_observe(h, 0.7);
		_exit(0);
	}
	wait_ok(bpid);
}

/* ---- finding and damaging records ---- */

static int open_rw(const char *path, struct shmet_segment *s)
{
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(path, 0, NULL, s, err) != SHMET_OK) {
		fprintf(stderr, "open %s: %s\n", path, err);
		return -1;
	}
	return 0;
}

static unsigned char *region_base(const struct shmet_segment *s, uint32_t i)
{
	return s->map.base + s->regions_off + (uint64_t)i * s->region_size;
}

static unsigned char *retired_base(const struct shmet_segment *s, unsigned half)
{
	return s->map.base + s->retired_off + (uint64_t)half * s->retired_half_size + s->retired_hdr_size;
}

/* Offset of the first record in region i of this kind and family name (and,
 * for a series, whose first label value is value0 when not NULL); 0 if none. */
static uint64_t find_rec_in(const struct shmet_segment *s, uint32_t region, int kind, const char *family,
			    const char *value0)
{
	struct shmet_area a;
	if (shmet_region_area(s, region, &a, NULL) != SHMET_OK)
		return 0;
	struct shmet_dir_iter it;
	struct shmet_record r;
	int rc;
	shmet_dir_begin(&it, &a);
	while ((rc = shmet_dir_next(&it, &r, NULL)) != 0) {
		if (rc < 0 || (int)r.kind != kind || r.fam.name_len != strlen(family) ||
		    memcmp(r.fam.name, family, r.fam.name_len) != 0)
			continue;
		if (kind == SHMET_REC_FAMILY)
			return r.fam.off;
		if (!value0 || (r.series.nvalues && r.series.value_lens[0] == strlen(value0) &&
				memcmp(r.series.values[0], value0, r.series.value_lens[0]) == 0))
			return r.series.off;
	}
	return 0;
}

static uint64_t find_rec(const struct shmet_segment *s, int kind, const char *family, const char *value0)
{
	return find_rec_in(s, 0, kind, family, value0);
}

static struct shmet_rec_series *series_at(const struct shmet_segment *s, uint64_t off)
{
	return (struct shmet_rec_series *)(void *)(region_base(s, 0) + off);
}

/* Where a series' i-th label value (its u16 length) starts. */
static unsigned char *value_at(const struct shmet_segment *s, uint64_t off, unsigned i)
{
	unsigned char *p = region_base(s, 0) + off + sizeof(struct shmet_rec_series);
	while (i--) {
		uint16_t l;
		memcpy(&l, p, 2);
		p += 2 + l;
	}
	return p;
}

struct kind {
	const char *name;
	int (*damage)(const char *path, struct shmet_segment *s); /* NULL: header-level, done by path */
	const char *check;  /* what shmetrics-dump --check says (a problem), or NULL when clean */
	const char *reader; /* what libshm's walk of region 0 says, or NULL */
};

static int k_family_self(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	series_at(s, off)->ser_family_off = (uint32_t)off;
	return off ? 0 : -1;
}

static int k_family_forward(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	uint64_t later = find_rec(s, SHMET_REC_SERIES, "tail_total", NULL);
	series_at(s, off)->ser_family_off = (uint32_t)later;
	return off && later ? 0 : -1;
}

static int k_family_at_series(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t target = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "payload_bytes", NULL);
	series_at(s, off)->ser_family_off = (uint32_t)target;
	return off && target ? 0 : -1;
}

/* A perfect copy of tail_total's family record, hidden inside pad_total's
 * long label value, and tail_total's series pointed at the copy: libshm
 * accepts it (it parses as a family); --check must see it is no record. */
static int k_family_mid(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t fam = find_rec(s, SHMET_REC_FAMILY, "tail_total", NULL);
	uint64_t pad = find_rec(s, SHMET_REC_SERIES, "pad_total", NULL);
	uint64_t ser = find_rec(s, SHMET_REC_SERIES, "tail_total", NULL);
	if (!fam || !pad || !ser)
		return -1;
	unsigned char *base = region_base(s, 0);
	struct shmet_rec_header h;
	memcpy(&h, base + fam, sizeof h);
	uint64_t fake = shmet_align8(pad + sizeof(struct shmet_rec_series) + 2);
	if (fake + h.rec_size > pad + 120)
		return -1;
	memcpy(base + fake, base + fam, h.rec_size);
	series_at(s, ser)->ser_family_off = (uint32_t)fake;
	return 0;
}

static int k_rec_size_zero(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	series_at(s, off)->ser_rec.rec_size = 0;
	return off ? 0 : -1;
}

static int k_rec_size_huge(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	series_at(s, off)->ser_rec.rec_size = 0x7ffffff8;
	return off ? 0 : -1;
}

static int k_len_past_end(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "pad_total", NULL);
	uint16_t l = 60000;
	memcpy(value_at(s, off, 0), &l, 2);
	return off ? 0 : -1;
}

static int k_cells_outside(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	series_at(s, off)->ser_cell_off = (uint32_t)s->region_size + 8;
	return off ? 0 : -1;
}

static int k_cells_overlap(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t a = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	uint64_t b = find_rec(s, SHMET_REC_SERIES, "bytes_total", NULL);
	series_at(s, b)->ser_cell_off = series_at(s, a)->ser_cell_off;
	return a && b ? 0 : -1;
}

static int k_cells_in_gap(const char *path, struct shmet_segment *s)
{
	(void)path;
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)region_base(s, 0);
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "bytes_total", NULL);
	series_at(s, off)->ser_cell_off = (uint32_t)shmet_align8(rg->rg_dir_end + 64);
	return off && rg->rg_dir_end + 64 + 16 < rg->rg_cell_low ? 0 : -1;
}

static int k_dir_end_past(const char *path, struct shmet_segment *s)
{
	(void)path;
	((struct shmet_region_header *)(void *)region_base(s, 0))->rg_dir_end = s->region_size * 4;
	return 0;
}

static int k_bad_utf8_value(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	unsigned char *v = value_at(s, off, 0);
	v[2] = 0xff; /* "GET" -> "\xffET" */
	return off ? 0 : -1;
}

static int k_bad_utf8_help(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_FAMILY, "temperature", NULL);
	struct shmet_rec_family f;
	unsigned char *base = region_base(s, 0);
	memcpy(&f, base + off, sizeof f);
	unsigned char *help = base + off + sizeof f + f.fam_name_len;
	help[0] = 0xc0; /* an overlong encoding of "D" */
	help[1] = 0x84;
	return off ? 0 : -1;
}

static int k_nul_value(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	value_at(s, off, 0)[3] = 0; /* "GET" -> "G\0T" */
	return off ? 0 : -1;
}

/* A per-worker gauge with its own "worker" label: the collector would
 * expose the label twice, and Prometheus refuses such a scrape whole. */
static int k_worker_label(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_FAMILY, "pool", NULL);
	struct shmet_rec_family f;
	unsigned char *base = region_base(s, 0);
	memcpy(&f, base + off, sizeof f);
	unsigned char *label = base + off + sizeof f + f.fam_name_len + f.fam_help_len;
	if (!off || memcmp(label, "\6\0thread", 8) != 0)
		return -1;
	memcpy(label + 2, "worker", 6);
	return 0;
}

/* Worker B's temperature becomes a max gauge: a well-formed family that
 * disagrees with the master's, which the collector drops. */
static int k_conflict(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec_in(s, 1, SHMET_REC_FAMILY, "temperature", NULL);
	region_base(s, 1)[off + offsetof(struct shmet_rec_family, fam_gauge_mode)] = SHMET_GAUGE_MAX;
	return off ? 0 : -1;
}

static int k_bad_name(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_FAMILY, "queue_max", NULL);
	region_base(s, 0)[off + sizeof(struct shmet_rec_family) + 5] = '-'; /* queue-max */
	return off ? 0 : -1;
}

static int k_duplicate_series(const char *path, struct shmet_segment *s)
{
	(void)path;
	uint64_t off = find_rec(s, SHMET_REC_SERIES, "requests_total", "GET");
	uint64_t dup = 0;
	/* the second GET series is GET/404: make it GET/200 */
	struct shmet_area a;
	shmet_region_area(s, 0, &a, NULL);
	struct shmet_dir_iter it;
	struct shmet_record r;
	shmet_dir_begin(&it, &a);
	while (shmet_dir_next(&it, &r, NULL) != 0)
		if (r.kind == SHMET_REC_SERIES && r.series.nvalues == 2 && r.series.value_lens[1] == 3 &&
		    memcmp(r.series.values[1], "404", 3) == 0)
			dup = r.series.off;
	if (!off || !dup)
		return -1;
	memcpy(value_at(s, dup, 1) + 2, "200", 3);
	return 0;
}

static int k_retired_active(const char *path, struct shmet_segment *s)
{
	(void)path;
	s->map.hdr->sh_retired_active = 5;
	return 0;
}

static int k_bad_state(const char *path, struct shmet_segment *s)
{
	(void)path;
	shmet_seg_slot(&s->map, 3)->rs_state_gen = shmet_state_gen(1, 7);
	return 0;
}

static int k_folded_gen(const char *path, struct shmet_segment *s)
{
	(void)path;
	struct shmet_retired_header *rh =
		(struct shmet_retired_header *)(void *)(s->map.base + s->retired_off +
							 (uint64_t)shmet_retired_active(s) * s->retired_half_size);
	rh->rh_folded_gen[2] = 99;
	return 0;
}

static int k_retired_garbage(const char *path, struct shmet_segment *s)
{
	(void)path;
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)retired_base(s, shmet_retired_active(s));
	rg->rg_cell_low = 12; /* below dir_end */
	return 0;
}

static int k_clean(const char *path, struct shmet_segment *s)
{
	(void)path;
	(void)s;
	return 0;
}

static const struct kind kinds[] = {
	{"clean", k_clean, NULL, NULL},
	{"family-self", k_family_self, "refers forward", "refers forward"},
	{"family-forward", k_family_forward, "refers forward", "refers forward"},
	{"family-at-series", k_family_at_series, "is not a family", "is not a family"},
	{"family-mid", k_family_mid, "not the start of a family record", NULL},
	{"rec-size-zero", k_rec_size_zero, "has size 0", "has size 0"},
	{"rec-size-huge", k_rec_size_huge, "past the directory end", "past the directory end"},
	{"len-past-end", k_len_past_end, "values overrun the record", "values overrun the record"},
	{"cells-outside", k_cells_outside, "outside", "outside"},
	{"cells-overlap", k_cells_overlap, "overlap", NULL},
	{"cells-in-gap", k_cells_in_gap, "below the cell area", NULL},
	{"dir-end-past", k_dir_end_past, "area header out of bounds", NULL},
	{"bad-utf8-value", k_bad_utf8_value, "not valid UTF-8", "label value is not valid UTF-8"},
	{"bad-utf8-help", k_bad_utf8_help, "help is not valid UTF-8", "help is not valid UTF-8"},
	{"bad-name", k_bad_name, "invalid metric name", "invalid metric name"},
	{"nul-value", k_nul_value, "holds a NUL byte", "a label value holds a NUL byte"},
	{"worker-label", k_worker_label, "invalid label name", "invalid label name"},
	{"duplicate-series", k_duplicate_series, "duplicates the one at", NULL},
	{"conflict", k_conflict, "is not in the family registry with this", NULL},
	{"retired-active", k_retired_active, "sh_retired_active is 5", NULL},
	{"bad-state", k_bad_state, "unknown state 7", NULL},
	{"folded-gen", k_folded_gen, "generation 99 as folded", NULL},
	{"retired-garbage", k_retired_garbage, "area header out of bounds", NULL},
	/* refused at open: shmetrics-dump exits 2 */
	{"bad-magic", NULL, NULL, NULL},
	{"bad-version", NULL, NULL, NULL},
	{"truncated", NULL, NULL, NULL},
	{"tiny", NULL, NULL, NULL},
};

static const struct kind *find_kind(const char *name)
{
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
		if (strcmp(kinds[i].name, name) == 0)
			return &kinds[i];
	return NULL;
}

static int poke_file(const char *path, off_t off, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	ssize_t w = pwrite(fd, p, n, off);
	close(fd);
	return w == (ssize_t)n ? 0 : -1;
}

/* Damage the segment at path as kind k says. */
static int damage(const char *path, const struct kind *k)
{
	if (k->damage) {
		struct shmet_segment s;
		if (open_rw(path, &s) != 0)
			return -1;
		int rc = k->damage(path, &s);
		shmet_segment_close(&s);
		return rc;
	}
	if (strcmp(k->name, "bad-magic") == 0)
		return poke_file(path, 0, "NOTOURS!", 8);
	if (strcmp(k->name, "bad-version") == 0) {
		uint32_t v = SHMET_VERSION_MAJOR + 1;
		return poke_file(path, offsetof(struct shmet_seg_header, sh_version_major), &v, 4);
	}
	if (strcmp(k->name, "truncated") == 0) {
		struct stat st;
		return stat(path, &st) == 0 && truncate(path, st.st_size / 2) == 0 ? 0 : -1;
	}
	if (strcmp(k->name, "tiny") == 0)
		return truncate(path, 100);
	return -1;
}

/* Build in a forked process (fresh writer state); every region ends dead. */
static int make_dead(const char *path, uint64_t region_size, const struct kind *k)
{
	unlink(path);
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		build_segment(path, region_size);
		_exit(0);
	}
	if (tsupport_wait(pid) != 0)
		return -1;
	return k ? damage(path, k) : 0;
}

/* ---- helpers for the cases ---- */

/* One path per tag (tsupport keeps a few paths per process). */
static const char *tag_path(const char *tag)
{
	static struct {
		const char *tag, *path;
	} cache[16];
	for (int i = 0; i < 16; i++) {
		if (cache[i].tag && strcmp(cache[i].tag, tag) == 0)
			return cache[i].path;
		if (!cache[i].tag) {
			cache[i].tag = tag;
			return cache[i].path = tsupport_segment(tag);
		}
	}
	abort();
}

static const char *made(const char *tag, const char *kind)
{
	const char *p = tag_path(tag);
	const struct kind *k = find_kind(kind);
	assert_non_null(k);
	if (make_dead(p, FUZZ_REGION_SIZE, k) != 0)
		fail_msg("could not make a %s segment", kind);
	return p;
}

static void open_ro(const char *path, struct shmet_segment *s)
{
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(path, SHMET_ATTACH_READONLY, NULL, s, err) != SHMET_OK)
		fail_msg("open %s: %s", path, err);
}

/* Walk region 0: count good records and errors; the first error whose text
 * holds want (or the first error) goes to why. */
static int walk0(const struct shmet_segment *s, const char *want, char *why, int *good)
{
	struct shmet_area a;
	char err[SHMET_ERRBUF];
	int bad = 0, rc, steps = 0;
	*good = 0;
	why[0] = 0;
	if (shmet_region_area(s, 0, &a, err) != SHMET_OK) {
		snprintf(why, SHMET_ERRBUF, "%s", err);
		bad++;
	}
	struct shmet_dir_iter it;
	struct shmet_record r;
	shmet_dir_begin(&it, &a);
	while ((rc = shmet_dir_next(&it, &r, err)) != 0) {
		if (++steps > 100000)
			fail_msg("the directory walk does not end");
		if (rc < 0) {
			if (!why[0] || (want && strstr(err, want) && !strstr(why, want)))
				snprintf(why, SHMET_ERRBUF, "%s", err);
			bad++;
			continue;
		}
		if (r.kind == SHMET_REC_SERIES) {
			struct shmet_values v;
			shmet_read_cells(&a, &r.fam, &r.series, &v);
		}
		(*good)++;
	}
	return bad;
}

static void expect_walk_error(const char *kind, const char *words)
{
	const char *p = made("walk", kind);
	struct shmet_segment s;
	open_ro(p, &s);
	char why[SHMET_ERRBUF];
	int good;
	int bad = walk0(&s, words, why, &good);
	if (bad == 0 || !strstr(why, words))
		fail_msg("%s: expected an error saying \"%s\", got %d errors (\"%s\")", kind, words, bad, why);
	/* and the whole segment still aggregates */
	struct shmet_snapshot snap;
	assert_int_equal(shmet_snapshot_take(&s, &snap), SHMET_OK);
	if (snap.corrupt == 0)
		fail_msg("%s: the snapshot counted no corrupt record", kind);
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
}

static double value_of(const char *path, const char *name, const char *const *values)
{
	return tsupport_value(path, name, values);
}

/* ---- cases ---- */

static void test_reader_hostile_clean_segment_exact(void **state)
{
	(void)state;
	const char *p = made("clean", "clean");
	const char *get200[] = {"GET", "200", NULL}, *get404[] = {"GET", "404", NULL}, *post[] = {"POST", "500", NULL};
	const char *root[] = {"/", NULL};
	assert_double_equal_exact(value_of(p, "requests_total", get200), 15);
	assert_double_equal_exact(value_of(p, "requests_total", get404), 0);
	assert_double_equal_exact(value_of(p, "requests_total", post), 1);
	assert_double_equal_exact(value_of(p, "bytes_total", NULL), 3.75);
	assert_double_equal_exact(value_of(p, "last_seen", NULL), 200);
	assert_int_equal(tsupport_count(p, "latency_seconds", root), 4);
	assert_int_equal(tsupport_count(p, "payload_bytes", NULL), 2);
	struct shmet_segment s;
	open_ro(p, &s);
	struct shmet_snapshot snap;
	shmet_snapshot_take(&s, &snap);
	assert_int_equal(snap.corrupt, 0);
	assert_int_equal(snap.conflicts, 0);
	shmet_snapshot_free(&snap);
	char why[SHMET_ERRBUF];
	int good;
	assert_int_equal(walk0(&s, NULL, why, &good), 0);
	assert_true(good >= 20);
	shmet_segment_close(&s);
}

static void test_reader_hostile_truncated_refused(void **state)
{
	(void)state;
	const char *p = made("trunc", "truncated");
	struct shmet_segment s;
	char err[SHMET_ERRBUF] = "";
	int rc = shmet_segment_open(p, SHMET_ATTACH_READONLY, NULL, &s, err);
	if (rc != SHMET_E_CORRUPT || !strstr(err, "truncated"))
		fail_msg("expected %d \"truncated\", got %d \"%s\"", SHMET_E_CORRUPT, rc, err);
	const char *q = made("tiny", "tiny");
	struct shmet_seg_config quick = {0, 0, 0, 0, 20};
	rc = shmet_segment_open(q, SHMET_ATTACH_READONLY, &quick, &s, err);
	if (rc != SHMET_E_TIMEOUT)
		fail_msg("expected %d, got %d \"%s\"", SHMET_E_TIMEOUT, rc, err);
}

static void test_reader_hostile_magic_and_version_refused(void **state)
{
	(void)state;
	struct shmet_segment s;
	char err[SHMET_ERRBUF] = "";
	int rc = shmet_segment_open(made("magic", "bad-magic"), SHMET_ATTACH_READONLY, NULL, &s, err);
	if (rc != SHMET_E_NOT_SEGMENT)
		fail_msg("expected %d, got %d \"%s\"", SHMET_E_NOT_SEGMENT, rc, err);
	rc = shmet_segment_open(made("version", "bad-version"), SHMET_ATTACH_READONLY, NULL, &s, err);
	if (rc != SHMET_E_VERSION || !strstr(err, "version 3"))
		fail_msg("expected %d \"version 3\", got %d \"%s\"", SHMET_E_VERSION, rc, err);
}

static void test_reader_hostile_family_self_reference_skipped(void **state)
{
	(void)state;
	expect_walk_error("family-self", "refers forward");
}

static void test_reader_hostile_family_forward_reference_skipped(void **state)
{
	(void)state;
	expect_walk_error("family-forward", "refers forward");
}

static void test_reader_hostile_family_at_series_skipped(void **state)
{
	(void)state;
	expect_walk_error("family-at-series", "is not a family");
}

static void test_reader_hostile_rec_size_zero_ends_walk(void **state)
{
	(void)state;
	expect_walk_error("rec-size-zero", "has size 0");
}

static void test_reader_hostile_rec_size_huge_ends_walk(void **state)
{
	(void)state;
	expect_walk_error("rec-size-huge", "past the directory end");
}

static void test_reader_hostile_length_past_end_skipped(void **state)
{
	(void)state;
	expect_walk_error("len-past-end", "values overrun the record");
}

static void test_reader_hostile_cells_outside_skipped(void **state)
{
	(void)state;
	expect_walk_error("cells-outside", "outside");
}

static void test_reader_hostile_invalid_utf8_skipped(void **state)
{
	(void)state;
	expect_walk_error("bad-utf8-value", "label value is not valid UTF-8");
	expect_walk_error("bad-utf8-help", "help is not valid UTF-8");
	expect_walk_error("bad-name", "invalid metric name");
	expect_walk_error("nul-value", "a label value holds a NUL byte");
}

static void test_reader_hostile_worker_label_on_per_worker_gauge_skipped(void **state)
{
	(void)state;
	expect_walk_error("worker-label", "invalid label name");
}

static void test_reader_hostile_dir_end_out_of_bounds_reads_empty(void **state)
{
	(void)state;
	const char *p = made("dirend", "dir-end-past");
	struct shmet_segment s;
	open_ro(p, &s);
	struct shmet_area a;
	char err[SHMET_ERRBUF] = "";
	assert_int_equal(shmet_region_area(&s, 0, &a, err), SHMET_E_CORRUPT);
	assert_non_null(strstr(err, "out of bounds"));
	assert_int_equal(a.dir_end, sizeof(struct shmet_region_header)); /* reads as empty */
	struct shmet_snapshot snap;
	shmet_snapshot_take(&s, &snap);
	assert_true(snap.corrupt >= 1);
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
	/* the master's 5 are unreadable now; A's 3 (retired) and B's 7 remain */
	const char *get200[] = {"GET", "200", NULL};
	assert_double_equal_exact(value_of(p, "requests_total", get200), 10);
}

static void test_reader_hostile_other_records_survive(void **state)
{
	(void)state;
	/* one bad series costs only itself: the master's other series count */
	const char *p = made("survive", "family-self");
	const char *post[] = {"POST", "500", NULL};
	assert_double_equal_exact(value_of(p, "requests_total", post), 1);
	assert_double_equal_exact(value_of(p, "bytes_total", NULL), 3.75);
	const char *get200[] = {"GET", "200", NULL};
	assert_double_equal_exact(value_of(p, "requests_total", get200), 10); /* 3 + 7 */
}

static void test_reader_hostile_dead_owner_reported_dead(void **state)
{
	(void)state;
	const char *p = made("dead", "clean");
	struct shmet_segment s;
	open_ro(p, &s);
	int live = 0;
	for (uint32_t i = 0; i < s.regions; i++) {
		struct shmet_region_info info;
		shmet_region_info(&s, i, &info);
		if (info.state != SHMET_REGION_LIVE)
			continue;
		live++;
		assert_false(info.alive);
		assert_true(info.pid > 0);
		assert_int_not_equal(info.pid, (uint32_t)getpid());
	}
	assert_int_equal(live, 2); /* the master and B; A was folded and freed */
	shmet_segment_close(&s);
}

static void test_reader_hostile_histogram_bounds_checked(void **state)
{
	(void)state;
	const char *p = made("bounds", "clean");
	struct shmet_segment s;
	assert_int_equal(open_rw(p, &s), 0);
	uint64_t off = find_rec(&s, SHMET_REC_FAMILY, "latency_seconds", NULL);
	assert_true(off > 0);
	unsigned char *rec = region_base(&s, 0) + off;
	double nan = NAN;
	memcpy(rec + sizeof(struct shmet_rec_family) + 8, &nan, 8); /* second bound */
	shmet_segment_close(&s);
	open_ro(p, &s);
	char why[SHMET_ERRBUF];
	int good;
	assert_true(walk0(&s, "bounds", why, &good) > 0);
	assert_non_null(strstr(why, "bucket bounds"));
	shmet_segment_close(&s);

	assert_int_equal(open_rw(p, &s), 0);
	rec = region_base(&s, 0) + off;
	uint32_t many = 100000;
	memcpy(rec + offsetof(struct shmet_rec_family, fam_nbuckets), &many, 4);
	shmet_segment_close(&s);
	open_ro(p, &s);
	assert_true(walk0(&s, "buckets", why, &good) > 0);
	assert_non_null(strstr(why, "100000 buckets"));
	shmet_segment_close(&s);
}

/* A hostile retired half: two families of one name, the second's series
 * keyed like the first's.  Folding a dead region whose histogram matches the
 * first family must not write the histogram's 1040 bytes of cells into the
 * 16 bytes that the summary series owns (found by this suite: the fold used
 * to trust any series of the same name and labels). */
static void test_reader_hostile_fold_stays_inside_inactive_half(void **state)
{
	(void)state;
	const char *p = tag_path("fold");
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct shmet_options o = {p, HOSTILE_REGIONS, FUZZ_REGION_SIZE, 0, false};
		double b[SHMET_MAX_BUCKETS];
		for (int i = 0; i < (int)SHMET_MAX_BUCKETS; i++)
			b[i] = i + 1;
		shmet_family *f;
		if (shmet_init(&o) != SHMET_OK ||
		    shmet_histogram_register(&f, "x", "", b, SHMET_MAX_BUCKETS, 0, NULL) != SHMET_OK)
			_exit(1);
		shmet_histogram_observe(shmet_histogram_get(f, NULL), 1000);
		_exit(0);
	}
	assert_int_equal(tsupport_wait(pid), 0);
	struct shmet_segment s;
	assert_int_equal(open_rw(p, &s), 0);
	/* the dead region's family record, then a summary "x" and its series */
	uint64_t fam = 0;
	{
		struct shmet_area a;
		assert_int_equal(shmet_region_area(&s, 0, &a, NULL), SHMET_OK);
		struct shmet_dir_iter it;
		struct shmet_record r;
		shmet_dir_begin(&it, &a);
		while (shmet_dir_next(&it, &r, NULL) == 1)
			if (r.kind == SHMET_REC_FAMILY)
				fam = r.fam.off;
	}
	assert_true(fam > 0);
	unsigned char *src = region_base(&s, 0) + fam;
	struct shmet_rec_header fh;
	memcpy(&fh, src, sizeof fh);
	/* make half 1 active so that the fold writes half 0, just below it */
	s.map.hdr->sh_retired_active = 1;
	unsigned char *area = retired_base(&s, 1);
	uint64_t size = s.retired_half_size - s.retired_hdr_size;
	uint64_t pos = sizeof(struct shmet_region_header);
	memcpy(area + pos, src, fh.rec_size); /* family 1: histogram x, as the dead region's */
	pos += fh.rec_size;
	uint64_t sum_fam = pos;
	struct shmet_rec_family sf;
	memset(&sf, 0, sizeof sf);
	sf.fam_rec.rec_size = (uint32_t)shmet_align8(sizeof sf + 1);
	sf.fam_rec.rec_kind = SHMET_REC_FAMILY;
	sf.fam_type = SHMET_SUMMARY;
	sf.fam_name_len = 1;
	memcpy(area + pos, &sf, sizeof sf);
	area[pos + sizeof sf] = 'x';
	pos += sf.fam_rec.rec_size;
	struct shmet_rec_series ss;
	memset(&ss, 0, sizeof ss);
	ss.ser_rec.rec_size = sizeof ss;
	ss.ser_rec.rec_kind = SHMET_REC_SERIES;
	ss.ser_family_off = (uint32_t)sum_fam;
	ss.ser_cell_off = (uint32_t)(size - 16); /* the last 16 bytes of the half */
	memcpy(area + pos, &ss, sizeof ss);
	pos += sizeof ss;
	struct shmet_region_header *rg = (struct shmet_region_header *)(void *)area;
	rg->rg_dir_end = pos;
	rg->rg_cell_low = size - 16;
	/* the active half (1), and what lies after the inactive one, must not change */
	size_t keep = s.retired_half_size;
	unsigned char *before = malloc(keep);
	assert_non_null(before);
	unsigned char *half1 = s.map.base + s.retired_off + s.retired_half_size;
	memcpy(before, half1, keep);
	assert_int_equal(shmet_segment_lock_collector(&s, NULL), SHMET_OK);
	static struct shmet_fold_result res;
	shmet_fold_dead(&s, &res);
	if (memcmp(before, half1, keep) != 0)
		fail_msg("the fold wrote into the active retired half (folded %u, conflicts %llu)", res.folded,
			 (unsigned long long)res.conflicts);
	free(before);
	shmet_segment_close(&s);
	/* and the aggregate still reads */
	struct shmet_snapshot snap;
	open_ro(p, &s);
	shmet_snapshot_take(&s, &snap);
	shmet_snapshot_free(&snap);
	shmet_segment_close(&s);
}

/* Deterministic mutation: random words written over a real segment's
 * regions and retired halves, then every reader entry point and a fold.
 * Under ASan/UBSan this is a small fuzzer inside `make test`. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void read_everything(const struct shmet_segment *s)
{
	struct shmet_snapshot snap;
	shmet_snapshot_take(s, &snap);
	shmet_snapshot_free(&snap);
	for (uint32_t i = 0; i < s->regions + 2; i++) {
		struct shmet_area a;
		struct shmet_region_info info;
		if (i < s->regions) {
			shmet_region_info(s, i, &info);
			shmet_region_area(s, i, &a, NULL);
		} else {
			shmet_retired_area(s, i - s->regions, &a, NULL);
		}
		struct shmet_dir_iter it;
		struct shmet_record r;
		int rc, steps = 0;
		shmet_dir_begin(&it, &a);
		while ((rc = shmet_dir_next(&it, &r, NULL)) != 0) {
			if (++steps > 100000)
				fail_msg("the directory walk does not end");
			if (rc == 1 && r.kind == SHMET_REC_SERIES) {
				struct shmet_values v;
				shmet_read_cells(&a, &r.fam, &r.series, &v);
			}
		}
	}
}

static void test_reader_hostile_random_damage_survived(void **state)
{
	(void)state;
	const char *p = made("random", "clean");
	struct shmet_segment s;
	assert_int_equal(open_rw(p, &s), 0);
	unsigned char *image = malloc(s.map.size);
	assert_non_null(image);
	memcpy(image, s.map.base, s.map.size);
	/* the interesting bytes: region 0..1 directories and cells, retired half 0 */
	uint64_t lo = s.regions_off, hi = s.map.size;
	for (int round = 0; round < 1500; round++) {
		memcpy(s.map.base + s.table_off, image + s.table_off, s.map.size - s.table_off);
		int n = 1 + (int)(rng() % 6);
		for (int k = 0; k < n; k++) {
			uint64_t where;
			switch (rng() % 4) {
			case 0: /* a directory of a live region */
				where = s.regions_off + (rng() % 2) * s.region_size + rng() % 1024;
				break;
			case 1: /* the active retired half's directory */
				where = s.retired_off + s.retired_hdr_size + rng() % 1024;
				break;
			case 2: /* a table slot or a retired header */
				where = rng() % 2 ? s.table_off + rng() % 256 : s.retired_off + rng() % 128;
				break;
			default:
				where = lo + rng() % (hi - lo);
				break;
			}
			where &= ~(uint64_t)3;
			uint32_t word;
			switch (rng() % 4) {
			case 0:
				word = (uint32_t)rng();
				break;
			case 1:
				word = (uint32_t)(rng() % 512);
				break;
			case 2:
				word = 0;
				break;
			default:
				word = (uint32_t)(s.region_size - (rng() % 64) * 8);
				break;
			}
			memcpy(s.map.base + where, &word, 4);
		}
		read_everything(&s);
		if (round % 3 == 0) {
			static struct shmet_fold_result res;
			if (shmet_segment_lock_collector(&s, NULL) == SHMET_OK && shmet_fold_dead(&s, &res) == SHMET_OK) {
				read_everything(&s);
				shmet_free_folded(&s, &res);
				read_everything(&s);
			}
		}
	}
	memcpy(s.map.base + s.table_off, image + s.table_off, s.map.size - s.table_off);
	free(image);
	shmet_segment_close(&s);
}

/* Every kind of damage: the reader says what it should, and reading,
 * folding and freeing the damaged segment stay inside it. */
static void test_reader_hostile_every_damage_read_and_folded(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
		const struct kind *k = &kinds[i];
		if (!k->damage)
			continue;
		const char *p = made("kinds", k->name);
		struct shmet_segment s;
		assert_int_equal(open_rw(p, &s), 0);
		read_everything(&s);
		if (k->reader) {
			char why[SHMET_ERRBUF];
			int good;
			if (walk0(&s, k->reader, why, &good) == 0 || !strstr(why, k->reader))
				fail_msg("%s: expected an error saying \"%s\", got \"%s\"", k->name, k->reader, why);
		}
		static struct shmet_fold_result res;
		assert_int_equal(shmet_segment_lock_collector(&s, NULL), SHMET_OK);
		if (shmet_fold_dead(&s, &res) == SHMET_OK) {
			read_everything(&s);
			shmet_free_folded(&s, &res);
		}
		read_everything(&s);
		shmet_segment_close(&s);
	}
}

/* ---- header bytes rewritten after open (issue 11, item 1) ---- */

/* Where a hostile worker points the region table and the regions: far
 * outside any mapping, so a store through the live header crashes. */
#define FAR_AWAY UINT64_C(0x400000000000)

static void rewrite_geometry(struct shmet_seg_header *h)
{
	/* plain stores: a worker's rewrite, seen by the code under test later
	 * in this same thread */
	h->sh_region_table_off = FAR_AWAY;
	h->sh_regions_off = FAR_AWAY + SHMET_PAGE;
	h->sh_region_size = FAR_AWAY;
	h->sh_region_count = SHMET_MAX_REGIONS;
}

/* A worker rewrites the header's offsets after the collector opened the
 * segment; folding and freeing use only the geometry validated at open. */
static void test_reader_hostile_header_rewritten_after_open_ignored(void **state)
{
	(void)state;
	const char *p = made("hdr", "clean");
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct shmet_segment s;
		static struct shmet_fold_result res;
		if (open_rw(p, &s) != 0 || shmet_segment_lock_collector(&s, NULL) != SHMET_OK)
			_exit(30);
		struct shmet_seg_header saved = *s.map.hdr;
		rewrite_geometry(s.map.hdr);
		if (shmet_fold_dead(&s, &res) != SHMET_OK || res.to_free == 0)
			_exit(31);
		shmet_free_folded(&s, &res);
		/* the real slots, where the validated geometry says they are */
		for (uint32_t k = 0; k < res.to_free; k++) {
			const struct shmet_region_slot *slot = (const struct shmet_region_slot *)(const void *)(
				s.map.base + s.table_off + (uint64_t)res.regions[k] * SHMET_CACHELINE);
			if (shmet_state_of(slot->rs_state_gen) != SHMET_REGION_FREE)
				_exit(32);
		}
		memcpy(s.map.hdr, &saved, offsetof(struct shmet_seg_header, sh_reserved0)); /* geometry only */
		shmet_segment_close(&s);
		_exit(0);
	}
	int st = tsupport_wait(pid);
	if (st != 0)
		fail_msg("the folder %s %d after the header was rewritten", st > 128 ? "died of signal" : "exited",
			 st > 128 ? st - 128 : st);
	assert_double_equal_exact(value_of(p, "requests_total", (const char *[]){"GET", "200", NULL}), 15);
}

/* The same for the writer: a process attached before the header was
 * rewritten forks a child, whose first write claims a region through the
 * geometry its parent validated. */
static void test_reader_hostile_header_rewritten_writer_claims_safely(void **state)
{
	(void)state;
	const char *p = tag_path("hdrw");
	unlink(p);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct shmet_options o = {p, HOSTILE_REGIONS, FUZZ_REGION_SIZE, 0, false};
		shmet_family *f;
		if (shmet_init(&o) != SHMET_OK || shmet_counter_register(&f, "hits_total", "Hits.", 0, NULL) != SHMET_OK)
			_exit(40);
		shmet_counter c = shmet_counter_get(f, NULL);
		shmet_counter_inc(c);
		struct shmet_segment s;
		if (open_rw(p, &s) != 0)
			_exit(41);
		struct shmet_seg_header saved = *s.map.hdr;
		rewrite_geometry(s.map.hdr);
		pid_t child = fork();
		if (child == 0) {
			shmet_counter_inc(c); /* claims a region now */
			_exit(shmet_region_index() >= 0 ? 0 : 43);
		}
		int cst = tsupport_wait(child);
		memcpy(s.map.hdr, &saved, offsetof(struct shmet_seg_header, sh_reserved0));
		shmet_segment_close(&s);
		_exit(cst == 0 ? 0 : cst > 128 ? 50 + cst - 128 : 42);
	}
	int st = tsupport_wait(pid);
	if (st != 0)
		fail_msg("the writer's child failed after the header was rewritten: status %d (50+n: signal n)", st);
	assert_double_equal_exact(value_of(p, "hits_total", NULL), 2);
}

/* ---- bytes flipped between the check and the copy (issue 11, item 2) ---- */

/* A worker flips bytes of its own records while the collector reads them:
 * a label name's byte between 'm' and '\n', a metric name's between 'r'
 * and '\n', a label value's between 'G' and 0xff.  Whatever moment the
 * reader copies at, each record is valid (and exposed) or corrupt (and
 * skipped): no body may hold a byte that was not validated. */
struct flipper {
	unsigned char *at[3];
	unsigned char good[3], bad[3];
	uint64_t *rounds; /* in shared anonymous memory */
};

/* A forked process, as a worker is (and invisible to ThreadSanitizer, for
 * which a thread's stores racing the reader's copies would be a report about
 * the attack itself).  Runs until killed. */
static void flip_loop(const struct flipper *f)
{
	/* relaxed: the bytes are the attack, not a protocol */
	for (uint64_t k = 0;; k++) {
		for (int i = 0; i < 3; i++)
			__atomic_store_n(f->at[i], (k >> i) & 1 ? f->bad[i] : f->good[i], __ATOMIC_RELAXED);
		for (volatile int spin = 0; spin < (int)(k % 7) * 8; spin++)
			;
		__atomic_store_n(f->rounds, k, __ATOMIC_RELAXED);
	}
}

/* NULL when every line of the body is a well-formed exposition line, else
 * the first bad one (in line, cap bytes). */
static const char *bad_body_line(const char *body, size_t len, regex_t *re, char *line, size_t cap)
{
	if (!shmet_valid_utf8(body, len)) {
		snprintf(line, cap, "(the body is not valid UTF-8)");
		return line;
	}
	const char *p = body, *end = body + len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl) {
			snprintf(line, cap, "(no newline at the end: \"%.*s\")", (int)(end - p), p);
			return line;
		}
		size_t n = (size_t)(nl - p);
		if (n >= cap)
			n = cap - 1;
		memcpy(line, p, n);
		line[n] = 0;
		if (regexec(re, line, 0, NULL, 0) != 0)
			return line;
		p = nl + 1;
	}
	return NULL;
}

static void test_reader_hostile_flipped_bytes_never_rendered(void **state)
{
	(void)state;
	const char *p = tag_path("hdrw") /* shared, as above */;
	unlink(p);
	int ready[2], hold[2];
	assert_int_equal(pipe(ready), 0);
	assert_int_equal(pipe(hold), 0);
	pid_t w = fork();
	assert_true(w >= 0);
	if (w == 0) {
		close(ready[0]);
		close(hold[1]);
		struct shmet_options o = {p, HOSTILE_REGIONS, FUZZ_REGION_SIZE, 0, false};
		shmet_family *f;
		const char *l[] = {"method"};
		if (shmet_init(&o) != SHMET_OK || shmet_counter_register(&f, "race_total", "Raced.", 1, l) != SHMET_OK)
			_exit(1);
		shmet_counter_inc(shmet_counter_labels(f, "GET"));
		int idx = shmet_region_index();
		if (write(ready[1], &idx, sizeof idx) != (ssize_t)sizeof idx)
			_exit(2);
		char c;
		while (read(hold[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(ready[1]);
	close(hold[0]);
	int idx = -1;
	assert_int_equal(read(ready[0], &idx, sizeof idx), (ssize_t)sizeof idx);
	close(ready[0]);
	assert_true(idx >= 0);

	static struct collector c;
	struct collector_config cfg = {.segment = p, .listen_host = "127.0.0.1", .scan_interval = 1};
	char err[256];
	if (collector_open(&c, &cfg, err, sizeof err) != SHMET_OK)
		fail_msg("collector_open: %s", err);
	uint64_t fam = find_rec_in(&c.seg, (uint32_t)idx, SHMET_REC_FAMILY, "race_total", NULL);
	uint64_t ser = find_rec_in(&c.seg, (uint32_t)idx, SHMET_REC_SERIES, "race_total", "GET");
	assert_true(fam && ser);
	unsigned char *rg = c.seg.map.base + c.seg.regions_off + (uint64_t)idx * c.seg.region_size;
	unsigned char *name = rg + fam + sizeof(struct shmet_rec_family); /* no buckets: the name first */
	unsigned char *label = name + strlen("race_total") + strlen("Raced.") + 2; /* after its u16 length */
	unsigned char *value = rg + ser + sizeof(struct shmet_rec_series) + 2;
	assert_int_equal(*name, 'r');
	assert_int_equal(*label, 'm');
	assert_int_equal(*value, 'G');
	uint64_t *rounds = mmap(NULL, sizeof *rounds, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(rounds != MAP_FAILED);
	struct flipper fl = {{label, name, value}, {'m', 'r', 'G'}, {'\n', '\n', 0xff}, rounds};

	regex_t re;
	const char *line_re =
		"^(# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*"
		"|# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|unknown|untyped)"
		"|# EOF"
		"|[a-zA-Z_:][a-zA-Z0-9_:]*"
		"(\\{[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\"(,[a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\")*\\})?"
		" [^ ]+)$";
	assert_int_equal(regcomp(&re, line_re, REG_EXTENDED | REG_NOSUB), 0);
	pid_t flipper = fork();
	assert_true(flipper >= 0);
	if (flipper == 0)
		flip_loop(&fl);
	shmet_buf b;
	shmet_buf_init(&b);
	char line[512];
	const char *bad = NULL;
	uint64_t builds = 0, shown = 0, t0 = shmet__now_ns(CLOCK_MONOTONIC);
	while (!bad && shmet__now_ns(CLOCK_MONOTONIC) - t0 < 3000000000ull) {
		struct view *v = view_build(&c);
		if (!v)
			continue;
		for (int fmt = 0; fmt < 2 && !bad; fmt++) {
			shmet_buf_reset(&b);
			render_metrics(&c, v, &b, fmt ? SHMET_EXPO_OPENMETRICS : SHMET_EXPO_TEXT);
			assert_false(b.oom);
			bad = bad_body_line(b.data, b.len, &re, line, sizeof line);
			if (memmem(b.data, b.len, "race_total{method=\"GET\"} 1", 26))
				shown++;
		}
		view_free(v);
		builds++;
	}
	kill(flipper, SIGKILL);
	tsupport_wait(flipper);
	uint64_t flips = __atomic_load_n(rounds, __ATOMIC_RELAXED);
	munmap(rounds, sizeof *rounds);
	shmet_buf_free(&b);
	regfree(&re);
	collector_close(&c);
	close(hold[1]);
	tsupport_wait(w);
	if (bad)
		fail_msg("after %llu builds (%llu flips), a body held the line \"%s\"", (unsigned long long)builds,
			 (unsigned long long)flips, bad);
	print_message("%llu builds, %llu flips, the series shown intact %llu times\n", (unsigned long long)builds,
		      (unsigned long long)flips, (unsigned long long)shown);
	assert_true(builds > 100 && flips > 1000);
}

/* ---- the segment file truncated under the collector (issue 11, item 4) ---- */

static bool body_has(const shmet_buf *b, const char *text)
{
	return b->len && memmem(b->data, b->len, text, strlen(text)) != NULL;
}

/* Runs in a child (it installs a SIGBUS handler); exit status says which
 * check failed. */
static int truncated_child(const char *p)
{
	static struct collector c;
	struct collector_config cfg = {.segment = p, .listen_host = "127.0.0.1", .scan_interval = 1};
	char err[256];
	if (collector_open(&c, &cfg, err, sizeof err) != SHMET_OK)
		return 10;
	uint64_t size = c.seg.map.size;
	shmet_buf b;
	shmet_buf_init(&b);
	/* everything folded into the retired totals, at the file's far end */
	if (!collector_render(&c, &b, SHMET_EXPO_TEXT) || !body_has(&b, "requests_total{method=\"GET\",code=\"200\"} 15"))
		return 11;
	int fd = open(p, O_RDWR);
	if (fd < 0 || ftruncate(fd, 8192) != 0)
		return 12;
	/* 1. a render before any scan noticed: the guard catches the SIGBUS,
	 * the render is done again below the file's end */
	shmet_buf_reset(&b);
	const struct view *before = c.view;
	if (!collector_render(&c, &b, SHMET_EXPO_TEXT))
		return 13;
	if (__atomic_load_n(&collector_bus_errors, __ATOMIC_RELAXED) == 0)
		return 14;
	if (body_has(&b, "requests_total{") || !body_has(&b, "shmetricsd_series "))
		return 15;
	/* 2. the scan sees it, touches nothing, keeps the view, counts it */
	collector_scan(&c);
	if (!c.truncated || c.truncations != 1 || c.view != before || c.file_size != 8192)
		return 16;
	collector_scan(&c);
	if (c.truncations != 1)
		return 17; /* one event, not one per scan */
	/* 3. renders now read nothing past the end: no more faults */
	uint64_t faults = collector_bus_errors;
	shmet_buf_reset(&b);
	if (!collector_render(&c, &b, SHMET_EXPO_TEXT) || collector_bus_errors != faults)
		return 18;
	if (!body_has(&b, "shmetricsd_segment_truncations_total 1"))
		return 19;
	/* 4. outside a guard (the API's reads): a zero page, no death */
	const struct view *v = view_enter(&c);
	__atomic_store_n(&collector_seg_end, (uintptr_t)0, __ATOMIC_RELAXED); /* as if no check had run */
	struct shmet_agg acc;
	uint32_t zeros = 0;
	for (uint32_t i = 0; i < v->nfamilies; i++)
		for (uint32_t k = 0; k < v->families[i].nseries; k++) {
			view_series_agg(&v->families[i], &v->families[i].series[k], &acc);
			zeros += acc.whole == 0;
		}
	view_leave(&c);
	if (collector_bus_errors == faults || zeros == 0)
		return 20;
	/* 5. the size comes back: ready again, the file mapped again */
	if (ftruncate(fd, (off_t)size) != 0)
		return 21;
	collector_scan(&c);
	if (c.truncated)
		return 22;
	uint64_t mark = UINT64_C(0x1122334455667788), off = size - SHMET_PAGE;
	if (pwrite(fd, &mark, sizeof mark, (off_t)off) != (ssize_t)sizeof mark)
		return 23;
	uint64_t seen;
	memcpy(&seen, c.seg.map.base + off, sizeof seen);
	if (seen != mark)
		return 24; /* still a private zero page */
	close(fd);
	shmet_buf_free(&b);
	collector_close(&c);
	return 0;
}

static void test_reader_hostile_truncated_under_collector_survived(void **state)
{
	(void)state;
	const char *p = made("hdr", "clean") /* tsupport keeps 16 paths: share one */;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(truncated_child(p));
	int st = tsupport_wait(pid);
	if (st != 0)
		fail_msg("the collector %s %d after the segment was truncated (see truncated_child)",
			 st > 128 ? "died of signal" : "failed check", st > 128 ? st - 128 : st);
}

/* The file's size flips between 8192 bytes and whole while the collector
 * scans and renders in a loop: whatever instant a read lands on, it
 * survives, and once the size stays it is ready and faultless again. */
static int truncation_race_child(const char *p)
{
	static struct collector c;
	struct collector_config cfg = {.segment = p, .listen_host = "127.0.0.1", .scan_interval = 1};
	char err[256];
	if (collector_open(&c, &cfg, err, sizeof err) != SHMET_OK)
		return 10;
	uint64_t size = c.seg.map.size;
	pid_t cutter = fork();
	if (cutter < 0)
		return 11;
	if (cutter == 0) {
		int fd = open(p, O_RDWR);
		for (unsigned k = 0;; k++) {
			if (fd < 0 || ftruncate(fd, (k & 1) ? (off_t)size : 8192) != 0)
				_exit(1);
			for (volatile unsigned spin = 0; spin < (k % 13) * 500; spin++)
				;
		}
	}
	shmet_buf b;
	shmet_buf_init(&b);
	uint64_t t0 = shmet__now_ns(CLOCK_MONOTONIC), rounds = 0;
	while (shmet__now_ns(CLOCK_MONOTONIC) - t0 < 1500000000ull) {
		collector_scan(&c);
		shmet_buf_reset(&b);
		collector_render(&c, &b, SHMET_EXPO_TEXT);
		rounds++;
	}
	kill(cutter, SIGKILL);
	if (tsupport_wait(cutter) != 128 + SIGKILL)
		return 12;
	int fd = open(p, O_RDWR);
	if (fd < 0 || ftruncate(fd, (off_t)size) != 0)
		return 13;
	close(fd);
	collector_scan(&c);
	if (c.truncated || c.truncations == 0)
		return 14;
	uint64_t faults = collector_bus_errors;
	collector_scan(&c);
	shmet_buf_reset(&b);
	if (!collector_render(&c, &b, SHMET_EXPO_TEXT) || collector_bus_errors != faults)
		return 15;
	fprintf(stderr, "%llu scans and renders, %llu truncations seen, %llu bus errors caught\n",
		(unsigned long long)rounds, (unsigned long long)c.truncations, (unsigned long long)faults);
	shmet_buf_free(&b);
	collector_close(&c);
	return 0;
}

static void test_reader_hostile_truncation_race_survived(void **state)
{
	(void)state;
	const char *p = made("hdr", "clean");
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(truncation_race_child(p));
	int st = tsupport_wait(pid);
	if (st != 0)
		fail_msg("the collector %s %d while the segment's size flipped", st > 128 ? "died of signal" : "failed check",
			 st > 128 ? st - 128 : st);
}

/* ---- command-line modes ---- */

static volatile sig_atomic_t stop;
static void on_stop(int sig)
{
	(void)sig;
	stop = 1;
}

static int make_segment_main(int argc, char **argv)
{
	const char *path = NULL, *kind = "clean";
	uint64_t region_size = FUZZ_REGION_SIZE;
	int stay = 0;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--stay") == 0)
			stay = 1;
		else if (strcmp(argv[i], "--region-size") == 0 && i + 1 < argc)
			region_size = strtoull(argv[++i], NULL, 10);
		else if (!path)
			path = argv[i];
		else
			kind = argv[i];
	}
	const struct kind *k = path ? find_kind(kind) : NULL;
	if (!k) {
		fprintf(stderr, "usage: %s --make-segment PATH [KIND] [--region-size BYTES] [--stay]\nkinds:", argv[0]);
		for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++)
			fprintf(stderr, " %s", kinds[i].name);
		fputc('\n', stderr);
		return 2;
	}
	if (!stay)
		return make_dead(path, region_size, k) == 0 ? 0 : 1;
	/* This process is the master: its region stays alive until a signal. */
	unlink(path);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	build_segment(path, region_size);
	if (damage(path, k) != 0)
		return 1;
	char ready[4200];
	snprintf(ready, sizeof ready, "%s.ready", path);
	FILE *f = fopen(ready, "w");
	if (!f)
		return 1;
	fprintf(f, "%d\n", (int)getpid());
	fclose(f);
	while (!stop)
		pause();
	unlink(ready);
	return 0;
}

/* Fuzz input format (tests/fuzz_reader.c): a sequence of chunks
 *   u8 area | u16 offset | u16 length | length bytes      (little-endian)
 * area % 10: 0-3 region i, 4-5 retired half (header included), 6 the
 * region table, 7 the header from byte 128 on, 8 liveness (bit i of byte 0:
 * region i's owner is alive), 9 the header's first 128 bytes. */
static void put_chunk(FILE *f, unsigned area, uint64_t off, const unsigned char *p, uint64_t len)
{
	while (len) {
		uint16_t n = len > 65535 ? 65535 : (uint16_t)len, o16 = (uint16_t)off;
		unsigned char h[5] = {(unsigned char)area, (unsigned char)o16, (unsigned char)(o16 >> 8), (unsigned char)n,
				      (unsigned char)(n >> 8)};
		fwrite(h, 1, 5, f);
		fwrite(p, 1, n, f);
		p += n, off += n, len -= n;
	}
}

/* An area's used parts: directory and cells. */
static void put_area(FILE *f, unsigned area, uint64_t base_off, const unsigned char *base, uint64_t size)
{
	struct shmet_region_header rg;
	memcpy(&rg, base, sizeof rg);
	uint64_t dir = rg.rg_dir_end <= size ? rg.rg_dir_end : size;
	uint64_t cells = rg.rg_cell_low <= size ? rg.rg_cell_low : size;
	put_chunk(f, area, base_off, base, dir ? dir : sizeof rg);
	if (cells < size && cells >= dir)
		put_chunk(f, area, base_off + cells, base + cells, size - cells);
}

/* The segment file at path (ours, made just now: its header is trusted,
 * and read raw so that a damaged header still makes a seed). */
static int write_seed(const char *dir, const char *name, const char *path, unsigned alive, int with_header)
{
	struct stat st;
	FILE *in = fopen(path, "rb");
	if (!in || fstat(fileno(in), &st) != 0) {
		if (in)
			fclose(in);
		return -1;
	}
	unsigned char *img = calloc(1, (size_t)st.st_size);
	size_t got = img ? fread(img, 1, (size_t)st.st_size, in) : 0;
	fclose(in);
	struct shmet_seg_header h;
	if (got != (size_t)st.st_size || got < sizeof h) {
		free(img);
		return -1;
	}
	memcpy(&h, img, sizeof h);
	uint64_t hdr_size = shmet_retired_header_size(h.sh_region_count);
	if (h.sh_region_count != HOSTILE_REGIONS || h.sh_total_size != (uint64_t)st.st_size) {
		free(img);
		return -1;
	}
	char out[4200];
	snprintf(out, sizeof out, "%s/seed-%s", dir, name);
	FILE *f = fopen(out, "wb");
	if (!f) {
		free(img);
		return -1;
	}
	unsigned char mask = (unsigned char)alive;
	put_chunk(f, 8, 0, &mask, 1);
	if (with_header)
		put_chunk(f, 9, 0, img, 128);
	put_chunk(f, 7, 0, img + 128, 32);
	put_chunk(f, 6, 0, img + h.sh_region_table_off, 64ull * h.sh_region_count);
	for (uint32_t i = 0; i < h.sh_region_count; i++) {
		struct shmet_region_slot slot;
		memcpy(&slot, img + h.sh_region_table_off + 64ull * i, sizeof slot);
		if (shmet_state_of(slot.rs_state_gen) == SHMET_REGION_LIVE)
			put_area(f, i, 0, img + h.sh_regions_off + i * h.sh_region_size, h.sh_region_size);
	}
	for (unsigned k = 0; k < 2; k++) {
		const unsigned char *half = img + h.sh_retired_off + k * h.sh_retired_half_size;
		put_chunk(f, 4 + k, 0, half, sizeof(struct shmet_retired_header) + 8ull * h.sh_region_count);
		put_area(f, 4 + k, hdr_size, half + hdr_size, h.sh_retired_half_size - hdr_size);
	}
	free(img);
	return fclose(f) == 0 ? 0 : -1;
}

static int make_seeds_main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s --make-seeds DIR\n", argv[0]);
		return 2;
	}
	const char *dir = argv[2];
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		perror(dir);
		return 1;
	}
	const char *path = tsupport_segment("seeds");
	int n = 0;
	for (size_t i = 0; i < sizeof kinds / sizeof *kinds; i++) {
		const struct kind *k = &kinds[i];
		if (!k->damage && strcmp(k->name, "bad-version") != 0)
			continue; /* the fuzz geometry is fixed: no truncation */
		if (make_dead(path, FUZZ_REGION_SIZE, k) != 0) {
			fprintf(stderr, "seed %s: could not make the segment\n", k->name);
			return 1;
		}
		if (write_seed(dir, k->name, path, 0, !k->damage) != 0)
			return 1;
		n++;
		if (k->damage == k_clean) {
			/* the same with the master alive, and with the header chunk */
			if (write_seed(dir, "clean-alive", path, 1, 0) != 0 || write_seed(dir, "clean-header", path, 1, 1) != 0)
				return 1;
			n += 2;
		}
	}
	unlink(path);
	printf("%d seeds in %s\n", n, dir);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "--make-segment") == 0)
		return make_segment_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "--make-seeds") == 0)
		return make_seeds_main(argc, argv);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reader_hostile_clean_segment_exact),
		cmocka_unit_test(test_reader_hostile_truncated_refused),
		cmocka_unit_test(test_reader_hostile_magic_and_version_refused),
		cmocka_unit_test(test_reader_hostile_family_self_reference_skipped),
		cmocka_unit_test(test_reader_hostile_family_forward_reference_skipped),
		cmocka_unit_test(test_reader_hostile_family_at_series_skipped),
		cmocka_unit_test(test_reader_hostile_rec_size_zero_ends_walk),
		cmocka_unit_test(test_reader_hostile_rec_size_huge_ends_walk),
		cmocka_unit_test(test_reader_hostile_length_past_end_skipped),
		cmocka_unit_test(test_reader_hostile_cells_outside_skipped),
		cmocka_unit_test(test_reader_hostile_invalid_utf8_skipped),
		cmocka_unit_test(test_reader_hostile_worker_label_on_per_worker_gauge_skipped),
		cmocka_unit_test(test_reader_hostile_dir_end_out_of_bounds_reads_empty),
		cmocka_unit_test(test_reader_hostile_other_records_survive),
		cmocka_unit_test(test_reader_hostile_dead_owner_reported_dead),
		cmocka_unit_test(test_reader_hostile_histogram_bounds_checked),
		cmocka_unit_test(test_reader_hostile_fold_stays_inside_inactive_half),
		cmocka_unit_test(test_reader_hostile_every_damage_read_and_folded),
		cmocka_unit_test(test_reader_hostile_random_damage_survived),
		cmocka_unit_test(test_reader_hostile_header_rewritten_after_open_ignored),
		cmocka_unit_test(test_reader_hostile_header_rewritten_writer_claims_safely),
		cmocka_unit_test(test_reader_hostile_flipped_bytes_never_rendered),
		cmocka_unit_test(test_reader_hostile_truncated_under_collector_survived),
		cmocka_unit_test(test_reader_hostile_truncation_race_survived),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
