/* cli_http.c — `gradwatch query`, `tail` and `export`: clients of the
 * daemon's HTTP API (SPEC §6) over libcurl, JSON parsed with cJSON.
 *
 *   query RUN TAG METRIC...  GET /api/v1/series → aligned table, CSV or JSON
 *   tail                     GET /api/v1/events (Server-Sent Events) → one
 *                            line per point / alert, until Ctrl-C or --count
 *   export RUN               GET /api/v1/runs/{run}/streams, then
 *                            /api/v1/series per tag → CSV or JSON lines
 *
 * Numbers in CSV and JSON output are printed so they read back as exactly
 * the value the server sent (cli_fmt_exact); the table rounds to 6 digits.
 * null is "-" in the table, empty in CSV, null in JSON.
 *
 * The SSE parser follows the WHATWG event-stream rules that matter here:
 * lines end in LF, CRLF or CR (also across reads), "field: value" with one
 * optional space, ':' comments ignored, data lines joined with LF, an empty
 * line dispatches the event. tail reconnects (1, 2, 4 … 10 s apart) when an
 * established stream ends or breaks; a first connection that fails, or any
 * non-200 answer, is an error.
 */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#define BODY_MAX ((size_t)1 << 31) /* largest response kept in memory */
#define ERR_BODY_MAX 65536

/* ---- growable buffer ------------------------------------------------------------ */

typedef struct buf_s {
  char *p;
  size_t n, cap;
  int oom; /* an append failed (or exceeded the limit) */
} buf_t;

static void buf_put(buf_t *b, const char *s, size_t n, size_t limit) {
  if (b->oom) return;
  if (b->n + n + 1 > limit) {
    b->oom = 1;
    return;
  }
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(buf_t *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) {
    b->oom = 1;
    return;
  }
  buf_put(b, tmp, (size_t)n, BODY_MAX);
}

static void buf_free(buf_t *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---- HTTP options and requests ---------------------------------------------------- */

enum { H_BASE = 900, H_SERVER = H_BASE, H_TOKEN, H_TOKEN_FILE, H_TIMEOUT };
#define HTTP_LONG_OPTIONS                                      \
  {"server", required_argument, NULL, H_SERVER},               \
      {"token", required_argument, NULL, H_TOKEN},             \
      {"token-file", required_argument, NULL, H_TOKEN_FILE},   \
      {"timeout", required_argument, NULL, H_TIMEOUT}

static const char http_help[] =
    "Server:\n"
    "  --server URL          gradwatchd's HTTP address (default http://127.0.0.1:8080)\n"
    "  --token TOKEN         bearer token (the daemon's --http-token-file)\n"
    "  --token-file FILE     read the token from the first line of FILE\n"
    "  --timeout SECONDS     give up on a request after this long (default 30;\n"
    "                        tail: connecting only)\n";

typedef struct http_s {
  char *server; /* no trailing '/' (owned) */
  char *token;  /* owned, NULL = none */
  double timeout;
  CURL *curl;
  struct curl_slist *headers;
  char errbuf[CURL_ERROR_SIZE];
} http_t;

static void http_init(http_t *h) {
  memset(h, 0, sizeof *h);
  h->timeout = 30;
}

static void http_free(http_t *h) {
  if (h->curl) curl_easy_cleanup(h->curl);
  curl_slist_free_all(h->headers);
  free(h->server);
  if (h->token) memset(h->token, 0, strlen(h->token));
  free(h->token);
  memset(h, 0, sizeof *h);
}

static char *trimmed_dup(const char *s, size_t n) {
  while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
  while (n > 0 && (*s == ' ' || *s == '\t')) {
    s++;
    n--;
  }
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

static int http_option(http_t *h, const char *cmd, int c, const char *arg) {
  switch (c) {
  case H_SERVER: {
    size_t n = strlen(arg);
    if (strncmp(arg, "http://", 7) != 0 && strncmp(arg, "https://", 8) != 0)
      return cli_usage(cmd, "--server wants a URL like http://127.0.0.1:8080, not '%s'", arg);
    while (n > 0 && arg[n - 1] == '/') n--;
    free(h->server);
    if ((h->server = trimmed_dup(arg, n)) == NULL) return cli_fail(cmd, "out of memory");
    return 0;
  }
  case H_TOKEN:
    free(h->token);
    if ((h->token = trimmed_dup(arg, strlen(arg))) == NULL) return cli_fail(cmd, "out of memory");
    if (h->token[0] == '\0') return cli_usage(cmd, "--token is empty");
    return 0;
  case H_TOKEN_FILE: {
    char line[4096];
    FILE *f = fopen(arg, "r");
    if (f == NULL) return cli_fail(cmd, "--token-file %s: %s", arg, strerror(errno));
    if (fgets(line, sizeof line, f) == NULL) line[0] = '\0';
    fclose(f);
    free(h->token);
    if ((h->token = trimmed_dup(line, strlen(line))) == NULL) return cli_fail(cmd, "out of memory");
    if (h->token[0] == '\0') return cli_fail(cmd, "--token-file %s: the first line is empty", arg);
    return 0;
  }
  case H_TIMEOUT:
    return cli_opt_double(cmd, "--timeout", arg, 0.001, 86400, &h->timeout);
  }
  return cli_usage(cmd, "internal: unhandled option %d", c);
}

/* Create the curl handle and headers (after option parsing). */
static int http_open(http_t *h, const char *cmd) {
  if (h->server == NULL && (h->server = trimmed_dup("http://127.0.0.1:8080", 21)) == NULL)
    return cli_fail(cmd, "out of memory");
  if ((h->curl = curl_easy_init()) == NULL) return cli_fail(cmd, "cannot initialize libcurl");
  h->headers = curl_slist_append(NULL, "Accept: application/json, text/event-stream");
  if (h->token) {
    buf_t a = {0};
    buf_printf(&a, "Authorization: Bearer %s", h->token);
    if (!a.oom) {
      struct curl_slist *l = curl_slist_append(h->headers, a.p);
      if (l) h->headers = l;
      else a.oom = 1;
    }
    if (a.p) memset(a.p, 0, a.n);
    int oom = a.oom;
    buf_free(&a);
    if (oom) return cli_fail(cmd, "out of memory");
  }
  return h->headers ? 0 : cli_fail(cmd, "out of memory");
}

/* Append "&name=value" (or "?name=value" first), value URL-escaped. */
static void url_param(http_t *h, buf_t *url, const char *name, const char *value) {
  char *e = curl_easy_escape(h->curl, value, 0);
  if (e == NULL) {
    url->oom = 1;
    return;
  }
  buf_printf(url, "%c%s=", strchr(url->p ? url->p : "", '?') ? '&' : '?', name);
  buf_put(url, e, strlen(e), BODY_MAX);
  curl_free(e);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud) {
  buf_t *b = ud;
  buf_put(b, p, size * n, BODY_MAX);
  return b->oom ? 0 : size * n;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
  (void)ud, (void)a, (void)b, (void)c, (void)d;
  return cli_stopped(); /* nonzero aborts the transfer */
}

static void common_opts(http_t *h, const char *url) {
  curl_easy_reset(h->curl);
  curl_easy_setopt(h->curl, CURLOPT_URL, url);
  curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, h->headers);
  curl_easy_setopt(h->curl, CURLOPT_USERAGENT, "gradwatch/" GW_VERSION);
  curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, h->errbuf);
  curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)(h->timeout * 1000));
  curl_easy_setopt(h->curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(h->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "http,https");
  h->errbuf[0] = '\0';
}

