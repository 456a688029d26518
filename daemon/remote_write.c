/* remote_write.c — the remote-write sink: per-receiver rings of fixed-size
 * point records, one worker thread per receiver that batches, encodes
 * (protoc-c's code for proto/remote.proto), snappy-compresses and POSTs
 * them with libcurl. See remote_write.h for the series and the states of a
 * point.
 *
 * Streams. The sink keeps, by stream id, a reference-counted label block
 * (run and tag) and the last timestamp it gave the stream. The table is
 * touched only from the sink callbacks (ingest serialises them); each
 * queued record holds one reference, dropped by the worker once the record
 * is sent or given up, so a stream forgotten while its points are still
 * queued keeps its labels until they are out.
 *
 * Locking: each receiver's `mu` guards its ring, counters and `in_flight`;
 * the worker drops it for encoding and the network. The worker waits on
 * `wake` for records (or a retry deadline, CLOCK_MONOTONIC); drain waits
 * on `idle`. Stopping sets `stop`, broadcasts `wake` and calls
 * curl_multi_wakeup, so an attempt in flight ends at once.
 */
#include "remote_write.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <snappy-c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "remote.pb-c.h"
#include "util.h"

#define LOG_PER_SEC 5    /* failure lines a second, per receiver */
#define ERRBODY_MAX 256  /* bytes of a refusal's body kept for the log */
#define NAME_PREFIX "gradwatch_point_"

/* ---- streams ---- */

typedef struct stream_s {
  atomic_uint refs; /* the table's + one per queued record */
  int64_t last_ms;  /* last timestamp given (sink callbacks only) */
  char *run, *tag;  /* point into the same allocation */
} stream_t;

static stream_t *stream_new(const char *run, const char *tag) {
  size_t lr = strlen(run) + 1, lt = strlen(tag) + 1;
  stream_t *s = malloc(sizeof(*s) + lr + lt);
  if (!s) return NULL;
  atomic_init(&s->refs, 1);
  s->last_ms = 0;
  s->run = (char *)(s + 1);
  s->tag = s->run + lr;
  memcpy(s->run, run, lr);
  memcpy(s->tag, tag, lt);
  return s;
}

static void stream_unref(stream_t *s) {
  if (s && atomic_fetch_sub(&s->refs, 1) == 1) free(s);
}

/* ---- records ----
 * A record is `stream_t *`, int64 timestamp (ms), then 1 + m doubles: the
 * step, then the configured metrics in order. */

typedef struct rec_head_s {
  stream_t *s;
  int64_t ts_ms;
} rec_head_t;

#define REC_SIZE(m) (sizeof(rec_head_t) + sizeof(double) * ((m) + 1))
#define REC_MAX REC_SIZE(GW_METRIC_COUNT)

/* ---- one receiver ---- */

/* Worker-owned encoding buffers, grown as needed and kept. */
typedef struct enc_s {
  size_t *slot;       /* open-addressing table: group index + 1, 0 = empty */
  size_t slot_cap;
  stream_t **grp;
  size_t grp_cap;
  size_t *count;      /* per series (group × column) */
  Gwremote__TimeSeries *ts;
  Gwremote__TimeSeries **tsp;
  Gwremote__Label *lab;
  Gwremote__Label **labp;
  size_t ts_cap;
  Gwremote__Sample *smp;
  Gwremote__Sample **smpp;
  size_t smp_cap;
  uint8_t *raw;
  size_t raw_cap;
  char *z;
  size_t z_cap;
} enc_t;

typedef struct rcv_s {
  struct gw_remote_write_s *rw;
  char *url;
  char *label; /* url without user:password@ */
  pthread_mutex_t mu;
  pthread_cond_t wake, idle;
  unsigned char *ring; /* queue_max records */
  size_t head, len;
  size_t in_flight;
  uint64_t sent, failed, dropped, requests, retries;
  gw_ratelimit_t log_limit; /* under mu */
  pthread_t thread;
  int thread_started, mu_init, cv_init;
  CURLM *multi;
  CURL *easy;
  struct curl_slist *headers;
  /* worker only */
  unsigned char *batch; /* batch_max records */
  enc_t enc;
  char errbody[ERRBODY_MAX];
  size_t errbody_len;
} rcv_t;

enum { L_NAME, L_RUN, L_TAG, L_EXTRA };
#define LABELS_MAX (3 + GW_REMOTE_WRITE_LABELS_MAX)

