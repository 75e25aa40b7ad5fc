/* POST /api/v1/metrics/custom and /api/v1/metrics/batch: samples pushed over
 * HTTP, written into a region that this collector process owns.
 *
 * A request goes through, in order:
 *   1. (first call, headers only) push enabled? per-client token bucket,
 *      bearer token, Content-Type, Content-Length against the body limit;
 *   2. (following calls) the body accumulates in struct api_req, bounded;
 *   3. (last call) nesting pre-scan, jansson parse, then every sample is
 *      checked on its own (names, type, labels, numbers);
 *   4. under push_mu: each sample is resolved against the families this
 *      process pushed, the ones a request is about to create and the view
 *      of the segment (type, labels, buckets, name clashes, series limit),
 *      and the bytes the new families and series take in the region are
 *      added up and compared with what is free;
 *   5. only if nothing failed: register the new families and series (the
 *      pre-check makes this succeed), then write every value.
 * So a request is applied whole or not at all; the one way to a partial
 * outcome is a registration failing after the pre-check said it would fit
 * (a bug or out of memory), answered 507 with what was registered and no
 * value written.
 *
 * Persistence: the push region is an ordinary region.  When this process
 * stops or dies, the next collector folds it into the retired totals like a
 * dead worker's, so counters, histograms and summaries keep their totals;
 * gauges are registered in most-recent mode, which the fold keeps.
 */
#include "api_int.h"

#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <urcu-bp.h>

#define MAX_TOKEN_FILE 4096
#define MAX_ERRORS_SHOWN 100
#define DISCARD_MAX ((size_t)64 << 20) /* body bytes past the limit we read and drop before hanging up */

/* ---- jansson allocation arena ---------------------------------------------
 * Parsing a 1,000-sample batch makes ~10,000 small allocations; malloc and
 * free are a quarter of the parse time.  While a request body is parsed,
 * jansson allocates from a per-thread bump arena instead; free() of an arena
 * pointer is a no-op and the arena is reset when the request is done.  Rules
 * that keep this safe: the arena is on only around json_loadb (everything
 * else, responses included, comes from malloc), and the parsed tree is
 * released (json_decref) on the same thread before the arena is reset.
 * Sanitizer builds keep plain malloc so that they still see every object. */
#ifdef __has_feature
#define API__ASAN __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#elif defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define API__ASAN 1
#else
#define API__ASAN 0
#endif
#if API__ASAN
#define API_ARENA 0
#else
#define API_ARENA 1
#endif

#define ARENA_MAX ((size_t)32 << 20)

static __thread struct {
	char *base;
	size_t used, cap;
	bool on;
} ja;
static pthread_key_t ja_key;

/* The per-sample work area of a request, kept per thread between requests
 * (a 1,000-sample batch needs ~450 KB: malloc would map and fault it in
 * afresh for every request). */
static __thread struct item *scratch;
static __thread size_t scratch_cap;
static pthread_key_t scratch_key;

static void *ja_malloc(size_t n)
{
	if (ja.on) {
		size_t m = (n + 15) & ~(size_t)15;
		if (m >= n && ja.cap - ja.used >= m) {
			void *p = ja.base + ja.used;
			ja.used += m;
			return p;
		}
	}
	return malloc(n);
}

static void ja_free(void *p)
{
	if (ja.base && (char *)p >= ja.base && (char *)p < ja.base + ja.cap)
		return;
	free(p);
}

static void ja_begin(size_t body_len)
{
#if API_ARENA
	size_t want = body_len > ARENA_MAX / 12 ? ARENA_MAX : body_len * 12 + 65536;
	if (ja.cap < want) {
		/* No pointer into the old arena is alive between requests. */
		free(ja.base);
		ja.base = malloc(want);
		ja.cap = ja.base ? want : 0;
		pthread_setspecific(ja_key, ja.base); /* freed when the thread exits */
	}
	ja.used = 0;
	ja.on = ja.base != NULL;
#else
	(void)body_len;
#endif
}

static void ja_off(void) { ja.on = false; }
static void ja_end(void)
{
	ja.on = false;
	ja.used = 0;
}

/* ---- pushed families ---- */

struct push_family {
	char *name, *help;
	enum shmet_type type;
	uint32_t nlabels, nbuckets;
	char *label_names[SHMET_MAX_LABELS];
	double bounds[SHMET_MAX_BUCKETS];
	shmet_family *fam;    /* NULL while only a request's plan */
	/* series key ("v1\xffv2\xff") -> cell offset in our region; 0: the
	 * series exists in the segment (another region, the retired totals)
	 * but not yet in ours. */
	struct keymap series;
};

static void family_free(struct push_family *f)
{
	if (!f)
		return;
	free(f->name);
	free(f->help);
	for (uint32_t i = 0; i < f->nlabels; i++)
		free(f->label_names[i]);
	keymap_free(&f->series);
	free(f);
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);
	return d ? memcpy(d, s, n) : NULL;
}

/* ---- token bucket per client address ----
 * 256 sets of 8 slots: a client maps to a set by its address; when the set
 * is full the least recently seen client is forgotten (it then starts over
 * with a full bucket: with more than 8 clients in one set the limit loosens
 * for them, it never blocks anyone who is within it). */
#define RATE_SETS 256u
#define RATE_WAYS 8u

struct rate_slot {
	unsigned char addr[16];
	bool used;
	double tokens;
	uint64_t last_ns;
};

static bool rate_take(struct api *a, struct MHD_Connection *conn, double *retry_after)
{
	const struct collector_config *cfg = &a->c->cfg;
	unsigned char key[16] = {0};
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;
	if (sa && sa->sa_family == AF_INET) {
		key[10] = key[11] = 0xff; /* as an IPv4-mapped IPv6 address */
		memcpy(key + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
	} else if (sa && sa->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
	}
	double burst = cfg->push_burst >= 1 ? cfg->push_burst : 1;
	uint64_t now = shmet__now_ns(CLOCK_MONOTONIC);
	struct rate_slot *set = &a->rate[(keymap_hash((const char *)key, 16) % RATE_SETS) * RATE_WAYS];
	bool ok;
	pthread_mutex_lock(&a->rate_mu);
	struct rate_slot *s = NULL, *victim = &set[0];
	for (uint32_t i = 0; i < RATE_WAYS && !s; i++) {
		if (set[i].used && memcmp(set[i].addr, key, 16) == 0)
			s = &set[i];
		else if (!set[i].used || (victim->used && set[i].last_ns < victim->last_ns))
			victim = &set[i];
	}
	if (!s) {
		s = victim;
		memcpy(s->addr, key, 16);
		s->used = true;
		s->tokens = burst;
		s->last_ns = now;
	}
	s->tokens += (double)(now - s->last_ns) / 1e9 * cfg->push_rate;
	if (s->tokens > burst)
		s->tokens = burst;
	s->last_ns = now;
	ok = s->tokens >= 1;
	if (ok)
		s->tokens -= 1;
	else
		*retry_after = (1 - s->tokens) / cfg->push_rate;
	pthread_mutex_unlock(&a->rate_mu);
	return ok;
}

/* ---- bearer token ---- */

/* Compares in time that depends on the configured token's length only. */
static bool token_equal(const char *want, size_t want_len, const char *got, size_t got_len)
{
	volatile unsigned char diff = (unsigned char)(want_len != got_len);
	for (size_t i = 0; i < want_len; i++)
		diff |= (unsigned char)want[i] ^ (unsigned char)(i < got_len ? got[i] : 0);
	return diff == 0;
}

/* NULL when the request carries the token, else why not. */
static const char *auth_problem(struct api *a, struct MHD_Connection *conn)
{
	const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h)
		return "missing Authorization header: send Authorization: Bearer <token>";
	while (*h == ' ' || *h == '\t')
		h++;
	if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
		return "the Authorization scheme must be Bearer";
	h += 6;
	while (*h == ' ' || *h == '\t')
		h++;
	size_t n = strlen(h);
	while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
		n--;
	if (!token_equal(a->token, a->token_len, h, n))
		return "invalid bearer token";
	return NULL;
}