/* The message of a non-200 answer: its {"error": "..."} or its first bytes. */
static int server_error(const char *cmd, long status, const buf_t *body) {
  cJSON *j = body->p ? cJSON_ParseWithLength(body->p, body->n) : NULL;
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
  if (cJSON_IsString(e))
    cli_fail(cmd, "server answered %ld: %s", status, e->valuestring);
  else
    cli_fail(cmd, "server answered %ld%s%.200s", status, body->n ? ": " : "", body->p ? body->p : "");
  cJSON_Delete(j);
  return CLI_FAIL;
}

/* GET h->server + path; on 200 the parsed JSON document is in *out. */
static int http_get_json(http_t *h, const char *cmd, const char *path, cJSON **out) {
  buf_t url = {0}, body = {0};
  long status = 0;
  CURLcode cc;
  int rc = CLI_FAIL;

  *out = NULL;
  buf_printf(&url, "%s", h->server);
  buf_put(&url, path, strlen(path), BODY_MAX);
  if (url.oom) {
    buf_free(&url);
    return cli_fail(cmd, "out of memory");
  }
  common_opts(h, url.p);
  curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, (long)(h->timeout * 1000));
  curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(h->curl, CURLOPT_ACCEPT_ENCODING, "");
  cc = curl_easy_perform(h->curl);
  if (cc == CURLE_ABORTED_BY_CALLBACK) {
    rc = CLI_FAIL; /* interrupted: say nothing more */
    goto done;
  }
  if (cc != CURLE_OK) {
    if (body.oom)
      cli_fail(cmd, "%s: response too large or out of memory", url.p);
    else
      cli_fail(cmd, "cannot get %s: %s", url.p, h->errbuf[0] ? h->errbuf : curl_easy_strerror(cc));
    goto done;
  }
  curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status != 200) {
    rc = server_error(cmd, status, &body);
    goto done;
  }
  if ((*out = cJSON_ParseWithLength(body.p ? body.p : "", body.n)) == NULL) {
    cli_fail(cmd, "%s: the answer is not JSON: %.100s", url.p, body.p ? body.p : "(empty)");
    goto done;
  }
  rc = 0;
done:
  buf_free(&url);
  buf_free(&body);
  return rc;
}

/* 0 if everything written to stdout so far went out; else CLI_FAIL, with a
 * message unless the reader simply went away (EPIPE: `| head`). */
static int stdout_ok(const char *cmd) {
  if (fflush(stdout) == 0 && !ferror(stdout)) return 0;
  if (errno != EPIPE) cli_fail(cmd, "writing the output: %s", strerror(errno));
  return CLI_FAIL;
}

/* ---- values ---------------------------------------------------------------------------- */

enum { FMT_TABLE, FMT_CSV, FMT_JSON };

