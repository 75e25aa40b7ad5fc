/* saler-traffic — a traffic generator for saler-demo.
 *
 * Drives a realistic mix against a saler-demo on this machine (it only ever
 * connects to 127.0.0.1): logins good and bad, lead flows (create, read,
 * qualify, convert, read again on one kept-alive connection, so that they
 * stay on one worker), 404s, 500s from /boom, suspicious requests, feature
 * use, slow reports, and now and then a credential-stuffing burst from one
 * address that the demo's rate limit answers with 429.
 *
 *   --rate R --duration S      open-loop: R requests/s for S seconds
 *   --requests N               exactly N requests of the mix, then stop
 *   --exact KIND=N,KIND=N,...  exactly these requests, shuffled; prints
 *                              "result KIND STATUS COUNT" lines and exits 1
 *                              when a status differs from the kind's usual
 *
 * One epoll loop, --concurrency connections at most; a progress line on
 * stderr every second; SIGINT stops starting new work (twice: at once).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "saler-traffic";

/* ---- request kinds -------------------------------------------------------- */
enum kind {
	K_HEALTH,
	K_LOGIN,
	K_BADLOGIN,
	K_UNKNOWNUSER,
	K_LOCKED,
	K_CREATE,
	K_LIST,
	K_GET,      /* a lead made earlier, on a new connection: 200, or 404 from another worker */
	K_MISSING,
	K_QUALIFY,  /* steps of a lead flow */
	K_CONVERT,
	K_FEATURE,
	K_NOFEATURE,
	K_NOTFOUND,
	K_BOOM,
	K_TRAVERSAL,
	K_SQLI,
	K_OVERSIZED,
	K_REPORT,
	K_LOGOUT,
	K__COUNT
};

static const struct {
	const char *name;
	int expect; /* the status it gets from a demo without rate limiting; 0: varies */
} kinds[K__COUNT] = {
	[K_HEALTH] = {"health", 200},	    [K_LOGIN] = {"login", 200},	      [K_BADLOGIN] = {"badlogin", 401},
	[K_UNKNOWNUSER] = {"unknownuser", 401}, [K_LOCKED] = {"locked", 403},    [K_CREATE] = {"create", 201},
	[K_LIST] = {"list", 200},	    [K_GET] = {"get", 0},	      [K_MISSING] = {"missing", 404},
	[K_QUALIFY] = {"qualify", 0},	    [K_CONVERT] = {"convert", 0},     [K_FEATURE] = {"feature", 200},
	[K_NOFEATURE] = {"nofeature", 404}, [K_NOTFOUND] = {"notfound", 404}, [K_BOOM] = {"boom", 500},
	[K_TRAVERSAL] = {"traversal", 400}, [K_SQLI] = {"sqli", 400},	      [K_OVERSIZED] = {"oversized", 413},
	[K_REPORT] = {"report", 200},	    [K_LOGOUT] = {"logout", 0},
};

/* Tasks: what one connection does, one request or a flow. */
enum task_type { T_SINGLE, T_LEADFLOW, T_SESSION, T_BURST };

struct task {
	enum task_type type;
	enum kind single;
	int step, steps;
	uint64_t lead; /* the lead a flow works on */
	char sid[40];  /* the session a flow uses */
	char client[48];
	bool done;     /* ends early (a step failed in a way the rest depends on) */
};

/* ---- options and state ----------------------------------------------------- */
static struct {
	int port;
	double rate;        /* requests/s; 0: as fast as possible */
	double duration;    /* seconds; 0: no limit */
	long requests;      /* 0: no limit */
	unsigned concurrency;
	unsigned clients;
	double timeout;
	uint64_t seed;
	bool quiet;
	bool exact;
} opt = {0, 50, 0, 0, 64, 200, 10, 0, false, false};

