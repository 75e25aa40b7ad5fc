/* saler-demo — a pre-forking HTTP/1.1 server instrumented with shmetrics.
 *
 * The master binds 127.0.0.1:PORT, registers every metric family and creates
 * the known series (the unlabelled ones included) BEFORE it forks, then forks
 * N workers that accept() on the shared listening socket.  A worker exits
 * cleanly after --max-requests requests and the master forks a replacement
 * (reason="recycled"); a worker that dies any other way is replaced too
 * (reason="crashed"), with a growing delay when it keeps dying at once.
 * SIGTERM or SIGINT on the master stops the workers (each finishes the
 * request it is serving) and exits 0.
 *
 *   master: parse flags -> bind -> saler_metrics_init -> fork workers ->
 *           loop { reap, count restarts, respawn, saler_workers = live }
 *   worker: loop { poll(listen fd) -> accept -> serve the connection }
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "http.h"
#include "metrics.h"

#define MAX_WORKERS 256
#define EXIT_RECYCLED 0   /* served --max-requests requests */
#define EXIT_STOPPED 3    /* told to stop (SIGTERM) */
#define CONN_MAX_REQUESTS 100

struct config {
	int port;
	unsigned workers;
	unsigned long max_requests; /* 0: never recycle */
	const char *segment;        /* NULL: $SHMETRICS_SEGMENT or the default */
	double timeout;             /* seconds for one request to arrive */
	double keepalive;           /* idle seconds between requests on a connection */
	double graceful;            /* seconds the workers get to stop */
	struct app_config app;
};

static const char *prog = "saler-demo";

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: %s [OPTION]...\n"
		"A pre-forking HTTP/1.1 demo server (leads, logins, sessions) that exports its\n"
		"metrics through a shmetrics segment; run shmetricsd on the same segment to serve them.\n"
		"\n"
		"  --port N            listen on 127.0.0.1:N (0: a free port; default 8000)\n"
		"  --workers N         worker processes (default 4, at most %d)\n"
		"  --max-requests M    recycle a worker after M requests (default 0: never)\n"
		"  --segment PATH      shmetrics segment (default $SHMETRICS_SEGMENT, then /dev/shm/shmetrics)\n"
		"  --rate-limit R      requests per second per client and worker (default 5; 0: off)\n"
		"  --burst B           rate-limit bucket size (default 10)\n"
		"  --fail-rate P       chance that a lead conversion fails with 500 (default 0.02)\n"
		"  --session-ttl S     session lifetime in seconds (default 60)\n"
		"  --pool-size N       simulated database connections per worker (default 5)\n"
		"  --timeout S         seconds for a request to arrive completely (default 5)\n"
		"  --keepalive S       idle seconds a connection is kept between requests (default 2)\n"
		"  --graceful-timeout S  seconds the workers get to finish when stopping (default 10)\n"
		"  -h, --help          this help\n"
		"\n"
		"It prints \"saler-demo listening on http://127.0.0.1:PORT\" on stderr when ready.\n"
		"The client address used by the rate limit is the first X-Forwarded-For address\n"
		"(the demo only listens on loopback, as behind a local proxy), else the peer's.\n",
		prog, MAX_WORKERS);
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi)) {
		fprintf(stderr, "%s: --%s: expected a number from %g to %g, got \"%s\"\n", prog, opt, lo, hi, s);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct config *c)
{
	static const struct option opts[] = {
		{"port", required_argument, NULL, 'p'},	      {"workers", required_argument, NULL, 'w'},
		{"max-requests", required_argument, NULL, 'm'}, {"segment", required_argument, NULL, 's'},
		{"rate-limit", required_argument, NULL, 'r'},   {"burst", required_argument, NULL, 'b'},
		{"fail-rate", required_argument, NULL, 'f'},    {"session-ttl", required_argument, NULL, 't'},
		{"pool-size", required_argument, NULL, 'P'},    {"timeout", required_argument, NULL, 'T'},
		{"keepalive", required_argument, NULL, 'k'},    {"graceful-timeout", required_argument, NULL, 'g'},
		{"help", no_argument, NULL, 'h'},		      {NULL, 0, NULL, 0},
	};
	*c = (struct config){8000, 4, 0, NULL, 5, 2, 10, {5, 10, 60, 0.02, 5}};
	int ch;
	double v;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		const char *name = NULL;
		for (const struct option *o = opts; o->name; o++)
			if (o->val == ch)
				name = o->name;
		switch (ch) {
		case 'p':
			if (parse_num(name, optarg, 0, 65535, &v))
				return -1;
			c->port = (int)v;
			break;
		case 'w':
			if (parse_num(name, optarg, 1, MAX_WORKERS, &v))
				return -1;
			c->workers = (unsigned)v;
			break;
		case 'm':
			if (parse_num(name, optarg, 0, 1e12, &v))
				return -1;
			c->max_requests = (unsigned long)v;
			break;
		case 's': c->segment = optarg; break;
		case 'r':
			if (parse_num(name, optarg, 0, 1e9, &c->app.rate_limit))
				return -1;
			break;
		case 'b':
			if (parse_num(name, optarg, 1, 1e9, &c->app.burst))
				return -1;
			break;
		case 'f':
			if (parse_num(name, optarg, 0, 1, &c->app.fail_rate))
				return -1;
			break;
		case 't':
			if (parse_num(name, optarg, 1, 86400, &c->app.session_ttl))
				return -1;
			break;
		case 'P':
			if (parse_num(name, optarg, 1, 1000, &v))
				return -1;
			c->app.pool_size = (unsigned)v;
			break;
		case 'T':
			if (parse_num(name, optarg, 0.1, 3600, &c->timeout))
				return -1;
			break;
		case 'k':
			if (parse_num(name, optarg, 0, 3600, &c->keepalive))
				return -1;
			break;
		case 'g':
			if (parse_num(name, optarg, 0, 3600, &c->graceful))
				return -1;
			break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "%s: unexpected argument \"%s\"\n", prog, argv[optind]);
		return -1;
	}
	return 0;
}

