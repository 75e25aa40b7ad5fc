#!/usr/bin/env python3
"""List every PromQL expression of the saler-demo monitoring files.

Prints one JSON object per line:

    {"source": "...", "name": "...", "expr": "...", "must_have_data": true}

so that an integration test can run each expression against a live Prometheus
that scrapes shmetricsd while the demo serves traffic, e.g.

    examples/prometheus/list-exprs.py | while read -r line; do ...; done

Sources, in this order (paths relative to the repository root):
  examples/prometheus/recording-rules.yml   name = the recorded metric
  examples/prometheus/alert-rules.yml       name = the alert name
  examples/grafana/saler-dashboard.json     name = "panel: <title> / <refId>",
                                            "annotation: <name>",
                                            "variable: <name>"

Grafana variables are replaced so that the expressions are plain PromQL:
  $route ${route} ${route:regex} [[route]]   ->  .*     (likewise $status)
      The dashboard only uses them inside regex matchers (route=~"$route"), so
      ".*" is what Grafana itself sends for the "All" value (allValue ".*").
  $__rate_interval, $__interval              ->  --rate-interval (default 1m,
      = 4 x the 15s scrape interval, Grafana's own minimum for $__rate_interval)
  $__range                                   ->  --range (default 1h, the
      dashboard's default time range); $__range_s -> the same in seconds
  Variable queries label_values(<selector>, <label>) are listed as
      group by (<label>) (<selector>)
Any other "$" left in an expression is an error (exit status 1).

must_have_data tells whether the expression must return at least one sample on
a Prometheus that has scraped shmetricsd for a few minutes while the demo
serves traffic.  It is false for
  - alerts (a healthy system fires none of them);
  - expressions that use a metric outside PRESENT_METRICS below (series that
    only appear once a specific event happened, e.g. the first lead, the first
    failed login) -- pass --present NAME to add one, or --all-present when
    the server creates every label combination before fork() (exported as 0
    from the start, as saler-demo does): then every saler_*/shmetricsd_*
    metric counts as present and event matchers (below) are no obstacle;
  - expressions that use a recorded series (level:metric:op) whose own
    recording rule is not must_have_data (the listing assumes that the
    Prometheus loads recording-rules.yml, as prometheus.yml does);
  - expressions with a selector on an "event" label value (status=~"5..",
    outcome="error", reason="crashed", ...) unless the expression has an `or`
    fallback (the ratios are written `(errors or 0 * all) / all`).
The heuristic errs on the side of false: false only means "don't require data".

The rule files are read with a small line reader instead of a YAML library (so
that no python3-yaml is needed); `promtool check rules` validates the YAML
itself.  The reader understands what these files use: one `- record: NAME` or
`- alert: NAME` line per rule and `expr:` either on one line (plain, '...' or
"...") or as a `|` / `>` block scalar.  Anything else it cannot read exactly
makes it fail loudly rather than guess.  Standard library only.
"""

import argparse
import json
import os
import re
import sys

# Metrics expected to have series as soon as the demo has served some HTTP
# traffic (created before fork(), set on every request, or the collector's own
# metrics, which it exports from its start -- counters at 0 included).
PRESENT_METRICS = {
    "up",
    "scrape_duration_seconds",
    "saler_http_requests_total",
    "saler_http_request_duration_seconds_bucket",
    "saler_http_request_duration_seconds_sum",
    "saler_http_request_duration_seconds_count",
    "saler_http_requests_in_flight",
    "saler_workers",
    "saler_db_pool_connections",
    "saler_db_pool_max_connections",
    "saler_db_query_duration_seconds_bucket",
    "saler_db_query_duration_seconds_sum",
    "saler_db_query_duration_seconds_count",
    "saler_db_queries_total",
    "shmetricsd_scrape_duration_seconds",
    "shmetricsd_series",
    "shmetricsd_regions",
    "shmetricsd_segment_used_bytes",
    "shmetricsd_segment_size_bytes",
    "shmetricsd_writes_dropped_total",
    "shmetricsd_folds_total",
    "shmetricsd_corrupt_records_total",
    "shmetricsd_region_claim_failures_total",
    "shmetricsd_build_info",
}

# (label, value) pairs of matchers that select series which only exist after a
# failure or another specific event.
EVENT_MATCHERS = {
    ("status", "5.."),
    ("outcome", "error"),
    ("outcome", "failure"),
    ("reason", "crashed"),
    ("reason", "recycled"),
    ("reason", "unknown_user"),
    ("reason", "bad_password"),
    ("reason", "locked"),
    ("class", "server"),
    ("class", "client"),
    ("result", "hit"),
    ("result", "miss"),
    ("alertstate", "firing"),
}

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RULE_FILES = [
    os.path.join(HERE, "recording-rules.yml"),
    os.path.join(HERE, "alert-rules.yml"),
]
DASHBOARD = os.path.join(ROOT, "examples", "grafana", "saler-dashboard.json")


class ReadError(Exception):
    pass


