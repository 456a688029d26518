"""Client: read a gradwatchd's runs, series, alerts and summaries from Python.

The notebook side of gradwatch. A Client holds a base URL and an optional
bearer token and talks to the daemon's HTTP API (docs/CONTRACT.md, section
6) with urllib only, one request per call, no state between calls:

    c = gradwatch.Client("http://127.0.0.1:8080")        # or GRADWATCH_SERVER
    c.runs()                    # [{"run", "streams", "first_step", ..., "state"}]
    c.run("r1")                 # one of those, UnknownRun if absent
    c.streams("r1")             # [{"tag", "k", "points", ...}]
    df = c.series("r1", "all", ["kappa_ema", "rank_90"])   # DataFrame by step
    c.alerts("firing")          # [{...}] as /api/v1/alerts
    c.summary(["r1", "r2"])     # one row per (run, tag): the regime summary

Data flow of series(): GET /api/v1/series → the JSON text → one numpy
array per column, parsed by numpy straight from the text (null → NaN in
float64; steps int64; json.loads when the text is not the plain shape) → a
pandas DataFrame indexed by step, or the dict of arrays itself when pandas
is not installed (or frame=False).

Defaults come from the environment when an argument is left out: the URL
from GRADWATCH_SERVER (else http://127.0.0.1:8080), the token from
GRADWATCH_TOKEN. An argument given explicitly always wins.

Errors are one small hierarchy under GradwatchError: DaemonUnavailable
(connection refused, timeout, 503), Unauthorized (401: token missing or
wrong), NotFound → UnknownRun / UnknownStream (404), BadRequest (400, also a
ValueError) and ServerError (any other status, or an answer that is not
JSON). The daemon's own {"error": "..."} text is the exception's message.
"""

import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import warnings

import numpy as np

from . import _proto

DEFAULT_SERVER = "http://127.0.0.1:8080"
ENV_SERVER = "GRADWATCH_SERVER"
ENV_TOKEN = "GRADWATCH_TOKEN"


class GradwatchError(Exception):
    """Base of every error raised by Client. .status is the HTTP status (None
    when no answer came), .url the request's URL."""

    def __init__(self, message, status=None, url=None):
        super().__init__(message)
        self.status = status
        self.url = url


class DaemonUnavailable(GradwatchError, ConnectionError):
    """No answer from the daemon (down, unreachable, timed out) or 503."""


class Unauthorized(GradwatchError, PermissionError):
    """401: the daemon wants a bearer token and this one is missing or wrong."""


class NotFound(GradwatchError, LookupError):
    """404: no such endpoint, run or stream."""


class UnknownRun(NotFound):
    """404 for a run the daemon has never stored."""


class UnknownStream(NotFound):
    """404 for a (run, tag) the daemon has never stored."""


class BadRequest(GradwatchError, ValueError):
    """400: the daemon refused a parameter (the message names it)."""


class ServerError(GradwatchError):
    """Any other failure of the daemon (5xx), or an answer that is not JSON."""


def _have_pandas():
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def _names(value, what):
    """A list of names from a str ("a,b" or "a") or an iterable of str."""
    if isinstance(value, str):
        items = [v for v in value.split(",")]
    else:
        try:
            items = list(value)
        except TypeError:
            raise TypeError(f"{what} must be a str or a list of str, "
                            f"got {type(value).__name__}") from None
    if not items:
        raise ValueError(f"{what} is empty")
    for v in items:
        if not isinstance(v, str) or not v:
            raise ValueError(f"{what} must hold non-empty strings, got {v!r}")
    return items


def _step(value, what):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= int(value) < 2 ** 63:
        raise ValueError(f"{what} must be in 0..2^63-1, got {value}")
    return int(value)


