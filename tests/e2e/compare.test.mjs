// compare.test.mjs — the compare page (#/compare) in a real browser against
// a real daemon: runs picked in the runs list, one colour per run on the
// same charts, the tag and metrics chosen on the page, zoom, the URL round
// trip (reloading the URL reproduces the view), the regime summary table
// against /api/v1/summary and its CSV download. Screenshot:
// tests/e2e/out/compare.png. Same harness as dashboard.test.mjs (gradwatchd,
// the CLI's synthetic publisher, Debian's chromium via playwright-core).
// GW_COMPARE_BENCH=N adds the timing of 5 runs × N points (ready, zoom).
//
//   node --test tests/e2e/compare.test.mjs


import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const DAEMON = process.env.GW_DAEMON || path.join(ROOT, "build/daemon/gradwatchd");
const CLI = process.env.GW_CLI || path.join(ROOT, "build/client/gradwatch");
const CHROMIUM = process.env.GW_CHROMIUM || "/usr/bin/chromium";
const OUT = path.join(ROOT, "tests/e2e/out");

const TAGS = ["all", "fc1.weight"];
const STEPS = 300; // points 1..299 (a stream's first message makes no point)
// Three runs of rising rank and noise: the less predictable, the higher κ.
const RUNS = [
  ["cmp-calm", ["--rank", "2", "--noise", "0.001"]],
  ["cmp-mid", ["--rank", "4", "--noise", "0.02"]],
  ["cmp-noisy", ["--rank", "8", "--noise", "0.3"]],
];
// GW_COMPARE_BENCH=N: also time 5 runs of N points each (bench/RESULTS.md).
const BENCH_POINTS = Number(process.env.GW_COMPARE_BENCH || 0);

let chromium;
try {
  ({ chromium } = createRequire(path.join(ROOT, "web/package.json"))("playwright-core"));
} catch (e) {
  throw new Error("playwright-core is missing: run `npm ci` in web/ first (" + e.message + ")");
}
for (const [what, p] of [["GW_DAEMON", DAEMON], ["GW_CLI", CLI], ["chromium", CHROMIUM]]) {
  if (!fs.existsSync(p)) throw new Error(`${what} not found at ${p}`);
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gw-e2e-"));
const children = new Set();
let browser;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function start(cmd, args, name) {
  const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (b) => {
    log = (log + b.toString()).slice(-8000);
  };
  p.stdout.on("data", keep);
  p.stderr.on("data", keep);
  p.log = () => `--- ${name} output ---\n${log}`;
  p.done = once(p, "exit");
  children.add(p);
  p.done.then(() => children.delete(p));
  return p;
}

/** SIGTERM (SIGKILL after 5 s); resolves to [exit code, signal]. */
async function stop(p) {
  if (p.exitCode === null && p.signalCode === null) {
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), 5000);
    await p.done;
    clearTimeout(t);
  }
  return [p.exitCode, p.signalCode];
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeoutMs = 30000, everyMs = 50) {
  const t0 = Date.now();
  let last;
  while (Date.now() - t0 < timeoutMs) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last && last.message ? last.message : JSON.stringify(last)})`);
}

/** A daemon on free loopback ports; extra flags appended. */
async function startDaemon(name, extra = [], ports = null) {
  const http = ports ? ports.http : await freePort();
  const zmq = ports ? ports.zmq : await freePort();
  const d = start(
    DAEMON,
    ["--db", path.join(tmp, name + ".db"), "--http", `127.0.0.1:${http}`, "--zmq", `tcp://127.0.0.1:${zmq}`, ...extra],
    "gradwatchd " + name,
  );
  d.base = `http://127.0.0.1:${http}`;
  d.zmq = `tcp://127.0.0.1:${zmq}`;
  d.ports = { http, zmq };
  await until(name + " /healthz", async () => {
    if (d.exitCode !== null) throw Object.assign(new Error("daemon exited\n" + d.log()), { fatal: true });
    return (await fetch(d.base + "/healthz")).ok;
  });
  return d;
}

