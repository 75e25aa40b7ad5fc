/* app.c — the saler application of one worker.  See app.h. */
#include "app.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static struct app_config cfg;
static uint64_t worker_serial;
static uint64_t rng;
static unsigned long handled;

/* xorshift64*: jitter and simulated failures; not for secrets. */
static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}

static double rnd01(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static void sleep_us(long us)
{
	struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* ---- users ---------------------------------------------------------------
 * Fixed demo accounts.  Plain-text passwords compared in constant time are
 * enough for a demo that only listens on loopback; a real service stores
 * bcrypt hashes (crypt_r) instead. */
struct user {
	const char *name, *password;
	int locked;
};
static const struct user users[] = {
	{"alice", "wonderland", 0},
	{"bob", "builder", 0},
	{"carol", "s3cret", 0},
	{"dave", "letmein", 1}, /* locked account */
};

static int ct_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char d = (unsigned char)(la != lb);
	for (size_t i = 0; i < la; i++)
		d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
	return d == 0;
}

/* ---- sessions ------------------------------------------------------------ */
#define SESSIONS_MAX 1024
struct session {
	char sid[33];
	int user;
	int64_t expires;
};
static struct session sessions[SESSIONS_MAX];
static unsigned nsessions;

static void sessions_publish(void) { shmet_gauge_set(saler_m.sessions_active, (double)nsessions); }

static void session_remove(unsigned i)
{
	sessions[i] = sessions[--nsessions];
	sessions_publish();
}

static void new_sid(char out[33])
{
	unsigned char b[16];
	if (getrandom(b, sizeof b, GRND_NONBLOCK) != (ssize_t)sizeof b)
		for (size_t i = 0; i < sizeof b; i++)
			b[i] = (unsigned char)rnd();
	for (size_t i = 0; i < sizeof b; i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static struct session *session_create(int user)
{
	if (nsessions == SESSIONS_MAX) { /* full: drop the one closest to expiry */
		unsigned oldest = 0;
		for (unsigned i = 1; i < nsessions; i++)
			if (sessions[i].expires < sessions[oldest].expires)
				oldest = i;
		session_remove(oldest);
	}
	struct session *s = &sessions[nsessions++];
	new_sid(s->sid);
	s->user = user;
	s->expires = http_now_ns() + (int64_t)(cfg.session_ttl * 1e9);
	shmet_counter_inc(saler_m.sessions_started);
	sessions_publish();
	return s;
}

static int session_find(const char *sid)
{
	if (!sid[0])
		return -1;
	int64_t now = http_now_ns();
	for (unsigned i = 0; i < nsessions; i++)
		if (strcmp(sessions[i].sid, sid) == 0)
			return sessions[i].expires > now ? (int)i : -1;
	return -1;
}

/* ---- leads --------------------------------------------------------------- */
#define LEADS_CAP 8192
#define ID_BASE 1000000000ull /* id = worker serial * ID_BASE + sequence */
struct lead {
	uint64_t id;
	uint8_t stage, source, plan, currency;
	double amount;
};
static struct lead leads[LEADS_CAP];
static uint64_t next_seq = 1;
static unsigned stage_count[STAGE__COUNT];

static void stages_publish(void)
{
	for (int s = 0; s < STAGE__COUNT; s++)
		shmet_gauge_set(saler_m.leads_in_stage[s], (double)stage_count[s]);
}

static struct lead *lead_find(uint64_t id)
{
	if (id / ID_BASE != worker_serial)
		return NULL; /* made by another worker: not in this one's memory */
	uint64_t seq = id % ID_BASE;
	if (seq == 0 || seq >= next_seq || next_seq - seq > LEADS_CAP)
		return NULL;
	struct lead *l = &leads[seq % LEADS_CAP];
	return l->id == id ? l : NULL;
}

/* ---- cache: 2-way set-associative, least recently used way replaced ---- */
#define CACHE_SETS 64
struct cache_entry {
	uint64_t key; /* 0: empty */
	uint64_t used;
	struct lead val;
};
static struct cache_entry lcache[CACHE_SETS][2];
static uint64_t cache_clock;
static int64_t feature_loaded[FEAT__COUNT];
#define FEATURE_TTL_NS 5000000000ll

static int cache_get(uint64_t id, struct lead *out)
{
	struct cache_entry *set = lcache[id % CACHE_SETS];
	for (int w = 0; w < 2; w++)
		if (set[w].key == id) {
			set[w].used = ++cache_clock;
			*out = set[w].val;
			shmet_counter_inc(saler_m.cache[CACHE_LEADS][0]);
			return 1;
		}
	shmet_counter_inc(saler_m.cache[CACHE_LEADS][1]);
	return 0;
}

static void cache_put(const struct lead *l)
{
	struct cache_entry *set = lcache[l->id % CACHE_SETS];
	int w = set[0].key == l->id ? 0 : set[1].key == l->id ? 1 : set[0].used <= set[1].used ? 0 : 1;
	set[w].key = l->id;
	set[w].used = ++cache_clock;
	set[w].val = *l;
}

static void cache_drop(uint64_t id)
{
	struct cache_entry *set = lcache[id % CACHE_SETS];
	for (int w = 0; w < 2; w++)
		if (set[w].key == id)
			set[w].key = 0;
}

/* ---- simulated database ---------------------------------------------------
 * A query takes a connection from the pool, does real work over the worker's
 * lead table (a sequential scan: there is no index on these columns) and
 * waits a little, with jitter, as a round trip to a database would. */
static unsigned pool_in_use;

static void pool_publish(void)
{
	shmet_gauge_set(saler_m.pool_in_use, (double)pool_in_use);
	shmet_gauge_set(saler_m.pool_idle, (double)(cfg.pool_size - pool_in_use));
}

struct scan {
	unsigned by_stage[STAGE__COUNT];
	unsigned by_source[SOURCE__COUNT];
	double revenue;
	unsigned rows;
};

static void table_scan(struct scan *s)
{
	memset(s, 0, sizeof *s);
	for (size_t i = 0; i < LEADS_CAP; i++) {
		const struct lead *l = &leads[i];
		if (!l->id)
			continue;
		s->rows++;
		s->by_stage[l->stage]++;
		s->by_source[l->source]++;
		if (l->stage == STAGE_CONVERTED)
			s->revenue += l->amount;
	}
}

/* 0 ok, -1 the query failed (fail != 0). */
static int db_query(enum saler_db_op op, long base_us, long jitter_us, int fail, struct scan *out)
{
	shmet_timer t = shmet_timer_start();
	pool_in_use++;
	pool_publish();
	struct scan s;
	table_scan(&s);
	sleep_us(base_us + (long)(rnd() % (uint64_t)(jitter_us + 1)));
	pool_in_use--;
	pool_publish();
	shmet_histogram_observe_duration(saler_m.db_duration[op], t);
	shmet_counter_inc(saler_m.db_queries[op][fail ? 1 : 0]);
	if (out)
		*out = s;
	return fail ? -1 : 0;
}

/* ---- rate limit: a token bucket per client address ---------------------- */
#define BUCKETS 1024
#define BUCKET_PROBE 8
struct bucket {
	char key[HTTP_ADDR_MAX];
	double tokens;
	int64_t last;
};
static struct bucket buckets[BUCKETS];

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

static int rate_allow(const char *client)
{
	if (cfg.rate_limit <= 0)
		return 1;
	int64_t now = http_now_ns();
	uint64_t h = fnv1a(client);
	struct bucket *b = NULL, *victim = NULL;
	for (unsigned i = 0; i < BUCKET_PROBE; i++) {
		struct bucket *c = &buckets[(h + i) % BUCKETS];
		if (c->key[0] && strcmp(c->key, client) == 0) {
			b = c;
			break;
		}
		if (!victim || !c->key[0] || (victim->key[0] && c->last < victim->last))
			victim = c;
	}
	if (!b) { /* new client (or forgotten): a full bucket */
		b = victim;
		snprintf(b->key, sizeof b->key, "%s", client);
		b->tokens = cfg.burst;
		b->last = now;
	}
	b->tokens += (double)(now - b->last) / 1e9 * cfg.rate_limit;
	if (b->tokens > cfg.burst)
		b->tokens = cfg.burst;
	b->last = now;
	if (b->tokens < 1)
		return 0;
	b->tokens -= 1;
	return 1;
}

/* ---- routing ------------------------------------------------------------- */
static int parse_id(const char *s, size_t n, uint64_t *id)
{
	if (n == 0 || n > 19)
		return 0;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return 0;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*id = v;
	return 1;
}

static enum saler_route match(const char *path, uint64_t *id, int *feature)
{
	static const struct {
		const char *path;
		enum saler_route r;
	} fixed[] = {{"/health", ROUTE_HEALTH}, {"/login", ROUTE_LOGIN},	      {"/logout", ROUTE_LOGOUT},
		     {"/leads", ROUTE_LEADS},	{"/reports/pipeline", ROUTE_REPORT}, {"/boom", ROUTE_BOOM}};
	*id = 0;
	*feature = -1;
	for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
		if (strcmp(path, fixed[i].path) == 0)
			return fixed[i].r;
	if (strncmp(path, "/leads/", 7) == 0) {
		const char *p = path + 7, *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (!parse_id(p, n, id))
			return ROUTE_UNMATCHED;
		if (!slash)
			return ROUTE_LEAD;
		if (strcmp(slash, "/qualify") == 0)
			return ROUTE_LEAD_QUALIFY;
		if (strcmp(slash, "/convert") == 0)
			return ROUTE_LEAD_CONVERT;
		return ROUTE_UNMATCHED;
	}
	if (strncmp(path, "/features/", 10) == 0 && path[10] && !strchr(path + 10, '/')) {
		for (int f = 0; f < FEAT__COUNT; f++)
			if (strcmp(path + 10, saler_feature_names[f]) == 0)
				*feature = f;
		return ROUTE_FEATURE;
	}
	return ROUTE_UNMATCHED;
}

enum saler_route app_route_of(const struct http_request *req)
{
	uint64_t id;
	int feature;
	return req->has_head && req->path ? match(req->path, &id, &feature) : ROUTE_MALFORMED;
}

/* The methods each route answers; HEAD goes with GET. */
static const char *allowed(enum saler_route r)
{
	switch (r) {
	case ROUTE_LOGIN:
	case ROUTE_LOGOUT:
	case ROUTE_LEAD_QUALIFY:
	case ROUTE_LEAD_CONVERT:
		return "POST";
	case ROUTE_LEADS:
		return "GET, HEAD, POST";
	default:
		return "GET, HEAD";
	}
}

static int method_allowed(enum saler_route r, enum saler_method m)
{
	const char *a = allowed(r);
	const char *name = m == METHOD_HEAD ? "HEAD" : m == METHOD_GET ? "GET" : m == METHOD_POST ? "POST" : NULL;
	return name && strstr(a, name) != NULL;
}

static void fail_resp(struct http_response *r, int status, const char *msg)
{
	http_resp_init(r, status);
	http_resp_body(r, "{\"error\":\"");
	http_resp_json_str(r, msg);
	http_resp_body(r, "\"}\n");
}

/* Case-insensitive search after collapsing runs of blanks to one space. */
static int looks_like_sqli(const char *decoded)
{
	static const char *const patterns[] = {"' or 1=1", "'or 1=1",	"\" or 1=1", "' or '1'='1",
					       "union select", "; drop table", "' --",	 "';--"};
	static char norm[HTTP_BODY_MAX + 1]; /* the worker is single-threaded */
	size_t n = 0;
	for (const char *p = decoded; *p && n + 1 < sizeof norm; p++) {
		char ch = (char)tolower((unsigned char)*p);
		if (ch == '\t' || ch == '\n' || ch == '\r')
			ch = ' ';
		if (ch == ' ' && n && norm[n - 1] == ' ')
			continue;
		norm[n++] = ch;
	}
	norm[n] = '\0';
	for (size_t i = 0; i < sizeof patterns / sizeof *patterns; i++)
		if (strstr(norm, patterns[i]))
			return 1;
	return 0;
}

/* 400 and counted when the request looks like an attack; 0 when clean. */
static int suspicious(const struct http_request *req, struct http_response *resp)
{
	char dec[HTTP_HEAD_MAX];
	long n = http_pct_decode(req->path, strlen(req->path), dec, sizeof dec, false);
	if (n < 0 || memchr(dec, '\0', (size_t)n)) {
		shmet_counter_inc(saler_m.suspicious[SUSP_MALFORMED]);
		fail_resp(resp, 400, "invalid percent-encoding in the path");
		return 1;
	}
	if (strstr(dec, "..")) {
		shmet_counter_inc(saler_m.suspicious[SUSP_PATH_TRAVERSAL]);
		fail_resp(resp, 400, "path traversal refused");
		return 1;
	}
	if (req->query) {
		n = http_pct_decode(req->query, strlen(req->query), dec, sizeof dec, true);
		if (n < 0) {
			shmet_counter_inc(saler_m.suspicious[SUSP_MALFORMED]);
			fail_resp(resp, 400, "invalid percent-encoding in the query");
			return 1;
		}
		if (looks_like_sqli(dec)) {
			shmet_counter_inc(saler_m.suspicious[SUSP_SQL_INJECTION]);
			fail_resp(resp, 400, "query refused");
			return 1;
		}
	}
	if (req->body_len) {
		char body[HTTP_BODY_MAX + 1];
		n = http_pct_decode(req->body, req->body_len, body, sizeof body, true);
		if (n >= 0 && looks_like_sqli(body)) {
			shmet_counter_inc(saler_m.suspicious[SUSP_SQL_INJECTION]);
			fail_resp(resp, 400, "body refused");
			return 1;
		}
	}
	return 0;
}

static int lookup_index(const char *v, const char *const *names, int count)
{
	for (int i = 0; i < count; i++)
		if (strcmp(v, names[i]) == 0)
			return i;
	return -1;
}

static void lead_json(struct http_response *r, const struct lead *l)
{
	static const char *const stages[STAGE__COUNT] = {"new", "qualified", "converted"};
	http_resp_body(r, "{\"id\":%llu,\"stage\":\"%s\",\"source\":\"%s\"", (unsigned long long)l->id, stages[l->stage],
		       saler_source_names[l->source]);
	if (l->stage == STAGE_CONVERTED)
		http_resp_body(r, ",\"plan\":\"%s\",\"amount\":%.2f,\"currency\":\"%s\"", saler_plan_names[l->plan],
			       l->amount, saler_currency_names[l->currency]);
	http_resp_body(r, "}");
}

/* ---- handlers ------------------------------------------------------------ */
static void h_health(struct http_response *r)
{
	http_resp_init(r, 200);
	http_resp_body(r, "{\"status\":\"ok\",\"pid\":%d,\"worker\":%llu,\"handled\":%lu}\n", (int)getpid(),
		       (unsigned long long)worker_serial, handled);
}

static void h_login(const struct http_request *req, struct http_response *r)
{
	char user[65], pass[129];
	if (http_form_get(req->body ? req->body : "", "user", user, sizeof user) != 1 ||
	    http_form_get(req->body ? req->body : "", "password", pass, sizeof pass) != 1) {
		fail_resp(r, 400, "form fields user and password are required");
		return;
	}
	/* The user lookup is a (simulated) query. */
	db_query(DB_SELECT, 100, 300, 0, NULL);
	int u = -1;
	for (size_t i = 0; i < sizeof users / sizeof *users; i++)
		if (strcmp(users[i].name, user) == 0)
			u = (int)i;
	enum saler_login_failure why = LOGIN__COUNT;
	if (u < 0)
		why = LOGIN_UNKNOWN_USER;
	else if (!ct_equal(pass, users[u].password))
		why = LOGIN_BAD_PASSWORD;
	else if (users[u].locked)
		why = LOGIN_LOCKED;
	if (why != LOGIN__COUNT) {
		static const char *const reasons[] = {"unknown_user", "bad_password", "locked"};
		shmet_counter_inc(saler_m.login_attempts[1]);
		shmet_counter_inc(saler_m.login_failures[why]);
		http_resp_init(r, why == LOGIN_LOCKED ? 403 : 401);
		http_resp_body(r, "{\"error\":\"login failed\",\"reason\":\"%s\"}\n", reasons[why]);
		return;
	}
	shmet_counter_inc(saler_m.login_attempts[0]);
	struct session *s = session_create(u);
	http_resp_init(r, 200);
	http_resp_header(r, "Set-Cookie: sid=%s; Path=/; HttpOnly; SameSite=Strict; Max-Age=%.0f\r\n", s->sid,
			 cfg.session_ttl);
	http_resp_body(r, "{\"user\":\"%s\",\"session_ttl\":%.0f}\n", users[u].name, cfg.session_ttl);
}

static void h_logout(const struct http_request *req, struct http_response *r)
{
	int i = session_find(req->sid);
	if (i < 0) {
		fail_resp(r, 401, "no session");
		return;
	}
	session_remove((unsigned)i);
	http_resp_init(r, 200);
	http_resp_header(r, "Set-Cookie: sid=; Path=/; Max-Age=0\r\n");
	http_resp_body(r, "{\"status\":\"logged out\"}\n");
}

static void h_leads_list(struct http_response *r)
{
	struct scan s;
	db_query(DB_SELECT, 150, 500, 0, &s);
	http_resp_init(r, 200);
	http_resp_body(r, "{\"total\":%u,\"recent\":[", s.rows);
	int shown = 0;
	for (uint64_t seq = next_seq - 1; seq > 0 && shown < 10 && next_seq - seq <= LEADS_CAP; seq--) {
		const struct lead *l = &leads[seq % LEADS_CAP];
		if (!l->id)
			continue;
		if (shown++)
			http_resp_body(r, ",");
		lead_json(r, l);
	}
	http_resp_body(r, "]}\n");
}

static void h_lead_create(const struct http_request *req, struct http_response *r)
{
	char src[32];
	int got = http_form_get(req->body ? req->body : "", "source", src, sizeof src);
	int source = got == 1 ? lookup_index(src, saler_source_names, SOURCE__COUNT) : -1;
	if (source < 0) {
		fail_resp(r, 400, "form field source must be one of web, referral, ads, event, partner, other");
		return;
	}
	db_query(DB_INSERT, 300, 800, 0, NULL);
	struct lead *l = &leads[next_seq % LEADS_CAP];
	if (l->id) { /* the table is a ring: the oldest lead leaves */
		stage_count[l->stage]--;
		cache_drop(l->id);
	}
	memset(l, 0, sizeof *l);
	l->id = worker_serial * ID_BASE + next_seq++;
	l->stage = STAGE_NEW;
	l->source = (uint8_t)source;
	stage_count[STAGE_NEW]++;
	stages_publish();
	shmet_counter_inc(saler_m.leads_created[source]);
	http_resp_init(r, 201);
	http_resp_header(r, "Location: /leads/%llu\r\n", (unsigned long long)l->id);
	lead_json(r, l);
	http_resp_body(r, "\n");
}

static void h_lead_get(uint64_t id, struct http_response *r)
{
	struct lead copy;
	if (!cache_get(id, &copy)) {
		struct scan s;
		db_query(DB_SELECT, 150, 500, 0, &s);
		struct lead *l = lead_find(id);
		if (!l) {
			fail_resp(r, 404, "no such lead");
			return;
		}
		copy = *l;
		cache_put(l);
	}
	http_resp_init(r, 200);
	lead_json(r, &copy);
	http_resp_body(r, "\n");
}

static void h_lead_qualify(uint64_t id, struct http_response *r)
{
	db_query(DB_UPDATE, 250, 650, 0, NULL);
	struct lead *l = lead_find(id);
	if (!l) {
		fail_resp(r, 404, "no such lead");
		return;
	}
	if (l->stage != STAGE_NEW) {
		fail_resp(r, 409, "only a new lead can be qualified");
		return;
	}
	stage_count[l->stage]--;
	l->stage = STAGE_QUALIFIED;
	stage_count[l->stage]++;
	stages_publish();
	cache_drop(id);
	shmet_counter_inc(saler_m.leads_qualified);
	http_resp_init(r, 200);
	lead_json(r, l);
	http_resp_body(r, "\n");
}

static void h_lead_convert(const struct http_request *req, uint64_t id, struct http_response *r)
{
	const char *form = req->body ? req->body : "";
	char plan_s[32], amount_s[32], cur_s[8] = "USD";
	int plan = http_form_get(form, "plan", plan_s, sizeof plan_s) == 1
			   ? lookup_index(plan_s, saler_plan_names, PLAN__COUNT)
			   : -1;
	if (plan < 0) {
		fail_resp(r, 400, "form field plan must be one of basic, pro, enterprise");
		return;
	}
	double amount = -1;
	if (http_form_get(form, "amount", amount_s, sizeof amount_s) == 1 && amount_s[0] &&
	    strspn(amount_s, "0123456789.") == strlen(amount_s)) {
		char *end;
		amount = strtod(amount_s, &end);
		if (*end)
			amount = -1;
	}
	if (!(amount >= 0 && amount <= 10000000)) {
		fail_resp(r, 400, "form field amount must be a decimal number from 0 to 10000000");
		return;
	}
	int got = http_form_get(form, "currency", cur_s, sizeof cur_s);
	int cur = got == 0 ? CUR_USD : got == 1 ? lookup_index(cur_s, saler_currency_names, CUR__COUNT) : -1;
	if (cur < 0) {
		fail_resp(r, 400, "form field currency must be one of USD, EUR, GBP");
		return;
	}
	struct lead *l = lead_find(id);
	if (!l) {
		db_query(DB_SELECT, 150, 500, 0, NULL);
		fail_resp(r, 404, "no such lead");
		return;
	}
	if (l->stage != STAGE_QUALIFIED) {
		db_query(DB_SELECT, 150, 500, 0, NULL);
		fail_resp(r, 409, "only a qualified lead can be converted");
		return;
	}
	/* The payment provider sometimes fails: the update is rolled back. */
	if (db_query(DB_UPDATE, 400, 1200, rnd01() < cfg.fail_rate, NULL) != 0) {
		fail_resp(r, 500, "payment failed; conversion rolled back");
		return;
	}
	stage_count[l->stage]--;
	l->stage = STAGE_CONVERTED;
	l->plan = (uint8_t)plan;
	l->currency = (uint8_t)cur;
	l->amount = amount;
	stage_count[l->stage]++;
	stages_publish();
	cache_drop(id);
	shmet_counter_inc(saler_m.leads_converted[plan]);
	shmet_counter_add(saler_m.revenue[cur], amount);
	http_resp_init(r, 200);
	lead_json(r, l);
	http_resp_body(r, "\n");
}

static void h_feature(const struct http_request *req, int feature, struct http_response *r)
{
	if (feature < 0) {
		fail_resp(r, 404, "no such feature");
		return;
	}
	int64_t now = http_now_ns();
	if (feature_loaded[feature] && now - feature_loaded[feature] < FEATURE_TTL_NS) {
		shmet_counter_inc(saler_m.cache[CACHE_FEATURES][0]);
	} else {
		shmet_counter_inc(saler_m.cache[CACHE_FEATURES][1]);
		db_query(DB_SELECT, 100, 300, 0, NULL);
		feature_loaded[feature] = now;
	}
	int s = session_find(req->sid);
	if (s >= 0) /* activity keeps a session alive */
		sessions[s].expires = now + (int64_t)(cfg.session_ttl * 1e9);
	shmet_counter_inc(saler_m.feature_usage[feature]);
	http_resp_init(r, 200);
	http_resp_body(r, "{\"feature\":\"%s\",\"enabled\":true,\"user\":\"%s\"}\n", saler_feature_names[feature],
		       s >= 0 ? users[sessions[s].user].name : "anonymous");
}

static void h_report(struct http_response *r)
{
	/* A heavy aggregate: sometimes slower than the 0.25 s "slow" mark. */
	struct scan s;
	db_query(DB_SELECT, 40000, 320000, 0, &s);
	http_resp_init(r, 200);
	http_resp_body(r, "{\"leads\":%u,\"new\":%u,\"qualified\":%u,\"converted\":%u,\"revenue\":%.2f}\n", s.rows,
		       s.by_stage[STAGE_NEW], s.by_stage[STAGE_QUALIFIED], s.by_stage[STAGE_CONVERTED], s.revenue);
}

static void h_boom(struct http_response *r)
{
	/* Always fails: a deterministic 500 for tests and dashboards. */
	db_query(DB_SELECT, 100, 300, 1, NULL);
	fail_resp(r, 500, "database connection lost");
}

void app_handle(struct http_request *req, struct http_response *resp, enum saler_route *route)
{
	uint64_t id;
	int feature;
	handled++;
	enum saler_route r = match(req->path, &id, &feature);
	*route = r;
	if (suspicious(req, resp))
		return;
	if (r == ROUTE_UNMATCHED) {
		fail_resp(resp, 404, "no such route");
		return;
	}
	if (!method_allowed(r, req->method_id)) {
		fail_resp(resp, 405, "method not allowed");
		http_resp_header(resp, "Allow: %s\r\n", allowed(r));
		return;
	}
	if (r != ROUTE_HEALTH && !rate_allow(req->client)) {
		shmet_counter_inc(saler_m.rate_limited[r]);
		fail_resp(resp, 429, "rate limit exceeded");
		http_resp_header(resp, "Retry-After: 1\r\n");
		return;
	}
	int post = req->method_id == METHOD_POST;
	switch (r) {
	case ROUTE_HEALTH: h_health(resp); break;
	case ROUTE_LOGIN: h_login(req, resp); break;
	case ROUTE_LOGOUT: h_logout(req, resp); break;
	case ROUTE_LEADS:
		if (post)
			h_lead_create(req, resp);
		else
			h_leads_list(resp);
		break;
	case ROUTE_LEAD: h_lead_get(id, resp); break;
	case ROUTE_LEAD_QUALIFY: h_lead_qualify(id, resp); break;
	case ROUTE_LEAD_CONVERT: h_lead_convert(req, id, resp); break;
	case ROUTE_FEATURE: h_feature(req, feature, resp); break;
	case ROUTE_REPORT: h_report(resp); break;
	case ROUTE_BOOM: h_boom(resp); break;
	default: fail_resp(resp, 404, "no such route"); break;
	}
}

void app_tick(void)
{
	int64_t now = http_now_ns();
	for (unsigned i = 0; i < nsessions;) {
		if (sessions[i].expires <= now)
			session_remove(i);
		else
			i++;
	}
}

void app_init(const struct app_config *c, uint64_t serial)
{
	cfg = *c;
	worker_serial = serial;
	if (getrandom(&rng, sizeof rng, GRND_NONBLOCK) != (ssize_t)sizeof rng)
		rng = (uint64_t)http_now_ns() ^ ((uint64_t)getpid() << 32);
	rng |= 1;
	/* This process's cells start at zero (fork): publish the starting state. */
	pool_publish();
	shmet_gauge_set(saler_m.pool_max, (double)cfg.pool_size);
	sessions_publish();
	stages_publish();
}