def _columns_json(body, url):
    """The series document's columns through json.loads."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise ServerError(f"{url}: the answer is not JSON: {body[:100]!r}", 200, url) from None
    cols = {"step": np.array(doc.pop("step"), dtype=np.int64)}
    inc = doc.pop("incarnation", None)
    doc.pop("run", None)
    doc.pop("tag", None)
    for name, values in doc.items():
        cols[name] = np.array(values, dtype=np.float64)  # None (null) → NaN
    if inc is not None:
        cols["incarnation"] = np.array(inc, dtype=object)
    return cols


def _columns_fast(body):
    """The series document's columns parsed straight into numpy arrays, or
    None when the text is not the plain shape expected (then json.loads).

    /api/v1/series is {"run":R,"tag":T,"step":[ints],"m":[numbers|null],…};
    run and tag names hold no quote, bracket or comma (the wire grammar), so
    each column is the text between '"name":[' and the next ']'. numpy's
    text parser reads it (null as nan) about twice as fast as json.loads +
    np.array, and exactly; every column's element count is checked against
    its commas, so anything unexpected falls back to the JSON parser."""
    if not body.startswith(b'{"run":"'):
        return None
    cols, pos = {}, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns on text it cannot read
        while True:
            i = body.find(b'":[', pos)
            if i < 0:
                break
            k = body.rfind(b',"', pos, i)
            j = body.find(b"]", i + 3)
            if k < 0 or j < 0:
                return None
            name, seg = body[k + 2:i].decode("ascii", "replace"), body[i + 3:j]
            n = seg.count(b",") + 1 if seg else 0
            try:
                if name == "step":
                    a = np.fromstring(seg, dtype=np.int64, sep=",") if n else np.zeros(0, np.int64)
                else:
                    a = (np.fromstring(seg.replace(b"null", b"nan"), dtype=np.float64, sep=",")
                         if n else np.zeros(0))
            except (ValueError, DeprecationWarning):
                return None
            if len(a) != n or name in cols:
                return None
            cols[name] = a
            pos = j + 1
    if "step" not in cols or body[pos:].strip() != b"}":
        return None
    return {"step": cols.pop("step"), **cols}


class Client:
    """Read-only access to one gradwatchd over HTTP.

    Client(url=None, token=None, timeout=30.0): url is the daemon's HTTP
    address ("http://host:8080", GRADWATCH_SERVER when None), token its
    bearer token (GRADWATCH_TOKEN when None; "" means none at all), timeout
    the seconds one request may take.
    """

    def __init__(self, url=None, token=None, timeout=30.0):
        if url is None:
            url = os.environ.get(ENV_SERVER) or DEFAULT_SERVER
            src = ENV_SERVER if os.environ.get(ENV_SERVER) else "url"
        else:
            src = "url"
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{src} must be a URL like http://127.0.0.1:8080, got {url!r}")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc,
                                            parts.path.rstrip("/"), "", ""))
        if token is None:
            token = os.environ.get(ENV_TOKEN) or None
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        self._token = token.strip() if token else None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.timeout = float(timeout)

    def __repr__(self):
        return f"Client({self.url!r}, token={'***' if self._token else None})"

    # -- transport ---------------------------------------------------------

    def _get(self, path, params=None, not_found=NotFound, raw=False):
        """GET path?params and return the parsed JSON document (raw=True:
        its bytes)."""
        q = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.url + path + ("?" + urllib.parse.urlencode(q, safe=",") if q else "")
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise self._http_error(e, url, not_found) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DaemonUnavailable(f"no answer from gradwatchd at {self.url}: {reason}",
                                    None, url) from None
        if raw:
            return body
        try:
            return json.loads(body)
        except ValueError:
            raise ServerError(f"{url}: the answer is not JSON: {body[:100]!r}",
                              200, url) from None

    @staticmethod
    def _http_error(e, url, not_found):
        try:
            text = e.read()
            msg = json.loads(text)["error"]
        except Exception:  # a proxy's page, an empty body: keep the status line
            msg = f"{e.code} {e.reason}"
        if e.code == 401:
            return Unauthorized(f"{msg} (pass token= or set {ENV_TOKEN})", 401, url)
        if e.code == 404:
            return not_found(msg, 404, url)
        if e.code == 400:
            return BadRequest(msg, 400, url)
        if e.code == 503:
            return DaemonUnavailable(msg, 503, url)
        return ServerError(f"{e.code}: {msg}", e.code, url)

    @staticmethod
    def _run_path(run):
        return urllib.parse.quote(_proto.check_run(run).decode(), safe="")

    # -- runs and streams ----------------------------------------------------

    def runs(self, tag=None, labels=None):
        """Every run the daemon has stored: a list of dicts (run, streams,
        first_step, last_step, last_seen in Unix seconds, state, tags,
        labels). tag: a string or list of strings, labels: a dict; only runs
        with every such tag and label are returned (a label value of None
        asks only that the key exists)."""
        q = []
        for t in ([tag] if isinstance(tag, str) else (tag or [])):
            q.append(("tag", t))
        for k, v in (labels or {}).items():
            q.append(("label", k if v is None else f"{k}={v}"))
        path = "/api/v1/runs"
        if q:
            path += "?" + urllib.parse.urlencode(q)
        return self._get(path)["runs"]

    def run(self, name):
        """One run's entry (as in runs()) with its metadata under "meta":
        {"config", "tags", "labels", "client", "incarnation", "wall_time",
        "received"}, or None when the run never sent any; UnknownRun if the
        daemon has none."""
        return self._get(f"/api/v1/runs/{self._run_path(name)}", not_found=UnknownRun)

    def streams(self, run):
        """The run's streams: a list of dicts (tag, k, points, first_step,
        last_step, last_seen); UnknownRun if the daemon has none."""
        return self._get(f"/api/v1/runs/{self._run_path(run)}/streams",
                         not_found=UnknownRun)["streams"]

    # -- series -------------------------------------------------------------

    def series(self, run, tag, metrics=None, from_step=None, to_step=None,
               max_points=None, *, incarnations=False, frame=None):
        """A stream's points with from_step <= step <= to_step.

        metrics: a name or a list of names (docs/CONTRACT.md section 2),
        None for every metric. max_points downsamples on the daemon to at
        most that many points (each bucket's minimum and maximum kept).
        incarnations=True also returns the points a newer incarnation
        superseded, with an "incarnation" column (str: 64-bit ids).

        Returns a pandas DataFrame indexed by "step" (int64) with one float64
        column per metric (NaN where absent) when pandas is installed and
        frame is not False; else a dict {"step": int64 array, metric:
        float64 array, ...}. UnknownStream if (run, tag) was never stored.
        """
        run_b = _proto.check_run(run).decode()
        tag_b = _proto.check_tag(tag).decode()
        ms = None if metrics is None else _names(metrics, "metrics")
        f, t = _step(from_step, "from_step"), _step(to_step, "to_step")
        if max_points is not None:
            if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)):
                raise TypeError(f"max_points must be an int, got {type(max_points).__name__}")
        params = {"run": run_b, "tag": tag_b, "metrics": ",".join(ms) if ms else None,
                  "from": f, "to": t, "max_points": max_points,
                  "incarnations": "all" if incarnations else None}
        body = self._get("/api/v1/series", params, not_found=UnknownStream, raw=True)
        cols = None if incarnations else _columns_fast(body)
        if cols is None:
            cols = _columns_json(body, self.url)
        if frame is False or (frame is None and not _have_pandas()):
            return cols
        import pandas as pd
        step = cols.pop("step")
        return pd.DataFrame(cols, index=pd.Index(step, name="step"), copy=False)

    # -- alerts and summaries -------------------------------------------------

    def alerts(self, state="all", run=None, limit=None):
        """Alerts in state "firing", "resolved" or "all" (newest first), as
        /api/v1/alerts lists them; run= keeps those of one run."""
        if state not in ("all", "firing", "resolved"):
            raise ValueError(f"state must be 'all', 'firing' or 'resolved', got {state!r}")
        out = self._get("/api/v1/alerts", {"state": state, "limit": limit})["alerts"]
        if run is not None:
            out = [a for a in out if a.get("run") == run]
        return out

    def summary(self, runs, frame=None):
        """The regime summary of one or several runs: one row per (run, tag)
        with steps, p5/median/p95 of kappa_onestep, kappa_ema and
        kappa_linear, the final cumulative kappas, the median ranks and
        stable rank, and alerts fired (docs/CONTRACT.md section 6).

        runs: a name or a list of names. A DataFrame indexed by (run, tag)
        when pandas is installed and frame is not False, else a list of
        dicts. UnknownRun names the first run the daemon does not know.
        """
        names = [_proto.check_run(r).decode() for r in _names(runs, "runs")]
        rows = self._get("/api/v1/summary", {"runs": ",".join(names)},
                         not_found=UnknownRun)["rows"]
        if frame is False or (frame is None and not _have_pandas()):
            return rows
        import pandas as pd
        df = pd.DataFrame(rows)
        if len(df):
            df = df.set_index(["run", "tag"])
        return df