/* One value as text in *b (reset first). */
static void fmt_value(const cJSON *v, int fmt, buf_t *b) {
  char num[64];
  b->n = 0;
  if (b->p) b->p[0] = '\0';
  if (v == NULL || cJSON_IsNull(v)) {
    buf_put(b, fmt == FMT_TABLE ? "-" : fmt == FMT_JSON ? "null" : "", fmt == FMT_JSON ? 4 : fmt == FMT_TABLE, BODY_MAX);
  } else if (cJSON_IsNumber(v)) {
    if (fmt == FMT_TABLE)
      snprintf(num, sizeof num, "%.6g", v->valuedouble);
    else
      cli_fmt_exact(v->valuedouble, num, sizeof num);
    buf_put(b, num, strlen(num), BODY_MAX);
  } else if (cJSON_IsString(v) && fmt != FMT_JSON) {
    const char *s = v->valuestring;
    int quote = fmt == FMT_CSV && strpbrk(s, ",\"\r\n") != NULL;
    if (quote) buf_put(b, "\"", 1, BODY_MAX);
    for (; *s; s++) {
      if (quote && *s == '"') buf_put(b, "\"", 1, BODY_MAX);
      buf_put(b, s, 1, BODY_MAX);
    }
    if (quote) buf_put(b, "\"", 1, BODY_MAX);
  } else { /* bool, array, object, or a string in JSON: compact JSON */
    char *j = cJSON_PrintUnformatted(v);
    if (j == NULL) {
      b->oom = 1;
      return;
    }
    int quote = fmt == FMT_CSV && strpbrk(j, ",\"\r\n") != NULL;
    if (quote) buf_put(b, "\"", 1, BODY_MAX);
    for (const char *s = j; *s; s++) {
      if (quote && *s == '"') buf_put(b, "\"", 1, BODY_MAX);
      buf_put(b, s, 1, BODY_MAX);
    }
    if (quote) buf_put(b, "\"", 1, BODY_MAX);
    free(j);
  }
}

/* A step: an integer when it is one (steps are 0..2^63-1). */
static void fmt_step(const cJSON *v, int fmt, buf_t *b) {
  if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 0x1p63 &&
      v->valuedouble == floor(v->valuedouble)) {
    b->n = 0;
    buf_printf(b, "%.0f", v->valuedouble);
  } else {
    fmt_value(v, fmt, b);
  }
}

/* A JSON string literal for a name (run/tag/metric names need no escapes,
 * but a server could send anything). */
static void json_str(const char *s, buf_t *b) {
  cJSON *t = cJSON_CreateString(s);
  char *j = t ? cJSON_PrintUnformatted(t) : NULL;
  if (j) buf_put(b, j, strlen(j), BODY_MAX);
  else b->oom = 1;
  free(j);
  cJSON_Delete(t);
}

/* ---- series ------------------------------------------------------------------------------- */

typedef struct series_s {
  cJSON *doc;
  const cJSON *step;
  size_t n;         /* points */
  size_t ncols;
  const char **names; /* borrowed from doc or argv */
  const cJSON **cols; /* arrays, or NULL when a column is missing (all null) */
} series_t;

static void series_free(series_t *s) {
  cJSON_Delete(s->doc);
  free(s->names);
  free(s->cols);
  memset(s, 0, sizeof *s);
}

/* Fetch /api/v1/series. metrics: names (n_metrics of them), or NULL for all
 * (columns then = the answer's keys other than run, tag, step, in order).
 * strict: a requested column missing from the answer is an error. */
static int series_get(http_t *h, const char *cmd, const char *run, const char *tag,
                      const char *const *metrics, size_t n_metrics, const char *from,
                      const char *to, const char *max_points, int strict, series_t *s) {
  buf_t path = {0};
  int rc;

  memset(s, 0, sizeof *s);
  buf_printf(&path, "/api/v1/series");
  url_param(h, &path, "run", run);
  url_param(h, &path, "tag", tag);
  if (metrics) {
    buf_t list = {0};
    for (size_t i = 0; i < n_metrics; i++) {
      if (i) buf_put(&list, ",", 1, BODY_MAX);
      buf_put(&list, metrics[i], strlen(metrics[i]), BODY_MAX);
    }
    if (!list.oom) url_param(h, &path, "metrics", list.p);
    path.oom |= list.oom;
    buf_free(&list);
  }
  if (from) url_param(h, &path, "from", from);
  if (to) url_param(h, &path, "to", to);
  if (max_points) url_param(h, &path, "max_points", max_points);
  if (path.oom) {
    buf_free(&path);
    return cli_fail(cmd, "out of memory");
  }
  rc = http_get_json(h, cmd, path.p, &s->doc);
  buf_free(&path);
  if (rc != 0) return rc;

  s->step = cJSON_GetObjectItemCaseSensitive(s->doc, "step");
  if (!cJSON_IsObject(s->doc) || !cJSON_IsArray(s->step)) {
    series_free(s);
    return cli_fail(cmd, "malformed answer for %s/%s: no \"step\" array", run, tag);
  }
  s->n = (size_t)cJSON_GetArraySize(s->step);
  if (metrics) {
    s->ncols = n_metrics;
  } else {
    for (const cJSON *c = s->doc->child; c; c = c->next)
      if (strcmp(c->string, "run") && strcmp(c->string, "tag") && strcmp(c->string, "step")) s->ncols++;
  }
  s->names = calloc(s->ncols ? s->ncols : 1, sizeof *s->names);
  s->cols = calloc(s->ncols ? s->ncols : 1, sizeof *s->cols);
  if (!s->names || !s->cols) {
    series_free(s);
    return cli_fail(cmd, "out of memory");
  }
  if (metrics) {
    for (size_t i = 0; i < n_metrics; i++) s->names[i] = metrics[i];
  } else {
    size_t i = 0;
    for (const cJSON *c = s->doc->child; c; c = c->next)
      if (strcmp(c->string, "run") && strcmp(c->string, "tag") && strcmp(c->string, "step"))
        s->names[i++] = c->string;
  }
  for (size_t i = 0; i < s->ncols; i++) {
    const cJSON *col = cJSON_GetObjectItemCaseSensitive(s->doc, s->names[i]);
    if (col == NULL && !strict) continue;
    if (!cJSON_IsArray(col) || (size_t)cJSON_GetArraySize(col) != s->n) {
      rc = cli_fail(cmd, "malformed answer for %s/%s: \"%s\" is %s", run, tag, s->names[i],
                    col == NULL ? "missing" : "not an array as long as \"step\"");
      series_free(s);
      return rc;
    }
    s->cols[i] = col;
  }
  return 0;
}

