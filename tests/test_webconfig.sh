#!/usr/bin/env bash
# Exporter conventions, against real peers: --web.config.file in the
# exporter-toolkit format (promtool check web-config accepts the same file),
# TLS with a certificate openssl makes here, bcrypt basic auth, client
# certificates; a real Prometheus scrapes over TLS with basic auth (and a
# job with a wrong password is refused); the push API wants the same
# credentials; --web.listen-address with several addresses and IPv6,
# --web.telemetry-path, the warning when listening beyond loopback without
# authentication, logfmt and JSON logs with a time on every line (fatal ones
# too), --log.level, --version and shmetricsd_build_info.
#
# TAP lines on stdout.  Only 127.0.0.1 / ::1 and free ports; everything it
# starts is stopped on exit.  Needs openssl, curl, prometheus and promtool.
set -u
cd "$(dirname "$0")/.." || exit 1
BIN=${BUILD_DIR:-build}/bin
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-web.XXXXXX")
SEG=/dev/shm/shmet-test-web-$$
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
. tests/lib/tap.sh
SEGS=()
cleanup_segs() { local s; for s in "${SEGS[@]}"; do rm -f "$s"; done; cleanup; }
trap cleanup_segs EXIT

for t in openssl curl promtool prometheus; do
  command -v "$t" >/dev/null 2>&1 || { not_ok "$t is installed (Debian packages openssl, curl, prometheus)"; finish; }
done

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
# start NAME ARGS...: a collector on its own segment; sets PID
start() {
  local name=$1
  shift
  SEGS+=("$SEG-$name")
  "$BIN/shmetricsd" --segment "$SEG-$name" --scan-interval 0.2 "$@" 2>"$TMP/$name.log" &
  PID=$!
  pids+=("$PID")
}
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

# ---- a CA, a server certificate for 127.0.0.1, a client certificate ----
cd "$TMP" || exit 1
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.crt -days 2 -subj /CN=shmetrics-test-ca >/dev/null 2>&1
openssl req $ec -keyout server.key -out server.csr -subj /CN=127.0.0.1 >/dev/null 2>&1
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 \
  -extfile server.ext >/dev/null 2>&1
openssl req $ec -keyout client.key -out client.csr -subj /CN=scraper >/dev/null 2>&1
printf 'extendedKeyUsage=clientAuth\n' >client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 \
  -extfile client.ext >/dev/null 2>&1
# a second CA, which the collector does not trust
openssl req -x509 $ec -keyout other.key -out other.crt -days 2 -subj /CN=other-ca >/dev/null 2>&1
cd - >/dev/null || exit 1
if [ -s "$TMP/server.crt" ] && [ -s "$TMP/client.crt" ]; then ok "openssl made a CA, a server and a client certificate"
else not_ok "openssl made the certificates"; finish; fi

HASH=$("$PY" -W ignore -c 'import crypt; print(crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 10)))')
case $HASH in '$2'*) ok "a bcrypt hash (cost 10) of the password" ;; *) not_ok "bcrypt hash: $HASH"; finish ;; esac
cat >"$TMP/web.yml" <<EOF
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  min_version: TLS12
basic_auth_users:
  prometheus: '$HASH'
EOF
cat >"$TMP/mtls.yml" <<EOF
tls_server_config:
  cert_file: $TMP/server.crt
  key_file: $TMP/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: $TMP/ca.crt
EOF
for f in web mtls; do
  if out=$(promtool check web-config "$TMP/$f.yml" 2>&1); then ok "promtool check web-config accepts $f.yml"
  else not_ok "promtool check web-config $f.yml"; echo "$out" | diag; fi
done