struct gw_remote_write_s {
  gw_remote_write_config_t cfg;
  /* every series' labels, sorted by name: __name__, run, tag and the
   * --remote-write-label ones (names and values owned here) */
  size_t n_labels;
  char *lname[LABELS_MAX], *lvalue[LABELS_MAX];
  int lkind[LABELS_MAX];
  int ids[GW_METRIC_COUNT];
  size_t m;
  char *names[GW_METRIC_COUNT + 1]; /* the metrics' series names, then the step's */
  size_t rec_size;
  stream_t **streams; /* by stream id; sink callbacks only */
  size_t n_streams;
  rcv_t *rcv;
  size_t n_rcv;
  atomic_int stop;
  int curl_inited;
};

void gw_remote_write_config_default(gw_remote_write_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->queue_max = 100000;
  cfg->batch_max = 2000;
  cfg->batch_wait_ms = 50;
  cfg->timeout_ms = 10000;
  cfg->backoff_ms = 100;
  cfg->backoff_max_ms = 5000;
}

int gw_remote_write_parse_metrics(const char *list, int ids[GW_METRIC_COUNT], size_t *n,
                                  char *err, size_t errlen) {
  *n = 0;
  if (!list) list = GW_REMOTE_WRITE_DEFAULT_METRICS;
  const char *p = list;
  for (;;) {
    while (*p == ' ' || *p == '\t') p++;
    const char *e = p;
    while (*e && *e != ',') e++;
    const char *t = e;
    while (t > p && (t[-1] == ' ' || t[-1] == '\t')) t--;
    if (t == p) {
      snprintf(err, errlen, "remote-write-metrics: empty name in '%s'", list);
      return GW_ECONFIG;
    }
    int id = gw_metric_lookup(p, (size_t)(t - p));
    if (id < 0) {
      snprintf(err, errlen, "remote-write-metrics: unknown metric '%.*s'", (int)(t - p), p);
      return GW_ECONFIG;
    }
    for (size_t i = 0; i < *n; i++)
      if (ids[i] == id) {
        snprintf(err, errlen, "remote-write-metrics: '%.*s' listed twice", (int)(t - p), p);
        return GW_ECONFIG;
      }
    ids[(*n)++] = id;
    if (!*e) break;
    p = e + 1;
  }
  return 0;
}

/* ---- logging (caller holds mu) ---- */

static void log_loss(rcv_t *r, const char *result, const char *detail, uint64_t points) {
  uint64_t held = 0;
  char url[256], det[ERRBODY_MAX + 16];
  gw_log_t *log = r->rw->cfg.log;
  if (!log || !gw_ratelimit_allow(&r->log_limit, gw_mono_ns(), &held)) return;
  gw_log(log, GW_LOG_WARN, "remote_write",
         "url=%s result=%s points=%llu detail=%s sent=%llu failed=%llu dropped=%llu suppressed=%llu",
         gw_log_quote(url, sizeof(url), r->label), result, (unsigned long long)points,
         gw_log_quote(det, sizeof(det), detail), (unsigned long long)r->sent,
         (unsigned long long)r->failed, (unsigned long long)r->dropped, (unsigned long long)held);
}

/* ---- the sink (ingest, serialised) ---- */

static stream_t *stream_of(gw_remote_write_t *rw, const gw_stream_ref_t *s) {
  if (s->stream_id >= rw->n_streams) {
    size_t n = rw->n_streams ? rw->n_streams : 64;
    while (n <= s->stream_id) n *= 2;
    stream_t **p = realloc(rw->streams, n * sizeof(*p));
    if (!p) return NULL;
    memset(p + rw->n_streams, 0, (n - rw->n_streams) * sizeof(*p));
    rw->streams = p;
    rw->n_streams = n;
  }
  stream_t *st = rw->streams[s->stream_id];
  if (st && (strcmp(st->run, s->run) || strcmp(st->tag, s->tag))) {
    stream_unref(st); /* the id was given to another stream without a forget */
    st = rw->streams[s->stream_id] = NULL;
  }
  if (!st) st = rw->streams[s->stream_id] = stream_new(s->run, s->tag);
  return st;
}

static void on_open(void *arg, const gw_stream_ref_t *s, const gw_open_t *o) {
  (void)o;
  stream_of(arg, s);
}

static void on_forget(void *arg, const gw_stream_ref_t *s) {
  gw_remote_write_t *rw = arg;
  if (s->stream_id < rw->n_streams) {
    stream_unref(rw->streams[s->stream_id]);
    rw->streams[s->stream_id] = NULL;
  }
}