/** gradwatch publish --synthetic of one run into daemon d. */
async function publish(d, run, args) {
  const p = start(CLI, ["publish", "--synthetic", "--endpoint", d.zmq, "--run", run, "--tags", TAGS.join(","), "--seed", "7", "--rate", "0", "--loss", ...args], "publish " + run);
  const [code] = await p.done;
  assert.equal(code, 0, "publish failed\n" + p.log());
}

const getJSON = async (d, p, headers = {}) => {
  const r = await fetch(d.base + p, { headers });
  assert.ok(r.ok, `${p}: HTTP ${r.status}`);
  return r.json();
};

let daemon;
let page;
const pageErrors = [];
const runNames = RUNS.map(([r]) => r);

before(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  daemon = await startDaemon("compare", ["--window", "16", "--rank-every", "4"]);
  for (const [run, args] of RUNS) await publish(daemon, run, ["--steps", String(STEPS), ...args]);
  await until("the store to hold every point", async () => {
    for (const run of runNames) {
      const s = await getJSON(daemon, `/api/v1/runs/${run}/streams`);
      if (!(s.streams.length === TAGS.length && s.streams.every((x) => x.last_step === STEPS - 1))) return false;
    }
    return true;
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  page = await browser.newPage({ viewport: { width: 1440, height: 1000 }, colorScheme: "light", acceptDownloads: true });
  page.on("pageerror", (e) => pageErrors.push("pageerror: " + e.message));
  page.on("console", (m) => m.type() === "error" && pageErrors.push("console: " + m.text()));
});

after(async () => {
  if (browser) await browser.close();
  await Promise.all([...children].map(stop));
  fs.rmSync(tmp, { recursive: true, force: true });
});

const hashParams = () => new URLSearchParams(new URL(page.url()).hash.replace(/^#\/compare\??/, ""));

test("runs picked in the runs list open the compare page, one line per run", async () => {
  await page.goto(daemon.base + "/");
  for (const run of runNames) await page.locator(`tr.run[data-run="${run}"] input.pick`).check();
  assert.equal(await page.locator("#compare-btn").textContent(), "compare 3");
  await page.locator("#compare-btn").click();
  await page.locator("#compare-view[data-ready='1']").waitFor({ timeout: 30000 });
  assert.deepEqual(hashParams().get("runs").split(",").sort(), [...runNames].sort());
  assert.equal(hashParams().get("tag"), "all");
  const legend = await page.locator('#charts .chart[data-metric="kappa_onestep"] .u-legend').textContent();
  for (const run of runNames) assert.ok(legend.includes(run), `legend lacks ${run}: ${legend}`);
  // One colour per run: the legend chips differ.
  const colours = await page.locator("#compare-legend .chip").evaluateAll((xs) => xs.map((x) => x.style.color));
  assert.equal(new Set(colours).size, 3, colours.join(" "));
  assert.equal(await page.locator("#charts").getAttribute("data-last-step"), String(STEPS - 1));
  assert.deepEqual(pageErrors, []);
});

test("summary table equals /api/v1/summary; the CSV download holds every field", async () => {
  const want = await getJSON(daemon, `/api/v1/summary?runs=${hashParams().get("runs")}`);
  const rows = page.locator("#summary-body tr");
  await until("the summary rows", async () => (await rows.count()) === runNames.length * TAGS.length);
  // The chosen tag's rows come first, in the URL's run order.
  const first = await rows.evaluateAll((xs) => xs.slice(0, 3).map((x) => [x.dataset.run, x.dataset.tag]));
  assert.deepEqual(first, hashParams().get("runs").split(",").map((r) => [r, "all"]));
  for (const r of want.rows) {
    const cells = await page.locator(`#summary-body tr[data-run="${r.run}"][data-tag="${r.tag}"] td`).allTextContents();
    assert.equal(cells[2].replace(/\D/g, ""), String(r.steps));
    assert.ok(Math.abs(Number(cells[4]) - r.kappa_onestep_median) <= 1e-3 * Math.abs(r.kappa_onestep_median), `${cells[4]} vs ${r.kappa_onestep_median}`);
  }
  const med = (run) => want.rows.find((r) => r.run === run && r.tag === "all").kappa_ema_median;
  assert.ok(med("cmp-calm") < med("cmp-noisy"), "the noisy run should be the less predictable");
  const [dl] = await Promise.all([page.waitForEvent("download"), page.locator("#summary-csv").click()]);
  const text = fs.readFileSync(await dl.path(), "utf8").trim().split("\n");
  assert.equal(text[0], Object.keys(want.rows[0]).join(","));
  assert.equal(text.length, 1 + want.rows.length);
  for (const [i, line] of text.slice(1).entries()) {
    const cells = line.split(",");
    const r = want.rows[i];
    Object.keys(r).forEach((k, j) => assert.equal(cells[j], r[k] === null ? "" : String(r[k]), k));
  }
});

test("tag, metrics and zoom go into the URL; reloading it reproduces the view", async () => {
  await page.locator("#compare-tag").selectOption("fc1.weight");
  await until("tag in the URL", async () => hashParams().get("tag") === "fc1.weight");
  await page.locator('#compare-view input[data-metric="loss"]').uncheck();
  await page.locator('#compare-view input[data-metric="grad_norm"]').uncheck();
  assert.equal(await page.locator('.chart[data-metric="loss"]').isHidden(), true);
  assert.deepEqual(hashParams().get("metrics").split(","), ["kappa_onestep", "kappa_ema", "rank_90", "rank_99", "stable_rank"]);
  const over = page.locator('#charts .chart[data-metric="kappa_onestep"] .u-over');
  const box = await over.boundingBox();
  await page.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 5 });
  await page.mouse.up();
  await until("the zoom in the URL", async () => hashParams().get("from") !== null);
  const view = await page.locator("#compare-view").getAttribute("data-view");
  const [from, to] = view.split("-").map(Number);
  assert.ok(from > 50 && to < 250 && to > from, view);
  assert.equal(hashParams().get("from"), String(from));
  assert.equal(hashParams().get("to"), String(to));
  const url = page.url();
  await page.goto("about:blank");
  await page.goto(url);
  await page.locator("#compare-view[data-ready='1']").waitFor({ timeout: 30000 });
  assert.equal(await page.locator("#compare-view").getAttribute("data-view"), view);
  assert.equal(await page.locator("#compare-tag").inputValue(), "fc1.weight");
  assert.equal(await page.locator('.chart[data-metric="loss"]').isHidden(), true);
  assert.equal(await page.locator('.chart[data-metric="kappa_ema"]').isHidden(), false);
  assert.equal(page.url(), url);
  // The x scale is pinned to the zoom.
  const xmin = await page.evaluate(() => document.querySelector('#charts .chart[data-metric="kappa_ema"] .u-over') !== null);
  assert.ok(xmin);
  await page.locator("#compare-view button", { hasText: "reset zoom" }).click();
  await until("zoom gone from the URL", async () => hashParams().get("from") === null);
  await page.locator("#compare-tag").selectOption("all");
  await page.locator("#compare-view[data-ready='1']").waitFor();
  await sleep(300);
  await page.mouse.move(5, 5);
  await page.screenshot({ path: path.join(OUT, "compare.png"), fullPage: true });
  assert.deepEqual(pageErrors, []);
});

test("x=wall puts the runs on seconds since their first point", async () => {
  await page.goto(daemon.base + "/#/compare?runs=" + runNames.join(",") + "&tag=all&x=wall");
  await page.locator("#compare-view[data-ready='1']").waitFor({ timeout: 30000 });
  assert.equal(await page.locator("#compare-x").inputValue(), "wall");
  // Each run starts at 0 s; the last x is the longest run's duration.
  const series = await Promise.all(runNames.map((r) => getJSON(daemon, `/api/v1/series?run=${r}&tag=all&metrics=wall_time`)));
  const longest = Math.max(...series.map((d) => d.wall_time[d.wall_time.length - 1] - d.wall_time[0]));
  const last = Number(await page.locator("#charts").getAttribute("data-last-step"));
  assert.ok(Math.abs(last - longest) < 1e-6, `${last} vs ${longest}`);
  const legend = await page.locator('#charts .chart[data-metric="kappa_ema"] .u-legend').textContent();
  for (const run of runNames) assert.ok(legend.includes(run), legend);
  await page.locator("#compare-x").selectOption("step");
  await until("x=wall gone from the URL", async () => hashParams().get("x") === null);
  await until("steps back on the x axis", async () => (await page.locator("#charts").getAttribute("data-last-step")) === String(STEPS - 1));
  assert.deepEqual(pageErrors, []);
});

test("a URL naming an unknown run says so", async () => {
  await page.goto(daemon.base + "/#/compare?runs=cmp-calm,ghost");
  await until("an error line", async () => /ghost/.test(await page.locator("#compare-msg").textContent()));
  pageErrors.length = 0; // the 404 of /streams is logged by the browser
});

test("bench: 5 runs of GW_COMPARE_BENCH points each", { skip: !BENCH_POINTS }, async () => {
  const d = await startDaemon("bench", ["--rank-every", "64"]);
  const names = [0, 1, 2, 3, 4].map((i) => "bench-" + i);
  for (const [i, run] of names.entries())
    await publish(d, run, ["--steps", String(BENCH_POINTS + 1), "--rank", String(2 + i), "--noise", "0.01", "--sndhwm", String(BENCH_POINTS + 10), "--linger", "-1", "--wait", "30", "--k", "16"]);
  await until("every bench point stored", async () => {
    for (const run of names) {
      const s = await getJSON(d, `/api/v1/runs/${run}/streams`);
      if (!s.streams.every((x) => x.points >= BENCH_POINTS)) return false;
    }
    return true;
  }, 600000, 500);
  const ready = [];
  const zoom = [];
  for (let i = 0; i < 3; i++) {
    await page.goto("about:blank");
    const t0 = Date.now();
    await page.goto(`${d.base}/#/compare?runs=${names.join(",")}&tag=all`);
    await page.locator("#compare-view[data-ready='1']").waitFor({ timeout: 60000 });
    ready.push(Date.now() - t0);
    await page.locator("#compare-view[data-summary-ms]").waitFor({ timeout: 120000 });
    const ms = await page.locator("#compare-view").evaluate((e) => [e.dataset.loadMs, e.dataset.summaryMs]);
    console.log(`# compare bench: series fetch + draw ${ms[0]} ms, summary ${ms[1]} ms`);
    const over = page.locator('#charts .chart[data-metric="kappa_onestep"] .u-over');
    const box = await over.boundingBox();
    await page.mouse.move(box.x + box.width * 0.4, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 3 });
    // Zoom redraw: from the mouse-up to the next frame painted with the new x range.
    const t1 = await page.evaluate(() => performance.now());
    await page.mouse.up();
    const t2 = await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(performance.now()))));
    zoom.push(t2 - t1);
    await until("the zoom applied", async () => (await page.locator("#compare-view").getAttribute("data-view")) !== "");
  }
  ready.sort((a, b) => a - b);
  zoom.sort((a, b) => a - b);
  await page.goto("about:blank"); // no live feed left to a daemon about to stop
  console.log(`# compare bench: 5 runs x ${BENCH_POINTS} points: ready median ${ready[1]} ms (${ready.join(", ")}); zoom redraw median ${zoom[1].toFixed(1)} ms (${zoom.map((z) => z.toFixed(1)).join(", ")})`);
  await stop(d);
  pageErrors.length = 0;
});

test("the run page keeps its tags and zoom in the URL", async () => {
  await page.goto(daemon.base + "/#/run/cmp-calm?tags=fc1.weight&from=100&to=200");
  await page.locator("#run-view[data-ready='1']").waitFor({ timeout: 30000 });
  assert.equal(await page.locator("#run-view").getAttribute("data-series"), "fc1.weight");
  assert.equal(await page.locator("#run-view").getAttribute("data-view"), "100-200");
  await page.locator("#reset-zoom").click();
  await until("the zoom gone from the URL", async () => new URL(page.url()).hash === "#/run/cmp-calm?tags=fc1.weight");
  assert.equal(await page.locator("#run-view").getAttribute("data-view"), "");
  // A page opened without a query keeps its URL until something changes.
  await page.goto(daemon.base + "/#/run/cmp-mid");
  await page.locator("#run-view[data-ready='1']").waitFor({ timeout: 30000 });
  assert.equal(new URL(page.url()).hash, "#/run/cmp-mid");
  assert.deepEqual(pageErrors, []);
});