static int read_token(struct api *a, const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "cannot read the push token file %s: %s", path, strerror(errno));
		return SHMET_E_SYS;
	}
	struct stat st;
	char buf[MAX_TOKEN_FILE + 1];
	ssize_t n = 0;
	int rc = SHMET_E_INVALID_ARG;
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "cannot stat the push token file %s: %s", path, strerror(errno));
		goto close_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "the push token file %s is not a regular file", path);
		goto close_fd;
	}
	if (st.st_mode & 0007) {
		snprintf(err, errlen, "the push token file %s is accessible by other users (mode %04o): chmod 600 it", path,
			 (unsigned)(st.st_mode & 07777));
		goto close_fd;
	}
	if (st.st_mode & 0070)
		collector_log("warning: the push token file %s is accessible by its group (mode %04o)", path,
			      (unsigned)(st.st_mode & 07777));
	for (;;) {
		ssize_t r = read(fd, buf + n, sizeof buf - (size_t)n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "cannot read the push token file %s: %s", path, strerror(errno));
			goto close_fd;
		}
		if (r == 0)
			break;
		n += r;
		if ((size_t)n == sizeof buf) {
			snprintf(err, errlen, "the push token file %s is larger than %d bytes: it should hold one token",
				 path, MAX_TOKEN_FILE);
			goto close_fd;
		}
	}
	size_t lo = 0, hi = (size_t)n;
	while (hi > lo && (buf[hi - 1] == '\n' || buf[hi - 1] == '\r' || buf[hi - 1] == ' ' || buf[hi - 1] == '\t'))
		hi--;
	while (lo < hi && (buf[lo] == ' ' || buf[lo] == '\t'))
		lo++;
	if (hi == lo) {
		snprintf(err, errlen, "the push token file %s is empty", path);
		goto close_fd;
	}
	for (size_t i = lo; i < hi; i++)
		if ((unsigned char)buf[i] < 0x21 || (unsigned char)buf[i] > 0x7e) {
			snprintf(err, errlen,
				 "the push token in %s must be one line of printable ASCII without spaces (byte %zu is not)",
				 path, i);
			goto close_fd;
		}
	if (hi - lo < 16)
		collector_log("warning: the push token is short (%zu bytes); use at least 16 random bytes, e.g. "
			      "`openssl rand -hex 32`", hi - lo);
	a->token = malloc(hi - lo + 1);
	if (!a->token) {
		snprintf(err, errlen, "out of memory");
		rc = SHMET_E_SYS;
		goto close_fd;
	}
	memcpy(a->token, buf + lo, hi - lo);
	a->token[hi - lo] = 0;
	a->token_len = hi - lo;
	rc = SHMET_OK;
close_fd:
	memset(buf, 0, sizeof buf);
	close(fd);
	return rc;
}

static size_t series_key(char *key, const char *const *values, uint32_t n);

/* ---- a push region taken back from an earlier collector ----
 * Its families and series become this process's again (the writer's index
 * and ours), so pushes land in the same cells and no record is written
 * twice.  Only what a push could have made is taken: counters, histograms,
 * summaries and most-recent gauges, each family once; anything else in the
 * region stays as it is and keeps adding up in the view. */

/* The writer's registration of a pushed family: pushed gauges are
 * most-recent, so a restarted collector's value carries over. */
static void push_spec(const struct push_family *f, struct shmet_family_spec *spec)
{
	memset(spec, 0, sizeof *spec);
	spec->type = f->type;
	spec->name = f->name;
	spec->help = f->help;
	spec->nlabels = f->nlabels;
	spec->label_names = (const char *const *)f->label_names;
	spec->gauge_mode = SHMET_GAUGE_MOSTRECENT;
	spec->nbuckets = f->nbuckets;
	spec->buckets = f->bounds;
}

static int adopt_index(struct api *a)
{
	struct collector *c = a->c;
	struct shmet_area area;
	char why[SHMET_ERRBUF];
	if (shmet_region_area(&c->seg, (uint32_t)a->region, &area, why) != SHMET_OK) {
		collector_log("push: region %d: %s", a->region, why);
		return -1;
	}
	struct keymap by_off = {0}; /* family record offset -> index in a->fams + 1 */
	struct shmet_dir_iter it;
	struct shmet_record r;
	char key[SHMET_SERIES_KEY_MAX];
	uint32_t nf = 0, ns = 0;
	int rc;
	shmet_dir_begin(&it, &area);
	while ((rc = shmet_dir_next(&it, &r, why)) != 0) {
		if (rc < 0)
			continue;
		const struct shmet_family_view *fv = &r.fam;
		uint32_t foff = fv->off;
		if (r.kind == SHMET_REC_FAMILY) {
			if ((fv->type == SHMET_GAUGE && fv->mode != SHMET_GAUGE_MOSTRECENT) ||
			    keymap_find(&a->fam_index, fv->name, fv->name_len))
				continue;
			struct push_family *f = calloc(1, sizeof *f);
			if (!f)
				goto oom;
			f->type = fv->type;
			f->nlabels = fv->nlabels;
			f->nbuckets = fv->nbuckets;
			for (uint32_t i = 0; i < fv->nbuckets; i++)
				f->bounds[i] = shmet_bound(fv, i);
			f->name = malloc(fv->name_len + 1);
			f->help = malloc(fv->help_len + 1);
			bool ok = f->name && f->help;
			for (uint32_t i = 0; ok && i < fv->nlabels; i++) {
				ok = (f->label_names[i] = malloc(fv->label_lens[i] + 1)) != NULL;
				if (ok) {
					memcpy(f->label_names[i], fv->label_names[i], fv->label_lens[i]);
					f->label_names[i][fv->label_lens[i]] = 0;
				}
			}
			if (!ok) {
				family_free(f);
				goto oom;
			}
			memcpy(f->name, fv->name, fv->name_len);
			f->name[fv->name_len] = 0;
			memcpy(f->help, fv->help, fv->help_len);
			f->help[fv->help_len] = 0;
			struct shmet_family_spec spec;
			push_spec(f, &spec);
			size_t nl = fv->name_len;
			if ((f->type == SHMET_HISTOGRAM && f->nbuckets == 0) ||
			    (f->type == SHMET_COUNTER && !(nl > 6 && memcmp(f->name + nl - 6, "_total", 6) == 0))) {
				/* the writer would register another shape (default
				 * buckets) or name (_total appended) than the record's */
				family_free(f);
				continue;
			}
			if (shmet__adopt_family(&spec, foff, &f->fam) != SHMET_OK) {
				collector_log("push: region %d: family %s not taken back: %s", a->region, f->name,
					      shmet_last_error());
				family_free(f);
				continue;
			}
			if (a->nfams == a->fams_cap) {
				uint32_t cap = a->fams_cap ? a->fams_cap * 2 : 16;
				struct push_family **n = realloc(a->fams, cap * sizeof *n);
				if (!n) {
					family_free(f);
					goto oom;
				}
				a->fams = n;
				a->fams_cap = cap;
			}
			if (keymap_put(&a->fam_index, f->name, strlen(f->name), a->nfams) != 0 ||
			    keymap_put(&by_off, (const char *)&foff, sizeof foff, a->nfams + 1) != 0) {
				family_free(f);
				goto oom;
			}
			a->fams[a->nfams++] = f;
			nf++;
			continue;
		}
		struct kv *kv = keymap_find(&by_off, (const char *)&foff, sizeof foff);
		if (!kv)
			continue;
		struct push_family *f = a->fams[kv->val - 1];
		char vals[SHMET_MAX_LABELS][SHMET_MAX_VALUE_LEN + 1];
		const char *values[SHMET_MAX_LABELS];
		for (uint32_t i = 0; i < r.series.nvalues; i++) {
			memcpy(vals[i], r.series.values[i], r.series.value_lens[i]);
			vals[i][r.series.value_lens[i]] = 0;
			values[i] = vals[i];
		}
		size_t kl = series_key(key, values, f->nlabels);
		if (keymap_find(&f->series, key, kl) ||
		    shmet__adopt_series(f->fam, values, r.series.cell_off) != SHMET_OK)
			continue;
		if (keymap_put(&f->series, key, kl, r.series.cell_off) != 0)
			goto oom;
		ns++;
	}
	/* the same families' series elsewhere in the segment count toward the
	 * series limit, as for a family first pushed after a restart */
	const struct view *v = c->view;
	for (uint32_t k = 0; v && k < a->nfams; k++) {
		struct push_family *f = a->fams[k];
		const struct view_family *vf = api_view_family(v, f->name);
		for (uint32_t i = 0; vf && vf->nlabels == f->nlabels && i < vf->nseries; i++) {
			size_t kl = series_key(key, vf->series[i].values, vf->nlabels);
			if (!keymap_find(&f->series, key, kl) && keymap_put(&f->series, key, kl, 0) != 0)
				goto oom;
		}
	}
	keymap_free(&by_off);
	collector_log("push: region %d taken back with %u families and %u series", a->region, nf, ns);
	return 0;
oom:
	keymap_free(&by_off);
	collector_log("push: out of memory while taking back region %d", a->region);
	return -1;
}

