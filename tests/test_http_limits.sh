#!/usr/bin/env bash
# shmetricsd's HTTP limits against a real daemon on 127.0.0.1: a junk
# request line gets 400, an unwanted body past 64 KiB gets 413 (announced
# or chunked, on every endpoint but the pushes), and 100 clients trickling
# a request a byte a second (more than --http-max-per-client allows from
# one address) neither lock /-/healthy and /metrics out nor outlive the
# whole-request deadline (--http-request-timeout 4 here), which answers 408
# (or 503 to those evicted to make room).  Then as many requests in
# progress (headers in, body awaited) as one client may have: the next
# request gets 503 with Retry-After, not a reset.  Bounded to well under a minute; every process
# it starts is stopped.  TAP lines "ok - ..." / "not ok - ...".
# HTTP_TEST_FLAGS replaces the daemon's extra flags (e.g. empty, to run the
# same checks against a shmetricsd without them).
set -u
cd "$(dirname "$0")/.." || exit 2
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
PY=/usr/bin/python3
SEG=/dev/shm/shmet-test-http-limits-$$
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-http-limits.XXXXXX")
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}exitcode=86
export UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1
. tests/lib/tap.sh

for b in "$BIN/shmetricsd" "$PY"; do
  [ -x "$b" ] || { not_ok "$b is there (run make first)"; finish; }
done

# shellcheck disable=SC2086 # the flags are words
"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 ${HTTP_TEST_FLAGS---http-request-timeout 4} \
  2>"$TMP/daemon.log" &
pids+=($!)
if ! port=$(port_from_log "$TMP/daemon.log" "${pids[0]}"); then
  not_ok "shmetricsd starts"
  diag <"$TMP/daemon.log"
  finish
fi
ok "shmetricsd listens on 127.0.0.1:$port"

timeout --kill-after=5 45 "$PY" - "$port" <<'PYEOF' >"$TMP/checks.out" 2>&1
import select, socket, sys, threading, time

PORT = int(sys.argv[1])
DEADLINE = 4.0  # --http-request-timeout

def say(good, what):
    print(("ok - " if good else "not ok - ") + what, flush=True)

def exchange(data, wait=3.0):
    """Send data on a fresh connection; return what came back before the
    server closed (or wait ran out), b"" for a silent close, None for a
    reset or a refused connection."""
    try:
        s = socket.create_connection(("127.0.0.1", PORT), timeout=wait)
    except OSError:
        return None
    out = b""
    try:
        s.settimeout(wait)
        s.sendall(data)
        end = time.time() + wait
        while time.time() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"Content-Length" not in out.split(b"\r\n\r\n")[0]:
                break
            head, _, body = out.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                    end = 0
    except socket.timeout:
        pass
    except OSError:
        return None if not out else out
    finally:
        s.close()
    return out

def status(resp):
    if resp is None:
        return "reset"
    if not resp:
        return "closed without a status"
    line = resp.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return parts[1] if len(parts) > 1 and line.startswith("HTTP/1.") else "garbage %r" % line[:40]

def get(path, wait=2.0):
    t0 = time.time()
    r = exchange(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" % path).encode(), wait)
    return status(r), time.time() - t0, r

# ---- junk and bodies ----
for junk in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"\x01\x02\x03\x04\r\n\r\n"):
    st = status(exchange(junk))
    say(st == "400", "junk request line %r: 400 (got %s)" % (junk[:12], st))
for path in ("/metrics", "/-/healthy", "/api/v1/metrics/health", "/nowhere"):
    t0 = time.time()
    r = exchange(("GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" % path).encode() + b"x" * 1000)
    st = status(r)
    say(st == "413" and time.time() - t0 < 2,
        "GET %s announcing a 10 MB body: 413 at once (got %s in %.1f s)" % (path, st, time.time() - t0))
chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
r = exchange(b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 8 + b"0\r\n\r\n")
say(status(r) == "413", "a chunked body of 128 KiB to /-/healthy: 413 (got %s)" % status(r))
r = exchange(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n" + b"b" * 100)
say(status(r) == "200", "a small body is still dropped and answered (got %s)" % status(r))

# ---- tricklers ----
N, SECONDS, REQ = 100, 11.0, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 200
stop = threading.Event()
probes = []  # (path, status, seconds)

def prober():
    while not stop.is_set():
        for path in ("/-/healthy", "/metrics"):
            st, secs, _ = get(path)
            probes.append((path, st, secs))
        time.sleep(0.2)

class Trickler:
    def __init__(self):
        self.t0 = time.time()
        self.sent = 0
        self.end = None  # (seconds after t0, how)
        self.buf = b""
        try:
            self.s = socket.create_connection(("127.0.0.1", PORT), timeout=2)
            self.s.setblocking(False)
        except OSError:
            self.s = None
            self.end = (0.0, "refused")
    def tick(self, now):
        if self.end or now - self.t0 < self.sent * 1.0:
            return
        try:
            self.s.send(REQ[self.sent:self.sent + 1])
            self.sent += 1
        except BlockingIOError:
            pass
        except OSError:
            self.finish(now, "reset" if not self.buf else status(self.buf))
    def readable(self, now):
        try:
            d = self.s.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            return self.finish(now, "reset" if not self.buf else status(self.buf))
        if d:
            self.buf += d
        else:
            self.finish(now, status(self.buf) if self.buf else "closed without a status")
    def finish(self, now, how):
        self.end = (now - self.t0, how)
        self.s.close()

th = threading.Thread(target=prober)
start = time.time()
live, done = [Trickler() for _ in range(N)], []
first = list(live)
th.start()
while time.time() - start < SECONDS:
    now = time.time()
    for t in live:
        t.tick(now)
    socks = {t.s: t for t in live if not t.end}
    if socks:
        r, _, _ = select.select(list(socks), [], [], 0.05)
        for s in r:
            socks[s].readable(time.time())
    else:
        time.sleep(0.05)
    keep = []
    for t in live:
        if t.end:
            done.append(t)
            keep.append(Trickler())  # keep the pressure on
        else:
            keep.append(t)
    live = keep
stop.set()
th.join()
for t in live:
    if not t.end:
        t.finish(time.time(), "still open")
finished = [t for t in done if t.end[1] != "still open"]

bad = [p for p in probes if p[1] != "200" or p[2] > 2.0]
say(len(probes) >= 20 and not bad,
    "with %d clients trickling a byte a second, /-/healthy and /metrics answered %d of %d probes with 200 within 2 s%s"
    % (N, len(probes) - len(bad), len(probes), "; failures: %s" % bad[:5] if bad else ""))
slowest = max((p[2] for p in probes), default=0)
print("# probes: %d, slowest %.2f s; tricklers that ended: %d" % (len(probes), slowest, len(finished)))
hows = {}
for t in finished:
    hows[t.end[1]] = hows.get(t.end[1], 0) + 1
print("# how tricklers ended: %s" % hows)
late = [t for t in first if t.end[1] == "still open" or t.end[0] > DEADLINE + 1.5]
for t in late[:3]:
    print("# late: ended %s after %.1f s, %d bytes sent, got %r" % (t.end[1], t.end[0], t.sent, t.buf[:80]))
say(len(first) == N and not late,
    "every first trickler was cut within the %.0f s deadline (+1.5 s): %d of %d, the latest after %.1f s"
    % (DEADLINE, len(first) - len(late), N, max((t.end[0] for t in first), default=-1)))
say(finished and all(t.end[1] in ("408", "503") for t in finished),
    "each cut trickler got a status, 408 at its deadline or 503 when evicted: %s" % hows)

# ---- more busy requests at once than one client may have ----
# 64 (the default --http-max-per-client) requests whose headers are in and
# whose bodies never come: nothing to evict, so the next request gets 503.
time.sleep(0.5)
busy = []
for _ in range(64):
    try:
        b = socket.create_connection(("127.0.0.1", PORT), timeout=2)
        b.sendall(b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        busy.append(b)
    except OSError:
        break
time.sleep(0.3)
st, secs, r = get("/-/healthy")
head = r.split(b"\r\n\r\n")[0].lower() if r else b""
say(st == "503" and b"retry-after: " in head,
    "with %d requests of one client in progress, the next gets 503 with Retry-After, not a reset (got %s)"
    % (len(busy), st))
for b in busy:
    b.close()
time.sleep(0.3)
st, secs, r = get("/-/healthy")
say(st == "200", "once they are gone, /-/healthy answers 200 again (got %s)" % st)
PYEOF
rc=$?
while IFS= read -r line; do
  case $line in
    "ok - "*) ok "${line#ok - }" ;;
    "not ok - "*) not_ok "${line#not ok - }" ;;
    *) echo "# $line" ;;
  esac
done <"$TMP/checks.out"
[ "$rc" -eq 0 ] || not_ok "the checks ran to their end (exit $rc)"
if kill -0 "${pids[0]}" 2>/dev/null; then
  ok "shmetricsd is still running"
  kill -TERM "${pids[0]}"
  wait "${pids[0]}"
  rc=$?
  [ "$rc" -eq 0 ] && ok "shmetricsd stops cleanly on SIGTERM" || not_ok "shmetricsd exits $rc on SIGTERM"
else
  not_ok "shmetricsd is still running"
fi
grep -E 'ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error' "$TMP/daemon.log" >/dev/null && { not_ok "no sanitizer report"; diag <"$TMP/daemon.log"; }
finish
