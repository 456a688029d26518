/* webhook.c — one receiver: a bounded ring of JSON bodies, a worker thread
 * that POSTs them with libcurl, and the Alertmanager v4 payload writer. See
 * webhook.h for the states of a notification.
 *
 * Locking: `mu` guards the ring, the counters and `in_flight`; the worker
 * drops it for the network. The worker waits on `wake` for work (or for a
 * retry deadline, CLOCK_MONOTONIC); drain waits on `idle`. Stopping sets
 * `stop`, broadcasts `wake` and calls curl_multi_wakeup, so an attempt in
 * flight (the multi handle polls with curl_multi_poll) ends at once instead
 * of running out its timeout.
 */
#include "webhook.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "util.h"

#define LOG_PER_SEC 5 /* failure lines a second, per receiver */

struct gw_webhook_s {
  gw_webhook_config_t cfg; /* cfg.url points at url */
  char *url;
  pthread_mutex_t mu;
  pthread_cond_t wake; /* worker: work arrived, or stop */
  pthread_cond_t idle; /* drain: ring empty and nothing in flight */
  char **ring;         /* cfg.queue_max slots */
  size_t head, len;
  int in_flight;
  atomic_int stop;
  uint64_t sent, failed, dropped, attempts;
  gw_ratelimit_t log_limit; /* under mu */
  pthread_t thread;
  CURLM *multi;
  CURL *easy;
  struct curl_slist *headers;
};

void gw_webhook_config_default(gw_webhook_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->timeout_ms = 5000;
  cfg->retries = 3;
  cfg->backoff_ms = 500;
  cfg->backoff_max_ms = 30000;
  cfg->queue_max = 256;
}

/* ---- queue (caller holds mu) ---- */

static char *pop(gw_webhook_t *w) {
  char *b = w->ring[w->head];
  w->ring[w->head] = NULL;
  w->head = (w->head + 1) % w->cfg.queue_max;
  w->len--;
  return b;
}

/* Log a failed or dropped notification, rate-limited; caller holds mu.
 * why: "failed" (retries exhausted or refused), "dropped" (queue full or
 * stopped). */
static void log_loss(gw_webhook_t *w, const char *why, const char *detail) {
  uint64_t held = 0;
  char url[256];
  if (!w->cfg.log || !gw_ratelimit_allow(&w->log_limit, gw_mono_ns(), &held)) return;
  gw_log(w->cfg.log, GW_LOG_WARN, "webhook_delivery",
         "url=%s result=%s detail=%s sent=%llu failed=%llu dropped=%llu suppressed=%llu",
         gw_log_quote(url, sizeof(url), w->url), why, detail, (unsigned long long)w->sent,
         (unsigned long long)w->failed, (unsigned long long)w->dropped,
         (unsigned long long)held);
}

int gw_webhook_send(gw_webhook_t *w, const char *body) {
  if (!w || !body) return GW_EINVAL;
  char *copy = strdup(body), *old = NULL;
  if (!copy) return GW_ENOMEM;
  pthread_mutex_lock(&w->mu);
  if (w->len == w->cfg.queue_max) {
    old = pop(w); /* drop the oldest: the newest state is what matters */
    w->dropped++;
    log_loss(w, "dropped", "queue_full");
  }
  w->ring[(w->head + w->len) % w->cfg.queue_max] = copy;
  w->len++;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->mu);
  free(old);
  return 0;
}

/* ---- one attempt ---- */

enum { R_OK, R_RETRY, R_PERMANENT, R_ABORT };

static size_t discard(char *p, size_t size, size_t n, void *arg) {
  (void)p;
  (void)arg;
  return size * n;
}