static uint64_t rng;
static uint64_t rnd(void)
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545F4914F6CDD1Dull;
}
static double rnd01(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Results. */
static long sent, answered, n2xx, n4xx, n5xx, nother, nerrors;
static long by_kind[K__COUNT][600]; /* [kind][status]; status 0: transport error */
static long unexpected;
#define LAT_BUCKETS 120 /* 1 us * 1.2^i */
static long lat_hist[LAT_BUCKETS];
static double lat_max;

/* Exact mode: the shuffled plan. */
static enum kind *plan;
static long plan_len, plan_next;

/* Leads seen, for K_GET on a new connection. */
static uint64_t recent_leads[256];
static unsigned recent_count;

static volatile sig_atomic_t interrupted;
static void on_int(int sig)
{
	(void)sig;
	if (interrupted++)
		_exit(130);
}

/* ---- connections ----------------------------------------------------------- */
enum conn_state { C_IDLE, C_CONNECTING, C_WRITING, C_READING };

struct conn {
	int fd;
	enum conn_state state;
	struct task task;
	enum kind kind;       /* of the request in flight */
	int64_t started;      /* request start */
	int64_t deadline;
	bool reused;          /* a response was read on this connection before */
	bool server_close;    /* the last response said Connection: close */
	char *out;
	size_t out_len, out_off, out_cap;
	char in[16384];
	size_t in_len;
};

static struct conn *conns;
static int ep = -1;
static long inflight_tasks;

static void outf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct conn *c, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int n = vsnprintf(c->out + c->out_len, c->out_cap - c->out_len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < c->out_cap - c->out_len) {
			c->out_len += (size_t)n;
			return;
		}
		size_t cap = c->out_cap * 2 + (size_t)(n > 0 ? n : 0);
		char *p = realloc(c->out, cap);
		if (!p) {
			fprintf(stderr, "%s: out of memory\n", prog);
			exit(1);
		}
		c->out = p;
		c->out_cap = cap;
	}
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0) {
		epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	c->fd = -1;
	c->reused = false;
	c->server_close = false;
	c->in_len = 0;
}

static int conn_open(struct conn *c)
{
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)opt.port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* only ever loopback */
	int rc = connect(c->fd, (struct sockaddr *)&a, sizeof a);
	if (rc != 0 && errno != EINPROGRESS) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	struct epoll_event ev = {EPOLLOUT, {.ptr = c}};
	epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
	c->state = C_CONNECTING;
	return 0;
}

