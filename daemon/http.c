/* http.c — routes, validation and JSON of the HTTP API (docs/CONTRACT.md §6).
 *
 * One access handler answers every request; no request has a body we read,
 * so there is no per-request state (see handle() for first vs second call
 * and keep-alive). Order of checks: bearer token (all but /healthz and the
 * embedded dashboard files) → method
 * (GET/HEAD only) → route → parameters → data. Routes and the series
 * parameters are parsed by http_query.c (pure functions, fuzzed). Every error is {"error": "..."} with a 4xx/5xx code.
 * JSON is built with cJSON; numbers go in as raw text (integers exact, doubles
 * by gw_fmt_double) so values leave bit-for-bit. The one large document,
 * /api/v1/series, is written straight into a buffer (names still escaped by
 * cJSON), so its memory is the text itself, not a tree of cJSON nodes.
 *
 * Who answers what (why /healthz is always answered). libmicrohttpd's poll
 * threads only do cheap work: parse, route, answer from memory or a short
 * query. /api/v1/series, the one answer whose cost grows with the data, is
 * handed to answer threads of our own: the handler suspends the connection
 * (MHD_suspend_connection) and queues a job; an answer thread builds the
 * answer and resumes the connection, whose handler then queues it. So no
 * data request can occupy a poll thread, and /healthz and /readyz wait at
 * most for the cheap work of the connections on their poll thread. (Chosen
 * over a second daemon for cheap routes, which would need a second port,
 * and over reserved capacity in one pool, which still lets heavy requests
 * share a thread's epoll loop with cheap ones.) Memory for answers is
 * bounded per answer (series_max_bytes: refused before reading if the worst
 * case is larger) and in all (answer_budget_bytes: charged while built and
 * until sent); see the series section below.
 *
 * The listening socket is created here (so bind errors come back as -errno
 * and port 0 can be read back) and handed to libmicrohttpd, which runs an
 * epoll thread pool with suspend/resume enabled for the SSE hub (live.c).
 * Request line and headers are bounded by the per-connection memory limit.
 * With a certificate and key (gw_http_config_t) it serves HTTPS through
 * libmicrohttpd's GnuTLS; the PEM texts are read once at start.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <microhttpd.h>

#include "alerts.h"
#include "assets.h"
#include "gw_error.h"
#include "gw_proto.h"
#include "http_query.h"
#include "jsonnum.h"
#include "http_summary.h"
#include "numfmt.h"
#include "point.h"
#include "util.h"

/* per connection: request line + headers. 32 KiB, not more: libmicrohttpd
 * mmaps pools above 32 KiB, and an munmap per closed connection costs every
 * core a TLB shootdown (measured: a fifth of the CPU when 1,000 SSE clients
 * were dropped). */
#define MEMORY_LIMIT (32 * 1024)
#define GW_HTTP_STALL_NS (60 * 1000000000LL) /* a live run silent this long is "stalled" */

/* *con_cls marker: the first call of a request has happened. */
static char seen_marker;

typedef struct job_s job_t;

struct gw_http_s {
  struct MHD_Daemon *mhd;
  /* answer threads (series): jobs queue under jmu */
  pthread_mutex_t jmu;
  pthread_cond_t jcv;
  pthread_t *threads;
  unsigned nthreads;
  job_t *jhead, *jtail;
  size_t jn;
  int jstop;
  int jinit; /* jmu and jcv initialised */
  size_t series_max, budget;
  atomic_size_t held; /* bytes charged to the budget */
  int fd; /* listening socket; ours to close */
  uint16_t port;
  char *token; /* NULL = no auth */
  char *cert_pem, *key_pem; /* HTTPS only; kept until the daemon stops */
  gw_http_deps_t deps;
};

void gw_http_config_default(gw_http_config_t *cfg) {
  cfg->addr = "127.0.0.1:8080";
  cfg->token = NULL;
  cfg->threads = 4;
  cfg->conn_limit = 1024;
  cfg->per_ip_limit = 256;
  cfg->timeout_s = 60;
  cfg->cert_file = NULL;
  cfg->key_file = NULL;
  cfg->series_max_bytes = (size_t)64 << 20;
  cfg->answer_budget_bytes = (size_t)256 << 20;
  cfg->answer_threads = 2;
}

/* ---- responses ---- */