static int post_once(gw_webhook_t *w, const char *body) {
  CURLcode res = CURLE_OK;
  int running = 1, aborted = 0, q;
  long code = 0;
  curl_easy_setopt(w->easy, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(w->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
  if (curl_multi_add_handle(w->multi, w->easy) != CURLM_OK) return R_RETRY;
  while (running) {
    if (atomic_load(&w->stop)) {
      aborted = 1;
      break;
    }
    if (curl_multi_perform(w->multi, &running) != CURLM_OK) {
      res = CURLE_FAILED_INIT;
      break;
    }
    if (running && curl_multi_poll(w->multi, NULL, 0, 1000, NULL) != CURLM_OK) {
      res = CURLE_FAILED_INIT;
      break;
    }
  }
  CURLMsg *m;
  while ((m = curl_multi_info_read(w->multi, &q)))
    if (m->msg == CURLMSG_DONE) res = m->data.result;
  if (!aborted && res == CURLE_OK) curl_easy_getinfo(w->easy, CURLINFO_RESPONSE_CODE, &code);
  curl_multi_remove_handle(w->multi, w->easy);
  if (aborted) return R_ABORT;
  if (res != CURLE_OK) return R_RETRY;
  if (code >= 200 && code < 300) return R_OK;
  if (code >= 500 || code == 408 || code == 429) return R_RETRY;
  return R_PERMANENT;
}

/* Sleep ms unless stopped; 1 if stopped. */
static int backoff_wait(gw_webhook_t *w, uint32_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&w->mu);
  int rc = 0;
  while (!atomic_load(&w->stop) && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->wake, &w->mu, &ts);
  int stopped = atomic_load(&w->stop);
  pthread_mutex_unlock(&w->mu);
  return stopped;
}

/* Deliver one body with retries; returns R_OK, R_PERMANENT (counted as
 * failed), R_RETRY (retries exhausted: failed) or R_ABORT (stopped: dropped). */
static int deliver(gw_webhook_t *w, const char *body) {
  uint32_t delay = w->cfg.backoff_ms;
  for (uint32_t attempt = 0;; attempt++) {
    pthread_mutex_lock(&w->mu);
    w->attempts++;
    pthread_mutex_unlock(&w->mu);
    int r = post_once(w, body);
    if (r != R_RETRY || attempt >= w->cfg.retries) return r;
    if (backoff_wait(w, delay)) return R_ABORT;
    delay = delay > w->cfg.backoff_max_ms / 2 ? w->cfg.backoff_max_ms : delay * 2;
  }
}

static void *worker(void *arg) {
  gw_webhook_t *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!atomic_load(&w->stop) && w->len == 0) pthread_cond_wait(&w->wake, &w->mu);
    if (atomic_load(&w->stop)) break;
    char *body = pop(w);
    w->in_flight = 1;
    pthread_mutex_unlock(&w->mu);
    int r = deliver(w, body);
    free(body);
    pthread_mutex_lock(&w->mu);
    if (r == R_OK) {
      w->sent++;
    } else if (r == R_ABORT) {
      w->dropped++;
      log_loss(w, "dropped", "stopped");
    } else {
      w->failed++;
      log_loss(w, "failed", r == R_PERMANENT ? "refused" : "retries_exhausted");
    }
    w->in_flight = 0;
    if (w->len == 0) pthread_cond_broadcast(&w->idle);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---- life cycle ---- */

static int init_curl(gw_webhook_t *w) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return GW_EIO;
  if (!(w->multi = curl_multi_init()) || !(w->easy = curl_easy_init()) ||
      !(w->headers = curl_slist_append(NULL, "Content-Type: application/json")))
    return GW_ENOMEM;
  CURL *e = w->easy;
  long timeout = (long)w->cfg.timeout_ms;
  if (curl_easy_setopt(e, CURLOPT_URL, w->url) != CURLE_OK ||
      curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
    return GW_EINVAL;
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_POST, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, w->headers);
  curl_easy_setopt(e, CURLOPT_USERAGENT, "gradwatchd/" GW_VERSION);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  return 0;
}

static void free_parts(gw_webhook_t *w, int curl_inited) {
  if (w->easy) curl_easy_cleanup(w->easy);
  if (w->multi) curl_multi_cleanup(w->multi);
  curl_slist_free_all(w->headers);
  if (curl_inited) curl_global_cleanup();
  free(w->ring);
  free(w->url);
  free(w);
}

