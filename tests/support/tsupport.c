#include "tsupport.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char paths[64][128];
static int npaths;
static pid_t owner; /* the test process: set before main, so a fork child that names a segment first cannot claim it */

static void remove_paths(void)
{
	if (getpid() != owner)
		return;
	for (int i = 0; i < npaths; i++)
		unlink(paths[i]);
}

__attribute__((constructor)) static void remember_owner(void)
{
	owner = getpid();
	atexit(remove_paths);
}

const char *tsupport_segment(const char *tag)
{
	if (npaths == (int)(sizeof paths / sizeof *paths))
		abort();
	char *p = paths[npaths++];
	snprintf(p, sizeof paths[0], "/dev/shm/shmet-test-%s-%d", tag, (int)getpid());
	unlink(p);
	return p;
}

static const struct shmet_snap_series *lookup(const struct shmet_snapshot *s, const char *name,
					      const char *const *values)
{
	const struct shmet_snap_family *f = shmet_snapshot_family(s, name);
	static const char *const none[] = {NULL};
	return f ? shmet_snapshot_series(f, values ? values : none) : NULL;
}

static int take(const char *path, struct shmet_segment *seg, struct shmet_snapshot *snap)
{
	char err[SHMET_ERRBUF];
	if (shmet_segment_open(path, SHMET_ATTACH_READONLY, NULL, seg, err) != SHMET_OK) {
		fprintf(stderr, "open %s: %s\n", path, err);
		return -1;
	}
	shmet_snapshot_take(seg, snap);
	return 0;
}

double tsupport_value(const char *path, const char *name, const char *const *values)
{
	struct shmet_segment seg;
	struct shmet_snapshot snap;
	if (take(path, &seg, &snap) != 0)
		return NAN;
	const struct shmet_snap_family *f = shmet_snapshot_family(&snap, name);
	const struct shmet_snap_series *s = lookup(&snap, name, values);
	double v = s ? shmet_agg_value(&s->agg, f->type) : NAN;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&seg);
	return v;
}

uint64_t tsupport_count(const char *path, const char *name, const char *const *values)
{
	struct shmet_segment seg;
	struct shmet_snapshot snap;
	if (take(path, &seg, &snap) != 0)
		return UINT64_MAX;
	const struct shmet_snap_series *s = lookup(&snap, name, values);
	uint64_t v = s ? s->agg.whole : UINT64_MAX;
	shmet_snapshot_free(&snap);
	shmet_segment_close(&seg);
	return v;
}

void tsupport_fold(const char *seg)
{
	struct shmet_segment s;
	char err[SHMET_ERRBUF];
	assert_int_equal(shmet_segment_open(seg, 0, NULL, &s, err), SHMET_OK);
	assert_int_equal(shmet_segment_lock_collector(&s, NULL), SHMET_OK);
	static struct shmet_fold_result res;
	if (shmet_fold_dead(&s, &res) != SHMET_OK)
		fail_msg("fold: %s", res.err);
	shmet_free_folded(&s, &res);
	shmet_segment_close(&s);
}

int tsupport_wait(pid_t pid)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

const char *tsupport_bin(const char *name)
{
	static char buf[4][512];
	static int k;
	const char *b = getenv("BUILD_DIR");
	char *p = buf[k++ & 3];
	snprintf(p, sizeof buf[0], "%s/bin/%s", b && *b ? b : "build", name);
	return p;
}

static void msleep(int ms)
{
	struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&t, NULL);
}

int tsupport_free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t l = sizeof a;
	if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(s, (struct sockaddr *)&a, &l) != 0) {
		close(s);
		return -1;
	}
	close(s);
	return ntohs(a.sin_port);
}