static enum MHD_Result send_response(struct MHD_Connection *c, unsigned status,
                                     struct MHD_Response *r) {
  enum MHD_Result ret;
  if (!r) return MHD_NO; /* out of memory: libmicrohttpd closes it */
  ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

static struct MHD_Response *json_response(char *text) {
  struct MHD_Response *r;
  if (!text) return NULL;
  r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return NULL;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
  return r;
}

/* Takes ownership of obj. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status,
                                 cJSON *obj) {
  char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
  cJSON_Delete(obj);
  return send_response(c, status, json_response(text));
}

static struct MHD_Response *error_response(const char *msg) {
  cJSON *o = cJSON_CreateObject();
  char *text = NULL;
  if (o && cJSON_AddStringToObject(o, "error", msg)) text = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  return json_response(text);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status,
                                  const char *msg) {
  return send_response(c, status, error_response(msg));
}

/* 503 with Retry-After: a budget is spent for now (SSE clients, bytes held
 * for answers), not an error of the request. */
static enum MHD_Result send_busy(struct MHD_Connection *c, const char *msg) {
  struct MHD_Response *r = error_response(msg);
  if (r) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
  return send_response(c, MHD_HTTP_SERVICE_UNAVAILABLE, r);
}

/* "what: value", value from the request: cut at 64 bytes, and any byte
 * outside printable ASCII shown as '?' (valid names are ASCII; this keeps
 * the error valid UTF-8 whatever was sent). */
static enum MHD_Result send_error2(struct MHD_Connection *c, unsigned status,
                                   const char *what, const char *value,
                                   size_t vlen) {
  char msg[160];
  return send_error(c, status, gw_http_errmsg(msg, sizeof msg, what, value, vlen));
}

/* A failure of ours (store, memory), not of the request: 503 for memory,
 * 500 otherwise, with gw_strerror's text. */
static enum MHD_Result send_failure(struct MHD_Connection *c, int rc) {
  return send_error(c, rc == GW_ENOMEM ? MHD_HTTP_SERVICE_UNAVAILABLE
                                       : MHD_HTTP_INTERNAL_SERVER_ERROR,
                    gw_strerror(rc));
}

static double ns_to_s(int64_t ns) { return (double)ns * 1e-9; }

/* A wall time as Unix seconds; 0 (never) as null. */
static cJSON *add_time(cJSON *o, const char *key, int64_t ns) {
  return ns ? gw_json_add_num(o, key, ns_to_s(ns)) : cJSON_AddNullToObject(o, key);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Compare without an early exit: time depends on the expected length only. */
static int token_equal(const char *given, const char *expected) {
  size_t gl = strlen(given), el = strlen(expected);
  unsigned char d = (unsigned char)(gl != el);
  for (size_t i = 0; i < el; i++)
    d |= (unsigned char)(expected[i] ^ (i < gl ? given[i] : 0));
  return d == 0;
}

static int authorized(const gw_http_t *h, struct MHD_Connection *c) {
  const char *v;
  if (!h->token) return 1;
  v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  if (!v || strncasecmp(v, "Bearer ", 7) != 0) return 0;
  v += 7;
  while (*v == ' ') v++;
  return token_equal(v, h->token);
}

/* ---- handlers ---- */

static enum MHD_Result h_runs(gw_http_t *h, struct MHD_Connection *c) {
  gw_store_run_t *runs = NULL;
  size_t n = 0;
  gw_run_filter_t f;
  gw_http_run_filter(c, &f);
  if (f.too_many) return send_error(c, MHD_HTTP_BAD_REQUEST, "too many tag/label filters");
  int rc = gw_store_runs(h->deps.store, gw_now_ns(), GW_HTTP_STALL_NS, &runs, &n);
  if (rc != 0) return send_failure(c, rc);
  cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "runs");
  for (size_t i = 0; arr && i < n; i++) {
    cJSON *r = cJSON_CreateObject(), *meta = NULL;
    if (!r) goto nomem;
    if (gw_http_add_run_meta(r, &runs[i], 0, &meta) != 0) {
      cJSON_Delete(r);
      goto nomem;
    }
    int keep = gw_http_run_filter_match(&f, meta);
    cJSON_Delete(meta);
    if (!keep) {
      cJSON_Delete(r);
      continue;
    }
    cJSON_AddItemToArray(arr, r);
    if (!cJSON_AddStringToObject(r, "run", runs[i].run) ||
        !gw_json_add_u64(r, "streams", runs[i].streams) ||
        !gw_json_add_u64(r, "first_step", runs[i].first_step) ||
        !gw_json_add_u64(r, "last_step", runs[i].last_step) ||
        !add_time(r, "last_seen", runs[i].last_seen_ns) ||
        !cJSON_AddStringToObject(r, "state", gw_store_run_state_name(runs[i].state)))
      goto nomem;
  }
  if (!arr) goto nomem;
  gw_store_runs_free(runs, n);
  return send_json(c, MHD_HTTP_OK, o);
nomem:
  gw_store_runs_free(runs, n);
  cJSON_Delete(o);
  return send_failure(c, GW_ENOMEM);
}

static enum MHD_Result h_streams(gw_http_t *h, struct MHD_Connection *c,
                                 const char *run, size_t run_len) {
  gw_store_stream_t *ss = NULL;
  size_t n = 0;
  char name[129];
  if (gw_proto_check_run(run, run_len) != 0)
    return send_error2(c, MHD_HTTP_BAD_REQUEST, "bad run name", run, run_len);
  memcpy(name, run, run_len);
  name[run_len] = '\0';
  int rc = gw_store_streams(h->deps.store, name, &ss, &n);
  if (rc == GW_ENOTFOUND) return send_error2(c, MHD_HTTP_NOT_FOUND, "unknown run", run, run_len);
  if (rc != 0) return send_failure(c, rc);
  cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "streams");
  for (size_t i = 0; arr && i < n; i++) {
    cJSON *s = cJSON_CreateObject();
    if (!s) goto nomem;
    cJSON_AddItemToArray(arr, s);
    if (!cJSON_AddStringToObject(s, "tag", ss[i].tag) ||
        !gw_json_add_u64(s, "k", ss[i].k) ||
        !gw_json_add_u64(s, "points", ss[i].points) ||
        !gw_json_add_u64(s, "first_step", ss[i].first_step) ||
        !gw_json_add_u64(s, "last_step", ss[i].last_step) ||
        !add_time(s, "last_seen", ss[i].last_seen_ns))
      goto nomem;
  }
  if (!arr) goto nomem;
  gw_store_streams_free(ss, n);
  return send_json(c, MHD_HTTP_OK, o);
nomem:
  gw_store_streams_free(ss, n);
  cJSON_Delete(o);
  return send_failure(c, GW_ENOMEM);
}

/* A growable string for the series document. */
typedef struct {
  char *p;
  size_t len, cap;
  int oom;
} sb_t;

