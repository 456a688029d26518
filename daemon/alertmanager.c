/* alertmanager.c — the firing table, the v2 payload and the resender (see
 * alertmanager.h for the states of an alert).
 *
 * The table is a small array of (fingerprint, alert object without endsAt),
 * linear in the firing alerts: a push is O(firing), which stays far below
 * the cost of the JSON it writes for the few hundred alerts a daemon fires
 * at most. Delivery is webhook.c's: the body is copied into each URL's
 * queue, whose worker POSTs it with retries; nothing here touches the
 * network.
 *
 * The resender waits on `wake` (CLOCK_MONOTONIC) for resend_ms or for
 * stop; each round builds one body of all firing alerts under `mu` and
 * queues it to every URL outside it.
 */
#include "alertmanager.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gw_error.h"
#include "util.h"

#define ENDPOINT "/api/v2/alerts"

typedef struct firing_s {
  uint64_t fp;  /* label fingerprint (gw_webhook_fingerprint) */
  cJSON *alert; /* labels, annotations, startsAt, generatorURL */
} firing_t;

struct gw_alertmanager_s {
  gw_webhook_t *q[GW_ALERTMANAGER_URLS_MAX]; /* fixed after new */
  size_t n_q;
  uint32_t resend_ms;
  char *runbook_url; /* NULL: none */
  gw_log_t *log;
  pthread_mutex_t mu; /* the table and stop */
  pthread_cond_t wake;
  firing_t *firing;
  size_t n_firing, cap;
  int stop;
  pthread_t thread;
};

void gw_alertmanager_config_default(gw_alertmanager_config_t *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->resend_ms = 60000;
  gw_webhook_config_default(&cfg->delivery);
}

char *gw_alertmanager_endpoint(const char *url) {
  size_t len = strlen(url);
  while (len && url[len - 1] == '/') len--;
  size_t el = strlen(ENDPOINT);
  int has = len >= el && !strncmp(url + len - el, ENDPOINT, el);
  char *out = malloc(len + el + 1);
  if (!out) return NULL;
  memcpy(out, url, len);
  strcpy(out + len, has ? "" : ENDPOINT);
  return out;
}

/* ---------------------------------------------------------- payload */

static void rfc3339(int64_t ns, char out[40]) {
  time_t s = (time_t)(ns / 1000000000);
  struct tm tm;
  gmtime_r(&s, &tm);
  size_t len = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + len, 40 - len, ".%09ldZ", (long)(ns % 1000000000));
}

static int has_alertname(const char *const *kv) {
  for (size_t i = 0; kv && kv[i] && kv[i + 1]; i += 2)
    if (!strcmp(kv[i], "alertname") && kv[i + 1][0]) return 1;
  return 0;
}

static cJSON *pairs_object(const char *const *kv, int need_alertname) {
  if (need_alertname && !has_alertname(kv)) return NULL;
  cJSON *o = cJSON_CreateObject();
  for (size_t i = 0; o && kv && kv[i] && kv[i + 1]; i += 2)
    if (!cJSON_AddStringToObject(o, kv[i], kv[i + 1])) {
      cJSON_Delete(o);
      return NULL;
    }
  return o;
}

static const char *label(const char *const *kv, const char *name) {
  for (size_t i = 0; kv && kv[i] && kv[i + 1]; i += 2)
    if (!strcmp(kv[i], name)) return kv[i + 1];
  return NULL;
}

/* The alert object without endsAt; NULL when out of memory or unnamed. */
static cJSON *alert_object(const gw_alertmanager_alert_t *a, const char *runbook) {
  char t[40];
  cJSON *o = cJSON_CreateObject(), *l = pairs_object(a->labels, 1),
        *an = pairs_object(a->annotations, 0);
  if (!o || !l || !an) goto fail;
  if (runbook && runbook[0] && !cJSON_GetObjectItemCaseSensitive(an, "runbook_url")) {
    gw_buf_t b;
    gw_buf_init(&b);
    gw_buf_printf(&b, "%s#runbook-%s", runbook, label(a->labels, "alertname"));
    int ok = !b.oom && b.p && cJSON_AddStringToObject(an, "runbook_url", b.p);
    gw_buf_free(&b);
    if (!ok) goto fail;
  }
  if (!cJSON_AddItemToObject(o, "labels", l)) goto fail;
  l = NULL; /* o owns it now */
  if (!cJSON_AddItemToObject(o, "annotations", an)) goto fail;
  an = NULL;
  rfc3339(a->starts_ns, t);
  if (!cJSON_AddStringToObject(o, "startsAt", t)) goto fail;
  if (a->generator_url && a->generator_url[0] &&
      !cJSON_AddStringToObject(o, "generatorURL", a->generator_url))
    goto fail;
  return o;
fail:
  cJSON_Delete(o);
  cJSON_Delete(l);
  cJSON_Delete(an);
  return NULL;
}

