#!/usr/bin/env bash
# Benchmark: samples a second pushed through POST /api/v1/metrics/batch,
# 1,000 samples a request (800 counter increments over 100 series, 100
# histogram observations, 100 gauge sets; ~104 KB of JSON), over keep-alive
# connections from a small C client compiled here (so the figure is the
# daemon's, not a Python client's).  In-run baseline: GET /-/healthy
# requests a second from the same client, the cheapest answer the daemon
# gives; the ratio says how many pushed samples cost one trivial request.
# Target (the push issue): >= 500,000 samples/s on a 2-core machine.
#   BENCH_SECONDS (default 3) per measurement, BENCH_CONNECTIONS (default 2).
# Ends by checking that the counter totals in /metrics equal what was sent,
# so a fast but lossy path cannot pass.
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
DAEMON=$BUILD_DIR/bin/shmetricsd
PY=/usr/bin/python3
SECS=${BENCH_SECONDS:-3}
CONNS=${BENCH_CONNECTIONS:-2}
seg=/dev/shm/shmet-bench-push-$$
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmet-bench-push.XXXXXX")
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -f "$seg"
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$DAEMON" ] || { echo "bench_push: $DAEMON not built" >&2; exit 1; }

# The client: THREADS keep-alive connections, each sending the request in
# FILE (a whole HTTP request) over and over for SECONDS; reconnects when the
# server says Connection: close; fails on any status but 200.
cat >"$tmp/client.c" <<'EOF'
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port;
static char *req;
static size_t reqlen;
static double secs;
static long counts[64];

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int dial(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((unsigned short)port);
	a.sin_addr.s_addr = htonl(0x7f000001);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
		perror("client: connect");
		exit(1);
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return fd;
}

static void *worker(void *arg)
{
	long id = (long)arg, n = 0;
	int fd = dial();
	static __thread char buf[1 << 16];
	double end = now() + secs;
	while (now() < end) {
		for (size_t off = 0; off < reqlen;) {
			ssize_t w = write(fd, req + off, reqlen - off);
			if (w <= 0) {
				perror("client: write");
				exit(1);
			}
			off += (size_t)w;
		}
		size_t got = 0, hdr = 0;
		long need = -1;
		for (;;) {
			ssize_t r = read(fd, buf + got, sizeof buf - got - 1);
			if (r <= 0) {
				fprintf(stderr, "client: connection closed early\n");
				exit(1);
			}
			got += (size_t)r;
			buf[got] = 0;
			if (need < 0) {
				char *e = strstr(buf, "\r\n\r\n");
				if (!e)
					continue;
				hdr = (size_t)(e + 4 - buf);
				char *cl = strcasestr(buf, "\r\nContent-Length:");
				need = cl ? atol(cl + 17) : 0;
				if (strncmp(buf + 9, "200", 3) != 0) {
					fprintf(stderr, "client: %.300s\n", buf);
					exit(1);
				}
			}
			if (got >= hdr + (size_t)need)
				break;
		}
		n++;
		if (strcasestr(buf, "\r\nConnection: close")) {
			close(fd);
			fd = dial();
		}
	}
	counts[id] = n;
	close(fd);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 5)
		return 2;
	port = atoi(argv[1]);
	FILE *f = fopen(argv[2], "rb");
	if (!f)
		return 2;
	fseek(f, 0, SEEK_END);
	reqlen = (size_t)ftell(f);
	rewind(f);
	req = malloc(reqlen);
	if (!req || fread(req, 1, reqlen, f) != reqlen)
		return 2;
	secs = atof(argv[3]);
	int threads = atoi(argv[4]);
	if (threads < 1 || threads > 64)
		return 2;
	pthread_t t[64];
	double s = now();
	for (long i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	long total = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(t[i], NULL);
		total += counts[i];
	}
	printf("%ld %.6f\n", total, now() - s);
	return 0;
}
EOF
if ! cc -std=c11 -O2 -pthread -o "$tmp/client" "$tmp/client.c" 2>"$tmp/cc.log"; then
	echo "bench_push: cannot compile the client" >&2
	cat "$tmp/cc.log" >&2
	exit 1