/* Iterate rows: cursors over step and each column (cJSON arrays are lists). */
typedef struct rows_s {
  const cJSON *step;
  const cJSON **cur;
} rows_t;

static void rows_rewind(rows_t *r, const series_t *s);

/* Allocate the cursors (freeing earlier ones) and point them at row 0. */
static int rows_start(rows_t *r, const series_t *s) {
  free(r->cur);
  r->cur = calloc(s->ncols ? s->ncols : 1, sizeof *r->cur);
  if (r->cur == NULL) return -1;
  rows_rewind(r, s);
  return 0;
}

static void rows_rewind(rows_t *r, const series_t *s) {
  r->step = s->step->child;
  for (size_t i = 0; i < s->ncols; i++) r->cur[i] = s->cols[i] ? s->cols[i]->child : NULL;
}

static void rows_next(rows_t *r, size_t ncols) {
  r->step = r->step->next;
  for (size_t i = 0; i < ncols; i++)
    if (r->cur[i]) r->cur[i] = r->cur[i]->next;
}

/* ---- query ------------------------------------------------------------------------------------ */

static const char query_help[] =
    "Usage: gradwatch query RUN TAG METRIC... [OPTIONS]\n"
    "\n"
    "Print the stored points of stream RUN/TAG (GET /api/v1/series): a column for\n"
    "the step and one per METRIC (kappa_onestep, kappa_ema, rank_90, ... or 'all').\n"
    "\n"
    "  --csv                 comma-separated values with a header line\n"
    "  --json                the server's columnar JSON object, unchanged\n"
    "  --from STEP, --to STEP  only steps in this range (inclusive)\n"
    "  --max-points N        downsample to at most N points (min/max preserving)\n";

enum { Q_CSV = 1, Q_JSON, Q_FROM, Q_TO, Q_MAX, Q_HELP };

static const struct option query_opts[] = {
    {"csv", no_argument, NULL, Q_CSV},
    {"json", no_argument, NULL, Q_JSON},
    {"from", required_argument, NULL, Q_FROM},
    {"to", required_argument, NULL, Q_TO},
    {"max-points", required_argument, NULL, Q_MAX},
    {"help", no_argument, NULL, Q_HELP},
    HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

static int check_names(const char *cmd, const char *run, const char *tag) {
  if (run && gw_proto_check_run(run, strlen(run)) != 0)
    return cli_usage(cmd, "bad run name '%s': 1..128 of [A-Za-z0-9._:-]", run);
  if (tag && gw_proto_check_tag(tag, strlen(tag)) != 0)
    return cli_usage(cmd, "bad tag '%s': 1..128 of [A-Za-z0-9._:/-]", tag);
  return 0;
}

static void print_table(const series_t *s, rows_t *r) {
  size_t nc = s->ncols + 1, *w = calloc(nc, sizeof *w);
  buf_t cell = {0};
  if (w == NULL) return;
  w[0] = strlen("step");
  for (size_t i = 0; i < s->ncols; i++) w[i + 1] = strlen(s->names[i]);
  for (size_t row = 0; row < s->n; row++, rows_next(r, s->ncols)) {
    fmt_step(r->step, FMT_TABLE, &cell);
    if (cell.n > w[0]) w[0] = cell.n;
    for (size_t i = 0; i < s->ncols; i++) {
      fmt_value(r->cur[i], FMT_TABLE, &cell);
      if (cell.n > w[i + 1]) w[i + 1] = cell.n;
    }
  }
  rows_rewind(r, s);
  printf("%*s", (int)w[0], "step");
  for (size_t i = 0; i < s->ncols; i++) printf("  %*s", (int)w[i + 1], s->names[i]);
  putchar('\n');
  for (size_t row = 0; row < s->n; row++, rows_next(r, s->ncols)) {
    fmt_step(r->step, FMT_TABLE, &cell);
    printf("%*s", (int)w[0], cell.p);
    for (size_t i = 0; i < s->ncols; i++) {
      fmt_value(r->cur[i], FMT_TABLE, &cell);
      printf("  %*s", (int)w[i + 1], cell.p);
    }
    putchar('\n');
  }
  buf_free(&cell);
  free(w);
}

int cli_query(int argc, char **argv) {
  const char *cmd = "query", *from = NULL, *to = NULL, *maxp = NULL;
  http_t h;
  series_t s = {0};
  rows_t r = {0};
  int c, rc = 0, fmt = FMT_TABLE, status = CLI_FAIL;
  uint64_t u;

  http_init(&h);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", query_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case Q_HELP:
      printf("%s%s", query_help, http_help);
      http_free(&h);
      return CLI_OK;
    case Q_CSV: fmt = FMT_CSV; break;
    case Q_JSON: fmt = FMT_JSON; break;
    case Q_FROM: rc = cli_opt_u64(cmd, "--from", optarg, 0, INT64_MAX, &u); from = optarg; break;
    case Q_TO: rc = cli_opt_u64(cmd, "--to", optarg, 0, INT64_MAX, &u); to = optarg; break;
    case Q_MAX: rc = cli_opt_u64(cmd, "--max-points", optarg, 2, 1000000, &u); maxp = optarg; break;
    case '?':
    case ':': rc = cli_bad_option(cmd, c, argv); break;
    default: rc = http_option(&h, cmd, c, optarg);
    }
  }
  if (rc != 0) {
    http_free(&h);
    return rc;
  }
  if (argc - optind < 3) {
    http_free(&h);
    return cli_usage(cmd, "need RUN TAG and at least one METRIC");
  }
  const char *run = argv[optind], *tag = argv[optind + 1];
  char **metrics = argv + optind + 2;
  size_t nm = (size_t)(argc - optind - 2);
  int all = nm == 1 && strcmp(metrics[0], "all") == 0;
  if ((rc = check_names(cmd, run, tag)) != 0) {
    http_free(&h);
    return rc;
  }
  for (size_t i = 0; i < nm && !all; i++)
    if (metrics[i][0] == '\0' || strchr(metrics[i], ',')) {
      http_free(&h);
      return cli_usage(cmd, "bad metric name '%s' (give metrics as separate arguments)", metrics[i]);
    }
  cli_catch_signals();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (http_open(&h, cmd) != 0) goto done;
  if (series_get(&h, cmd, run, tag, all ? NULL : (const char *const *)metrics, nm, from, to, maxp, 1,
                 &s) != 0)
    goto done;
  if (fmt == FMT_JSON) {
    char *j = cJSON_PrintUnformatted(s.doc);
    if (j == NULL) {
      cli_fail(cmd, "out of memory");
      goto done;
    }
    puts(j);
    free(j);
  } else if (rows_start(&r, &s) != 0) {
    cli_fail(cmd, "out of memory");
    goto done;
  } else if (fmt == FMT_TABLE) {
    print_table(&s, &r);
  } else {
    buf_t cell = {0};
    fputs("step", stdout);
    for (size_t i = 0; i < s.ncols; i++) printf(",%s", s.names[i]);
    putchar('\n');
    for (size_t row = 0; row < s.n; row++, rows_next(&r, s.ncols)) {
      fmt_step(r.step, FMT_CSV, &cell);
      fputs(cell.p, stdout);
      for (size_t i = 0; i < s.ncols; i++) {
        fmt_value(r.cur[i], FMT_CSV, &cell);
        printf(",%s", cell.p ? cell.p : "");
      }
      putchar('\n');
    }
    buf_free(&cell);
  }
  if (stdout_ok(cmd) != 0) goto done;
  status = CLI_OK;