int gw_webhook_new(gw_webhook_t **out, const gw_webhook_config_t *cfg) {
  *out = NULL;
  if (!cfg || !cfg->url || cfg->queue_max == 0 || cfg->timeout_ms == 0 ||
      (strncasecmp(cfg->url, "http://", 7) && strncasecmp(cfg->url, "https://", 8)))
    return GW_EINVAL;
  gw_webhook_t *w = calloc(1, sizeof(*w));
  if (!w) return GW_ENOMEM;
  int rc = GW_ENOMEM, curl_inited = 0, cv_attr = 0, mu = 0, wake = 0, idle = 0;
  pthread_condattr_t ca;
  w->cfg = *cfg;
  w->log_limit.per_sec = LOG_PER_SEC;
  if (w->cfg.backoff_max_ms < w->cfg.backoff_ms) w->cfg.backoff_max_ms = w->cfg.backoff_ms;
  atomic_init(&w->stop, 0);
  if (!(w->url = strdup(cfg->url)) || !(w->ring = calloc(cfg->queue_max, sizeof(char *))))
    goto fail;
  w->cfg.url = w->url;
  rc = init_curl(w);
  curl_inited = rc != GW_EIO;
  if (rc) goto fail;
  if ((rc = -pthread_condattr_init(&ca))) goto fail;
  cv_attr = 1;
  if ((rc = -pthread_condattr_setclock(&ca, CLOCK_MONOTONIC))) goto fail;
  if ((rc = -pthread_mutex_init(&w->mu, NULL))) goto fail;
  mu = 1;
  if ((rc = -pthread_cond_init(&w->wake, &ca))) goto fail;
  wake = 1;
  if ((rc = -pthread_cond_init(&w->idle, &ca))) goto fail;
  idle = 1;
  if ((rc = -pthread_create(&w->thread, NULL, worker, w))) goto fail;
  pthread_condattr_destroy(&ca);
  *out = w;
  return 0;
fail:
  if (idle) pthread_cond_destroy(&w->idle);
  if (wake) pthread_cond_destroy(&w->wake);
  if (mu) pthread_mutex_destroy(&w->mu);
  if (cv_attr) pthread_condattr_destroy(&ca);
  free_parts(w, curl_inited);
  return rc;
}

void gw_webhook_free(gw_webhook_t *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mu);
  atomic_store(&w->stop, 1);
  pthread_cond_broadcast(&w->wake);
  pthread_mutex_unlock(&w->mu);
  curl_multi_wakeup(w->multi);
  pthread_join(w->thread, NULL);
  while (w->len) free(pop(w));
  pthread_cond_destroy(&w->idle);
  pthread_cond_destroy(&w->wake);
  pthread_mutex_destroy(&w->mu);
  free_parts(w, 1);
}

int gw_webhook_drain(gw_webhook_t *w, uint32_t timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  int rc = 0;
  pthread_mutex_lock(&w->mu);
  while ((w->len || w->in_flight) && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->idle, &w->mu, &ts);
  int busy = w->len || w->in_flight;
  pthread_mutex_unlock(&w->mu);
  return busy ? -ETIMEDOUT : 0;
}

void gw_webhook_stats(gw_webhook_t *w, gw_webhook_stats_t *out) {
  pthread_mutex_lock(&w->mu);
  out->sent = w->sent;
  out->failed = w->failed;
  out->dropped = w->dropped;
  out->attempts = w->attempts;
  out->queued = w->len + (size_t)w->in_flight;
  pthread_mutex_unlock(&w->mu);
}

const gw_webhook_config_t *gw_webhook_config(const gw_webhook_t *w) { return &w->cfg; }

/* ---- payload ---- */

typedef struct pair_s {
  const char *name, *value;
} pair_t;

static int pair_cmp(const void *a, const void *b) {
  return strcmp(((const pair_t *)a)->name, ((const pair_t *)b)->name);
}

/* Sorted copy of a NULL-terminated name/value list; *n pairs. NULL on OOM. */
static pair_t *sorted_pairs(const char *const *kv, size_t *n) {
  size_t c = 0;
  while (kv && kv[2 * c] && kv[2 * c + 1]) c++;
  pair_t *p = malloc((c ? c : 1) * sizeof(*p));
  if (!p) return NULL;
  for (size_t i = 0; i < c; i++) p[i] = (pair_t){kv[2 * i], kv[2 * i + 1]};
  qsort(p, c, sizeof(*p), pair_cmp);
  *n = c;
  return p;
}

#define FNV_OFFSET 14695981039346656037ull
#define FNV_PRIME 1099511628211ull

static uint64_t fnv_add(uint64_t h, const char *s) {
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= FNV_PRIME;
  }
  return h;
}

static uint64_t fnv_byte(uint64_t h, uint8_t b) { return (h ^ b) * FNV_PRIME; }

static uint64_t fingerprint_sorted(const pair_t *p, size_t n) {
  uint64_t h = FNV_OFFSET;
  for (size_t i = 0; i < n; i++) {
    h = fnv_byte(fnv_add(h, p[i].name), 0xff);
    h = fnv_byte(fnv_add(h, p[i].value), 0xff);
  }
  return h;
}