static void sb_put(sb_t *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
      b->oom = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

/* Print item (then delete it) with cJSON and append the text. */
static void sb_json(sb_t *b, cJSON *item) {
  char *t = item ? cJSON_PrintUnformatted(item) : NULL;
  cJSON_Delete(item);
  if (!t) {
    b->oom = 1;
    return;
  }
  sb_put(b, t, strlen(t));
  free(t);
}

/* ,"key":[values]; the key through cJSON, numbers as gw_json_add_num writes them. */
static void sb_column(sb_t *b, const char *key, const double *v,
                      const uint64_t *u, size_t n) {
  char num[GW_NUMFMT_MAX];
  sb_put(b, ",", 1);
  sb_json(b, cJSON_CreateStringReference(key));
  sb_put(b, ":[", 2);
  for (size_t i = 0; i < n && !b->oom; i++) {
    if (i) sb_put(b, ",", 1);
    if (u) sb_put(b, num, (size_t)snprintf(num, sizeof num, "%" PRIu64, u[i]));
    else if (isfinite(v[i])) sb_put(b, num, (size_t)gw_fmt_double(num, v[i]));
    else sb_put(b, "null", 4);
  }
  sb_put(b, "]", 1);
}

/* ,"key":["u64",…]: 64-bit ids as decimal strings (JSON numbers are doubles). */
static void sb_strings(sb_t *b, const char *key, const uint64_t *u, size_t n) {
  char num[32];
  sb_put(b, ",", 1);
  sb_json(b, cJSON_CreateStringReference(key));
  sb_put(b, ":[", 2);
  for (size_t i = 0; i < n && !b->oom; i++) {
    if (i) sb_put(b, ",", 1);
    sb_put(b, num, (size_t)snprintf(num, sizeof num, "\"%" PRIu64 "\"", u[i]));
  }
  sb_put(b, "]", 1);
}

/* ---- /api/v1/series: built by the answer threads, in a byte budget ----
 *
 * The handler validates the parameters, suspends the connection and queues
 * a job; an answer thread counts the rows, refuses what could be larger than
 * series_max_bytes (400) or would overdraw the budget for bytes held across
 * connections (503, Retry-After), reads the columns and writes the JSON
 * into one buffer of the size it needs, and resumes the connection with the
 * response. The budget is charged for the columns and the text while they
 * are built, and for the text until libmicrohttpd frees the response (the
 * client has read it, or went away), so slow readers can hold at most
 * answer_budget_bytes in all. */

#define VALUE_TEXT_MAX 25  /* ",-1.2345678901234567e-308" or ",\"<u64>\"" */
#define COLUMN_TEXT_MAX 48 /* ,"name":[ ] around a column */
#define JOBS_MAX 64        /* answers waiting for a thread; more: 503 */

typedef struct job_s {
  struct job_s *next;
  gw_http_t *h;
  struct MHD_Connection *conn;
  gw_series_query_t q; /* strings borrowed from the connection's arguments */
  int done;
  unsigned status;
  struct MHD_Response *resp; /* NULL with done: close the connection */
} job_t;

/* An answer's text, charged to the budget until freed. */
typedef struct {
  gw_http_t *h;
  char *p;
  size_t len, charged;
} answer_t;

static int budget_take(gw_http_t *h, size_t n) {
  size_t cur = atomic_load(&h->held);
  do {
    if (n > h->budget || cur > h->budget - n) return GW_EFULL;
  } while (!atomic_compare_exchange_weak(&h->held, &cur, cur + n));
  atomic_store_explicit(&h->deps.stats->http_answer_bytes, cur + n, memory_order_relaxed);
  return 0;
}

static void budget_give(gw_http_t *h, size_t n) {
  size_t was = atomic_fetch_sub(&h->held, n);
  atomic_store_explicit(&h->deps.stats->http_answer_bytes, was - n, memory_order_relaxed);
}

static ssize_t answer_read(void *cls, uint64_t pos, char *out, size_t max) {
  answer_t *a = cls;
  if (pos >= a->len) return MHD_CONTENT_READER_END_OF_STREAM;
  size_t n = a->len - (size_t)pos < max ? a->len - (size_t)pos : max;
  memcpy(out, a->p + pos, n);
  return (ssize_t)n;
}

static void answer_free(void *cls) {
  answer_t *a = cls;
  budget_give(a->h, a->charged);
  free(a->p);
  free(a);
}

static struct MHD_Response *error_busy(gw_http_t *h, int why, const char *msg) {
  gw_stats_add(&h->deps.stats->http_refused[why], 1);
  struct MHD_Response *r = error_response(msg);
  if (r) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "5");
  return r;
}