done:
  free(r.cur);
  series_free(&s);
  http_free(&h);
  curl_global_cleanup();
  return status;
}

/* ---- export --------------------------------------------------------------------------------------- */

static const char export_help[] =
    "Usage: gradwatch export RUN [OPTIONS]\n"
    "\n"
    "Write the stored points of every stream of RUN to stdout, one line per point\n"
    "(GET /api/v1/runs/RUN/streams, then /api/v1/series for each tag).\n"
    "\n"
    "  --format csv|jsonl    CSV with a header (run,tag,step,metrics...) or one JSON\n"
    "                        object per line (default csv)\n"
    "  --tag TAG             only this stream\n"
    "  --metrics LIST|all    comma-separated metric names (default all)\n"
    "  --from STEP, --to STEP  only steps in this range (inclusive)\n";

enum { E_FORMAT = 1, E_TAG, E_METRICS, E_FROM, E_TO, E_HELP };

static const struct option export_opts[] = {
    {"format", required_argument, NULL, E_FORMAT},
    {"tag", required_argument, NULL, E_TAG},
    {"metrics", required_argument, NULL, E_METRICS},
    {"from", required_argument, NULL, E_FROM},
    {"to", required_argument, NULL, E_TO},
    {"help", no_argument, NULL, E_HELP},
    HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

/* Split "a,b,c" into a NULL-free array of borrowed pointers into a copy. */
static int split_list(const char *cmd, const char *spec, char **copy, const char ***out, size_t *n) {
  size_t cap = 1;
  for (const char *p = spec; *p; p++) cap += *p == ',';
  *copy = strdup(spec);
  *out = calloc(cap, sizeof **out);
  *n = 0;
  if (*copy == NULL || *out == NULL) return cli_fail(cmd, "out of memory");
  for (char *p = *copy;;) {
    char *e = strchr(p, ',');
    if (e) *e = '\0';
    if (*p == '\0') return cli_usage(cmd, "empty name in --metrics '%s'", spec);
    (*out)[(*n)++] = p;
    if (!e) break;
    p = e + 1;
  }
  return 0;
}

static void export_rows(const char *run, const char *tag, const series_t *s, rows_t *r,
                        const series_t *head, int jsonl, buf_t *line, buf_t *cell) {
  for (size_t row = 0; row < s->n; row++, rows_next(r, s->ncols)) {
    line->n = 0;
    if (jsonl) {
      buf_put(line, "{\"run\":", 7, BODY_MAX);
      json_str(run, line);
      buf_put(line, ",\"tag\":", 7, BODY_MAX);
      json_str(tag, line);
      fmt_step(r->step, FMT_JSON, cell);
      buf_printf(line, ",\"step\":%s", cell->p);
      for (size_t i = 0; i < s->ncols; i++) {
        buf_put(line, ",", 1, BODY_MAX);
        json_str(s->names[i], line);
        fmt_value(r->cur[i], FMT_JSON, cell);
        buf_put(line, ":", 1, BODY_MAX);
        buf_put(line, cell->p, cell->n, BODY_MAX);
      }
      buf_put(line, "}", 1, BODY_MAX);
    } else {
      buf_printf(line, "%s,%s,", run, tag);
      fmt_step(r->step, FMT_CSV, cell);
      buf_put(line, cell->p, cell->n, BODY_MAX);
      /* Columns of the header, looked up by name in this stream. */
      for (size_t i = 0; i < head->ncols; i++) {
        const cJSON *v = NULL;
        for (size_t j = 0; j < s->ncols; j++)
          if (strcmp(s->names[j], head->names[i]) == 0) {
            v = r->cur[j];
            break;
          }
        fmt_value(v, FMT_CSV, cell);
        buf_put(line, ",", 1, BODY_MAX);
        if (cell->n) buf_put(line, cell->p, cell->n, BODY_MAX);
      }
    }
    if (line->oom || ferror(stdout)) return; /* the caller reports it */
    fwrite(line->p, 1, line->n, stdout);
    putchar('\n');
  }
}

int cli_export(int argc, char **argv) {
  const char *cmd = "export", *tag = NULL, *from = NULL, *to = NULL, *mspec = NULL;
  http_t h;
  cJSON *streams_doc = NULL;
  series_t head = {0}, s = {0};
  rows_t r = {0};
  char *mcopy = NULL;
  const char **metrics = NULL, **tags = NULL;
  size_t nm = 0, nt = 0;
  buf_t line = {0}, cell = {0};
  int c, rc = 0, jsonl = 0, status = CLI_FAIL;
  uint64_t u;

  http_init(&h);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", export_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case E_HELP:
      printf("%s%s", export_help, http_help);
      http_free(&h);
      return CLI_OK;
    case E_FORMAT:
      if (strcmp(optarg, "csv") == 0) jsonl = 0;
      else if (strcmp(optarg, "jsonl") == 0) jsonl = 1;
      else rc = cli_usage(cmd, "--format is csv or jsonl, not '%s'", optarg);
      break;
    case E_TAG: tag = optarg; break;
    case E_METRICS: mspec = optarg; break;
    case E_FROM: rc = cli_opt_u64(cmd, "--from", optarg, 0, INT64_MAX, &u); from = optarg; break;
    case E_TO: rc = cli_opt_u64(cmd, "--to", optarg, 0, INT64_MAX, &u); to = optarg; break;
    case '?':
    case ':': rc = cli_bad_option(cmd, c, argv); break;
    default: rc = http_option(&h, cmd, c, optarg);
    }
  }
  if (rc == 0 && argc - optind < 1) rc = cli_usage(cmd, "which RUN?");
  if (rc == 0 && argc - optind > 1) rc = cli_usage(cmd, "one RUN only (got '%s' too)", argv[optind + 1]);
  if (rc == 0) rc = check_names(cmd, argv[optind], tag);
  if (rc == 0 && mspec && strcmp(mspec, "all") != 0) rc = split_list(cmd, mspec, &mcopy, &metrics, &nm);
  if (rc != 0) {
    status = rc;
    goto done;
  }
  const char *run = argv[optind];
  cli_catch_signals();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (http_open(&h, cmd) != 0) goto done_curl;

  if (tag) {
    nt = 1;
    if ((tags = calloc(1, sizeof *tags)) == NULL) goto oom;
    tags[0] = tag;
  } else {
    buf_t path = {0};
    char *e = curl_easy_escape(h.curl, run, 0);
    if (e) buf_printf(&path, "/api/v1/runs/%s/streams", e);
    curl_free(e);
    if (e == NULL || path.oom) {
      buf_free(&path);
      goto oom;
    }
    rc = http_get_json(&h, cmd, path.p, &streams_doc);
    buf_free(&path);
    if (rc != 0) goto done_curl;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(streams_doc, "streams");
    if (!cJSON_IsArray(arr)) {
      cli_fail(cmd, "malformed answer for run %s: no \"streams\" array", run);
      goto done_curl;
    }
    if ((tags = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *tags)) == NULL) goto oom;
    for (const cJSON *st = arr->child; st; st = st->next) {
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(st, "tag");
      if (!cJSON_IsString(t)) {
        cli_fail(cmd, "malformed answer for run %s: a stream without a \"tag\" string", run);
        goto done_curl;
      }
      tags[nt++] = t->valuestring;
    }
  }

  for (size_t i = 0; i < nt && !cli_stopped(); i++) {
    series_t *cur = i == 0 ? &head : &s;
    if (i > 1) series_free(&s);
    if (series_get(&h, cmd, run, tags[i], metrics, nm, from, to, NULL, metrics != NULL, cur) != 0)
      goto done_curl;
    if (i == 0 && !jsonl) {
      fputs("run,tag,step", stdout);
      for (size_t j = 0; j < head.ncols; j++) printf(",%s", head.names[j]);
      putchar('\n');
    }
    if (rows_start(&r, cur) != 0) goto oom;
    export_rows(run, tags[i], cur, &r, &head, jsonl, &line, &cell);
    if (line.oom || cell.oom) goto oom;
    if (stdout_ok(cmd) != 0) goto done_curl;
  }
  if (nt == 0 && !jsonl) { /* an empty run: just the fixed columns */
    fputs("run,tag,step", stdout);
    for (size_t j = 0; j < nm; j++) printf(",%s", metrics[j]);
    putchar('\n');
  }
  if (stdout_ok(cmd) != 0) goto done_curl;
  status = cli_stopped() ? CLI_FAIL : CLI_OK;
  goto done_curl;