static void on_point(void *arg, const gw_stream_ref_t *s, const gw_point_t *p) {
  gw_remote_write_t *rw = arg;
  _Alignas(8) unsigned char rec[REC_MAX];
  rec_head_t *h = (rec_head_t *)rec;
  double *v = (double *)(h + 1);
  stream_t *st = stream_of(rw, s);
  int64_t ms = p->recv_ns / 1000000;
  if (st) {
    if (ms <= st->last_ms) ms = st->last_ms + 1;
    st->last_ms = ms;
  }
  h->s = st;
  h->ts_ms = ms;
  v[0] = (double)p->step;
  for (size_t j = 0; j < rw->m; j++) v[1 + j] = gw_point_get(p, rw->ids[j]);
  for (size_t i = 0; i < rw->n_rcv; i++) {
    rcv_t *r = &rw->rcv[i];
    pthread_mutex_lock(&r->mu);
    if (!st || r->len == rw->cfg.queue_max) {
      r->dropped++;
      log_loss(r, "dropped", st ? "queue_full" : "no_memory", 1);
    } else {
      atomic_fetch_add(&st->refs, 1);
      memcpy(r->ring + ((r->head + r->len) % rw->cfg.queue_max) * rw->rec_size, rec, rw->rec_size);
      if (r->len++ == 0 || r->len == rw->cfg.batch_max) pthread_cond_signal(&r->wake);
    }
    pthread_mutex_unlock(&r->mu);
  }
}

void gw_remote_write_sink(gw_remote_write_t *rw, gw_sink_t *out) {
  memset(out, 0, sizeof(*out));
  out->name = "remote_write";
  out->arg = rw;
  out->open = on_open;
  out->point = on_point;
  out->forget = on_forget;
}

/* ---- encoding (worker) ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : 64;
  while (n < need) n *= 2;
  void *q = realloc(*p, n * elem);
  if (!q) return GW_ENOMEM;
  *p = q;
  *cap = n;
  return 0;
}

/* The per-series arrays, all with room for `need` series (labels 3 each). */
static int grow_ts(enc_t *e, size_t need, size_t nl) {
  if (need <= e->ts_cap) return 0;
  size_t n = e->ts_cap ? e->ts_cap : 64;
  while (n < need) n *= 2;
  void *p;
#define RE(field, count)                                     \
  if (!(p = realloc(e->field, (count) * sizeof(*e->field)))) \
    return GW_ENOMEM;                                        \
  e->field = p;
  RE(ts, n) RE(tsp, n) RE(count, n) RE(lab, nl * n) RE(labp, nl * n)
#undef RE
  e->ts_cap = n;
  return 0;
}

static void enc_free(enc_t *e) {
  free(e->slot);
  free(e->grp);
  free(e->count);
  free(e->ts);
  free(e->tsp);
  free(e->lab);
  free(e->labp);
  free(e->smp);
  free(e->smpp);
  free(e->raw);
  free(e->z);
  memset(e, 0, sizeof(*e));
}

/* Group index of stream s in this batch, adding it; *ng groups so far. */
static size_t group_of(enc_t *e, stream_t *s, size_t *ng) {
  size_t mask = e->slot_cap - 1, h = (size_t)gw_fnv1a(GW_FNV_OFFSET, &s, sizeof(s)) & mask;
  while (e->slot[h]) {
    if (e->grp[e->slot[h] - 1] == s) return e->slot[h] - 1;
    h = (h + 1) & mask;
  }
  e->grp[*ng] = s;
  e->slot[h] = ++*ng;
  return *ng - 1;
}

/* Encode n records of `batch` into e->z (snappy of the WriteRequest);
 * *zlen bytes. 0 or GW_ENOMEM / GW_EIO. */
