// api.js — everything the dashboard says to gradwatchd: JSON GETs and the
// live feed, both with the optional bearer token.
//
// The token (the daemon's --http-token-file) lives in localStorage under
// "gradwatchToken" and goes out as `Authorization: Bearer …`. EventSource
// cannot send headers, so the live feed is read with fetch() and a streamed
// body, parsed here as Server-Sent Events (the WHATWG rules: `event:`,
// `data:`, `retry:`, comments, blank line = dispatch). One code path then
// serves daemons with and without a token, the HTTP status of a refusal is
// visible (EventSource hides it), and no token ever travels in a URL.
//
// LiveFeed states, moved by its loop only:
//   connecting ──response 200──▶ open ──body ends / network error──▶ waiting
//   connecting ──401 / 403──▶ refused (waits for a new token, then connecting)
//   waiting ──retry delay──▶ connecting        any ──close()──▶ closed
// Every (re)open after the first is announced with a `resync` event, since
// points published while the feed was down were never seen.

const TOKEN_KEY = "gradwatchToken";
// Without storage (some private modes) the token lasts for this page only.
let memoryToken = "";

export function getToken() {
  try {
    return window.localStorage.getItem(TOKEN_KEY) || "";
  } catch (e) {
    return memoryToken;
  }
}

const tokenListeners = new Set();
const authListeners = new Set();

export function setToken(token) {
  memoryToken = token;
  try {
    if (token) window.localStorage.setItem(TOKEN_KEY, token);
    else window.localStorage.removeItem(TOKEN_KEY);
  } catch (e) {
    /* kept in memoryToken */
  }
  for (const fn of tokenListeners) fn(token);
}

function token() {
  return getToken() || memoryToken;
}

/** fn(token) after every setToken. Returns an unsubscribe function. */
export function onTokenChange(fn) {
  tokenListeners.add(fn);
  return () => tokenListeners.delete(fn);
}

/** fn(status, message) whenever the daemon refuses a request (401/403). */
export function onAuthRefused(fn) {
  authListeners.add(fn);
  return () => authListeners.delete(fn);
}

function refused(status, message) {
  for (const fn of authListeners) fn(status, message);
}

function headers() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Server clock minus ours, in seconds, from the Date header of the latest
// response: "last seen 3 s ago" must not depend on the browser's clock.
let skew = 0;

/** Unix seconds on the daemon's clock. */
export function serverNow() {
  return Date.now() / 1000 + skew;
}

function noteDate(r) {
  const d = r.headers.get("Date");
  if (!d) return;
  const t = Date.parse(d);
  // Date has 1 s resolution; only correct skews that matter.
  if (!Number.isNaN(t)) {
    const s = t / 1000 - Date.now() / 1000;
    skew = Math.abs(s) > 2 ? s : 0;
  }
}

/** GET path → parsed JSON; HttpError on a 4xx/5xx (with the daemon's message). */
export async function getJSON(path, { signal } = {}) {
  const r = await fetch(path, { headers: headers(), signal, cache: "no-store" });
  noteDate(r);
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    if (r.ok) throw new HttpError(r.status, "bad JSON from " + path);
  }
  if (!r.ok) {
    const msg = (body && body.error) || "HTTP " + r.status;
    if (r.status === 401 || r.status === 403) refused(r.status, msg);
    throw new HttpError(r.status, msg);
  }
  return body;
}

/** Query string from an object, skipping null/undefined values. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) u.set(k, String(v));
  return u.toString();
}

/**
 * Run tasks (functions returning promises) at most `limit` at a time;
 * resolves to their results in order. One daemon serves many pages: a run
 * with hundreds of tags must not open hundreds of connections at once.
 */
export async function pool(tasks, limit = 6) {
  const out = new Array(tasks.length);
  let next = 0;
  async function worker() {
    while (next < tasks.length) {
      const i = next++;
      out[i] = await tasks[i]();
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  return out;
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

/**
 * The live feed of /api/v1/events. onEvent(type, data) gets every event
 * (`point`, `alert`, `resync`; data parsed as JSON), onState(state, detail)
 * every state change (see the diagram at the top of this file).
 */
export class LiveFeed {
  constructor(path, { onEvent, onState }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.state = "connecting";
    this.retryMs = 3000; // the daemon's `retry:` replaces it
    this.closed = false;
    this.ctrl = null;
    this.opens = 0;
    this.unsubToken = onTokenChange(() => this.kick());
    this.wake = null; // resolves the current wait early
    this.loop();
  }

  set(state, detail) {
    this.state = state;
    this.onState(state, detail);
  }

  /** Reconnect now (a new token, a page coming back to the foreground). */
  kick() {
    if (this.wake) this.wake.abort();
  }

  close() {
    this.closed = true;
    this.unsubToken();
    if (this.ctrl) this.ctrl.abort();
    this.kick();
    this.set("closed");
  }

  async wait(ms) {
    this.wake = new AbortController();
    await sleep(ms, this.wake.signal);
    this.wake = null;
  }

  async loop() {
    let backoff = 0;
    while (!this.closed) {
      this.set("connecting");
      this.ctrl = new AbortController();
      let opened = 0;
      try {
        const r = await fetch(this.path, {
          headers: { ...headers(), Accept: "text/event-stream" },
          signal: this.ctrl.signal,
          cache: "no-store",
        });
        if (r.status === 401 || r.status === 403) {
          let msg = "HTTP " + r.status;
          try { msg = (await r.json()).error || msg; } catch (e) { /* keep */ }
          refused(r.status, msg);
          this.set("refused", msg);
          await this.wait(60000); // until setToken kicks us
          continue;
        }
        if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
        opened = Date.now();
        this.opens++;
        this.set("open");
        if (this.opens > 1) this.onEvent("resync", {});
        await this.read(r.body);
        if (!this.closed) this.set("waiting", "the daemon closed the stream");
      } catch (e) {
        if (this.closed) break;
        this.set("waiting", e && e.message ? e.message : String(e));
      }
      if (this.closed) break;
      // A connection that lived a while resets the backoff.
      backoff = opened && Date.now() - opened > 10000 ? 0 : backoff + 1;
      await this.wait(Math.min(this.retryMs * Math.pow(2, Math.max(0, backoff - 1)), 30000));
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let type = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done && !buf.endsWith("\r")) return;
      if (!done) buf += value;
      let start = 0;
      for (;;) {
        // A line ends at \n, \r\n or \r; a \r last in the buffer may be half
        // of a \r\n, unless the stream has ended.
        let i = start;
        while (i < buf.length && buf[i] !== "\n" && buf[i] !== "\r") i++;
        if (i >= buf.length || (buf[i] === "\r" && i + 1 >= buf.length && !done)) break;
        const line = buf.slice(start, i);
        start = i + (buf[i] === "\r" && buf[i + 1] === "\n" ? 2 : 1);
        if (line === "") {
          if (data.length) this.dispatch(type || "message", data.join("\n"));
          type = "";
          data = [];
          continue;
        }
        if (line[0] === ":") continue; // comment (heartbeat)
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        let val = c < 0 ? "" : line.slice(c + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "event") type = val;
        else if (field === "data") data.push(val);
        else if (field === "retry" && /^\d+$/.test(val)) this.retryMs = Math.max(500, Number(val));
      }
      buf = buf.slice(start);
      if (done) return;
    }
  }

  dispatch(type, text) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (e) {
      return; // not ours to crash on
    }
    this.onEvent(type, data);
  }
}