static void want(struct conn *c, uint32_t events)
{
	struct epoll_event ev = {events, {.ptr = c}};
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* ---- building requests ------------------------------------------------------ */
static const char *const sources[] = {"web", "referral", "ads", "event", "partner", "other"};
static const char *const features[] = {"search", "export", "reports", "dashboard", "import", "api"};
static const char *const plans[] = {"basic", "pro", "enterprise"};
static const char *const currencies[] = {"USD", "EUR", "GBP"};
static const char *const good_users[][2] = {{"alice", "wonderland"}, {"bob", "builder"}, {"carol", "s3cret"}};
#define PICK(a) (a[rnd() % (sizeof a / sizeof *a)])

static void request(struct conn *c, const char *method, const char *path, const char *body, bool last)
{
	c->out_len = c->out_off = 0;
	outf(c, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: saler-traffic\r\nX-Forwarded-For: %s\r\n", method,
	     path, opt.port, c->task.client);
	if (c->task.sid[0])
		outf(c, "Cookie: sid=%s\r\n", c->task.sid);
	if (last)
		outf(c, "Connection: close\r\n"); /* the server closes first: TIME_WAIT stays on its side */
	if (body)
		outf(c, "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %zu\r\n\r\n%s", strlen(body),
		     body);
	else
		outf(c, "\r\n");
}

static void build(struct conn *c, enum kind k, bool last)
{
	char path[128], body[256];
	c->kind = k;
	switch (k) {
	case K_HEALTH: request(c, "GET", "/health", NULL, last); break;
	case K_LOGIN: {
		int u = (int)(rnd() % 3);
		snprintf(body, sizeof body, "user=%s&password=%s", good_users[u][0], good_users[u][1]);
		request(c, "POST", "/login", body, last);
		break;
	}
	case K_BADLOGIN:
		snprintf(body, sizeof body, "user=%s&password=guess%u", good_users[rnd() % 3][0], (unsigned)(rnd() % 10000));
		request(c, "POST", "/login", body, last);
		break;
	case K_UNKNOWNUSER:
		snprintf(body, sizeof body, "user=admin%u&password=admin", (unsigned)(rnd() % 100));
		request(c, "POST", "/login", body, last);
		break;
	case K_LOCKED: request(c, "POST", "/login", "user=dave&password=letmein", last); break;
	case K_CREATE:
		snprintf(body, sizeof body, "source=%s", PICK(sources));
		request(c, "POST", "/leads", body, last);
		break;
	case K_LIST: request(c, "GET", "/leads", NULL, last); break;
	case K_GET: {
		uint64_t id = c->task.lead;
		if (!id)
			id = recent_count ? recent_leads[rnd() % (recent_count < 256 ? recent_count : 256)] : 999999;
		snprintf(path, sizeof path, "/leads/%llu", (unsigned long long)id);
		request(c, "GET", path, NULL, last);
		break;
	}
	case K_MISSING: request(c, "GET", "/leads/999999", NULL, last); break;
	case K_QUALIFY:
		snprintf(path, sizeof path, "/leads/%llu/qualify", (unsigned long long)c->task.lead);
		request(c, "POST", path, "", last);
		break;
	case K_CONVERT: {
		const char *plan_name = PICK(plans);
		double base = strcmp(plan_name, "basic") == 0 ? 49 : strcmp(plan_name, "pro") == 0 ? 199 : 1490;
		snprintf(path, sizeof path, "/leads/%llu/convert", (unsigned long long)c->task.lead);
		snprintf(body, sizeof body, "plan=%s&amount=%.2f&currency=%s", plan_name, base * (0.8 + 0.4 * rnd01()),
			 PICK(currencies));
		request(c, "POST", path, body, last);
		break;
	}
	case K_FEATURE:
		snprintf(path, sizeof path, "/features/%s", PICK(features));
		request(c, "GET", path, NULL, last);
		break;
	case K_NOFEATURE: request(c, "GET", "/features/teleport", NULL, last); break;
	case K_NOTFOUND: request(c, "GET", "/wp-admin/setup.php", NULL, last); break;
	case K_BOOM: request(c, "GET", "/boom", NULL, last); break;
	case K_TRAVERSAL: request(c, "GET", "/static/../../etc/passwd", NULL, last); break;
	case K_SQLI: request(c, "GET", "/leads?q=%27%20OR%201%3D1--", NULL, last); break;
	case K_OVERSIZED: {
		static char big[20001];
		if (!big[0]) {
			memcpy(big, "source=web&notes=", 17);
			memset(big + 17, 'x', sizeof big - 18);
		}
		request(c, "POST", "/leads", big, last);
		break;
	}
	case K_REPORT: request(c, "GET", "/reports/pipeline", NULL, last); break;
	case K_LOGOUT: request(c, "POST", "/logout", "", last); break;
	default: request(c, "GET", "/health", NULL, last); break;
	}
}

/* The kind of step s of a task. */
static enum kind step_kind(const struct task *t, int s)
{
	switch (t->type) {
	case T_LEADFLOW: {
		static const enum kind f[] = {K_CREATE, K_GET, K_QUALIFY, K_CONVERT, K_GET};
		return f[s];
	}
	case T_SESSION: {
		static const enum kind f[] = {K_LOGIN, K_FEATURE, K_FEATURE, K_LOGOUT};
		return f[s];
	}
	case T_BURST: return K_BADLOGIN;
	default: return t->single;
	}
}

/* ---- choosing work ------------------------------------------------------------ */
static int64_t next_burst;

static void pick_client(struct task *t)
{
	uint32_t i = (uint32_t)(rnd() % opt.clients);
	snprintf(t->client, sizeof t->client, "10.%u.%u.%u", 1 + i / 65536, (i / 256) % 256, i % 256);
}

/* 0 when there is nothing more to start (exact plan used up). */
static int choose_task(struct task *t, int64_t now)
{
	memset(t, 0, sizeof *t);
	pick_client(t);
	if (opt.exact) {
		if (plan_next >= plan_len)
			return 0;
		t->type = T_SINGLE;
		t->single = plan[plan_next++];
		t->steps = 1;
		return 1;
	}
	if (now >= next_burst) { /* credential stuffing from one address, on one connection */
		next_burst = now + (int64_t)((10 + 10 * rnd01()) * 1e9);
		t->type = T_BURST;
		t->steps = 30;
		snprintf(t->client, sizeof t->client, "203.0.113.66");
		return 1;
	}
	static const struct {
		int weight;
		enum task_type type;
		enum kind k;
	} mix[] = {
		{200, T_SINGLE, K_HEALTH},   {100, T_LEADFLOW, K_CREATE}, {80, T_SESSION, K_LOGIN},
		{50, T_SINGLE, K_CREATE},    {40, T_SINGLE, K_LIST},	  {80, T_SINGLE, K_FEATURE},
		{60, T_SINGLE, K_GET},	     {40, T_SINGLE, K_MISSING},	  {30, T_SINGLE, K_NOTFOUND},
		{20, T_SINGLE, K_NOFEATURE}, {40, T_SINGLE, K_BADLOGIN},  {20, T_SINGLE, K_UNKNOWNUSER},
		{10, T_SINGLE, K_LOCKED},    {8, T_SINGLE, K_BOOM},	  {8, T_SINGLE, K_TRAVERSAL},
		{8, T_SINGLE, K_SQLI},	     {4, T_SINGLE, K_OVERSIZED},  {10, T_SINGLE, K_REPORT},
	};
	int total = 0;
	for (size_t i = 0; i < sizeof mix / sizeof *mix; i++)
		total += mix[i].weight;
	int r = (int)(rnd() % (uint64_t)total);
	size_t i = 0;
	while (r >= mix[i].weight)
		r -= mix[i++].weight;
	t->type = mix[i].type;
	t->single = mix[i].k;
	t->steps = 1;
	if (t->type == T_LEADFLOW) { /* a funnel: not every lead gets qualified, or converted */
		double f = rnd01();
		t->steps = f < 0.2 ? 2 : f < 0.45 ? 3 : 5;
	} else if (t->type == T_SESSION) { /* half the users never log out: sessions expire */
		t->steps = rnd01() < 0.5 ? 4 : 3;
	}
	return 1;
}

/* ---- responses ----------------------------------------------------------------- */
static void record(struct conn *c, int status)
{
	answered++;
	if (status == 0)
		nerrors++;
	else if (status < 300)
		n2xx++;
	else if (status >= 400 && status < 500)
		n4xx++;
	else if (status >= 500)
		n5xx++;
	else
		nother++;
	by_kind[c->kind][status > 0 && status < 600 ? status : 0]++;
	if (opt.exact && kinds[c->kind].expect && status != kinds[c->kind].expect)
		unexpected++;
	if (status) {
		double us = (double)(now_ns() - c->started) / 1e3;
		int b = us <= 1 ? 0 : (int)(log(us) / log(1.2)) + 1;
		lat_hist[b < LAT_BUCKETS ? b : LAT_BUCKETS - 1]++;
		if (us > lat_max)
			lat_max = us;
	}
}

/* Parse a complete response in c->in.  1 complete (status, body), 0 need
 * more, -1 invalid. */
static int parse_response(struct conn *c, int *status, const char **body, size_t *body_len, size_t *total)
{
	char *he = memmem(c->in, c->in_len, "\r\n\r\n", 4);
	if (!he)
		return c->in_len >= sizeof c->in - 1 ? -1 : 0;
	size_t hlen = (size_t)(he - c->in) + 4;
	if (c->in_len < 12 || memcmp(c->in, "HTTP/1.", 7) != 0)
		return -1;
	int st = atoi(c->in + 9);
	if (st < 100 || st > 599)
		return -1;
	long cl = -1;
	c->server_close = false;
	for (char *p = memchr(c->in, '\n', hlen); p && p < c->in + hlen; p = memchr(p + 1, '\n', (size_t)(c->in + hlen - p - 1))) {
		if (strncasecmp(p + 1, "Content-Length:", 15) == 0)
			cl = strtol(p + 16, NULL, 10);
		else if (strncasecmp(p + 1, "Connection:", 11) == 0 && strncasecmp(p + 12 + strspn(p + 12, " "), "close", 5) == 0)
			c->server_close = true;
	}
	if (cl < 0 || (size_t)cl > sizeof c->in - hlen - 1)
		return -1;
	if (c->in_len < hlen + (size_t)cl)
		return 0;
	*status = st;
	*body = c->in + hlen;
	*body_len = (size_t)cl;
	*total = hlen + (size_t)cl;
	return 1;
}

static uint64_t json_id(const char *body, size_t n)
{
	const char *p = memmem(body, n, "\"id\":", 5);
	return p ? strtoull(p + 5, NULL, 10) : 0;
}

static void after_response(struct conn *c, int status, const char *body, size_t body_len)
{
	struct task *t = &c->task;
	if (c->kind == K_CREATE && status == 201) {
		uint64_t id = json_id(body, body_len);
		recent_leads[recent_count++ % 256] = id;
		if (t->type == T_LEADFLOW)
			t->lead = id;
	}
	if (c->kind == K_LOGIN && status == 200) {
		const char *sc = memmem(c->in, (size_t)(body - c->in), "sid=", 4);
		if (sc)
			snprintf(t->sid, sizeof t->sid, "%.32s", sc + 4);
	}
	if (t->type == T_LEADFLOW && !t->lead)
		t->done = true; /* the create failed: nothing to work on */
	if (t->type == T_SESSION && c->kind == K_LOGIN && !t->sid[0])
		t->done = true;
}

/* ---- the loop -------------------------------------------------------------------- */
static bool may_send(int64_t now, int64_t start)
{
	if (opt.requests && sent >= opt.requests)
		return false;
	if (opt.rate > 0 && (double)sent >= opt.rate * (double)(now - start) / 1e9)
		return false;
	return true;
}

static void start_step(struct conn *c, int64_t now)
{
	enum kind k = step_kind(&c->task, c->task.step);
	bool last = c->task.step + 1 == c->task.steps ||
		    (opt.requests && sent + 1 >= opt.requests); /* --requests: the flow is cut here */
	build(c, k, last);
	c->started = now;
	c->deadline = now + (int64_t)(opt.timeout * 1e9);
	sent++;
	if (c->fd < 0 || c->server_close) {
		conn_close(c);
		if (conn_open(c) != 0) {
			record(c, 0);
			c->task.done = true;
			c->state = C_IDLE;
			return;
		}
	} else {
		c->state = C_WRITING;
		want(c, EPOLLOUT);
	}
}

static void finish_step(struct conn *c, int64_t now, bool ok)
{
	c->task.step++;
	bool more = ok && !c->task.done && c->task.step < c->task.steps && !interrupted &&
		    !(opt.requests && sent >= opt.requests);
	if (more && !c->server_close) {
		start_step(c, now);
		if (c->state != C_IDLE)
			return;
	} else if (more) {
		conn_close(c);
		start_step(c, now);
		if (c->state != C_IDLE)
			return;
	}
	conn_close(c);
	c->state = C_IDLE;
	inflight_tasks--;
}

static void on_event(struct conn *c, uint32_t ev, int64_t now)
{
	if (c->state == C_CONNECTING) {
		int err = 0;
		socklen_t len = sizeof err;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			record(c, 0);
			finish_step(c, now, false);
			return;
		}
		c->state = C_WRITING;
	}
	if (c->state == C_WRITING) {
		while (c->out_off < c->out_len) {
			ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
			if (n > 0) {
				c->out_off += (size_t)n;
				continue;
			}
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				return;
			/* The server may have answered and closed early (413): read it. */
			break;
		}
		c->state = C_READING;
		c->in_len = 0;
		want(c, EPOLLIN);
		return;
	}
	if (c->state == C_READING && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
		for (;;) {
			ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - 1 - c->in_len, 0);
			if (n > 0) {
				c->in_len += (size_t)n;
				int status;
				const char *body;
				size_t blen, total;
				int r = parse_response(c, &status, &body, &blen, &total);
				if (r == 0)
					continue;
				if (r < 0) {
					record(c, 0);
					finish_step(c, now, false);
					return;
				}
				record(c, status);
				after_response(c, status, body, blen);
				c->reused = true;
				finish_step(c, now, true);
				return;
			}
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				return;
			/* EOF or reset before a whole response. */
			record(c, 0);
			finish_step(c, now, false);
			return;
		}
	}
}

