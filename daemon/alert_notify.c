/* alert_notify.c — labels, annotations and the alert JSON; the SSE event
 * and the webhooks (see alert_notify.h).
 *
 * Nothing here waits on the network: gw_webhook_send copies the body into
 * the webhook's queue, gw_live_publish_alert into the SSE clients' buffers.
 */
#include "alert_notify.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alert_kinds.h"
#include "alerts.h"
#include "gw_error.h"
#include "live.h"
#include "jsonnum.h"
#include "util.h"

struct gw_alert_notify_s {
  pthread_mutex_t mu; /* the fields below */
  gw_webhook_t *wh[GW_ALERT_WEBHOOKS_MAX];
  size_t n_wh;
  gw_webhook_stats_t retired; /* counters of webhooks replaced at reload */
  char *receiver, *external_url;
  gw_alertmanager_t *am;  /* owned; NULL: none; set once before any send */
  struct gw_live_s *live; /* borrowed, fixed */
  gw_log_t *log;          /* borrowed, fixed */
};

/* ------------------------------------------------------- the alert JSON */

/* A wall time as Unix seconds; 0 (never) as null. */
static cJSON *add_time(cJSON *o, const char *key, int64_t ns) {
  return ns ? gw_json_add_num(o, key, (double)ns * 1e-9) : cJSON_AddNullToObject(o, key);
}

static cJSON *add_str_or_null(cJSON *o, const char *key, const char *v) {
  return v ? cJSON_AddStringToObject(o, key, v) : cJSON_AddNullToObject(o, key);
}

/* Text JSON (labels, annotations): embedded when it parses as an object,
 * else null. */
static cJSON *add_json_object(cJSON *o, const char *key, const char *text) {
  cJSON *v = text ? cJSON_Parse(text) : NULL;
  if (v && !cJSON_IsObject(v)) {
    cJSON_Delete(v);
    v = NULL;
  }
  if (!v) return cJSON_AddNullToObject(o, key);
  if (!cJSON_AddItemToObject(o, key, v)) {
    cJSON_Delete(v);
    return NULL;
  }
  return v;
}

static const char *const alert_states[] = {"pending", "firing", "resolved"};

static cJSON *alert_object(const gw_store_alert_t *a) {
  cJSON *o = cJSON_CreateObject();
  int st = a->state;
  if (!o || !gw_json_add_u64(o, "id", a->id) || !add_str_or_null(o, "rule", a->rule) ||
      !add_str_or_null(o, "run", a->run) || !add_str_or_null(o, "tag", a->tag) ||
      !add_str_or_null(o, "severity", a->severity) ||
      !add_str_or_null(o, "state", st >= 0 && st <= 2 ? alert_states[st] : NULL) ||
      !gw_json_add_num(o, "value", a->value) || !gw_json_add_num(o, "threshold", a->threshold) ||
      !gw_json_add_u64(o, "started_step", a->started_step) ||
      !add_time(o, "started_at", a->started_ns) || !add_time(o, "fired_at", a->fired_ns) ||
      !add_time(o, "resolved_at", a->resolved_ns) ||
      !add_json_object(o, "labels", a->labels) ||
      !add_json_object(o, "annotations", a->annotations)) {
    cJSON_Delete(o);
    return NULL;
  }
  return o;
}

char *gw_alerts_json(const gw_store_alert_t *a) {
  cJSON *o = alert_object(a);
  char *text = o ? cJSON_PrintUnformatted(o) : NULL;
  cJSON_Delete(o);
  return text;
}

/* ------------------------------------------------ labels and annotations */

static void fmt_num(char *buf, size_t cap, double v) {
  if (isnan(v)) snprintf(buf, cap, "n/a");
  else snprintf(buf, cap, "%.4g", v);
}