oom:
  cli_fail(cmd, "out of memory");
done_curl:
  curl_global_cleanup();
done:
  free(r.cur);
  series_free(&head);
  series_free(&s);
  cJSON_Delete(streams_doc);
  free(tags);
  free(metrics);
  free(mcopy);
  buf_free(&line);
  buf_free(&cell);
  http_free(&h);
  return status;
}

/* ---- tail -------------------------------------------------------------------------------------------- */

static const char tail_help[] =
    "Usage: gradwatch tail [OPTIONS]\n"
    "\n"
    "Follow the daemon's live feed (GET /api/v1/events, Server-Sent Events) and print\n"
    "one line per point — step, run/tag, kappa one-step and EMA, rank_90 — and per\n"
    "alert change, until Ctrl-C. Reconnects if an established feed breaks.\n"
    "\n"
    "  --run RUN             only this run\n"
    "  --tag TAG             only this tag\n"
    "  --count N             exit after N points\n"
    "  --json                print each event as a JSON line {\"event\":..,\"data\":..}\n";

enum { T_RUN = 1, T_TAG, T_COUNT, T_JSON, T_HELP };

static const struct option tail_opts[] = {
    {"run", required_argument, NULL, T_RUN},
    {"tag", required_argument, NULL, T_TAG},
    {"count", required_argument, NULL, T_COUNT},
    {"json", no_argument, NULL, T_JSON},
    {"help", no_argument, NULL, T_HELP},
    HTTP_LONG_OPTIONS,
    {NULL, 0, NULL, 0},
};

