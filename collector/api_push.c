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
 *      and the bytes the new families and series take in the region
 *      (the writer's own arithmetic) are added up and compared with what
 *      is free;
 *   5. only if nothing failed: register the new families and series (the
 *      pre-check makes this succeed), then write every value.
 * Steps 1 to 3's HTTP side is this file; the checks of step 3 are
 * api_push_schema.c, steps 4 and 5 api_push_commit.c (api_push_int.h).
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
#include "api_push_int.h"
#include "webconfig.h"

#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define MAX_TOKEN_FILE 4096
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
		collector_warn("the push token file %s is accessible by its group (mode %04o)", path,
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
		collector_warn("the push token is short (%zu bytes); use at least 16 random bytes, e.g. "
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
	if (c->push_region >= 0 && a->region == c->push_region && push_adopt_index(a) != 0)
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
	if (push_commit_init(err, errlen) != SHMET_OK)
		return SHMET_E_SYS;
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
		push_family_free(a->fams[i]);
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

enum MHD_Result push_reject(struct api *a, struct MHD_Connection *conn, unsigned status, json_t *j)
{
	__atomic_fetch_add(&a->st_rejected, 1, __ATOMIC_RELAXED);
	return api_send(conn, status, j, NULL);
}


static enum MHD_Result process(struct api *a, struct MHD_Connection *conn, struct api_req *rq)
{
	const struct collector_config *cfg = &a->c->cfg;
	size_t where = 0;
	if (rq->len == 0)
		return push_reject(a, conn, MHD_HTTP_BAD_REQUEST,
			      json_pack("{s:s, s:s}", "error", "empty body: send a JSON object", "field", "body"));
	if (!push_depth_ok(rq->body, rq->len, API_MAX_DEPTH, &where)) {
		char msg[128];
		snprintf(msg, sizeof msg, "JSON nested deeper than %d levels (at byte %zu)", API_MAX_DEPTH, where);
		return push_reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "body"));
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
		return push_reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "body"));
	}
	if (rq->endpoint == API_EP_CUSTOM) {
		ret = push_samples(a, conn, &root, 1);
		goto out;
	}
	if (!json_is_object(root)) {
		ret = push_reject(a, conn, MHD_HTTP_BAD_REQUEST,
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
			ret = push_reject(a, conn, MHD_HTTP_BAD_REQUEST,
				     json_pack("{s:s, s:s}", "error", msg, "field", shmet_valid_utf8(k, strlen(k)) ? k : "?"));
			goto out;
		}
	}
	json_t *samples = json_object_get(root, "samples");
	if (!json_is_array(samples) || json_array_size(samples) == 0) {
		ret = push_reject(a, conn, MHD_HTTP_BAD_REQUEST,
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
		ret = push_reject(a, conn, MHD_HTTP_BAD_REQUEST, json_pack("{s:s, s:s}", "error", msg, "field", "samples"));
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
		/* with basic_auth_users, http.c checked the request's Basic
		 * credentials as for every route: they stand in for the token */
		const char *why = webconfig_has_users(cfg->web) ? NULL : auth_problem(a, conn);
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
		if (strcmp(method, "DELETE") == 0)
			return push_delete(a, conn); /* no body: the query names the series */
		const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
		if (ct && !is_json_type(ct))
			return push_reject(a, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
				      json_pack("{s:s, s:s}", "error", "send Content-Type: application/json", "field",
						"Content-Type"));
		const char *ce = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_ENCODING);
		if (ce && strcasecmp(ce, "identity") != 0)
			return push_reject(a, conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
				      json_pack("{s:s, s:s}", "error", "compressed bodies are not accepted", "field",
						"Content-Encoding"));
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
		unsigned long long len = cl ? strtoull(cl, NULL, 10) : 0;
		if (len > cfg->push_body_limit) {
			char msg[160];
			snprintf(msg, sizeof msg, "body of %llu bytes: at most %zu", len, cfg->push_body_limit);
			return push_reject(a, conn, MHD_HTTP_CONTENT_TOO_LARGE,
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
		return push_reject(a, conn, MHD_HTTP_CONTENT_TOO_LARGE, json_pack("{s:s, s:s}", "error", msg, "field", "body"));
	}
	return process(a, conn, rq);
}
