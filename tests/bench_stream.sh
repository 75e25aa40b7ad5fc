#!/usr/bin/env bash
# Benchmark: what 100 clients of /api/v1/metrics/stream cost a scrape.
# shmetricsd serves the demo (saler-demo, 4 workers, 200 requests/s of
# traffic); a client scrapes /metrics back to back over one keep-alive
# connection and records each scrape's time.  Rounds alternate: no stream
# client (the in-run baseline), then 100 stream clients connected (held and
# drained by a separate process, so the scraper shares nothing with them),
# BENCH_ROUNDS times; the figure is the median over rounds of each round's
# p99.  Target (the dashboard issue): with 100 stream clients, /metrics p99
# within 10 % of its value without them (ratio <= 1.10).
#   BENCH_ROUNDS (default 4), BENCH_SCRAPES per round (default 600),
#   BENCH_STREAMS (default 100).
set -u
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
ROUNDS=${BENCH_ROUNDS:-4} SCRAPES=${BENCH_SCRAPES:-600} STREAMS=${BENCH_STREAMS:-100}
SEG=/dev/shm/shmet-bench-stream-$$
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-bench-stream.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -f "$SEG"
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
. tests/lib/tap.sh >/dev/null 2>&1 || true
trap cleanup EXIT # tap.sh set its own; ours also removes the segment

for b in shmetricsd saler-demo saler-traffic; do
  [ -x "$BIN/$b" ] || { echo "bench_stream: $BIN/$b not built" >&2; exit 1; }
done
"$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 --stream-max-clients $((STREAMS + 10)) \
  --http-max-connections $((STREAMS + 100)) --http-max-per-client $((STREAMS + 50)) 2>"$TMP/c.log" &
pids+=($!)
CPORT=$(port_from_log "$TMP/c.log" "${pids[-1]}") || { cat "$TMP/c.log" >&2; exit 1; }
"$BIN/saler-demo" --port 0 --workers 4 --max-requests 3000 --segment "$SEG" 2>"$TMP/d.log" &
pids+=($!)
DPORT=$(port_from_log "$TMP/d.log" "${pids[-1]}") || { cat "$TMP/d.log" >&2; exit 1; }
"$BIN/saler-traffic" --url "http://127.0.0.1:$DPORT" --rate 200 --duration 3600 --quiet >/dev/null 2>&1 &
pids+=($!)
sleep 2 # every series registered, a few frames made

/usr/bin/python3 - "$CPORT" "$ROUNDS" "$SCRAPES" "$STREAMS" <<'PY'
import http.client, multiprocessing, select, socket, statistics, sys, time
port, rounds, scrapes, streams = (int(a) for a in sys.argv[1:5])

def hold(n, ready, stop):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/v1/metrics/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    got = set()
    end = time.time() + 20
    while len(got) < n and time.time() < end: # every stream answered 200
        for s in select.select(socks, [], [], 5)[0]:
            if b"200 OK" in s.recv(65536) or s in got:
                got.add(s)
    ready.set()
    print("hold: all", n, "streams answered", file=sys.stderr)
    while not stop.is_set():
        for s in select.select(socks, [], [], 0.2)[0]:
            if not s.recv(65536):
                raise SystemExit("a stream closed")

def p99(conn):
    times = []
    for _ in range(scrapes):
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
        assert r.status == 200 and body
    times.sort()
    return times[int(len(times) * 0.99) - 1], len(body)

conn = http.client.HTTPConnection("127.0.0.1", port)
p99(conn) # warm up
base, loaded, seen = [], [], []
for _ in range(rounds):
    b, size = p99(conn)
    base.append(b)
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    h = multiprocessing.Process(target=hold, args=(streams, ready, stop))
    h.start()
    if not ready.wait(30):
        raise SystemExit("the stream clients did not connect")
    conn.request("GET", "/metrics"); r = conn.getresponse(); m = r.read().decode()
    seen += [int(l.split()[1]) for l in m.splitlines() if l.startswith("shmetricsd_stream_clients ")]
    l, _ = p99(conn)
    loaded.append(l)
    stop.set(); h.join()
b, l = statistics.median(base), statistics.median(loaded)
print(f"bench stream: /metrics p99 {b*1e3:.3f} ms without stream clients, {l*1e3:.3f} ms with {streams} "
      f"({min(seen) if seen else '?'} connected), ratio {l/b:.3f} (target <= 1.10); "
      f"{rounds} rounds of {scrapes} scrapes of {size} bytes")
PY