uint64_t gw_webhook_fingerprint(const char *const *labels) {
  size_t n;
  pair_t *p = sorted_pairs(labels, &n);
  if (!p) return 0;
  uint64_t h = fingerprint_sorted(p, n);
  free(p);
  return h;
}

static void rfc3339(int64_t ns, char out[40]) {
  if (ns <= 0) {
    strcpy(out, "0001-01-01T00:00:00Z");
    return;
  }
  time_t s = (time_t)(ns / 1000000000);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t len = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + len, 40 - len, ".%09ldZ", (long)(ns % 1000000000));
}

static cJSON *object_of(const pair_t *p, size_t n) {
  cJSON *o = cJSON_CreateObject();
  for (size_t i = 0; o && i < n; i++)
    if (!cJSON_AddStringToObject(o, p[i].name, p[i].value)) {
      cJSON_Delete(o);
      return NULL;
    }
  return o;
}

/* Add item to o under key, taking ownership; 0 if out of memory. */
static int put(cJSON *o, const char *key, cJSON *item) {
  if (!item) return 0;
  if (!cJSON_AddItemToObject(o, key, item)) {
    cJSON_Delete(item);
    return 0;
  }
  return 1;
}

char *gw_webhook_payload(const gw_webhook_alert_t *a, const char *receiver,
                         const char *external_url) {
  size_t nl = 0, na = 0;
  pair_t *lab = sorted_pairs(a->labels, &nl), *ann = sorted_pairs(a->annotations, &na);
  cJSON *root = NULL, *al = NULL, *arr;
  char *text = NULL, *key = NULL, starts[40], ends[40], fp[17];
  int alertname = 0;
  if (!lab || !ann) goto done;
  for (size_t i = 0; i < nl; i++) alertname |= !strcmp(lab[i].name, "alertname");
  if (!alertname) goto done;
  /* groupKey: {}:{a="x",b="y"} */
  size_t klen = 8;
  for (size_t i = 0; i < nl; i++) klen += strlen(lab[i].name) + 2 * strlen(lab[i].value) + 4;
  if (!(key = malloc(klen))) goto done;
  char *k = key;
  k += sprintf(k, "{}:{");
  for (size_t i = 0; i < nl; i++) {
    k += sprintf(k, "%s%s=\"", i ? "," : "", lab[i].name);
    for (const char *v = lab[i].value; *v; v++) {
      if (*v == '"' || *v == '\\') *k++ = '\\';
      *k++ = *v;
    }
    *k++ = '"';
  }
  strcpy(k, "}");
  const char *status = a->resolved ? "resolved" : "firing";
  rfc3339(a->starts_ns, starts);
  rfc3339(a->resolved ? a->ends_ns : 0, ends);
  snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)fingerprint_sorted(lab, nl));
  if (!(root = cJSON_CreateObject()) || !(al = cJSON_CreateObject())) goto done;
  if (!cJSON_AddStringToObject(root, "version", "4") ||
      !cJSON_AddStringToObject(root, "groupKey", key) ||
      !cJSON_AddNumberToObject(root, "truncatedAlerts", 0) ||
      !cJSON_AddStringToObject(root, "status", status) ||
      !cJSON_AddStringToObject(root, "receiver", receiver ? receiver : "") ||
      !put(root, "groupLabels", object_of(lab, nl)) ||
      !put(root, "commonLabels", object_of(lab, nl)) ||
      !put(root, "commonAnnotations", object_of(ann, na)) ||
      !cJSON_AddStringToObject(root, "externalURL", external_url ? external_url : "") ||
      !(arr = cJSON_AddArrayToObject(root, "alerts")))
    goto done;
  if (!cJSON_AddStringToObject(al, "status", status) || !put(al, "labels", object_of(lab, nl)) ||
      !put(al, "annotations", object_of(ann, na)) ||
      !cJSON_AddStringToObject(al, "startsAt", starts) ||
      !cJSON_AddStringToObject(al, "endsAt", ends) ||
      !cJSON_AddStringToObject(al, "generatorURL", a->generator_url ? a->generator_url : "") ||
      !cJSON_AddStringToObject(al, "fingerprint", fp))
    goto done;
  if (!cJSON_AddItemToArray(arr, al)) goto done;
  al = NULL;
  text = cJSON_PrintUnformatted(root);
done:
  cJSON_Delete(al);
  cJSON_Delete(root);
  free(key);
  free(lab);
  free(ann);
  return text;
}
