// Browser test of shmetricsd's /dashboard: Debian's chromium driven by
// playwright-core.  Starts its own collector, demo server and traffic on
// the segment $SEG and writes screenshots to $SHOTS.  TAP lines on stdout.
//   node tests/browser/dashboard.js   (env: BIN, SEG, SHOTS, CHROMIUM)
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const path = require("path");
const { chromium } = require("playwright-core");

const BIN = process.env.BIN || "build/bin";
const SEG = process.env.SEG;
const SHOTS = process.env.SHOTS || "build/screenshots";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const LOGS = process.env.LOGS || fs.mkdtempSync("/tmp/shmet-test-dashboard-");

let n = 0, failed = 0;
const procs = [];
function ok(cond, what, diag) {
  n++;
  if (cond) console.log(`ok ${n} - ${what}`);
  else {
    failed++;
    console.log(`not ok ${n} - ${what}`);
    if (diag) for (const l of String(diag).split("\n")) console.log(`# ${l}`);
  }
  return cond;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Poll fn() until it is truthy; at most ms (a bound, not a measurement).
async function until(fn, ms, step = 100) {
  const end = Date.now() + ms;
  for (;;) {
    let v;
    try { v = await fn(); } catch (e) { v = undefined; }
    if (v) return v;
    if (Date.now() > end) return v;
    await sleep(step);
  }
}
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on("error", reject);
  });
}
function start(name, args) {
  const log = path.join(LOGS, name + ".log");
  const out = fs.openSync(log, "a");
  const p = spawn(path.join(BIN, name), args, { stdio: ["ignore", out, out] });
  p.log = log;
  procs.push(p);
  return p;
}
async function portFromLog(p) {
  return until(() => {
    const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(fs.readFileSync(p.log, "utf8"));
    return m && +m[1];
  }, 5000);
}
function stop(p, sig = "SIGTERM") {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once("exit", () => resolve());
    p.kill(sig);
    setTimeout(() => { if (p.exitCode === null) p.kill("SIGKILL"); }, 10000);
  });
}
async function metricsSum(port, family) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let s = 0;
  for (const line of text.split("\n"))
    if (line.startsWith(family + "{") || line.startsWith(family + " ")) s += Number(line.slice(line.lastIndexOf(" ") + 1));
  return s;
}
const digits = (t) => Number(String(t).replace(/[^0-9.]/g, ""));

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const cport = await freePort();
  const colArgs = ["--segment", SEG, "--listen", `127.0.0.1:${cport}`, "--stream-interval", "0.5"];
  let col = start("shmetricsd", colArgs);
  if (!ok(await portFromLog(col), `shmetricsd listens on 127.0.0.1:${cport}`, fs.readFileSync(col.log, "utf8"))) return;
  const demo = start("saler-demo", ["--port", "0", "--workers", "3", "--max-requests", "300", "--segment", SEG]);
  const dport = await portFromLog(demo);
  if (!ok(dport, "saler-demo listens", fs.readFileSync(demo.log, "utf8"))) return;
  const traffic = start("saler-traffic", ["--url", `http://127.0.0.1:${dport}`, "--rate", "150", "--duration", "600", "--quiet"]);

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 }, colorScheme: "dark" });
    const errors = [];
    page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
    page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
    const url = `http://127.0.0.1:${cport}/dashboard`;
    const index = await (await fetch(`http://127.0.0.1:${cport}/`)).text();
    ok(index.includes('href="/dashboard"'), "/ links to /dashboard");
    const resp = await page.goto(url);
    ok(resp && resp.status() === 200, "GET /dashboard answers 200");
    const frame0 = await until(() => page.getAttribute("body", "data-frame"), 10000);
    ok(frame0, "the page receives frames from the stream");

    // Charts get points: every panel has a few with a value.
    const points = await until(() => page.evaluate(() => {
      const c = window.shmetricsDashboard.charts, out = {};
      for (const id of ["c-routes", "c-err", "c-lat", "c-inflight", "c-kpi", "c-workers", "c-free"])
        out[id] = c[id].data[0].length >= 6 && c[id].data.slice(1).some((s) => s.some((v) => v !== null));
      return Object.values(out).every(Boolean) ? out : null;
    }), 20000);
    ok(points, "every chart receives points (routes, errors, latency, in-flight, business, workers, regions)",
      JSON.stringify(await page.evaluate(() => Object.fromEntries(Object.entries(window.shmetricsDashboard.charts)
        .map(([k, u]) => [k, u.data.map((s) => s.filter((v) => v !== null).length)])))));
    const routes = await page.evaluate(() => window.shmetricsDashboard.charts["c-routes"].series.length - 1);
    ok(routes >= 5, `the request-rate chart has one line per route (${routes})`);

    // A value on the page equals /metrics at the same moment: with the
    // traffic paused, the newest frame and a scrape see the same totals.
    traffic.kill("SIGSTOP");
    await sleep(1500); // requests in flight finish, the collector scans
    const f1 = await page.getAttribute("body", "data-frame");
    await until(async () => (await page.getAttribute("body", "data-frame")) !== f1, 5000);
    const f2 = await page.getAttribute("body", "data-frame");
    await until(async () => (await page.getAttribute("body", "data-frame")) !== f2, 5000);
    const shownReq = digits(await page.textContent("#t-requests"));
    const shownLeads = digits(await page.textContent("#t-leads"));
    const scrapedReq = await metricsSum(cport, "saler_http_requests_total");
    const scrapedLeads = await metricsSum(cport, "saler_leads_created_total");
    traffic.kill("SIGCONT");
    ok(shownReq > 0 && shownReq === scrapedReq, `requests total on the page equals /metrics (${shownReq} = ${scrapedReq})`);
    ok(shownLeads > 0 && shownLeads === scrapedLeads, `leads total on the page equals /metrics (${shownLeads} = ${scrapedLeads})`);

    // The family picker charts any family.
    const options = await page.evaluate(() => Array.from(document.querySelectorAll("#family option")).map((o) => o.value).filter(Boolean));
    ok(options.includes("saler_db_pool_connections") && options.includes("saler_db_query_duration_seconds"),
      `the picker lists the families (${options.length})`);
    await page.selectOption("#family", "saler_db_pool_connections");
    const picked = await until(() => page.evaluate(() => {
      const u = window.shmetricsDashboard.charts["c-family"];
      return u.series[1].label === "saler_db_pool_connections" && u.data[1].some((v) => v !== null) ? u.data[1].filter((v) => v !== null).length : 0;
    }), 5000);
    ok(picked > 0, `picking saler_db_pool_connections charts it (${picked} points)`);
    await page.selectOption("#family", "saler_db_query_duration_seconds");
    const picked2 = await until(() => page.evaluate(() => {
      const u = window.shmetricsDashboard.charts["c-family"];
      return u.series[1].label === "saler_db_query_duration_seconds" && u.data[1].some((v) => v !== null && v > 0);
    }), 5000);
    ok(picked2, "picking a histogram charts its observations per second");

    await sleep(3000); // a few more points in the picked chart for the screenshots
    await page.screenshot({ path: path.join(SHOTS, "dashboard-1280x800-dark.png") });
    await page.click("#theme");
    await sleep(500);
    const light = await page.evaluate(() => getComputedStyle(document.documentElement).getPropertyValue("color-scheme").trim());
    ok(light === "light", "the theme button switches to light");
    await page.screenshot({ path: path.join(SHOTS, "dashboard-1280x800-light.png") });
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(800);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    ok(overflow <= 0, `at phone width nothing is wider than the screen (overflow ${overflow} px)`);
    await page.screenshot({ path: path.join(SHOTS, "dashboard-390-light.png"), fullPage: true });
    await page.click("#theme");
    await sleep(500);
    await page.screenshot({ path: path.join(SHOTS, "dashboard-390-dark.png"), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    ok(errors.length === 0, "no console errors while loading and running", errors.join("\n"));

    // The page recovers after a collector restart, and a new page still
    // gets the history from before it (kept in the segment).
    const before = Number(await page.getAttribute("body", "data-frame"));
    const stopped = Date.now() / 1000;
    await stop(col);
    const down = await until(async () => /reconnecting/.test(await page.textContent("#status")), 10000);
    ok(down, "the page shows the stream is down while the collector is stopped");
    await sleep(1000);
    col = start("shmetricsd", colArgs);
    ok(await portFromLog(col), "shmetricsd starts again on the same port", fs.readFileSync(col.log, "utf8"));
    const after = await until(async () => {
      const f = Number(await page.getAttribute("body", "data-frame"));
      return f > before && /live/.test(await page.textContent("#status")) ? f : 0;
    }, 20000);
    ok(after > before, `the page is live again after the restart (frame ${before} -> ${after})`);
    const page2 = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    await page2.goto(url);
    const oldest = await until(() => page2.evaluate(() => {
      const f = window.shmetricsDashboard.frames;
      return f.length > 2 ? f[0].t : 0;
    }), 10000);
    ok(oldest > 0 && oldest < stopped - 5, `a page opened after the restart starts with the history from before it ` +
      `(oldest frame ${(stopped - oldest).toFixed(0)} s before the restart)`);
    await sleep(1500);
    await page.screenshot({ path: path.join(SHOTS, "dashboard-after-restart.png") });
    const netErr = /ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET|ERR_INCOMPLETE_CHUNKED_ENCODING|Failed to load resource|EventSource/;
    const others = errors.filter((e) => !netErr.test(e));
    ok(others.length === 0, "across the restart, only the stream's connection errors reach the console", others.join("\n"));
  } finally {
    await browser.close();
  }
}

main()
  .catch((e) => ok(false, "the browser test ran to its end", e.stack))
  .finally(async () => {
    for (const p of procs.reverse()) {
      if (p.signalCode === null && p.exitCode === null) p.kill("SIGCONT");
      await stop(p);
    }
    console.log(`1..${n}`);
    process.exit(failed ? 1 : 0);
  });