/* Build the answer of job j (an answer thread). Sets j->status, j->resp. */
static void series_build(job_t *j) {
  gw_http_t *h = j->h;
  const gw_series_query_t *q = &j->q;
  gw_series_t s = {0};
  uint64_t total = 0;
  char msg[200];
  size_t nm = q->n_metrics, charged = 0;
  answer_t *a = NULL;
  sb_t b = {0};
  j->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
  int rc = gw_store_series_count(h->deps.store, q->run, q->tag, q->from, q->to,
                                 q->all_incarnations, &total);
  if (rc == GW_ENOTFOUND) {
    j->status = MHD_HTTP_NOT_FOUND;
    j->resp = error_response("unknown stream");
    return;
  }
  if (rc != 0) goto failure;
  /* The worst case, before reading anything: rows after downsampling,
   * every value at its longest. */
  uint64_t rows = q->max_points && total > q->max_points ? q->max_points / 2 * 2 : total;
  size_t cols = nm + 1 + (q->all_incarnations ? 1 : 0);
  double text_max = 256.0 + (double)cols * COLUMN_TEXT_MAX + (double)rows * (double)cols * VALUE_TEXT_MAX;
  double bin = (double)rows * (double)(nm + 2) * 8.0;
  if (text_max > (double)h->series_max) {
    gw_stats_add(&h->deps.stats->http_refused[GW_HTTP_REFUSE_TOO_LARGE], 1);
    snprintf(msg, sizeof msg,
             "answer too large: %" PRIu64 " points x %zu columns could exceed the %zu MiB cap; "
             "ask with max_points, a from/to range or fewer metrics",
             rows, cols, h->series_max >> 20);
    j->status = MHD_HTTP_BAD_REQUEST;
    j->resp = error_response(msg);
    return;
  }
  charged = (size_t)text_max + (size_t)bin;
  if (budget_take(h, charged) != 0) {
    j->status = MHD_HTTP_SERVICE_UNAVAILABLE;
    j->resp = error_busy(h, GW_HTTP_REFUSE_BUDGET,
                         "busy: memory for answers is held by other requests; retry later");
    return;
  }
  rc = gw_store_series(h->deps.store, q->run, q->tag, q->ids, nm, q->from, q->to,
                       (size_t)q->max_points, &s, q->all_incarnations);
  if (rc == GW_ENOTFOUND) {
    budget_give(h, charged);
    j->status = MHD_HTTP_NOT_FOUND;
    j->resp = error_response("unknown stream");
    return;
  }
  if (rc != 0) goto failure;
  if (s.n > rows) s.n = (size_t)rows; /* rows grew since the count: keep the bound */
  /* one buffer of the worst-case size: no doubling; untouched pages cost nothing */
  b.cap = (size_t)text_max;
  if (!(b.p = malloc(b.cap))) b.oom = 1;
  sb_put(&b, "{\"run\":", 7);
  sb_json(&b, cJSON_CreateStringReference(q->run));
  sb_put(&b, ",\"tag\":", 7);
  sb_json(&b, cJSON_CreateStringReference(q->tag));
  sb_column(&b, "step", NULL, s.step, s.n);
  if (q->all_incarnations) sb_strings(&b, "incarnation", s.inc, s.n);
  for (size_t m = 0; m < nm && !b.oom; m++)
    sb_column(&b, gw_metric_name(q->ids[m]), s.cols[m], NULL, s.n);
  sb_put(&b, "}", 1);
  gw_store_series_free(&s);
  if (b.oom || !(a = calloc(1, sizeof *a))) {
    rc = GW_ENOMEM;
    goto failure;
  }
  /* The columns are gone: from now on only the text is charged. */
  budget_give(h, charged - b.len);
  charged = b.len;
  a->h = h;
  a->p = b.p;
  a->len = b.len;
  a->charged = charged;
  b.p = NULL;
  j->resp = MHD_create_response_from_callback(a->len, 65536, answer_read, a, answer_free);
  if (!j->resp) {
    answer_free(a); /* gives the charge back */
    j->status = 0;
    return;
  }
  MHD_add_response_header(j->resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  MHD_add_response_header(j->resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header(j->resp, "X-Content-Type-Options", "nosniff");
  j->status = MHD_HTTP_OK;
  return;
failure:
  gw_store_series_free(&s);
  free(b.p);
  if (charged) budget_give(h, charged);
  j->status = rc == GW_ENOMEM ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_INTERNAL_SERVER_ERROR;
  j->resp = error_response(gw_strerror(rc));
}

static void *answer_thread(void *arg) {
  gw_http_t *h = arg;
  pthread_mutex_lock(&h->jmu);
  for (;;) {
    while (!h->jhead && !h->jstop) pthread_cond_wait(&h->jcv, &h->jmu);
    job_t *j = h->jhead;
    if (!j) break; /* stopping, nothing left */
    h->jhead = j->next;
    if (!h->jhead) h->jtail = NULL;
    h->jn--;
    int stopping = h->jstop;
    pthread_mutex_unlock(&h->jmu);
    if (stopping) {
      j->status = MHD_HTTP_SERVICE_UNAVAILABLE;
      j->resp = error_response("shutting down");
    } else {
      series_build(j);
    }
    j->done = 1; /* read by the handler after the resume below */
    MHD_resume_connection(j->conn);
    pthread_mutex_lock(&h->jmu);
  }
  pthread_mutex_unlock(&h->jmu);
  return NULL;
}

static enum MHD_Result h_series(gw_http_t *h, struct MHD_Connection *c, void **con_cls) {
  if (*con_cls != &seen_marker) { /* resumed: the answer thread is done */
    job_t *j = *con_cls;
    struct MHD_Response *r = j->resp;
    j->resp = NULL;
    if (!r) return MHD_NO;
    return send_response(c, j->status, r);
  }
  gw_series_query_t q;
  char msg[160];
#define ARG(name) MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name)
  if (gw_http_series_query(&q, ARG("run"), ARG("tag"), ARG("metrics"), ARG("from"), ARG("to"),
                           ARG("max_points"), msg, sizeof msg) != 0 ||
      gw_http_incarnations(ARG("incarnations"), &q.all_incarnations, msg, sizeof msg) != 0)
    return send_error(c, MHD_HTTP_BAD_REQUEST, msg);
#undef ARG
  job_t *j = calloc(1, sizeof *j);
  if (!j) return send_failure(c, GW_ENOMEM);
  j->h = h;
  j->conn = c;
  j->q = q;
  pthread_mutex_lock(&h->jmu);
  if (h->jstop || h->jn >= JOBS_MAX) {
    int stopping = h->jstop;
    pthread_mutex_unlock(&h->jmu);
    free(j);
    if (stopping) return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
    return send_response(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                         error_busy(h, GW_HTTP_REFUSE_QUEUE, "busy: too many answers waiting; retry later"));
  }
  *con_cls = j; /* freed by completed() */
  MHD_suspend_connection(c);
  if (h->jtail) h->jtail->next = j;
  else h->jhead = j;
  h->jtail = j;
  h->jn++;
  pthread_cond_signal(&h->jcv);
  pthread_mutex_unlock(&h->jmu);
  return MHD_YES;
}

/* libmicrohttpd is done with a request: free its job, if it had one. */
static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode why) {
  (void)cls, (void)c, (void)why;
  if (*con_cls && *con_cls != &seen_marker) {
    job_t *j = *con_cls;
    if (j->resp) MHD_destroy_response(j->resp);
    free(j);
  }
  *con_cls = NULL;
}

static enum MHD_Result h_alerts(gw_http_t *h, struct MHD_Connection *c) {
  const char *state = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "state");
  const char *limit_s = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit");
  int filter;
  uint64_t limit = 1000;
  if (!state || strcmp(state, "all") == 0) filter = GW_ALERT_ANY;
  else if (strcmp(state, "firing") == 0) filter = GW_ALERT_FIRING;
  else if (strcmp(state, "resolved") == 0) filter = GW_ALERT_RESOLVED;
  else return send_error(c, MHD_HTTP_BAD_REQUEST, "bad state: firing, resolved or all");
  if (limit_s && (gw_http_parse_u64(limit_s, &limit) != 0 || limit < 1 || limit > 100000))
    return send_error(c, MHD_HTTP_BAD_REQUEST, "bad limit: an integer from 1 to 100000");

  gw_store_alert_t *as = NULL;
  size_t n = 0;
  int rc = gw_store_alerts(h->deps.store, filter, (size_t)limit, &as, &n);
  if (rc != 0) return send_failure(c, rc);
  cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "alerts");
  for (size_t i = 0; arr && i < n; i++) {
    char *text = gw_alerts_json(&as[i]); /* the alerts' object, as SSE has it */
    cJSON *a = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!a) goto nomem;
    cJSON_AddItemToArray(arr, a);
  }
  if (!arr) goto nomem;
  gw_store_alerts_free(as, n);
  return send_json(c, MHD_HTTP_OK, o);