# ---- TLS + basic auth, and the push API behind the same credentials ----
printf 'push-token-of-the-test-0123456789\n' >"$TMP/token"
chmod 600 "$TMP/token"
start tls --web.config.file "$TMP/web.yml" --web.listen-address 127.0.0.1:0 --push-token-file "$TMP/token"
tls=$PID
if P=$(wait_log "$TMP/tls.log" '.*listening on https://127\.0\.0\.1:\([0-9]*\)/metrics.*' "$tls"); then
  ok "the collector serves HTTPS on 127.0.0.1:$P"
else not_ok "HTTPS collector started"; diag <"$TMP/tls.log"; finish; fi
U=https://127.0.0.1:$P
c=$(code --cacert "$TMP/ca.crt" "$U/metrics")
[ "$c" = 401 ] && ok "no credentials: 401" || not_ok "no credentials: got $c"
c=$(code --cacert "$TMP/ca.crt" -u prometheus:wrong "$U/metrics")
[ "$c" = 401 ] && ok "a wrong password: 401" || not_ok "a wrong password: got $c"
c=$(code --cacert "$TMP/ca.crt" -u nobody:s3cret "$U/metrics")
[ "$c" = 401 ] && ok "an unknown user: 401" || not_ok "an unknown user: got $c"
hdr=$(curl -s -D - -o /dev/null --cacert "$TMP/ca.crt" "$U/metrics")
echo "$hdr" | grep -qi '^WWW-Authenticate: Basic realm="shmetricsd"' && ok "401 carries a Basic challenge" \
  || { not_ok "401 carries a Basic challenge"; echo "$hdr" | diag; }
c=$(code --cacert "$TMP/ca.crt" -u prometheus:s3cret "$U/metrics")
[ "$c" = 200 ] && ok "the right credentials: 200" || not_ok "the right credentials: got $c"
c=$(code --cacert "$TMP/ca.crt" -u prometheus:s3cret "$U/-/ready")
[ "$c" = 200 ] && ok "/-/ready with credentials: 200" || not_ok "/-/ready with credentials: got $c"
c=$(code --cacert "$TMP/ca.crt" "$U/-/healthy")
[ "$c" = 401 ] && ok "/-/healthy without credentials: 401 (every route is behind the auth)" || not_ok "/-/healthy: got $c"
c=$(code "http://127.0.0.1:$P/metrics")
[ "$c" != 200 ] && ok "plain HTTP on the TLS port is refused ($c)" || not_ok "plain HTTP served on the TLS port"
c=$(code --cacert "$TMP/other.crt" -u prometheus:s3cret "$U/metrics")
[ "$c" = 000 ] && ok "a client that does not trust the server's CA fails the handshake" || not_ok "untrusted CA: got $c"
if curl -s --cacert "$TMP/ca.crt" --tls-max 1.1 -u prometheus:s3cret "$U/metrics" >/dev/null 2>&1; then
  not_ok "TLS 1.1 refused (min_version: TLS12)"
else ok "TLS 1.1 refused (min_version: TLS12)"; fi
body='{"name":"web_pushed_total","type":"counter","help":"Pushed.","labels":{"k":"v"},"inc":7}'
c=$(code --cacert "$TMP/ca.crt" -H 'Content-Type: application/json' --data "$body" "$U/api/v1/metrics/custom")
[ "$c" = 401 ] && ok "push without credentials: 401" || not_ok "push without credentials: got $c"
c=$(code --cacert "$TMP/ca.crt" -H 'Content-Type: application/json' -H "Authorization: Bearer $(cat "$TMP/token")" \
  --data "$body" "$U/api/v1/metrics/custom")
[ "$c" = 401 ] && ok "push with the bearer token but no basic credentials: 401" || not_ok "push with the token only: got $c"
c=$(code --cacert "$TMP/ca.crt" -u prometheus:wrong -H 'Content-Type: application/json' --data "$body" "$U/api/v1/metrics/custom")
[ "$c" = 401 ] && ok "push with a wrong password: 401" || not_ok "push with a wrong password: got $c"
c=$(code --cacert "$TMP/ca.crt" -u prometheus:s3cret -H 'Content-Type: application/json' --data "$body" "$U/api/v1/metrics/custom")
[ "$c" = 200 ] && ok "push with the credentials: 200" || not_ok "push with the credentials: got $c"
m=$(curl -s --cacert "$TMP/ca.crt" -u prometheus:s3cret "$U/metrics")
echo "$m" | grep -qx 'web_pushed_total{k="v"} 7' && ok "the pushed counter is served: 7" \
  || { not_ok "the pushed counter is served"; echo "$m" | grep web_pushed | diag; }