static void progress(int64_t now, int64_t start, bool final)
{
	if (opt.quiet)
		return;
	double el = (double)(now - start) / 1e9;
	fprintf(stderr, "\r[%6.1fs] sent %ld  ok %ld  4xx %ld  5xx %ld  errors %ld  rate %.1f/s   ", el, sent, n2xx,
		n4xx, n5xx, nerrors, el > 0 ? (double)answered / el : 0.0);
	if (final)
		fputc('\n', stderr);
}

static double lat_quantile(double q)
{
	long total = 0, acc = 0;
	for (int i = 0; i < LAT_BUCKETS; i++)
		total += lat_hist[i];
	if (!total)
		return 0;
	for (int i = 0; i < LAT_BUCKETS; i++) {
		acc += lat_hist[i];
		if ((double)acc >= q * (double)total)
			return i == 0 ? 1 : pow(1.2, i); /* upper bound of the bucket, us */
	}
	return lat_max;
}

/* ---- command line ----------------------------------------------------------------- */
static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s --url http://127.0.0.1:PORT [OPTION]...\n"
		"Sends a realistic request mix to a saler-demo on this machine (127.0.0.1 only).\n"
		"\n"
		"  --url URL           http://127.0.0.1:PORT or http://localhost:PORT\n"
		"  --rate R            requests per second (default 50; 0: as fast as possible)\n"
		"  --duration S        stop after S seconds (default 10 unless --requests or --exact)\n"
		"  --requests N        send exactly N requests of the mix, then stop\n"
		"  --exact SPEC        send exactly these, shuffled: KIND=N[,KIND=N...]; prints\n"
		"                      \"result KIND STATUS COUNT\" lines; exit 1 on any other status\n"
		"  --concurrency C     connections at most at once (default 64)\n"
		"  --clients N         simulated client addresses, sent as X-Forwarded-For (default 200)\n"
		"  --timeout S         seconds per request (default 10)\n"
		"  --seed N            random seed (default: from the clock)\n"
		"  --quiet             no progress line\n"
		"  -h, --help          this help\n"
		"\n"
		"Kinds: ",
		prog);
	for (int k = 0; k < K__COUNT; k++)
		fprintf(f, "%s%s", kinds[k].name, k + 1 < K__COUNT ? ", " : "\n");
	fprintf(f, "Exit status: 0, or 1 when a request failed at the transport level (or, with\n"
		   "--exact, got another status than its kind's usual one), 2 on bad usage.\n");
}