/* Expand {name} placeholders of tmpl; unknown ones stay as written. */
static char *expand(const char *tmpl, const char *const *vars) {
  gw_buf_t b;
  gw_buf_init(&b);
  gw_buf_append(&b, "", 0); /* "" for an empty template (gw_buf_steal alone leaves it unterminated) */
  for (const char *t = tmpl; *t;) {
    const char *rep = NULL, *end = NULL;
    if (*t == '{' && (end = strchr(t, '}')))
      for (size_t i = 0; vars[i]; i += 2)
        if (strlen(vars[i]) == (size_t)(end - t - 1) && !strncmp(vars[i], t + 1, end - t - 1)) {
          rep = vars[i + 1];
          break;
        }
    if (rep) {
      gw_buf_puts(&b, rep);
      t = end + 1;
    } else {
      gw_buf_append(&b, t++, 1);
    }
  }
  return gw_buf_steal(&b);
}

int gw_alert_notify_describe(const gw_alert_rule_t *r, const char *run, const char *tag,
                             const gw_alert_trip_t *t, char **labels, char **annotations) {
  char value[32], observed[32], baseline[32], threshold[32], step[32], started[32], window[16],
      for_steps[16], seconds[32];
  const gw_alert_kind_t *k = gw_alert_kind(r->kind);
  gw_alert_desc_t d;
  k->describe(r, &d);
  fmt_num(value, sizeof(value), t->value);
  fmt_num(observed, sizeof(observed), t->observed);
  fmt_num(baseline, sizeof(baseline), t->baseline);
  fmt_num(threshold, sizeof(threshold), r->threshold);
  fmt_num(seconds, sizeof(seconds), r->seconds);
  snprintf(step, sizeof(step), "%" PRIu64, t->step);
  snprintf(started, sizeof(started), "%" PRIu64, t->started_step);
  snprintf(window, sizeof(window), "%u", r->window);
  snprintf(for_steps, sizeof(for_steps), "%u", r->for_steps);
  const char *metric = r->metric >= 0 ? gw_metric_name(r->metric) : "";
  const char *vars[] = {"rule",      r->name,  "run",          run,       "tag",       tag,
                        "metric",    metric,   "value",        value,     "observed",  observed,
                        "baseline",  baseline, "threshold",    threshold, "op",        gw_alert_op_name(r->op),
                        "step",      step,     "started_step", started,   "window",    window,
                        "for_steps", for_steps, "seconds",     seconds,   "severity",  r->severity,
                        "kind",      k->name,  NULL};
  char *summary = expand(r->summary, vars), *description = expand(r->description, vars);
  cJSON *lab = cJSON_CreateObject(), *ann = cJSON_CreateObject();
  int rc = GW_ENOMEM;
  *labels = *annotations = NULL;
  if (!summary || !description || !lab || !ann) goto done;
  if (!cJSON_AddStringToObject(lab, "alertname", r->name) ||
      !cJSON_AddStringToObject(lab, "run", run) || !cJSON_AddStringToObject(lab, "tag", tag) ||
      !cJSON_AddStringToObject(lab, "severity", r->severity))
    goto done;
  if (!cJSON_AddStringToObject(ann, "summary", summary) ||
      !cJSON_AddStringToObject(ann, "description", description) ||
      !cJSON_AddStringToObject(ann, "kind", k->name) ||
      (r->metric >= 0 && !cJSON_AddStringToObject(ann, "metric", metric)) ||
      !cJSON_AddStringToObject(ann, "value", value) ||
      ((d.shows & GW_ALERT_SHOWS_OBSERVED) && !cJSON_AddStringToObject(ann, "observed", observed)) ||
      ((d.shows & GW_ALERT_SHOWS_BASELINE) && !cJSON_AddStringToObject(ann, "baseline", baseline)) ||
      !cJSON_AddStringToObject(ann, "step", step))
    goto done;
  *labels = cJSON_PrintUnformatted(lab);
  *annotations = cJSON_PrintUnformatted(ann);
  if (*labels && *annotations) {
    rc = 0;
  } else {
    free(*labels);
    free(*annotations);
    *labels = *annotations = NULL;
  }
done:
  free(summary);
  free(description);
  cJSON_Delete(lab);
  cJSON_Delete(ann);
  return rc;
}