static int encode(gw_remote_write_t *rw, enc_t *e, const unsigned char *batch, size_t n,
                  size_t *zlen) {
  const size_t cols = rw->m + 1; /* column 0 is the step, series name names[m] */
  size_t ng = 0, slots = 64, nser, nsmp = 0, c0;
  int rc;
  while (slots < 2 * n) slots *= 2;
  c0 = e->slot_cap;
  if ((rc = grow((void **)&e->slot, &c0, slots, sizeof(*e->slot)))) return rc;
  e->slot_cap = slots; /* exactly a power of two for the mask */
  memset(e->slot, 0, slots * sizeof(*e->slot));
  c0 = e->grp_cap;
  if ((rc = grow((void **)&e->grp, &c0, n, sizeof(*e->grp)))) return rc;
  e->grp_cap = c0;
  if ((rc = grow_ts(e, n * cols, rw->n_labels))) return rc;

  /* Pass 1: the groups (streams) and the samples of each series. */
  for (size_t i = 0; i < n; i++) {
    const rec_head_t *h = (const rec_head_t *)(batch + i * rw->rec_size);
    size_t before = ng, g = group_of(e, h->s, &ng);
    if (ng != before) memset(e->count + g * cols, 0, cols * sizeof(*e->count));
    const double *v = (const double *)(h + 1);
    for (size_t c = 0; c < cols; c++)
      if (!isnan(v[c])) e->count[g * cols + c]++, nsmp++;
  }
  nser = ng * cols;
  c0 = e->smp_cap;
  if ((rc = grow((void **)&e->smp, &c0, nsmp ? nsmp : 1, sizeof(*e->smp)))) return rc;
  c0 = e->smp_cap;
  if ((rc = grow((void **)&e->smpp, &c0, nsmp ? nsmp : 1, sizeof(*e->smpp)))) return rc;
  e->smp_cap = c0;

  /* The series: labels in rw->order (sorted by name), samples laid out
   * series after series; series without samples are left out. */
  size_t off = 0, kept = 0;
  for (size_t s = 0; s < nser; s++) {
    size_t g = s / cols, c = s % cols, cnt = e->count[s];
    e->count[s] = off; /* from here on: the next free sample of series s */
    if (!cnt) continue;
    Gwremote__TimeSeries *t = &e->ts[kept];
    const size_t nl = rw->n_labels;
    Gwremote__Label *l = &e->lab[kept * nl];
    gwremote__time_series__init(t);
    for (size_t k = 0; k < nl; k++) {
      gwremote__label__init(&l[k]);
      e->labp[kept * nl + k] = &l[k];
      l[k].name = rw->lname[k];
      l[k].value = rw->lvalue[k]; /* an extra label's value, or NULL: set below */
      if (rw->lkind[k] == L_NAME) l[k].value = rw->names[c == 0 ? rw->m : c - 1];
      else if (rw->lkind[k] == L_RUN) l[k].value = e->grp[g]->run;
      else if (rw->lkind[k] == L_TAG) l[k].value = e->grp[g]->tag;
    }
    t->n_labels = nl;
    t->labels = &e->labp[kept * nl];
    t->n_samples = cnt;
    t->samples = &e->smpp[off];
    e->tsp[kept++] = t;
    off += cnt;
  }
  /* Pass 2: the samples, in record (time) order within each series. */
  for (size_t i = 0; i < n; i++) {
    const rec_head_t *h = (const rec_head_t *)(batch + i * rw->rec_size);
    size_t g = group_of(e, h->s, &ng);
    const double *v = (const double *)(h + 1);
    for (size_t c = 0; c < cols; c++) {
      if (isnan(v[c])) continue;
      size_t k = e->count[g * cols + c]++;
      gwremote__sample__init(&e->smp[k]);
      e->smp[k].value = v[c];
      e->smp[k].timestamp = h->ts_ms;
      e->smpp[k] = &e->smp[k];
    }
  }
  Gwremote__WriteRequest req = GWREMOTE__WRITE_REQUEST__INIT;
  req.n_timeseries = kept;
  req.timeseries = e->tsp;
  size_t raw = gwremote__write_request__get_packed_size(&req);
  size_t zmax = snappy_max_compressed_length(raw);
  if ((rc = grow((void **)&e->raw, &e->raw_cap, raw ? raw : 1, 1)) ||
      (rc = grow((void **)&e->z, &e->z_cap, zmax, 1)))
    return rc;
  gwremote__write_request__pack(&req, e->raw);
  *zlen = e->z_cap;
  if (snappy_compress((const char *)e->raw, raw, e->z, zlen) != SNAPPY_OK) return GW_EIO;
  return 0;
}

/* ---- one attempt ---- */

enum { R_OK, R_RETRY, R_REFUSED, R_ABORT };

static size_t keep_body(char *p, size_t size, size_t n, void *arg) {
  rcv_t *r = arg;
  size_t len = size * n, room = ERRBODY_MAX - 1 - r->errbody_len;
  size_t take = len < room ? len : room;
  memcpy(r->errbody + r->errbody_len, p, take);
  r->errbody_len += take;
  r->errbody[r->errbody_len] = '\0';
  return len;
}

static int post_once(rcv_t *r, const char *body, size_t len, long *code) {
  CURLcode res = CURLE_OK;
  int running = 1, aborted = 0, q;
  *code = 0;
  r->errbody_len = 0;
  r->errbody[0] = '\0';
  curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
  if (curl_multi_add_handle(r->multi, r->easy) != CURLM_OK) return R_RETRY;
  while (running) {
    if (atomic_load(&r->rw->stop)) {
      aborted = 1;
      break;
    }
    if (curl_multi_perform(r->multi, &running) != CURLM_OK) {
      res = CURLE_FAILED_INIT;
      break;
    }
    if (running && curl_multi_poll(r->multi, NULL, 0, 1000, NULL) != CURLM_OK) {
      res = CURLE_FAILED_INIT;
      break;
    }
  }
  CURLMsg *m;
  while ((m = curl_multi_info_read(r->multi, &q)))
    if (m->msg == CURLMSG_DONE) res = m->data.result;
  if (!aborted && res == CURLE_OK) curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, code);
  curl_multi_remove_handle(r->multi, r->easy);
  if (aborted) return R_ABORT;
  if (res != CURLE_OK) {
    snprintf(r->errbody, sizeof(r->errbody), "%s", curl_easy_strerror(res));
    return R_RETRY;
  }
  if (*code >= 200 && *code < 300) return R_OK;
  if (*code >= 500 || *code == 429) return R_RETRY;
  return R_REFUSED;
}