nomem:
  gw_store_alerts_free(as, n);
  cJSON_Delete(o);
  return send_failure(c, GW_ENOMEM);
}

static cJSON *add_u64_string(cJSON *o, const char *key, uint64_t v) {
  char num[24];
  snprintf(num, sizeof num, "%" PRIu64, v);
  return cJSON_AddStringToObject(o, key, num);
}

static enum MHD_Result h_restarts(gw_http_t *h, struct MHD_Connection *c) {
  const char *run = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "run");
  const char *tag = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "tag");
  const char *limit_s = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit");
  uint64_t limit = 1000;
  if (!run) return send_error(c, MHD_HTTP_BAD_REQUEST, "missing parameter: run");
  if (gw_proto_check_run(run, strlen(run)) != 0)
    return send_error2(c, MHD_HTTP_BAD_REQUEST, "bad run name", run, strlen(run));
  if (tag && gw_proto_check_tag(tag, strlen(tag)) != 0)
    return send_error2(c, MHD_HTTP_BAD_REQUEST, "bad tag name", tag, strlen(tag));
  if (limit_s && (gw_http_parse_u64(limit_s, &limit) != 0 || limit < 1 || limit > 100000))
    return send_error(c, MHD_HTTP_BAD_REQUEST, "bad limit: an integer from 1 to 100000");

  gw_store_restart_t *rs = NULL;
  size_t n = 0;
  int rc = gw_store_restarts(h->deps.store, run, tag, (size_t)limit, &rs, &n);
  if (rc == GW_ENOTFOUND) return send_error2(c, MHD_HTTP_NOT_FOUND, "unknown run", run, strlen(run));
  if (rc != 0) return send_failure(c, rc);
  cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "restarts");
  for (size_t i = 0; arr && i < n; i++) {
    cJSON *e = cJSON_CreateObject();
    if (!e) goto nomem;
    cJSON_AddItemToArray(arr, e);
    if (!cJSON_AddStringToObject(e, "run", rs[i].run) ||
        !cJSON_AddStringToObject(e, "tag", rs[i].tag) ||
        !gw_json_add_u64(e, "step", rs[i].step) ||
        !add_u64_string(e, "incarnation", rs[i].incarnation) ||
        !add_u64_string(e, "prev_incarnation", rs[i].prev_incarnation) ||
        !cJSON_AddStringToObject(e, "reason", rs[i].reason) ||
        !add_time(e, "time", rs[i].recv_ns))
      goto nomem;
  }
  if (!arr) goto nomem;
  gw_store_restarts_free(rs, n);
  return send_json(c, MHD_HTTP_OK, o);
nomem:
  gw_store_restarts_free(rs, n);
  cJSON_Delete(o);
  return send_failure(c, GW_ENOMEM);
}

static enum MHD_Result h_stats(gw_http_t *h, struct MHD_Connection *c) {
  gw_stats_t *st = h->deps.stats;
  cJSON *o = cJSON_CreateObject(), *rej, *drop, *store;
  uint64_t rows = 0;
  int have_rows = h->deps.store && gw_store_row_count(h->deps.store, &rows) == 0;
  int last = atomic_load_explicit(&st->store_last_error, memory_order_relaxed);
  int64_t started = atomic_load_explicit(&st->started_ns, memory_order_relaxed);
  double up = started ? ns_to_s(now_ns() - started) : 0.0;

