/* shmetricsd dashboard: frames from /api/v1/metrics/stream into uPlot charts.
 *
 * Each frame (see collector/frame.c) is one point of every chart.  The
 * stream starts with the kept history (?backlog), resumes with
 * Last-Event-ID after a dropped connection, and is opened again when the
 * collector went away and came back; frames are de-duplicated by id. */
(function () {
  "use strict";
  var SPAN = 900;            /* seconds shown and kept */
  var STREAM = "/api/v1/metrics/stream?backlog=" + SPAN;

  var frames = [];           /* oldest first */
  var lastId = 0;
  var routes = [];           /* route names in the order met */
  var families = {};         /* name -> kind letter */
  var charts = {};
  var picked = "";
  var es = null, reopenTimer = null, lastFrameAt = 0;

  function $(id) { return document.getElementById(id); }
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function color(i) { return css("--c" + ((i % 10) + 1)); }

  /* ---- theme ---- */
  var saved = null;
  try { saved = localStorage.getItem("shmetricsd-theme"); } catch (e) { saved = null; }
  if (saved === "dark" || saved === "light") document.documentElement.setAttribute("data-theme", saved);
  $("theme").addEventListener("click", function () {
    var dark = css("color-scheme") === "dark";
    var next = dark ? "light" : "dark";
    document.documentElement.setAttribute("data-theme", next);
    try { localStorage.setItem("shmetricsd-theme", next); } catch (e) { /* private mode */ }
    rebuild();
  });

  /* ---- numbers ---- */
  function exact(v) { return v == null ? "–" : Math.round(v).toLocaleString("en-US"); }
  function short(v, digits) {
    if (v == null || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return v.toFixed(digits == null ? (a >= 100 ? 0 : a >= 10 ? 1 : 2) : digits);
  }
  function pct(v) { return v == null ? "–" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + "%"; }
  function secs(v) {
    if (v == null) return "–";
    if (v === 0) return "0";
    if (v < 1e-3) return +(v * 1e6).toPrecision(3) + " µs";
    if (v < 1) return +(v * 1e3).toPrecision(3) + " ms";
    return +v.toPrecision(3) + " s";
  }
  function get(o, path) {
    for (var i = 0; i < path.length; i++) { if (o == null) return null; o = o[path[i]]; }
    return o == null ? null : o;
  }
  function perMin(v) { return v == null ? null : v * 60; }

  /* ---- charts ---- */
  function yAxis(fmt, scale, side) {
    var grid = { stroke: css("--grid"), width: 1 };
    return { scale: scale, side: side, stroke: css("--muted"), grid: side ? { show: false } : grid,
             ticks: { stroke: grid.stroke }, size: 68, space: 36,
             values: function (u, ticks) { return ticks.map(function (t) { return fmt(t); }); } };
  }
  function height(el) { return el.closest(".wide") ? 220 : window.innerWidth <= 640 ? 170 : 180; }
  /* def.right: the last series on a scale of its own, on the right (revenue
   * beside counts of leads) */
  function opts(el, def) {
    var series = def.series(), fmt = def.fmt, grid = { stroke: css("--grid"), width: 1 };
    var scales = { x: { time: true }, y: def.range ? { range: def.range } : {} };
    var axes = [{ stroke: css("--muted"), grid: grid, ticks: { stroke: grid.stroke }, space: 70 }, yAxis(fmt, "y", 3)];
    if (def.right) {
      scales.r = { range: def.range };
      axes.push(yAxis(fmt, "r", 1));
    }
    return {
      width: Math.max(el.clientWidth, 200), height: height(el),
      series: [{ value: function (u, v) { return v == null ? "–" : new Date(v * 1000).toLocaleTimeString(); } }].concat(
        series.map(function (s, i) {
          return { label: s, stroke: color(i), width: 1.6, spanGaps: false, points: { show: false },
                   scale: def.right && i === series.length - 1 ? "r" : "y",
                   value: function (u, v) { return v == null ? "–" : fmt(v); } };
        })),
      axes: axes,
      scales: scales,
      legend: { live: true },
      cursor: { drag: { x: false, y: false } }
    };
  }
  function zeroBased(u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }
  function ratioRange(u, min, max) { return [0, max > 0 ? Math.min(1, max * 1.2) : 0.05]; }

  /* Definitions: id -> {series(): names, value(frame, i): number, fmt, range} */
  var defs = {
    "c-routes": { series: function () { return routes.length ? routes : ["(no request family)"]; },
                  value: function (f, i) { return routes.length ? get(f, ["req", "routes", routes[i]]) : null; },
                  fmt: function (v) { return short(v); }, range: zeroBased },
    "c-err": { series: function () { return ["4xx+5xx", "5xx"]; },
               value: function (f, i) { return get(f, ["err", i ? "server" : "ratio"]); },
               fmt: pct, range: ratioRange },
    "c-lat": { series: function () { return ["p50", "p90", "p99"]; },
               value: function (f, i) { return get(f, ["lat", ["p50", "p90", "p99"][i]]); },
               fmt: secs, range: zeroBased },
    "c-inflight": { series: function () { return ["in flight"]; },
                    value: function (f) { return get(f, ["inflight"]); },
                    fmt: function (v) { return short(v); }, range: zeroBased },
    "c-kpi": { series: function () { return ["leads/min", "conversions/min", "revenue/min"]; },
               value: function (f, i) { return perMin(get(f, ["kpi", ["leads", "conversions", "revenue"][i], "rate"])); },
               fmt: function (v) { return short(v); }, range: zeroBased, right: true },
    "c-workers": { series: function () { return ["live", "dead", "recycled"]; },
                   value: function (f, i) { return get(f, ["workers", ["live", "dead", "recycled"][i]]); },
                   fmt: function (v) { return short(v, 0); }, range: zeroBased },
    "c-free": { series: function () { return ["regions free"]; },
                value: function (f) { return get(f, ["regions_free"]); },
                fmt: function (v) { return short(v, 0); }, range: zeroBased },
    "c-family": { series: function () { return [picked || "(none)"]; },
                  value: function (f) { var v = picked ? get(f, ["fam", picked]) : null; return v ? v[1] : null; },
                  fmt: function (v) { return short(v); }, range: null }
  };

  function data(def) {
    var names = def.series();
    var out = [frames.map(function (f) { return f.t; })];
    for (var i = 0; i < names.length; i++)
      out.push(frames.map(function (f) { var v = def.value(f, i); return typeof v === "number" ? v : null; }));
    return out;
  }

  function build(id) {
    var el = $(id), def = defs[id];
    if (charts[id]) charts[id].destroy();
    el.textContent = "";
    charts[id] = new uPlot(opts(el, def), data(def), el);
    charts[id].nseries = def.series().length;
  }
  function rebuild() { Object.keys(defs).forEach(build); }
  function redraw() {
    Object.keys(defs).forEach(function (id) {
      var def = defs[id];
      if (!charts[id] || charts[id].nseries !== def.series().length) build(id);
      else charts[id].setData(data(def));
    });
  }
  if (window.ResizeObserver) {
    var ro = new ResizeObserver(function () {
      Object.keys(charts).forEach(function (id) {
        var el = $(id);
        if (el.clientWidth && el.clientWidth !== charts[id].width) charts[id].setSize({ width: el.clientWidth, height: height(el) });
      });
    });
    Object.keys(defs).forEach(function (id) { ro.observe($(id)); });
  }

  /* ---- the family picker ---- */
  var kindNames = { c: "counters (per second)", g: "gauges", h: "histograms (observations per second)",
                    s: "summaries (observations per second)" };
  function refreshPicker(f) {
    var fam = f.fam || {}, added = false;
    Object.keys(fam).forEach(function (n) {
      if (!(n in families)) { families[n] = fam[n][0]; added = true; }
    });
    if (!added) return;
    var sel = $("family"), keep = sel.value;
    while (sel.options.length > 1) sel.remove(1);
    Array.prototype.slice.call(sel.querySelectorAll("optgroup")).forEach(function (g) { g.remove(); });
    ["c", "g", "h", "s"].forEach(function (k) {
      var names = Object.keys(families).filter(function (n) { return families[n] === k; }).sort();
      if (!names.length) return;
      var g = document.createElement("optgroup");
      g.label = kindNames[k];
      names.forEach(function (n) { var o = document.createElement("option"); o.value = n; o.textContent = n; g.appendChild(o); });
      sel.appendChild(g);
    });
    sel.value = keep;
  }
  $("family").addEventListener("change", function () {
    picked = this.value;
    var k = families[picked];
    $("family-unit").textContent = picked ? (k === "g" ? "value" : "per second") : "";
    build("c-family");
  });

  /* ---- frames ---- */
  function tiles(f) {
    $("t-rate").textContent = short(get(f, ["req", "rate"]));
    $("t-requests").textContent = exact(get(f, ["req", "total"]));
    var e = get(f, ["err", "ratio"]);
    $("t-err").textContent = pct(e);
    $("t-err").classList.toggle("bad", e != null && e > 0.05);
    $("t-p99").textContent = secs(get(f, ["lat", "p99"])).replace(" ", "");
    $("t-inflight").textContent = short(get(f, ["inflight"]), 0);
    $("t-leads").textContent = exact(get(f, ["kpi", "leads", "total"]));
    $("t-conv").textContent = exact(get(f, ["kpi", "conversions", "total"]));
    var rev = get(f, ["kpi", "revenue", "total"]);
    $("t-revenue").textContent = short(rev);
    $("t-revenue").title = rev == null ? "" : rev.toLocaleString("en-US");
    $("t-live").textContent = exact(get(f, ["workers", "live"]));
    $("t-free").textContent = exact(get(f, ["regions_free"]));
    $("frame-info").textContent = "frame " + f.id + " at " + new Date(f.t * 1000).toLocaleTimeString();
    document.body.setAttribute("data-frame", String(f.id));
  }

  var pending = false;
  function add(f) {
    if (typeof f.id !== "number" || f.id <= lastId || typeof f.t !== "number") return;
    lastId = f.id;
    frames.push(f);
    while (frames.length && f.t - frames[0].t > SPAN) frames.shift();
    Object.keys(get(f, ["req", "routes"]) || {}).forEach(function (r) { if (routes.indexOf(r) < 0) routes.push(r); });
    refreshPicker(f);
    tiles(f);
    if (!pending) { /* a backlog arrives as a burst: draw once per animation frame */
      pending = true;
      requestAnimationFrame(function () { pending = false; redraw(); });
    }
  }

  function status(text, cls) {
    $("status").textContent = text;
    $("dot").className = "dot" + (cls ? " " + cls : "");
  }

  function open() {
    if (es) es.close();
    es = new EventSource(STREAM);
    es.onopen = function () { status("live", "live"); };
    es.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      lastFrameAt = Date.now();
      status("live", "live");
      add(f);
    };
    es.onerror = function () {
      status("reconnecting…", "down");
      /* The browser retries by itself (with Last-Event-ID) unless the
       * answer was not a stream (a 503, a restart in progress): then it
       * gives up, and the page opens a new one. */
      if (es.readyState === EventSource.CLOSED && !reopenTimer)
        reopenTimer = setTimeout(function () { reopenTimer = null; open(); }, 2000);
    };
  }
  /* A stream that went silent (no frame, no heartbeat: a collector that
   * vanished without closing) is opened again. */
  setInterval(function () {
    if (lastFrameAt && Date.now() - lastFrameAt > 15000) { lastFrameAt = Date.now(); status("reconnecting…", "down"); open(); }
  }, 5000);

  /* Read-only handles for the browser tests and the curious (console). */
  window.shmetricsDashboard = { charts: charts, frames: frames };

  rebuild();
  open();
})();
