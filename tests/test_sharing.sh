#!/usr/bin/env bash
# Sharing the segment between users, and the systemd unit:
#  - `make install PREFIX=...` installs lib/systemd/system/shmetricsd.service,
#    which `systemd-analyze verify` accepts (its ExecStart and man page
#    exist there) and `systemd-analyze security` rates OK;
#  - (as root, with setpriv) the collector and the application as two users
#    of one group: whichever creates the segment gives it mode 0660 and the
#    group (--segment-mode/--segment-group, or SHMETRICS_SEGMENT_MODE and
#    SHMETRICS_SEGMENT_GROUP for the writer), the other attaches, and the
#    counts arrive; without the mode the other user is refused.
# TAP lines on stdout; only 127.0.0.1 and free ports; everything stopped on exit.
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BIN=$ROOT/${BUILD_DIR:-build}/bin
TMP=$(mktemp -d "${TMPDIR:-/tmp}/shmet-test-share.XXXXXX")
SEG=/dev/shm/shmet-test-share-$$
. tests/lib/tap.sh
trap 'rm -f "$SEG" "$SEG-b" "$SEG-c"; cleanup' EXIT

# ---- the unit, installed and verified ----
if make -s -C "$ROOT" install PREFIX="$TMP/prefix" SANITIZER="${SANITIZER:-}" >"$TMP/install.log" 2>&1; then
  ok "make install PREFIX=$TMP/prefix"
else not_ok "make install"; diag <"$TMP/install.log"; finish; fi
UNIT=$TMP/prefix/lib/systemd/system/shmetricsd.service
if [ -f "$UNIT" ] && grep -q "^ExecStart=$TMP/prefix/bin/shmetricsd " "$UNIT"; then
  ok "the unit is installed, ExecStart in the prefix"
else not_ok "unit installed"; finish; fi
if command -v systemd-analyze >/dev/null 2>&1; then
  if out=$(MANPATH=$TMP/prefix/share/man systemd-analyze verify "$UNIT" 2>&1); then
    ok "systemd-analyze verify accepts it"
  else not_ok "systemd-analyze verify"; echo "$out" | diag; fi
  sed 's/^ExecStart=.*/ExecStart=relative-path/' "$UNIT" >"$TMP/broken.service"
  if MANPATH=$TMP/prefix/share/man systemd-analyze verify "$TMP/broken.service" >/dev/null 2>&1; then
    not_ok "systemd-analyze verify refuses a broken copy (the check can fail)"
  else ok "systemd-analyze verify refuses a broken copy (the check can fail)"; fi
  lvl=$(systemd-analyze security --offline=yes "$UNIT" 2>&1 | sed -n 's/.*Overall exposure level for shmetricsd.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p')
  case $lvl in *" OK") ok "systemd-analyze security: exposure $lvl" ;; *) not_ok "systemd-analyze security: '$lvl'" ;; esac
  for d in "User=shmetricsd" "Group=shmetrics" "NoNewPrivileges=yes" "ProtectSystem=strict" "RemoveIPC=no"; do
    grep -qx "$d" "$UNIT" && ok "unit: $d" || not_ok "unit: $d"
  done
else
  not_ok "systemd-analyze is installed (Debian package systemd)"
fi

# ---- two users, one group ----
if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null 2>&1; then
  ok "two users # skip needs root and setpriv"
  finish
fi
APP_UID=61001 COL_UID=61002 GID=61000
as() { local uid=$1; shift; exec setpriv --reuid="$uid" --regid="$GID" --clear-groups "$@"; }
chmod 711 "$TMP"

# the collector creates it, shared
as $COL_UID "$BIN/shmetricsd" --segment "$SEG" -l 127.0.0.1:0 --scan-interval 0.2 --segment-mode 0660 \
  --segment-group $GID 2>"$TMP/col.log" &