  /* Every add is checked: a stats answer is whole or an error. */
  if (!o || !gw_json_add_u64(o, "received", gw_stats_get(&st->received)) ||
      !gw_json_add_u64(o, "accepted", gw_stats_get(&st->accepted)) ||
      !gw_json_add_u64(o, "meta_accepted", gw_stats_get(&st->meta_accepted)) ||
      !gw_json_add_u64(o, "points", gw_stats_get(&st->points)) ||
      !(rej = cJSON_AddObjectToObject(o, "rejected")))
    goto nomem;
  for (int i = 0; i < GW_E_COUNT; i++)
    if (!gw_json_add_u64(rej, gw_err_reason(GW_E_BASE - i), gw_stats_get(&st->rejected[i])))
      goto nomem;
  if (!(drop = cJSON_AddObjectToObject(o, "dropped")) ||
      !gw_json_add_u64(drop, "store", gw_stats_get(&st->store_dropped)) ||
      !gw_json_add_u64(drop, "live", gw_stats_get(&st->live_dropped)) ||
      !gw_json_add_u64(o, "streams", gw_stats_get(&st->streams)) ||
      !gw_json_add_u64(o, "streams_retired", gw_stats_get(&st->streams_retired)) ||
      !gw_json_add_u64(o, "stream_restarts", gw_stats_get(&st->stream_restarts)) ||
      !(have_rows ? gw_json_add_u64(o, "db_rows", rows) : cJSON_AddNullToObject(o, "db_rows")) ||
      !gw_json_add_u64(o, "queue_depth", gw_stats_get(&st->store_queue_depth)) ||
      !(store = cJSON_AddObjectToObject(o, "store")) ||
      !gw_json_add_u64(store, "errors", gw_stats_get(&st->store_errors)) ||
      !gw_json_add_u64(store, "written", gw_stats_get(&st->store_written)) ||
      !gw_json_add_u64(store, "duplicates", gw_stats_get(&st->store_duplicates)) ||
      !(last ? cJSON_AddStringToObject(store, "last_error", gw_strerror(last))
             : cJSON_AddNullToObject(store, "last_error")) ||
      !gw_json_add_num(o, "uptime_s", up))
    goto nomem;
  cJSON *sse = cJSON_AddObjectToObject(o, "sse"), *sd, *ans, *ar;
  if (!sse || !gw_json_add_u64(sse, "clients", gw_stats_get(&st->sse_clients)) ||
      !(sd = cJSON_AddObjectToObject(sse, "dropped")) ||
      !(ans = cJSON_AddObjectToObject(o, "answers")) ||
      !gw_json_add_u64(ans, "held_bytes", gw_stats_get(&st->http_answer_bytes)) ||
      !(ar = cJSON_AddObjectToObject(ans, "refused")))
    goto nomem;
  for (int i = 0; i < GW_SSE_DROP_COUNT; i++)
    if (!gw_json_add_u64(sd, gw_sse_drop_name(i), gw_stats_get(&st->sse_dropped[i]))) goto nomem;
  for (int i = 0; i < GW_HTTP_REFUSE_COUNT; i++)
    if (!gw_json_add_u64(ar, gw_http_refuse_name(i), gw_stats_get(&st->http_refused[i]))) goto nomem;
  return send_json(c, MHD_HTTP_OK, o);
nomem:
  cJSON_Delete(o);
  return send_failure(c, GW_ENOMEM);
}

static enum MHD_Result h_metrics(gw_http_t *h, struct MHD_Connection *c) {
  char *text;
  size_t len;
  int rc = gw_metrics_render(h->deps.metrics, h->deps.stats, h->deps.metrics_extra,
                             h->deps.metrics_extra_arg, &text, &len);
  if (rc != 0) return send_failure(c, rc);
  struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, GW_METRICS_CONTENT_TYPE);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  return send_response(c, MHD_HTTP_OK, r);
}

static enum MHD_Result h_events(gw_http_t *h, struct MHD_Connection *c, int head) {
  const char *run = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "run");
  const char *tag = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "tag");
  struct MHD_Response *r;
  if (run && gw_proto_check_run(run, strlen(run)) != 0)
    return send_error2(c, MHD_HTTP_BAD_REQUEST, "bad run name", run, strlen(run));
  if (tag && gw_proto_check_tag(tag, strlen(tag)) != 0)
    return send_error2(c, MHD_HTTP_BAD_REQUEST, "bad tag name", tag, strlen(tag));
  if (head) {
    r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
  } else {
    int rc = gw_live_serve(h->deps.live, c, run, tag, &r);
    if (rc == GW_EDENIED) return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, "shutting down");
    if (rc == GW_EFULL)
      return send_busy(c, "too many live (SSE) clients, in all or from this address; retry later");
    if (rc != 0) return send_failure(c, rc);
  }
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* proxies: stream */
  return send_response(c, MHD_HTTP_OK, r);
}

static enum MHD_Result h_asset(struct MHD_Connection *c, const gw_asset_t *a) {
  const char *inm = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_IF_NONE_MATCH);
  int fresh = inm && strcmp(inm, a->etag) == 0;
  struct MHD_Response *r = fresh
      ? MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)
      : MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
  if (!r) return MHD_NO;
  if (!fresh) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, a->content_type);
  MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, a->etag);
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
  return send_response(c, fresh ? MHD_HTTP_NOT_MODIFIED : MHD_HTTP_OK, r);
}

static enum MHD_Result unavailable(struct MHD_Connection *c, const char *what) {
  return send_error(c, MHD_HTTP_SERVICE_UNAVAILABLE, what);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
  gw_http_t *h = cls;
  int head = strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
  (void)version;
  (void)upload_data;

  /* libmicrohttpd closes the connection after a response queued on the
   * first call (it may not have read the body). A bodiless GET/HEAD is
   * answered on the second call, so the connection stays alive; anything
   * else (other methods, any request body) is answered at once and the
   * connection closed, so no body is ever read. */
  if (*con_cls == NULL) {
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    int body = (cl && strcmp(cl, "0") != 0) ||
               MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                           MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (!body && (head || strcmp(method, MHD_HTTP_METHOD_GET) == 0)) {
      *con_cls = &seen_marker;
      return MHD_YES;
    }
  } else if (*upload_data_size != 0) {
    *upload_data_size = 0; /* unreachable: bodies were refused above */
    return MHD_YES;
  }