int gw_alert_notify_annotate(char **annotations, const char *key, const char *value) {
  cJSON *o = *annotations ? cJSON_Parse(*annotations) : NULL;
  char *text = NULL;
  if (o && !cJSON_IsObject(o)) {
    cJSON_Delete(o);
    o = NULL;
  }
  if (!o) o = cJSON_CreateObject();
  if (o) {
    cJSON_DeleteItemFromObjectCaseSensitive(o, key);
    if (cJSON_AddStringToObject(o, key, value)) text = cJSON_PrintUnformatted(o);
  }
  cJSON_Delete(o);
  if (!text) return GW_ENOMEM;
  free(*annotations);
  *annotations = text;
  return 0;
}

/* ------------------------------------------------------------- webhooks */

/* name/value pairs of a flat JSON object of strings (into `store`, which
 * owns the parsed tree); NULL-terminated. */
static const char **pairs_of(const char *json, cJSON **store) {
  *store = json ? cJSON_Parse(json) : NULL;
  size_t n = 0;
  cJSON *it;
  cJSON_ArrayForEach(it, *store) n++;
  const char **kv = calloc(2 * n + 1, sizeof(char *));
  if (!kv) return NULL;
  size_t i = 0;
  cJSON_ArrayForEach(it, *store) if (cJSON_IsString(it)) {
    kv[i++] = it->string;
    kv[i++] = it->valuestring;
  }
  return kv;
}

/* Percent-encoding of everything but RFC 3986's unreserved characters. */
static char *url_escape(const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  char *out = malloc(3 * strlen(s) + 1), *o = out;
  if (!out) return NULL;
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      *o++ = (char)c;
    } else {
      *o++ = '%';
      *o++ = hex[c >> 4];
      *o++ = hex[c & 15];
    }
  }
  *o = '\0';
  return out;
}

/* Alertmanager: the dashboard at the run as generatorURL; caller holds mu. */
static void push_alertmanager(gw_alert_notify_t *n, const gw_store_alert_t *rec,
                              const char *const *lab, const char *const *ann) {
  char *re = rec->run && n->external_url[0] ? url_escape(rec->run) : NULL, *gen = NULL;
  if (re) {
    size_t len = strlen(n->external_url) + strlen(re) + 16;
    if ((gen = malloc(len))) snprintf(gen, len, "%s/#/run/%s", n->external_url, re);
  }
  int64_t ends = 0;
  if (rec->state == GW_ALERT_RESOLVED) ends = rec->resolved_ns ? rec->resolved_ns : gw_now_ns();
  gw_alertmanager_alert_t a = {.labels = lab,
                               .annotations = ann,
                               .starts_ns = rec->started_ns ? rec->started_ns : gw_now_ns(),
                               .ends_ns = ends,
                               .generator_url = gen ? gen : n->external_url};
  int rc = gw_alertmanager_push(n->am, &a);
  if (rc) gw_log(n->log, GW_LOG_ERROR, "alertmanager_push", "error=\"%s\"", gw_strerror(rc));
  free(gen);
  free(re);
}