int tsupport_daemon_start(struct tdaemon *d, const char *segment, const char *const *extra)
{
	memset(d, 0, sizeof *d);
	snprintf(d->log, sizeof d->log, "/tmp/shmet-test-daemon-%d-%ld.log", (int)getpid(), (long)random());
	const char *argv[32] = {tsupport_bin("shmetricsd"), "--segment", segment, "--listen", "127.0.0.1:0",
				"--scan-interval", "0.1"};
	int n = 7;
	for (int i = 0; extra && extra[i] && n < 31; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	d->pid = fork();
	if (d->pid == 0) {
		/* the daemon dies with the test, even when an assertion ends it early */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		dup2(fd, 2);
		dup2(fd, 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 200; i++) { /* 10 s */
		msleep(50);
		FILE *f = fopen(d->log, "r");
		char line[512];
		while (f && fgets(line, sizeof line, f)) {
			char *p = strstr(line, "listening on http://127.0.0.1:");
			if (p)
				d->port = atoi(p + strlen("listening on http://127.0.0.1:"));
		}
		if (f)
			fclose(f);
		if (d->port)
			return 0;
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			d->pid = 0;
			return -1;
		}
	}
	return -1;
}

int tsupport_daemon_log_clean(const struct tdaemon *d)
{
	FILE *f = fopen(d->log, "r");
	char line[1024];
	int clean = 1;
	if (!f)
		return 0;
	int shown = 0;
	while (fgets(line, sizeof line, f)) {
		if (clean && (strstr(line, "Sanitizer") || strstr(line, "runtime error")))
			clean = 0;
		/* a failure that shows no report cannot be fixed from a CI log */
		if (!clean && shown++ < 60)
			fprintf(stderr, "daemon| %s", line);
	}
	fclose(f);
	return clean;
}

int tsupport_daemon_stop(struct tdaemon *d, int sig)
{
	if (d->pid <= 0)
		return -1;
	kill(d->pid, sig ? sig : SIGTERM);
	int st = tsupport_wait(d->pid);
	d->pid = 0;
	unlink(d->log);
	return st;
}

int tsupport_http_get(int port, const char *path, const char *extra_headers, char **body, char **headers)
{
	*body = NULL;
	if (headers)
		*headers = NULL;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {0};
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	struct timeval tv = {10, 0};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
		close(s);
		return -1;
	}
	char req[2048];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n", path,
			 extra_headers ? extra_headers : "");
	if (write(s, req, (size_t)n) != n) {
		close(s);
		return -1;
	}
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	ssize_t r;
	while ((r = read(s, buf + len, cap - len - 1)) > 0) {
		len += (size_t)r;
		if (cap - len < 2)
			buf = realloc(buf, cap *= 2);
	}
	close(s);
	buf[len] = 0;
	char *sep = strstr(buf, "\r\n\r\n");
	int status = -1;
	if (!sep || sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
		free(buf);
		return -1;
	}
	size_t hl = (size_t)(sep - buf) + 4;
	*body = malloc(len - hl + 1);
	memcpy(*body, buf + hl, len - hl + 1);
	if (headers) {
		buf[hl] = 0;
		*headers = buf;
	} else {
		free(buf);
	}
	return status;
}

double tsupport_sample(const char *body, const char *prefix)
{
	size_t n = strlen(prefix);
	for (const char *p = body; p && *p;) {
		if (strncmp(p, prefix, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return NAN;
}

int tsupport_run(const char *cmd, char **output)
{
	char full[4096];
	snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
	FILE *f = popen(full, "r");
	if (!f)
		return -1;
	size_t cap = 4096, len = 0, r;
	char *buf = malloc(cap);
	while ((r = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += r;
		if (cap - len < 2)
			buf = realloc(buf, cap *= 2);
	}
	buf[len] = 0;
	int st = pclose(f);
	if (output)
		*output = buf;
	else
		free(buf);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void tsupport_register_raw(const struct shmet_segment *s, const unsigned char *rg, uint64_t dir_end)
{
	unsigned char *reg = s->map.base + s->registry_off;
	struct shmet_region_header *rh = (struct shmet_region_header *)(void *)reg;
	shmet__ofd_lock(s->map.fd, SHMET_REGISTRY_LOCK_OFF, F_WRLCK, F_OFD_SETLKW);
	uint64_t end = __atomic_load_n(&rh->rg_dir_end, __ATOMIC_ACQUIRE);
	for (uint64_t pos = sizeof *rh; pos < dir_end;) {
		struct shmet_rec_header h;
		memcpy(&h, rg + pos, sizeof h);
		if (h.rec_size < 8 || pos + h.rec_size > dir_end)
			break;
		struct shmet_shape mine, have;
		int known = 0;
		if (h.rec_kind == SHMET_REC_FAMILY && shmet_shape_decode(rg + pos, h.rec_size, &mine)) {
			for (uint64_t q = sizeof *rh; q < end && !known;) {
				uint32_t size;
				memcpy(&size, reg + q, 4);
				if (size < 8)
					break;
				known = shmet_shape_decode(reg + q, size, &have) && have.name_len == mine.name_len &&
					memcmp(have.name, mine.name, mine.name_len) == 0;
				q += size;
			}
			if (!known && end + h.rec_size <= s->registry_size) {
				memcpy(reg + end, rg + pos, h.rec_size);
				end += h.rec_size;
			}
		}
		pos += h.rec_size;
	}
	__atomic_store_n(&rh->rg_dir_end, end, __ATOMIC_RELEASE);
	shmet__ofd_lock(s->map.fd, SHMET_REGISTRY_LOCK_OFF, F_UNLCK, F_OFD_SETLK);
}