static int parse_url(const char *u)
{
	const char *p;
	if (strncmp(u, "http://127.0.0.1:", 17) == 0)
		p = u + 17;
	else if (strncmp(u, "http://localhost:", 17) == 0)
		p = u + 17;
	else {
		fprintf(stderr, "%s: --url must be http://127.0.0.1:PORT or http://localhost:PORT (got \"%s\"); "
				"this tool only talks to this machine\n",
			prog, u);
		return -1;
	}
	char *end;
	long port = strtol(p, &end, 10);
	if (end == p || port < 1 || port > 65535 || (*end && strcmp(end, "/") != 0)) {
		fprintf(stderr, "%s: bad port in --url \"%s\"\n", prog, u);
		return -1;
	}
	opt.port = (int)port;
	return 0;
}

static int parse_exact(const char *spec)
{
	long counts[K__COUNT] = {0};
	char *s = strdup(spec), *save = NULL;
	if (!s)
		return -1;
	for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		int k = -1;
		if (eq) {
			*eq = '\0';
			for (int i = 0; i < K__COUNT; i++)
				if (strcmp(tok, kinds[i].name) == 0)
					k = i;
		}
		char *end = NULL;
		long n = eq ? strtol(eq + 1, &end, 10) : -1;
		if (k < 0 || n < 0 || n > 10000000 || !end || *end || k == K_QUALIFY || k == K_CONVERT ||
		    k == K_LOGOUT || k == K_GET) {
			fprintf(stderr, "%s: --exact: bad item \"%s\" (KIND=N; qualify, convert, logout and get "
					"exist only inside flows)\n",
				prog, tok);
			free(s);
			return -1;
		}
		counts[k] += n;
	}
	free(s);
	for (int k = 0; k < K__COUNT; k++)
		plan_len += counts[k];
	plan = calloc((size_t)plan_len + 1, sizeof *plan);
	if (!plan)
		return -1;
	long i = 0;
	for (int k = 0; k < K__COUNT; k++)
		for (long j = 0; j < counts[k]; j++)
			plan[i++] = (enum kind)k;
	for (long j = plan_len - 1; j > 0; j--) { /* Fisher-Yates */
		long r = (long)(rnd() % (uint64_t)(j + 1));
		enum kind tmp = plan[j];
		plan[j] = plan[r];
		plan[r] = tmp;
	}
	opt.exact = true;
	return 0;
}

