// units.test.mjs — the dashboard's pure parts, in node without a browser:
// the SSE parser of the live feed (api.js), heatmap binning and onset
// (heatmap.js), and the step alignment of the charts (charts.js). Each is
// checked against a second, deliberately naive computation.
//
//   node --test tests/e2e/

import { test } from "node:test";
import assert from "node:assert/strict";

import { LiveFeed } from "../../web/js/api.js";
import { binRow, onsetOf } from "../../web/js/heatmap.js";
import { align } from "../../web/js/charts.js";

// ---- SSE ------------------------------------------------------------------

// The daemon's byte stream (daemon/live.c): hello with retry, a heartbeat
// comment, points, an alert, a resync.
const POINT1 = '{"run":"r","tag":"all","step":1,"kappa_ema":0.5,"loss":null}';
const POINT2 = '{"run":"r","tag":"layer/1.w","step":2,"kappa_ema":1e-3}';
const ALERT = '{"id":7,"rule":"kappa_collapse","run":"r","state":"firing"}';
const STREAM =
  "retry: 4500\n\n" +
  ": hb\n\n" +
  `event: point\ndata: ${POINT1}\n\n` +
  ": hb\n\n" +
  `event: alert\ndata: ${ALERT}\n\n` +
  `event: point\ndata: ${POINT2}\n\n` +
  "event: resync\ndata: {}\n\n";
const EXPECTED = [
  ["point", JSON.parse(POINT1)],
  ["alert", JSON.parse(ALERT)],
  ["point", JSON.parse(POINT2)],
  ["resync", {}],
];

/** Events LiveFeed.read() dispatches for text cut into these chunks. */
async function parse(chunks) {
  const feed = Object.create(LiveFeed.prototype);
  const got = [];
  feed.retryMs = 3000;
  feed.onEvent = (type, data) => got.push([type, data]);
  const enc = new TextEncoder();
  const body = new ReadableStream({
    start(c) {
      for (const ch of chunks) c.enqueue(typeof ch === "string" ? enc.encode(ch) : ch);
      c.close();
    },
  });
  await feed.read(body);
  return { got, retry: feed.retryMs };
}

test("SSE: the daemon's stream parses to its events, whole or cut anywhere", async () => {
  const whole = await parse([STREAM]);
  assert.deepEqual(whole.got, EXPECTED);
  assert.equal(whole.retry, 4500);
  // Every cut into two pieces, and a byte at a time (UTF-8 split too).
  for (let i = 1; i < STREAM.length; i++) {
    const { got } = await parse([STREAM.slice(0, i), STREAM.slice(i)]);
    assert.deepEqual(got, EXPECTED, `cut at ${i}`);
  }
  const bytes = new TextEncoder().encode(STREAM.replace("layer/1.w", "layér/1.w"));
  const { got } = await parse([...bytes].map((b) => new Uint8Array([b])));
  assert.equal(got[2][1].tag, "layér/1.w");
});

test("SSE: CRLF and CR line ends, multi-line data, fields without a space", async () => {
  const crlf = STREAM.replace(/\n/g, "\r\n");
  for (let i = 1; i < crlf.length; i += 7) {
    const { got } = await parse([crlf.slice(0, i), crlf.slice(i)]);
    assert.deepEqual(got, EXPECTED, `CRLF cut at ${i}`);
  }
  assert.deepEqual((await parse([STREAM.replace(/\n/g, "\r")])).got, EXPECTED);
  // data lines join with \n; "data:x" has no space to strip; no event: → message
  const { got } = await parse(['data:{"a":\ndata: [1,\ndata:2]}\n\n', "event:point\ndata:{}\n\n"]);
  assert.deepEqual(got, [["message", { a: [1, 2] }], ["point", {}]]);
  // an unterminated last event is not dispatched; bad JSON is dropped
  const tail = await parse(["event: point\ndata: {}\n\n", "event: x\ndata: {oops\n\n", 'event: point\ndata: {"z":1}\n']);
  assert.deepEqual(tail.got, [["point", {}]]);
});

// ---- heatmap ----------------------------------------------------------------