void gw_alert_notify_send(gw_alert_notify_t *n, const gw_store_alert_t *rec, int metric) {
  cJSON *lt = NULL, *at = NULL;
  const char **lab = NULL, **ann = NULL;
  char *url = NULL, *body = NULL, *re = NULL, *te = NULL;
  int oom = 0;
  pthread_mutex_lock(&n->mu);
  if (!n->n_wh && !n->am) goto done;
  if (!(lab = pairs_of(rec->labels, &lt)) || !(ann = pairs_of(rec->annotations, &at))) {
    oom = 1;
    goto done;
  }
  if (n->am && rec->state != GW_ALERT_PENDING) push_alertmanager(n, rec, lab, ann);
  if (!n->n_wh) goto done;
  if (metric >= 0 && n->external_url[0] && rec->run && rec->tag) {
    re = url_escape(rec->run);
    te = url_escape(rec->tag);
  }
  if (re && te) {
    size_t len = strlen(n->external_url) + strlen(re) + strlen(te) + 96;
    if ((url = malloc(len)))
      snprintf(url, len, "%s/api/v1/series?run=%s&tag=%s&metrics=%s", n->external_url, re, te,
               gw_metric_name(metric));
  }
  gw_webhook_alert_t wa = {.resolved = rec->state == GW_ALERT_RESOLVED,
                           .labels = lab,
                           .annotations = ann,
                           .starts_ns = rec->started_ns,
                           .ends_ns = rec->resolved_ns,
                           .generator_url = url ? url : n->external_url};
  if (!(body = gw_webhook_payload(&wa, n->receiver, n->external_url))) oom = 1;
  for (size_t i = 0; body && i < n->n_wh; i++) gw_webhook_send(n->wh[i], body);
done:
  if (oom) gw_log(n->log, GW_LOG_ERROR, "alert_webhook", "error=\"out of memory\"");
  pthread_mutex_unlock(&n->mu);
  free(body);
  free(url);
  free(re);
  free(te);
  free(lab);
  free(ann);
  cJSON_Delete(lt);
  cJSON_Delete(at);
}

void gw_alert_notify_restored(gw_alert_notify_t *n, const gw_store_alert_t *rec) {
  cJSON *lt = NULL, *at = NULL;
  const char **lab = NULL, **ann = NULL;
  pthread_mutex_lock(&n->mu);
  if (n->am && rec->state == GW_ALERT_FIRING && (lab = pairs_of(rec->labels, &lt)) &&
      (ann = pairs_of(rec->annotations, &at)))
    push_alertmanager(n, rec, lab, ann);
  pthread_mutex_unlock(&n->mu);
  free(lab);
  free(ann);
  cJSON_Delete(lt);
  cJSON_Delete(at);
}

int gw_alert_notify_alertmanager(gw_alert_notify_t *n, const gw_alertmanager_config_t *cfg) {
  gw_alertmanager_t *am = NULL;
  if (n->am) return GW_EINVAL;
  int rc = gw_alertmanager_new(&am, cfg);
  if (rc) return rc;
  pthread_mutex_lock(&n->mu);
  n->am = am;
  pthread_mutex_unlock(&n->mu);
  return 0;
}

int gw_alert_notify_metrics(gw_alert_notify_t *n, gw_metrics_writer_t *w) {
  gw_webhook_stats_t t = {0};
  size_t firing = 0;
  if (!n->am) return 0; /* fixed once set: no lock needed to read it */
  gw_alertmanager_stats(n->am, &t);
  firing = gw_alertmanager_firing(n->am);
  const char *ls[] = {"result", "sent", NULL}, *lx[] = {"result", "failed", NULL},
             *ld[] = {"result", "dropped", NULL};
  int rc;
  if ((rc = gw_metrics_family(w, "gradwatch_alertmanager_posts_total", "counter",
                              "POSTs to Alertmanager's /api/v2/alerts (every URL), by outcome "
                              "(sent, failed after retries, dropped from a full queue).")) ||
      (rc = gw_metrics_sample(w, "gradwatch_alertmanager_posts_total", ls, (double)t.sent)) ||
      (rc = gw_metrics_sample(w, "gradwatch_alertmanager_posts_total", lx, (double)t.failed)) ||
      (rc = gw_metrics_sample(w, "gradwatch_alertmanager_posts_total", ld, (double)t.dropped)) ||
      (rc = gw_metrics_family(w, "gradwatch_alertmanager_queue_depth", "gauge",
                              "POSTs waiting for Alertmanager (every URL), the one in flight included.")) ||
      (rc = gw_metrics_sample(w, "gradwatch_alertmanager_queue_depth", NULL, (double)t.queued)) ||
      (rc = gw_metrics_family(w, "gradwatch_alertmanager_alerts", "gauge",
                              "Firing alerts re-sent to Alertmanager each resend interval.")) ||
      (rc = gw_metrics_sample(w, "gradwatch_alertmanager_alerts", NULL, (double)firing)))
    return rc;
  return 0;
}