/* ---- worker -------------------------------------------------------------- */

static volatile sig_atomic_t worker_stop;

static void on_worker_term(int sig)
{
	(void)sig;
	worker_stop = 1;
}

/* Serve one connection; returns the number of requests answered. */
static unsigned long serve_connection(int fd, const struct sockaddr_in6 *peer, const struct config *cfg,
				      unsigned long budget)
{
	static struct http_conn c; /* big buffer: not on the stack */
	static struct http_request req;
	static struct http_response resp;
	c.fd = fd;
	c.len = c.consumed = 0;
	c.unread = false;
	if (peer->sin6_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)peer)->sin_addr, c.peer, sizeof c.peer);
	else
		inet_ntop(AF_INET6, &peer->sin6_addr, c.peer, sizeof c.peer);
	int64_t timeout = (int64_t)(cfg->timeout * 1e9);
	int64_t first = http_now_ns() + timeout;
	unsigned long answered = 0;
	for (;;) {
		enum http_read_status st = http_read_request(&c, &req, first, timeout, &worker_stop);
		if (st == HTTP_READ_CLOSED || st == HTTP_READ_IO || st == HTTP_READ_STOPPED)
			break;
		shmet_gauge_inc(saler_m.in_flight);
		shmet_timer t = shmet_timer_start();
		enum saler_route route = ROUTE_MALFORMED;
		switch (st) {
		case HTTP_READ_OK: app_handle(&req, &resp, &route); break;
		case HTTP_READ_TIMEOUT:
			route = app_route_of(&req);
			http_resp_init(&resp, 408);
			http_resp_body(&resp, "{\"error\":\"request timeout\"}\n");
			break;
		case HTTP_READ_HEAD_TOO_LARGE:
			shmet_counter_inc(saler_m.suspicious[SUSP_OVERSIZED]);
			http_resp_init(&resp, 431);
			http_resp_body(&resp, "{\"error\":\"request head larger than %d bytes\"}\n", HTTP_HEAD_MAX);
			break;
		case HTTP_READ_BODY_TOO_LARGE:
			route = app_route_of(&req);
			shmet_counter_inc(saler_m.suspicious[SUSP_OVERSIZED]);
			http_resp_init(&resp, 413);
			http_resp_body(&resp, "{\"error\":\"request body larger than %d bytes\"}\n", HTTP_BODY_MAX);
			break;
		default: /* HTTP_READ_MALFORMED */
			shmet_counter_inc(saler_m.suspicious[SUSP_MALFORMED]);
			http_resp_init(&resp, 400);
			http_resp_body(&resp, "{\"error\":\"malformed request\"}\n");
			break;
		}
		answered++;
		if (st != HTTP_READ_OK || !req.keep_alive || worker_stop || answered >= budget ||
		    answered >= CONN_MAX_REQUESTS || cfg->keepalive <= 0)
			resp.close = true;
		/* Count before writing: once a client has its answer, the metrics
		 * already include the request (tests can scrape right away).  The
		 * duration is therefore the handling time, without the send. */
		saler_metrics_request(route, req.method_id, resp.status, shmet_timer_seconds(t));
		shmet_gauge_dec(saler_m.in_flight);
		int wr = http_write_response(&c, &resp, req.method_id == METHOD_HEAD, http_now_ns() + timeout);
		if (wr != 0 || resp.close)
			break;
		first = http_now_ns() + (int64_t)(cfg->keepalive * 1e9);
	}
	http_close(&c);
	return answered;
}

