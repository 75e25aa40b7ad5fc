#!/usr/bin/env bash
# Checks the Prometheus and Grafana side of the saler-demo (examples/prometheus,
# examples/grafana) with promtool and python3.  TAP style: one "ok - ..." or
# "not ok - ..." line per check, a "1..N" plan at the end; exit status 1 if any
# check failed.  Needs promtool (Debian package prometheus) and /usr/bin/python3;
# python3-yaml is optional (one cross-check is skipped without it).
#
#   bash tests/test_prometheus_config.sh
set -u
cd "$(dirname "$0")/.." || exit 1

PROM=examples/prometheus
GRAF=examples/grafana
DASH=$GRAF/saler-dashboard.json
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

n=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pass() { n=$((n + 1)); echo "ok - $1"; }
fail() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok - $1"; }
diag() { sed 's/^/#   /'; }

# check DESCRIPTION COMMAND...: one TAP line from the command's exit status.
check() {
  local desc=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$desc"
  else
    fail "$desc"
    printf '%s\n' "$out" | diag
  fi
}

# tap_py DESCRIPTION SCRIPT [ARGS...]: a python script that prints its own
# "ok - "/"not ok - " lines; they are counted here.  A crash counts as a failure.
tap_py() {
  local desc=$1 script=$2 out rc p f
  shift 2
  out=$("$PY" - "$@" <"$script" 2>&1)
  rc=$?
  printf '%s\n' "$out" | grep -E '^(ok|not ok) - |^#' || true
  p=$(printf '%s\n' "$out" | grep -c '^ok - ')
  f=$(printf '%s\n' "$out" | grep -c '^not ok - ')
  n=$((n + p + f))
  failed=$((failed + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    fail "$desc (python exited $rc)"
    printf '%s\n' "$out" | grep -vE '^(ok|not ok) - ' | diag
  fi
}

# ---------------------------------------------------------------------------
# promtool
# ---------------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
  fail "promtool is installed (apt-get install prometheus)"
  echo "1..$n"
  exit 1
fi
pass "promtool is installed ($(promtool --version 2>&1 | head -n1 | awk '{print $3}'))"

check "promtool check config $PROM/prometheus.yml (with its rule files, lint fatal)" \
  promtool check config --lint=all --lint-fatal "$PROM/prometheus.yml"
for f in "$PROM/recording-rules.yml" "$PROM/alert-rules.yml"; do
  check "promtool check rules $f (lint fatal)" promtool check rules --lint=all --lint-fatal "$f"
done

tests_found=0
for t in "$PROM"/tests/*.yml; do
  [ -f "$t" ] || continue
  tests_found=1
  check "promtool test rules $t" promtool test rules "$t"
done
[ "$tests_found" -eq 1 ] && pass "rule unit tests exist in $PROM/tests" || fail "rule unit tests exist in $PROM/tests"

# The commented remote_write / federation examples must stay valid when
# uncommented: build a config with them enabled and check its syntax.
"$PY" - "$PROM/prometheus.yml" "$tmp" <<'EOF' >"$tmp/uncomment.log" 2>&1
import re, sys, os
src, tmp = sys.argv[1], sys.argv[2]
lines = open(src).read().split("\n")
def block(start_pat):
    """Uncomment the commented YAML block starting at the line matching start_pat."""
    out, on = [], False
    for l in lines:
        if re.match(start_pat, l):
            on = True
        if on:
            if not l.startswith("#"):
                break
            body = l[2:] if l.startswith("# ") else l[1:]
            # stop at prose (a line that is not YAML-ish) after the block began
            if out and body and not body.startswith(" ") and not re.match(r"^[a-z_]+:", body):
                break
            out.append(body)
    return "\n".join(out)
rw = block(r"^# remote_write:")
fed = block(r"^# scrape_configs:")
base = open(src).read()
open(os.path.join(tmp, "remote-write.yml"), "w").write(base + "\n" + rw + "\n")
open(os.path.join(tmp, "federate.yml"), "w").write("global:\n  scrape_interval: 15s\n" + fed + "\n")
print(rw); print("----"); print(fed)
EOF
has_examples() {
  [ "$(grep -c -E '^  - url: http://(thanos-receive|mimir|victoriametrics)' "$tmp/remote-write.yml")" -eq 3 ] &&
    grep -q 'metrics_path: /federate' "$tmp/federate.yml" && grep -q 'honor_labels: true' "$tmp/federate.yml"
}
check "prometheus.yml has remote_write examples for Thanos, Mimir, VictoriaMetrics and a federation example" has_examples
check "the commented remote_write examples are valid config" \
  promtool check config --syntax-only "$tmp/remote-write.yml"
check "the commented federation example is valid config" \
  promtool check config --syntax-only "$tmp/federate.yml"

# ---------------------------------------------------------------------------
# Rule files: conventions and test coverage (plain text reading, no YAML lib)
# ---------------------------------------------------------------------------
cat >"$tmp/rules.py" <<'EOF'
import re, sys, glob
prom = sys.argv[1]
def ok(c, d, why=""):
    print(("ok - " if c else "not ok - ") + d)
    if not c and why:
        for l in str(why).split("\n"):
            print("#   " + l)

# Alerts: for, severity, summary, description, runbook.
text = open(prom + "/alert-rules.yml").read()
blocks = re.split(r"\n(?=[ \t]*- alert:)", text)[1:]
alerts, bad = [], []
for b in blocks:
    name = re.match(r"\s*- alert:\s*(\S+)", b).group(1)
    alerts.append(name)
    for key in ("expr:", "for:", "severity:", "summary:", "description:", "runbook:"):
        if not re.search(r"^\s+" + re.escape(key), b, re.M):
            bad.append("%s lacks %s" % (name, key))
    m = re.search(r"^\s+severity:\s*(\S+)", b, re.M)
    if m and m.group(1) not in ("critical", "warning", "info"):
        bad.append("%s: severity %s" % (name, m.group(1)))
ok(len(alerts) >= 7, "alert-rules.yml defines the alerts (%d)" % len(alerts))
ok(not bad, "every alert has expr, for, severity and summary/description/runbook annotations", "\n".join(bad))
ok(len(set(alerts)) == len(alerts), "alert names are unique")

# Recording rules: level:metric:operations names.
rtext = open(prom + "/recording-rules.yml").read()
records = re.findall(r"^\s*- record:\s*(\S+)", rtext, re.M)
badn = [r for r in records if not re.match(r"^[a-z_]+:[a-z_]+:[a-z0-9_]+$", r)]
ok(records and not badn, "recording rule names follow level:metric:operations (%d rules)" % len(records), "\n".join(badn))
ok(len(set(records)) == len(records), "recording rule names are unique")

# Coverage by the unit tests.
fires, quiet, tested_exprs = set(), set(), set()
for f in sorted(glob.glob(prom + "/tests/*.yml")):
    t = open(f).read()
    for m in re.finditer(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", t):
        (quiet if m.group(2) else fires).add(m.group(1))
    for m in re.finditer(r"^\s*- expr:\s*([a-z_]+:[a-z_]+:[a-z0-9_]+)", t, re.M):
        tested_exprs.add(m.group(1))
ok(not set(alerts) - fires, "every alert is tested firing", "untested: " + ", ".join(sorted(set(alerts) - fires)))
ok(not set(alerts) - quiet, "every alert is tested not firing", "untested: " + ", ".join(sorted(set(alerts) - quiet)))
ok(not set(records) - tested_exprs, "every recording rule's value is tested",
   "untested: " + ", ".join(sorted(set(records) - tested_exprs)))
EOF
tap_py "rule conventions and test coverage" "$tmp/rules.py" "$PROM"

# ---------------------------------------------------------------------------
# Grafana dashboard
# ---------------------------------------------------------------------------
cat >"$tmp/dashboard.py" <<'EOF'
import json, re, sys
path = sys.argv[1]
def ok(c, d, why=""):
    print(("ok - " if c else "not ok - ") + d)
    if not c and why:
        for l in str(why).split("\n"):
            print("#   " + l)
try:
    dash = json.load(open(path))
except Exception as e:
    ok(False, "dashboard JSON parses", e)
    sys.exit(0)
ok(True, "dashboard JSON parses")
ok(dash.get("schemaVersion") == 39, "schemaVersion is 39", dash.get("schemaVersion"))
ok(bool(dash.get("uid")) and bool(dash.get("title")), "dashboard has a uid and a title")
ok(dash.get("id") is None, "dashboard id is null (portable import)", dash.get("id"))

def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels") or [])
allp = list(walk(dash.get("panels", [])))
panels = [p for p in allp if p.get("type") != "row"]
ok(len(panels) >= 8, "at least 8 panels (%d)" % len(panels))
types = {p.get("type") for p in panels}
ok(types <= {"timeseries", "stat"}, "panels are timeseries or stat", types)
ids = [p.get("id") for p in allp]
ok(len(ids) == len(set(ids)) and None not in ids, "panel ids are unique")
badpos = [p.get("title") for p in allp
          if not isinstance(p.get("gridPos"), dict) or p["gridPos"].get("x", 0) + p["gridPos"].get("w", 0) > 24]
ok(not badpos, "every panel has a gridPos within 24 columns", badpos)

variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource", {})
ok(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
   "variable datasource is a prometheus datasource variable", ds)
for name in ("route", "status"):
    v = variables.get(name, {})
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    ok(v.get("type") == "query"
       and re.match(r"^label_values\(saler_http_requests_total(\{.*\})?,\s*%s\)$" % name, q) is not None
       and (v.get("datasource") or {}).get("uid") == "${datasource}"
       and v.get("includeAll") and v.get("allValue") == ".*",
       "variable %s is label_values(saler_http_requests_total, %s) on ${datasource}, All = .*" % (name, name), v)

# Data sources: everything goes through ${datasource}.
def dsrefs(o, where):
    if isinstance(o, dict):
        for k, val in o.items():
            if k == "datasource" and isinstance(val, dict):
                yield where, val
            else:
                yield from dsrefs(val, where + "." + k)
    elif isinstance(o, list):
        for i, val in enumerate(o):
            yield from dsrefs(val, "%s[%d]" % (where, i))
hard = [w for w, d in dsrefs(dash, "$") if d.get("uid") not in ("${datasource}", "-- Grafana --")]
ok(not hard, "no hard-coded data source uid", hard)

bad_ds, bad_expr, bad_ref, bad_var, missing_route = [], [], [], [], []
ROUTE_METRICS = ("saler_http_requests_total", "saler_http_request_duration_seconds",
                 "saler_http_request_errors_total", "saler_http_slow_requests_total",
                 "saler_rate_limited_requests_total")
for p in panels:
    t = p.get("title")
    pds = p.get("datasource") or {}
    if pds.get("uid") != "${datasource}" or pds.get("type") != "prometheus":
        bad_ds.append("%s: panel datasource %s" % (t, pds))
    targets = p.get("targets") or []
    if not targets:
        bad_expr.append("%s: no targets" % t)
    refs = [x.get("refId") for x in targets]
    if len(refs) != len(set(refs)) or None in refs:
        bad_ref.append(t)
    for x in targets:
        tds = x.get("datasource") or pds
        if tds.get("uid") != "${datasource}":
            bad_ds.append("%s/%s: target datasource %s" % (t, x.get("refId"), tds))
        e = (x.get("expr") or "").strip()
        if not e:
            bad_expr.append("%s/%s: empty expr" % (t, x.get("refId")))
        # $route/$status only as regex matchers, so that multi-value and All
        # (".*") work -- and list-exprs.py can substitute them.
        for m in re.finditer(r"(\w+)\s*(=~|!~|!=|=)?\s*\"?\$\{?(route|status)\b", e):
            if m.group(2) != "=~" or m.group(1) != m.group(3):
                bad_var.append("%s/%s: %s" % (t, x.get("refId"), m.group(0)))
        if any(mt in e for mt in ROUTE_METRICS) and "$route" not in e:
            missing_route.append("%s/%s" % (t, x.get("refId")))
ok(not bad_ds, "every panel and target queries ${datasource}", "\n".join(bad_ds))
ok(not bad_expr, "every panel has targets with a non-empty expr", "\n".join(bad_expr))
ok(not bad_ref, "refIds are unique within each panel", bad_ref)
ok(not bad_var, "$route/$status are only used as route=~/status=~ matchers", "\n".join(bad_var))
ok(not missing_route, "every HTTP panel query with a route label filters on $route", "\n".join(missing_route))
ok(any("$status" in (x.get("expr") or "") for p in panels for x in p.get("targets", [])),
   "the status variable is used")
titles = " ".join((p.get("title") or "").lower() for p in panels)
want = ["request", "5xx", "latency", "in-flight", "pool", "leads", "revenue", "login",
        "rate-limited", "suspicious", "segment"]
ok(all(w in titles for w in want), "panels cover traffic, errors, latency, saturation, business, security, collector",
   [w for w in want if w not in titles])
EOF
tap_py "dashboard validation" "$tmp/dashboard.py" "$DASH"

[ -f "$GRAF/README.md" ] && pass "$GRAF/README.md exists" || fail "$GRAF/README.md exists"

# ---------------------------------------------------------------------------
# list-exprs.py
# ---------------------------------------------------------------------------
if "$PY" "$PROM/list-exprs.py" >"$tmp/exprs.jsonl" 2>"$tmp/exprs.err"; then
  pass "list-exprs.py runs"
else
  fail "list-exprs.py runs"
  diag <"$tmp/exprs.err"
fi

# Rule counts as promtool sees them, to compare with the listing.
nrules=0
for f in "$PROM/recording-rules.yml" "$PROM/alert-rules.yml"; do
  c=$(promtool check rules "$f" 2>&1 | sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p')
  nrules=$((nrules + ${c:-0}))
done

cat >"$tmp/exprs.py" <<'EOF'
import json, sys
listing, dash_path, nrules = sys.argv[1], sys.argv[2], int(sys.argv[3])
def ok(c, d, why=""):
    print(("ok - " if c else "not ok - ") + d)
    if not c and why:
        for l in str(why).split("\n"):
            print("#   " + l)
items, bad = [], []
for i, line in enumerate(open(listing)):
    try:
        d = json.loads(line)
    except ValueError as e:
        bad.append("line %d: %s" % (i + 1, e))
        continue
    if set(d) != {"source", "name", "expr", "must_have_data"} or not isinstance(d["must_have_data"], bool) \
       or not all(isinstance(d[k], str) and d[k].strip() for k in ("source", "name", "expr")):
        bad.append("line %d: %s" % (i + 1, line.strip()))
    items.append(d)
ok(items and not bad, "list-exprs.py prints one JSON object {source,name,expr,must_have_data} per line", "\n".join(bad))
rules = [d for d in items if d["source"].endswith(".yml")]
ok(len(rules) == nrules, "list-exprs.py lists every rule (%d of %d)" % (len(rules), nrules))
dash = json.load(open(dash_path))
def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels") or [])
ntargets = sum(len(p.get("targets") or []) for p in walk(dash["panels"]))
npanel = sum(1 for d in items if d["name"].startswith("panel: "))
ok(npanel == ntargets, "list-exprs.py lists every dashboard target (%d of %d)" % (npanel, ntargets))
left = [d["name"] for d in items if "$" in d["expr"]]
ok(not left, "no Grafana variable is left in the listed expressions", left)
ok(any(d["must_have_data"] for d in items) and not any(d["must_have_data"] for d in items if d["source"].endswith("alert-rules.yml")),
   "must_have_data is set for some expressions and never for alerts")
# A rule file with every listed expression, for promtool to parse.
with open(sys.argv[4], "w") as f:
    f.write("groups:\n  - name: listed-exprs\n    rules:\n")
    for i, d in enumerate(items):
        f.write("      - record: listed:expr_%d:check\n        expr: %s\n" % (i, json.dumps(d["expr"])))
EOF
tap_py "list-exprs.py output" "$tmp/exprs.py" "$tmp/exprs.jsonl" "$DASH" "$nrules" "$tmp/listed-rules.yml"
check "every listed expression (dashboard ones after substitution) is valid PromQL" \
  promtool check rules "$tmp/listed-rules.yml"

# The small rule-file reader against a real YAML parser, where one is installed.
if "$PY" -c 'import yaml' 2>/dev/null; then
  cat >"$tmp/crosscheck.py" <<'EOF'
import json, sys, yaml
prom, listing = sys.argv[1], sys.argv[2]
listed = {(d["source"].rsplit("/", 1)[-1], d["name"]): d["expr"] for d in map(json.loads, open(listing))}
bad = []
for f in ("recording-rules.yml", "alert-rules.yml"):
    for g in yaml.safe_load(open(prom + "/" + f))["groups"]:
        for r in g["rules"]:
            name = r.get("record") or r.get("alert")
            if listed.get((f, name)) != str(r["expr"]).strip():
                bad.append("%s %s: %r != %r" % (f, name, listed.get((f, name)), r["expr"]))
print(("ok - " if not bad else "not ok - ") + "list-exprs.py reads the rule files as a YAML parser does")
for b in bad:
    print("#   " + b)
EOF
  tap_py "list-exprs.py vs YAML" "$tmp/crosscheck.py" "$PROM" "$tmp/exprs.jsonl"
else
  pass "list-exprs.py reads the rule files as a YAML parser does # SKIP python3-yaml not installed"
fi

echo "1..$n"
[ "$failed" -eq 0 ] && echo "# all $n checks passed" || echo "# $failed of $n checks failed"
[ "$failed" -eq 0 ]