# ---- a real Prometheus scrapes it over TLS with basic auth ----
PP=$(free_port)
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: shmetricsd
    scheme: https
    tls_config:
      ca_file: $TMP/ca.crt
    basic_auth:
      username: prometheus
      password: s3cret
    static_configs:
      - targets: ['127.0.0.1:$P']
  - job_name: wrong-password
    scheme: https
    tls_config:
      ca_file: $TMP/ca.crt
    basic_auth:
      username: prometheus
      password: not-it
    static_configs:
      - targets: ['127.0.0.1:$P']
  - job_name: plain-http
    static_configs:
      - targets: ['127.0.0.1:$P']
EOF
prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PP" >"$TMP/prometheus.log" 2>&1 &
pids+=($!)
q() { curl -s --get "http://127.0.0.1:$PP/api/v1/query" --data-urlencode "query=$1"; }
val=""
for i in $(seq 150); do
  val=$(q 'sum(web_pushed_total{job="shmetricsd"})' | "$PY" -c 'import json,sys
try:
    r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")
except Exception: print("")')
  [ -n "$val" ] && break
  sleep 0.2
done
[ "$val" = 7 ] && ok "Prometheus scraped over TLS with basic auth and stored the pushed value 7" \
  || { not_ok "Prometheus stored 7 (got '$val')"; tail -n 20 "$TMP/prometheus.log" | diag; }
for i in $(seq 100); do # until every target has been scraped once
  targets=$(curl -s "http://127.0.0.1:$PP/api/v1/targets")
  echo "$targets" | grep -q '"health":"unknown"' || break
  sleep 0.2
done
out=$("$PY" - "$targets" <<'EOF'
import json, sys
t = {a["labels"]["job"]: a for a in json.loads(sys.argv[1])["data"]["activeTargets"]}
def check(job, health, err):
    a = t.get(job)
    good = a is not None and a["health"] == health and (err is None or err in a["lastError"])
    print(("ok" if good else "not ok") + " - Prometheus target %s is %s%s" % (job, health, "" if err is None else " (" + err + ")"))
    if not good:
        print("# " + json.dumps(a))
check("shmetricsd", "up", None)
check("wrong-password", "down", "401")
check("plain-http", "down", None)
EOF
)
echo "$out" | grep -E '^(ok|not ok|#) '
n=$((n + $(echo "$out" | grep -cE '^(ok|not ok) ')))
failed=$((failed + $(echo "$out" | grep -c '^not ok ')))

# ---- client certificates: RequireAndVerifyClientCert ----
start mtls --web.config.file "$TMP/mtls.yml" --web.listen-address 127.0.0.1:0
mt=$PID
if MP=$(wait_log "$TMP/mtls.log" '.*listening on https://127\.0\.0\.1:\([0-9]*\)/metrics.*' "$mt"); then
  c=$(code --cacert "$TMP/ca.crt" "https://127.0.0.1:$MP/metrics")
  [ "$c" = 403 ] || [ "$c" = 000 ] && ok "no client certificate: refused ($c)" || not_ok "no client certificate: got $c"
  c=$(code --cacert "$TMP/ca.crt" --cert "$TMP/client.crt" --key "$TMP/client.key" "https://127.0.0.1:$MP/metrics")
  [ "$c" = 200 ] && ok "a client certificate from the CA: 200" || not_ok "client certificate: got $c"
  c=$(code --cacert "$TMP/ca.crt" --cert "$TMP/other.crt" --key "$TMP/other.key" "https://127.0.0.1:$MP/metrics")
  [ "$c" = 403 ] || [ "$c" = 000 ] && ok "a certificate of another CA: refused ($c)" || not_ok "other CA's certificate: got $c"
else not_ok "mTLS collector started"; diag <"$TMP/mtls.log"; fi

# ---- a web config that would be silently weaker is refused ----
printf 'tls_server_config:\n  cert_file: %s\n  key_file: %s\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n' \
  "$TMP/server.crt" "$TMP/server.key" >"$TMP/bad1.yml"
printf 'basic_auth_users:\n  u: plaintext\n' >"$TMP/bad2.yml"
printf 'tls_server_config:\n  cert_file: %s/nope.crt\n  key_file: %s\n' "$TMP" "$TMP/server.key" >"$TMP/bad3.yml"
printf 'basic_auth_user:\n  u: x\n' >"$TMP/bad4.yml"
for b in "bad1:cipher_suites" "bad2:not a bcrypt hash" "bad3:nope.crt" "bad4:unknown key basic_auth_user"; do
  f=${b%%:*} want=${b#*:}
  out=$("$BIN/shmetricsd" --segment "$SEG-$f" --web.config.file "$TMP/$f.yml" -l 127.0.0.1:0 2>&1)
  rc=$?
  if [ "$rc" = 1 ] && echo "$out" | grep -q "$want" && [ ! -e "$SEG-$f" ]; then
    ok "$f.yml refused at start, naming \"$want\", no segment created"
  else not_ok "$f.yml refused (rc=$rc)"; echo "$out" | diag; rm -f "$SEG-$f"; fi
done

# ---- several addresses, IPv6, the telemetry path, the loopback warning ----
start multi --web.listen-address 127.0.0.1:0 --web.listen-address '[::1]:0' --web.telemetry-path /prom
mu=$PID
if P4=$(wait_log "$TMP/multi.log" '.*listening on http://127\.0\.0\.1:\([0-9]*\)/prom".*' "$mu") &&
   P6=$(wait_log "$TMP/multi.log" '.*listening on http://\[::1\]:\([0-9]*\)/prom".*' "$mu"); then
  ok "two addresses, one of them IPv6: 127.0.0.1:$P4 and [::1]:$P6"
  c=$(code "http://[::1]:$P6/prom"); [ "$c" = 200 ] && ok "served on [::1] at /prom" || not_ok "[::1]/prom: $c"
  c=$(code "http://127.0.0.1:$P4/prom"); [ "$c" = 200 ] && ok "served on 127.0.0.1 at /prom" || not_ok "127.0.0.1/prom: $c"
  c=$(code "http://127.0.0.1:$P4/metrics"); [ "$c" = 404 ] && ok "/metrics is 404 when the path is /prom" || not_ok "/metrics: $c"
else not_ok "two addresses"; diag <"$TMP/multi.log"; fi
grep -q 'without authentication' "$TMP/multi.log" && not_ok "no warning on loopback addresses" \
  || ok "no warning on loopback addresses"
start any --web.listen-address :0 --log.format json
an=$PID
if AP=$(wait_log "$TMP/any.log" '.*listening on http://\[::\]:\([0-9]*\)/metrics.*' "$an"); then
  c=$(code "http://127.0.0.1:$AP/metrics"); [ "$c" = 200 ] && ok ":0 listens on every address, IPv4 too" || not_ok ":0 over IPv4: $c"
  wait_log "$TMP/any.log" '.*\(without authentication\).*' "$an" >/dev/null && ok "listening beyond loopback without auth logs a warning" \
    || { not_ok "no warning for :0 without auth"; diag <"$TMP/any.log"; }
else not_ok ":0 started"; diag <"$TMP/any.log"; fi
kill -TERM "$an"; wait "$an" 2>/dev/null
if "$PY" - "$TMP/any.log" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
bad = [l for l in lines if not (lambda j: isinstance(j.get("ts"), str) and j.get("level") in ("info", "warn") and "msg" in j)(json.loads(l))]
levels = {json.loads(l)["level"] for l in lines}
sys.exit(1 if bad or not lines or "warn" not in levels or not any("stopped" == json.loads(l)["msg"] for l in lines) else 0)
EOF
then ok "--log.format json: every line is a JSON object with ts, level and msg, to the last one"
else not_ok "JSON log lines"; diag <"$TMP/any.log"; fi

# ---- logfmt, --log.level, fatal lines with their time, the bind failure ----
out=$("$BIN/shmetricsd" --segment "$SEG-x" --scan-interval nonsense 2>&1)
echo "$out" | grep -Eq '^ts=[0-9-]{10}T[0-9:.]{12}Z level=error msg=".*--scan-interval' \
  && ok "a flag error is a logfmt line with its time: $out" || { not_ok "flag error line"; echo "$out" | diag; }
out=$("$BIN/shmetricsd" --log.format json --segment "$SEG-x" --regions 0 2>&1)
echo "$out" | "$PY" -c 'import json,sys; j=json.loads(sys.stdin.read()); sys.exit(0 if j["level"]=="error" and j["ts"] else 1)' \
  && ok "--log.format applies to a flag error given before it is read" || { not_ok "json flag error"; echo "$out" | diag; }
start quiet --web.listen-address 127.0.0.1:0 --log.level warn --no-writer-warning 3
qu=$PID
wait_log "$TMP/quiet.log" '.*\(no writer has attached\).*' "$qu" >/dev/null
if ! grep -q 'level=info' "$TMP/quiet.log" && grep -q 'level=warn' "$TMP/quiet.log"; then
  ok "--log.level warn: warnings only"
else not_ok "--log.level warn"; diag <"$TMP/quiet.log"; fi
# a port in use: the error names it, and no segment is left behind
BUSY=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -c "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $BUSY)); s.listen(); time.sleep(60)" &
holder=$!
pids+=("$holder")
for i in $(seq 50); do "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $BUSY)).close()" 2>/dev/null && break; sleep 0.1; done
out=$("$BIN/shmetricsd" --segment "$SEG-busy" --web.listen-address 127.0.0.1:0 --web.listen-address "127.0.0.1:$BUSY" 2>&1)
rc=$?
if [ "$rc" = 1 ] && echo "$out" | grep -q "127.0.0.1:$BUSY (port $BUSY): Address already in use" && [ ! -e "$SEG-busy" ]; then
  ok "a port in use: exit 1, the message names port $BUSY, no segment left behind"
else not_ok "port in use (rc=$rc, segment $( [ -e "$SEG-busy" ] && echo left || echo absent))"; echo "$out" | diag; rm -f "$SEG-busy"; fi
kill "$holder" 2>/dev/null

# ---- version and build info ----
v=$("$BIN/shmetricsd" --version)
# the revision is a commit of this repository (the build's, which may be older than HEAD)
rev=$(echo "$v" | sed -n 's/.*(revision: \([0-9a-f]\{12\}\)).*/\1/p')
echo "$v" | grep -q "version [0-9]" && [ -n "$rev" ] && git cat-file -e "$rev^{commit}" 2>/dev/null && echo "$v" | grep -q "build date: 20" \
  && ok "--version: version, revision $rev (a commit here), build date" || { not_ok "--version"; echo "$v" | diag; }
m=$(curl -s "http://127.0.0.1:$P4/prom")
echo "$m" | grep -Eq "^shmetricsd_build_info\{build_date=\"20[0-9-]+T[0-9:]+Z\",revision=\"$rev\",version=\"[0-9.]+\"\} 1$" \
  && ok "shmetricsd_build_info has version, revision and build date" || { not_ok "build_info"; echo "$m" | grep build_info | diag; }
finish