/* A copy of alert with endsAt added, appended to arr. 0 or GW_ENOMEM. */
static int append_with_end(cJSON *arr, const cJSON *alert, int64_t ends_ns) {
  char t[40];
  cJSON *c = cJSON_Duplicate(alert, 1);
  rfc3339(ends_ns, t);
  if (!c || !cJSON_AddStringToObject(c, "endsAt", t) || !cJSON_AddItemToArray(arr, c)) {
    cJSON_Delete(c);
    return GW_ENOMEM;
  }
  return 0;
}

char *gw_alertmanager_payload(const gw_alertmanager_alert_t *const *alerts, size_t n,
                              int64_t firing_ends_ns, const char *runbook_url) {
  cJSON *arr = cJSON_CreateArray();
  char *text = NULL;
  for (size_t i = 0; arr && i < n; i++) {
    cJSON *o = alert_object(alerts[i], runbook_url);
    int rc = o ? append_with_end(arr, o, alerts[i]->ends_ns ? alerts[i]->ends_ns : firing_ends_ns)
               : GW_ENOMEM;
    cJSON_Delete(o);
    if (rc) goto done;
  }
  if (arr) text = cJSON_PrintUnformatted(arr);
done:
  cJSON_Delete(arr);
  return text;
}

/* ------------------------------------------------------------ sending */

static int64_t ends_ahead(const gw_alertmanager_t *am) {
  return gw_now_ns() + 4 * (int64_t)am->resend_ms * 1000000;
}

static void queue_all(gw_alertmanager_t *am, const char *body) {
  for (size_t i = 0; i < am->n_q; i++) gw_webhook_send(am->q[i], body);
}

int gw_alertmanager_push(gw_alertmanager_t *am, const gw_alertmanager_alert_t *a) {
  if (!has_alertname(a->labels)) return GW_EINVAL;
  uint64_t fp = gw_webhook_fingerprint(a->labels);
  cJSON *o = alert_object(a, am->runbook_url), *arr = cJSON_CreateArray();
  char *body = NULL;
  int rc = GW_ENOMEM;
  if (!o || !arr) goto done;
  int firing = a->ends_ns == 0;
  if ((rc = append_with_end(arr, o, firing ? ends_ahead(am) : a->ends_ns))) goto done;
  rc = GW_ENOMEM;
  if (!(body = cJSON_PrintUnformatted(arr))) goto done;
  pthread_mutex_lock(&am->mu);
  size_t i = 0;
  while (i < am->n_firing && am->firing[i].fp != fp) i++;
  if (firing) {
    if (i == am->n_firing && i == am->cap) {
      size_t cap = am->cap ? 2 * am->cap : 16;
      firing_t *f = realloc(am->firing, cap * sizeof(*f));
      if (!f) {
        pthread_mutex_unlock(&am->mu);
        goto done;
      }
      am->firing = f;
      am->cap = cap;
    }
    if (i == am->n_firing) am->n_firing++;
    else cJSON_Delete(am->firing[i].alert);
    am->firing[i] = (firing_t){fp, o};
    o = NULL;
  } else if (i < am->n_firing) {
    cJSON_Delete(am->firing[i].alert);
    am->firing[i] = am->firing[--am->n_firing];
  }
  /* queued under mu: a resend round cannot overtake this transition */
  queue_all(am, body);
  pthread_mutex_unlock(&am->mu);
  rc = 0;
done:
  if (rc == GW_ENOMEM) gw_log(am->log, GW_LOG_ERROR, "alertmanager_push", "error=\"out of memory\"");
  free(body);
  cJSON_Delete(o);
  cJSON_Delete(arr);
  return rc;
}

/* One resend round: every firing alert, one body, each URL. */
static void resend(gw_alertmanager_t *am) {
  cJSON *arr = cJSON_CreateArray();
  char *body = NULL;
  int rc = arr ? 0 : GW_ENOMEM;
  pthread_mutex_lock(&am->mu);
  if (am->n_firing && !rc) {
    int64_t ends = ends_ahead(am);
    for (size_t i = 0; i < am->n_firing && !rc; i++)
      rc = append_with_end(arr, am->firing[i].alert, ends);
    if (!rc && !(body = cJSON_PrintUnformatted(arr))) rc = GW_ENOMEM;
    if (!rc) queue_all(am, body);
  }
  pthread_mutex_unlock(&am->mu);
  if (rc) gw_log(am->log, GW_LOG_ERROR, "alertmanager_resend", "error=\"out of memory\"");
  free(body);
  cJSON_Delete(arr);
}