/* ---- init / free / health ---- */

static void ja_thread_free(void *p) { free(p); }

int api_push_init(struct api *a, char *err, size_t errlen)
{
	struct collector *c = a->c;
	if (!c->cfg.push_token_file) {
		collector_log("push API off (start with --push-token-file to enable it)");
		return SHMET_OK;
	}
	int rc = read_token(a, c->cfg.push_token_file, err, errlen);
	if (rc != SHMET_OK)
		return rc;
	struct shmet_options o;
	memset(&o, 0, sizeof o);
	o.path = c->seg.path;
	o.no_create = true;
	rc = SHMET_E_INVALID_ARG;
	if (c->push_region >= 0) {
		/* the region an earlier collector pushed into: its series and values go on */
		rc = shmet__init_adopted(&o, (uint32_t)c->push_region);
		if (rc != SHMET_OK) {
			collector_log("push: cannot use region %d again (%s); it will be folded", c->push_region,
				      shmet_last_error());
			collector_release_push_region(c);
		}
	}
	if (rc != SHMET_OK)
		rc = shmet_init(&o);
	if (rc != SHMET_OK) {
		snprintf(err, errlen, "push API: cannot claim a region for pushed series in %s: %s", c->seg.path,
			 shmet_last_error());
		return rc;
	}
	a->region = shmet_region_index();
	collector_guard_writer(shmetd_writer_map()); /* its pages past a truncated end must not kill us */
	if (c->push_region >= 0 && a->region == c->push_region && adopt_index(a) != 0)
		return SHMET_E_SYS;
	if (a->region >= 0) {
		/* So that the next collector recognises it.  relaxed: it reads the
		 * flag only after this process died, which the kernel orders. */
		struct shmet_region_slot *slot = (struct shmet_region_slot *)(void *)(c->seg.map.base + c->seg.table_off +
										      (uint64_t)a->region * SHMET_CACHELINE);
		__atomic_fetch_or(&slot->rs_flags, SHMET_SLOT_COLLECTOR, __ATOMIC_RELAXED);
	}
	a->rate = calloc(RATE_SETS * RATE_WAYS, sizeof *a->rate);
	if (!a->rate) {
		snprintf(err, errlen, "out of memory");
		return SHMET_E_SYS;
	}
	if (pthread_key_create(&scratch_key, ja_thread_free) != 0) {
		snprintf(err, errlen, "pthread_key_create failed");
		return SHMET_E_SYS;
	}
#if API_ARENA
	if (pthread_key_create(&ja_key, ja_thread_free) != 0) {
		snprintf(err, errlen, "pthread_key_create failed");
		return SHMET_E_SYS;
	}
	/* Before any thread uses jansson: the functions are process-wide. */
	json_set_alloc_funcs(ja_malloc, ja_free);
#else
	(void)ja_thread_free;
	(void)ja_key;
	(void)ja_malloc;
	(void)ja_free;
#endif
	a->push_enabled = true;
	collector_log("push API on: region %d; at most %u samples a batch, %u series a family, %zu-byte bodies, "
		      "%g requests/s per client (burst %g)",
		      a->region, c->cfg.push_max_batch, c->cfg.push_series_limit, c->cfg.push_body_limit,
		      c->cfg.push_rate, c->cfg.push_burst);
	return SHMET_OK;
}

void api_push_free(struct api *a)
{
	for (uint32_t i = 0; i < a->nfams; i++)
		family_free(a->fams[i]);
	free(a->fams);
	keymap_free(&a->fam_index);
	if (a->token) {
		memset(a->token, 0, a->token_len);
		free(a->token);
	}
	free(a->rate);
	a->fams = NULL;
	a->nfams = 0;
	a->token = NULL;
	a->rate = NULL;
}

void api_push_health(struct api *a, json_t *o)
{
	const struct collector_config *cfg = &a->c->cfg;
	json_object_set_new(o, "enabled", json_boolean(a->push_enabled));
	if (!a->push_enabled)
		return;
	uint64_t series = 0;
	uint32_t nfams;
	pthread_mutex_lock(&a->push_mu);
	nfams = a->nfams;
	for (uint32_t i = 0; i < a->nfams; i++)
		for (size_t k = 0; a->fams[i]->series.slots && k <= a->fams[i]->series.mask; k++)
			series += a->fams[i]->series.slots[k].key && a->fams[i]->series.slots[k].val;
	pthread_mutex_unlock(&a->push_mu);
	json_object_set_new(o, "region", json_integer(a->region));
	json_object_set_new(o, "families", json_integer(nfams));
	json_object_set_new(o, "series", json_integer((json_int_t)series));
	json_object_set_new(o, "series_created",
			    json_integer((json_int_t)__atomic_load_n(&a->st_series_created, __ATOMIC_RELAXED)));
	json_object_set_new(o, "requests", json_integer((json_int_t)__atomic_load_n(&a->st_requests, __ATOMIC_RELAXED)));
	json_object_set_new(o, "samples", json_integer((json_int_t)__atomic_load_n(&a->st_samples, __ATOMIC_RELAXED)));
	json_object_set_new(o, "rejected", json_integer((json_int_t)__atomic_load_n(&a->st_rejected, __ATOMIC_RELAXED)));
	json_object_set_new(o, "rate_limited",
			    json_integer((json_int_t)__atomic_load_n(&a->st_rate_limited, __ATOMIC_RELAXED)));
	json_object_set_new(o, "unauthorized",
			    json_integer((json_int_t)__atomic_load_n(&a->st_unauthorized, __ATOMIC_RELAXED)));
	json_object_set_new(o, "max_batch", json_integer(cfg->push_max_batch));
	json_object_set_new(o, "series_limit", json_integer(cfg->push_series_limit));
	json_object_set_new(o, "body_limit", json_integer((json_int_t)cfg->push_body_limit));
	json_object_set_new(o, "rate", json_real(cfg->push_rate));
	json_object_set_new(o, "burst", json_real(cfg->push_burst));
}

/* ---- one request's samples ---- */

enum op { OP_INC, OP_SET, OP_OBSERVE };

struct item {
	/* checked on its own (phase 1); strings point into the parsed tree */
	const char *name;
	size_t name_len;
	bool add_total; /* a counter named without _total: the writer's rule */
	enum shmet_type type;
	const char *help;
	uint32_t nlabels;
	const char *lnames[SHMET_MAX_LABELS], *lvalues[SHMET_MAX_LABELS];
	json_t *buckets;
	uint32_t nbuckets;
	enum op op;
	bool is_int;
	uint64_t u;
	double v;
	/* resolved (phase 2) */
	uint32_t t;                          /* index into req.t */
	const char *values[SHMET_MAX_LABELS]; /* in the family's label order */
	uint32_t off;                        /* cell offset; 0 until the series is in our region */
	bool adopted;                        /* the series exists elsewhere in the segment */
};

struct touched {
	struct push_family *f; /* NULL: the family cannot take pushes (see err) */
	bool is_new;           /* f is this request's plan, registered in phase 3 */
	bool adopted;          /* ... after a family already in the segment */
	uint32_t new_series;
	const char *err_field, *err_code;
	char *err;
};

struct req {
	struct api *a;
	json_t *errors;
	uint32_t nerrors;
	struct item *items;
	uint32_t n;
	struct touched *t;
	uint32_t nt, tcap;
	struct keymap tindex;  /* canonical name -> index in t */
	struct keymap pending; /* u32 t index + series key: series this request creates in our region */
	uint64_t need;         /* region bytes the new families and series take */
	uint32_t last_t;
	char last_name[SHMET_MAX_NAME_LEN + 8];
};