typedef struct sse_s {
  const char *run, *tag; /* filters, NULL = any */
  int json;
  uint64_t count, seen; /* stop after count points (0 = never) */
  int done;             /* count reached, or stdout failed */
  int out_err;          /* errno of a failed write to stdout, 0 if none */
  long status;          /* HTTP status once known, 0 before */
  int got_data;         /* some bytes of a 200 answer arrived */
  buf_t errbody;        /* the body of a non-200 answer */
  buf_t line, event, data;
  int last_cr; /* the previous chunk ended in CR: skip a leading LF */
  CURL *curl;
} sse_t;

static void print_kv(const cJSON *o, const char *key, int *any) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (v == NULL) return;
  if (cJSON_IsString(v)) printf("  %s=%s", key, v->valuestring);
  else if (cJSON_IsNumber(v)) printf("  %s=%.6g", key, v->valuedouble);
  else if (cJSON_IsBool(v)) printf("  %s=%s", key, cJSON_IsTrue(v) ? "true" : "false");
  else return;
  *any = 1;
}

static void num_cell(const cJSON *o, const char *key, char *buf, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (cJSON_IsNumber(v)) snprintf(buf, cap, "%.6g", v->valuedouble);
  else snprintf(buf, cap, "-");
}

static void sse_dispatch(sse_t *s) {
  const char *name = s->event.n ? s->event.p : "message";
  cJSON *d = NULL;

  if (s->data.n == 0) goto reset; /* no data: nothing to dispatch */
  if (s->data.p[s->data.n - 1] == '\n') s->data.p[--s->data.n] = '\0';
  if (strcmp(name, "resync") == 0) {
    fprintf(stderr, "gradwatch tail: the feed fell behind; some events were skipped (resync)\n");
    goto reset;
  }
  if (strcmp(name, "point") != 0 && strcmp(name, "alert") != 0) goto reset;
  d = cJSON_ParseWithLength(s->data.p, s->data.n);
  if (!cJSON_IsObject(d)) {
    fprintf(stderr, "gradwatch tail: ignoring a %s event whose data is not a JSON object\n", name);
    goto reset;
  }
  const cJSON *run = cJSON_GetObjectItemCaseSensitive(d, "run");
  const cJSON *tag = cJSON_GetObjectItemCaseSensitive(d, "tag");
  /* The daemon filters too (?run=&tag=); this keeps the client right with
   * any server. Alerts without a run always pass. */
  if (s->run && cJSON_IsString(run) && strcmp(run->valuestring, s->run) != 0) goto reset;
  if (s->tag && strcmp(name, "point") == 0 && (!cJSON_IsString(tag) || strcmp(tag->valuestring, s->tag) != 0))
    goto reset;
  if (s->json) {
    printf("{\"event\":\"%s\",\"data\":%s}\n", name, s->data.p);
  } else if (strcmp(name, "point") == 0) {
    char step[32], k1[32], ke[32], r90[32], rt[2 * GW_PROTO_NAME_MAX + 2];
    num_cell(d, "step", step, sizeof step);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(d, "step");
    if (cJSON_IsNumber(st) && st->valuedouble >= 0 && st->valuedouble < 0x1p63)
      snprintf(step, sizeof step, "%.0f", st->valuedouble);
    num_cell(d, "kappa_onestep", k1, sizeof k1);
    num_cell(d, "kappa_ema", ke, sizeof ke);
    num_cell(d, "rank_90", r90, sizeof r90);
    snprintf(rt, sizeof rt, "%.128s/%.128s", cJSON_IsString(run) ? run->valuestring : "?",
             cJSON_IsString(tag) ? tag->valuestring : "?");
    printf("%12s  %-31s %12s %12s %8s\n", step, rt, k1, ke, r90);
  } else {
    int any = 0;
    fputs("ALERT", stdout);
    static const char *const keys[] = {"state", "name", "rule", "severity", "run", "tag",
                                       "metric", "value", "threshold", "step", "message"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) print_kv(d, keys[i], &any);
    if (!any) printf("  %s", s->data.p);
    putchar('\n');
  }
  if (fflush(stdout) != 0 || ferror(stdout)) {
    s->out_err = errno ? errno : EIO;
    s->done = 1;
  }
  if (strcmp(name, "point") == 0 && s->count && ++s->seen >= s->count) s->done = 1;
reset:
  cJSON_Delete(d);
  s->event.n = 0;
  s->data.n = 0;
  if (s->event.p) s->event.p[0] = '\0';
  if (s->data.p) s->data.p[0] = '\0';
}

