#!/usr/bin/env bash
# GET /api/v1/metrics/stream: Server-Sent Events with ids, resuming with
# Last-Event-ID, heartbeats that keep a quiet stream past the idle and
# request timeouts, a 503 past --stream-max-clients (counted), and the
# history kept in the segment: a restarted collector (SIGTERM or kill -9)
# serves the frames from before the restart, and refuses damaged records.
#
# TAP lines on stdout.  Everything it starts is killed on exit; only
# 127.0.0.1 and free ports are used.
set -u
cd "$(dirname "$0")/.."
BIN=${BUILD_DIR:-build}/bin
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-stream.XXXXXX")
SEG=/dev/shm/shmetrics-test-stream-$$
. tests/lib/tap.sh

start_collector() { # start_collector LOG ARGS... -> sets col, CPORT
  "$BIN/shmetricsd" --segment "$SEG" --listen 127.0.0.1:0 "${@:2}" 2>>"$1" &
  col=$!
  pids+=("$col")
  CPORT=$(port_from_log "$1" "$col") || { not_ok "shmetricsd started"; diag <"$1"; finish; }
}
stop_collector() { # stop_collector [SIGNAL]
  kill "-${1:-TERM}" "$col" 2>/dev/null
  wait "$col" 2>/dev/null
}
# events FILE -> "id t" of each event, in order
events() {
  python3 - "$1" <<'PY'
import json, sys
cur = None
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = line.rstrip("\n")
    if line.startswith("id: "):
        cur = int(line[4:])
    elif line.startswith("data: ") and cur is not None:
        f = json.loads(line[6:])
        assert f["id"] == cur, (f["id"], cur)
        try:
            print(cur, f["t"], flush=True)
        except BrokenPipeError: # the reader (head) had enough
            sys.exit(0)
        cur = None
PY
}
stream() { # stream SECONDS OUT [curl args]: read the stream for SECONDS
  curl -sN --max-time "$1" -D "$2.headers" "${@:3}" "http://127.0.0.1:$CPORT/api/v1/metrics/stream" >"$2" 2>/dev/null
}

# ---- events, ids, resume ---------------------------------------------------
start_collector "$TMP/c1.log" --stream-interval 0.2
stream 2.5 "$TMP/s1"
if grep -qi '^content-type: text/event-stream' "$TMP/s1.headers"; then
  ok "the stream answers text/event-stream"
else
  not_ok "the stream answers text/event-stream"; diag <"$TMP/s1.headers"
fi
events "$TMP/s1" >"$TMP/e1" 2>"$TMP/e1.err"
nev=$(wc -l <"$TMP/e1")
if [ "$nev" -ge 5 ] && sort -n -c -u "$TMP/e1" 2>/dev/null; then
  ok "events carry id: lines equal to their frame's id, strictly increasing ($nev in 2.5 s)"
else
  not_ok "events with increasing ids ($nev)"; diag <"$TMP/e1.err"; head -c 600 "$TMP/s1" | diag
fi
# Resume from the second event: the next event is the third, none is lost or repeated.
second=$(sed -n 2p "$TMP/e1" | cut -d' ' -f1) third=$(sed -n 3p "$TMP/e1" | cut -d' ' -f1)
stream 1 "$TMP/s2" -H "Last-Event-ID: $second"
first_resumed=$(events "$TMP/s2" | head -n 1 | cut -d' ' -f1)
if [ -n "$third" ] && [ "$first_resumed" = "$third" ]; then
  ok "Last-Event-ID resumes with the next frame ($second -> $first_resumed)"
else
  not_ok "Last-Event-ID resumes with the next frame: after $second expected $third, got ${first_resumed:-nothing}"
fi
# Without Last-Event-ID: the newest frame first, not the whole ring.
stream 0.5 "$TMP/s3"
if [ "$(events "$TMP/s3" | head -n 1 | cut -d' ' -f1)" -gt "$(tail -n 1 "$TMP/e1" | cut -d' ' -f1)" ]; then
  ok "a new client starts with the newest frame"
else
  not_ok "a new client starts with the newest frame"; events "$TMP/s3" | head -3 | diag
fi
stop_collector

# ---- heartbeats keep a quiet stream past the idle and request timeouts ------
start_collector "$TMP/c2.log" --stream-interval 60 --http-idle-timeout 2 --http-request-timeout 3
stream 5 "$TMP/s4"
rc=$?
hb=$(grep -c '^: heartbeat' "$TMP/s4")
if [ "$rc" = 28 ] && [ "$hb" -ge 3 ]; then
  ok "with no frame due, heartbeats keep the stream open past --http-idle-timeout 2 and --http-request-timeout 3 ($hb in 5 s)"
else
  not_ok "heartbeats keep a quiet stream open: curl rc $rc (28: still open at --max-time), $hb heartbeats"
  diag <"$TMP/s4"
fi
stop_collector

# ---- the client limit --------------------------------------------------------
start_collector "$TMP/c3.log" --stream-interval 0.5 --stream-max-clients 2
for i in 1 2; do
  curl -sN --max-time 30 "http://127.0.0.1:$CPORT/api/v1/metrics/stream" >"$TMP/hold$i" 2>/dev/null &
  pids+=($!)
done
for i in $(seq 50); do # both connected (bounded wait)
  [ -s "$TMP/hold1" ] && [ -s "$TMP/hold2" ] && break
  sleep 0.1