static int number(const char *name, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "%s: --%s: expected a number from %g to %g, got \"%s\"\n", prog, name, lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"url", required_argument, NULL, 'u'},	      {"rate", required_argument, NULL, 'r'},
		{"duration", required_argument, NULL, 'd'},   {"requests", required_argument, NULL, 'n'},
		{"exact", required_argument, NULL, 'e'},      {"concurrency", required_argument, NULL, 'c'},
		{"clients", required_argument, NULL, 'C'},    {"timeout", required_argument, NULL, 't'},
		{"seed", required_argument, NULL, 's'},	      {"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},	      {NULL, 0, NULL, 0},
	};
	const char *url = NULL, *exact = NULL;
	bool duration_set = false;
	double v;
	int ch;
	opt.seed = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32);
	while ((ch = getopt_long(argc, argv, "hq", longopts, NULL)) != -1) {
		switch (ch) {
		case 'u': url = optarg; break;
		case 'r':
			if (number("rate", optarg, 0, 1e7, &opt.rate))
				return 2;
			break;
		case 'd':
			if (number("duration", optarg, 0, 1e7, &opt.duration))
				return 2;
			duration_set = true;
			break;
		case 'n':
			if (number("requests", optarg, 1, 1e12, &v))
				return 2;
			opt.requests = (long)v;
			break;
		case 'e': exact = optarg; break;
		case 'c':
			if (number("concurrency", optarg, 1, 10000, &v))
				return 2;
			opt.concurrency = (unsigned)v;
			break;
		case 'C':
			if (number("clients", optarg, 1, 1000000, &v))
				return 2;
			opt.clients = (unsigned)v;
			break;
		case 't':
			if (number("timeout", optarg, 0.1, 3600, &opt.timeout))
				return 2;
			break;
		case 's':
			if (number("seed", optarg, 0, 1e18, &v))
				return 2;
			opt.seed = (uint64_t)v;
			break;
		case 'q': opt.quiet = true; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || !url) {
		fprintf(stderr, "%s: %s\n", prog, optind < argc ? "unexpected argument" : "--url is required");
		usage(stderr);
		return 2;
	}
	if (parse_url(url) != 0)
		return 2;
	rng = opt.seed | 1;
	if (exact && parse_exact(exact) != 0)
		return 2;
	if (!duration_set && !opt.requests && !opt.exact)
		opt.duration = 10;
	if (opt.exact && opt.requests) {
		fprintf(stderr, "%s: --exact and --requests do not go together\n", prog);
		return 2;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_int;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	ep = epoll_create1(EPOLL_CLOEXEC);
	conns = calloc(opt.concurrency, sizeof *conns);
	if (ep < 0 || !conns) {
		fprintf(stderr, "%s: setup failed: %s\n", prog, strerror(errno));
		return 1;
	}
	for (unsigned i = 0; i < opt.concurrency; i++) {
		conns[i].fd = -1;
		conns[i].out_cap = 1024;
		conns[i].out = malloc(conns[i].out_cap);
		if (!conns[i].out)
			return 1;
	}

	int64_t start = now_ns(), last_progress = start;
	int64_t end = opt.duration > 0 ? start + (int64_t)(opt.duration * 1e9) : INT64_MAX;
	next_burst = start + 3000000000ll;
	struct epoll_event evs[256];
	bool starting = true;
	for (;;) {
		int64_t now = now_ns();
		if (interrupted || now >= end)
			starting = false;
		/* Start tasks on idle connections while the rate allows. */
		for (unsigned i = 0; starting && i < opt.concurrency; i++) {
			struct conn *c = &conns[i];
			if (c->state != C_IDLE)
				continue;
			if (!may_send(now, start))
				break;
			if (!choose_task(&c->task, now)) {
				starting = false;
				break;
			}
			if (opt.requests && c->task.steps > opt.requests - sent)
				c->task.steps = (int)(opt.requests - sent);
			inflight_tasks++;
			start_step(c, now);
			if (c->state == C_IDLE)
				inflight_tasks--;
		}
		if (opt.requests && sent >= opt.requests)
			starting = false;
		if (!starting && inflight_tasks == 0)
			break;
		/* Wait: at most until the next request is due, or 100 ms. */
		int wait_ms = 100;
		if (starting && opt.rate > 0) {
			double due = ((double)sent + 1) / opt.rate * 1e9 + (double)start - (double)now;
			wait_ms = due <= 0 ? 0 : due < 100e6 ? (int)(due / 1e6) : 100;
		}
		int n = epoll_wait(ep, evs, 256, wait_ms);
		now = now_ns();
		for (int i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events, now);
		/* Timeouts. */
		for (unsigned i = 0; i < opt.concurrency; i++) {
			struct conn *c = &conns[i];
			if (c->state != C_IDLE && now > c->deadline) {
				record(c, 0);
				finish_step(c, now, false);
			}
		}
		if (now - last_progress >= 1000000000) {
			progress(now, start, false);
			last_progress = now;
		}
	}
	int64_t fin = now_ns();
	progress(fin, start, true);
	double el = (double)(fin - start) / 1e9;
	printf("requests %ld answered %ld 2xx %ld 4xx %ld 5xx %ld errors %ld elapsed %.2fs rate %.1f/s\n", sent,
	       answered - nerrors, n2xx, n4xx, n5xx, nerrors, el, el > 0 ? (double)(answered - nerrors) / el : 0.0);
	printf("latency p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms\n", lat_quantile(0.5) / 1e3,
	       lat_quantile(0.9) / 1e3, lat_quantile(0.99) / 1e3, lat_max / 1e3);
	if (opt.exact)
		for (int k = 0; k < K__COUNT; k++)
			for (int s = 0; s < 600; s++)
				if (by_kind[k][s])
					printf("result %s %d %ld\n", kinds[k].name, s, by_kind[k][s]);
	if (unexpected)
		fprintf(stderr, "%s: %ld responses had another status than their kind's usual one\n", prog, unexpected);
	return nerrors || unexpected ? 1 : 0;
}