fi

token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
(umask 077 && printf '%s\n' "$token" >"$tmp/token")
"$DAEMON" --segment "$seg" --listen 127.0.0.1:0 --region-size $((8 << 20)) --push-token-file "$tmp/token" \
	--push-rate 1000000 --push-max-batch 1000 2>"$tmp/log" &
pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/metrics.*|\1|p' "$tmp/log")
	[ -n "$port" ] && break
	sleep 0.1
done
[ -n "$port" ] || { echo "bench_push: the daemon did not start" >&2; cat "$tmp/log" >&2; exit 1; }

# the two requests, as bytes on the wire
"$PY" - "$tmp" "$token" <<'EOF'
import json, sys
tmp, token = sys.argv[1], sys.argv[2]
s = []
for i in range(800):
    s.append({"name": "bench_requests_total", "type": "counter",
              "labels": {"route": "/r%d" % (i % 50), "code": "200" if i % 10 else "500"}, "inc": 1})
for i in range(100):
    s.append({"name": "bench_latency_seconds", "type": "histogram", "labels": {"route": "/r%d" % (i % 10)},
              "observe": (i % 37) / 100.0})
for i in range(100):
    s.append({"name": "bench_queue_depth", "type": "gauge", "labels": {"queue": "q%d" % (i % 5)}, "value": i})
body = json.dumps({"samples": s}).encode()
head = ("POST /api/v1/metrics/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (token, len(body))).encode()
open(tmp + "/push.req", "wb").write(head + body)
open(tmp + "/healthy.req", "wb").write(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
open(tmp + "/body.len", "w").write(str(len(body)))
EOF

run() { # REQUEST-FILE SECONDS -> "requests seconds"
	"$tmp/client" "$port" "$tmp/$1" "$2" "$CONNS" || { echo "bench_push: client failed" >&2; exit 1; }
}
run push.req 0.3 >/dev/null # warm-up: registrations, first allocations
run healthy.req 0.3 >/dev/null
read -r base_n base_t < <(run healthy.req "$SECS")
read -r push_n push_t < <(run push.req "$SECS")

"$PY" - "$port" "$base_n" "$base_t" "$push_n" "$push_t" "$(cat "$tmp/body.len")" "$CONNS" <<'EOF'
import http.client, json, sys, time
port = int(sys.argv[1])
base_n, base_t, push_n, push_t, blen, conns = (int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
                                               float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
baseline = base_n / base_t
samples = push_n * 1000 / push_t
print("bench push_batch %.0f samples/s (%.0f req/s of 1000, %.1f MB/s of JSON, %d connections) "
      "baseline %.0f req/s (GET /-/healthy) ratio %.1f"
      % (samples, push_n / push_t, push_n * blen / push_t / 1e6, conns, baseline, samples / baseline))
print("bench push_batch target >= 500000 samples/s: %s" % ("met" if samples >= 500000 else "NOT met"))
# every increment arrived: bench_requests_total == 800 x applied requests
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
c.request("GET", "/api/v1/metrics/health")
pushed = json.loads(c.getresponse().read())["push"]["samples"]
total = None
for _ in range(50):
    c.request("GET", "/api/v1/metrics/summary?family=bench_requests_total")
    r = c.getresponse()
    j = json.loads(r.read())
    if r.status == 200:
        total = j["families"][0]["total"]
        break
    time.sleep(0.1)
if pushed % 1000 or total != pushed // 1000 * 800:
    sys.exit("bench_push: bench_requests_total is %s for %d samples applied" % (total, pushed))
print("bench push_batch verified: %d samples applied, counter total %d as sent" % (pushed, total))
EOF