done
code=$(curl -s -o "$TMP/refused" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$CPORT/api/v1/metrics/stream")
if [ "$code" = 503 ] && grep -q -- '--stream-max-clients' "$TMP/refused"; then
  ok "past --stream-max-clients 2 a third client gets 503 with the reason: $(cat "$TMP/refused")"
else
  not_ok "past --stream-max-clients a 503 with a reason: got $code"; diag <"$TMP/refused"
fi
curl -s "http://127.0.0.1:$CPORT/metrics" >"$TMP/m3"
if grep -q '^shmetricsd_stream_refused_total 1$' "$TMP/m3" && grep -q '^shmetricsd_stream_clients 2$' "$TMP/m3"; then
  ok "shmetricsd_stream_clients and shmetricsd_stream_refused_total count them"
else
  not_ok "stream clients and refusals in /metrics"; grep '^shmetricsd_stream' "$TMP/m3" | diag
fi
kill "${pids[-1]}" "${pids[-2]}" 2>/dev/null
# A client that went away frees its place at the next frame.
code=000
for i in $(seq 50); do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$CPORT/api/v1/metrics/stream")
  [ "$code" != 503 ] && break
  sleep 0.1
done
if [ "$code" = 000 ] || [ "$code" = 200 ]; then # 000: still streaming when --max-time cut it
  ok "clients that left free their places"
else
  not_ok "clients that left free their places: still $code"
fi
stop_collector

# ---- history across restarts ---------------------------------------------------
rm -f "$SEG"
start_collector "$TMP/c4.log" --stream-interval 0.5
for i in $(seq 100); do # until three frames are kept (one every 5 s): the backlog spans 10 s
  stream 0.3 "$TMP/s4b" --get --data backlog=900
  events "$TMP/s4b" | awk 'NR == 1 { a = $2 } { b = $2 } END { exit !(b - a >= 10.2) }' && break
done
stop_collector TERM
restart=$(date +%s.%N)
start_collector "$TMP/c5.log" --stream-interval 0.5
stream 1 "$TMP/s5" --get --data backlog=900
events "$TMP/s5" >"$TMP/e5"
kept=$(awk -v r="$restart" '$2 < r' "$TMP/e5" | wc -l)
if grep -q 'taking back the history in region' "$TMP/c5.log" && [ "$kept" -ge 2 ]; then
  ok "after SIGTERM and a restart, ?backlog serves $kept frames from before the restart"
else
  not_ok "history after a restart: $kept frames from before it"; diag <"$TMP/c5.log"; diag <"$TMP/e5"
fi
stop_collector KILL
start_collector "$TMP/c6.log" --stream-interval 0.5
stream 1 "$TMP/s6" --get --data backlog=900
kept=$(events "$TMP/s6" | awk -v r="$restart" '$2 < r' | wc -l)
if grep -q 'taking back the history in region' "$TMP/c6.log" && [ "$kept" -ge 2 ]; then
  ok "after kill -9 and a restart, the history is still there ($kept frames from before the first restart)"
else
  not_ok "history after kill -9: $kept frames"; diag <"$TMP/c6.log"
fi
stop_collector TERM

# Damage: workers can write every byte.  Slot 0 gets a flipped payload byte,
# slot 1 an absurd length, an unused slot a valid-looking record whose JSON
# is not a frame; the collector must serve the rest and count these three.
region=$(sed -n 's/.*taking back the history in region \([0-9]*\).*/\1/p' "$TMP/c6.log" | tail -n 1)
python3 - "$SEG" "$region" <<'PY'
import struct, sys, zlib
path, region = sys.argv[1], int(sys.argv[2])
with open(path, "r+b") as f:
    hdr = f.read(64)
    region_size, = struct.unpack_from("<Q", hdr, 24)
    regions_off, = struct.unpack_from("<Q", hdr, 40)
    base = regions_off + region * region_size + 128
    slot = lambda k: base + k * 4096
    f.seek(slot(0) + 40); b = f.read(1); f.seek(slot(0) + 40); f.write(bytes([b[0] ^ 0xff]))
    f.seek(slot(1) + 16); f.write(struct.pack("<I", 0xfffffff0))
    f.seek(slot(2)); sid, ms = struct.unpack("<QQ", f.read(16))
    body = zlib.compress(b'["not", "a", "frame"]')
    f.seek(slot(200)); f.write(struct.pack("<QQIIII", sid + 1, ms, len(body), 21, zlib.crc32(body), 0) + body)
PY
restart=$(date +%s.%N)
start_collector "$TMP/c7.log" --stream-interval 0.5
stream 1 "$TMP/s7" --get --data backlog=900
kept=$(events "$TMP/s7" | awk -v r="$restart" '$2 < r' | wc -l)
rejected=$(curl -s "http://127.0.0.1:$CPORT/metrics" | sed -n 's/^shmetricsd_dashboard_history_rejected_total //p')
if [ "$rejected" = 3 ] && [ "$kept" -ge 1 ] && kill -0 "$col"; then
  ok "three damaged history records are refused and counted ($rejected), the others still served ($kept)"
else
  not_ok "damaged history records: rejected ${rejected:-?} (want 3), kept $kept"; diag <"$TMP/c7.log"
fi
stop_collector TERM
finish