col=$!
pids+=("$col")
if P=$(port_from_log "$TMP/col.log" "$col"); then ok "collector as uid $COL_UID"; else not_ok "collector"; diag <"$TMP/col.log"; finish; fi
st=$(stat -c '%a %u %g' "$SEG")
[ "$st" = "660 $COL_UID $GID" ] && ok "segment: mode 660, owner $COL_UID, group $GID" || not_ok "segment: $st"
as $APP_UID "$BIN/saler-demo" --port 0 --workers 2 --segment "$SEG" 2>"$TMP/demo.log" &
demo=$!
pids+=("$demo")
if DP=$(port_from_log "$TMP/demo.log" "$demo"); then ok "the application as uid $APP_UID attached"
else not_ok "application attached"; diag <"$TMP/demo.log"; finish; fi
for i in $(seq 10); do curl -s -o /dev/null "http://127.0.0.1:$DP/" ; done
live=""
for i in $(seq 50); do
  live=$(curl -s "http://127.0.0.1:$P/metrics" | awk '$1 == "shmetricsd_regions{state=\"live\"}" { print $2 }')
  [ "$live" = 3 ] && break
  sleep 0.1
done
[ "$live" = 3 ] && ok "the collector sees the master and 2 workers of the other user" || not_ok "live regions: $live"
m=$(curl -s "http://127.0.0.1:$P/metrics")
echo "$m" | grep -q '^shmetricsd_worker_start_time_seconds{worker="1"}' && ok "worker start times of the other user" \
  || not_ok "worker metrics of the other user"
u=$(echo "$m" | awk '$1 == "shmetricsd_worker_proc_unreadable" { print $2 }')
[ "${u:-0}" -ge 1 ] && ok "their descriptors cannot be counted (another user): shmetricsd_worker_proc_unreadable $u" \
  || not_ok "unreadable count: '$u'"
kill -TERM "$demo" "$col"; wait "$demo" "$col" 2>/dev/null

# the application creates it, shared through the environment
SHMETRICS_SEGMENT_MODE=0660 SHMETRICS_SEGMENT_GROUP=$GID as $APP_UID "$BIN/saler-demo" --port 0 --workers 1 \
  --segment "$SEG-b" 2>"$TMP/demo-b.log" &
demo=$!
pids+=("$demo")
port_from_log "$TMP/demo-b.log" "$demo" >/dev/null || { not_ok "application b"; diag <"$TMP/demo-b.log"; }
st=$(stat -c '%a %u %g' "$SEG-b")
[ "$st" = "660 $APP_UID $GID" ] && ok "writer-created segment: mode 660, owner $APP_UID, group $GID (environment)" \
  || not_ok "writer-created segment: $st"
as $COL_UID "$BIN/shmetricsd" --segment "$SEG-b" -l 127.0.0.1:0 2>"$TMP/col-b.log" &
col=$!
pids+=("$col")
port_from_log "$TMP/col-b.log" "$col" >/dev/null && ok "the collector of another user opens it" \
  || { not_ok "collector b"; diag <"$TMP/col-b.log"; }
kill -TERM "$demo" "$col"; wait "$demo" "$col" 2>/dev/null

# without the mode: refused, with the reason
as $APP_UID "$BIN/saler-demo" --port 0 --workers 1 --segment "$SEG-c" 2>"$TMP/demo-c.log" &
demo=$!
pids+=("$demo")
port_from_log "$TMP/demo-c.log" "$demo" >/dev/null
out=$(as $COL_UID "$BIN/shmetricsd" --segment "$SEG-c" -l 127.0.0.1:0 2>&1)
rc=$?
[ "$rc" = 1 ] && echo "$out" | grep -Eq "not shared with our group|Permission denied" && ok "a 0600 segment of another user is refused: $(echo "$out" | sed 's/.*msg=//')" \
  || { not_ok "0600 segment refused (rc=$rc)"; echo "$out" | diag; }
out=$("$BIN/shmetricsd" --segment "$SEG-x" --segment-mode 0666 2>&1)
[ $? = 2 ] && ok "--segment-mode 0666 refused" || not_ok "--segment-mode 0666"
finish