void gw_alert_notify_emit(gw_alert_notify_t *n, const gw_store_alert_t *rec, uint64_t step,
                          int metric) {
  if (n->live) {
    cJSON *o = alert_object(rec);
    char *out = NULL;
    if (o && gw_json_add_u64(o, "step", step)) out = cJSON_PrintUnformatted(o);
    if (out) gw_live_publish_alert(n->live, out);
    else gw_log(n->log, GW_LOG_ERROR, "alert_live", "error=\"out of memory\"");
    free(out);
    cJSON_Delete(o);
  }
  gw_alert_notify_send(n, rec, metric);
}

/* webhook.h's defaults, with what rs sets. */
static gw_webhook_config_t config_of(const gw_alert_rules_t *rs, const char *url, gw_log_t *log) {
  gw_webhook_config_t c;
  gw_webhook_config_default(&c);
  c.url = url;
  c.log = log;
  if (rs->given & (1u << GW_ALERTS_KEY_WEBHOOK_TIMEOUT)) c.timeout_ms = rs->webhook_timeout_ms;
  if (rs->given & (1u << GW_ALERTS_KEY_WEBHOOK_RETRIES)) c.retries = rs->webhook_retries;
  if (rs->given & (1u << GW_ALERTS_KEY_WEBHOOK_BACKOFF)) c.backoff_ms = rs->webhook_backoff_ms;
  if (rs->given & (1u << GW_ALERTS_KEY_WEBHOOK_QUEUE)) c.queue_max = rs->webhook_queue;
  return c;
}

static int same_webhook(const gw_webhook_config_t *x, const gw_webhook_config_t *y) {
  return !strcmp(x->url, y->url) && x->timeout_ms == y->timeout_ms && x->retries == y->retries &&
         x->backoff_ms == y->backoff_ms && x->backoff_max_ms == y->backoff_max_ms &&
         x->queue_max == y->queue_max;
}

static void add_stats(gw_webhook_stats_t *acc, const gw_webhook_stats_t *s) {
  acc->sent += s->sent;
  acc->failed += s->failed;
  acc->dropped += s->dropped;
  acc->attempts += s->attempts;
}

/* Webhooks for rs into out[]: those of old[] with the same settings are
 * reused (taken[j] set), the others started. On failure the started ones
 * are freed and err names the URL. */
static int start_webhooks(const gw_alert_rules_t *rs, gw_log_t *log, gw_webhook_t *const *old,
                          size_t n_old, gw_webhook_t **out, int *taken, char *err, size_t errlen) {
  int fresh[GW_ALERT_WEBHOOKS_MAX] = {0};
  for (size_t i = 0; i < rs->n_webhooks; i++) {
    gw_webhook_config_t c = config_of(rs, rs->webhooks[i], log);
    out[i] = NULL;
    for (size_t j = 0; j < n_old && !out[i]; j++)
      if (!taken[j] && same_webhook(gw_webhook_config(old[j]), &c)) {
        taken[j] = 1;
        out[i] = old[j];
      }
    if (out[i]) continue;
    int rc = gw_webhook_new(&out[i], &c);
    if (rc) {
      snprintf(err, errlen, "[alerts] webhook %s: %s", c.url, gw_strerror(rc));
      for (size_t k = 0; k < i; k++)
        if (fresh[k]) gw_webhook_free(out[k]);
      for (size_t j = 0; j < n_old; j++) taken[j] = 0;
      return rc == GW_EINVAL ? GW_ECONFIG : rc;
    }
    fresh[i] = 1;
  }
  return 0;
}

int gw_alert_notify_new(gw_alert_notify_t **out, const gw_alert_rules_t *rs,
                        struct gw_live_s *live, gw_log_t *log, char *err, size_t errlen) {
  *out = NULL;
  gw_alert_notify_t *n = calloc(1, sizeof(*n));
  if (!n) return GW_ENOMEM;
  int rc = -pthread_mutex_init(&n->mu, NULL);
  if (rc) {
    free(n);
    return rc;
  }
  n->live = live;
  n->log = log;
  if (!(n->receiver = strdup("")) || !(n->external_url = strdup(""))) {
    gw_alert_notify_free(n, 0);
    return GW_ENOMEM;
  }
  if ((rc = gw_alert_notify_reload(n, rs, err, errlen))) {
    gw_alert_notify_free(n, 0);
    return rc;
  }
  *out = n;
  return 0;
}