  /* The dashboard's own files (embedded at build time, no data in them)
   * load without the token: a browser cannot add a header to a page load.
   * The page then sends the token on every API call. Everything else but
   * /healthz needs it. Assets are found by exact path only (assets.h), so
   * no spelling of a path (/../, %2e%2e, //etc/passwd) reaches a file. */
  const char *arg;
  size_t arg_len;
  gw_route_t route = gw_http_route(url, &arg, &arg_len);
  const gw_asset_t *asset = route == GW_ROUTE_ASSET ? gw_asset_find(arg) : NULL;
  if (route != GW_ROUTE_HEALTHZ && !asset && !authorized(h, c)) {
    struct MHD_Response *r = error_response("missing or wrong bearer token");
    if (r) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                   "Bearer realm=\"gradwatch\"");
    return send_response(c, MHD_HTTP_UNAUTHORIZED, r);
  }
  if (!head && strcmp(method, MHD_HTTP_METHOD_GET) != 0) {
    struct MHD_Response *r = error_response("method not allowed");
    if (r) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    return send_response(c, MHD_HTTP_METHOD_NOT_ALLOWED, r);
  }

  switch (route) {
    case GW_ROUTE_HEALTHZ:
    case GW_ROUTE_READYZ: {
      int healthz = route == GW_ROUTE_HEALTHZ;
      if (!healthz && h->deps.ready && !atomic_load(h->deps.ready))
        return unavailable(c, "not ready");
      cJSON *o = cJSON_CreateObject();
      if (o && !cJSON_AddStringToObject(o, "status", healthz ? "ok" : "ready")) {
        cJSON_Delete(o);
        o = NULL;
      }
      return o ? send_json(c, MHD_HTTP_OK, o) : MHD_NO;
    }
    case GW_ROUTE_METRICS:
      return h->deps.metrics ? h_metrics(h, c) : unavailable(c, "metrics not configured");
    case GW_ROUTE_STATS:
      return h_stats(h, c);
    case GW_ROUTE_EVENTS:
      return h->deps.live ? h_events(h, c, head) : unavailable(c, "live feed not configured");
    case GW_ROUTE_RUNS:
    case GW_ROUTE_ALERTS:
    case GW_ROUTE_SERIES:
    case GW_ROUTE_STREAMS:
    case GW_ROUTE_RESTARTS:
    case GW_ROUTE_RUN:
    case GW_ROUTE_RUN_SUMMARY:
    case GW_ROUTE_SUMMARY:
      if (!h->deps.store) return unavailable(c, "store not configured");
      if (route == GW_ROUTE_RUN || route == GW_ROUTE_RUN_SUMMARY || route == GW_ROUTE_SUMMARY)
        return gw_http_summary_serve(c, h->deps.store, GW_HTTP_STALL_NS, route, arg, arg_len);
      if (route == GW_ROUTE_RUNS) return h_runs(h, c);
      if (route == GW_ROUTE_RESTARTS) return h_restarts(h, c);
      if (route == GW_ROUTE_ALERTS) return h_alerts(h, c);
      if (route == GW_ROUTE_SERIES) return h_series(h, c, con_cls);
      return h_streams(h, c, arg, arg_len);
    case GW_ROUTE_ASSET:
      if (asset) return h_asset(c, asset);
      break;
    case GW_ROUTE_NONE:
      break;
  }
  return send_error(c, MHD_HTTP_NOT_FOUND, "not found");
}

/* libmicrohttpd's %XX decoding, except that "%00" is left encoded
 * (gw_http_unescape). */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s) {
  (void)cls;
  (void)c;
  return gw_http_unescape(s);
}

/* ---- start / stop ---- */

/* "HOST:PORT" or "[V6]:PORT" → socket address. Empty HOST means 0.0.0.0. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss, socklen_t *len) {
  char host[256];
  const char *port;
  struct addrinfo hints, *res = NULL;
  uint64_t pn;
  if (!addr) return GW_ECONFIG;
  if (addr[0] == '[') {
    const char *e = strchr(addr, ']');
    if (!e || e[1] != ':' || (size_t)(e - addr - 1) >= sizeof host) return GW_ECONFIG;
    memcpy(host, addr + 1, (size_t)(e - addr - 1));
    host[e - addr - 1] = '\0';
    port = e + 2;
  } else {
    const char *e = strrchr(addr, ':');
    if (!e || (size_t)(e - addr) >= sizeof host) return GW_ECONFIG;
    memcpy(host, addr, (size_t)(e - addr));
    host[e - addr] = '\0';
    if (strchr(host, ':')) return GW_ECONFIG; /* bare IPv6 needs brackets */
    port = e + 1;
  }
  if (gw_http_parse_u64(port, &pn) != 0 || pn > 65535) return GW_ECONFIG;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
  if (getaddrinfo(host[0] ? host : "0.0.0.0", port, &hints, &res) != 0 || !res)
    return GW_ECONFIG;
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

static int listen_on(const struct sockaddr_storage *ss, socklen_t len, int *fd_out,
                     uint16_t *port) {
  int one = 1, rc;
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  if (fd < 0) return -errno;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) goto fail;
  if (ss->ss_family == AF_INET6 &&
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
    goto fail;
  if (bind(fd, (const struct sockaddr *)ss, len) != 0) goto fail;
  if (listen(fd, 128) != 0) goto fail;
  if (getsockname(fd, (struct sockaddr *)&bound, &bl) != 0) goto fail;
  *port = ntohs(bound.ss_family == AF_INET6
                    ? ((struct sockaddr_in6 *)&bound)->sin6_port
                    : ((struct sockaddr_in *)&bound)->sin_port);
  *fd_out = fd;
  return 0;
fail:
  rc = -errno;
  close(fd);
  return rc;
}

/* A whole PEM file as a NUL-terminated string (caller frees), at most 1 MiB. */
static int read_pem(const char *path, char **out) {
  FILE *f = fopen(path, "r");
  char *buf = NULL;
  size_t len;
  int rc = 0;
  *out = NULL;
  if (!f) return -errno;
  if (!(buf = malloc((1u << 20) + 1))) {
    rc = GW_ENOMEM;
    goto done;
  }
  len = fread(buf, 1, 1u << 20, f);
  if (ferror(f)) rc = GW_EIO;
  else if (len == 0 || !feof(f)) rc = GW_ECONFIG; /* empty, or over 1 MiB */
  if (rc) goto done;
  buf[len] = '\0';
  *out = buf;
  buf = NULL;
done:
  free(buf);
  fclose(f);
  return rc;
}