static void sse_line(sse_t *s) {
  const char *l = s->line.p ? s->line.p : "", *colon, *v;
  size_t n = s->line.n, flen, vlen;
  if (n == 0) {
    sse_dispatch(s);
    return;
  }
  if (l[0] == ':') return; /* comment (heartbeat) */
  colon = memchr(l, ':', n);
  flen = colon ? (size_t)(colon - l) : n;
  v = colon ? colon + 1 : l + n;
  vlen = n - (size_t)(v - l);
  if (vlen && *v == ' ') {
    v++;
    vlen--;
  }
  if (flen == 5 && memcmp(l, "event", 5) == 0) {
    s->event.n = 0;
    buf_put(&s->event, v, vlen, 1024);
  } else if (flen == 4 && memcmp(l, "data", 4) == 0) {
    buf_put(&s->data, v, vlen, (size_t)16 << 20);
    buf_put(&s->data, "\n", 1, (size_t)16 << 20);
  } /* id, retry, others: ignored */
}

static size_t on_sse(char *p, size_t size, size_t nmemb, void *ud) {
  sse_t *s = ud;
  size_t n = size * nmemb;
  if (s->status == 0) curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &s->status);
  if (s->status != 200) {
    buf_put(&s->errbody, p, n, ERR_BODY_MAX);
    return n;
  }
  s->got_data = 1;
  for (size_t i = 0; i < n && !s->done; i++) {
    char ch = p[i];
    if (s->last_cr) {
      s->last_cr = 0;
      if (ch == '\n') continue;
    }
    if (ch == '\r' || ch == '\n') {
      s->last_cr = ch == '\r';
      sse_line(s);
      s->line.n = 0;
      if (s->line.p) s->line.p[0] = '\0';
    } else {
      buf_put(&s->line, &ch, 1, (size_t)16 << 20);
    }
    if (s->line.oom || s->data.oom || s->event.oom) return 0; /* abort: line too long */
  }
  return s->done ? 0 : n; /* 0 aborts the transfer once --count is reached */
}

int cli_tail(int argc, char **argv) {
  const char *cmd = "tail";
  http_t h;
  sse_t s;
  buf_t url = {0};
  int c, rc = 0, status = CLI_FAIL, connected = 0;
  double backoff = 1;

  http_init(&h);
  memset(&s, 0, sizeof s);
  opterr = 0;
  while (rc == 0 && (c = getopt_long(argc, argv, ":h", tail_opts, NULL)) != -1) {
    switch (c) {
    case 'h':
    case T_HELP:
      printf("%s%s", tail_help, http_help);
      http_free(&h);
      return CLI_OK;
    case T_RUN: s.run = optarg; break;
    case T_TAG: s.tag = optarg; break;
    case T_COUNT: rc = cli_opt_u64(cmd, "--count", optarg, 1, UINT64_MAX, &s.count); break;
    case T_JSON: s.json = 1; break;
    case '?':
    case ':': rc = cli_bad_option(cmd, c, argv); break;
    default: rc = http_option(&h, cmd, c, optarg);
    }
  }
  if (rc == 0 && optind < argc) rc = cli_usage(cmd, "unexpected argument '%s'", argv[optind]);
  if (rc == 0) rc = check_names(cmd, s.run, s.tag);
  if (rc != 0) {
    http_free(&h);
    return rc;
  }
  cli_catch_signals();
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (http_open(&h, cmd) != 0) goto done;
  buf_printf(&url, "%s/api/v1/events", h.server);
  if (s.run) url_param(&h, &url, "run", s.run);
  if (s.tag) url_param(&h, &url, "tag", s.tag);
  if (url.oom) {
    cli_fail(cmd, "out of memory");
    goto done;
  }
  if (!s.json) {
    printf("%12s  %-31s %12s %12s %8s\n", "step", "run/tag", "kappa_1step", "kappa_ema", "rank_90");
    fflush(stdout);
  }
  s.curl = h.curl;
  for (;;) {
    CURLcode cc;
    s.status = 0;
    s.got_data = 0;
    s.last_cr = 0;
    s.line.n = s.event.n = s.data.n = 0;
    common_opts(&h, url.p);
    curl_easy_setopt(h.curl, CURLOPT_WRITEFUNCTION, on_sse);
    curl_easy_setopt(h.curl, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h.curl, CURLOPT_TCP_KEEPALIVE, 1L);
    cc = curl_easy_perform(h.curl);
    if (s.out_err) {
      if (s.out_err != EPIPE) cli_fail(cmd, "writing the output: %s", strerror(s.out_err));
      goto done;
    }
    if (s.done || cli_stopped()) break;
    if (s.status == 0) curl_easy_getinfo(h.curl, CURLINFO_RESPONSE_CODE, &s.status);
    if (s.status != 0 && s.status != 200) {
      server_error(cmd, s.status, &s.errbody);
      goto done;
    }
    if (s.line.oom || s.data.oom || s.event.oom) {
      cli_fail(cmd, "an event line is too long (over 16 MiB)");
      goto done;
    }
    if (!connected && s.status != 200) {
      cli_fail(cmd, "cannot get %s: %s", url.p, h.errbuf[0] ? h.errbuf : curl_easy_strerror(cc));
      goto done;
    }
    connected = 1;
    if (s.got_data) backoff = 1;
    fprintf(stderr, "gradwatch tail: feed %s (%s); reconnecting in %g s\n",
            cc == CURLE_OK ? "ended" : "broke", cc == CURLE_OK ? "server closed it" :
            h.errbuf[0] ? h.errbuf : curl_easy_strerror(cc), backoff);
    cli_sleep(backoff);
    if (cli_stopped()) break;
    backoff = backoff * 2 > 10 ? 10 : backoff * 2;
  }
  status = CLI_OK;
done:
  buf_free(&url);
  buf_free(&s.errbody);
  buf_free(&s.line);
  buf_free(&s.event);
  buf_free(&s.data);
  http_free(&h);
  curl_global_cleanup();
  return status;
}