static void worker_main(int lfd, const struct config *cfg, uint64_t serial, pid_t master)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_worker_term; /* no SA_RESTART: poll/accept return EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGINT, SIG_IGN); /* a terminal's Ctrl-C reaches the master, which stops us */
	signal(SIGHUP, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGCHLD, SIG_DFL);
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != master)
		_exit(EXIT_STOPPED);
	if (shmet_region_index() < 0)
		fprintf(stderr,
			"%s[%d]: warning: no metrics region for this worker (segment full? is shmetricsd running "
			"to free the regions of dead workers?); its metrics are dropped\n",
			prog, (int)getpid());
	app_init(&cfg->app, serial);

	unsigned long served = 0;
	int64_t next_tick = http_now_ns() + 1000000000;
	while (!worker_stop && (cfg->max_requests == 0 || served < cfg->max_requests)) {
		int64_t now = http_now_ns();
		if (now >= next_tick) {
			app_tick();
			next_tick = now + 1000000000;
		}
		struct pollfd p = {lfd, POLLIN, 0};
		int n = poll(&p, 1, (int)((next_tick - now) / 1000000) + 1);
		if (n <= 0)
			continue; /* timeout, or EINTR (stop is checked above) */
		struct sockaddr_in6 peer;
		socklen_t plen = sizeof peer;
		memset(&peer, 0, sizeof peer);
		int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			continue; /* EAGAIN: another worker took it; ECONNABORTED, EMFILE...: try again */
		unsigned long budget = cfg->max_requests ? cfg->max_requests - served : (unsigned long)-1;
		served += serve_connection(fd, &peer, cfg, budget);
	}
	_exit(worker_stop ? EXIT_STOPPED : EXIT_RECYCLED);
}

/* ---- master -------------------------------------------------------------- */

struct slot {
	pid_t pid;           /* 0: not running */
	uint64_t serial;
	int64_t started;
	int64_t respawn_at;  /* when pid == 0: fork again at this time */
	unsigned crash_streak;
};

static int listen_on(int port, int *bound)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "%s: socket: %s\n", prog, strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1024) != 0) {
		fprintf(stderr, "%s: cannot listen on 127.0.0.1:%d: %s\n", prog, port, strerror(errno));
		close(fd);
		return -1;
	}
	socklen_t len = sizeof a;
	getsockname(fd, (struct sockaddr *)&a, &len);
	*bound = ntohs(a.sin_port);
	return fd;
}

static uint64_t next_serial = 1;

static int spawn(struct slot *s, int lfd, const struct config *cfg)
{
	uint64_t serial = next_serial++;
	pid_t master = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "%s: fork: %s\n", prog, strerror(errno));
		s->respawn_at = http_now_ns() + 1000000000;
		return -1;
	}
	if (pid == 0)
		worker_main(lfd, cfg, serial, master); /* never returns */
	s->pid = pid;
	s->serial = serial;
	s->started = http_now_ns();
	return 0;
}

static unsigned live_workers(const struct slot *slots, unsigned n)
{
	unsigned k = 0;
	for (unsigned i = 0; i < n; i++)
		k += slots[i].pid != 0;
	return k;
}

/* Reap every exited worker.  When counting (not stopping), record why it
 * went and when to replace it. */