static void add_error(struct req *r, uint32_t index, const char *field, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void add_error(struct req *r, uint32_t index, const char *field, const char *code, const char *fmt, ...)
{
	r->nerrors++;
	if (json_array_size(r->errors) >= MAX_ERRORS_SHOWN)
		return;
	char msg[600], fld[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	snprintf(fld, sizeof fld, "%s", field);
	/* quoted names and values may be cut anywhere by the buffers */
	for (char *p = msg; !shmet_valid_utf8(msg, strlen(msg)) && *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	for (char *p = fld; !shmet_valid_utf8(fld, strlen(fld)) && *p; p++)
		if ((unsigned char)*p >= 0x80)
			*p = '?';
	json_array_append_new(r->errors, json_pack("{s:i, s:s, s:s, s:s}", "index", (int)index, "field", fld, "code",
						   code, "error", msg));
}


static bool get_number(struct req *r, uint32_t idx, const char *field, json_t *j, struct item *it, bool need_nonneg)
{
	if (json_is_integer(j)) {
		json_int_t i = json_integer_value(j);
		if (need_nonneg && i < 0) {
			add_error(r, idx, field, "negative", "a counter increment must be >= 0");
			return false;
		}
		/* the writer refuses more (a count never wraps): say so here */
		if (need_nonneg && (uint64_t)i > SHMET_COUNTER_ADD_MAX) {
			add_error(r, idx, field, "too_large", "a counter increment must be at most 2^53 (9007199254740992)");
			return false;
		}
		it->is_int = i >= 0;
		it->u = (uint64_t)i;
		it->v = (double)i;
		return true;
	}
	if (!json_is_real(j)) {
		add_error(r, idx, field, "wrong_type", "must be a number");
		return false;
	}
	double v = json_real_value(j);
	if (!isfinite(v)) {
		add_error(r, idx, field, "not_finite", "must be a finite number");
		return false;
	}
	if (need_nonneg && !(v >= 0)) {
		add_error(r, idx, field, "negative", "a counter increment must be >= 0");
		return false;
	}
	if (need_nonneg && v > (double)SHMET_COUNTER_ADD_MAX) {
		add_error(r, idx, field, "too_large", "a counter increment must be at most 2^53 (9007199254740992)");
		return false;
	}
	it->is_int = false;
	it->v = v;
	return true;
}

/* Phase 1: one sample on its own. */
static bool parse_item(struct req *r, uint32_t idx, json_t *s, struct item *it)
{
	uint32_t before = r->nerrors;
	it->name = NULL;
	it->name_len = 0;
	it->add_total = false;
	if (!json_is_object(s)) {
		add_error(r, idx, "", "wrong_type", "a sample must be a JSON object");
		return false;
	}
	json_t *jname = NULL, *jtype = NULL, *jhelp = NULL, *jlabels = NULL, *jvalue = NULL, *jinc = NULL,
	       *jobserve = NULL, *jbuckets = NULL;
	const char *key;
	json_t *val;
	json_object_foreach(s, key, val) {
		/* one comparison per key: this loop runs for every field of
		 * every sample */
		json_t **slot = NULL;
		switch (key[0]) {
		case 'n':
			slot = strcmp(key, "name") == 0 ? &jname : NULL;
			break;
		case 't':
			slot = strcmp(key, "type") == 0 ? &jtype : NULL;
			break;
		case 'h':
			slot = strcmp(key, "help") == 0 ? &jhelp : NULL;
			break;
		case 'l':
			slot = strcmp(key, "labels") == 0 ? &jlabels : NULL;
			break;
		case 'v':
			slot = strcmp(key, "value") == 0 ? &jvalue : NULL;
			break;
		case 'i':
			slot = strcmp(key, "inc") == 0 ? &jinc : NULL;
			break;
		case 'o':
			slot = strcmp(key, "observe") == 0 ? &jobserve : NULL;
			break;
		case 'b':
			slot = strcmp(key, "buckets") == 0 ? &jbuckets : NULL;
			break;
		}
		if (slot)
			*slot = val;
		else
			add_error(r, idx, key, "unknown_field",
				  "unknown field (a sample has name, type, help, labels, value, inc, observe, buckets)");
	}
	it->type = 0;
	if (!jtype)
		add_error(r, idx, "type", "missing", "missing: counter, gauge, histogram or summary");
	else if (!json_is_string(jtype))
		add_error(r, idx, "type", "wrong_type", "must be a string: counter, gauge, histogram or summary");
	else {
		const char *t = json_string_value(jtype);
		for (int k = SHMET_COUNTER; k <= SHMET_SUMMARY; k++)
			if (strcmp(t, shmet_type_name(k)) == 0)
				it->type = (enum shmet_type)k;
		if (!it->type)
			add_error(r, idx, "type", "invalid", "unknown type \"%.40s\": counter, gauge, histogram or summary",
				  t);
	}
	if (!jname)
		add_error(r, idx, "name", "missing", "missing: the metric name");
	else if (!json_is_string(jname))
		add_error(r, idx, "name", "wrong_type", "must be a string");
	else {
		it->name = json_string_value(jname);
		it->name_len = json_string_length(jname);
		size_t n = it->name_len;
		bool ends_total = n >= 6 && memcmp(it->name + n - 6, "_total", 6) == 0;
		if (n > SHMET_MAX_NAME_LEN - 6)
			add_error(r, idx, "name", "too_long", "longer than %u bytes", SHMET_MAX_NAME_LEN - 6);
		else if (!shmet_valid_metric_name(it->name, n) || (n == 6 && ends_total))
			add_error(r, idx, "name", "invalid_name", "\"%.200s\" is not a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
				  it->name);
		else if (strncmp(it->name, "shmetricsd_", 11) == 0)
			add_error(r, idx, "name", "reserved_name", "the shmetricsd_ prefix belongs to the collector");
		else if (it->type && it->type != SHMET_COUNTER && ends_total)
			add_error(r, idx, "name", "invalid_name", "only counters may end in _total");
		it->add_total = it->type == SHMET_COUNTER && !ends_total;
	}
	it->help = NULL;
	if (jhelp) {
		if (!json_is_string(jhelp))
			add_error(r, idx, "help", "wrong_type", "must be a string");
		else if (json_string_length(jhelp) > SHMET_MAX_HELP_LEN)
			add_error(r, idx, "help", "too_long", "longer than %u bytes", SHMET_MAX_HELP_LEN);
		else
			it->help = json_string_value(jhelp);
	}
	it->nlabels = 0;
	if (jlabels && !json_is_object(jlabels))
		add_error(r, idx, "labels", "wrong_type", "must be an object of label names to string values");
	else if (jlabels && json_object_size(jlabels) > SHMET_MAX_LABELS)
		add_error(r, idx, "labels", "too_many", "at most %u labels", SHMET_MAX_LABELS);
	else if (jlabels) {
		json_object_foreach(jlabels, key, val) {
			size_t kl = strlen(key);
			bool good = shmet_valid_label_name(key, kl) && strcmp(key, "le") != 0 && strcmp(key, "quantile") != 0 &&
				    json_is_string(val) && json_string_length(val) <= SHMET_MAX_VALUE_LEN;
			if (good) {
				it->lnames[it->nlabels] = key;
				it->lvalues[it->nlabels++] = json_string_value(val);
				continue;
			}
			char field[64 + SHMET_MAX_NAME_LEN];
			snprintf(field, sizeof field, "labels.%s", key);
			if (!shmet_valid_label_name(key, kl))
				add_error(r, idx, field, "invalid_label",
					  "\"%.200s\" is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)", key);
			else if (strcmp(key, "le") == 0 || strcmp(key, "quantile") == 0)
				add_error(r, idx, field, "reserved_label",
					  "\"%s\" is reserved for histogram buckets and summary quantiles", key);
			else if (!json_is_string(val))
				add_error(r, idx, field, "wrong_type", "a label value must be a string");
			else
				add_error(r, idx, field, "too_long", "label value longer than %u bytes", SHMET_MAX_VALUE_LEN);
		}
	}
	/* the value, by type */
	switch (it->type) {
	case SHMET_COUNTER:
		if (jvalue)
			add_error(r, idx, "value", "not_allowed", "a counter takes inc (an increment >= 0), not value");
		if (jobserve)
			add_error(r, idx, "observe", "not_allowed", "a counter takes inc, not observe");
		if (!jinc && !jvalue)
			add_error(r, idx, "inc", "missing", "a counter sample needs inc (an increment >= 0)");
		else if (jinc && get_number(r, idx, "inc", jinc, it, true))
			it->op = OP_INC;
		break;
	case SHMET_GAUGE:
		if (jobserve)
			add_error(r, idx, "observe", "not_allowed", "a gauge takes value (set) or inc (add)");
		if (jvalue && jinc)
			add_error(r, idx, "inc", "not_allowed", "give value (set) or inc (add), not both");
		else if (!jvalue && !jinc)
			add_error(r, idx, "value", "missing", "a gauge sample needs value (set) or inc (add)");
		else if (jvalue && get_number(r, idx, "value", jvalue, it, false))
			it->op = OP_SET;
		else if (jinc && get_number(r, idx, "inc", jinc, it, false))
			it->op = OP_INC;
		break;
	case SHMET_HISTOGRAM:
	case SHMET_SUMMARY:
		if (jvalue)
			add_error(r, idx, "value", "not_allowed", "a %s takes observe, not value", shmet_type_name(it->type));
		if (jinc)
			add_error(r, idx, "inc", "not_allowed", "a %s takes observe, not inc", shmet_type_name(it->type));
		if (!jobserve)
			add_error(r, idx, "observe", "missing", "a %s sample needs observe (a number)",
				  shmet_type_name(it->type));
		else if (get_number(r, idx, "observe", jobserve, it, false))
			it->op = OP_OBSERVE;
		break;
	}
	it->buckets = NULL;
	it->nbuckets = 0;
	if (jbuckets && it->type && it->type != SHMET_HISTOGRAM)
		add_error(r, idx, "buckets", "not_allowed", "only histograms have buckets");
	else if (jbuckets) {
		size_t nb = json_is_array(jbuckets) ? json_array_size(jbuckets) : 0;
		if (!json_is_array(jbuckets) || nb == 0)
			add_error(r, idx, "buckets", "wrong_type", "must be a non-empty array of upper bounds");
		else if (nb > SHMET_MAX_BUCKETS)
			add_error(r, idx, "buckets", "too_many", "at most %u buckets", SHMET_MAX_BUCKETS);
		else {
			double prev = -INFINITY;
			for (size_t k = 0; k < nb; k++) {
				json_t *b = json_array_get(jbuckets, k);
				double d = json_number_value(b);
				if (!json_is_number(b) || !isfinite(d) || !(d > prev)) {
					add_error(r, idx, "buckets", "invalid_buckets",
						  "bounds must be finite numbers, strictly increasing (+Inf is implied)");
					break;
				}
				prev = d;
			}
			it->buckets = jbuckets;
			it->nbuckets = (uint32_t)nb;
		}
	}
	return r->nerrors == before;
}

/* ---- phase 2: resolve against what exists ---- */

static void canonical(const struct item *it, char *out)
{
	memcpy(out, it->name, it->name_len);
	if (it->add_total)
		memcpy(out + it->name_len, "_total", 7);
	else
		out[it->name_len] = 0;
}

static size_t family_record_size(const struct push_family *f)
{
	size_t n = sizeof(struct shmet_rec_family) + f->nbuckets * 8u + strlen(f->name) + strlen(f->help);
	for (uint32_t i = 0; i < f->nlabels; i++)
		n += 2 + strlen(f->label_names[i]);
	return (size_t)shmet_align8(n);
}

static size_t series_record_size(const struct push_family *f, const char *const *values)
{
	size_t n = sizeof(struct shmet_rec_series);
	for (uint32_t i = 0; i < f->nlabels; i++)
		n += 2 + strlen(values[i]);
	return (size_t)shmet_align8(n) + shmet_cell_size(f->type, f->nbuckets);
}

/* Type of an existing or planned family with this name, 0 when none. */
static enum shmet_type known_type(struct req *r, const struct view *v, const char *name)
{
	struct kv *kv = keymap_find(&r->a->fam_index, name, strlen(name));
	if (kv)
		return r->a->fams[kv->val]->type;
	kv = keymap_find(&r->tindex, name, strlen(name));
	if (kv && r->t[kv->val].f)
		return r->t[kv->val].f->type;
	const struct view_family *vf = api_view_family(v, name);
	return vf ? vf->type : 0;
}

#define TYPE_BIT(t) (1u << (t))
#define ANY_TYPE 0x1eu

/* Would a family (name, type) expose a sample name that another family
 * already does?  The same rule as the writer's: histogram name_bucket /
 * _sum / _count, summary _sum / _count, and OpenMetrics' counter family
 * name without _total.  The family with the very same name is not a clash
 * here (it is checked for the same shape). */
static const char *name_clash(struct req *r, const struct view *v, const char *name, enum shmet_type type,
			      char *other, size_t cap)
{
	static const char *const sfx[] = {"_bucket", "_sum", "_count"};
	static const unsigned base_types[] = {TYPE_BIT(SHMET_HISTOGRAM),
					      TYPE_BIT(SHMET_HISTOGRAM) | TYPE_BIT(SHMET_SUMMARY),
					      TYPE_BIT(SHMET_HISTOGRAM) | TYPE_BIT(SHMET_SUMMARY)};
	size_t n = strlen(name);
	enum shmet_type t;
	for (int k = 0; k < 3; k++) {
		size_t sl = strlen(sfx[k]);
		/* our samples name_sfx against any family of that name */
		if (type == SHMET_HISTOGRAM || (type == SHMET_SUMMARY && k > 0)) {
			snprintf(other, cap, "%s%s", name, sfx[k]);
			if ((t = known_type(r, v, other)) != 0)
				return shmet_type_name(t);
		}
		/* our name against the samples of family base */
		if (n > sl && strcmp(name + n - sl, sfx[k]) == 0) {
			snprintf(other, cap, "%.*s", (int)(n - sl), name);
			if ((t = known_type(r, v, other)) != 0 && (TYPE_BIT(t) & base_types[k]))
				return shmet_type_name(t);
		}
	}
	if (type == SHMET_COUNTER) {
		snprintf(other, cap, "%.*s", (int)(n - 6), name);
		if ((t = known_type(r, v, other)) != 0)
			return shmet_type_name(t);
	} else {
		snprintf(other, cap, "%s_total", name);
		if ((t = known_type(r, v, other)) == SHMET_COUNTER)
			return shmet_type_name(t);
	}
	return NULL;
}

static size_t series_key(char *key, const char *const *values, uint32_t n)
{
	size_t len = 0;
	for (uint32_t i = 0; i < n; i++) {
		size_t l = strlen(values[i]);
		memcpy(key + len, values[i], l);
		len += l;
		key[len++] = (char)0xff;
	}
	return len;
}

static const uint32_t NO_T = UINT32_MAX;

static uint32_t touched_bad(struct req *r, uint32_t ti, const char *field, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static uint32_t touched_bad(struct req *r, uint32_t ti, const char *field, const char *code, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct touched *t = &r->t[ti];
	family_free(t->f);
	t->f = NULL;
	t->err_field = field;
	t->err_code = code;
	t->err = xstrdup(msg);
	return ti;
}

static int cmp_str(const void *x, const void *y)
{
	return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* The family an item names: pushed before, planned by an earlier item of
 * this request, adopted from the segment, or a new plan. */
static uint32_t touch(struct req *r, const struct view *v, const struct item *it, const char *name)
{
	struct api *a = r->a;
	if (r->nt == r->tcap) {
		uint32_t cap = r->tcap ? r->tcap * 2 : 16;
		struct touched *n = realloc(r->t, cap * sizeof *n);
		if (!n)
			return NO_T;
		r->t = n;
		r->tcap = cap;
	}
	uint32_t ti = r->nt;
	struct touched *t = &r->t[ti];
	memset(t, 0, sizeof *t);
	if (keymap_put(&r->tindex, name, strlen(name), ti) != 0)
		return NO_T;
	r->nt++;
	struct kv *kv = keymap_find(&a->fam_index, name, strlen(name));
	if (kv) {
		t->f = a->fams[kv->val];
		return ti;
	}
	char other[SHMET_MAX_NAME_LEN + 16];
	const char *otype = name_clash(r, v, name, it->type, other, sizeof other);
	if (otype)
		return touched_bad(r, ti, "name", "name_clash",
				   "%s \"%s\" would clash with the samples of the %s family \"%s\"", shmet_type_name(it->type),
				   name, otype, other);
	struct push_family *f = calloc(1, sizeof *f);
	if (!f || !(f->name = xstrdup(name))) {
		free(f);
		return NO_T;
	}
	t->f = f;
	t->is_new = true;
	f->type = it->type;
	const struct view_family *vf = api_view_family(v, name);
	if (vf) {
		/* Already in the segment (another process, or the retired totals of
		 * an earlier collector): push into it only if our registration
		 * would have the very same shape, or the view would drop one side. */
		if (vf->type != it->type)
			return touched_bad(r, ti, "type", "type_clash", "\"%s\" exists in the segment as a %s, not a %s",
					   name, shmet_type_name(vf->type), shmet_type_name(it->type));
		if (vf->type == SHMET_GAUGE && vf->mode != SHMET_GAUGE_MOSTRECENT)
			return touched_bad(r, ti, "type", "type_clash",
					   "gauge \"%s\" exists in the segment in %s mode; pushed gauges are most_recent",
					   name, shmet_gauge_mode_name(vf->mode));
		if (vf->nlabels > SHMET_MAX_LABELS || vf->nbuckets > SHMET_MAX_BUCKETS)
			return touched_bad(r, ti, "name", "type_clash", "\"%s\" in the segment has an unexpected shape",
					   name);
		t->adopted = true;
		f->nlabels = vf->nlabels;
		for (uint32_t i = 0; i < vf->nlabels; i++)
			if (!(f->label_names[i] = xstrdup(vf->label_names[i]))) {
				f->nlabels = i;
				return NO_T;
			}
		f->nbuckets = vf->nbuckets;
		memcpy(f->bounds, vf->bounds, vf->nbuckets * sizeof(double));
		f->help = xstrdup(it->help ? it->help : vf->help);
		/* Its series count toward the limit and need no new name. */
		char *key = malloc(SHMET_SERIES_KEY_MAX);
		if (!key || !f->help) {
			free(key);
			return NO_T;
		}
		for (uint32_t i = 0; i < vf->nseries; i++) {
			size_t kl = series_key(key, vf->series[i].values, vf->nlabels);
			if (!keymap_find(&f->series, key, kl) && keymap_put(&f->series, key, kl, 0) != 0) {
				free(key);
				return NO_T;
			}
		}
		free(key);
	} else {
		f->nlabels = it->nlabels;
		const char *sorted[SHMET_MAX_LABELS];
		memcpy(sorted, it->lnames, it->nlabels * sizeof *sorted);
		qsort(sorted, it->nlabels, sizeof *sorted, cmp_str);
		for (uint32_t i = 0; i < it->nlabels; i++)
			if (!(f->label_names[i] = xstrdup(sorted[i]))) {
				f->nlabels = i;
				return NO_T;
			}
		if (it->type == SHMET_HISTOGRAM) {
			static const double defaults[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
			if (it->buckets) {
				f->nbuckets = it->nbuckets;
				for (uint32_t k = 0; k < it->nbuckets; k++)
					f->bounds[k] = json_number_value(json_array_get(it->buckets, k));
			} else {
				f->nbuckets = sizeof defaults / sizeof *defaults;
				memcpy(f->bounds, defaults, sizeof defaults);
			}
		}
		if (!(f->help = xstrdup(it->help ? it->help : "")))
			return NO_T;
	}
	r->need += family_record_size(f);
	return ti;
}

static void label_list(const struct push_family *f, char *out, size_t cap)
{
	size_t n = 0;
	out[0] = 0;
	for (uint32_t i = 0; i < f->nlabels && n + 1 < cap; i++)
		n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? ", " : "", f->label_names[i]);
	if (f->nlabels == 0)
		snprintf(out, cap, "none");
}

/* Phase 2 for one item; false when it failed (errors added). */
static bool resolve_item(struct req *r, const struct view *v, uint32_t idx, struct item *it, char *key)
{
	struct api *a = r->a;
	char name[SHMET_MAX_NAME_LEN + 8];
	canonical(it, name);
	uint32_t ti;
	if (r->last_t != NO_T && strcmp(name, r->last_name) == 0) {
		ti = r->last_t;
	} else {
		struct kv *kv = keymap_find(&r->tindex, name, strlen(name));
		ti = kv ? kv->val : touch(r, v, it, name);
		if (ti == NO_T) {
			add_error(r, idx, "", "internal", "out of memory");
			return false;
		}
		r->last_t = ti;
		memcpy(r->last_name, name, strlen(name) + 1);
	}
	it->t = ti;
	struct touched *t = &r->t[ti];
	struct push_family *f = t->f;
	if (!f) {
		add_error(r, idx, t->err_field, t->err_code, "%s", t->err ? t->err : "out of memory");
		return false;
	}
	if (f->type != it->type) {
		add_error(r, idx, "type", "type_clash", "\"%s\" is a %s family, not a %s", name, shmet_type_name(f->type),
			  shmet_type_name(it->type));
		return false;
	}
	/* the family's label names, each given once (a JSON object has no
	 * duplicate keys: the parser refuses them) */
	bool match = it->nlabels == f->nlabels;
	for (uint32_t i = 0; match && i < f->nlabels; i++) {
		it->values[i] = NULL;
		for (uint32_t k = 0; k < it->nlabels; k++)
			if (strcmp(f->label_names[i], it->lnames[k]) == 0)
				it->values[i] = it->lvalues[k];
		match = it->values[i] != NULL;
	}
	if (!match) {
		char list[512];
		label_list(f, list, sizeof list);
		add_error(r, idx, "labels", "label_mismatch", "\"%s\" has the labels [%s]", name, list);
		return false;
	}
	if (it->buckets) {
		bool same = it->nbuckets == f->nbuckets;
		for (uint32_t k = 0; same && k < f->nbuckets; k++)
			same = json_number_value(json_array_get(it->buckets, k)) == f->bounds[k];
		if (!same) {
			add_error(r, idx, "buckets", "buckets_mismatch",
				  "\"%s\" exists with other buckets (leave buckets out to use its own)", name);
			return false;
		}
	}
	/* the series: ours, elsewhere in the segment, or new */
	memcpy(key, &ti, 4);
	size_t kl = series_key(key + 4, it->values, f->nlabels);
	struct kv *kv = keymap_find(&f->series, key + 4, kl);
	it->off = kv ? kv->val : 0;
	it->adopted = kv != NULL;
	if (it->off)
		return true;
	if (keymap_find(&r->pending, key, kl + 4))
		return true; /* an earlier item of this request creates it */
	if (!kv) {
		uint64_t have = f->series.used + t->new_series;
		if (have >= a->c->cfg.push_series_limit) {
			add_error(r, idx, "labels", "series_limit",
				  "\"%s\" already has %llu series: at most %u (--push-series-limit)", name,
				  (unsigned long long)have, a->c->cfg.push_series_limit);
			return false;
		}
		t->new_series++;
	}
	if (keymap_put(&r->pending, key, kl + 4, idx) != 0) {
		add_error(r, idx, "", "internal", "out of memory");
		return false;
	}
	r->need += series_record_size(f, it->values);
	return true;
}

static uint64_t region_free(const struct api *a)
{
	const struct shmet_segment *seg = &a->c->seg;
	const struct shmet_region_header *rg =
		(const void *)(seg->map.base + seg->regions_off + (uint64_t)a->region * seg->region_size);
	uint64_t end = __atomic_load_n(&rg->rg_dir_end, __ATOMIC_ACQUIRE);
	uint64_t low = __atomic_load_n(&rg->rg_cell_low, __ATOMIC_RELAXED);
	return low > end ? low - end : 0;
}

/* The current aggregate of a gauge series in the view, for a series that
 * moves into our region: an inc after a restart continues from it. */
static bool view_gauge_value(const struct view *v, const struct push_family *f, const char *const *values,
			     double *out)
{
	const struct view_family *vf = api_view_family(v, f->name);
	if (!vf || vf->nlabels != f->nlabels)
		return false;
	uint32_t lo = 0, hi = vf->nseries;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		int c = 0;
		for (uint32_t i = 0; i < f->nlabels && !c; i++)
			c = strcmp(vf->series[mid].values[i], values[i]);
		if (c == 0) {
			struct shmet_agg acc;
			view_series_agg(vf, &vf->series[mid], &acc);
			*out = acc.value;
			return acc.has;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

static void write_value(const struct push_family *f, const struct item *it)
{
	switch (f->type) {
	case SHMET_COUNTER: {
		shmet_counter h = {it->off};
		if (it->is_int)
			shmet_counter_add_u64(h, it->u);
		else
			shmet_counter_add(h, it->v);
		break;
	}
	case SHMET_GAUGE: {
		shmet_gauge h = {it->off, SHMET_GAUGE_MOSTRECENT, shmet__stamp_kind(SHMET_GAUGE_MOSTRECENT)};
		if (it->op == OP_SET)
			shmet_gauge_set(h, it->v);
		else
			shmet_gauge_add(h, it->v);
		break;
	}
	case SHMET_HISTOGRAM: {
		shmet_histogram h = {it->off, f->nbuckets, f->bounds};
		shmet_histogram_observe(h, it->v);
		break;
	}
	case SHMET_SUMMARY: {
		shmet_summary h = {it->off};
		shmet_summary_observe(h, it->v);
		break;
	}
	}
}

static void req_free(struct req *r)
{
	for (uint32_t i = 0; i < r->nt; i++) {
		if (r->t[i].is_new)
			family_free(r->t[i].f);
		free(r->t[i].err);
	}
	free(r->t);
	keymap_free(&r->tindex);
	keymap_free(&r->pending);
	json_decref(r->errors);
}

static enum MHD_Result reject(struct api *a, struct MHD_Connection *conn, unsigned status, json_t *j)
{
	__atomic_fetch_add(&a->st_rejected, 1, __ATOMIC_RELAXED);
	return api_send(conn, status, j, NULL);
}

/* Phases 1 to 5 for samples[0..n). */
static enum MHD_Result push_samples(struct api *a, struct MHD_Connection *conn, json_t *const *samples, uint32_t n)
{
	struct req r;
	memset(&r, 0, sizeof r);
	r.a = a;
	r.n = n;
	r.last_t = NO_T;
	r.errors = json_array();
	if (scratch_cap < n) {
		free(scratch);
		scratch = malloc(n * sizeof *scratch);
		scratch_cap = scratch ? n : 0;
		pthread_setspecific(scratch_key, scratch); /* freed when the thread exits */
	}
	r.items = scratch;
	char *key = malloc(SHMET_SERIES_KEY_MAX + 8);
	enum MHD_Result ret;
	if (!r.errors || !r.items || !key) {
		free(key);
		req_free(&r);
		return api_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
	}
	/* phase 1, no lock */
	for (uint32_t i = 0; i < n; i++)
		parse_item(&r, i, samples[i], &r.items[i]);
	uint32_t fams_created = 0, series_created = 0;
	if (r.nerrors)
		goto invalid;

	/* phase 2 */
	pthread_mutex_lock(&a->push_mu);
	const struct view *v = view_enter(a->c);
	for (uint32_t i = 0; i < n; i++)
		resolve_item(&r, v, i, &r.items[i], key);
	if (r.nerrors) {
		view_leave(a->c);
		pthread_mutex_unlock(&a->push_mu);
		goto invalid;
	}
	uint64_t avail = region_free(a);
	if (r.need > avail) {
		view_leave(a->c);
		pthread_mutex_unlock(&a->push_mu);
		ret = reject(a, conn, MHD_HTTP_INSUFFICIENT_STORAGE,
			     json_pack("{s:s, s:i, s:I, s:I}", "error",
				       "the push region is full: this request's new families and series do not fit; "
				       "nothing was applied",
				       "applied", 0, "bytes_needed", (json_int_t)r.need, "bytes_free", (json_int_t)avail));
		goto out;
	}

	/* phase 3: names */
	const char *fail = NULL;
	for (uint32_t i = 0; i < r.nt && !fail; i++) {
		struct touched *t = &r.t[i];
		if (!t->is_new)
			continue;
		struct push_family *f = t->f;
		struct shmet_family_spec spec;
		push_spec(f, &spec);
		if (a->nfams == a->fams_cap) {
			uint32_t cap = a->fams_cap ? a->fams_cap * 2 : 16;
			struct push_family **nf = realloc(a->fams, cap * sizeof *nf);
			if (!nf) {
				fail = "out of memory";
				break;
			}
			a->fams = nf;
			a->fams_cap = cap;
		}
		if (shmet_register(&spec, &f->fam) != SHMET_OK) {
			fail = shmet_last_error();
			break;
		}
		if (keymap_put(&a->fam_index, f->name, strlen(f->name), a->nfams) != 0) {
			fail = "out of memory";
			break;
		}
		a->fams[a->nfams++] = f;
		t->is_new = false; /* a->fams owns it now */
		fams_created++;
	}
	for (uint32_t i = 0; i < n && !fail; i++) {
		struct item *it = &r.items[i];
		if (it->off)
			continue;
		struct push_family *f = r.t[it->t].f;
		size_t kl = series_key(key, it->values, f->nlabels);
		struct kv *kv = keymap_find(&f->series, key, kl);
		if (kv && kv->val) {
			it->off = kv->val; /* an earlier item created it */
			continue;
		}
		double init = 0;
		bool carry = f->type == SHMET_GAUGE && kv && view_gauge_value(v, f, it->values, &init);
		if (shmet_series_lookup(f->fam, it->values, &it->off) != SHMET_OK) {
			fail = shmet_last_error();
			break;
		}
		if (kv)
			kv->val = it->off;
		else if (keymap_put(&f->series, key, kl, it->off) != 0) {
			fail = "out of memory";
			break;
		}
		if (carry) {
			shmet_gauge h = {it->off, SHMET_GAUGE_MOSTRECENT, shmet__stamp_kind(SHMET_GAUGE_MOSTRECENT)};
			shmet_gauge_set(h, init);
		}
		series_created++;
	}
	view_leave(a->c);
	if (fail) {
		pthread_mutex_unlock(&a->push_mu);
		collector_log("push: registration failed after the capacity check: %s", fail);
		ret = reject(a, conn, MHD_HTTP_INSUFFICIENT_STORAGE,
			     json_pack("{s:s, s:i, s:i, s:i}", "error", fail, "applied", 0, "families_registered",
				       (int)fams_created, "series_registered", (int)series_created));
		goto out;
	}

	/* phase 4: values, into the push region (not one per HTTP thread):
	 * push_mu serializes every write to its cells */
	shmet__share_process_region();
	for (uint32_t i = 0; i < n; i++)
		write_value(r.t[r.items[i].t].f, &r.items[i]);
	pthread_mutex_unlock(&a->push_mu);
	__atomic_fetch_add(&a->st_samples, n, __ATOMIC_RELAXED);
	if (series_created) {
		__atomic_fetch_add(&a->st_series_created, series_created, __ATOMIC_RELAXED);
		/* new series show in /metrics after a scan: ask for one now */
		pthread_mutex_lock(&a->c->wake_mu);
		pthread_cond_signal(&a->c->wake);
		pthread_mutex_unlock(&a->c->wake_mu);
	}
	ret = api_send(conn, MHD_HTTP_OK,
		       json_pack("{s:s, s:i, s:i, s:i}", "status", "ok", "applied", (int)n, "families_created",
				 (int)fams_created, "series_created", (int)series_created),
		       NULL);
	goto out;

invalid: {
	char msg[160];
	snprintf(msg, sizeof msg, "%u error%s in %u sample%s; nothing was applied", r.nerrors, r.nerrors == 1 ? "" : "s",
		 n, n == 1 ? "" : "s");
	json_t *j = json_pack("{s:s, s:i, s:i, s:O}", "error", msg, "applied", 0, "errors_total", (int)r.nerrors,
			      "errors", r.errors);
	ret = reject(a, conn, MHD_HTTP_UNPROCESSABLE_CONTENT, j);
}
out:
	free(key);
	req_free(&r);
	return ret;
}

/* ---- the body ---- */

/* Nesting depth before parsing: jansson has no limit of its own.  A byte
 * table skips the bytes that cannot change the depth (most of them), so
 * the scan costs a few percent of the parse. */
static bool depth_ok(const char *s, size_t n, int max, size_t *where)
{
	static const unsigned char outside[256] = {['"'] = 1, ['['] = 1, ['{'] = 1, [']'] = 1, ['}'] = 1};
	static const unsigned char inside[256] = {['"'] = 1, ['\\'] = 1};
	const unsigned char *u = (const unsigned char *)s;
	int depth = 0;
	for (size_t i = 0; i < n; i++) {
		while (i < n && !outside[u[i]])
			i++;
		if (i == n)
			break;
		switch (u[i]) {
		case '"':
			for (i++; i < n; i++) {
				while (i < n && !inside[u[i]])
					i++;
				if (i < n && u[i] == '\\')
					i++;
				else
					break;
			}
			break;
		case '[':
		case '{':
			if (++depth > max) {
				*where = i;
				return false;
			}
			break;
		default:
			depth--;
			break;
		}
	}
	return true;
}

static enum MHD_Result process(struct api *a, struct MHD_Connection *conn, struct api_req *rq)
{
	const struct collector_config *cfg = &a->c->cfg;
	size_t where = 0;
	if (rq->len == 0)
		return reject(a, conn, MHD_HTTP_BAD_REQUEST,
			      json_pack("{s:s, s:s}", "error", "empty body: send a JSON object", "field", "body"));
	if (!depth_ok(rq->body, rq->len, API_MAX_DEPTH, &where)) {
		char msg[128];
		snprintf(msg, sizeof msg, "JSON nested deeper than %d levels (at byte %zu)", API_MAX_DEPTH, where);
		return reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "body"));
	}
	json_error_t e;
	ja_begin(rq->len);
	json_t *root = json_loadb(rq->body, rq->len, JSON_REJECT_DUPLICATES, &e);
	ja_off();
	enum MHD_Result ret;
	if (!root) {
		ja_end();
		char msg[300];
		snprintf(msg, sizeof msg, "invalid JSON: %s (line %d, column %d)", e.text, e.line, e.column);
		return reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "body"));
	}
	if (rq->endpoint == API_EP_CUSTOM) {
		ret = push_samples(a, conn, &root, 1);
		goto out;
	}
	if (!json_is_object(root)) {
		ret = reject(a, conn, MHD_HTTP_BAD_REQUEST,
			     json_pack("{s:s, s:s}", "error", "the body must be a JSON object {\"samples\": [...]}", "field",
				       "body"));
		goto out;
	}
	const char *k;
	json_t *val;
	json_object_foreach(root, k, val) {
		if (strcmp(k, "samples") != 0) {
			char msg[300];
			snprintf(msg, sizeof msg, "unknown field \"%.200s\" (a batch has samples only)", k);
			if (!shmet_valid_utf8(msg, strlen(msg)))
				snprintf(msg, sizeof msg, "unknown field (a batch has samples only)");
			ret = reject(a, conn, MHD_HTTP_BAD_REQUEST,
				     json_pack("{s:s, s:s}", "error", msg, "field", shmet_valid_utf8(k, strlen(k)) ? k : "?"));
			goto out;
		}
	}
	json_t *samples = json_object_get(root, "samples");
	if (!json_is_array(samples) || json_array_size(samples) == 0) {
		ret = reject(a, conn, MHD_HTTP_BAD_REQUEST,
			     json_pack("{s:s, s:s}", "error",
				       samples ? "samples must be a non-empty array of samples" : "missing: samples", "field",
				       "samples"));
		goto out;
	}
	size_t n = json_array_size(samples);
	if (n > cfg->push_max_batch) {
		char msg[160];
		snprintf(msg, sizeof msg, "too many samples: %zu, at most %u a request (--push-max-batch)", n,
			 cfg->push_max_batch);
		ret = reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "samples"));
		goto out;
	}
	json_t **arr = malloc(n * sizeof *arr);
	if (!arr) {
		ret = api_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		arr[i] = json_array_get(samples, i);
	ret = push_samples(a, conn, arr, (uint32_t)n);
	free(arr);
out:
	json_decref(root);
	ja_end();
	return ret;
}

static bool is_json_type(const char *ct)
{
	static const char want[] = "application/json";
	while (*ct == ' ')
		ct++;
	if (strncasecmp(ct, want, sizeof want - 1) != 0)
		return false;
	ct += sizeof want - 1;
	while (*ct == ' ')
		ct++;
	return *ct == 0 || *ct == ';';
}

enum MHD_Result api_push_handle(struct api *a, struct MHD_Connection *conn, int endpoint, const char *method,
				const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	(void)method;
	const struct collector_config *cfg = &a->c->cfg;
	struct api_req *rq = *con_cls;
	if (!rq) {
		/* First call: the headers are in, the body is not.  Every refusal
		 * here is answered before a byte of the body is read. */
		if (!a->push_enabled)
			return api_error(conn, MHD_HTTP_FORBIDDEN, NULL,
					 "the push API is disabled: start shmetricsd with --push-token-file FILE");
		__atomic_fetch_add(&a->st_requests, 1, __ATOMIC_RELAXED);
		double retry = 0;
		if (!rate_take(a, conn, &retry)) {
			__atomic_fetch_add(&a->st_rate_limited, 1, __ATOMIC_RELAXED);
			long secs = (long)ceil(retry);
			if (secs < 1)
				secs = 1;
			char ra[32], msg[200];
			snprintf(ra, sizeof ra, "%ld", secs);
			snprintf(msg, sizeof msg,
				 "rate limit: at most %g push requests a second per client (burst %g); retry in %ld s",
				 cfg->push_rate, cfg->push_burst, secs);
			const char *const hdr[] = {MHD_HTTP_HEADER_RETRY_AFTER, ra, NULL};
			return api_send(conn, MHD_HTTP_TOO_MANY_REQUESTS,
					json_pack("{s:s, s:I}", "error", msg, "retry_after_seconds", (json_int_t)secs), hdr);
		}
		const char *why = auth_problem(a, conn);
		if (why) {
			__atomic_fetch_add(&a->st_unauthorized, 1, __ATOMIC_RELAXED);
			const char *const hdr[] = {MHD_HTTP_HEADER_WWW_AUTHENTICATE,
						   strncmp(why, "invalid", 7) == 0
							   ? "Bearer realm=\"shmetricsd\", error=\"invalid_token\""
							   : "Bearer realm=\"shmetricsd\"",
						   NULL};
			return api_send(conn, MHD_HTTP_UNAUTHORIZED,
					json_pack("{s:s, s:s}", "error", why, "field", "Authorization"), hdr);
		}
		const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
		if (ct && !is_json_type(ct))
			return reject(a, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
				      json_pack("{s:s, s:s}", "error", "send Content-Type: application/json", "field",
						"Content-Type"));
		const char *ce = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_ENCODING);
		if (ce && strcasecmp(ce, "identity") != 0)
			return reject(a, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
				      json_pack("{s:s, s:s}", "error", "compressed bodies are not accepted", "field",
						"Content-Encoding"));
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
		if (len > cfg->push_body_limit) {
			char msg[160];
			snprintf(msg, sizeof msg, "body of %llu bytes: at most %zu", len, cfg->push_body_limit);
			return reject(a, conn, MHD_HTTP_CONTENT_TOO_LARGE,
				      json_pack("{s:s, s:s}", "error", msg, "field", "body"));
		}
		rq = calloc(1, sizeof *rq);
		if (!rq)
			return api_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, "out of memory");
		rq->endpoint = endpoint;
		if (len) {
			rq->body = malloc(len);
			rq->cap = rq->body ? len : 0;
		}
		*con_cls = rq;
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		if (rq->too_big || n > cfg->push_body_limit - rq->len) {
			/* Past the limit (a chunked body): drop the rest and answer
			 * 413 at the end; hang up if it goes on and on. */
			rq->too_big = true;
			free(rq->body);
			rq->body = NULL;
			rq->discarded += n;
			return rq->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
		}
		if (rq->len + n > rq->cap) {
			size_t cap = rq->cap ? rq->cap : 16384;
			while (cap < rq->len + n)
				cap *= 2;
			if (cap > cfg->push_body_limit)
				cap = cfg->push_body_limit;
			char *b = realloc(rq->body, cap);
			if (!b)
				return MHD_NO;
			rq->body = b;
			rq->cap = cap;
		}
		memcpy(rq->body + rq->len, upload_data, n);
		rq->len += n;
		return MHD_YES;
	}
	if (rq->too_big) {
		char msg[160];
		snprintf(msg, sizeof msg, "body larger than %zu bytes", cfg->push_body_limit);
		return reject(a, conn, MHD_HTTP_CONTENT_TOO_LARGE, json_pack("{s:s, s:s}", "error", msg, "field", "body"));
	}
	return process(a, conn, rq);
}