# --------------------------------------------------------------------------
# Rule files
# --------------------------------------------------------------------------

RULE_START = re.compile(r"^(\s*)-\s+(record|alert):\s*(.*?)\s*$")
EXPR_KEY = re.compile(r"^(\s*)expr:\s*(.*?)\s*$")
BLOCK_HEADER = re.compile(r"^([|>])([+-]?)(\d?)$|^([|>])(\d)([+-])$")


def _scalar(text, where):
    """A one-line YAML scalar: plain, single- or double-quoted."""
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise ReadError(where + ": unterminated single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"'):
            raise ReadError(where + ": unterminated double-quoted scalar")
        try:
            return json.loads(text)
        except ValueError:
            raise ReadError(where + ": double-quoted scalar with escapes this reader does not know")
    # Plain scalar: a " #" starts a comment.
    cut = re.search(r"\s#", text)
    if cut:
        text = text[: cut.start()]
    text = text.strip()
    if not text:
        raise ReadError(where + ": empty value")
    if text[0] in "[{&*!%@`":
        raise ReadError(where + ": YAML construct this reader does not handle: " + text)
    return text


def read_rules(path):
    """Yield (kind, name, expr) for every rule of a Prometheus rule file."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    rules = []
    current = None  # [kind, name, expr, indent]
    i = 0
    while i < len(lines):
        line = lines[i]
        where = "%s:%d" % (os.path.basename(path), i + 1)
        m = RULE_START.match(line)
        if m:
            if current is not None:
                rules.append(current)
            current = [m.group(2), _scalar(m.group(3), where), None, len(m.group(1))]
            i += 1
            continue
        m = EXPR_KEY.match(line)
        if m:
            if current is None:
                raise ReadError(where + ": expr outside a rule")
            if current[2] is not None:
                raise ReadError(where + ": second expr in rule " + current[1])
            key_indent = len(m.group(1))
            if key_indent <= current[3]:
                raise ReadError(where + ": expr not indented under its rule")
            value = m.group(2)
            hb = BLOCK_HEADER.match(value)
            if hb:
                style = hb.group(1) or hb.group(4)
                chomp = hb.group(2) or hb.group(6) or ""
                body = []
                j = i + 1
                block_indent = None
                while j < len(lines):
                    l = lines[j]
                    if l.strip() == "":
                        body.append("")
                        j += 1
                        continue
                    ind = len(l) - len(l.lstrip(" "))
                    if ind <= key_indent:
                        break
                    if block_indent is None:
                        block_indent = ind
                    if ind < block_indent:
                        raise ReadError("%s:%d: block scalar line indented less than its first line"
                                        % (os.path.basename(path), j + 1))
                    body.append(l[block_indent:])
                    j += 1
                while body and body[-1] == "":
                    body.pop()
                if not body:
                    raise ReadError(where + ": empty block scalar")
                if style == "|":
                    text = "\n".join(body)
                else:
                    text = " ".join(b.strip() for b in body if b.strip())
                if chomp != "-":
                    text += "\n"
                current[2] = text
                i = j
                continue
            current[2] = _scalar(value, where)
            # A plain scalar continued on the next lines is not supported.
            j = i + 1
            while j < len(lines) and (lines[j].strip() == "" or lines[j].lstrip().startswith("#")):
                j += 1
            if j < len(lines):
                nxt = lines[j]
                ind = len(nxt) - len(nxt.lstrip(" "))
                if ind > key_indent:
                    raise ReadError("%s:%d: multi-line plain scalar; write the expr as a | block"
                                    % (os.path.basename(path), j + 1))
            i += 1
            continue
        i += 1
    if current is not None:
        rules.append(current)
    out = []
    for kind, name, expr, _ in rules:
        if expr is None:
            raise ReadError("%s: rule %s has no expr" % (os.path.basename(path), name))
        out.append((kind, name, expr.strip()))
    return out


# --------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------

def _all_panels(panels):
    for p in panels:
        yield p
        for sub in _all_panels(p.get("panels") or []):
            yield sub


def read_dashboard(path):
    """Yield (name, expr) for every PromQL text of the dashboard."""
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    out = []
    for p in _all_panels(dash.get("panels", [])):
        for t in p.get("targets") or []:
            out.append(("panel: %s / %s" % (p.get("title", "?"), t.get("refId", "?")), t.get("expr", "")))
    for a in (dash.get("annotations") or {}).get("list", []):
        if a.get("expr"):
            out.append(("annotation: " + a.get("name", "?"), a["expr"]))
    for v in (dash.get("templating") or {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        q = q or v.get("definition", "")
        m = re.match(r"^\s*label_values\(\s*(.*?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", q, re.S)
        if m:
            out.append(("variable: " + v.get("name", "?"), "group by (%s) (%s)" % (m.group(2), m.group(1))))
        elif re.match(r"^\s*(label_names|metrics|query_result)\(", q):
            raise ReadError("variable %s: query form not handled: %s" % (v.get("name"), q))
        else:
            out.append(("variable: " + v.get("name", "?"), q))
    return out


def substitute(expr, rate_interval, range_, range_s):
    for var in ("route", "status"):
        expr = re.sub(r"\$\{%s(?::[a-z]+)?\}|\[\[%s\]\]|\$%s\b" % (var, var, var), ".*", expr)
    expr = expr.replace("${__rate_interval}", rate_interval).replace("$__rate_interval", rate_interval)
    expr = expr.replace("${__interval}", rate_interval).replace("$__interval", rate_interval)
    expr = expr.replace("${__range_s}", range_s).replace("$__range_s", range_s)
    expr = expr.replace("${__range}", range_).replace("$__range", range_)
    return expr


# --------------------------------------------------------------------------
# must_have_data
# --------------------------------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan", "atan2",
            # aggregation operators: may be followed by "by (...)" instead of "("
            "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk",
            "bottomk", "quantile", "count_values"}
LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def selectors(expr):
    """(metric name, [(label, op, value)]) for every vector selector.  Small
    PromQL scanner: skips strings, [ranges], label lists after by/on/...,
    function names and numbers."""
    res = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" else 1
            i = j + 1
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c == "{":
            # Selector without a metric name: {__name__="..."}.
            body, i = _braces(expr, i)
            res.append((None, _matchers(body)))
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "._"):
                j += 1
            i = j
        elif c.isalpha() or c in "_:":
            j = i
            while j < n and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            word = expr[i:j]
            k = j
            while k < n and expr[k].isspace():
                k += 1
            if word.lower() in LIST_KEYWORDS:
                if k < n and expr[k] == "(":
                    k = expr.index(")", k) + 1
                i = k
            elif word.lower() in KEYWORDS:
                i = j
            elif k < n and expr[k] == "(":
                i = j  # function call
            else:
                matchers = []
                if k < n and expr[k] == "{":
                    body, k = _braces(expr, k)
                    matchers = _matchers(body)
                    i = k
                else:
                    i = j
                res.append((word, matchers))
        else:
            i += 1
    return res


def _braces(expr, i):
    j = i + 1
    while j < len(expr) and expr[j] != "}":
        if expr[j] in "\"'`":
            q = expr[j]
            j += 1
            while j < len(expr) and expr[j] != q:
                j += 2 if expr[j] == "\\" else 1
        j += 1
    return expr[i + 1 : j], j + 1


def _matchers(body):
    return re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', body)


def must_have_data(kind, expr, present, precreated=False):
    if kind == "alert":
        return False
    sels = selectors(expr)
    if not sels:
        return False
    has_fallback = re.search(r"\bor\b", expr) is not None
    for name, matchers in sels:
        if name is None or name not in present:
            return False
        for label, op, value in matchers:
            if op in ("=", "=~") and (label, value) in EVENT_MATCHERS and not (has_fallback or precreated):
                return False
    return True


# --------------------------------------------------------------------------

def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate-interval", default="1m", help="value for $__rate_interval and $__interval (default 1m)")
    ap.add_argument("--range", dest="range_", metavar="RANGE", default="1h", help="value for $__range (default 1h)")
    ap.add_argument("--present", action="append", default=[], metavar="METRIC",
                    help="treat METRIC as always present (repeatable)")
    ap.add_argument("--all-present", action="store_true",
                    help="every label combination of the saler_/shmetricsd_ metrics exists from the "
                         "start (created before fork, exported as 0)")
    args = ap.parse_args(argv)
    m = re.match(r"^(\d+)([smhd])$", args.range_)
    if not m:
        ap.error("--range must look like 30m, 1h, 2d")
    range_s = str(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)])
    present = set(PRESENT_METRICS) | set(args.present)

    def rel(p):
        return os.path.relpath(p, ROOT)

    items = []
    try:
        for path in RULE_FILES:
            for kind, name, expr in read_rules(path):
                items.append((rel(path), kind, name, expr))
        for name, expr in read_dashboard(DASHBOARD):
            items.append((rel(DASHBOARD), "panel", name, expr))
    except (OSError, ReadError, ValueError) as e:
        print("list-exprs: %s" % e, file=sys.stderr)
        return 1

    status = 0
    for source, kind, name, expr in items:
        expr = substitute(expr, args.rate_interval, args.range_, range_s)
        if "$" in expr:
            print("list-exprs: %s: %s: unhandled variable in %r" % (source, name, expr), file=sys.stderr)
            status = 1
        if not expr.strip():
            print("list-exprs: %s: %s: empty expression" % (source, name), file=sys.stderr)
            status = 1
        if args.all_present:
            names = {s[0] for s in selectors(expr) if s[0]}
            pres = present | {x for x in names if x.startswith(("saler_", "shmetricsd_"))}
        else:
            pres = present
        has_data = must_have_data(kind, expr, pres, args.all_present)
        if kind == "record" and has_data:
            # Later rules and panels may use the recorded series.
            present.add(name)
        print(json.dumps({"source": source, "name": name, "expr": expr,
                          "must_have_data": has_data}))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