static void reap(struct slot *slots, unsigned n, int counting)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		struct slot *s = NULL;
		for (unsigned i = 0; i < n; i++)
			if (slots[i].pid == pid)
				s = &slots[i];
		if (!s)
			continue;
		s->pid = 0;
		if (!counting)
			continue;
		int64_t now = http_now_ns();
		if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_RECYCLED) {
			shmet_counter_inc(saler_m.worker_restarts[RESTART_RECYCLED]);
			s->crash_streak = 0;
			s->respawn_at = now;
			continue;
		}
		shmet_counter_inc(saler_m.worker_restarts[RESTART_CRASHED]);
		if (WIFSIGNALED(status))
			fprintf(stderr, "%s: worker %d (pid %d) killed by signal %d (%s); restarting\n", prog,
				(int)s->serial, (int)pid, WTERMSIG(status), strsignal(WTERMSIG(status)));
		else
			fprintf(stderr, "%s: worker %d (pid %d) exited with status %d; restarting\n", prog,
				(int)s->serial, (int)pid, WEXITSTATUS(status));
		/* A worker that dies at once, again and again, is restarted with a
		 * growing delay (0.1 s doubling to 5 s) instead of in a fork loop. */
		if (now - s->started < 1000000000) {
			s->crash_streak++;
			int64_t delay = 100000000ll << (s->crash_streak < 6 ? s->crash_streak - 1 : 5);
			s->respawn_at = now + (delay > 5000000000ll ? 5000000000ll : delay);
		} else {
			s->crash_streak = 0;
			s->respawn_at = now;
		}
	}
}

int main(int argc, char **argv)
{
	struct config cfg;
	if (parse_args(argc, argv, &cfg) != 0)
		return 2;

	/* Signals the master handles synchronously, with sigtimedwait. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	int port = 0;
	int lfd = listen_on(cfg.port, &port);
	if (lfd < 0)
		return 1;
	int rc = saler_metrics_init(cfg.segment);
	if (rc != SHMET_OK) {
		fprintf(stderr, "%s: metrics: %s (%s)\n", prog, shmet_last_error(), shmet_strerror(rc));
		return 1;
	}

	struct slot slots[MAX_WORKERS];
	memset(slots, 0, sizeof slots);
	for (unsigned i = 0; i < cfg.workers; i++)
		spawn(&slots[i], lfd, &cfg);
	shmet_gauge_set(saler_m.workers, (double)live_workers(slots, cfg.workers));
	fprintf(stderr, "%s listening on http://127.0.0.1:%d (%u workers, max requests %lu, metrics region %d)\n",
		prog, port, cfg.workers, cfg.max_requests, shmet_region_index());

	int stop_sig = 0;
	while (!stop_sig) {
		reap(slots, cfg.workers, 1);
		int64_t now = http_now_ns(), wake = now + 1000000000;
		for (unsigned i = 0; i < cfg.workers; i++) {
			if (slots[i].pid)
				continue;
			if (slots[i].respawn_at <= now)
				spawn(&slots[i], lfd, &cfg);
			if (!slots[i].pid && slots[i].respawn_at < wake)
				wake = slots[i].respawn_at;
		}
		shmet_gauge_set(saler_m.workers, (double)live_workers(slots, cfg.workers));
		int64_t left = wake - http_now_ns();
		if (left < 1000000)
			left = 1000000;
		struct timespec ts = {left / 1000000000, left % 1000000000};
		siginfo_t info;
		int sig = sigtimedwait(&set, &info, &ts);
		if (sig == SIGTERM || sig == SIGINT)
			stop_sig = sig;
		/* SIGCHLD: reaped at the top; SIGHUP: ignored (no config to reload). */
	}

	fprintf(stderr, "%s: %s received; stopping %u workers\n", prog, strsignal(stop_sig),
		live_workers(slots, cfg.workers));
	for (unsigned i = 0; i < cfg.workers; i++)
		if (slots[i].pid)
			kill(slots[i].pid, SIGTERM);
	int64_t deadline = http_now_ns() + (int64_t)(cfg.graceful * 1e9);
	for (;;) {
		reap(slots, cfg.workers, 0);
		if (!live_workers(slots, cfg.workers))
			break;
		int64_t left = deadline - http_now_ns();
		if (left <= 0) {
			fprintf(stderr, "%s: workers still running after %.0f s; killing them\n", prog, cfg.graceful);
			for (unsigned i = 0; i < cfg.workers; i++)
				if (slots[i].pid)
					kill(slots[i].pid, SIGKILL);
			deadline = http_now_ns() + 5000000000ll;
			continue;
		}
		struct timespec ts = {left / 1000000000, left % 1000000000};
		if (ts.tv_sec > 0) {
			ts.tv_sec = 0;
			ts.tv_nsec = 100000000;
		}
		siginfo_t info;
		sigtimedwait(&set, &info, &ts);
	}
	shmet_gauge_set(saler_m.workers, 0);
	close(lfd);
	fprintf(stderr, "%s: stopped\n", prog);
	return 0;
}