/** Naive binning: column of a step by scanning the column boundaries. */
function binNaive(step, v, x0, x1, ncols) {
  const span = x1 - x0 + 1;
  const first = (c) => x0 + Math.ceil((c * span) / ncols); // as heatmap.js hit()
  const cells = new Array(ncols).fill(NaN);
  step.forEach((s, i) => {
    if (s < x0 || s > x1 || v[i] === null) return;
    let c = 0;
    while (c + 1 < ncols && first(c + 1) <= s) c++;
    if (Number.isNaN(cells[c]) || v[i] > cells[c]) cells[c] = v[i];
  });
  return cells;
}

test("heatmap binning: max per column, one step per column when they are equal", () => {
  // The regression: 299 consecutive steps into 299 columns must fill every
  // column (float (s−x0)/span·ncols used to collide and leave stripes).
  for (const n of [7, 100, 299, 1000, 4097]) {
    const step = Array.from({ length: n }, (_, i) => i + 1);
    const cells = binRow({ step, v: step.map((s) => s * 0.5) }, 1, n, n);
    assert.ok(cells.every((c, i) => c === (i + 1) * 0.5), `n=${n}`);
  }
  // Random steps, values with nulls, columns fewer and more than steps.
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let trial = 0; trial < 200; trial++) {
    const x0 = Math.floor(rnd() * 50);
    const x1 = x0 + 1 + Math.floor(rnd() * 500);
    const ncols = 1 + Math.floor(rnd() * 700);
    const step = [];
    for (let s = x0 - 5; s <= x1 + 5; s++) if (rnd() < 0.6) step.push(s);
    const v = step.map(() => (rnd() < 0.1 ? null : rnd() * 10));
    const got = Array.from(binRow({ step, v }, x0, x1, Math.min(ncols, x1 - x0 + 1)));
    assert.deepEqual(got, binNaive(step, v, x0, x1, Math.min(ncols, x1 - x0 + 1)), `trial ${trial}`);
  }
});

test("heatmap onset: first sustained rise above twice the early median", () => {
  const row = (vals) => Float64Array.from(vals.map((x) => (x === null ? NaN : x)));
  const flat = Array(60).fill(1);
  assert.equal(onsetOf(row(flat)), -1);
  const jump = flat.map((x, i) => (i >= 40 ? 5 : x));
  assert.equal(onsetOf(row(jump)), 40);
  // two high cells are a blip, not an onset; the third in a row makes one
  const blip = flat.map((x, i) => (i === 20 || i === 21 ? 9 : i >= 45 ? 3 : x));
  assert.equal(onsetOf(row(blip)), 45);
  // exactly 2× is not above 2×
  assert.equal(onsetOf(row(flat.map((x, i) => (i >= 30 ? 2 : x)))), -1);
  // empty cells are skipped, not counted as values
  const gappy = jump.map((x, i) => (i % 3 === 0 ? null : x));
  assert.equal(onsetOf(row(gappy)), 40); // 40 % 3 ≠ 0: cell 40 holds a value
  assert.equal(onsetOf(row(Array(60).fill(null))), -1);
  assert.equal(onsetOf(row(Array(60).fill(0))), -1); // zero baseline: no ratio
});

// ---- chart alignment ------------------------------------------------------------

test("align: union of the tags' steps, null where a tag has no point", () => {
  const stores = new Map([
    ["a", { step: [1, 3, 5, 9], cols: { m: [10, 30, 50, 90], n: [1, null, 5, 9] } }],
    ["b", { step: [2, 3, 9, 12], cols: { m: [-2, -3, -9, -12], n: [2, 3, 9, 12] } }],
    ["c", { step: [], cols: { m: [], n: [] } }],
  ]);
  const tags = ["a", "b", "c", "missing"];
  const { x, cols } = align(stores, tags, ["m", "n"]);
  // reference: a Map per tag, looked up per step
  const ref = [...new Set([...stores.values()].flatMap((s) => s.step))].sort((p, q) => p - q);
  assert.deepEqual(x, ref);
  for (const metric of ["m", "n"]) {
    tags.forEach((t, ti) => {
      const s = stores.get(t);
      const byStep = new Map(s ? s.step.map((st, i) => [st, s.cols[metric][i]]) : []);
      assert.deepEqual(cols[metric][ti], ref.map((st) => (byStep.has(st) ? byStep.get(st) : null)), `${t}.${metric}`);
    });
  }
  // one tag: its own steps, untouched
  assert.deepEqual(align(stores, ["b"], ["m"]).x, [2, 3, 9, 12]);
});