/* CLOCK_MONOTONIC now + ms. */
static struct timespec deadline(uint32_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

/* Sleep ms unless stopped; 1 if stopped. */
static int backoff_wait(rcv_t *r, uint32_t ms) {
  struct timespec ts = deadline(ms);
  pthread_mutex_lock(&r->mu);
  int rc = 0;
  while (!atomic_load(&r->rw->stop) && rc != ETIMEDOUT)
    rc = pthread_cond_timedwait(&r->wake, &r->mu, &ts);
  int stopped = atomic_load(&r->rw->stop);
  pthread_mutex_unlock(&r->mu);
  return stopped;
}

/* Send n records: R_OK, R_REFUSED or R_ABORT (stopped). Retries until one
 * of those; logs every failed attempt (rate-limited). */
static int deliver(rcv_t *r, size_t n) {
  gw_remote_write_t *rw = r->rw;
  uint32_t delay = rw->cfg.backoff_ms;
  size_t zlen = 0;
  char detail[ERRBODY_MAX + 32];
  int rc = encode(rw, &r->enc, r->batch, n, &zlen);
  if (rc) {
    pthread_mutex_lock(&r->mu);
    log_loss(r, "failed", gw_strerror(rc), n);
    pthread_mutex_unlock(&r->mu);
    return R_REFUSED;
  }
  for (uint32_t attempt = 0;; attempt++) {
    long code;
    pthread_mutex_lock(&r->mu);
    r->requests++;
    if (attempt) r->retries++;
    pthread_mutex_unlock(&r->mu);
    int res = post_once(r, r->enc.z, zlen, &code);
    if (res == R_OK || res == R_ABORT) return res;
    snprintf(detail, sizeof(detail), "http=%ld %s", code, r->errbody);
    pthread_mutex_lock(&r->mu);
    log_loss(r, res == R_REFUSED ? "refused" : "retrying", detail, n);
    pthread_mutex_unlock(&r->mu);
    if (res == R_REFUSED) return res;
    if (backoff_wait(r, delay)) return R_ABORT;
    delay = delay > rw->cfg.backoff_max_ms / 2 ? rw->cfg.backoff_max_ms : delay * 2;
  }
}

static void *worker(void *arg) {
  rcv_t *r = arg;
  gw_remote_write_t *rw = r->rw;
  const size_t q = rw->cfg.queue_max, rs = rw->rec_size;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    while (!atomic_load(&rw->stop) && r->len == 0) pthread_cond_wait(&r->wake, &r->mu);
    if (r->len < rw->cfg.batch_max && rw->cfg.batch_wait_ms) { /* let a batch gather */
      struct timespec ts = deadline(rw->cfg.batch_wait_ms);
      int rc = 0;
      while (!atomic_load(&rw->stop) && r->len < rw->cfg.batch_max && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&r->wake, &r->mu, &ts);
    }
    if (atomic_load(&rw->stop)) break;
    size_t n = r->len < rw->cfg.batch_max ? r->len : rw->cfg.batch_max;
    size_t first = q - r->head < n ? q - r->head : n;
    memcpy(r->batch, r->ring + r->head * rs, first * rs);
    memcpy(r->batch + first * rs, r->ring, (n - first) * rs);
    r->head = (r->head + n) % q;
    r->len -= n;
    r->in_flight = n;
    pthread_mutex_unlock(&r->mu);
    int res = deliver(r, n);
    for (size_t i = 0; i < n; i++) stream_unref(((rec_head_t *)(r->batch + i * rs))->s);
    pthread_mutex_lock(&r->mu);
    if (res == R_OK) {
      r->sent += n;
    } else if (res == R_REFUSED) {
      r->failed += n;
    } else {
      r->dropped += n;
      log_loss(r, "dropped", "stopped", n);
    }
    r->in_flight = 0;
    if (r->len == 0) pthread_cond_broadcast(&r->idle);
  }
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

/* ---- life cycle ---- */

/* The URL without user:password@ (for logs and labels); caller frees. */
static char *redact(const char *url) {
  const char *p = strstr(url, "://"), *at, *slash;
  if (!p) return strdup(url);
  p += 3;
  slash = p + strcspn(p, "/?#");
  at = memchr(p, '@', (size_t)(slash - p));
  if (!at) return strdup(url);
  size_t a = (size_t)(p - url), b = strlen(at + 1);
  char *s = malloc(a + b + 1);
  if (!s) return NULL;
  memcpy(s, url, a);
  memcpy(s + a, at + 1, b + 1);
  return s;
}

static int rcv_init(gw_remote_write_t *rw, rcv_t *r, const char *url) {
  pthread_condattr_t ca;
  int rc;
  r->rw = rw;
  r->log_limit.per_sec = LOG_PER_SEC;
  if (!(r->url = strdup(url)) || !(r->label = redact(url)) ||
      !(r->ring = malloc(rw->cfg.queue_max * rw->rec_size)) ||
      !(r->batch = malloc((size_t)rw->cfg.batch_max * rw->rec_size)))
    return GW_ENOMEM;
  if (!(r->multi = curl_multi_init()) || !(r->easy = curl_easy_init())) return GW_ENOMEM;
  struct curl_slist *h = NULL;
  static const char *const hdrs[] = {"Content-Type: application/x-protobuf",
                                     "Content-Encoding: snappy",
                                     "X-Prometheus-Remote-Write-Version: 0.1.0", "Expect:"};
  for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
    struct curl_slist *n = curl_slist_append(h, hdrs[i]);
    if (!n) {
      curl_slist_free_all(h);
      return GW_ENOMEM;
    }
    h = n;
  }
  r->headers = h;
  CURL *e = r->easy;
  long timeout = (long)rw->cfg.timeout_ms;
  if (curl_easy_setopt(e, CURLOPT_URL, r->url) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
    return GW_EINVAL;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "gradwatchd/" GW_VERSION);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  if ((rc = -pthread_mutex_init(&r->mu, NULL))) return rc;
  r->mu_init = 1;
  if ((rc = -pthread_condattr_init(&ca))) return rc;
  if ((rc = -pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)) ||
      (rc = -pthread_cond_init(&r->wake, &ca))) {
    pthread_condattr_destroy(&ca);
    return rc;
  }
  if ((rc = -pthread_cond_init(&r->idle, &ca))) {
    pthread_cond_destroy(&r->wake);
    pthread_condattr_destroy(&ca);
    return rc;
  }
  pthread_condattr_destroy(&ca);
  r->cv_init = 1;
  if ((rc = -pthread_create(&r->thread, NULL, worker, r))) return rc;
  r->thread_started = 1;
  return 0;
}