int gw_alert_notify_reload(gw_alert_notify_t *n, const gw_alert_rules_t *rs, char *err,
                           size_t errlen) {
  gw_webhook_t *nw[GW_ALERT_WEBHOOKS_MAX], *old[GW_ALERT_WEBHOOKS_MAX];
  int taken[GW_ALERT_WEBHOOKS_MAX] = {0};
  size_t n_old = 0;
  /* only reload and free change the list, from one thread: reading it
   * here without the lock is safe */
  int rc = start_webhooks(rs, n->log, n->wh, n->n_wh, nw, taken, err, errlen);
  if (rc) return rc;
  char *receiver = strdup(rs->receiver ? rs->receiver : "gradwatch"),
       *external = strdup(rs->external_url ? rs->external_url : "");
  if (!receiver || !external) {
    free(receiver);
    free(external);
    for (size_t i = 0; i < rs->n_webhooks; i++) {
      int reused = 0;
      for (size_t j = 0; j < n->n_wh; j++) reused |= n->wh[j] == nw[i];
      if (!reused) gw_webhook_free(nw[i]);
    }
    snprintf(err, errlen, "out of memory");
    return GW_ENOMEM;
  }
  pthread_mutex_lock(&n->mu);
  for (size_t j = 0; j < n->n_wh; j++)
    if (!taken[j]) {
      gw_webhook_stats_t ws;
      gw_webhook_stats(n->wh[j], &ws);
      add_stats(&n->retired, &ws);
      n->retired.dropped += ws.queued; /* freed below with what it still holds */
      old[n_old++] = n->wh[j];
    }
  memcpy(n->wh, nw, rs->n_webhooks * sizeof(nw[0]));
  n->n_wh = rs->n_webhooks;
  char *old_receiver = n->receiver, *old_external = n->external_url;
  n->receiver = receiver;
  n->external_url = external;
  pthread_mutex_unlock(&n->mu);
  free(old_receiver);
  free(old_external);
  for (size_t j = 0; j < n_old; j++) gw_webhook_free(old[j]); /* drops what they still queue */
  return 0;
}

void gw_alert_notify_stats(gw_alert_notify_t *n, gw_webhook_stats_t *out) {
  pthread_mutex_lock(&n->mu);
  *out = n->retired;
  for (size_t i = 0; i < n->n_wh; i++) {
    gw_webhook_stats_t ws;
    gw_webhook_stats(n->wh[i], &ws);
    add_stats(out, &ws);
  }
  pthread_mutex_unlock(&n->mu);
}

size_t gw_alert_notify_webhooks(gw_alert_notify_t *n) {
  pthread_mutex_lock(&n->mu);
  size_t k = n->n_wh;
  pthread_mutex_unlock(&n->mu);
  return k;
}

void gw_alert_notify_free(gw_alert_notify_t *n, uint32_t drain_ms) {
  if (!n) return;
  int64_t t0 = gw_mono_ns();
  for (size_t i = 0; i < n->n_wh; i++) {
    int64_t spent_ms = (gw_mono_ns() - t0) / 1000000;
    gw_webhook_drain(n->wh[i], spent_ms < drain_ms ? drain_ms - (uint32_t)spent_ms : 0);
  }
  for (size_t i = 0; i < n->n_wh; i++) gw_webhook_free(n->wh[i]);
  int64_t spent_ms = (gw_mono_ns() - t0) / 1000000;
  gw_alertmanager_free(n->am, spent_ms < drain_ms ? drain_ms - (uint32_t)spent_ms : 0);
  free(n->receiver);
  free(n->external_url);
  pthread_mutex_destroy(&n->mu);
  free(n);
}