/* Stop the answer threads (they answer what is queued with 503 first) and
 * free what they use. Accepts a partly started server. */
static void stop_threads(gw_http_t *h) {
  if (!h->jinit) return;
  pthread_mutex_lock(&h->jmu);
  h->jstop = 1;
  pthread_cond_broadcast(&h->jcv);
  pthread_mutex_unlock(&h->jmu);
  for (unsigned i = 0; i < h->nthreads; i++) pthread_join(h->threads[i], NULL);
  free(h->threads);
  h->threads = NULL;
  h->nthreads = 0;
}

/* After libmicrohttpd has stopped (no handler can take jmu any more). */
static void free_threads(gw_http_t *h) {
  stop_threads(h);
  if (!h->jinit) return;
  pthread_cond_destroy(&h->jcv);
  pthread_mutex_destroy(&h->jmu);
  h->jinit = 0;
}

int gw_http_start(gw_http_t **out, const gw_http_config_t *cfg,
                  const gw_http_deps_t *deps) {
  gw_http_t *h = NULL;
  struct sockaddr_storage ss;
  socklen_t sl;
  int rc;
  *out = NULL;
  gw_http_config_t def;
  if (!deps || !deps->stats) return GW_EINVAL;
  gw_http_config_default(&def);
  if ((rc = parse_addr(cfg->addr ? cfg->addr : def.addr, &ss, &sl)) != 0) return rc;
  if (!(h = calloc(1, sizeof *h))) return GW_ENOMEM;
  h->fd = -1;
  h->deps = *deps;
  if (cfg->token && cfg->token[0] && !(h->token = strdup(cfg->token))) {
    rc = GW_ENOMEM;
    goto fail;
  }
  if (!!cfg->cert_file != !!cfg->key_file) {
    rc = GW_ECONFIG;
    goto fail;
  }
  if (cfg->cert_file) {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
      rc = GW_ECONFIG;
      goto fail;
    }
    if ((rc = read_pem(cfg->cert_file, &h->cert_pem)) != 0 ||
        (rc = read_pem(cfg->key_file, &h->key_pem)) != 0)
      goto fail;
  }
  h->series_max = cfg->series_max_bytes ? cfg->series_max_bytes : def.series_max_bytes;
  h->budget = cfg->answer_budget_bytes ? cfg->answer_budget_bytes : def.answer_budget_bytes;
  atomic_init(&h->held, 0);
  if ((rc = listen_on(&ss, sl, &h->fd, &h->port)) != 0) goto fail;
  if ((rc = -pthread_mutex_init(&h->jmu, NULL)) != 0) goto fail;
  if ((rc = -pthread_cond_init(&h->jcv, NULL)) != 0) {
    pthread_mutex_destroy(&h->jmu);
    goto fail;
  }
  h->jinit = 1;
  unsigned nt = cfg->answer_threads ? cfg->answer_threads : def.answer_threads;
  if (!(h->threads = calloc(nt, sizeof *h->threads))) {
    rc = GW_ENOMEM;
    goto fail;
  }
  for (; h->nthreads < nt; h->nthreads++)
    if ((rc = -pthread_create(&h->threads[h->nthreads], NULL, answer_thread, h)) != 0) goto fail;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME;
  if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  if (h->cert_pem) flags |= MHD_USE_TLS;
  struct MHD_OptionItem tls[] = {{MHD_OPTION_HTTPS_MEM_CERT, 0, h->cert_pem},
                                 {MHD_OPTION_HTTPS_MEM_KEY, 0, h->key_pem},
                                 {MHD_OPTION_END, 0, NULL}};
  h->mhd = MHD_start_daemon(
      flags, 0, NULL, NULL, handle, h,
      MHD_OPTION_LISTEN_SOCKET, (MHD_socket)h->fd,
      MHD_OPTION_THREAD_POOL_SIZE, cfg->threads ? cfg->threads : def.threads,
      MHD_OPTION_CONNECTION_LIMIT, cfg->conn_limit ? cfg->conn_limit : def.conn_limit,
      MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      cfg->per_ip_limit ? cfg->per_ip_limit : def.per_ip_limit,
      MHD_OPTION_CONNECTION_TIMEOUT, cfg->timeout_s ? cfg->timeout_s : def.timeout_s,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)MEMORY_LIMIT,
      MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
      MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
      MHD_OPTION_ARRAY, h->cert_pem ? tls : tls + 2, /* no TLS: an empty list */
      MHD_OPTION_END);
  if (!h->mhd) {
    rc = GW_EIO;
    goto fail;
  }
  *out = h;
  return 0;
fail:
  free_threads(h);
  if (h->fd >= 0) close(h->fd);
  free(h->token);
  free(h->cert_pem);
  free(h->key_pem);
  free(h);
  return rc;
}

uint16_t gw_http_port(const gw_http_t *h) { return h->port; }

void gw_http_stop(gw_http_t *h) {
  if (!h) return;
  /* Stop accepting; the listening socket comes back to us. */
  MHD_socket fd = MHD_quiesce_daemon(h->mhd);
  /* No connection may stay suspended through MHD_stop_daemon. */
  if (h->deps.live) gw_live_close_clients(h->deps.live);
  /* Answers still queued are answered 503 and resumed, then no connection
   * is suspended on our account. */
  stop_threads(h);
  MHD_stop_daemon(h->mhd);
  free_threads(h);
  if (fd != MHD_INVALID_SOCKET) close(fd);
  free(h->token);
  free(h->cert_pem);
  free(h->key_pem);
  free(h);
}