/* After the worker is joined (or never started). */
static void rcv_free(rcv_t *r) {
  const size_t q = r->rw->cfg.queue_max, rs = r->rw->rec_size;
  for (size_t i = 0; i < r->len; i++)
    stream_unref(((rec_head_t *)(r->ring + ((r->head + i) % q) * rs))->s);
  if (r->cv_init) {
    pthread_cond_destroy(&r->wake);
    pthread_cond_destroy(&r->idle);
  }
  if (r->mu_init) pthread_mutex_destroy(&r->mu);
  if (r->easy) curl_easy_cleanup(r->easy);
  if (r->multi) curl_multi_cleanup(r->multi);
  curl_slist_free_all(r->headers);
  enc_free(&r->enc);
  free(r->batch);
  free(r->ring);
  free(r->label);
  free(r->url);
}

static void stop_all(gw_remote_write_t *rw) {
  atomic_store(&rw->stop, 1);
  for (size_t i = 0; i < rw->n_rcv; i++) {
    rcv_t *r = &rw->rcv[i];
    if (!r->thread_started) continue;
    pthread_mutex_lock(&r->mu);
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);
    curl_multi_wakeup(r->multi);
    pthread_join(r->thread, NULL);
    r->thread_started = 0;
    pthread_mutex_lock(&r->mu);
    r->dropped += r->len;
    if (r->len) log_loss(r, "dropped", "stopped", r->len);
    pthread_mutex_unlock(&r->mu);
  }
}

void gw_remote_write_free(gw_remote_write_t *rw, uint32_t drain_ms) {
  if (!rw) return;
  if (drain_ms) gw_remote_write_drain(rw, drain_ms);
  stop_all(rw);
  for (size_t i = 0; i < rw->n_rcv; i++) rcv_free(&rw->rcv[i]);
  for (size_t i = 0; i < rw->n_streams; i++) stream_unref(rw->streams[i]);
  for (size_t i = 0; i <= GW_METRIC_COUNT; i++) free(rw->names[i]);
  for (size_t i = 0; i < rw->n_labels; i++)
    if (rw->lkind[i] == L_EXTRA) {
      free(rw->lname[i]);
      free(rw->lvalue[i]);
    }
  free(rw->streams);
  free(rw->rcv);
  if (rw->curl_inited) curl_global_cleanup();
  free(rw);
}