static void *resender(void *arg) {
  gw_alertmanager_t *am = arg;
  pthread_mutex_lock(&am->mu);
  while (!am->stop) {
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += am->resend_ms / 1000;
    dl.tv_nsec += (long)(am->resend_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
      dl.tv_sec++;
      dl.tv_nsec -= 1000000000L;
    }
    int w = 0;
    while (!am->stop && w != ETIMEDOUT) w = pthread_cond_timedwait(&am->wake, &am->mu, &dl);
    if (am->stop) break;
    pthread_mutex_unlock(&am->mu);
    resend(am);
    pthread_mutex_lock(&am->mu);
  }
  pthread_mutex_unlock(&am->mu);
  return NULL;
}

/* --------------------------------------------------------- life cycle */

int gw_alertmanager_new(gw_alertmanager_t **out, const gw_alertmanager_config_t *cfg) {
  *out = NULL;
  if (!cfg || cfg->n_urls == 0 || cfg->n_urls > GW_ALERTMANAGER_URLS_MAX || cfg->resend_ms == 0)
    return GW_EINVAL;
  gw_alertmanager_t *am = calloc(1, sizeof(*am));
  if (!am) return GW_ENOMEM;
  pthread_condattr_t ca;
  int rc, mu = 0, wake = 0;
  am->resend_ms = cfg->resend_ms;
  am->log = cfg->log;
  if (cfg->runbook_url && cfg->runbook_url[0] && !(am->runbook_url = strdup(cfg->runbook_url))) {
    rc = GW_ENOMEM;
    goto fail;
  }
  if ((rc = -pthread_mutex_init(&am->mu, NULL))) goto fail;
  mu = 1;
  if ((rc = -pthread_condattr_init(&ca))) goto fail;
  rc = -pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  if (!rc) rc = -pthread_cond_init(&am->wake, &ca);
  pthread_condattr_destroy(&ca);
  if (rc) goto fail;
  wake = 1;
  for (size_t i = 0; i < cfg->n_urls; i++) {
    gw_webhook_config_t c = cfg->delivery;
    char *url = gw_alertmanager_endpoint(cfg->urls[i]);
    if (!url) {
      rc = GW_ENOMEM;
      goto fail;
    }
    c.url = url;
    c.log = cfg->log;
    rc = gw_webhook_new(&am->q[i], &c); /* copies the URL */
    free(url);
    if (rc) goto fail;
    am->n_q++;
  }
  if ((rc = -pthread_create(&am->thread, NULL, resender, am))) goto fail;
  *out = am;
  return 0;
fail:
  for (size_t i = 0; i < am->n_q; i++) gw_webhook_free(am->q[i]);
  if (wake) pthread_cond_destroy(&am->wake);
  if (mu) pthread_mutex_destroy(&am->mu);
  free(am->runbook_url);
  free(am);
  return rc;
}

size_t gw_alertmanager_firing(gw_alertmanager_t *am) {
  pthread_mutex_lock(&am->mu);
  size_t n = am->n_firing;
  pthread_mutex_unlock(&am->mu);
  return n;
}

void gw_alertmanager_stats(gw_alertmanager_t *am, gw_webhook_stats_t *out) {
  memset(out, 0, sizeof(*out));
  for (size_t i = 0; i < am->n_q; i++) {
    gw_webhook_stats_t s;
    gw_webhook_stats(am->q[i], &s);
    out->sent += s.sent;
    out->failed += s.failed;
    out->dropped += s.dropped;
    out->attempts += s.attempts;
    out->queued += s.queued;
  }
}

void gw_alertmanager_free(gw_alertmanager_t *am, uint32_t drain_ms) {
  if (!am) return;
  pthread_mutex_lock(&am->mu);
  am->stop = 1;
  pthread_cond_broadcast(&am->wake);
  pthread_mutex_unlock(&am->mu);
  pthread_join(am->thread, NULL);
  int64_t t0 = gw_mono_ns();
  for (size_t i = 0; i < am->n_q; i++) {
    int64_t spent_ms = (gw_mono_ns() - t0) / 1000000;
    gw_webhook_drain(am->q[i], spent_ms < drain_ms ? drain_ms - (uint32_t)spent_ms : 0);
  }
  for (size_t i = 0; i < am->n_q; i++) gw_webhook_free(am->q[i]);
  for (size_t i = 0; i < am->n_firing; i++) cJSON_Delete(am->firing[i].alert);
  free(am->firing);
  pthread_cond_destroy(&am->wake);
  pthread_mutex_destroy(&am->mu);
  free(am->runbook_url);
  free(am);
}