/* A label name as Prometheus allows it: [a-zA-Z_][a-zA-Z0-9_]* (a __
 * prefix is allowed: Mimir's HA deduplication uses __replica__). */
static int good_label_name(const char *s, size_t n) {
  if (n == 0) return 0;
  for (size_t i = 0; i < n; i++)
    if (!(isalpha((unsigned char)s[i]) || s[i] == '_' || (i && isdigit((unsigned char)s[i]))))
      return 0;
  return 1;
}

static int label_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The label set of every series: the three fixed ones and cfg->labels
 * ("name=value"), sorted by name into rw->lname/lvalue/lkind. */
static int parse_labels(gw_remote_write_t *rw, const gw_remote_write_config_t *cfg, char *err,
                        size_t errlen) {
  static const char *const fixed[] = {"__name__", "run", "tag"};
  char *sorted[LABELS_MAX];
  if (cfg->n_labels > GW_REMOTE_WRITE_LABELS_MAX) {
    snprintf(err, errlen, "remote-write-label: at most %d labels", GW_REMOTE_WRITE_LABELS_MAX);
    return GW_ECONFIG;
  }
  for (int k = 0; k < 3; k++) {
    rw->lname[k] = (char *)fixed[k];
    rw->lvalue[k] = NULL;
    rw->lkind[k] = L_NAME + k;
  }
  rw->n_labels = 3;
  for (size_t i = 0; i < cfg->n_labels; i++) {
    const char *l = cfg->labels[i], *eq = l ? strchr(l, '=') : NULL;
    size_t n = eq ? (size_t)(eq - l) : 0;
    if (!eq || !good_label_name(l, n) || !eq[1]) {
      snprintf(err, errlen, "remote-write-label: '%s' is not NAME=VALUE with a label name "
               "([a-zA-Z_][a-zA-Z0-9_]*) and a value", l ? l : "");
      return GW_ECONFIG;
    }
    for (size_t j = 0; j < rw->n_labels; j++)
      if (strlen(rw->lname[j]) == n && !strncmp(rw->lname[j], l, n)) {
        snprintf(err, errlen, "remote-write-label: '%.*s' given twice or reserved", (int)n, l);
        return GW_ECONFIG;
      }
    size_t k = rw->n_labels;
    rw->lkind[k] = L_EXTRA;
    rw->lname[k] = strndup(l, n);
    rw->lvalue[k] = strdup(eq + 1);
    rw->n_labels++;
    if (!rw->lname[k] || !rw->lvalue[k]) return GW_ENOMEM;
  }
  /* sort by name, carrying value and kind along (names are distinct) */
  for (size_t i = 0; i < rw->n_labels; i++) sorted[i] = rw->lname[i];
  qsort(sorted, rw->n_labels, sizeof sorted[0], label_cmp);
  char *nv[LABELS_MAX];
  int nk[LABELS_MAX];
  for (size_t i = 0; i < rw->n_labels; i++)
    for (size_t j = 0; j < rw->n_labels; j++)
      if (rw->lname[j] == sorted[i]) {
        nv[i] = rw->lvalue[j];
        nk[i] = rw->lkind[j];
      }
  for (size_t i = 0; i < rw->n_labels; i++) {
    rw->lname[i] = sorted[i];
    rw->lvalue[i] = nv[i];
    rw->lkind[i] = nk[i];
  }
  return 0;
}

int gw_remote_write_new(gw_remote_write_t **out, const gw_remote_write_config_t *cfg, char *err,
                        size_t errlen) {
  *out = NULL;
  if (!cfg || cfg->queue_max == 0 || cfg->batch_max == 0 || cfg->timeout_ms == 0) {
    snprintf(err, errlen, "remote-write: queue, batch and timeout must be positive");
    return GW_EINVAL;
  }
  if (cfg->n_urls == 0) {
    snprintf(err, errlen, "remote-write: no URL");
    return GW_ECONFIG;
  }
  for (size_t i = 0; i < cfg->n_urls; i++)
    if (!cfg->urls[i] || (strncasecmp(cfg->urls[i], "http://", 7) &&
                          strncasecmp(cfg->urls[i], "https://", 8)) ||
        strlen(cfg->urls[i]) <= 8) {
      snprintf(err, errlen, "remote-write: '%s' is not an http:// or https:// URL",
               cfg->urls[i] ? cfg->urls[i] : "");
      return GW_ECONFIG;
    }
  gw_remote_write_t *rw = calloc(1, sizeof(*rw));
  if (!rw) return GW_ENOMEM;
  int rc;
  rw->cfg = *cfg;
  rw->cfg.urls = NULL; /* copied into the receivers */
  rw->cfg.metrics = NULL;
  rw->cfg.labels = NULL;
  if (rw->cfg.backoff_max_ms < rw->cfg.backoff_ms) rw->cfg.backoff_max_ms = rw->cfg.backoff_ms;
  atomic_init(&rw->stop, 0);
  if ((rc = gw_remote_write_parse_metrics(cfg->metrics, rw->ids, &rw->m, err, errlen)) ||
      (rc = parse_labels(rw, cfg, err, errlen)))
    goto fail;
  rw->rec_size = REC_SIZE(rw->m);
  rc = GW_ENOMEM;
  for (size_t j = 0; j <= rw->m; j++) {
    const char *mn = j < rw->m ? gw_metric_name(rw->ids[j]) : "step";
    size_t len = sizeof(NAME_PREFIX) + strlen(mn);
    if (!(rw->names[j] = malloc(len))) goto fail;
    snprintf(rw->names[j], len, NAME_PREFIX "%s", mn);
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    rc = GW_EIO;
    goto fail;
  }
  rw->curl_inited = 1;
  if (!(rw->rcv = calloc(cfg->n_urls, sizeof(*rw->rcv)))) goto fail;
  for (size_t i = 0; i < cfg->n_urls; i++) {
    rw->n_rcv = i + 1;
    if ((rc = rcv_init(rw, &rw->rcv[i], cfg->urls[i]))) {
      snprintf(err, errlen, "remote-write %s: %s", cfg->urls[i], gw_strerror(rc));
      goto fail;
    }
  }
  *out = rw;
  return 0;
fail:
  gw_remote_write_free(rw, 0);
  return rc;
}

int gw_remote_write_drain(gw_remote_write_t *rw, uint32_t timeout_ms) {
  struct timespec ts = deadline(timeout_ms);
  int busy = 0;
  for (size_t i = 0; i < rw->n_rcv; i++) {
    rcv_t *r = &rw->rcv[i];
    if (!r->thread_started) continue;
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    while ((r->len || r->in_flight) && rc != ETIMEDOUT)
      rc = pthread_cond_timedwait(&r->idle, &r->mu, &ts);
    busy |= r->len || r->in_flight;
    pthread_mutex_unlock(&r->mu);
  }
  return busy ? -ETIMEDOUT : 0;
}

size_t gw_remote_write_count(const gw_remote_write_t *rw) { return rw ? rw->n_rcv : 0; }

int gw_remote_write_stats(gw_remote_write_t *rw, size_t i, gw_remote_write_stats_t *out) {
  if (!rw || i >= rw->n_rcv) return GW_EINVAL;
  rcv_t *r = &rw->rcv[i];
  pthread_mutex_lock(&r->mu);
  out->sent = r->sent;
  out->failed = r->failed;
  out->dropped = r->dropped;
  out->requests = r->requests;
  out->retries = r->retries;
  out->queued = r->len + r->in_flight;
  pthread_mutex_unlock(&r->mu);
  return 0;
}

int gw_remote_write_metrics(void *arg, gw_metrics_writer_t *w) {
  static const struct {
    const char *name, *type, *help;
  } fam[] = {
      {"gradwatch_remote_write_sent_points_total", "counter",
       "Points accepted by the remote-write receiver."},
      {"gradwatch_remote_write_failed_points_total", "counter",
       "Points the receiver refused (4xx other than 429); not retried."},
      {"gradwatch_remote_write_dropped_points_total", "counter",
       "Points never sent: the queue was full, or the daemon stopped first."},
      {"gradwatch_remote_write_requests_total", "counter", "Remote-write POSTs, retries included."},
      {"gradwatch_remote_write_retries_total", "counter",
       "Remote-write POSTs repeated after a 5xx, 429 or transport error."},
      {"gradwatch_remote_write_queued_points", "gauge", "Points waiting or in flight."},
  };
  gw_remote_write_t *rw = arg;
  int rc = 0;
  gw_remote_write_stats_t *st = calloc(rw->n_rcv ? rw->n_rcv : 1, sizeof(*st));
  if (!st) return GW_ENOMEM;
  for (size_t i = 0; i < rw->n_rcv; i++) gw_remote_write_stats(rw, i, &st[i]);
  for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]) && !rc; f++) {
    rc = gw_metrics_family(w, fam[f].name, fam[f].type, fam[f].help);
    for (size_t i = 0; i < rw->n_rcv && !rc; i++) {
      const uint64_t v[] = {st[i].sent,     st[i].failed,  st[i].dropped,
                            st[i].requests, st[i].retries, st[i].queued};
      const char *labels[] = {"url", rw->rcv[i].label, NULL};
      rc = gw_metrics_sample(w, fam[f].name, labels, (double)v[f]);
    }
  }
  free(st);
  return rc;
}
